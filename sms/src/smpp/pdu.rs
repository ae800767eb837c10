//! SMPP 3.4 PDUs on the wire: the header, the bodies this client sends and answers, and
//! optional TLVs. Encoding is infallible for values the client builds; decoding checks every
//! length, because the bytes come from the network.

use bytes::{Buf, BufMut, BytesMut};

/// `command_id` values (SMPP 3.4 §5.1.2.1).
pub mod command {
    #![allow(missing_docs)]
    pub const GENERIC_NACK: u32 = 0x8000_0000;
    pub const BIND_TRANSCEIVER: u32 = 0x0000_0009;
    pub const BIND_TRANSCEIVER_RESP: u32 = 0x8000_0009;
    pub const SUBMIT_SM: u32 = 0x0000_0004;
    pub const SUBMIT_SM_RESP: u32 = 0x8000_0004;
    pub const DELIVER_SM: u32 = 0x0000_0005;
    pub const DELIVER_SM_RESP: u32 = 0x8000_0005;
    pub const UNBIND: u32 = 0x0000_0006;
    pub const UNBIND_RESP: u32 = 0x8000_0006;
    pub const ENQUIRE_LINK: u32 = 0x0000_0015;
    pub const ENQUIRE_LINK_RESP: u32 = 0x8000_0015;
}

/// `command_status` values this client acts on (SMPP 3.4 §5.1.3).
pub mod status {
    #![allow(missing_docs)]
    pub const ESME_ROK: u32 = 0x00;
    pub const ESME_RINVMSGLEN: u32 = 0x01;
    pub const ESME_RINVCMDID: u32 = 0x03;
    pub const ESME_RINVBNDSTS: u32 = 0x04;
    pub const ESME_RALYBND: u32 = 0x05;
    pub const ESME_RSYSERR: u32 = 0x08;
    pub const ESME_RINVDSTADR: u32 = 0x0B;
    pub const ESME_RBINDFAIL: u32 = 0x0D;
    pub const ESME_RINVPASWD: u32 = 0x0E;
    pub const ESME_RINVSYSID: u32 = 0x0F;
    pub const ESME_RMSGQFUL: u32 = 0x14;
    pub const ESME_RTHROTTLED: u32 = 0x58;
}

/// TLV tags the client reads (SMPP 3.4 §5.3.2).
pub mod tag {
    #![allow(missing_docs)]
    pub const RECEIPTED_MESSAGE_ID: u16 = 0x001E;
    pub const MESSAGE_STATE: u16 = 0x0427;
}

/// The interface version a 3.4 ESME announces in its bind.
pub const INTERFACE_VERSION_34: u8 = 0x34;

/// Largest PDU accepted from the peer; a short message is at most 254 octets, so anything far
/// larger is a broken or hostile stream rather than a message.
pub const MAX_PDU_LEN: u32 = 64 * 1024;

/// The four header fields of every PDU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// What the PDU is.
    pub command_id: u32,
    /// Zero in requests; the outcome in responses.
    pub command_status: u32,
    /// Pairs a response with its request.
    pub sequence: u32,
}

/// `bind_transceiver` (§4.1.5).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Bind {
    /// Account name, at most 15 octets.
    pub system_id: String,
    /// Password, at most 8 octets.
    pub password: String,
    /// Usually empty.
    pub system_type: String,
    /// 0x34 for SMPP 3.4.
    pub interface_version: u8,
    /// Type of number of `address_range`.
    pub addr_ton: u8,
    /// Numbering plan of `address_range`.
    pub addr_npi: u8,
    /// Which addresses this ESME serves; usually empty.
    pub address_range: String,
}

/// `submit_sm` and `deliver_sm` share one layout (§4.4.1, §4.6.1).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ShortMessage {
    /// Usually empty.
    pub service_type: String,
    /// Source type of number.
    pub source_addr_ton: u8,
    /// Source numbering plan.
    pub source_addr_npi: u8,
    /// Sender (short code or name).
    pub source_addr: String,
    /// Destination type of number.
    pub dest_addr_ton: u8,
    /// Destination numbering plan.
    pub dest_addr_npi: u8,
    /// Recipient.
    pub destination_addr: String,
    /// 0x40 when `short_message` starts with a UDH; 0x04 on a delivery receipt.
    pub esm_class: u8,
    /// Protocol id.
    pub protocol_id: u8,
    /// Priority.
    pub priority_flag: u8,
    /// Empty for immediate delivery.
    pub schedule_delivery_time: String,
    /// Empty for the SMSC default.
    pub validity_period: String,
    /// Bit 0 set asks for a delivery receipt.
    pub registered_delivery: u8,
    /// Replace flag.
    pub replace_if_present_flag: u8,
    /// 0x08 for UCS-2.
    pub data_coding: u8,
    /// Canned message id.
    pub sm_default_msg_id: u8,
    /// The payload, UDH included, at most 254 octets.
    pub short_message: Vec<u8>,
    /// Optional parameters, in wire order.
    pub tlvs: Vec<Tlv>,
}

impl ShortMessage {
    /// The value of a TLV, if present.
    pub fn tlv(&self, tag: u16) -> Option<&[u8]> {
        self.tlvs
            .iter()
            .find(|t| t.tag == tag)
            .map(|t| t.value.as_slice())
    }
}

/// An optional parameter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tlv {
    /// The tag.
    pub tag: u16,
    /// The raw value.
    pub value: Vec<u8>,
}

/// The bodies this client knows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    /// `bind_transceiver`.
    BindTransceiver(Bind),
    /// `bind_transceiver_resp`; the SMSC's system id (absent on error).
    BindTransceiverResp {
        /// The SMSC's name.
        system_id: String,
    },
    /// `submit_sm`.
    SubmitSm(ShortMessage),
    /// `submit_sm_resp`; no body when `command_status` is not zero.
    SubmitSmResp {
        /// The SMSC's id for the message.
        message_id: String,
    },
    /// `deliver_sm` (a mobile-originated message or a delivery receipt).
    DeliverSm(ShortMessage),
    /// `deliver_sm_resp`.
    DeliverSmResp,
    /// `enquire_link`.
    EnquireLink,
    /// `enquire_link_resp`.
    EnquireLinkResp,
    /// `unbind`.
    Unbind,
    /// `unbind_resp`.
    UnbindResp,
    /// `generic_nack`.
    GenericNack,
    /// Anything else, kept raw so it can be answered with `generic_nack`.
    Other(Vec<u8>),
}

/// A whole PDU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pdu {
    /// `command_status` and `sequence`; `command_id` follows from the body when encoding.
    pub header: Header,
    /// The body.
    pub body: Body,
}

/// Why bytes are not a PDU.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PduError {
    /// `command_length` below the 16-octet header or above [`MAX_PDU_LEN`].
    #[error("command_length {0} out of range")]
    BadLength(u32),
    /// The body ended inside a field.
    #[error("{command}: body ends inside {field}")]
    Truncated {
        /// The command's name.
        command: &'static str,
        /// The field being read.
        field: &'static str,
    },
    /// A C-octet string with no terminating NUL within its maximum length.
    #[error("{command}: {field} has no NUL within {max} octets")]
    Unterminated {
        /// The command's name.
        command: &'static str,
        /// The field being read.
        field: &'static str,
        /// Its maximum size including the NUL.
        max: usize,
    },
}

impl Pdu {
    /// A request with sequence number `sequence`.
    pub fn request(sequence: u32, body: Body) -> Pdu {
        Pdu {
            header: Header {
                command_id: body.command_id(),
                command_status: status::ESME_ROK,
                sequence,
            },
            body,
        }
    }

    /// A response to `sequence` with `command_status` `status`.
    pub fn response(sequence: u32, command_status: u32, body: Body) -> Pdu {
        Pdu {
            header: Header {
                command_id: body.command_id(),
                command_status,
                sequence,
            },
            body,
        }
    }

    /// The wire bytes, `command_length` included.
    pub fn encode(&self) -> BytesMut {
        let mut b = BytesMut::with_capacity(64);
        b.put_u32(0); // command_length, patched below
        let command_id = match &self.body {
            Body::Other(_) => self.header.command_id,
            body => body.command_id(),
        };
        b.put_u32(command_id);
        b.put_u32(self.header.command_status);
        b.put_u32(self.header.sequence);
        match &self.body {
            Body::BindTransceiver(bind) => {
                put_cstr(&mut b, &bind.system_id);
                put_cstr(&mut b, &bind.password);
                put_cstr(&mut b, &bind.system_type);
                b.put_u8(bind.interface_version);
                b.put_u8(bind.addr_ton);
                b.put_u8(bind.addr_npi);
                put_cstr(&mut b, &bind.address_range);
            }
            Body::BindTransceiverResp { system_id } => put_cstr(&mut b, system_id),
            Body::SubmitSm(sm) | Body::DeliverSm(sm) => put_short_message(&mut b, sm),
            Body::SubmitSmResp { message_id } => {
                // §4.4.2: no body on an error response.
                if self.header.command_status == status::ESME_ROK {
                    put_cstr(&mut b, message_id);
                }
            }
            // §4.6.2: message_id is unused in deliver_sm_resp and set to NULL.
            Body::DeliverSmResp => b.put_u8(0),
            Body::EnquireLink
            | Body::EnquireLinkResp
            | Body::Unbind
            | Body::UnbindResp
            | Body::GenericNack => {}
            Body::Other(raw) => b.put_slice(raw),
        }
        let len = b.len() as u32;
        b[0..4].copy_from_slice(&len.to_be_bytes());
        b
    }

    /// Read a PDU from `frame`, which holds exactly one PDU (header included).
    pub fn decode(frame: &[u8]) -> Result<Pdu, PduError> {
        if frame.len() < 16 {
            return Err(PduError::BadLength(frame.len() as u32));
        }
        let mut b = frame;
        let len = b.get_u32();
        if len as usize != frame.len() || !(16..=MAX_PDU_LEN).contains(&len) {
            return Err(PduError::BadLength(len));
        }
        let header = Header {
            command_id: b.get_u32(),
            command_status: b.get_u32(),
            sequence: b.get_u32(),
        };
        let mut r = Reader {
            buf: b,
            command: command_name(header.command_id),
        };
        let body = match header.command_id {
            command::BIND_TRANSCEIVER => Body::BindTransceiver(Bind {
                system_id: r.cstr("system_id", 16)?,
                password: r.cstr("password", 9)?,
                system_type: r.cstr("system_type", 13)?,
                interface_version: r.u8("interface_version")?,
                addr_ton: r.u8("addr_ton")?,
                addr_npi: r.u8("addr_npi")?,
                address_range: r.cstr("address_range", 41)?,
            }),
            command::BIND_TRANSCEIVER_RESP => Body::BindTransceiverResp {
                // An error response may carry no body at all.
                system_id: if r.buf.is_empty() {
                    String::new()
                } else {
                    r.cstr("system_id", 16)?
                },
            },
            command::SUBMIT_SM => Body::SubmitSm(r.short_message()?),
            command::DELIVER_SM => Body::DeliverSm(r.short_message()?),
            command::SUBMIT_SM_RESP => Body::SubmitSmResp {
                message_id: if r.buf.is_empty() {
                    String::new()
                } else {
                    r.cstr("message_id", 65)?
                },
            },
            command::DELIVER_SM_RESP => Body::DeliverSmResp,
            command::ENQUIRE_LINK => Body::EnquireLink,
            command::ENQUIRE_LINK_RESP => Body::EnquireLinkResp,
            command::UNBIND => Body::Unbind,
            command::UNBIND_RESP => Body::UnbindResp,
            command::GENERIC_NACK => Body::GenericNack,
            _ => Body::Other(r.buf.to_vec()),
        };
        Ok(Pdu { header, body })
    }
}

impl Body {
    /// The `command_id` this body is sent under.
    pub fn command_id(&self) -> u32 {
        match self {
            Body::BindTransceiver(_) => command::BIND_TRANSCEIVER,
            Body::BindTransceiverResp { .. } => command::BIND_TRANSCEIVER_RESP,
            Body::SubmitSm(_) => command::SUBMIT_SM,
            Body::SubmitSmResp { .. } => command::SUBMIT_SM_RESP,
            Body::DeliverSm(_) => command::DELIVER_SM,
            Body::DeliverSmResp => command::DELIVER_SM_RESP,
            Body::EnquireLink => command::ENQUIRE_LINK,
            Body::EnquireLinkResp => command::ENQUIRE_LINK_RESP,
            Body::Unbind => command::UNBIND,
            Body::UnbindResp => command::UNBIND_RESP,
            Body::GenericNack => command::GENERIC_NACK,
            // Callers of encode() keep the header's id for these.
            Body::Other(_) => 0,
        }
    }
}

/// A readable name for logs and errors.
pub fn command_name(id: u32) -> &'static str {
    match id {
        command::GENERIC_NACK => "generic_nack",
        command::BIND_TRANSCEIVER => "bind_transceiver",
        command::BIND_TRANSCEIVER_RESP => "bind_transceiver_resp",
        command::SUBMIT_SM => "submit_sm",
        command::SUBMIT_SM_RESP => "submit_sm_resp",
        command::DELIVER_SM => "deliver_sm",
        command::DELIVER_SM_RESP => "deliver_sm_resp",
        command::UNBIND => "unbind",
        command::UNBIND_RESP => "unbind_resp",
        command::ENQUIRE_LINK => "enquire_link",
        command::ENQUIRE_LINK_RESP => "enquire_link_resp",
        _ => "unknown",
    }
}

fn put_cstr(b: &mut BytesMut, s: &str) {
    b.put_slice(s.as_bytes());
    b.put_u8(0);
}

fn put_short_message(b: &mut BytesMut, sm: &ShortMessage) {
    put_cstr(b, &sm.service_type);
    b.put_u8(sm.source_addr_ton);
    b.put_u8(sm.source_addr_npi);
    put_cstr(b, &sm.source_addr);
    b.put_u8(sm.dest_addr_ton);
    b.put_u8(sm.dest_addr_npi);
    put_cstr(b, &sm.destination_addr);
    b.put_u8(sm.esm_class);
    b.put_u8(sm.protocol_id);
    b.put_u8(sm.priority_flag);
    put_cstr(b, &sm.schedule_delivery_time);
    put_cstr(b, &sm.validity_period);
    b.put_u8(sm.registered_delivery);
    b.put_u8(sm.replace_if_present_flag);
    b.put_u8(sm.data_coding);
    b.put_u8(sm.sm_default_msg_id);
    b.put_u8(sm.short_message.len() as u8);
    b.put_slice(&sm.short_message);
    for t in &sm.tlvs {
        b.put_u16(t.tag);
        b.put_u16(t.value.len() as u16);
        b.put_slice(&t.value);
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    command: &'static str,
}

impl Reader<'_> {
    fn u8(&mut self, field: &'static str) -> Result<u8, PduError> {
        if self.buf.is_empty() {
            return Err(self.truncated(field));
        }
        Ok(self.buf.get_u8())
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, PduError> {
        if self.buf.len() < 2 {
            return Err(self.truncated(field));
        }
        Ok(self.buf.get_u16())
    }

    fn bytes(&mut self, n: usize, field: &'static str) -> Result<Vec<u8>, PduError> {
        if self.buf.len() < n {
            return Err(self.truncated(field));
        }
        let v = self.buf[..n].to_vec();
        self.buf.advance(n);
        Ok(v)
    }

    /// A C-octet string of at most `max` octets including its NUL. Non-UTF-8 octets are
    /// replaced: these fields are addresses, ids and names, ASCII by the spec.
    fn cstr(&mut self, field: &'static str, max: usize) -> Result<String, PduError> {
        let window = &self.buf[..self.buf.len().min(max)];
        match window.iter().position(|&c| c == 0) {
            Some(nul) => {
                let s = String::from_utf8_lossy(&window[..nul]).into_owned();
                self.buf.advance(nul + 1);
                Ok(s)
            }
            None if self.buf.len() < max => Err(self.truncated(field)),
            None => Err(PduError::Unterminated {
                command: self.command,
                field,
                max,
            }),
        }
    }

    fn truncated(&self, field: &'static str) -> PduError {
        PduError::Truncated {
            command: self.command,
            field,
        }
    }

    fn short_message(&mut self) -> Result<ShortMessage, PduError> {
        let mut sm = ShortMessage {
            service_type: self.cstr("service_type", 6)?,
            source_addr_ton: self.u8("source_addr_ton")?,
            source_addr_npi: self.u8("source_addr_npi")?,
            source_addr: self.cstr("source_addr", 21)?,
            dest_addr_ton: self.u8("dest_addr_ton")?,
            dest_addr_npi: self.u8("dest_addr_npi")?,
            destination_addr: self.cstr("destination_addr", 21)?,
            esm_class: self.u8("esm_class")?,
            protocol_id: self.u8("protocol_id")?,
            priority_flag: self.u8("priority_flag")?,
            schedule_delivery_time: self.cstr("schedule_delivery_time", 17)?,
            validity_period: self.cstr("validity_period", 17)?,
            registered_delivery: self.u8("registered_delivery")?,
            replace_if_present_flag: self.u8("replace_if_present_flag")?,
            data_coding: self.u8("data_coding")?,
            sm_default_msg_id: self.u8("sm_default_msg_id")?,
            short_message: Vec::new(),
            tlvs: Vec::new(),
        };
        let sm_length = self.u8("sm_length")? as usize;
        sm.short_message = self.bytes(sm_length, "short_message")?;
        while !self.buf.is_empty() {
            let tag = self.u16("tlv tag")?;
            let len = self.u16("tlv length")? as usize;
            let value = self.bytes(len, "tlv value")?;
            sm.tlvs.push(Tlv { tag, value });
        }
        Ok(sm)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(p: Pdu) {
        let bytes = p.encode();
        assert_eq!(
            u32::from_be_bytes(bytes[0..4].try_into().unwrap()) as usize,
            bytes.len()
        );
        assert_eq!(Pdu::decode(&bytes).unwrap(), p);
    }

    fn sample_sm() -> ShortMessage {
        ShortMessage {
            source_addr: "10690001".into(),
            dest_addr_ton: 1,
            dest_addr_npi: 1,
            destination_addr: "8613800000000".into(),
            esm_class: 0x40,
            registered_delivery: 1,
            data_coding: 0x08,
            short_message: vec![5, 0, 3, 7, 2, 1, 0x4e, 0x2d],
            ..Default::default()
        }
    }

    #[test]
    fn every_body_round_trips() {
        roundtrip(Pdu::request(
            1,
            Body::BindTransceiver(Bind {
                system_id: "floodcmd".into(),
                password: "secret".into(),
                interface_version: INTERFACE_VERSION_34,
                ..Default::default()
            }),
        ));
        roundtrip(Pdu::response(
            1,
            0,
            Body::BindTransceiverResp {
                system_id: "smsc".into(),
            },
        ));
        roundtrip(Pdu::request(2, Body::SubmitSm(sample_sm())));
        roundtrip(Pdu::response(
            2,
            0,
            Body::SubmitSmResp {
                message_id: "abc123".into(),
            },
        ));
        let mut receipt = sample_sm();
        receipt.esm_class = 0x04;
        receipt.tlvs = vec![
            Tlv {
                tag: tag::RECEIPTED_MESSAGE_ID,
                value: b"abc123\0".to_vec(),
            },
            Tlv {
                tag: tag::MESSAGE_STATE,
                value: vec![2],
            },
        ];
        roundtrip(Pdu::request(3, Body::DeliverSm(receipt)));
        for body in [
            Body::EnquireLink,
            Body::EnquireLinkResp,
            Body::Unbind,
            Body::UnbindResp,
            Body::GenericNack,
        ] {
            roundtrip(Pdu::request(9, body));
        }
    }

    #[test]
    fn deliver_sm_resp_has_a_null_message_id() {
        let bytes = Pdu::response(4, 0, Body::DeliverSmResp).encode();
        assert_eq!(bytes.len(), 17);
        assert_eq!(Pdu::decode(&bytes).unwrap().body, Body::DeliverSmResp);
    }

    #[test]
    fn error_responses_carry_no_body() {
        let throttled = Pdu::response(
            5,
            status::ESME_RTHROTTLED,
            Body::SubmitSmResp {
                message_id: String::new(),
            },
        );
        let bytes = throttled.encode();
        assert_eq!(bytes.len(), 16);
        let back = Pdu::decode(&bytes).unwrap();
        assert_eq!(back.header.command_status, status::ESME_RTHROTTLED);
        assert_eq!(back.header.sequence, 5);
        let nack = Pdu::decode(&Pdu::response(6, 0x03, Body::GenericNack).encode()).unwrap();
        assert_eq!(nack.header.command_id, command::GENERIC_NACK);
    }

    #[test]
    fn known_bytes_decode() {
        // enquire_link, sequence 7, as any SMSC sends it.
        let raw = [0, 0, 0, 16, 0, 0, 0, 0x15, 0, 0, 0, 0, 0, 0, 0, 7];
        let p = Pdu::decode(&raw).unwrap();
        assert_eq!(p.body, Body::EnquireLink);
        assert_eq!(p.header.sequence, 7);
        assert_eq!(&Pdu::request(7, Body::EnquireLink).encode()[..], &raw[..]);
    }

    #[test]
    fn broken_bytes_are_errors_not_panics() {
        let good = Pdu::request(2, Body::SubmitSm(sample_sm())).encode();
        for cut in 16..good.len() {
            let mut short = good[..cut].to_vec();
            short[0..4].copy_from_slice(&(cut as u32).to_be_bytes());
            assert!(Pdu::decode(&short).is_err(), "cut at {cut} decoded");
        }
        assert_eq!(Pdu::decode(&good[..10]), Err(PduError::BadLength(10)));
        let mut liar = good.to_vec();
        liar[3] = liar[3].wrapping_add(1);
        assert!(matches!(Pdu::decode(&liar), Err(PduError::BadLength(_))));
        // A system_id with no NUL in its 16 octets.
        let mut bind = vec![0u8; 16];
        bind.extend_from_slice(&[b'x'; 20]);
        bind[0..4].copy_from_slice(&36u32.to_be_bytes());
        bind[4..8].copy_from_slice(&command::BIND_TRANSCEIVER.to_be_bytes());
        assert!(matches!(
            Pdu::decode(&bind),
            Err(PduError::Unterminated {
                field: "system_id",
                ..
            })
        ));
    }

    #[test]
    fn unknown_commands_are_kept_raw() {
        let mut raw = Pdu::request(3, Body::EnquireLink).encode().to_vec();
        raw[4..8].copy_from_slice(&0x0000_0103u32.to_be_bytes()); // data_sm
        raw.extend_from_slice(&[1, 2, 3]);
        let n = raw.len() as u32;
        raw[0..4].copy_from_slice(&n.to_be_bytes());
        let p = Pdu::decode(&raw).unwrap();
        assert_eq!(p.body, Body::Other(vec![1, 2, 3]));
        assert_eq!(&p.encode()[..], &raw[..]);
    }
}

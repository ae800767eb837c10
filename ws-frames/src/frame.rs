//! A server's message framed once for every client that receives it.

use crate::deflate::deflate;
use crate::opcode;
use bytes::{BufMut, Bytes, BytesMut};
use std::sync::{Arc, OnceLock};

/// Below this a message goes plain even to a client that accepted compression: a few bytes
/// saved are not worth a compressor's set-up.
pub const COMPRESS_FROM: usize = 256;

/// One message, framed (unmasked, as a server sends) once; cloning it costs a reference count.
/// Its compressed frame is made once, by [`OutFrame::precompress`] or the first time a client
/// that accepted permessage-deflate needs it, and then shared by all of them.
#[derive(Clone)]
pub struct OutFrame(Arc<Framed>);

struct Framed {
    /// Header and payload, in one piece: one write per client.
    plain: Bytes,
    header_len: usize,
    opcode: u8,
    /// `None` inside when compressing would not make it smaller.
    deflated: OnceLock<Option<Bytes>>,
}

impl OutFrame {
    /// A text message.
    pub fn text(text: impl Into<String>) -> OutFrame {
        OutFrame::new(opcode::TEXT, text.into().as_bytes())
    }

    /// A close with `code` (RFC 6455 §7.4) and no reason.
    pub fn close(code: u16) -> OutFrame {
        OutFrame::new(opcode::CLOSE, &code.to_be_bytes())
    }

    /// The answer to a ping: its payload back.
    pub fn pong(payload: &[u8]) -> OutFrame {
        OutFrame::new(opcode::PONG, payload)
    }

    fn new(opcode: u8, payload: &[u8]) -> OutFrame {
        let (plain, header_len) = framed(opcode, false, payload);
        OutFrame(Arc::new(Framed {
            plain,
            header_len,
            opcode,
            deflated: OnceLock::new(),
        }))
    }

    /// The message as sent, unframed and uncompressed.
    pub fn payload(&self) -> &[u8] {
        &self.0.plain[self.0.header_len..]
    }

    /// The text of a text message (`None` for other kinds).
    pub fn as_text(&self) -> Option<&str> {
        if self.0.opcode != opcode::TEXT {
            return None;
        }
        // Made from a `String` only.
        std::str::from_utf8(self.payload()).ok()
    }

    /// Make the compressed frame now, if the message is worth compressing, so that no
    /// client's task has to (the others would wait for it, blocking their threads).
    pub fn precompress(&self) {
        let _ = self.wire(true);
    }

    /// The bytes to write to a client's socket: compressed when the client accepted
    /// permessage-deflate and compressing makes the message smaller.
    pub fn wire(&self, deflate_ok: bool) -> Bytes {
        let f = &self.0;
        let data = f.opcode == opcode::TEXT || f.opcode == opcode::BINARY;
        if deflate_ok && data && self.payload().len() >= COMPRESS_FROM {
            let compressed = f.deflated.get_or_init(|| {
                let d = deflate(self.payload());
                (d.len() < self.payload().len()).then(|| framed(f.opcode, true, &d).0)
            });
            if let Some(c) = compressed {
                return c.clone();
            }
        }
        f.plain.clone()
    }
}

impl std::fmt::Debug for OutFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutFrame")
            .field("opcode", &self.0.opcode)
            .field("len", &self.payload().len())
            .finish()
    }
}

/// A whole unmasked frame (FIN set) and its header's length; `rsv1` marks a compressed one.
fn framed(opcode: u8, rsv1: bool, payload: &[u8]) -> (Bytes, usize) {
    let mut b = BytesMut::with_capacity(payload.len() + 10);
    b.put_u8(0x80 | if rsv1 { 0x40 } else { 0 } | opcode);
    match payload.len() {
        n if n < 126 => b.put_u8(n as u8),
        n if n <= u16::MAX as usize => {
            b.put_u8(126);
            b.put_u16(n as u16);
        }
        n => {
            b.put_u8(127);
            b.put_u64(n as u64);
        }
    }
    let header_len = b.len();
    b.put_slice(payload);
    (b.freeze(), header_len)
}

/// A client's frame: masked with `mask`, as RFC 6455 requires of every client frame. For the
/// clients in tests and benches; the wall never sends one.
pub fn client_frame(opcode: u8, fin: bool, rsv1: bool, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut b = Vec::with_capacity(payload.len() + 14);
    b.push(if fin { 0x80 } else { 0 } | if rsv1 { 0x40 } else { 0 } | opcode);
    match payload.len() {
        n if n < 126 => b.push(0x80 | n as u8),
        n if n <= u16::MAX as usize => {
            b.push(0x80 | 126);
            b.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            b.push(0x80 | 127);
            b.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    b.extend_from_slice(&mask);
    b.extend(payload.iter().enumerate().map(|(i, x)| x ^ mask[i % 4]));
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_take_the_length_form_rfc_6455_gives_each_size() {
        for (n, header) in [(0, 2), (125, 2), (126, 4), (65_535, 4), (65_536, 10)] {
            let f = OutFrame::text("a".repeat(n));
            let w = f.wire(false);
            assert_eq!(w.len(), n + header, "{n}");
            assert_eq!(w[0], 0x81, "FIN and text");
            assert_eq!(f.payload().len(), n);
        }
    }

    #[test]
    fn the_compressed_frame_is_made_once_and_shared() {
        let f = OutFrame::text("{\"live\":[]}".repeat(100));
        let a = f.wire(true);
        let b = f.clone().wire(true);
        assert_eq!(
            a.as_ptr(),
            b.as_ptr(),
            "one compressed frame for every client"
        );
        assert_eq!(a[0], 0xC1, "FIN, RSV1 and text");
        assert!(a.len() < f.wire(false).len());
        // Small messages, and control frames, go plain.
        assert_eq!(OutFrame::text("{}").wire(true)[0], 0x81);
        assert_eq!(
            OutFrame::close(1000).wire(true).as_ref(),
            &[0x88, 2, 0x03, 0xE8]
        );
    }
}

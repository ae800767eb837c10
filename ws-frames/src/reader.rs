//! Frames off a socket, into messages. The wall reads what browsers send with it, so every
//! limit is checked before the bytes it guards are waited for or kept.

use crate::{opcode, WireError};
use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// One message or control frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// A text or binary message, its fragments joined; `compressed` when the peer deflated it
    /// (see [`crate::deflate::inflate`]).
    Data {
        text: bool,
        compressed: bool,
        payload: Bytes,
    },
    Ping(Bytes),
    Pong(Bytes),
    /// A close, with its code if it gave one.
    Close(Option<u16>),
}

/// Which end reads: a server requires masked frames, a client unmasked ones (RFC 6455 §5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    Server,
    Client,
}

/// Reads frames from `io` into [`Incoming`] messages.
pub struct FrameReader<R> {
    io: R,
    buf: BytesMut,
    end: End,
    /// The most a message may hold on the wire, its fragments together.
    max_message: usize,
    /// Whether permessage-deflate was agreed (RSV1 is allowed only then).
    deflate: bool,
    /// A fragmented message being joined: (text, compressed, so far).
    partial: Option<(bool, bool, BytesMut)>,
}

/// How much room to give the socket at a time: a client takes a whole delta in a few reads;
/// the server reads little but a close from each of a thousand clients, so it keeps a small
/// buffer per connection. Neither is zeroed first (`read_buf` reads into spare capacity).
const fn read_at_least(end: End) -> usize {
    match end {
        End::Client => 64 * 1024,
        End::Server => 4 * 1024,
    }
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(io: R, end: End, max_message: usize, deflate: bool) -> FrameReader<R> {
        FrameReader {
            io,
            buf: BytesMut::new(),
            end,
            max_message,
            deflate,
            partial: None,
        }
    }

    /// Bytes already read past the handshake (a client's reader starts with them).
    pub fn with_buffered(mut self, bytes: &[u8]) -> FrameReader<R> {
        self.buf.extend_from_slice(bytes);
        self
    }

    /// The next message; `None` when the peer closed the connection between frames.
    pub async fn next(&mut self) -> Result<Option<Incoming>, WireError> {
        loop {
            if let Some(m) = self.parse()? {
                return Ok(Some(m));
            }
            self.buf.reserve(read_at_least(self.end));
            if self.io.read_buf(&mut self.buf).await? == 0 {
                if self.buf.is_empty() && self.partial.is_none() {
                    return Ok(None);
                }
                return Err(WireError::Protocol("connection closed inside a frame"));
            }
        }
    }

    /// One message from what is buffered, if it is all there.
    fn parse(&mut self) -> Result<Option<Incoming>, WireError> {
        loop {
            let Some((header, len, fin, rsv1, op, mask)) = self.header()? else {
                return Ok(None);
            };
            if self.buf.len() < header + len {
                return Ok(None);
            }
            self.buf.advance(header);
            let mut payload = self.buf.split_to(len);
            if let Some(mask) = mask {
                for (i, b) in payload.iter_mut().enumerate() {
                    *b ^= mask[i % 4];
                }
            }
            match op {
                opcode::PING => return Ok(Some(Incoming::Ping(payload.freeze()))),
                opcode::PONG => return Ok(Some(Incoming::Pong(payload.freeze()))),
                opcode::CLOSE => {
                    let code = match payload.len() {
                        0 => None,
                        1 => return Err(WireError::Protocol("a close with a one-byte body")),
                        _ => Some(u16::from_be_bytes([payload[0], payload[1]])),
                    };
                    return Ok(Some(Incoming::Close(code)));
                }
                opcode::CONTINUATION => {
                    let Some((_, _, so_far)) = self.partial.as_mut() else {
                        return Err(WireError::Protocol("a continuation with no message begun"));
                    };
                    so_far.extend_from_slice(&payload);
                }
                _ => {
                    if self.partial.is_some() {
                        return Err(WireError::Protocol("a new message inside a fragmented one"));
                    }
                    self.partial = Some((op == opcode::TEXT, rsv1, payload));
                }
            }
            if fin {
                let (text, compressed, payload) = self.partial.take().expect("begun above");
                return Ok(Some(Incoming::Data {
                    text,
                    compressed,
                    payload: payload.freeze(),
                }));
            }
        }
    }

    /// The buffered frame's header, checked: (header length, payload length, FIN, RSV1,
    /// opcode, mask); `None` until the whole header is in.
    #[allow(clippy::type_complexity)]
    fn header(&self) -> Result<Option<(usize, usize, bool, bool, u8, Option<[u8; 4]>)>, WireError> {
        let b = &self.buf[..];
        if b.len() < 2 {
            return Ok(None);
        }
        let fin = b[0] & 0x80 != 0;
        let rsv1 = b[0] & 0x40 != 0;
        let op = b[0] & 0x0F;
        if b[0] & 0x30 != 0 {
            return Err(WireError::Protocol(
                "RSV2 or RSV3 set with no extension that uses them",
            ));
        }
        let control = op >= 0x8;
        match op {
            opcode::CONTINUATION | opcode::TEXT | opcode::BINARY => {}
            opcode::CLOSE | opcode::PING | opcode::PONG => {}
            _ => return Err(WireError::Protocol("a reserved opcode")),
        }
        if rsv1 && (!self.deflate || control || op == opcode::CONTINUATION) {
            return Err(WireError::Protocol(
                "RSV1 set where no compressed message may begin",
            ));
        }
        if control && !fin {
            return Err(WireError::Protocol("a fragmented control frame"));
        }
        let masked = b[1] & 0x80 != 0;
        match (self.end, masked) {
            (End::Server, false) => return Err(WireError::Protocol("an unmasked client frame")),
            (End::Client, true) => return Err(WireError::Protocol("a masked server frame")),
            _ => {}
        }
        let (len, mut at) = match b[1] & 0x7F {
            126 if b.len() < 4 => return Ok(None),
            126 => (u16::from_be_bytes([b[2], b[3]]) as u64, 4),
            127 if b.len() < 10 => return Ok(None),
            127 => (
                u64::from_be_bytes(b[2..10].try_into().expect("8 bytes")),
                10,
            ),
            n => (n as u64, 2),
        };
        if len >> 63 != 0 {
            return Err(WireError::Protocol("a 64-bit length with its top bit set"));
        }
        if control && len > 125 {
            return Err(WireError::Protocol("a control frame over 125 bytes"));
        }
        // Checked before any of the payload is waited for, fragments so far included.
        let so_far = self.partial.as_ref().map_or(0, |(_, _, p)| p.len()) as u64;
        if !control && so_far.saturating_add(len) > self.max_message as u64 {
            return Err(WireError::TooLarge {
                limit: self.max_message,
            });
        }
        let mask = if masked {
            if b.len() < at + 4 {
                return Ok(None);
            }
            let m = [b[at], b[at + 1], b[at + 2], b[at + 3]];
            at += 4;
            Some(m)
        } else {
            None
        };
        Ok(Some((at, len as usize, fin, rsv1, op, mask)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deflate::{deflate, inflate};
    use crate::frame::client_frame;
    use crate::OutFrame;
    use proptest::prelude::*;

    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    /// All of `bytes`, read by a server's reader with `max` and deflate agreed.
    async fn server_reads(bytes: Vec<u8>, max: usize) -> Vec<Result<Option<Incoming>, String>> {
        let mut r = FrameReader::new(&bytes[..], End::Server, max, true);
        let mut out = Vec::new();
        loop {
            let m = r.next().await.map_err(|e| e.to_string());
            let end = !matches!(m, Ok(Some(_)));
            out.push(m);
            if end {
                return out;
            }
        }
    }

    fn data(text: bool, compressed: bool, p: &[u8]) -> Result<Option<Incoming>, String> {
        Ok(Some(Incoming::Data {
            text,
            compressed,
            payload: Bytes::copy_from_slice(p),
        }))
    }

    #[tokio::test]
    async fn masked_frames_fragments_and_control_frames_between_them() {
        let mut wire = client_frame(opcode::TEXT, false, false, b"Hel", MASK);
        wire.extend(client_frame(opcode::PING, true, false, b"hi", MASK));
        wire.extend(client_frame(opcode::CONTINUATION, true, false, b"lo", MASK));
        wire.extend(client_frame(
            opcode::CLOSE,
            true,
            false,
            &1000u16.to_be_bytes(),
            MASK,
        ));
        let got = server_reads(wire, 1024).await;
        assert_eq!(
            got,
            vec![
                Ok(Some(Incoming::Ping(Bytes::from_static(b"hi")))),
                data(true, false, b"Hello"),
                Ok(Some(Incoming::Close(Some(1000)))),
                Ok(None),
            ]
        );
    }

    #[tokio::test]
    async fn a_compressed_message_inflates_whole_or_in_fragments_marked_on_the_first() {
        let m = br#"{"resume":"e.1"}"#.repeat(40);
        let d = deflate(&m);
        let (a, b) = d.split_at(d.len() / 2);
        let whole = client_frame(opcode::TEXT, true, true, &d, MASK);
        let mut fragments = client_frame(opcode::TEXT, false, true, a, MASK);
        fragments.extend(client_frame(opcode::CONTINUATION, true, false, b, MASK));
        for wire in [whole, fragments] {
            let got = server_reads(wire, 1024).await;
            let Ok(Some(Incoming::Data {
                text: true,
                compressed: true,
                payload,
            })) = &got[0]
            else {
                panic!("{got:?}");
            };
            assert_eq!(inflate(payload, 1024).unwrap(), m);
        }
        // RSV1 on the continuation as well is refused.
        let mut wire = client_frame(opcode::TEXT, false, true, a, MASK);
        wire.extend(client_frame(opcode::CONTINUATION, true, true, b, MASK));
        let got = server_reads(wire, 1024).await;
        assert!(
            matches!(got.last(), Some(Err(e)) if e.contains("RSV1")),
            "{got:?}"
        );
    }

    #[tokio::test]
    async fn what_a_server_must_refuse() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                client_frame(opcode::TEXT, true, false, b"x", [0; 4])[..0].to_vec(),
                "",
            ),
            // Unmasked: the mask bit cleared, the key dropped.
            (
                {
                    let mut f = vec![0x81, 0x01, b'x'];
                    f.truncate(3);
                    f
                },
                "unmasked",
            ),
            (
                client_frame(0x3, true, false, b"x", MASK),
                "reserved opcode",
            ),
            (
                {
                    let mut f = client_frame(opcode::TEXT, true, false, b"x", MASK);
                    f[0] |= 0x20;
                    f
                },
                "RSV2",
            ),
            (
                client_frame(opcode::PING, false, false, b"x", MASK),
                "fragmented control",
            ),
            (
                client_frame(opcode::PING, true, false, &[0; 126], MASK),
                "over 125",
            ),
            (client_frame(opcode::PING, true, true, b"x", MASK), "RSV1"),
            (
                client_frame(opcode::CONTINUATION, true, false, b"x", MASK),
                "no message begun",
            ),
            (
                {
                    let mut f = client_frame(opcode::TEXT, false, false, b"a", MASK);
                    f.extend(client_frame(opcode::TEXT, true, false, b"b", MASK));
                    f
                },
                "inside a fragmented",
            ),
            (
                client_frame(opcode::TEXT, true, false, &[b'a'; 1025], MASK),
                "over 1024 bytes",
            ),
            (
                {
                    let mut f = client_frame(opcode::TEXT, false, false, &[b'a'; 600], MASK);
                    f.extend(client_frame(
                        opcode::CONTINUATION,
                        true,
                        false,
                        &[b'a'; 600],
                        MASK,
                    ));
                    f
                },
                "over 1024 bytes",
            ),
            (
                client_frame(opcode::CLOSE, true, false, &[3], MASK),
                "one-byte",
            ),
            (
                client_frame(opcode::TEXT, true, false, b"abc", MASK)[..4].to_vec(),
                "inside a frame",
            ),
        ];
        for (wire, why) in cases {
            let got = server_reads(wire, 1024).await;
            let last = got.last().unwrap();
            if why.is_empty() {
                assert_eq!(last, &Ok(None));
                continue;
            }
            match last {
                Err(e) => assert!(e.contains(why), "{why}: {e}"),
                other => panic!("{why}: {other:?}"),
            }
        }
        // An oversized length is refused from the header alone, before its bytes arrive.
        let header = [0x81, 0xFF, 0, 0, 0, 1, 0, 0, 0, 0];
        let mut r = FrameReader::new(&header[..], End::Server, 1024, false);
        assert!(matches!(
            r.next().await,
            Err(WireError::TooLarge { limit: 1024 })
        ));
        // Without deflate agreed, RSV1 on a message is refused too.
        let f = client_frame(opcode::TEXT, true, true, b"x", MASK);
        let mut r = FrameReader::new(&f[..], End::Server, 1024, false);
        assert!(matches!(r.next().await, Err(WireError::Protocol(_))));
        // A client refuses a masked frame.
        let f = client_frame(opcode::TEXT, true, false, b"x", MASK);
        let mut r = FrameReader::new(&f[..], End::Client, 1024, false);
        assert!(matches!(r.next().await, Err(WireError::Protocol(_))));
    }

    proptest! {
        /// What the wall writes, a client reads back, whatever the sizes and however the
        /// socket splits the bytes.
        #[test]
        fn a_client_reads_back_what_the_wall_wrote(
            sizes in proptest::collection::vec(0usize..70_000, 1..6),
            deflate_ok: bool,
            chunk in 1usize..5_000,
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let messages: Vec<String> = sizes
                .iter()
                .enumerate()
                .map(|(i, &n)| format!("{i}:").repeat(n / 2 + 1)[..n].to_string())
                .collect();
            let mut wire = Vec::new();
            for m in &messages {
                wire.extend_from_slice(&OutFrame::text(m.clone()).wire(deflate_ok));
            }
            let (mut tx, rx) = tokio::io::duplex(chunk);
            let got = rt.block_on(async move {
                let writer = async move {
                    use tokio::io::AsyncWriteExt;
                    for c in wire.chunks(chunk) {
                        tx.write_all(c).await.unwrap();
                    }
                };
                let reader = async move {
                    let mut r = FrameReader::new(rx, End::Client, 1 << 20, true);
                    let mut got = Vec::new();
                    while let Some(m) = r.next().await.unwrap() {
                        let Incoming::Data { text: true, compressed, payload } = m else {
                            panic!("{m:?}")
                        };
                        let p = if compressed { inflate(&payload, 1 << 20).unwrap() } else { payload.to_vec() };
                        got.push(String::from_utf8(p).unwrap());
                    }
                    got
                };
                tokio::join!(writer, reader).1
            });
            prop_assert_eq!(got, messages);
        }
    }
}

//! permessage-deflate (RFC 7692) without context takeover: each message is a raw deflate
//! stream of its own, ended by a sync flush whose last four bytes (`00 00 ff ff`) are left off
//! on the wire and put back to inflate.

use crate::WireError;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The tail of a sync flush, left off the wire (RFC 7692 §7.2.1).
const SYNC_TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Compress one message, at zlib's default level. A delta is compressed once for all the
/// clients, so the bytes saved count a thousand times and the time once: on a storm's live
/// rows (60 KB) level 1 gave 2.7× in 0.63 ms, the default 4.6× in 0.67 ms (zlib-rs, release).
pub fn deflate(message: &[u8]) -> Vec<u8> {
    let mut c = Compress::new(Compression::default(), false);
    let mut out = Vec::with_capacity(message.len() / 3 + 64);
    loop {
        if out.len() == out.capacity() {
            out.reserve(out.capacity().max(4096));
        }
        let read = c.total_in() as usize;
        c.compress_vec(&message[read..], &mut out, FlushCompress::Sync)
            .expect("deflating into memory cannot fail");
        // Done once every byte is in and the flush left room: zlib's own rule.
        if c.total_in() as usize == message.len() && out.len() < out.capacity() {
            break;
        }
    }
    if out.ends_with(&SYNC_TAIL) {
        out.truncate(out.len() - SYNC_TAIL.len());
    }
    out
}

/// Inflate one message, refusing one that inflates to more than `limit` bytes: a few
/// kilobytes on the wire can inflate to gigabytes.
pub fn inflate(payload: &[u8], limit: usize) -> Result<Vec<u8>, WireError> {
    let mut out = Vec::new();
    Inflater::default().inflate_into(payload, limit, &mut out)?;
    Ok(out)
}

/// An inflater kept for one connection's messages. Without context takeover each message
/// starts afresh, but the inflater's state (its 32 KiB window among it) need not be
/// allocated and zeroed again for each: a client reading ten deltas a second reuses one.
pub struct Inflater {
    d: Decompress,
    opening: Vec<u8>,
}

impl Default for Inflater {
    fn default() -> Inflater {
        Inflater {
            d: Decompress::new(false),
            opening: Vec::new(),
        }
    }
}

impl Inflater {
    /// Inflate one message into `out` (cleared first; its capacity is reused), refusing one
    /// over `limit` bytes.
    pub fn inflate_into(
        &mut self,
        payload: &[u8],
        limit: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), WireError> {
        self.d.reset(false);
        out.clear();
        if out.capacity() == 0 {
            out.reserve_exact((payload.len() * 4).max(64).min(limit.saturating_add(1)));
        }
        // The payload, then the flush's tail the sender left off: fed in turn, not copied
        // together.
        for chunk in [payload, &SYNC_TAIL[..]] {
            let start = self.d.total_in();
            loop {
                if out.len() == out.capacity() {
                    if out.len() > limit {
                        return Err(WireError::TooLarge { limit });
                    }
                    let more = out
                        .capacity()
                        .min(limit.saturating_add(1) - out.len())
                        .max(64);
                    out.reserve_exact(more);
                }
                let read = (self.d.total_in() - start) as usize;
                let written = out.len();
                let status = self
                    .d
                    .decompress_vec(&chunk[read..], out, FlushDecompress::Sync)
                    .map_err(|e| WireError::Inflate(e.to_string()))?;
                if out.len() > limit {
                    return Err(WireError::TooLarge { limit });
                }
                if status == Status::StreamEnd {
                    return Ok(());
                }
                let now_read = (self.d.total_in() - start) as usize;
                if now_read == chunk.len() && out.len() < out.capacity() {
                    break;
                }
                if now_read == read && out.len() == written && out.len() < out.capacity() {
                    return Err(WireError::Inflate("the stream stops short".into()));
                }
            }
        }
        Ok(())
    }

    /// The first `n` bytes of a compressed message at most, inflating no further: enough to
    /// tell a message's type from its opening without paying for the rest.
    pub fn prefix(&mut self, payload: &[u8], n: usize) -> Result<&[u8], WireError> {
        self.d.reset(false);
        self.opening.clear();
        // It writes only into the spare capacity: at least `n`, a little more at most.
        self.opening.reserve_exact(n);
        self.d
            .decompress_vec(payload, &mut self.opening, FlushDecompress::Sync)
            .map_err(|e| WireError::Inflate(e.to_string()))?;
        self.opening.truncate(n);
        Ok(&self.opening)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delta_like(n: usize) -> Vec<u8> {
        let mut s = String::from(r#"{"type":"delta","seq":7,"live":["#);
        for i in 0..n {
            s.push_str(&format!(
                r#"["P{:05}",{}.{:02},{}],"#,
                i * 7 % 10_000,
                i % 60,
                i % 100,
                1_795_934_547_818u64 + i as u64
            ));
        }
        s.push_str("[]]}");
        s.into_bytes()
    }

    #[test]
    fn a_message_comes_back_as_it_went_and_smaller() {
        for m in [Vec::new(), b"x".to_vec(), delta_like(10), delta_like(5_000)] {
            let d = deflate(&m);
            assert!(
                !d.ends_with(&SYNC_TAIL) || m.is_empty(),
                "the flush's tail is left off"
            );
            assert_eq!(inflate(&d, m.len()).unwrap(), m);
        }
        let big = delta_like(5_000);
        assert!(deflate(&big).len() * 3 < big.len(), "a delta compresses");
    }

    #[test]
    fn a_message_over_the_limit_is_refused_by_the_limit_not_by_memory() {
        let bomb = vec![b'a'; 10_000_000];
        let d = deflate(&bomb);
        assert!(d.len() * 50 < bomb.len(), "{}", d.len());
        match inflate(&d, 64 * 1024) {
            Err(WireError::TooLarge { limit }) => assert_eq!(limit, 64 * 1024),
            other => panic!("{other:?}"),
        }
        // One byte under is fine, one over is not.
        let m = vec![b'b'; 1000];
        assert_eq!(inflate(&deflate(&m), 1000).unwrap(), m);
        assert!(matches!(
            inflate(&deflate(&m), 999),
            Err(WireError::TooLarge { .. })
        ));
    }

    #[test]
    fn one_inflater_serves_message_after_message_even_after_a_refusal() {
        let mut inf = Inflater::default();
        let mut out = Vec::new();
        for (i, m) in [
            delta_like(3),
            delta_like(2_000),
            b"{}".to_vec(),
            delta_like(1),
        ]
        .iter()
        .enumerate()
        {
            if i == 2 {
                // A bomb in between leaves nothing behind for the next message.
                let bomb = deflate(&vec![b'z'; 1 << 20]);
                assert!(inf.inflate_into(&bomb, 1000, &mut out).is_err());
                assert!(inf.inflate_into(&[0xff; 16], 1000, &mut out).is_err());
            }
            inf.inflate_into(&deflate(m), 1 << 20, &mut out).unwrap();
            assert_eq!(&out, m);
            assert_eq!(inf.prefix(&deflate(m), 8).unwrap(), &m[..m.len().min(8)]);
        }
    }

    #[test]
    fn garbage_does_not_inflate() {
        assert!(matches!(
            inflate(&[0xff; 32], 1 << 20),
            Err(WireError::Inflate(_))
        ));
    }

    #[test]
    fn the_prefix_is_the_opening() {
        let m = delta_like(1_000);
        assert_eq!(
            Inflater::default().prefix(&deflate(&m), 16).unwrap(),
            &m[..16]
        );
    }
}

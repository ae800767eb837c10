//! How records are encoded on the bus: JSON, one value per record.
//!
//! JSON keeps the topics readable with `kcat` and by any consumer; the codec is one place so a
//! binary format can replace it without touching the stages.

use crate::reading::{Reading, SensorKind};
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// A record payload that could not be decoded.
#[derive(Debug, thiserror::Error)]
#[error("cannot decode {what}: {source}")]
pub struct DecodeError {
    what: &'static str,
    #[source]
    source: serde_json::Error,
}

/// Encode a value as a record payload.
pub fn encode<T: Serialize>(value: &T) -> Bytes {
    // Serializing our own derive(Serialize) types to a Vec cannot fail: no maps with
    // non-string keys, no custom serializers that error.
    // Written into a scratch buffer kept per thread, then copied once at its exact size:
    // growing a fresh Vec reallocated several times per record on the stream stage's output
    // path, and a buffer sized by guess wastes memory in every record the bus retains.
    thread_local! {
        static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
        Ok(mut buf) => {
            buf.clear();
            serde_json::to_writer(&mut *buf, value).expect("model types always serialize");
            let bytes = Bytes::copy_from_slice(&buf);
            // One huge record must not pin its size in every thread that ever encoded it.
            if buf.capacity() > 64 * 1024 {
                *buf = Vec::new();
            }
            bytes
        }
        // Encoding from inside a `Serialize` impl: no scratch to share.
        Err(_) => Bytes::from(serde_json::to_vec(value).expect("model types always serialize")),
    })
}

/// Decode a record payload.
pub fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, DecodeError> {
    serde_json::from_slice(payload).map_err(|source| DecodeError {
        what: std::any::type_name::<T>()
            .rsplit("::")
            .next()
            .unwrap_or("record"),
        source,
    })
}

/// Decode a reading, as [`decode`] does, faster for the layout [`encode`] writes: every
/// reading the stream stage takes goes through here. Anything else (other key order,
/// whitespace, escapes, `null`, unknown fields) goes to serde_json, so what is accepted and
/// what comes out are the same either way.
pub fn decode_reading(payload: &[u8]) -> Result<Reading, DecodeError> {
    match fast_reading(payload) {
        Some(r) => Ok(r),
        None => decode(payload),
    }
}

/// `payload` exactly as `encode` lays out a reading, or `None`.
fn fast_reading(payload: &[u8]) -> Option<Reading> {
    let mut c = Cursor { s: payload };
    c.tag(b"{\"sensor\":")?;
    let sensor = c.string()?;
    c.tag(b",\"point\":")?;
    let point = c.string()?;
    c.tag(b",\"kind\":")?;
    let kind = match c.string()? {
        "depth" => SensorKind::Depth,
        "rain" => SensorKind::Rain,
        _ => return None,
    };
    c.tag(b",\"ts_ms\":")?;
    let ts_ms = c.int()?;
    c.tag(b",\"value\":")?;
    let value = c.float()?;
    let seq = if c.s.starts_with(b",\"seq\":") {
        c.tag(b",\"seq\":")?;
        Some(u64::try_from(c.int()?).ok()?)
    } else {
        None
    };
    c.tag(b",\"received_ms\":")?;
    let received_ms = c.int()?;
    c.tag(b"}")?;
    if !c.s.is_empty() {
        return None;
    }
    Some(Reading {
        sensor: sensor.to_string(),
        point: point.to_string(),
        kind,
        ts_ms,
        value,
        seq,
        received_ms,
    })
}

struct Cursor<'a> {
    s: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn tag(&mut self, t: &[u8]) -> Option<()> {
        self.s = self.s.strip_prefix(t)?;
        Some(())
    }

    /// A string without escapes or control characters (JSON forbids raw ones).
    fn string(&mut self) -> Option<&'a str> {
        let rest = self.s.strip_prefix(b"\"")?;
        let end = rest
            .iter()
            .position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
        if rest[end] != b'"' {
            return None;
        }
        let s = std::str::from_utf8(&rest[..end]).ok()?;
        self.s = &rest[end + 1..];
        Some(s)
    }

    /// A JSON integer that fits an i64 (18 digits at most, so no overflow to check).
    fn int(&mut self) -> Option<i64> {
        let (neg, digits) = match self.s.strip_prefix(b"-") {
            Some(rest) => (true, rest),
            None => (false, self.s),
        };
        let n = digits.iter().take_while(|b| b.is_ascii_digit()).count();
        if n == 0 || n > 18 || (n > 1 && digits[0] == b'0') {
            return None;
        }
        // serde_json reads `-0` as the float -0.0 and refuses it for an integer field; the
        // fast path must refuse what the general one refuses.
        if neg && digits[0] == b'0' {
            return None;
        }
        // A fraction or exponent is serde_json's to judge (it refuses them for integers).
        if matches!(digits.get(n), Some(b'.' | b'e' | b'E')) {
            return None;
        }
        let v = digits[..n]
            .iter()
            .fold(0i64, |acc, d| acc * 10 + (d - b'0') as i64);
        self.s = &digits[n..];
        Some(if neg { -v } else { v })
    }

    /// A JSON number, converted by serde_json itself so the value is bit for bit the one the
    /// general path gives.
    fn float(&mut self) -> Option<f64> {
        let n = self
            .s
            .iter()
            .take_while(|b| matches!(b, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'))
            .count();
        let v = serde_json::from_slice::<f64>(&self.s[..n]).ok()?;
        self.s = &self.s[n..];
        Some(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reading_round_trips() {
        let r = Reading {
            sensor: "WL-01".into(),
            point: "UP-01".into(),
            kind: SensorKind::Depth,
            ts_ms: 1_700_000_000_000,
            value: 12.5,
            seq: Some(3),
            received_ms: 1_700_000_000_100,
        };
        let back: Reading = decode(&encode(&r)).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn the_fast_reading_path_agrees_with_serde_json() {
        let base = Reading {
            sensor: "WL-01".into(),
            point: "UP-01".into(),
            kind: SensorKind::Rain,
            ts_ms: 1_700_000_000_000,
            value: 0.1 + 0.2,
            seq: None,
            received_ms: -5,
        };
        let mut cases: Vec<Vec<u8>> = vec![
            encode(&base).to_vec(),
            encode(&Reading {
                seq: Some(u64::MAX),
                value: -1.5e-300,
                sensor: "水位-01 é".into(),
                ..base.clone()
            })
            .to_vec(),
            encode(&Reading {
                seq: Some(0),
                value: 12.0,
                kind: SensorKind::Depth,
                ..base.clone()
            })
            .to_vec(),
        ];
        // A seq beyond 18 digits is left to serde_json; the usual readings are not.
        for case in [&cases[0], &cases[2]] {
            assert!(
                fast_reading(case).is_some(),
                "encode's own layout takes the fast path"
            );
        }
        for text in [
            r#"{"sensor":"a\"b","point":"P","kind":"rain","ts_ms":1,"value":1,"received_ms":2}"#,
            r#"{"sensor":"a","point":"P","kind":"rain","ts_ms":1,"value":1,"seq":null,"received_ms":2}"#,
            r#"{"sensor":"a","point":"P","kind":"rain","ts_ms":1.5,"value":1,"received_ms":2}"#,
            r#"{"sensor":"a","point":"P","kind":"rain","ts_ms":01,"value":1,"received_ms":2}"#,
            r#"{"sensor":"a","point":"P","kind":"rain","ts_ms":1,"value":1e400,"received_ms":2}"#,
            r#"{"sensor":"a","point":"P","kind":"rain","ts_ms":1,"value":.5,"received_ms":2}"#,
            r#"{"sensor":"a","point":"P","kind":"rain","ts_ms":1,"value":-0.0,"received_ms":2}"#,
            r#"{"sensor":"a","point":"P","kind":"hail","ts_ms":1,"value":1,"received_ms":2}"#,
            r#"{"sensor":"a","point":"P","kind":"rain","ts_ms":-1,"value":1,"seq":-1,"received_ms":2}"#,
            r#"{"sensor":"a","point":"P","kind":"rain","ts_ms":1,"value":1,"received_ms":2} "#,
            r#"{"sensor":"a","point":"P","kind":"rain","ts_ms":1,"value":1,"received_ms":2}x"#,
            r#"{"point":"P","sensor":"a","kind":"rain","ts_ms":1,"value":1,"received_ms":2}"#,
            r#"{"sensor":"a","point":"P","kind":"rain","ts_ms":99999999999999999999,"value":1,"received_ms":2}"#,
            r#"{"sensor":"a","point":"P","kind":"rain","ts_ms":1,"value":1,"received_ms":2,"x":0}"#,
            r#"{"sensor":"a","point":"P","kind":"rain","ts_ms":1,"value":1"#,
            // serde_json refuses -0 for an integer; the fast path once took it as 0.
            r#"{"sensor":"a","point":"P","kind":"rain","ts_ms":-0,"value":1,"received_ms":2}"#,
            r#"{"sensor":"a","point":"P","kind":"rain","ts_ms":1,"value":-0,"seq":-0,"received_ms":-0}"#,
        ] {
            cases.push(text.as_bytes().to_vec());
        }
        cases.push(b"{\"sensor\":\"\xff\",\"point\":\"P\",\"kind\":\"rain\",\"ts_ms\":1,\"value\":1,\"received_ms\":2}".to_vec());
        for case in cases {
            let fast = decode_reading(&case).map_err(|e| e.to_string());
            let slow = decode::<Reading>(&case).map_err(|e| e.to_string());
            match (&fast, &slow) {
                (Ok(a), Ok(b)) => {
                    assert_eq!(a, b, "{}", String::from_utf8_lossy(&case));
                    assert_eq!(a.value.to_bits(), b.value.to_bits());
                }
                _ => assert_eq!(fast, slow, "{}", String::from_utf8_lossy(&case)),
            }
        }
    }

    #[test]
    fn decode_error_names_the_type() {
        let err = decode::<Reading>(b"{\"sensor\":1}").unwrap_err();
        assert!(
            err.to_string().starts_with("cannot decode Reading"),
            "{err}"
        );
    }
}

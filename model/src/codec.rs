//! How records are encoded on the bus: JSON, one value per record.
//!
//! JSON keeps the topics readable with `kcat` and by any consumer; the codec is one place so a
//! binary format can replace it without touching the stages.

use crate::event::{AlertTransition, PointStatus};
use crate::reading::{Reading, SensorKind};
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::ops::Range;

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
        sensor: sensor.into(),
        point: point.into(),
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
        let text = &rest[..end];
        // Ids are ASCII: checked with the bytes still in hand, without `from_utf8`'s call and
        // its own pass (a few percent of the stage); anything else is checked in full.
        let s = if text.is_ascii() {
            // SAFETY: ASCII bytes are valid UTF-8.
            unsafe { std::str::from_utf8_unchecked(text) }
        } else {
            std::str::from_utf8(text).ok()?
        };
        self.s = &rest[end + 1..];
        Some(s)
    }

    /// A JSON integer that fits an i64 (18 digits at most, so no overflow to check).
    fn int(&mut self) -> Option<i64> {
        let (neg, digits) = match self.s.strip_prefix(b"-") {
            Some(rest) => (true, rest),
            None => (false, self.s),
        };
        // Digits counted and summed in one pass, eight at a time while eight are there (a
        // timestamp has 13: digit by digit, the chain of multiply-adds was most of decoding's
        // time). The sum wraps past 18 digits, but such a number is refused below and its sum
        // never used.
        let mut n = 0;
        let mut v = 0i64;
        while let Some(eight) = digits.get(n..n + 8) {
            let eight = u64::from_le_bytes(eight.try_into().expect("eight bytes"));
            if !eight_digits(eight) {
                break;
            }
            v = v
                .wrapping_mul(100_000_000)
                .wrapping_add(eight_digits_value(eight) as i64);
            n += 8;
        }
        while let Some(d) = digits.get(n).filter(|b| b.is_ascii_digit()) {
            v = v.wrapping_mul(10).wrapping_add((d - b'0') as i64);
            n += 1;
        }
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
        let text = &self.s[..n];
        let v = match short_decimal(text) {
            Some(v) => v,
            None => serde_json::from_slice::<f64>(text).ok()?,
        };
        self.s = &self.s[n..];
        Some(v)
    }
}

/// Whether the eight bytes of `chunk` (read little-endian) are all ASCII digits.
///
/// Per byte, `b + 0x46` sets the high bit when `0x3A <= b <= 0xB9` (above that it carries out
/// instead), and `b - 0x30` sets it when `b < 0x30` or `b >= 0xB0`: between them every byte
/// but `b'0'..=b'9'`. A carry or borrow can cross into the next byte only from a byte that is
/// not a digit, and the lowest such byte gets none from below, so it is always caught: no
/// chunk with a non-digit passes.
fn eight_digits(chunk: u64) -> bool {
    (chunk.wrapping_add(0x4646_4646_4646_4646) | chunk.wrapping_sub(0x3030_3030_3030_3030))
        & 0x8080_8080_8080_8080
        == 0
}

/// The value of eight ASCII digits read little-endian (the first digit in the lowest byte):
/// the four pairs first, then the pairs combined in one step, each multiplied by its power of
/// a hundred into the upper half of the word.
fn eight_digits_value(chunk: u64) -> u32 {
    const LOW_BYTES: u64 = 0x0000_00FF_0000_00FF;
    const HUNDREDS_AND_MILLIONS: u64 = 100 + (1_000_000 << 32);
    const ONES_AND_TEN_THOUSANDS: u64 = 1 + (10_000 << 32);
    let digits = chunk.wrapping_sub(0x3030_3030_3030_3030);
    // Bytes 0, 2, 4 and 6 now hold the four pairs' values (tens × 10 + ones, at most 99); the
    // odd bytes hold overlaps of neighbouring pairs, masked off below.
    let pairs = digits.wrapping_mul(10).wrapping_add(digits >> 8);
    let eight = ((pairs & LOW_BYTES).wrapping_mul(HUNDREDS_AND_MILLIONS))
        .wrapping_add(((pairs >> 16) & LOW_BYTES).wrapping_mul(ONES_AND_TEN_THOUSANDS))
        >> 32;
    eight as u32
}

/// A JSON number of at most 15 digits and no exponent (`-12.5`, `0.25`, `7`), converted without
/// serde_json's machinery: every value a sensor sends looks like this. The digits make an
/// integer below 2^53 and the divisor a power of ten up to 10^15, both exact in an f64, so the
/// one division is correctly rounded: the same value serde_json (with `float_roundtrip`) reads.
/// `None` for anything else, which is left to serde_json.
fn short_decimal(text: &[u8]) -> Option<f64> {
    const POWERS: [f64; 16] = [
        1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
    ];
    let (negative, rest) = match text.split_first()? {
        (b'-', rest) => (true, rest),
        _ => (false, text),
    };
    let (whole, fraction) = match rest.iter().position(|&b| b == b'.') {
        Some(dot) => (&rest[..dot], Some(&rest[dot + 1..])),
        None => (rest, None),
    };
    // JSON's grammar: a whole part without leading zeros, and digits after a point.
    let digits = |part: &[u8]| !part.is_empty() && part.iter().all(u8::is_ascii_digit);
    if !digits(whole) || (whole.len() > 1 && whole[0] == b'0') {
        return None;
    }
    let fraction = match fraction {
        Some(f) if !digits(f) => return None,
        Some(f) => f,
        None => &[],
    };
    if whole.len() + fraction.len() > 15 {
        return None;
    }
    let mantissa = whole
        .iter()
        .chain(fraction)
        .fold(0u64, |m, d| m * 10 + (d - b'0') as u64);
    let value = mantissa as f64 / POWERS[fraction.len()];
    Some(if negative { -value } else { value })
}

/// The records of one batch encoded into one buffer, each as [`encode`] would encode it:
/// one allocation for the whole batch, of which every record's key and payload is a slice
/// ([`Bytes::slice`] of [`BatchEncoder::finish`]).
///
/// The stream stage hands the bus an epoch's outputs at once. A buffer per record was an
/// allocation, a copy out of the scratch buffer and the first touch of fresh memory each:
/// with serde's own work, about a fifth of the stage's time. Slices share the allocation, so
/// it is freed with the batch's last record: records that may outlive the others (another
/// topic's, or another partition's on a bus that trims each partition on its own) belong in a
/// batch of their own.
#[derive(Default)]
pub struct BatchEncoder {
    buf: Vec<u8>,
}

impl BatchEncoder {
    /// An encoder whose buffer starts at `bytes`.
    pub fn with_capacity(bytes: usize) -> Self {
        BatchEncoder {
            buf: Vec::with_capacity(bytes),
        }
    }

    /// Append `bytes` as they are (a record's key); returns where they are.
    pub fn bytes(&mut self, bytes: &[u8]) -> Range<usize> {
        let start = self.buf.len();
        self.buf.extend_from_slice(bytes);
        start..self.buf.len()
    }

    /// Append `value` encoded as [`encode`] encodes it; returns where it is.
    pub fn value<T: Serialize>(&mut self, value: &T) -> Range<usize> {
        let start = self.buf.len();
        serde_json::to_writer(&mut self.buf, value).expect("model types always serialize");
        start..self.buf.len()
    }

    /// Append `status` encoded as [`encode`] encodes it, byte for byte, without serde's
    /// machinery: a status is what the stream stage writes most, one per point per epoch
    /// (the derive's field order, its `skip_serializing_if`s, `null` for a float that is not
    /// finite, floats formatted by the crate serde_json itself uses).
    pub fn status(&mut self, status: &PointStatus) -> Range<usize> {
        let start = self.buf.len();
        write_status(&mut self.buf, status);
        start..self.buf.len()
    }

    /// Append `transition` encoded as [`encode`] encodes it, byte for byte, as
    /// [`BatchEncoder::status`] does a status.
    pub fn transition(&mut self, transition: &AlertTransition) -> Range<usize> {
        let start = self.buf.len();
        write_transition(&mut self.buf, transition);
        start..self.buf.len()
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Bytes it can hold before its buffer must grow (a reallocation and a copy of all
    /// written so far).
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Nothing written yet.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The whole batch, to take each record's range of.
    pub fn finish(mut self) -> Bytes {
        // Every slice pins the whole allocation for as long as a bus retains its record:
        // room reserved but never written is not kept with it.
        if self.buf.capacity() - self.buf.len() > self.buf.len() / 8 {
            self.buf.shrink_to_fit();
        }
        Bytes::from(self.buf)
    }
}

/// True when JSON needs `text` escaped: the hand-written paths leave such text to serde_json
/// (ids and rule texts come from the config and the rules, so this is the rare case, not
/// worth a second escaper to keep equal to serde_json's).
#[inline]
fn needs_escape(text: &str) -> bool {
    text.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20)
}

// The pieces of a JSON object as serde_json writes them. Inlined so each name is a copy of a
// known length, not a call.

#[inline(always)]
fn put_text(out: &mut Vec<u8>, name: &[u8], value: &str) {
    out.extend_from_slice(name);
    out.push(b'"');
    out.extend_from_slice(value.as_bytes());
    out.push(b'"');
}

#[inline(always)]
fn put_int(out: &mut Vec<u8>, name: &[u8], value: i64) {
    out.extend_from_slice(name);
    out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
}

#[inline(always)]
fn put_float(out: &mut Vec<u8>, name: &[u8], value: f64) {
    out.extend_from_slice(name);
    if value.is_finite() {
        if put_thousandths(out, value) {
            return;
        }
        out.extend_from_slice(zmij::Buffer::new().format_finite(value).as_bytes());
    } else {
        out.extend_from_slice(b"null");
    }
}

/// `value` written as the general formatting would write it, when it is the double nearest
/// a decimal with three places at most (`12.34`, `0.005`, `-3.0`): true if written. Statuses
/// carry such figures (the stage rounds them), and the general formatting's search for the
/// shortest digits is wasted on them.
///
/// The same text. The general formatting writes the shortest decimal that reads back as the
/// double (the nearest of those), in plain notation from 10⁻⁵ to 10¹⁵; that is `n / 1000`, its
/// trailing zeros dropped. Every decimal that reads back as `value` lies within half a step
/// between doubles of it (under 0.0001 below 10¹²), so one as short or shorter would be either
/// another decimal of three places or fewer (at least 0.001 away) or one of more places, which
/// then leads at least a place below `value` (at least 0.0001 away). Zero is left to the
/// general formatting (its sign), as is everything else; the tests compare the two.
fn put_thousandths(out: &mut Vec<u8>, value: f64) -> bool {
    let scaled = (value * 1000.0).round();
    if value == 0.0 || scaled.abs() >= 1e15 || scaled / 1000.0 != value {
        return false;
    }
    let n = scaled as i64;
    if n < 0 {
        out.push(b'-');
    }
    let n = n.unsigned_abs();
    out.extend_from_slice(itoa::Buffer::new().format(n / 1000).as_bytes());
    out.push(b'.');
    // The three places with the zeros behind the last digit dropped, one kept if all are.
    let places = n % 1000;
    let (tenths, hundredths, thousandths) = (places / 100, places / 10 % 10, places % 10);
    out.push(b'0' + tenths as u8);
    if hundredths != 0 || thousandths != 0 {
        out.push(b'0' + hundredths as u8);
    }
    if thousandths != 0 {
        out.push(b'0' + thousandths as u8);
    }
    true
}

#[inline(always)]
fn put_bool(out: &mut Vec<u8>, name: &[u8], value: bool) {
    out.extend_from_slice(name);
    out.extend_from_slice(if value { b"true" } else { b"false" });
}

/// `status` as serde_json writes it (the derive's field order, its `skip_serializing_if`s,
/// `null` for a float that is not finite, floats formatted by the crate serde_json uses).
fn write_status(out: &mut Vec<u8>, status: &PointStatus) {
    // Every field named, so a new one cannot be left out without this failing to compile.
    let PointStatus {
        point,
        kind,
        level,
        data_state,
        depth_cm,
        rise_cm_per_min,
        rain_10m_mm,
        rain_1h_mm,
        rain_3h_mm,
        rain_24h_mm,
        last_reading_ms,
        qc_flags,
        next_level,
        minutes_to_next,
        flapping,
        as_of_ms,
    } = status;
    if needs_escape(point) {
        serde_json::to_writer(out, status).expect("model types always serialize");
        return;
    }
    put_text(out, b"{\"point\":", point);
    put_text(out, b",\"kind\":", kind.as_str());
    put_text(out, b",\"level\":", level.as_str());
    put_text(out, b",\"data_state\":", data_state.as_str());
    let floats = [
        (&b",\"depth_cm\":"[..], depth_cm),
        (b",\"rise_cm_per_min\":", rise_cm_per_min),
        (b",\"rain_10m_mm\":", rain_10m_mm),
        (b",\"rain_1h_mm\":", rain_1h_mm),
        (b",\"rain_3h_mm\":", rain_3h_mm),
        (b",\"rain_24h_mm\":", rain_24h_mm),
    ];
    for (name, value) in floats {
        if let Some(v) = value {
            put_float(out, name, *v);
        }
    }
    if let Some(ms) = last_reading_ms {
        put_int(out, b",\"last_reading_ms\":", *ms);
    }
    if !qc_flags.is_empty() {
        out.extend_from_slice(b",\"qc_flags\":[");
        for (i, flag) in qc_flags.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            put_text(out, b"", flag.as_str());
        }
        out.push(b']');
    }
    if let Some(next) = next_level {
        put_text(out, b",\"next_level\":", next.as_str());
    }
    if let Some(minutes) = minutes_to_next {
        put_float(out, b",\"minutes_to_next\":", *minutes);
    }
    put_bool(out, b",\"flapping\":", *flapping);
    put_int(out, b",\"as_of_ms\":", *as_of_ms);
    out.push(b'}');
}

/// `transition` as serde_json writes it, as [`write_status`] does a status.
fn write_transition(out: &mut Vec<u8>, transition: &AlertTransition) {
    let AlertTransition {
        point,
        point_kind,
        transition: kind,
        from,
        to,
        event_ms,
        processed_ms,
        rule,
        value,
        rise_cm_per_min,
        late,
        next_level,
        minutes_to_next,
        flapping,
    } = transition;
    if needs_escape(point) || needs_escape(rule) {
        serde_json::to_writer(out, transition).expect("model types always serialize");
        return;
    }
    put_text(out, b"{\"point\":", point);
    put_text(out, b",\"point_kind\":", point_kind.as_str());
    put_text(out, b",\"transition\":", kind.as_str());
    put_text(out, b",\"from\":", from.as_str());
    put_text(out, b",\"to\":", to.as_str());
    put_int(out, b",\"event_ms\":", *event_ms);
    put_int(out, b",\"processed_ms\":", *processed_ms);
    put_text(out, b",\"rule\":", rule);
    put_float(out, b",\"value\":", *value);
    if let Some(rise) = rise_cm_per_min {
        put_float(out, b",\"rise_cm_per_min\":", *rise);
    }
    put_bool(out, b",\"late\":", *late);
    if let Some(next) = next_level {
        put_text(out, b",\"next_level\":", next.as_str());
    }
    if let Some(minutes) = minutes_to_next {
        put_float(out, b",\"minutes_to_next\":", *minutes);
    }
    put_bool(out, b",\"flapping\":", *flapping);
    out.push(b'}');
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

    mod fast_paths {
        use super::super::*;
        use crate::config::PointKind;
        use crate::event::{QcFlag, TransitionKind};
        use crate::level::{DataState, Level};
        use proptest::prelude::*;

        fn float() -> impl Strategy<Value = Option<f64>> {
            prop_oneof![
                Just(None),
                any::<f64>().prop_map(Some),
                (-1000i32..1000).prop_map(|c| Some(c as f64 / 100.0)),
                // As the stage rounds a status's figures, up to where the short path stops.
                (-1_000_000_000_000_000i64..1_000_000_000_000_000)
                    .prop_map(|c| Some(c as f64 / 1000.0)),
                prop::sample::select(vec![
                    f64::NAN,
                    f64::INFINITY,
                    f64::NEG_INFINITY,
                    -0.0,
                    0.0,
                    1e21,
                    1e-7,
                    f64::MIN_POSITIVE,
                    f64::MAX,
                ])
                .prop_map(Some),
            ]
        }

        fn level() -> impl Strategy<Value = Level> {
            prop::sample::select(vec![
                Level::Normal,
                Level::Blue,
                Level::Yellow,
                Level::Orange,
                Level::Red,
            ])
        }

        prop_compose! {
            fn status()(
                point in prop_oneof!["[A-Z]{2}-[0-9]{1,5}", ".{0,12}", "[\"\\\\\u{0}-\u{1f}a]{1,4}"],
                kind in prop::sample::select(vec![PointKind::RainGauge, PointKind::LowPoint, PointKind::Underpass]),
                level in level(),
                data_state in prop::sample::select(vec![DataState::Fresh, DataState::Late, DataState::Suspect, DataState::Silent]),
                floats in prop::collection::vec(float(), 7),
                last_reading_ms in prop::option::of(any::<i64>()),
                qc_flags in prop::collection::vec(prop::sample::select(vec![QcFlag::Range, QcFlag::Spike, QcFlag::Stuck, QcFlag::Rate, QcFlag::RainIntensity]), 0..4),
                next_level in prop::option::of(level()),
                flapping in any::<bool>(),
                as_of_ms in any::<i64>(),
            ) -> PointStatus {
                PointStatus {
                    point: point.as_str().into(),
                    kind,
                    level,
                    data_state,
                    depth_cm: floats[0],
                    rise_cm_per_min: floats[1],
                    rain_10m_mm: floats[2],
                    rain_1h_mm: floats[3],
                    rain_3h_mm: floats[4],
                    rain_24h_mm: floats[5],
                    last_reading_ms,
                    qc_flags,
                    next_level,
                    minutes_to_next: floats[6],
                    flapping,
                    as_of_ms,
                }
            }
        }

        prop_compose! {
            fn transition()(
                point in prop_oneof!["[A-Z]{2}-[0-9]{1,5}", ".{0,12}"],
                point_kind in prop::sample::select(vec![PointKind::RainGauge, PointKind::LowPoint, PointKind::Underpass]),
                transition in prop::sample::select(vec![
                    TransitionKind::Raised,
                    TransitionKind::Upgraded,
                    TransitionKind::Downgraded,
                    TransitionKind::Cleared,
                    TransitionKind::Silent,
                    TransitionKind::Recovered,
                ]),
                levels in (level(), level()),
                times in (any::<i64>(), any::<i64>()),
                rule in prop_oneof![
                    "depth [0-9]{1,3}\\.[0-9] cm >= (blue|red) [0-9]{2} cm",
                    "rain 3h [0-9]\\.[0-9] mm >= 短时强降水 20 mm \\(blue\\)",
                    ".{0,24}",
                ],
                floats in prop::collection::vec(float(), 3),
                late in any::<bool>(),
                next_level in prop::option::of(level()),
                flapping in any::<bool>(),
            ) -> AlertTransition {
                AlertTransition {
                    point,
                    point_kind,
                    transition,
                    from: levels.0,
                    to: levels.1,
                    event_ms: times.0,
                    processed_ms: times.1,
                    rule,
                    value: floats[0].unwrap_or(f64::NAN),
                    rise_cm_per_min: floats[1],
                    late,
                    next_level,
                    minutes_to_next: floats[2],
                    flapping,
                }
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(4000))]
            /// A value read the short way is the value serde_json reads, bit for bit, and what
            /// the short way does not take, serde_json still judges.
            #[test]
            fn a_number_is_read_as_serde_json_reads_it(
                text in prop_oneof![
                    any::<f64>().prop_map(|v| serde_json::to_string(&v).unwrap()),
                    (-100_000i64..100_000).prop_map(|c| serde_json::to_string(&(c as f64 / 100.0)).unwrap()),
                    "-?(0|[1-9][0-9]{0,17})(\\.[0-9]{1,18})?",
                    "-?[0-9.eE+-]{1,12}",
                ]
            ) {
                let mut cursor = Cursor { s: text.as_bytes() };
                let fast = cursor.float().filter(|_| cursor.s.is_empty());
                let general = serde_json::from_str::<f64>(&text).ok();
                prop_assert_eq!(fast.map(f64::to_bits), general.map(f64::to_bits), "{}", text);
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(4000))]
            /// An integer is read as serde_json reads an i64, eight digits at a time or one,
            /// and whatever follows it (any byte, not only valid UTF-8) is left where it was.
            #[test]
            fn an_integer_is_read_as_serde_json_reads_it(
                (negative, number, follows) in (
                    any::<bool>(),
                    prop_oneof![
                        any::<i64>().prop_map(|v| v.unsigned_abs().to_string()),
                        (0i64..100_000_000_000_000).prop_map(|v| v.to_string()),
                        "[0-9]{0,24}",
                    ],
                    prop::collection::vec(
                        prop_oneof![
                            any::<u8>(),
                            prop::sample::select(b".eE,}x:/ ".to_vec()),
                        ],
                        0..10,
                    ),
                )
            ) {
                let mut text = Vec::new();
                if negative {
                    text.push(b'-');
                }
                text.extend_from_slice(number.as_bytes());
                // What follows starts with something other than a digit.
                let follows: Vec<u8> = follows.into_iter().skip_while(u8::is_ascii_digit).collect();
                let at = text.len();
                text.extend_from_slice(&follows);
                let mut cursor = Cursor { s: &text };
                let fast = cursor.int();
                // The general path judges the number alone, without what follows.
                let general = serde_json::from_slice::<i64>(&text[..at]).ok();
                let shown = String::from_utf8_lossy(&text);
                if matches!(follows.first(), Some(b'.' | b'e' | b'E')) {
                    // A fraction or exponent is left to serde_json.
                    prop_assert_eq!(fast, None, "{}", shown);
                } else if general.is_some_and(|v| v.unsigned_abs() < 1_000_000_000_000_000_000) {
                    // Up to 18 digits the fast path reads what serde_json reads.
                    prop_assert_eq!(fast, general, "{}", shown);
                    prop_assert_eq!(cursor.s, &follows[..], "{}", shown);
                } else {
                    // What serde_json refuses, or longer than 18 digits: never read as something else.
                    prop_assert_eq!(fast, None, "{}", shown);
                }
            }

            /// A reading's ids, whatever their bytes (ASCII, other UTF-8, not UTF-8, escapes,
            /// control characters), decode as serde_json decodes them, or are refused as it
            /// refuses them.
            #[test]
            fn a_reading_with_any_ids_decodes_as_serde_json_decodes_it(
                sensor in prop_oneof![
                    "[A-Z0-9-]{0,12}".prop_map(String::into_bytes),
                    ".{0,8}".prop_map(String::into_bytes),
                    prop::collection::vec(any::<u8>(), 0..12),
                ],
                point in prop_oneof![
                    "[A-Z0-9-]{0,12}".prop_map(String::into_bytes),
                    prop::collection::vec(any::<u8>(), 0..12),
                ],
            ) {
                let mut text = b"{\"sensor\":\"".to_vec();
                text.extend_from_slice(&sensor);
                text.extend_from_slice(b"\",\"point\":\"");
                text.extend_from_slice(&point);
                text.extend_from_slice(b"\",\"kind\":\"depth\",\"ts_ms\":1783000000000,\"value\":12.5,\"seq\":7,\"received_ms\":1783000000100}");
                let fast = decode_reading(&text).map_err(|e| e.to_string());
                let general = decode::<Reading>(&text).map_err(|e| e.to_string());
                prop_assert_eq!(fast, general, "{}", String::from_utf8_lossy(&text));
            }
        }

        /// The short path for decimals of three places writes what the general formatting
        /// writes, or leaves the value to it: every thousandth from -2000 to 2000 (all but zero
        /// written short), the same near 10¹² where the path stops, and values near a
        /// thousandth but not one.
        #[test]
        fn thousandths_are_written_as_the_general_formatting_writes_them() {
            let general = |v: f64| zmij::Buffer::new().format_finite(v).to_string();
            let edge = 1_000_000_000_000_000i64;
            let thousandths = (-2_000_000i64..=2_000_000)
                .chain(edge - 2_000..edge + 2_000)
                .chain(-edge - 2_000..-edge + 2_000)
                .map(|n| n as f64 / 1000.0);
            let near = [0.30000000000000004, 0.1 + 0.7, 12.345_000_000_1, 1e-4, 5e-4];
            let mut short = 0;
            for v in thousandths.chain(near) {
                let mut out = Vec::new();
                if put_thousandths(&mut out, v) {
                    short += (v.abs() < 2001.0) as usize;
                    assert_eq!(String::from_utf8(out).unwrap(), general(v), "{v:?}");
                } else {
                    assert!(out.is_empty(), "{v:?}");
                }
            }
            // Every figure a status shows takes the short path, all but zero.
            assert_eq!(short, 4_000_000);
            for v in near {
                assert!(!put_thousandths(&mut Vec::new(), v), "{v:?}");
            }
        }

        /// Every byte value at every place of a chunk of digits: the check passes only digits,
        /// and reads the value they spell.
        #[test]
        fn eight_bytes_are_digits_only_when_each_is() {
            for digits in [*b"00000000", *b"99999999", *b"12345678", *b"90817263"] {
                let value =
                    |bytes: &[u8; 8]| bytes.iter().fold(0u32, |v, d| v * 10 + (d - b'0') as u32);
                assert!(eight_digits(u64::from_le_bytes(digits)));
                assert_eq!(
                    eight_digits_value(u64::from_le_bytes(digits)),
                    value(&digits)
                );
                for place in 0..8 {
                    for byte in 0..=255u8 {
                        let mut bytes = digits;
                        bytes[place] = byte;
                        let chunk = u64::from_le_bytes(bytes);
                        assert_eq!(eight_digits(chunk), byte.is_ascii_digit(), "{bytes:?}");
                        if byte.is_ascii_digit() {
                            assert_eq!(eight_digits_value(chunk), value(&bytes), "{bytes:?}");
                        }
                        // Two non-digits together, one of them below (a carry or borrow from it).
                        for other in (0..place)
                            .map(|p| (p, 0xFFu8))
                            .chain((0..place).map(|p| (p, b'/')))
                        {
                            let mut two = bytes;
                            two[other.0] = other.1;
                            assert!(!eight_digits(u64::from_le_bytes(two)), "{two:?}");
                        }
                    }
                }
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]
            #[test]
            fn a_transition_is_written_byte_for_byte_as_serde_json_writes_it(t in transition()) {
                let mut batch = BatchEncoder::default();
                let at = batch.transition(&t);
                let bytes = batch.finish();
                let general = serde_json::to_vec(&t).unwrap();
                prop_assert_eq!(
                    String::from_utf8_lossy(&bytes[at]),
                    String::from_utf8_lossy(&general)
                );
            }

            /// What the bus carries must not depend on which path wrote it: every consumer
            /// (wall, sink, alerts, replay) reads what serde_json would have written.
            #[test]
            fn a_status_is_written_byte_for_byte_as_serde_json_writes_it(s in status()) {
                let mut batch = BatchEncoder::default();
                let at = batch.status(&s);
                let bytes = batch.finish();
                let general = serde_json::to_vec(&s).unwrap();
                prop_assert_eq!(
                    String::from_utf8_lossy(&bytes[at]),
                    String::from_utf8_lossy(&general)
                );
            }

            #[test]
            fn every_record_of_a_batch_is_its_own_slice(statuses in prop::collection::vec(status(), 1..20)) {
                let mut batch = BatchEncoder::with_capacity(64);
                let places: Vec<_> = statuses
                    .iter()
                    .map(|s| (batch.bytes(s.point.as_bytes()), batch.status(s), batch.value(s)))
                    .collect();
                let whole = batch.finish();
                for (s, (key, fast, general)) in statuses.iter().zip(places) {
                    prop_assert_eq!(&whole.slice(key)[..], s.point.as_bytes());
                    prop_assert_eq!(&whole.slice(fast.clone())[..], &encode(s)[..]);
                    prop_assert_eq!(&whole.slice(general)[..], &encode(s)[..]);
                    let back: PointStatus = decode(&whole.slice(fast)).unwrap();
                    prop_assert_eq!(&back.point, &s.point);
                }
            }
        }
    }
}

//! Splitting a request body into records: one JSON object, a JSON array, or NDJSON.
//!
//! Each record keeps its original bytes so a reject can carry exactly what the device sent.

use floodcmd_model::event::RejectReason;
use serde::Deserialize;
use serde_json::value::RawValue;

/// One record of a body: its index, its bytes, and what parsing made of it.
#[derive(Debug)]
pub struct RawRecord<'a> {
    /// Position in the body (0-based; line index for NDJSON).
    pub index: usize,
    /// The record's own bytes.
    pub bytes: &'a [u8],
    /// The parsed reading, or why it could not be parsed.
    pub parsed: Result<DeviceReading, (RejectReason, String)>,
}

/// A reading as a device sends it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceReading {
    /// Sensor id.
    pub sensor: String,
    /// Event time: RFC 3339 text or integer milliseconds since the epoch.
    #[serde(deserialize_with = "timestamp")]
    pub ts: Timestamp,
    /// The measurement. Devices send `"NaN"` as text (or `null`) when the probe fails.
    #[serde(deserialize_with = "value")]
    pub value: Value,
    /// Device sequence number.
    #[serde(default)]
    pub seq: Option<u64>,
}

/// Event time as sent.
#[derive(Debug, Clone, PartialEq)]
pub enum Timestamp {
    /// Milliseconds since the epoch.
    Millis(i64),
    /// RFC 3339.
    Text(String),
}

/// A value as sent: a number, or text a device writes instead of a number.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A JSON number.
    Number(f64),
    /// Text such as `"NaN"`, `"inf"` or `"12.5"`.
    Text(String),
    /// `null`.
    Null(()),
}

// Hand-written visitors instead of `#[serde(untagged)]`: untagged enums buffer every field
// into an intermediate tree first, which costs more than the rest of the parse together.
struct TimestampVisitor;

impl<'de> serde::de::Visitor<'de> for TimestampVisitor {
    type Value = Timestamp;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("milliseconds since the epoch or an RFC 3339 string")
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Timestamp, E> {
        Ok(Timestamp::Millis(v))
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Timestamp, E> {
        i64::try_from(v)
            .map(Timestamp::Millis)
            .map_err(|_| E::custom(format!("ts {v} is out of range")))
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Timestamp, E> {
        if v.is_finite() && v.abs() < 9.0e15 {
            Ok(Timestamp::Millis(v as i64))
        } else {
            Err(E::custom(format!("ts {v} is out of range")))
        }
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Timestamp, E> {
        Ok(Timestamp::Text(v.to_string()))
    }
}

fn timestamp<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
    d.deserialize_any(TimestampVisitor)
}

struct ValueVisitor;

impl<'de> serde::de::Visitor<'de> for ValueVisitor {
    type Value = Value;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a number, a string or null")
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v as f64))
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v as f64))
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Number(v))
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Text(v.to_string()))
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null(()))
    }
    fn visit_none<E: serde::de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null(()))
    }
}

fn value<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Value, D::Error> {
    d.deserialize_any(ValueVisitor)
}

/// How the body is framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// `application/json`: one object or an array of objects.
    Json,
    /// `application/x-ndjson`: one object per line.
    NdJson,
}

impl Framing {
    /// From a Content-Type header value (parameters ignored).
    pub fn from_content_type(ct: Option<&str>) -> Framing {
        match ct.map(|c| {
            c.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        }) {
            Some(c)
                if c == "application/x-ndjson"
                    || c == "application/jsonl"
                    || c == "application/ndjson" =>
            {
                Framing::NdJson
            }
            _ => Framing::Json,
        }
    }
}

fn parse_one(bytes: &[u8]) -> Result<DeviceReading, (RejectReason, String)> {
    serde_json::from_slice::<DeviceReading>(bytes).map_err(|e| {
        let msg = e.to_string();
        let reason = if msg.starts_with("missing field") {
            RejectReason::MissingField
        } else {
            RejectReason::Malformed
        };
        (reason, msg)
    })
}

/// Split a body into records. A body that is not JSON at all becomes one malformed record.
pub fn split(body: &[u8], framing: Framing) -> Vec<RawRecord<'_>> {
    match framing {
        Framing::NdJson => body
            .split(|&b| b == b'\n')
            .enumerate()
            .filter(|(_, line)| !line.iter().all(u8::is_ascii_whitespace))
            .map(|(index, line)| {
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                RawRecord {
                    index,
                    bytes: line,
                    parsed: parse_one(line),
                }
            })
            .collect(),
        Framing::Json => {
            let first = body.iter().find(|b| !b.is_ascii_whitespace());
            if first == Some(&b'[') {
                match serde_json::from_slice::<Vec<&RawValue>>(body) {
                    Ok(items) => items
                        .into_iter()
                        .enumerate()
                        .map(|(index, raw)| {
                            let text = raw.get();
                            // RawValue borrows from `body`; find its bytes there to keep lifetimes simple.
                            let start = text.as_ptr() as usize - body.as_ptr() as usize;
                            let bytes = &body[start..start + text.len()];
                            RawRecord {
                                index,
                                bytes,
                                parsed: parse_one(bytes),
                            }
                        })
                        .collect(),
                    Err(e) => vec![RawRecord {
                        index: 0,
                        bytes: body,
                        parsed: Err((
                            RejectReason::Malformed,
                            format!("body is not a JSON array of readings: {e}"),
                        )),
                    }],
                }
            } else {
                vec![RawRecord {
                    index: 0,
                    bytes: body,
                    parsed: parse_one(body),
                }]
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn array_records_keep_their_own_bytes() {
        let body = br#"[{"sensor":"a","ts":1,"value":1.5}, {"sensor":"b","ts":"x"}]"#;
        let recs = split(body, Framing::Json);
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[0].bytes, br#"{"sensor":"a","ts":1,"value":1.5}"#);
        assert!(recs[0].parsed.is_ok());
        let (reason, msg) = recs[1].parsed.as_ref().unwrap_err();
        assert_eq!(*reason, RejectReason::MissingField, "{msg}");
        assert!(msg.contains("value"), "{msg}");
    }

    #[test]
    fn ndjson_skips_blank_lines_and_keeps_line_numbers() {
        let body = b"{\"sensor\":\"a\",\"ts\":1,\"value\":2}\n\n{not json}\r\n";
        let recs = split(body, Framing::NdJson);
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[1].index, 2);
        assert_eq!(
            recs[1].parsed.as_ref().unwrap_err().0,
            RejectReason::Malformed
        );
    }

    #[test]
    fn nan_as_text_parses_so_validation_can_name_it() {
        let recs = split(br#"{"sensor":"a","ts":1,"value":"NaN"}"#, Framing::Json);
        assert_eq!(
            recs[0].parsed.as_ref().unwrap().value,
            Value::Text("NaN".into())
        );
        // A bare NaN token is not JSON: a malformed record with line and column.
        let recs = split(br#"{"sensor":"a","ts":1,"value":NaN}"#, Framing::Json);
        let (reason, msg) = recs[0].parsed.as_ref().unwrap_err();
        assert_eq!(*reason, RejectReason::Malformed);
        assert!(msg.contains("column"), "{msg}");
    }
}

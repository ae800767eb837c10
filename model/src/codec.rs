//! How records are encoded on the bus: JSON, one value per record.
//!
//! JSON keeps the topics readable with `kcat` and by any consumer; the codec is one place so a
//! binary format can replace it without touching the stages.

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
    Bytes::from(serde_json::to_vec(value).expect("model types always serialize"))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reading::{Reading, SensorKind};

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
    fn decode_error_names_the_type() {
        let err = decode::<Reading>(b"{\"sensor\":1}").unwrap_err();
        assert!(
            err.to_string().starts_with("cannot decode Reading"),
            "{err}"
        );
    }
}

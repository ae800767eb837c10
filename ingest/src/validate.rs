//! Judging one record: is it a reading floodcmd can trust enough to compute with?
//!
//! Checks, in order: known sensor, a finite number, inside the sensor's physical range, a
//! timestamp neither in the future nor beyond the retention horizon, and a sequence number not
//! seen before. Each failure names the field and the value.

use crate::decode::{DeviceReading, Timestamp, Value};
use floodcmd_model::event::RejectReason;
use floodcmd_model::time::Millis;
use floodcmd_model::{District, Reading};
use std::collections::{HashMap, VecDeque};

/// How many recent sequence numbers per sensor are remembered for duplicate detection.
const SEQ_MEMORY: usize = 128;

/// Limits on time.
#[derive(Clone, Copy, Debug)]
pub struct TimeLimits {
    /// Readings stamped later than now + this are refused.
    pub max_future_ms: Millis,
    /// Readings stamped earlier than now − this are refused.
    pub retention_ms: Millis,
}

/// A refused record: reason code, detail, and the sensor if it could be read.
#[derive(Clone, Debug, PartialEq)]
pub struct Refusal {
    /// Reason code.
    pub reason: RejectReason,
    /// What exactly is wrong.
    pub detail: String,
    /// Sensor id, when the record had one.
    pub sensor: Option<String>,
}

/// Validates records against the district; remembers recent sequence numbers.
pub struct Validator {
    limits: TimeLimits,
    recent_seq: HashMap<String, VecDeque<u64>>,
}

impl Validator {
    /// A validator with these time limits.
    pub fn new(limits: TimeLimits) -> Self {
        Validator {
            limits,
            recent_seq: HashMap::new(),
        }
    }

    /// Judge one parsed record at processing time `now`.
    pub fn validate(
        &mut self,
        district: &District,
        r: &DeviceReading,
        now: Millis,
    ) -> Result<Reading, Refusal> {
        let refuse = |reason, detail: String| Refusal {
            reason,
            detail,
            sensor: Some(r.sensor.clone()),
        };
        let Some(sref) = district.sensor(&r.sensor) else {
            return Err(refuse(
                RejectReason::UnknownSensor,
                format!("sensor \"{}\" is not in the district config", r.sensor),
            ));
        };
        let kind = sref.sensor.kind;
        let value = match &r.value {
            Value::Null(()) => {
                return Err(refuse(RejectReason::NotANumber, "value is null".into()))
            }
            Value::Number(v) => *v,
            Value::Text(t) => match t.trim().parse::<f64>() {
                Ok(v) => v,
                Err(_) => {
                    return Err(refuse(
                        RejectReason::NotANumber,
                        format!("value \"{t}\" is not a number"),
                    ))
                }
            },
        };
        if !value.is_finite() {
            return Err(refuse(
                RejectReason::NotANumber,
                format!("value is {value}, not a finite number"),
            ));
        }
        let (lo, hi) = kind.physical_range();
        if value < lo || value > hi {
            return Err(refuse(
                RejectReason::OutOfRange,
                format!(
                    "value {value} {} is outside the physical range {lo}..{hi} {} of a {:?} sensor",
                    kind.unit(),
                    kind.unit(),
                    kind
                )
                .to_lowercase(),
            ));
        }
        let ts_ms = match &r.ts {
            Timestamp::Millis(ms) => *ms,
            Timestamp::Text(t) => match chrono::DateTime::parse_from_rfc3339(t) {
                Ok(dt) => dt.timestamp_millis(),
                Err(e) => {
                    return Err(refuse(
                        RejectReason::Malformed,
                        format!("ts \"{t}\" is not RFC 3339: {e}"),
                    ))
                }
            },
        };
        if ts_ms > now + self.limits.max_future_ms {
            return Err(refuse(
                RejectReason::FutureTimestamp,
                format!(
                    "ts {} is {} s in the future (limit {} s)",
                    floodcmd_model::time::rfc3339(ts_ms),
                    (ts_ms - now) / 1000,
                    self.limits.max_future_ms / 1000
                ),
            ));
        }
        if ts_ms < now - self.limits.retention_ms {
            return Err(refuse(
                RejectReason::TooOld,
                format!(
                    "ts {} is older than the retention horizon of {} h",
                    floodcmd_model::time::rfc3339(ts_ms),
                    self.limits.retention_ms / 3_600_000
                ),
            ));
        }
        if let Some(seq) = r.seq {
            let recent = self.recent_seq.entry(r.sensor.clone()).or_default();
            if recent.contains(&seq) {
                return Err(refuse(
                    RejectReason::DuplicateSequence,
                    format!("seq {seq} of sensor \"{}\" was already received", r.sensor),
                ));
            }
            if recent.len() == SEQ_MEMORY {
                recent.pop_front();
            }
            recent.push_back(seq);
        }
        Ok(Reading {
            sensor: r.sensor.clone(),
            point: sref.point.id.clone(),
            kind,
            ts_ms,
            value,
            seq: r.seq,
            received_ms: now,
        })
    }
}

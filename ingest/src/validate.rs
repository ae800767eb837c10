//! Judging one record: is it a reading floodcmd can trust enough to compute with?
//!
//! Checks, in order: known sensor, a finite number, inside the sensor's physical range, a
//! timestamp neither in the future nor beyond the retention horizon, and a sequence number not
//! seen before. Each failure names the field and the value.

use crate::decode::{DeviceReading, Timestamp, Value};
use floodcmd_model::event::RejectReason;
use floodcmd_model::time::Millis;
use floodcmd_model::{District, Reading};
use std::collections::HashMap;

/// How many sequence numbers below the newest one are remembered per sensor.
const SEQ_WINDOW: u64 = 1024;
const WORDS: usize = (SEQ_WINDOW / 128) as usize;

/// The sequence numbers seen lately from one sensor: the newest, and a bit per number in the
/// 1,024 below it (128 bytes per sensor). O(1) per reading. A number older than the window
/// cannot be judged and is let through: refusing it would lose the backlog of a device that
/// was offline, and a repeat that old is rare enough to leave to downstream idempotence.
#[derive(Default)]
struct SeqWindow {
    newest: Option<u64>,
    /// Bit `k` of the window is set when `newest - k` was seen.
    seen: [u128; WORDS],
}

impl SeqWindow {
    fn shift(&mut self, by: u64) {
        if by >= SEQ_WINDOW {
            self.seen = [0; WORDS];
            return;
        }
        let (words, bits) = ((by / 128) as usize, (by % 128) as u32);
        for i in (0..WORDS).rev() {
            let lo = if i >= words { self.seen[i - words] } else { 0 };
            let carry = if bits > 0 && i > words {
                self.seen[i - words - 1] >> (128 - bits)
            } else {
                0
            };
            self.seen[i] = if bits > 0 { (lo << bits) | carry } else { lo };
        }
    }

    fn unset(&mut self, seq: u64) {
        if let Some(n) = self.newest {
            if seq <= n && n - seq < SEQ_WINDOW {
                let back = n - seq;
                self.seen[(back / 128) as usize] &= !(1u128 << (back % 128));
            }
        }
    }

    fn test_and_set(&mut self, back: u64) -> bool {
        let (w, b) = ((back / 128) as usize, back % 128);
        let bit = 1u128 << b;
        let fresh = self.seen[w] & bit == 0;
        self.seen[w] |= bit;
        fresh
    }
}

impl SeqWindow {
    /// Record `seq`; false if it was seen already.
    fn insert(&mut self, seq: u64) -> bool {
        match self.newest {
            None => {
                self.newest = Some(seq);
                self.test_and_set(0)
            }
            Some(n) if seq > n => {
                self.shift(seq - n);
                self.newest = Some(seq);
                self.test_and_set(0)
            }
            Some(n) if n - seq >= SEQ_WINDOW => true,
            Some(n) => self.test_and_set(n - seq),
        }
    }
}

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
    recent_seq: HashMap<String, SeqWindow>,
}

impl Validator {
    /// A validator with these time limits.
    pub fn new(limits: TimeLimits) -> Self {
        Validator {
            limits,
            recent_seq: HashMap::new(),
        }
    }

    /// Forget that `seq` of `sensor` was received: its reading did not reach the bus, and the
    /// device will send it again.
    pub fn forget(&mut self, sensor: &str, seq: u64) {
        if let Some(w) = self.recent_seq.get_mut(sensor) {
            w.unset(seq);
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
            let fresh = match self.recent_seq.get_mut(&r.sensor) {
                Some(w) => w.insert(seq),
                None => self
                    .recent_seq
                    .entry(r.sensor.clone())
                    .or_default()
                    .insert(seq),
            };
            if !fresh {
                return Err(refuse(
                    RejectReason::DuplicateSequence,
                    format!("seq {seq} of sensor \"{}\" was already received", r.sensor),
                ));
            }
        }
        Ok(Reading {
            sensor: r.sensor.as_str().into(),
            point: sref.point.id.as_str().into(),
            kind,
            ts_ms,
            value,
            seq: r.seq,
            received_ms: now,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::SeqWindow;

    #[test]
    fn the_sequence_window_catches_repeats_in_any_order() {
        let mut w = SeqWindow::default();
        assert!(w.insert(10));
        assert!(w.insert(12));
        assert!(w.insert(11), "out of order is fine");
        assert!(!w.insert(11), "a repeat is not");
        assert!(!w.insert(10));
        assert!(w.insert(500));
        assert!(!w.insert(12), "still inside the window");
        assert!(w.insert(499));
        assert!(w.insert(300));
        assert!(!w.insert(300));
        assert!(w.insert(5000));
        assert!(
            w.insert(12),
            "a backlog far behind the newest is let through"
        );
        for s in 4000..5000 {
            assert!(w.insert(s), "{s}");
        }
        assert!(!w.insert(4500));
        w.unset(4500);
        assert!(
            w.insert(4500),
            "a reading that never reached the bus may come again"
        );
    }
}

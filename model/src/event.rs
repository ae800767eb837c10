//! What the stages publish on the bus.
//!
//! - [`PointStatus`]: the stream stage's latest view of one point (`status` topic), with the
//!   [`QcFlag`]s of its latest reading;
//! - [`AlertTransition`]: a change of a point's level or data state (`alerts` topic);
//! - [`Incident`]: the alerts stage's incident state (`incidents` topic, latest wins);
//! - [`Notification`]: one message to one person, in the outbox (`notifications` topic);
//! - [`Action`]: what an operator did (`actions` topic);
//! - [`Reject`]: a dead letter with the original bytes and a reason (`rejects` topic).

use crate::config::{PointKind, ResponsibilityLevel};
use crate::level::{DataState, Level};
use crate::time::Millis;
use serde::{Deserialize, Serialize};

/// The stream stage's view of one point at one event time.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct PointStatus {
    /// Point id.
    pub point: String,
    /// Point kind.
    pub kind: PointKind,
    /// Warning level.
    pub level: Level,
    /// Trust in the data behind the level.
    pub data_state: DataState,
    /// Latest calibrated depth, cm (depth points).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depth_cm: Option<f64>,
    /// Rate of rise, cm per minute (depth points).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rise_cm_per_min: Option<f64>,
    /// Rolling 10-minute rain, mm (rain gauges).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rain_10m_mm: Option<f64>,
    /// Rolling 1-hour rain, mm (rain gauges).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rain_1h_mm: Option<f64>,
    /// Rolling 3-hour rain, mm (rain gauges).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rain_3h_mm: Option<f64>,
    /// Rolling 24-hour rain, mm (rain gauges).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rain_24h_mm: Option<f64>,
    /// Event time of the latest reading applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reading_ms: Option<Millis>,
    /// What quality control found wrong with the latest reading (empty: nothing).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub qc_flags: Vec<QcFlag>,
    /// The next level up, when the water is rising fast enough to predict reaching it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_level: Option<Level>,
    /// Minutes until `next_level`'s raise threshold at the current rate of rise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minutes_to_next: Option<f64>,
    /// The level keeps going up and down around a threshold (flap detection).
    #[serde(default)]
    pub flapping: bool,
    /// The event time this status describes (the dataflow epoch it was computed at).
    pub as_of_ms: Millis,
}

/// What quality control found wrong with a reading. A flagged reading never moves a level on
/// its own.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum QcFlag {
    /// Outside the sensor's physical range.
    Range,
    /// Too far from the median of the sensor's recent readings, and not (yet) confirmed by
    /// the next one.
    Spike,
    /// The same non-zero value for too long: the sensor is stuck.
    Stuck,
    /// Changed faster than water can between consecutive readings.
    Rate,
    /// A rain increment implying an impossible intensity over its reporting interval.
    RainIntensity,
}

impl QcFlag {
    /// Name used in JSON and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            QcFlag::Range => "range",
            QcFlag::Spike => "spike",
            QcFlag::Stuck => "stuck",
            QcFlag::Rate => "rate",
            QcFlag::RainIntensity => "rain_intensity",
        }
    }
}

/// Why a transition happened.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum TransitionKind {
    /// From normal to an alert level.
    Raised,
    /// To a higher alert level.
    Upgraded,
    /// To a lower alert level, still alerting.
    Downgraded,
    /// Back to normal.
    Cleared,
    /// The point's sensors went silent (失联). The level is kept, not cleared.
    Silent,
    /// Data arrives again after silence.
    Recovered,
}

impl TransitionKind {
    /// Name used in JSON and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            TransitionKind::Raised => "raised",
            TransitionKind::Upgraded => "upgraded",
            TransitionKind::Downgraded => "downgraded",
            TransitionKind::Cleared => "cleared",
            TransitionKind::Silent => "silent",
            TransitionKind::Recovered => "recovered",
        }
    }
}

/// A change of a point's level or data state, with what caused it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct AlertTransition {
    /// Point id.
    pub point: String,
    /// Point kind.
    pub point_kind: PointKind,
    /// What changed.
    pub transition: TransitionKind,
    /// Level before.
    pub from: Level,
    /// Level after.
    pub to: Level,
    /// Event time of the reading (or epoch) that caused it.
    pub event_ms: Millis,
    /// Processing time when the dataflow emitted it.
    pub processed_ms: Millis,
    /// The rule that fired, e.g. `depth >= 25 cm (red)` or `rain 3h >= 50 mm (orange)`.
    pub rule: String,
    /// The value the rule judged (cm or mm).
    pub value: f64,
    /// Rate of rise at the time, cm/min, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rise_cm_per_min: Option<f64>,
    /// True when a late reading (past the lateness budget) caused it.
    #[serde(default)]
    pub late: bool,
    /// The next level up, when the water is rising fast enough to predict reaching it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_level: Option<Level>,
    /// Minutes until `next_level`'s raise threshold at the current rate of rise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minutes_to_next: Option<f64>,
    /// The point is flapping: the transition is on the record, but people need not be told
    /// of every up and down again.
    #[serde(default)]
    pub flapping: bool,
}

/// What an incident is about.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Problem {
    /// Water (depth or rain) above a threshold.
    Water,
    /// The point's sensors are silent: a maintenance incident.
    Silent,
}

/// Open or closed.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum IncidentState {
    /// Still needs attention.
    Open,
    /// Resolved.
    Closed,
}

/// One line of an incident's audit timeline.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct TimelineEntry {
    /// When (processing time, or event time for transitions).
    pub at_ms: Millis,
    /// What happened, machine-readable (`raised`, `notified`, `acknowledged`, ...).
    pub what: String,
    /// Human-readable detail.
    pub detail: String,
    /// Who did it, for operator actions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

/// The alerts stage's incident, published whole on every change.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Incident {
    /// Unique id: `<point>:<problem>:<opening event time>`, stable across replays.
    pub id: String,
    /// Point id.
    pub point_id: String,
    /// What it is about.
    pub problem: Problem,
    /// Current level.
    pub level: Level,
    /// Highest level reached.
    pub peak_level: Level,
    /// Open or closed.
    pub state: IncidentState,
    /// Event time it opened.
    pub opened_at: Millis,
    /// Event time of the latest change.
    pub updated_at: Millis,
    /// Event time it closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed_at: Option<Millis>,
    /// Latest value that drove it (cm or mm).
    pub value: f64,
    /// Audit timeline, oldest first.
    pub timeline: Vec<TimelineEntry>,
}

/// The post a person holds for a point.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Post {
    /// The main holder.
    A,
    /// The backup.
    B,
}

/// Who a notification goes to.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Recipient {
    /// Person id.
    pub person: String,
    /// Name.
    pub name: String,
    /// Phone number.
    pub phone: String,
    /// Responsibility level in the 五级包保 chain.
    pub responsibility: ResponsibilityLevel,
    /// A or B post, for point owners.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post: Option<Post>,
}

/// One message to one person: a record in the outbox.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Notification {
    /// Idempotency key: `<incident>/<step>/<person>`. Senders never send a key twice.
    pub key: String,
    /// Incident id.
    pub incident: String,
    /// Point id.
    pub point: String,
    /// Level that caused it.
    pub level: Level,
    /// Who.
    pub recipient: Recipient,
    /// SMS text (Chinese).
    pub text: String,
    /// Event time of the transition that caused it.
    pub event_ms: Millis,
    /// Drill or replay: captured, never sent.
    #[serde(default)]
    pub drill: bool,
}

/// What an operator can do.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ActionKind {
    /// 确认: the person has seen it.
    Acknowledge,
    /// 到岗: the person is on site.
    CheckIn {
        /// Latitude reported.
        lat: f64,
        /// Longitude reported.
        lon: f64,
    },
    /// A free-text note on the incident.
    Note {
        /// The note.
        text: String,
    },
}

/// An operator action, attributed.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Action {
    /// Unique id of the action (idempotency).
    pub id: String,
    /// Incident id.
    pub incident: String,
    /// What.
    #[serde(flatten)]
    pub kind: ActionKind,
    /// The acting user.
    pub by: String,
    /// Processing time.
    pub at_ms: Millis,
}

/// Why input was rejected.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    /// Not valid JSON, or not the expected shape.
    Malformed,
    /// A required field is absent.
    MissingField,
    /// The sensor id is not in the district config.
    UnknownSensor,
    /// The value is NaN or infinite.
    NotANumber,
    /// The value is outside the sensor's physical range.
    OutOfRange,
    /// The timestamp is too far in the future.
    FutureTimestamp,
    /// The timestamp is older than the retention horizon.
    TooOld,
    /// The device repeated a sequence number.
    DuplicateSequence,
    /// The body exceeded the size limit.
    TooLarge,
    /// A record on the bus that could not be decoded.
    Undecodable,
    /// The device's token does not allow it to write this sensor.
    Forbidden,
}

impl RejectReason {
    /// Name used in JSON and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::Malformed => "malformed",
            RejectReason::MissingField => "missing_field",
            RejectReason::UnknownSensor => "unknown_sensor",
            RejectReason::NotANumber => "not_a_number",
            RejectReason::OutOfRange => "out_of_range",
            RejectReason::FutureTimestamp => "future_timestamp",
            RejectReason::TooOld => "too_old",
            RejectReason::DuplicateSequence => "duplicate_sequence",
            RejectReason::TooLarge => "too_large",
            RejectReason::Undecodable => "undecodable",
            RejectReason::Forbidden => "forbidden",
        }
    }
}

/// A dead letter: what came in, why it was refused, where it came from.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Reject {
    /// The reason code.
    pub reason: RejectReason,
    /// A sentence naming exactly what is wrong.
    pub detail: String,
    /// The input channel (`http`, `mqtt`, `bus:<topic>`).
    pub source: String,
    /// Index of the record within its request, when it came in a batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
    /// Sensor id, when it could be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sensor: Option<String>,
    /// The original bytes (lossy UTF-8, cut at 64 KiB).
    pub raw: String,
    /// Processing time.
    pub received_ms: Millis,
}

impl Reject {
    /// A dead letter for a record on the bus that could not be decoded.
    pub fn undecodable(
        record: &crate::bus::Record,
        error: &crate::codec::DecodeError,
        now_ms: Millis,
    ) -> Reject {
        Reject {
            reason: RejectReason::Undecodable,
            detail: format!(
                "{error} (partition {}, offset {})",
                record.partition, record.offset
            ),
            source: format!("bus:{}", record.topic),
            index: None,
            sensor: None,
            raw: String::from_utf8_lossy(&record.payload[..record.payload.len().min(64 * 1024)])
                .into_owned(),
            received_ms: now_ms,
        }
    }
}

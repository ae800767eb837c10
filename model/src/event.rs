//! What the stages publish on the bus.
//!
//! - [`PointStatus`]: the stream stage's latest view of one point (`status` topic), with the
//!   [`QcFlag`]s of its latest reading;
//! - [`AlertTransition`]: a change of a point's level or data state (`alerts` topic);
//! - [`Incident`]: the alerts stage's incident state (`incidents` topic, latest wins);
//! - [`Notification`]: one message to one person, in the outbox (`notifications` topic);
//! - [`Action`]: what an operator did (`actions` topic);
//! - [`Delivery`]: a sender's claim and result for one outbox message (`deliveries` topic);
//! - [`Reject`]: a dead letter with the original bytes and a reason (`rejects` topic).

use crate::config::{PointKind, ResponsibilityLevel, Rung};
use crate::level::{DataState, Level};
use crate::time::Millis;
use serde::{Deserialize, Serialize};

/// The stream stage's view of one point at one event time. Its figures are rounded to what a
/// user reads (the stage's rules judge them unrounded), so a status changes only when one of
/// them does.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct PointStatus {
    /// Point id.
    pub point: crate::reading::Id,
    /// Point kind.
    pub kind: PointKind,
    /// Warning level.
    pub level: Level,
    /// Trust in the data behind the level.
    pub data_state: DataState,
    /// Latest calibrated depth, cm (depth points), to a hundredth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depth_cm: Option<f64>,
    /// Rate of rise, cm per minute (depth points), to a thousandth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rise_cm_per_min: Option<f64>,
    /// Rolling 10-minute rain, mm (rain gauges), to a hundredth, as are the other windows.
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
    /// Minutes until `next_level`'s raise threshold at the current rate of rise, to a tenth.
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

/// A change of a point's level or data state, with what caused it. Its figures are the rules'
/// own, unrounded (a status's are rounded): the SMS floors the minutes to the next level, so
/// the water never comes sooner than the text says, and 7.96 rounded to 8.0 first would
/// promise a minute more than there is.
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
    /// Every escalation step so far, oldest first: who was told at which level and loop,
    /// their deadlines, acknowledgements and check-ins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<EscalationStep>,
    /// When someone checked in on site at the current level: escalation stops there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_site_ms: Option<Millis>,
    /// Underpass closure (封闭), raised automatically at red.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closure: Option<Closure>,
    /// The input record whose processing produced this version: a restarted alerts stage
    /// skips inputs at or below it, so nothing is applied twice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<InputOffset>,
}

/// A position in one of the alerts stage's input topics.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct InputOffset {
    /// Topic leaf: `alerts` or `actions`.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// Offset.
    pub offset: u64,
    /// The record's place among the records at `offset`: the Kafka bus packs many records
    /// into one Kafka record, and its members share the pack's offset. 0 for a record alone
    /// (and in versions written before packs).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub index: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl InputOffset {
    /// Where this input stands in its partition: offset, then place among the records at it.
    pub fn position(&self) -> (u64, u32) {
        (self.offset, self.index)
    }
}

/// Where an escalation step stands.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    /// Told; waiting for an acknowledgement until the deadline.
    Pending,
    /// Acknowledged; waiting for the on-site check-in until the deadline.
    Acknowledged,
    /// On site (到岗).
    CheckedIn,
    /// The deadline passed: the next rung was told.
    Escalated,
    /// The level changed or someone else is on site: this step's timer no longer runs.
    Superseded,
}

/// One person told at one level, loop and rung of the ladder.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct EscalationStep {
    /// `<level>.<loop>.<rung>`, the middle part of the notification's idempotency key.
    pub id: String,
    /// Alert level it was for.
    pub level: Level,
    /// Repeat loop (0 for the first climb).
    pub loop_no: u32,
    /// Rung of the ladder.
    pub rung: Rung,
    /// Person id.
    pub person: String,
    /// Name.
    pub name: String,
    /// When they were told (processing time).
    pub notified_ms: Millis,
    /// When the step's current timer runs out (acknowledgement, then check-in).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<Millis>,
    /// When they acknowledged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acked_ms: Option<Millis>,
    /// When they checked in on site.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checked_in_ms: Option<Millis>,
    /// State.
    pub state: StepState,
}

/// The stages of an underpass closure (封闭).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum ClosureStage {
    /// 建议封闭: raised automatically at red.
    Suggested,
    /// 已封闭: confirmed by the point owner and a second person.
    Closed,
    /// 退水: the water is going down.
    Receding,
    /// 复查: inspected on site after the water went.
    Inspected,
    /// 解封: open again.
    Reopened,
    /// The suggestion lapsed before anyone closed the underpass (the water went down).
    Withdrawn,
}

impl ClosureStage {
    /// Chinese name.
    pub fn zh(self) -> &'static str {
        match self {
            ClosureStage::Suggested => "建议封闭",
            ClosureStage::Closed => "已封闭",
            ClosureStage::Receding => "退水",
            ClosureStage::Inspected => "复查",
            ClosureStage::Reopened => "解封",
            ClosureStage::Withdrawn => "撤销建议",
        }
    }
    /// Machine name.
    pub fn as_str(self) -> &'static str {
        match self {
            ClosureStage::Suggested => "suggested",
            ClosureStage::Closed => "closed",
            ClosureStage::Receding => "receding",
            ClosureStage::Inspected => "inspected",
            ClosureStage::Reopened => "reopened",
            ClosureStage::Withdrawn => "withdrawn",
        }
    }
}

/// One step of a closure, with who and when.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ClosureEntry {
    /// The stage reached.
    pub stage: ClosureStage,
    /// Who (none for the automatic suggestion).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// When.
    pub at_ms: Millis,
}

/// An underpass closure.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Closure {
    /// Current stage.
    pub stage: ClosureStage,
    /// People who confirmed the closing so far (two needed, one of them a point owner).
    #[serde(default)]
    pub confirmed_by: Vec<String>,
    /// Since when the level has been below yellow (for reopening).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub below_yellow_since_ms: Option<Millis>,
    /// Every stage with who and when.
    pub history: Vec<ClosureEntry>,
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
    /// 确认: the person has seen it (an SMS reply, or a commander on their behalf).
    Acknowledge {
        /// Whose acknowledgement (person id); the acting user when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        person: Option<String>,
    },
    /// 到岗: the person is on site.
    CheckIn {
        /// Who is on site (person id); the acting user when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        person: Option<String>,
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
    /// Confirm an underpass is closed (已封闭): needs the point owner and a second person.
    ConfirmClosure {
        /// Who confirms (person id); the acting user when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        person: Option<String>,
    },
    /// A later closure step: 退水 (`receding`) or 复查 (`inspected`).
    ClosureStep {
        /// The stage reached.
        stage: ClosureStage,
    },
    /// 解封: reopen an underpass, confirmed on site.
    Reopen {
        /// Latitude of the on-site confirmation.
        lat: f64,
        /// Longitude of the on-site confirmation.
        lon: f64,
    },
}

impl ActionKind {
    /// Machine name, as in the timeline.
    pub fn as_str(&self) -> &'static str {
        match self {
            ActionKind::Acknowledge { .. } => "acknowledged",
            ActionKind::CheckIn { .. } => "checked_in",
            ActionKind::Note { .. } => "note",
            ActionKind::ConfirmClosure { .. } => "closure_confirmed",
            ActionKind::ClosureStep { .. } => "closure_step",
            ActionKind::Reopen { .. } => "reopened",
        }
    }
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
    /// The time-series sink cannot write it: a timestamp outside the store's range, a tag
    /// value line protocol cannot carry, or a line the server refused on its own.
    Unwritable,
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
            RejectReason::Unwritable => "unwritable",
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

/// Where one outbox message stands with the sender (`deliveries` topic, keyed by the
/// notification's idempotency key).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// A sender took it on. The first claim in the log wins; others leave the key alone.
    Claimed,
    /// Handed to a gateway, which accepted it.
    Sent,
    /// The gateway reported delivery to the phone.
    Delivered,
    /// Every gateway and retry failed, or it was refused for good.
    Failed,
}

/// A sender's record about one outbox message.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Delivery {
    /// The notification's idempotency key.
    pub key: String,
    /// State.
    pub state: DeliveryState,
    /// The sender instance that wrote this.
    pub instance: String,
    /// Gateway used, once sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// The gateway's message ids (one per SMS segment).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub message_ids: Vec<String>,
    /// Why it failed, or other detail.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
    /// Processing time.
    pub at_ms: Millis,
}

#[cfg(test)]
mod tests {
    use super::InputOffset;

    /// A record alone is written as before packs (no `index`), and a version written before
    /// packs reads as a record alone: incidents already on the topic keep their meaning.
    #[test]
    fn an_input_offsets_place_is_written_only_inside_a_pack() {
        let alone = InputOffset {
            topic: "alerts".into(),
            partition: 3,
            offset: 17,
            index: 0,
        };
        let json = serde_json::to_string(&alone).unwrap();
        assert_eq!(json, r#"{"topic":"alerts","partition":3,"offset":17}"#);
        assert_eq!(serde_json::from_str::<InputOffset>(&json).unwrap(), alone);
        let member = InputOffset { index: 4, ..alone };
        let json = serde_json::to_string(&member).unwrap();
        assert_eq!(
            json,
            r#"{"topic":"alerts","partition":3,"offset":17,"index":4}"#
        );
        assert_eq!(serde_json::from_str::<InputOffset>(&json).unwrap(), member);
        assert!(
            member.position()
                > InputOffset {
                    index: 3,
                    ..member.clone()
                }
                .position()
        );
        assert!(
            member.position()
                < InputOffset {
                    offset: 18,
                    index: 0,
                    ..member.clone()
                }
                .position()
        );
    }
}

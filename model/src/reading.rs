//! A validated sensor reading: the record on the `readings` topic.

use crate::time::Millis;
use serde::{Deserialize, Serialize};

/// What a sensor measures.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum SensorKind {
    /// Water depth on the street or in an underpass, in centimetres.
    Depth,
    /// Rainfall since the previous report, in millimetres (tipping-bucket increments).
    Rain,
}

impl SensorKind {
    /// The unit of `value`.
    pub fn unit(self) -> &'static str {
        match self {
            SensorKind::Depth => "cm",
            SensorKind::Rain => "mm",
        }
    }
    /// The physically possible range of one reading, used by validation.
    /// Depth: a street sensor cannot see below −50 cm or above 10 m; rain: no 5-minute report
    /// holds more than 500 mm (the world record is about 300 mm in an hour).
    pub fn physical_range(self) -> (f64, f64) {
        match self {
            SensorKind::Depth => (-50.0, 1000.0),
            SensorKind::Rain => (0.0, 500.0),
        }
    }
}

/// A sensor's or a point's id as readings and statuses carry it.
///
/// Ids are short (a district's are a dozen bytes; up to 24 are kept inline), so a reading
/// decoded, moved between workers, copied or dropped costs no allocation for them. As
/// `String`s they were two allocations and two frees per reading, and comparing a reading's
/// sensor with its point's read two more blocks far apart in memory: inline, a stream worker
/// applies 6–12 % more readings a second (`bench stream-core`).
pub type Id = compact_str::CompactString;

/// One reading that passed ingest validation.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Reading {
    /// Sensor id, as in the district config.
    pub sensor: Id,
    /// The point the sensor belongs to.
    pub point: Id,
    /// What the value measures.
    pub kind: SensorKind,
    /// Event time: when the sensor measured.
    pub ts_ms: Millis,
    /// Depth in cm (raw, before calibration) or rain increment in mm.
    pub value: f64,
    /// The device's sequence number, when it sends one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// Processing time at the gateway.
    pub received_ms: Millis,
}

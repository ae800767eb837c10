//! The measurement schema as InfluxDB line protocol (`docs/INFLUX.md` is the reference).
//!
//! | measurement | from | tags | fields | time |
//! |---|---|---|---|---|
//! | `depth`, `rain` | `readings` | community, kind, point, sensor, sub_district | value | `ts_ms` |
//! | `status` | `status` | community, kind, point, sub_district | level, data_state, qc_flags, flapping, depth_cm, rise_cm_per_min, rain_*_mm, next_level, minutes_to_next | `as_of_ms` |
//! | `alert` | `alerts` | community, kind, point, sub_district, transition | from, to, value, late, flapping, lag_ms, rule, rise_cm_per_min, next_level, minutes_to_next | `event_ms` |
//!
//! `kind` is always the point's kind (underpass, low_point, rain_gauge); the measurement says
//! what a reading measures. Every field is a sample the server stores and indexes, so what can
//! be had elsewhere stays out: a reading's sequence number and arrival time are the gateway's
//! business (duplicates never reach `readings`), a status's last reading time is the newest
//! `depth`/`rain` point. Levels, data states and QC flags are integers (codes below), so
//! `max()` over them means "worst", and servers that keep numbers only (VictoriaMetrics) keep
//! them too. Times are milliseconds: sensors stamp in ms, and coarser precision would merge two
//! readings of one sensor within a second into one point.
//!
//! A record that cannot become a valid line (a non-finite number, a timestamp outside the
//! server's range, a tag value line protocol cannot carry) is refused here, alone, with an
//! [`Unwritable`] naming the field, so it never reaches, and never spoils, a batch.

use floodcmd_model::event::{AlertTransition, PointStatus, QcFlag, RejectReason};
use floodcmd_model::{DataState, District, Level, Reading, SensorKind};
use std::borrow::Cow;
use std::collections::HashMap;

/// Earliest time InfluxDB stores (nanoseconds in an i64), in ms.
pub const MIN_TS_MS: i64 = -9_223_372_036_854;
/// Latest time InfluxDB stores (nanoseconds in an i64, year 2262), in ms.
pub const MAX_TS_MS: i64 = 9_223_372_036_854;

/// The measurements, as indexes into per-measurement counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Measurement {
    /// Depth readings.
    Depth = 0,
    /// Rain readings.
    Rain = 1,
    /// Point states.
    Status = 2,
    /// Alert transitions.
    Alert = 3,
}

impl Measurement {
    /// Every measurement, in index order.
    pub const ALL: [Measurement; 4] = [
        Measurement::Depth,
        Measurement::Rain,
        Measurement::Status,
        Measurement::Alert,
    ];

    /// The measurement name in line protocol.
    pub fn as_str(self) -> &'static str {
        match self {
            Measurement::Depth => "depth",
            Measurement::Rain => "rain",
            Measurement::Status => "status",
            Measurement::Alert => "alert",
        }
    }
}

/// Why a record cannot be written, for its dead letter.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{detail}")]
pub struct Unwritable {
    /// The reason code.
    pub reason: RejectReason,
    /// What exactly is wrong, naming the field.
    pub detail: String,
}

fn unwritable(reason: RejectReason, detail: String) -> Unwritable {
    Unwritable { reason, detail }
}

/// The code of a level in the `level`, `from`, `to` and `next_level` fields: 0 normal, 1 blue,
/// 2 yellow, 3 orange, 4 red.
pub fn level_code(l: Level) -> i64 {
    l.alert_index().map_or(0, |i| i as i64 + 1)
}

/// The code of a data state in the `data_state` field: 0 fresh, 1 late, 2 suspect, 3 silent.
pub fn data_state_code(s: DataState) -> i64 {
    match s {
        DataState::Fresh => 0,
        DataState::Late => 1,
        DataState::Suspect => 2,
        DataState::Silent => 3,
    }
}

/// The bit of a QC flag in the `qc_flags` field: range 1, spike 2, stuck 4, rate 8,
/// rain_intensity 16.
pub fn qc_bit(f: QcFlag) -> i64 {
    match f {
        QcFlag::Range => 1,
        QcFlag::Spike => 2,
        QcFlag::Stuck => 4,
        QcFlag::Rate => 8,
        QcFlag::RainIntensity => 16,
    }
}

/// A tag value as line protocol writes it: commas, equals signs and spaces escaped. Empty
/// values, line breaks and backslashes cannot be carried unambiguously, so they are refused.
pub fn tag_value<'a>(key: &str, v: &'a str) -> Result<Cow<'a, str>, Unwritable> {
    if v.is_empty() {
        return Err(unwritable(
            RejectReason::Unwritable,
            format!("tag {key} is empty"),
        ));
    }
    if v.contains(['\n', '\r', '\\']) {
        return Err(unwritable(
            RejectReason::Unwritable,
            format!(
                "tag {key} {v:?} holds a line break or backslash, which line protocol cannot carry"
            ),
        ));
    }
    if v.contains([',', '=', ' ']) {
        let mut s = String::with_capacity(v.len() + 4);
        for c in v.chars() {
            if matches!(c, ',' | '=' | ' ') {
                s.push('\\');
            }
            s.push(c);
        }
        Ok(Cow::Owned(s))
    } else {
        Ok(Cow::Borrowed(v))
    }
}

/// Appends `,key=value` for a tag known to be writable, or nothing when it is not (a district
/// id line protocol cannot carry loses that tag, not the point's data).
fn push_tag(s: &mut String, key: &str, v: &str) {
    match tag_value(key, v) {
        Ok(v) => {
            s.push(',');
            s.push_str(key);
            s.push('=');
            s.push_str(&v);
        }
        Err(e) => tracing::warn!(error = %e, "district value left out of the time-series tags"),
    }
}

/// Builds lines. Tags that come from the district (kind, sub-district, community) are looked
/// up once per sensor and point and kept ready, escaped and in key order.
pub struct Schema {
    /// Sensor id → (point id, the whole tag set of its readings).
    sensors: HashMap<String, (String, String)>,
    /// Point id → the tag set of its status lines (alerts add `transition`).
    points: HashMap<String, String>,
}

impl Schema {
    /// The schema for a district.
    pub fn new(district: &District) -> Schema {
        let mut points = HashMap::new();
        let mut sensors = HashMap::new();
        for p in &district.points {
            // Keys in lexicographic order, which is how InfluxDB keeps them.
            let mut head = String::new();
            push_tag(&mut head, "community", &p.community);
            push_tag(&mut head, "kind", p.kind.as_str());
            push_tag(&mut head, "point", &p.id);
            let mut tail = String::new();
            push_tag(&mut tail, "sub_district", &p.sub_district);
            for s in &p.sensors {
                let mut tags = head.clone();
                push_tag(&mut tags, "sensor", &s.id);
                tags.push_str(&tail);
                sensors.insert(s.id.clone(), (p.id.clone(), tags));
            }
            points.insert(p.id.clone(), format!("{head}{tail}"));
        }
        Schema { sensors, points }
    }

    /// The tag set of a point's status and alert lines.
    fn point_tags<'a>(&'a self, point: &str, kind: &str) -> Result<Cow<'a, str>, Unwritable> {
        match self.points.get(point) {
            Some(t) => Ok(Cow::Borrowed(t)),
            // Not in this district (another district's records on the same topics): what the
            // record itself says.
            None => Ok(Cow::Owned(format!(
                ",kind={},point={}",
                tag_value("kind", kind)?,
                tag_value("point", point)?
            ))),
        }
    }

    /// A reading as a `depth` or `rain` line.
    pub fn reading(&self, r: &Reading, out: &mut Vec<u8>) -> Result<Measurement, Unwritable> {
        let m = match r.kind {
            SensorKind::Depth => Measurement::Depth,
            SensorKind::Rain => Measurement::Rain,
        };
        check_ts("ts_ms", r.ts_ms)?;
        let tags: Cow<str> = match self.sensors.get(r.sensor.as_str()) {
            Some((point, tags)) if *point == r.point => Cow::Borrowed(tags),
            _ => Cow::Owned(format!(
                ",point={},sensor={}",
                tag_value("point", &r.point)?,
                tag_value("sensor", &r.sensor)?
            )),
        };
        let mut f = Fields::start(out, m.as_str(), &tags);
        f.float("value", r.value)?;
        f.finish(r.ts_ms);
        Ok(m)
    }

    /// A point status as a `status` line.
    pub fn status(&self, s: &PointStatus, out: &mut Vec<u8>) -> Result<Measurement, Unwritable> {
        check_ts("as_of_ms", s.as_of_ms)?;
        let tags = self.point_tags(&s.point, s.kind.as_str())?;
        let mut f = Fields::start(out, Measurement::Status.as_str(), &tags);
        f.int("level", level_code(s.level));
        f.int("data_state", data_state_code(s.data_state));
        f.int(
            "qc_flags",
            s.qc_flags.iter().map(|q| qc_bit(*q)).fold(0, |a, b| a | b),
        );
        f.boolean("flapping", s.flapping);
        f.opt_float("depth_cm", s.depth_cm)?;
        f.opt_float("rise_cm_per_min", s.rise_cm_per_min)?;
        f.opt_float("rain_10m_mm", s.rain_10m_mm)?;
        f.opt_float("rain_1h_mm", s.rain_1h_mm)?;
        f.opt_float("rain_3h_mm", s.rain_3h_mm)?;
        f.opt_float("rain_24h_mm", s.rain_24h_mm)?;
        if let Some(l) = s.next_level {
            f.int("next_level", level_code(l));
        }
        f.opt_float("minutes_to_next", s.minutes_to_next)?;
        f.finish(s.as_of_ms);
        Ok(Measurement::Status)
    }

    /// An alert transition as an `alert` line.
    pub fn alert(&self, a: &AlertTransition, out: &mut Vec<u8>) -> Result<Measurement, Unwritable> {
        check_ts("event_ms", a.event_ms)?;
        let mut tags = self
            .point_tags(&a.point, a.point_kind.as_str())?
            .into_owned();
        tags.push_str(",transition=");
        tags.push_str(a.transition.as_str());
        let mut f = Fields::start(out, Measurement::Alert.as_str(), &tags);
        f.int("from", level_code(a.from));
        f.int("to", level_code(a.to));
        f.float("value", a.value)?;
        f.boolean("late", a.late);
        f.boolean("flapping", a.flapping);
        f.int("lag_ms", a.processed_ms.saturating_sub(a.event_ms));
        f.string("rule", &a.rule);
        f.opt_float("rise_cm_per_min", a.rise_cm_per_min)?;
        if let Some(l) = a.next_level {
            f.int("next_level", level_code(l));
        }
        f.opt_float("minutes_to_next", a.minutes_to_next)?;
        f.finish(a.event_ms);
        Ok(Measurement::Alert)
    }
}

fn check_ts(field: &str, ts: i64) -> Result<(), Unwritable> {
    if (MIN_TS_MS..=MAX_TS_MS).contains(&ts) {
        Ok(())
    } else {
        Err(unwritable(
            RejectReason::Unwritable,
            format!(
                "{field} {ts} is outside the time range InfluxDB can store (years 1677 to 2262)"
            ),
        ))
    }
}

/// One line being written. If a field turns out unwritable, dropping the writer without
/// `finish` takes the partial line back out of the buffer.
struct Fields<'a> {
    out: &'a mut Vec<u8>,
    start: usize,
    first: bool,
    done: bool,
}

impl<'a> Fields<'a> {
    fn start(out: &'a mut Vec<u8>, measurement: &str, tags: &str) -> Fields<'a> {
        let start = out.len();
        out.extend_from_slice(measurement.as_bytes());
        out.extend_from_slice(tags.as_bytes());
        out.push(b' ');
        Fields {
            out,
            start,
            first: true,
            done: false,
        }
    }

    fn key(&mut self, key: &str) {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        self.out.extend_from_slice(key.as_bytes());
        self.out.push(b'=');
    }

    fn float(&mut self, key: &str, v: f64) -> Result<(), Unwritable> {
        if !v.is_finite() {
            return Err(unwritable(
                RejectReason::NotANumber,
                format!("field {key} is {v}, which line protocol cannot carry"),
            ));
        }
        self.key(key);
        // The shortest form that reads back exactly (`23.5`, `3.0`, `1e21`: line protocol
        // takes exponents), without going through `fmt`.
        self.out
            .extend_from_slice(ryu::Buffer::new().format_finite(v).as_bytes());
        Ok(())
    }

    fn opt_float(&mut self, key: &str, v: Option<f64>) -> Result<(), Unwritable> {
        match v {
            Some(v) => self.float(key, v),
            None => Ok(()),
        }
    }

    fn int(&mut self, key: &str, v: i64) {
        self.key(key);
        self.out
            .extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
        self.out.push(b'i');
    }

    fn boolean(&mut self, key: &str, v: bool) {
        self.key(key);
        self.out
            .extend_from_slice(if v { b"true" } else { b"false" });
    }

    fn string(&mut self, key: &str, v: &str) {
        self.key(key);
        self.out.push(b'"');
        for c in v.chars() {
            match c {
                '"' | '\\' => {
                    self.out.push(b'\\');
                    self.out.push(c as u8);
                }
                // A line break would end the line: the rule text is a description, a space
                // keeps it readable.
                '\n' | '\r' => self.out.push(b' '),
                c => {
                    let mut b = [0u8; 4];
                    self.out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
                }
            }
        }
        self.out.push(b'"');
    }

    fn finish(mut self, ts_ms: i64) {
        self.out.push(b' ');
        self.out
            .extend_from_slice(itoa::Buffer::new().format(ts_ms).as_bytes());
        self.out.push(b'\n');
        self.done = true;
    }
}

impl Drop for Fields<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.out.truncate(self.start);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use floodcmd_model::config::PointKind;
    use floodcmd_model::event::TransitionKind;

    fn schema() -> Schema {
        let d = District::from_toml_str(include_str!("../../config/xincheng.toml")).unwrap();
        Schema::new(&d)
    }

    fn first_sensor() -> (String, String, String, String) {
        let d = District::from_toml_str(include_str!("../../config/xincheng.toml")).unwrap();
        let s = d
            .sensors()
            .find(|s| s.sensor.kind == SensorKind::Depth)
            .unwrap();
        (
            s.sensor.id.clone(),
            s.point.id.clone(),
            s.point.community.clone(),
            s.point.sub_district.clone(),
        )
    }

    fn reading(value: f64, ts: i64) -> Reading {
        let (sensor, point, _, _) = first_sensor();
        Reading {
            sensor: sensor.into(),
            point: point.into(),
            kind: SensorKind::Depth,
            ts_ms: ts,
            value,
            seq: Some(17),
            received_ms: ts.saturating_add(100),
        }
    }

    #[test]
    fn a_reading_carries_the_district_tags_in_key_order() {
        let (sensor, point, community, sub) = first_sensor();
        let mut out = Vec::new();
        let m = schema()
            .reading(&reading(23.5, 1_783_000_000_123), &mut out)
            .unwrap();
        assert_eq!(m, Measurement::Depth);
        let line = String::from_utf8(out).unwrap();
        let kind = schema().points.get(&point).unwrap().clone();
        assert!(kind.contains("kind=underpass") || kind.contains("kind=low_point"));
        assert!(
            line.starts_with(&format!("depth,community={community},kind=")),
            "{line}"
        );
        assert!(
            line.ends_with(&format!(
                ",point={point},sensor={sensor},sub_district={sub} value=23.5 1783000000123\n"
            )),
            "{line}"
        );
    }

    #[test]
    fn bad_values_are_refused_alone_and_leave_the_buffer_as_it_was() {
        let s = schema();
        let mut out = b"earlier line\n".to_vec();
        for (r, reason, field) in [
            (
                reading(f64::NAN, 1_783_000_000_000),
                RejectReason::NotANumber,
                "value",
            ),
            (
                reading(f64::INFINITY, 1_783_000_000_000),
                RejectReason::NotANumber,
                "value",
            ),
            (reading(1.0, i64::MAX), RejectReason::Unwritable, "ts_ms"),
        ] {
            let e = s.reading(&r, &mut out).unwrap_err();
            assert_eq!(e.reason, reason);
            assert!(e.detail.contains(field), "{e}");
            assert_eq!(out, b"earlier line\n");
        }
        let mut odd = reading(1.0, 1_783_000_000_000);
        odd.sensor = "bad\nsensor".into();
        let e = s.reading(&odd, &mut out).unwrap_err();
        assert_eq!(e.reason, RejectReason::Unwritable);
        assert!(e.detail.contains("tag sensor"), "{e}");
        assert_eq!(out, b"earlier line\n");
    }

    #[test]
    fn unknown_sensors_keep_their_own_tags_escaped() {
        let mut r = reading(2.0, 1_000);
        r.sensor = "X 1,a=b".into();
        r.point = "P-9".into();
        r.seq = None;
        let mut out = Vec::new();
        schema().reading(&r, &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "depth,point=P-9,sensor=X\\ 1\\,a\\=b value=2.0 1000\n"
        );
    }

    #[test]
    fn status_and_alert_lines_use_codes() {
        let (_, point, _, _) = first_sensor();
        let st = PointStatus {
            point: point.as_str().into(),
            kind: PointKind::Underpass,
            level: Level::Orange,
            data_state: DataState::Suspect,
            depth_cm: Some(21.25),
            rise_cm_per_min: None,
            rain_10m_mm: None,
            rain_1h_mm: None,
            rain_3h_mm: None,
            rain_24h_mm: None,
            last_reading_ms: Some(1_999),
            qc_flags: vec![QcFlag::Spike, QcFlag::Rate],
            next_level: Some(Level::Red),
            minutes_to_next: Some(4.5),
            flapping: false,
            as_of_ms: 2_000,
        };
        let mut out = Vec::new();
        schema().status(&st, &mut out).unwrap();
        let line = String::from_utf8(out).unwrap();
        assert!(
            line.contains(" level=3i,data_state=2i,qc_flags=10i,flapping=false,depth_cm=21.25,next_level=4i,minutes_to_next=4.5 2000\n"),
            "{line}"
        );
        let a = AlertTransition {
            point,
            point_kind: PointKind::Underpass,
            transition: TransitionKind::Raised,
            from: Level::Normal,
            to: Level::Red,
            event_ms: 5_000,
            processed_ms: 5_250,
            rule: "depth >= 25 cm \"red\"\nx".into(),
            value: 26.0,
            rise_cm_per_min: Some(1.5),
            late: true,
            next_level: None,
            minutes_to_next: None,
            flapping: false,
        };
        let mut out = Vec::new();
        schema().alert(&a, &mut out).unwrap();
        let line = String::from_utf8(out).unwrap();
        assert!(line.starts_with("alert,community="), "{line}");
        assert!(
            line.contains(",transition=raised from=0i,to=4i,value=26.0,late=true,flapping=false,lag_ms=250i,rule=\"depth >= 25 cm \\\"red\\\" x\",rise_cm_per_min=1.5 5000\n"),
            "{line}"
        );
    }
}

//! The wall's view of the district, folded from the bus, and the changes clients are sent.
//!
//! Everything a browser is sent is built here, once per session kind: phone numbers appear
//! only in the people directory ([`WallState::people`]) and the point detail, and both are
//! masked for viewers.

use crate::auth::{mask_phone, Session};
use crate::history::History;
use floodcmd_model::config::{PointKind, Rung};
use floodcmd_model::event::{
    AlertTransition, ClosureStage, Delivery, DeliveryState, Incident, IncidentState, Notification,
    PointStatus, QcFlag, Reject, StepState,
};
use floodcmd_model::time::Millis;
use floodcmd_model::{DataState, District, Id, Level, Reading, SensorKind};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

const RECENT_ALERTS: usize = 50;
const RECENT_REJECTS: usize = 20;

/// One point as the wall shows it: where it is and its latest status.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct PointView {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Kind.
    pub kind: PointKind,
    /// Sub-district name.
    pub sub_district: String,
    /// Latitude.
    pub lat: f64,
    /// Longitude.
    pub lon: f64,
    /// Camera stream, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub camera: Option<String>,
    /// Level.
    pub level: Level,
    /// Data state; `silent` until the first reading.
    pub data_state: DataState,
    /// Latest depth, cm.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub depth_cm: Option<f64>,
    /// Rate of rise, cm/min.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rise_cm_per_min: Option<f64>,
    /// Rolling 10-minute rain, mm.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rain_10m_mm: Option<f64>,
    /// Rolling 1-hour rain, mm.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rain_1h_mm: Option<f64>,
    /// Rolling 3-hour rain, mm.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rain_3h_mm: Option<f64>,
    /// Rolling 24-hour rain, mm.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rain_24h_mm: Option<f64>,
    /// Event time of the latest reading.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_reading_ms: Option<Millis>,
    /// The live depth, cm: the highest of the point's depth sensors' newest readings the
    /// wall has seen itself, straight off the readings topic, calibrated, and not yet judged
    /// by the stage (readings the stage's status has covered drop out). Shown as live (实时,
    /// not yet quality-controlled) while it is newer than `last_reading_ms`, because the
    /// stage's status waits for its epoch and the lateness budget, seconds after the water
    /// is measured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub live_depth_cm: Option<f64>,
    /// Event time of the reading that gave `live_depth_cm`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub live_ms: Option<Millis>,
    /// What quality control found wrong with the latest reading.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub qc_flags: Vec<QcFlag>,
    /// The next level up, when the water is rising fast enough to predict reaching it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_level: Option<Level>,
    /// Minutes until `next_level` at the current rate of rise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub minutes_to_next: Option<f64>,
    /// The level keeps going up and down around a threshold.
    pub flapping: bool,
    /// Underpass closure stage of the point's open incident (封闭 state on the map).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub closure: Option<ClosureStage>,
    /// The rain gauge whose rain the point panel charts beside the depth.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rain_gauge: Option<String>,
}

/// `v` to `1 / per` (a power of ten): what the wall shows, and sends. Sums and fits come out
/// of the stream stage as `0.30000000000000004` or `0.030719323053203105`; at 0.1 mm of
/// depth, 0.001 cm/min of rise, 0.01 mm of rain and 0.1 min of forecast nobody reads a
/// difference, and a storm's deltas to a thousand clients are a third smaller. Dividing the
/// rounded integer gives the double nearest the decimal, so it prints as written.
fn shown(v: Option<f64>, per: f64) -> Option<f64> {
    v.map(|x| (x * per).round() / per)
}

/// Counts shown in the banner.
#[derive(Serialize, Clone, Debug, Default, PartialEq)]
pub struct Counters {
    /// Points per level (normal, blue, yellow, orange, red). Silent points with no alert
    /// level are counted under `silent` only, never as normal.
    pub levels: BTreeMap<Level, usize>,
    /// Silent points.
    pub silent: usize,
    /// Open incidents.
    pub open_incidents: usize,
    /// Notifications in the outbox.
    pub notifications: u64,
    /// Records rejected at ingest.
    pub rejects: u64,
    /// Alert transitions seen.
    pub transitions: u64,
    /// The rainstorm signal observed at the gauges (暴雨信号): the highest level of any rain
    /// gauge, whose rules are the mainland rainstorm warning signals and the short-duration
    /// intensity rule. `normal` when no gauge is raised.
    pub rain_signal: Level,
    /// SMS handed to a gateway (`deliveries` reached `sent` or `delivered`).
    pub sms_sent: u64,
    /// SMS the gateway reported delivered.
    pub sms_delivered: u64,
    /// SMS that failed for good.
    pub sms_failed: u64,
    /// Escalation steps (people told) over the incidents seen.
    pub notified: u64,
    /// Of those, acknowledged.
    pub acknowledged: u64,
    /// Of those, checked in on site.
    pub checked_in: u64,
}

/// A snapshot as it is sent: the body (a JSON object without `type`, `session` and
/// `can_act`, which are each client's own) and the `snapshot_part` messages after it.
pub struct SnapshotParts {
    /// The first message's shared fields, with the first part of the points.
    pub body: String,
    /// The rest of the points, one whole message each, shared by every client joining at
    /// one cut (framed once for them, see `feed.rs`).
    pub rest: Arc<[String]>,
}

/// A change a client must hear about.
#[derive(Clone, Debug)]
pub enum Change {
    /// A point's view changed.
    Point(PointView),
    /// An incident changed (closed ones included, so clients can drop them).
    Incident(Incident),
    /// A new alert transition.
    Alert(AlertTransition),
    /// A new reject.
    Reject(Reject),
    /// Counters changed.
    Counters(Counters),
}

/// The wall's whole view.
pub struct WallState {
    /// The district.
    pub district: Arc<District>,
    points: BTreeMap<String, PointView>,
    incidents: BTreeMap<String, Incident>,
    alerts: VecDeque<AlertTransition>,
    rejects: VecDeque<Reject>,
    counters: Counters,
    /// Newest delivery state per notification key.
    deliveries: HashMap<String, DeliveryState>,
    /// (told, acknowledged, checked in) per incident, closed ones included.
    steps: HashMap<String, (u64, u64, u64)>,
    /// The last hours of every point, for the charts.
    pub history: History,
    /// What the points add up to, kept as each status arrives.
    tally: Tally,
    /// Per depth sensor, its newest reading off the readings topic that the stage's status
    /// has not covered yet: (event time, calibrated depth). A point's live depth is the
    /// highest of its sensors', as the stage's depth is.
    live_by_sensor: HashMap<Id, (Millis, f64)>,
}

/// The points' share of the counters, updated by taking a point's old view out and its new
/// one in. Counting every point again on every status (10,000 points, thousands of statuses a
/// second in a storm) was the wall's largest cost after encoding.
#[derive(Clone, Debug, Default, PartialEq)]
struct Tally {
    /// Points per level, silent points with no alert level left out.
    levels: [usize; 5],
    silent: usize,
    /// Rain gauges per level: the rainstorm signal is the highest level with one.
    gauges: [usize; 5],
}

fn level_index(l: Level) -> usize {
    Level::ALL
        .iter()
        .position(|x| *x == l)
        .expect("every level is listed")
}

impl Tally {
    /// Take `p` in (`add`) or out.
    fn count(&mut self, p: &PointView, add: bool) {
        let step = |n: &mut usize| {
            if add {
                *n += 1
            } else {
                *n -= 1
            }
        };
        let i = level_index(p.level);
        if p.kind == PointKind::RainGauge {
            step(&mut self.gauges[i]);
        }
        let silent = p.data_state == DataState::Silent;
        // A silent point is never counted as normal; a silent point that was red stays red.
        if !(silent && p.level == Level::Normal) {
            step(&mut self.levels[i]);
        }
        if silent {
            step(&mut self.silent);
        }
    }

    fn of<'a>(points: impl Iterator<Item = &'a PointView>) -> Tally {
        let mut t = Tally::default();
        for p in points {
            t.count(p, true);
        }
        t
    }
}

impl WallState {
    /// Every point of the district, silent until heard from.
    pub fn new(district: Arc<District>) -> Self {
        let points = district
            .points
            .iter()
            .map(|p| {
                (
                    p.id.clone(),
                    PointView {
                        id: p.id.clone(),
                        name: p.name.clone(),
                        kind: p.kind,
                        sub_district: district.sub_district_name(&p.sub_district).to_string(),
                        lat: p.lat,
                        lon: p.lon,
                        camera: p.camera.as_ref().map(|c| c.stream.clone()),
                        level: Level::Normal,
                        data_state: DataState::Silent,
                        depth_cm: None,
                        rise_cm_per_min: None,
                        rain_10m_mm: None,
                        rain_1h_mm: None,
                        rain_3h_mm: None,
                        rain_24h_mm: None,
                        last_reading_ms: None,
                        live_depth_cm: None,
                        live_ms: None,
                        qc_flags: Vec::new(),
                        next_level: None,
                        minutes_to_next: None,
                        flapping: false,
                        closure: None,
                        rain_gauge: p.rain_gauge.clone(),
                    },
                )
            })
            .collect();
        let mut s = WallState {
            district,
            points,
            incidents: BTreeMap::new(),
            alerts: VecDeque::new(),
            rejects: VecDeque::new(),
            counters: Counters::default(),
            deliveries: HashMap::new(),
            steps: HashMap::new(),
            history: History::default(),
            tally: Tally::default(),
            live_by_sensor: HashMap::new(),
        };
        s.tally = Tally::of(s.points.values());
        s.recount();
        s
    }

    /// The counters from the tally.
    fn recount(&mut self) {
        let t = &self.tally;
        self.counters.levels = Level::ALL
            .iter()
            .map(|l| (*l, t.levels[level_index(*l)]))
            .collect();
        self.counters.silent = t.silent;
        self.counters.rain_signal = Level::ALL
            .iter()
            .rev()
            .find(|l| t.gauges[level_index(**l)] > 0)
            .copied()
            .unwrap_or(Level::Normal);
        self.counters.open_incidents = self.incidents.len();
    }

    /// Points, in config order.
    pub fn points(&self) -> Vec<PointView> {
        self.district
            .points
            .iter()
            .filter_map(|p| self.points.get(&p.id).cloned())
            .collect()
    }

    /// Open incidents, most severe first, then oldest first.
    pub fn incidents(&self) -> Vec<Incident> {
        let mut v: Vec<Incident> = self.incidents.values().cloned().collect();
        v.sort_by(|a, b| {
            b.level
                .cmp(&a.level)
                .then(a.opened_at.cmp(&b.opened_at))
                .then(a.id.cmp(&b.id))
        });
        v
    }

    /// Counters.
    pub fn counters(&self) -> Counters {
        self.counters.clone()
    }

    fn snapshot_head(&self, seq: u64, epoch: &str, sees_phones: bool) -> serde_json::Value {
        serde_json::json!({
            "seq": seq,
            "epoch": epoch,
            "district": { "id": self.district.info.id, "name": self.district.info.name },
            "incidents": self.incidents(),
            "counters": self.counters,
            "alerts": self.alerts.iter().rev().collect::<Vec<_>>(),
            "rejects": self.rejects.iter().rev().collect::<Vec<_>>(),
            "people": self.people_for(sees_phones),
        })
    }

    /// The snapshot body split for sending: the first `part_points` points with everything
    /// else, then `snapshot_part` messages of as many points each (see
    /// `docs/WEBSOCKET.md`). A snapshot of 10,000 points is some 3.5 MB; in parts, a client that
    /// joins is written one part at a time, and a slow one holds up one part, not the whole.
    pub fn snapshot_parts(
        &self,
        seq: u64,
        epoch: &str,
        sees_phones: bool,
        part_points: usize,
    ) -> SnapshotParts {
        let points = self.points();
        let chunks: Vec<&[PointView]> = points.chunks(part_points.max(1)).collect();
        let parts = chunks.len().max(1);
        let mut body = self.snapshot_head(seq, epoch, sees_phones);
        body["points"] =
            serde_json::to_value(chunks.first().copied().unwrap_or(&[])).expect("plain data");
        body["parts"] = parts.into();
        let rest: Arc<[String]> = chunks
            .iter()
            .enumerate()
            .skip(1)
            .map(|(i, chunk)| {
                serde_json::json!({
                    "type": "snapshot_part",
                    "seq": seq,
                    "epoch": epoch,
                    "part": i,
                    "parts": parts,
                    "points": chunk,
                })
                .to_string()
            })
            .collect();
        SnapshotParts {
            body: body.to_string(),
            rest,
        }
    }

    /// Everyone in the district's chains, by id: name, title, phone (masked unless the
    /// session may see phones).
    pub fn people(&self, session: &Session) -> BTreeMap<String, serde_json::Value> {
        self.people_for(session.sees_phones())
    }

    fn people_for(&self, sees_phones: bool) -> BTreeMap<String, serde_json::Value> {
        self.district
            .people
            .iter()
            .map(|(id, p)| {
                let phone = if sees_phones {
                    p.phone.clone()
                } else {
                    mask_phone(&p.phone)
                };
                (
                    id.clone(),
                    serde_json::json!({ "name": p.name, "title": p.title, "phone": phone }),
                )
            })
            .collect()
    }

    /// One point for the point panel: its view, its plan (一点一策), thresholds, and its
    /// five-level chain with phones (masked unless the session may see phones).
    pub fn point_detail(&self, id: &str, session: &Session) -> Option<serde_json::Value> {
        let p = self.district.point(id)?;
        let view = self.points.get(id)?;
        let chain: Vec<serde_json::Value> = Rung::LADDER
            .iter()
            .map(|r| {
                let person = r.person(&p.chain);
                let phone = if session.sees_phones() {
                    person.phone.clone()
                } else {
                    mask_phone(&person.phone)
                };
                serde_json::json!({
                    "rung": r, "rung_zh": r.zh(), "person": person.id, "name": person.name,
                    "title": person.title, "phone": phone,
                })
            })
            .collect();
        let thresholds: BTreeMap<&str, f64> = Level::ALERTS
            .iter()
            .filter_map(|l| p.thresholds.get(*l).map(|t| (l.as_str(), t.raise)))
            .collect();
        Some(serde_json::json!({
            "point": view,
            "plan": p.plan,
            "camera": p.camera.as_ref().map(|c| serde_json::json!({"id": c.id, "name": c.name, "stream": c.stream})),
            "thresholds": thresholds,
            "unit": p.kind.unit(),
            "chain": chain,
            "incident": self.incidents.values().find(|i| i.point_id == id).map(|i| i.id.clone()),
        }))
    }

    /// Sub-district outlines for the map, as GeoJSON: the config has no surveyed boundaries,
    /// so each outline is the convex hull of the sub-district's points, padded so single
    /// points and lines still make an area. Approximate, and said so in each feature.
    pub fn geo(&self) -> serde_json::Value {
        const PAD: f64 = 0.002;
        let mut features = Vec::new();
        for sd in &self.district.sub_districts {
            let mut pts: Vec<(f64, f64)> = Vec::new();
            for p in self
                .district
                .points
                .iter()
                .filter(|p| p.sub_district == sd.id)
            {
                for (dx, dy) in [(-PAD, -PAD), (PAD, -PAD), (PAD, PAD), (-PAD, PAD)] {
                    pts.push((p.lon + dx, p.lat + dy));
                }
            }
            let hull = convex_hull(pts);
            if hull.len() < 3 {
                continue;
            }
            let mut ring: Vec<[f64; 2]> = hull.iter().map(|(x, y)| [*x, *y]).collect();
            ring.push(ring[0]);
            features.push(serde_json::json!({
                "type": "Feature",
                "properties": { "id": sd.id, "name": sd.name, "approximate": true },
                "geometry": { "type": "Polygon", "coordinates": [ring] },
            }));
        }
        serde_json::json!({ "type": "FeatureCollection", "features": features })
    }

    /// Fold a status record.
    pub fn on_status(&mut self, s: PointStatus) -> Vec<Change> {
        // Readings this status covers are the stage's now, judged: they leave the live
        // depth, so a rejected one does not linger there as the highest.
        if let (Some(point), Some(covered)) = (self.district.point(&s.point), s.last_reading_ms) {
            for sensor in &point.sensors {
                if self
                    .live_by_sensor
                    .get(sensor.id.as_str())
                    .is_some_and(|(t, _)| *t <= covered)
                {
                    self.live_by_sensor.remove(sensor.id.as_str());
                }
            }
        }
        let Some(p) = self.points.get_mut(s.point.as_str()) else {
            return Vec::new();
        };
        self.history.record(&s);
        self.tally.count(p, false);
        p.level = s.level;
        p.data_state = s.data_state;
        p.depth_cm = shown(s.depth_cm, 100.0);
        p.rise_cm_per_min = shown(s.rise_cm_per_min, 1000.0);
        p.rain_10m_mm = shown(s.rain_10m_mm, 100.0);
        p.rain_1h_mm = shown(s.rain_1h_mm, 100.0);
        p.rain_3h_mm = shown(s.rain_3h_mm, 100.0);
        p.rain_24h_mm = shown(s.rain_24h_mm, 100.0);
        p.last_reading_ms = s.last_reading_ms;
        p.qc_flags = s.qc_flags;
        p.next_level = s.next_level;
        p.minutes_to_next = shown(s.minutes_to_next, 10.0);
        p.flapping = s.flapping;
        self.tally.count(p, true);
        let view = p.clone();
        self.recount();
        vec![Change::Point(view), Change::Counters(self.counters.clone())]
    }

    /// Whether a status changes what the duty team acts on: the point's level, its data state
    /// (silent, stale, suspect) or flapping; or the point is one the wall does not show yet.
    /// Such a status is folded at once, ahead of a burst of updates that change only numbers
    /// (depth, rate, rain, the predicted minutes), which are paced (see `server.rs`, the
    /// status follower). The predicted next level is a number's consequence: on a rising
    /// and falling series it comes and goes with every turn.
    pub fn status_is_urgent(&self, s: &PointStatus) -> bool {
        self.points.get(s.point.as_str()).is_none_or(|p| {
            p.level != s.level || p.data_state != s.data_state || p.flapping != s.flapping
        })
    }

    /// Fold a reading off the readings topic, ahead of the stream stage: the live depth.
    /// Per sensor only its newest reading counts, and only a depth within the physical range
    /// (judged on the raw value, as the stage does) after calibration; the rest is the stream
    /// stage's to judge, count and dead-letter (the wall would count them twice). A point
    /// with several depth sensors shows the highest of their newest readings, as the stage's
    /// depth is the highest of theirs. Levels and data states are never touched here: they
    /// stay the stage's, in event time.
    pub fn on_reading(&mut self, r: Reading) -> Vec<Change> {
        let Some(sensor) = self.district.sensor(&r.sensor) else {
            return Vec::new();
        };
        if sensor.sensor.kind != SensorKind::Depth {
            return Vec::new();
        }
        let (lo, hi) = SensorKind::Depth.physical_range();
        if !(lo..=hi).contains(&r.value) {
            return Vec::new();
        }
        let Some(p) = self.points.get_mut(&sensor.point.id) else {
            return Vec::new();
        };
        // Not older than the sensor's last, nor than what the stage's status covers.
        let newest = self.live_by_sensor.get(r.sensor.as_str()).map(|(t, _)| *t);
        if newest.max(p.last_reading_ms).is_some_and(|t| r.ts_ms <= t) {
            return Vec::new();
        }
        let depth = r.value + sensor.sensor.calibration_offset_cm;
        self.live_by_sensor
            .insert(r.sensor.clone(), (r.ts_ms, depth));
        // Stamped with the time of the reading that gave the value: another sensor's newer
        // reading must not make an old one look new (say a spike the stage rejected, from a
        // sensor that has gone quiet since).
        let (mut live_ms, mut live_depth) = (r.ts_ms, depth);
        for s in &sensor.point.sensors {
            if let Some(&(t, d)) = self.live_by_sensor.get(s.id.as_str()) {
                if d > live_depth || (d == live_depth && t > live_ms) {
                    (live_ms, live_depth) = (t, d);
                }
            }
        }
        let before = (p.live_depth_cm, p.live_ms);
        p.live_depth_cm = shown(Some(live_depth), 100.0);
        p.live_ms = Some(live_ms);
        if (p.live_depth_cm, p.live_ms) == before {
            return Vec::new();
        }
        vec![Change::Point(p.clone())]
    }

    /// Fold an incident record.
    pub fn on_incident(&mut self, i: Incident) -> Vec<Change> {
        let mut changes = Vec::new();
        let count = |pred: fn(&floodcmd_model::event::EscalationStep) -> bool| {
            i.steps.iter().filter(|s| pred(s)).count() as u64
        };
        self.steps.insert(
            i.id.clone(),
            (
                i.steps.len() as u64,
                count(|s| s.acked_ms.is_some()),
                count(|s| s.checked_in_ms.is_some() || s.state == StepState::CheckedIn),
            ),
        );
        let (n, a, c) = self
            .steps
            .values()
            .fold((0, 0, 0), |(n, a, c), (x, y, z)| (n + x, a + y, c + z));
        self.counters.notified = n;
        self.counters.acknowledged = a;
        self.counters.checked_in = c;
        let open = i.state != IncidentState::Closed;
        if open {
            self.incidents.insert(i.id.clone(), i.clone());
        } else {
            self.incidents.remove(&i.id);
        }
        // The map shows an underpass's closure stage while an incident of it is open.
        let closure = self
            .incidents
            .values()
            .filter(|o| o.point_id == i.point_id)
            .filter_map(|o| o.closure.as_ref().map(|c| c.stage))
            .max();
        if let Some(p) = self.points.get_mut(&i.point_id) {
            if p.closure != closure {
                p.closure = closure;
                changes.push(Change::Point(p.clone()));
            }
        }
        self.recount();
        changes.push(Change::Incident(i));
        changes.push(Change::Counters(self.counters.clone()));
        changes
    }

    /// Fold a delivery record of the outbox sender.
    pub fn on_delivery(&mut self, d: Delivery) -> Vec<Change> {
        let before = self.deliveries.get(&d.key).copied();
        // Claims after a result (a second sender's lease) do not undo the result.
        let next = match (before, d.state) {
            (
                Some(DeliveryState::Sent | DeliveryState::Delivered | DeliveryState::Failed),
                DeliveryState::Claimed,
            ) => return Vec::new(),
            (Some(DeliveryState::Delivered), DeliveryState::Sent) => return Vec::new(),
            (_, s) => s,
        };
        if before == Some(next) {
            return Vec::new();
        }
        let sent = |s: Option<DeliveryState>| {
            matches!(s, Some(DeliveryState::Sent | DeliveryState::Delivered))
        };
        if sent(Some(next)) && !sent(before) {
            self.counters.sms_sent += 1;
        }
        if next == DeliveryState::Delivered {
            self.counters.sms_delivered += 1;
        }
        if next == DeliveryState::Failed {
            self.counters.sms_failed += 1;
        }
        self.deliveries.insert(d.key, next);
        vec![Change::Counters(self.counters.clone())]
    }

    /// Fold an alert transition.
    pub fn on_alert(&mut self, a: AlertTransition) -> Vec<Change> {
        self.counters.transitions += 1;
        if self.alerts.len() == RECENT_ALERTS {
            self.alerts.pop_front();
        }
        self.alerts.push_back(a.clone());
        vec![Change::Alert(a), Change::Counters(self.counters.clone())]
    }

    /// Fold a notification.
    pub fn on_notification(&mut self, _n: Notification) -> Vec<Change> {
        self.counters.notifications += 1;
        vec![Change::Counters(self.counters.clone())]
    }

    /// Fold a reject.
    pub fn on_reject(&mut self, r: Reject) -> Vec<Change> {
        self.counters.rejects += 1;
        if self.rejects.len() == RECENT_REJECTS {
            self.rejects.pop_front();
        }
        self.rejects.push_back(r.clone());
        vec![Change::Reject(r), Change::Counters(self.counters.clone())]
    }
}

/// Changes gathered for one client between two sends: the latest of each point and
/// incident, the newest alerts and rejects (at most as many as the wall keeps), the latest
/// counters, and the number of the newest change among them.
#[derive(Default)]
pub struct PendingDelta {
    points: BTreeMap<String, PointView>,
    incidents: BTreeMap<String, Incident>,
    alerts: VecDeque<AlertTransition>,
    rejects: VecDeque<Reject>,
    counters: Option<Counters>,
    last_seq: Option<u64>,
}

impl PendingDelta {
    /// Add change number `seq`, replacing an older one of the same point or incident.
    pub fn add(&mut self, seq: u64, c: &Change) {
        self.last_seq = Some(self.last_seq.map_or(seq, |s| s.max(seq)));
        match c {
            Change::Point(p) => {
                self.points.insert(p.id.clone(), p.clone());
            }
            Change::Incident(i) => {
                self.incidents.insert(i.id.clone(), i.clone());
            }
            Change::Alert(a) => {
                if self.alerts.len() == RECENT_ALERTS {
                    self.alerts.pop_front();
                }
                self.alerts.push_back(a.clone());
            }
            Change::Reject(r) => {
                if self.rejects.len() == RECENT_REJECTS {
                    self.rejects.pop_front();
                }
                self.rejects.push_back(r.clone());
            }
            Change::Counters(c) => self.counters = Some(c.clone()),
        }
    }

    /// The number of the newest change gathered.
    pub fn last_seq(&self) -> Option<u64> {
        self.last_seq
    }

    /// Nothing to send.
    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
            && self.incidents.is_empty()
            && self.alerts.is_empty()
            && self.rejects.is_empty()
            && self.counters.is_none()
    }

    /// The delta message, emptying the buffer. Its `seq` is the newest change it holds
    /// (`seq_if_empty` when it holds none, as a resume with nothing missed does).
    pub fn take(&mut self, seq_if_empty: u64, resumed: bool) -> serde_json::Value {
        let d = std::mem::take(self);
        let mut msg = serde_json::json!({
            "type": "delta",
            "seq": d.last_seq.unwrap_or(seq_if_empty),
            "points": d.points.into_values().collect::<Vec<_>>(),
            "incidents": d.incidents.into_values().collect::<Vec<_>>(),
            "alerts": d.alerts,
            "rejects": d.rejects,
            "counters": d.counters,
        });
        if resumed {
            msg["resumed"] = serde_json::Value::Bool(true);
        }
        msg
    }
}

/// Every point as the last shared delta left it in clients' views, as JSON fields: what the
/// next shared delta's patches are taken against. Every client holds exactly this (a snapshot
/// is taken only at a delta's cut, see [`crate::feed`]), so a patch of the fields that changed
/// since is all it needs, a quarter of a whole view or less in a storm, where depth, rate of
/// rise and reading time change and the rest stays.
#[derive(Default)]
pub struct SentViews {
    views: HashMap<String, serde_json::Map<String, serde_json::Value>>,
}

/// The fields of a point's live depth: a delta carries them apart, as one compact row per
/// point (`[id, live_depth_cm, live_ms]`), not in its patch. Every reading changes them, so
/// they are most of a storm's delta, and a row is half the bytes of a patch.
const LIVE_FIELDS: [&str; 2] = ["live_depth_cm", "live_ms"];

/// How one point goes into a shared delta.
enum PointChange {
    /// Not sent before: the whole view.
    Whole(serde_json::Value),
    /// The changed fields, with `id`; a field gone is `null`.
    Patch(serde_json::Map<String, serde_json::Value>),
    /// Nothing a client would see changed.
    Same,
}

impl SentViews {
    /// Start from the views every client is given (the district's points at start).
    pub fn seeded<'a>(views: impl Iterator<Item = &'a PointView>) -> SentViews {
        let mut s = SentViews::default();
        for v in views {
            s.change(v);
        }
        s
    }

    /// Record `view` as sent; what the clients must be sent for it, and its live row when
    /// its live depth changed (see [`LIVE_FIELDS`]).
    fn change(&mut self, view: &PointView) -> (PointChange, Option<serde_json::Value>) {
        let serde_json::Value::Object(new) =
            serde_json::to_value(view).expect("a point view is plain data")
        else {
            unreachable!("a point view serializes to an object");
        };
        let Some(old) = self.views.get_mut(&view.id) else {
            self.views.insert(view.id.clone(), new.clone());
            return (PointChange::Whole(serde_json::Value::Object(new)), None);
        };
        let live_moved = LIVE_FIELDS.iter().any(|k| old.get(*k) != new.get(*k));
        let mut patch = serde_json::Map::new();
        for (k, v) in &new {
            if old.get(k) != Some(v) && !LIVE_FIELDS.contains(&k.as_str()) {
                patch.insert(k.clone(), v.clone());
            }
        }
        for k in old.keys() {
            if !new.contains_key(k) && !LIVE_FIELDS.contains(&k.as_str()) {
                patch.insert(k.clone(), serde_json::Value::Null);
            }
        }
        *old = new;
        let live =
            live_moved.then(|| serde_json::json!([view.id, view.live_depth_cm, view.live_ms]));
        if patch.is_empty() {
            return (PointChange::Same, live);
        }
        patch.insert("id".into(), view.id.clone().into());
        (PointChange::Patch(patch), live)
    }
}

impl PendingDelta {
    /// The delta every client is sent for this tick, emptying the buffer: points as patches
    /// against `sent` (whole views for points not sent before), and `sent` brought up to
    /// date. `None` when nothing changed that a client would see.
    pub fn take_shared(&mut self, sent: &mut SentViews) -> Option<serde_json::Value> {
        let d = std::mem::take(self);
        let seq = d.last_seq?;
        let mut points = Vec::new();
        let mut patches = Vec::new();
        let mut live = Vec::new();
        for view in d.points.values() {
            let (change, row) = sent.change(view);
            match change {
                PointChange::Whole(v) => points.push(v),
                PointChange::Patch(p) => patches.push(serde_json::Value::Object(p)),
                PointChange::Same => {}
            }
            live.extend(row);
        }
        if points.is_empty()
            && patches.is_empty()
            && live.is_empty()
            && d.incidents.is_empty()
            && d.alerts.is_empty()
            && d.rejects.is_empty()
            && d.counters.is_none()
        {
            return None;
        }
        Some(serde_json::json!({
            "type": "delta",
            "seq": seq,
            "points": points,
            "patches": patches,
            "live": live,
            "incidents": d.incidents.into_values().collect::<Vec<_>>(),
            "alerts": d.alerts,
            "rejects": d.rejects,
            "counters": d.counters,
        }))
    }
}

/// The convex hull (Andrew's monotone chain), counter-clockwise, of (lon, lat) pairs.
fn convex_hull(mut pts: Vec<(f64, f64)>) -> Vec<(f64, f64)> {
    pts.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    pts.dedup();
    if pts.len() < 3 {
        return pts;
    }
    let cross = |o: (f64, f64), a: (f64, f64), b: (f64, f64)| {
        (a.0 - o.0) * (b.1 - o.1) - (a.1 - o.1) * (b.0 - o.0)
    };
    let mut hull: Vec<(f64, f64)> = Vec::with_capacity(pts.len() * 2);
    for pass in 0..2 {
        let start = hull.len();
        let iter: Box<dyn Iterator<Item = &(f64, f64)>> = if pass == 0 {
            Box::new(pts.iter())
        } else {
            Box::new(pts.iter().rev())
        };
        for &p in iter {
            while hull.len() >= start + 2
                && cross(hull[hull.len() - 2], hull[hull.len() - 1], p) <= 0.0
            {
                hull.pop();
            }
            hull.push(p);
        }
        hull.pop();
    }
    hull
}

#[cfg(test)]
mod tests {
    use super::*;
    use floodcmd_model::event::{Closure, EscalationStep, Problem};

    fn district() -> Arc<District> {
        Arc::new(District::from_toml_str(include_str!("../../config/xincheng.toml")).unwrap())
    }

    /// What may wait behind a burst and what may not: only a status that changes nothing but
    /// numbers (depth, rate, rain, a prediction, its time) is paced.
    #[test]
    fn a_status_is_urgent_when_it_changes_what_the_team_acts_on() {
        let d = district();
        let mut w = WallState::new(d.clone());
        let point = &d.points[0];
        let base = PointStatus {
            depth_cm: Some(5.0),
            ..crate::wall_fixtures::fresh_status(point)
        };
        // Every point is silent until heard from: its first status is urgent.
        assert!(w.status_is_urgent(&base));
        w.on_status(base.clone());
        let depth_only = PointStatus {
            depth_cm: Some(6.5),
            rise_cm_per_min: Some(1.5),
            rain_1h_mm: Some(3.0),
            last_reading_ms: Some(2),
            as_of_ms: 2,
            ..base.clone()
        };
        assert!(!w.status_is_urgent(&depth_only));
        // A prediction that comes and goes with the rate is a number's consequence.
        assert!(!w.status_is_urgent(&PointStatus {
            next_level: Some(Level::Yellow),
            minutes_to_next: Some(8.0),
            ..depth_only.clone()
        }));
        for urgent in [
            PointStatus {
                level: Level::Blue,
                ..depth_only.clone()
            },
            PointStatus {
                data_state: DataState::Suspect,
                ..depth_only.clone()
            },
            PointStatus {
                flapping: true,
                ..depth_only.clone()
            },
            PointStatus {
                point: "NOT-A-POINT".into(),
                ..depth_only.clone()
            },
        ] {
            assert!(w.status_is_urgent(&urgent), "{urgent:?}");
        }
    }

    /// The tally kept status by status is what counting every point again gives.
    #[test]
    fn the_counters_kept_as_statuses_arrive_equal_a_full_count() {
        let d = district();
        let mut w = WallState::new(d.clone());
        let ids: Vec<(String, PointKind)> =
            d.points.iter().map(|p| (p.id.clone(), p.kind)).collect();
        let states = [
            DataState::Fresh,
            DataState::Silent,
            DataState::Suspect,
            DataState::Late,
        ];
        let mut seed = 7u64;
        for n in 0..2_000u64 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let (id, kind) = &ids[(seed >> 33) as usize % ids.len()];
            let s = PointStatus {
                point: id.as_str().into(),
                kind: *kind,
                level: Level::ALL[(seed >> 20) as usize % 5],
                data_state: states[(seed >> 40) as usize % states.len()],
                depth_cm: Some(n as f64),
                rise_cm_per_min: None,
                rain_10m_mm: None,
                rain_1h_mm: None,
                rain_3h_mm: None,
                rain_24h_mm: None,
                last_reading_ms: Some(n as i64),
                qc_flags: Vec::new(),
                next_level: None,
                minutes_to_next: None,
                flapping: false,
                as_of_ms: n as i64,
            };
            w.on_status(s);
            assert_eq!(w.tally, Tally::of(w.points.values()), "after status {n}");
        }
        let c = w.counters.clone();
        let gauges_max = w
            .points
            .values()
            .filter(|p| p.kind == PointKind::RainGauge)
            .map(|p| p.level)
            .max()
            .unwrap_or(Level::Normal);
        assert_eq!(c.rain_signal, gauges_max);
        assert_eq!(
            c.silent,
            w.points
                .values()
                .filter(|p| p.data_state == DataState::Silent)
                .count()
        );
        assert_eq!(
            c.levels.values().sum::<usize>()
                + w.points
                    .values()
                    .filter(|p| p.data_state == DataState::Silent && p.level == Level::Normal)
                    .count(),
            w.points.len(),
            "every point counted once, silent normal ones under silent only"
        );
    }

    #[test]
    fn hulls_enclose_their_points() {
        let h = convex_hull(vec![
            (0.0, 0.0),
            (1.0, 0.0),
            (0.5, 0.5),
            (1.0, 1.0),
            (0.0, 1.0),
        ]);
        assert_eq!(h.len(), 4, "{h:?}");
        assert!(!h.contains(&(0.5, 0.5)));
    }

    #[test]
    fn viewers_get_masked_phones_and_outlines_cover_every_sub_district() {
        let d = district();
        let s = WallState::new(d.clone());
        let viewer = Session::anonymous();
        let commander = Session {
            name: Some("值班长".into()),
            role: floodcmd_model::settings::UserRole::Commander,
        };
        let (id, person) = d.people.iter().next().unwrap();
        let masked = s.people(&viewer)[id.as_str()]["phone"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(
            masked.contains("****") && masked != person.phone,
            "{masked}"
        );
        assert_eq!(
            s.people(&commander)[id.as_str()]["phone"],
            person.phone.as_str()
        );
        let snap = s.snapshot_parts(7, "e", false, 30);
        assert!(
            !snap.body.contains(&person.phone)
                && !snap.rest.iter().any(|p| p.contains(&person.phone)),
            "a viewer's snapshot holds a full phone number"
        );
        assert!(s
            .snapshot_parts(7, "e", true, 30)
            .body
            .contains(&person.phone));
        let up = d
            .points
            .iter()
            .find(|p| p.kind == PointKind::Underpass)
            .unwrap();
        let detail = s.point_detail(&up.id, &viewer).unwrap().to_string();
        assert!(!detail.contains(&up.chain.owner_a.phone));
        assert!(s
            .point_detail(&up.id, &commander)
            .unwrap()
            .to_string()
            .contains(&up.chain.owner_a.phone));
        let geo = s.geo();
        assert_eq!(
            geo["features"].as_array().unwrap().len(),
            d.sub_districts
                .iter()
                .filter(|sd| d.points.iter().any(|p| p.sub_district == sd.id))
                .count()
        );
    }

    #[test]
    fn incidents_move_closure_and_step_counters_and_deliveries_count_once() {
        let d = district();
        let up = d
            .points
            .iter()
            .find(|p| p.kind == PointKind::Underpass)
            .unwrap();
        let mut s = WallState::new(d.clone());
        let step = |state, acked: Option<Millis>| EscalationStep {
            id: "red.0.owner_a".into(),
            level: Level::Red,
            loop_no: 0,
            rung: Rung::OwnerA,
            person: up.chain.owner_a.id.clone(),
            name: up.chain.owner_a.name.clone(),
            notified_ms: 1,
            deadline_ms: Some(100),
            acked_ms: acked,
            checked_in_ms: None,
            state,
        };
        let mut inc = Incident {
            id: format!("{}:water:1", up.id),
            point_id: up.id.clone(),
            problem: Problem::Water,
            level: Level::Red,
            peak_level: Level::Red,
            state: IncidentState::Open,
            opened_at: 1,
            updated_at: 1,
            closed_at: None,
            value: 30.0,
            timeline: Vec::new(),
            steps: vec![step(StepState::Pending, None)],
            on_site_ms: None,
            closure: Some(Closure {
                stage: ClosureStage::Suggested,
                confirmed_by: Vec::new(),
                below_yellow_since_ms: None,
                history: Vec::new(),
            }),
            source: None,
        };
        let ch = s.on_incident(inc.clone());
        assert!(ch
            .iter()
            .any(|c| matches!(c, Change::Point(p) if p.closure == Some(ClosureStage::Suggested))));
        assert_eq!((s.counters.notified, s.counters.acknowledged), (1, 0));
        inc.steps = vec![step(StepState::Acknowledged, Some(5))];
        s.on_incident(inc.clone());
        assert_eq!((s.counters.notified, s.counters.acknowledged), (1, 1));
        inc.state = IncidentState::Closed;
        let ch = s.on_incident(inc);
        assert!(ch
            .iter()
            .any(|c| matches!(c, Change::Point(p) if p.closure.is_none())));
        assert_eq!(s.counters.acknowledged, 1, "closed incidents still count");

        let del = |state| Delivery {
            key: "k1".into(),
            state,
            instance: "i".into(),
            gateway: None,
            message_ids: Vec::new(),
            detail: String::new(),
            at_ms: 1,
        };
        s.on_delivery(del(DeliveryState::Claimed));
        s.on_delivery(del(DeliveryState::Sent));
        s.on_delivery(del(DeliveryState::Sent));
        s.on_delivery(del(DeliveryState::Claimed));
        s.on_delivery(del(DeliveryState::Delivered));
        assert_eq!((s.counters.sms_sent, s.counters.sms_delivered), (1, 1));
    }

    #[test]
    fn deltas_keep_the_newest_of_each_point_and_their_highest_number() {
        let d = district();
        let mut s = WallState::new(d.clone());
        let mut pending = PendingDelta::default();
        let st = |depth| PointStatus {
            level: Level::Blue,
            depth_cm: Some(depth),
            ..crate::wall_fixtures::fresh_status(&d.points[0])
        };
        let mut seq = 0;
        for depth in [1.0, 2.0] {
            for c in s.on_status(st(depth)) {
                seq += 1;
                pending.add(seq, &c);
            }
        }
        let msg = pending.take(0, false);
        assert_eq!(msg["seq"], 4);
        assert_eq!(msg["points"].as_array().unwrap().len(), 1);
        assert_eq!(msg["points"][0]["depth_cm"], 2.0);
        assert!(msg.get("resumed").is_none());
        assert!(pending.is_empty());
        assert_eq!(pending.take(9, true)["seq"], 9);
    }

    /// A client that starts from the first snapshot (every point silent) and applies the
    /// shared deltas holds exactly what a fresh snapshot shows, through fields appearing,
    /// changing, going back and vanishing; and a patch is smaller than the whole view.
    #[test]
    fn shared_patches_keep_a_client_at_what_a_fresh_snapshot_shows() {
        use crate::wall_fixtures::{apply, views_of};
        let d = district();
        let mut w = WallState::new(d.clone());
        let mut sent = SentViews::seeded(w.points().iter());
        let mut client = views_of(&w.points());
        let ids: Vec<(String, PointKind)> =
            d.points.iter().map(|p| (p.id.clone(), p.kind)).collect();
        let mut seed = 11u64;
        let mut seq = 0;
        let (mut patch_bytes, mut whole_bytes, mut live_rows) = (0, 0, 0);
        for tick in 0..300u64 {
            let mut pending = PendingDelta::default();
            for _ in 0..(tick % 7) {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let (id, kind) = &ids[(seed >> 33) as usize % ids.len()];
                // Few values, so fields often go back to what they were.
                let some = |shift: u32, v: f64| ((seed >> shift) & 1 == 1).then_some(v);
                let s = PointStatus {
                    point: id.as_str().into(),
                    kind: *kind,
                    level: Level::ALL[(seed >> 20) as usize % 5],
                    data_state: DataState::Fresh,
                    depth_cm: some(3, ((seed >> 5) % 3) as f64),
                    rise_cm_per_min: some(7, 0.5),
                    rain_10m_mm: None,
                    rain_1h_mm: some(9, 1.0),
                    rain_3h_mm: None,
                    rain_24h_mm: None,
                    last_reading_ms: Some(tick as i64),
                    qc_flags: Vec::new(),
                    next_level: (seed >> 11 & 1 == 1).then_some(Level::Red),
                    minutes_to_next: some(11, 8.0),
                    flapping: seed >> 13 & 1 == 1,
                    as_of_ms: tick as i64,
                };
                let mut changes = w.on_status(s);
                // And, as often, a reading: the live depth's rows beside the patches.
                let depth_sensor = d
                    .point(id)
                    .and_then(|p| p.sensors.iter().find(|s| s.kind == SensorKind::Depth));
                if let (Some(sensor), true) = (depth_sensor, seed >> 15 & 1 == 1) {
                    changes.extend(w.on_reading(Reading {
                        sensor: sensor.id.as_str().into(),
                        point: id.as_str().into(),
                        kind: SensorKind::Depth,
                        ts_ms: tick as i64 * 10 + (seed >> 17) as i64 % 10,
                        value: ((seed >> 23) % 4) as f64,
                        seq: None,
                        received_ms: 0,
                    }));
                }
                for c in changes {
                    seq += 1;
                    pending.add(seq, &c);
                }
            }
            let Some(delta) = pending.take_shared(&mut sent) else {
                assert_eq!(
                    client,
                    views_of(&w.points()),
                    "nothing sent, nothing changed"
                );
                continue;
            };
            assert_eq!(delta["seq"], seq);
            assert!(
                delta["points"].as_array().unwrap().is_empty(),
                "every point was sent"
            );
            for p in delta["patches"].as_array().unwrap() {
                assert!(
                    LIVE_FIELDS.iter().all(|k| p.get(*k).is_none()),
                    "live fields go in rows: {p}"
                );
                patch_bytes += p.to_string().len();
                let id = p["id"].as_str().unwrap();
                whole_bytes += serde_json::to_string(&w.points[id]).unwrap().len();
            }
            live_rows += delta["live"].as_array().unwrap().len();
            apply(&mut client, &delta);
            assert_eq!(client, views_of(&w.points()), "after tick {tick}");
        }
        assert!(
            patch_bytes > 0 && patch_bytes < whole_bytes / 2,
            "{patch_bytes} of {whole_bytes}"
        );
        assert!(live_rows > 50, "{live_rows} live rows");

        // A point the clients were never sent goes whole.
        let mut fresh = SentViews::default();
        let mut pending = PendingDelta::default();
        pending.add(1, &Change::Point(w.points().remove(0)));
        let delta = pending.take_shared(&mut fresh).unwrap();
        assert_eq!(delta["points"].as_array().unwrap().len(), 1);
        assert!(delta["patches"].as_array().unwrap().is_empty());
    }

    /// The stream stage's sums and fits are sent as a person reads them, and print as
    /// written.
    #[test]
    fn values_are_sent_at_the_precision_the_wall_shows() {
        let text = |v: Option<f64>, per: f64| serde_json::to_string(&shown(v, per)).unwrap();
        assert_eq!(text(Some(0.1 + 0.2), 100.0), "0.3");
        assert_eq!(text(Some(0.21999999999999997), 100.0), "0.22");
        assert_eq!(text(Some(0.030719323053203105), 1000.0), "0.031");
        assert_eq!(text(Some(-0.0305), 1000.0), "-0.031");
        assert_eq!(text(Some(12.5), 100.0), "12.5");
        assert_eq!(text(Some(7.96), 10.0), "8.0");
        assert_eq!(text(None, 100.0), "null");
        // Through the fold: the view holds the shown value.
        let d = district();
        let mut w = WallState::new(d.clone());
        let p = d
            .points
            .iter()
            .find(|p| p.kind != PointKind::RainGauge)
            .unwrap();
        w.on_status(PointStatus {
            depth_cm: Some(0.1 + 0.2),
            rise_cm_per_min: Some(0.030719323053203105),
            next_level: Some(Level::Blue),
            minutes_to_next: Some(7.96),
            ..crate::wall_fixtures::fresh_status(p)
        });
        let v = &w.points[&p.id];
        assert_eq!(
            (v.depth_cm, v.rise_cm_per_min, v.minutes_to_next),
            (Some(0.3), Some(0.031), Some(8.0))
        );
    }

    /// The live depth: calibrated, each sensor's newest reading only, the highest of a
    /// point's sensors, never a level or a data state, and nothing the stage would reject
    /// for range or could not place.
    #[test]
    fn a_reading_shows_as_the_live_depth_ahead_of_its_status() {
        let d = district();
        let mut w = WallState::new(d.clone());
        let b = d.sensor("WL-UP-01-B").unwrap();
        assert_eq!(b.sensor.calibration_offset_cm, 1.0);
        let a = d.sensor("WL-UP-01").unwrap();
        assert_eq!(a.sensor.calibration_offset_cm, 0.0);
        assert_eq!(a.point.id, b.point.id, "one point, two depth sensors");
        let point = b.point.id.clone();
        let reading = |sensor: &str, ts_ms, value| Reading {
            sensor: sensor.into(),
            point: point.as_str().into(),
            kind: SensorKind::Depth,
            ts_ms,
            value,
            seq: None,
            received_ms: ts_ms,
        };
        let live = |w: &WallState| {
            let v = &w.points[&point];
            (v.live_depth_cm, v.live_ms, v.level, v.data_state)
        };
        let silent = (None, None, Level::Normal, DataState::Silent);

        // Out of the physical range, not a number, or from a sensor the district does not
        // have: nothing shows, nothing changes.
        for r in [
            reading("WL-UP-01-B", 1_000, 1_000.01),
            reading("WL-UP-01-B", 1_000, -50.01),
            reading("WL-UP-01-B", 1_000, f64::NAN),
            reading("NO-SUCH", 1_000, 10.0),
        ] {
            assert!(w.on_reading(r).is_empty());
            assert_eq!(live(&w), silent);
        }

        // Calibrated and rounded as the wall shows depth; the point stays as the stage last
        // said (silent until its first status), whatever the live value.
        let changes = w.on_reading(reading("WL-UP-01-B", 1_000, 41.234));
        assert!(matches!(&changes[..], [Change::Point(v)] if v.live_depth_cm == Some(42.23)));
        assert_eq!(
            live(&w),
            (Some(42.23), Some(1_000), Level::Normal, DataState::Silent)
        );

        // Only a sensor's newer reading replaces its own: one arriving late (or twice) does not.
        assert!(w.on_reading(reading("WL-UP-01-B", 900, 80.0)).is_empty());
        assert!(w.on_reading(reading("WL-UP-01-B", 1_000, 80.0)).is_empty());
        assert_eq!(live(&w).0, Some(42.23));

        // The point's other sensor: the highest newest reading shows, stamped with its own
        // time (not the other sensor's newer one).
        w.on_reading(reading("WL-UP-01", 1_100, 45.0));
        assert_eq!((live(&w).0, live(&w).1), (Some(45.0), Some(1_100)));
        w.on_reading(reading("WL-UP-01-B", 1_200, 40.0));
        assert_eq!((live(&w).0, live(&w).1), (Some(45.0), Some(1_100)));
        w.on_reading(reading("WL-UP-01", 1_300, 30.0));
        assert_eq!((live(&w).0, live(&w).1), (Some(41.0), Some(1_200)));

        // The range's ends are in it, as the stage has them.
        w.on_reading(reading("WL-UP-01-B", 1_400, 1_000.0));
        assert_eq!(live(&w).0, Some(1_001.0));
        w.on_reading(reading("WL-UP-01-B", 1_500, -50.0));
        w.on_reading(reading("WL-UP-01", 1_500, -50.0));
        assert_eq!(live(&w).0, Some(-49.0));

        // The stage's status changes neither live field, nor the live depth its level.
        let p = d.points.iter().find(|p| p.id == point).unwrap();
        w.on_status(PointStatus {
            depth_cm: Some(50.0),
            last_reading_ms: Some(2_000),
            ..crate::wall_fixtures::fresh_status(p)
        });
        assert_eq!(
            live(&w),
            (Some(-49.0), Some(1_500), Level::Normal, DataState::Fresh)
        );
        // Readings the status covers are gone from the live depth: a new one alone counts.
        w.on_reading(reading("WL-UP-01-B", 2_500, 61.0));
        assert_eq!(
            live(&w),
            (Some(62.0), Some(2_500), Level::Normal, DataState::Fresh)
        );
        // Nor does a reading the status already covers come back as live.
        assert!(w.on_reading(reading("WL-UP-01", 1_900, 90.0)).is_empty());

        // A spike from one sensor, which then goes quiet: the other's newer readings do not
        // re-stamp it, and once the stage's status covers it, it is gone.
        w.on_reading(reading("WL-UP-01-B", 3_000, 500.0));
        w.on_reading(reading("WL-UP-01", 3_100, 30.0));
        assert_eq!((live(&w).0, live(&w).1), (Some(501.0), Some(3_000)));
        w.on_status(PointStatus {
            depth_cm: Some(30.0),
            last_reading_ms: Some(3_100),
            qc_flags: vec![QcFlag::Spike],
            ..crate::wall_fixtures::fresh_status(p)
        });
        w.on_reading(reading("WL-UP-01", 3_200, 31.0));
        assert_eq!((live(&w).0, live(&w).1), (Some(31.0), Some(3_200)));

        // A rain gauge's reading is an increment, not a depth: no live value.
        let gauge = d
            .sensors()
            .find(|s| s.sensor.kind == SensorKind::Rain)
            .unwrap();
        let before = w.points[&gauge.point.id].clone();
        assert!(w
            .on_reading(Reading {
                sensor: gauge.sensor.id.as_str().into(),
                point: gauge.point.id.as_str().into(),
                kind: SensorKind::Rain,
                ..reading("", 3_000, 5.0)
            })
            .is_empty());
        assert_eq!(w.points[&gauge.point.id], before);
    }
}

//! The wall's view of the district, folded from the bus, and the changes clients are sent.

use floodcmd_model::config::PointKind;
use floodcmd_model::event::{
    AlertTransition, Incident, IncidentState, Notification, PointStatus, QcFlag, Reject,
};
use floodcmd_model::time::Millis;
use floodcmd_model::{DataState, District, Level};
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
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
                        qc_flags: Vec::new(),
                        next_level: None,
                        minutes_to_next: None,
                        flapping: false,
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
        };
        s.recount();
        s
    }

    fn recount(&mut self) {
        let mut levels: BTreeMap<Level, usize> = [
            Level::Normal,
            Level::Blue,
            Level::Yellow,
            Level::Orange,
            Level::Red,
        ]
        .into_iter()
        .map(|l| (l, 0))
        .collect();
        let mut silent = 0;
        for p in self.points.values() {
            let silent_point = p.data_state == DataState::Silent;
            // A silent point is never counted as normal; a silent point that was red stays red.
            if !(silent_point && p.level == Level::Normal) {
                *levels.entry(p.level).or_default() += 1;
            }
            if silent_point {
                silent += 1;
            }
        }
        self.counters.levels = levels;
        self.counters.silent = silent;
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

    /// The snapshot a client gets on connect.
    pub fn snapshot(&self, seq: u64) -> serde_json::Value {
        serde_json::json!({
            "type": "snapshot",
            "seq": seq,
            "district": { "id": self.district.info.id, "name": self.district.info.name },
            "points": self.points(),
            "incidents": self.incidents(),
            "counters": self.counters,
            "alerts": self.alerts.iter().rev().collect::<Vec<_>>(),
            "rejects": self.rejects.iter().rev().collect::<Vec<_>>(),
        })
    }

    /// Fold a status record.
    pub fn on_status(&mut self, s: PointStatus) -> Vec<Change> {
        let Some(p) = self.points.get_mut(&s.point) else {
            return Vec::new();
        };
        p.level = s.level;
        p.data_state = s.data_state;
        p.depth_cm = s.depth_cm;
        p.rise_cm_per_min = s.rise_cm_per_min;
        p.rain_10m_mm = s.rain_10m_mm;
        p.rain_1h_mm = s.rain_1h_mm;
        p.rain_3h_mm = s.rain_3h_mm;
        p.rain_24h_mm = s.rain_24h_mm;
        p.last_reading_ms = s.last_reading_ms;
        p.qc_flags = s.qc_flags;
        p.next_level = s.next_level;
        p.minutes_to_next = s.minutes_to_next;
        p.flapping = s.flapping;
        let view = p.clone();
        self.recount();
        vec![Change::Point(view), Change::Counters(self.counters.clone())]
    }

    /// Fold an incident record.
    pub fn on_incident(&mut self, i: Incident) -> Vec<Change> {
        if i.state == IncidentState::Closed {
            self.incidents.remove(&i.id);
        } else {
            self.incidents.insert(i.id.clone(), i.clone());
        }
        self.recount();
        vec![Change::Incident(i), Change::Counters(self.counters.clone())]
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
/// incident, every new alert and reject, the latest counters.
#[derive(Default)]
pub struct PendingDelta {
    points: BTreeMap<String, PointView>,
    incidents: BTreeMap<String, Incident>,
    alerts: Vec<AlertTransition>,
    rejects: Vec<Reject>,
    counters: Option<Counters>,
}

impl PendingDelta {
    /// Add a change, replacing an older one of the same point or incident.
    pub fn add(&mut self, c: Change) {
        match c {
            Change::Point(p) => {
                self.points.insert(p.id.clone(), p);
            }
            Change::Incident(i) => {
                self.incidents.insert(i.id.clone(), i);
            }
            Change::Alert(a) => self.alerts.push(a),
            Change::Reject(r) => self.rejects.push(r),
            Change::Counters(c) => self.counters = Some(c),
        }
    }

    /// Nothing to send.
    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
            && self.incidents.is_empty()
            && self.alerts.is_empty()
            && self.rejects.is_empty()
            && self.counters.is_none()
    }

    /// The delta message, emptying the buffer.
    pub fn take(&mut self, seq: u64) -> serde_json::Value {
        let d = std::mem::take(self);
        serde_json::json!({
            "type": "delta",
            "seq": seq,
            "points": d.points.into_values().collect::<Vec<_>>(),
            "incidents": d.incidents.into_values().collect::<Vec<_>>(),
            "alerts": d.alerts,
            "rejects": d.rejects,
            "counters": d.counters,
        })
    }
}

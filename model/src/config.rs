//! The district: who is responsible for what, where the points are, and when they alarm.
//!
//! A district (区) holds sub-districts (街道) → communities (社区) → grids (网格) → monitored
//! points. A point is a rain gauge, a low-lying point (低洼点) or an underpass (下穿). Its
//! five-level responsibility chain (五级包保) is *derived* from that hierarchy: point owner
//! (A and B posts) → grid worker → community director → sub-district cadre → district duty
//! leader, so a roster change is one edit, not one per point.
//!
//! [`District::from_toml_str`] parses and validates in one go and reports every problem at
//! once, each with the path of the field (`points[12].thresholds.red: ...`).

use crate::level::Level;
use crate::reading::SensorKind;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

/// The kind of monitored point.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum PointKind {
    /// A rain gauge (雨量站).
    RainGauge,
    /// A low-lying point where water collects (低洼易积水点).
    LowPoint,
    /// An underpass or road tunnel (下穿隧道/下穿立交); red means close it.
    Underpass,
}

impl PointKind {
    /// Name used in config and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            PointKind::RainGauge => "rain_gauge",
            PointKind::LowPoint => "low_point",
            PointKind::Underpass => "underpass",
        }
    }
    /// Chinese name.
    pub fn zh(self) -> &'static str {
        match self {
            PointKind::RainGauge => "雨量站",
            PointKind::LowPoint => "低洼点",
            PointKind::Underpass => "下穿",
        }
    }
    /// The sensor kind that decides this point's level.
    pub fn judged_by(self) -> SensorKind {
        match self {
            PointKind::RainGauge => SensorKind::Rain,
            PointKind::LowPoint | PointKind::Underpass => SensorKind::Depth,
        }
    }
    /// Unit of its thresholds.
    pub fn unit(self) -> &'static str {
        self.judged_by().unit()
    }
}

/// A level of the five-level responsibility chain (五级包保).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum ResponsibilityLevel {
    /// 点位责任人 (A and B posts).
    PointOwner,
    /// 网格员.
    Grid,
    /// 社区 director.
    Community,
    /// 街道 cadre.
    SubDistrict,
    /// 区 duty leader of the district command.
    District,
}

impl ResponsibilityLevel {
    /// The chain, bottom to top.
    pub const CHAIN: [ResponsibilityLevel; 5] = [
        ResponsibilityLevel::PointOwner,
        ResponsibilityLevel::Grid,
        ResponsibilityLevel::Community,
        ResponsibilityLevel::SubDistrict,
        ResponsibilityLevel::District,
    ];
    /// Chinese name.
    pub fn zh(self) -> &'static str {
        match self {
            ResponsibilityLevel::PointOwner => "点位责任人",
            ResponsibilityLevel::Grid => "网格员",
            ResponsibilityLevel::Community => "社区",
            ResponsibilityLevel::SubDistrict => "街道",
            ResponsibilityLevel::District => "区防汛指挥部",
        }
    }
    /// Name used in config and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            ResponsibilityLevel::PointOwner => "point_owner",
            ResponsibilityLevel::Grid => "grid",
            ResponsibilityLevel::Community => "community",
            ResponsibilityLevel::SubDistrict => "sub_district",
            ResponsibilityLevel::District => "district",
        }
    }
}

/// One threshold of one level.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Threshold {
    /// Raise the level at or above this (cm for depth, mm for rain).
    pub raise: f64,
    /// Leave the level only below this (hysteresis). Must not exceed `raise`.
    pub reset: f64,
    /// The value must stay at or above `raise` this long before the level is raised.
    #[serde(default)]
    pub hold_s: u32,
    /// Rain only: the rolling window the total is taken over, minutes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_min: Option<u32>,
    /// Where this number comes from (standard, city practice, local plan).
    #[serde(default)]
    pub source: String,
}

impl Threshold {
    fn depth(raise: f64, reset: f64, hold_s: u32, source: &str) -> Self {
        Threshold {
            raise,
            reset,
            hold_s,
            window_min: None,
            source: source.into(),
        }
    }
    fn rain(window_min: u32, raise: f64, reset: f64, source: &str) -> Self {
        Threshold {
            raise,
            reset,
            hold_s: 0,
            window_min: Some(window_min),
            source: source.into(),
        }
    }
}

/// Thresholds for the four alert levels.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LevelThresholds {
    /// 蓝.
    pub blue: Threshold,
    /// 黄.
    pub yellow: Threshold,
    /// 橙.
    pub orange: Threshold,
    /// 红.
    pub red: Threshold,
}

impl LevelThresholds {
    /// The threshold of an alert level (`Normal` has none).
    pub fn get(&self, level: Level) -> Option<&Threshold> {
        match level {
            Level::Normal => None,
            Level::Blue => Some(&self.blue),
            Level::Yellow => Some(&self.yellow),
            Level::Orange => Some(&self.orange),
            Level::Red => Some(&self.red),
        }
    }

    /// Default depth thresholds for low-lying points (domain notes: 蓝 10, 黄 15, 橙 20, 红 25 cm).
    pub fn low_point_default() -> Self {
        const SRC: &str =
            "domain notes default (城市内涝 10-25 cm scale; Shanghai 25 cm no-passage)";
        LevelThresholds {
            blue: Threshold::depth(10.0, 8.0, 60, SRC),
            yellow: Threshold::depth(15.0, 13.0, 60, SRC),
            orange: Threshold::depth(20.0, 18.0, 60, SRC),
            red: Threshold::depth(25.0, 22.0, 60, SRC),
        }
    }

    /// Default depth thresholds for underpasses; red means close (Shanghai closes above 25 cm,
    /// Xi'an's staff line is 30 cm).
    pub fn underpass_default() -> Self {
        LevelThresholds {
            blue: Threshold::depth(10.0, 8.0, 30, "domain notes default"),
            yellow: Threshold::depth(15.0, 13.0, 30, "domain notes default"),
            orange: Threshold::depth(
                20.0,
                18.0,
                30,
                "Shanghai Putuo closed a tunnel at ~20 cm (2021-07-26)",
            ),
            red: Threshold::depth(
                25.0,
                22.0,
                30,
                "Shanghai: closure above 25 cm; Xi'an staff line 30 cm",
            ),
        }
    }

    /// Default rain rules: the mainland rainstorm warning signals (暴雨预警信号).
    pub fn rain_gauge_default() -> Self {
        LevelThresholds {
            blue: Threshold::rain(720, 50.0, 40.0, "暴雨蓝色预警信号: 12 h ≥ 50 mm"),
            yellow: Threshold::rain(360, 50.0, 40.0, "暴雨黄色预警信号: 6 h ≥ 50 mm"),
            orange: Threshold::rain(180, 50.0, 40.0, "暴雨橙色预警信号: 3 h ≥ 50 mm"),
            red: Threshold::rain(180, 100.0, 80.0, "暴雨红色预警信号: 3 h ≥ 100 mm"),
        }
    }
}

/// Per-level overrides of the defaults, for one point (一点一策).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct ThresholdOverrides {
    /// 蓝.
    pub blue: Option<Threshold>,
    /// 黄.
    pub yellow: Option<Threshold>,
    /// 橙.
    pub orange: Option<Threshold>,
    /// 红.
    pub red: Option<Threshold>,
}

impl ThresholdOverrides {
    fn is_empty(&self) -> bool {
        self.blue.is_none() && self.yellow.is_none() && self.orange.is_none() && self.red.is_none()
    }
    fn apply(&self, base: &LevelThresholds) -> LevelThresholds {
        LevelThresholds {
            blue: self.blue.clone().unwrap_or_else(|| base.blue.clone()),
            yellow: self.yellow.clone().unwrap_or_else(|| base.yellow.clone()),
            orange: self.orange.clone().unwrap_or_else(|| base.orange.clone()),
            red: self.red.clone().unwrap_or_else(|| base.red.clone()),
        }
    }
}

/// How often sensors report, which decides when one counts as silent (失联).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Cadence {
    /// Depth sensors in normal (periodic) mode, seconds. Vendor 4G sensors: 600 s.
    pub depth_normal_s: u32,
    /// Depth sensors in storm (add-on report) mode, seconds. FloodNet: 60 s.
    pub depth_storm_s: u32,
    /// Rain gauges in normal mode, seconds.
    pub rain_normal_s: u32,
    /// Rain gauges while it rains, seconds.
    pub rain_storm_s: u32,
    /// A sensor is silent after this many expected intervals without a reading.
    pub silent_after_missed: u32,
}

impl Default for Cadence {
    fn default() -> Self {
        Cadence {
            depth_normal_s: 600,
            depth_storm_s: 60,
            rain_normal_s: 300,
            rain_storm_s: 60,
            silent_after_missed: 3,
        }
    }
}

/// Quality control of readings, per sensor: what makes a reading suspect.
///
/// A flagged reading is kept on the record (the point shows `suspect`) but never moves a level
/// on its own. The physical range is not here: the stream judges it again with the same
/// range ingest uses ([`SensorKind::physical_range`]), because other producers can write the
/// topic.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct QualityControl {
    /// A depth further than this from the median of the sensor's recent accepted readings is
    /// a spike, cm. It counts only once the next reading agrees with it.
    pub spike_cm: f64,
    /// How many recent accepted readings the median is taken over.
    pub median_of: u32,
    /// A depth changing faster than this since the sensor's last accepted reading is
    /// flagged, cm per minute.
    pub max_rate_cm_per_min: f64,
    /// The same non-zero depth for at least this long is a stuck sensor, seconds...
    pub stuck_after_s: u32,
    /// ...and over at least this many readings.
    pub stuck_after_readings: u32,
    /// A rain increment implying more than this over its reporting interval is suspect, mm/h.
    pub rain_max_mm_h: f64,
    /// Rain intervals shorter than this are judged as this long: one 0.1 mm tip a second
    /// apart is not 360 mm/h, seconds.
    pub rain_min_interval_s: u32,
    /// Where these numbers come from.
    pub source: String,
}

impl Default for QualityControl {
    fn default() -> Self {
        QualityControl {
            spike_cm: 15.0,
            median_of: 5,
            max_rate_cm_per_min: 10.0,
            stuck_after_s: 1800,
            stuck_after_readings: 10,
            rain_max_mm_h: 200.0,
            rain_min_interval_s: 60,
            source: "floodcmd defaults: median of 5 as FloodNet sensors do; 15 cm spike, \
                     10 cm/min rate, stuck = same value ≥ 30 min and ≥ 10 readings; rain cap \
                     200 mm/h (mainland hourly record 201.9 mm, Zhengzhou 2021-07-20; Houston \
                     gauge 520's 100.6 mm in 5 min during Harvey was a fault)"
                .into(),
        }
    }
}

/// The short-duration heavy rain rule (短时强降水) of rain gauges, beside the rainstorm signals.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RainIntensityRule {
    /// The rolling window, minutes.
    pub window_min: u32,
    /// Raise at or above this total over the window, mm.
    pub mm: f64,
    /// Let go only below this total (hysteresis), mm.
    pub reset: f64,
    /// The level it raises.
    pub level: Level,
    /// Where this rule comes from.
    pub source: String,
}

impl Default for RainIntensityRule {
    fn default() -> Self {
        RainIntensityRule {
            window_min: 60,
            mm: 20.0,
            reset: 16.0,
            level: Level::Blue,
            source: "短时强降水 ≥ 20 mm/h (operational convention, domain notes); reset at 80 % \
                     like the rainstorm signal rules here"
                .into(),
        }
    }
}

/// Flap detection, as Kapacitor's `.flapping(low, high)` with `.history(n)`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Flapping {
    /// How many evaluations of the level are remembered.
    pub history: u32,
    /// A flapping point settles once the weighted change ratio falls below this.
    pub low: f64,
    /// A point flaps once the weighted change ratio rises above this.
    pub high: f64,
    /// Where these numbers come from.
    pub source: String,
}

impl Default for Flapping {
    fn default() -> Self {
        Flapping {
            history: 21,
            low: 0.25,
            high: 0.5,
            source: "Kapacitor flap detection: history 21, low 0.25, high 0.5 (domain notes)"
                .into(),
        }
    }
}

/// Rate of rise of depth points and the predicted time to the next level.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Rise {
    /// The least-squares line is fitted over this many recent minutes.
    pub window_min: u32,
    /// Predict the next level only when rising at least this fast, cm per minute (slower is
    /// sensor noise).
    pub min_cm_per_min: f64,
    /// Predictions further ahead than this are not given, minutes.
    pub horizon_min: u32,
    /// Where these numbers come from.
    pub source: String,
}

impl Default for Rise {
    fn default() -> Self {
        Rise {
            window_min: 10,
            min_cm_per_min: 0.1,
            horizon_min: 60,
            source: "floodcmd defaults: 10 min least squares; below 0.1 cm/min or beyond 60 min \
                     a prediction is noise"
                .into(),
        }
    }
}

/// Defaults applied to every point unless it overrides them.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Defaults {
    /// Depth thresholds of low-lying points.
    pub low_point: LevelThresholds,
    /// Depth thresholds of underpasses.
    pub underpass: LevelThresholds,
    /// Rain rules of rain gauges.
    pub rain_gauge: LevelThresholds,
    /// Reporting cadence.
    pub cadence: Cadence,
    /// Quality control of readings.
    pub qc: QualityControl,
    /// The short-duration heavy rain rule of rain gauges.
    pub rain_intensity: RainIntensityRule,
    /// Flap detection.
    pub flapping: Flapping,
    /// Rate of rise and the predicted time to the next level.
    pub rise: Rise,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            low_point: LevelThresholds::low_point_default(),
            underpass: LevelThresholds::underpass_default(),
            rain_gauge: LevelThresholds::rain_gauge_default(),
            cadence: Cadence::default(),
            qc: QualityControl::default(),
            rain_intensity: RainIntensityRule::default(),
            flapping: Flapping::default(),
            rise: Rise::default(),
        }
    }
}

impl Defaults {
    /// The default thresholds of a kind of point.
    pub fn for_kind(&self, kind: PointKind) -> &LevelThresholds {
        match kind {
            PointKind::RainGauge => &self.rain_gauge,
            PointKind::LowPoint => &self.low_point,
            PointKind::Underpass => &self.underpass,
        }
    }
}

/// One rung of the escalation ladder, derived from the five-level chain (五级包保): the point
/// owner's A post, then the B post, then grid, community, sub-district and district.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Rung {
    /// 点位责任人 A岗.
    OwnerA,
    /// 点位责任人 B岗.
    OwnerB,
    /// 网格员.
    Grid,
    /// 社区主任.
    Community,
    /// 街道包保干部.
    SubDistrict,
    /// 区防汛指挥部值班领导.
    District,
}

impl Rung {
    /// Bottom to top.
    pub const LADDER: [Rung; 6] = [
        Rung::OwnerA,
        Rung::OwnerB,
        Rung::Grid,
        Rung::Community,
        Rung::SubDistrict,
        Rung::District,
    ];

    /// The chain level this rung belongs to.
    pub fn responsibility(self) -> ResponsibilityLevel {
        match self {
            Rung::OwnerA | Rung::OwnerB => ResponsibilityLevel::PointOwner,
            Rung::Grid => ResponsibilityLevel::Grid,
            Rung::Community => ResponsibilityLevel::Community,
            Rung::SubDistrict => ResponsibilityLevel::SubDistrict,
            Rung::District => ResponsibilityLevel::District,
        }
    }

    /// The person holding this rung for a point.
    pub fn person(self, chain: &Chain) -> &Person {
        match self {
            Rung::OwnerA => &chain.owner_a,
            Rung::OwnerB => &chain.owner_b,
            Rung::Grid => &chain.grid_worker,
            Rung::Community => &chain.community_director,
            Rung::SubDistrict => &chain.sub_district_cadre,
            Rung::District => &chain.district_duty_leader,
        }
    }

    /// The next rung up, if any.
    pub fn above(self) -> Option<Rung> {
        let i = Rung::LADDER.iter().position(|r| *r == self)?;
        Rung::LADDER.get(i + 1).copied()
    }

    /// Machine name, as in config files and idempotency keys.
    pub fn as_str(self) -> &'static str {
        match self {
            Rung::OwnerA => "owner_a",
            Rung::OwnerB => "owner_b",
            Rung::Grid => "grid",
            Rung::Community => "community",
            Rung::SubDistrict => "sub_district",
            Rung::District => "district",
        }
    }

    /// Chinese name, for the wall and audit lines.
    pub fn zh(self) -> &'static str {
        match self {
            Rung::OwnerA => "点位责任人(A岗)",
            Rung::OwnerB => "点位责任人(B岗)",
            Rung::Grid => "网格员",
            Rung::Community => "社区",
            Rung::SubDistrict => "街道",
            Rung::District => "区防汛指挥部",
        }
    }
}

/// How one alert level escalates: who is told at once, how long each step has to acknowledge
/// and then to check in on site, how high it may climb and how often the climb repeats.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LevelPolicy {
    /// Rungs notified together the moment the level is reached.
    pub at_once: Vec<Rung>,
    /// The highest rung this level escalates to.
    pub up_to: Rung,
    /// Seconds a notified person has to acknowledge before the next rung is told.
    pub ack_timeout_s: u64,
    /// Seconds an acknowledging person has to check in on site (到岗) before it re-escalates.
    pub checkin_timeout_s: u64,
    /// After the top rung times out, how many more times the whole ladder is repeated.
    pub repeat_loops: u32,
}

/// Escalation per alert level, derived from each point's chain (never written per point).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Escalation {
    /// At 蓝.
    pub blue: LevelPolicy,
    /// At 黄.
    pub yellow: LevelPolicy,
    /// At 橙.
    pub orange: LevelPolicy,
    /// At 红: several levels together.
    pub red: LevelPolicy,
    /// Silent sensors: a maintenance incident for the grid worker and the maintenance contact.
    pub silent: LevelPolicy,
}

impl Default for Escalation {
    fn default() -> Self {
        use Rung::*;
        let p = |at_once: Vec<Rung>, up_to, ack, checkin, loops| LevelPolicy {
            at_once,
            up_to,
            ack_timeout_s: ack,
            checkin_timeout_s: checkin,
            repeat_loops: loops,
        };
        Escalation {
            blue: p(vec![OwnerA], Grid, 900, 3600, 0),
            yellow: p(vec![OwnerA, Grid], Community, 600, 1800, 1),
            orange: p(vec![OwnerA, OwnerB, Grid], SubDistrict, 300, 1200, 2),
            red: p(
                vec![OwnerA, OwnerB, Grid, Community, SubDistrict],
                District,
                180,
                900,
                3,
            ),
            silent: p(vec![Grid], Grid, 1800, 7200, 0),
        }
    }
}

impl Escalation {
    /// The policy of an alert level (`None` for normal).
    pub fn policy(&self, level: Level) -> Option<&LevelPolicy> {
        match level {
            Level::Normal => None,
            Level::Blue => Some(&self.blue),
            Level::Yellow => Some(&self.yellow),
            Level::Orange => Some(&self.orange),
            Level::Red => Some(&self.red),
        }
    }

    /// Chain levels notified at once for an alert level.
    pub fn notify_at(&self, level: Level) -> Vec<ResponsibilityLevel> {
        let mut v: Vec<ResponsibilityLevel> = self
            .policy(level)
            .map(|p| p.at_once.iter().map(|r| r.responsibility()).collect())
            .unwrap_or_default();
        v.dedup();
        v
    }
}

/// Underpass closures (封闭).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClosurePolicy {
    /// Seconds the level must stay below yellow before an underpass may be reopened (解封).
    pub reopen_hold_s: u64,
}

impl Default for ClosurePolicy {
    fn default() -> Self {
        ClosurePolicy {
            reopen_hold_s: 1800,
        }
    }
}

/// The district itself.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DistrictInfo {
    /// Short id, e.g. `xincheng`.
    pub id: String,
    /// Name, e.g. 新城区.
    pub name: String,
    /// SMS signature without brackets, e.g. 新城区防汛.
    pub sms_signature: String,
    /// Person id of the district command's duty leader (区防汛指挥部值班领导).
    pub duty_leader: String,
    /// Person id of the sensor maintenance contact (设备运维), told about silent sensors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance: Option<String>,
}

/// A person in the responsibility chain.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Person {
    /// Id referenced from elsewhere in the file.
    pub id: String,
    /// Name.
    pub name: String,
    /// Mobile number (11 digits starting with 1).
    pub phone: String,
    /// Title or post, free text.
    #[serde(default)]
    pub title: String,
}

/// 街道.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SubDistrict {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Person id of the cadre responsible for flood control (街道包保干部).
    pub cadre: String,
}

/// 社区.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Community {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Sub-district id.
    pub sub_district: String,
    /// Person id of the community director (社区主任).
    pub director: String,
}

/// 网格.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Grid {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Community id.
    pub community: String,
    /// Person id of the grid worker (网格员).
    pub worker: String,
}

/// A camera watching a point.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Camera {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Stream URL (HLS) or path under the dashboard's camera directory.
    #[serde(default)]
    pub stream: String,
}

/// A sensor at a point.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SensorConfig {
    /// Id the device reports with; unique in the district.
    pub id: String,
    /// What it measures.
    pub kind: SensorKind,
    /// Added to raw depth readings: the sensor's zero is rarely the road surface.
    #[serde(default)]
    pub calibration_offset_cm: f64,
}

/// A monitored point as written in the file.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PointConfig {
    /// Id.
    pub id: String,
    /// Name, e.g. 解放门下穿.
    pub name: String,
    /// Kind.
    pub kind: PointKind,
    /// Grid id.
    pub grid: String,
    /// Latitude (WGS84).
    pub lat: f64,
    /// Longitude (WGS84).
    pub lon: f64,
    /// Person id, point owner A post.
    pub owner_a: String,
    /// Person id, point owner B post (backup).
    pub owner_b: String,
    /// Camera id.
    #[serde(default)]
    pub camera: Option<String>,
    /// The rain gauge whose rain drives this point (for lead times).
    #[serde(default)]
    pub rain_gauge: Option<String>,
    /// The action this point's plan requires at red (一点一策), e.g. 请立即封闭并到岗.
    #[serde(default)]
    pub plan: String,
    /// Sensors.
    pub sensors: Vec<SensorConfig>,
    /// Per-level overrides of the defaults.
    #[serde(default)]
    pub thresholds: ThresholdOverrides,
}

/// The file as written.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DistrictFile {
    /// The district.
    pub district: DistrictInfo,
    /// Defaults for thresholds and cadence.
    #[serde(default)]
    pub defaults: Defaults,
    /// Escalation per level.
    #[serde(default)]
    pub escalation: Escalation,
    /// Underpass closures.
    #[serde(default)]
    pub closure: ClosurePolicy,
    /// People.
    pub people: Vec<Person>,
    /// Sub-districts.
    pub sub_districts: Vec<SubDistrict>,
    /// Communities.
    pub communities: Vec<Community>,
    /// Grids.
    pub grids: Vec<Grid>,
    /// Cameras.
    #[serde(default)]
    pub cameras: Vec<Camera>,
    /// Points.
    pub points: Vec<PointConfig>,
}

/// The five-level chain of one point, resolved to people.
///
/// The people are shared with [`District::people`]: the duty leader sits on every point's
/// chain and a grid worker on every point of the grid, and a copy per point made the chains
/// most of a large district's memory.
#[derive(Clone, Debug, PartialEq)]
pub struct Chain {
    /// 点位责任人 A.
    pub owner_a: Arc<Person>,
    /// 点位责任人 B.
    pub owner_b: Arc<Person>,
    /// 网格员.
    pub grid_worker: Arc<Person>,
    /// 社区主任.
    pub community_director: Arc<Person>,
    /// 街道包保干部.
    pub sub_district_cadre: Arc<Person>,
    /// 区防汛指挥部值班领导.
    pub district_duty_leader: Arc<Person>,
}

impl Chain {
    /// The people at one level of the chain (two for point owners).
    pub fn at(&self, level: ResponsibilityLevel) -> Vec<&Person> {
        match level {
            ResponsibilityLevel::PointOwner => vec![&*self.owner_a, &*self.owner_b],
            ResponsibilityLevel::Grid => vec![&*self.grid_worker],
            ResponsibilityLevel::Community => vec![&*self.community_director],
            ResponsibilityLevel::SubDistrict => vec![&*self.sub_district_cadre],
            ResponsibilityLevel::District => vec![&*self.district_duty_leader],
        }
    }
}

/// A validated point with everything resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct Point {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Kind.
    pub kind: PointKind,
    /// Grid id.
    pub grid: String,
    /// Community id.
    pub community: String,
    /// Sub-district id.
    pub sub_district: String,
    /// Latitude.
    pub lat: f64,
    /// Longitude.
    pub lon: f64,
    /// Camera, if any.
    pub camera: Option<Camera>,
    /// Linked rain gauge point id.
    pub rain_gauge: Option<String>,
    /// Action required at red (一点一策).
    pub plan: String,
    /// Sensors.
    pub sensors: Vec<SensorConfig>,
    /// Thresholds after overrides. Points without overrides share one copy of their kind's
    /// defaults: a copy each (four source texts) added up over a hundred thousand points.
    pub thresholds: Arc<LevelThresholds>,
    /// The five-level chain.
    pub chain: Chain,
}

/// One problem in a config file: where, and what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigProblem {
    /// Field path, e.g. `points[12].thresholds.red`, or `line 4, column 7` for syntax.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Every problem found in a config file.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigProblem>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl ConfigErrors {
    /// Build from a TOML syntax or shape error; the message carries line and column.
    pub fn from_toml(err: &toml::de::Error, source: &str) -> Self {
        let (path, line_text) = match err.span() {
            Some(span) => {
                let (line, col) = line_col(source, span.start);
                let text = source.lines().nth(line - 1).unwrap_or("");
                (format!("line {line}, column {col}"), text)
            }
            None => ("file".to_string(), ""),
        };
        // The toml crate gives some syntax errors (a key with no value: `name =`) without
        // any message; a problem must still say what is wrong.
        let near: String = line_text
            .trim()
            .chars()
            .take(80)
            .map(|c| match c {
                c if c.is_control() => c.escape_debug().to_string(),
                c => c.to_string(),
            })
            .collect();
        let message = match err.message().trim() {
            "" if near.is_empty() => "TOML syntax error".to_string(),
            "" => format!("TOML syntax error in `{near}`"),
            m => m.to_string(),
        };
        ConfigErrors(vec![ConfigProblem { path, message }])
    }
}

fn line_col(source: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(source.len());
    while !source.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &source[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before.rfind('\n').map_or(before.chars().count(), |nl| {
        before[nl + 1..].chars().count()
    }) + 1;
    (line, col)
}

/// A validated district: the file plus indexes.
#[derive(Clone, Debug)]
pub struct District {
    /// The district.
    pub info: DistrictInfo,
    /// Defaults.
    pub defaults: Defaults,
    /// Escalation.
    pub escalation: Escalation,
    /// Underpass closures.
    pub closure: ClosurePolicy,
    /// People by id, shared with the points' chains.
    pub people: BTreeMap<String, Arc<Person>>,
    /// Sub-districts in file order.
    pub sub_districts: Vec<SubDistrict>,
    /// Communities in file order.
    pub communities: Vec<Community>,
    /// Grids in file order.
    pub grids: Vec<Grid>,
    /// Cameras in file order.
    pub cameras: Vec<Camera>,
    /// Points in file order.
    pub points: Vec<Point>,
    point_index: HashMap<String, usize>,
    sensor_index: HashMap<String, (usize, usize)>,
}

/// A sensor looked up by id.
#[derive(Clone, Copy, Debug)]
pub struct SensorRef<'a> {
    /// The point it belongs to.
    pub point: &'a Point,
    /// The sensor.
    pub sensor: &'a SensorConfig,
}

impl District {
    /// Parse and validate a district file, reporting every problem at once.
    pub fn from_toml_str(source: &str) -> Result<District, ConfigErrors> {
        let file: DistrictFile =
            toml::from_str(source).map_err(|e| ConfigErrors::from_toml(&e, source))?;
        District::from_file(file)
    }

    /// Validate a parsed file.
    pub fn from_file(file: DistrictFile) -> Result<District, ConfigErrors> {
        let mut v = Validator::default();
        let district = v.check(file);
        if v.problems.is_empty() {
            Ok(district.expect("no problems means every reference resolved"))
        } else {
            Err(ConfigErrors(v.problems))
        }
    }

    /// A point by id.
    pub fn point(&self, id: &str) -> Option<&Point> {
        self.point_index.get(id).map(|&i| &self.points[i])
    }

    /// A sensor by id, with its point.
    pub fn sensor(&self, id: &str) -> Option<SensorRef<'_>> {
        self.sensor_index.get(id).map(|&(p, s)| SensorRef {
            point: &self.points[p],
            sensor: &self.points[p].sensors[s],
        })
    }

    /// Every sensor, with its point, in file order.
    pub fn sensors(&self) -> impl Iterator<Item = SensorRef<'_>> {
        self.points.iter().flat_map(|p| {
            p.sensors.iter().map(move |s| SensorRef {
                point: p,
                sensor: s,
            })
        })
    }

    /// Name of a sub-district by id.
    pub fn sub_district_name<'a>(&'a self, id: &'a str) -> &'a str {
        self.sub_districts
            .iter()
            .find(|s| s.id == id)
            .map_or(id, |s| s.name.as_str())
    }

    /// One line for `check-config`.
    pub fn summary(&self) -> String {
        let count = |k: PointKind| self.points.iter().filter(|p| p.kind == k).count();
        format!(
            "{} ({}): {} sub-districts, {} communities, {} grids, {} points ({} underpasses, {} low-lying points, {} rain gauges), {} sensors, {} cameras, {} people",
            self.info.name,
            self.info.id,
            self.sub_districts.len(),
            self.communities.len(),
            self.grids.len(),
            self.points.len(),
            count(PointKind::Underpass),
            count(PointKind::LowPoint),
            count(PointKind::RainGauge),
            self.sensor_index.len(),
            self.cameras.len(),
            self.people.len(),
        )
    }
}

#[derive(Default)]
struct Validator {
    problems: Vec<ConfigProblem>,
}

impl Validator {
    fn problem(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.problems.push(ConfigProblem {
            path: path.into(),
            message: message.into(),
        });
    }

    fn ids<'a>(&mut self, section: &str, ids: impl Iterator<Item = &'a str>) -> HashSet<&'a str> {
        let mut seen = HashSet::new();
        for (i, id) in ids.enumerate() {
            if id.trim().is_empty() {
                self.problem(format!("{section}[{i}].id"), "must not be empty");
            } else if !seen.insert(id) {
                self.problem(
                    format!("{section}[{i}].id"),
                    format!("duplicate id \"{id}\""),
                );
            }
        }
        seen
    }

    fn reference(&mut self, path: String, what: &str, id: &str, known: &HashSet<&str>) {
        if !known.contains(id) {
            self.problem(path, format!("unknown {what} \"{id}\""));
        }
    }

    fn thresholds(&mut self, path: &str, kind: PointKind, t: &LevelThresholds) {
        let unit = kind.unit();
        let mut prev: Option<(Level, &Threshold)> = None;
        for level in Level::ALERTS {
            let th = t.get(level).expect("alert levels have thresholds");
            let here = format!("{path}.{level}");
            if !th.raise.is_finite() || th.raise <= 0.0 {
                self.problem(
                    &here,
                    format!("raise must be a positive number, got {}", th.raise),
                );
            }
            if !th.reset.is_finite() || th.reset < 0.0 {
                self.problem(
                    &here,
                    format!("reset must be zero or more, got {}", th.reset),
                );
            } else if th.reset > th.raise {
                self.problem(
                    &here,
                    format!(
                        "reset {} {unit} is above raise {} {unit}; hysteresis needs reset ≤ raise",
                        th.reset, th.raise
                    ),
                );
            }
            if th.hold_s > 3600 {
                self.problem(&here, format!("hold_s {} is over an hour", th.hold_s));
            }
            match (kind, th.window_min) {
                (PointKind::RainGauge, None) => self.problem(&here, "a rain rule needs window_min"),
                (PointKind::RainGauge, Some(w)) if w == 0 || w > 1440 => {
                    self.problem(&here, format!("window_min {w} must be 1 to 1440 (24 h)"))
                }
                (PointKind::LowPoint | PointKind::Underpass, Some(_)) => {
                    self.problem(&here, "depth thresholds take no window_min")
                }
                _ => {}
            }
            if let Some((plevel, p)) = prev {
                let harder = match (th.window_min, p.window_min) {
                    (Some(w), Some(pw)) => {
                        w <= pw && th.raise >= p.raise && (w < pw || th.raise > p.raise)
                    }
                    _ => th.raise > p.raise,
                };
                if !harder {
                    let msg = match (th.window_min, p.window_min) {
                        (Some(w), Some(pw)) => format!(
                            "{} mm in {w} min is not a harder rule than {plevel} {} mm in {pw} min",
                            th.raise, p.raise
                        ),
                        _ if th.raise == p.raise => {
                            format!("{} {unit} equals {plevel} {} {unit}", th.raise, p.raise)
                        }
                        _ => format!("{} {unit} is below {plevel} {} {unit}", th.raise, p.raise),
                    };
                    self.problem(&here, msg);
                }
            }
            prev = Some((level, th));
        }
    }

    fn positive(&mut self, path: &str, v: f64) {
        if !v.is_finite() || v <= 0.0 {
            self.problem(path, format!("must be > 0, got {v}"));
        }
    }

    fn whole_in(&mut self, path: &str, v: u32, lo: u32, hi: u32) {
        if v < lo || v > hi {
            self.problem(path, format!("must be {lo} to {hi}, got {v}"));
        }
    }

    fn quality_control(&mut self, q: &QualityControl) {
        let at = |field: &str| format!("defaults.qc.{field}");
        self.positive(&at("spike_cm"), q.spike_cm);
        self.whole_in(&at("median_of"), q.median_of, 1, 99);
        self.positive(&at("max_rate_cm_per_min"), q.max_rate_cm_per_min);
        self.whole_in(&at("stuck_after_s"), q.stuck_after_s, 1, 86_400);
        // One reading is always "the same as itself": a run needs at least two.
        self.whole_in(
            &at("stuck_after_readings"),
            q.stuck_after_readings,
            2,
            10_000,
        );
        self.positive(&at("rain_max_mm_h"), q.rain_max_mm_h);
        self.whole_in(&at("rain_min_interval_s"), q.rain_min_interval_s, 1, 3600);
    }

    fn rain_intensity(&mut self, r: &RainIntensityRule) {
        let at = |field: &str| format!("defaults.rain_intensity.{field}");
        self.whole_in(&at("window_min"), r.window_min, 1, 1440);
        self.positive(&at("mm"), r.mm);
        if !r.reset.is_finite() || r.reset < 0.0 {
            self.problem(
                at("reset"),
                format!("must be zero or more, got {}", r.reset),
            );
        } else if r.reset > r.mm {
            self.problem(
                at("reset"),
                format!(
                    "reset {} mm is above mm {} mm; hysteresis needs reset ≤ mm",
                    r.reset, r.mm
                ),
            );
        }
        if r.level == Level::Normal {
            self.problem(at("level"), "must be an alert level (blue to red)");
        }
    }

    fn flapping(&mut self, fl: &Flapping) {
        let at = |field: &str| format!("defaults.flapping.{field}");
        self.whole_in(&at("history"), fl.history, 2, 1000);
        for (name, v) in [("low", fl.low), ("high", fl.high)] {
            if !(0.0..=1.0).contains(&v) {
                self.problem(at(name), format!("must be a ratio from 0 to 1, got {v}"));
            }
        }
        if fl.low >= fl.high {
            self.problem(
                at("low"),
                format!("{} must be below high {}", fl.low, fl.high),
            );
        }
    }

    fn rise(&mut self, r: &Rise) {
        let at = |field: &str| format!("defaults.rise.{field}");
        self.whole_in(&at("window_min"), r.window_min, 1, 120);
        self.positive(&at("min_cm_per_min"), r.min_cm_per_min);
        self.whole_in(&at("horizon_min"), r.horizon_min, 1, 1440);
    }

    fn check(&mut self, f: DistrictFile) -> Option<District> {
        let people = self.ids("people", f.people.iter().map(|p| p.id.as_str()));
        let subs = self.ids(
            "sub_districts",
            f.sub_districts.iter().map(|s| s.id.as_str()),
        );
        let comms = self.ids("communities", f.communities.iter().map(|c| c.id.as_str()));
        let grids = self.ids("grids", f.grids.iter().map(|g| g.id.as_str()));
        let cams = self.ids("cameras", f.cameras.iter().map(|c| c.id.as_str()));
        self.ids("points", f.points.iter().map(|p| p.id.as_str()));

        for (i, p) in f.people.iter().enumerate() {
            if p.name.trim().is_empty() {
                self.problem(format!("people[{i}].name"), "must not be empty");
            }
            let digits = p.phone.len() == 11
                && p.phone.starts_with('1')
                && p.phone.bytes().all(|b| b.is_ascii_digit());
            if !digits {
                self.problem(
                    format!("people[{i}].phone"),
                    format!("\"{}\" is not an 11-digit mobile number", p.phone),
                );
            }
        }
        self.reference(
            "district.duty_leader".into(),
            "person",
            &f.district.duty_leader,
            &people,
        );
        if let Some(m) = &f.district.maintenance {
            self.reference("district.maintenance".into(), "person", m, &people);
        }
        if f.district.sms_signature.trim().is_empty() {
            self.problem(
                "district.sms_signature",
                "must not be empty (carriers reject unsigned SMS)",
            );
        }
        for (i, s) in f.sub_districts.iter().enumerate() {
            self.reference(
                format!("sub_districts[{i}].cadre"),
                "person",
                &s.cadre,
                &people,
            );
        }
        for (i, c) in f.communities.iter().enumerate() {
            self.reference(
                format!("communities[{i}].sub_district"),
                "sub-district",
                &c.sub_district,
                &subs,
            );
            self.reference(
                format!("communities[{i}].director"),
                "person",
                &c.director,
                &people,
            );
        }
        for (i, g) in f.grids.iter().enumerate() {
            self.reference(
                format!("grids[{i}].community"),
                "community",
                &g.community,
                &comms,
            );
            self.reference(format!("grids[{i}].worker"), "person", &g.worker, &people);
        }
        for (name, t, kind) in [
            ("low_point", &f.defaults.low_point, PointKind::LowPoint),
            ("underpass", &f.defaults.underpass, PointKind::Underpass),
            ("rain_gauge", &f.defaults.rain_gauge, PointKind::RainGauge),
        ] {
            self.thresholds(&format!("defaults.{name}"), kind, t);
        }
        let c = &f.defaults.cadence;
        for (name, v) in [
            ("depth_normal_s", c.depth_normal_s),
            ("depth_storm_s", c.depth_storm_s),
            ("rain_normal_s", c.rain_normal_s),
            ("rain_storm_s", c.rain_storm_s),
            ("silent_after_missed", c.silent_after_missed),
        ] {
            if v == 0 {
                self.problem(format!("defaults.cadence.{name}"), "must be at least 1");
            }
        }
        self.quality_control(&f.defaults.qc);
        self.rain_intensity(&f.defaults.rain_intensity);
        self.flapping(&f.defaults.flapping);
        self.rise(&f.defaults.rise);
        let e = &f.escalation;
        for (name, policy) in [
            ("blue", &e.blue),
            ("yellow", &e.yellow),
            ("orange", &e.orange),
            ("red", &e.red),
            ("silent", &e.silent),
        ] {
            let at = |field: &str| format!("escalation.{name}.{field}");
            if policy.at_once.is_empty() {
                self.problem(at("at_once"), "must notify at least one rung of the chain");
            }
            if let Some(top) = policy.at_once.iter().max() {
                if *top > policy.up_to {
                    self.problem(
                        at("up_to"),
                        format!(
                            "{} is below {}, which is told at once",
                            policy.up_to.as_str(),
                            top.as_str()
                        ),
                    );
                }
            }
            if policy.ack_timeout_s == 0 {
                self.problem(at("ack_timeout_s"), "must be at least 1");
            }
            if policy.checkin_timeout_s == 0 {
                self.problem(at("checkin_timeout_s"), "must be at least 1");
            }
            if policy.repeat_loops > 10 {
                self.problem(at("repeat_loops"), "at most 10 (a loop re-texts everyone)");
            }
        }
        if f.points.is_empty() {
            self.problem("points", "a district needs at least one point");
        }

        let mut sensor_seen: HashMap<&str, usize> = HashMap::new();
        let kinds: HashMap<&str, PointKind> =
            f.points.iter().map(|p| (p.id.as_str(), p.kind)).collect();
        for (i, p) in f.points.iter().enumerate() {
            let at = |field: &str| format!("points[{i}].{field}");
            if p.name.trim().is_empty() {
                self.problem(at("name"), "must not be empty");
            }
            self.reference(at("grid"), "grid", &p.grid, &grids);
            self.reference(at("owner_a"), "person", &p.owner_a, &people);
            self.reference(at("owner_b"), "person", &p.owner_b, &people);
            if p.owner_a == p.owner_b {
                self.problem(
                    at("owner_b"),
                    "the B post must be a different person from the A post",
                );
            }
            if let Some(cam) = &p.camera {
                self.reference(at("camera"), "camera", cam, &cams);
            }
            if let Some(g) = &p.rain_gauge {
                match kinds.get(g.as_str()) {
                    None => self.problem(at("rain_gauge"), format!("unknown point \"{g}\"")),
                    Some(PointKind::RainGauge) => {}
                    Some(k) => self.problem(
                        at("rain_gauge"),
                        format!("\"{g}\" is a {}, not a rain gauge", k.as_str()),
                    ),
                }
            }
            if !(-90.0..=90.0).contains(&p.lat) {
                self.problem(at("lat"), format!("{} is not a latitude", p.lat));
            }
            if !(-180.0..=180.0).contains(&p.lon) {
                self.problem(at("lon"), format!("{} is not a longitude", p.lon));
            }
            if p.sensors.is_empty() {
                self.problem(at("sensors"), "a point needs at least one sensor");
            }
            let wanted = p.kind.judged_by();
            if !p.sensors.is_empty() && !p.sensors.iter().any(|s| s.kind == wanted) {
                self.problem(
                    at("sensors"),
                    format!("a {} needs a {:?} sensor", p.kind.as_str(), wanted).to_lowercase(),
                );
            }
            for (j, s) in p.sensors.iter().enumerate() {
                if s.id.trim().is_empty() {
                    self.problem(at(&format!("sensors[{j}].id")), "must not be empty");
                } else if let Some(first) = sensor_seen.insert(s.id.as_str(), i) {
                    self.problem(
                        at(&format!("sensors[{j}].id")),
                        format!("duplicate sensor id \"{}\" (also on points[{first}])", s.id),
                    );
                }
                if !s.calibration_offset_cm.is_finite() || s.calibration_offset_cm.abs() > 500.0 {
                    self.problem(
                        at(&format!("sensors[{j}].calibration_offset_cm")),
                        format!(
                            "{} is not a plausible offset (|offset| ≤ 500 cm)",
                            s.calibration_offset_cm
                        ),
                    );
                }
            }
            if !p.thresholds.is_empty() {
                let merged = p.thresholds.apply(f.defaults.for_kind(p.kind));
                self.thresholds(&at("thresholds"), p.kind, &merged);
            }
        }
        if !self.problems.is_empty() {
            return None;
        }

        // Everything resolves: build the indexes. What the file holds is moved, not copied:
        // a district of 100,000 points is hundreds of thousands of small strings.
        let people: BTreeMap<String, Arc<Person>> = f
            .people
            .into_iter()
            .map(|p| (p.id.clone(), Arc::new(p)))
            .collect();
        let person = |id: &str| Arc::clone(&people[id]);
        let grid_by: HashMap<&str, &Grid> = f.grids.iter().map(|g| (g.id.as_str(), g)).collect();
        let comm_by: HashMap<&str, &Community> =
            f.communities.iter().map(|c| (c.id.as_str(), c)).collect();
        let sub_by: HashMap<&str, &SubDistrict> =
            f.sub_districts.iter().map(|s| (s.id.as_str(), s)).collect();
        let cam_by: HashMap<&str, &Camera> = f.cameras.iter().map(|c| (c.id.as_str(), c)).collect();
        let rain_gauge_defaults = Arc::new(f.defaults.rain_gauge.clone());
        let low_point_defaults = Arc::new(f.defaults.low_point.clone());
        let underpass_defaults = Arc::new(f.defaults.underpass.clone());
        let thresholds_of = |p: &PointConfig| match p.kind {
            _ if !p.thresholds.is_empty() => {
                Arc::new(p.thresholds.apply(f.defaults.for_kind(p.kind)))
            }
            PointKind::RainGauge => Arc::clone(&rain_gauge_defaults),
            PointKind::LowPoint => Arc::clone(&low_point_defaults),
            PointKind::Underpass => Arc::clone(&underpass_defaults),
        };
        let mut points = Vec::with_capacity(f.points.len());
        let mut point_index = HashMap::with_capacity(f.points.len());
        let mut sensor_index = HashMap::new();
        for (i, p) in f.points.into_iter().enumerate() {
            let grid = grid_by[p.grid.as_str()];
            let comm = comm_by[grid.community.as_str()];
            let sub = sub_by[comm.sub_district.as_str()];
            point_index.insert(p.id.clone(), i);
            for (j, s) in p.sensors.iter().enumerate() {
                sensor_index.insert(s.id.clone(), (i, j));
            }
            let thresholds = thresholds_of(&p);
            let chain = Chain {
                owner_a: person(&p.owner_a),
                owner_b: person(&p.owner_b),
                grid_worker: person(&grid.worker),
                community_director: person(&comm.director),
                sub_district_cadre: person(&sub.cadre),
                district_duty_leader: person(&f.district.duty_leader),
            };
            points.push(Point {
                id: p.id,
                name: p.name,
                kind: p.kind,
                grid: p.grid,
                community: comm.id.clone(),
                sub_district: sub.id.clone(),
                lat: p.lat,
                lon: p.lon,
                camera: p.camera.as_deref().map(|c| cam_by[c].clone()),
                rain_gauge: p.rain_gauge,
                plan: p.plan,
                sensors: p.sensors,
                thresholds,
                chain,
            });
        }
        Some(District {
            info: f.district,
            defaults: f.defaults,
            escalation: f.escalation,
            closure: f.closure,
            people,
            sub_districts: f.sub_districts,
            communities: f.communities,
            grids: f.grids,
            cameras: f.cameras,
            points,
            point_index,
            sensor_index,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_from_one() {
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
        assert_eq!(line_col("ab", 0), (1, 1));
    }

    #[test]
    fn rain_rules_must_get_harder() {
        let mut v = Validator::default();
        v.thresholds(
            "t",
            PointKind::RainGauge,
            &LevelThresholds::rain_gauge_default(),
        );
        assert!(v.problems.is_empty(), "{:?}", v.problems);
        let mut bad = LevelThresholds::rain_gauge_default();
        bad.red.window_min = Some(360);
        v.thresholds("t", PointKind::RainGauge, &bad);
        assert_eq!(v.problems.len(), 1);
        assert_eq!(v.problems[0].path, "t.red");
    }
}

//! The storm report of a replay, as JSON and Markdown: per point when it first reached each
//! level, its peak, QC flags, incidents and notifications; notifications per level and per
//! responsibility level; and the lead time between a rain gauge's first alert and the first
//! alert of each depth point linked to it.
//!
//! The report splits into [`Storm`] (what the storm did: the same for any worker count or
//! speed, so tests compare it whole) and [`RunInfo`] (how long this run took).

use crate::replay::ReplayOutcome;
use floodcmd_model::config::PointKind;
use floodcmd_model::event::TransitionKind;
use floodcmd_model::time::{rfc3339, Millis};
use floodcmd_model::{District, Level};
use serde::Serialize;
use std::collections::BTreeMap;

/// The whole report.
#[derive(Serialize, Clone, Debug)]
pub struct StormReport {
    /// How the replay ran.
    pub run: RunInfo,
    /// What the storm did.
    pub storm: Storm,
}

/// How the replay ran (differs between runs).
#[derive(Serialize, Clone, Debug)]
pub struct RunInfo {
    /// Timely workers.
    pub workers: usize,
    /// Wall time of the stream stage, s.
    pub stream_s: f64,
    /// Wall time of the whole replay, s.
    pub total_s: f64,
    /// Readings per second through the stream stage.
    pub readings_per_s: f64,
}

/// What the storm did (the same for every replay of the same archive).
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct Storm {
    /// Where the readings come from.
    pub source: String,
    /// District name.
    pub district: String,
    /// First reading, RFC 3339.
    pub from: String,
    /// Last reading, RFC 3339.
    pub to: String,
    /// Readings replayed.
    pub readings: u64,
    /// Readings the stream stage dead-lettered.
    pub rejected: u64,
    /// Alert transitions.
    pub transitions: u64,
    /// Incidents opened.
    pub incidents: u64,
    /// Notifications that would have been sent (captured, drill).
    pub notifications: u64,
    /// Of which per alert level (zh name → count).
    pub notifications_by_level: BTreeMap<String, u64>,
    /// Of which per responsibility level (五级包保, zh name → count).
    pub notifications_by_responsibility: BTreeMap<String, u64>,
    /// Points that reported or alerted, most severe first.
    pub points: Vec<PointReport>,
    /// Rain gauge → linked depth point lead times.
    pub lead_times: Vec<LeadTime>,
}

/// One point.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct PointReport {
    /// Point id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Kind.
    pub kind: String,
    /// Highest level reached.
    pub peak_level: String,
    /// First time (RFC 3339) at or above each level reached (`blue`..`red`).
    pub first_reached: BTreeMap<String, String>,
    /// Deepest depth (cm) the stream reported, depth points.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_depth_cm: Option<f64>,
    /// Largest 1 h rain total (mm), rain gauges.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_rain_1h_mm: Option<f64>,
    /// Largest 3 h rain total (mm), rain gauges.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_rain_3h_mm: Option<f64>,
    /// Largest 24 h rain total (mm), rain gauges.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_rain_24h_mm: Option<f64>,
    /// QC flags seen on its statuses (flag → statuses carrying it).
    pub qc_flags: BTreeMap<String, u64>,
    /// Transitions caused by late readings.
    pub late_transitions: u64,
    /// It went silent (失联) at least once.
    pub went_silent: bool,
    /// Incidents opened for it.
    pub incidents: u64,
    /// Notifications about it.
    pub notifications: u64,
}

/// How long before a depth point's first alert its rain gauge alerted.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct LeadTime {
    /// The rain gauge point.
    pub gauge: String,
    /// The depth point linked to it.
    pub point: String,
    /// The gauge's first alert (RFC 3339) and its level.
    pub rain_first: Option<(String, String)>,
    /// The depth point's first alert and its level.
    pub depth_first: Option<(String, String)>,
    /// Minutes from the rain rule firing to the depth rule firing (negative: depth first).
    pub lead_min: Option<f64>,
}

const LEVELS: [Level; 4] = [Level::Blue, Level::Yellow, Level::Orange, Level::Red];

/// The larger of two optional values; a missing one does not count.
pub(crate) fn max_opt(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.max(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

fn round2(v: Option<f64>) -> Option<f64> {
    v.map(|x| (x * 100.0).round() / 100.0)
}

impl StormReport {
    /// Build the report of a replay.
    pub fn build(
        district: &District,
        source: &str,
        workers: usize,
        out: &ReplayOutcome,
    ) -> StormReport {
        #[derive(Default)]
        struct Acc {
            first: BTreeMap<Level, Millis>,
            peak_level: Level,
            depth: Option<f64>,
            r1: Option<f64>,
            r3: Option<f64>,
            r24: Option<f64>,
            qc: BTreeMap<String, u64>,
            late: u64,
            silent: bool,
            incidents: u64,
            notifications: u64,
            seen: bool,
        }
        let mut acc: BTreeMap<&str, Acc> = BTreeMap::new();
        for t in &out.transitions {
            let a = acc.entry(t.point.as_str()).or_default();
            a.seen = true;
            if t.late {
                a.late += 1;
            }
            match t.transition {
                TransitionKind::Raised | TransitionKind::Upgraded => {
                    a.peak_level = a.peak_level.max(t.to);
                    for l in LEVELS.into_iter().filter(|l| *l <= t.to) {
                        a.first.entry(l).or_insert(t.event_ms);
                    }
                }
                TransitionKind::Silent => a.silent = true,
                _ => {}
            }
        }
        for (point, s) in &out.status_peaks {
            let a = acc.entry(point.as_str()).or_default();
            a.seen = true;
            a.depth = max_opt(a.depth, s.depth_cm);
            a.r1 = max_opt(a.r1, s.rain_1h_mm);
            a.r3 = max_opt(a.r3, s.rain_3h_mm);
            a.r24 = max_opt(a.r24, s.rain_24h_mm);
            for (flag, n) in &s.qc {
                *a.qc.entry(flag.clone()).or_default() += n;
            }
        }
        for i in &out.incidents {
            acc.entry(i.point_id.as_str()).or_default().incidents += 1;
        }
        let mut by_level: BTreeMap<String, u64> = BTreeMap::new();
        let mut by_resp: BTreeMap<String, u64> = BTreeMap::new();
        for n in &out.notifications {
            acc.entry(n.point.as_str()).or_default().notifications += 1;
            // Silence is told to the maintenance chain, not at a water level.
            let level = if n.incident.contains(":silent") {
                "失联 silent".to_string()
            } else {
                n.level.zh().to_string()
            };
            *by_level.entry(level).or_default() += 1;
            *by_resp
                .entry(n.recipient.responsibility.zh().to_string())
                .or_default() += 1;
        }

        let mut points: Vec<PointReport> = acc
            .iter()
            .filter(|(_, a)| a.seen)
            .map(|(id, a)| {
                let p = district.point(id);
                let depth = p.is_some_and(|p| p.kind != PointKind::RainGauge);
                PointReport {
                    id: id.to_string(),
                    name: p.map(|p| p.name.clone()).unwrap_or_default(),
                    kind: p.map(|p| p.kind.as_str().to_string()).unwrap_or_default(),
                    peak_level: a.peak_level.as_str().to_string(),
                    first_reached: a
                        .first
                        .iter()
                        .map(|(l, t)| (l.as_str().to_string(), rfc3339(*t)))
                        .collect(),
                    peak_depth_cm: if depth { round2(a.depth) } else { None },
                    peak_rain_1h_mm: if depth { None } else { round2(a.r1) },
                    peak_rain_3h_mm: if depth { None } else { round2(a.r3) },
                    peak_rain_24h_mm: if depth { None } else { round2(a.r24) },
                    qc_flags: a.qc.clone(),
                    late_transitions: a.late,
                    went_silent: a.silent,
                    incidents: a.incidents,
                    notifications: a.notifications,
                }
            })
            .collect();
        let rank = |p: &PointReport| {
            LEVELS
                .iter()
                .position(|l| l.as_str() == p.peak_level)
                .map_or(0, |i| i + 1)
        };
        points.sort_by(|a, b| rank(b).cmp(&rank(a)).then_with(|| a.id.cmp(&b.id)));

        let first_alert = |id: &str| {
            acc.get(id)
                .and_then(|a| a.first.iter().next().map(|(l, t)| (*l, *t)))
        };
        let mut lead_times = Vec::new();
        for p in &district.points {
            let Some(g) = &p.rain_gauge else { continue };
            if !acc.contains_key(p.id.as_str()) && !acc.contains_key(g.as_str()) {
                continue;
            }
            let (rain, depth) = (first_alert(g), first_alert(&p.id));
            lead_times.push(LeadTime {
                gauge: g.clone(),
                point: p.id.clone(),
                rain_first: rain.map(|(l, t)| (rfc3339(t), l.as_str().to_string())),
                depth_first: depth.map(|(l, t)| (rfc3339(t), l.as_str().to_string())),
                lead_min: match (rain, depth) {
                    (Some((_, r)), Some((_, d))) => {
                        Some(((d - r) as f64 / 60_000.0 * 10.0).round() / 10.0)
                    }
                    _ => None,
                },
            });
        }

        StormReport {
            run: RunInfo {
                workers,
                stream_s: out.stream_s,
                total_s: out.total_s,
                readings_per_s: out.readings as f64 / out.stream_s.max(1e-9),
            },
            storm: Storm {
                source: source.to_string(),
                district: district.info.name.clone(),
                from: rfc3339(out.from_ms),
                to: rfc3339(out.to_ms),
                readings: out.readings,
                rejected: out.rejects.len() as u64,
                transitions: out.transitions.len() as u64,
                incidents: out.incidents.len() as u64,
                notifications: out.notifications.len() as u64,
                notifications_by_level: by_level,
                notifications_by_responsibility: by_resp,
                points,
                lead_times,
            },
        }
    }

    /// The report as Markdown (in Chinese and English, for the duty team and the engineers).
    pub fn markdown(&self) -> String {
        let s = &self.storm;
        let mut m = format!(
            "# 暴雨复盘报告 / Storm replay report\n\n\
             - 数据来源 / source: {}\n- 辖区 / district: {}\n- 时段 / period: {} → {}\n\
             - 读数 / readings: {} (rejected {})\n- 预警变化 / alert transitions: {}\n\
             - 事件 / incidents opened: {}\n\
             - 应发短信 / notifications that would have been sent (drill, none sent): {}\n\n",
            s.source,
            s.district,
            s.from,
            s.to,
            s.readings,
            s.rejected,
            s.transitions,
            s.incidents,
            s.notifications
        );
        m.push_str(
            "## 各级通知 / Notifications per level\n\n| 级别 level | 条数 count |\n|---|---|\n",
        );
        for (k, v) in &s.notifications_by_level {
            m.push_str(&format!("| {k} | {v} |\n"));
        }
        m.push_str("\n## 五级包保 / Notifications per responsibility level\n\n| 责任层级 | 条数 count |\n|---|---|\n");
        for (k, v) in &s.notifications_by_responsibility {
            m.push_str(&format!("| {k} | {v} |\n"));
        }
        m.push_str(
            "\n## 点位 / Points\n\n| 点位 point | 类型 kind | 最高 peak level | 蓝 blue | 黄 yellow | 橙 orange | 红 red | 峰值 peak | QC | 事件 incidents | 通知 notifications |\n|---|---|---|---|---|---|---|---|---|---|---|\n",
        );
        for p in &s.points {
            let at = |l: &str| p.first_reached.get(l).cloned().unwrap_or_default();
            let peak = match (p.peak_depth_cm, p.peak_rain_24h_mm) {
                (Some(d), _) => format!("{d:.1} cm"),
                (None, Some(r)) => format!(
                    "24h {r:.1} mm, 3h {:.1} mm, 1h {:.1} mm",
                    p.peak_rain_3h_mm.unwrap_or(0.0),
                    p.peak_rain_1h_mm.unwrap_or(0.0)
                ),
                _ => String::new(),
            };
            let qc: Vec<String> = p.qc_flags.iter().map(|(k, v)| format!("{k}×{v}")).collect();
            m.push_str(&format!(
                "| {} {} | {} | {}{} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                p.id,
                p.name,
                p.kind,
                p.peak_level,
                if p.went_silent {
                    " (失联 silent)"
                } else {
                    ""
                },
                at("blue"),
                at("yellow"),
                at("orange"),
                at("red"),
                peak,
                qc.join(", "),
                p.incidents,
                p.notifications
            ));
        }
        if !s.lead_times.is_empty() {
            m.push_str("\n## 提前量 / Lead time: rain rule → depth rule\n\n| 雨量站 gauge | 积水点 point | 雨量首警 rain first | 积水首警 depth first | 提前 lead (min) |\n|---|---|---|---|---|\n");
            for l in &s.lead_times {
                let f = |x: &Option<(String, String)>| {
                    x.as_ref()
                        .map(|(t, l)| format!("{t} ({l})"))
                        .unwrap_or_else(|| "—".into())
                };
                m.push_str(&format!(
                    "| {} | {} | {} | {} | {} |\n",
                    l.gauge,
                    l.point,
                    f(&l.rain_first),
                    f(&l.depth_first),
                    l.lead_min
                        .map(|v| format!("{v:.1}"))
                        .unwrap_or_else(|| "—".into())
                ));
            }
        }
        m.push_str(&format!(
            "\n---\n{} workers; stream stage {:.2} s ({:.0} readings/s); whole replay {:.2} s.\n",
            self.run.workers, self.run.stream_s, self.run.readings_per_s, self.run.total_s
        ));
        m
    }
}

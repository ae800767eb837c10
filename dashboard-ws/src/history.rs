//! The last hours of each point, for the point panel's charts:
//! `GET /api/points/{id}/history?hours=6`.
//!
//! Kept in memory from the `status` topic the wall already follows, one sample per point and
//! event-time minute (the newest status of that minute), for [`KEEP_MS`]. Because the wall
//! re-folds the last 25 hours of `status` on every start, a restarted wall has its charts
//! back at once without a time-series store. The answer names its source (`"source":
//! "wall"`) so a store-backed implementation (the InfluxDB sink) can replace it later with
//! the same shape.
//!
//! Answer: `{"point","hours","from_ms","to_ms","step_ms":60000,"depth":[[ms,cm]...],
//! "rain_gauge":"RG-..."|null,"rain_10m":[[ms,mm]...],"thresholds":{"blue":cm,...}}`; depth
//! is empty for rain gauges, rain comes from the point's linked gauge (its own series for a
//! gauge).

use floodcmd_model::config::PointKind;
use floodcmd_model::event::PointStatus;
use floodcmd_model::time::Millis;
use floodcmd_model::{District, Id, Level};
use std::collections::{BTreeMap, HashMap};

/// How much history is kept per point.
pub const KEEP_MS: Millis = 6 * 3_600_000;
const STEP_MS: Millis = 60_000;

#[derive(Clone, Copy, Default)]
struct Sample {
    depth_cm: Option<f32>,
    rain_10m_mm: Option<f32>,
}

/// Minute samples per point.
#[derive(Default)]
pub struct History {
    points: HashMap<Id, BTreeMap<Millis, Sample>>,
}

/// Why a history request was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum HistoryError {
    /// No such point.
    #[error("point: no point {0} in the district")]
    UnknownPoint(String),
    /// Hours out of range.
    #[error("hours: {0} must be 1 to 6")]
    Hours(u32),
}

impl History {
    /// Record a status (only its minute's newest sample is kept).
    pub fn record(&mut self, s: &PointStatus) {
        if s.depth_cm.is_none() && s.rain_10m_mm.is_none() {
            return;
        }
        let minute = s.as_of_ms.div_euclid(STEP_MS) * STEP_MS;
        let series = self.points.entry(s.point.clone()).or_default();
        series.insert(
            minute,
            Sample {
                depth_cm: s.depth_cm.map(|v| v as f32),
                rain_10m_mm: s.rain_10m_mm.map(|v| v as f32),
            },
        );
        // Trim against the newest sample, not the clock: a replay of old data keeps its own.
        if let Some((&newest, _)) = series.last_key_value() {
            while let Some((&oldest, _)) = series.first_key_value() {
                if oldest >= newest - KEEP_MS {
                    break;
                }
                series.pop_first();
            }
        }
    }

    fn series(
        &self,
        point: &str,
        from: Millis,
        to: Millis,
        pick: impl Fn(&Sample) -> Option<f32>,
    ) -> Vec<(Millis, f64)> {
        self.points
            .get(point)
            .map(|s| {
                s.range(from..=to)
                    .filter_map(|(t, v)| pick(v).map(|x| (*t, x as f64)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The answer for one point, the `hours` before `now_ms`.
    pub fn query(
        &self,
        district: &District,
        point: &str,
        hours: u32,
        now_ms: Millis,
    ) -> Result<serde_json::Value, HistoryError> {
        let p = district
            .point(point)
            .ok_or_else(|| HistoryError::UnknownPoint(point.to_string()))?;
        if !(1..=6).contains(&hours) {
            return Err(HistoryError::Hours(hours));
        }
        let from = now_ms - hours as Millis * 3_600_000;
        let gauge = match p.kind {
            PointKind::RainGauge => Some(p.id.clone()),
            _ => p.rain_gauge.clone(),
        };
        let depth = match p.kind {
            PointKind::RainGauge => Vec::new(),
            _ => self.series(&p.id, from, now_ms, |s| s.depth_cm),
        };
        let rain = gauge
            .as_deref()
            .map(|g| self.series(g, from, now_ms, |s| s.rain_10m_mm))
            .unwrap_or_default();
        let thresholds: BTreeMap<&str, f64> = Level::ALERTS
            .iter()
            .filter_map(|l| p.thresholds.get(*l).map(|t| (l.as_str(), t.raise)))
            .collect();
        Ok(serde_json::json!({
            "point": p.id,
            "kind": p.kind,
            "hours": hours,
            "from_ms": from,
            "to_ms": now_ms,
            "step_ms": STEP_MS,
            "source": "wall",
            "depth": depth,
            "rain_gauge": gauge,
            "rain_10m": rain,
            "thresholds": thresholds,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use floodcmd_model::DataState;

    fn status(point: &str, at: Millis, depth: Option<f64>, rain: Option<f64>) -> PointStatus {
        PointStatus {
            point: point.into(),
            kind: PointKind::Underpass,
            level: Level::Normal,
            data_state: DataState::Fresh,
            depth_cm: depth,
            rise_cm_per_min: None,
            rain_10m_mm: rain,
            rain_1h_mm: None,
            rain_3h_mm: None,
            rain_24h_mm: None,
            last_reading_ms: Some(at),
            qc_flags: Vec::new(),
            next_level: None,
            minutes_to_next: None,
            flapping: false,
            as_of_ms: at,
        }
    }

    #[test]
    fn minutes_keep_their_newest_sample_and_old_ones_are_dropped() {
        let district = District::from_toml_str(include_str!("../../config/xincheng.toml")).unwrap();
        let up = district
            .points
            .iter()
            .find(|p| p.kind == PointKind::Underpass && p.rain_gauge.is_some())
            .unwrap();
        let gauge = up.rain_gauge.clone().unwrap();
        let mut h = History::default();
        let t0 = 1_000 * STEP_MS;
        h.record(&status(&up.id, t0, Some(5.0), None));
        h.record(&status(&up.id, t0 + 30_000, Some(7.0), None));
        h.record(&status(&up.id, t0 + STEP_MS, Some(9.0), None));
        h.record(&status(&gauge, t0 + STEP_MS, None, Some(3.5)));
        let v = h.query(&district, &up.id, 6, t0 + 2 * STEP_MS).unwrap();
        assert_eq!(
            v["depth"],
            serde_json::json!([[t0, 7.0], [t0 + STEP_MS, 9.0]])
        );
        assert_eq!(v["rain_gauge"], gauge.as_str());
        assert_eq!(v["rain_10m"], serde_json::json!([[t0 + STEP_MS, 3.5]]));
        assert!(v["thresholds"]["red"].as_f64().unwrap() > 0.0);
        // Seven hours later the first samples are gone.
        h.record(&status(&up.id, t0 + 7 * 3_600_000, Some(1.0), None));
        let v = h.query(&district, &up.id, 6, t0 + 7 * 3_600_000).unwrap();
        assert_eq!(v["depth"].as_array().unwrap().len(), 1);
        assert_eq!(
            h.query(&district, "NOPE", 6, 0).unwrap_err(),
            HistoryError::UnknownPoint("NOPE".into())
        );
        assert_eq!(
            h.query(&district, &up.id, 7, 0).unwrap_err(),
            HistoryError::Hours(7)
        );
    }
}

//! Depth at a point: rain runs off into it, drains take it away.
//!
//! `d' = runoff × rain − drain` (cm/min, rain in mm/min) while there is water. Underpasses
//! collect from a larger area than low-lying points, so their runoff factor is higher. Each
//! point gets its own factors from its id, so the same storm floods some points and not others.

use floodcmd_model::bus::murmur2;
use floodcmd_model::config::PointKind;

/// Hydraulics of one point.
#[derive(Clone, Debug)]
pub struct Drainage {
    /// cm of depth per mm of rain.
    pub runoff: f64,
    /// cm per minute the drains remove.
    pub drain_cm_min: f64,
    /// Current depth, cm.
    pub depth_cm: f64,
}

impl Drainage {
    /// Factors for a point, varied by its id.
    pub fn for_point(id: &str, kind: PointKind) -> Drainage {
        let h = murmur2(id.as_bytes());
        let u = (h % 1000) as f64 / 1000.0;
        let v = ((h / 1000) % 1000) as f64 / 1000.0;
        let (runoff, drain) = match kind {
            PointKind::Underpass => (1.2 + 1.6 * u, 0.5 + 0.6 * v),
            PointKind::LowPoint => (0.5 + 1.2 * u, 0.4 + 0.5 * v),
            PointKind::RainGauge => (0.0, 0.0),
        };
        Drainage {
            runoff,
            drain_cm_min: drain,
            depth_cm: 0.0,
        }
    }

    /// Advance by `minutes` under `rain_mm_h`.
    pub fn step(&mut self, rain_mm_h: f64, minutes: f64) {
        let inflow = self.runoff * rain_mm_h / 60.0;
        self.depth_cm = (self.depth_cm + (inflow - self.drain_cm_min) * minutes).max(0.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn water_rises_under_heavy_rain_and_drains_after() {
        let mut d = Drainage {
            runoff: 2.0,
            drain_cm_min: 0.5,
            depth_cm: 0.0,
        };
        for _ in 0..20 {
            d.step(90.0, 1.0);
        }
        assert!(d.depth_cm > 25.0, "{}", d.depth_cm);
        for _ in 0..200 {
            d.step(0.0, 1.0);
        }
        assert_eq!(d.depth_cm, 0.0);
    }
}

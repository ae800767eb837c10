//! Rain cells: Gaussian in space, rising and decaying in time, moving with a steering wind.

use floodcmd_model::time::Millis;

/// One convective cell.
#[derive(Clone, Debug)]
pub struct Cell {
    /// Centre at the cell's start, (lat, lon).
    pub start: (f64, f64),
    /// Movement, degrees per minute (lat, lon).
    pub velocity: (f64, f64),
    /// Spatial spread (standard deviation), degrees.
    pub sigma_deg: f64,
    /// Peak intensity at the centre, mm/h.
    pub peak_mm_h: f64,
    /// Start, ms after the storm's start.
    pub begins_ms: Millis,
    /// Life, ms.
    pub lasts_ms: Millis,
}

impl Cell {
    fn intensity(&self, lat: f64, lon: f64, t_ms: Millis) -> f64 {
        let age = t_ms - self.begins_ms;
        if age < 0 || age > self.lasts_ms {
            return 0.0;
        }
        let minutes = age as f64 / 60_000.0;
        let (clat, clon) = (
            self.start.0 + self.velocity.0 * minutes,
            self.start.1 + self.velocity.1 * minutes,
        );
        let d2 = (lat - clat).powi(2) + ((lon - clon) * lat.to_radians().cos()).powi(2);
        // Grows over the first fifth of its life, decays over the last third.
        let life = age as f64 / self.lasts_ms as f64;
        let envelope = if life < 0.2 {
            life / 0.2
        } else if life > 0.67 {
            (1.0 - life) / 0.33
        } else {
            1.0
        };
        self.peak_mm_h * envelope * (-d2 / (2.0 * self.sigma_deg * self.sigma_deg)).exp()
    }
}

/// A storm: cells plus light background rain, repeating every `period_ms`.
#[derive(Clone, Debug)]
pub struct Storm {
    /// Cells.
    pub cells: Vec<Cell>,
    /// Rain everywhere while any cell lives, mm/h.
    pub background_mm_h: f64,
    /// The storm repeats with this period (a demo runs for as long as it is watched).
    pub period_ms: Millis,
}

impl Storm {
    /// A storm that crosses a district spanning `bounds` = (lat_min, lat_max, lon_min, lon_max)
    /// from west to east: a strong cell through the middle and a weaker one to the north.
    pub fn crossing(bounds: (f64, f64, f64, f64)) -> Storm {
        let (lat0, lat1, lon0, lon1) = bounds;
        let mid = (lat0 + lat1) / 2.0;
        let width = (lon1 - lon0).max(0.01);
        let minute = 60_000;
        Storm {
            cells: vec![
                Cell {
                    start: (mid, lon0 + width * 0.1),
                    velocity: (0.0, width / 70.0),
                    sigma_deg: width * 0.22,
                    peak_mm_h: 110.0,
                    begins_ms: 0,
                    lasts_ms: 80 * minute,
                },
                Cell {
                    start: (lat1 - (lat1 - lat0) * 0.15, lon0 - width * 0.1),
                    velocity: (-(lat1 - lat0) / 200.0, width / 60.0),
                    sigma_deg: width * 0.15,
                    peak_mm_h: 60.0,
                    begins_ms: 20 * minute,
                    lasts_ms: 70 * minute,
                },
            ],
            background_mm_h: 4.0,
            period_ms: 180 * minute,
        }
    }

    /// Intensity at a place and time since the storm began, mm/h.
    pub fn intensity(&self, lat: f64, lon: f64, t_ms: Millis) -> f64 {
        let t = t_ms.rem_euclid(self.period_ms.max(1));
        let cells: f64 = self.cells.iter().map(|c| c.intensity(lat, lon, t)).sum();
        let alive = self
            .cells
            .iter()
            .any(|c| t >= c.begins_ms && t <= c.begins_ms + c.lasts_ms);
        cells + if alive { self.background_mm_h } else { 0.0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cell_passes_over_and_moves_on() {
        let s = Storm::crossing((34.25, 34.30, 108.94, 109.02));
        let west = |t| s.intensity(34.275, 108.95, t);
        let east = |t| s.intensity(34.275, 109.01, t);
        assert!(west(15 * 60_000) > 50.0, "heavy rain in the west early");
        assert!(east(15 * 60_000) < west(15 * 60_000));
        assert!(
            east(55 * 60_000) > east(15 * 60_000),
            "the cell reaches the east later"
        );
        assert_eq!(
            s.intensity(34.275, 108.95, 150 * 60_000),
            0.0,
            "dry between storms"
        );
    }
}

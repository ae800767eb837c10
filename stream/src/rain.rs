//! Rolling rain totals in event time, in fixed memory.
//!
//! One bucket per minute for the last 24 hours (1,440 buckets) and one running sum per window,
//! so memory per gauge does not grow with the reading rate and each reading costs
//! O(windows), not O(window length).

use crate::prefetch::prefetch;
use floodcmd_model::time::Millis;

const MINUTE_MS: Millis = 60_000;
/// The longest window: 24 hours of one-minute buckets.
pub const MAX_WINDOW_MIN: u32 = 1440;

/// The standard windows every gauge keeps (10 min, 1 h, 3 h, 6 h, 12 h, 24 h).
pub const STANDARD_WINDOWS_MIN: [u32; 6] = [10, 60, 180, 360, 720, 1440];

/// Rolling totals of one rain gauge.
#[derive(Clone, Debug)]
pub struct RainWindows {
    buckets: Box<[f64]>,
    /// The latest minute the buckets describe; `None` before the first reading.
    head: Option<i64>,
    windows: Vec<u32>,
    sums: Vec<f64>,
}

/// A reading older than the 24-hour memory: it cannot change any window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooOldForWindows;

impl RainWindows {
    /// Keep the standard windows plus `extra` (e.g. windows named by thresholds).
    pub fn new(extra: impl IntoIterator<Item = u32>) -> Self {
        let mut windows: Vec<u32> = STANDARD_WINDOWS_MIN
            .iter()
            .copied()
            .chain(extra)
            .map(|w| w.clamp(1, MAX_WINDOW_MIN))
            .collect();
        windows.sort_unstable();
        windows.dedup();
        RainWindows {
            buckets: vec![0.0; MAX_WINDOW_MIN as usize].into_boxed_slice(),
            head: None,
            sums: vec![0.0; windows.len()],
            windows,
        }
    }

    /// Ask for the window lengths and sums every total reads (a hint; the buckets a reading
    /// lands in depend on the reading).
    pub(crate) fn prefetch(&self) {
        prefetch(&self.windows[..]);
        prefetch(&self.sums[..]);
    }

    /// Ask for the buckets the next minute will read: the one it lands in and, per window,
    /// the one it drops. A window's oldest bucket lies its length behind the newest, so each
    /// is a cache line of its own, far from the others, and a gauge's buckets (11 KiB) are not
    /// in cache when its reading comes. Most readings are of the minute after the head (a
    /// gauge reports every minute or every few); a later one finds the buckets after these
    /// in the same lines. The window lengths must be in cache already ([`Self::prefetch`]).
    pub(crate) fn prefetch_next_minute(&self) {
        let Some(head) = self.head else {
            return;
        };
        let next = head + 1;
        prefetch(&self.buckets[Self::slot(next)]);
        for w in &self.windows {
            prefetch(&self.buckets[Self::slot(next - i64::from(*w))]);
        }
    }

    fn slot(minute: i64) -> usize {
        minute.rem_euclid(MAX_WINDOW_MIN as i64) as usize
    }

    /// Move the end of every window to `minute`, dropping what falls out.
    fn advance(&mut self, minute: i64) {
        let Some(head) = self.head else {
            self.head = Some(minute);
            return;
        };
        if minute <= head {
            return;
        }
        if minute - head >= MAX_WINDOW_MIN as i64 {
            self.buckets.iter_mut().for_each(|b| *b = 0.0);
            self.sums.iter_mut().for_each(|s| *s = 0.0);
        } else {
            for n in head + 1..=minute {
                for (w, sum) in self.windows.iter().zip(self.sums.iter_mut()) {
                    *sum -= self.buckets[Self::slot(n - *w as i64)];
                }
                self.buckets[Self::slot(n)] = 0.0;
            }
            // Subtraction leaves float dust; a total of rain is never negative.
            self.sums.iter_mut().for_each(|s| {
                if *s < 1e-9 {
                    *s = 0.0
                }
            });
        }
        self.head = Some(minute);
    }

    /// Add `mm` of rain measured at `ts`.
    pub fn add(&mut self, ts: Millis, mm: f64) -> Result<(), TooOldForWindows> {
        let minute = ts.div_euclid(MINUTE_MS);
        self.advance(minute);
        let head = self.head.expect("advance sets head");
        if minute <= head - MAX_WINDOW_MIN as i64 {
            return Err(TooOldForWindows);
        }
        self.buckets[Self::slot(minute)] += mm;
        for (w, sum) in self.windows.iter().zip(self.sums.iter_mut()) {
            if minute > head - *w as i64 {
                *sum += mm;
            }
        }
        Ok(())
    }

    /// Let time pass without rain (windows ending at `ts`).
    pub fn advance_to(&mut self, ts: Millis) {
        if self.head.is_some() {
            self.advance(ts.div_euclid(MINUTE_MS));
        }
    }

    /// Total over the last `window_min` minutes, if that window is kept.
    pub fn total(&self, window_min: u32) -> Option<f64> {
        self.windows
            .iter()
            .position(|&w| w == window_min)
            .map(|i| self.sums[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: Millis = MINUTE_MS;

    /// Asking for the next minute's buckets reads only buckets that exist, wherever the head
    /// stands in the ring (before its start, at its end, before any reading), and changes
    /// no total.
    #[test]
    fn asking_for_the_next_minutes_buckets_changes_nothing() {
        let mut w = RainWindows::new([15]);
        w.prefetch_next_minute();
        for minute in [0, 9, 1439, 1440, 2879, 100_000] {
            w.add(minute * M, 1.0).unwrap();
            let before: Vec<_> = w.windows.iter().map(|&m| w.total(m)).collect();
            w.prefetch_next_minute();
            let after: Vec<_> = w.windows.iter().map(|&m| w.total(m)).collect();
            assert_eq!(before, after);
        }
    }

    #[test]
    fn totals_roll_off_as_time_passes() {
        let mut w = RainWindows::new([]);
        w.add(0, 5.0).unwrap();
        w.add(5 * M, 3.0).unwrap();
        assert_eq!(w.total(10), Some(8.0));
        w.add(12 * M, 1.0).unwrap();
        assert_eq!(w.total(10), Some(4.0), "minute 0 left the 10-minute window");
        assert_eq!(w.total(60), Some(9.0));
        w.advance_to(70 * M);
        assert_eq!(w.total(60), Some(1.0));
        w.advance_to(3000 * M);
        assert_eq!(w.total(1440), Some(0.0));
    }

    #[test]
    fn out_of_order_within_a_day_still_counts() {
        let mut w = RainWindows::new([]);
        w.add(100 * M, 2.0).unwrap();
        w.add(95 * M, 1.0).unwrap();
        assert_eq!(w.total(10), Some(3.0));
        w.add(50 * M, 4.0).unwrap();
        assert_eq!(w.total(10), Some(3.0));
        assert_eq!(w.total(60), Some(7.0));
        assert_eq!(w.add(-2000 * M, 1.0), Err(TooOldForWindows));
    }

    #[test]
    fn matches_a_plain_sum_on_a_long_series() {
        let mut w = RainWindows::new([30]);
        let mut series = Vec::new();
        for i in 0..5000i64 {
            let mm = ((i * 7919) % 13) as f64 * 0.1;
            w.add(i * M / 2, mm).unwrap();
            series.push((i * M / 2, mm));
            if i % 97 == 0 {
                let head = (i * M / 2).div_euclid(M);
                for win in [10u32, 30, 60, 1440] {
                    let plain: f64 = series
                        .iter()
                        .filter(|(t, _)| t.div_euclid(M) > head - win as i64)
                        .map(|(_, v)| v)
                        .sum();
                    assert!(
                        (w.total(win).unwrap() - plain).abs() < 1e-6,
                        "window {win} at {i}"
                    );
                }
            }
        }
    }
}

//! What every core of the machine did between two moments (Linux `/proc/stat`), and what a
//! process took of it (`/proc/<pid>/stat`).
//!
//! A rate alone cannot say why a run went no faster. On a machine whose few cores the broker
//! shares with the client, a run that leaves no core idle is held by CPU: it can go no faster
//! than the cores' time divided by the CPU it spends per record. Set beside the raw consume
//! ceiling's, that bounds the stream stage's ratio to the ceiling, given what the stage spends
//! per reading.

use std::time::Instant;

/// Clock ticks per second of `/proc/stat` and `/proc/<pid>/stat`: `USER_HZ`, which Linux
/// fixes at 100 for user space on every architecture we run on.
pub(crate) const TICKS_PER_S: f64 = 100.0;

/// The machine's and this process's CPU counters at one moment.
#[derive(Clone, Copy, Debug)]
pub struct CpuMark {
    at: Instant,
    counters: MachineTicks,
    own_s: f64,
}

/// The aggregate `cpu` line of `/proc/stat`, in ticks, folded into what matters here.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct MachineTicks {
    /// user, nice, system, irq and softirq (guest time is inside user already).
    busy: u64,
    /// idle and iowait: a core with nothing to run.
    idle: u64,
    /// Time the hypervisor gave to other machines while this one had work.
    steal: u64,
}

/// What the cores did between a mark and a later moment.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CpuSpent {
    /// Wall-clock seconds between the two.
    pub wall_s: f64,
    /// Core-seconds spent running anything, the whole machine.
    pub busy_s: f64,
    /// Core-seconds with nothing to run.
    pub idle_s: f64,
    /// Core-seconds taken by the hypervisor for other machines.
    pub steal_s: f64,
    /// Core-seconds of this process (its threads: the bench's clients and an in-process
    /// stage); the rest of `busy_s` is the broker and whatever else runs.
    pub own_s: f64,
}

impl CpuMark {
    /// The counters now.
    pub fn now() -> CpuMark {
        CpuMark {
            at: Instant::now(),
            counters: std::fs::read_to_string("/proc/stat")
                .ok()
                .and_then(|s| parse_machine(&s))
                .unwrap_or_default(),
            own_s: process_cpu_s("self"),
        }
    }

    /// What was spent from this mark to now.
    pub fn spent(&self) -> CpuSpent {
        let later = CpuMark::now();
        let d = |a: u64, b: u64| b.saturating_sub(a) as f64 / TICKS_PER_S;
        CpuSpent {
            wall_s: later.at.duration_since(self.at).as_secs_f64(),
            busy_s: d(self.counters.busy, later.counters.busy),
            idle_s: d(self.counters.idle, later.counters.idle),
            steal_s: d(self.counters.steal, later.counters.steal),
            own_s: (later.own_s - self.own_s).max(0.0),
        }
    }
}

impl CpuSpent {
    /// Whether the machine's counters were read at all (not on a system without
    /// `/proc/stat`): a spell with none counted says nothing.
    pub fn counted(&self) -> bool {
        self.busy_s + self.idle_s + self.steal_s > 0.0
    }

    /// Busy core-microseconds of the whole machine per record of `records`.
    pub fn busy_us_per(&self, records: u64) -> f64 {
        self.busy_s * 1e6 / records.max(1) as f64
    }

    /// This process's core-microseconds per record of `records`.
    pub fn own_us_per(&self, records: u64) -> f64 {
        self.own_s * 1e6 / records.max(1) as f64
    }

    /// `part` as a share of all the cores' time counted, 0 to 1 (0 when nothing was counted).
    fn share_of_all(&self, part: f64) -> f64 {
        let all = self.busy_s + self.idle_s + self.steal_s;
        if all > 0.0 {
            part / all
        } else {
            0.0
        }
    }

    /// The share of the cores' time that had nothing to run, 0 to 1.
    pub fn idle_share(&self) -> f64 {
        self.share_of_all(self.idle_s)
    }

    /// The share of the time the machine had (all but what the hypervisor took) that went
    /// to running something, 0 to 1 (1 when nothing was counted).
    pub fn busy_share_of_available(&self) -> f64 {
        let available = self.busy_s + self.idle_s;
        if available > 0.0 {
            self.busy_s / available
        } else {
            1.0
        }
    }

    /// The share taken by the hypervisor, 0 to 1.
    pub fn steal_share(&self) -> f64 {
        self.share_of_all(self.steal_s)
    }

    /// The sum of several spells, as one.
    pub fn total(spells: &[CpuSpent]) -> CpuSpent {
        spells.iter().fold(
            CpuSpent {
                wall_s: 0.0,
                busy_s: 0.0,
                idle_s: 0.0,
                steal_s: 0.0,
                own_s: 0.0,
            },
            |a, s| CpuSpent {
                wall_s: a.wall_s + s.wall_s,
                busy_s: a.busy_s + s.busy_s,
                idle_s: a.idle_s + s.idle_s,
                steal_s: a.steal_s + s.steal_s,
                own_s: a.own_s + s.own_s,
            },
        )
    }
}

/// CPU time of process `pid` (or `self`) so far, seconds: every thread of it, those that
/// have ended included (utime and stime of `/proc/<pid>/stat`); 0 when it cannot be read.
pub(crate) fn process_cpu_s(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat_cpu_ticks(&stat) as f64 / TICKS_PER_S
}

/// utime plus stime of a `/proc/<pid>/stat` (or `/proc/<pid>/task/<tid>/stat`) text, in
/// ticks; 0 when it cannot be read.
pub(crate) fn stat_cpu_ticks(stat: &str) -> u64 {
    // Fields after the command name (which may hold spaces and parentheses), so index from
    // the last ')'.
    let rest = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15; `rest` starts at field 3.
    tick(11) + tick(12)
}

/// The aggregate line of a `/proc/stat` text; `None` when it has none or too few fields.
fn parse_machine(stat: &str) -> Option<MachineTicks> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal [guest guest_nice]
    if f.len() < 8 {
        return None;
    }
    Some(MachineTicks {
        busy: f[0] + f[1] + f[2] + f[5] + f[6],
        idle: f[3] + f[4],
        steal: f[7],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_aggregate_line_is_folded_into_busy_idle_and_steal() {
        let stat = "cpu  100 5 40 1000 7 3 2 11 50 0\ncpu0 50 2 20 500 3 1 1 5 25 0\nintr 1 2 3\n";
        assert_eq!(
            parse_machine(stat),
            Some(MachineTicks {
                busy: 100 + 5 + 40 + 3 + 2,
                idle: 1000 + 7,
                steal: 11,
            })
        );
        assert_eq!(parse_machine("cpu0 1 2 3 4 5 6 7 8\n"), None);
        assert_eq!(parse_machine("cpu  1 2 3\n"), None);
    }

    #[test]
    fn shares_and_rates_come_from_the_spent_core_seconds() {
        let s = CpuSpent {
            wall_s: 2.0,
            busy_s: 3.0,
            idle_s: 0.5,
            steal_s: 0.5,
            own_s: 1.5,
        };
        assert_eq!(s.idle_share(), 0.125);
        assert_eq!(s.steal_share(), 0.125);
        assert_eq!(s.busy_share_of_available(), 3.0 / 3.5);
        assert_eq!(s.busy_us_per(1_000_000), 3.0);
        assert_eq!(s.own_us_per(500_000), 3.0);
        let both = CpuSpent::total(&[s, s]);
        assert_eq!((both.busy_s, both.own_s, both.wall_s), (6.0, 3.0, 4.0));
        assert_eq!(both.idle_share(), 0.125);
    }

    #[test]
    fn a_spell_of_work_is_counted_on_this_machine() {
        let mark = CpuMark::now();
        // Spin long enough for several ticks to land on this process.
        let start = Instant::now();
        let mut x = 0u64;
        while start.elapsed().as_millis() < 300 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let s = mark.spent();
        assert!(s.own_s > 0.0, "{s:?}");
        assert!(s.busy_s >= s.own_s * 0.5, "{s:?}");
        assert!(s.wall_s >= 0.3);
    }
}

//! Progress of a long import or replay on stderr: a bar redrawn in place on a terminal, plain
//! lines (at most one per 5 % or 10 s) otherwise, so logs of a batch job stay readable.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// One task's progress.
pub struct Progress {
    what: String,
    terminal: bool,
    started: Instant,
    last_print: Option<Instant>,
    last_fraction: f64,
}

impl Progress {
    /// Start showing progress of `what`.
    pub fn new(what: &str) -> Self {
        Progress {
            what: what.to_string(),
            terminal: std::io::stderr().is_terminal(),
            started: Instant::now(),
            last_print: None,
            last_fraction: -1.0,
        }
    }

    /// `done` of `total` units (total unknown: a count only).
    pub fn update(&mut self, done: u64, total: Option<u64>) {
        let fraction = total.map(|t| done as f64 / t.max(1) as f64);
        let now = Instant::now();
        let since = self.last_print.map(|t| now - t);
        let due = if self.terminal {
            since.is_none_or(|d| d >= Duration::from_millis(100))
        } else {
            since.is_none_or(|d| d >= Duration::from_secs(10))
                || fraction.is_some_and(|f| f - self.last_fraction >= 0.05 || f >= 1.0)
        };
        if !due || fraction.is_some_and(|f| f >= 1.0 && self.last_fraction >= 1.0) {
            return;
        }
        self.last_print = Some(now);
        self.last_fraction = fraction.unwrap_or(0.0);
        let elapsed = self.started.elapsed().as_secs_f64();
        let text = match (fraction, total) {
            (Some(f), Some(t)) => {
                let width = 30;
                let filled = ((f.min(1.0)) * width as f64) as usize;
                format!(
                    "{}: [{}{}] {:>5.1}% {done}/{t} ({elapsed:.1} s)",
                    self.what,
                    "#".repeat(filled),
                    " ".repeat(width - filled),
                    f * 100.0
                )
            }
            _ => format!("{}: {done} ({elapsed:.1} s)", self.what),
        };
        let mut err = std::io::stderr();
        if self.terminal {
            let _ = write!(err, "\r{text}");
        } else {
            let _ = writeln!(err, "{text}");
        }
        let _ = err.flush();
    }

    /// The task is done: end the bar's line.
    pub fn finish(&mut self) {
        if self.terminal && self.last_print.is_some() {
            let _ = writeln!(std::io::stderr());
        }
    }
}

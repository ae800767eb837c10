//! A benchmark's result: figures plus the machine, written as JSON and a Markdown table.

use serde::Serialize;

/// One measured figure.
#[derive(Serialize, Clone, Debug)]
pub struct Figure {
    /// What was measured.
    pub name: String,
    /// The value.
    pub value: f64,
    /// Its unit.
    pub unit: String,
    /// The value divided by the reference figure of the same run, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio: Option<f64>,
    /// What the ratio is against.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio_to: Option<String>,
}

/// What the benchmark ran on.
#[derive(Serialize, Clone, Debug)]
pub struct Machine {
    /// CPU model.
    pub cpu: String,
    /// Cores.
    pub cores: usize,
    /// Memory, GiB.
    pub memory_gib: f64,
}

impl Machine {
    /// This machine.
    pub fn here() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name")
                    .and_then(|r| r.split(':').nth(1))
            })
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let kib: f64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0.0);
        Machine {
            cpu,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_gib: (kib / 1024.0 / 1024.0 * 10.0).round() / 10.0,
        }
    }
}

/// A scenario's report.
#[derive(Serialize, Clone, Debug)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// The exact command that produced it.
    pub command: String,
    /// The machine.
    pub machine: Machine,
    /// Parameters (records, batch size, ...).
    pub params: serde_json::Value,
    /// Figures.
    pub figures: Vec<Figure>,
}

impl Report {
    /// Add a figure.
    pub fn figure(&mut self, name: &str, value: f64, unit: &str) {
        self.figures.push(Figure {
            name: name.into(),
            value,
            unit: unit.into(),
            ratio: None,
            ratio_to: None,
        });
    }

    /// Add a figure with its ratio to a reference figure.
    pub fn figure_vs(
        &mut self,
        name: &str,
        value: f64,
        unit: &str,
        reference: f64,
        reference_name: &str,
    ) {
        self.figures.push(Figure {
            name: name.into(),
            value,
            unit: unit.into(),
            ratio: (reference > 0.0).then(|| value / reference),
            ratio_to: Some(reference_name.into()),
        });
    }

    /// The report as a Markdown table.
    pub fn markdown(&self) -> String {
        let mut s = format!(
            "### {}\n\n`{}` on {} ({} cores, {} GiB)\n\n| figure | value | ratio |\n|---|---|---|\n",
            self.scenario, self.command, self.machine.cpu, self.machine.cores, self.machine.memory_gib
        );
        for f in &self.figures {
            let ratio = match (&f.ratio, &f.ratio_to) {
                (Some(r), Some(to)) => format!("{:.2} of {to}", r),
                _ => String::new(),
            };
            // Whole numbers for counts and rates; small figures (cores, load, seconds) would
            // round to nothing.
            let value = if f.value.abs() >= 100.0 || f.value == f.value.trunc() {
                format!("{:.0}", f.value)
            } else {
                format!("{:.2}", f.value)
            };
            s.push_str(&format!(
                "| {} | {value} {} | {} |\n",
                f.name, f.unit, ratio
            ));
        }
        s
    }
}

//! `floodcmd bench stream-core` and `bench stream-kafka` (the latter against the real Kafka of
//! `scripts/kafka.sh`, bootstrap from `FLOODCMD_KAFKA`, default 127.0.0.1:19092), run small:
//! each writes its report, and the report carries the CPU figures the performance notes rest
//! on (what each run cost this process per reading; what the machine's cores spent, how idle
//! they were, and the bound that sets on the stage's ratio to the consume ceiling). Figures
//! are checked for being there and being sane, never for how fast anything ran: these
//! machines are shared and noisy.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn bootstrap() -> String {
    std::env::var("FLOODCMD_KAFKA").unwrap_or_else(|_| "127.0.0.1:19092".into())
}

fn tempdir(name: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let d = std::env::temp_dir().join(format!("benchrep{}-{nanos}.{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Run `floodcmd bench <args> --out <out>` and read back `<out>/<scenario>.json`'s figures,
/// by name.
fn run_bench(scenario: &str, args: &[&str], out: &Path) -> Vec<(String, f64, Option<f64>)> {
    let status = Command::new(env!("CARGO_BIN_EXE_floodcmd"))
        .arg("bench")
        .arg(scenario)
        .args(args)
        .arg("--out")
        .arg(out)
        .env("FLOODCMD_LOG", "warn")
        .status()
        .expect("floodcmd runs");
    assert!(status.success(), "bench {scenario} failed: {status}");
    let report: Value = serde_json::from_str(
        &std::fs::read_to_string(out.join(format!("{scenario}.json"))).expect("report written"),
    )
    .expect("report is JSON");
    assert_eq!(report["scenario"], scenario);
    report["figures"]
        .as_array()
        .expect("figures")
        .iter()
        .map(|f| {
            (
                f["name"].as_str().expect("name").to_string(),
                f["value"].as_f64().expect("value"),
                f["ratio"].as_f64(),
            )
        })
        .collect()
}

/// The one figure named `prefix`, or `prefix` then a gloss (` (…)` or `: …`).
fn figure(figures: &[(String, f64, Option<f64>)], prefix: &str) -> (f64, Option<f64>) {
    let found: Vec<_> = figures
        .iter()
        .filter(|(n, _, _)| {
            n.strip_prefix(prefix).is_some_and(|rest| {
                rest.is_empty() || rest.starts_with(" (") || rest.starts_with(':')
            })
        })
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one figure named {prefix:?}, in {:?}",
        figures.iter().map(|f| &f.0).collect::<Vec<_>>()
    );
    (found[0].1, found[0].2)
}

#[test]
fn stream_core_reports_what_each_run_cost_the_process_per_reading() {
    let out = tempdir("core");
    let figures = run_bench(
        "stream-core",
        &["--sensors", "200", "--records", "30000"],
        &out,
    );
    for run in [
        "1 worker, after the others",
        "2 workers",
        "1 worker, outputs dropped once produced",
        "2 workers, outputs dropped once produced",
    ] {
        let (cpu, _) = figure(&figures, &format!("CPU of this process per reading, {run}"));
        // A run of 30,000 readings takes far longer than the 10 ms the kernel counts CPU in,
        // and each reading costs the process something; a reading cannot cost a second.
        assert!(cpu > 0.0 && cpu < 1e6, "{run}: {cpu} core-µs per reading");
    }
    let (rate, _) = figure(&figures, "1 worker, outputs dropped once produced");
    assert!(rate > 0.0);
    std::fs::remove_dir_all(out).ok();
}

#[test]
fn real_broker_stream_kafka_reports_what_the_cores_spent_and_the_bound_it_sets() {
    let out = tempdir("kafka");
    let kafka = bootstrap();
    let figures = run_bench(
        "stream-kafka",
        &["--kafka", &kafka, "--sensors", "200", "--records", "30000"],
        &out,
    );
    let parts = [
        "raw consume ceiling (its runs together)",
        "stream stage, 1 worker",
        "stream stage, 2 workers",
        "raw pipe (its runs together)",
    ];
    for part in parts {
        let (whole, _) = figure(
            &figures,
            &format!("CPU of the whole machine per reading, {part}"),
        );
        let (own, _) = figure(
            &figures,
            &format!("CPU of this process per reading, {part}"),
        );
        let (idle, _) = figure(
            &figures,
            &format!("idle share of the machine's cores, {part}"),
        );
        let (steal, _) = figure(
            &figures,
            &format!("share taken by the hypervisor (steal), {part}"),
        );
        assert!(whole > 0.0 && whole.is_finite(), "{part}: {whole}");
        assert!(own > 0.0 && own.is_finite(), "{part}: {own}");
        assert!((0.0..=100.0).contains(&idle), "{part}: idle {idle} %");
        assert!((0.0..=100.0).contains(&steal), "{part}: steal {steal} %");
    }
    // Both bounds are ratios of CPU per reading: positive and finite whenever the parts above
    // were counted at all.
    let (pipe_bound, _) = figure(
        &figures,
        "bound set by CPU on the ratio to the ceiling of a stage that writes its outputs and runs no rules",
    );
    assert!(pipe_bound > 0.0 && pipe_bound.is_finite(), "{pipe_bound}");
    for workers in ["1 worker", "2 workers"] {
        let (bound, _) = figure(
            &figures,
            &format!("bound set by CPU on the stage's ratio to the ceiling, {workers}"),
        );
        assert!(bound > 0.0 && bound.is_finite(), "{workers}: {bound}");
        let (rate, ratio) = figure(&figures, &format!("stream stage from Kafka, {workers}"));
        assert!(rate > 0.0);
        assert!(
            ratio.is_some_and(|r| r > 0.0),
            "{workers}: no ratio to the ceiling"
        );
    }
    std::fs::remove_dir_all(out).ok();
}

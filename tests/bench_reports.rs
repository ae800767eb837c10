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
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
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
        "simulated storm, 1 worker, outputs dropped once produced",
        "simulated storm, 2 workers, outputs dropped once produced",
    ] {
        let (cpu, _) = figure(&figures, &format!("CPU of this process per reading, {run}"));
        // A run of 30,000 readings takes far longer than the 10 ms the kernel counts CPU in,
        // and each reading costs the process something.
        assert!(
            cpu > 0.0 && cpu.is_finite(),
            "{run}: {cpu} core-µs per reading"
        );
        // CPU and rate are taken over the same span: CPU per reading times readings per
        // second is the cores the process kept busy, no more than the machine has (a unit or
        // tick-rate slip would show here as 100 × or 1e6 ×).
        let (rate, _) = figure(&figures, run);
        assert!(rate > 0.0, "{run}: {rate} readings/s");
        let busy_cores = cpu * rate / 1e6;
        assert!(
            busy_cores <= cores * 1.2 + 0.1,
            "{run}: {cpu} core-µs per reading at {rate} readings/s is {busy_cores} cores of {cores}"
        );
    }
    // Both storms move levels (the simulated one's cells flood some points), and
    // transitions are some of the outputs.
    for storm in ["", "simulated storm, "] {
        let outputs = figure(&figures, &format!("{storm}outputs produced per reading")).0;
        let transitions = figure(
            &figures,
            &format!("{storm}transitions produced per reading"),
        )
        .0;
        assert!(
            0.0 < transitions && transitions <= outputs,
            "{storm}{transitions} transitions of {outputs} outputs per reading"
        );
    }
    std::fs::remove_dir_all(out).ok();
}

#[test]
fn real_broker_stream_kafka_reports_what_the_cores_spent_and_the_bound_it_sets() {
    let out = tempdir("kafka");
    let kafka = bootstrap();
    // A setting given on the command line goes to every client of the run, and the report
    // says which (the value here changes nothing at this size).
    let figures = run_bench(
        "stream-kafka",
        &[
            "--kafka",
            &kafka,
            "--sensors",
            "200",
            "--records",
            "30000",
            "--kafka-setting",
            "queued.min.messages=50000",
        ],
        &out,
    );
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("stream-kafka.json")).unwrap())
            .unwrap();
    assert_eq!(
        report["params"]["kafka_settings"],
        serde_json::json!(["queued.min.messages=50000"])
    );
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    // What the broker's JIT compilers took: reported for each stage run and for the whole
    // bench where the broker is a JVM this process can see on this machine (as the one
    // `scripts/test.sh` starts is), and not at all otherwise. A warm broker may compile
    // nothing, so beyond being there the figures are only checked to be sane.
    let jit_names = [
        "CPU the broker's JIT compilers took during the stage run, 1 worker",
        "CPU the broker's JIT compilers took during the stage run, 2 workers",
        "CPU the broker's JIT compilers took over this bench",
    ];
    if floodcmd_benches::broker_jit::BrokerJit::find(&kafka).is_some() {
        for name in jit_names {
            let ms = figure(&figures, name).0;
            assert!(ms >= 0.0 && ms.is_finite(), "{name}: {ms} ms");
        }
    } else {
        assert!(
            !figures
                .iter()
                .any(|(n, _, _)| jit_names.iter().any(|j| n.starts_with(j))),
            "no broker on this machine, yet a figure of its compilers"
        );
    }
    // Whole machine, this process, idle and stolen shares of one part.
    let part = |name: &str| {
        let get = |what: &str| figure(&figures, &format!("{what}, {name}")).0;
        let whole = get("CPU of the whole machine per reading");
        let own = get("CPU of this process per reading");
        let idle = get("idle share of the machine's cores");
        let steal = get("share taken by the hypervisor (steal)");
        assert!(whole > 0.0 && whole.is_finite(), "{name}: {whole}");
        assert!(own > 0.0 && own.is_finite(), "{name}: {own}");
        (whole, own, idle, steal)
    };
    let records = 30_000.0;
    // The kernel counts the machine in 10 ms ticks and the process more finely: this process
    // is part of the machine, give or take a tick on each core at each end.
    let tick_slack_us = 2.0 * cores * 10_000.0 / records;
    for name in [
        "raw consume ceiling, the two runs around the 1-worker run",
        "raw consume ceiling, the two runs around the 2-worker run",
        "raw pipe (its runs together)",
        "raw pipe, outputs packed 256 to a record (its runs together)",
    ] {
        let (whole, own, _, _) = part(name);
        assert!(
            own <= whole + tick_slack_us,
            "{name}: process {own} > machine {whole}"
        );
    }
    let around = [
        part("raw consume ceiling, the two runs around the 1-worker run"),
        part("raw consume ceiling, the two runs around the 2-worker run"),
    ];
    for (i, workers) in ["1 worker", "2 workers"].iter().enumerate() {
        let (whole, own, _, _) = part(&format!("stream stage, {workers}"));
        assert!(
            own <= whole + tick_slack_us,
            "{workers}: process {own} > machine {whole}"
        );
        // The stage's CPU and its rate are taken over the same span: CPU per reading times
        // readings per second is the cores it kept busy, which cannot be more than the
        // machine has (a unit or tick-rate slip would show here as 100 × or 1e6 ×).
        let (rate, ratio) = figure(&figures, &format!("stream stage from Kafka, {workers}"));
        assert!(rate > 0.0);
        // The run's start and end, and its rate between them: the three spans fit in the
        // run, and the rate between its first and last readings is no lower than the whole
        // run's (less the one poll's worth it may count early).
        let whole_ms = records / rate * 1000.0;
        let to_first = figure(
            &figures,
            &format!("stream stage from Kafka, {workers}, time from its start to its first readings taken"),
        )
        .0;
        let after_last = figure(
            &figures,
            &format!(
                "stream stage from Kafka, {workers}, time from its last readings taken to its end"
            ),
        )
        .0;
        assert!(
            to_first >= 0.0 && after_last >= 0.0 && to_first + after_last <= whole_ms + 1.0,
            "{workers}: {to_first} ms to the first readings and {after_last} ms after the last, of a run of {whole_ms} ms"
        );
        // Absent only if a run took all its readings within one sample of the counter.
        let between_name = format!(
            "stream stage from Kafka, {workers}, between its first and last readings taken"
        );
        if let Some((_, between, between_ratio)) = figures
            .iter()
            .find(|(n, _, _)| n.starts_with(&between_name))
        {
            assert!(
                *between >= rate * 0.99 && between_ratio.is_some(),
                "{workers}: {between} readings/s between the first and last readings, {rate} over the run"
            );
        }
        assert!(
            ratio.is_some_and(|r| r > 0.0),
            "{workers}: no ratio to the ceiling"
        );
        let busy_cores = whole * rate / 1e6;
        assert!(
            busy_cores <= cores * 1.2 + 0.1,
            "{workers}: {whole} core-µs per reading at {rate} readings/s is {busy_cores} cores of {cores}"
        );
        // The bound, recomputed from the figures it is made of.
        let (c_whole, _, c_idle, c_steal) = around[i];
        let busy_share = (100.0 - c_idle - c_steal) / (100.0 - c_steal);
        let expected = c_whole / busy_share / whole;
        let (bound, _) = figure(
            &figures,
            &format!("bound set by CPU on the stage's ratio to the ceiling, {workers}"),
        );
        assert!(
            (bound - expected).abs() <= 1e-6 * expected,
            "{workers}: bound {bound}, recomputed {expected}"
        );
    }
    let (pipe_whole, _, _, _) = part("raw pipe (its runs together)");
    let (c_whole, _, c_idle, c_steal) = around[1];
    let expected = c_whole / ((100.0 - c_idle - c_steal) / (100.0 - c_steal)) / pipe_whole;
    let (pipe_bound, _) = figure(
        &figures,
        "bound set by CPU on the ratio to the ceiling of a stage that writes its outputs and runs no rules",
    );
    assert!(
        (pipe_bound - expected).abs() <= 1e-6 * expected,
        "pipe bound {pipe_bound}, recomputed {expected}"
    );
    // The same outputs packed: both runs read every reading, and the bounds are made of the
    // figures beside them.
    for run in [1, 2] {
        let (rate, _) = figure(
            &figures,
            &format!("raw Kafka pipe, outputs packed 256 to a record, run {run}"),
        );
        assert!(
            rate > 0.0 && rate.is_finite(),
            "packed pipe run {run}: {rate}"
        );
    }
    let (packed_whole, _, _, _) =
        part("raw pipe, outputs packed 256 to a record (its runs together)");
    let (packed_bound, _) = figure(
        &figures,
        "bound set by CPU on the ratio to the ceiling of a stage that writes its outputs packed 256 to a record and runs no rules",
    );
    let expected = pipe_bound * pipe_whole / packed_whole;
    assert!(
        (packed_bound - expected).abs() <= 1e-6 * expected,
        "packed pipe bound {packed_bound}, recomputed {expected}"
    );
    // What any stage could reach: the pipes' CPU plus the same stage's in process.
    let (in_process, _) = figure(
        &figures,
        "CPU of this process per reading, the same stage in process",
    );
    assert!(
        in_process > 0.0 && in_process.is_finite(),
        "in process: {in_process}"
    );
    for (whole, name) in [
        (pipe_whole, "bound set by CPU on the ratio to the ceiling of any stage that writes its outputs one to a record and whose rules cost what they cost in process"),
        (packed_whole, "bound set by CPU on the ratio to the ceiling of any stage that writes its outputs packed 256 to a record and whose rules cost what they cost in process"),
    ] {
        let (bound, _) = figure(&figures, name);
        let expected = pipe_bound * pipe_whole / (whole + in_process);
        assert!(
            (bound - expected).abs() <= 1e-6 * expected,
            "{name}: {bound}, recomputed {expected}"
        );
    }
    std::fs::remove_dir_all(out).ok();
}

/// Run `floodcmd bench <args> --out <a fresh directory>`, which must fail without writing
/// `<scenario>.json`; its standard error.
fn run_bench_refused(scenario: &str, args: &[&str]) -> String {
    let out = tempdir(&format!("refused-{scenario}"));
    let run = Command::new(env!("CARGO_BIN_EXE_floodcmd"))
        .arg("bench")
        .arg(scenario)
        .args(args)
        .arg("--out")
        .arg(&out)
        .env("FLOODCMD_LOG", "warn")
        .output()
        .expect("floodcmd runs");
    let stderr = String::from_utf8_lossy(&run.stderr).into_owned();
    assert!(!run.status.success(), "bench {scenario} ran: {stderr}");
    assert!(
        !out.join(format!("{scenario}.json")).exists(),
        "a report without a run"
    );
    std::fs::remove_dir_all(out).ok();
    stderr
}

#[test]
fn a_kafka_setting_given_to_a_scenario_that_would_ignore_it_is_refused() {
    let stderr = run_bench_refused(
        "kafka-ceiling",
        &[
            "--kafka",
            "127.0.0.1:1",
            "--kafka-setting",
            "queued.min.messages=10000",
        ],
    );
    assert!(
        stderr.contains("--kafka-setting is for `bench stream-kafka` only"),
        "{stderr}"
    );
}

#[test]
fn real_broker_stream_kafka_refuses_a_setting_librdkafka_does_not_know_and_names_it() {
    let kafka = bootstrap();
    let stderr = run_bench_refused(
        "stream-kafka",
        &[
            "--kafka",
            &kafka,
            "--sensors",
            "200",
            "--records",
            "1000",
            "--kafka-setting",
            "no.such.setting=1",
        ],
    );
    assert!(stderr.contains("no.such.setting"), "{stderr}");
}

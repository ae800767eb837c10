//! The `floodcmd` command line.

use anyhow::{Context, Result};

// mimalloc rather than glibc's malloc: the stages allocate and free millions of small strings
// and buffers a second across threads, and glibc's arena bookkeeping (consolidation, chunk
// unlinking) was a fifth of a replay's profile.
//
// With the `override` feature (Cargo.toml) the binary also defines and exports `malloc`,
// `free` and the rest, so the C code in the process uses mimalloc too, glibc's own calls
// included: one allocator for the whole process, never two that could be handed each other's
// blocks. librdkafka allocates each fetched message on its broker thread and a stage frees it
// on a worker; under glibc every such free took the other thread's arena lock, about a
// twentieth of a Kafka stream worker's time, and the raw consume ceiling of `bench
// kafka-ceiling` was 0.80M-0.95M records/s against 1.12M-1.24M with mimalloc's lock-free
// cross-thread frees.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand, ValueEnum};
use floodcmd::pipeline::{Pipeline, PipelineOptions};
use floodcmd::stages::{self, StageContext};
use floodcmd_model::settings::Settings;
use floodcmd_model::time::{Clock, SystemClock};
use floodcmd_model::topic::Topics;
use floodcmd_model::District;
use floodcmd_sim::{run_sim, synthetic_district, FaultConfig, SimConfig, SimReport, Target};

/// mimalloc's `purge_delay` option: its place in v3's `mi_option_t`, for which
/// `libmimalloc-sys` names no constant (a test checks it against the option's default).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// How long, at most, memory the process frees stays with the allocator before it goes back
/// to the kernel.
const PURGE_DELAY_MS: std::ffi::c_long = 10_000;

/// Has mimalloc hand freed memory back to the kernel up to ten seconds after it was freed,
/// instead of one, unless its own environment variable (`MIMALLOC_PURGE_DELAY`, in any case,
/// or the older `MIMALLOC_RESET_DELAY`) says otherwise.
///
/// The stream stage frees and allocates its epochs' buffers, outputs and records many times a
/// second, and the benches free a whole engine between runs. Handed back after a second, that
/// memory was asked for again, and each page faulted and was zeroed anew: with a Kafka stage,
/// 12 % of the worker thread's samples were the kernel clearing pages. The worker threads of
/// one `bench stream-kafka` run took 41,000 page faults at one second, 9,700 at ten and under
/// 200 with purging off; a whole `bench stream-core` run, 23,000 to 63,000 at one second and
/// about 940 at ten. mimalloc purges in batches (all that is pending once the oldest is due)
/// and only while the process allocates, so memory freed goes back within about ten seconds
/// while the process keeps working, some of it sooner, and may stay longer in one gone quiet.
fn hold_freed_memory() {
    // SAFETY: an unsynchronised write of one of mimalloc's global options, made first thing in
    // `main`, before any other thread exists. `set_default` leaves an option the environment
    // set as it is.
    unsafe { libmimalloc_sys::mi_option_set_default(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) };
}

/// Turns the kernel's transparent huge pages off for this process, unless mimalloc's own
/// environment variable (`MIMALLOC_ALLOW_THP`, in any case) is set, which then decides.
///
/// Where the kernel backs memory with huge pages whenever it can (Debian's default,
/// `always`), the first touch of any fresh 2 MiB stretch faults in and zeroes all of it, and
/// the stream stage keeps touching fresh stretches: its epochs' buffers, the records polled,
/// a whole engine built anew. In a `bench stream-kafka` run with huge pages, the kernel
/// zeroing them took about a fifth of the 1-worker run's worker thread. Without them, in 5
/// runs against 5 alternating, the Kafka stage ran ahead and spent less of this process's CPU
/// per reading in 5 of 5 with 1 worker and 4 of 5 with 2 workers. In process, the first run
/// of `bench stream-core` (all its memory fresh) went from 0.45–0.47M readings/s to
/// 0.80–0.88M. What it costs: 3–7 % on a stage whose memory is all warm (its later runs,
/// 1 worker, 1.11–1.16M readings/s against 1.16–1.25M), from the extra TLB misses.
fn no_transparent_huge_pages() {
    if allow_thp_set() {
        return;
    }
    #[cfg(target_os = "linux")]
    // SAFETY: `prctl(PR_SET_THP_DISABLE, 1)` takes integers only and changes nothing but the
    // process's huge-page policy. It fails only on kernels older than 3.15, where the
    // process keeps the kernel's policy, as it would without this call.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

/// Whether mimalloc's `MIMALLOC_ALLOW_THP` is set, in any case (as mimalloc reads it).
fn allow_thp_set() -> bool {
    std::env::vars_os().any(|(k, _)| {
        k.to_str()
            .is_some_and(|k| k.eq_ignore_ascii_case("mimalloc_allow_thp"))
    })
}

mod bench_pipeline;
mod storm_commands;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

#[derive(Parser)]
#[command(
    name = "floodcmd",
    version,
    about = "Real-time flood command system (城市防汛指挥)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Options every stage command takes.
#[derive(clap::Args, Clone)]
struct StageArgs {
    /// Settings file (TOML; `FLOODCMD_<SECTION>_<FIELD>` variables override it).
    #[arg(long, default_value = "config/floodcmd.toml")]
    config: PathBuf,
    /// Kafka bootstrap servers; overrides the settings and forces the Kafka bus.
    #[arg(long)]
    kafka: Option<String>,
}

#[derive(Clone, Copy, ValueEnum)]
enum BenchScenario {
    /// Raw librdkafka produce and consume of our record size.
    KafkaCeiling,
    /// The HTTP gateway writing to Kafka, beside the raw ceiling of the same run.
    Gateway,
    /// The stream stage alone, in process, 1 and 2 workers (--records readings over
    /// --sensors sensors).
    StreamCore,
    /// Peak memory with state for --sensors sensors.
    StreamMemory,
    /// The stream stage reading --records readings back from a Kafka topic (1 and 2 workers),
    /// beside the raw consume ceiling of the same broker in the same run.
    StreamKafka,
    /// The influx sink's sustained write rate (--records readings and a state for every
    /// tenth, over --sensors sensors, batches of --batch lines) into the server at
    /// $FLOODCMD_INFLUX (default http://127.0.0.1:18428, scripts/victoria.sh), beside that
    /// server's own ceiling.
    InfluxSink,
    /// Mass alerting: --recipients distinct phones through the SMPP simulator
    /// (scripts/smsc.sh), with no rate limit and limited to --sms-rate.
    Sms,
    /// The command wall under a storm: the whole pipeline in process (embedded bus, synthetic
    /// district of --sensors depth points), --clients websocket clients, --rate readings/s
    /// through the HTTP gateway for --duration s; ingest → delta latency per client.
    Fanout,
    /// sim → ingest → stream → alerts → dashboard in this process on the embedded bus,
    /// --rate readings/s open loop for --duration s over --sensors depth points, --clients
    /// websocket clients: reading → alert / status / delta percentiles, CPU per reading, peak
    /// memory; with --search, steps up the rate to the highest one sustained.
    PipelineEmbedded,
    /// The same with each stage its own process across the Kafka at --kafka, beside the raw
    /// consume ceiling (--records records) of the same broker measured first.
    PipelineKafka,
    /// A synthetic archive of --sensors sensors × --hours h × one reading a minute replayed
    /// at max speed (--workers), loading and the stream stage timed apart.
    Replay,
}

/// The pipeline benches' options (with --rate, --duration, --lateness-ms, --clients,
/// --sensors).
#[derive(clap::Args, Clone)]
struct PipelineBenchArgs {
    /// Step the rate up (× --factor per step of --duration s) until a step is not sustained.
    #[arg(long)]
    search: bool,
    /// Rate factor between search steps.
    #[arg(long, default_value_t = 1.5)]
    factor: f64,
    /// The search stops at this rate.
    #[arg(long, default_value_t = 1_000_000.0)]
    max_rate: f64,
    /// One depth sensor in this many crosses the blue threshold back and forth (alerts).
    #[arg(long, default_value_t = 10)]
    alert_every: usize,
    /// Replay: hours of one reading a minute per sensor.
    #[arg(long, default_value_t = 24)]
    hours: u64,
    /// Replay: timely workers.
    #[arg(long, default_value_t = 2)]
    workers: usize,
}

/// The `fanout` bench's options (with --clients and --sensors).
#[derive(clap::Args, Clone)]
struct FanoutBenchArgs {
    /// Readings per second through the gateway, open loop.
    #[arg(long, default_value_t = 10_000.0)]
    rate: f64,
    /// Seconds of feeding.
    #[arg(long, default_value_t = 30)]
    duration: u64,
    /// The stream stage's lateness budget, ms (the default is `stream.lateness_s`'s, 10 s):
    /// a status is published once the watermark passes the reading's second.
    #[arg(long, default_value_t = 10_000)]
    lateness_ms: i64,
    /// Of the clients, how many parse every message and measure (spread evenly); the rest
    /// only read their sockets, as browsers elsewhere would (their parsing is not the
    /// wall's work).
    #[arg(long, default_value_t = 100)]
    measured_clients: usize,
    /// The clients do not offer permessage-deflate (browsers do), so the wall sends them
    /// plain frames: for a run side by side.
    #[arg(long)]
    no_compression: bool,
}

/// The `sms` bench's options.
#[derive(clap::Args, Clone)]
struct SmsBenchArgs {
    /// The SMPP simulator (its HTTP control port is one above).
    #[arg(long, env = "FLOODCMD_SMSC", default_value = "127.0.0.1:12775")]
    smsc: String,
    /// Distinct recipients, one message each.
    #[arg(long, default_value_t = 10_000)]
    recipients: usize,
    /// The rate limit of the limited run, submits per second.
    #[arg(long, default_value_t = 1_000.0)]
    sms_rate: f64,
    /// Sends in flight at once (the alerts outbox's concurrency).
    #[arg(long, default_value_t = 1_000)]
    sms_concurrency: usize,
}

#[derive(Clone, Copy, ValueEnum)]
enum SimTarget {
    Http,
    Mqtt,
    Kafka,
}

#[derive(Subcommand)]
enum Command {
    /// Run a simulated storm through the whole pipeline in one process, with the command wall.
    Demo {
        /// Port of the command wall.
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1")]
        bind: std::net::IpAddr,
        /// Simulated seconds per real second.
        #[arg(long, default_value_t = 60.0)]
        speed: f64,
        /// Stop after this many seconds (runs until Ctrl-C without it).
        #[arg(long)]
        duration: Option<u64>,
        /// District file (the sample 新城区 compiled into the binary without it).
        #[arg(long)]
        district: Option<String>,
        /// Fraction of readings the simulated devices send as "NaN" (a failed probe).
        #[arg(long, default_value_t = 0.002)]
        nan_rate: f64,
        /// Camera streams served at /cameras/ (scripts/cameras.sh writes them there).
        #[arg(long, default_value = ".cache/cameras")]
        cameras_dir: String,
    },
    /// Run every stage (ingest, stream, alerts, dashboard, and the influx sink when
    /// sink_influx.url is set) in this process against the bus the settings name (Kafka with
    /// --kafka).
    Run(StageArgs),
    /// Run the ingest gateway (HTTP, and MQTT when ingest.mqtt is set).
    Ingest(StageArgs),
    /// Run the stream stage (timely dataflow).
    Stream(StageArgs),
    /// Run the alerts stage.
    Alerts(StageArgs),
    /// Run the command wall.
    Dashboard(StageArgs),
    /// Run the time-series sink: readings, point states and alerts to an InfluxDB v2 write API
    /// (sink_influx.url in the settings, or FLOODCMD_SINK_INFLUX_URL).
    SinkInflux(StageArgs),
    /// Simulated sensors as a load and fault source.
    Sim {
        #[command(flatten)]
        stage: StageArgs,
        /// Where the readings go: the HTTP gateway, the MQTT broker, or straight to Kafka.
        #[arg(long, value_enum, default_value = "http")]
        target: SimTarget,
        /// Gateway URL (http target); defaults to the settings' ingest.listen.
        #[arg(long)]
        url: Option<String>,
        /// Device token: the bearer token (http target), or the password of device `sim` at
        /// the broker (mqtt target).
        #[arg(long, env = "FLOODCMD_SIM_TOKEN")]
        token: Option<String>,
        /// Use a synthetic district of this many depth sensors (the settings' district without it).
        #[arg(long)]
        sensors: Option<usize>,
        /// Readings per second, over all sensors.
        #[arg(long, default_value_t = 100.0)]
        rate: f64,
        /// Seconds to run.
        #[arg(long, default_value_t = 60)]
        duration: u64,
        /// Fraction of readings dropped.
        #[arg(long, default_value_t = 0.0)]
        dropout: f64,
        /// Fraction of depth readings with a 40 cm spike.
        #[arg(long, default_value_t = 0.0)]
        spikes: f64,
        /// Chance per report that a depth sensor freezes for 30 reports.
        #[arg(long, default_value_t = 0.0)]
        stuck: f64,
        /// Clock skew per sensor, up to this many seconds either way.
        #[arg(long, default_value_t = 0.0)]
        skew: f64,
        /// Fraction of readings sent twice.
        #[arg(long, default_value_t = 0.0)]
        duplicates: f64,
        /// Shuffle readings within each delivery.
        #[arg(long)]
        reorder: bool,
        /// Fraction of readings sent as "NaN".
        #[arg(long, default_value_t = 0.0)]
        nan: f64,
        /// RNG seed.
        #[arg(long, default_value_t = 2026)]
        seed: u64,
    },
    /// Measure: `kafka-ceiling` (raw librdkafka) or `gateway` (HTTP ingest → Kafka). Writes
    /// JSON and Markdown to --out and prints the table.
    Bench {
        /// The scenario.
        #[arg(value_enum)]
        scenario: BenchScenario,
        /// Kafka bootstrap servers.
        #[arg(long, env = "FLOODCMD_KAFKA", default_value = "127.0.0.1:19092")]
        kafka: String,
        /// Records (readings) to send.
        #[arg(long, default_value_t = 1_000_000)]
        records: u64,
        /// Readings per HTTP request (gateway).
        #[arg(long, default_value_t = 5_000)]
        batch: usize,
        /// Concurrent HTTP clients (gateway).
        #[arg(long, default_value_t = 4)]
        clients: usize,
        /// Depth sensors of the synthetic district (stream scenarios).
        #[arg(long, default_value_t = 10_000)]
        sensors: usize,
        /// stream-kafka only: a librdkafka setting, KEY=VALUE (repeatable), given to every
        /// Kafka client of the run, the stage's and the raw ceiling's and pipe's alike, over
        /// their tunable defaults (what each rests on, its group, commits, idempotence and
        /// acks, is set after them): a tuning tried against peers that have it too, without a
        /// rebuild.
        #[arg(long = "kafka-setting", value_name = "KEY=VALUE", value_parser = kafka_setting)]
        kafka_settings: Vec<(String, String)>,
        #[command(flatten)]
        sms: SmsBenchArgs,
        #[command(flatten)]
        fanout: FanoutBenchArgs,
        #[command(flatten)]
        pipeline: PipelineBenchArgs,
        /// Where the JSON and Markdown go.
        #[arg(long, default_value = "target/bench")]
        out: PathBuf,
    },
    /// Turn a real recorded storm (--data, else $FLOODCMD_DATA_DIR, else the copy in data/)
    /// into a district config and an archive.
    Import {
        /// Which data set.
        #[arg(value_enum)]
        source: storm_commands::ImportSource,
        /// The data root (holding floodnet-nyc/ and harvey-hcfcd-5min/).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Start of the range (RFC 3339); default: the storm's.
        #[arg(long)]
        from: Option<String>,
        /// End of the range (RFC 3339).
        #[arg(long)]
        to: Option<String>,
        /// Only these sensors (FloodNet ids) or sites (HCFCD numbers); repeatable.
        #[arg(long = "only")]
        only: Vec<String>,
        /// Where the district config goes.
        #[arg(long)]
        out_config: PathBuf,
        /// Where the archive goes.
        #[arg(long)]
        out_archive: PathBuf,
    },
    /// Export the readings with event time in [--from, --to) on the readings topic of the
    /// bus the settings name (Kafka with --kafka) to an archive, with the settings' district.
    Archive {
        #[command(flatten)]
        stage: StageArgs,
        /// Start of the range, inclusive (RFC 3339, e.g. 2026-07-20T00:00:00Z).
        #[arg(long)]
        from: String,
        /// End of the range, exclusive (RFC 3339).
        #[arg(long)]
        to: String,
        /// Where the archive goes.
        #[arg(long)]
        out: PathBuf,
    },
    /// Replay an archive, or a time range of the readings topic (--kafka-from, --kafka-to with
    /// --config/--kafka), through the stream dataflow and the incident book in isolation
    /// (notifications captured as drill, never sent) and write a storm report.
    #[command(group(clap::ArgGroup::new("input").required(true).args(["archive", "kafka_from"])))]
    Replay {
        /// The archive (`floodcmd import` or `floodcmd archive` writes one).
        #[arg(conflicts_with = "kafka_to")]
        archive: Option<PathBuf>,
        /// Replay the readings with event time from this time (RFC 3339) on the settings' bus
        /// instead of an archive.
        #[arg(long, requires = "kafka_to")]
        kafka_from: Option<String>,
        /// End of that range, exclusive (RFC 3339).
        #[arg(long, requires = "kafka_from")]
        kafka_to: Option<String>,
        /// Settings and Kafka for --kafka-from/--kafka-to.
        #[command(flatten)]
        stage: StageArgs,
        /// Timely workers.
        #[arg(long, default_value_t = 2)]
        workers: usize,
        /// The stream stage's lateness budget, s.
        #[arg(long, default_value_t = 10)]
        lateness_s: u64,
        /// `max` (as fast as the pipeline goes, deterministic) or N× real time (e.g. 60).
        #[arg(long, default_value = "max")]
        speed: String,
        /// With a paced speed: serve a command wall of the replay here (e.g. 127.0.0.1:8090).
        #[arg(long)]
        wall: Option<std::net::SocketAddr>,
        /// Where storm-report.md and storm-report.json go.
        #[arg(long, default_value = "target/replay")]
        out: PathBuf,
    },
    /// Check a district file (or a settings file); list every problem with its field path.
    CheckConfig {
        /// The file.
        file: PathBuf,
    },
}

fn load_district(spec: Option<&str>) -> Result<Arc<District>> {
    let (name, text) = match spec {
        Some(s) if s.starts_with("synthetic:") => {
            let n: usize = s["synthetic:".len()..]
                .parse()
                .with_context(|| format!("{s}: synthetic:N needs a number"))?;
            return District::from_file(synthetic_district(n))
                .map(Arc::new)
                .map_err(|e| anyhow::anyhow!("{s}: {e}"));
        }
        Some(p) => (
            p.to_string(),
            std::fs::read_to_string(p).with_context(|| format!("reading {p}"))?,
        ),
        None => (
            "built-in xincheng.toml".to_string(),
            floodcmd::XINCHENG_TOML.to_string(),
        ),
    };
    District::from_toml_str(&text)
        .map(Arc::new)
        .map_err(|e| anyhow::anyhow!("{name} is not a valid district:\n{e}"))
}

fn load_settings(path: &PathBuf) -> Result<Settings> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Settings::load(&text, std::env::vars())
        .map_err(|e| anyhow::anyhow!("{} is not valid:\n{e}", path.display()))
}

fn check_config(file: &PathBuf) -> Result<bool> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let is_district = text
        .parse::<toml::Table>()
        .map(|t| t.contains_key("points"))
        .unwrap_or(true);
    let result = if is_district {
        District::from_toml_str(&text).map(|d| d.summary())
    } else {
        Settings::load(&text, std::env::vars()).map(|s| {
            format!(
                "settings (bus {:?}, prefix {}, {} stream workers)",
                s.bus.kind, s.bus.prefix, s.stream.workers
            )
        })
    };
    match result {
        Ok(summary) => {
            println!("{}: ok: {summary}", file.display());
            Ok(true)
        }
        Err(errors) => {
            eprintln!("{}: {} problem(s):", file.display(), errors.0.len());
            for p in &errors.0 {
                eprintln!("  {p}");
            }
            Ok(false)
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn demo(
    port: u16,
    bind: std::net::IpAddr,
    speed: f64,
    duration: Option<u64>,
    district: Option<String>,
    nan_rate: f64,
    cameras_dir: String,
) -> Result<()> {
    anyhow::ensure!(
        speed.is_finite() && speed > 0.0 && speed <= 10_000.0,
        "--speed must be between 0 and 10000, got {speed}"
    );
    anyhow::ensure!(
        (0.0..=1.0).contains(&nan_rate),
        "--nan-rate must be a fraction from 0 to 1, got {nan_rate}"
    );
    let district = load_district(district.as_deref())?;
    let mut opts = PipelineOptions::new(district.clone());
    opts.dashboard = (bind, port).into();
    opts.speed = speed;
    opts.simulate = true;
    opts.faults = FaultConfig {
        nan_rate,
        ..FaultConfig::default()
    };
    let users = floodcmd_dashboard::auth::demo_users();
    opts.wall.users = users.iter().map(|(u, _)| u.clone()).collect();
    opts.wall.cameras_dir = cameras_dir.clone();
    let pipeline = Pipeline::start(opts)
        .await
        .context("starting the pipeline")?;
    println!(
        "floodcmd demo: {} — simulated storm at {speed}× speed",
        district.summary()
    );
    println!("command wall:   http://{}/", pipeline.dashboard_addr);
    println!(
        "ingest gateway: http://{}/v1/readings",
        pipeline.ingest_addr
    );
    println!("wall logins (made up for this run; viewers see phone numbers masked):");
    for (u, password) in &users {
        println!(
            "  user {} role {} password {password}",
            u.name,
            u.role.as_str()
        );
    }
    println!("cameras:        {cameras_dir} (live test streams: scripts/cameras.sh start)");
    wait_for_end(duration).await;
    let r = &pipeline.sim_report;
    println!(
        "stopping: {} readings generated, {} accepted, {} rejected",
        r.generated.load(Relaxed),
        r.accepted.load(Relaxed),
        r.rejected.load(Relaxed)
    );
    pipeline.stop().await;
    Ok(())
}

async fn wait_for_end(duration: Option<u64>) {
    match duration {
        Some(s) => tokio::time::sleep(Duration::from_secs(s)).await,
        None => {
            #[cfg(unix)]
            {
                let mut term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                        .expect("SIGTERM handler");
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            #[cfg(not(unix))]
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Which {
    All,
    Ingest,
    Stream,
    Alerts,
    Dashboard,
    SinkInflux,
}

async fn stage(which: Which, args: StageArgs) -> Result<()> {
    let settings = load_settings(&args.config)?;
    let district = load_district(Some(&settings.district.file))?;
    let topics = Topics::new(settings.bus.prefix.clone());
    let connected = stages::connect_bus(&settings.bus, args.kafka.as_deref(), &topics)
        .await
        .context("connecting to the bus")?;
    let (shutdown, rx) = watch::channel(false);
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let ctx = StageContext {
        bus: connected.bus,
        district,
        clock,
        topics,
        shutdown: rx,
    };
    let mut tasks = Vec::new();
    let mut stream = None;
    if matches!(which, Which::All | Which::Dashboard) {
        let listen = settings
            .dashboard
            .listen
            .parse()
            .context("dashboard.listen")?;
        let (addr, h) = stages::start_dashboard(&ctx, listen, &settings.dashboard).await?;
        println!("command wall:   http://{addr}/");
        tasks.push(h);
    }
    if matches!(which, Which::All | Which::Alerts) {
        tasks.push(stages::start_alerts(
            &ctx,
            &settings.alerts,
            Some(PathBuf::from(&settings.district.file)),
        ));
        // The outbox sender runs beside the alerts stage; a drill never starts one.
        match floodcmd::sms_sink::dispatcher_from(&settings.sms).context("[sms]")? {
            Some(d) if !settings.alerts.drill => {
                println!("SMS gateways:   {}", d.gateways().join(" → "));
                tasks.push(stages::start_sender(
                    &ctx,
                    &settings.alerts,
                    Arc::new(floodcmd::sms_sink::DispatcherSink(d)),
                ));
            }
            Some(_) => println!("SMS gateways configured but not used: this is a drill"),
            None => {
                tracing::warn!(
                    "no [[sms.gateways]] configured: notifications stay in the outbox unsent"
                );
                println!("SMS: no gateway configured; notifications stay in the outbox unsent");
            }
        }
        println!(
            "alerts stage running{}",
            if settings.alerts.drill {
                " (drill: nothing is sent)"
            } else {
                ""
            }
        );
    }
    if matches!(which, Which::All | Which::Stream) {
        let rebuild =
            (settings.stream.rebuild_h > 0).then_some(settings.stream.rebuild_h as i64 * 3_600_000);
        let addresses = settings.stream.cluster_addresses();
        let cluster = (!addresses.is_empty()).then_some(floodcmd_stream::Cluster {
            process: settings.stream.process,
            addresses,
        });
        stream = Some(
            stages::start_stream(
                &ctx,
                settings.stream.workers,
                settings.stream.lateness_s as i64 * 1000,
                rebuild,
                cluster.clone(),
            )
            .await?,
        );
        match &cluster {
            None => println!(
                "stream stage running with {} workers",
                settings.stream.workers
            ),
            Some(c) => println!(
                "stream stage running with {} workers, process {} of a cluster of {}",
                settings.stream.workers,
                c.process,
                c.addresses.len()
            ),
        }
    }
    if matches!(which, Which::All | Which::Ingest) {
        let listen = settings.ingest.listen.parse().context("ingest.listen")?;
        let access = stages::access_from(&settings.ingest, &ctx.district)?;
        let (addr, hs) = stages::start_ingest(&ctx, &settings.ingest, listen, access).await?;
        println!("ingest gateway: http://{addr}/v1/readings");
        if !settings.ingest.mqtt.is_empty() {
            println!(
                "ingest MQTT:    {} {}/#",
                settings.ingest.mqtt, settings.ingest.mqtt_prefix
            );
        }
        tasks.extend(hs);
    }
    if matches!(which, Which::All | Which::SinkInflux) {
        let si = &settings.sink_influx;
        if !si.url.is_empty() {
            tasks.push(stages::start_sink_influx(&ctx, si)?);
            println!(
                "influx sink:    {} (org {}, bucket {})",
                si.url, si.org, si.bucket
            );
        } else if which == Which::SinkInflux {
            anyhow::bail!(
                "sink_influx.url is empty: set it in {} or FLOODCMD_SINK_INFLUX_URL",
                args.config.display()
            );
        }
    }
    wait_for_end(None).await;
    // The stream stage first, while the stages reading its outputs still run.
    if let Some(s) = stream {
        s.stop();
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || s.join()).await {
            tracing::error!(error = %e, "stream stage ended with an error");
        }
    }
    let _ = shutdown.send(true);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn sim(cmd: Command) -> Result<()> {
    let Command::Sim {
        stage,
        target,
        url,
        token,
        sensors,
        rate,
        duration,
        dropout,
        spikes,
        stuck,
        skew,
        duplicates,
        reorder,
        nan,
        seed,
    } = cmd
    else {
        unreachable!("called with the sim command")
    };
    anyhow::ensure!(
        rate > 0.0 && rate.is_finite(),
        "--rate must be positive, got {rate}"
    );
    let settings = load_settings(&stage.config)?;
    let district = match sensors {
        Some(n) => load_district(Some(&format!("synthetic:{n}")))?,
        None => load_district(Some(&settings.district.file))?,
    };
    let n = district.sensors().count() as f64;
    let interval_ms = ((n / rate) * 1000.0).max(1.0) as i64;
    let topics = Topics::new(settings.bus.prefix.clone());
    let target = match target {
        SimTarget::Http => Target::Http {
            url: url.unwrap_or_else(|| format!("http://{}", settings.ingest.listen)),
            token,
        },
        SimTarget::Mqtt => {
            let (host, port) = settings
                .ingest
                .mqtt
                .rsplit_once(':')
                .unwrap_or(("127.0.0.1", "18830"));
            Target::Mqtt {
                host: host.into(),
                port: port.parse().context("ingest.mqtt port")?,
                prefix: settings.ingest.mqtt_prefix.clone(),
                device: "sim".into(),
                token,
            }
        }
        SimTarget::Kafka => {
            let connected = stages::connect_bus(
                &settings.bus,
                Some(stage.kafka.as_deref().unwrap_or(&settings.bus.bootstrap)),
                &topics,
            )
            .await?;
            Target::Bus {
                producer: connected.bus.producer(),
                topics,
            }
        }
    };
    // Real time: a gateway refuses readings stamped ahead of its clock.
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let faults = FaultConfig {
        nan_rate: nan,
        dropout_rate: dropout,
        spike_rate: spikes,
        stuck_rate: stuck,
        skew_s: skew,
        duplicate_rate: duplicates,
        reorder,
        ..FaultConfig::default()
    };
    let report = Arc::new(SimReport::default());
    let (tx, rx) = watch::channel(false);
    let task = tokio::spawn(run_sim(
        district.clone(),
        clock,
        SimConfig {
            target,
            seed,
            faults,
            interval_ms,
            tick: Duration::from_millis(100),
        },
        report.clone(),
        rx,
    ));
    eprintln!(
        "sim: {} sensors, one reading each {} ms of storm time, for {duration} s",
        n, interval_ms
    );
    tokio::time::sleep(Duration::from_secs(duration)).await;
    let _ = tx.send(true);
    let _ = task.await;
    println!(
        "sim: {} generated, {} accepted, {} rejected, {} failed deliveries",
        report.generated.load(Relaxed),
        report.accepted.load(Relaxed),
        report.rejected.load(Relaxed),
        report.failed_posts.load(Relaxed)
    );
    Ok(())
}

/// One `--kafka-setting`: `KEY=VALUE`, the key not empty (librdkafka judges both when the
/// clients are made, and names what it refuses).
fn kafka_setting(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_string(), value.to_string()))
        }
        _ => Err(format!(
            "{s:?}: a Kafka setting is KEY=VALUE, e.g. queued.min.messages=10000"
        )),
    }
}

// One parameter per option group of `floodcmd bench`; each scenario takes its own below.
#[allow(clippy::too_many_arguments)]
async fn bench(
    scenario: BenchScenario,
    kafka: String,
    records: u64,
    batch: usize,
    clients: usize,
    sensors: usize,
    kafka_settings: Vec<(String, String)>,
    sms: SmsBenchArgs,
    fanout: FanoutBenchArgs,
    pipeline: PipelineBenchArgs,
) -> Result<floodcmd_benches::report::Report> {
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    if !kafka_settings.is_empty() && !matches!(scenario, BenchScenario::StreamKafka) {
        // Taken and dropped without a word, a tuning would seem to have changed nothing.
        anyhow::bail!("--kafka-setting is for `bench stream-kafka` only");
    }
    let report = match scenario {
        BenchScenario::KafkaCeiling => {
            let k = kafka.clone();
            tokio::task::spawn_blocking(move || {
                floodcmd_benches::kafka::ceiling(&k, records, &command)
            })
            .await??
            .0
        }
        BenchScenario::Gateway => {
            floodcmd_benches::gateway::throughput(&kafka, records, batch, clients, &command).await?
        }
        BenchScenario::StreamCore => {
            floodcmd_benches::stream_core::throughput(sensors, records, &command).await?
        }
        BenchScenario::StreamKafka => {
            floodcmd_benches::stream_core::kafka_throughput(
                &kafka,
                sensors,
                records,
                &kafka_settings,
                &command,
            )
            .await?
        }
        BenchScenario::StreamMemory => {
            floodcmd_benches::stream_core::memory(sensors, &command).await?
        }
        BenchScenario::InfluxSink => {
            let url = std::env::var("FLOODCMD_INFLUX")
                .unwrap_or_else(|_| "http://127.0.0.1:18428".into());
            floodcmd_benches::influx_sink::throughput(&url, records, sensors, batch, 2, &command)
                .await?
        }
        BenchScenario::Sms => {
            floodcmd_benches::sms::mass_alert(
                &sms.smsc,
                sms.recipients,
                sms.sms_rate,
                sms.sms_concurrency,
                &command,
            )
            .await?
        }
        BenchScenario::Fanout => bench_fanout(clients, sensors, fanout, &command).await?,
        BenchScenario::Replay => {
            bench_pipeline::replay(sensors, pipeline.hours, pipeline.workers, &command).await?
        }
        BenchScenario::PipelineEmbedded | BenchScenario::PipelineKafka => {
            let opts = floodcmd_benches::pipeline::PipelineOptions {
                rate: fanout.rate,
                duration_s: fanout.duration,
                clients,
                alert_every: pipeline.alert_every,
                search: pipeline
                    .search
                    .then_some(floodcmd_benches::pipeline::Search {
                        factor: pipeline.factor.max(1.05),
                        max_rate: pipeline.max_rate,
                    }),
            };
            if matches!(scenario, BenchScenario::PipelineEmbedded) {
                bench_pipeline::embedded(sensors, fanout.lateness_ms, opts, &command).await?
            } else {
                bench_pipeline::kafka(&kafka, sensors, fanout.lateness_ms, records, opts, &command)
                    .await?
            }
        }
    };
    Ok(report)
}

/// Start the whole pipeline on the embedded bus with no simulator, then drive it.
async fn bench_fanout(
    clients: usize,
    sensors: usize,
    args: FanoutBenchArgs,
    command: &str,
) -> Result<floodcmd_benches::report::Report> {
    let district = Arc::new(
        District::from_file(synthetic_district(sensors))
            .map_err(|e| anyhow::anyhow!("synthetic:{sensors}: {e}"))?,
    );
    let mut opts = PipelineOptions::new(district.clone());
    opts.lateness_ms = Some(args.lateness_ms);
    let pipeline = Pipeline::start(opts).await?;
    let target = floodcmd_benches::fanout::FanoutTarget {
        dashboard: pipeline.dashboard_addr,
        ingest: pipeline.ingest_addr,
        device_token: pipeline.device_token.clone(),
        bus: Arc::new(pipeline.bus.clone()),
        topics: pipeline.topics.clone(),
        district,
        lateness_ms: args.lateness_ms,
    };
    let result = floodcmd_benches::fanout::run(
        target,
        floodcmd_benches::fanout::FanoutOptions {
            clients,
            measured: args.measured_clients,
            rate: args.rate,
            duration_s: args.duration,
            deflate: !args.no_compression,
        },
        command,
    )
    .await;
    pipeline.stop().await;
    Ok(result?)
}

fn write_report(report: &floodcmd_benches::report::Report, out: &std::path::Path) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let stem = out.join(&report.scenario);
    std::fs::write(
        stem.with_extension("json"),
        serde_json::to_string_pretty(report)?,
    )?;
    std::fs::write(stem.with_extension("md"), report.markdown())?;
    println!("{}", report.markdown());
    Ok(())
}

fn main() -> Result<()> {
    hold_freed_memory();
    no_transparent_huge_pages();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FLOODCMD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let rt = || {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    };
    match cli.command {
        Command::CheckConfig { file } => {
            if !check_config(&file)? {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Demo {
            port,
            bind,
            speed,
            duration,
            district,
            nan_rate,
            cameras_dir,
        } => rt()?.block_on(demo(
            port,
            bind,
            speed,
            duration,
            district,
            nan_rate,
            cameras_dir,
        )),
        Command::Import {
            source,
            data,
            from,
            to,
            only,
            out_config,
            out_archive,
        } => storm_commands::import(source, data, from, to, only, &out_config, &out_archive),
        Command::Archive {
            stage,
            from,
            to,
            out,
        } => rt()?.block_on(storm_commands::archive(
            &stage.config,
            stage.kafka.as_deref(),
            &from,
            &to,
            &out,
        )),
        Command::Replay {
            archive,
            kafka_from,
            kafka_to,
            stage,
            workers,
            lateness_s,
            speed,
            wall,
            out,
        } => {
            let input = match (archive, kafka_from, kafka_to) {
                (Some(path), None, None) => storm_commands::ReplayInput::Archive(path),
                (None, Some(from), Some(to)) => storm_commands::ReplayInput::Bus {
                    settings: stage.config,
                    kafka: stage.kafka,
                    from,
                    to,
                },
                // clap's rules above already refuse these; keep the message if they change.
                _ => anyhow::bail!(
                    "replay takes either an archive or --kafka-from and --kafka-to, not both"
                ),
            };
            rt()?.block_on(storm_commands::replay_input(
                input, workers, lateness_s, &speed, wall, &out,
            ))
        }
        Command::Run(a) => rt()?.block_on(stage(Which::All, a)),
        Command::Ingest(a) => rt()?.block_on(stage(Which::Ingest, a)),
        Command::Stream(a) => rt()?.block_on(stage(Which::Stream, a)),
        Command::Alerts(a) => rt()?.block_on(stage(Which::Alerts, a)),
        Command::Dashboard(a) => rt()?.block_on(stage(Which::Dashboard, a)),
        Command::SinkInflux(a) => rt()?.block_on(stage(Which::SinkInflux, a)),
        cmd @ Command::Sim { .. } => rt()?.block_on(sim(cmd)),
        Command::Bench {
            scenario,
            kafka,
            records,
            batch,
            clients,
            sensors,
            kafka_settings,
            sms,
            fanout,
            pipeline,
            out,
        } => {
            let report = rt()?.block_on(bench(
                scenario,
                kafka,
                records,
                batch,
                clients,
                sensors,
                kafka_settings,
                sms,
                fanout,
                pipeline,
            ))?;
            write_report(&report, &out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{
        allow_thp_set, hold_freed_memory, kafka_setting, no_transparent_huge_pages,
        MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS,
    };

    #[test]
    fn a_kafka_setting_is_key_equals_value_and_a_bad_one_is_named() {
        assert_eq!(
            kafka_setting("queued.min.messages=10000"),
            Ok(("queued.min.messages".into(), "10000".into()))
        );
        // A value may hold '=' (a SASL JAAS line does).
        assert_eq!(
            kafka_setting("sasl.oauthbearer.config=scope=a"),
            Ok(("sasl.oauthbearer.config".into(), "scope=a".into()))
        );
        for bad in ["queued.min.messages", "=10000", " =1"] {
            let e = kafka_setting(bad).expect_err(bad);
            assert!(e.contains(&format!("{bad:?}")), "{e}");
            assert!(e.contains("KEY=VALUE"), "{e}");
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn huge_pages_are_off_unless_mimalloc_s_variable_says_otherwise() {
        let set = allow_thp_set();
        // SAFETY: reads the process's huge-page policy.
        let disabled = || unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) };
        let before = disabled();
        no_transparent_huge_pages();
        if set {
            assert_eq!(
                disabled(),
                before,
                "the variable was set: the policy is mimalloc's"
            );
        } else {
            assert_eq!(disabled(), 1, "transparent huge pages are still allowed");
        }
    }

    #[test]
    fn the_c_code_s_malloc_and_free_are_mimalloc_s() {
        // SAFETY: one block from the C allocator, checked while live and freed once by the
        // same interface.
        unsafe {
            let block = libc::malloc(64);
            assert!(!block.is_null());
            // glibc's block would lie outside every mimalloc arena: librdkafka's messages
            // would be allocated and freed under glibc's arena locks again.
            assert!(
                libmimalloc_sys::mi_is_in_heap_region(block),
                "malloc is not mimalloc's: the `override` feature is off"
            );
            libc::free(block);
        }
    }

    #[test]
    fn the_purge_delay_set_is_mimalloc_s_purge_delay() {
        let get = || {
            // SAFETY: reads one of mimalloc's global options.
            unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) }
        };
        // An option mimalloc read from its environment (`mimalloc_*` in any case) stays.
        if std::env::vars_os().any(|(k, _)| {
            k.to_str()
                .is_some_and(|k| k.to_ascii_lowercase().starts_with("mimalloc_"))
        }) {
            return;
        }
        // v3's default purge delay, which no other option of v3 has: a wrong place would
        // read another option's value here.
        assert_eq!(get(), 1_000);
        hold_freed_memory();
        assert_eq!(get(), PURGE_DELAY_MS);
    }
}

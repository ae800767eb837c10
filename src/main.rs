//! The `floodcmd` command line.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use floodcmd::pipeline::{Pipeline, PipelineOptions};
use floodcmd_model::District;
use floodcmd_sim::FaultConfig;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

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
        district: Option<PathBuf>,
        /// Fraction of readings the simulated devices send as "NaN" (a failed probe).
        #[arg(long, default_value_t = 0.002)]
        nan_rate: f64,
    },
    /// Check a district file (or a settings file); list every problem with its field path.
    CheckConfig {
        /// The file.
        file: PathBuf,
    },
}

fn load_district(path: Option<&PathBuf>) -> Result<Arc<District>> {
    let (name, text) = match path {
        Some(p) => (
            p.display().to_string(),
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
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

fn check_config(file: &PathBuf) -> Result<bool> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let is_district = text
        .parse::<toml::Table>()
        .map(|t| t.contains_key("points"))
        .unwrap_or(true);
    if is_district {
        match District::from_toml_str(&text) {
            Ok(d) => {
                println!("{}: ok: {}", file.display(), d.summary());
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
    } else {
        match floodcmd_model::settings::Settings::load(&text, std::env::vars()) {
            Ok(s) => {
                println!(
                    "{}: ok: settings (bus {:?}, prefix {}, {} stream workers)",
                    file.display(),
                    s.bus.kind,
                    s.bus.prefix,
                    s.stream.workers
                );
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
}

async fn demo(
    port: u16,
    bind: std::net::IpAddr,
    speed: f64,
    duration: Option<u64>,
    district: Option<PathBuf>,
    nan_rate: f64,
) -> Result<()> {
    anyhow::ensure!(
        speed.is_finite() && speed > 0.0 && speed <= 10_000.0,
        "--speed must be between 0 and 10000, got {speed}"
    );
    anyhow::ensure!(
        (0.0..=1.0).contains(&nan_rate),
        "--nan-rate must be a fraction from 0 to 1, got {nan_rate}"
    );
    let district = load_district(district.as_ref())?;
    let mut opts = PipelineOptions::new(district.clone());
    opts.dashboard = (bind, port).into();
    opts.speed = speed;
    opts.simulate = true;
    opts.faults = FaultConfig {
        nan_rate,
        future_rate: 0.0,
    };
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
    let wait = async {
        match duration {
            Some(s) => tokio::time::sleep(Duration::from_secs(s)).await,
            None => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    };
    wait.await;
    let r = &pipeline.sim_report;
    use std::sync::atomic::Ordering::Relaxed;
    println!(
        "stopping: {} readings generated, {} accepted, {} rejected",
        r.generated.load(Relaxed),
        r.accepted.load(Relaxed),
        r.rejected.load(Relaxed)
    );
    pipeline.stop().await;
    Ok(())
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FLOODCMD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
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
        } => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(demo(port, bind, speed, duration, district, nan_rate))
        }
    }
}

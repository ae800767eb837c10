//! `floodcmd import`, `floodcmd archive` and `floodcmd replay`: real recorded storms (or a time
//! range of the live readings topic) into an archive, and an archive (or a topic range)
//! through the pipeline into a storm report.

use anyhow::{Context, Result};
use floodcmd::archive_export::{export_from, readings_from_bus};
use floodcmd::progress::Progress;
use floodcmd::replay::{replay, ReplayOptions};
use floodcmd::stages;
use floodcmd_archive::{ArchiveHeader, ArchiveReader, ArchiveWriter};
use floodcmd_import::Imported;
use floodcmd_model::bus::Bus;
use floodcmd_model::time::{rfc3339, Millis};
use floodcmd_model::topic::Topics;
use floodcmd_model::District;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Which public data set.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum ImportSource {
    /// NYC FloodNet street flood depth (flood events + sensor metadata); default range:
    /// Hurricane Ida, 2021-09-01/02.
    Floodnet,
    /// Harris County Flood Control District 5-minute rain gauges, Hurricane Harvey 2017.
    Hcfcd,
}

fn parse_time(s: &str) -> Result<Millis> {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp_millis())
        .with_context(|| format!("{s}: not an RFC 3339 time (e.g. 2021-09-01T00:00:00Z)"))
}

/// `floodcmd import`.
pub fn import(
    source: ImportSource,
    data: Option<PathBuf>,
    from: Option<String>,
    to: Option<String>,
    only: Vec<String>,
    out_config: &Path,
    out_archive: &Path,
) -> Result<()> {
    let root = data
        .or_else(|| std::env::var_os("FLOODCMD_DATA_DIR").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("data"));
    let only = (!only.is_empty()).then_some(only);
    let mut progress = Progress::new("import");
    let mut tell = |done: u64, total: Option<u64>| progress.update(done, total);
    // A narrowed range says so in the archive's source, whichever data set.
    let from_ms = from.as_deref().map(parse_time).transpose()?;
    let to_ms = to.as_deref().map(parse_time).transpose()?;
    let label = |name: &str| {
        format!(
            "{name} {}..{}",
            from.as_deref().unwrap_or("start"),
            to.as_deref().unwrap_or("end")
        )
    };
    let narrowed = from.is_some() || to.is_some();
    let imported: Imported = match source {
        ImportSource::Floodnet => {
            let mut f = floodcmd_import::floodnet::FloodnetFilter::ida_2021();
            f.from_ms = from_ms.unwrap_or(f.from_ms);
            f.to_ms = to_ms.unwrap_or(f.to_ms);
            if narrowed {
                f.label = label("FloodNet");
            }
            f.sensors = only;
            floodcmd_import::floodnet::import(&root.join("floodnet-nyc"), f, &mut tell)?
        }
        ImportSource::Hcfcd => {
            let mut f = floodcmd_import::hcfcd::HcfcdFilter::harvey_2017();
            f.from_ms = from_ms.unwrap_or(f.from_ms);
            f.to_ms = to_ms.unwrap_or(f.to_ms);
            if narrowed {
                f.label = label("HCFCD");
            }
            f.sites = only;
            floodcmd_import::hcfcd::import(&root.join("harvey-hcfcd-5min"), f, &mut tell)?
        }
    };
    progress.finish();
    std::fs::write(out_config, &imported.district_toml)
        .with_context(|| format!("writing {}", out_config.display()))?;
    let header = ArchiveHeader::new(
        imported.source.clone(),
        imported.district.info.name.clone(),
        imported.district_toml.clone(),
        chrono::Utc::now().timestamp_millis(),
    );
    let mut w = ArchiveWriter::create(out_archive, header)?;
    let mut progress = Progress::new("archive");
    let total = imported.readings.len() as u64;
    for (i, r) in imported.readings.iter().enumerate() {
        w.write(r)?;
        if i % 10_000 == 0 {
            progress.update(i as u64, Some(total));
        }
    }
    progress.update(total, Some(total));
    progress.finish();
    let header = w.finish()?;
    println!(
        "{}: {} points, {} readings {} → {}",
        imported.source,
        imported.district.points.len(),
        header.readings,
        floodcmd_model::time::rfc3339(header.from_ms),
        floodcmd_model::time::rfc3339(header.to_ms)
    );
    println!("district config: {}", out_config.display());
    println!("archive:         {}", out_archive.display());
    for n in &imported.notes {
        println!("note: {n}");
    }
    Ok(())
}

/// The settings' district: the validated district and the TOML text an archive embeds.
fn settings_district(spec: &str) -> Result<(Arc<District>, String)> {
    let district = crate::load_district(Some(spec))?;
    let text = match spec.strip_prefix("synthetic:") {
        // load_district parsed the number already.
        Some(n) => toml::to_string(&floodcmd_sim::synthetic_district(n.parse()?))
            .with_context(|| format!("{spec}: writing the synthetic district as TOML"))?,
        None => std::fs::read_to_string(spec).with_context(|| format!("reading {spec}"))?,
    };
    Ok((district, text))
}

/// The bus of a settings file (Kafka at `kafka` when given), its topics and how the archive's
/// source names it.
async fn settings_bus(
    settings_path: &Path,
    kafka: Option<&str>,
) -> Result<(
    floodcmd_model::settings::Settings,
    stages::ConnectedBus,
    Topics,
    String,
)> {
    let settings = crate::load_settings(&settings_path.to_path_buf())?;
    // An embedded bus lives and dies with its process: connecting a new one here would only
    // ever find an empty topic.
    if kafka.is_none() && settings.bus.kind == floodcmd_model::settings::BusKind::Embedded {
        anyhow::bail!(
            "{}: bus.kind is \"embedded\", whose topics exist only inside the process running \
             them; reading a topic range needs Kafka: pass --kafka or set bus.kind = \"kafka\"",
            settings_path.display()
        );
    }
    let topics = Topics::new(settings.bus.prefix.clone());
    let connected = stages::connect_bus(&settings.bus, kafka, &topics)
        .await
        .context("connecting to the bus")?;
    let origin = kafka.unwrap_or(&settings.bus.bootstrap).to_string();
    Ok((settings, connected, topics, origin))
}

/// `floodcmd archive`: the readings with event time in `[from, to)` on the settings' readings
/// topic into the archive `out`, with the settings' district embedded.
pub async fn archive(
    settings_path: &Path,
    kafka: Option<&str>,
    from: &str,
    to: &str,
    out: &Path,
) -> Result<()> {
    let (from_ms, to_ms) = (parse_time(from)?, parse_time(to)?);
    let (settings, connected, topics, origin) = settings_bus(settings_path, kafka).await?;
    let (district, district_toml) = settings_district(&settings.district.file)?;
    let mut progress = Progress::new("reading the topic");
    let exported = export_from(
        &origin,
        &*connected.bus,
        &topics,
        &district_toml,
        &district.info.name,
        from_ms,
        to_ms,
        out,
        &mut |done, total| progress.update(done, total),
    )
    .await?;
    progress.finish();
    let (h, st) = (&exported.header, &exported.stats);
    println!("{}", h.source);
    println!(
        "{} readings {} → {} ({} records read: {} outside the range, {} duplicates dropped, {} undecodable skipped)",
        h.readings,
        rfc3339(h.from_ms),
        rfc3339(h.to_ms),
        st.records,
        st.outside,
        st.duplicates,
        st.undecodable
    );
    if st.deleted > 0 {
        println!(
            "warning: {} records of the range were deleted by the bus (retention) before they could be read; the archive lacks them",
            st.deleted
        );
    }
    if h.readings == 0 {
        println!(
            "note: no readings with event time in the range on {}; check --from/--to and bus.prefix",
            topics.readings()
        );
    }
    println!("archive: {}", out.display());
    Ok(())
}

/// Where `floodcmd replay` takes its readings from.
pub enum ReplayInput {
    /// An archive file.
    Archive(PathBuf),
    /// A time range of the readings topic of the bus the settings name.
    Bus {
        /// Settings file.
        settings: PathBuf,
        /// Kafka bootstrap override.
        kafka: Option<String>,
        /// Start (RFC 3339), inclusive.
        from: String,
        /// End (RFC 3339), exclusive.
        to: String,
    },
}

/// `floodcmd replay`.
pub async fn replay_input(
    input: ReplayInput,
    workers: usize,
    lateness_s: u64,
    speed: &str,
    wall: Option<std::net::SocketAddr>,
    out: &Path,
) -> Result<()> {
    let (settings, kafka, from, to) = match input {
        ReplayInput::Archive(path) => {
            return replay_archive(&path, workers, lateness_s, speed, wall, out).await
        }
        ReplayInput::Bus {
            settings,
            kafka,
            from,
            to,
        } => (settings, kafka, from, to),
    };
    let factor = parse_speed(speed)?;
    let (from_ms, to_ms) = (parse_time(&from)?, parse_time(&to)?);
    let (s, connected, topics, origin) = settings_bus(&settings, kafka.as_deref()).await?;
    let (district, _) = settings_district(&s.district.file)?;
    let mut progress = Progress::new("reading the topic");
    let got = readings_from_bus(&*connected.bus, &topics, from_ms, to_ms, &mut |d, t| {
        progress.update(d, t)
    })
    .await?;
    progress.finish();
    if got.readings.is_empty() {
        anyhow::bail!(
            "no readings with event time in {from}..{to} on {} ({} records read); check the range and bus.prefix",
            got.topic,
            got.stats.records
        );
    }
    let source = floodcmd::archive_export::source_label(&origin, &got.topic, from_ms, to_ms);
    let n = got.readings.len() as u64;
    let how = How {
        workers,
        lateness_s,
        factor,
        wall,
    };
    replay_readings(
        district,
        &source,
        got.readings.into_iter().map(Ok),
        n,
        how,
        out,
    )
    .await
}

/// `max` (None) or a positive factor of real time.
fn parse_speed(speed: &str) -> Result<Option<f64>> {
    match speed {
        "max" => Ok(None),
        s => s
            .parse::<f64>()
            .ok()
            .filter(|f| *f > 0.0 && f.is_finite())
            .map(Some)
            .with_context(|| {
                format!("--speed {s}: `max` or a positive factor of real time, e.g. 60")
            }),
    }
}

/// How to replay: workers, lateness, pace, and a wall to show it on.
struct How {
    workers: usize,
    lateness_s: u64,
    factor: Option<f64>,
    wall: Option<std::net::SocketAddr>,
}

/// Replay an archive file: `speed` is `max` or a factor of real time; `wall`, with a factor,
/// serves a command wall on the replay's bus and clock, marked as a replay.
pub async fn replay_archive(
    archive: &Path,
    workers: usize,
    lateness_s: u64,
    speed: &str,
    wall: Option<std::net::SocketAddr>,
    out: &Path,
) -> Result<()> {
    let factor = parse_speed(speed)?;
    let (header, reader) = ArchiveReader::open(archive)?;
    let district = Arc::new(header.district()?);
    let how = How {
        workers,
        lateness_s,
        factor,
        wall,
    };
    replay_readings(district, &header.source, reader, header.readings, how, out).await
}

async fn replay_readings(
    district: Arc<District>,
    source: &str,
    readings: impl Iterator<Item = Result<floodcmd_model::Reading, floodcmd_archive::ArchiveError>>
        + Send
        + 'static,
    expected: u64,
    how: How,
    out: &Path,
) -> Result<()> {
    let opts = ReplayOptions {
        workers: how.workers,
        lateness_ms: how.lateness_s as Millis * 1000,
        ..ReplayOptions::default()
    };
    let outcome = match how.factor {
        None => {
            if how.wall.is_some() {
                anyhow::bail!("--wall needs a paced replay (--speed N), not --speed max");
            }
            let mut progress = Progress::new("replaying");
            let outcome = replay(
                district.clone(),
                readings,
                expected,
                &opts,
                &mut |done, total| progress.update(done, total),
            )
            .await?;
            progress.finish();
            outcome
        }
        Some(f) => {
            let readings: Vec<_> = readings.collect::<Result<_, _>>()?;
            let from_ms = readings.first().map_or(0, |r| r.ts_ms);
            let on = floodcmd::replay::PacedBus {
                bus: floodcmd_bus::EmbeddedBus::new(readings.len() * 2 + 65_536),
                topics: Topics::new("replay"),
                clock: floodcmd_model::time::ManualClock::new(from_ms),
            };
            let (shutdown, rx) = tokio::sync::watch::channel(false);
            if let Some(addr) = how.wall {
                // The wall says it is a replay in its title, and its clock is the replay's.
                let mut shown = (*district).clone();
                shown.info.name = format!("【复盘 REPLAY ×{f}】{}", shown.info.name);
                for t in on.topics.all() {
                    on.bus.ensure_topic(&t, opts.partitions).await?;
                }
                let ctx = stages::StageContext {
                    bus: Arc::new(on.bus.clone()),
                    district: Arc::new(shown),
                    clock: Arc::new(on.clock.clone()),
                    topics: on.topics.clone(),
                    shutdown: rx.clone(),
                };
                let (addr, _) = stages::start_dashboard(
                    &ctx,
                    addr,
                    &floodcmd_model::settings::DashboardSettings::default(),
                )
                .await?;
                let drill = floodcmd_model::settings::AlertsSettings {
                    drill: true,
                    ..Default::default()
                };
                stages::start_alerts(&ctx, &drill, None);
                println!("command wall (replay): http://{addr}/");
            }
            let mut progress = Progress::new("replaying");
            let outcome = floodcmd::replay::replay_paced(
                district.clone(),
                readings,
                f,
                &opts,
                on,
                &mut |done, total| progress.update(done, total),
            )
            .await?;
            progress.finish();
            let _ = shutdown.send(true);
            outcome
        }
    };
    let report = outcome.report(&district, source, how.workers);
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let json = out.join("storm-report.json");
    let md = out.join("storm-report.md");
    std::fs::write(&json, serde_json::to_string_pretty(&report)?)?;
    std::fs::write(&md, report.markdown())?;
    println!(
        "replayed {} readings in {:.2} s ({:.0} readings/s through the stream stage); {} transitions, {} incidents, {} notifications captured (drill, none sent)",
        outcome.readings,
        outcome.total_s,
        report.run.readings_per_s,
        outcome.transitions.len(),
        outcome.incidents.len(),
        outcome.notifications.len()
    );
    println!("report: {} and {}", md.display(), json.display());
    Ok(())
}

//! `floodcmd import` and `floodcmd replay`: real recorded storms into a district config and an
//! archive, and an archive through the pipeline into a storm report.

use anyhow::{Context, Result};
use floodcmd::progress::Progress;
use floodcmd::replay::{replay, ReplayOptions};
use floodcmd_archive::{ArchiveHeader, ArchiveReader, ArchiveWriter};
use floodcmd_import::Imported;
use floodcmd_model::bus::Bus;
use floodcmd_model::time::Millis;
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
    let imported: Imported = match source {
        ImportSource::Floodnet => {
            let mut f = floodcmd_import::floodnet::FloodnetFilter::ida_2021();
            if let Some(t) = &from {
                f.from_ms = parse_time(t)?;
            }
            if let Some(t) = &to {
                f.to_ms = parse_time(t)?;
            }
            if from.is_some() || to.is_some() {
                f.label = format!(
                    "FloodNet {}..{}",
                    from.as_deref().unwrap_or("start"),
                    to.as_deref().unwrap_or("end")
                );
            }
            f.sensors = only;
            floodcmd_import::floodnet::import(&root.join("floodnet-nyc"), f, &mut tell)?
        }
        ImportSource::Hcfcd => {
            let mut f = floodcmd_import::hcfcd::HcfcdFilter::harvey_2017();
            if let Some(t) = &from {
                f.from_ms = parse_time(t)?;
            }
            if let Some(t) = &to {
                f.to_ms = parse_time(t)?;
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

/// `floodcmd replay`: `speed` is `max` or a factor of real time; `wall`, with a factor, serves
/// a command wall on the replay's bus and clock, marked as a replay.
pub async fn replay_archive(
    archive: &Path,
    workers: usize,
    lateness_s: u64,
    speed: &str,
    wall: Option<std::net::SocketAddr>,
    out: &Path,
) -> Result<()> {
    let factor: Option<f64> = match speed {
        "max" => None,
        s => Some(
            s.parse::<f64>()
                .ok()
                .filter(|f| *f > 0.0 && f.is_finite())
                .with_context(|| {
                    format!("--speed {s}: `max` or a positive factor of real time, e.g. 60")
                })?,
        ),
    };
    let (header, reader) = ArchiveReader::open(archive)?;
    let district = Arc::new(header.district()?);
    let opts = ReplayOptions {
        workers,
        lateness_ms: lateness_s as Millis * 1000,
        ..ReplayOptions::default()
    };
    let outcome = match factor {
        None => {
            if wall.is_some() {
                anyhow::bail!("--wall needs a paced replay (--speed N), not --speed max");
            }
            let mut progress = Progress::new("loading the archive");
            let outcome = replay(
                district.clone(),
                reader,
                header.readings,
                &opts,
                &mut |done, total| progress.update(done, total),
            )
            .await?;
            progress.finish();
            outcome
        }
        Some(f) => {
            let readings: Vec<_> = reader.collect::<Result<_, _>>()?;
            let on = floodcmd::replay::PacedBus {
                bus: floodcmd_bus::EmbeddedBus::new(readings.len() * 2 + 65_536),
                topics: floodcmd_model::topic::Topics::new("replay"),
                clock: floodcmd_model::time::ManualClock::new(header.from_ms),
            };
            let (shutdown, rx) = tokio::sync::watch::channel(false);
            if let Some(addr) = wall {
                // The wall says it is a replay in its title, and its clock is the replay's.
                let mut shown = (*district).clone();
                shown.info.name = format!("【复盘 REPLAY ×{f}】{}", shown.info.name);
                for t in on.topics.all() {
                    on.bus.ensure_topic(&t, opts.partitions).await?;
                }
                let ctx = floodcmd::stages::StageContext {
                    bus: Arc::new(on.bus.clone()),
                    district: Arc::new(shown),
                    clock: Arc::new(on.clock.clone()),
                    topics: on.topics.clone(),
                    shutdown: rx.clone(),
                };
                let (addr, _) = floodcmd::stages::start_dashboard(
                    &ctx,
                    addr,
                    &floodcmd_model::settings::DashboardSettings::default(),
                )
                .await?;
                let drill = floodcmd_model::settings::AlertsSettings {
                    drill: true,
                    ..Default::default()
                };
                floodcmd::stages::start_alerts(&ctx, &drill, None);
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
    let report = outcome.report(&district, &header.source, workers);
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

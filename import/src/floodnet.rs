//! NYC FloodNet street flood depth → low-lying points and depth readings.
//!
//! Input (folder `floodnet-nyc/`, see its PROVENANCE.md): `flood-events.csv`, one row per flood
//! event at one sensor with the whole depth trace as two JSON arrays (`flood_profile_depth_inches`
//! and `flood_profile_time_secs`, offsets from `flood_start_time`, which is UTC), and
//! `sensor-metadata.csv` (name, coordinates, borough, community board, zip code, tidal flag,
//! low-point offset). The upstream events file is read, not the derived long CSV, so any time
//! range and any sensor can be imported.
//!
//! What the importer makes of it:
//!
//! - **Points.** One `low_point` per sensor with data in the range (or named in the filter), at
//!   the sensor's real coordinates, named as FloodNet names it (`[tidal]` appended for tidally
//!   influenced sensors, whose floods are coastal, not rain). The point id is `LP-<sensor id>`;
//!   the sensor id is FloodNet's own, folded to ASCII where needed (`BX-louis-niñé-...` →
//!   `BX-louis-nine-...`).
//! - **Organisation.** Borough → sub-district, community board → community, zip code → grid, and
//!   fictional people for the chain (see `roster`).
//! - **Thresholds**, in cm (FloodNet measures inches), for street flooding rather than the
//!   model's underpass-like 10/15/20/25 cm defaults: blue 5 cm (≈ 2 in, water across the
//!   gutter), yellow 15 cm (≈ 6 in, a New York curb: water reaches the sidewalk), orange 25 cm
//!   (≈ 10 in, over the sills of low cars), red 40 cm (≈ 16 in, most cars stall or float; Ida
//!   put 90 cm under the Carroll St sensor). Each resets 2–4 cm lower and holds 60 s, as the
//!   model's defaults do.
//! - **Cadence** 60 s (FloodNet sensors report every minute; some, Ida's among them, every
//!   5 min before Nov 2021). Silence is judged on the stream's clock: between events FloodNet
//!   has no readings at all, so a replay that spans dry hours will show sensors silent.
//! - **Readings.** Depth inches × 2.54 → cm, as recorded (no smoothing, no offset), at
//!   `flood_start_time + offset`; `received_ms = ts_ms`; `seq` counts each sensor's readings
//!   from 0. The data hold events only: between them the depth is implicitly 0. So that levels
//!   clear, a 0 cm reading is added 60 s before each event's first sample and 60 s after its
//!   last, unless that would fall inside the neighbouring event. `lowest_point_height_delta_inches`
//!   (how much lower the nearest storm drain is) is *not* applied as a calibration offset: it
//!   would make every dry street read as flooded.
//! - **Range.** Samples (and added zeros) with `from_ms ≤ ts < to_ms`; default Hurricane Ida,
//!   2021-09-01T00:00Z to 2021-09-03T00:00Z.

use crate::roster::{self, DistrictSpec, Site};
use crate::table::{line_of, Table};
use crate::{ImportError, Imported, Progress};
use chrono::NaiveDateTime;
use csv::StringRecord;
use floodcmd_model::config::{
    Cadence, Defaults, LevelThresholds, PointKind, SensorConfig, Threshold,
};
use floodcmd_model::time::Millis;
use floodcmd_model::{Reading, SensorKind};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

/// Centimetres per inch.
const CM_PER_INCH: f64 = 2.54;
/// How far before and after an event the added 0 cm reading goes: one reporting interval.
const ZERO_PAD_MS: Millis = 60_000;

/// Which part of the data to import.
#[derive(Clone, Debug, PartialEq)]
pub struct FloodnetFilter {
    /// Start of the range (inclusive), ms UTC.
    pub from_ms: Millis,
    /// End of the range (exclusive), ms UTC.
    pub to_ms: Millis,
    /// Only these sensors (FloodNet ids, as in the data or folded to ASCII); all when `None`.
    pub sensors: Option<Vec<String>>,
    /// What the range is, for the archive's `source` (e.g. `Hurricane Ida 2021-09-01`).
    pub label: String,
}

impl FloodnetFilter {
    /// Hurricane Ida: 2021-09-01T00:00Z to 2021-09-03T00:00Z, every sensor.
    pub fn ida_2021() -> Self {
        FloodnetFilter {
            from_ms: 1_630_454_400_000,
            to_ms: 1_630_627_200_000,
            sensors: None,
            label: "Hurricane Ida 2021-09-01".into(),
        }
    }
}

impl Default for FloodnetFilter {
    fn default() -> Self {
        Self::ida_2021()
    }
}

/// The depth thresholds given to every imported point (see the module docs for why).
pub fn thresholds() -> LevelThresholds {
    const SRC: &str = "floodcmd-import FloodNet street flooding, cm: 5 ≈ 2 in across the \
                       gutter, 15 ≈ 6 in curb height, 25 ≈ 10 in over low car sills, 40 ≈ 16 in \
                       most cars stall";
    let t = |raise: f64, reset: f64| Threshold {
        raise,
        reset,
        hold_s: 60,
        window_min: None,
        source: SRC.into(),
    };
    LevelThresholds {
        blue: t(5.0, 3.0),
        yellow: t(15.0, 12.0),
        orange: t(25.0, 22.0),
        red: t(40.0, 36.0),
    }
}

struct Meta {
    raw_id: String,
    name: String,
    lat: f64,
    lon: f64,
    tidal: bool,
    borough: String,
    community_board: String,
    zipcode: String,
}

/// One event's samples, `(ts_ms, inches)` in time order.
struct Event {
    samples: Vec<(Millis, f64)>,
}

/// Import FloodNet events from `data_dir` (the `floodnet-nyc` folder). `progress` is called
/// with bytes of `flood-events.csv` read.
pub fn import(
    data_dir: &Path,
    filter: FloodnetFilter,
    progress: Progress<'_>,
) -> Result<Imported, ImportError> {
    if filter.to_ms <= filter.from_ms {
        return Err(ImportError::BadRange {
            from_ms: filter.from_ms,
            to_ms: filter.to_ms,
        });
    }
    let meta = read_metadata(&data_dir.join("sensor-metadata.csv"))?;
    let wanted: Option<BTreeSet<String>> = match &filter.sensors {
        None => None,
        Some(list) => {
            let mut set = BTreeSet::new();
            for id in list {
                let id = roster::sanitize_id(id);
                if !meta.contains_key(&id) {
                    return Err(ImportError::UnknownInFilter {
                        what: "sensor",
                        id,
                        file: "sensor-metadata.csv".into(),
                    });
                }
                set.insert(id);
            }
            Some(set)
        }
    };

    let (events, event_count) = read_events(
        &data_dir.join("flood-events.csv"),
        &filter,
        &wanted,
        &meta,
        progress,
    )?;
    let mut notes = Vec::new();

    // Every sensor with data, plus every one asked for by name (a quiet sensor is news too).
    let mut ids: BTreeSet<String> = events.keys().cloned().collect();
    if let Some(w) = &wanted {
        ids.extend(w.iter().cloned());
    }
    if ids.is_empty() {
        return Err(ImportError::Empty(format!(
            "no FloodNet event has samples from {} to {}",
            fmt_ms(filter.from_ms),
            fmt_ms(filter.to_ms)
        )));
    }

    let mut readings = Vec::new();
    let mut added_zeros = 0usize;
    let mut overlapped = 0usize;
    for id in &ids {
        let Some(evs) = events.get(id) else {
            notes.push(format!(
                "{id}: no flood event in the range; the point will be silent"
            ));
            continue;
        };
        let point = point_id(id);
        let mut seq = 0u64;
        let mut last: Option<Millis> = None;
        let mut push = |ts: Millis, inches: f64, readings: &mut Vec<Reading>| {
            readings.push(Reading {
                sensor: id.as_str().into(),
                point: point.as_str().into(),
                kind: SensorKind::Depth,
                ts_ms: ts,
                value: inches * CM_PER_INCH,
                seq: Some(seq),
                received_ms: ts,
            });
            seq += 1;
        };
        for (i, ev) in evs.iter().enumerate() {
            let (first, _) = ev.samples[0];
            let (end, _) = ev.samples[ev.samples.len() - 1];
            let before = first - ZERO_PAD_MS;
            if last.is_none_or(|l| before > l) && in_range(&filter, before) {
                push(before, 0.0, &mut readings);
                added_zeros += 1;
            }
            for &(ts, inches) in &ev.samples {
                if last.is_some_and(|l| ts <= l) {
                    // Overlapping events of one sensor: the earlier one's samples stand.
                    overlapped += 1;
                    continue;
                }
                last = Some(ts);
                if in_range(&filter, ts) {
                    push(ts, inches, &mut readings);
                }
            }
            let after = end + ZERO_PAD_MS;
            let next_first = evs.get(i + 1).map(|n| n.samples[0].0);
            if after > last.unwrap_or(Millis::MIN) && next_first.is_none_or(|n| after < n) {
                last = Some(after);
                if in_range(&filter, after) {
                    push(after, 0.0, &mut readings);
                    added_zeros += 1;
                }
            }
        }
    }
    readings.sort_by(|a, b| (a.ts_ms, &a.sensor).cmp(&(b.ts_ms, &b.sensor)));

    notes.push(format!(
        "{event_count} flood events at {} sensors from {} to {}; {} readings, of which \
         {added_zeros} are added 0 cm readings 60 s before and after events (FloodNet records \
         events only; between them the depth is 0)",
        events.len(),
        fmt_ms(filter.from_ms),
        fmt_ms(filter.to_ms),
        readings.len()
    ));
    if overlapped > 0 {
        notes.push(format!(
            "{overlapped} samples skipped where a sensor's events overlap in time"
        ));
    }
    let tidal: Vec<&str> = ids
        .iter()
        .filter(|id| meta[*id].tidal)
        .map(String::as_str)
        .collect();
    if !tidal.is_empty() {
        notes.push(format!(
            "tidally influenced (coastal flooding, not rain): {}",
            tidal.join(", ")
        ));
    }
    for id in &ids {
        if meta[id].raw_id != *id {
            notes.push(format!(
                "sensor \"{}\" is \"{id}\" in the config",
                meta[id].raw_id
            ));
        }
    }
    notes.push(
        "depth is as FloodNet recorded it under the sensor; lowest_point_height_delta_inches \
         (the drain's depth below it) is not added"
            .into(),
    );
    notes.push(
        "cadence 60 s as FloodNet's; Ida-era sensors reported every ~5 min and nothing is \
         recorded between events, so a replay will show sensors silent in dry hours"
            .into(),
    );

    let sites: Vec<Site> = ids.iter().map(|id| site(id, &meta[id])).collect();
    let mut sites = sites;
    sites.sort_by(|a, b| {
        (&a.sub_district.0, &a.community.0, &a.grid.0, &a.point_id).cmp(&(
            &b.sub_district.0,
            &b.community.0,
            &b.grid.0,
            &b.point_id,
        ))
    });
    let defaults = Defaults {
        low_point: thresholds(),
        cadence: Cadence {
            depth_normal_s: 60,
            depth_storm_s: 60,
            ..Cadence::default()
        },
        ..Defaults::default()
    };
    let file = roster::district_file(
        DistrictSpec {
            id: "floodnet-nyc".into(),
            name: "NYC FloodNet".into(),
            sms_signature: "FloodNet回放".into(),
            defaults,
        },
        &sites,
    )?;
    let source = format!(
        "NYC FloodNet flood-events.csv + sensor-metadata.csv (NYC Open Data aq7i-eu5q, \
         kb2e-tjy3), {}: {} to {}, {} sensors",
        filter.label,
        fmt_ms(filter.from_ms),
        fmt_ms(filter.to_ms),
        ids.len()
    );
    let comment = format!(
        "District file GENERATED by floodcmd-import (floodnet) from real NYC FloodNet data.\n\
         Source: {source}.\n\
         Points, names and coordinates are the real FloodNet sensors. Sub-districts are \
         boroughs, communities are community boards, grids are zip codes.\n\
         ALL PEOPLE ARE FICTIONAL. ALL PHONE NUMBERS ARE FAKE (1380000xxxx).\n\
         Thresholds: see floodcmd-import's floodnet module docs."
    );
    let (district_toml, district) = roster::to_toml(&comment, &file)?;
    Ok(Imported {
        district_toml,
        district,
        readings,
        source,
        notes,
    })
}

fn in_range(f: &FloodnetFilter, ts: Millis) -> bool {
    f.from_ms <= ts && ts < f.to_ms
}

fn point_id(sensor: &str) -> String {
    format!("LP-{sensor}")
}

fn site(id: &str, m: &Meta) -> Site {
    let borough = id.split('-').next().unwrap_or("NYC").to_string();
    let cb = format!("CB{}", m.community_board);
    Site {
        point_id: point_id(id),
        name: if m.tidal {
            format!("{} [tidal]", m.name)
        } else {
            m.name.clone()
        },
        kind: PointKind::LowPoint,
        lat: m.lat,
        lon: m.lon,
        sensor: SensorConfig {
            id: id.to_string(),
            kind: SensorKind::Depth,
            calibration_offset_cm: 0.0,
        },
        sub_district: (borough, m.borough.clone()),
        community: (
            cb.clone(),
            format!("{} Community Board {}", m.borough, m.community_board),
        ),
        grid: (
            format!("{cb}-{}", m.zipcode),
            format!("ZIP {} (CB {})", m.zipcode, m.community_board),
        ),
    }
}

fn read_metadata(path: &Path) -> Result<HashMap<String, Meta>, ImportError> {
    let mut t = Table::open(path)?;
    let c_id = t.column("sensor_id")?;
    let c_name = t.column("sensor_name")?;
    let c_lat = t.column("latitude")?;
    let c_lon = t.column("longitude")?;
    let c_tidal = t.column("tidally_influenced")?;
    let c_borough = t.column("borough")?;
    let c_cb = t.column("community_board")?;
    let c_zip = t.column("zipcode")?;
    let mut out: HashMap<String, Meta> = HashMap::new();
    let mut row = StringRecord::new();
    while t.next(&mut row)? {
        let raw = t.text(&row, c_id).trim().to_string();
        if raw.is_empty() {
            return Err(t.field_error(&row, c_id, "empty sensor id"));
        }
        let lat = t.number(&row, c_lat)?;
        let lon = t.number(&row, c_lon)?;
        let tidal = match t.text(&row, c_tidal).trim() {
            "Yes" => true,
            "No" | "" => false,
            _ => return Err(t.field_error(&row, c_tidal, "expected Yes or No")),
        };
        let text_or = |c: usize, fallback: &str| {
            let s = t.text(&row, c).trim();
            if s.is_empty() {
                fallback.to_string()
            } else {
                s.to_string()
            }
        };
        let id = roster::sanitize_id(&raw);
        let m = Meta {
            name: text_or(c_name, &raw),
            raw_id: raw,
            lat,
            lon,
            tidal,
            borough: text_or(c_borough, "unknown borough"),
            community_board: text_or(c_cb, "unknown"),
            zipcode: text_or(c_zip, "unknown"),
        };
        if let Some(prev) = out.get(&id) {
            if prev.raw_id != m.raw_id {
                return Err(ImportError::IdCollision {
                    a: prev.raw_id.clone(),
                    b: m.raw_id,
                    id,
                });
            }
            // A sensor listed twice (re-deployed): the first row stands.
            continue;
        }
        out.insert(id, m);
    }
    Ok(out)
}

/// Events with samples in or next to the range, by config sensor id, each sensor's in start
/// order; and how many events that is.
fn read_events(
    path: &Path,
    filter: &FloodnetFilter,
    wanted: &Option<BTreeSet<String>>,
    meta: &HashMap<String, Meta>,
    progress: Progress<'_>,
) -> Result<(BTreeMap<String, Vec<Event>>, usize), ImportError> {
    let mut t = Table::open(path)?;
    let c_id = t.column("sensor_id")?;
    let c_start = t.column("flood_start_time")?;
    let c_end = t.column("flood_end_time")?;
    let c_depth = t.column("flood_profile_depth_inches")?;
    let c_time = t.column("flood_profile_time_secs")?;
    let total = Some(t.size);
    let mut out: BTreeMap<String, Vec<Event>> = BTreeMap::new();
    let mut count = 0usize;
    let mut row = StringRecord::new();
    while t.next(&mut row)? {
        progress(t.position(), total);
        let raw = t.text(&row, c_id).trim();
        let id = roster::sanitize_id(raw);
        if wanted.as_ref().is_some_and(|w| !w.contains(&id)) {
            continue;
        }
        let start = utc_ms(&t, &row, c_start)?;
        let end = utc_ms(&t, &row, c_end)?;
        // Cheap test before the JSON, with slack: the added zeros reach one pad beyond the
        // samples, and a profile's last sample can sit a second past `flood_end_time`. The
        // exact range is applied per sample below.
        const SLACK_MS: Millis = ZERO_PAD_MS + 10 * 60_000;
        if end + SLACK_MS < filter.from_ms || start - SLACK_MS >= filter.to_ms {
            continue;
        }
        if !meta.contains_key(&id) {
            return Err(ImportError::Unmatched {
                path: t.path.clone(),
                line: line_of(&row),
                what: "sensor",
                id: raw.to_string(),
                other: "sensor-metadata.csv".into(),
            });
        }
        let depths: Vec<f64> = serde_json::from_str(t.text(&row, c_depth)).map_err(|e| {
            t.field_error(&row, c_depth, format!("not a JSON array of numbers: {e}"))
        })?;
        let offsets: Vec<f64> = serde_json::from_str(t.text(&row, c_time)).map_err(|e| {
            t.field_error(&row, c_time, format!("not a JSON array of numbers: {e}"))
        })?;
        if depths.len() != offsets.len() {
            return Err(t.field_error(
                &row,
                c_time,
                format!(
                    "{} offsets for {} depths in flood_profile_depth_inches",
                    offsets.len(),
                    depths.len()
                ),
            ));
        }
        if depths.is_empty() {
            continue;
        }
        let mut samples = Vec::with_capacity(depths.len());
        for (k, (&d, &s)) in depths.iter().zip(&offsets).enumerate() {
            if !d.is_finite() || !s.is_finite() || s < 0.0 {
                return Err(t.field_error(
                    &row,
                    if d.is_finite() { c_time } else { c_depth },
                    format!("element {k} is not a usable number"),
                ));
            }
            samples.push((start + (s * 1000.0).round() as Millis, d));
        }
        if samples.windows(2).any(|w| w[1].0 < w[0].0) {
            return Err(t.field_error(&row, c_time, "offsets go back in time"));
        }
        count += 1;
        out.entry(id).or_default().push(Event { samples });
    }
    progress(t.size, total);
    for evs in out.values_mut() {
        evs.sort_by_key(|e| e.samples[0].0);
    }
    Ok((out, count))
}

/// FloodNet's `2021-09-02T01:27:16.000`, which is UTC without a zone suffix.
fn utc_ms(t: &Table, row: &StringRecord, col: usize) -> Result<Millis, ImportError> {
    let s = t.text(row, col).trim();
    NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")
        .map(|d| d.and_utc().timestamp_millis())
        .map_err(|e| t.field_error(row, col, format!("not a timestamp: {e}")))
}

fn fmt_ms(ms: Millis) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map_or_else(
        || ms.to_string(),
        |d| d.format("%Y-%m-%dT%H:%MZ").to_string(),
    )
}

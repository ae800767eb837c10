//! Harris County Flood Control District 5-minute rain gauges → rain gauge points and rain
//! readings (Hurricane Harvey, 2017-08-25 to 2017-08-29).
//!
//! Input (folder `harvey-hcfcd-5min/`, see its PROVENANCE.md): `derived_harvey_hcfcd_5min_rain_in.csv`
//! (`begin_local, end_local, site_<n>...`: inches of rain per 5-minute interval, one column
//! per site) and `derived_harvey_hcfcd_sites.csv` (site, HCFCD sensor number, name,
//! coordinates). These are plain-CSV flattenings of the agency's xlsx files beside them, value
//! for value.
//!
//! What the importer makes of it:
//!
//! - **Points.** One `rain_gauge` per site column, at the site's coordinates, named as HCFCD
//!   names it. Point id `RG-<site>`, sensor id `RN-<site>` (the HCFCD sensor number is in the
//!   point's name).
//! - **Organisation.** The data have no districts, so the gauges are grouped around downtown
//!   Houston (29.7604 N, 95.3698 W): four quadrants are the sub-districts (one community each),
//!   grids hold up to 8 gauges in site order. People are fictional (see `roster`).
//! - **Thresholds** are the model's defaults (the mainland rainstorm signals, 暴雨预警信号),
//!   **cadence** 300 s for rain, the data's interval.
//! - **Readings.** One per site per interval, zeros included (a gauge that reports 0 is alive;
//!   the exporter filled missing intervals with 0, so a dead gauge looks dry). Inches × 25.4 →
//!   mm, as recorded: the site 520 spike (3.96 in in the 5 minutes from 07:20 CDT on
//!   2017-08-27) is passed through for the stream's quality control to catch.
//! - **Time.** Stamps are US Central local time (CDT in August), converted with
//!   [`crate::central_time`]. A reading is stamped at its interval's *end*: a rain value is the
//!   rain since the previous report, known when the interval closes (the simulator's gauges
//!   stamp the same way), so a rolling total never counts rain before it fell. The 07:20–07:25
//!   CDT interval is the reading at 12:25 UTC.
//! - **Range.** Intervals lying wholly inside `from_ms..=to_ms` (so readings have
//!   `from_ms < ts ≤ to_ms`); default the whole file, 2017-08-25T00:00 to 2017-08-30T00:00 CDT.

use crate::central_time;
use crate::roster::{self, DistrictSpec, Site};
use crate::table::{line_of, Table};
use crate::{ImportError, Imported, Progress};
use chrono::NaiveDateTime;
use csv::StringRecord;
use floodcmd_model::config::{Cadence, Defaults, PointKind, SensorConfig};
use floodcmd_model::time::Millis;
use floodcmd_model::{Reading, SensorKind};
use std::collections::{BTreeSet, HashMap};
use std::path::Path;

/// Millimetres per inch.
const MM_PER_INCH: f64 = 25.4;
/// The data's interval.
const INTERVAL_MS: Millis = 5 * 60_000;
const RAIN_FILE: &str = "derived_harvey_hcfcd_5min_rain_in.csv";
const SITES_FILE: &str = "derived_harvey_hcfcd_sites.csv";
/// Downtown Houston, the centre of the quadrants.
const CENTRE: (f64, f64) = (29.7604, -95.3698);
/// Gauges per grid.
const GRID_SIZE: usize = 8;

/// Which part of the data to import.
#[derive(Clone, Debug, PartialEq)]
pub struct HcfcdFilter {
    /// Start of the range, ms UTC: intervals beginning at or after it.
    pub from_ms: Millis,
    /// End of the range, ms UTC: intervals ending at or before it.
    pub to_ms: Millis,
    /// Only these sites (numbers as in the data, e.g. `"520"`); all when `None`.
    pub sites: Option<Vec<String>>,
    /// What the range is, for the archive's `source`.
    pub label: String,
}

impl HcfcdFilter {
    /// Hurricane Harvey, the whole file: 2017-08-25T05:00Z to 2017-08-30T05:00Z (midnight CDT
    /// to midnight CDT), every site.
    pub fn harvey_2017() -> Self {
        HcfcdFilter {
            from_ms: 1_503_637_200_000,
            to_ms: 1_504_069_200_000,
            sites: None,
            label: "Hurricane Harvey 2017-08-25..29".into(),
        }
    }
}

impl Default for HcfcdFilter {
    fn default() -> Self {
        Self::harvey_2017()
    }
}

struct SiteMeta {
    sensor: String,
    name: String,
    lat: f64,
    lon: f64,
}

/// Import the HCFCD gauges from `data_dir` (the `harvey-hcfcd-5min` folder). `progress` is
/// called with bytes of the rain file read.
pub fn import(
    data_dir: &Path,
    filter: HcfcdFilter,
    progress: Progress<'_>,
) -> Result<Imported, ImportError> {
    if filter.to_ms <= filter.from_ms {
        return Err(ImportError::BadRange {
            from_ms: filter.from_ms,
            to_ms: filter.to_ms,
        });
    }
    let sites = read_sites(&data_dir.join(SITES_FILE))?;
    let mut t = Table::open(&data_dir.join(RAIN_FILE))?;
    let c_begin = t.column("begin_local")?;
    let c_end = t.column("end_local")?;

    // Site columns, in file order.
    let mut columns: Vec<(usize, String)> = Vec::new();
    for (i, h) in t.headers.iter().enumerate() {
        if let Some(site) = h.strip_prefix("site_") {
            if !sites.contains_key(site) {
                return Err(ImportError::Unmatched {
                    path: t.path.clone(),
                    line: 1,
                    what: "site column",
                    id: h.to_string(),
                    other: SITES_FILE.into(),
                });
            }
            columns.push((i, site.to_string()));
        }
    }
    if let Some(list) = &filter.sites {
        let present: BTreeSet<&str> = columns.iter().map(|(_, s)| s.as_str()).collect();
        for s in list {
            if !present.contains(s.as_str()) {
                return Err(ImportError::UnknownInFilter {
                    what: "site",
                    id: s.clone(),
                    file: RAIN_FILE.into(),
                });
            }
        }
        columns.retain(|(_, s)| list.contains(s));
    }

    let total = Some(t.size);
    let mut per_site: Vec<Vec<(Millis, f64)>> = vec![Vec::new(); columns.len()];
    let mut intervals = 0usize;
    let mut prev_end: Option<(Millis, u64)> = None;
    let mut row = StringRecord::new();
    while t.next(&mut row)? {
        progress(t.position(), total);
        let begin = local_ms(&t, &row, c_begin)?;
        let end = local_ms(&t, &row, c_end)?;
        if end - begin != INTERVAL_MS {
            return Err(t.field_error(
                &row,
                c_end,
                format!("interval of {} s, expected 300 s", (end - begin) / 1000),
            ));
        }
        if let Some((p, line)) = prev_end {
            if end <= p {
                return Err(t.field_error(
                    &row,
                    c_end,
                    format!("not after the interval on line {line} (a repeated local hour?)"),
                ));
            }
        }
        prev_end = Some((end, line_of(&row)));
        if begin < filter.from_ms || end > filter.to_ms {
            continue;
        }
        intervals += 1;
        for (k, (c, _)) in columns.iter().enumerate() {
            let inches = t.number(&row, *c)?;
            if inches < 0.0 {
                return Err(t.field_error(&row, *c, "negative rainfall"));
            }
            per_site[k].push((end, inches));
        }
    }
    progress(t.size, total);
    if intervals == 0 || columns.is_empty() {
        return Err(ImportError::Empty(format!(
            "no 5-minute interval of {RAIN_FILE} lies in the range, or no site is selected"
        )));
    }

    let mut readings = Vec::with_capacity(intervals * columns.len());
    let mut totals: Vec<(f64, &str)> = Vec::new();
    for ((_, site), values) in columns.iter().zip(&per_site) {
        let sensor = sensor_id(site);
        let point = point_id(site);
        let mut total_in = 0.0;
        for (seq, &(ts, inches)) in values.iter().enumerate() {
            total_in += inches;
            readings.push(Reading {
                sensor: sensor.as_str().into(),
                point: point.as_str().into(),
                kind: SensorKind::Rain,
                ts_ms: ts,
                value: inches * MM_PER_INCH,
                seq: Some(seq as u64),
                received_ms: ts,
            });
        }
        totals.push((total_in, site));
    }
    readings.sort_by(|a, b| (a.ts_ms, &a.sensor).cmp(&(b.ts_ms, &b.sensor)));
    totals.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(b.1)));

    let mut notes = vec![
        format!(
            "{} gauges × {intervals} five-minute intervals = {} readings, stamped at each \
             interval's end, converted from US Central local time",
            columns.len(),
            readings.len()
        ),
        format!(
            "largest totals: {}",
            totals
                .iter()
                .take(3)
                .map(|(t, s)| format!("site {s} {t:.2} in ({:.0} mm)", t * MM_PER_INCH))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        "missing intervals were filled with 0 by the HCFCD exporter: a dead gauge looks dry".into(),
    ];
    if columns.iter().any(|(_, s)| s == "520") {
        notes.push(
            "site 520's 3.96 in (100.6 mm) in 5 min at 2017-08-27 07:20 CDT is almost certainly \
             a fault; it is passed through unchanged for quality control to flag"
                .into(),
        );
    }

    let site_list = organise(&columns, &sites);
    let defaults = Defaults {
        cadence: Cadence {
            rain_normal_s: 300,
            rain_storm_s: 300,
            ..Cadence::default()
        },
        ..Defaults::default()
    };
    let file = roster::district_file(
        DistrictSpec {
            id: "harris-hcfcd".into(),
            name: "Harris County FWS".into(),
            sms_signature: "HCFCD回放".into(),
            defaults,
        },
        &site_list,
    )?;
    let source = format!(
        "Harris County Flood Control District 5-min rain gauges ({RAIN_FILE}, from HCFCD's \
         Rain Gauge data.xlsx), {}: {} gauges",
        filter.label,
        columns.len()
    );
    let comment = format!(
        "District file GENERATED by floodcmd-import (hcfcd) from real HCFCD rain gauge data.\n\
         Source: {source}.\n\
         Gauge names and coordinates are real. Sub-districts are quadrants around downtown \
         Houston; communities and grids are groupings made up by the importer.\n\
         ALL PEOPLE ARE FICTIONAL. ALL PHONE NUMBERS ARE FAKE (1380000xxxx).\n\
         Thresholds: the model's defaults (rainstorm warning signals)."
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

fn point_id(site: &str) -> String {
    format!("RG-{site}")
}

fn sensor_id(site: &str) -> String {
    format!("RN-{site}")
}

/// Quadrants around downtown as sub-districts, one community each, grids of [`GRID_SIZE`]
/// gauges in site-number order.
fn organise(columns: &[(usize, String)], sites: &HashMap<String, SiteMeta>) -> Vec<Site> {
    const QUADRANTS: [(&str, &str); 4] = [
        ("NW", "Northwest Harris"),
        ("NE", "Northeast Harris"),
        ("SW", "Southwest Harris"),
        ("SE", "Southeast Harris"),
    ];
    let mut by_quadrant: Vec<Vec<&str>> = vec![Vec::new(); 4];
    for (_, site) in columns {
        let m = &sites[site];
        let q = usize::from(m.lat < CENTRE.0) * 2 + usize::from(m.lon >= CENTRE.1);
        by_quadrant[q].push(site);
    }
    let mut out = Vec::new();
    for (q, list) in by_quadrant.iter_mut().enumerate() {
        list.sort_by_key(|s| (s.parse::<u64>().unwrap_or(u64::MAX), s.to_string()));
        let (qid, qname) = QUADRANTS[q];
        for (i, site) in list.iter().enumerate() {
            let m = &sites[*site];
            let g = i / GRID_SIZE + 1;
            out.push(Site {
                point_id: point_id(site),
                name: format!("{} (HCFCD site {site}, sensor {})", m.name, m.sensor),
                kind: PointKind::RainGauge,
                lat: m.lat,
                lon: m.lon,
                sensor: SensorConfig {
                    id: sensor_id(site),
                    kind: SensorKind::Rain,
                    calibration_offset_cm: 0.0,
                },
                sub_district: (qid.into(), qname.into()),
                community: (format!("{qid}-C"), format!("{qname} gauges")),
                grid: (format!("{qid}-G{g:02}"), format!("{qname} grid {g}")),
            });
        }
    }
    out
}

fn read_sites(path: &Path) -> Result<HashMap<String, SiteMeta>, ImportError> {
    let mut t = Table::open(path)?;
    let c_site = t.column("site")?;
    let c_sensor = t.column("sensor")?;
    let c_name = t.column("site_name")?;
    let c_lat = t.column("latitude")?;
    let c_lon = t.column("longitude")?;
    let mut out = HashMap::new();
    let mut row = StringRecord::new();
    while t.next(&mut row)? {
        let site = t.text(&row, c_site).trim().to_string();
        if site.is_empty() || roster::sanitize_id(&site) != site {
            return Err(t.field_error(&row, c_site, "a site is a plain number"));
        }
        let lat = t.number(&row, c_lat)?;
        let lon = t.number(&row, c_lon)?;
        // The xlsx has typo longitudes (2, 3) for two sites without rain columns: refuse
        // anything outside the Houston area rather than put a gauge in the ocean.
        if !(28.0..=31.0).contains(&lat) {
            return Err(t.field_error(&row, c_lat, "not a Houston-area latitude"));
        }
        if !(-97.0..=-93.0).contains(&lon) {
            return Err(t.field_error(&row, c_lon, "not a Houston-area longitude"));
        }
        out.insert(
            site,
            SiteMeta {
                sensor: t.text(&row, c_sensor).trim().to_string(),
                name: t.text(&row, c_name).trim().to_string(),
                lat,
                lon,
            },
        );
    }
    Ok(out)
}

/// `2017-08-27 07:20` in US Central time → UTC ms.
fn local_ms(t: &Table, row: &StringRecord, col: usize) -> Result<Millis, ImportError> {
    let s = t.text(row, col).trim();
    let local = NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M")
        .map_err(|e| t.field_error(row, col, format!("not a local time: {e}")))?;
    central_time::to_utc_ms(local).map_err(|e| t.field_error(row, col, e.to_string()))
}

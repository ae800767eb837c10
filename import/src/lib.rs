//! Importers of real recorded storms: turn a public data set into what floodcmd replays, a
//! validated district config plus the readings its sensors would have sent.
//!
//! - [`floodnet`]: NYC FloodNet street flood depth (Hurricane Ida 2021 by default), one
//!   low-lying point per ultrasonic sensor;
//! - [`hcfcd`]: Harris County Flood Control District 5-minute rain gauges (Hurricane Harvey
//!   2017), one rain gauge point per site.
//!
//! Each returns an [`Imported`]: the district TOML (with a fictional responsibility chain, since
//! the data have sensors, not people), the [`District`] parsed back from that TOML by the
//! model's validator, the readings sorted by `(ts_ms, sensor)` (the storm archive's order,
//! see `floodcmd-archive`), a one-line `source` for the archive header and `notes` on what was
//! done to the data. Values pass through as measured, only converted to the system's units:
//! quality control is the stream's job, so known faults (HCFCD site 520's spike) stay in.
//!
//! The files the importers read are vendored in `data/` (see its README.md and each folder's
//! PROVENANCE.md); callers pass the data set's folder.

pub mod central_time;
pub mod floodnet;
pub mod hcfcd;
mod roster;
mod table;

use floodcmd_model::config::ConfigErrors;
use floodcmd_model::{District, Reading};
use std::path::PathBuf;

/// A storm ready to archive or replay.
#[derive(Clone, Debug)]
pub struct Imported {
    /// The district config, TOML, exactly as `district` was parsed from.
    pub district_toml: String,
    /// The validated district.
    pub district: District,
    /// Readings sorted by `(ts_ms, sensor)`; each sensor's `seq` counts from 0 in time order.
    pub readings: Vec<Reading>,
    /// Where the data came from, one line (for the archive header).
    pub source: String,
    /// What the importer did or noticed: synthetic readings, skipped data, caveats.
    pub notes: Vec<String>,
}

/// Progress of a long import: `(done, total)`, in bytes of the main input file when the total
/// is known.
pub type Progress<'a> = &'a mut dyn FnMut(u64, Option<u64>);

/// Why an import failed. Problems in the data name the file, the line and the column.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// A file could not be opened or read.
    #[error("{path}: {source}", path = path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The CSV itself is broken (quoting, a row with the wrong number of fields).
    #[error("{path}: {message}", path = path.display())]
    Csv {
        /// The file.
        path: PathBuf,
        /// The csv crate's message, which carries the line.
        message: String,
    },
    /// A column the importer needs is not in the header row.
    #[error("{path}: line 1: no column \"{column}\"", path = path.display())]
    MissingColumn {
        /// The file.
        path: PathBuf,
        /// The column.
        column: String,
    },
    /// A value that cannot be what its column says.
    #[error("{path}: line {line}, column {column}: {message} (value \"{value}\")", path = path.display())]
    Field {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: u64,
        /// Column name.
        column: String,
        /// The value, shortened if long.
        value: String,
        /// What is wrong.
        message: String,
    },
    /// A row refers to something the companion file does not have (a sensor without
    /// metadata, a rain column without a site).
    #[error("{path}: line {line}: {what} \"{id}\" is not in {other}", path = path.display())]
    Unmatched {
        /// The file with the reference.
        path: PathBuf,
        /// 1-based line.
        line: u64,
        /// What kind of thing.
        what: &'static str,
        /// Its id.
        id: String,
        /// The file that should have it.
        other: String,
    },
    /// The filter names a sensor or site the data do not have.
    #[error("the filter names {what} \"{id}\", which is not in {file}")]
    UnknownInFilter {
        /// Sensor or site.
        what: &'static str,
        /// The id as given.
        id: String,
        /// The file searched.
        file: String,
    },
    /// The filter leaves nothing to import.
    #[error("nothing to import: {0}")]
    Empty(String),
    /// The filter's time range is empty or reversed.
    #[error("time range {from_ms}..{to_ms} is empty")]
    BadRange {
        /// Start, ms.
        from_ms: i64,
        /// End, ms.
        to_ms: i64,
    },
    /// Two source ids become the same config id after sanitizing.
    #[error("sensor ids \"{a}\" and \"{b}\" both become \"{id}\" in the config")]
    IdCollision {
        /// First source id.
        a: String,
        /// Second source id.
        b: String,
        /// The shared config id.
        id: String,
    },
    /// The fake phone range ran out.
    #[error("more than {max} people needed; the fake phone range 1380000xxxx has no more numbers")]
    TooManyPeople {
        /// The limit.
        max: usize,
    },
    /// The generated district could not be written as TOML (a bug).
    #[error("writing the district TOML: {0}")]
    Toml(String),
    /// The generated district does not validate (a bug in the importer).
    #[error("the generated district config is invalid:\n{0}")]
    District(ConfigErrors),
}

/// Shorten a value for an error message: a FloodNet profile is kilobytes of JSON.
pub(crate) fn excerpt(value: &str) -> String {
    const MAX: usize = 80;
    if value.chars().count() <= MAX {
        value.to_string()
    } else {
        let mut s: String = value.chars().take(MAX).collect();
        s.push('…');
        s
    }
}

//! What can go wrong with an archive, always naming the file and, for content, the line.

use floodcmd_model::config::ConfigErrors;
use floodcmd_model::time::Millis;
use std::path::PathBuf;

/// An archive that cannot be written or read.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The file system refused (open, write, rename) or the gzip stream is corrupt.
    #[error("{path}: {source}", path = path.display())]
    Io {
        /// The archive (or its temp file).
        path: PathBuf,
        /// What the OS or the decoder said.
        #[source]
        source: std::io::Error,
    },
    /// Line 1 is missing or is not a header object.
    #[error("{path}: line 1: not a floodcmd archive header: {message}", path = path.display())]
    Header {
        /// The archive.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// Line 1 names another format.
    #[error("{path}: line 1: format is \"{found}\", expected \"floodcmd-archive\"", path = path.display())]
    WrongFormat {
        /// The archive.
        path: PathBuf,
        /// The `format` it claims.
        found: String,
    },
    /// Line 1 names a version this build does not read.
    #[error("{path}: line 1: archive version {found} is not supported (this build reads version {supported})", path = path.display())]
    UnsupportedVersion {
        /// The archive.
        path: PathBuf,
        /// The `version` it claims.
        found: u64,
        /// The version this build reads and writes.
        supported: u32,
    },
    /// A reading line that is not a reading.
    #[error("{path}: line {line}, column {column}: {message}", path = path.display())]
    Malformed {
        /// The archive.
        path: PathBuf,
        /// 1-based line number in the decompressed file (the header is line 1).
        line: u64,
        /// 1-based column where parsing stopped.
        column: usize,
        /// serde_json's message.
        message: String,
    },
    /// A reading line that sorts before the line above it.
    #[error("{path}: line {line}: reading of {sensor} at {ts_ms} comes before the previous line's ({prev_sensor} at {prev_ts_ms}); archives are sorted by (ts_ms, sensor)", path = path.display())]
    OutOfOrder {
        /// The archive.
        path: PathBuf,
        /// 1-based line number.
        line: u64,
        /// This reading's sensor.
        sensor: String,
        /// This reading's event time.
        ts_ms: Millis,
        /// The previous reading's sensor.
        prev_sensor: String,
        /// The previous reading's event time.
        prev_ts_ms: Millis,
    },
    /// The writer was given a reading out of `(ts_ms, sensor)` order.
    #[error("{path}: reading #{index} ({sensor} at {ts_ms}) was written after {prev_sensor} at {prev_ts_ms}; write readings sorted by (ts_ms, sensor)", path = path.display())]
    WriteOrder {
        /// The archive being written.
        path: PathBuf,
        /// 0-based index of the refused reading among those written.
        index: u64,
        /// Its sensor.
        sensor: String,
        /// Its event time.
        ts_ms: Millis,
        /// The previous reading's sensor.
        prev_sensor: String,
        /// The previous reading's event time.
        prev_ts_ms: Millis,
    },
    /// The writer was given a value JSON cannot carry (NaN or infinity would come back `null`).
    #[error("{path}: reading #{index} ({sensor} at {ts_ms}) has value {value}, which is not a finite number", path = path.display())]
    NotFinite {
        /// The archive being written.
        path: PathBuf,
        /// 0-based index of the refused reading.
        index: u64,
        /// Its sensor.
        sensor: String,
        /// Its event time.
        ts_ms: Millis,
        /// The value.
        value: f64,
    },
    /// The file ends with a different number of readings than its header says (truncated, or
    /// lines appended).
    #[error("{path}: header says {expected} readings, the file holds {found}", path = path.display())]
    CountMismatch {
        /// The archive.
        path: PathBuf,
        /// `readings` in the header.
        expected: u64,
        /// Reading lines found.
        found: u64,
    },
    /// The district config embedded in the header does not validate.
    #[error("the archive's district config is invalid:\n{0}")]
    District(#[from] ConfigErrors),
}

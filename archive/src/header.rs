//! Line 1 of an archive: what the file is, where it came from, and the district it belongs to.

use crate::error::ArchiveError;
use floodcmd_model::time::Millis;
use floodcmd_model::District;
use serde::{Deserialize, Serialize};

/// The header line of an archive.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ArchiveHeader {
    /// Always [`ArchiveHeader::FORMAT`].
    pub format: String,
    /// Always [`ArchiveHeader::VERSION`] when written by this build.
    pub version: u32,
    /// Free text: which data set, which storm (e.g. `NYC FloodNet flood-events.csv, Hurricane
    /// Ida 2021-09-01`).
    pub source: String,
    /// When the archive was made (ms since the epoch). The caller sets it, so a test can make
    /// byte-identical archives.
    pub created_ms: Millis,
    /// Event time of the first reading (0 in an empty archive). Filled in by the writer.
    pub from_ms: Millis,
    /// Event time of the last reading (0 in an empty archive). Filled in by the writer.
    pub to_ms: Millis,
    /// Number of reading lines. Filled in by the writer.
    pub readings: u64,
    /// The district's name, for listings without parsing the TOML.
    pub district_name: String,
    /// The whole district config TOML the readings' sensor and point ids refer to.
    pub district_toml: String,
}

impl ArchiveHeader {
    /// The `format` value.
    pub const FORMAT: &'static str = "floodcmd-archive";
    /// The version this build writes and reads.
    pub const VERSION: u32 = 1;

    /// A header for a new archive; the writer fills in the span and the count.
    pub fn new(
        source: impl Into<String>,
        district_name: impl Into<String>,
        district_toml: impl Into<String>,
        created_ms: Millis,
    ) -> Self {
        ArchiveHeader {
            format: Self::FORMAT.to_string(),
            version: Self::VERSION,
            source: source.into(),
            created_ms,
            from_ms: 0,
            to_ms: 0,
            readings: 0,
            district_name: district_name.into(),
            district_toml: district_toml.into(),
        }
    }

    /// Parse and validate the embedded district config with the model's validator.
    pub fn district(&self) -> Result<District, ArchiveError> {
        Ok(District::from_toml_str(&self.district_toml)?)
    }
}

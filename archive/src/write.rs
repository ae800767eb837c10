//! Writing an archive without holding the storm in memory.
//!
//! The header must be line 1 but its counts are known only at the end, so readings go, as they
//! come, to a gzip member in a temp file beside the output. `finish` writes the header as a
//! gzip member of its own into a second temp file, appends the body's bytes unchanged (no
//! recompression) and renames the result over the output. A crash leaves no half-written
//! archive under the final name.

use crate::error::ArchiveError;
use crate::header::ArchiveHeader;
use flate2::write::GzEncoder;
use flate2::Compression;
use floodcmd_model::time::Millis;
use floodcmd_model::Reading;
use std::io::{self, BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use tempfile::NamedTempFile;

/// Writes one archive. Readings must come sorted by `(ts_ms, sensor)`.
pub struct ArchiveWriter {
    path: PathBuf,
    header: ArchiveHeader,
    body: GzEncoder<BufWriter<NamedTempFile>>,
    line: Vec<u8>,
    count: u64,
    first_ms: Millis,
    last: Option<(Millis, String)>,
}

impl ArchiveWriter {
    /// Start an archive at `path` (written there only by [`ArchiveWriter::finish`]). The
    /// header's `from_ms`, `to_ms` and `readings` are ignored and filled in at the end.
    pub fn create(path: impl AsRef<Path>, header: ArchiveHeader) -> Result<Self, ArchiveError> {
        let path = path.as_ref().to_path_buf();
        let body = temp_beside(&path, ".body")?;
        Ok(ArchiveWriter {
            body: GzEncoder::new(BufWriter::with_capacity(1 << 20, body), Compression::fast()),
            path,
            header,
            line: Vec::with_capacity(256),
            count: 0,
            first_ms: 0,
            last: None,
        })
    }

    /// Append one reading.
    pub fn write(&mut self, reading: &Reading) -> Result<(), ArchiveError> {
        if !reading.value.is_finite() {
            return Err(ArchiveError::NotFinite {
                path: self.path.clone(),
                index: self.count,
                sensor: reading.sensor.to_string(),
                ts_ms: reading.ts_ms,
                value: reading.value,
            });
        }
        match &mut self.last {
            Some((ts, sensor)) => {
                if (reading.ts_ms, reading.sensor.as_str()) < (*ts, sensor.as_str()) {
                    return Err(ArchiveError::WriteOrder {
                        path: self.path.clone(),
                        index: self.count,
                        sensor: reading.sensor.to_string(),
                        ts_ms: reading.ts_ms,
                        prev_sensor: sensor.clone(),
                        prev_ts_ms: *ts,
                    });
                }
                *ts = reading.ts_ms;
                // Reuse the String: at 15M readings the allocations show.
                sensor.clear();
                sensor.push_str(&reading.sensor);
            }
            None => {
                self.first_ms = reading.ts_ms;
                self.last = Some((reading.ts_ms, reading.sensor.to_string()));
            }
        }
        self.line.clear();
        serde_json::to_writer(&mut self.line, reading)
            .expect("a Reading with a finite value always serializes");
        self.line.push(b'\n');
        self.body.write_all(&self.line).map_err(|e| self.io(e))?;
        self.count += 1;
        Ok(())
    }

    /// Readings written so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Put the header in front, move the archive into place and return the header as written.
    pub fn finish(self) -> Result<ArchiveHeader, ArchiveError> {
        let ArchiveWriter {
            path,
            mut header,
            body,
            count,
            first_ms,
            last,
            ..
        } = self;
        let io = |e: io::Error| ArchiveError::Io {
            path: path.clone(),
            source: e,
        };
        header.readings = count;
        header.from_ms = first_ms;
        header.to_ms = last.map_or(0, |(ts, _)| ts);

        let mut body = body
            .finish()
            .map_err(io)?
            .into_inner()
            .map_err(|e| io(e.into_error()))?;
        body.as_file_mut().seek(SeekFrom::Start(0)).map_err(io)?;

        let out = temp_beside(&path, ".part")?;
        let mut gz = GzEncoder::new(BufWriter::new(out), Compression::default());
        serde_json::to_writer(&mut gz, &header).map_err(|e| io(e.into()))?;
        gz.write_all(b"\n").map_err(io)?;
        let mut out = gz.finish().map_err(io)?;
        io::copy(body.as_file_mut(), &mut out).map_err(io)?;
        let out = out.into_inner().map_err(|e| io(e.into_error()))?;
        out.as_file().sync_all().map_err(io)?;
        out.persist(&path).map_err(|e| io(e.error))?;
        Ok(header)
    }

    fn io(&self, source: io::Error) -> ArchiveError {
        ArchiveError::Io {
            path: self.path.clone(),
            source,
        }
    }
}

/// A temp file in the output's directory, so the final rename stays on one file system.
fn temp_beside(path: &Path, suffix: &str) -> Result<NamedTempFile, ArchiveError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(suffix)
        .tempfile_in(dir)
        .map_err(|source| ArchiveError::Io {
            path: dir.to_path_buf(),
            source,
        })
}

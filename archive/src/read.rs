//! Reading an archive: check the header, then stream the readings with their line numbers.

use crate::error::ArchiveError;
use crate::header::ArchiveHeader;
use flate2::read::MultiGzDecoder;
use floodcmd_model::codec::decode_reading;
use floodcmd_model::time::Millis;
use floodcmd_model::Reading;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

/// The longest header line read: it carries the whole district TOML (the sample's is 64 KiB).
const MAX_HEADER_LINE: usize = 64 << 20;
/// The longest reading line read (one is ~150 bytes). A corrupt or hostile archive can hold a
/// line of gigabytes in a few megabytes of gzip; the reader refuses it rather than holding it.
const MAX_READING_LINE: usize = 1 << 20;

/// Read one line (its newline included) into `buf`, which is cleared first. `Ok(None)` when it
/// is longer than `max` bytes, with `buf` holding its first `max`.
fn read_line_capped(
    input: &mut impl BufRead,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<Option<usize>> {
    buf.clear();
    let n = input.take(max as u64 + 1).read_until(b'\n', buf)?;
    if n > max {
        return Ok(None);
    }
    Ok(Some(n))
}

/// The readings of an open archive, in file order. Each item is one reading line; after the
/// first error the iterator ends (a corrupt stream cannot be resynchronised reliably). At the
/// end it checks that the number of readings equals the header's.
pub struct ArchiveReader {
    path: PathBuf,
    input: BufReader<MultiGzDecoder<File>>,
    buf: Vec<u8>,
    line: u64,
    count: u64,
    expected: u64,
    last: Option<(Millis, String)>,
    done: bool,
}

impl ArchiveReader {
    /// Open an archive: read and check line 1 (format and version), and return the header
    /// with an iterator over the readings.
    pub fn open(path: impl AsRef<Path>) -> Result<(ArchiveHeader, ArchiveReader), ArchiveError> {
        let path = path.as_ref().to_path_buf();
        let io = |source| ArchiveError::Io {
            path: path.clone(),
            source,
        };
        let file = File::open(&path).map_err(io)?;
        let mut input = BufReader::with_capacity(1 << 20, MultiGzDecoder::new(file));
        let mut buf = Vec::new();
        match read_line_capped(&mut input, &mut buf, MAX_HEADER_LINE).map_err(io)? {
            Some(0) => {
                return Err(ArchiveError::Header {
                    path,
                    message: "the file is empty".into(),
                })
            }
            Some(_) => {}
            None => {
                return Err(ArchiveError::Header {
                    path,
                    message: format!("line 1 is longer than {MAX_HEADER_LINE} bytes"),
                })
            }
        }
        let header = parse_header(&path, &buf)?;
        let expected = header.readings;
        Ok((
            header,
            ArchiveReader {
                path,
                input,
                buf: Vec::new(),
                line: 1,
                count: 0,
                expected,
                last: None,
                done: false,
            },
        ))
    }

    /// The archive's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn next_reading(&mut self) -> Result<Option<Reading>, ArchiveError> {
        let n = read_line_capped(&mut self.input, &mut self.buf, MAX_READING_LINE).map_err(
            |source| ArchiveError::Io {
                path: self.path.clone(),
                source,
            },
        )?;
        let Some(n) = n else {
            return Err(ArchiveError::Malformed {
                path: self.path.clone(),
                line: self.line + 1,
                column: MAX_READING_LINE + 1,
                message: format!("the line is longer than {MAX_READING_LINE} bytes"),
            });
        };
        if n == 0 {
            if self.count != self.expected {
                return Err(ArchiveError::CountMismatch {
                    path: self.path.clone(),
                    expected: self.expected,
                    found: self.count,
                });
            }
            return Ok(None);
        }
        self.line += 1;
        let text = self.buf.strip_suffix(b"\n").unwrap_or(&self.buf);
        // The stream stage's decoder: the archive writes the bus's layout, which it reads
        // several times faster than serde_json and falls back to it for anything else. Its
        // error carries no column, so a line it refuses is parsed again for the message.
        let reading: Reading = match decode_reading(text) {
            Ok(r) => r,
            Err(_) => serde_json::from_slice(text).map_err(|e| ArchiveError::Malformed {
                path: self.path.clone(),
                line: self.line,
                column: e.column(),
                message: e.to_string(),
            })?,
        };
        match &mut self.last {
            Some((ts, sensor)) => {
                if (reading.ts_ms, reading.sensor.as_str()) < (*ts, sensor.as_str()) {
                    return Err(ArchiveError::OutOfOrder {
                        path: self.path.clone(),
                        line: self.line,
                        sensor: reading.sensor.to_string(),
                        ts_ms: reading.ts_ms,
                        prev_sensor: sensor.clone(),
                        prev_ts_ms: *ts,
                    });
                }
                *ts = reading.ts_ms;
                sensor.clear();
                sensor.push_str(&reading.sensor);
            }
            None => self.last = Some((reading.ts_ms, reading.sensor.to_string())),
        }
        self.count += 1;
        Ok(Some(reading))
    }
}

impl Iterator for ArchiveReader {
    type Item = Result<Reading, ArchiveError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.next_reading() {
            Ok(Some(r)) => Some(Ok(r)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

/// Check format and version before the full shape, so a file of another kind (or a newer
/// version with new fields) gets an error that says so rather than "unknown field".
fn parse_header(path: &Path, line: &[u8]) -> Result<ArchiveHeader, ArchiveError> {
    let bad = |message: String| ArchiveError::Header {
        path: path.to_path_buf(),
        message,
    };
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let value: serde_json::Value =
        serde_json::from_slice(line).map_err(|e| bad(format!("column {}: {e}", e.column())))?;
    let obj = value
        .as_object()
        .ok_or_else(|| bad("line 1 is not a JSON object".into()))?;
    match obj.get("format").and_then(|f| f.as_str()) {
        Some(ArchiveHeader::FORMAT) => {}
        Some(other) => {
            return Err(ArchiveError::WrongFormat {
                path: path.to_path_buf(),
                found: other.to_string(),
            })
        }
        None => return Err(bad("no \"format\" string".into())),
    }
    match obj.get("version").and_then(|v| v.as_u64()) {
        Some(v) if v == u64::from(ArchiveHeader::VERSION) => {}
        Some(v) => {
            return Err(ArchiveError::UnsupportedVersion {
                path: path.to_path_buf(),
                found: v,
                supported: ArchiveHeader::VERSION,
            })
        }
        None => return Err(bad("no whole-number \"version\"".into())),
    }
    serde_json::from_value(value).map_err(|e| bad(e.to_string()))
}

//! The storm archive: one self-describing file per storm, to replay a real storm through the
//! system and to hand it to someone else.
//!
//! An archive is gzip-compressed NDJSON. Line 1 is an [`ArchiveHeader`]: the format name and
//! version, where the data came from, the time span, the number of readings, and the whole
//! district config TOML the readings belong to (so the file alone is enough to replay it).
//! Every following line is one [`floodcmd_model::Reading`] as serde_json writes it, in
//! event-time order: sorted by `(ts_ms, sensor)`, so the same storm always gives the same
//! bytes.
//!
//! [`ArchiveWriter`] streams readings to a compressed temp file beside the output and puts the
//! header in front at [`ArchiveWriter::finish`] (the header holds counts that are only known at
//! the end). Memory stays flat however long the storm: tens of millions of readings are fine.
//! The file is two concatenated gzip members (header, body); any gzip reader (`zcat`, flate2's
//! `MultiGzDecoder`) reads them as one stream.
//!
//! [`ArchiveReader::open`] checks the header and yields the readings one at a time; a bad line
//! is an [`ArchiveError`] naming the file and the line.

mod error;
mod header;
mod read;
mod write;

pub use error::ArchiveError;
pub use header::ArchiveHeader;
pub use read::ArchiveReader;
pub use write::ArchiveWriter;

//! A CSV file read by column name, whose errors say file, line and column.

use crate::{excerpt, ImportError};
use csv::StringRecord;
use std::fs::File;
use std::path::{Path, PathBuf};

pub(crate) struct Table {
    pub path: PathBuf,
    reader: csv::Reader<File>,
    pub headers: StringRecord,
    /// File size, for progress.
    pub size: u64,
}

impl Table {
    pub fn open(path: &Path) -> Result<Table, ImportError> {
        let open = |source| ImportError::Open {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(open)?;
        let size = file.metadata().map_err(open)?.len();
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(true)
            .from_reader(file);
        let headers = reader.headers().map_err(|e| csv_error(path, e))?.clone();
        Ok(Table {
            path: path.to_path_buf(),
            reader,
            headers,
            size,
        })
    }

    /// The index of a column, or an error naming it.
    pub fn column(&self, name: &str) -> Result<usize, ImportError> {
        self.headers
            .iter()
            .position(|h| h == name)
            .ok_or_else(|| ImportError::MissingColumn {
                path: self.path.clone(),
                column: name.to_string(),
            })
    }

    /// Read the next row into `row`; false at the end.
    pub fn next(&mut self, row: &mut StringRecord) -> Result<bool, ImportError> {
        self.reader
            .read_record(row)
            .map_err(|e| csv_error(&self.path, e))
    }

    /// Bytes read so far.
    pub fn position(&self) -> u64 {
        self.reader.position().byte()
    }

    /// An error about one field of a row.
    pub fn field_error(
        &self,
        row: &StringRecord,
        col: usize,
        message: impl Into<String>,
    ) -> ImportError {
        ImportError::Field {
            path: self.path.clone(),
            line: line_of(row),
            column: self.headers.get(col).unwrap_or("?").to_string(),
            value: excerpt(row.get(col).unwrap_or("")),
            message: message.into(),
        }
    }

    /// A field as text.
    pub fn text<'r>(&self, row: &'r StringRecord, col: usize) -> &'r str {
        row.get(col).unwrap_or("")
    }

    /// A field as a finite number.
    pub fn number(&self, row: &StringRecord, col: usize) -> Result<f64, ImportError> {
        let s = self.text(row, col).trim();
        match s.parse::<f64>() {
            Ok(v) if v.is_finite() => Ok(v),
            _ => Err(self.field_error(row, col, "not a number")),
        }
    }
}

/// The 1-based line a row starts on.
pub(crate) fn line_of(row: &StringRecord) -> u64 {
    row.position().map_or(0, |p| p.line())
}

/// csv's errors carry the line (and, for I/O, the OS error) in their text.
fn csv_error(path: &Path, e: csv::Error) -> ImportError {
    ImportError::Csv {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

//! Replay's JSON-lines files as a sink: each advance's dead letters go to `dead_letters.jsonl`
//! and its forecasts to `forecasts.jsonl`, one record per line, in the advance's order.
//! Progress records are not written: replay's `summary.json` covers the run as a whole.
//!
//! # Error handling
//! A file that cannot be written is a [`WriteError::Fatal`] naming its path: retrying cannot
//! help, and the run stops with it.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use super::build::Advance;
use super::sink::{Context, Sink, WriteError};
use crate::records::json::Json;

/// A file that could not be created or written.
#[derive(Debug, thiserror::Error)]
#[error("cannot write {path}: {source}")]
pub struct FileError {
    /// The path.
    pub path: PathBuf,
    /// Why.
    pub source: std::io::Error,
}

/// One JSON-lines file being written.
struct Lines {
    path: PathBuf,
    out: BufWriter<File>,
}

impl Lines {
    fn create(path: PathBuf) -> Result<Lines, FileError> {
        match File::create(&path) {
            Ok(f) => Ok(Lines {
                out: BufWriter::with_capacity(1 << 20, f),
                path,
            }),
            Err(source) => Err(FileError { path, source }),
        }
    }

    fn fail(&self, source: std::io::Error) -> FileError {
        FileError {
            path: self.path.clone(),
            source,
        }
    }

    /// Writes `records`, one line each, encoding them in `buf`.
    fn write<T: Json>(&mut self, records: &[T], buf: &mut Vec<u8>) -> Result<(), FileError> {
        for r in records {
            buf.clear();
            r.write_json(buf).map_err(|e| self.fail(e.into()))?;
            buf.push(b'\n');
            self.out.write_all(buf).map_err(|e| self.fail(e))?;
        }
        Ok(())
    }
}

/// `forecasts.jsonl` and `dead_letters.jsonl` in a directory.
pub struct FilesSink {
    forecasts: Lines,
    dead_letters: Lines,
    buf: Vec<u8>,
}

impl FilesSink {
    /// Creates (or empties) the two files in `dir`.
    pub fn create(dir: &Path) -> Result<FilesSink, FileError> {
        Ok(FilesSink {
            forecasts: Lines::create(dir.join("forecasts.jsonl"))?,
            dead_letters: Lines::create(dir.join("dead_letters.jsonl"))?,
            buf: Vec::with_capacity(2048),
        })
    }

    /// Flushes both files.
    pub fn finish(mut self) -> Result<(), FileError> {
        self.flush_files()
    }

    fn flush_files(&mut self) -> Result<(), FileError> {
        for lines in [&mut self.forecasts, &mut self.dead_letters] {
            lines.out.flush().map_err(|e| lines.fail(e))?;
        }
        Ok(())
    }
}

impl Sink for FilesSink {
    fn name(&self) -> &'static str {
        "files"
    }

    fn write(&mut self, advance: &Advance, _: &mut Context<'_>) -> Result<u64, WriteError> {
        let fatal = |e: FileError| WriteError::Fatal(Box::new(e));
        let FilesSink {
            forecasts,
            dead_letters,
            buf,
        } = self;
        dead_letters
            .write(&advance.dead_letters, buf)
            .map_err(fatal)?;
        forecasts.write(&advance.forecasts, buf).map_err(fatal)?;
        Ok((advance.dead_letters.len() + advance.forecasts.len()) as u64)
    }

    fn flush(&mut self) -> Result<(), WriteError> {
        self.flush_files()
            .map_err(|e| WriteError::Fatal(Box::new(e)))
    }
}

//! Reading a dataset directory: the layout `replay`, `features` and `generate` share.
//!
//! ```text
//! DIR/sales.{csv,jsonl}       sales            (required unless stock is present)
//! DIR/stock.{csv,jsonl}       stock movements
//! DIR/items.{csv,jsonl}       catalog          (also catalog.*)
//! DIR/stores.{csv,jsonl}      stores
//! DIR/promotions.{csv,jsonl}  promotion calendar
//! ```
//! Other files (e.g. `calendar.csv`, `sell_prices.csv`) are listed as ignored.
//!
//! # Error handling
//! A row that cannot be decoded becomes a [`DeadLetter`] with its file, line, reason and text;
//! reading goes on. Only an unreadable directory or file, or a CSV file without a header, stops
//! the load, with the path in the error.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::decode::{self, CsvRow, DecodeError, JsonRow, Record, Row};

/// Kinds of input file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    /// Sales events.
    Sales,
    /// Stock movements.
    Stock,
    /// Catalog items.
    Catalog,
    /// Stores.
    Stores,
    /// Promotion calendar.
    Promotions,
}

impl FileKind {
    /// The kind of a decoded record.
    pub fn of(record: &Record) -> Self {
        match record {
            Record::Sale(_) => FileKind::Sales,
            Record::Movement(_) => FileKind::Stock,
            Record::Catalog(_) => FileKind::Catalog,
            Record::Store(_) => FileKind::Stores,
            Record::Promotion(_) => FileKind::Promotions,
        }
    }

    /// Reference data: upserts by entity id, no event time.
    pub fn is_reference(self) -> bool {
        matches!(
            self,
            FileKind::Catalog | FileKind::Stores | FileKind::Promotions
        )
    }

    /// The kind's name in summaries and progress records (its serialised form).
    pub fn name(self) -> &'static str {
        match self {
            FileKind::Sales => "sales",
            FileKind::Stock => "stock",
            FileKind::Catalog => "catalog",
            FileKind::Stores => "stores",
            FileKind::Promotions => "promotions",
        }
    }

    fn from_stem(stem: &str) -> Option<Self> {
        match stem {
            "sales" => Some(FileKind::Sales),
            "stock" | "movements" => Some(FileKind::Stock),
            "items" | "catalog" => Some(FileKind::Catalog),
            "stores" => Some(FileKind::Stores),
            "promotions" => Some(FileKind::Promotions),
            _ => None,
        }
    }

    /// Decodes one JSON object (a JSON-lines row or a Kafka record value).
    pub fn decode_json(self, bytes: &[u8]) -> Result<Record, DecodeError> {
        match serde_json::from_slice::<serde_json::Value>(bytes) {
            Ok(serde_json::Value::Object(map)) => self.decode(&JsonRow(&map)),
            Ok(_) => Err(DecodeError::Malformed("not a JSON object".into())),
            Err(e) => Err(DecodeError::Malformed(e.to_string())),
        }
    }

    /// Decodes one row.
    pub fn decode(self, row: &dyn Row) -> Result<Record, DecodeError> {
        Ok(match self {
            FileKind::Sales => Record::Sale(decode::sale(row)?),
            FileKind::Stock => Record::Movement(decode::movement(row)?),
            FileKind::Catalog => Record::Catalog(decode::catalog_item(row)?),
            FileKind::Stores => Record::Store(decode::store(row)?),
            FileKind::Promotions => Record::Promotion(decode::promotion(row)?),
        })
    }
}

/// Where a record came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Origin {
    /// Index into [`Dataset::files`].
    pub file: u32,
    /// 1-based line number (the header is line 1 of a CSV file).
    pub line: u64,
}

/// A record that could not be used, with why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DeadLetter {
    /// File name.
    pub file: String,
    /// 1-based line number.
    pub line: u64,
    /// Stable reason code.
    pub reason: String,
    /// Human explanation.
    pub detail: String,
    /// The record's text as read.
    pub record: String,
}

/// One file read.
#[derive(Clone, Debug, Serialize)]
pub struct FileReport {
    /// File name within the directory.
    pub name: String,
    /// What it holds.
    pub kind: FileKind,
    /// Rows decoded.
    pub rows: u64,
    /// Rows dead-lettered.
    pub rejected: u64,
}

/// A loaded dataset: decoded records in file order and the rows that failed.
#[derive(Debug, Default)]
pub struct Dataset {
    /// Records with their origin.
    pub records: Vec<(Record, Origin)>,
    /// Rows that failed to decode.
    pub dead_letters: Vec<DeadLetter>,
    /// Files read, in the order read.
    pub files: Vec<FileReport>,
    /// Files present but not part of the layout.
    pub ignored: Vec<String>,
}

/// Why a dataset could not be read at all.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The directory or a file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A CSV file whose header row cannot be read.
    #[error("{path}: bad CSV header: {message}")]
    Header {
        /// The path.
        path: PathBuf,
        /// The cause.
        message: String,
    },
    /// Neither sales nor stock files.
    #[error("{0}: no sales.csv, sales.jsonl, stock.csv or stock.jsonl")]
    NoEvents(PathBuf),
}

impl Dataset {
    /// The file name of an origin.
    pub fn file_name(&self, origin: Origin) -> &str {
        &self.files[origin.file as usize].name
    }
}

/// Reads every known file of `dir`, in a fixed order (reference data first).
pub fn load(dir: &Path) -> Result<Dataset, LoadError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| LoadError::Io { path, source }
    };
    let mut found: Vec<(FileKind, PathBuf)> = Vec::new();
    let mut ignored = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let path = entry.map_err(io(dir))?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().to_string());
        let (Some(name), Some(stem), Some(ext)) = (
            name,
            path.file_stem().and_then(|s| s.to_str()),
            path.extension().and_then(|s| s.to_str()),
        ) else {
            continue;
        };
        match (FileKind::from_stem(stem), ext) {
            (Some(kind), "csv" | "jsonl" | "json") => found.push((kind, path.clone())),
            (_, "csv" | "jsonl" | "json") => ignored.push(name),
            _ => {}
        }
    }
    if !found
        .iter()
        .any(|(k, _)| matches!(k, FileKind::Sales | FileKind::Stock))
    {
        return Err(LoadError::NoEvents(dir.to_path_buf()));
    }
    let order = |k: &FileKind| match k {
        FileKind::Stores => 0,
        FileKind::Catalog => 1,
        FileKind::Promotions => 2,
        FileKind::Stock => 3,
        FileKind::Sales => 4,
    };
    found.sort_by(|a, b| (order(&a.0), &a.1).cmp(&(order(&b.0), &b.1)));
    ignored.sort();
    let mut data = Dataset {
        ignored,
        ..Dataset::default()
    };
    for (kind, path) in found {
        read_file(&mut data, kind, &path)?;
    }
    Ok(data)
}

fn read_file(data: &mut Dataset, kind: FileKind, path: &Path) -> Result<(), LoadError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let file_index = data.files.len() as u32;
    let mut report = FileReport {
        name: name.clone(),
        kind,
        rows: 0,
        rejected: 0,
    };
    let file = File::open(path).map_err(|source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut push =
        |result: Result<Record, DecodeError>, line: u64, text: &dyn Fn() -> String| match result {
            Ok(record) => {
                report.rows += 1;
                data.records.push((
                    record,
                    Origin {
                        file: file_index,
                        line,
                    },
                ));
            }
            Err(e) => {
                report.rejected += 1;
                data.dead_letters.push(DeadLetter {
                    file: name.clone(),
                    line,
                    reason: e.reason().to_string(),
                    detail: e.to_string(),
                    record: text(),
                });
            }
        };
    let is_csv = path.extension().is_some_and(|e| e == "csv");
    if is_csv {
        let mut reader = csv::ReaderBuilder::new()
            .flexible(true)
            .from_reader(BufReader::with_capacity(1 << 20, file));
        let header: HashMap<String, usize> = reader
            .headers()
            .map_err(|e| LoadError::Header {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?
            .iter()
            .enumerate()
            .map(|(i, h)| (h.trim().to_string(), i))
            .collect();
        let mut record = csv::StringRecord::new();
        loop {
            let line = reader.position().line() + 1;
            match reader.read_record(&mut record) {
                Ok(false) => break,
                Ok(true) => {
                    let line = record.position().map_or(line, |p| p.line());
                    let row = CsvRow {
                        header: &header,
                        record: &record,
                    };
                    push(kind.decode(&row), line, &|| {
                        record.iter().collect::<Vec<_>>().join(",")
                    });
                }
                Err(e) => {
                    if let csv::ErrorKind::Io(source) = e.kind() {
                        return Err(LoadError::Io {
                            path: path.to_path_buf(),
                            source: std::io::Error::new(source.kind(), source.to_string()),
                        });
                    }
                    push(
                        Err(DecodeError::Malformed(e.to_string())),
                        line,
                        &String::new,
                    );
                }
            }
        }
    } else {
        let reader = BufReader::with_capacity(1 << 20, file);
        for (i, line) in reader.lines().enumerate() {
            let text = line.map_err(|source| LoadError::Io {
                path: path.to_path_buf(),
                source,
            })?;
            if text.trim().is_empty() {
                continue;
            }
            let result = kind.decode_json(text.as_bytes());
            push(result, i as u64 + 1, &|| text.clone());
        }
    }
    data.files.push(report);
    Ok(())
}

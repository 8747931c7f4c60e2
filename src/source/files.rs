//! Reading a dataset directory: the layout `replay`, `features` and `generate` share.
//!
//! ```text
//! DIR/sales.{csv,jsonl}       sales            (required unless stock is present)
//! DIR/stock.{csv,jsonl}       stock movements
//! DIR/items.{csv,jsonl}       catalog          (also catalog.*)
//! DIR/stores.{csv,jsonl}      stores
//! DIR/promotions.{csv,jsonl}  promotion calendar
//! DIR/prices.{csv,jsonl}      price plan
//! ```
//! Other files (e.g. `calendar.csv`, `sell_prices.csv`) are listed as ignored.
//!
//! # Error handling
//! A row that cannot be decoded becomes a [`DeadLetterRecord`] with its file, line, reason and text;
//! reading goes on. Only an unreadable directory or file, or a CSV file without a header, stops
//! the load, with the path in the error.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::decode::{self, CsvRow, DecodeError, JsonFields, Record, Row};
use crate::records::dead::DeadLetterRecord;

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
    /// Price plan.
    Prices,
}

impl FileKind {
    /// Every kind, in a fixed order.
    pub const ALL: [FileKind; 6] = [
        FileKind::Sales,
        FileKind::Stock,
        FileKind::Catalog,
        FileKind::Stores,
        FileKind::Promotions,
        FileKind::Prices,
    ];

    /// The kind of a decoded record.
    pub fn of(record: &Record) -> Self {
        match record {
            Record::Sale(_) => FileKind::Sales,
            Record::Movement(_) => FileKind::Stock,
            Record::Catalog(_) => FileKind::Catalog,
            Record::Store(_) => FileKind::Stores,
            Record::Promotion(_) => FileKind::Promotions,
            Record::PlannedPrice(_) => FileKind::Prices,
        }
    }

    /// Reference data: upserts by entity id, no event time.
    pub fn is_reference(self) -> bool {
        matches!(
            self,
            FileKind::Catalog | FileKind::Stores | FileKind::Promotions | FileKind::Prices
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
            FileKind::Prices => "prices",
        }
    }

    fn from_stem(stem: &str) -> Option<Self> {
        match stem {
            "sales" => Some(FileKind::Sales),
            "stock" | "movements" => Some(FileKind::Stock),
            "items" | "catalog" => Some(FileKind::Catalog),
            "stores" => Some(FileKind::Stores),
            "promotions" => Some(FileKind::Promotions),
            "prices" | "price_plan" => Some(FileKind::Prices),
            _ => None,
        }
    }

    /// Decodes one JSON object (a JSON-lines row or a Kafka record value).
    pub fn decode_json(self, bytes: &[u8]) -> Result<Record, DecodeError> {
        let fields = JsonFields::parse(bytes).map_err(DecodeError::Malformed)?;
        self.decode(&fields)
    }

    /// Decodes one row.
    pub fn decode(self, row: &dyn Row) -> Result<Record, DecodeError> {
        Ok(match self {
            FileKind::Sales => Record::Sale(decode::sale(row)?),
            FileKind::Stock => Record::Movement(decode::movement(row)?),
            FileKind::Catalog => Record::Catalog(decode::catalog_item(row)?),
            FileKind::Stores => Record::Store(decode::store(row)?),
            FileKind::Promotions => Record::Promotion(decode::promotion(row)?),
            FileKind::Prices => Record::PlannedPrice(decode::planned_price(row)?),
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
    pub dead_letters: Vec<DeadLetterRecord>,
    /// Files read, in the order read.
    pub files: Vec<FileReport>,
    /// Files present but not part of the layout.
    pub ignored: Vec<String>,
    /// Files of the layout that hold no row (empty, or a header only).
    pub empty: Vec<String>,
}

/// Why a dataset could not be read at all.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The directory or a file could not be read.
    #[error("cannot read {path}: {cause}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause (shown in the message, so not chained as a source a second time).
        cause: std::io::Error,
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
    /// The dataset directory does not exist or is not a directory.
    #[error("dataset directory {0} does not exist or is not a directory")]
    NoDirectory(PathBuf),
}

/// The dead letter of a decoded record refused with `reason` (a stable code) and `detail`.
pub fn refused(
    file: &str,
    line: u64,
    reason: &str,
    detail: String,
    record: &Record,
) -> DeadLetterRecord {
    DeadLetterRecord::row(file, line, reason, detail, format!("{record:?}"))
}

impl Dataset {
    /// The file name of an origin.
    pub fn file_name(&self, origin: Origin) -> &str {
        &self.files[origin.file as usize].name
    }
}

/// Reads every known file of `dir`, in a fixed order (reference data first).
pub fn load(dir: &Path) -> Result<Dataset, LoadError> {
    let mut records = Vec::new();
    let mut data = scan(dir, &mut |record, origin, _| records.push((record, origin)))?;
    data.records = records;
    Ok(data)
}

/// [`load`] without holding the records: each decoded record goes to `each` with its origin and
/// the files read so far (the record's own last), in the order [`load`] keeps them. The returned
/// dataset has every field but `records`.
pub fn scan(
    dir: &Path,
    each: &mut dyn FnMut(Record, Origin, &[FileReport]),
) -> Result<Dataset, LoadError> {
    if !dir.is_dir() {
        return Err(LoadError::NoDirectory(dir.to_path_buf()));
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |cause| LoadError::Io { path, cause }
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
        FileKind::Prices => 3,
        FileKind::Stock => 4,
        FileKind::Sales => 5,
    };
    found.sort_by(|a, b| (order(&a.0), &a.1).cmp(&(order(&b.0), &b.1)));
    ignored.sort();
    let mut data = Dataset {
        ignored,
        ..Dataset::default()
    };
    for (kind, path) in found {
        read_file(&mut data, kind, &path, each)?;
    }
    Ok(data)
}

fn read_file(
    data: &mut Dataset,
    kind: FileKind,
    path: &Path,
    each: &mut dyn FnMut(Record, Origin, &[FileReport]),
) -> Result<(), LoadError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let file = File::open(path).map_err(|cause| LoadError::Io {
        path: path.to_path_buf(),
        cause,
    })?;
    let is_csv = path.extension().is_some_and(|e| e == "csv");
    read_rows(data, kind, &name, path, is_csv, file, each)
}

/// Decodes the bytes of one input file of `kind` (CSV with a header, or JSON lines) as
/// [`load`] reads a file: the fuzz targets and tests drive the decoders through it.
pub fn decode_bytes(kind: FileKind, csv: bool, bytes: &[u8]) -> Result<Dataset, LoadError> {
    let mut data = Dataset::default();
    let mut records = Vec::new();
    let name = format!("{}.{}", kind.name(), if csv { "csv" } else { "jsonl" });
    let mut each = |record, origin, _: &[FileReport]| records.push((record, origin));
    read_rows(
        &mut data,
        kind,
        &name,
        Path::new(&name),
        csv,
        bytes,
        &mut each,
    )?;
    data.records = records;
    Ok(data)
}

/// One hostile input through every decoder of a record kind: `pick` chooses the kind, `bytes`
/// are a Kafka record value and a whole file. Panics only if a decoder breaks its contract
/// (an error quoting more than a bounded part of its input). The fuzz targets and the
/// hostile-input tests call it.
pub fn exercise(pick: u8, csv: bool, bytes: &[u8]) {
    let kind = FileKind::ALL[usize::from(pick) % FileKind::ALL.len()];
    let bounded = |e: &DecodeError| {
        let text = e.to_string();
        assert!(
            text.len() <= 1024,
            "{} bytes of error: {text:.200}",
            text.len()
        );
    };
    if !csv {
        if let Err(e) = kind.decode_json(bytes) {
            bounded(&e);
        }
    }
    if let Ok(data) = decode_bytes(kind, csv, bytes) {
        for record in &data.records {
            let _ = decode::check_not_future(record.0.ts(), 0);
        }
        for d in &data.dead_letters {
            assert!(d.detail.len() <= 1024, "{} bytes of detail", d.detail.len());
        }
    }
}

fn read_rows(
    data: &mut Dataset,
    kind: FileKind,
    name: &str,
    path: &Path,
    is_csv: bool,
    file: impl std::io::Read,
    each: &mut dyn FnMut(Record, Origin, &[FileReport]),
) -> Result<(), LoadError> {
    let name = name.to_string();
    let file_index = data.files.len() as u32;
    // The file's report is listed while it is read, so `each` sees its name; its counts are
    // final at the end.
    data.files.push(FileReport {
        name: name.clone(),
        kind,
        rows: 0,
        rejected: 0,
    });
    let mut push =
        |result: Result<Record, DecodeError>, line: u64, text: &dyn Fn() -> String| match result {
            Ok(record) => {
                data.files[file_index as usize].rows += 1;
                let origin = Origin {
                    file: file_index,
                    line,
                };
                each(record, origin, &data.files);
            }
            Err(e) => {
                data.files[file_index as usize].rejected += 1;
                let (reason, detail) = (e.reason(), e.to_string());
                data.dead_letters
                    .push(DeadLetterRecord::row(&name, line, reason, detail, text()));
            }
        };
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
        let mut bytes = csv::ByteRecord::new();
        loop {
            match reader.read_byte_record(&mut bytes) {
                Ok(false) => break,
                Ok(true) => {
                    let line = bytes.position().map_or(0, |p| p.line());
                    let lossy = |b: &csv::ByteRecord| {
                        b.iter()
                            .map(String::from_utf8_lossy)
                            .collect::<Vec<_>>()
                            .join(",")
                    };
                    // Checked in place; the record's buffer is reused for the next row.
                    match csv::StringRecord::from_byte_record(std::mem::take(&mut bytes)) {
                        Ok(record) => {
                            let row = CsvRow {
                                header: &header,
                                record: &record,
                            };
                            push(kind.decode(&row), line, &|| lossy(record.as_byte_record()));
                            bytes = record.into_byte_record();
                        }
                        Err(e) => {
                            let field = e.utf8_error().field() + 1;
                            let why = format!("field {field} is not valid UTF-8");
                            bytes = e.into_byte_record();
                            push(Err(DecodeError::Malformed(why)), line, &|| lossy(&bytes));
                        }
                    }
                }
                Err(e) => {
                    if let csv::ErrorKind::Io(cause) = e.kind() {
                        return Err(LoadError::Io {
                            path: path.to_path_buf(),
                            cause: std::io::Error::new(cause.kind(), cause.to_string()),
                        });
                    }
                    let line = e
                        .position()
                        .map_or_else(|| reader.position().line(), |p| p.line());
                    push(
                        Err(DecodeError::Malformed(e.to_string())),
                        line,
                        &String::new,
                    );
                }
            }
        }
    } else {
        let mut reader = BufReader::with_capacity(1 << 20, file);
        let mut bytes = Vec::new();
        let mut line = 0u64;
        loop {
            bytes.clear();
            let n = reader
                .read_until(b'\n', &mut bytes)
                .map_err(|cause| LoadError::Io {
                    path: path.to_path_buf(),
                    cause,
                })?;
            if n == 0 {
                break;
            }
            line += 1;
            let text = bytes.trim_ascii();
            if text.is_empty() {
                continue;
            }
            // Bytes that are not UTF-8 fail to decode (`malformed`); the dead letter shows them
            // lossily.
            let result = kind.decode_json(text);
            push(result, line, &|| String::from_utf8_lossy(text).into_owned());
        }
    }
    let report = &data.files[file_index as usize];
    if report.rows == 0 && report.rejected == 0 {
        tracing::warn!(file = %path.display(), "input file holds no rows");
        data.empty.push(name.clone());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::dead::{DeadContent, DeadSource};

    #[test]
    fn bytes_that_are_not_utf8_are_dead_letters_with_their_line_and_text() {
        let dir = tempfile::tempdir().unwrap();
        // Line 3 holds "café" in Windows-1252 (0xE9), line 5 in a JSON-lines file likewise.
        let mut csv = b"ts,store_id,sku_id,qty\n2024-01-01,S1,A,1\n2024-01-01,S1,caf".to_vec();
        csv.extend_from_slice(b"\xe9,2\n2024-01-02,S1,A,3\n");
        std::fs::write(dir.path().join("sales.csv"), &csv).unwrap();
        let mut jsonl =
            br#"{"ts":"2024-01-01","store_id":"S1","sku_id":"A","kind":"receipt","qty":1}"#
                .to_vec();
        jsonl.extend_from_slice(b"\n\n\n\n{\"sku_id\":\"caf\xe9\"}\n");
        std::fs::write(dir.path().join("stock.jsonl"), &jsonl).unwrap();
        let data = load(dir.path()).unwrap();
        assert_eq!(data.records.len(), 3);
        let dl: Vec<(&str, u64, &str, &str)> = data
            .dead_letters
            .iter()
            .map(|d| match (&d.source, &d.content) {
                (DeadSource::File { file, line }, DeadContent::Row { record }) => {
                    (file.as_str(), *line, d.reason.as_str(), record.as_str())
                }
                other => panic!("not a file's dead letter: {other:?}"),
            })
            .collect();
        assert_eq!(
            dl,
            vec![
                (
                    "stock.jsonl",
                    5,
                    "malformed",
                    "{\"sku_id\":\"caf\u{FFFD}\"}"
                ),
                ("sales.csv", 3, "malformed", "2024-01-01,S1,caf\u{FFFD},2"),
            ]
        );
        assert!(data.empty.is_empty());
    }

    #[test]
    fn empty_files_are_listed_and_a_missing_directory_is_one_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("sales.csv"), "ts,store_id,sku_id,qty\n").unwrap();
        std::fs::write(dir.path().join("stock.jsonl"), "").unwrap();
        let data = load(dir.path()).unwrap();
        assert_eq!(data.empty, vec!["stock.jsonl", "sales.csv"]);
        let missing = dir.path().join("nope");
        let err = load(&missing).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "dataset directory {} does not exist or is not a directory",
                missing.display()
            )
        );
    }
}

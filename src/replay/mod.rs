//! `replay` and `features`: the feature dataflow over a dataset directory.
//!
//! `replay` runs on the worker's own driver and output path (`stream`):
//! ```text
//! DIR -> source::files::load -> source::topics (what `load` would publish, in memory)
//!     -> kafka::stream::run_in_memory (the worker's loop: feeder, watermarks, beacons, merger)
//!     -> per advance: each epoch's changed series in name order -> output::Outputs
//!        (catch_up = "every_epoch": scored, planned, forecast records)
//!        -> output::files::FilesSink -> dead_letters.jsonl, forecasts.jsonl
//!     -> summary.json
//! ```
//! Replay presents a dataset's timed events in event-time order (ties in file order): it
//! replays history as it happened. Reference data (stores, catalog, promotions, and what is
//! derived where the dataset lacks it) comes first. Late arrivals are exercised through the
//! library API by the tests.
//!
//! `features` (and the training history, `model::history`) still run on `pipeline::run`, which
//! schedules every event's epoch up front: `DIR -> prepare -> pipeline::plan -> pipeline::run`.
//!
//! # Error handling
//! Rows that do not decode, and events the input stage refuses (dated before 1970, or further
//! ahead than `time.max_future_secs`), are dead-lettered with file, line and reason; the run
//! goes on. Unreadable input or unwritable output stops the run with the path.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use dataflows::{Epoch, Event, FeatureVec, Key, Schema};
use serde::Serialize;

use crate::config::Resolved;
use crate::display::rfc3339;
use crate::output::files::FileError;
use crate::output::WriteError;
use crate::pipeline;
use crate::source::files::{self, LoadError};
use crate::source::prepare::prepare;

mod stream;

pub use stream::replay;

/// Why a replay failed as a whole.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The dataset could not be read.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// An output file could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The forecaster does not fit the feature schema.
    #[error(transparent)]
    Forecaster(#[from] crate::model::ForecasterError),
    /// The dataflow failed.
    #[error(transparent)]
    Run(#[from] pipeline::RunError),
    /// Neither the model nor the baseline could score.
    #[error(transparent)]
    Scoring(#[from] crate::output::BuildError),
    /// The output files could not be written.
    #[error("output: {0}")]
    Output(#[from] WriteError),
    /// The output path stopped (`--driver stream`).
    #[error("output: {0}")]
    Outputs(#[from] crate::output::OutputError),
    /// The streaming driver failed (`--driver stream`).
    #[error(transparent)]
    Stream(#[from] crate::kafka::stream::StreamError),
    /// A record could not be encoded as the topics hold it (`--driver stream`).
    #[error("cannot encode a record: {0}")]
    Encode(#[from] serde_json::Error),
}

impl From<FileError> for ReplayError {
    fn from(e: FileError) -> Self {
        ReplayError::Write {
            path: e.path,
            source: e.source,
        }
    }
}

/// Summary of keys scored per epoch.
#[derive(Debug, Default, Serialize)]
pub struct ScoredStats {
    /// Sum over epochs.
    pub total: u64,
    /// Largest epoch.
    pub max: u64,
    /// Mean over epochs.
    pub mean: f64,
}

/// `summary.json`.
#[derive(Debug, Serialize)]
pub struct Summary {
    /// Dataset read.
    pub data_dir: String,
    /// `day` or `week`.
    pub period: dataflows::PeriodKind,
    /// Epoch length.
    pub epoch_secs: u64,
    /// Timely workers.
    pub workers: usize,
    /// Feature schema hash.
    pub schema_hash: String,
    /// Number of features.
    pub features: usize,
    /// Series the baseline scored because the model could not (see `model::scorer`).
    pub scoring_fallbacks: u64,
    /// Forecaster used.
    pub model: String,
    /// Records read per kind.
    pub events_read: BTreeMap<&'static str, u64>,
    /// Events applied after their epoch had closed.
    pub late_events: u64,
    /// Dead letters by reason.
    pub dead_letters: BTreeMap<String, u64>,
    /// Epochs in which a series changed.
    pub epochs: u64,
    /// Series seen.
    pub keys: u64,
    /// Series scored per epoch.
    pub keys_scored_per_epoch: ScoredStats,
    /// First and last epoch end.
    pub first_epoch_end: Option<String>,
    /// Last epoch end.
    pub last_epoch_end: Option<String>,
    /// Wall-clock seconds of load plus run.
    pub wall_secs: f64,
    /// Records read per wall-clock second.
    pub events_per_sec: f64,
    /// Files read.
    pub files: Vec<files::FileReport>,
    /// Files present but not used.
    pub ignored_files: Vec<String>,
    /// Input files of the layout that hold no row (each also logged as a warning).
    pub empty_files: Vec<String>,
}

fn write_err(path: &Path) -> impl Fn(std::io::Error) -> ReplayError + '_ {
    move |source| ReplayError::Write {
        path: path.to_path_buf(),
        source,
    }
}

fn create(path: &Path) -> Result<BufWriter<File>, ReplayError> {
    Ok(BufWriter::with_capacity(
        1 << 20,
        File::create(path).map_err(write_err(path))?,
    ))
}

/// Options of `replay`.
pub struct ReplayOptions {
    /// Dataset directory.
    pub data: PathBuf,
    /// Output directory (created).
    pub out: PathBuf,
    /// Timely workers.
    pub workers: usize,
    /// Show a progress bar (on a terminal).
    pub progress: bool,
}

/// Writes `summary` to `summary.json` in `out`.
fn write_summary(out: &Path, summary: &Summary) -> Result<(), ReplayError> {
    let summary_path = out.join("summary.json");
    let mut w = create(&summary_path)?;
    serde_json::to_writer_pretty(&mut w, summary)
        .map_err(std::io::Error::from)
        .and_then(|_| w.write_all(b"\n"))
        .and_then(|_| w.flush())
        .map_err(write_err(&summary_path))
}

/// What `features` wrote.
#[derive(Debug, Serialize)]
pub struct FeatureTable {
    /// Series in the table.
    pub rows: usize,
    /// The instant the table is as of.
    pub as_of: String,
    /// Feature schema hash.
    pub schema_hash: String,
}

/// Computes the point-in-time feature table of every series from the events with `ts <= as_of`,
/// through the same dataflow, and writes it as CSV.
pub fn feature_table(
    cfg: &Resolved,
    data_dir: &Path,
    as_of: i64,
    out: &Path,
    workers: usize,
) -> Result<FeatureTable, ReplayError> {
    let data = files::load(data_dir)?;
    let mut prepared = prepare(cfg, data, Some(as_of));
    let events = std::mem::take(&mut prepared.events);
    let table = latest_features(cfg, events, as_of, workers)?;
    let schema = cfg.spec.schema();
    let mut rows: Vec<(crate::ids::SeriesNames, &FeatureVec)> = table
        .iter()
        .map(|(k, v)| (prepared.dict.names(k), v))
        .collect();
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    let mut w = csv::Writer::from_writer(create(out)?);
    let csv_err = |e: csv::Error| ReplayError::Write {
        path: out.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    };
    let mut header = vec!["store_id".to_string(), "sku_id".to_string()];
    header.extend(schema.names().map(str::to_string));
    w.write_record(&header).map_err(csv_err)?;
    for ((store, sku), vec) in &rows {
        let mut record = vec![store.to_string(), sku.to_string()];
        record.extend((0..schema.features.len()).map(|i| format_value(&schema, vec, i)));
        w.write_record(&record).map_err(csv_err)?;
    }
    w.flush().map_err(write_err(out))?;
    Ok(FeatureTable {
        rows: rows.len(),
        as_of: rfc3339(as_of),
        schema_hash: schema.hash,
    })
}

/// Runs the dataflow over `events` (arrival order) through the epoch containing `as_of` and
/// returns every series' features.
pub fn latest_features(
    cfg: &Resolved,
    events: Vec<Event>,
    as_of: i64,
    workers: usize,
) -> Result<HashMap<Key, FeatureVec>, ReplayError> {
    let until: Option<Epoch> = cfg.clock.epoch_of(as_of);
    let plan = pipeline::plan(&cfg.clock, cfg.allowed_lateness_secs, &events, until);
    let mut table: HashMap<Key, FeatureVec> = HashMap::new();
    pipeline::run(
        cfg.clock,
        &cfg.spec,
        workers,
        Arc::new(events),
        Arc::new(plan),
        |out| table.extend(out.changed),
    )?;
    Ok(table)
}

/// A feature value as CSV text: empty when missing, integers for counts, else up to 3 decimals.
pub fn format_value(schema: &Schema, vec: &FeatureVec, i: usize) -> String {
    match vec.raw(i) {
        None => String::new(),
        Some(v) if schema.features[i].scale == 1 => v.to_string(),
        Some(v) => {
            let scale = schema.features[i].scale;
            let sign = if v < 0 { "-" } else { "" };
            let (int, frac) = (
                v.unsigned_abs() / scale as u64,
                v.unsigned_abs() % scale as u64,
            );
            if frac == 0 {
                format!("{sign}{int}")
            } else {
                let digits = scale.ilog10() as usize;
                let f = format!("{frac:0digits$}");
                format!("{sign}{int}.{}", f.trim_end_matches('0'))
            }
        }
    }
}

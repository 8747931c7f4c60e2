//! `replay` and `features`: the feature dataflow over a dataset directory.
//!
//! `replay` runs on the worker's own driver and output path (`stream`):
//! ```text
//! DIR -> source::files::load -> source::topics (what `load` would publish, in memory)
//!     -> pipeline::stream::run (the worker's loop: feeder, watermarks, beacons, merger)
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
//! `features` runs on the same driver (`features`): the events up to an instant, the windows
//! moved on to it, each series' last feature vector kept.
//!
//! # Error handling
//! Rows that do not decode, and events the input stage refuses (dated before 1970, or further
//! ahead than `time.max_future_secs`), are dead-lettered with file, line and reason; the run
//! goes on. Unreadable input or unwritable output stops the run with the path.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::output::files::FileError;
use crate::output::WriteError;
use crate::source::files::{self, LoadError};

mod features;
mod stream;

pub use features::{feature_table, format_value, latest_features, FeatureTable, LatestFeatures};
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
    /// Neither the model nor the baseline could score.
    #[error(transparent)]
    Scoring(#[from] crate::output::BuildError),
    /// The output files could not be written.
    #[error("output: {0}")]
    Output(#[from] WriteError),
    /// The output path stopped.
    #[error("output: {0}")]
    Outputs(#[from] crate::output::OutputError),
    /// The streaming driver failed.
    #[error(transparent)]
    Stream(#[from] crate::pipeline::stream::StreamError),
    /// A record could not be encoded as the topics hold it.
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

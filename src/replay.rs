//! `replay` and `features`: the feature dataflow over a dataset directory.
//!
//! ```text
//! DIR -> source::files::load -> prepare (ids, milli-units, time order) -> pipeline::plan
//!     -> pipeline::run -> per closed epoch: refused events as dead letters; the changed
//!                         series, in name order, through output::build::Builder (the
//!                         worker's: scored, planned, forecast records, every epoch's)
//!                         -> output::files::FilesSink -> dead_letters.jsonl, forecasts.jsonl
//!     -> summary.json
//! ```
//! Replay presents a dataset's timed events in event-time order (ties in file order): it
//! replays history as it happened. Reference data (stores, catalog, promotions) is applied
//! first. Late arrivals are exercised through the library API by the tests.
//!
//! # Error handling
//! Bad rows, unknown ids and events too old to matter are dead-lettered with file, line and
//! reason; the run goes on. Unreadable input or unwritable output stops the run with the path.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use dataflows::{Epoch, Event, FeatureVec, Key, Schema};
use serde::Serialize;

use crate::config::Resolved;
use crate::display::{progress_bar, rfc3339};
use crate::kafka::progress::Progress;
use crate::kafka::stream::Changed;
use crate::output::files::{FileError, FilesSink};
use crate::output::{Advance, Builder, Context, Sink, Stats, Stopping, WriteError};
use crate::pipeline::{self, EpochOutput};
use crate::records::DeadLetterRecord;
use crate::source::files::{self, LoadError, Origin};
use crate::source::prepare::prepare;

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
    /// Epochs closed.
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

/// The dead letter of an event the input stage refused.
fn refused(
    data_files: &[files::FileReport],
    origins: &[Origin],
    events: &[Event],
    index: u32,
    why: &dataflows::input::Rejection,
) -> DeadLetterRecord {
    let origin = origins[index as usize];
    DeadLetterRecord::row(
        &data_files[origin.file as usize].name,
        origin.line,
        why.reason(),
        format!("{why:?}"),
        format!("{:?}", events[index as usize]),
    )
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

/// Runs `replay`; returns the summary it also writes.
pub fn replay(cfg: &Resolved, opts: &ReplayOptions) -> Result<Summary, ReplayError> {
    let started = Instant::now();
    std::fs::create_dir_all(&opts.out).map_err(write_err(&opts.out))?;
    let data = files::load(&opts.data)?;
    let file_reports = data.files.clone();
    let ignored = data.ignored.clone();
    let empty = data.empty.clone();
    let mut prepared = prepare(cfg, data, None);
    let events = Arc::new(std::mem::take(&mut prepared.events));
    let schema = cfg.spec.schema();
    let fallbacks = prometheus::IntCounter::new("scoring_fallbacks", "replay's own count")
        .expect("a valid counter");
    let (scorer, _) = crate::model::scorer(cfg, fallbacks.clone())?;
    let model = scorer.model().name().to_string();
    // The same builder as the worker's, so a replay's records are the worker's records.
    let mut builder =
        Builder::new(cfg, scorer, None, None, Arc::new(Progress::default())).every_epoch();
    let plan = pipeline::plan(&cfg.clock, cfg.allowed_lateness_secs, &events, None);

    // The files are a sink like the worker's stores; nothing here stops or retries.
    let mut files = FilesSink::create(&opts.out)?;
    let (sink_progress, stop, mut stats) = (
        Progress::default(),
        Stopping::new(Arc::new(AtomicBool::new(false))),
        Stats::default(),
    );
    let mut dead_counts: BTreeMap<String, u64> = BTreeMap::new();
    let mut write = |advance: &Advance| -> Result<(), WriteError> {
        for d in &advance.dead_letters {
            *dead_counts.entry(d.reason.clone()).or_default() += 1;
        }
        let mut cx = Context {
            progress: &sink_progress,
            stop: &stop,
            stats: &mut stats,
        };
        files.write(advance, &mut cx).map(|_| ())
    };
    write(&Advance {
        dead_letters: std::mem::take(&mut prepared.dead_letters),
        ..Advance::default()
    })?;

    let progress = progress_bar(
        plan.steps.len() as u64,
        "{elapsed_precise} [{bar:40}] {pos}/{len} epochs {msg}",
        opts.progress,
    );

    let mut scored = ScoredStats::default();
    let mut epochs = 0u64;
    let mut io_error: Option<ReplayError> = None;
    let mut first_end = None;
    let mut last_end = None;
    let late = plan.late.len() as u64;
    let keys = distinct_keys(&events);
    let output = |mut out: EpochOutput| {
        if io_error.is_some() {
            return;
        }
        epochs += 1;
        progress.inc(1);
        let end = rfc3339(cfg.clock.epoch_end(out.epoch));
        first_end.get_or_insert_with(|| end.clone());
        let n = out.changed.len() as u64;
        let result = (|| -> Result<(), ReplayError> {
            let dead_letters = (out.rejected.iter())
                .map(|(i, why)| refused(&file_reports, &prepared.origins, &events, *i, why))
                .collect();
            write(&Advance {
                dead_letters,
                ..Advance::default()
            })?;
            // Each epoch's records in name order, whatever the worker count.
            let dict = &prepared.dict;
            out.changed.sort_by_cached_key(|(k, _)| dict.names(k));
            let changed = Changed {
                frontier: Some(out.epoch + 1),
                changed: vec![(out.epoch, out.changed)],
                ..Changed::default()
            };
            let mut refused = None;
            builder.forecasts(changed, dict, |chunk| match write(chunk) {
                Ok(()) => true,
                Err(e) => {
                    refused = Some(e);
                    false
                }
            })?;
            refused.map_or(Ok(()), |e| Err(e.into()))
        })();
        if let Err(e) = result {
            io_error = Some(e);
        }
        scored.total += n;
        scored.max = scored.max.max(n);
        last_end = Some(end);
    };
    pipeline::run(
        cfg.clock,
        &cfg.spec,
        opts.workers,
        Arc::clone(&events),
        Arc::new(plan),
        output,
    )?;
    progress.finish_and_clear();
    if let Some(e) = io_error {
        return Err(e);
    }
    files.finish()?;
    scored.mean = if epochs > 0 {
        scored.total as f64 / epochs as f64
    } else {
        0.0
    };
    let wall = started.elapsed().as_secs_f64();
    let read: u64 = prepared.counts.values().sum();
    let summary = Summary {
        data_dir: opts.data.display().to_string(),
        period: cfg.clock.period_kind(),
        epoch_secs: cfg.clock.epoch_secs(),
        workers: opts.workers,
        schema_hash: schema.hash.clone(),
        features: schema.features.len(),
        scoring_fallbacks: fallbacks.get(),
        model,
        events_read: prepared.counts.clone(),
        late_events: late,
        dead_letters: dead_counts,
        epochs,
        keys,
        keys_scored_per_epoch: scored,
        first_epoch_end: first_end,
        last_epoch_end: last_end,
        wall_secs: wall,
        events_per_sec: read as f64 / wall.max(1e-9),
        files: file_reports,
        ignored_files: ignored,
        empty_files: empty,
    };
    let summary_path = opts.out.join("summary.json");
    let mut w = create(&summary_path)?;
    serde_json::to_writer_pretty(&mut w, &summary)
        .map_err(std::io::Error::from)
        .and_then(|_| w.write_all(b"\n"))
        .and_then(|_| w.flush())
        .map_err(write_err(&summary_path))?;
    Ok(summary)
}

fn distinct_keys(events: &[Event]) -> u64 {
    let mut keys: Vec<Key> = events.iter().filter_map(Event::key).collect();
    keys.sort_unstable();
    keys.dedup();
    keys.len() as u64
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

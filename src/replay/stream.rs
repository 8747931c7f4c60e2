//! `replay` on the worker's streaming driver (see the parent module's picture).
//!
//! The dataset is read as the broker's topics would be, so what differs from the worker on
//! Kafka is only where the records come from and where they go: one partition per input kind,
//! read by the first worker (`source::topics`), and the JSON-lines files. The output is the
//! same whatever the number of workers: every event falls in its own epoch, and each epoch's
//! series are written in name order. A dead letter names the file and line of its record.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use dataflows::{Epoch, Key};

use crate::config::{CatchUp, Resolved};
use crate::display::rfc3339;
use crate::ids::Dictionary;
use crate::output::files::FilesSink;
use crate::output::{Advance, Context, OutputError, Outputs, Sink, Stats, Stopping};
use crate::pipeline::progress::Progress;
use crate::pipeline::stream::{
    self, Changed, Closed, Commit, Delivered, Handler, StreamOptions, Undelivered,
};
use crate::source::files::{self, FileKind};
use crate::source::topics::Topics;

use super::{write_summary, ReplayError, ReplayOptions, ScoredStats, Summary};

/// Hands [`Outputs`] each epoch's series in name order (as replay writes them, whatever the
/// worker count), and each dead record with its file and line; counts what replay's summary
/// reports.
struct InNameOrder<'a> {
    outputs: &'a mut Outputs,
    topics: &'a Topics,
    /// Records read so far, out of every record held.
    bar: indicatif::ProgressBar,
    progress: &'a Progress,
    scored: ScoredStats,
    /// Epochs in which any series changed.
    epochs: u64,
    keys: HashSet<Key>,
    first: Option<Epoch>,
    last: Option<Epoch>,
}

impl Handler for InNameOrder<'_> {
    fn changed(&mut self, mut changed: Changed, dict: &Dictionary) -> Delivered {
        for (epoch, series) in &mut changed.changed {
            series.sort_by_cached_key(|(k, _)| dict.names(k));
            let n = series.len() as u64;
            self.epochs += u64::from(n > 0);
            self.scored.total += n;
            self.scored.max = self.scored.max.max(n);
            self.keys.extend(series.iter().map(|(k, _)| *k));
            self.first.get_or_insert(*epoch);
            self.last = self.last.max(Some(*epoch));
        }
        let read = self.progress.consumed.load(Ordering::Relaxed);
        self.bar.set_position(read);
        self.outputs.changed(changed, dict)
    }

    fn closed(&mut self, mut closed: Closed) -> Result<Option<Commit>, Undelivered> {
        for d in &mut closed.dead {
            let origin = self.topics.origin(&d.partition.topic, d.offset);
            d.row = origin.map(|(file, line)| (file.to_string(), line));
        }
        self.outputs.closed(closed)
    }

    fn commit(&mut self, commit: Commit) -> bool {
        self.outputs.commit(commit)
    }
}

/// Runs `replay` on the streaming driver; returns the summary it also writes.
pub fn replay(cfg: &Resolved, opts: &ReplayOptions) -> Result<Summary, ReplayError> {
    let started = Instant::now();
    std::fs::create_dir_all(&opts.out).map_err(super::write_err(&opts.out))?;
    let data = files::load(&opts.data)?;
    let file_reports = data.files.clone();
    let ignored = data.ignored.clone();
    let empty = data.empty.clone();
    let refused = data.dead_letters.clone();
    let mut events_read: BTreeMap<&'static str, u64> = BTreeMap::new();
    for (record, _) in &data.records {
        *events_read.entry(FileKind::of(record).name()).or_default() += 1;
    }
    let topics = Arc::new(Topics::new(
        data,
        cfg.clock.period_kind(),
        &cfg.kafka.topics,
        None,
    )?);

    let mut cfg = cfg.clone();
    cfg.output.catch_up = CatchUp::EveryEpoch;
    let fallbacks = prometheus::IntCounter::new("scoring_fallbacks", "replay's own count")
        .expect("a valid counter");
    let (scorer, _) = crate::model::scorer(&cfg, fallbacks.clone())?;
    let model = scorer.model().name().to_string();

    // Rows that did not decode come first, before the events the dataflow refuses.
    let mut files = FilesSink::create(&opts.out)?;
    let mut stats = Stats::default();
    let progress = Arc::new(Progress::default());
    files.write(
        &Advance {
            dead_letters: refused.clone(),
            ..Advance::default()
        },
        &mut Context {
            progress: &progress,
            stop: &Stopping::new(Arc::new(AtomicBool::new(false))),
            stats: &mut stats,
        },
    )?;
    let mut outputs = Outputs::to_sinks(&cfg, scorer, vec![Box::new(files)], Arc::clone(&progress));
    let bar = crate::display::progress_bar(
        topics.len() as u64,
        "{elapsed_precise} [{bar:40}] {pos}/{len} records {per_sec}",
        opts.progress,
    );
    let mut handler = InNameOrder {
        outputs: &mut outputs,
        topics: &topics,
        bar: bar.clone(),
        progress: &progress,
        scored: ScoredStats::default(),
        epochs: 0,
        keys: HashSet::new(),
        first: None,
        last: None,
    };
    let run = StreamOptions {
        progress: Arc::clone(&progress),
        ..StreamOptions::to_the_end(opts.workers)
    };
    // The dataset is read to its end, in this process alone, without checkpoints.
    stream::run(
        &cfg,
        &run,
        Arc::new(Arc::clone(&topics)),
        None,
        &mut handler,
    )?;
    bar.finish_and_clear();
    let InNameOrder {
        mut scored,
        epochs,
        keys,
        first,
        last,
        ..
    } = handler;
    if let Some(why) = outputs.failure() {
        return Err(OutputError::Halted(why.to_string()).into());
    }
    outputs.flush()?;
    let stats = outputs.stats();

    let mut dead_letters: BTreeMap<String, u64> = stats.dead_letters.clone();
    for d in &refused {
        *dead_letters.entry(d.reason.clone()).or_default() += 1;
    }
    scored.mean = if epochs > 0 {
        scored.total as f64 / epochs as f64
    } else {
        0.0
    };
    let schema = cfg.spec.schema();
    let wall = started.elapsed().as_secs_f64();
    let summary = Summary {
        data_dir: opts.data.display().to_string(),
        period: cfg.clock.period_kind(),
        epoch_secs: cfg.clock.epoch_secs(),
        workers: opts.workers,
        schema_hash: schema.hash.clone(),
        features: schema.features.len(),
        scoring_fallbacks: fallbacks.get(),
        model,
        events_read,
        late_events: stats.late,
        dead_letters,
        epochs,
        keys: keys.len() as u64,
        keys_scored_per_epoch: scored,
        first_epoch_end: first.map(|e| rfc3339(cfg.clock.epoch_end(e))),
        last_epoch_end: last.map(|e| rfc3339(cfg.clock.epoch_end(e))),
        wall_secs: wall,
        events_per_sec: topics.len() as f64 / wall.max(1e-9),
        files: file_reports,
        ignored_files: ignored,
        empty_files: empty,
    };
    write_summary(&opts.out, &summary)?;
    Ok(summary)
}

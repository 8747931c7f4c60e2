//! The worker's output path: for each advance of the closed frontier, the records it makes and
//! every store they go to, then the input offsets. Every process runs one, on the thread that
//! called [`crate::pipeline::stream::run`] (which calls it as its [`Handler`]).
//!
//! ```text
//! every process:  Changed (the series its own workers changed in the epochs closed)
//!   build::Builder::forecasts  catch_up; score (the model, or the baseline where it fails);
//!                              plan; forecast records, 16,384 at a time ──► Advance
//!                              (while the sinks write the previous part, on the writer thread)
//!   every sink, at once:       retry::write_until_done(sink, &advance), a thread each
//!       postgres::MartSink     history and current tables, a share of the series per
//!                              connection, a transaction each
//!       redis::CacheSink       the newest record of each series, one MULTI/EXEC
//!       kafka::KafkaSink       stockcast.forecasts
//!   ──► Delivered, through the dataflow to process 0
//! process 0:      Closed (an advance every process acknowledged: counts, dead records,
//!                 committable offsets)
//!   build::Builder::progress   dead letters, a progress record per epoch ──► Advance
//!   every sink, at once:       the mart's progress rows; the dead letters, then the
//!                              progress records on Kafka
//!   ──► Commit, split by the process that reads each partition, through the dataflow
//! every process:  committer::Committer   its own partitions' input offsets, with the
//!                                        frontier in the metadata
//! ```
//!
//! - **A sink** is one type implementing [`Sink`]: it writes one advance, and may be called
//!   again with the same advance after an error until it succeeds. [`retry`] is the one place
//!   that backs off, counts attempts and failures per sink, and reports an outage.
//! - **Order**: a progress record is written only once every process's forecasts of its epoch
//!   are in every sink, and the offsets are committed (each process its own partitions) only
//!   after that.
//! - **Halting**: once an advance was not written (the run stopped, or a sink failed for good),
//!   nothing more is written or committed in this run, so offsets and progress records never
//!   pass undelivered output; the next run reads again from the committed offsets.

pub mod build;
pub mod catch_up;
mod committer;
pub mod files;
pub mod kafka;
pub mod postgres;
pub mod redis;
pub mod retry;
mod sink;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};

use crate::config::Resolved;
use crate::display::rfc3339;
use crate::ids::Dictionary;
use crate::model::scorer::{ModelWatch, Scorer};
use crate::pipeline::progress::Progress;
use crate::pipeline::stream::{Changed, Closed, Commit, Delivered, Handler, Undelivered};

pub use self::build::{Advance, BuildError, Builder};
use self::committer::Committer;
pub use self::sink::{Context, OutputError, Sink, Stats, Stopping, WriteError, STOP_GRACE};

/// Why an advance was not delivered.
#[derive(Debug)]
enum Halt {
    /// The run was told to stop first.
    Stopped,
    /// Delivery cannot succeed: the run stops with this error.
    Fatal(String),
}

/// The output path of a worker: builds each advance's records, writes them to every sink,
/// then commits the input offsets.
pub struct Outputs {
    builder: Builder,
    sinks: Vec<Box<dyn Sink>>,
    /// `None` when the input has no offsets to commit (a dataset read in memory).
    committer: Option<Committer>,
    progress: Arc<Progress>,
    stop: Stopping,
    stats: Stats,
    /// Set once an advance was not delivered: nothing more is written or committed.
    halted: Option<Halt>,
    /// The first epoch whose forecasts are not all in every sink (`None`: all, the run
    /// finished).
    through: Option<dataflows::Epoch>,
    /// The frontier of the last offsets committed: an older commit arriving late is skipped
    /// rather than moving them back.
    committed: dataflows::Epoch,
}

impl Outputs {
    /// The configured sinks (the mart and the cache when their URLs are set, then Kafka), a
    /// builder scoring with `scorer`, and the committer of `cfg`'s consumer group.
    pub fn new(
        cfg: &Resolved,
        scorer: Scorer,
        watch: Option<ModelWatch>,
        resume_from: Option<dataflows::Epoch>,
        stop: Arc<AtomicBool>,
        progress: Arc<Progress>,
    ) -> Result<Outputs, OutputError> {
        let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
        if !cfg.postgres.url.is_empty() {
            sinks.push(Box::new(postgres::MartSink::new(&cfg.postgres)?));
        }
        if !cfg.redis.url.is_empty() {
            sinks.push(Box::new(redis::CacheSink::new(&cfg.redis)?));
        }
        sinks.push(Box::new(kafka::KafkaSink::new(cfg)?));
        Ok(Outputs {
            builder: Builder::new(cfg, scorer, watch, resume_from, Arc::clone(&progress)),
            sinks,
            committer: Some(Committer::new(cfg)?),
            progress,
            stop: Stopping::new(stop),
            stats: Stats::default(),
            halted: None,
            through: Some(0),
            committed: 0,
        })
    }

    /// Why the run failed, if an advance could not be delivered for good.
    /// Outputs to `sinks` alone, committing nothing: for input read from files.
    pub fn to_sinks(
        cfg: &Resolved,
        scorer: Scorer,
        sinks: Vec<Box<dyn Sink>>,
        progress: Arc<Progress>,
    ) -> Outputs {
        Outputs {
            builder: Builder::new(cfg, scorer, None, None, Arc::clone(&progress)),
            sinks,
            committer: None,
            progress,
            stop: Stopping::new(Arc::new(AtomicBool::new(false))),
            stats: Stats::default(),
            halted: None,
            through: Some(0),
            committed: 0,
        }
    }

    /// Flushes every sink at the end of a run; the first error, with the sink's name.
    pub fn flush(&mut self) -> Result<(), OutputError> {
        for sink in &mut self.sinks {
            if let Err(e) = sink.flush() {
                return Err(OutputError::Halted(format!("{}: {e}", sink.name())));
            }
        }
        Ok(())
    }

    pub fn failure(&self) -> Option<&str> {
        match &self.halted {
            Some(Halt::Fatal(why)) => Some(why),
            _ => None,
        }
    }

    /// What was written so far.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The latest forecast of every series written.
    pub fn latest(&self) -> crate::records::Latest {
        self.progress
            .latest
            .read()
            .map(|l| l.clone())
            .unwrap_or_default()
    }

    /// Notes that an advance was not delivered: nothing more is written or committed.
    fn halt(&mut self, why: Halt) {
        match &why {
            Halt::Stopped => tracing::warn!(
                "stopping with an advance not delivered: nothing later is written or committed; the next run delivers it"
            ),
            Halt::Fatal(e) => {
                tracing::error!(error = %e, "cannot go on; stopping without committing");
                self.stop.set();
            }
        }
        self.halted.get_or_insert(why);
    }

    /// Writes `advance` to every sink; `false` (and halted) if one did not take it.
    fn write(&mut self, advance: &Advance) -> bool {
        let Outputs {
            sinks,
            progress,
            stop,
            stats,
            ..
        } = self;
        match write_all(sinks, advance, progress, stop, stats) {
            Ok(()) => true,
            Err(halt) => {
                self.halt(halt);
                false
            }
        }
    }

    /// Logs, and acts on, the halt a chunk's write just recorded.
    fn halted_now(&mut self) {
        if let Some(halt) = self.halted.take() {
            self.halt(halt);
        }
    }

    /// Notes an advance of this process's frontier, for the health checks.
    fn note_advance(&self, newest: Option<dataflows::Epoch>) {
        let p = &self.progress;
        if let Some(e) = newest {
            p.last_epoch_end
                .fetch_max(self.builder.epoch_end(e), Ordering::Relaxed);
        }
        p.last_advance
            .store(chrono::Utc::now().timestamp(), Ordering::Relaxed);
    }

    /// Counts what an advance closed, before it is written.
    fn count_closed(&mut self, advance: &Advance) {
        let s = &mut self.stats;
        for (kind, n) in &advance.consumed {
            *s.consumed.entry(kind.clone()).or_default() += n;
        }
        s.late += advance.late;
        if advance.closed_at.is_none() {
            return;
        }
        s.advances += 1;
        s.epochs += advance.epochs_closed;
        if let Some(e) = advance.newest {
            s.last_epoch_end = Some(rfc3339(self.builder.epoch_end(e)));
        }
    }
}

/// Writes `advance` to every sink, each until it is acknowledged; why not otherwise.
///
/// The sinks write at the same time, one thread each: a store's round trips (the mart's
/// transaction, the broker's acknowledgements) then overlap the others' work instead of adding
/// to it. The call returns once every sink acknowledged or gave up; a sink that fails for good
/// stops the run, so the others stop retrying.
fn write_all(
    sinks: &mut [Box<dyn Sink>],
    advance: &Advance,
    progress: &Progress,
    stop: &Stopping,
    stats: &mut Stats,
) -> Result<(), Halt> {
    let write_one = |sink: &mut Box<dyn Sink>, stats: &mut Stats| {
        let mut cx = Context {
            progress,
            stop,
            stats,
        };
        retry::write_until_done(sink.as_mut(), advance, &mut cx).map_err(|e| match e {
            WriteError::Fatal(e) => {
                stop.set();
                Halt::Fatal(format!("{}: {e}", sink.name()))
            }
            _ => Halt::Stopped,
        })
    };
    let (first, others) = match sinks {
        [] => return Ok(()),
        [only] => return write_one(only, stats),
        [first, others @ ..] => (first, others),
    };
    let results: Vec<(Result<(), Halt>, Stats)> = std::thread::scope(|scope| {
        let threads: Vec<_> = (others.iter_mut())
            .map(|sink| {
                scope.spawn(move || {
                    let mut own = Stats::default();
                    (write_one(sink, &mut own), own)
                })
            })
            .collect();
        let mut results = vec![(write_one(first, stats), Stats::default())];
        for t in threads {
            // A sink that panicked is a bug; it fails the advance like a fatal error.
            let r = t.join().unwrap_or_else(|_| {
                stop.set();
                (Err(Halt::Fatal("a sink panicked".into())), Stats::default())
            });
            results.push(r);
        }
        results
    });
    let mut outcome = Ok(());
    for (result, own) in results {
        stats.absorb(own);
        if let Err(halt) = result {
            // A fatal error says more than a stop it caused.
            if !matches!(outcome, Err(Halt::Fatal(_))) {
                outcome = Err(halt);
            }
        }
    }
    outcome
}

impl Handler for Outputs {
    fn changed(&mut self, changed: Changed, dict: &Dictionary) -> Delivered {
        let unchanged = Delivered {
            through: self.through,
            ..Delivered::default()
        };
        if self.halted.is_some() {
            // An earlier advance was not delivered: nothing more is.
            return unchanged;
        }
        self.note_advance(changed.frontier.map(|f| f.saturating_sub(1)));
        let Outputs {
            builder,
            sinks,
            progress,
            stop,
            stats,
            halted,
            ..
        } = self;
        // The sinks write one chunk on a thread of their own while this thread builds the
        // next (scoring, planning, records): the stages overlap instead of taking turns. One
        // chunk waits between them, so at most three are held.
        let (to_writer, chunks) = mpsc::sync_channel::<Advance>(1);
        let progress = &**progress;
        let writer = |halted: &mut Option<Halt>, stats: &mut Stats| {
            for mut chunk in chunks {
                if let Err(halt) = write_all(sinks, &chunk, progress, stop, stats) {
                    // Dropping the receiver refuses the chunks after this one.
                    halted.get_or_insert(halt);
                    return;
                }
                stats.forecasts += chunk.forecasts.len() as u64;
                if let Ok(mut latest) = progress.latest.write() {
                    // Written everywhere: the records move into what the read API serves.
                    for r in chunk.forecasts.drain(..) {
                        latest.insert((r.store_id.clone(), r.sku_id.clone()), r);
                    }
                    progress.metrics.api_series.set(latest.len() as i64);
                }
            }
        };
        let built = std::thread::scope(|scope| {
            let writing = std::thread::Builder::new()
                .name("sink-writer".into())
                .spawn_scoped(scope, || writer(halted, stats))
                .map_err(|e| Halt::Fatal(format!("cannot start the sinks' writer thread: {e}")))?;
            let mut write = |chunk: &mut Advance| {
                let next = Advance {
                    forecasts: std::mem::take(&mut chunk.forecasts),
                    closed_at: chunk.closed_at,
                    newest: chunk.newest,
                    ..Advance::default()
                };
                to_writer.send(next).is_ok()
            };
            let built = builder.forecasts(changed, dict, &mut write);
            drop(to_writer);
            if writing.join().is_err() {
                // A sink that panicked is a bug; it fails the advance like a fatal error.
                stop.set();
                return Err(Halt::Fatal("the sinks' writer panicked".into()));
            }
            Ok(built)
        });
        let built = match built {
            Ok(built) => built,
            Err(halt) => {
                self.halt(halt);
                return unchanged;
            }
        };
        if self.halted.is_some() {
            // A chunk was not written: the advance is not delivered.
            self.halted_now();
            return unchanged;
        }
        let delivered = match built {
            Ok(Some(d)) => d,
            Ok(None) => {
                self.halted_now();
                return unchanged;
            }
            Err(e) => {
                self.halt(Halt::Fatal(e.to_string()));
                return unchanged;
            }
        };
        self.through = delivered.through;
        delivered
    }

    fn closed(&mut self, closed: Closed) -> Result<Option<Commit>, Undelivered> {
        if self.halted.is_some() {
            // An earlier advance was not delivered: writing this one could commit past it.
            return Err(Undelivered);
        }
        let mut advance = self.builder.progress(closed);
        self.count_closed(&advance);
        if advance.closed_at.is_some() {
            self.note_advance(advance.newest);
        }
        if !self.write(&advance) {
            return Err(Undelivered);
        }
        let m = &self.progress.metrics;
        for d in &advance.dead_letters {
            m.dead_letters_written
                .with_label_values(&[d.reason.as_str()])
                .inc();
            *self.stats.dead_letters.entry(d.reason.clone()).or_default() += 1;
        }
        m.dead_letters_pending
            .sub(advance.dead_letters.len() as i64);
        self.stats.progress_records += advance.progress.len() as u64;
        if let Some(t) = advance.closed_at.filter(|_| !advance.progress.is_empty()) {
            m.epoch_seconds.observe(t.elapsed().as_secs_f64());
        }
        Ok(advance.commit.take())
    }

    fn commit(&mut self, commit: Commit) -> bool {
        if self.halted.is_some() {
            // Safe to commit (every process acknowledged these), but this run commits nothing
            // after an advance it did not deliver: the next run starts from the same place.
            return false;
        }
        if commit.frontier < self.committed {
            return true;
        }
        let mut cx = Context {
            progress: &self.progress,
            stop: &self.stop,
            stats: &mut self.stats,
        };
        let Some(committer) = &mut self.committer else {
            return true;
        };
        if committer.commit(&commit, &mut cx).is_err() {
            self.halt(Halt::Stopped);
            return false;
        }
        self.committed = commit.frontier;
        self.stats.offset_commits += 1;
        self.progress.metrics.offset_commits.inc();
        true
    }
}

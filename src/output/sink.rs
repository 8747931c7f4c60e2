//! The interface every sink implements, what a write may use, and the errors of the output
//! path.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::build::Advance;
use crate::pipeline::progress::Progress;

/// Why a sink's write of an advance failed.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// Worth another attempt: the store is unreachable, timed out or refused for now.
    #[error("{0}")]
    Transient(Box<dyn std::error::Error + Send + Sync>),
    /// No attempt can succeed (e.g. the dead-letter topic refuses a record for good): the run
    /// stops without committing.
    #[error("{0}")]
    Fatal(Box<dyn std::error::Error + Send + Sync>),
    /// The run was told to stop while the write waited.
    #[error("stopped before the write was acknowledged")]
    Stopped,
}

impl WriteError {
    /// A transient failure with `e` as its cause.
    pub fn transient(e: impl std::error::Error + Send + Sync + 'static) -> WriteError {
        WriteError::Transient(Box::new(e))
    }
}

/// What a sink's write may use besides the advance.
pub struct Context<'a> {
    /// The metrics and the process's live state.
    pub progress: &'a Progress,
    /// Whether, and since when, the run is stopping.
    pub stop: &'a Stopping,
    /// What was written so far.
    pub stats: &'a mut Stats,
}

/// A store the worker writes every advance to.
pub trait Sink: Send {
    /// The sink's name in logs and in the `sink` label of the metrics.
    fn name(&self) -> &'static str;

    /// Writes `advance`; returns how many records the store acknowledged. After an error the
    /// same advance is written again (after a backoff) until this succeeds or the run stops,
    /// so a write must be idempotent, or remember what was acknowledged.
    fn write(&mut self, advance: &Advance, cx: &mut Context<'_>) -> Result<u64, WriteError>;

    /// Makes what was acknowledged durable, at the end of a run; stores that acknowledge only
    /// what is durable have nothing to do.
    fn flush(&mut self) -> Result<(), WriteError> {
        Ok(())
    }
}

/// What the output path has done so far. In a cluster, process 0 writes every advance's
/// progress records and dead letters, so it alone counts the epochs, progress records,
/// records consumed, late events and dead letters, for the whole cluster; every process counts
/// the forecasts it wrote and the offset commits it made.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    /// Advances of the closed frontier.
    pub advances: u64,
    /// Progress records written (one per closed epoch with input or output, and one for the
    /// last epoch of each advance).
    pub progress_records: u64,
    /// Epochs closed.
    pub epochs: u64,
    /// Forecast records written.
    pub forecasts: u64,
    /// Records consumed per input kind.
    pub consumed: BTreeMap<String, u64>,
    /// Late events.
    pub late: u64,
    /// Dead letters by reason.
    pub dead_letters: BTreeMap<String, u64>,
    /// Write attempts that had to be repeated.
    pub retries: u64,
    /// Kafka producers replaced after a fatal error.
    pub producers_replaced: u64,
    /// Offset commits this process made (for the partitions its workers read).
    pub offset_commits: u64,
    /// End of the last closed epoch.
    pub last_epoch_end: Option<String>,
}

impl Stats {
    /// Adds what another writer counted (a sink writing on a thread of its own).
    pub fn absorb(&mut self, other: Stats) {
        self.advances += other.advances;
        self.progress_records += other.progress_records;
        self.epochs += other.epochs;
        self.forecasts += other.forecasts;
        for (kind, n) in other.consumed {
            *self.consumed.entry(kind).or_default() += n;
        }
        self.late += other.late;
        for (reason, n) in other.dead_letters {
            *self.dead_letters.entry(reason).or_default() += n;
        }
        self.retries += other.retries;
        self.producers_replaced += other.producers_replaced;
        self.offset_commits += other.offset_commits;
        if other.last_epoch_end.is_some() {
            self.last_epoch_end = other.last_epoch_end;
        }
    }
}

/// Why the output path could not start, or stopped the run.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// A Kafka client (the producer, the offset committer) could not be set up.
    #[error("kafka {client}: {error}")]
    Kafka {
        /// Which client.
        client: &'static str,
        /// Why, with any secret of the client settings scrubbed.
        error: String,
    },
    /// The committer thread could not be started.
    #[error("offset committer thread: {0}")]
    Thread(#[from] std::io::Error),
    /// The PostgreSQL mart's URL is not valid.
    #[error(transparent)]
    Mart(#[from] crate::mart::MartError),
    /// The Redis cache's URL is not valid.
    #[error(transparent)]
    Cache(#[from] crate::cache::CacheError),
    /// Output failed where nothing could account for it; nothing after it was committed.
    #[error("output halted: {0}")]
    Halted(String),
}

/// How long, once the run is told to stop, a write may still wait for acknowledgements before
/// its advance counts as not delivered.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// The run's stop flag, and when the output path first saw it set.
pub struct Stopping {
    flag: Arc<AtomicBool>,
    seen: Mutex<Option<Instant>>,
}

impl Stopping {
    /// Watches `flag`.
    pub fn new(flag: Arc<AtomicBool>) -> Stopping {
        Stopping {
            flag,
            seen: Mutex::new(None),
        }
    }

    /// Whether the run was told to stop.
    pub fn requested(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    /// Tells the run to stop.
    pub fn set(&self) {
        self.flag.store(true, Ordering::SeqCst);
    }

    /// Whether the run was told to stop more than [`STOP_GRACE`] ago.
    pub fn past_grace(&self) -> bool {
        if !self.requested() {
            return false;
        }
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.get_or_insert_with(Instant::now).elapsed() >= STOP_GRACE
    }

    /// Sleeps `wait`, or less once the run is told to stop.
    pub fn sleep(&self, wait: Duration) {
        let until = Instant::now() + wait;
        while !self.requested() {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            std::thread::sleep(left.min(Duration::from_millis(100)));
        }
    }
}

//! How a run of the workers is set up and why it can fail, and the timings the loop keeps.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use crate::kafka::wire::Partition;
use crate::pipeline::progress::Progress;
use crate::pipeline::source::{Ends, Source};

/// How long metadata and committed-offset requests may take at start.
pub(crate) const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a silent partition's idleness is confirmed with the broker.
pub(crate) const IDLE_RECHECK: Duration = Duration::from_secs(1);
/// How long a reference partition must have been silent when the broker says it is caught up
/// for that to settle it at start (at most the idle timeout; see `partition::PartState::settles`).
pub(super) const SETTLE_QUIET: Duration = Duration::from_secs(1);
/// How often a reference partition that is not settled yet is asked about once it is quiet
/// (event time waits on it).
pub(super) const SETTLE_RECHECK: Duration = Duration::from_millis(100);
/// A reference partition that is never quiet settles on the broker's word alone once the worker
/// has run for the idle timeout, and at least this long. A broker may report a partition's end
/// early (tansu: the start of its last batch), so a word asked while records arrive can come
/// before that batch: with the bench's 1 s idle timeout, two of four price partitions once
/// settled 4,000 records short of their ends.
pub(super) const SETTLE_WAIT_MIN: Duration = Duration::from_secs(10);
/// How long that confirmation may take (it is asked for off the worker's thread); a broker
/// that does not answer in time is unreachable.
pub(super) const IDLE_CHECK_TIMEOUT: Duration = Duration::from_secs(5);
/// A pause between two polls longer than this is not counted as silence.
pub(super) const LISTEN_GAP: Duration = Duration::from_millis(250);
/// Most records taken from the consumer between two dataflow steps.
pub(super) const POLL_BATCH: usize = 8192;

/// How a run goes.
#[derive(Clone)]
pub struct StreamOptions {
    /// Timely worker threads in this process.
    pub workers: usize,
    /// With every partition idle, apply what is held and stop, instead of closing epochs on the
    /// wall clock.
    pub exit_when_idle: bool,
    /// With `exit_when_idle`, the epoch the inputs are moved on to before they close, when it
    /// is after the last event's (the windows then slide to it: `features` as of an instant);
    /// without it, or when it is not, they close at the last event's epoch.
    pub drain_through: Option<dataflows::Epoch>,
    /// Set to stop: workers stop consuming, close what they hold, report and return.
    pub stop: Arc<AtomicBool>,
    /// Event-time seconds now, for closing epochs when every partition is idle.
    pub wall_clock: Arc<dyn Fn() -> i64 + Send + Sync>,
    /// Live counters others may watch (health checks, tests).
    pub progress: Arc<Progress>,
    /// The timely cluster this process belongs to; `None` runs alone.
    pub cluster: Option<Cluster>,
    /// Ignore checkpoints at start and rebuild the state from the topics.
    pub from_scratch: bool,
}

impl StreamOptions {
    /// A run in this process alone over an input held whole (replay, `features`, the training
    /// history): read to its end, then stop, with nothing to resume from.
    pub fn to_the_end(workers: usize) -> StreamOptions {
        StreamOptions {
            workers,
            exit_when_idle: true,
            drain_through: None,
            stop: Arc::new(AtomicBool::new(false)),
            wall_clock: system_clock(),
            progress: Arc::default(),
            cluster: None,
            from_scratch: true,
        }
    }
}

/// Where the workers read from: the broker's input topics (`kafka::offsets::Broker`) or a
/// dataset's held in memory (`source::topics`). Each worker opens its own share.
pub trait Input: Send + Sync {
    /// Opens worker `index` of `peers`'s share of the partitions, each read from `start_at`
    /// (topic, partition) where a checkpoint says so, else from its beginning; `lost` counts
    /// partitions whose beginning was deleted before any checkpoint held it.
    fn open(
        &self,
        worker: (usize, usize),
        start_at: &HashMap<(String, i32), i64>,
        lost: Option<&prometheus::IntGauge>,
    ) -> Result<Opened, StreamError>;

    /// How long a partition stays silent before it may count as idle, and how long a worker
    /// waits before asking again where a silent partition ends. By default not at all: an
    /// input held whole is all there from the start, so a partition is idle as soon as its end
    /// says it was read, and asking where it ends costs nothing.
    fn idleness(&self) -> (Duration, Duration) {
        (Duration::ZERO, Duration::ZERO)
    }

    /// The worker, of `peers`, that reads `partition`. By default worker 0, which reads every
    /// partition of an input held whole (`pipeline::source::Whole`).
    fn reader_of(&self, _partition: &Partition, _peers: usize) -> usize {
        0
    }
}

/// A worker's input once opened: its partitions with the offsets committed for them, where
/// their records come from, and who says where they end.
pub struct Opened {
    /// The worker's records.
    pub source: Box<dyn Source>,
    /// Where its partitions end, asked on a thread of its own.
    pub ends: Box<dyn Ends>,
    /// Its partitions, each with the offset committed for it (0 when none was).
    pub assigned: Vec<(Partition, i64)>,
}

/// The processes of a timely cluster: each runs `workers` threads, and worker `w` of process `p`
/// is worker `p * workers + w` of the cluster. Every process consumes the partitions its workers
/// own and scores and writes the series they hold; process 0 writes the progress records once
/// every process acknowledged its forecasts, and then every process commits its own partitions'
/// offsets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cluster {
    /// This process's index into `hosts`.
    pub process: usize,
    /// `host:port` of every process, in process order.
    pub hosts: Vec<String>,
}

impl Cluster {
    /// Reads a host file (one `host:port` per line, in process order; blank lines and `#`
    /// comments ignored) for process `process`.
    pub fn from_file(path: &std::path::Path, process: usize) -> Result<Cluster, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("host file {}: {e}", path.display()))?;
        let hosts: Vec<String> = text
            .lines()
            .map(|l| l.split('#').next().unwrap_or("").trim())
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect();
        if let Some(bad) = hosts.iter().find(|h| !h.contains(':')) {
            return Err(format!(
                "host file {}: `{bad}` is not host:port",
                path.display()
            ));
        }
        if process >= hosts.len() {
            return Err(format!(
                "process {process} is not in host file {} ({} processes, numbered from 0)",
                path.display(),
                hosts.len()
            ));
        }
        Ok(Cluster { process, hosts })
    }

    /// Whether this process merges the workers' output and writes the sinks.
    pub fn is_leader(&self) -> bool {
        self.process == 0
    }
}

/// The wall clock in seconds since the Unix epoch.
pub fn system_clock() -> Arc<dyn Fn() -> i64 + Send + Sync> {
    Arc::new(|| chrono::Utc::now().timestamp())
}

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The Kafka consumer could not be created (any secret of the client settings scrubbed).
    #[error("kafka consumer: {0}")]
    Client(String),
    /// Kafka did not answer a request the run needs.
    #[error("kafka: {what}: {source}")]
    Request {
        /// What was asked, e.g. the metadata of a topic.
        what: String,
        /// The client's answer.
        source: rdkafka::error::KafkaError,
    },
    /// Kafka did not finish a request the run needs in time.
    #[error("kafka: {what} took over {secs} s")]
    Timeout {
        /// What was asked.
        what: String,
        /// How long the run waited.
        secs: u64,
    },
    /// An input topic does not exist, or has no partitions.
    #[error(
        "topic `{0}` does not exist or has no partitions (create it, e.g. with `stockcast load`)"
    )]
    MissingTopic(String),
    /// The input failed for good (see `pipeline::source::Source::failed`).
    #[error("input: {0}")]
    Input(String),
    /// Timely could not start the workers, or a worker thread panicked.
    #[error("timely worker failed: {0}")]
    Worker(String),
    /// The thread that merges and writes the workers' output stopped first.
    #[error("the output thread stopped")]
    OutputGone,
}

impl StreamError {
    /// A request `what` that Kafka answered with `source`.
    pub(crate) fn request(
        what: impl Into<String>,
    ) -> impl FnOnce(rdkafka::error::KafkaError) -> StreamError {
        let what = what.into();
        move |source| StreamError::Request { what, source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_file_names_every_process() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("hosts");
        std::fs::write(
            &file,
            "# the cluster\nhost-0:2101\n\nhost-1:2101  # second\n",
        )
        .unwrap();
        let c = Cluster::from_file(&file, 1).unwrap();
        assert_eq!(c.hosts, ["host-0:2101", "host-1:2101"]);
        assert!(!c.is_leader());
        let err = Cluster::from_file(&file, 2).unwrap_err();
        assert!(
            err.contains("process 2") && err.contains("2 processes"),
            "{err}"
        );
        std::fs::write(&file, "host-0\n").unwrap();
        let err = Cluster::from_file(&file, 0).unwrap_err();
        assert!(err.contains("`host-0` is not host:port"), "{err}");
    }
}

//! The streaming driver: N timely workers, each reading its own input partitions, feeding the
//! feature dataflow, and reporting closed epochs to the caller's thread.
//!
//! # Time
//! - Each partition's watermark is the largest event time seen on it. A partition silent for
//!   `idle_timeout_secs` is idle and stops holding time back; one that never spoke holds it back
//!   until then.
//! - Workers broadcast their partitions' state to each other (a small timely stream), so each can
//!   compute the same global watermark: the minimum over non-idle partitions, minus the allowed
//!   lateness. Epochs before it are closed; every worker advances its input to it, stopping at
//!   the epochs its buffered events belong to and at the first epoch of every period (so windows
//!   slide, as in replay).
//! - With every partition idle, epochs close on the wall clock (live mode), or, with
//!   `exit_when_idle`, the workers apply everything they hold and stop (backfills, tests, demo).
//! - An event whose epoch is already closed on this worker is applied in the open epoch and
//!   counted late; one older than the retention is dead-lettered `too_late`.
//! - An event dated more than `time.max_future_secs` after the wall clock is dead-lettered
//!   `future_time` before it reaches a watermark: one wrong date cannot move the clock (see
//!   docs/reliability.md for the live and backfill cases).
//!
//! # Offsets
//! Before each advance a worker notes, per partition, the lowest offset not yet applied (the
//! oldest buffered event, else the next offset to fetch). Once the closed frontier passes that
//! advance, everything below the noted offset is in closed epochs, and the offset is reported as
//! committable. The sink commits it after the epochs' outputs were acknowledged.
//!
//! # Processes
//! Workers may span several processes (a timely cluster, [`Cluster`]); partitions are assigned
//! by global worker index, so each process reads only its workers' share. Every worker sends its
//! reports (changed series, committable offsets, counts, dead letters) through the dataflow to
//! worker 0, whose process merges them and calls the sinks; the other processes only compute.
//! A worker told to stop says so in its beacon, and every worker that sees it stops too: a
//! signal to any process shuts the whole cluster down cleanly (outputs flushed, offsets
//! committed by process 0).
//! A worker stops reading while [`MAX_OPEN_ADVANCES`] of its advances wait to be closed, so a
//! slow sink (which blocks worker 0, and with it the closed frontier) leaves the backlog in
//! Kafka, not in memory.
//!
//! # Error handling
//! Records that do not decode, name colliding ids, or are refused by the input stage become
//! [`DeadRecord`]s; nothing on input stops or panics a worker. Broker errors are logged and
//! retried by librdkafka. Missing input topics stop the run at start with their names.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use dataflows::input::FeatureInput;
use dataflows::{Clock, Epoch, Event, FeatureVec, Key};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use timely::dataflow::operators::core::Inspect;
use timely::dataflow::operators::vec::{Broadcast, Input};

use crate::config::Resolved;
use crate::ids::{self, Dictionary};
use crate::source::files::FileKind;

pub use super::progress::Progress;
use super::snapshot::{self, Checkpoints, Cut, PartDone, Schedule, Writer};
pub use super::wire::Partition;
use super::{client_config, input_topics, partition_owner};

/// How long metadata and committed-offset requests may take at start.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a silent partition's idleness is confirmed with the broker.
const IDLE_RECHECK: Duration = Duration::from_secs(1);
/// How long that confirmation may take; a broker that does not answer in time is unreachable.
const IDLE_CHECK_TIMEOUT: Duration = Duration::from_millis(500);
/// A pause between two polls longer than this is not counted as silence.
const LISTEN_GAP: Duration = Duration::from_millis(250);
/// Most records taken from the consumer between two dataflow steps.
const POLL_BATCH: usize = 8192;

/// Most bytes of a refused record's value a dead letter carries (the rest is cut, and the
/// dead letter says how long the original was).
pub const MAX_DEAD_VALUE_BYTES: usize = 64 * 1024;
/// Most bytes of a refused record's key a dead letter carries.
pub const MAX_DEAD_KEY_BYTES: usize = 1024;

/// The first `max` bytes of `bytes`.
fn bounded_copy(bytes: &[u8], max: usize) -> Vec<u8> {
    bytes[..bytes.len().min(max)].to_vec()
}

/// A record that could not be used.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DeadRecord {
    /// Where it came from.
    pub partition: Partition,
    /// Its offset.
    pub offset: i64,
    /// Its key bytes, at most [`MAX_DEAD_KEY_BYTES`].
    pub key: Option<Vec<u8>>,
    /// Its value bytes, verbatim up to [`MAX_DEAD_VALUE_BYTES`].
    pub value: Option<Vec<u8>>,
    /// The length of the original value in bytes (more than `value` holds when it was cut).
    pub original_len: usize,
    /// Stable reason code.
    #[serde(deserialize_with = "crate::metrics::dead_letter_reason")]
    pub reason: crate::metrics::Reason,
    /// Detail for humans.
    pub detail: String,
}

/// What the caller receives each time the closed-epoch frontier advances.
#[derive(Debug, Default)]
pub struct Closed {
    /// The first epoch still open, or `None` once the run has finished.
    pub frontier: Option<Epoch>,
    /// Epochs closed by this advance, counting empty ones.
    pub epochs_closed: u64,
    /// Changed series per closed epoch, in epoch then key order.
    pub changed: Vec<(Epoch, Vec<(Key, FeatureVec)>)>,
    /// Per partition, the offset below which every record is reflected in closed epochs.
    pub offsets: Vec<(Partition, i64)>,
    /// Records consumed per input kind in the epochs this advance closed (the sum of `epochs`).
    pub consumed: BTreeMap<FileKind, u64>,
    /// Late events applied in those epochs.
    pub late: u64,
    /// Records that could not be used, since the previous advance.
    pub dead: Vec<DeadRecord>,
    /// When the dataflow closed these epochs.
    pub closed_at: Option<Instant>,
    /// Checkpoint parts written since the previous advance.
    pub checkpoint_parts: Vec<PartDone>,
    /// One tally per closed epoch that consumed, changed or applied anything, plus the last
    /// closed epoch, in epoch order: each becomes a progress record.
    pub epochs: Vec<EpochTally>,
}

/// What one closed epoch did, for its progress record.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EpochTally {
    /// The epoch.
    pub epoch: Epoch,
    /// Epochs closed since the previous tally, this one included (the ones between had no
    /// input and no output).
    pub epochs_closed: u64,
    /// Records that took effect in this epoch, per input kind: events of this epoch (or
    /// applied late in it), reference records and dead letters read while it was open.
    pub consumed: BTreeMap<FileKind, u64>,
    /// Events applied in this epoch after their own had closed.
    pub late: u64,
    /// Per partition, the offset below which every record is in this or earlier epochs.
    pub offsets: Vec<(Partition, i64)>,
}

/// How a run goes.
#[derive(Clone)]
pub struct StreamOptions {
    /// Timely worker threads in this process.
    pub workers: usize,
    /// With every partition idle, apply what is held and stop, instead of closing epochs on the
    /// wall clock.
    pub exit_when_idle: bool,
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

/// The processes of a timely cluster: each runs `workers` threads, and worker `w` of process `p`
/// is worker `p * workers + w` of the cluster. Process 0 merges every worker's output and owns the
/// sinks and the read API; every process consumes the partitions its workers own.
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
    /// A client could not be created or the topics could not be read at start.
    #[error("kafka: {0}")]
    Kafka(String),
    /// Timely could not start, or a worker failed.
    #[error("timely worker failed: {0}")]
    Worker(String),
}

/// One worker's state as broadcast to its peers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum Mark {
    /// Some partition has not spoken yet and is not idle: time may not advance.
    Holding,
    /// The least watermark over this worker's non-idle timed partitions.
    Active(i64),
    /// Every partition of this worker is idle (or it has none).
    Idle,
}

/// What a worker tells its peers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Beacon {
    worker: usize,
    mark: Mark,
    /// The latest epoch of any event this worker consumed (the end of a drain).
    max_epoch: Option<Epoch>,
    /// The worker has applied everything and wants to stop (`exit_when_idle`).
    draining: bool,
    /// The worker was told to stop (a signal to its process): every worker stops, so a cluster
    /// shuts down cleanly when any of its processes does.
    stopping: bool,
    /// Worker 0's checkpoint decisions (the others send the default).
    schedule: Schedule,
}

/// Where the global watermark puts the inputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    /// Not every worker can move yet.
    Hold,
    /// Advance to this epoch (all epochs before it are closed).
    Until(Epoch),
    /// Every partition is idle and the run should end: advance to this epoch, then close.
    Drain(Epoch),
}

/// Combines every worker's beacon into where the inputs may go.
fn target(
    beacons: &[Option<Beacon>],
    clock: &Clock,
    lateness: i64,
    exit_when_idle: bool,
    wall: i64,
) -> Target {
    let mut low: Option<i64> = None;
    let mut max_epoch: Option<Epoch> = None;
    for b in beacons {
        let Some(b) = b else { return Target::Hold };
        max_epoch = max_epoch.max(b.max_epoch);
        match b.mark {
            Mark::Holding => return Target::Hold,
            Mark::Active(w) => low = Some(low.map_or(w, |l| l.min(w))),
            Mark::Idle => {}
        }
    }
    let epoch_at = |t: i64| clock.epoch_of(t.saturating_sub(lateness)).unwrap_or(0);
    match low {
        Some(w) => Target::Until(epoch_at(w)),
        None if exit_when_idle => Target::Drain(max_epoch.map_or(0, |e| e + 1)),
        None => Target::Until(epoch_at(wall)),
    }
}

/// One partition as a worker tracks it.
struct PartState {
    part: Partition,
    /// Largest event time seen.
    max_ts: Option<i64>,
    /// When the last record arrived (or the worker started).
    last_seen: Instant,
    /// Has any record arrived.
    spoke: bool,
    /// The next offset to read.
    next_offset: i64,
    /// Offsets of events read but still buffered for a later epoch.
    held: BTreeSet<i64>,
    /// Records below this offset were handled before a restart: no dead letters for them.
    committed: i64,
    /// When the broker was last asked whether this silent partition is caught up, and its answer.
    idle_checked: Option<(Instant, bool)>,
    /// `stockcast_events_consumed_total` of this partition.
    consumed_metric: prometheus::IntCounter,
    /// Records lost from the restored replay set (see [`PartState::forget_replay_below`]).
    lost_metric: prometheus::IntCounter,
    /// After a restore: records below this offset are in the checkpoint's state, except...
    skip_below: i64,
    /// ...these, buffered at the cut, which are read and applied again.
    replay: HashSet<i64>,
}

impl PartState {
    /// Forgets the records buffered at the restored checkpoint's cut below `offset`: they
    /// will never be read again (retention removed them), and they must not hold time back.
    fn forget_replay_below(&mut self, offset: i64) {
        let before = self.replay.len();
        self.replay.retain(|o| *o >= offset);
        let lost = before - self.replay.len();
        self.lost_metric.inc_by(lost as u64);
        tracing::error!(
            partition = %self.part.label(),
            lost,
            "records buffered at the checkpoint's cut were removed from the partition before \
             they could be read again: their events are lost"
        );
    }

    /// Whether `offset` was read before.
    fn already_read(&self, offset: i64) -> bool {
        offset < self.next_offset
    }

    /// Silent for `idle_after`, and the broker confirmed recently that nothing is left to read:
    /// a partition cut off by a broker outage is silent but not idle.
    fn is_idle(&self, idle_after: Duration, now: Instant) -> bool {
        now.duration_since(self.last_seen) >= idle_after
            && self.idle_checked.is_some_and(|(at, idle)| {
                idle && at >= self.last_seen && now.duration_since(at) < IDLE_RECHECK * 3
            })
    }

    /// The lowest offset not yet applied.
    fn safe_offset(&self) -> i64 {
        let replay = self.replay.iter().min().copied();
        self.held
            .first()
            .copied()
            .into_iter()
            .chain(replay)
            .min()
            .unwrap_or(self.next_offset)
    }

    /// Where reading stands, for a checkpoint cut now: records below the next offset are in
    /// the state except the held ones (buffered, or restored and not read again yet).
    fn position(&self, idle_after: Duration, now: Instant) -> crate::checkpoint::Position {
        let mut held: Vec<i64> = self.held.iter().copied().collect();
        held.extend(self.replay.iter().copied());
        held.sort_unstable();
        crate::checkpoint::Position {
            partition: self.part.clone(),
            next_offset: self.next_offset.max(self.skip_below),
            held,
            max_ts: self.max_ts,
            idle: self.is_idle(idle_after, now),
        }
    }

    fn timed(&self) -> bool {
        matches!(self.part.kind, FileKind::Sales | FileKind::Stock)
    }
}

/// What a worker sends to the merging thread. Reports travel through the dataflow to worker 0,
/// whose process merges them, so they cross process boundaries in a cluster.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Report {
    worker: usize,
    /// The dataflow's closed frontier as this worker sees it; `None` once it finished.
    frontier: Option<Epoch>,
    changed: Vec<(Epoch, Key, FeatureVec)>,
    names: Vec<(Key, String, String)>,
    /// (snapshot epoch, partition, offset): committable once the global frontier reaches it.
    offsets: Vec<(Epoch, Partition, i64)>,
    /// Records consumed, by the epoch they took effect in and their input kind.
    consumed: BTreeMap<(Epoch, FileKind), u64>,
    /// Late events, by the (open) epoch they were applied in.
    late: BTreeMap<Epoch, u64>,
    dead: Vec<DeadRecord>,
    /// Checkpoint parts written.
    parts: Vec<PartDone>,
}

/// A worker's input side: partitions, buffered events, the input stage.
struct Feeder {
    clock: Clock,
    input: FeatureInput,
    parts: Vec<PartState>,
    dict: Dictionary,
    known: HashSet<Key>,
    /// Events waiting for their epoch: epoch -> (partition index, offset, event).
    pending: BTreeMap<Epoch, Vec<(usize, i64, Event)>>,
    max_epoch: Option<Epoch>,
    /// Offsets noted before each advance, oldest first.
    snapshots: VecDeque<(Epoch, Vec<i64>)>,
    // Since the last report:
    names: Vec<(Key, String, String)>,
    /// Records consumed, by the epoch they take effect in (their own, or the open epoch when
    /// applied at once or dead-lettered) and their input kind.
    consumed: BTreeMap<(Epoch, FileKind), u64>,
    /// Late events by the epoch they were applied in.
    late: BTreeMap<Epoch, u64>,
    dead: Vec<DeadRecord>,
    /// Records delivered again by the client and skipped.
    redelivered: u64,
    /// The latest event time accepted: the wall clock plus `time.max_future_secs`, refreshed
    /// before every poll.
    future_limit: i64,
    /// The process's live state, for metrics.
    progress: Arc<Progress>,
    /// Per reference entity, the partition (index into `parts`) its current record came from:
    /// a checkpoint keeps reference data by partition, for whichever worker reads it next.
    sources: HashMap<(FileKind, dataflows::model::Id), usize>,
    /// A checkpoint cut, until the dataflow completed the epochs before it and the state was
    /// exported.
    cut: Option<Cut>,
    /// Records read after a restore that were already in the checkpoint's state.
    skipped: u64,
    /// Changes of epochs before this are a restore's, already published: dropped.
    restore_floor: Epoch,
    /// Checkpoint parts written, for the next report.
    parts_done: Vec<PartDone>,
    /// `kafka.idle_timeout_secs`.
    idle_after: Duration,
}

/// What a worker's input may do at an advance, given the checkpoint schedule.
#[derive(Clone, Copy, Debug)]
struct Gate {
    /// The latest epoch the input may reach.
    limit: Epoch,
    /// A checkpoint to cut when the input reaches it.
    cut_at: Option<Epoch>,
}

impl Gate {
    const OPEN: Gate = Gate {
        limit: Epoch::MAX,
        cut_at: None,
    };
}

impl Feeder {
    /// Publishes this worker's read positions (for the lag probe) and the change of its series
    /// and state record counts since `shown`.
    fn show(&self, shown: &mut (i64, i64), size: &dataflows::dataflow::StateView) {
        if let Ok(mut positions) = self.progress.positions.lock() {
            for p in &self.parts {
                positions.insert((p.part.topic.clone(), p.part.partition), p.next_offset);
                // The partition's lag shows (at 0) until the probe first measures it.
                let label = p.part.partition.to_string();
                let lag = &self.progress.metrics.consumer_lag;
                lag.with_label_values(&[p.part.topic.as_str(), &label]);
            }
        }
        let now = (self.input.key_count() as i64, size.records() as i64);
        let m = &self.progress.metrics;
        m.state_keys.add(now.0 - shown.0);
        m.state_records.add(now.1 - shown.1);
        *shown = now;
    }

    fn dead_letter(
        &mut self,
        p: usize,
        msg: &BorrowedMessage<'_>,
        reason: &'static str,
        detail: String,
    ) {
        self.count(p, self.input.epoch());
        let part = &self.parts[p];
        if msg.offset() < part.committed {
            return;
        }
        let m = &self.progress.metrics;
        if reason != "too_late" {
            m.decode_failures.with_label_values(&[reason]).inc();
        }
        m.dead_letters.with_label_values(&[reason]).inc();
        self.dead.push(DeadRecord {
            partition: part.part.clone(),
            offset: msg.offset(),
            key: msg.key().map(|k| bounded_copy(k, MAX_DEAD_KEY_BYTES)),
            value: msg.payload().map(|v| bounded_copy(v, MAX_DEAD_VALUE_BYTES)),
            original_len: msg.payload().map_or(0, <[u8]>::len),
            reason,
            detail: crate::decode::cut(&detail, 1024),
        });
    }

    /// Counts a record of partition `p` as consumed in `epoch`.
    fn count(&mut self, p: usize, epoch: Epoch) {
        let kind = self.parts[p].part.kind;
        *self.consumed.entry((epoch, kind)).or_default() += 1;
    }

    /// Takes one record.
    fn receive(&mut self, msg: &BorrowedMessage<'_>) {
        // A handful of partitions per worker: a scan beats hashing an owned topic name.
        let Some(p) = self
            .parts
            .iter()
            .position(|s| s.part.partition == msg.partition() && s.part.topic == msg.topic())
        else {
            return;
        };
        let kind = {
            let part = &mut self.parts[p];
            part.last_seen = Instant::now();
            part.spoke = true;
            if part.already_read(msg.offset()) {
                // Offsets only move forward here (the worker never seeks). A record below the
                // next offset is a re-delivery, e.g. after the client reset its position on a
                // broker error: applying it again would count its event twice.
                self.redelivered += 1;
                return;
            }
            part.next_offset = msg.offset() + 1;
            part.consumed_metric.inc();
            // Only right after a restore is anything left to replay: every other record skips
            // the set.
            let replayed = !part.replay.is_empty() && part.replay.remove(&msg.offset());
            if part.replay.iter().any(|o| *o < msg.offset()) {
                // A partition arrives in order: held records below this one are gone.
                part.forget_replay_below(msg.offset());
            }
            if msg.offset() < part.skip_below && !replayed {
                // In the restored checkpoint's state already.
                self.skipped += 1;
                return;
            }
            part.part.kind
        };
        let record = match msg.payload() {
            // A null value is a tombstone on the compacted reference topics; the key names
            // what is deleted.
            None if kind.is_reference() => {
                let Some(key) = msg.key().and_then(|k| std::str::from_utf8(k).ok()) else {
                    self.dead_letter(
                        p,
                        msg,
                        "missing_key",
                        format!("a {} tombstone needs the entity id as its key", kind.name()),
                    );
                    return;
                };
                if let Err(e) = crate::decode::check_id("key", key) {
                    self.dead_letter(p, msg, e.reason(), e.to_string());
                    return;
                }
                let event = match kind {
                    FileKind::Promotions => Event::Promotion {
                        promo_id: ids::promo_id(key),
                        def: None,
                    },
                    FileKind::Catalog => Event::Item {
                        sku: ids::name_id(key),
                        def: None,
                    },
                    _ => Event::Store {
                        store: ids::name_id(key),
                        active: None,
                    },
                };
                self.apply_now(p, msg, &event);
                return;
            }
            None => {
                self.dead_letter(p, msg, "malformed", "record has no value".into());
                return;
            }
            Some(bytes) => match kind.decode_json(bytes) {
                Ok(r) => r,
                Err(e) => {
                    self.dead_letter(p, msg, e.reason(), e.to_string());
                    return;
                }
            },
        };
        // An event from the future never moves the clock (see the module docs).
        if let Err(e) = crate::decode::check_not_future(record.ts(), self.future_limit) {
            self.dead_letter(p, msg, e.reason(), e.to_string());
            return;
        }
        let event = match self.dict.event(&record, self.clock.period_kind()) {
            Ok(e) => e,
            Err(e) => {
                self.dead_letter(p, msg, "id_collision", e.to_string());
                return;
            }
        };
        if let Some(key) = event.key() {
            if self.known.insert(key) {
                let (store, sku) = self.dict.names(&key);
                self.names.push((key, store, sku));
            }
        }
        let Some(ts) = event.ts() else {
            self.apply_now(p, msg, &event);
            return;
        };
        let Some(epoch) = self.clock.epoch_of(ts) else {
            self.dead_letter(
                p,
                msg,
                "before_epoch_zero",
                format!("event time {ts} is before 1970"),
            );
            return;
        };
        let part = &mut self.parts[p];
        part.max_ts = Some(part.max_ts.map_or(ts, |m| m.max(ts)));
        self.max_epoch = self.max_epoch.max(Some(epoch));
        if epoch > self.input.epoch() {
            part.held.insert(msg.offset());
            self.count(p, epoch);
            self.pending
                .entry(epoch)
                .or_default()
                .push((p, msg.offset(), event));
        } else {
            if epoch < self.input.epoch() {
                *self.late.entry(self.input.epoch()).or_default() += 1;
            }
            self.apply_now(p, msg, &event);
        }
    }

    fn apply_now(&mut self, p: usize, msg: &BorrowedMessage<'_>, event: &Event) {
        match self.input.apply(event) {
            Ok(()) => {
                let source = match event {
                    Event::Promotion { promo_id, def } => {
                        Some((FileKind::Promotions, *promo_id, def.is_some()))
                    }
                    Event::Item { sku, def } => Some((FileKind::Catalog, *sku, def.is_some())),
                    Event::Store { store, active } => {
                        Some((FileKind::Stores, *store, active.is_some()))
                    }
                    _ => None,
                };
                match source {
                    Some((kind, id, true)) => {
                        self.sources.insert((kind, id), p);
                    }
                    Some((kind, id, false)) => {
                        self.sources.remove(&(kind, id));
                    }
                    None => {}
                }
                self.count(p, self.input.epoch())
            }
            // Counted as consumed there.
            Err(why) => self.dead_letter(p, msg, why.reason(), format!("{why:?}")),
        }
    }

    /// This worker's beacon.
    fn mark(&self, idle_after: Duration, now: Instant) -> Mark {
        let mut low: Option<i64> = None;
        for part in &self.parts {
            if !part.replay.is_empty() {
                // Records buffered at the restored checkpoint's cut are not read again yet.
                // Their times are in the restored watermark, so time could otherwise pass
                // their epochs before they come back, and they would arrive late.
                return Mark::Holding;
            }
            if part.is_idle(idle_after, now) {
                continue;
            }
            if !part.spoke {
                return Mark::Holding;
            }
            if part.timed() {
                if let Some(ts) = part.max_ts {
                    low = Some(low.map_or(ts, |l| l.min(ts)));
                }
            }
        }
        match low {
            Some(w) => Mark::Active(w),
            // Only reference partitions are speaking: they carry no time, so they hold nothing.
            None => Mark::Idle,
        }
    }

    /// Moves every partition's last sighting forward by `gap`, during which nobody listened.
    fn not_listening(&mut self, gap: Duration) {
        for part in &mut self.parts {
            part.last_seen += gap;
        }
    }

    /// Confirms with the broker that one silent partition really has nothing more to read (at
    /// most one request per call, so a broker outage stalls this worker only briefly).
    fn check_idle(&mut self, consumer: &BaseConsumer, idle_after: Duration, now: Instant) {
        let due = self.parts.iter_mut().find(|p| {
            now.duration_since(p.last_seen) >= idle_after
                && p.idle_checked
                    .is_none_or(|(at, _)| now.duration_since(at) >= IDLE_RECHECK)
        });
        let Some(part) = due else { return };
        let caught_up = match consumer.fetch_watermarks(
            &part.part.topic,
            part.part.partition,
            IDLE_CHECK_TIMEOUT,
        ) {
            // Some brokers report the high watermark early (tansu: the start of the last
            // batch), never late: a high watermark past the next offset means unread records.
            Ok((low, high)) => {
                if part.replay.iter().any(|o| *o < low) {
                    part.forget_replay_below(low);
                }
                high <= part.next_offset.max(low)
            }
            Err(e) => {
                tracing::debug!(partition = %part.part.label(), error = %e, "broker unreachable: the partition is not idle");
                false
            }
        };
        part.idle_checked = Some((now, caught_up));
    }

    /// Advances the input towards `target`, applying buffered events at their epochs and
    /// visiting the first epoch of every period on the way, as far as `gate` lets it; cuts
    /// a checkpoint where the gate says. Returns whether it reached `target`.
    fn advance(&mut self, target: Epoch, gate: Gate, name: impl Fn(Epoch) -> String) -> bool {
        loop {
            let cur = self.input.epoch();
            let mut stop = target.min(gate.limit);
            if let Some(cut) = &self.cut {
                stop = stop.min(cut.epoch);
            }
            if let Some(at) = gate.cut_at.filter(|at| *at > cur) {
                stop = stop.min(at);
            }
            if let Some(&first) = self.pending.keys().next() {
                stop = stop.min(first);
            }
            if self.input.key_count() > 0 {
                let next_period = self.clock.period_of_epoch(cur) + 1;
                stop = stop.min(self.clock.first_epoch_of_period(next_period));
            }
            if stop <= cur {
                return cur >= target;
            }
            let offsets = self.parts.iter().map(PartState::safe_offset).collect();
            match self.snapshots.back_mut() {
                Some(last) if last.1 == offsets => last.0 = stop,
                _ => self.snapshots.push_back((stop, offsets)),
            }
            self.input.advance_to(stop);
            if gate.cut_at == Some(stop) {
                // Before anything is applied at the checkpoint's epoch.
                self.cut = Some(self.cut_here(name(stop), stop, "periodic"));
            }
            if let Some(events) = self.pending.remove(&stop) {
                for (p, offset, event) in events {
                    self.parts[p].held.remove(&offset);
                    if let Err(why) = self.input.apply(&event) {
                        // Cannot happen for an event buffered for a later epoch; kept loud.
                        tracing::error!(?why, "buffered event refused");
                    }
                }
            }
        }
    }

    /// Notes where every partition stands, with the reference data and names, for a
    /// checkpoint at `epoch` (see [`snapshot`]).
    fn cut_here(&self, name: String, epoch: Epoch, reason: &'static str) -> Cut {
        let parts = &self.parts;
        let now = Instant::now();
        Cut {
            name,
            epoch,
            reason,
            positions: parts
                .iter()
                .map(|p| p.position(self.idle_after, now))
                .collect(),
            reference: snapshot::reference_by_partition(self.input.reference(), |kind, id| {
                self.sources
                    .get(&(kind, id))
                    .map(|p| parts[*p].part.clone())
            }),
            names: self.dict.export(),
            at: Instant::now(),
        }
    }

    /// Starts from checkpoint `loaded`: the series whose key hashes to this worker (of
    /// `peers`), the partitions it reads with their reference data, every name.
    fn restore(
        &mut self,
        loaded: &crate::checkpoint::Loaded,
        (index, peers): (usize, usize),
        idle_after: Duration,
        view: &dataflows::dataflow::StateView,
    ) {
        use dataflows::model::Rec;
        let epoch = loaded.manifest.epoch;
        let mut reference = dataflows::input::Reference::default();
        let series = crate::checkpoint::Part::series_of(&loaded.parts, index, peers);
        for part in &loaded.parts {
            self.dict.import(&part.stores, &part.skus);
            for (partition, r) in &part.reference {
                let Some(p) = self.parts.iter().position(|s| s.part == *partition) else {
                    continue;
                };
                for (id, _) in &r.promos {
                    self.sources.insert((FileKind::Promotions, *id), p);
                }
                for (id, _) in &r.items {
                    self.sources.insert((FileKind::Catalog, *id), p);
                }
                for (id, _) in &r.stores {
                    self.sources.insert((FileKind::Stores, *id), p);
                }
                reference.promos.extend(r.promos.iter().copied());
                reference.items.extend(r.items.iter().copied());
                reference.stores.extend(r.stores.iter().copied());
            }
            for position in &part.positions {
                if let Some(state) = self.parts.iter_mut().find(|s| s.part == position.partition) {
                    state.next_offset = position.resume_offset();
                    state.skip_below = position.next_offset;
                    state.replay = position.held.iter().copied().collect();
                    state.max_ts = position.max_ts;
                    state.spoke = position.next_offset > 0;
                    state.committed = state.committed.max(position.next_offset);
                    if position.idle {
                        // Idle at the cut: it may count as idle at once (once the broker
                        // confirms nothing follows), as it would have in the checkpointed run,
                        // instead of holding time back for a whole idle timeout.
                        state.last_seen = state
                            .last_seen
                            .checked_sub(idle_after)
                            .unwrap_or(state.last_seen);
                    }
                }
            }
        }
        for (key, rec, _) in &series {
            if *rec == Rec::Registered && self.known.insert(*key) {
                let (store, sku) = self.dict.names(key);
                self.names.push((*key, store, sku));
            }
        }
        self.max_epoch = self
            .parts
            .iter()
            .filter_map(|p| p.max_ts)
            .filter_map(|ts| self.clock.epoch_of(ts))
            .max();
        self.input
            .restore(epoch.saturating_sub(1), &reference, series, view);
        self.input.advance_to(epoch);
        self.restore_floor = epoch;
    }

    /// Offsets noted before every advance the frontier `frontier` passed, as (advance,
    /// partition, offset), oldest first: each is committable once the frontier reaches its
    /// advance.
    fn committable(&mut self, frontier: Option<Epoch>) -> Vec<(Epoch, Partition, i64)> {
        let mut out = Vec::new();
        while let Some((epoch, _)) = self.snapshots.front() {
            if frontier.is_some_and(|f| *epoch > f) {
                break;
            }
            let Some((epoch, offsets)) = self.snapshots.pop_front() else {
                break;
            };
            out.extend(
                self.parts
                    .iter()
                    .zip(offsets)
                    .map(|(p, o)| (epoch, p.part.clone(), o)),
            );
        }
        out
    }
}

/// Reads the partition counts of the input topics and assigns this worker its share, from the
/// beginning (see the module docs); returns the partitions with their committed offsets.
fn assign(
    consumer: &BaseConsumer,
    cfg: &Resolved,
    index: usize,
    peers: usize,
    start_at: &HashMap<(String, i32), i64>,
    lost: Option<&prometheus::IntGauge>,
) -> Result<Vec<(Partition, i64)>, StreamError> {
    let kafka = &cfg.kafka;
    let mut mine = Vec::new();
    for (kind, topic) in input_topics(kafka) {
        let md = consumer
            .fetch_metadata(Some(topic), START_TIMEOUT)
            .map_err(|e| StreamError::Kafka(format!("metadata of topic `{topic}`: {e}")))?;
        let t = md
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .ok_or_else(|| StreamError::Kafka(format!("topic `{topic}` does not exist")))?;
        if t.error().is_some() || t.partitions().is_empty() {
            return Err(StreamError::Kafka(format!(
                "topic `{topic}` does not exist or has no partitions (create it, e.g. with `stockcast load`)"
            )));
        }
        for p in t.partitions() {
            if partition_owner(p.id(), kafka.partition_offset, peers) == index {
                mine.push(Partition {
                    kind,
                    topic: topic.to_string(),
                    partition: p.id(),
                });
            }
        }
    }
    mine.sort();
    let mut tpl = TopicPartitionList::new();
    for p in &mine {
        tpl.add_partition(&p.topic, p.partition);
    }
    let committed = if mine.is_empty() {
        TopicPartitionList::new()
    } else {
        consumer
            .committed_offsets(tpl.clone(), START_TIMEOUT)
            .map_err(|e| StreamError::Kafka(format!("committed offsets: {e}")))?
    };
    let mut out = Vec::new();
    for p in mine {
        let c = committed
            .find_partition(&p.topic, p.partition)
            .and_then(|e| e.offset().to_raw())
            .filter(|o| *o >= 0)
            .unwrap_or(0);
        let start = match start_at.get(&(p.topic.clone(), p.partition)) {
            Some(o) => Offset::Offset(*o),
            None => {
                if let Some(gauge) = lost {
                    if history_lost(consumer, &p) {
                        gauge.inc();
                    }
                }
                Offset::Beginning
            }
        };
        tpl.set_partition_offset(&p.topic, p.partition, start)
            .map_err(|e| StreamError::Kafka(e.to_string()))?;
        out.push((p, c));
    }
    consumer
        .assign(&tpl)
        .map_err(|e| StreamError::Kafka(format!("assign: {e}")))?;
    Ok(out)
}

/// Says loudly when a partition read from its beginning no longer starts at offset 0: its
/// oldest records were deleted (retention), so the state rebuilt from it lacks their history.
fn history_lost(consumer: &BaseConsumer, p: &Partition) -> bool {
    match consumer.fetch_watermarks(&p.topic, p.partition, START_TIMEOUT) {
        Ok((low, _)) if low > 0 && !p.kind.is_reference() => {
            tracing::error!(
                partition = %p.label(),
                earliest_offset = low,
                "history lost: the partition's records below its earliest offset were deleted (retention) \
                 and no checkpoint holds them; features that look back further than what is left \
                 are computed from partial history. Configure [checkpoint] dir so that a restart \
                 does not depend on the topics' retention"
            );
            true
        }
        Ok(_) => false,
        Err(e) => {
            tracing::debug!(partition = %p.label(), error = %e, "earliest offset unknown");
            false
        }
    }
}

/// The consumer every worker reads with: no group membership, no automatic commits.
fn consumer(cfg: &Resolved) -> Result<BaseConsumer, StreamError> {
    client_config(&cfg.kafka)
        .set("group.id", &cfg.kafka.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .map_err(|e| StreamError::Kafka(format!("consumer: {}", cfg.kafka.scrub(e))))
}

/// The epoch stored with committed offsets: outputs of epochs before it were acknowledged.
pub fn commit_metadata(frontier: Epoch) -> String {
    format!("stockcast-frontier={frontier}")
}

fn parse_commit_metadata(text: &str) -> Option<Epoch> {
    text.strip_prefix("stockcast-frontier=")?.parse().ok()
}

/// The frontier committed by a previous run under the configured group (the least over the
/// input partitions that carry one), or `None` for a first run.
pub fn committed_frontier(cfg: &Resolved) -> Result<Option<Epoch>, StreamError> {
    let consumer = consumer(cfg)?;
    let mut tpl = TopicPartitionList::new();
    for (_, topic) in input_topics(&cfg.kafka) {
        let md = consumer
            .fetch_metadata(Some(topic), START_TIMEOUT)
            .map_err(|e| StreamError::Kafka(format!("metadata of topic `{topic}`: {e}")))?;
        for t in md.topics() {
            for p in t.partitions() {
                tpl.add_partition(topic, p.id());
            }
        }
    }
    if tpl.count() == 0 {
        return Ok(None);
    }
    let committed = consumer
        .committed_offsets(tpl, START_TIMEOUT)
        .map_err(|e| StreamError::Kafka(format!("committed offsets: {e}")))?;
    let elements = committed.elements();
    if let Some(f) = elements
        .iter()
        .filter_map(|e| parse_commit_metadata(e.metadata()))
        .min()
    {
        return Ok(Some(f));
    }
    if !elements
        .iter()
        .any(|e| e.offset().to_raw().is_some_and(|o| o >= 0))
    {
        return Ok(None);
    }
    // Offsets were committed but the broker dropped their metadata (tansu does): the progress
    // records, written just before each commit, say how far output went.
    last_progress_frontier(&consumer, &cfg.kafka.topics.epochs)
}

/// The largest frontier on the progress topic: read to its end (until it stays quiet past the
/// high watermark, which some brokers report early).
fn last_progress_frontier(
    consumer: &BaseConsumer,
    topic: &str,
) -> Result<Option<Epoch>, StreamError> {
    let kafka_err =
        |e: rdkafka::error::KafkaError| StreamError::Kafka(format!("reading `{topic}`: {e}"));
    let md = consumer
        .fetch_metadata(Some(topic), START_TIMEOUT)
        .map_err(kafka_err)?;
    let mut tpl = TopicPartitionList::new();
    let mut high: HashMap<i32, i64> = HashMap::new();
    for t in md.topics() {
        for p in t.partitions() {
            let (_, hi) = consumer
                .fetch_watermarks(topic, p.id(), START_TIMEOUT)
                .map_err(kafka_err)?;
            high.insert(p.id(), hi);
            tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
                .map_err(kafka_err)?;
        }
    }
    consumer.assign(&tpl).map_err(kafka_err)?;
    let mut best: Option<Epoch> = None;
    let mut reached: HashMap<i32, i64> = HashMap::new();
    let mut quiet_since = Instant::now();
    let started = Instant::now();
    loop {
        match consumer.poll(Duration::from_millis(50)) {
            Some(Ok(m)) => {
                quiet_since = Instant::now();
                reached.insert(m.partition(), m.offset() + 1);
                if let Some(r) = m
                    .payload()
                    .and_then(|v| serde_json::from_slice::<super::wire::EpochRecord>(v).ok())
                {
                    best = best.max(Some(r.frontier));
                }
            }
            Some(Err(e)) => return Err(kafka_err(e)),
            None => {}
        }
        let at_end = high
            .iter()
            .all(|(p, hi)| *hi <= 0 || reached.get(p).is_some_and(|r| *r >= *hi));
        if at_end && quiet_since.elapsed() > Duration::from_secs(1) {
            break;
        }
        if started.elapsed() > START_TIMEOUT {
            return Err(StreamError::Kafka(format!(
                "reading `{topic}` to find where output stopped took over {}s",
                START_TIMEOUT.as_secs()
            )));
        }
    }
    consumer.unassign().map_err(kafka_err)?;
    Ok(best)
}

/// How often a worker publishes its read positions and series count.
const SHOW_EVERY: Duration = Duration::from_secs(1);

/// How often the consumer lag is measured.
const LAG_EVERY: Duration = Duration::from_secs(5);

/// Measures the consumer lag of every assigned partition every [`LAG_EVERY`] on a thread and
/// client of its own (a broker request may block), until the returned guard is dropped.
fn spawn_lag_probe(cfg: &Resolved, opts: &StreamOptions) -> Option<LagProbe> {
    let consumer = match consumer(cfg) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "no consumer-lag metric: cannot create its client");
            return None;
        }
    };
    let progress = Arc::clone(&opts.progress);
    let done = Arc::new(AtomicBool::new(false));
    let done2 = Arc::clone(&done);
    let thread = std::thread::Builder::new()
        .name("stockcast-lag".into())
        .spawn(move || {
            let mut last = Instant::now() - LAG_EVERY;
            while !done2.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(100));
                if last.elapsed() < LAG_EVERY {
                    continue;
                }
                last = Instant::now();
                let positions: Vec<((String, i32), i64)> = match progress.positions.lock() {
                    Ok(p) => p.iter().map(|(k, v)| (k.clone(), *v)).collect(),
                    Err(_) => return,
                };
                for ((topic, partition), position) in positions {
                    if let Ok((_, high)) =
                        consumer.fetch_watermarks(&topic, partition, IDLE_CHECK_TIMEOUT)
                    {
                        progress
                            .metrics
                            .consumer_lag
                            .with_label_values(&[topic.as_str(), &partition.to_string()])
                            .set((high - position).max(0));
                    }
                }
            }
        })
        .ok()?;
    Some(LagProbe {
        done,
        thread: Some(thread),
    })
}

/// Stops the lag probe when dropped.
struct LagProbe {
    done: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for LagProbe {
    fn drop(&mut self) {
        self.done.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Runs the workers until they finish (`exit_when_idle`) or `stop` is set; calls `on_closed`
/// on this thread for every advance of the closed frontier, in order, with the names of every
/// series seen so far.
pub fn run(
    cfg: &Resolved,
    opts: &StreamOptions,
    checkpoints: Option<Arc<Checkpoints>>,
    mut on_closed: impl FnMut(Closed, &Dictionary) -> bool,
) -> Result<(), StreamError> {
    let workers = opts.workers.max(1);
    let (config, peers) = match &opts.cluster {
        None => (timely::Config::process(workers), workers),
        Some(c) => (
            timely::Config {
                communication: timely::CommunicationConfig::Cluster {
                    threads: workers,
                    process: c.process,
                    addresses: c.hosts.clone(),
                    report: false,
                    zerocopy: false,
                },
                worker: timely::WorkerConfig::default(),
            },
            workers * c.hosts.len(),
        ),
    };
    let (tx, rx) = mpsc::sync_channel::<Result<Report, String>>(64);
    let cfg2 = cfg.clone();
    let opts2 = opts.clone();
    let checkpoints2 = checkpoints.clone();
    let guards = timely::execute(config, move |worker| {
        let tx = tx.clone();
        if let Err(e) = work(worker, &cfg2, &opts2, checkpoints2.as_deref(), &tx) {
            // Tell the merger, and stop the other workers.
            opts2.stop.store(true, Ordering::SeqCst);
            let _ = tx.send(Err(e));
        }
    })
    .map_err(StreamError::Worker)?;

    let _lag = spawn_lag_probe(cfg, opts);
    let mut merger = Merger::new(peers);
    let processes = opts.cluster.as_ref().map_or(1, |c| c.hosts.len());
    let mut coordinator = checkpoints
        .as_ref()
        .filter(|_| opts.cluster.as_ref().is_none_or(Cluster::is_leader))
        .map(|c| snapshot::Coordinator::new(Arc::clone(c), Arc::clone(&opts.progress), processes));
    if let Some(loaded) = checkpoints.as_ref().and_then(|c| c.restore.as_ref()) {
        merger.restored(loaded.manifest.epoch);
    }
    let mut failure = None;
    while let Ok(first) = rx.recv() {
        // Whatever queued while the sink was busy goes out as one advance: under load the
        // sink writes fewer, larger batches instead of falling further behind.
        for report in std::iter::once(first).chain(rx.try_iter()) {
            match report {
                Ok(report) => {
                    // Counted as read, whether or not their epochs closed yet.
                    let read: u64 = report.consumed.values().sum();
                    opts.progress.consumed.fetch_add(read, Ordering::SeqCst);
                    let pending = &opts.progress.metrics.dead_letters_pending;
                    pending.add(report.dead.len() as i64);
                    merger.absorb(report);
                }
                Err(e) => {
                    failure.get_or_insert(e);
                }
            }
        }
        if let Some(mut closed) = merger.closed() {
            let p = &opts.progress;
            if let Some(f) = closed.frontier {
                p.frontier.fetch_max(f, Ordering::SeqCst);
            }
            let parts = std::mem::take(&mut closed.checkpoint_parts);
            let delivered = on_closed(closed, &merger.dict);
            if let Some(c) = &mut coordinator {
                c.absorb(parts);
                if delivered {
                    // Every epoch emitted so far is out: checkpoints up to it may complete.
                    c.complete(merger.emitted_through(), &cfg.clock);
                }
            }
        }
    }
    for result in guards.join() {
        result.map_err(StreamError::Worker)?;
    }
    match failure {
        Some(e) => Err(StreamError::Kafka(e)),
        None => Ok(()),
    }
}

/// Merges the workers' reports into closed advances.
struct Merger {
    frontiers: Vec<Option<Option<Epoch>>>,
    emitted: Option<Option<Epoch>>,
    changed: BTreeMap<Epoch, Vec<(Key, FeatureVec)>>,
    offsets: Vec<(Epoch, Partition, i64)>,
    consumed: BTreeMap<Epoch, BTreeMap<FileKind, u64>>,
    late: BTreeMap<Epoch, u64>,
    dead: Vec<DeadRecord>,
    /// Per partition, the latest committable offset released so far.
    committable: BTreeMap<Partition, i64>,
    /// The frontier of the last tally: the first epoch the next one covers.
    tallied: Option<Epoch>,
    dict: Dictionary,
    /// Checkpoint parts reported since the last advance.
    parts: Vec<PartDone>,
}

/// A frontier as a number to compare: `None` (finished) is later than every epoch.
fn rank(frontier: Option<Epoch>) -> Epoch {
    frontier.unwrap_or(Epoch::MAX)
}

/// Takes the entries of `map` below `frontier` (all of them once the run finished).
fn split_closed<V>(map: &mut BTreeMap<Epoch, V>, frontier: Option<Epoch>) -> BTreeMap<Epoch, V> {
    let keep = match frontier {
        Some(f) => map.split_off(&f),
        None => BTreeMap::new(),
    };
    std::mem::replace(map, keep)
}

impl Merger {
    fn new(workers: usize) -> Self {
        Merger {
            frontiers: vec![None; workers],
            emitted: None,
            changed: BTreeMap::new(),
            offsets: Vec::new(),
            consumed: BTreeMap::new(),
            late: BTreeMap::new(),
            dead: Vec::new(),
            committable: BTreeMap::new(),
            tallied: None,
            dict: Dictionary::default(),
            parts: Vec::new(),
        }
    }

    /// The frontier of what was handed out so far (`None`: everything, the run finished).
    fn emitted_through(&self) -> Option<Epoch> {
        match self.emitted {
            None => Some(0),
            Some(f) => f,
        }
    }

    /// Starts after a restore at `epoch`: every epoch before it was closed and published by
    /// the checkpointed run.
    fn restored(&mut self, epoch: Epoch) {
        self.emitted = Some(Some(epoch));
        self.tallied = Some(epoch);
    }

    /// Takes in one worker's report.
    fn absorb(&mut self, r: Report) {
        self.frontiers[r.worker] = Some(r.frontier);
        for (epoch, key, vec) in r.changed {
            self.changed.entry(epoch).or_default().push((key, vec));
        }
        for (_, store, sku) in &r.names {
            // Collisions were dead-lettered by the worker that saw the second name.
            let _ = self.dict.key(store, sku);
        }
        self.offsets.extend(r.offsets);
        // A worker's counts belong to epochs its input has not left, which no tally covered
        // yet; should one arrive for a tallied epoch it goes to the next tally.
        let open = |epoch: Epoch| epoch.max(self.tallied.unwrap_or(0));
        for ((epoch, kind), n) in r.consumed {
            *self
                .consumed
                .entry(open(epoch))
                .or_default()
                .entry(kind)
                .or_default() += n;
        }
        for (epoch, n) in r.late {
            *self.late.entry(open(epoch)).or_default() += n;
        }
        self.dead.extend(r.dead);
        self.parts.extend(r.parts);
    }

    /// What closed since the last call (and the dead letters since), if anything.
    fn closed(&mut self) -> Option<Closed> {
        // The global frontier: the least any worker reported (a worker not yet heard holds 0).
        let least = self
            .frontiers
            .iter()
            .map(|f| rank(f.unwrap_or(Some(0))))
            .min()
            .unwrap_or(0);
        let global = (least != Epoch::MAX).then_some(least);
        let advanced = least > self.emitted.map_or(0, rank);
        if !advanced && self.dead.is_empty() && self.parts.is_empty() {
            return None;
        }
        let mut closed = Closed {
            frontier: global,
            dead: std::mem::take(&mut self.dead),
            checkpoint_parts: std::mem::take(&mut self.parts),
            ..Closed::default()
        };
        if !advanced {
            closed.frontier = self.emitted.flatten();
            return Some(closed);
        }
        self.emitted = Some(global);
        let changed = split_closed(&mut self.changed, global);
        let mut consumed = split_closed(&mut self.consumed, global);
        let mut late = split_closed(&mut self.late, global);
        if self.tallied.is_none() {
            // Until their first advance the inputs sit at epoch 0, so reference records read
            // before any event would date from 1970: count them in the first epoch that
            // produced anything, and the empty decades before it as no closed epochs.
            let first = changed
                .keys()
                .next()
                .copied()
                .or_else(|| global.and_then(|g| g.checked_sub(1)));
            if let Some(first) = first {
                let early = consumed.split_off(&first);
                for (_, kinds) in std::mem::replace(&mut consumed, early) {
                    for (kind, n) in kinds {
                        *consumed.entry(first).or_default().entry(kind).or_default() += n;
                    }
                }
                let early = late.split_off(&first);
                for (_, n) in std::mem::replace(&mut late, early) {
                    *late.entry(first).or_default() += n;
                }
            }
        }
        // A tally for every closed epoch that consumed, changed or applied anything, and one
        // for the last closed epoch, so the frontier always shows.
        let mut epochs: BTreeSet<Epoch> = changed.keys().copied().collect();
        epochs.extend(consumed.keys().copied());
        epochs.extend(late.keys().copied());
        if let Some(last) = global.and_then(|g| g.checked_sub(1)) {
            if self.tallied.is_none_or(|t| last >= t) {
                epochs.insert(last);
            }
        }
        let (mut ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.offsets)
            .into_iter()
            .partition(|(e, _, _)| global.is_none_or(|g| *e <= g));
        self.offsets = waiting;
        ready.sort_by_key(|(e, _, _)| *e);
        let mut ready = ready.into_iter().peekable();
        for epoch in epochs {
            // Offsets noted before an advance to `epoch + 1` or earlier are all in closed
            // epochs once `epoch` closed.
            while let Some((_, p, o)) = ready.next_if(|(e, _, _)| *e <= epoch + 1) {
                self.committable.insert(p, o);
            }
            let since = self.tallied.unwrap_or(epoch);
            self.tallied = Some(epoch + 1);
            let tally = EpochTally {
                epoch,
                epochs_closed: (epoch + 1).saturating_sub(since),
                consumed: consumed.remove(&epoch).unwrap_or_default(),
                late: late.remove(&epoch).unwrap_or_default(),
                offsets: self
                    .committable
                    .iter()
                    .map(|(p, o)| (p.clone(), *o))
                    .collect(),
            };
            closed.epochs_closed += tally.epochs_closed;
            for (kind, n) in &tally.consumed {
                *closed.consumed.entry(*kind).or_default() += n;
            }
            closed.late += tally.late;
            closed.epochs.push(tally);
        }
        for (_, p, o) in ready {
            self.committable.insert(p, o);
        }
        closed.offsets = self
            .committable
            .iter()
            .map(|(p, o)| (p.clone(), *o))
            .collect();
        closed.changed = changed
            .into_iter()
            .map(|(e, mut v)| {
                v.sort_unstable_by_key(|c| c.0);
                (e, v)
            })
            .collect();
        closed.closed_at = Some(Instant::now());
        Some(closed)
    }
}

/// One timely worker's loop.
fn work(
    worker: &mut timely::worker::Worker,
    cfg: &Resolved,
    opts: &StreamOptions,
    checkpoints: Option<&Checkpoints>,
    tx: &mpsc::SyncSender<Result<Report, String>>,
) -> Result<(), String> {
    let index = worker.index();
    let peers = worker.peers();
    let consumer = consumer(cfg).map_err(|e| e.to_string())?;
    // Idleness checks go through a client of their own: on the reading consumer's connection
    // they would queue behind fetch requests that wait up to fetch.wait.max.ms for data.
    let prober = self::consumer(cfg).map_err(|e| e.to_string())?;
    let restore = checkpoints.and_then(|c| c.restore.as_ref());
    let start_at: HashMap<(String, i32), i64> = restore
        .iter()
        .flat_map(|l| l.parts.iter().flat_map(|p| &p.positions))
        .map(|p| {
            let at = (p.partition.topic.clone(), p.partition.partition);
            (at, p.resume_offset())
        })
        .collect();
    let lost = restore
        .is_none()
        .then_some(&opts.progress.metrics.history_lost_partitions);
    let assigned =
        assign(&consumer, cfg, index, peers, &start_at, lost).map_err(|e| e.to_string())?;
    opts.progress.worker_assigned(opts.workers.max(1));
    tracing::info!(
        worker = index,
        partitions = ?assigned.iter().map(|(p, _)| p.label()).collect::<Vec<_>>(),
        "assigned"
    );
    let started = Instant::now();
    let idle_after = Duration::from_secs(cfg.kafka.idle_timeout_secs);
    let mut feeder = Feeder {
        clock: cfg.clock,
        input: FeatureInput::new(cfg.clock, &cfg.spec),
        parts: assigned
            .into_iter()
            .map(|(part, committed)| PartState {
                max_ts: None,
                // Silence counts from the start: a partition that is still empty may be about to
                // receive records from a producer that is slow to reach it.
                last_seen: started,
                spoke: false,
                next_offset: 0,
                held: BTreeSet::new(),
                committed,
                idle_checked: None,
                consumed_metric: opts
                    .progress
                    .metrics
                    .events_consumed
                    .with_label_values(&[part.topic.as_str(), &part.partition.to_string()]),
                lost_metric: opts
                    .progress
                    .metrics
                    .records_lost
                    .with_label_values(&[part.topic.as_str(), &part.partition.to_string()]),
                part,
                skip_below: 0,
                replay: HashSet::new(),
            })
            .collect(),
        dict: Dictionary::default(),
        known: HashSet::new(),
        pending: BTreeMap::new(),
        max_epoch: None,
        snapshots: VecDeque::new(),
        names: Vec::new(),
        consumed: BTreeMap::new(),
        late: BTreeMap::new(),
        dead: Vec::new(),
        redelivered: 0,
        future_limit: i64::MAX,
        progress: Arc::clone(&opts.progress),
        sources: HashMap::new(),
        cut: None,
        skipped: 0,
        restore_floor: 0,
        parts_done: Vec::new(),
        idle_after: Duration::from_secs(cfg.kafka.idle_timeout_secs),
    };
    let max_future = cfg.max_future_secs;

    let (probe, sink, size) = crate::pipeline::run::build(worker, &mut feeder.input, &cfg.spec);
    if let Some(loaded) = restore {
        feeder.restore(loaded, (index, peers), idle_after, &size);
        feeder.input.flush();
        tracing::info!(worker = index, checkpoint = %loaded.name, "state restored");
    }
    // Checkpoints: worker 0 decides (see `snapshot`), every worker writes its part.
    let mut writer = checkpoints.map(|c| Writer::start(Arc::clone(&c.store), c.settings.clone()));
    let mut schedule = Schedule {
        decided_through: feeder.input.epoch(),
        at: 0,
        nonce: checkpoints.map_or(0, |c| c.nonce),
    };
    let mut last_checkpoint = Instant::now();
    let mut skipped_logged = 0;
    // The beacons: a broadcast stream that is never advanced; only its data matters.
    let board: Rc<RefCell<Vec<Option<Beacon>>>> = Rc::new(RefCell::new(vec![None; peers]));
    let mut beacons = worker.dataflow::<u64, _, _>(|scope| {
        let (handle, stream) = scope.new_input::<Beacon>();
        let board = Rc::clone(&board);
        stream.broadcast().inspect(move |b: &Beacon| {
            board.borrow_mut()[b.worker] = Some(*b);
        });
        handle
    });

    let mut outbox = Outbox::new(worker, index, peers);
    let follower = opts.cluster.as_ref().is_some_and(|c| !c.is_leader());

    let lateness = cfg.allowed_lateness_secs;
    let mut last_beacon: Option<Beacon> = None;
    let mut reported: Option<Option<Epoch>> = None;
    let mut last_report = Instant::now();
    let mut draining = false;
    let mut redelivered_logged = 0;
    let mut last_poll = Instant::now();
    let mut last_shown = Instant::now();
    let mut shown = (0i64, 0i64);
    loop {
        let peer_stopping = board
            .borrow()
            .iter()
            .any(|b| b.is_some_and(|b| b.stopping && b.worker != index));
        if opts.stop.load(Ordering::SeqCst) || peer_stopping {
            if peer_stopping && !opts.stop.load(Ordering::SeqCst) {
                tracing::info!(worker = index, "a peer is stopping; stopping too");
            }
            // Tell the peers (closing the beacons below sends it).
            beacons.send(Beacon {
                worker: index,
                mark: last_beacon.map_or(Mark::Holding, |b| b.mark),
                max_epoch: feeder.max_epoch,
                draining,
                stopping: true,
                schedule,
            });
            break;
        }
        // Silence only counts while this worker listens: time spent blocked (output
        // backpressure, a long dataflow step) is not a partition's silence, nor is time spent
        // waiting for the dataflow to close what was already read.
        let gap = last_poll.elapsed();
        let full = feeder.snapshots.len() >= MAX_OPEN_ADVANCES;
        if gap > LISTEN_GAP || full {
            feeder.not_listening(gap);
        }
        last_poll = Instant::now();
        feeder.future_limit = chrono::Utc::now().timestamp().saturating_add(max_future);
        let mut got = 0;
        while !draining && !full && got < POLL_BATCH {
            let wait = if got == 0 {
                Duration::from_millis(2)
            } else {
                Duration::ZERO
            };
            match consumer.poll(wait) {
                None => break,
                Some(Err(e)) => {
                    tracing::warn!(worker = index, error = %e, "kafka consumer");
                    break;
                }
                Some(Ok(msg)) => {
                    feeder.receive(&msg);
                    got += 1;
                }
            }
        }
        if !draining && !full {
            feeder.check_idle(&prober, idle_after, Instant::now());
        }
        if feeder.redelivered > redelivered_logged {
            tracing::warn!(
                worker = index,
                records = feeder.redelivered,
                "the Kafka client delivered records again; they were skipped"
            );
            redelivered_logged = feeder.redelivered;
        }
        let beacon = Beacon {
            worker: index,
            mark: if draining {
                Mark::Idle
            } else {
                feeder.mark(idle_after, Instant::now())
            },
            max_epoch: feeder.max_epoch,
            draining,
            stopping: false,
            schedule,
        };
        if last_beacon != Some(beacon) {
            tracing::debug!(worker = index, mark = ?beacon.mark, max_epoch = ?beacon.max_epoch, draining, "beacon");
            beacons.send(beacon);
            beacons.flush();
            last_beacon = Some(beacon);
        }
        worker.step();
        // Everyone stops once every worker drains; the target below then comes from the
        // final beacons, so all close their inputs at the same epoch.
        let all_draining = board.borrow().iter().all(|b| b.is_some_and(|b| b.draining));
        let goal = target(
            &board.borrow(),
            &cfg.clock,
            lateness,
            opts.exit_when_idle,
            (opts.wall_clock)(),
        );
        if index == 0 {
            if let Target::Until(e) | Target::Drain(e) = goal {
                let mark = cfg.clock.epoch_start(e);
                opts.progress.watermark.fetch_max(mark, Ordering::Relaxed);
            }
        }
        if last_shown.elapsed() >= SHOW_EVERY {
            last_shown = Instant::now();
            feeder.show(&mut shown, &size);
        }
        let gate = match checkpoints {
            None => Gate::OPEN,
            Some(c) => {
                if index == 0 {
                    if let Target::Until(e) | Target::Drain(e) = goal {
                        let due = last_checkpoint.elapsed() >= c.min_interval
                            && feeder.cut.is_none()
                            && !writer.as_ref().is_some_and(Writer::busy);
                        if schedule.decide(c.every_epochs, feeder.input.epoch(), e, due) {
                            last_checkpoint = Instant::now();
                        }
                    }
                }
                // Worker 0's decisions; nothing may move before they are heard.
                let decided = if index == 0 {
                    Some(schedule)
                } else {
                    board.borrow()[0].map(|b| b.schedule)
                };
                match decided {
                    Some(s) => {
                        schedule.nonce = s.nonce;
                        Gate {
                            limit: s.limit(c.every_epochs),
                            cut_at: (s.at > 0).then_some(s.at),
                        }
                    }
                    None => Gate {
                        limit: feeder.input.epoch(),
                        cut_at: None,
                    },
                }
            }
        };
        let nonce = schedule.nonce;
        let name = |e: Epoch| crate::checkpoint::checkpoint_name(e, nonce);
        match goal {
            Target::Hold => {}
            Target::Until(e) => {
                feeder.advance(e, gate, name);
            }
            // Exiting needs a full idle timeout of listening first: a producer may just be
            // starting.
            Target::Drain(_) if started.elapsed() < idle_after => {}
            Target::Drain(e) => {
                if feeder.advance(e, gate, name) {
                    draining = true;
                }
            }
        }
        feeder.input.flush();
        worker.step();
        outbox.forward(tx)?;
        if all_draining {
            break;
        }
        let frontier = probe.with_frontier(|f| f.first().copied());
        if feeder.skipped > skipped_logged && feeder.parts.iter().all(|p| p.replay.is_empty()) {
            tracing::info!(
                worker = index,
                records = feeder.skipped,
                "records read again after the restore were in the checkpoint already; skipped"
            );
            skipped_logged = feeder.skipped;
        }
        if let Some(w) = &mut writer {
            let cut_done = feeder
                .cut
                .as_ref()
                .is_some_and(|cut| frontier.is_none_or(|f| f >= cut.epoch));
            if cut_done {
                if let Some(cut) = feeder.cut.take() {
                    let (job, part) = export(cut, index, peers, &size, &opts.progress);
                    if !w.submit(job, part) {
                        let m = &opts.progress.metrics;
                        m.checkpoint_failures.with_label_values(&["busy"]).inc();
                        tracing::warn!(
                            worker = index,
                            "checkpoint skipped: the previous part is still being written"
                        );
                    }
                }
            }
            feeder.parts_done.extend(w.finished());
        }
        let due = reported != Some(frontier)
            || !feeder.parts_done.is_empty()
            || (!feeder.dead.is_empty() && last_report.elapsed() > Duration::from_millis(200));
        if due {
            if follower && reported != Some(frontier) {
                // No sink here notes the advances: /healthz watches this process's own.
                opts.progress
                    .last_advance
                    .store(chrono::Utc::now().timestamp(), Ordering::Relaxed);
            }
            outbox.send(report(index, frontier, &sink, &mut feeder));
            reported = Some(frontier);
            last_report = Instant::now();
        }
    }
    // Close the inputs: the dataflow completes every epoch it holds.
    drop(beacons);
    feeder.input.close();
    while !probe.done() {
        worker.step();
        outbox.forward(tx)?;
        let frontier = probe.with_frontier(|f| f.first().copied());
        // The report of the finished dataflow (`None`) is the last one, sent below: worker 0
        // stops at the first it sees from every worker.
        if reported != Some(frontier) && frontier.is_some() {
            outbox.send(report(index, frontier, &sink, &mut feeder));
            reported = Some(frontier);
        }
    }
    feeder.show(&mut shown, &size);
    if let (Some(w), true) = (writer, checkpoints.is_some()) {
        // The last part: everything applied, whatever the schedule (the workers' next epochs
        // may differ; the checkpoint's epoch is the latest of them).
        let name = crate::checkpoint::final_name(schedule.nonce);
        let epoch = feeder.input.epoch() + 1;
        let cut = feeder.cut_here(name, epoch, "stop");
        let (job, part) = export(cut, index, peers, &size, &opts.progress);
        let mut w = w;
        // Waits for a part still being written first.
        let mut done = w.finished();
        while w.busy() {
            std::thread::sleep(Duration::from_millis(10));
            done.extend(w.finished());
        }
        w.submit(job, part);
        done.extend(w.close());
        feeder.parts_done.extend(done);
    }
    outbox.send(report(index, None, &sink, &mut feeder));
    outbox.finish(worker, tx)
}

/// Exports this worker's state for the checkpoint `cut`, counting the time taken.
fn export(
    cut: Cut,
    index: usize,
    peers: usize,
    view: &dataflows::dataflow::StateView,
    progress: &Progress,
) -> (snapshot::PartJob, crate::checkpoint::Part) {
    let started = Instant::now();
    let mut series = Vec::with_capacity(view.records() as usize);
    view.export(|k, r, a| series.push((k, r, a)));
    progress
        .metrics
        .checkpoint_export_seconds
        .observe(started.elapsed().as_secs_f64());
    cut.into_part(index, peers, series)
}

/// Most advances a worker may have waiting for the dataflow to close them before it stops
/// reading: while the sinks or a slower peer hold the closed frontier back, unread records wait
/// in Kafka rather than in memory.
const MAX_OPEN_ADVANCES: usize = 64;

/// The channel of reports to worker 0, which hands them to its process's merging thread.
struct Outbox {
    /// `None` once this worker sent its final report.
    input: Option<timely::dataflow::InputHandleVec<u64, Report>>,
    probe: timely::dataflow::operators::probe::Handle<u64>,
    /// Reports that arrived here (worker 0 only).
    inbox: Rc<RefCell<Vec<Report>>>,
    /// Workers whose final report was forwarded: all of them ends the run.
    finished: HashSet<usize>,
    peers: usize,
    leader: bool,
}

impl Outbox {
    fn new(worker: &mut timely::worker::Worker, index: usize, peers: usize) -> Self {
        use timely::dataflow::channels::pact::Pipeline;
        use timely::dataflow::operators::generic::operator::Operator;
        use timely::dataflow::operators::{Exchange, Probe};

        let inbox: Rc<RefCell<Vec<Report>>> = Rc::default();
        let (input, probe) = worker.dataflow::<u64, _, _>(|scope| {
            let (handle, stream) = scope.new_input::<Report>();
            let (probe, stream) = stream.exchange(|_| 0).probe();
            let inbox = Rc::clone(&inbox);
            stream.sink(Pipeline, "Reports", move |(input, _)| {
                input.for_each(|_, data| inbox.borrow_mut().append(data));
            });
            (handle, probe)
        });
        Outbox {
            input: Some(input),
            probe,
            inbox,
            finished: HashSet::new(),
            peers,
            leader: index == 0,
        }
    }

    fn send(&mut self, report: Report) {
        if let Some(input) = &mut self.input {
            input.send(report);
            // Closing the round pushes the report out (the exchange holds back data sent
            // within an open round).
            let next = *input.time() + 1;
            input.advance_to(next);
        }
    }

    /// Hands what arrived to the merging thread (a bounded channel: a slow sink blocks worker 0,
    /// which holds the closed frontier of the whole cluster back).
    fn forward(&mut self, tx: &mpsc::SyncSender<Result<Report, String>>) -> Result<(), String> {
        let arrived = std::mem::take(&mut *self.inbox.borrow_mut());
        for r in arrived {
            if r.frontier.is_none() {
                self.finished.insert(r.worker);
            }
            tx.send(Ok(r))
                .map_err(|_| "the output thread stopped".to_string())?;
        }
        Ok(())
    }

    /// Closes this worker's side and steps until every report reached worker 0 (which waits
    /// for the final report of every worker).
    fn finish(
        mut self,
        worker: &mut timely::worker::Worker,
        tx: &mpsc::SyncSender<Result<Report, String>>,
    ) -> Result<(), String> {
        self.input = None;
        loop {
            self.forward(tx)?;
            let done = if self.leader {
                self.finished.len() >= self.peers
            } else {
                self.probe.done()
            };
            if done {
                return Ok(());
            }
            worker.step();
        }
    }
}

fn report(
    worker: usize,
    frontier: Option<Epoch>,
    sink: &crate::pipeline::run::Changes,
    feeder: &mut Feeder,
) -> Report {
    let mut changed = Vec::new();
    let floor = feeder.restore_floor;
    sink.borrow_mut().retain(|(t, k, v)| {
        if frontier.is_none_or(|f| *t < f) {
            // A restore's own changes repeat what the checkpointed run emitted.
            if *t >= floor {
                changed.push((*t, *k, v.clone()));
            }
            false
        } else {
            true
        }
    });
    Report {
        worker,
        frontier,
        changed,
        names: std::mem::take(&mut feeder.names),
        offsets: feeder.committable(frontier),
        consumed: std::mem::take(&mut feeder.consumed),
        late: std::mem::take(&mut feeder.late),
        dead: std::mem::take(&mut feeder.dead),
        parts: std::mem::take(&mut feeder.parts_done),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dataflows::PeriodKind;

    fn beacon(worker: usize, mark: Mark, max_epoch: Option<Epoch>) -> Option<Beacon> {
        Some(Beacon {
            worker,
            mark,
            max_epoch,
            draining: false,
            stopping: false,
            schedule: Schedule::default(),
        })
    }

    #[test]
    fn the_slowest_speaking_partition_sets_the_target() {
        let clock = Clock::new(900, PeriodKind::Day).unwrap();
        let b = [
            beacon(0, Mark::Active(9_000), Some(10)),
            beacon(1, Mark::Active(1_800), Some(2)),
            beacon(2, Mark::Idle, Some(40)),
        ];
        assert_eq!(target(&b, &clock, 0, false, 1 << 40), Target::Until(2));
        // Lateness keeps one more epoch open.
        assert_eq!(target(&b, &clock, 900, false, 1 << 40), Target::Until(1));
    }

    #[test]
    fn unknown_or_holding_workers_hold_everyone() {
        let clock = Clock::new(900, PeriodKind::Day).unwrap();
        let b = [beacon(0, Mark::Active(9_000), None), None];
        assert_eq!(target(&b, &clock, 0, false, 0), Target::Hold);
        let b = [
            beacon(0, Mark::Active(9_000), None),
            beacon(1, Mark::Holding, None),
        ];
        assert_eq!(target(&b, &clock, 0, false, 0), Target::Hold);
    }

    #[test]
    fn all_idle_closes_on_the_wall_clock_or_drains() {
        let clock = Clock::new(900, PeriodKind::Day).unwrap();
        let b = [
            beacon(0, Mark::Idle, Some(7)),
            beacon(1, Mark::Idle, Some(12)),
        ];
        assert_eq!(target(&b, &clock, 0, false, 90_000), Target::Until(100));
        assert_eq!(target(&b, &clock, 0, true, 90_000), Target::Drain(13));
    }

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

    #[test]
    fn commit_metadata_round_trips() {
        assert_eq!(parse_commit_metadata(&commit_metadata(4242)), Some(4242));
        assert_eq!(parse_commit_metadata("other"), None);
    }
    #[test]
    fn an_advance_tallies_each_epoch_that_did_anything() {
        let sales = |partition| Partition {
            kind: FileKind::Sales,
            topic: "sales".into(),
            partition,
        };
        let key = Key { store: 1, sku: 2 };
        let report = |worker, frontier, changed: Vec<Epoch>, consumed: Vec<(Epoch, u64)>| Report {
            worker,
            frontier,
            changed: changed
                .into_iter()
                .map(|e| (e, key, FeatureVec::from(vec![e as i64])))
                .collect(),
            names: Vec::new(),
            offsets: vec![
                (4, sales(worker as i32), 10),
                (11, sales(worker as i32), 30),
            ],
            consumed: consumed
                .into_iter()
                .map(|(e, n)| ((e, FileKind::Sales), n))
                .collect(),
            late: BTreeMap::from([(9, 1)]),
            dead: Vec::new(),
            parts: Vec::new(),
        };
        let mut merger = Merger::new(2);
        // Worker 0 read reference data before its first advance, at epoch 0.
        merger.absorb(report(
            0,
            Some(12),
            vec![3, 10],
            vec![(0, 2), (3, 5), (10, 2), (12, 4)],
        ));
        // Worker 1 is behind: nothing closes until it reports.
        assert!(merger.closed().is_none());
        merger.absorb(report(1, Some(10), vec![3], vec![(3, 1)]));
        let closed = merger.closed().unwrap();
        assert_eq!(closed.frontier, Some(10));
        let tallies: Vec<(Epoch, u64, u64, u64)> = closed
            .epochs
            .iter()
            .map(|t| {
                let n = t.consumed.get(&FileKind::Sales).copied().unwrap_or(0);
                (t.epoch, t.epochs_closed, n, t.late)
            })
            .collect();
        // Epoch 3 (consumed, changed; with what was read at epoch 0, and the epochs before it
        // not counted), epoch 9 (late event; the last closed), nothing between.
        assert_eq!(tallies, vec![(3, 1, 8, 0), (9, 6, 0, 2)]);
        assert_eq!(closed.epochs_closed, 7);
        assert_eq!(closed.changed.len(), 1);
        assert_eq!(closed.changed[0].1.len(), 2);
        // Offsets noted before the advance to 4 hold from epoch 3 on; those of 11 not yet.
        assert_eq!(
            closed.epochs[0].offsets,
            vec![(sales(0), 10), (sales(1), 10)]
        );
        assert_eq!(closed.offsets, vec![(sales(0), 10), (sales(1), 10)]);

        // Worker 1 finishes: the rest closes, epoch 10 and 12 each with a tally.
        merger.absorb(report(1, None, vec![], vec![]));
        merger.frontiers[0] = Some(None);
        let closed = merger.closed().unwrap();
        assert_eq!(closed.frontier, None);
        let epochs: Vec<(Epoch, u64)> = closed
            .epochs
            .iter()
            .map(|t| (t.epoch, t.epochs_closed))
            .collect();
        // Worker 1's repeated late count of epoch 9 (closed already) went to the next tally.
        assert_eq!(epochs, vec![(10, 1), (12, 2)]);
        assert_eq!(closed.epochs[0].late, 1);
        assert_eq!(
            closed.epochs[0].offsets,
            vec![(sales(0), 30), (sales(1), 30)]
        );
        assert_eq!(closed.consumed.get(&FileKind::Sales), Some(&6));
    }
}

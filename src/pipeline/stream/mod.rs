//! The streaming driver: N timely workers, each reading its own input partitions, feeding the
//! feature dataflow, and reporting closed epochs to the caller's thread. The partitions are the
//! broker's (`kafka::offsets::Broker`, the worker), or a dataset's held in memory
//! (`source::topics`, replay): each is an [`Input`], and the workers read either through
//! `pipeline::source`.
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
//!   `exit_when_idle`, the workers apply everything they hold and stop (backfills, replay,
//!   tests, demo): their inputs close at the last event's epoch, or at the later one
//!   `drain_through` asks for (`features`), never one the input did not reach.
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
//! committable. The sink commits it after the epochs' outputs were acknowledged. When the
//! dataflow has completed everything at the end of a run, a worker notes its offsets once
//! more, so that a drained backfill commits every record it applied (one still buffered after a
//! stop stays uncommitted, and is read again).
//!
//! # Processes
//! Workers may span several processes (a timely cluster, [`Cluster`]); partitions are assigned
//! by global worker index, so each process reads only its workers' share, and the dataflow
//! routes each series to the worker that holds its state. Through the dataflow (`outbox`):
//! - every worker sends the series it changed to the first worker of its own process, whose
//!   thread scores and writes them ([`Handler::changed`]) and acknowledges them ([`Delivered`]);
//! - every worker sends its report (frontier, counts, committable offsets, dead letters) to
//!   worker 0, and every process its acknowledgements; worker 0's process merges them into the
//!   advances every process acknowledged ([`Handler::closed`]: progress records, dead letters);
//! - once those are written, worker 0 sends each process the committable offsets of the
//!   partitions its workers read, and each process commits its own ([`Handler::commit`]).
//!
//! A worker told to stop says so in its beacon, and every worker that sees it stops too: a
//! signal to any process shuts the whole cluster down cleanly (outputs flushed, offsets
//! committed by every process for its own partitions).
//! A worker stops reading while `MAX_OPEN_ADVANCES` (64) of its advances wait to be closed, or
//! while its process holds `[output] max_held_series` changed series its sinks have not written,
//! so a slow sink (which blocks worker 0, and with it the closed frontier) leaves the backlog in
//! Kafka, not in memory. What was read still closes: its epochs need no more input. With
//! `catch_up = "every_epoch"` it goes into the dataflow in steps (`feeder::step_changes`),
//! so the limit holds for a backfill read ahead of event time too.
//!
//! # Error handling
//! Records that do not decode, name colliding ids, or are refused by the input stage become
//! [`DeadRecord`]s; nothing on input stops or panics a worker. Broker errors are logged and
//! retried by librdkafka. Missing input topics stop the run at start with their names.
//!
//! # Layout
//! [`run`] (here) starts the workers and the merging on the caller's thread. Then, in the order
//! a record meets them:
//! - `options`: the run's settings, its [`Input`], its errors and the loop's timings;
//! - `worker`: one timely worker's loop: poll, feed, beacon, step, checkpoint, report;
//! - `feeder`: a worker's input side (decoding, epochs, the input stage, advances), over its
//!   partitions as `partition` tracks them (watermarks, held and replayed records, idleness);
//!   `idleness`: the mark a worker's partitions allow and which silent ones are idle, asking
//!   the broker on a thread of `watermarks` whether they are caught up; `throttle`: the
//!   partitions paused while the worker holds `kafka.max_held_events` events for later epochs;
//! - `beacon`: the watermarks the workers share, and the target they agree on;
//! - `outbox`: what the workers send each other, through the dataflow;
//! - `merger`: each process merges its workers' changed series ([`Changed`]), and worker 0's
//!   process the reports and acknowledgements into closed advances ([`Closed`]);
//! - `closed`: what the caller receives.
//!
//! Beside it, in `pipeline`: `progress` (what a running driver shows) and `snapshot` (when the
//! workers cut a checkpoint and what it holds).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};

use crate::config::Resolved;
use crate::ids::Dictionary;

pub use super::progress::Progress;
use super::snapshot::{self, Checkpoints};
pub use crate::kafka::wire::Partition;

#[cfg(test)]
mod arrival;
mod beacon;
mod closed;
mod feeder;
mod idleness;
mod merger;
mod options;
mod outbox;
mod partition;
mod throttle;
mod watermarks;
mod worker;

pub use self::closed::{
    Changed, Closed, Commit, DeadRecord, Delivered, EpochTally, Undelivered, MAX_DEAD_KEY_BYTES,
    MAX_DEAD_VALUE_BYTES,
};
pub use self::options::{system_clock, Cluster, Input, Opened, StreamError, StreamOptions};
pub(crate) use self::options::{IDLE_RECHECK, START_TIMEOUT};
use self::{merger::*, outbox::Msg, outbox::Upward, worker::*};

/// What the thread that called [`run`] does with the advances of the closed frontier.
pub trait Handler {
    /// Scores and writes the series this process's workers changed in the epochs closed;
    /// returns what is now in every sink (`process` and `last` are filled in by the caller).
    fn changed(&mut self, changed: Changed, dict: &Dictionary) -> Delivered;

    /// On worker 0's process: an advance every process acknowledged. Writes its progress
    /// records and dead letters; returns the offsets it made committable, which every process
    /// then commits for the partitions its workers read ([`Handler::commit`]).
    fn closed(&mut self, closed: Closed) -> Result<Option<Commit>, Undelivered>;

    /// Commits this process's partitions' share of an advance's offsets (after worker 0's
    /// process wrote the advance's progress records); returns whether they were committed.
    fn commit(&mut self, commit: Commit) -> bool;
}

/// Runs the workers on `input` until they finish (`exit_when_idle`) or `stop` is set; hands
/// `handler`, on this thread and in order, this process's changed series and (on worker 0's
/// process) every advance all processes acknowledged.
pub fn run(
    cfg: &Resolved,
    opts: &StreamOptions,
    input: Arc<dyn Input>,
    checkpoints: Option<Arc<Checkpoints>>,
    handler: &mut dyn Handler,
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
    let (tx, rx) = mpsc::sync_channel::<Result<Msg, StreamError>>(64);
    // This thread's acknowledgements, passed on to worker 0 by the process's first worker (and
    // on worker 0's process, the offsets for the other processes to commit).
    let (ack_tx, ack_rx) = mpsc::channel::<Upward>();
    let ack_rx = std::sync::Mutex::new(Some(ack_rx));
    let cfg2 = cfg.clone();
    let opts2 = opts.clone();
    let checkpoints2 = checkpoints.clone();
    let input2 = Arc::clone(&input);
    let guards = timely::execute(config, move |worker| {
        let tx = tx.clone();
        let acks = if worker.index().is_multiple_of(workers) {
            ack_rx.lock().ok().and_then(|mut a| a.take())
        } else {
            None
        };
        let checkpoints = checkpoints2.as_deref();
        if let Err(e) = work(worker, &cfg2, &opts2, &*input2, checkpoints, &tx, acks) {
            // Tell the merger, and stop the other workers.
            opts2.stop.store(true, Ordering::SeqCst);
            let _ = tx.send(Err(e));
        }
    })
    .map_err(StreamError::Worker)?;

    let processes = opts.cluster.as_ref().map_or(1, |c| c.hosts.len());
    let process = opts.cluster.as_ref().map_or(0, |c| c.process);
    let leader = process == 0;
    let mut merger = Merger::new(peers, processes);
    let mut local = LocalChanges::new(process * workers, workers, peers);
    let mut dict = Dictionary::default();
    let mut coordinator = checkpoints
        .as_ref()
        .filter(|_| leader)
        .map(|c| snapshot::Coordinator::new(Arc::clone(c), Arc::clone(&opts.progress), processes));
    if let Some(loaded) = checkpoints.as_ref().and_then(|c| c.restore.as_ref()) {
        merger.restored(loaded.manifest.epoch);
    }
    let mut failure = None;
    // Worker 0's process: whether it told worker 0 that no more offsets come.
    let mut done = false;
    while let Ok(first) = rx.recv() {
        // Whatever queued while the sinks were busy goes out as one advance: under load they
        // write fewer, larger batches instead of falling further behind.
        for msg in std::iter::once(first).chain(rx.try_iter()) {
            match msg {
                Ok(Msg::Report(report)) => {
                    // Counted as read, whether or not their epochs closed yet.
                    let read: u64 = report.consumed.values().sum();
                    opts.progress.consumed.fetch_add(read, Ordering::SeqCst);
                    let pending = &opts.progress.metrics.dead_letters_pending;
                    pending.add(report.dead.len() as i64);
                    merger.absorb(report);
                }
                Ok(Msg::Changes(changes)) => local.absorb(changes),
                Ok(Msg::Names {
                    worker,
                    frontier,
                    names,
                }) => {
                    for (_, store, sku) in &names {
                        // Collisions were dead-lettered by the worker that saw the second name.
                        let _ = dict.key(store, sku);
                    }
                    local.heard(worker, frontier);
                }
                Ok(Msg::Delivered(d)) => merger.acks.absorb(d),
                Ok(Msg::Commit(commit)) => {
                    handler.commit(commit);
                }
                Err(e) => {
                    failure.get_or_insert(e);
                }
            }
        }
        if let Some(changed) = local.closed() {
            if let Some(f) = changed.frontier {
                opts.progress.frontier.fetch_max(f, Ordering::SeqCst);
            }
            let last = changed.frontier.is_none();
            let series = changed.changed.iter().map(|(_, s)| s.len()).sum();
            let mut delivered = handler.changed(changed, &dict);
            // Written (or dropped by a halted output): the workers may read on.
            opts.progress
                .held_series
                .fetch_sub(series, Ordering::Relaxed);
            delivered.process = process;
            delivered.last = last;
            // Gone only if the first worker stopped, which ends the run anyway.
            let _ = ack_tx.send(Upward::Delivered(delivered));
        }
        if !leader {
            continue;
        }
        if let Some(mut closed) = merger.closed() {
            let parts = std::mem::take(&mut closed.checkpoint_parts);
            let delivered = match handler.closed(closed) {
                Ok(commit) => {
                    // Each process commits the partitions its workers read: the others' shares
                    // go out through worker 0 first, then this process commits its own.
                    let mut shares = commit
                        .map(|c| by_process(c, |p| input.reader_of(p, peers), workers))
                        .unwrap_or_default();
                    let own = shares.remove(&process);
                    for (p, commit) in shares {
                        // Gone only if worker 0 stopped, which ends the run anyway.
                        let _ = ack_tx.send(Upward::Commit { process: p, commit });
                    }
                    own.is_none_or(|c| handler.commit(c))
                }
                Err(Undelivered) => false,
            };
            if let Some(c) = &mut coordinator {
                c.absorb(parts);
                if delivered {
                    // Every epoch emitted so far is out: checkpoints up to it may complete.
                    c.complete(merger.emitted_through(), &cfg.clock);
                }
            }
        }
        if !done && merger.finished() {
            // Worker 0 may now close its outbox: every commit above is on its way.
            done = true;
            let _ = ack_tx.send(Upward::Done);
        }
    }
    let unwritten = local.pending();
    if unwritten > 0 {
        // Stopped (a signal, a failure) before these epochs closed on every worker: none of
        // their offsets were committed, and the next run reads and writes them again.
        tracing::warn!(
            series = unwritten,
            "stopping with changed series not handed to the sinks; the next run writes them"
        );
    }
    for result in guards.join() {
        result.map_err(StreamError::Worker)?;
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// `commit` split by the process whose workers read each partition (`workers` per process;
/// `reader_of` names the worker that reads a partition).
fn by_process(
    commit: Commit,
    reader_of: impl Fn(&Partition) -> usize,
    workers: usize,
) -> BTreeMap<usize, Commit> {
    let mut shares: BTreeMap<usize, Commit> = BTreeMap::new();
    for (p, offset) in commit.offsets {
        let share = shares
            .entry(reader_of(&p) / workers.max(1))
            .or_insert(Commit {
                frontier: commit.frontier,
                offsets: Vec::new(),
            });
        share.offsets.push((p, offset));
    }
    shares
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::client::partition_owner;
    use crate::source::files::FileKind;

    #[test]
    fn a_commit_is_split_by_the_process_that_reads_each_partition() {
        let part = |partition| Partition {
            kind: FileKind::Sales,
            topic: "sales".into(),
            partition,
        };
        let commit = Commit {
            frontier: 7,
            offsets: (0..6).map(|p| (part(p), 10 * i64::from(p))).collect(),
        };
        // 2 processes x 2 workers, partitions offset by 1: partition p goes to worker
        // (p + 1) mod 4, so process 0 (workers 0 and 1) reads partitions 0, 3 and 4, and
        // process 1 the others.
        let shares = by_process(commit.clone(), |p| partition_owner(p.partition, 1, 4), 2);
        let got: Vec<(usize, dataflows::Epoch, Vec<i32>)> = shares
            .iter()
            .map(|(p, c)| {
                (
                    *p,
                    c.frontier,
                    c.offsets.iter().map(|o| o.0.partition).collect(),
                )
            })
            .collect();
        assert_eq!(got, vec![(0, 7, vec![0, 3, 4]), (1, 7, vec![1, 2, 5])]);
        // Every offset is in exactly one share, unchanged.
        let mut all: Vec<(Partition, i64)> = shares.into_values().flat_map(|c| c.offsets).collect();
        all.sort();
        assert_eq!(all, commit.offsets);
        // One process commits everything.
        let one = by_process(commit.clone(), |p| partition_owner(p.partition, 1, 3), 3);
        assert_eq!(one.into_iter().collect::<Vec<_>>(), vec![(0, commit)]);
    }
}

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
//! A worker stops reading while `MAX_OPEN_ADVANCES` (64) of its advances wait to be closed, so a
//! slow sink (which blocks worker 0, and with it the closed frontier) leaves the backlog in
//! Kafka, not in memory.
//!
//! # Error handling
//! Records that do not decode, name colliding ids, or are refused by the input stage become
//! [`DeadRecord`]s; nothing on input stops or panics a worker. Broker errors are logged and
//! retried by librdkafka. Missing input topics stop the run at start with their names.
//!
//! # Layout
//! [`run`] (here) starts the workers and the merging on the caller's thread. Then, in the order
//! a record meets them:
//! - `options`: the run's settings, its errors and the loop's timings;
//! - `offsets`: the consumer, each worker's partitions and where they resume;
//! - `worker`: one timely worker's loop: poll, feed, beacon, step, checkpoint, report;
//! - `feeder`: a worker's input side (decoding, epochs, the input stage, advances), over its
//!   partitions as `partition` tracks them (watermarks, held and replayed records, idleness);
//! - `beacon`: the watermarks the workers share, and the target they agree on;
//! - `outbox`: each worker's reports, through the dataflow, to worker 0;
//! - `merger`: worker 0's process merges them into closed advances ([`Closed`]);
//! - `closed`: what the caller receives; `lag`: the consumer lag, measured beside the workers.

use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};

use crate::config::Resolved;
use crate::ids::Dictionary;

pub use super::progress::Progress;
use super::snapshot::{self, Checkpoints};
pub use super::wire::Partition;

mod beacon;
mod closed;
mod feeder;
mod lag;
mod merger;
mod offsets;
mod options;
mod outbox;
mod partition;
mod worker;

pub use self::closed::{Closed, DeadRecord, EpochTally, MAX_DEAD_KEY_BYTES, MAX_DEAD_VALUE_BYTES};
pub use self::offsets::{commit_metadata, committed_frontier};
pub use self::options::{system_clock, Cluster, StreamError, StreamOptions};
use self::{feeder::*, lag::*, merger::*, worker::*};

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

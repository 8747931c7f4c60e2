//! Executes a [`Plan`] on N timely workers in this process.
//!
//! Each worker owns the series whose key hashes to it (and the promotions whose id does), feeds
//! them through its [`FeatureInput`] step by step, and after each step waits until the dataflow
//! has completed that epoch. It then sends what changed to the caller's thread, which merges the
//! workers' shares of an epoch and hands the epoch over in key order: the result does not depend
//! on the number of workers.
//!
//! # Error handling
//! Events the input stage refuses come back in [`EpochOutput::rejected`]; a worker panic (a bug)
//! is reported as [`RunError::Worker`]. The panicking worker raises a flag on its way out, and
//! its peers, which would otherwise wait forever for progress it will never make, drop their
//! dataflows and stop: the run ends with the panic instead of hanging.
//!
//! # Shutdown
//! Workers stop after the last step: inputs are closed and the dataflow drains.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;

use dataflows::dataflow::StateView;
use dataflows::emit::Emission;
use dataflows::input::{FeatureInput, Rejection};
use dataflows::{Clock, Epoch, Event, FeatureSpec, FeatureVec, Key};
use differential_dataflow::VecCollection;
use timely::dataflow::operators::probe::Handle;

use super::schedule::{Plan, Step};

/// What one closed epoch produced.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EpochOutput {
    /// The epoch.
    pub epoch: Epoch,
    /// Series whose features changed, with the new vectors, in key order.
    pub changed: Vec<(Key, FeatureVec)>,
    /// Events refused by the input stage: (index into the event list, why).
    pub rejected: Vec<(u32, Rejection)>,
}

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Timely could not start, or a worker panicked.
    #[error("timely worker failed: {0}")]
    Worker(String),
    /// The input could not be read.
    #[error("input failed: {0}")]
    Input(String),
}

/// What a worker reports after each step.
struct Report {
    epoch: Epoch,
    changed: Vec<(Key, FeatureVec)>,
    rejected: Vec<(u32, Rejection)>,
}

/// Raised by a worker that panics; see the module docs.
#[derive(Clone, Default)]
struct Abort(Arc<AtomicBool>);

impl Abort {
    fn raised(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Raises its flag when dropped by a panicking thread.
struct RaiseOnPanic(Abort);

impl Drop for RaiseOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            (self.0).0.store(true, Ordering::SeqCst);
        }
    }
}

/// Changed series collected from the dataflow on one worker, with the epoch they changed in.
pub type Changes = Rc<RefCell<Vec<(Epoch, Key, FeatureVec)>>>;

/// Builds the feature dataflow on `worker` from `input`'s sessions, emitting as `emission` says;
/// returns its probe, the buffer its changed series (insertions only) are collected in, and
/// its state view.
pub fn build(
    worker: &mut timely::worker::Worker,
    input: &mut FeatureInput,
    spec: &FeatureSpec,
    emission: Emission,
) -> (Handle<Epoch>, Changes, StateView) {
    let sink: Changes = Rc::default();
    let mut size = StateView::default();
    let probe = worker.dataflow::<Epoch, _, _>(|scope| {
        let features: VecCollection<'_, Epoch, (Key, FeatureVec)>;
        (features, size) =
            dataflows::dataflow::features_with(scope, input.inputs_mut(), spec, emission);
        let sink = Rc::clone(&sink);
        features
            .inspect_batch(move |_time, batch| {
                let mut sink = sink.borrow_mut();
                for ((key, vec), time, diff) in batch {
                    if *diff > 0 {
                        sink.push((*time, *key, vec.clone()));
                    }
                }
            })
            .probe()
            .0
    });
    (probe, sink, size)
}

/// Which worker owns an event.
fn owner(event: &Event, peers: usize) -> usize {
    let h = match event {
        Event::Sale { key, .. } | Event::Stock { key, .. } => {
            key.store.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ key.sku
        }
        Event::Promotion { promo_id, .. } => *promo_id,
        Event::PlannedPrice { price_id, .. } => *price_id,
        // Every upsert of one entity goes to the same worker, which keeps its current value.
        Event::Item { sku, .. } => *sku,
        Event::Store { store, .. } => *store,
    };
    (h % peers as u64) as usize
}

/// Part of a run's input: events and the steps that apply them. Step event indices point into
/// `events`; rejections are reported as `base` plus that index.
pub struct Chunk {
    /// The events.
    pub events: Arc<Vec<Event>>,
    /// Steps in epoch order, after every step of the chunks before.
    pub steps: Vec<Step>,
    /// Index of the chunk's first event in the whole input.
    pub base: u32,
}

/// Why a chunk could not be produced: the run stops with it.
pub type ChunkError = Box<dyn std::error::Error + Send + Sync>;

/// Runs `plan` over `events` on `workers` threads; calls `on_epoch` for every visited epoch, in
/// order, on the calling thread.
pub fn run(
    clock: Clock,
    spec: &FeatureSpec,
    workers: usize,
    events: Arc<Vec<Event>>,
    plan: Arc<Plan>,
    on_epoch: impl FnMut(EpochOutput),
) -> Result<(), RunError> {
    let steps = Arc::try_unwrap(plan).map_or_else(|p| p.steps.clone(), |p| p.steps);
    let chunk = Chunk {
        events,
        steps,
        base: 0,
    };
    run_chunks(clock, spec, workers, std::iter::once(Ok(chunk)), on_epoch)
}

/// [`run`] over input produced piece by piece (see [`Chunk`]): `chunks` runs on a thread of its
/// own, at most two chunks ahead of the slowest worker, so a history larger than memory can be
/// replayed. An error from `chunks` ends the run with [`RunError::Input`].
pub fn run_chunks(
    clock: Clock,
    spec: &FeatureSpec,
    workers: usize,
    chunks: impl Iterator<Item = Result<Chunk, ChunkError>> + Send,
    on_epoch: impl FnMut(EpochOutput),
) -> Result<(), RunError> {
    let workers = workers.max(1);
    let mut senders = Vec::with_capacity(workers);
    let mut receivers = Vec::with_capacity(workers);
    for _ in 0..workers {
        let (tx, rx) = mpsc::sync_channel::<Arc<Chunk>>(2);
        senders.push(tx);
        receivers.push(std::sync::Mutex::new(Some(rx)));
    }
    std::thread::scope(|scope| {
        let producer = scope.spawn(move || -> Result<(), ChunkError> {
            for chunk in chunks {
                let chunk = Arc::new(chunk?);
                for tx in &senders {
                    if tx.send(Arc::clone(&chunk)).is_err() {
                        // A worker stopped (a panic, reported by the run): nothing to feed.
                        return Ok(());
                    }
                }
            }
            Ok(())
        });
        let ran = execute(clock, spec, workers, receivers, on_epoch);
        let fed = producer
            .join()
            .map_err(|_| RunError::Worker("the input thread panicked".into()))?;
        ran?;
        fed.map_err(|e| RunError::Input(e.to_string()))
    })
}

/// The workers and the merge of their reports (see [`run_chunks`]).
fn execute(
    clock: Clock,
    spec: &FeatureSpec,
    workers: usize,
    receivers: Vec<std::sync::Mutex<Option<mpsc::Receiver<Arc<Chunk>>>>>,
    mut on_epoch: impl FnMut(EpochOutput),
) -> Result<(), RunError> {
    // Bounded so workers cannot run far ahead of a slow consumer.
    let (tx, rx) = mpsc::sync_channel::<Report>(256);
    let spec = spec.clone();
    let abort = Abort::default();
    let guards = timely::execute(timely::Config::process(workers), move |worker| {
        let _raise = RaiseOnPanic(abort.clone());
        let index = worker.index();
        let peers = worker.peers();
        let tx = tx.clone();
        let Some(chunks) = receivers[index].lock().ok().and_then(|mut r| r.take()) else {
            return;
        };
        let mut input = FeatureInput::new(clock, &spec);
        let (probe, sink, _) = build(worker, &mut input, &spec, Emission::EveryEpoch);
        let mut next_chunk = chunks.recv().ok();
        'chunks: while let Some(chunk) = next_chunk.take() {
            // The step after a chunk's last is the next chunk's first: fetch it first.
            next_chunk = chunks.recv().ok();
            let following = next_chunk.as_ref().and_then(|c| c.steps.first());
            for (s, step) in chunk.steps.iter().enumerate() {
                input.advance_to(step.epoch);
                let mut rejected = Vec::new();
                for &i in &step.events {
                    let event = &chunk.events[i as usize];
                    if owner(event, peers) != index {
                        continue;
                    }
                    if let Err(why) = input.apply(event) {
                        rejected.push((chunk.base.saturating_add(i), why));
                    }
                }
                let next = chunk
                    .steps
                    .get(s + 1)
                    .or(following)
                    .map_or(step.epoch + 1, |n| n.epoch);
                input.advance_to(next);
                input.flush();
                worker.step_while(|| probe.less_than(&next) && !abort.raised());
                if abort.raised() {
                    // A peer panicked: its share of the epoch will never come.
                    for dataflow in worker.installed_dataflows() {
                        worker.drop_dataflow(dataflow);
                    }
                    break 'chunks;
                }
                let mut changed: Vec<(Key, FeatureVec)> = Vec::new();
                sink.borrow_mut().retain(|(time, key, vec)| {
                    if *time <= step.epoch {
                        changed.push((*key, vec.clone()));
                        false
                    } else {
                        true
                    }
                });
                let report = Report {
                    epoch: step.epoch,
                    changed,
                    rejected,
                };
                if tx.send(report).is_err() {
                    // The consumer hung up: nothing left to report to.
                    break 'chunks;
                }
            }
        }
    })
    .map_err(RunError::Worker)?;

    // Merge the workers' reports of each epoch; epochs complete in order.
    let mut pending: BTreeMap<Epoch, (usize, EpochOutput)> = BTreeMap::new();
    for report in rx {
        let entry = pending.entry(report.epoch).or_insert_with(|| {
            (
                0,
                EpochOutput {
                    epoch: report.epoch,
                    ..EpochOutput::default()
                },
            )
        });
        entry.0 += 1;
        entry.1.changed.extend(report.changed);
        entry.1.rejected.extend(report.rejected);
        while let Some(first) = pending.first_entry() {
            if first.get().0 < workers {
                break;
            }
            let (_, mut out) = first.remove();
            out.changed.sort_unstable_by_key(|c| c.0);
            out.rejected.sort_unstable_by_key(|(i, _)| *i);
            on_epoch(out);
        }
    }
    for result in guards.join() {
        result.map_err(RunError::Worker)?;
    }
    if !pending.is_empty() {
        return Err(RunError::Worker(format!(
            "{} epochs were not reported by every worker",
            pending.len()
        )));
    }
    Ok(())
}

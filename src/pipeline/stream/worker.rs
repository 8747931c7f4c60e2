//! One timely worker's loop: poll, feed, beacon, step, checkpoint, report.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use dataflows::emit::Emission;
use dataflows::input::FeatureInput;
use dataflows::Epoch;
use timely::dataflow::operators::core::Inspect;
use timely::dataflow::operators::vec::{Broadcast, Input as _};

use crate::config::{CatchUp, Resolved};
use crate::ids::Dictionary;

use crate::pipeline::progress::Progress;
use crate::pipeline::snapshot::{self, Checkpoints, Cut, Schedule, Writer};

use super::beacon::*;
use super::feeder::*;
use super::options::*;
use super::outbox::*;
use super::partition::*;
use super::watermarks::Watermarks;

/// How often a worker publishes its read positions and series count.
pub(super) const SHOW_EVERY: Duration = Duration::from_secs(1);
/// How often a worker says what keeps it waiting (see [`tell_waiting`]).
const TELL_WAITING_EVERY: Duration = Duration::from_secs(60);

/// One timely worker's loop.
pub(super) fn work(
    worker: &mut timely::worker::Worker,
    cfg: &Resolved,
    opts: &StreamOptions,
    input: &dyn Input,
    checkpoints: Option<&Checkpoints>,
    tx: &mpsc::SyncSender<Result<Msg, StreamError>>,
    acks: Option<mpsc::Receiver<Upward>>,
) -> Result<(), StreamError> {
    let index = worker.index();
    let peers = worker.peers();
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
    let Opened {
        mut source,
        ends,
        assigned,
    } = input.open((index, peers), &start_at, lost)?;
    let mut prober = Watermarks::spawn(ends, index)
        .map_err(|e| StreamError::Worker(format!("cannot start the idleness thread: {e}")))?;
    opts.progress.worker_assigned(opts.workers.max(1));
    tracing::info!(
        worker = index,
        partitions = ?assigned.iter().map(|(p, _)| p.label()).collect::<Vec<_>>(),
        "assigned"
    );
    let started = Instant::now();
    let (idle_after, recheck) = input.idleness();
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
                settled: !part.kind.is_reference(),
                paused: false,
                since_resumed: 0,
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
        idle_lasts: IDLE_RECHECK * 3,
        parts_done: Vec::new(),
        idle_after,
        recheck,
        started,
        max_held: cfg.kafka.max_held_events,
        throttling: false,
        held_total: 0,
        step_changes: step_changes(cfg, peers),
    };
    let max_future = cfg.max_future_secs;

    // With `catch_up = "latest"` only a batch's last vector of a series can be published.
    let emission = match cfg.output.catch_up {
        CatchUp::Latest => Emission::LastOfBatch,
        CatchUp::EveryEpoch => Emission::EveryEpoch,
    };
    let (probe, sink, size) =
        crate::pipeline::dataflow::build(worker, &mut feeder.input, &cfg.spec, emission);
    if let Some(loaded) = restore {
        feeder.restore(loaded, (index, peers), &size);
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

    let mut outbox = Outbox::new(worker, opts.workers, acks, Arc::clone(&opts.progress));
    let follower = opts.cluster.as_ref().is_some_and(|c| !c.is_leader());

    let lateness = cfg.allowed_lateness_secs;
    let mut last_beacon: Option<Beacon> = None;
    let mut reported: Option<Option<Epoch>> = None;
    let mut last_report = Instant::now();
    let mut redelivered_logged = 0;
    let mut last_poll = Instant::now();
    // Whether the last iteration found the process at its limit of held series.
    let mut was_held_full = false;
    let mut was_full = false;
    let mut last_shown = Instant::now();
    let mut last_told = Instant::now();
    // When this worker drained (with `exit_when_idle`): it reads no more.
    let mut drained_at: Option<Instant> = None;
    let mut shown = (0i64, 0i64, 0i64);
    loop {
        let draining = drained_at.is_some();
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
        // Nor while the sinks have not written what the process holds (`[output]
        // max_held_series`): in a backfill with `every_epoch` they fall behind the dataflow, and
        // what they have not written waits in Kafka rather than in memory. The input holds
        // still too (below), so what was read makes no more changes meanwhile.
        let held_full =
            opts.progress.held_series.load(Ordering::Relaxed) >= cfg.output.max_held_series;
        if held_full && !was_held_full {
            opts.progress.metrics.input_paused.inc();
        }
        was_held_full = held_full;
        let full = feeder.snapshots.len() >= MAX_OPEN_ADVANCES || held_full;
        if was_full {
            // Not read since the last turn: held back by the output path.
            opts.progress
                .metrics
                .input_paused_seconds
                .inc_by(gap.as_secs_f64());
        }
        was_full = full;
        if gap > LISTEN_GAP || full {
            feeder.not_listening(gap);
        }
        last_poll = Instant::now();
        feeder.future_limit = chrono::Utc::now().timestamp().saturating_add(max_future);
        let mut got = 0;
        // The cluster's mark, with this worker's as it is now.
        let cluster =
            |feeder: &Feeder, now| lowest_with(&board.borrow(), (index, feeder.mark(now)));
        if !draining && !full {
            // What waits for later epochs is bounded: the partitions ahead pause at the cap.
            feeder.throttle(&mut *source, cluster(&feeder, last_poll), last_poll);
        }
        while !draining && !full && got < POLL_BATCH {
            let wait = if got == 0 {
                Duration::from_millis(2)
            } else {
                Duration::ZERO
            };
            match source.poll(wait, &mut |r| feeder.receive(r)) {
                None => break,
                Some(Err(e)) => {
                    tracing::warn!(worker = index, error = %e, "reading the input");
                    break;
                }
                Some(Ok(())) => {
                    got += 1;
                    if feeder.at_cap() {
                        let now = Instant::now();
                        feeder.throttle(&mut *source, cluster(&feeder, now), now);
                    }
                }
            }
        }
        if let Some(why) = source.failed() {
            return Err(StreamError::Input(why));
        }
        if !draining && !full {
            feeder.check_idle(&mut prober, Instant::now());
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
                feeder.mark(Instant::now())
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
        if full || draining {
            // Not polling, so not waiting in the consumer either: park rather than spin while
            // the dataflow or a peer catches up.
            worker.step_or_park(Some(PARK));
        } else {
            worker.step();
        }
        // Everyone stops once every worker drains; the target below then comes from the
        // final beacons, so all close their inputs at the same epoch.
        let all_draining = board.borrow().iter().all(|b| b.is_some_and(|b| b.draining));
        let goal = target(
            &board.borrow(),
            &cfg.clock,
            lateness,
            opts.exit_when_idle,
            opts.drain_through,
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
        if last_told.elapsed() >= TELL_WAITING_EVERY {
            last_told = Instant::now();
            tell_waiting(index, drained_at, &board.borrow(), &feeder, last_told);
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
        // Every series held was changed in epochs the whole dataflow completed, so the process
        // writes them without this worker's input moving on. In steps, the next waits for the
        // dataflow, so the held count soon includes what was fed.
        let in_flight = feeder.step_in_flight(probe.with_frontier(|f| f.first().copied()));
        let gate = if held_full || in_flight {
            Gate {
                limit: gate.limit.min(feeder.input.epoch()),
                ..gate
            }
        } else {
            gate
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
                    drained_at.get_or_insert_with(Instant::now);
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
            outbox.send(report(index, frontier, (&sink, &size), &mut feeder));
            reported = Some(frontier);
            last_report = Instant::now();
        }
    }
    // Close the inputs: the dataflow completes every epoch it holds.
    drop(beacons);
    feeder.input.close();
    while !probe.done() {
        worker.step_or_park(Some(PARK));
        outbox.forward(tx)?;
        let frontier = probe.with_frontier(|f| f.first().copied());
        // The report of the finished dataflow (`None`) is the last one, sent below: worker 0
        // stops at the first it sees from every worker.
        if reported != Some(frontier) && frontier.is_some() {
            outbox.send(report(index, frontier, (&sink, &size), &mut feeder));
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
    // Everything applied is in completed epochs now, the last event's included: the offsets
    // below what each partition still holds back (records buffered past a stop) are
    // committable once those epochs' outputs are acknowledged.
    let offsets = feeder.parts.iter().map(PartState::safe_offset).collect();
    feeder
        .snapshots
        .push_back((feeder.input.epoch() + 1, offsets));
    outbox.send(report(index, None, (&sink, &size), &mut feeder));
    outbox.finish(worker, tx)
}

/// Logs what keeps this worker waiting, if anything: the silent partitions the broker has not
/// confirmed idle (they hold event time back), or, once it drained a while ago, the workers
/// that have not drained yet, with their marks.
fn tell_waiting(
    index: usize,
    drained_at: Option<Instant>,
    board: &[Option<Beacon>],
    feeder: &Feeder,
    now: Instant,
) {
    let Some(at) = drained_at else {
        if feeder.throttling {
            tracing::warn!(
                worker = index,
                held = feeder.held_events(),
                cap = feeder.max_held,
                paused = ?feeder.paused(),
                "events wait for epochs that cannot close yet: at kafka.max_held_events, the \
                 partitions ahead are paused until event time catches up"
            );
        }
        let silent = feeder.unconfirmed(now);
        if !silent.is_empty() {
            tracing::warn!(
                worker = index,
                partitions = ?silent,
                "partitions hold event time back: silent and not confirmed idle by the broker, or \
                 reference data not read to its end"
            );
        }
        return;
    };
    let waiting: Vec<(usize, Mark)> = board
        .iter()
        .flatten()
        .filter(|b| !b.draining)
        .map(|b| (b.worker, b.mark))
        .collect();
    if now.duration_since(at) >= TELL_WAITING_EVERY && !waiting.is_empty() {
        tracing::warn!(
            worker = index,
            ?waiting,
            "drained; waiting for the workers that have not (worker, mark)"
        );
    }
}

/// Exports this worker's state for the checkpoint `cut`, counting the time taken.
pub(super) fn export(
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

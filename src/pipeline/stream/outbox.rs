//! The channel between the workers, through the dataflow: reports and acknowledgements to
//! worker 0, changed series to the first worker of their own process, and from worker 0 the
//! offsets each process commits.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};

use dataflows::dataflow::StateView;
use dataflows::{Epoch, Key};
use serde::{Deserialize, Serialize};
use timely::dataflow::operators::vec::Input;

use crate::pipeline::progress::Progress;

use super::closed::{Commit, Delivered};
use super::feeder::*;
use super::options::StreamError;

/// Most advances a worker may have waiting for the dataflow to close them before it stops
/// reading: while the sinks or a slower peer hold the closed frontier back, unread records wait
/// in Kafka rather than in memory.
pub(super) const MAX_OPEN_ADVANCES: usize = 64;

/// How long a worker with nothing to do parks before it looks again at what does not wake it
/// (the process thread's acknowledgements, the consumer).
pub(super) const PARK: std::time::Duration = std::time::Duration::from_millis(2);

/// What travels through the outbox, each to its own destination.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) enum Msg {
    /// To worker 0: a worker's frontier, counts, offsets and dead letters.
    Report(Report),
    /// To the first worker of the sender's process: the series it changed.
    Changes(Changes),
    /// To the first worker of every process: the names of series first seen, and the
    /// sender's frontier (a process scores the changes below it only once every worker's
    /// names below it arrived).
    Names {
        worker: usize,
        frontier: Option<Epoch>,
        names: Vec<(Key, String, String)>,
    },
    /// To worker 0: what a process's output acknowledged.
    Delivered(Delivered),
    /// From worker 0, to the first worker of the process that reads these partitions: offsets
    /// whose outputs every process acknowledged and whose progress records are written.
    Commit(Commit),
}

/// What a process's thread tells the workers, through the process's first worker.
#[derive(Debug)]
pub(super) enum Upward {
    /// The process's acknowledgement, for worker 0.
    Delivered(Delivered),
    /// Worker 0's process only: offsets for the process that reads them to commit.
    Commit { process: usize, commit: Commit },
    /// Worker 0's process only: nothing more comes. Every worker's last report and every
    /// process's last acknowledgement arrived, and what they closed was handled.
    Done,
}

/// The channel between the workers: reports and acknowledgements to worker 0, changed series
/// to the first worker of their own process, names to every process, and offsets to commit
/// from worker 0 to the first worker of the process that reads them. The first worker of each
/// process hands what arrived to its process's thread.
pub(super) struct Outbox {
    /// `None` once this worker sent its last message.
    pub(super) input: Option<timely::dataflow::InputHandleVec<u64, (usize, Msg)>>,
    pub(super) probe: timely::dataflow::operators::probe::Handle<u64>,
    /// Messages that arrived here (first workers only).
    pub(super) inbox: Rc<RefCell<Vec<(usize, Msg)>>>,
    index: usize,
    /// Workers per process.
    workers: usize,
    peers: usize,
    /// What the process thread sends the workers (first workers only).
    acks: Option<mpsc::Receiver<Upward>>,
    /// The process thread's last acknowledgement was passed on.
    last_ack: bool,
    /// Worker 0 only: its process thread sent its last offsets to commit. Until then worker 0
    /// keeps its outbox open, so every process hears what it may commit before the run ends.
    done: bool,
    /// Where the process counts the changed series its sinks have not written yet.
    progress: Arc<Progress>,
}

impl Outbox {
    pub(super) fn new(
        worker: &mut timely::worker::Worker,
        workers: usize,
        acks: Option<mpsc::Receiver<Upward>>,
        progress: Arc<Progress>,
    ) -> Self {
        use timely::dataflow::channels::pact::Pipeline;
        use timely::dataflow::operators::generic::operator::Operator;
        use timely::dataflow::operators::{Exchange, Probe};

        let inbox: Rc<RefCell<Vec<(usize, Msg)>>> = Rc::default();
        let (input, probe) = worker.dataflow::<u64, _, _>(|scope| {
            let (handle, stream) = scope.new_input::<(usize, Msg)>();
            let (probe, stream) = stream.exchange(|(to, _)| *to as u64).probe();
            let inbox = Rc::clone(&inbox);
            stream.sink(Pipeline, "Outbox", move |(input, _)| {
                input.for_each(|_, data| inbox.borrow_mut().append(data));
            });
            (handle, probe)
        });
        let index = worker.index();
        let workers = workers.max(1);
        let acks = acks.filter(|_| index.is_multiple_of(workers));
        Outbox {
            input: Some(input),
            probe,
            inbox,
            index,
            workers,
            peers: worker.peers(),
            last_ack: acks.is_none(),
            done: index != 0 || acks.is_none(),
            acks,
            progress,
        }
    }

    /// The first worker of `worker`'s process.
    fn first_of(&self, worker: usize) -> usize {
        worker / self.workers * self.workers
    }

    fn push(&mut self, to: usize, msg: Msg) {
        if let Some(input) = &mut self.input {
            input.send((to, msg));
        }
    }

    /// Sends this worker's report, its changed series and the names it learned; counts the
    /// series as held by the process until its sinks wrote them.
    pub(super) fn send(
        &mut self,
        (report, changes, names): (Report, Changes, Vec<(Key, String, String)>),
    ) {
        let n = changes.changed.len();
        let held = self.progress.held_series.fetch_add(n, Ordering::Relaxed) + n;
        (self.progress.held_series_peak).fetch_max(held, Ordering::Relaxed);
        let (worker, frontier) = (report.worker, report.frontier);
        self.push(0, Msg::Report(report));
        self.push(self.first_of(self.index), Msg::Changes(changes));
        for first in (0..self.peers).step_by(self.workers) {
            let names = names.clone();
            self.push(
                first,
                Msg::Names {
                    worker,
                    frontier,
                    names,
                },
            );
        }
        self.close_round();
    }

    /// Closing the round pushes what was sent out (the exchange holds back data sent within an
    /// open round).
    fn close_round(&mut self) {
        if let Some(input) = &mut self.input {
            let next = *input.time() + 1;
            input.advance_to(next);
        }
    }

    /// Passes the process thread's acknowledgements on to worker 0, and (on worker 0) the
    /// offsets to commit on to the processes that read them.
    fn pass_acks(&mut self) {
        let Some(acks) = &self.acks else { return };
        let got: Vec<Upward> = acks.try_iter().collect();
        if got.is_empty() {
            return;
        }
        for up in got {
            match up {
                Upward::Delivered(d) => {
                    self.last_ack |= d.last;
                    self.push(0, Msg::Delivered(d));
                }
                Upward::Commit { process, commit } => {
                    self.push(process * self.workers, Msg::Commit(commit));
                }
                Upward::Done => self.done = true,
            }
        }
        self.close_round();
    }

    /// Hands what arrived to the process thread (a bounded channel: a slow sink blocks the
    /// worker, which holds the closed frontier of the whole cluster back), and passes its
    /// acknowledgements on.
    pub(super) fn forward(
        &mut self,
        tx: &mpsc::SyncSender<Result<Msg, StreamError>>,
    ) -> Result<(), StreamError> {
        self.pass_acks();
        let arrived = std::mem::take(&mut *self.inbox.borrow_mut());
        for (_, msg) in arrived {
            tx.send(Ok(msg)).map_err(|_| StreamError::OutputGone)?;
        }
        Ok(())
    }

    /// Steps until every message reached its destination: a first worker first waits for its
    /// process thread's last acknowledgement, which needs the last changes of every worker of
    /// the process, forwarded here; worker 0 also for its process thread's last offsets to
    /// commit, which go to the other processes.
    pub(super) fn finish(
        mut self,
        worker: &mut timely::worker::Worker,
        tx: &mpsc::SyncSender<Result<Msg, StreamError>>,
    ) -> Result<(), StreamError> {
        loop {
            self.forward(tx)?;
            if self.last_ack && self.done {
                self.input = None;
            }
            if self.input.is_none() && self.probe.done() {
                return self.forward(tx);
            }
            // Waiting here can be long (the process thread writing its last advance): park
            // until a message arrives, or briefly, to look for the thread's acknowledgement.
            worker.step_or_park(Some(PARK));
        }
    }
}

/// What this worker tells the others since its last report: the report for worker 0, the
/// series it changed in closed epochs, and the names it learned.
pub(super) fn report(
    worker: usize,
    frontier: Option<Epoch>,
    (sink, view): (&crate::pipeline::dataflow::Changes, &StateView),
    feeder: &mut Feeder,
) -> (Report, Changes, Vec<(Key, String, String)>) {
    let mut changed = Vec::new();
    let mut counts: BTreeMap<Epoch, u64> = BTreeMap::new();
    let floor = feeder.restore_floor;
    sink.borrow_mut().retain(|(t, k, v)| {
        if frontier.is_none_or(|f| *t < f) {
            // A restore's own changes repeat what the checkpointed run emitted.
            if *t >= floor {
                changed.push((*t, *k, v.clone()));
                *counts.entry(*t).or_default() += 1;
            }
            false
        } else {
            true
        }
    });
    // Series the dataflow left out count as changed, as they would without it.
    let mut collapsed = view.take_collapsed(frontier);
    collapsed.superseded = collapsed.superseded.split_off(&floor);
    collapsed.spans.retain(|(_, last)| *last >= floor);
    for (epoch, n) in &collapsed.superseded {
        *counts.entry(*epoch).or_default() += n;
    }
    let report = Report {
        worker,
        frontier,
        changed: counts,
        offsets: feeder.committable(frontier),
        consumed: std::mem::take(&mut feeder.consumed),
        late: std::mem::take(&mut feeder.late),
        dead: std::mem::take(&mut feeder.dead),
        parts: std::mem::take(&mut feeder.parts_done),
    };
    let changes = Changes {
        worker,
        frontier,
        changed,
        collapsed,
    };
    (report, changes, std::mem::take(&mut feeder.names))
}

//! The channel of reports from every worker to worker 0, through the dataflow.

use std::cell::RefCell;
use std::collections::HashSet;
use std::rc::Rc;
use std::sync::mpsc;

use dataflows::Epoch;
use timely::dataflow::operators::vec::Input;

use super::feeder::*;

/// Most advances a worker may have waiting for the dataflow to close them before it stops
/// reading: while the sinks or a slower peer hold the closed frontier back, unread records wait
/// in Kafka rather than in memory.
pub(super) const MAX_OPEN_ADVANCES: usize = 64;

/// The channel of reports to worker 0, which hands them to its process's merging thread.
pub(super) struct Outbox {
    /// `None` once this worker sent its final report.
    pub(super) input: Option<timely::dataflow::InputHandleVec<u64, Report>>,
    pub(super) probe: timely::dataflow::operators::probe::Handle<u64>,
    /// Reports that arrived here (worker 0 only).
    pub(super) inbox: Rc<RefCell<Vec<Report>>>,
    /// Workers whose final report was forwarded: all of them ends the run.
    pub(super) finished: HashSet<usize>,
    pub(super) peers: usize,
    pub(super) leader: bool,
}

impl Outbox {
    pub(super) fn new(worker: &mut timely::worker::Worker, index: usize, peers: usize) -> Self {
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

    pub(super) fn send(&mut self, report: Report) {
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
    pub(super) fn forward(
        &mut self,
        tx: &mpsc::SyncSender<Result<Report, String>>,
    ) -> Result<(), String> {
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
    pub(super) fn finish(
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

pub(super) fn report(
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

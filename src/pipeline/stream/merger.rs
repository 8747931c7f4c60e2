//! Worker 0's process merges the workers' reports, and every process's acknowledgements, into
//! closed advances, in order; each process merges its own workers' changed series.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use dataflows::emit::Collapsed;
use dataflows::{Epoch, FeatureVec, Key};

use crate::source::files::FileKind;

use crate::kafka::wire::Partition;
use crate::pipeline::snapshot::PartDone;

use super::closed::*;
use super::feeder::*;

/// Merges the workers' reports into closed advances.
pub(super) struct Merger {
    pub(super) frontiers: Vec<Option<Option<Epoch>>>,
    pub(super) emitted: Option<Option<Epoch>>,
    /// Series changed per epoch, over every worker.
    pub(super) changed: BTreeMap<Epoch, u64>,
    pub(super) offsets: Vec<(Epoch, Partition, i64)>,
    pub(super) consumed: BTreeMap<Epoch, BTreeMap<FileKind, u64>>,
    pub(super) late: BTreeMap<Epoch, u64>,
    pub(super) dead: Vec<DeadRecord>,
    /// Per partition, the latest committable offset released so far.
    pub(super) committable: BTreeMap<Partition, i64>,
    /// The frontier of the last tally: the first epoch the next one covers.
    pub(super) tallied: Option<Epoch>,
    /// Every process's acknowledgements.
    pub(super) acks: Acks,
    /// Checkpoint parts reported since the last advance.
    pub(super) parts: Vec<PartDone>,
}

/// A frontier as a number to compare: `None` (finished) is later than every epoch.
pub(super) fn rank(frontier: Option<Epoch>) -> Epoch {
    frontier.unwrap_or(Epoch::MAX)
}

/// Takes the entries of `map` below `frontier` (all of them once the run finished).
pub(super) fn split_closed<V>(
    map: &mut BTreeMap<Epoch, V>,
    frontier: Option<Epoch>,
) -> BTreeMap<Epoch, V> {
    let keep = match frontier {
        Some(f) => map.split_off(&f),
        None => BTreeMap::new(),
    };
    std::mem::replace(map, keep)
}

/// What every process acknowledged (see [`Delivered`]).
#[derive(Default)]
pub(super) struct Acks {
    /// Per process, the first epoch it has not acknowledged (`None`: all); `None` before its
    /// first acknowledgement.
    through: Vec<Option<Option<Epoch>>>,
    /// Per process, whether its last acknowledgement of the run arrived.
    last: Vec<bool>,
    superseded: BTreeMap<Epoch, u64>,
    rescored: BTreeMap<Epoch, u64>,
}

impl Acks {
    pub(super) fn new(processes: usize) -> Acks {
        Acks {
            through: vec![None; processes],
            last: vec![false; processes],
            ..Acks::default()
        }
    }

    pub(super) fn absorb(&mut self, d: Delivered) {
        if let Some(slot) = self.through.get_mut(d.process) {
            *slot = Some(d.through);
        }
        if let Some(last) = self.last.get_mut(d.process) {
            *last |= d.last;
        }
        for (e, n) in d.superseded {
            *self.superseded.entry(e).or_default() += n;
        }
        for (e, n) in d.rescored {
            *self.rescored.entry(e).or_default() += n;
        }
    }

    /// The first epoch some process has not acknowledged, as a rank.
    fn least(&self) -> Epoch {
        (self.through.iter())
            .map(|t| t.map_or(0, rank))
            .min()
            .unwrap_or(Epoch::MAX)
    }
}

impl Merger {
    pub(super) fn new(workers: usize, processes: usize) -> Self {
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
            acks: Acks::new(processes),
            parts: Vec::new(),
        }
    }

    /// The frontier of what was handed out so far (`None`: everything, the run finished).
    pub(super) fn emitted_through(&self) -> Option<Epoch> {
        match self.emitted {
            None => Some(0),
            Some(f) => f,
        }
    }

    /// Starts after a restore at `epoch`: every epoch before it was closed and published by
    /// the checkpointed run.
    pub(super) fn restored(&mut self, epoch: Epoch) {
        self.emitted = Some(Some(epoch));
        self.tallied = Some(epoch);
    }

    /// Whether every worker's last report and every process's last acknowledgement arrived:
    /// once what they closed is handled, nothing more will close.
    pub(super) fn finished(&self) -> bool {
        self.frontiers.iter().all(|f| *f == Some(None)) && self.acks.last.iter().all(|l| *l)
    }

    /// Takes in one worker's report.
    pub(super) fn absorb(&mut self, r: Report) {
        self.frontiers[r.worker] = Some(r.frontier);
        for (epoch, n) in r.changed {
            *self.changed.entry(epoch).or_default() += n;
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

    /// What closed, and every process acknowledged, since the last call (and the dead letters
    /// since), if anything.
    pub(super) fn closed(&mut self) -> Option<Closed> {
        // The global frontier: the least any worker reported (a worker not yet heard holds 0),
        // and no further than every process acknowledged.
        let least = self
            .frontiers
            .iter()
            .map(|f| rank(f.unwrap_or(Some(0))))
            .min()
            .unwrap_or(0)
            .min(self.acks.least());
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
        let superseded = split_closed(&mut self.acks.superseded, global);
        let rescored = split_closed(&mut self.acks.rescored, global);
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
        epochs.extend(rescored.keys().copied());
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
                changed: changed.get(&epoch).copied().unwrap_or(0),
                superseded: superseded.get(&epoch).copied().unwrap_or(0),
                rescored: rescored.get(&epoch).copied().unwrap_or(0),
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
        closed.closed_at = Some(Instant::now());
        Some(closed)
    }
}

/// A process's changed series, merged from its own workers' [`Changes`].
pub(super) struct LocalChanges {
    /// The index of the process's first worker.
    first: usize,
    /// Per local worker, the frontier of its last changes.
    frontiers: Vec<Option<Option<Epoch>>>,
    /// Per worker of the cluster, the frontier of the last names it sent.
    heard: Vec<Option<Option<Epoch>>>,
    emitted: Option<Option<Epoch>>,
    changed: BTreeMap<Epoch, Vec<(Key, FeatureVec)>>,
    /// What the workers' dataflows left out, not handed over yet.
    collapsed: Collapsed,
}

impl LocalChanges {
    /// Merges the changes of workers `first..first + workers`, out of `peers`.
    pub(super) fn new(first: usize, workers: usize, peers: usize) -> LocalChanges {
        LocalChanges {
            first,
            frontiers: vec![None; workers],
            heard: vec![None; peers],
            emitted: None,
            changed: BTreeMap::new(),
            collapsed: Collapsed::default(),
        }
    }

    pub(super) fn absorb(&mut self, c: Changes) {
        let slot = (c.worker.checked_sub(self.first)).and_then(|i| self.frontiers.get_mut(i));
        if let Some(slot) = slot {
            *slot = Some(c.frontier);
        }
        for (epoch, key, vec) in c.changed {
            self.changed.entry(epoch).or_default().push((key, vec));
        }
        self.collapsed.absorb(c.collapsed);
    }

    /// Notes that every name `worker` saw below `frontier` arrived.
    pub(super) fn heard(&mut self, worker: usize, frontier: Option<Epoch>) {
        if let Some(slot) = self.heard.get_mut(worker) {
            *slot = Some(frontier);
        }
    }

    /// Changed series absorbed but not handed over yet (their epochs did not close everywhere,
    /// or their names did not arrive).
    pub(super) fn pending(&self) -> usize {
        self.changed.values().map(Vec::len).sum()
    }

    /// The changes of the epochs every local worker closed since the last call, if the
    /// frontier moved, and once the names of their series arrived from every worker.
    pub(super) fn closed(&mut self) -> Option<Changed> {
        let mut least = (self.frontiers.iter().chain(&self.heard))
            .map(|f| rank(f.unwrap_or(Some(0))))
            .min()
            .unwrap_or(0);
        // One worker's dataflow may have left out a series' vector of an epoch below `least`
        // for one at or above it, which another worker's frontier holds back: close before it.
        while let Some(first) = (self.collapsed.spans.iter())
            .filter(|(first, last)| *first < least && least <= *last)
            .map(|(first, _)| *first)
            .min()
        {
            least = first;
        }
        if least <= self.emitted.map_or(0, rank) {
            return None;
        }
        let frontier = (least != Epoch::MAX).then_some(least);
        self.emitted = Some(frontier);
        let superseded = self.collapsed.split_below(frontier).superseded;
        let changed = split_closed(&mut self.changed, frontier)
            .into_iter()
            .map(|(e, mut v)| {
                v.sort_unstable_by_key(|c| c.0);
                (e, v)
            })
            .collect();
        Some(Changed {
            frontier,
            changed,
            superseded,
            closed_at: Some(Instant::now()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_advance_tallies_each_epoch_that_did_anything() {
        let sales = |partition| Partition {
            kind: FileKind::Sales,
            topic: "sales".into(),
            partition,
        };
        let report = |worker, frontier, changed: Vec<Epoch>, consumed: Vec<(Epoch, u64)>| Report {
            worker,
            frontier,
            changed: changed.into_iter().map(|e| (e, 1)).collect(),
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
        let mut merger = Merger::new(2, 1);
        // The one process acknowledged everything.
        merger.acks.absorb(Delivered {
            through: None,
            ..Delivered::default()
        });
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
        // Both workers changed a series in epoch 3.
        assert_eq!(closed.epochs[0].changed, 2);
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

    #[test]
    fn an_advance_waits_for_every_process_and_carries_their_counts() {
        let report = |frontier| Report {
            worker: 0,
            frontier: Some(frontier),
            changed: BTreeMap::from([(2, 4), (7, 3)]),
            ..Report::default()
        };
        let ack =
            |process, through, superseded: &[(Epoch, u64)], rescored: &[(Epoch, u64)]| Delivered {
                process,
                through: Some(through),
                last: false,
                superseded: superseded.iter().copied().collect(),
                rescored: rescored.iter().copied().collect(),
            };
        let mut merger = Merger::new(1, 2);
        merger.absorb(report(10));
        merger.acks.absorb(ack(0, 10, &[(2, 1)], &[]));
        // Process 1 has acknowledged nothing: nothing closes.
        assert!(merger.closed().is_none());
        merger.acks.absorb(ack(1, 6, &[], &[(5, 9)]));
        let closed = merger.closed().unwrap();
        assert_eq!(closed.frontier, Some(6));
        let tallies: Vec<(Epoch, u64, u64, u64)> = (closed.epochs.iter())
            .map(|t| (t.epoch, t.changed, t.superseded, t.rescored))
            .collect();
        // Epoch 2 changed (one superseded), epoch 5 re-scored and the last closed.
        assert_eq!(tallies, vec![(2, 4, 1, 0), (5, 0, 0, 9)]);
        merger.acks.absorb(ack(1, 10, &[], &[]));
        let closed = merger.closed().unwrap();
        assert_eq!(closed.frontier, Some(10));
        assert_eq!(
            closed.epochs.iter().map(|t| t.epoch).collect::<Vec<_>>(),
            vec![7, 9]
        );
    }

    #[test]
    fn the_run_is_finished_once_every_last_report_and_last_acknowledgement_arrived() {
        let report = |worker, frontier| Report {
            worker,
            frontier,
            ..Report::default()
        };
        let ack = |process, through, last| Delivered {
            process,
            through,
            last,
            ..Delivered::default()
        };
        // Two processes of one worker each.
        let mut merger = Merger::new(2, 2);
        merger.absorb(report(0, None));
        merger.absorb(report(1, Some(4)));
        merger.acks.absorb(ack(0, None, true));
        merger.acks.absorb(ack(1, Some(4), false));
        assert!(!merger.finished());
        merger.absorb(report(1, None));
        // Every worker is done, but process 1 may still write.
        assert!(!merger.finished());
        // A process that halted says so in its last acknowledgement, short of the end.
        merger.acks.absorb(ack(1, Some(4), true));
        assert!(merger.finished());
    }

    #[test]
    fn local_changes_wait_for_every_worker_and_count_what_they_hold() {
        let vec = || FeatureVec::from(vec![0; 2]);
        let key = |sku| Key { store: 1, sku };
        // A process of workers 0 and 1, in a cluster of 3.
        let mut local = LocalChanges::new(0, 2, 3);
        local.absorb(Changes {
            worker: 0,
            frontier: Some(5),
            changed: vec![(3, key(1), vec()), (4, key(2), vec())],
            collapsed: Collapsed::default(),
        });
        local.absorb(Changes {
            worker: 1,
            frontier: Some(4),
            changed: vec![(3, key(3), vec())],
            collapsed: Collapsed::default(),
        });
        for w in 0..2 {
            local.heard(w, Some(5));
        }
        // Worker 2's names have not arrived.
        assert!(local.closed().is_none());
        assert_eq!(local.pending(), 3);
        local.heard(2, Some(9));
        let changed = local.closed().expect("epochs below 4 closed everywhere");
        assert_eq!(changed.frontier, Some(4));
        let keys: Vec<(Epoch, usize)> =
            changed.changed.iter().map(|(e, v)| (*e, v.len())).collect();
        assert_eq!(keys, vec![(3, 2)]);
        // Epoch 4 waits for worker 1: a stop now leaves it unwritten, and says so.
        assert_eq!(local.pending(), 1);
    }

    #[test]
    fn local_changes_never_close_between_a_left_out_vector_and_the_one_that_replaced_it() {
        let vec = || FeatureVec::from(vec![0; 2]);
        let key = |sku| Key { store: 1, sku };
        let mut local = LocalChanges::new(0, 2, 2);
        for w in 0..2 {
            local.heard(w, Some(20));
        }
        // Worker 0 completed epochs 2..10 in one batch: series 1 changed at 3 and again at 8,
        // and only the vector of 8 was emitted.
        local.absorb(Changes {
            worker: 0,
            frontier: Some(10),
            changed: vec![(8, key(1), vec())],
            collapsed: Collapsed {
                superseded: BTreeMap::from([(3, 1)]),
                spans: vec![(3, 8)],
            },
        });
        local.absorb(Changes {
            worker: 1,
            frontier: Some(5),
            changed: vec![(4, key(2), vec())],
            collapsed: Collapsed::default(),
        });
        // Closing at 5 would count series 1 as superseded at 3 without its vector of 8.
        let changed = local.closed().expect("the epochs before 3");
        assert_eq!(changed.frontier, Some(3));
        assert!(changed.changed.is_empty() && changed.superseded.is_empty());
        assert!(local.closed().is_none());
        local.absorb(Changes {
            worker: 1,
            frontier: Some(12),
            changed: Vec::new(),
            collapsed: Collapsed::default(),
        });
        let changed = local.closed().expect("worker 1 caught up");
        assert_eq!(changed.frontier, Some(10));
        let epochs: Vec<Epoch> = changed.changed.iter().map(|(e, _)| *e).collect();
        assert_eq!(epochs, vec![4, 8]);
        assert_eq!(changed.superseded, BTreeMap::from([(3, 1)]));
    }
}

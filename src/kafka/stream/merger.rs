//! Worker 0's process merges the workers' reports into closed advances, in order.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use dataflows::{Epoch, FeatureVec, Key};

use crate::ids::Dictionary;
use crate::source::files::FileKind;

use crate::kafka::snapshot::PartDone;
use crate::kafka::wire::Partition;

use super::closed::*;
use super::feeder::*;

/// Merges the workers' reports into closed advances.
pub(super) struct Merger {
    pub(super) frontiers: Vec<Option<Option<Epoch>>>,
    pub(super) emitted: Option<Option<Epoch>>,
    pub(super) changed: BTreeMap<Epoch, Vec<(Key, FeatureVec)>>,
    pub(super) offsets: Vec<(Epoch, Partition, i64)>,
    pub(super) consumed: BTreeMap<Epoch, BTreeMap<FileKind, u64>>,
    pub(super) late: BTreeMap<Epoch, u64>,
    pub(super) dead: Vec<DeadRecord>,
    /// Per partition, the latest committable offset released so far.
    pub(super) committable: BTreeMap<Partition, i64>,
    /// The frontier of the last tally: the first epoch the next one covers.
    pub(super) tallied: Option<Epoch>,
    pub(super) dict: Dictionary,
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

impl Merger {
    pub(super) fn new(workers: usize) -> Self {
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

    /// Takes in one worker's report.
    pub(super) fn absorb(&mut self, r: Report) {
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
    pub(super) fn closed(&mut self) -> Option<Closed> {
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

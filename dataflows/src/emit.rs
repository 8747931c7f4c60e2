//! How the features operator turns a series' evaluations into updates of the feature
//! collection: a retraction of the vector last emitted and an insertion of the new one, only where
//! the values changed, into vectors reused from a pool; or, with [`Emission::LastOfBatch`], only
//! the last new vector of each batch of epochs, the ones it replaced counted in [`Collapsed`].

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::features::{prefetch, SeriesState};
use crate::model::{FeatureVec, Key};
use crate::time::Epoch;

/// What the features operator emits for a series whose features changed at several epochs of
/// one batch (the epochs it completes in one run: many in a backfill, one at a time live).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Emission {
    /// A retraction and an insertion at every epoch where the features changed: the collection
    /// is exact as of every epoch.
    #[default]
    EveryEpoch,
    /// Only the last new vector of a batch, at its epoch; the ones before it are counted in
    /// [`Collapsed`] and never built. The collection is exact as of the end of each batch, and
    /// the evaluations are those of [`Emission::EveryEpoch`]: every epoch is still evaluated.
    LastOfBatch,
}

/// What [`Emission::LastOfBatch`] left out, until the caller takes it
/// ([`crate::dataflow::StateView::take_collapsed`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Collapsed {
    /// Per epoch, series whose new features there were replaced by newer ones later in the
    /// same batch: [`Emission::EveryEpoch`] would have emitted them.
    pub superseded: BTreeMap<Epoch, u64>,
    /// Per batch that left a vector out: the first epoch it left one out at, and the last epoch
    /// at which it emitted a vector that replaced one. Output that stops at an epoch after the
    /// first and at or before the last would count a series as superseded without holding the
    /// vector that superseded it.
    pub spans: Vec<(Epoch, Epoch)>,
}

impl Collapsed {
    /// Takes what concerns the epochs below `frontier` (all of it with `None`): the counts of
    /// those epochs, and the spans that start below it.
    pub fn split_below(&mut self, frontier: Option<Epoch>) -> Collapsed {
        let Some(f) = frontier else {
            return std::mem::take(self);
        };
        let later = self.superseded.split_off(&f);
        let superseded = std::mem::replace(&mut self.superseded, later);
        let (spans, later): (Vec<_>, Vec<_>) = self.spans.iter().partition(|(lo, _)| *lo < f);
        self.spans = later;
        Collapsed { superseded, spans }
    }

    /// Adds `other` to this.
    pub fn absorb(&mut self, other: Collapsed) {
        for (epoch, n) in other.superseded {
            *self.superseded.entry(epoch).or_default() += n;
        }
        self.spans.extend(other.spans);
    }

    /// Whether nothing was left out.
    pub fn is_empty(&self) -> bool {
        self.superseded.is_empty() && self.spans.is_empty()
    }
}

/// A feature vector as emitted, with a fingerprint of its values. Vectors with different
/// fingerprints differ, so telling whether a series' features changed rarely reads the values
/// of the vector emitted before, which have usually left the cache by then.
#[derive(Clone, Debug)]
pub(crate) struct Emitted {
    pub(crate) vec: FeatureVec,
    pub(crate) fingerprint: u64,
}

/// A cheap fingerprint of feature values: their sum weighted by distinct odd numbers, so that
/// a change of any single value changes it. The products are independent of each other, so
/// the processor overlaps them (a hasher's chain of multiplications cannot be overlapped). A
/// collision only costs a comparison of the values.
pub(crate) fn fingerprint(values: &[i64]) -> u64 {
    values
        .iter()
        .zip((1u64..).step_by(2))
        .fold(0, |sum, (v, weight)| {
            sum.wrapping_add((*v as u64).wrapping_mul(weight))
        })
}

impl Emitted {
    /// Whether these are the features `values`, of fingerprint `fingerprint`.
    fn is(&self, fingerprint: u64, values: &[i64]) -> bool {
        self.fingerprint == fingerprint && *self.vec.0 == *values
    }
}

/// How many vectors a worker keeps for reuse, at most (about 9 MB of the default daily schema).
const SPARE_VECTORS: usize = 16 * 1024;

/// How many reuses ahead the pool fetches a spare vector's lines.
const SPARE_AHEAD: usize = 8;

/// Feature vectors to write new features into, reclaimed from retractions.
///
/// A new vector freshly allocated lands wherever the allocator's free list points, in lines
/// that left the cache long ago: profiles showed writing it, then waiting for the writes
/// before the next shared-counter update, costing about a third of a steady-state epoch. The
/// operator keeps instead a clone of each vector it retracts; once the retraction has been
/// consumed downstream (by the next batch, as a rule), that clone is the only holder and the
/// vector is reused, its lines fetched a few reuses ahead. A vector someone downstream still
/// holds is simply let go.
#[derive(Default)]
pub(crate) struct VecPool {
    /// Vectors retracted in the current batch, shared with their retraction.
    retired: Vec<FeatureVec>,
    /// Vectors held nowhere else, the most recently reclaimed last.
    spare: Vec<Arc<[i64]>>,
}

impl VecPool {
    /// Keeps `vec`, just retracted, for reuse once the retraction is consumed.
    pub(crate) fn retire(&mut self, vec: &FeatureVec) {
        if self.retired.len() + self.spare.len() < SPARE_VECTORS {
            self.retired.push(vec.clone());
        }
    }

    /// Moves the vectors retired earlier that nobody else holds any more to the spares; the
    /// others are let go.
    pub(crate) fn reclaim(&mut self) {
        let mut retired = self.retired.drain(..);
        loop {
            if let Some(ahead) = retired.as_slice().get(SPARE_AHEAD) {
                // The reference counts lie just before the values.
                prefetch(ahead.0.as_ptr().cast::<u8>().wrapping_sub(16));
            }
            let Some(mut vec) = retired.next() else {
                break;
            };
            if Arc::get_mut(&mut vec.0).is_some() {
                self.spare.push(vec.0);
            }
        }
    }

    /// A vector holding `values`: a spare one where there is one of that width.
    pub(crate) fn make(&mut self, values: &[i64]) -> FeatureVec {
        if let Some(ahead) = self
            .spare
            .len()
            .checked_sub(SPARE_AHEAD + 1)
            .map(|i| &self.spare[i])
        {
            // From the reference counts, just before the values, to the last value.
            let start = ahead.as_ptr().cast::<u8>().wrapping_sub(16);
            crate::dataflow::prefetch_bytes(start, 16 + std::mem::size_of_val(&**ahead));
        }
        if let Some(mut vec) = self.spare.pop() {
            if let Some(slot) = Arc::get_mut(&mut vec).filter(|v| v.len() == values.len()) {
                slot.copy_from_slice(values);
                return FeatureVec(vec);
            }
        }
        FeatureVec::from(values)
    }
}

/// Emits the change from `old` to the features just evaluated, if any, and leaves those in
/// `old`: `new` is their fingerprint (`None`: no features), `values` the values. Unchanged features cost no vector. With `quiet` (a restore's epoch), the features
/// are kept but nothing is emitted.
pub(crate) fn emit<CB>(
    session: &mut CB,
    key: Key,
    (time, quiet): (Epoch, bool),
    old: &mut Option<Emitted>,
    new: Option<u64>,
    values: &[i64],
    vecs: &mut VecPool,
) where
    CB: FnMut(((Key, FeatureVec), Epoch, isize)),
{
    let unchanged = match (&*old, new) {
        (Some(o), Some(fingerprint)) => o.is(fingerprint, values),
        (o, n) => o.is_none() && n.is_none(),
    };
    if unchanged {
        return;
    }
    if quiet {
        *old = new.map(|fingerprint| Emitted {
            vec: vecs.make(values),
            fingerprint,
        });
        return;
    }
    if let Some(o) = old.take() {
        vecs.retire(&o.vec);
        session(((key, o.vec), time, -1));
    }
    if let Some(fingerprint) = new {
        let vec = vecs.make(values);
        session(((key, vec.clone()), time, 1));
        *old = Some(Emitted { vec, fingerprint });
    }
}

/// Where the state a series' next evaluation is compared with lives.
#[derive(Clone, Copy)]
enum Prev {
    /// In the vector emitted before the batch (or nowhere, if none was).
    Old,
    /// In the held buffer, with this fingerprint: a new vector not emitted yet.
    Held(u64),
    /// Nowhere: the features went away.
    Gone,
}

/// One series' evaluations in a batch with [`Emission::LastOfBatch`]. Each evaluation is
/// compared with the one before it, as [`emit`] compares; new features are kept in the held
/// buffer (swapped with the evaluator's, not copied) instead of emitted, and the new features
/// they replace are counted as superseded at their epoch. [`Latest::finish`] emits what is left:
/// the last new vector, and its retraction if the features went away after it.
pub(crate) struct Latest {
    prev: Prev,
    /// The epoch of the new features in the held buffer.
    insert: Option<Epoch>,
    /// The epoch the features went away at, with `Prev::Gone`.
    gone_at: Epoch,
}

impl Latest {
    pub(crate) fn new() -> Self {
        Latest {
            prev: Prev::Old,
            insert: None,
            gone_at: 0,
        }
    }

    /// Takes the evaluation at `time` (`new`: its fingerprint; the values in `scratch`).
    /// `span` is the batch's span of [`Collapsed::spans`], widened by what this replaces.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn see(
        &mut self,
        time: Epoch,
        new: Option<u64>,
        old: &Option<Emitted>,
        scratch: &mut SeriesState,
        held: &mut Vec<i64>,
        out: &mut Collapsed,
        span: &mut Option<(Epoch, Epoch)>,
    ) {
        let unchanged = match (self.prev, new) {
            (Prev::Old, Some(f)) => old.as_ref().is_some_and(|o| o.is(f, scratch.last_values())),
            (Prev::Old, None) => old.is_none(),
            (Prev::Held(h), Some(f)) => h == f && held[..] == *scratch.last_values(),
            (Prev::Gone, None) => true,
            (Prev::Held(_), None) | (Prev::Gone, Some(_)) => false,
        };
        if unchanged {
            return;
        }
        let Some(fingerprint) = new else {
            self.prev = Prev::Gone;
            self.gone_at = time;
            return;
        };
        if let Some(before) = self.insert.replace(time) {
            *out.superseded.entry(before).or_default() += 1;
            let s = span.get_or_insert((before, time));
            s.0 = s.0.min(before);
            s.1 = s.1.max(time);
        }
        scratch.swap_values(held);
        self.prev = Prev::Held(fingerprint);
    }

    /// Emits what the batch's evaluations left: a retraction of `old` and the held features at
    /// their epoch, or only the retraction if the features went away; leaves in `old` what
    /// was emitted last.
    pub(crate) fn finish<CB>(
        self,
        session: &mut CB,
        key: Key,
        old: &mut Option<Emitted>,
        held: &[i64],
        vecs: &mut VecPool,
    ) where
        CB: FnMut(((Key, FeatureVec), Epoch, isize)),
    {
        let Some(at) = self.insert else {
            if let (Prev::Gone, Some(o)) = (self.prev, old.take()) {
                vecs.retire(&o.vec);
                session(((key, o.vec), self.gone_at, -1));
            }
            return;
        };
        if let Some(o) = old.take() {
            vecs.retire(&o.vec);
            session(((key, o.vec), at, -1));
        }
        let vec = vecs.make(held);
        session(((key, vec.clone()), at, 1));
        match self.prev {
            Prev::Held(fingerprint) => *old = Some(Emitted { vec, fingerprint }),
            // The features went away after the new ones.
            Prev::Gone | Prev::Old => {
                vecs.retire(&vec);
                session(((key, vec), self.gone_at, -1));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_reuses_only_vectors_nobody_else_holds() {
        let mut pool = VecPool::default();
        let kept = FeatureVec::from(vec![1, 2, 3]);
        let dropped = FeatureVec::from(vec![4, 5, 6]);
        pool.retire(&kept);
        pool.retire(&dropped);
        let dropped_at = dropped.0.as_ptr();
        drop(dropped);
        pool.reclaim();
        // Only the vector whose other holder let go is spare; `kept` is untouched.
        assert_eq!(pool.spare.len(), 1);
        let reused = pool.make(&[7, 8, 9]);
        assert_eq!(reused.0.as_ptr(), dropped_at);
        assert_eq!(*reused.0, [7, 8, 9]);
        assert_eq!(*kept.0, [1, 2, 3]);
        // Without a spare of the right width, a new vector.
        let fresh = pool.make(&[1]);
        assert_eq!(*fresh.0, [1]);
    }

    type Update = ((Key, FeatureVec), Epoch, isize);

    /// Features as a series' evaluations give them: `None` when it has none.
    fn evaluations(seed: u64, n: usize) -> Vec<(Epoch, Option<Vec<i64>>)> {
        let mut x = seed;
        let mut next = |m: u64| {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (x >> 33) % m
        };
        (0..n)
            .map(|i| {
                // Few distinct values, so that evaluations often repeat the one before.
                let v = match next(5) {
                    0 => None,
                    k => Some(vec![k as i64; 3]),
                };
                (10 + 2 * i as Epoch, v)
            })
            .collect()
    }

    /// Runs one batch of `evals` for a series whose last emitted features are `old`, with
    /// `emission`; returns the updates, the features left in `old`, and what was left out.
    fn batch(
        emission: Emission,
        old: Option<Vec<i64>>,
        evals: &[(Epoch, Option<Vec<i64>>)],
    ) -> (Vec<Update>, Option<Vec<i64>>, Collapsed) {
        let key = Key { store: 1, sku: 2 };
        let mut old = old.map(|v| Emitted {
            fingerprint: fingerprint(&v),
            vec: FeatureVec::from(v),
        });
        let spec = crate::FeatureSpec::daily();
        let mut scratch = SeriesState::new(&spec);
        let (mut vecs, mut unsent) = (VecPool::default(), Vec::new());
        let (mut updates, mut collapsed, mut span) = (Vec::new(), Collapsed::default(), None);
        let mut give = |u: Update| updates.push(u);
        let mut latest = Latest::new();
        for (time, values) in evals {
            // The evaluation's values, where the operator's evaluation leaves them.
            let mut buffer = values.clone().unwrap_or_default();
            scratch.swap_values(&mut buffer);
            let new = values.as_deref().map(fingerprint);
            match emission {
                Emission::EveryEpoch => {
                    let values = scratch.last_values();
                    emit(
                        &mut give,
                        key,
                        (*time, false),
                        &mut old,
                        new,
                        values,
                        &mut vecs,
                    );
                }
                Emission::LastOfBatch => {
                    let (c, s) = (&mut collapsed, &mut span);
                    latest.see(*time, new, &old, &mut scratch, &mut unsent, c, s);
                }
            }
        }
        if emission == Emission::LastOfBatch {
            latest.finish(&mut give, key, &mut old, &unsent, &mut vecs);
        }
        collapsed.spans.extend(span);
        (updates, old.map(|o| o.vec.0.to_vec()), collapsed)
    }

    /// The insertions of `updates`, as (epoch, values).
    fn inserts(updates: &[Update]) -> Vec<(Epoch, Vec<i64>)> {
        (updates.iter())
            .filter(|u| u.2 > 0)
            .map(|((_, v), t, _)| (*t, v.0.to_vec()))
            .collect()
    }

    /// The net change of `updates`: per vector, its summed multiplicity, zeros left out.
    fn net(updates: &[Update]) -> BTreeMap<Vec<i64>, isize> {
        let mut net = BTreeMap::new();
        for ((_, v), _, d) in updates {
            *net.entry(v.0.to_vec()).or_default() += d;
        }
        net.retain(|_, d| *d != 0);
        net
    }

    #[test]
    fn the_last_of_a_batch_is_every_epochs_last_insertion_and_the_rest_are_counted() {
        let olds = [None, Some(vec![1; 3]), Some(vec![3; 3])];
        for seed in 0..400 {
            let old = olds[seed as usize % olds.len()].clone();
            let evals = evaluations(seed, 1 + seed as usize % 9);
            let (every, every_old, none) = batch(Emission::EveryEpoch, old.clone(), &evals);
            let (last, last_old, collapsed) = batch(Emission::LastOfBatch, old, &evals);
            assert!(none.is_empty());
            let all = inserts(&every);
            // At most one insertion, every epoch's last one; the others counted at their epochs.
            assert_eq!(
                inserts(&last),
                all.last().cloned().into_iter().collect::<Vec<_>>()
            );
            let mut counted: BTreeMap<Epoch, u64> = BTreeMap::new();
            for (t, _) in all.iter().rev().skip(1) {
                *counted.entry(*t).or_default() += 1;
            }
            assert_eq!(collapsed.superseded, counted, "seed {seed}");
            // The span runs from the first left out to the last insertion.
            let span = (all.len() > 1).then(|| (all[0].0, all[all.len() - 1].0));
            assert_eq!(collapsed.spans, span.into_iter().collect::<Vec<_>>());
            // The same collection at the end of the batch, the same features kept.
            assert_eq!(net(&last), net(&every), "seed {seed}");
            assert_eq!(last_old, every_old, "seed {seed}");
        }
    }

    #[test]
    fn features_that_go_away_after_a_new_vector_retract_it_at_their_epoch() {
        let evals = [(3, Some(vec![2; 3])), (5, Some(vec![4; 3])), (9, None)];
        let (updates, old, collapsed) = batch(Emission::LastOfBatch, Some(vec![1; 3]), &evals);
        let got: Vec<(Vec<i64>, Epoch, isize)> = (updates.iter())
            .map(|((_, v), t, d)| (v.0.to_vec(), *t, *d))
            .collect();
        assert_eq!(
            got,
            vec![(vec![1; 3], 5, -1), (vec![4; 3], 5, 1), (vec![4; 3], 9, -1)]
        );
        assert_eq!(old, None);
        assert_eq!(collapsed.superseded, BTreeMap::from([(3, 1)]));
        assert_eq!(collapsed.spans, vec![(3, 5)]);
    }

    #[test]
    fn collapsed_splits_at_a_frontier() {
        let mut c = Collapsed {
            superseded: BTreeMap::from([(2, 1), (6, 2), (9, 1)]),
            spans: vec![(2, 6), (9, 12)],
        };
        let below = c.split_below(Some(7));
        assert_eq!(below.superseded, BTreeMap::from([(2, 1), (6, 2)]));
        assert_eq!(below.spans, vec![(2, 6)]);
        assert_eq!(c.superseded, BTreeMap::from([(9, 1)]));
        assert_eq!(c.split_below(None).spans, vec![(9, 12)]);
        assert!(c.is_empty());
    }
}

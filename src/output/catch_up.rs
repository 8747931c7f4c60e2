//! Which forecasts an advance of the closed epochs publishes (`[output] catch_up`).
//!
//! Live, the frontier moves one epoch at a time and every changed series is published at its
//! epoch. When one advance closes many epochs (a backfill, a restart, a broker coming back),
//! a series that changed in several of them has a forecast per epoch, and all but the last were
//! stale before they could be written. With [`CatchUp::Latest`] only that last one is kept;
//! the progress record of each epoch counts what it published and what was superseded, so a
//! consumer reading up to the last progress record still sees every series' current forecast.
//!
//! With `Latest` the Kafka worker's dataflow already leaves out most of them: a series that
//! changed at several epochs the features operator completed in one run is emitted once, at
//! the last (`dataflows::emit::Emission::LastOfBatch`), and the others arrive as counts
//! (`Changed::superseded`). What is left here are the series that changed in several runs of
//! one advance.

use std::collections::{BTreeMap, HashSet};

use dataflows::model::IdHash;
use dataflows::{Epoch, Key};

use crate::config::CatchUp;

/// Applies `mode` to one advance's changed series (`changed`: epochs in increasing order, keys
/// within an epoch distinct). With [`CatchUp::Latest`] it keeps each key only at the last epoch
/// it appears in, in place, and returns per epoch how many entries were removed; with
/// [`CatchUp::EveryEpoch`] it changes nothing.
pub fn apply<V>(mode: CatchUp, changed: &mut [(Epoch, Vec<(Key, V)>)]) -> BTreeMap<Epoch, u64> {
    let mut superseded = BTreeMap::new();
    if mode == CatchUp::EveryEpoch || changed.len() < 2 {
        return superseded;
    }
    // Walk back from the newest epoch: a key seen there is newer than anything earlier. Keys
    // are hashes of names, as in the dataflow's own sets (see `IdHash`).
    let mut seen: HashSet<Key, IdHash> = HashSet::default();
    for (epoch, series) in changed.iter_mut().rev() {
        let before = series.len();
        series.retain(|(key, _)| seen.insert(*key));
        let removed = (before - series.len()) as u64;
        if removed > 0 {
            superseded.insert(*epoch, removed);
        }
    }
    superseded
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(sku: u64) -> Key {
        Key { store: 1, sku }
    }

    fn epochs(spec: &[(Epoch, &[(u64, &'static str)])]) -> Vec<(Epoch, Vec<(Key, &'static str)>)> {
        spec.iter()
            .map(|(e, s)| (*e, s.iter().map(|(sku, v)| (k(*sku), *v)).collect()))
            .collect()
    }

    fn advance() -> Vec<(Epoch, Vec<(Key, &'static str)>)> {
        epochs(&[
            (3, &[(1, "a3"), (2, "b3"), (5, "e3")]),
            (4, &[(2, "b4")]),
            (7, &[(1, "a7"), (9, "i7")]),
        ])
    }

    #[test]
    fn latest_keeps_each_series_at_its_last_epoch_and_counts_the_rest() {
        let mut changed = advance();
        let superseded = apply(CatchUp::Latest, &mut changed);
        let want = epochs(&[
            (3, &[(5, "e3")]),
            (4, &[(2, "b4")]),
            (7, &[(1, "a7"), (9, "i7")]),
        ]);
        assert_eq!(changed, want);
        assert_eq!(superseded, BTreeMap::from([(3, 2)]));
        let kept: usize = changed.iter().map(|(_, s)| s.len()).sum();
        assert_eq!(kept as u64 + superseded.values().sum::<u64>(), 6);
    }

    #[test]
    fn every_epoch_and_single_epochs_are_left_alone() {
        let mut changed = advance();
        assert!(apply(CatchUp::EveryEpoch, &mut changed).is_empty());
        assert_eq!(changed, advance());
        let mut one = epochs(&[(3, &[(1, "a3"), (2, "b3")])]);
        assert!(apply(CatchUp::Latest, &mut one).is_empty());
        assert_eq!(one[0].1.len(), 2);
    }
}

//! Tests: what a run writes does not depend on when each partition's records arrive.
//!
//! A broker hands a worker its partitions' records in whatever order its fetches come back.
//! The held dataset of `source::topics` is read in one fixed order (reference data first,
//! then events in time order); here the same records are handed over in others, and the
//! changed series must be the same.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dataflows::{Epoch, FeatureVec, Key};

use super::*;
use crate::config::{CatchUp, Config};
use crate::generate::{generate_to_dir, Params};
use crate::pipeline::source::{PollError, Record, Source};
use crate::source::topics::Topics;

/// One record, owned.
struct Owned {
    topic: String,
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
}

/// Hands over records in a given order, skipping paused partitions; those in `late` only once
/// every other record that may be read was, and `delay` has passed since the first of `early`
/// was handed over, as when one partition's fetches come back slowly. Counts in `timed_first` the sales and stock movements handed over
/// before the first of `late`.
struct Slow {
    early: VecDeque<Owned>,
    late: std::vec::IntoIter<Owned>,
    delay: Duration,
    started: Option<Instant>,
    paused: HashSet<(String, i32)>,
    timed_first: Arc<AtomicUsize>,
    late_came: bool,
    /// The reference topics.
    reference: Vec<String>,
}

impl Source for Slow {
    fn poll(
        &mut self,
        _wait: Duration,
        take: &mut dyn FnMut(&Record<'_>),
    ) -> Option<Result<(), PollError>> {
        let started = *self.started.get_or_insert_with(Instant::now);
        let paused = &self.paused;
        let early = (self.early.iter())
            .position(|r| !paused.contains(&(r.topic.clone(), r.partition)))
            .and_then(|at| self.early.remove(at));
        let next = match early {
            Some(r) => {
                if !self.late_came && !self.reference.contains(&r.topic) {
                    self.timed_first.fetch_add(1, Ordering::Relaxed);
                }
                r
            }
            None if started.elapsed() >= self.delay => {
                let r = self.late.next()?;
                self.late_came = true;
                r
            }
            None => return None,
        };
        take(&Record {
            topic: &next.topic,
            partition: next.partition,
            offset: next.offset,
            key: next.key.as_deref(),
            payload: next.value.as_deref(),
            event: None,
        });
        Some(Ok(()))
    }

    fn pause(&mut self, topic: &str, partition: i32, paused: bool) -> Result<(), PollError> {
        let at = (topic.to_string(), partition);
        match paused {
            true => self.paused.insert(at),
            false => self.paused.remove(&at),
        };
        Ok(())
    }
}

/// `topics` read by its first worker, with every reference partition's records after its
/// first one held back behind all the sales and stock movements, for `delay`.
struct LateReference {
    topics: Arc<Topics>,
    delay: Duration,
    /// Sales and stock movements handed over before the rest of the reference data.
    timed_first: Arc<AtomicUsize>,
}

impl Input for LateReference {
    fn open(
        &self,
        worker: (usize, usize),
        start_at: &HashMap<(String, i32), i64>,
        lost: Option<&prometheus::IntGauge>,
    ) -> Result<Opened, StreamError> {
        let mut opened = Arc::clone(&self.topics).open(worker, start_at, lost)?;
        let reference: Vec<String> = opened
            .assigned
            .iter()
            .filter(|(p, _)| p.kind.is_reference())
            .map(|(p, _)| p.topic.clone())
            .collect();
        let (mut first, mut timed, mut rest) = (Vec::new(), Vec::new(), Vec::new());
        let mut spoke = BTreeSet::new();
        while let Some(r) = opened.source.poll(Duration::ZERO, &mut |r| {
            let owned = Owned {
                topic: r.topic.to_string(),
                partition: r.partition,
                offset: r.offset,
                key: r.key.map(<[u8]>::to_vec),
                value: r.payload.map(<[u8]>::to_vec),
            };
            if !reference.contains(&owned.topic) {
                timed.push(owned);
            } else if spoke.insert(owned.topic.clone()) {
                first.push(owned);
            } else {
                rest.push(owned);
            }
        }) {
            r.expect("a held dataset reads");
        }
        if !opened.assigned.is_empty() {
            assert!(
                !rest.is_empty(),
                "the dataset has reference data to hold back"
            );
        }
        let timed_first = Arc::clone(&self.timed_first);
        first.extend(timed);
        opened.source = Box::new(Slow {
            early: first.into(),
            late: rest.into_iter(),
            delay: self.delay,
            started: None,
            paused: HashSet::new(),
            timed_first,
            late_came: false,
            reference,
        });
        Ok(opened)
    }
}

/// Every changed series of a run, with its epoch and features.
#[derive(Default)]
struct Collect(BTreeSet<(Epoch, Key, FeatureVec)>);

impl Handler for Collect {
    fn changed(&mut self, changed: Changed, _: &Dictionary) -> Delivered {
        for (epoch, series) in changed.changed {
            self.0
                .extend(series.into_iter().map(|(k, v)| (epoch, k, v)));
        }
        Delivered {
            through: changed.frontier,
            superseded: changed.superseded,
            ..Delivered::default()
        }
    }

    fn closed(&mut self, _: Closed) -> Result<Option<Commit>, Undelivered> {
        Ok(None)
    }

    fn commit(&mut self, _: Commit) -> bool {
        true
    }
}

fn run_on(cfg: &Resolved, input: Arc<dyn Input>) -> BTreeSet<(Epoch, Key, FeatureVec)> {
    let mut collect = Collect::default();
    run(
        cfg,
        &StreamOptions::to_the_end(2),
        input,
        None,
        &mut collect,
    )
    .unwrap();
    collect.0
}

/// A generated dataset (2 stores x 4 SKUs x 60 days) as topics held in memory, and the config.
fn dataset() -> (tempfile::TempDir, Resolved) {
    let dir = tempfile::tempdir().unwrap();
    let params = Params {
        stores: 2,
        skus: 4,
        days: 60,
        ..Params::default()
    };
    generate_to_dir(&params, dir.path()).unwrap();
    let mut cfg = Config::default()
        .resolve(std::path::Path::new("<test>"))
        .unwrap();
    cfg.output.catch_up = CatchUp::EveryEpoch;
    (dir, cfg)
}

fn held(dir: &tempfile::TempDir, cfg: &Resolved) -> Arc<Topics> {
    let data = crate::source::files::load(dir.path()).unwrap();
    Arc::new(Topics::new(data, cfg.clock.period_kind(), &cfg.kafka.topics, None).unwrap())
}

/// The changed series of a run with every reference partition's records after its first held
/// back for 300 ms, and how many sales and stock movements were handed over meanwhile.
fn with_late_reference(
    dir: &tempfile::TempDir,
    cfg: &Resolved,
) -> (BTreeSet<(Epoch, Key, FeatureVec)>, usize) {
    let late = LateReference {
        topics: held(dir, cfg),
        delay: Duration::from_millis(300),
        timed_first: Arc::default(),
    };
    let timed_first = Arc::clone(&late.timed_first);
    let changed = run_on(cfg, Arc::new(late));
    (changed, timed_first.load(Ordering::Relaxed))
}

fn assert_same(
    in_order: &BTreeSet<(Epoch, Key, FeatureVec)>,
    reordered: &BTreeSet<(Epoch, Key, FeatureVec)>,
) {
    assert!(!in_order.is_empty());
    let only_in_order = in_order.difference(reordered).count();
    let only_reordered = reordered.difference(in_order).count();
    assert_eq!(
        (only_in_order, only_reordered),
        (0, 0),
        "of {} changed series in order",
        in_order.len()
    );
}

#[test]
fn reference_data_that_arrives_after_the_sales_changes_nothing() {
    let (dir, cfg) = dataset();
    let in_order = run_on(&cfg, Arc::new(held(&dir, &cfg)));
    let (reordered, timed_first) = with_late_reference(&dir, &cfg);
    assert_same(&in_order, &reordered);
    // Nothing paused: every sale and stock movement was read while the reference data was late.
    let timed = held(&dir, &cfg).len() - in_order_reference(&dir, &cfg);
    assert_eq!(timed_first, timed);
}

/// The reference records of the dataset.
fn in_order_reference(dir: &tempfile::TempDir, cfg: &Resolved) -> usize {
    let topics = held(dir, cfg);
    let whole = topics.partitions();
    whole
        .0
        .iter()
        .filter(|(p, _)| p.kind.is_reference())
        .map(|(_, n)| *n as usize)
        .sum()
}

#[test]
fn events_held_while_reference_data_is_late_stay_under_the_cap() {
    let (dir, mut cfg) = dataset();
    let in_order = run_on(&cfg, Arc::new(held(&dir, &cfg)));
    cfg.kafka.max_held_events = 16;
    let (reordered, timed_first) = with_late_reference(&dir, &cfg);
    // The sales and stock partitions paused at the cap: while event time waited for the
    // reference data, they handed over at most the cap and the quota of each (half the cap
    // between them), and one record more each.
    assert!(timed_first <= 16 + 8 + 2, "{timed_first} events read ahead");
    // And the run, pausing and resuming them as event time moved, wrote the same.
    assert_same(&in_order, &reordered);
}

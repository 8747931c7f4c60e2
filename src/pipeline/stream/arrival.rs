//! Tests: what a run writes does not depend on when each partition's records arrive.
//!
//! A broker hands a worker its partitions' records in whatever order its fetches come back.
//! The held dataset of `source::topics` is read in one fixed order (reference data first,
//! then events in time order); here the same records are handed over in others, and the
//! changed series must be the same.

use std::collections::{BTreeSet, HashMap};
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

/// Hands over records in a given order; those in `late` only once `delay` has passed since the
/// first of `early` was handed over, as when one partition's fetches come back slowly.
struct Slow {
    early: std::vec::IntoIter<Owned>,
    late: std::vec::IntoIter<Owned>,
    delay: Duration,
    started: Option<Instant>,
}

impl Source for Slow {
    fn poll(
        &mut self,
        _wait: Duration,
        take: &mut dyn FnMut(&Record<'_>),
    ) -> Option<Result<(), PollError>> {
        let started = *self.started.get_or_insert_with(Instant::now);
        let next = match self.early.next() {
            Some(r) => r,
            None if started.elapsed() >= self.delay => self.late.next()?,
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
}

/// `topics` read by its first worker, with every reference partition's records after its
/// first one held back behind all the sales and stock movements, for `delay`.
struct LateReference {
    topics: Arc<Topics>,
    delay: Duration,
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
        first.extend(timed);
        opened.source = Box::new(Slow {
            early: first.into_iter(),
            late: rest.into_iter(),
            delay: self.delay,
            started: None,
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

#[test]
fn reference_data_that_arrives_after_the_sales_changes_nothing() {
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
    let held = || {
        let data = crate::source::files::load(dir.path()).unwrap();
        Arc::new(Topics::new(data, cfg.clock.period_kind(), &cfg.kafka.topics, None).unwrap())
    };
    let in_order = run_on(&cfg, Arc::new(held()));
    assert!(!in_order.is_empty());
    let late = LateReference {
        topics: held(),
        delay: Duration::from_millis(300),
    };
    let reordered = run_on(&cfg, Arc::new(late));
    let only_in_order = in_order.difference(&reordered).count();
    let only_reordered = reordered.difference(&in_order).count();
    assert_eq!(
        (only_in_order, only_reordered),
        (0, 0),
        "of {} changed series in order",
        in_order.len()
    );
}

//! A dataset's events as the streaming driver's input: the training history, replayed by the
//! worker's own driver. The events are the dataflow's, already decoded, named and dated (ids
//! and milli-units, handed as `Record::event`), so nothing is encoded or decoded again; the
//! dead letters of the rows refused were taken while preparing them.
//!
//! They are held in memory as [`super::prepare`] makes them ([`Events::held`]), or spilled to
//! time buckets on disk ([`Events::spilled`], [`super::spill`]) and read a bucket at a time, so
//! that memory holds one bucket whatever the dataset's size. As with [`super::topics`], each
//! input kind is one partition and the first worker reads them all, in the order replay applies
//! them: the reference data first, then the timed events in time order (equal times in file
//! order).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use dataflows::Event;

use crate::config::TopicsConfig;
use crate::kafka::wire::Partition;
use crate::pipeline::source::{PollError, Record, Source, Whole};
use crate::pipeline::stream::{Input, Opened, StreamError};

use super::files::FileKind;
use super::spill::Spilled;

/// The kind of input an event comes from.
fn kind_of(event: &Event) -> FileKind {
    match event {
        Event::Sale { .. } => FileKind::Sales,
        Event::Stock { .. } => FileKind::Stock,
        Event::Promotion { .. } => FileKind::Promotions,
        Event::Item { .. } => FileKind::Catalog,
        Event::Store { .. } => FileKind::Stores,
        Event::PlannedPrice { .. } => FileKind::Prices,
    }
}

/// A dataset's events as partitions (see the module docs).
pub struct Events {
    /// The events read first: the reference data of a spilled dataset, or every event.
    front: Arc<Vec<Event>>,
    /// The spilled dataset whose buckets follow `front`.
    spilled: Option<Arc<Spilled>>,
    /// Every partition, with the number of records it holds.
    partitions: Whole,
}

impl Events {
    /// Prepared `events` (reference data first, then in time order) as the input topics of
    /// `topics`.
    pub fn held(events: Vec<Event>, topics: &TopicsConfig) -> Events {
        Self::new(Arc::new(events), None, (0, 0), topics)
    }

    /// `spilled`'s reference data, then its buckets, as the input topics of `topics`.
    pub fn spilled(spilled: Arc<Spilled>, topics: &TopicsConfig) -> Events {
        let front = Arc::new(spilled.reference.clone());
        let timed = spilled.timed_kinds;
        Self::new(front, Some(spilled), timed, topics)
    }

    fn new(
        front: Arc<Vec<Event>>,
        spilled: Option<Arc<Spilled>>,
        (sales, stock): (u64, u64),
        topics: &TopicsConfig,
    ) -> Events {
        let mut counts: Vec<(FileKind, i64)> = Vec::new();
        let mut add = |kind: FileKind, n: i64| match counts.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, c)) => *c += n,
            None => counts.push((kind, n)),
        };
        for event in front.iter() {
            add(kind_of(event), 1);
        }
        for (kind, n) in [(FileKind::Sales, sales), (FileKind::Stock, stock)] {
            if n > 0 {
                add(kind, i64::try_from(n).unwrap_or(i64::MAX));
            }
        }
        let partitions = Whole(
            counts
                .into_iter()
                .map(|(kind, n)| {
                    let p = Partition {
                        kind,
                        topic: topics.input(kind).to_string(),
                        partition: 0,
                    };
                    (p, n)
                })
                .collect(),
        );
        Events {
            front,
            spilled,
            partitions,
        }
    }
}

/// One worker's reader of [`Events`].
struct Reader {
    front: Arc<Vec<Event>>,
    spilled: Option<Arc<Spilled>>,
    /// The partitions (a handful, one per input kind), and the next offset of each.
    topics: Vec<Partition>,
    offsets: Vec<i64>,
    /// The next event of `front` to hand over.
    next_front: usize,
    /// The bucket files not read yet, last first.
    buckets: Vec<PathBuf>,
    /// The rest of the bucket being read.
    current: std::vec::IntoIter<Event>,
    failed: Option<String>,
}

impl Reader {
    /// The next event, reading the next bucket when this one is done.
    fn next_event(&mut self) -> Option<Event> {
        if let Some(e) = self.front.get(self.next_front) {
            self.next_front += 1;
            return Some(e.clone());
        }
        loop {
            if let Some(e) = self.current.next() {
                return Some(e);
            }
            let path = self.buckets.pop()?;
            let spilled = self.spilled.as_ref()?;
            match spilled.bucket(&path) {
                Ok(events) => self.current = events.into_iter(),
                Err(e) => {
                    self.failed = Some(format!("spilled bucket {}: {e}", path.display()));
                    self.buckets.clear();
                    return None;
                }
            }
        }
    }
}

impl Source for Reader {
    fn poll(
        &mut self,
        _wait: Duration,
        take: &mut dyn FnMut(&Record<'_>),
    ) -> Option<Result<(), PollError>> {
        let event = self.next_event()?;
        let kind = kind_of(&event);
        let Some(p) = self.topics.iter().position(|t| t.kind == kind) else {
            // Every kind spilled has its partition (see `Events::new`).
            self.failed = Some(format!("a spilled {kind:?} event has no partition"));
            return None;
        };
        let offset = self.offsets[p];
        self.offsets[p] += 1;
        take(&Record {
            topic: &self.topics[p].topic,
            partition: self.topics[p].partition,
            offset,
            key: None,
            payload: None,
            event: Some(&event),
        });
        Some(Ok(()))
    }

    fn failed(&self) -> Option<String> {
        self.failed.clone()
    }
}

/// The events as the driver's input, held whole.
impl Input for Events {
    fn open(
        &self,
        (index, _): (usize, usize),
        _start_at: &HashMap<(String, i32), i64>,
        _lost: Option<&prometheus::IntGauge>,
    ) -> Result<Opened, StreamError> {
        let reads = index == 0;
        let assigned = self.partitions.assigned(index);
        let topics: Vec<Partition> = self.partitions.0.iter().map(|(p, _)| p.clone()).collect();
        let mut buckets: Vec<PathBuf> = match &self.spilled {
            Some(s) if reads => s.bucket_paths().map(PathBuf::from).collect(),
            _ => Vec::new(),
        };
        buckets.reverse();
        Ok(Opened {
            source: Box::new(Reader {
                front: Arc::clone(&self.front),
                spilled: self.spilled.clone(),
                offsets: vec![0; topics.len()],
                topics,
                next_front: if reads { 0 } else { self.front.len() },
                buckets,
                current: Vec::new().into_iter(),
                failed: None,
            }),
            ends: Box::new(self.partitions.clone()),
            assigned,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::generate::{generate_to_dir, Params};

    fn spilled(dir: &std::path::Path) -> (crate::config::Resolved, Arc<Spilled>) {
        let params = Params {
            stores: 2,
            skus: 3,
            days: 40,
            ..Params::default()
        };
        generate_to_dir(&params, dir).unwrap();
        let cfg = Config::default()
            .resolve(std::path::Path::new("<test>"))
            .unwrap();
        let spilled = crate::source::spill::spill(&cfg, dir, None).unwrap();
        (cfg, Arc::new(spilled))
    }

    /// Polls `source` to its end: per partition (topic), the offsets handed over, and the events.
    fn read_all(source: &mut dyn Source) -> (HashMap<String, Vec<i64>>, Vec<Event>) {
        let mut offsets: HashMap<String, Vec<i64>> = HashMap::new();
        let mut events = Vec::new();
        while let Some(r) = source.poll(Duration::ZERO, &mut |r| {
            offsets
                .entry(r.topic.to_string())
                .or_default()
                .push(r.offset);
            events.extend(r.event.cloned());
        }) {
            r.unwrap();
        }
        (offsets, events)
    }

    #[test]
    fn the_first_worker_reads_every_event_in_order_and_the_ends_match() {
        let dir = tempfile::tempdir().unwrap();
        let (cfg, spilled) = spilled(dir.path());
        let input = Events::spilled(Arc::clone(&spilled), &cfg.kafka.topics);
        let none = HashMap::new();
        let mut opened = input.open((0, 2), &none, None).unwrap();
        let (offsets, events) = read_all(&mut *opened.source);
        assert!(opened.source.failed().is_none());
        assert_eq!(
            events.len() as u64,
            spilled.reference.len() as u64 + spilled.timed
        );
        // Reference data first, then the timed events in time order.
        let first_timed = events.iter().position(|e| e.ts().is_some()).unwrap();
        assert_eq!(first_timed, spilled.reference.len());
        assert!(events[first_timed..]
            .windows(2)
            .all(|w| w[0].ts() <= w[1].ts()));
        // Each partition's offsets run from 0 without a gap, to where its end says.
        assert_eq!(offsets.len(), opened.assigned.len());
        for (p, _) in &opened.assigned {
            let got = &offsets[&p.topic];
            assert!(got.iter().enumerate().all(|(i, o)| *o == i as i64));
            let (_, end) = opened.ends.ends(&p.topic, 0, Duration::ZERO).unwrap();
            assert_eq!(end, got.len() as i64, "{}", p.topic);
        }
        // The other worker reads nothing.
        let mut other = input.open((1, 2), &none, None).unwrap();
        assert!(other.assigned.is_empty());
        assert!(other.source.poll(Duration::ZERO, &mut |_| {}).is_none());
    }

    #[test]
    fn a_bucket_that_cannot_be_read_fails_the_input() {
        let dir = tempfile::tempdir().unwrap();
        let (cfg, spilled) = spilled(dir.path());
        let gone = spilled.bucket_paths().nth(1).unwrap().to_path_buf();
        std::fs::remove_file(&gone).unwrap();
        let input = Events::spilled(Arc::clone(&spilled), &cfg.kafka.topics);
        let mut opened = input.open((0, 1), &HashMap::new(), None).unwrap();
        let (_, events) = read_all(&mut *opened.source);
        assert!(events.len() as u64 > spilled.reference.len() as u64);
        let why = opened.source.failed().expect("the reader says it failed");
        assert!(why.contains(&gone.display().to_string()), "{why}");
    }
}

//! A dataset as the input topics, held in memory: what `load` would publish, read by the
//! streaming driver (`pipeline::stream`) without a broker.
//!
//! Each input kind is one partition (partition 0 of its topic), and one worker reads them all:
//! first the reference data, then the events in time order, as `load` publishes them and
//! replay applies them. So every event arrives after the ones before it in time, falls in its
//! own epoch, and the reference data in the first, whatever the number of workers; the dataflow
//! still spreads the series over every worker. A record's key and value are the bytes `load`
//! would produce, and each keeps the file and line it came from, for its dead letter.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::decode::Record as Decoded;
use crate::kafka::wire::{self, Partition};
use crate::pipeline::source::{PollError, Record, Source, Whole};
use crate::pipeline::stream::{Input, Opened, StreamError};
use crate::source::files::{Dataset, FileKind, Origin};

/// Records in publishing order: reference data, then events by time (stable).
fn publishing_order(records: Vec<(Decoded, Origin)>) -> Vec<(Decoded, Origin)> {
    let ts = |(r, _): &(Decoded, Origin)| match r {
        Decoded::Sale(s) => Some(s.ts),
        Decoded::Movement(m) => Some(m.ts),
        _ => None,
    };
    let (mut timed, reference): (Vec<_>, Vec<_>) =
        records.into_iter().partition(|r| ts(r).is_some());
    timed.sort_by_key(ts);
    reference.into_iter().chain(timed).collect()
}

/// What `load` publishes of a dataset, and what [`Topics`] holds, in publishing order, with the
/// file and line each record came from: its records, with the reference data derived where the
/// dataset lacks it (see [`crate::source::prepare::derived_reference`]).
pub fn to_publish(data: Dataset, period: dataflows::PeriodKind) -> Vec<(Decoded, Origin)> {
    let mut all = crate::source::prepare::derived_reference(&data, period);
    all.extend(data.records);
    publishing_order(all)
}

/// One record held.
struct Held {
    /// Index into [`Topics::partitions`].
    part: usize,
    offset: i64,
    key: Vec<u8>,
    value: Vec<u8>,
    origin: Origin,
}

/// A dataset's records as topics (see the module docs).
pub struct Topics {
    /// Every partition, with the number of records it holds.
    partitions: Vec<(Partition, i64)>,
    /// Every record, in reading order.
    records: Vec<Held>,
    /// Per partition, the index into `records` of the record at each offset.
    at: Vec<Vec<usize>>,
    /// The dataset's file names, by [`Origin::file`].
    files: Vec<String>,
}

impl Topics {
    /// The records `load` would publish of `data` to `topics`, for demand periods of `period`;
    /// with `through`, without the sales and stock movements dated after it (the reference
    /// data is kept whole, and derived from the whole dataset).
    pub fn new(
        data: Dataset,
        period: dataflows::PeriodKind,
        topics: &crate::config::TopicsConfig,
        through: Option<i64>,
    ) -> Result<Topics, serde_json::Error> {
        let files = data.files.iter().map(|f| f.name.clone()).collect();
        let mut partitions: Vec<(Partition, i64)> = Vec::new();
        let mut records = Vec::new();
        let mut at: Vec<Vec<usize>> = Vec::new();
        for (record, origin) in to_publish(data, period) {
            if through.is_some_and(|t| record.ts().is_some_and(|ts| ts > t)) {
                continue;
            }
            let kind = FileKind::of(&record);
            let part = match partitions.iter().position(|(p, _)| p.kind == kind) {
                Some(i) => i,
                None => {
                    let p = Partition {
                        kind,
                        topic: topics.input(kind).to_string(),
                        partition: 0,
                    };
                    partitions.push((p, 0));
                    at.push(Vec::new());
                    partitions.len() - 1
                }
            };
            let offset = partitions[part].1;
            partitions[part].1 += 1;
            at[part].push(records.len());
            records.push(Held {
                part,
                offset,
                key: wire::record_key(&record).into_bytes(),
                value: serde_json::to_vec(&wire::record_value(&record))?,
                origin,
            });
        }
        Ok(Topics {
            partitions,
            records,
            at,
            files,
        })
    }

    /// Records held.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether no record is held.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Its partitions, each with the records it holds.
    pub fn partitions(&self) -> Whole {
        Whole(self.partitions.clone())
    }

    /// Worker `index`'s reader, from the first record (or at the end, for the others).
    pub fn reader(self: &Arc<Self>, index: usize) -> Reader {
        Reader {
            topics: Arc::clone(self),
            next: if index == 0 { 0 } else { self.records.len() },
        }
    }

    /// The file and line of the record at `offset` of `topic`, if it is held.
    pub fn origin(&self, topic: &str, offset: i64) -> Option<(&str, u64)> {
        let part = self.partitions.iter().position(|(p, _)| p.topic == topic)?;
        let i = *self.at[part].get(usize::try_from(offset).ok()?)?;
        let r = &self.records[i];
        Some((
            self.files.get(r.origin.file as usize)?.as_str(),
            r.origin.line,
        ))
    }
}

/// One worker's reader of [`Topics`].
pub struct Reader {
    topics: Arc<Topics>,
    /// The next record to hand over.
    next: usize,
}

impl Source for Reader {
    fn poll(
        &mut self,
        _wait: Duration,
        take: &mut dyn FnMut(&Record<'_>),
    ) -> Option<Result<(), PollError>> {
        let held = self.topics.records.get(self.next)?;
        self.next += 1;
        let (partition, _) = &self.topics.partitions[held.part];
        take(&Record {
            topic: &partition.topic,
            partition: partition.partition,
            offset: held.offset,
            key: Some(&held.key),
            payload: Some(&held.value),
            event: None,
        });
        Some(Ok(()))
    }
}

/// The topics as the driver's input, held whole.
impl Input for Arc<Topics> {
    fn open(
        &self,
        (index, _): (usize, usize),
        _start_at: &HashMap<(String, i32), i64>,
        _lost: Option<&prometheus::IntGauge>,
    ) -> Result<Opened, StreamError> {
        let whole = self.partitions();
        Ok(Opened {
            source: Box::new(self.reader(index)),
            assigned: whole.assigned(index),
            ends: Box::new(whole),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TopicsConfig;
    use crate::pipeline::source::Ends;

    /// A dataset of stores and sales, written out of time order, with one row that does not
    /// decode.
    fn dataset() -> (tempfile::TempDir, Dataset) {
        let dir = tempfile::tempdir().unwrap();
        let sales = "date,store_id,sku_id,qty,price\n\
                     2024-01-03,S1,A,2,1.5\n\
                     2024-01-01,S1,A,1,1.5\n\
                     bad,S1,A,1,1.5\n\
                     2024-01-02,S2,B,4,2\n";
        std::fs::write(dir.path().join("sales.csv"), sales).unwrap();
        std::fs::write(dir.path().join("stores.csv"), "store_id\nS1\nS2\n").unwrap();
        let data = crate::source::files::load(dir.path()).unwrap();
        (dir, data)
    }

    fn read_all(reader: &mut Reader) -> Vec<(String, i64, String)> {
        let mut out = Vec::new();
        while let Some(r) = reader.poll(Duration::ZERO, &mut |r| {
            let value = String::from_utf8(r.payload.unwrap().to_vec()).unwrap();
            out.push((r.topic.to_string(), r.offset, value));
        }) {
            r.unwrap();
        }
        out
    }

    #[test]
    fn one_worker_reads_reference_first_then_events_in_time_order() {
        let (_dir, data) = dataset();
        let topics = TopicsConfig::default();
        let held = Arc::new(Topics::new(data, dataflows::PeriodKind::Day, &topics, None).unwrap());
        for worker in 0..3 {
            let assigned = held.partitions().assigned(worker);
            let read = read_all(&mut held.reader(worker));
            if worker != 0 {
                assert!(assigned.is_empty() && read.is_empty(), "worker {worker}");
                continue;
            }
            assert!(assigned
                .iter()
                .all(|(p, committed)| p.partition == 0 && *committed == 0));
            let stores = &topics.stores;
            let kinds: Vec<&str> = read.iter().map(|(t, _, _)| t.as_str()).collect();
            let first_sale = kinds.iter().position(|t| *t == topics.sales).unwrap();
            assert!(kinds[..first_sale].iter().all(|t| t != &topics.sales));
            assert_eq!(kinds.iter().filter(|t| *t == stores).count(), 2);
            // Each partition's offsets count up from 0 in reading order.
            for (p, n) in &held.partitions {
                let offsets: Vec<i64> = read
                    .iter()
                    .filter(|(t, _, _)| *t == p.topic)
                    .map(|(_, o, _)| *o)
                    .collect();
                assert_eq!(offsets, (0..*n).collect::<Vec<_>>());
                let ends = held.partitions();
                assert_eq!(ends.ends(&p.topic, 0, Duration::ZERO).unwrap(), (0, *n));
            }
            let days: Vec<&str> = read
                .iter()
                .filter(|(t, _, _)| *t == topics.sales)
                .map(|(_, _, v)| &v[v.find("2024-").unwrap()..][..10])
                .collect();
            assert_eq!(days, ["2024-01-01", "2024-01-02", "2024-01-03"]);
        }
    }

    #[test]
    fn a_record_names_the_file_and_line_it_was_read_from() {
        let (_dir, data) = dataset();
        let topics = TopicsConfig::default();
        let held = Topics::new(data, dataflows::PeriodKind::Day, &topics, None).unwrap();
        // In time order the sales are lines 3, 5 and 2 of the file (line 1 is the header).
        let lines: Vec<_> = (0..3).map(|o| held.origin(&topics.sales, o)).collect();
        assert_eq!(
            lines,
            [
                Some(("sales.csv", 3)),
                Some(("sales.csv", 5)),
                Some(("sales.csv", 2))
            ]
        );
        assert_eq!(held.origin(&topics.sales, 3), None);
        assert_eq!(held.origin(&topics.sales, -1), None);
        assert_eq!(held.origin("no-such-topic", 0), None);
        let ends = held.partitions();
        assert!(ends.ends("no-such-topic", 0, Duration::ZERO).is_err());
    }
}

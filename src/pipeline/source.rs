//! What the streaming driver reads: records of partitions, each at an offset, from wherever
//! they are kept.
//!
//! The driver (`pipeline::stream`'s workers and their `feeder`) decodes, dates and applies each
//! record; a [`Source`] only hands it over, and [`Ends`] says how far a partition goes. The
//! broker's consumer is both (`kafka::offsets`). A record names its partition by topic
//! and number, and its offset orders it within that partition, as Kafka does.

use std::time::Duration;

use crate::kafka::wire::Partition;

/// One record as a source hands it over. It borrows the source's buffers: copy what must
/// outlive the call it is handed to.
#[derive(Clone, Copy, Debug)]
pub struct Record<'a> {
    /// The partition's topic.
    pub topic: &'a str,
    /// The partition's number within its topic.
    pub partition: i32,
    /// The record's position in its partition; later records have larger offsets.
    pub offset: i64,
    /// The record's key, if it has one.
    pub key: Option<&'a [u8]>,
    /// The record's value; `None` is a tombstone (a deletion on a reference topic).
    pub payload: Option<&'a [u8]>,
    /// The record already decoded into the dataflow's event (ids and milli-units), as a
    /// spilled dataset holds it: the driver applies it as it is, without reading `key` or
    /// `payload`. `None` for a record of bytes.
    pub event: Option<&'a dataflows::Event>,
}

/// Why a poll returned no record (the driver logs it and polls again later).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PollError(pub String);

/// Hands a worker the records of the partitions it was given.
pub trait Source {
    /// Hands the next record to `take`, waiting at most `wait` for one; `None` when none came.
    /// The record lives only as long as the call.
    fn poll(
        &mut self,
        wait: Duration,
        take: &mut dyn FnMut(&Record<'_>),
    ) -> Option<Result<(), PollError>>;

    /// Stops handing over a partition's records (`paused`), or starts again where it stopped:
    /// the next record handed over is the one after the last handed over. A record already on
    /// its way may still come after a pause. A source that cannot pause (one held in memory,
    /// whose records are held anyway) ignores it.
    fn pause(&mut self, _topic: &str, _partition: i32, _paused: bool) -> Result<(), PollError> {
        Ok(())
    }

    /// Why this source can hand over no more records, if it cannot (a file it reads failed):
    /// the run then stops with that error. A source whose failures pass (a broker) says `None`.
    fn failed(&self) -> Option<String> {
        None
    }
}

/// The partitions of an input held whole before the run (a dataset in memory, or spilled to
/// disk), each with the number of records it holds: worker 0 reads them all, from offset 0,
/// and each ends where it ends.
#[derive(Clone, Debug, Default)]
pub struct Whole(pub Vec<(Partition, i64)>);

impl Whole {
    /// The partitions worker `index` reads (all or none), each with nothing committed.
    pub fn assigned(&self, index: usize) -> Vec<(Partition, i64)> {
        if index != 0 {
            return Vec::new();
        }
        self.0.iter().map(|(p, _)| (p.clone(), 0)).collect()
    }
}

impl Ends for Whole {
    fn ends(&self, topic: &str, partition: i32, _: Duration) -> Result<(i64, i64), PollError> {
        self.0
            .iter()
            .find(|(p, _)| p.topic == topic && p.partition == partition)
            .map(|(_, n)| (0, *n))
            .ok_or_else(|| PollError(format!("no partition {topic}/{partition}")))
    }
}

/// Says where a partition's records end, so that a silent partition can be told apart from
/// one whose records have not arrived yet. Asked on a thread of its own: an answer may take
/// up to `timeout`.
pub trait Ends: Send {
    /// The partition's first offset and the offset after its last record.
    fn ends(&self, topic: &str, partition: i32, timeout: Duration)
        -> Result<(i64, i64), PollError>;
}

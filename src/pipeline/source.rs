//! What the streaming driver reads: records of partitions, each at an offset, from wherever
//! they are kept.
//!
//! The driver (`pipeline::stream`'s workers and their `feeder`) decodes, dates and applies each
//! record; a [`Source`] only hands it over, and [`Ends`] says how far a partition goes. The
//! broker's consumer is both (`kafka::offsets`). A record names its partition by topic
//! and number, and its offset orders it within that partition, as Kafka does.

use std::time::Duration;

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
}

/// Says where a partition's records end, so that a silent partition can be told apart from
/// one whose records have not arrived yet. Asked on a thread of its own: an answer may take
/// up to `timeout`.
pub trait Ends: Send {
    /// The partition's first offset and the offset after its last record.
    fn ends(&self, topic: &str, partition: i32, timeout: Duration)
        -> Result<(i64, i64), PollError>;
}

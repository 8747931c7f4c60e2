//! What the workers hand the caller: closed advances, the tallies of their epochs, and the records
//! that could not be used.

use std::collections::BTreeMap;
use std::time::Instant;

use dataflows::{Epoch, FeatureVec, Key};
use serde::{Deserialize, Serialize};

use crate::source::files::FileKind;

use crate::kafka::wire::Partition;
use crate::pipeline::snapshot::PartDone;

/// Most bytes of a refused record's value a dead letter carries (the rest is cut, and the
/// dead letter says how long the original was).
pub const MAX_DEAD_VALUE_BYTES: usize = 64 * 1024;
/// Most bytes of a refused record's key a dead letter carries.
pub const MAX_DEAD_KEY_BYTES: usize = 1024;

/// The first `max` bytes of `bytes`.
pub(super) fn bounded_copy(bytes: &[u8], max: usize) -> Vec<u8> {
    bytes[..bytes.len().min(max)].to_vec()
}

/// A record that could not be used.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DeadRecord {
    /// Where it came from.
    pub partition: Partition,
    /// Its offset.
    pub offset: i64,
    /// Its key bytes, at most [`MAX_DEAD_KEY_BYTES`].
    pub key: Option<Vec<u8>>,
    /// Its value bytes, verbatim up to [`MAX_DEAD_VALUE_BYTES`].
    pub value: Option<Vec<u8>>,
    /// The length of the original value in bytes (more than `value` holds when it was cut).
    pub original_len: usize,
    /// Stable reason code.
    #[serde(deserialize_with = "crate::metrics::dead_letter_reason")]
    pub reason: crate::metrics::Reason,
    /// Detail for humans.
    pub detail: String,
    /// The file and line the record was read from, when it came from a dataset
    /// ([`crate::source::topics`]): its dead letter then names them.
    #[serde(default)]
    pub row: Option<(String, u64)>,
}

/// What the caller receives each time the closed-epoch frontier advances.
#[derive(Debug, Default)]
pub struct Closed {
    /// The first epoch still open, or `None` once the run has finished.
    pub frontier: Option<Epoch>,
    /// Epochs closed by this advance, counting empty ones.
    pub epochs_closed: u64,
    /// Per partition, the offset below which every record is reflected in closed epochs.
    pub offsets: Vec<(Partition, i64)>,
    /// Records consumed per input kind in the epochs this advance closed (the sum of `epochs`).
    pub consumed: BTreeMap<FileKind, u64>,
    /// Late events applied in those epochs.
    pub late: u64,
    /// Records that could not be used, since the previous advance.
    pub dead: Vec<DeadRecord>,
    /// When the dataflow closed these epochs.
    pub closed_at: Option<Instant>,
    /// Checkpoint parts written since the previous advance.
    pub checkpoint_parts: Vec<PartDone>,
    /// One tally per closed epoch that consumed, changed or applied anything, plus the last
    /// closed epoch, in epoch order: each becomes a progress record.
    pub epochs: Vec<EpochTally>,
}

/// What one closed epoch did, for its progress record.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EpochTally {
    /// The epoch.
    pub epoch: Epoch,
    /// Epochs closed since the previous tally, this one included (the ones between had no
    /// input and no output).
    pub epochs_closed: u64,
    /// Records that took effect in this epoch, per input kind: events of this epoch (or
    /// applied late in it), reference records and dead letters read while it was open.
    pub consumed: BTreeMap<FileKind, u64>,
    /// Events applied in this epoch after their own had closed.
    pub late: u64,
    /// Per partition, the offset below which every record is in this or earlier epochs.
    pub offsets: Vec<(Partition, i64)>,
    /// Series the dataflow changed in this epoch, over every process.
    pub changed: u64,
    /// Of those, the ones whose forecast was left out for a later one (`[output] catch_up`).
    pub superseded: u64,
    /// Series scored again at this epoch because a new model version came.
    pub rescored: u64,
}

/// This process's share of an advance of the closed frontier: the series its workers changed
/// in the epochs closed, which this process scores and writes.
#[derive(Debug, Default)]
pub struct Changed {
    /// The first epoch still open, or `None` once the run has finished.
    pub frontier: Option<Epoch>,
    /// Changed series per closed epoch, in epoch then key order.
    pub changed: Vec<(Epoch, Vec<(Key, FeatureVec)>)>,
    /// Per closed epoch, changed series the dataflow left out of `changed` because a later
    /// epoch of this share changed them again (`catch_up = "latest"`).
    pub superseded: BTreeMap<Epoch, u64>,
    /// When the dataflow closed these epochs.
    pub closed_at: Option<Instant>,
}

/// Input offsets whose records' outputs are in every sink, with the frontier they were
/// committable at (the commit metadata). Worker 0's process hands every process its own
/// partitions' share, and each process commits it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Commit {
    /// The first epoch still open.
    pub frontier: Epoch,
    /// Per partition, the offset to commit.
    pub offsets: Vec<(Partition, i64)>,
}

/// An advance that was not delivered: nothing of it, nor anything after it, is committed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Undelivered;

/// A process's acknowledgement of its share: every forecast of the epochs below `through` is
/// in every sink. Worker 0's process writes a progress record, and commits offsets, only for
/// epochs every process acknowledged.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Delivered {
    /// The process.
    pub process: usize,
    /// The first epoch not acknowledged yet; `None`: all of them, the run finished.
    pub through: Option<Epoch>,
    /// This process's last acknowledgement of the run (it finished, or its output halted).
    pub last: bool,
    /// Per epoch, changed series whose forecast a later one superseded.
    pub superseded: BTreeMap<Epoch, u64>,
    /// Per epoch, series scored again after a new model version.
    pub rescored: BTreeMap<Epoch, u64>,
}

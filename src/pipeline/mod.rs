//! The driver of the feature dataflow (the `dataflows` crate) on N timely workers.
//!
//! `stream` is the one driver: the worker's on the broker, replay's, `features`' and the
//! training history's. Each timely worker reads its share of an `Input` (the broker's
//! partitions, `kafka::offsets::Broker`; a dataset held as topics, `source::topics`; or a
//! dataset's events, held or spilled to disk, `source::events`) through `source`, keeps
//! watermarks and offsets, feeds the dataflow it built (`dataflow`), and hands the caller's
//! thread each advance of the closed frontier. `snapshot` is when its workers cut a checkpoint
//! and what it holds, and `progress` what a running driver shows (health, counters, the read
//! API's latest forecasts).

pub mod dataflow;
pub mod progress;
pub mod snapshot;
pub mod source;
pub mod stream;

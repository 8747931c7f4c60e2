//! The drivers of the feature dataflow (the `dataflows` crate) on N timely workers.
//!
//! `stream` is the streaming driver, the worker's and replay's: each worker reads its share of
//! an `Input` (the broker's partitions, `kafka::offsets::Broker`, or a dataset held in memory,
//! `source::topics`) through `source`, keeps watermarks and offsets, and hands the caller's
//! thread each advance of the closed frontier; `snapshot` is when its workers cut a checkpoint
//! and what it holds, and `progress` what a running driver shows (health, counters, the read
//! API's latest forecasts).
//!
//! `schedule` and `run` schedule every event's epoch up front instead, for the training
//! history (`model::history`), which reads histories larger than memory a time bucket at a
//! time from disk:
//!
//! ```text
//! events (arrival order) -> schedule::plan       epoch per event, late flags, steps to visit
//!                        -> run::run             N timely workers, each feeding its share of
//!                                                 keys through dataflows::input and the dataflow
//!   (or, for a history too large to hold: chunks of time-sorted events -> schedule::Scheduler
//!    -> run::run_chunks, the same workers fed a chunk at a time)
//!                        -> on_epoch callback     per closed epoch: changed (key, features),
//!                                                 rejected events; on the caller's thread
//! ```

pub mod progress;
pub mod run;
pub mod schedule;
pub mod snapshot;
pub mod source;
pub mod stream;

pub use run::{run, run_chunks, Chunk, ChunkError, EpochOutput, RunError};
pub use schedule::{plan, Plan, Scheduler, Step, Watermarks};

//! Running the feature dataflow over events in arrival order, with every event's epoch
//! scheduled up front: the driver of `features` and the training history.
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
//!
//! `source` is what the streaming driver (`kafka::stream`) reads through: a worker's records and
//! where its partitions end.

pub mod run;
pub mod schedule;
pub mod source;

pub use run::{run, run_chunks, Chunk, ChunkError, EpochOutput, RunError};
pub use schedule::{plan, Plan, Scheduler, Step, Watermarks};

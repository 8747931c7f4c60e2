//! Running the feature dataflow over events in arrival order.
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

pub mod run;
pub mod schedule;

pub use run::{run, run_chunks, Chunk, ChunkError, EpochOutput, RunError};
pub use schedule::{plan, Plan, Scheduler, Step, Watermarks};

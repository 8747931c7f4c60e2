//! Where events come from. `files` reads a dataset directory; `topics` holds it in memory as
//! the input topics the streaming driver reads (replay, `features`); `prepare` turns it into the
//! dataflow's events, and `spill` writes those of a dataset too large to hold to time buckets
//! on disk; `events` hands either to the same driver (the training history).

pub mod events;
pub mod files;
pub mod prepare;
pub mod spill;
pub mod topics;

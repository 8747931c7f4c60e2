//! Where events come from. `files` reads a dataset directory; `prepare` turns it into events for
//! the feature table and the training history, `topics` into the input topics, in memory, for
//! replay.

pub mod files;
pub mod prepare;
pub mod spill;
pub mod topics;

//! Where events come from. `files` reads a dataset directory for replay and the feature table.

pub mod files;
pub mod prepare;
pub mod spill;

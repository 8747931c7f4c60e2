//! Pure feature logic of stockcast: a differential-dataflow program over sales, stock movements
//! and the promotion calendar that maintains, per (store, SKU), rolling demand features and the
//! stock position, and reports exactly the series whose feature vector changed at each epoch.
//!
//! This crate knows nothing of Kafka, files, threads or the wall clock: time arrives only as the
//! epoch (the timely timestamp) and as event times carried by the data.
//!
//! # Layout
//! - [`time`]: periods (UTC days or ISO weeks) and epochs.
//! - [`model`]: keys, events, the per-period totals used as the dataflow's difference type.
//! - [`features`]: the feature spec, its schema, and the evaluation of one series' features.
//! - [`input`]: the per-worker input stage: turns events into per-period totals, registers
//!   series, sends a tick when a period begins, refuses events too old to matter, applies
//!   promotion upserts.
//! - [`dataflow`]: the differential dataflow from those inputs to changed feature vectors,
//!   ending in the `series_features` operator that owns each series' state.
//! - [`emit`]: how that operator turns evaluations into updates: every changed epoch, or the
//!   last of each batch with the ones it replaced counted.
//! - [`table`]: that operator's table of series, built for lookups prefetched in stages.

pub mod dataflow;
pub mod emit;
pub mod features;
pub mod input;
pub mod model;
pub mod table;
pub mod time;

pub use features::{FeatureSpec, Schema};
pub use model::{Agg, Event, FeatureVec, ItemAttrs, Key, PlannedPrice, Promotion, StockKind};
pub use time::{Clock, Epoch, Period, PeriodKind};

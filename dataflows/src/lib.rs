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
//! - [`input`]: the per-worker input stage: routes events to period totals, slides windows at
//!   period rollovers by retracting expired totals, applies reference-data upserts.
//! - [`dataflow`]: the differential dataflow from those inputs to changed feature vectors.

pub mod dataflow;
pub mod features;
pub mod input;
pub mod model;
pub mod time;

pub use features::{FeatureSpec, Schema};
pub use model::{Agg, Event, FeatureVec, Key, Promotion, StockKind};
pub use time::{Clock, Epoch, Period, PeriodKind};

//! The records the worker writes: a forecast of one series (a line of `forecasts.jsonl`, a
//! record on the forecasts topic, a row of the mart, an entry of the cache and the read API),
//! the progress record of a closed epoch, and a dead letter.

pub mod dead;
pub mod json;

pub use self::dead::{DeadContent, DeadLetterRecord, DeadSource};

use std::collections::BTreeMap;
use std::sync::Arc;

use dataflows::{FeatureVec, Schema};
use serde::{Deserialize, Serialize};

use crate::forecast::{Forecast, Forecaster};

/// One forecast: a line of `forecasts.jsonl`, a record on the forecasts topic.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ForecastRecord {
    /// End of the epoch whose closing changed the series' features (RFC 3339).
    pub epoch_end: Arc<str>,
    /// Store name.
    pub store_id: Arc<str>,
    /// SKU name.
    pub sku_id: Arc<str>,
    /// Hash of the feature schema the forecast was computed from.
    pub schema_hash: Arc<str>,
    /// The forecaster that scored (e.g. `baseline-ma`): the configured model, or the baseline
    /// when the model could not score this series' batch.
    pub model: Arc<str>,
    /// Its version.
    pub model_version: Arc<str>,
    /// Why the baseline scored instead of the configured model; absent when the model scored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_reason: Option<String>,
    /// Median demand per future period `1..=horizon`, units, rounded to 3 decimals.
    pub forecast: Vec<f64>,
    /// The 0.1 quantile of demand per future period.
    pub forecast_p10: Vec<f64>,
    /// The 0.9 quantile of demand per future period.
    pub forecast_p90: Vec<f64>,
    /// Units on hand, where stock movements were seen.
    pub on_hand: Option<f64>,
    /// Units on order, where stock movements were seen.
    pub on_order: Option<f64>,
    /// What to order and why (docs/replenishment.md).
    pub recommendation: crate::replenish::Advice,
}

/// `xs` rounded to 3 decimals, in place.
fn round3(mut xs: Vec<f64>) -> Vec<f64> {
    for x in &mut xs {
        *x = (*x * 1000.0).round() / 1000.0;
    }
    xs
}

/// The latest forecast record of each series, by (store, SKU) name: what the read API serves.
pub type Latest = std::collections::HashMap<crate::ids::SeriesNames, ForecastRecord>;

/// What the forecast records of one epoch, scored by one forecaster, have in common: each record
/// holds these by reference count rather than by copy.
#[derive(Clone, Debug)]
pub struct Stamp {
    /// End of the epoch (RFC 3339).
    pub epoch_end: Arc<str>,
    /// The feature schema's hash.
    pub schema_hash: Arc<str>,
    /// The forecaster's name.
    pub model: Arc<str>,
    /// Its version.
    pub model_version: Arc<str>,
}

impl Stamp {
    /// The stamp of `forecaster`'s records under `schema`, at the end of the epoch `epoch_end`.
    pub fn new(epoch_end: Arc<str>, schema: &Schema, forecaster: &dyn Forecaster) -> Stamp {
        Stamp {
            epoch_end,
            schema_hash: schema.hash.as_str().into(),
            model: forecaster.name().into(),
            model_version: forecaster.version().into(),
        }
    }
}

impl ForecastRecord {
    /// The record of one scored series.
    pub fn new(
        stamp: &Stamp,
        (store_id, sku_id): (Arc<str>, Arc<str>),
        schema: &Schema,
        planner: &crate::replenish::Planner,
        vec: &FeatureVec,
        forecast: Forecast,
    ) -> Self {
        // Planned from the forecast as scored; its quantiles then move into the record.
        let recommendation = planner.advise(schema, vec, &forecast);
        let (model, model_version, fallback_reason) = match &forecast.fallback {
            Some(f) => (
                f.model.as_str().into(),
                f.version.as_str().into(),
                Some(f.reason.clone()),
            ),
            None => (
                Arc::clone(&stamp.model),
                Arc::clone(&stamp.model_version),
                None,
            ),
        };
        ForecastRecord {
            epoch_end: Arc::clone(&stamp.epoch_end),
            store_id,
            sku_id,
            schema_hash: Arc::clone(&stamp.schema_hash),
            model,
            model_version,
            fallback_reason,
            forecast: round3(forecast.p50),
            forecast_p10: round3(forecast.p10),
            forecast_p90: round3(forecast.p90),
            on_hand: planner.on_hand(schema, vec),
            on_order: planner.on_order(schema, vec),
            recommendation,
        }
    }
}

/// One record on `stockcast.epochs`: an epoch closed. There is one per closed epoch that
/// consumed, changed or applied anything, and one for the last epoch of every advance of the
/// closed frontier (so in live mode, where epochs close one by one on the wall clock, one per
/// epoch); the empty epochs between two records are counted by the later one's
/// `epochs_closed`. Written after every forecast of the epochs it covers was acknowledged.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// End of the epoch (RFC 3339); forecasts up to it are complete.
    pub epoch_end: String,
    /// The first epoch after it, as an index of `epoch_secs` since 1970 (what a restart
    /// resumes output at).
    pub frontier: u64,
    /// Epochs closed since the previous record, this one included.
    pub epochs_closed: u64,
    /// Records that took effect in this epoch, per input topic: events of the epoch (or applied
    /// late in it), and reference records and dead letters read while it was open.
    pub consumed: BTreeMap<String, u64>,
    /// Events applied in this epoch after their own epoch had closed.
    pub late: u64,
    /// Dead letters written since the previous record.
    pub dead_letters: u64,
    /// Forecast records (changed series) of this epoch.
    pub keys_changed: u64,
    /// Series that changed in this epoch but whose forecast was left out, because a later epoch
    /// of the same advance changed them again and carries the newer one (`[output] catch_up =
    /// "latest"`); 0 otherwise.
    #[serde(default)]
    pub keys_superseded: u64,
    /// Series scored at this epoch: the changed ones, plus every other series once at the
    /// newest epoch after a model change.
    pub keys_scored: u64,
    /// Per input partition (`topic/partition`), the offset below which every record is in this
    /// or an earlier epoch. The worker commits the offsets of an advance's last record.
    pub offsets: BTreeMap<String, i64>,
    /// Milliseconds from the frontier's advance in the dataflow to the acknowledgement of the
    /// advance's records.
    pub latency_ms: u64,
}

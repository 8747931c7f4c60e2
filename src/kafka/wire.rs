//! The JSON records on the topics: input records as `load` writes them (the schemas the README
//! documents, which `decode` reads back), and the worker's progress and dead-letter records.
//! The forecast record is [`crate::records::ForecastRecord`], shared with `replay`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::decode::Record;
use crate::display::rfc3339;
use crate::source::files::FileKind;

/// A milli-unit quantity as a JSON number (exact: at most three decimals are printed).
fn units(milli: i64) -> Value {
    if milli % 1000 == 0 {
        json!(milli / 1000)
    } else {
        json!(milli as f64 / 1000.0)
    }
}

/// The record's key on its topic: `store_id:sku_id` for events, the entity id for reference
/// data (so compaction keeps the latest version of each entity).
pub fn record_key(record: &Record) -> String {
    match record {
        Record::Sale(s) => format!("{}:{}", s.store_id, s.sku_id),
        Record::Movement(m) => format!("{}:{}", m.store_id, m.sku_id),
        Record::Catalog(c) => c.sku_id.clone(),
        Record::Store(s) => s.store_id.clone(),
        Record::Promotion(p) => p.promo_id.clone(),
    }
}

/// The record's JSON value in its documented schema.
pub fn record_value(record: &Record) -> Value {
    let mut m = Map::new();
    let mut put = |k: &str, v: Value| {
        m.insert(k.to_string(), v);
    };
    match record {
        Record::Sale(s) => {
            if let Some(id) = &s.event_id {
                put("event_id", json!(id));
            }
            put("ts", json!(rfc3339(s.ts)));
            put("store_id", json!(s.store_id));
            put("sku_id", json!(s.sku_id));
            put("qty", units(s.qty));
            if let Some(p) = s.unit_price {
                put("unit_price", units(p));
            }
            if s.promo {
                put("promo", json!(true));
            }
        }
        Record::Movement(mv) => {
            if let Some(id) = &mv.event_id {
                put("event_id", json!(id));
            }
            put("ts", json!(rfc3339(mv.ts)));
            put("store_id", json!(mv.store_id));
            put("sku_id", json!(mv.sku_id));
            put("kind", json!(mv.kind.name()));
            put("qty", units(mv.qty));
        }
        Record::Catalog(c) => {
            put("sku_id", json!(c.sku_id));
            if let Some(x) = &c.category {
                put("category", json!(x));
            }
            if let Some(x) = c.pack_size {
                put("pack_size", units(x));
            }
            if let Some(x) = c.lead_time_days {
                put("lead_time_days", json!(x));
            }
            if let Some(x) = c.min_order_qty {
                put("min_order_qty", units(x));
            }
            put("active", json!(c.active));
        }
        Record::Store(s) => {
            put("store_id", json!(s.store_id));
            if let Some(x) = &s.region {
                put("region", json!(x));
            }
            put("active", json!(s.active));
        }
        Record::Promotion(p) => {
            put("promo_id", json!(p.promo_id));
            if let Some(x) = &p.store_id {
                put("store_id", json!(x));
            }
            put("sku_id", json!(p.sku_id));
            put("start", json!(rfc3339(p.start)));
            put("end", json!(rfc3339(p.end)));
            if let Some(x) = p.discount_pct {
                put("discount_pct", units(x));
            }
        }
    }
    Value::Object(m)
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

/// Header of a dead-letter record that carries the original value's bytes verbatim (its first
/// [`crate::kafka::stream::MAX_DEAD_VALUE_BYTES`] bytes when it was longer).
pub const ORIGINAL_VALUE_HEADER: &str = "stockcast.original-value";

/// Header present when the original value was cut: its full length in bytes, as decimal text.
pub const ORIGINAL_LENGTH_HEADER: &str = "stockcast.original-length";

/// One record on `stockcast.dead-letters`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeadLetterRecord {
    /// Topic the record came from.
    pub topic: String,
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// Stable reason code (`malformed`, `missing_field`, `too_late`, ...).
    pub reason: String,
    /// Human-readable detail.
    pub detail: String,
    /// The record's key, as text where it is UTF-8 (else lossily).
    pub key: Option<String>,
    /// The record's value, as text where it is UTF-8 (else lossily). The exact original bytes
    /// travel beside it in the Kafka header [`ORIGINAL_VALUE_HEADER`]. At most
    /// [`crate::kafka::stream::MAX_DEAD_VALUE_BYTES`] of the original: see `value_bytes`.
    pub value: Option<String>,
    /// The original value's length in bytes.
    #[serde(default)]
    pub value_bytes: usize,
    /// Whether `value` (and the header) hold only the start of the original value.
    #[serde(default)]
    pub value_truncated: bool,
}

/// One input partition.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Partition {
    /// What its records are.
    pub kind: FileKind,
    /// Topic name.
    pub topic: String,
    /// Partition number.
    pub partition: i32,
}

impl Partition {
    /// `topic/partition`.
    pub fn label(&self) -> String {
        format!("{}/{}", self.topic, self.partition)
    }
}

//! The JSON records on the topics: input records as `load` writes them (the schemas docs/data.md
//! documents, which `decode` reads back), the headers of dead letters, and the partitions read.
//! The records the worker writes are in [`crate::records`].

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

pub use crate::records::{DeadContent, DeadLetterRecord, DeadSource, EpochRecord};

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
        Record::PlannedPrice(p) => p.price_id.clone(),
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
        Record::PlannedPrice(p) => {
            put("price_id", json!(p.price_id));
            if let Some(x) = &p.store_id {
                put("store_id", json!(x));
            }
            put("sku_id", json!(p.sku_id));
            put("start", json!(rfc3339(p.start)));
            put("end", json!(rfc3339(p.end)));
            put("price", units(p.price));
        }
    }
    Value::Object(m)
}

/// Header of a dead-letter record that carries the original value's bytes verbatim (its first
/// [`crate::pipeline::stream::MAX_DEAD_VALUE_BYTES`] bytes when it was longer).
pub const ORIGINAL_VALUE_HEADER: &str = "stockcast.original-value";

/// Header present when the original value was cut: its full length in bytes, as decimal text.
pub const ORIGINAL_LENGTH_HEADER: &str = "stockcast.original-length";

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

//! Names of stores and SKUs, and the 64-bit ids the dataflow uses instead.
//!
//! An id is the FNV-1a hash of the name, so every process and worker derives the same id without
//! coordination; the dictionary keeps the names for output and refuses a second name that hashes
//! to an id already taken (astronomically rare, but then loud rather than silently merged).

use std::collections::HashMap;
use std::sync::Arc;

use dataflows::features::fnv1a64;
use dataflows::model::{Id, ItemAttrs, PlannedPrice, Promotion};
use dataflows::{Event, Key, PeriodKind};

use crate::decode::Record;

/// Two names with the same id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{new}` and `{existing}` hash to the same id")]
pub struct Collision {
    /// The name already registered.
    pub existing: String,
    /// The name refused.
    pub new: String,
}

/// Names by id: (store names, SKU names).
pub type Names = (Vec<(Id, String)>, Vec<(Id, String)>);

/// The (store, SKU) names of a series, shared by reference count.
pub type SeriesNames = (Arc<str>, Arc<str>);

/// Names by id, for stores and SKUs.
#[derive(Debug, Default, Clone)]
pub struct Dictionary {
    /// Store names by id, shared with the records that carry them.
    stores: HashMap<Id, Arc<str>>,
    /// SKU names by id, shared likewise.
    skus: HashMap<Id, Arc<str>>,
}

/// The id of a store or SKU name (without registering it).
pub fn name_id(name: &str) -> Id {
    fnv1a64(name.as_bytes())
}

fn intern(map: &mut HashMap<Id, Arc<str>>, name: &str) -> Result<Id, Collision> {
    let id = name_id(name);
    match map.get(&id) {
        Some(existing) if &**existing != name => Err(Collision {
            existing: existing.to_string(),
            new: name.to_string(),
        }),
        Some(_) => Ok(id),
        None => {
            map.insert(id, Arc::from(name));
            Ok(id)
        }
    }
}

impl Dictionary {
    /// Every name held: (store names, SKU names) by id, sorted by id.
    pub fn export(&self) -> Names {
        let sorted = |m: &HashMap<Id, Arc<str>>| {
            let mut v: Vec<(Id, String)> = m.iter().map(|(k, v)| (*k, v.to_string())).collect();
            v.sort_unstable_by_key(|e| e.0);
            v
        };
        (sorted(&self.stores), sorted(&self.skus))
    }

    /// Takes in names exported by [`Dictionary::export`] (a name already held stays).
    pub fn import(&mut self, stores: &[(Id, String)], skus: &[(Id, String)]) {
        for (id, name) in stores {
            self.stores
                .entry(*id)
                .or_insert_with(|| Arc::from(name.as_str()));
        }
        for (id, name) in skus {
            self.skus
                .entry(*id)
                .or_insert_with(|| Arc::from(name.as_str()));
        }
    }

    /// The id of a store name, registering it.
    pub fn store(&mut self, name: &str) -> Result<Id, Collision> {
        intern(&mut self.stores, name)
    }

    /// The id of a SKU name, registering it.
    pub fn sku(&mut self, name: &str) -> Result<Id, Collision> {
        intern(&mut self.skus, name)
    }

    /// The key of a (store, SKU) pair, registering both names.
    pub fn key(&mut self, store: &str, sku: &str) -> Result<Key, Collision> {
        Ok(Key {
            store: self.store(store)?,
            sku: self.sku(sku)?,
        })
    }

    /// The dataflow event of a decoded record, registering its names.
    pub fn event(&mut self, record: &Record, period: PeriodKind) -> Result<Event, Collision> {
        Ok(match record {
            Record::Sale(s) => Event::Sale {
                key: self.key(&s.store_id, &s.sku_id)?,
                ts: s.ts,
                qty: s.qty,
                unit_price: s.unit_price,
                promo: s.promo,
            },
            Record::Movement(m) => Event::Stock {
                key: self.key(&m.store_id, &m.sku_id)?,
                ts: m.ts,
                kind: m.kind,
                qty: m.qty,
            },
            Record::Promotion(p) => Event::Promotion {
                promo_id: reference_id(&p.promo_id),
                def: Some(Promotion {
                    store: p.store_id.as_deref().map(|s| self.store(s)).transpose()?,
                    sku: self.sku(&p.sku_id)?,
                    start: period.period_of(p.start),
                    end: period.period_of(p.end),
                }),
            },
            Record::PlannedPrice(p) => Event::PlannedPrice {
                price_id: reference_id(&p.price_id),
                def: Some(PlannedPrice {
                    store: p.store_id.as_deref().map(|s| self.store(s)).transpose()?,
                    sku: self.sku(&p.sku_id)?,
                    start: period.period_of(p.start),
                    end: period.period_of(p.end),
                    price: p.price,
                }),
            },
            Record::Catalog(c) => Event::Item {
                sku: self.sku(&c.sku_id)?,
                def: Some(ItemAttrs {
                    category: c.category.as_deref().map(category_id),
                    lead_time_days: c.lead_time_days,
                    pack_size: c.pack_size,
                    min_order_qty: c.min_order_qty,
                    active: c.active,
                }),
            },
            Record::Store(s) => Event::Store {
                store: self.store(&s.store_id)?,
                active: Some(s.active),
            },
        })
    }

    /// The names of a key, shared (a reference count each, no copy); ids never registered
    /// show as `#<hex>`.
    pub fn names(&self, key: &Key) -> SeriesNames {
        let name = |m: &HashMap<Id, Arc<str>>, id: Id| {
            m.get(&id)
                .cloned()
                .unwrap_or_else(|| format!("#{id:016x}").into())
        };
        (name(&self.stores, key.store), name(&self.skus, key.sku))
    }
}

/// The id of a category name (the `category_id` feature holds it as `i64`).
pub fn category_id(name: &str) -> Id {
    fnv1a64(name.as_bytes())
}

/// The id of a reference entity's name (a promotion's or a price plan entry's id).
pub fn reference_id(name: &str) -> Id {
    fnv1a64(name.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_names_round_trip() {
        let mut d = Dictionary::default();
        let k = d.key("CA_1", "HOBBIES_1_001").unwrap();
        assert_eq!(k, d.key("CA_1", "HOBBIES_1_001").unwrap());
        assert_eq!(d.names(&k), (Arc::from("CA_1"), Arc::from("HOBBIES_1_001")));
        assert_eq!(k.store, fnv1a64(b"CA_1"));
    }
}

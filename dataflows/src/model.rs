//! The records that flow through the feature dataflow.
//!
//! Quantities and prices are integers in milli-units (1.5 units = 1500) so that updates
//! consolidate exactly; floats appear only when a feature vector is read out.

use differential_dataflow::difference::{Abelian, IsZero, Monoid, Multiply, Semigroup};
use serde::{Deserialize, Serialize};

use crate::time::Period;

/// Identifier of a store or SKU: a stable 64-bit hash of its name, made by the caller.
pub type Id = u64;

/// A hasher for maps keyed by ids, which are already well mixed (hashes of names): a
/// multiply-rotate per word, far cheaper than the standard library's SipHash. Not for keys an
/// adversary picks.
#[derive(Clone, Copy, Debug, Default)]
pub struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Builds [`IdHasher`]s, for `HashMap<Key, _, IdHash>`.
pub type IdHash = std::hash::BuildHasherDefault<IdHasher>;

/// One (store, SKU) series.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Key {
    /// Store identifier.
    pub store: Id,
    /// SKU identifier.
    pub sku: Id,
}

/// Kinds of stock movement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StockKind {
    /// A purchase order was placed: raises on-order.
    Order,
    /// Goods were delivered: raise on-hand, lower on-order.
    Receipt,
    /// Shrink, write-off or count correction: changes on-hand by a signed quantity.
    Adjustment,
}

impl StockKind {
    /// The kind as written in input records: `order`, `receipt`, `adjustment`.
    pub fn name(self) -> &'static str {
        match self {
            StockKind::Order => "order",
            StockKind::Receipt => "receipt",
            StockKind::Adjustment => "adjustment",
        }
    }
}

/// A promotion from the calendar, after its dates were turned into periods.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Promotion {
    /// The one store it runs in, or `None` for every store that sells the SKU.
    pub store: Option<Id>,
    /// The promoted SKU.
    pub sku: Id,
    /// First period it covers.
    pub start: Period,
    /// Last period it covers (inclusive).
    pub end: Period,
}

/// A price plan entry, after its dates were turned into periods: the unit price a SKU is
/// planned to sell at over a range of periods.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PlannedPrice {
    /// The one store it applies in, or `None` for every store that sells the SKU.
    pub store: Option<Id>,
    /// The SKU.
    pub sku: Id,
    /// First period it covers.
    pub start: Period,
    /// Last period it covers (inclusive).
    pub end: Period,
    /// The planned unit price, milli-currency (above zero).
    pub price: i64,
}

/// Reference data dated by periods that applies to one store's series of a SKU, or to every
/// store's: calendar promotions and price plan entries.
pub trait Dated: Copy {
    /// The one store, or `None` for all.
    fn store(&self) -> Option<Id>;
    /// The SKU.
    fn sku(&self) -> Id;
    /// The record a series holds for it.
    fn rec(&self) -> Rec;
}

impl Dated for Promotion {
    fn store(&self) -> Option<Id> {
        self.store
    }
    fn sku(&self) -> Id {
        self.sku
    }
    fn rec(&self) -> Rec {
        Rec::Promo {
            start: self.start,
            end: self.end,
        }
    }
}

impl Dated for PlannedPrice {
    fn store(&self) -> Option<Id> {
        self.store
    }
    fn sku(&self) -> Id {
        self.sku
    }
    fn rec(&self) -> Rec {
        Rec::Price {
            start: self.start,
            end: self.end,
            price: self.price,
        }
    }
}

/// What the catalog says about a SKU, as the dataflow keeps it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ItemAttrs {
    /// Id of the category name, if any.
    pub category: Option<Id>,
    /// Supplier lead time in days.
    pub lead_time_days: Option<i64>,
    /// Units per pack, milli-units.
    pub pack_size: Option<i64>,
    /// Minimum order quantity, milli-units.
    pub min_order_qty: Option<i64>,
    /// Whether the SKU is still sold.
    pub active: bool,
}

impl Default for ItemAttrs {
    /// A SKU without a catalog entry: nothing known, active.
    fn default() -> Self {
        ItemAttrs {
            category: None,
            lead_time_days: None,
            pack_size: None,
            min_order_qty: None,
            active: true,
        }
    }
}

impl ItemAttrs {
    /// The per-series records that carry these attributes (nothing for an absent value).
    pub fn records(self) -> impl Iterator<Item = Rec> {
        [
            self.category.map(Rec::Category),
            self.lead_time_days.map(Rec::LeadTime),
            self.pack_size.map(Rec::PackSize),
            self.min_order_qty.map(Rec::MinOrder),
            (!self.active).then_some(Rec::ItemInactive),
        ]
        .into_iter()
        .flatten()
    }
}

/// A validated input event, already keyed by ids and in milli-units.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// Units sold (negative for a return).
    Sale {
        /// The series.
        key: Key,
        /// Event time, seconds since the Unix epoch.
        ts: i64,
        /// Net quantity in milli-units.
        qty: i64,
        /// Unit price in milli-currency, where known.
        unit_price: Option<i64>,
        /// Whether the sale was made on promotion.
        promo: bool,
    },
    /// A stock movement.
    Stock {
        /// The series.
        key: Key,
        /// Event time, seconds since the Unix epoch.
        ts: i64,
        /// Order, receipt or adjustment.
        kind: StockKind,
        /// Quantity in milli-units (signed for adjustments).
        qty: i64,
    },
    /// An upsert (or, with `None`, a deletion) of a calendar promotion.
    Promotion {
        /// The promotion's id; a later record for the same id replaces the earlier.
        promo_id: Id,
        /// The new definition.
        def: Option<Promotion>,
    },
    /// An upsert (or, with `None`, a deletion) of a catalog item.
    Item {
        /// The SKU.
        sku: Id,
        /// Its attributes.
        def: Option<ItemAttrs>,
    },
    /// An upsert (or, with `None`, a deletion) of a store.
    Store {
        /// The store.
        store: Id,
        /// Whether it is open.
        active: Option<bool>,
    },
    /// An upsert (or, with `None`, a deletion) of a price plan entry.
    PlannedPrice {
        /// The entry's id; a later record for the same id replaces the earlier.
        price_id: Id,
        /// The new definition.
        def: Option<PlannedPrice>,
    },
}

impl Event {
    /// Event time of a sale or stock movement; `None` for reference data.
    pub fn ts(&self) -> Option<i64> {
        match self {
            Event::Sale { ts, .. } | Event::Stock { ts, .. } => Some(*ts),
            Event::Promotion { .. }
            | Event::PlannedPrice { .. }
            | Event::Item { .. }
            | Event::Store { .. } => None,
        }
    }

    /// The series a sale or stock movement belongs to.
    pub fn key(&self) -> Option<Key> {
        match self {
            Event::Sale { key, .. } | Event::Stock { key, .. } => Some(*key),
            Event::Promotion { .. }
            | Event::PlannedPrice { .. }
            | Event::Item { .. }
            | Event::Store { .. } => None,
        }
    }
}

/// Per-series, per-period totals, used as the *difference* type of the dataflow so that
/// accumulating updates is the aggregation. Every field is a plain sum, which makes it abelian.
/// Counts are 32-bit (48 bytes in all): every update in the dataflow carries one of these.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Agg {
    /// Net units sold, milli-units.
    pub qty: i64,
    /// Sum of unit prices over priced sales, milli-currency.
    pub price_sum: i64,
    /// Change of on-hand stock (receipts + adjustments - sales), milli-units.
    pub on_hand: i64,
    /// Change of on-order stock (orders - receipts), milli-units.
    pub on_order: i64,
    /// Number of contributing records (events, promotions); for a clock, its period plus one.
    pub n: i32,
    /// Number of priced sales.
    pub price_n: i32,
    /// Number of sales flagged as on promotion.
    pub promo_n: i32,
    /// Number of stock movements.
    pub stock_n: i32,
}

impl Agg {
    /// A record that only counts (promotions) or carries a clock reading.
    pub fn present(n: i32) -> Self {
        Agg {
            n,
            ..Agg::default()
        }
    }

    /// The contribution of one event to its series and period.
    pub fn of_event(event: &Event) -> Option<Self> {
        match *event {
            Event::Sale {
                qty,
                unit_price,
                promo,
                ..
            } => Some(Agg {
                n: 1,
                qty,
                price_sum: unit_price.unwrap_or(0),
                price_n: i32::from(unit_price.is_some()),
                promo_n: i32::from(promo),
                on_hand: -qty,
                ..Agg::default()
            }),
            Event::Stock { kind, qty, .. } => {
                let (on_hand, on_order) = match kind {
                    StockKind::Order => (0, qty),
                    StockKind::Receipt => (qty, -qty),
                    StockKind::Adjustment => (qty, 0),
                };
                Some(Agg {
                    n: 1,
                    on_hand,
                    on_order,
                    stock_n: 1,
                    ..Agg::default()
                })
            }
            Event::Promotion { .. }
            | Event::PlannedPrice { .. }
            | Event::Item { .. }
            | Event::Store { .. } => None,
        }
    }

    /// The part of a period's totals that outlives the period: the stock position.
    pub fn stock_part(&self) -> Self {
        Agg {
            on_hand: self.on_hand,
            on_order: self.on_order,
            stock_n: self.stock_n,
            ..Agg::default()
        }
    }
}

impl IsZero for Agg {
    fn is_zero(&self) -> bool {
        *self == Agg::default()
    }
}

impl Semigroup for Agg {
    fn plus_equals(&mut self, rhs: &Self) {
        self.n += rhs.n;
        self.qty += rhs.qty;
        self.price_sum += rhs.price_sum;
        self.price_n += rhs.price_n;
        self.promo_n += rhs.promo_n;
        self.on_hand += rhs.on_hand;
        self.on_order += rhs.on_order;
        self.stock_n += rhs.stock_n;
    }
}

impl Monoid for Agg {
    fn zero() -> Self {
        Agg::default()
    }
}

impl Abelian for Agg {
    fn negate(&mut self) {
        *self = Agg {
            n: -self.n,
            qty: -self.qty,
            price_sum: -self.price_sum,
            price_n: -self.price_n,
            promo_n: -self.promo_n,
            on_hand: -self.on_hand,
            on_order: -self.on_order,
            stock_n: -self.stock_n,
        };
    }
}

impl Multiply<isize> for Agg {
    type Output = Agg;
    fn multiply(self, rhs: &isize) -> Agg {
        let (k, c) = (*rhs as i64, *rhs as i32);
        Agg {
            n: self.n * c,
            qty: self.qty * k,
            price_sum: self.price_sum * k,
            price_n: self.price_n * c,
            promo_n: self.promo_n * c,
            on_hand: self.on_hand * k,
            on_order: self.on_order * k,
            stock_n: self.stock_n * c,
        }
    }
}

/// What a record in a series' input stands for; its totals travel as the difference.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Rec {
    /// Totals of one period inside the retention window.
    Period(Period),
    /// A calendar promotion covering periods `start..=end`.
    Promo {
        /// First period covered.
        start: Period,
        /// Last period covered.
        end: Period,
    },
    /// The series was registered by a worker (`n` counts the workers that did): from then on
    /// it has features. Its current period is not a record: it comes from the epoch (see
    /// [`crate::input::Inputs::ticks`]).
    Registered,
    /// The SKU's category id (catalog).
    Category(Id),
    /// The SKU's lead time in days (catalog).
    LeadTime(i64),
    /// The SKU's pack size, milli-units (catalog).
    PackSize(i64),
    /// The SKU's minimum order quantity, milli-units (catalog).
    MinOrder(i64),
    /// The SKU is no longer sold (catalog).
    ItemInactive,
    /// The store is closed.
    StoreInactive,
    /// A price plan entry: the SKU's planned unit price (milli-currency) over periods
    /// `start..=end`. Last, so that the encoding of the records before it did not change.
    Price {
        /// First period covered.
        start: Period,
        /// Last period covered.
        end: Period,
        /// Planned unit price.
        price: i64,
    },
}

/// Value of a feature that cannot be computed (no stock data, no price seen).
pub const MISSING: i64 = i64::MIN;

/// A feature vector in the schema's order, each value scaled by its feature's scale.
///
/// The values are shared: the features operator keeps the vector it emitted and sends the same
/// one on, and a clone costs a reference count rather than a copy of every value.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FeatureVec(pub std::sync::Arc<[i64]>);

impl From<Vec<i64>> for FeatureVec {
    fn from(values: Vec<i64>) -> Self {
        FeatureVec(values.into())
    }
}

impl From<&[i64]> for FeatureVec {
    fn from(values: &[i64]) -> Self {
        FeatureVec(values.into())
    }
}

impl FeatureVec {
    /// The raw scaled value of feature `i`, or `None` when missing.
    #[inline]
    pub fn raw(&self, i: usize) -> Option<i64> {
        self.0.get(i).copied().filter(|v| *v != MISSING)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agg_is_an_abelian_group() {
        let sale = Event::Sale {
            key: Key { store: 1, sku: 2 },
            ts: 0,
            qty: 2500,
            unit_price: Some(1990),
            promo: true,
        };
        let a = Agg::of_event(&sale).unwrap();
        let mut b = a;
        b.negate();
        let mut c = a;
        c.plus_equals(&b);
        assert!(c.is_zero());
        assert_eq!(a.on_hand, -2500);
        assert_eq!(a.multiply(&2).qty, 5000);
    }

    #[test]
    fn totals_stay_compact() {
        assert_eq!(std::mem::size_of::<Agg>(), 48);
    }

    #[test]
    fn receipts_move_stock_from_order_to_hand() {
        let ev = Event::Stock {
            key: Key { store: 1, sku: 2 },
            ts: 0,
            kind: StockKind::Receipt,
            qty: 4000,
        };
        let a = Agg::of_event(&ev).unwrap();
        assert_eq!((a.on_hand, a.on_order, a.stock_n), (4000, -4000, 1));
        assert_eq!(a.stock_part().qty, 0);
    }
}

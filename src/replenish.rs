//! Order recommendations from a quantile forecast and the stock position (periodic review,
//! order-up-to policy).
//!
//! # Method and assumptions
//! - Each future period's demand is summarised from its forecast quantiles: mean by Swanson's
//!   rule, `0.3 p10 + 0.4 p50 + 0.3 p90`, and standard deviation `(p90 - p10) / 2.563`, the
//!   spread of a normal whose 0.1 and 0.9 quantiles they are.
//! - The protection interval is the lead time plus the review period, in periods (a lead time of
//!   10 days is 10/7 of a week). A fractional period counts its share of the mean and of the
//!   variance. Periods beyond the forecast horizon repeat the last forecast period.
//! - Periods are taken as independent: the interval's mean is the sum of the means and its
//!   variance the sum of the variances. Forecast errors of neighbouring periods are in truth
//!   positively correlated, so this understates the spread of long intervals; the service level
//!   is the knob that absorbs it, and the replay simulation measures what a setting achieves.
//! - Demand over an interval is normal with that mean and deviation, floored at zero.
//!
//! # Quantities
//! - Order-up-to level `S`: the service-level quantile of demand over the protection interval.
//! - Reorder point: the service-level quantile of demand over the lead time alone.
//! - Recommended order: `max(0, S - on_hand - on_order)`, rounded up to whole packs, raised to
//!   the minimum order quantity when positive; zero for an inactive item or store.
//! - Cover: periods until the mean forecast exhausts what is on hand.
//! - Stock-out risk: the probability that demand over the lead time (before anything ordered now
//!   can arrive) exceeds on hand plus on order.
//!
//! Longer than 600 lines only with its unit tests.

use std::collections::HashMap;

use dataflows::model::Id;
use dataflows::{FeatureVec, PeriodKind, Schema};
use serde::{Deserialize, Serialize};

use crate::config::{CategoryPolicy, ReplenishConfig};
use crate::decode::{CatalogItem, Record, Store};
use crate::forecast::Forecast;

/// Divisor of the 0.1-0.9 quantile range of a normal: `2 * 1.2816`.
const P10_P90_SPAN: f64 = 2.563_103_131_1;

/// What a recommendation needs besides the forecast.
#[derive(Clone, Debug, PartialEq)]
pub struct Position {
    /// Units on hand (negative means unrecorded shrink; treated as 0 available).
    pub on_hand: f64,
    /// Units ordered and not yet received.
    pub on_order: f64,
}

/// Item, store and policy settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    /// Periods from placing an order to its arrival (may be fractional).
    pub lead_time: f64,
    /// Periods between two order decisions.
    pub review: f64,
    /// Target probability of not running out before the next order can arrive, in (0, 1).
    pub service_level: f64,
    /// Units per pack; orders are whole packs.
    pub pack_size: f64,
    /// Smallest order, in units.
    pub min_order_qty: f64,
    /// Item and store both active.
    pub active: bool,
}

/// The numbers a buyer acts on, for one series.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Recommendation {
    /// Units to order now (whole packs; 0 when nothing is needed or the item is inactive).
    pub order_qty: f64,
    /// Order-up-to level, units.
    pub order_up_to: f64,
    /// Reorder point, units.
    pub reorder_point: f64,
    /// Mean demand over the protection interval, units.
    pub protection_demand: f64,
    /// Periods of cover of the stock on hand at the mean forecast (`None` without demand).
    pub cover_periods: Option<f64>,
    /// Probability of a stock-out before an order placed now can arrive.
    pub stockout_risk: f64,
}

/// What a forecast record says about ordering: the recommendation and the policy it follows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Advice {
    /// Units to order now (whole packs); `None` without stock data, when on hand is unknown.
    pub order_qty: Option<f64>,
    /// Order-up-to level, units.
    pub order_up_to: f64,
    /// Reorder point, units.
    pub reorder_point: f64,
    /// Periods the stock on hand lasts at the mean forecast; `None` without stock data or demand.
    pub cover_periods: Option<f64>,
    /// Probability of a stock-out before an order placed now arrives; `None` without stock data.
    pub stockout_risk: Option<f64>,
    /// Lead time used, days.
    pub lead_time_days: f64,
    /// Review period used, days.
    pub review_days: f64,
    /// Service level used.
    pub service_level: f64,
    /// Pack size used, units.
    pub pack_size: f64,
    /// Minimum order used, units.
    pub min_order_qty: f64,
    /// Item and store both active.
    pub active: bool,
}

/// Recommendations from feature vectors: the policy of a series comes from its reference
/// features (`lead_time_days`, `pack_size`, `min_order_qty`, `active`, `category_id`, which the
/// dataflow keeps current from the catalog and store topics) and the configuration.
#[derive(Clone, Debug)]
pub struct Planner {
    cfg: ReplenishConfig,
    days_per_period: f64,
    categories: HashMap<Id, CategoryPolicy>,
    at: PlannerIndex,
}

#[derive(Clone, Debug)]
struct PlannerIndex {
    lead: Option<usize>,
    pack: Option<usize>,
    moq: Option<usize>,
    active: Option<usize>,
    category: Option<usize>,
    on_hand: Option<usize>,
    on_order: Option<usize>,
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

impl Planner {
    /// A planner for vectors of `schema` with `period`-long periods.
    pub fn new(cfg: &ReplenishConfig, schema: &Schema, period: PeriodKind) -> Self {
        Planner {
            cfg: cfg.clone(),
            days_per_period: match period {
                PeriodKind::Day => 1.0,
                PeriodKind::Week => 7.0,
            },
            categories: cfg
                .categories
                .iter()
                .map(|(name, c)| (crate::ids::category_id(name), c.clone()))
                .collect(),
            at: PlannerIndex {
                lead: schema.index("lead_time_days"),
                pack: schema.index("pack_size"),
                moq: schema.index("min_order_qty"),
                active: schema.index("active"),
                category: schema.index("category_id"),
                on_hand: schema.index("on_hand"),
                on_order: schema.index("on_order"),
            },
        }
    }

    /// Units on hand in `vec`, where stock movements were seen.
    pub fn on_hand(&self, schema: &Schema, vec: &FeatureVec) -> Option<f64> {
        self.at.on_hand.and_then(|i| schema.value(vec, i))
    }

    /// Units on order in `vec`, where stock movements were seen.
    pub fn on_order(&self, schema: &Schema, vec: &FeatureVec) -> Option<f64> {
        self.at.on_order.and_then(|i| schema.value(vec, i))
    }

    /// The advice for a series with features `vec` (of the planner's schema) and `forecast`.
    pub fn advise(&self, schema: &Schema, vec: &FeatureVec, forecast: &Forecast) -> Advice {
        let value = |i: Option<usize>| i.and_then(|i| schema.value(vec, i));
        let raw = |i: Option<usize>| {
            i.map(|i| vec.0[i])
                .filter(|v| *v != dataflows::model::MISSING)
        };
        let category = raw(self.at.category).and_then(|c| self.categories.get(&(c as u64)));
        let lead_time_days = value(self.at.lead)
            .filter(|d| *d > 0.0)
            .unwrap_or(f64::from(self.cfg.lead_time_days));
        let review_days = f64::from(
            category
                .and_then(|c| c.review_days)
                .unwrap_or(self.cfg.review_days),
        );
        let policy = Policy {
            lead_time: lead_time_days / self.days_per_period,
            review: review_days / self.days_per_period,
            service_level: category
                .and_then(|c| c.service_level)
                .unwrap_or(self.cfg.service_level),
            pack_size: value(self.at.pack)
                .filter(|p| *p > 0.0)
                .unwrap_or(self.cfg.pack_size),
            min_order_qty: value(self.at.moq).unwrap_or(self.cfg.min_order_qty),
            active: value(self.at.active).is_none_or(|a| a > 0.0),
        };
        let on_hand = value(self.at.on_hand);
        let position = Position {
            on_hand: on_hand.unwrap_or(0.0),
            on_order: value(self.at.on_order).unwrap_or(0.0),
        };
        let r = recommend(forecast, &position, &policy);
        let known = |x: f64| on_hand.is_some().then_some(round3(x));
        Advice {
            order_qty: known(r.order_qty),
            order_up_to: round3(r.order_up_to),
            reorder_point: round3(r.reorder_point),
            cover_periods: r.cover_periods.and_then(known),
            stockout_risk: known(r.stockout_risk),
            lead_time_days,
            review_days,
            service_level: policy.service_level,
            pack_size: policy.pack_size,
            min_order_qty: policy.min_order_qty,
            active: policy.active,
        }
    }
}

/// The catalog and the store list by name; a later record of a key replaces the earlier one.
#[derive(Clone, Debug, Default)]
pub struct Reference {
    items: HashMap<String, CatalogItem>,
    stores: HashMap<String, Store>,
}

impl Reference {
    /// The reference records among `records`, in order.
    pub fn from_records<'a>(records: impl IntoIterator<Item = &'a Record>) -> Self {
        let mut r = Reference::default();
        for record in records {
            r.upsert(record);
        }
        r
    }

    /// Applies one record (anything but catalog and store records is ignored).
    pub fn upsert(&mut self, record: &Record) {
        match record {
            Record::Catalog(item) => {
                self.items.insert(item.sku_id.clone(), item.clone());
            }
            Record::Store(store) => {
                self.stores.insert(store.store_id.clone(), store.clone());
            }
            _ => {}
        }
    }

    /// Removes a catalog item (a deletion on its compacted topic).
    pub fn remove_item(&mut self, sku: &str) {
        self.items.remove(sku);
    }

    /// Removes a store.
    pub fn remove_store(&mut self, store: &str) {
        self.stores.remove(store);
    }

    /// The catalog entry of `sku`, if any.
    pub fn item(&self, sku: &str) -> Option<&CatalogItem> {
        self.items.get(sku)
    }

    /// The policy of one series: the catalog's lead time, pack and minimum order where it has
    /// them, else `cfg`'s defaults; the category's service level and review period where `cfg`
    /// overrides them; inactive when the item or the store is. An unknown item or store counts
    /// as active. Days become periods of `period` (a 10-day lead time is 10/7 of a week).
    pub fn policy(
        &self,
        cfg: &ReplenishConfig,
        period: PeriodKind,
        store: &str,
        sku: &str,
    ) -> Policy {
        let days = match period {
            PeriodKind::Day => 1.0,
            PeriodKind::Week => 7.0,
        };
        let item = self.items.get(sku);
        let category = item
            .and_then(|i| i.category.as_deref())
            .and_then(|c| cfg.categories.get(c));
        let units = |milli: Option<i64>| milli.map(|m| m as f64 / 1000.0);
        let lead_days = item
            .and_then(|i| i.lead_time_days)
            .filter(|d| *d > 0)
            .map_or(f64::from(cfg.lead_time_days), |d| d as f64);
        let review_days = category
            .and_then(|c| c.review_days)
            .unwrap_or(cfg.review_days);
        Policy {
            lead_time: lead_days / days,
            review: f64::from(review_days) / days,
            service_level: category
                .and_then(|c| c.service_level)
                .unwrap_or(cfg.service_level),
            pack_size: units(item.and_then(|i| i.pack_size))
                .filter(|p| *p > 0.0)
                .unwrap_or(cfg.pack_size),
            min_order_qty: units(item.and_then(|i| i.min_order_qty)).unwrap_or(cfg.min_order_qty),
            active: item.is_none_or(|i| i.active)
                && self.stores.get(store).is_none_or(|s| s.active),
        }
    }
}

/// Mean and standard deviation of demand over the first `periods` periods (fractional allowed).
pub fn interval_demand(f: &Forecast, periods: f64) -> (f64, f64) {
    let n = f.p50.len();
    if n == 0 || periods <= 0.0 {
        return (0.0, 0.0);
    }
    let (mut mean, mut var) = (0.0, 0.0);
    let mut left = periods;
    let mut h = 0;
    while left > 0.0 {
        let k = h.min(n - 1);
        let share = left.min(1.0);
        let (lo, mid, hi) = (f.p10[k].max(0.0), f.p50[k].max(0.0), f.p90[k].max(0.0));
        let m = 0.3 * lo + 0.4 * mid + 0.3 * hi;
        let sd = (hi - lo).max(0.0) / P10_P90_SPAN;
        mean += share * m;
        var += share * sd * sd;
        left -= share;
        h += 1;
    }
    (mean, var.sqrt())
}

/// Standard normal CDF, from the complementary error function (Chebyshev fit, |error| < 1.2e-7).
pub fn normal_cdf(z: f64) -> f64 {
    let x = z.abs() / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.5 * x);
    let poly = -x * x - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let erfc = t * poly.exp();
    if z >= 0.0 {
        1.0 - 0.5 * erfc
    } else {
        0.5 * erfc
    }
}

/// The z whose standard normal CDF is `p` (bisection on [`normal_cdf`]), `p` in (0, 1).
/// Every series of a category shares its service level, so the last answer on this thread is
/// kept: the bisection takes 80 evaluations of the CDF.
pub fn normal_quantile(p: f64) -> f64 {
    thread_local! {
        static LAST: std::cell::Cell<(f64, f64)> = const { std::cell::Cell::new((f64::NAN, 0.0)) };
    }
    let (last_p, last_z) = LAST.get();
    if last_p == p {
        return last_z;
    }
    let z = bisect_quantile(p);
    LAST.set((p, z));
    z
}

fn bisect_quantile(p: f64) -> f64 {
    let p = p.clamp(1e-9, 1.0 - 1e-9);
    let (mut lo, mut hi) = (-9.0f64, 9.0f64);
    for _ in 0..80 {
        let mid = 0.5 * (lo + hi);
        if normal_cdf(mid) < p {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

/// Rounds a positive need up to whole packs, at least the minimum order quantity.
pub fn order_size(need: f64, pack: f64, moq: f64) -> f64 {
    if need <= 1e-9 {
        return 0.0;
    }
    let pack = if pack > 0.0 { pack } else { 1.0 };
    let packs = |units: f64| (units / pack - 1e-9).ceil().max(1.0) * pack;
    let q = packs(need);
    if q < moq {
        packs(moq)
    } else {
        q
    }
}

/// The recommendation for one series.
pub fn recommend(f: &Forecast, pos: &Position, policy: &Policy) -> Recommendation {
    let z = normal_quantile(policy.service_level);
    let (mean_t, sd_t) = interval_demand(f, policy.lead_time + policy.review);
    let (mean_l, sd_l) = interval_demand(f, policy.lead_time);
    let order_up_to = (mean_t + z * sd_t).max(0.0);
    let reorder_point = (mean_l + z * sd_l).max(0.0);
    let on_hand = pos.on_hand.max(0.0);
    let available = on_hand + pos.on_order.max(0.0);
    let order_qty = if policy.active {
        order_size(
            order_up_to - available,
            policy.pack_size,
            policy.min_order_qty,
        )
    } else {
        0.0
    };
    let per_period = interval_demand(f, 1.0).0;
    let cover_periods = (per_period > 0.0).then(|| on_hand / per_period);
    let stockout_risk = if sd_l > 0.0 {
        1.0 - normal_cdf((available - mean_l) / sd_l)
    } else if mean_l > available {
        1.0
    } else {
        0.0
    };
    Recommendation {
        order_qty,
        order_up_to,
        reorder_point,
        protection_demand: mean_t,
        cover_periods,
        stockout_risk,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flat(p10: f64, p50: f64, p90: f64, n: usize) -> Forecast {
        Forecast {
            p10: vec![p10; n],
            p50: vec![p50; n],
            p90: vec![p90; n],
            fallback: None,
        }
    }

    fn policy() -> Policy {
        Policy {
            lead_time: 1.0,
            review: 1.0,
            service_level: 0.95,
            pack_size: 6.0,
            min_order_qty: 12.0,
            active: true,
        }
    }

    #[test]
    fn policies_come_from_the_catalog_then_the_category_then_the_defaults() {
        let mut cfg = ReplenishConfig::default();
        cfg.categories.insert(
            "FROZEN".into(),
            crate::config::CategoryPolicy {
                service_level: Some(0.99),
                review_days: Some(14),
            },
        );
        let item = |sku: &str, category: Option<&str>, lead: Option<i64>, active| {
            Record::Catalog(CatalogItem {
                sku_id: sku.into(),
                category: category.map(str::to_string),
                pack_size: Some(12_000),
                lead_time_days: lead,
                min_order_qty: Some(24_000),
                active,
            })
        };
        let mut r = Reference::from_records(&[
            item("ice", Some("FROZEN"), Some(3), true),
            item("gum", None, None, true),
            Record::Store(Store {
                store_id: "closed".into(),
                region: None,
                active: false,
            }),
        ]);
        let ice = r.policy(&cfg, PeriodKind::Week, "s1", "ice");
        assert_eq!(
            (
                ice.service_level,
                ice.review,
                ice.pack_size,
                ice.min_order_qty
            ),
            (0.99, 2.0, 12.0, 24.0)
        );
        assert!((ice.lead_time - 3.0 / 7.0).abs() < 1e-12 && ice.active);
        let gum = r.policy(&cfg, PeriodKind::Day, "s1", "gum");
        assert_eq!(
            (gum.lead_time, gum.review, gum.service_level),
            (7.0, 7.0, 0.95)
        );
        let unknown = r.policy(&cfg, PeriodKind::Day, "s1", "new");
        assert_eq!((unknown.pack_size, unknown.min_order_qty), (1.0, 0.0));
        assert!(unknown.active);
        assert!(!r.policy(&cfg, PeriodKind::Day, "closed", "gum").active);
        // A later record replaces the earlier one.
        r.upsert(&item("gum", None, Some(2), false));
        let gum = r.policy(&cfg, PeriodKind::Day, "s1", "gum");
        assert_eq!((gum.lead_time, gum.active), (2.0, false));
    }

    #[test]
    fn the_planner_reads_reference_features_and_category_overrides() {
        let schema = dataflows::FeatureSpec::daily().schema();
        let mut v = vec![dataflows::model::MISSING; schema.features.len()];
        let mut set = |name: &str, x: i64| v[schema.index(name).unwrap()] = x;
        set("lead_time_days", 14);
        set("pack_size", 6_000);
        set("active", 1);
        set("category_id", crate::ids::category_id("FROZEN") as i64);
        set("on_hand", 5_000);
        set("on_order", 0);
        let mut cfg = ReplenishConfig::default();
        cfg.categories.insert(
            "FROZEN".into(),
            CategoryPolicy {
                service_level: Some(0.99),
                review_days: Some(3),
            },
        );
        let planner = Planner::new(&cfg, &schema, PeriodKind::Day);
        let f = flat(8.0, 10.0, 12.0, 28);
        let a = planner.advise(&schema, &FeatureVec::from(v.clone()), &f);
        assert_eq!(
            (
                a.lead_time_days,
                a.review_days,
                a.service_level,
                a.pack_size
            ),
            (14.0, 3.0, 0.99, 6.0)
        );
        let qty = a.order_qty.unwrap();
        assert!(qty > 0.0 && qty % 6.0 == 0.0, "{a:?}");
        assert!(a.order_up_to > 170.0, "17 days of ~10 a day: {a:?}");
        assert_eq!(a.cover_periods, Some(0.5));
        // Without stock data, nothing that needs on hand is claimed.
        v[schema.index("on_hand").unwrap()] = dataflows::model::MISSING;
        let a = planner.advise(&schema, &FeatureVec::from(v), &f);
        assert_eq!(
            (a.order_qty, a.stockout_risk, a.cover_periods),
            (None, None, None)
        );
        assert_eq!(a.order_up_to, a.order_up_to.max(170.0));
    }

    #[test]
    fn the_normal_functions_match_known_values() {
        assert!((normal_cdf(0.0) - 0.5).abs() < 1e-7);
        assert!((normal_cdf(1.959_964) - 0.975).abs() < 1e-6);
        assert!((normal_quantile(0.9) - 1.281_551_6).abs() < 1e-5);
        assert!((normal_quantile(0.05) + 1.644_853_6).abs() < 1e-5);
    }

    #[test]
    fn interval_demand_sums_means_and_variances_with_fractions() {
        // Symmetric quantiles: mean = p50, sd = 2.563 / 2.563 = 1 per period.
        let f = flat(9.0 - 1.281_551_6, 9.0, 9.0 + 1.281_551_6, 3);
        let (m, sd) = interval_demand(&f, 2.5);
        assert!((m - 22.5).abs() < 1e-9);
        assert!((sd - 2.5f64.sqrt()).abs() < 1e-6);
        // Beyond the horizon the last period repeats.
        assert!((interval_demand(&f, 5.0).0 - 45.0).abs() < 1e-9);
    }

    #[test]
    fn order_up_to_packs_minimum_and_inactive() {
        let f = flat(8.0, 10.0, 12.0, 8);
        let pos = Position {
            on_hand: 5.0,
            on_order: 3.0,
        };
        let r = recommend(&f, &pos, &policy());
        let sd = (2.0 * (4.0 / P10_P90_SPAN).powi(2)).sqrt();
        let s = 20.0 + 1.644_853_6 * sd;
        assert!((r.order_up_to - s).abs() < 1e-4, "{}", r.order_up_to);
        // Need s - 8 ~ 14.2 units: three packs of 6.
        assert_eq!(r.order_qty, 18.0);
        assert!((r.cover_periods.unwrap() - 0.5).abs() < 1e-9);
        assert!(r.stockout_risk > 0.5, "8 available against a mean of 10");
        // A small need is raised to the minimum order, in packs.
        let full = Position {
            on_hand: s - 1.0,
            on_order: 0.0,
        };
        assert_eq!(recommend(&f, &full, &policy()).order_qty, 12.0);
        // Enough stock: nothing; inactive: nothing whatever the need.
        let plenty = Position {
            on_hand: 100.0,
            on_order: 0.0,
        };
        assert_eq!(recommend(&f, &plenty, &policy()).order_qty, 0.0);
        let off = Policy {
            active: false,
            ..policy()
        };
        assert_eq!(recommend(&f, &pos, &off).order_qty, 0.0);
    }

    #[test]
    fn a_higher_service_level_or_longer_lead_time_orders_more() {
        let f = flat(0.0, 4.0, 12.0, 8);
        let pos = Position {
            on_hand: 2.0,
            on_order: 0.0,
        };
        let base = recommend(&f, &pos, &policy());
        let safer = recommend(
            &f,
            &pos,
            &Policy {
                service_level: 0.99,
                ..policy()
            },
        );
        let longer = recommend(
            &f,
            &pos,
            &Policy {
                lead_time: 3.0,
                ..policy()
            },
        );
        assert!(safer.order_up_to > base.order_up_to);
        assert!(longer.order_up_to > base.order_up_to);
        assert!(longer.reorder_point > base.reorder_point);
    }
}

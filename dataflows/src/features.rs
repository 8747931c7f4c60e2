//! The feature schema and the computation of one series' feature vector.
//!
//! A series' state is a handful of per-period totals ([`Agg`]) inside a retention window of
//! [`FeatureSpec::retention`] periods ([`PeriodRing`]), its stock position over all periods, the
//! calendar promotions that apply to it, and the current period. Every feature is a pure
//! function of that state; [`compute`] evaluates them all in schema order with one pass over the
//! window by age, and is the definition. [`compute_ring`] evaluates the same from the running
//! totals a [`PeriodRing`] keeps (its [`RingPlan`] says which), reading a few values instead of
//! the window; the features operator uses it, and debug builds check it against [`compute`].
//!
//! Longer than 600 lines: the feature definitions, the dense window that maintains their totals,
//! and `compute`, the plain definition the window is checked against in every debug build, are kept
//! side by side so they cannot drift apart.

use serde::{Deserialize, Serialize};

use crate::model::{Agg, FeatureVec, ItemAttrs, MISSING};
use crate::time::{weekday_of_day, Period, PeriodKind};

/// Weeks in a year for the same-week-last-year features.
pub const WEEKS_PER_YEAR: u32 = 52;

/// The longest history, in periods, a spec may read.
pub const MAX_RETENTION: u32 = 1000;

/// What features to maintain; all windows count periods of `period`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureSpec {
    /// Length of a demand period.
    pub period: PeriodKind,
    /// Windows of the rolling sums `sales_sum_<N><d|w>`.
    pub windows: Vec<u32>,
    /// Demand of the current and past periods `sales_lag_0..=lags`.
    pub lags: u32,
    /// Window of mean, standard deviation, zero-demand, stock-out and promotion counts.
    pub stats_window: u32,
    /// Window of the average price that `price_rel_*` compares the last price with.
    pub price_window: u32,
    /// Daily mode: weeks averaged in the weekday profile.
    pub profile_weeks: u32,
    /// Forecast horizon in periods: promotions ahead, and same-week-last-year in weekly mode.
    pub horizon: u32,
}

/// A feature's name and the fixed-point scale of its integer value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureDef {
    /// Column name, stable across releases.
    pub name: String,
    /// Divide the stored integer by this to get the value (1000 for milli-units, 1 for counts).
    pub scale: i64,
}

/// The ordered list of features and its hash: the contract between the dataflow and models.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schema {
    /// Features in vector order.
    pub features: Vec<FeatureDef>,
    /// FNV-1a 64 hash of the newline-joined names, as 16 hex digits.
    pub hash: String,
}

impl Schema {
    /// Position of a feature by name.
    #[inline]
    pub fn index(&self, name: &str) -> Option<usize> {
        self.features.iter().position(|f| f.name == name)
    }

    /// The ordered feature names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.features.iter().map(|f| f.name.as_str())
    }

    /// Value of feature `i` in natural units, `None` when missing.
    #[inline]
    pub fn value(&self, vec: &FeatureVec, i: usize) -> Option<f64> {
        vec.raw(i).map(|v| v as f64 / self.features[i].scale as f64)
    }
}

/// Why a spec cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError(pub String);

impl std::fmt::Display for SpecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SpecError {}

/// Features that describe the series for replenishment rather than its demand: the catalog's
/// lead time, pack size and minimum order, whether item and store are active, and the
/// category's id (its name's [`fnv1a64`] as `i64`). They come last in every schema.
pub const REFERENCE_FEATURES: [&str; 5] = [
    "lead_time_days",
    "pack_size",
    "min_order_qty",
    "active",
    "category_id",
];

const WEEKDAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

impl FeatureSpec {
    /// Defaults for daily demand.
    pub fn daily() -> Self {
        FeatureSpec {
            period: PeriodKind::Day,
            windows: vec![1, 7, 14, 28, 56],
            lags: 7,
            stats_window: 28,
            price_window: 28,
            profile_weeks: 8,
            horizon: 28,
        }
    }

    /// Defaults for weekly demand.
    pub fn weekly() -> Self {
        FeatureSpec {
            period: PeriodKind::Week,
            windows: vec![1, 4, 8, 13, 26, 52],
            lags: 8,
            stats_window: 13,
            price_window: 4,
            profile_weeks: 0,
            horizon: 8,
        }
    }

    /// Defaults for a period kind.
    pub fn for_period(period: PeriodKind) -> Self {
        match period {
            PeriodKind::Day => Self::daily(),
            PeriodKind::Week => Self::weekly(),
        }
    }

    /// Checks the windows make sense together.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.windows.is_empty() || self.windows.contains(&0) {
            return Err(SpecError(
                "windows must be a non-empty list of positive lengths".into(),
            ));
        }
        if self.stats_window == 0 || self.price_window == 0 || self.horizon == 0 {
            return Err(SpecError(
                "stats_window, price_window and horizon must be positive".into(),
            ));
        }
        if self.period == PeriodKind::Week && self.horizon > WEEKS_PER_YEAR {
            return Err(SpecError(format!(
                "horizon = {} must be at most {WEEKS_PER_YEAR} weeks",
                self.horizon
            )));
        }
        if self.period == PeriodKind::Day && self.profile_weeks == 0 {
            return Err(SpecError(
                "profile_weeks must be positive in daily mode".into(),
            ));
        }
        Ok(())
    }

    /// Periods of history kept per series: the oldest period any feature reads, plus one.
    /// Data of older periods can no longer change a feature.
    pub fn retention(&self) -> u32 {
        let mut oldest_age = *self.windows.iter().max().unwrap_or(&1) - 1;
        oldest_age = oldest_age.max(self.lags);
        // Stock-outs look at the `stats_window` periods that have ended.
        oldest_age = oldest_age.max(self.stats_window);
        oldest_age = oldest_age.max(self.price_window - 1);
        match self.period {
            PeriodKind::Day => oldest_age = oldest_age.max(7 * self.profile_weeks - 1),
            PeriodKind::Week => oldest_age = oldest_age.max(WEEKS_PER_YEAR),
        }
        oldest_age + 1
    }

    /// The feature schema this spec produces.
    pub fn schema(&self) -> Schema {
        let u = self.period.suffix();
        let mut features = Vec::new();
        let mut push = |name: String, scale: i64| features.push(FeatureDef { name, scale });
        for k in 0..=self.lags {
            push(format!("sales_lag_{k}{u}"), 1000);
        }
        for w in &self.windows {
            push(format!("sales_sum_{w}{u}"), 1000);
        }
        let s = self.stats_window;
        push(format!("sales_mean_{s}{u}"), 1000);
        push(format!("sales_std_{s}{u}"), 1000);
        match self.period {
            PeriodKind::Day => {
                for d in WEEKDAYS {
                    push(format!("weekday_mean_{d}"), 1000);
                }
            }
            PeriodKind::Week => {
                for h in 0..=self.horizon {
                    push(format!("sales_ly_h{h}"), 1000);
                }
            }
        }
        push("periods_since_sale".into(), 1);
        push(format!("zero_periods_{s}{u}"), 1);
        push(format!("stockout_periods_{s}{u}"), 1);
        push(format!("promo_periods_{s}{u}"), 1);
        push("price_last".into(), 1000);
        push(format!("price_rel_{}{u}", self.price_window), 1000);
        push("promo_now".into(), 1);
        push(format!("promo_periods_next_{}{u}", self.horizon), 1);
        for h in 1..=self.horizon {
            push(format!("promo_next_h{h}"), 1);
        }
        push("price_now_rel_regular".into(), 1000);
        push(format!("plan_periods_next_{}{u}", self.horizon), 1);
        for h in 1..=self.horizon {
            push(format!("plan_price_rel_h{h}"), 1000);
            push(format!("plan_discount_h{h}"), 1000);
            push(format!("plan_cut_h{h}"), 1);
        }
        push("on_hand".into(), 1000);
        push("on_order".into(), 1000);
        push("lead_time_days".into(), 1);
        push("pack_size".into(), 1000);
        push("min_order_qty".into(), 1000);
        push("active".into(), 1);
        push("category_id".into(), 1);
        let joined: Vec<&str> = features.iter().map(|f| f.name.as_str()).collect();
        let hash = format!("{:016x}", fnv1a64(joined.join("\n").as_bytes()));
        Schema { features, hash }
    }
}

/// FNV-1a, 64 bit: a stable hash for names and schemas (never changes between builds).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// `num / den` rounded half away from zero.
pub fn div_round(num: i128, den: i128) -> i64 {
    debug_assert!(den > 0);
    // Stay in 64-bit arithmetic when possible: 128-bit division is a slow library call.
    if let (Ok(n), Ok(d)) = (i64::try_from(num), i64::try_from(den)) {
        if n > i64::MIN / 2 && n < i64::MAX / 2 {
            return if n >= 0 {
                (n + d / 2) / d
            } else {
                -((-n + d / 2) / d)
            };
        }
    }
    let q = if num >= 0 {
        (num + den / 2) / den
    } else {
        -((-num + den / 2) / den)
    };
    q as i64
}

/// Mean and population standard deviation (both in the units of `xs`) of a window.
pub fn mean_std(xs: impl Iterator<Item = i64>, n: u32) -> (i64, i64) {
    let (mut sum, mut sumsq) = (0i128, 0i128);
    for x in xs {
        sum += i128::from(x);
        sumsq += i128::from(x) * i128::from(x);
    }
    let n = i128::from(n);
    let var_num = (n * sumsq - sum * sum).max(0);
    let std = ((var_num as f64).sqrt() / n as f64).round() as i64;
    (div_round(sum, n), std)
}

/// What a [`PeriodRing`] keeps running totals of: the ages each windowed feature reads, from a
/// spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RingPlan {
    /// Periods in the window ([`FeatureSpec::retention`]).
    retention: usize,
    /// The rolling-sum windows, in the spec's order.
    windows: Vec<usize>,
    /// The statistics window (mean, deviation, zero-demand, stock-out and promotion periods).
    stats: usize,
    /// The price window, at most the retention.
    price: usize,
    /// Daily mode: the days of the weekday profile; 0 in weekly mode.
    profile_days: usize,
    /// 64-bit words in one mask of ages or slots.
    words: usize,
}

impl RingPlan {
    /// The plan of a spec.
    pub fn new(spec: &FeatureSpec) -> Self {
        let retention = spec.retention() as usize;
        RingPlan {
            retention,
            windows: spec
                .windows
                .iter()
                .map(|w| (*w as usize).min(retention))
                .collect(),
            stats: spec.stats_window as usize,
            price: (spec.price_window as usize).min(retention),
            profile_days: match spec.period {
                PeriodKind::Day => 7 * spec.profile_weeks as usize,
                PeriodKind::Week => 0,
            },
            words: retention.div_ceil(64),
        }
    }
}

/// The per-period totals of one series inside its retention window, with running totals of
/// what the windowed features read, so that evaluating a series reads a few values instead of
/// its whole history.
///
/// Period totals are stored densely, one slot per period: the net units in a row of their own
/// (the lags and the rolling windows read several periods' units at once), the other totals
/// of a slot together in half a cache line (a change of a period writes one line, not one per
/// field). Slots run backwards in time: the period of age `a` (`now - a`) lives in slot
/// `(head + a) % R`, and a rollover reuses the slot of the period that leaves the window for
/// the one that enters it. Beside
/// them: the units of each rolling window, the statistics window's units and squares, the
/// weekday profile's units by weekday, the price window's prices, and masks by age of the
/// periods with sales, promotion sales, prices and stock movements. Every change of a period
/// total updates the running totals it falls in; every period that leaves a window is taken
/// out of that window's totals when the window moves past it. [`compute_ring`] reads them.
#[derive(Clone, Debug)]
pub struct PeriodRing {
    /// The period of age 0.
    now: Period,
    /// The slot of age 0.
    head: usize,
    /// Net units sold (`R` slots), then the net units of each rolling window, in the plan's
    /// order.
    qty: Box<[i64]>,
    /// The other totals, `R` slots.
    slots: Box<[Slot]>,
    /// Masks of `words` words each: slots holding a non-zero total (bit `s % 64` of word
    /// `s / 64` for slot `s`), then ages with net units above zero, with sales on promotion,
    /// with priced sales, with stock movements, and (ages from 1 on) whose period ended with
    /// on hand at or below zero (bit `a` for age `a`).
    bits: Box<[u64]>,
    /// Net units over the statistics window.
    stats_sum: i128,
    /// Squares of each period's net units over the statistics window.
    stats_sumsq: i128,
    /// Daily mode: net units over the weekday profile's days, by weekday of the period.
    weekdays: [i128; 7],
    /// Sum of unit prices over the price window.
    price_sum: i128,
    /// Priced sales over the price window.
    price_n: i64,
    /// Stock movements over the whole window.
    stock_n: i64,
    /// Whether the `LOW` mask holds the ages whose period ended with nothing on hand, given
    /// the series' stock total. Changes of the newest period move the total and the levels
    /// of that period alike, leaving the older periods' levels as they were; any other stock
    /// change moves them all, and the mask is rebuilt before it is read again.
    levels_known: bool,
}

/// The totals of one period of a [`PeriodRing`] other than its net units; aligned so that a
/// slot never straddles two cache lines.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C, align(32))]
struct Slot {
    /// Change of on-hand stock, milli-units.
    on_hand: i64,
    /// Sum of unit prices over priced sales, milli-currency.
    price_sum: i64,
    /// Priced sales.
    price_n: i32,
    /// Sales on promotion.
    promo_n: i32,
    /// Stock movements.
    stock_n: i32,
}
/// Masks of [`PeriodRing::bits`].
const USED: usize = 0;
const SOLD: usize = 1;
const PROMOTED: usize = 2;
const PRICED: usize = 3;
const STOCKED: usize = 4;
const LOW: usize = 5;
const MASKS: usize = 6;

/// Whether bit `i` of a mask is set.
fn bit(mask: &[u64], i: usize) -> bool {
    mask[i / 64] & (1 << (i % 64)) != 0
}

/// Sets bit `i` of a mask to `on`.
fn set_bit(mask: &mut [u64], i: usize, on: bool) {
    let b = 1 << (i % 64);
    if on {
        mask[i / 64] |= b;
    } else {
        mask[i / 64] &= !b;
    }
}

/// The lowest set bit of a mask.
fn first_bit(mask: &[u64]) -> Option<usize> {
    let w = mask.iter().position(|w| *w != 0)?;
    Some(w * 64 + mask[w].trailing_zeros() as usize)
}

/// The highest set bit of a mask.
fn last_bit(mask: &[u64]) -> Option<usize> {
    let w = mask.iter().rposition(|w| *w != 0)?;
    Some(w * 64 + 63 - mask[w].leading_zeros() as usize)
}

/// Set bits of a mask below bit `n`.
fn count_below(mask: &[u64], n: usize) -> usize {
    let (full, rest) = (n / 64, n % 64);
    let mut count: u32 = mask[..full].iter().map(|w| w.count_ones()).sum();
    if rest > 0 {
        count += (mask[full] & ((1 << rest) - 1)).count_ones();
    }
    count as usize
}

/// Moves every bit of a mask one place up (age `a` becomes `a + 1`), dropping those that
/// reach bit `len`.
fn shift_up(mask: &mut [u64], len: usize) {
    for w in (0..mask.len()).rev() {
        let carry = if w > 0 { mask[w - 1] >> 63 } else { 0 };
        mask[w] = (mask[w] << 1) | carry;
    }
    if !len.is_multiple_of(64) {
        mask[len / 64] &= (1 << (len % 64)) - 1;
    }
}

impl PeriodRing {
    /// An empty window of the plan's retention ending with `now`.
    pub fn new(plan: &RingPlan, now: Period) -> Self {
        let r = plan.retention.max(1);
        PeriodRing {
            now,
            head: 0,
            qty: vec![0; r + plan.windows.len()].into_boxed_slice(),
            slots: vec![Slot::default(); r].into_boxed_slice(),
            bits: vec![0; MASKS * plan.words.max(1)].into_boxed_slice(),
            stats_sum: 0,
            stats_sumsq: 0,
            weekdays: [0; 7],
            price_sum: 0,
            price_n: 0,
            stock_n: 0,
            levels_known: false,
        }
    }

    /// Calls `f` with every period of the window that holds a non-zero total, and its totals
    /// (the window keeps no on-order change nor record count per period: those are 0).
    pub fn for_each_period(&self, mut f: impl FnMut(Period, Agg)) {
        let used = self.mask(USED);
        for age in 0..self.len() {
            let s = self.slot_of_age(age);
            if !bit(used, s) {
                continue;
            }
            let slot = &self.slots[s];
            f(
                self.now - age as Period,
                Agg {
                    qty: self.qty[s],
                    price_sum: slot.price_sum,
                    on_hand: slot.on_hand,
                    price_n: slot.price_n,
                    promo_n: slot.promo_n,
                    stock_n: slot.stock_n,
                    ..Agg::default()
                },
            );
        }
    }

    /// Periods in the window.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Never true: a window holds at least one period.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The newest period in the window.
    pub fn now(&self) -> Period {
        self.now
    }

    /// One of the masks.
    fn mask(&self, m: usize) -> &[u64] {
        let words = self.bits.len() / MASKS;
        &self.bits[m * words..(m + 1) * words]
    }

    fn mask_mut(&mut self, m: usize) -> &mut [u64] {
        let words = self.bits.len() / MASKS;
        &mut self.bits[m * words..(m + 1) * words]
    }

    /// Periods of the window that hold a non-zero total.
    pub fn occupied(&self) -> u32 {
        self.mask(USED).iter().map(|w| w.count_ones()).sum()
    }

    /// The slot of the period of age `a` (below the retention).
    fn slot_of_age(&self, a: usize) -> usize {
        let s = self.head + a;
        if s >= self.len() {
            s - self.len()
        } else {
            s
        }
    }

    /// The age of period `p`, if it lies inside the window.
    fn age(&self, p: Period) -> Option<usize> {
        usize::try_from(i64::from(self.now) - i64::from(p))
            .ok()
            .filter(|a| *a < self.len())
    }

    /// Net units of the period of age `a`.
    fn qty_at(&self, a: usize) -> i64 {
        self.qty[self.slot_of_age(a)]
    }

    /// The other totals of the period of age `a`.
    fn slot_at(&self, a: usize) -> &Slot {
        &self.slots[self.slot_of_age(a)]
    }

    /// The net units of each rolling window, in the plan's order.
    fn window_sums(&self) -> &[i64] {
        &self.qty[self.len()..]
    }

    /// Adds `agg` to the totals of period `p` and to the running totals it falls in; returns
    /// false, changing nothing, when `p` lies outside the window. The stock position's
    /// `on_order` is not kept per period. `agg` counts as new stock: the series' stock total
    /// grows by it too (a period moved in from elsewhere calls for
    /// [`PeriodRing::stock_levels_moved`]).
    pub fn add(&mut self, plan: &RingPlan, p: Period, agg: &Agg) -> bool {
        let Some(age) = self.age(p) else {
            return false;
        };
        if age > 0 && agg.on_hand != 0 {
            self.levels_known = false;
        }
        let (r, s) = (self.len(), self.slot_of_age(age));
        let old_qty = self.qty[s];
        let qty = old_qty + agg.qty;
        self.qty[s] = qty;
        let slot = &mut self.slots[s];
        slot.on_hand += agg.on_hand;
        slot.price_sum += agg.price_sum;
        slot.price_n += agg.price_n;
        slot.promo_n += agg.promo_n;
        slot.stock_n += agg.stock_n;
        let slot = *slot;
        let used = qty != 0 || slot != Slot::default();
        let (priced, promoted, stocked) = (slot.price_n > 0, slot.promo_n > 0, slot.stock_n > 0);
        for (i, w) in plan.windows.iter().enumerate() {
            if age < *w {
                self.qty[r + i] += agg.qty;
            }
        }
        if age < plan.stats {
            self.stats_sum += i128::from(agg.qty);
            self.stats_sumsq += i128::from(qty) * i128::from(qty);
            self.stats_sumsq -= i128::from(old_qty) * i128::from(old_qty);
        }
        if age < plan.profile_days {
            self.weekdays[weekday_of_day(p)] += i128::from(agg.qty);
        }
        if age < plan.price {
            self.price_sum += i128::from(agg.price_sum);
            self.price_n += i64::from(agg.price_n);
        }
        self.stock_n += i64::from(agg.stock_n);
        set_bit(self.mask_mut(USED), s, used);
        set_bit(self.mask_mut(SOLD), age, qty > 0);
        set_bit(self.mask_mut(PROMOTED), age, promoted);
        set_bit(self.mask_mut(PRICED), age, priced);
        set_bit(self.mask_mut(STOCKED), age, stocked);
        true
    }

    /// Moves the window forward to end with `now`, taking the periods that leave each window
    /// out of its running totals and emptying the slots of those that leave the retention;
    /// `on_hand` is the series' stock total, which every period that begins ends with so far.
    /// A `now` before the window's changes nothing.
    pub fn advance(&mut self, plan: &RingPlan, now: Period, on_hand: i64) {
        let Ok(shift) = usize::try_from(i64::from(now) - i64::from(self.now)) else {
            return;
        };
        if shift >= self.len() {
            // Every period leaves: nothing of the window remains.
            *self = PeriodRing::new(plan, now);
            return;
        }
        for _ in 0..shift {
            self.step(plan, on_hand);
        }
    }

    /// Notes that the stock total changed by a period outside the window (older than it,
    /// ahead of it, or moved into it from elsewhere): the level every period ended with moves.
    pub fn stock_levels_moved(&mut self) {
        self.levels_known = false;
    }

    /// Rebuilds the mask of periods that ended with nothing on hand, if a stock change since
    /// made it stale, from the series' stock total `on_hand`: a pass over the stock changes
    /// of the whole window.
    pub fn refresh_stock_levels(&mut self, on_hand: i64) {
        if self.levels_known {
            return;
        }
        let r = self.len();
        self.mask_mut(LOW).fill(0);
        let mut end = on_hand;
        for a in 1..r {
            end -= self.slot_at(a - 1).on_hand;
            if end <= 0 {
                set_bit(self.mask_mut(LOW), a, true);
            }
        }
        self.levels_known = true;
    }

    /// Moves the window forward by one period; the period of age 0 ended with `on_hand`.
    fn step(&mut self, plan: &RingPlan, on_hand: i64) {
        let r = self.len();
        // The periods at the last age of each window leave it.
        for (i, w) in plan.windows.iter().enumerate() {
            let leaving = self.qty_at(w - 1);
            self.qty[r + i] -= leaving;
        }
        if plan.stats > 0 {
            let q = i128::from(self.qty_at(plan.stats - 1));
            self.stats_sum -= q;
            self.stats_sumsq -= q * q;
        }
        if plan.profile_days > 0 {
            let a = plan.profile_days - 1;
            let q = self.qty_at(a);
            self.weekdays[weekday_of_day(self.now - a as Period)] -= i128::from(q);
        }
        if plan.price > 0 {
            let a = plan.price - 1;
            let leaving = *self.slot_at(a);
            self.price_sum -= i128::from(leaving.price_sum);
            self.price_n -= i64::from(leaving.price_n);
        }
        self.stock_n -= i64::from(self.slot_at(r - 1).stock_n);
        for m in [SOLD, PROMOTED, PRICED, STOCKED, LOW] {
            shift_up(self.mask_mut(m), r);
        }
        if r > 1 && on_hand <= 0 {
            set_bit(self.mask_mut(LOW), 1, true);
        }
        // The oldest period's slot becomes the new period's, empty.
        self.head = if self.head == 0 { r - 1 } else { self.head - 1 };
        let s = self.head;
        if bit(self.mask(USED), s) {
            self.qty[s] = 0;
            self.slots[s] = Slot::default();
            set_bit(self.mask_mut(USED), s, false);
        }
        self.now += 1;
    }

    /// Asks the processor to fetch what an evaluation reads: the masks, the newest periods'
    /// units, stock changes and prices, and the running totals; with `rollover`, also the
    /// periods a move by one period takes out of the windows.
    pub fn prefetch(&self, plan: &RingPlan, rollover: bool) {
        let r = self.len();
        prefetch(self.bits.as_ptr());
        prefetch(self.window_sums().as_ptr());
        if !self.levels_known {
            for a in (0..=plan.stats.min(r - 1)).step_by(2) {
                prefetch(self.slot_at(a));
            }
        }
        prefetch(&self.qty[self.head]);
        prefetch(self.slot_at(0));
        if rollover {
            for w in &plan.windows {
                prefetch(&self.qty[self.slot_of_age(w - 1)]);
            }
            for a in [plan.stats, plan.profile_days, plan.price] {
                if a > 0 {
                    prefetch(&self.qty[self.slot_of_age(a - 1)]);
                }
            }
            if plan.price > 0 {
                prefetch(self.slot_at(plan.price - 1));
            }
            prefetch(self.slot_at(r - 1));
        }
    }

    /// Whether so few slots are used that visiting them beats copying whole rows.
    fn is_sparse(&self) -> bool {
        self.occupied() as usize * 8 <= self.len()
    }

    /// Net units in age order, into `dst`.
    fn copy_qty_by_age(&self, dst: &mut [i64]) {
        let (r, h) = (self.len(), self.head);
        let src = &self.qty[..r];
        dst[..r - h].copy_from_slice(&src[h..]);
        dst[r - h..].copy_from_slice(&src[..h]);
    }

    /// The periods holding a non-zero total, with their totals (`on_order` and `n` left zero).
    fn used_periods(&self) -> impl Iterator<Item = (Period, Agg)> + '_ {
        let r = self.len();
        self.mask(USED)
            .iter()
            .enumerate()
            .flat_map(move |(w, word)| {
                let mut bits = *word;
                std::iter::from_fn(move || {
                    if bits == 0 {
                        return None;
                    }
                    let s = w * 64 + bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    let age = (s + r - self.head) % r;
                    let slot = &self.slots[s];
                    let agg = Agg {
                        qty: self.qty[s],
                        on_hand: slot.on_hand,
                        price_sum: slot.price_sum,
                        price_n: slot.price_n,
                        promo_n: slot.promo_n,
                        stock_n: slot.stock_n,
                        ..Agg::default()
                    };
                    Some((self.now - age as Period, agg))
                })
            })
    }
}

/// Asks the processor to bring the cache line at `ptr` closer, ahead of a read; a hint that
/// changes no result.
#[inline]
pub fn prefetch<T>(ptr: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch reads nothing into the program and never faults, whatever the
    // address; SSE, which provides it, is part of every x86-64 target.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(ptr.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = ptr;
}

/// One series' state as of period `now`, in the form [`compute`] reads. Reused between series:
/// [`SeriesState::clear`] resets only what was written since.
///
/// Per-period totals are kept field by field in arrays indexed by age (`now - period`), so
/// each feature's loop reads one contiguous array rather than striding over whole totals.
#[derive(Clone, Debug)]
pub struct SeriesState {
    /// Stock totals of every period, inside the window or not: the stock position.
    pub stock: Agg,
    /// Calendar promotions `(start, end)` covering the series.
    pub promos: Vec<(Period, Period)>,
    /// Price plan entries `(start, end, price)` covering the series.
    pub prices: Vec<(Period, Period, i64)>,
    /// The SKU's catalog attributes (all absent and active without a catalog entry).
    pub item: ItemAttrs,
    /// Whether the store is open (true without a store record).
    pub store_open: bool,
    /// Net units sold by age.
    qty: Vec<i64>,
    /// Change of on-hand stock by age.
    on_hand: Vec<i64>,
    /// Sum of unit prices by age.
    price_sum: Vec<i64>,
    /// Priced sales by age.
    price_n: Vec<i32>,
    /// Sales on promotion by age.
    promo_n: Vec<i32>,
    /// Stock movements by age.
    stock_n: Vec<i32>,
    /// Ages written by [`SeriesState::add`] since the last clear.
    touched: Vec<usize>,
    /// Whether [`SeriesState::load`] wrote every age since the last clear.
    loaded: bool,
    /// Scratch: whether a calendar promotion covers `now + offset`, for offsets from
    /// `1 - stats_window` to `horizon`.
    calendar: Vec<bool>,
    /// Scratch: the lowest planned price covering `now + h` for `h` in `0..=horizon` (0 where
    /// none does), and the highest planned price covering `now + 1 - stats_window ..= now +
    /// horizon` (0 without one).
    plan: Vec<i64>,
    plan_high: i64,
    /// Features in the spec's schema: the capacity of a vector.
    width: usize,
    /// Periods of the calendar ahead of now (the spec's horizon).
    horizon: usize,
    /// The largest demand whose square, summed over the statistics window, stays inside
    /// 64 bits.
    square_limit: u64,
    /// Scratch: the values being evaluated, copied into a shared vector only where kept.
    out: Vec<i64>,
}

impl SeriesState {
    /// The values [`evaluate_ring`] (or [`compute_ring`]) computed last, from the buffer they
    /// were built in.
    pub fn last_values(&self) -> &[i64] {
        &self.out
    }

    /// Swaps the buffer of [`SeriesState::last_values`] with `other`: keeps the values without
    /// copying them (the next evaluation overwrites what `other` held).
    pub(crate) fn swap_values(&mut self, other: &mut Vec<i64>) {
        std::mem::swap(&mut self.out, other);
    }

    /// An empty state for a spec's retention.
    pub fn new(spec: &FeatureSpec) -> Self {
        let r = spec.retention() as usize;
        SeriesState {
            stock: Agg::default(),
            promos: Vec::new(),
            prices: Vec::new(),
            item: ItemAttrs::default(),
            store_open: true,
            qty: vec![0; r],
            on_hand: vec![0; r],
            price_sum: vec![0; r],
            price_n: vec![0; r],
            promo_n: vec![0; r],
            stock_n: vec![0; r],
            touched: Vec::new(),
            loaded: false,
            calendar: vec![false; (spec.stats_window + spec.horizon) as usize],
            plan: vec![0; spec.horizon as usize + 1],
            plan_high: 0,
            width: spec.schema().features.len(),
            horizon: spec.horizon as usize,
            square_limit: (i64::MAX / i64::from(spec.stats_window.max(1))).isqrt() as u64,
            out: Vec::new(),
        }
    }

    /// Adds the totals of period `p`; periods outside the window only count towards stock.
    pub fn add(&mut self, now: Period, p: Period, agg: &Agg) {
        use differential_dataflow::difference::Semigroup;
        self.stock.plus_equals(&agg.stock_part());
        self.add_to_window(now, p, agg);
    }

    /// Adds the non-stock-position totals of period `p` to its age, if inside the window.
    fn add_to_window(&mut self, now: Period, p: Period, agg: &Agg) {
        let age = i64::from(now) - i64::from(p);
        if let Some(a) = usize::try_from(age).ok().filter(|a| *a < self.qty.len()) {
            self.qty[a] += agg.qty;
            self.on_hand[a] += agg.on_hand;
            self.price_sum[a] += agg.price_sum;
            self.price_n[a] += agg.price_n;
            self.promo_n[a] += agg.promo_n;
            self.stock_n[a] += agg.stock_n;
            self.touched.push(a);
        }
    }

    /// Sets the window, as of period `now`, to a series' period totals. The stock position is
    /// not touched: it covers periods outside the window too, so the caller keeps it.
    pub fn load(&mut self, now: Period, ring: &PeriodRing) {
        debug_assert_eq!(ring.len(), self.qty.len(), "a ring of another retention");
        if ring.now() == now && ring.len() == self.qty.len() && !ring.is_sparse() {
            self.touched.clear();
            ring.copy_qty_by_age(&mut self.qty);
            for a in 0..ring.len() {
                let slot = ring.slot_at(a);
                self.on_hand[a] = slot.on_hand;
                self.price_sum[a] = slot.price_sum;
                self.price_n[a] = slot.price_n;
                self.promo_n[a] = slot.promo_n;
                self.stock_n[a] = slot.stock_n;
            }
            self.loaded = true;
        } else {
            // Few periods, or a window that ends elsewhere: place the periods one by one.
            self.clear_window();
            for (p, agg) in ring.used_periods() {
                self.add_to_window(now, p, &agg);
            }
        }
    }

    /// Zeroes the window arrays.
    fn clear_window(&mut self) {
        if std::mem::take(&mut self.loaded) {
            self.touched.clear();
            self.qty.fill(0);
            self.on_hand.fill(0);
            self.price_sum.fill(0);
            self.price_n.fill(0);
            self.promo_n.fill(0);
            self.stock_n.fill(0);
        }
        for a in self.touched.drain(..) {
            self.qty[a] = 0;
            self.on_hand[a] = 0;
            self.price_sum[a] = 0;
            self.price_n[a] = 0;
            self.promo_n[a] = 0;
            self.stock_n[a] = 0;
        }
    }

    /// Resets everything but the window, which [`SeriesState::load`] overwrites.
    pub fn clear_context(&mut self) {
        self.stock = Agg::default();
        self.promos.clear();
        self.prices.clear();
        self.item = ItemAttrs::default();
        self.store_open = true;
    }

    /// Empties the state for the next series.
    pub fn clear(&mut self) {
        self.clear_window();
        self.clear_context();
    }

    /// Fills `calendar` for the periods `now + 1 - stats_window ..= now + horizon`.
    fn mark_calendar(&mut self, spec: &FeatureSpec, now: Period) {
        self.calendar.fill(false);
        let first = i64::from(now) + 1 - i64::from(spec.stats_window);
        let last = first + self.calendar.len() as i64 - 1;
        for &(start, end) in &self.promos {
            let from = i64::from(start).max(first);
            let to = i64::from(end).min(last);
            if from <= to {
                self.calendar[(from - first) as usize..=(to - first) as usize].fill(true);
            }
        }
        self.plan.fill(0);
        self.plan_high = 0;
        let now = i64::from(now);
        for &(start, end, price) in &self.prices {
            let (start, end) = (i64::from(start), i64::from(end));
            if start > last || end < first {
                continue;
            }
            self.plan_high = self.plan_high.max(price);
            let from = start.max(now);
            let to = end.min(last);
            for h in from..=to {
                let p = &mut self.plan[(h - now) as usize];
                if *p == 0 || price < *p {
                    *p = price;
                }
            }
        }
    }
}

/// Evaluates every feature of `spec` for a series as of period `now`.
///
/// Every age a feature reads lies inside the retention (see [`FeatureSpec::retention`]), so
/// the loops index the per-age arrays directly, and each pass gathers every feature that reads
/// the same ages: this runs once per changed series per epoch.
pub fn compute(spec: &FeatureSpec, now: Period, st: &mut SeriesState) -> FeatureVec {
    st.mark_calendar(spec, now);
    let st = &*st;
    let r = st.qty.len();
    let s = spec.stats_window as usize;
    let qty = &st.qty[..r];
    let mut out = Vec::with_capacity(st.width);
    out.extend_from_slice(&qty[..=spec.lags as usize]);
    for w in &spec.windows {
        out.push(qty[..(*w as usize).min(r)].iter().sum());
    }

    // The statistics window: demand mean and deviation, zero-demand and promotion periods.
    let (stats, promo_n, past) = (&qty[..s], &st.promo_n[..s], &st.calendar[..s]);
    let (mut sum, mut sumsq, mut zeros, mut promos) = (0i128, 0i128, 0i64, 0i64);
    if stats.iter().all(|x| x.unsigned_abs() <= st.square_limit) {
        // No sum of squares can overflow 64 bits: the usual case, and much cheaper.
        let (mut sum64, mut sumsq64) = (0i64, 0i64);
        for x in stats {
            sum64 += x;
            sumsq64 += x * x;
        }
        (sum, sumsq) = (i128::from(sum64), i128::from(sumsq64));
    } else {
        for x in stats {
            sum += i128::from(*x);
            sumsq += i128::from(*x) * i128::from(*x);
        }
    }
    for a in 0..s {
        zeros += i64::from(stats[a] <= 0);
        // `past` runs from the oldest period of the window to now.
        promos += i64::from(promo_n[a] > 0 || past[s - 1 - a]);
    }
    let n = i128::from(spec.stats_window);
    let var_num = (n * sumsq - sum * sum).max(0);
    out.push(div_round(sum, n));
    out.push(((var_num as f64).sqrt() / n as f64).round() as i64);

    match spec.period {
        PeriodKind::Day => {
            let weeks = spec.profile_weeks as usize;
            let today = weekday_of_day(now);
            // Ages a, a + 7, a + 14, ... share the weekday `today - a`.
            let days = &qty[..7 * weeks];
            let mut totals = [0i128; 7];
            if days
                .iter()
                .all(|x| x.unsigned_abs() <= i64::MAX as u64 / 1024)
                && weeks <= 1024
            {
                // No total can overflow 64 bits.
                let mut narrow = [0i64; 7];
                for week in days.chunks_exact(7) {
                    for (total, x) in narrow.iter_mut().zip(week) {
                        *total += x;
                    }
                }
                totals = narrow.map(i128::from);
            } else {
                for week in days.chunks_exact(7) {
                    for (total, x) in totals.iter_mut().zip(week) {
                        *total += i128::from(*x);
                    }
                }
            }
            let mut profile = [0i64; 7];
            if weeks > 0 {
                for (a, total) in totals.iter().enumerate() {
                    profile[(today + 7 - a) % 7] = div_round(*total, weeks as i128);
                }
            }
            out.extend_from_slice(&profile);
        }
        PeriodKind::Week => {
            for h in 0..=spec.horizon as usize {
                out.push(qty[WEEKS_PER_YEAR as usize - h]);
            }
        }
    }
    out.push(qty.iter().position(|q| *q > 0).unwrap_or(r) as i64);
    out.push(zeros);

    // Stock position over every period, inside the window or not.
    let total = st.stock;
    let tracked = total.stock_n > 0;
    if tracked {
        // Ages of periods whose end is covered by stock data: all of them if stock data lies
        // outside the window, else those no older than the first period with a stock movement.
        let (mut in_window, mut oldest) = (0i64, 0usize);
        for (a, n) in st.stock_n.iter().enumerate() {
            in_window += i64::from(*n);
            if *n > 0 {
                oldest = a;
            }
        }
        let oldest_tracked = if i64::from(total.stock_n) > in_window {
            usize::MAX
        } else {
            oldest
        };
        let on_hand = &st.on_hand[..=s];
        let mut on_hand_end = total.on_hand - on_hand[0];
        let mut stockouts = 0;
        for (a, change) in on_hand.iter().enumerate().skip(1) {
            stockouts += i64::from(a <= oldest_tracked && on_hand_end <= 0);
            on_hand_end -= change;
        }
        out.push(stockouts);
    } else {
        out.push(MISSING);
    }
    out.push(promos);

    let last_price = st
        .price_n
        .iter()
        .position(|n| *n > 0)
        .map(|a| div_round(i128::from(st.price_sum[a]), i128::from(st.price_n[a])));
    out.push(last_price.unwrap_or(MISSING));
    let pw = (spec.price_window as usize).min(r);
    let (mut psum, mut pn) = (0i128, 0i64);
    for (sum, n) in st.price_sum[..pw].iter().zip(&st.price_n[..pw]) {
        psum += i128::from(*sum);
        pn += i64::from(*n);
    }
    let rel = match last_price {
        Some(last) if pn > 0 && psum > 0 => {
            div_round(i128::from(last) * 1000 * i128::from(pn), psum)
        }
        _ => MISSING,
    };
    out.push(rel);

    let promo_now = past[s - 1] || st.promo_n[0] > 0;
    out.push(i64::from(promo_now));
    let sale_prices = SalePrices {
        high: highest_mean((0..s).map(|a| (st.price_sum[a], st.price_n[a]))),
        now: (st.price_n[0] > 0)
            .then(|| div_round(i128::from(st.price_sum[0]), i128::from(st.price_n[0]))),
    };
    push_tail(&mut out, st, tracked, sale_prices);
    debug_assert_eq!(out.len(), st.width);
    FeatureVec::from(out)
}

/// Evaluates every feature of `spec` for a series as of the end of its window, from the
/// window's running totals ([`PeriodRing`]) and the rest of the series' state in `st` (its
/// stock position, promotions and reference attributes; `st`'s own window is not read).
/// Equal to [`compute`] over the same state, which tests check; it reads a few values of the
/// window where `compute` reads all of them. The window's stock levels must be current
/// ([`PeriodRing::refresh_stock_levels`] with the stock total in `st`).
pub fn compute_ring(
    spec: &FeatureSpec,
    plan: &RingPlan,
    ring: &PeriodRing,
    st: &mut SeriesState,
) -> FeatureVec {
    FeatureVec::from(evaluate_ring(spec, plan, ring, st))
}

/// [`compute_ring`] without building a vector: the values stay in `st`'s buffer (returned, and
/// [`SeriesState::last_values`] until the next evaluation), so that a caller that finds them
/// unchanged allocates nothing, and one that keeps them chooses where.
pub fn evaluate_ring<'a>(
    spec: &FeatureSpec,
    plan: &RingPlan,
    ring: &PeriodRing,
    st: &'a mut SeriesState,
) -> &'a [i64] {
    st.mark_calendar(spec, ring.now);
    let mut out = std::mem::take(&mut st.out);
    out.clear();
    ring_features(spec, plan, ring, st, &mut out);
    st.out = out;
    &st.out
}

/// [`evaluate_ring`] once the calendar is marked, into the buffer `out`.
fn ring_features(
    spec: &FeatureSpec,
    plan: &RingPlan,
    ring: &PeriodRing,
    st: &SeriesState,
    out: &mut Vec<i64>,
) {
    let (r, s) = (plan.retention, plan.stats);
    for a in 0..=spec.lags as usize {
        out.push(ring.qty_at(a));
    }
    out.extend_from_slice(ring.window_sums());
    let n = i128::from(spec.stats_window);
    let var_num = (n * ring.stats_sumsq - ring.stats_sum * ring.stats_sum).max(0);
    out.push(div_round(ring.stats_sum, n));
    out.push(((var_num as f64).sqrt() / n as f64).round() as i64);
    match spec.period {
        PeriodKind::Day => {
            let weeks = i128::from(spec.profile_weeks);
            for total in ring.weekdays {
                out.push(if weeks > 0 {
                    div_round(total, weeks)
                } else {
                    0
                });
            }
        }
        PeriodKind::Week => {
            for h in 0..=spec.horizon as usize {
                out.push(ring.qty_at(WEEKS_PER_YEAR as usize - h));
            }
        }
    }
    let sold = ring.mask(SOLD);
    out.push(first_bit(sold).unwrap_or(r) as i64);
    out.push((s - count_below(sold, s)) as i64);

    // Stock position over every period, inside the window or not.
    let total = st.stock;
    let tracked = total.stock_n > 0;
    if tracked {
        // Ages of periods whose end is covered by stock data: all of them if stock data lies
        // outside the window, else those no older than the first period with a stock movement.
        let oldest_tracked = if i64::from(total.stock_n) > ring.stock_n {
            usize::MAX
        } else {
            last_bit(ring.mask(STOCKED)).unwrap_or(0)
        };
        // Ages from 1 up to the oldest tracked one whose period ended with nothing on hand
        // (the mask, see `PeriodRing::refresh_stock_levels`).
        debug_assert!(ring.levels_known, "stock levels not refreshed");
        let oldest = s.min(oldest_tracked);
        out.push(count_below(ring.mask(LOW), oldest + 1) as i64);
    } else {
        out.push(MISSING);
    }
    let (promoted, past) = (ring.mask(PROMOTED), &st.calendar[..s]);
    out.push(if st.promos.is_empty() {
        // No calendar promotion: only periods with sales on promotion count.
        count_below(promoted, s) as i64
    } else {
        (0..s)
            .filter(|a| bit(promoted, *a) || past[s - 1 - a])
            .count() as i64
    });

    let last_price = first_bit(ring.mask(PRICED)).map(|a| {
        let slot = ring.slot_at(a);
        div_round(i128::from(slot.price_sum), i128::from(slot.price_n))
    });
    out.push(last_price.unwrap_or(MISSING));
    let rel = match last_price {
        Some(last) if ring.price_n > 0 && ring.price_sum > 0 => div_round(
            i128::from(last) * 1000 * i128::from(ring.price_n),
            ring.price_sum,
        ),
        _ => MISSING,
    };
    out.push(rel);
    out.push(i64::from(past[s - 1] || bit(promoted, 0)));
    let priced = ring.mask(PRICED);
    let mean_at = |a: usize| {
        let slot = ring.slot_at(a);
        (slot.price_sum, slot.price_n)
    };
    let sale_prices = SalePrices {
        high: if count_below(priced, s) == 0 {
            None
        } else {
            highest_mean((0..s).filter(|a| bit(priced, *a)).map(mean_at))
        },
        now: bit(priced, 0).then(|| {
            let (sum, n) = mean_at(0);
            div_round(i128::from(sum), i128::from(n))
        }),
    };
    push_tail(out, st, tracked, sale_prices);
    debug_assert_eq!(out.len(), st.width);
}

/// The unit prices a series' sales were made at, as the price plan features read them.
struct SalePrices {
    /// The highest per-period mean price over the statistics window.
    high: Option<i64>,
    /// The mean price of the current period.
    now: Option<i64>,
}

/// The highest of the means `sum / n` of `(sum, n)` pairs with `n > 0`, rounded.
fn highest_mean(pairs: impl Iterator<Item = (i64, i32)>) -> Option<i64> {
    let mut best: Option<(i64, i32)> = None;
    for (sum, n) in pairs.filter(|(_, n)| *n > 0) {
        let higher = best.is_none_or(|(bs, bn)| {
            i128::from(sum) * i128::from(bn) > i128::from(bs) * i128::from(n)
        });
        if higher {
            best = Some((sum, n));
        }
    }
    best.map(|(sum, n)| div_round(i128::from(sum), i128::from(n)))
}

/// A discount (milli) from which a period counts as a price cut in `plan_cut_h*`.
pub const CUT_DISCOUNT: i64 = 50;

/// Pushes the price plan features (see docs/model.md): the regular price is the highest of the
/// per-period mean sale prices over the statistics window and the planned prices covering it or
/// the horizon; each step's price is the lowest planned price covering it, or the regular
/// price where none does; the current period's is the plan's, else its mean sale price.
fn push_plan(out: &mut Vec<i64>, st: &SeriesState, sales: SalePrices) {
    let high = sales.high.unwrap_or(0).max(st.plan_high);
    if high <= 0 {
        // No price known at all: every step at the regular price, no cut.
        out.push(MISSING);
        out.push(0);
        for _ in 1..st.plan.len() {
            out.extend_from_slice(&[1000, 0, 0]);
        }
        return;
    }
    let rel = |price: i64| div_round(i128::from(price) * 1000, i128::from(high));
    let now = match st.plan[0] {
        0 => sales.now.unwrap_or(high),
        planned => planned,
    };
    let now_rel = rel(now);
    out.push(now_rel);
    out.push(st.plan[1..].iter().filter(|p| **p > 0).count() as i64);
    let mut before = (1000 - now_rel).max(0);
    for &planned in &st.plan[1..] {
        let r = if planned > 0 { rel(planned) } else { 1000 };
        let discount = (1000 - r).max(0);
        let cut = match (before >= CUT_DISCOUNT, discount >= CUT_DISCOUNT) {
            (false, true) => 1,
            (true, false) => -1,
            _ => 0,
        };
        out.extend_from_slice(&[r, discount, cut]);
        before = discount;
    }
}

/// Pushes the features after the price ones, which both evaluations compute alike: the
/// calendar ahead, the price plan, the stock position and the reference attributes.
fn push_tail(out: &mut Vec<i64>, st: &SeriesState, tracked: bool, sales: SalePrices) {
    let s = st.calendar.len() - st.horizon;
    let ahead = &st.calendar[s..];
    if st.promos.is_empty() {
        // No calendar promotion: none ahead.
        out.resize(out.len() + 1 + ahead.len(), 0);
    } else {
        out.push(ahead.iter().filter(|p| **p).count() as i64);
        out.extend(ahead.iter().map(|p| i64::from(*p)));
    }
    push_plan(out, st, sales);
    if tracked {
        out.push(st.stock.on_hand);
        out.push(st.stock.on_order.max(0));
    } else {
        out.push(MISSING);
        out.push(MISSING);
    }
    let item = &st.item;
    out.push(item.lead_time_days.unwrap_or(MISSING));
    out.push(item.pack_size.unwrap_or(MISSING));
    out.push(item.min_order_qty.unwrap_or(MISSING));
    out.push(i64::from(item.active && st.store_open));
    out.push(item.category.map_or(MISSING, |c| c as i64));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_matches_vector_length_and_is_stable() {
        for spec in [FeatureSpec::daily(), FeatureSpec::weekly()] {
            spec.validate().unwrap();
            let schema = spec.schema();
            let v = compute(&spec, 100, &mut SeriesState::new(&spec));
            assert_eq!(v.0.len(), schema.features.len());
            assert_eq!(schema.hash, spec.schema().hash);
        }
        assert_ne!(
            FeatureSpec::daily().schema().hash,
            FeatureSpec::weekly().schema().hash
        );
        assert_eq!(FeatureSpec::daily().retention(), 56);
        assert_eq!(FeatureSpec::weekly().retention(), 53);
    }

    #[test]
    fn rounding_is_half_away_from_zero() {
        assert_eq!(div_round(5, 2), 3);
        assert_eq!(div_round(-5, 2), -3);
        assert_eq!(div_round(4, 3), 1);
        assert_eq!(mean_std([1000, 3000].into_iter(), 2), (2000, 1000));
    }

    #[test]
    fn sums_and_recency() {
        let spec = FeatureSpec::daily();
        let schema = spec.schema();
        let mut st = SeriesState::new(&spec);
        let sale = |q| Agg {
            n: 1,
            qty: q,
            on_hand: -q,
            ..Agg::default()
        };
        st.add(100, 100, &sale(2000));
        st.add(100, 95, &sale(3000));
        st.add(100, 60, &sale(7000));
        let v = compute(&spec, 100, &mut st);
        let get = |n: &str| v.raw(schema.index(n).unwrap());
        assert_eq!(get("sales_sum_1d"), Some(2000));
        assert_eq!(get("sales_sum_7d"), Some(5000));
        assert_eq!(get("sales_sum_56d"), Some(12_000));
        assert_eq!(get("periods_since_sale"), Some(0));
        assert_eq!(get("on_hand"), None);
        assert_eq!(get("price_last"), None);
    }

    #[test]
    fn ring_window_slides_and_loads_like_added_periods() {
        use differential_dataflow::difference::Semigroup;
        let spec = FeatureSpec::daily();
        let plan = RingPlan::new(&spec);
        let r = spec.retention();
        let agg = |p: Period| Agg {
            n: 1,
            qty: i64::from(p) * 10,
            on_hand: -i64::from(p),
            price_sum: 1990,
            price_n: 1,
            promo_n: p % 2,
            stock_n: i32::from(p % 3 == 0),
            on_order: 0,
        };
        let mut ring = PeriodRing::new(&plan, 100);
        for p in [100, 95, 60, 44] {
            assert_eq!(
                ring.add(&plan, p, &agg(p)),
                p > 100 - r as Period,
                "period {p}"
            );
        }
        assert!(!ring.add(&plan, 101, &agg(101)), "ahead of the window");
        assert_eq!(ring.occupied(), 3);
        ring.advance(&plan, 99, 0);
        assert_eq!((ring.now(), ring.occupied()), (100, 3), "never moves back");
        // Period 60 leaves when the window ends with 116.
        ring.advance(&plan, 115, 0);
        assert_eq!(ring.occupied(), 3);
        ring.advance(&plan, 116, 0);
        assert_eq!(ring.occupied(), 2);
        assert!(ring.add(&plan, 116, &agg(116)));
        assert_eq!(ring.occupied(), 3);

        let mut stock = Agg::default();
        for p in [100, 95, 60, 44, 116] {
            stock.plus_equals(&agg(p).stock_part());
        }
        // The same state evaluated from the ring (its running totals, and its rows loaded)
        // and from its periods added one by one, as of the ring's end and as of later periods.
        for now in [116, 118, 150] {
            ring.advance(&plan, now, stock.on_hand);
            ring.refresh_stock_levels(stock.on_hand);
            let mut by_add = SeriesState::new(&spec);
            by_add.stock = stock;
            for p in [100, 95, 116] {
                by_add.add_to_window(now, p, &agg(p));
            }
            let expected = compute(&spec, now, &mut by_add);
            let mut by_ring = SeriesState::new(&spec);
            by_ring.add(now, now, &agg(7));
            by_ring.clear_context();
            by_ring.stock = stock;
            assert_eq!(compute_ring(&spec, &plan, &ring, &mut by_ring), expected);
            by_ring.load(now, &ring);
            assert_eq!(compute(&spec, now, &mut by_ring), expected, "as of {now}");
            // A cleared state evaluates like a fresh one.
            by_ring.clear();
            assert_eq!(
                compute(&spec, now, &mut by_ring),
                compute(&spec, now, &mut SeriesState::new(&spec))
            );
        }
        ring.advance(&plan, 116 + r as Period, 0);
        assert_eq!(ring.occupied(), 0);
    }

    /// A tiny deterministic generator, so the dataflows crate needs no random-number crate.
    struct Lcg(u64);

    impl Lcg {
        fn below(&mut self, n: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (self.0 >> 33) % n
        }
    }

    /// Random period totals (returns, late periods, stock and prices, quantities large enough
    /// for the 128-bit paths) and window moves of every size: the running totals always give
    /// what a pass over the loaded window gives, daily, weekly and with a window longer than
    /// one 64-bit mask.
    #[test]
    fn running_totals_match_a_pass_over_the_window() {
        use differential_dataflow::difference::Semigroup;
        let mut long = FeatureSpec::daily();
        long.windows = vec![3, 30, 100];
        long.stats_window = 70;
        long.price_window = 65;
        long.profile_weeks = 10;
        for (spec, seed) in [
            (FeatureSpec::daily(), 1),
            (FeatureSpec::weekly(), 2),
            (long, 3),
        ] {
            spec.validate().unwrap();
            let plan = RingPlan::new(&spec);
            let r = spec.retention() as Period;
            let mut rng = Lcg(seed);
            let mut ring = PeriodRing::new(&plan, 1000);
            let mut stock = Agg::default();
            let mut st = SeriesState::new(&spec);
            for step in 0..3000 {
                match rng.below(20) {
                    0..=13 => {
                        let p = ring.now() - rng.below(r as u64 + 2) as Period;
                        let big = rng.below(50) == 0;
                        let qty = rng.below(9000) as i64 - 2000;
                        let agg = Agg {
                            n: 1,
                            qty: if big { qty << 40 } else { qty },
                            // Steps of 500, so that on hand often ends a period at exactly zero.
                            on_hand: (rng.below(9) as i64 - 4) * 500,
                            price_sum: rng.below(3) as i64 * 1990,
                            price_n: rng.below(3) as i32 - 1,
                            promo_n: rng.below(3) as i32 - 1,
                            stock_n: rng.below(3) as i32 - 1,
                            on_order: 0,
                        };
                        if !ring.add(&plan, p, &agg) {
                            assert!(p <= ring.now() - r, "period {p} refused");
                            ring.stock_levels_moved();
                        }
                        stock.plus_equals(&agg.stock_part());
                    }
                    14..=17 => ring.advance(&plan, ring.now() + 1, stock.on_hand),
                    18 => {
                        let now = ring.now() + rng.below(r as u64) as Period;
                        ring.advance(&plan, now, stock.on_hand)
                    }
                    _ => {
                        let now = ring.now() + r + rng.below(3) as Period;
                        ring.advance(&plan, now, stock.on_hand)
                    }
                }
                ring.refresh_stock_levels(stock.on_hand);
                st.clear_context();
                st.stock = stock;
                if rng.below(4) == 0 {
                    st.promos.push((ring.now() - 5, ring.now() + 3));
                }
                let fast = compute_ring(&spec, &plan, &ring, &mut st);
                st.load(ring.now(), &ring);
                let full = compute(&spec, ring.now(), &mut st);
                assert_eq!(fast, full, "{:?} step {step}", spec.period);
            }
        }
    }
}

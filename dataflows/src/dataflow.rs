//! The feature dataflow: from the input stage's collections to per-series feature vectors.
//!
//! ```text
//! series  (key, Period|Registered): Agg ─────────────────────────────┐
//! promos  (sku, promotion)  ── in one store ── (key, Promo) ─────────┤ concat -> exchange by key
//!                           └─ all stores ── join keys by sku ───────┘           │
//! prices  (sku, plan entry) ── the same ───── (key, Price) ───────────┤           │
//! keys    (sku, store) ── distinct ─┘                                            │
//! items   (sku, attributes) ── join keys by sku ── (key, Category|LeadTime|..) ──┤
//! stores  (store, open) ── closed ── join keys by store ── (key, StoreInactive) ─┤
//!                                                                                v
//! ticks   period ── broadcast to every worker ──────────────> series_features -> (key, FeatureVec)
//! ```
//!
//! A tick says a period began at its epoch. The features operator then moves every series it
//! holds to the new period, so windows slide without a record per series.
//!
//! Reference data reaches exactly the series it concerns: a catalog change of a SKU changes the
//! records (and so, where a value changed, the features) of that SKU's series in every store,
//! and nothing else.
//!
//! The output is a collection; at each epoch its updates are exactly a retraction of the old and
//! an insertion of the new vector for each series whose features changed, and nothing else. With
//! [`Emission::LastOfBatch`] (the Kafka worker with `catch_up = "latest"`) that holds at the end
//! of each batch of epochs the operator completes in one run: a series that changed at several
//! of them is emitted once, at the last, and the others are counted ([`Collapsed`]).
//!
//! Longer than 600 lines: the features operator (state table, batching, fetch-ahead, emission,
//! checkpoint export and restore) is one unit on the hot path and reads best in one place.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use differential_dataflow::difference::{Abelian, IsZero, Semigroup};
use differential_dataflow::hashable::Hashable;
use differential_dataflow::{AsCollection, VecCollection};
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::{Capability, Operator};
use timely::dataflow::Scope;

use crate::emit::{emit, fingerprint, Collapsed, Emission, Emitted, Latest, VecPool};
use crate::features::{evaluate_ring, prefetch, FeatureSpec, PeriodRing, RingPlan, SeriesState};
use crate::input::Inputs;
use crate::model::{Agg, Dated, FeatureVec, Id, Key, Rec};
use crate::table::{self, SeriesTable};
use crate::time::{Epoch, Period};

/// A view of one worker's feature state from outside the dataflow: its size as of the
/// features operator's last run, and (between runs of the operator) its series' records, for
/// checkpoints.
#[derive(Clone, Default)]
pub struct StateView {
    size: Rc<Cell<(u64, u64)>>,
    table: Rc<RefCell<SeriesTable<Series>>>,
    /// A checkpoint's series records waiting for the operator's next run, with the epoch whose
    /// state they are.
    pending: Rc<RefCell<Option<Restore>>>,
    /// What [`Emission::LastOfBatch`] left out since the caller last took it.
    collapsed: Rc<RefCell<Collapsed>>,
}

/// A checkpoint's state handed to the features operator: the epoch it is the state as of,
/// and its series records.
type Restore = (Epoch, Vec<SeriesRecord>);

/// One record of a series' exported state: what [`StateView::export`] gives and
/// [`StateView::restore`] takes.
pub type SeriesRecord = (Key, Rec, Agg);

impl std::fmt::Debug for StateView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateView")
            .field("series", &self.series())
            .field("records", &self.records())
            .finish()
    }
}

impl StateView {
    /// Series held.
    pub fn series(&self) -> u64 {
        self.size.get().0
    }

    /// Records held over all series (periods with data in the window, reference attributes,
    /// promotions, registrations): the operator's stand-in for an arrangement's records.
    pub fn records(&self) -> u64 {
        self.size.get().1
    }

    /// Calls `out` with the series records that rebuild this worker's feature state in a new
    /// dataflow ([`StateView::restore`]), together with the reference data of the input stages
    /// ([`crate::input::FeatureInput::restore`]): per series its registrations, the
    /// totals of every period it still holds, and one record of an older period carrying the
    /// stock position of the periods that left its window. Reference attributes and promotions
    /// are not among them: they come from the reference inputs. Read between two runs of the
    /// operator, this is the state as of every epoch the dataflow completed.
    pub fn export(&self, mut out: impl FnMut(Key, Rec, Agg)) {
        let table = self.table.borrow();
        for (key, series) in table.entries() {
            series.export(*key, &mut out);
        }
    }

    /// Hands the features operator of a new dataflow the records of [`StateView::export`] (of
    /// this worker's series), the state as of `epoch`. The operator takes them over directly at
    /// the start of its first run, which must complete `epoch` (call this before stepping the
    /// worker, with the inputs at `epoch`): they do not travel through the inputs, the exchange
    /// and the sort, which profiles showed were most of a restart. It then evaluates every
    /// series at `epoch` as usual, but emits nothing up to `epoch`: those features are the
    /// ones the checkpointed run had emitted already, and it retracts them as usual when they
    /// change later. Records may come in any order; keeping each series' records together is
    /// fastest.
    pub fn restore(&self, epoch: Epoch, records: Vec<SeriesRecord>) {
        *self.pending.borrow_mut() = Some((epoch, records));
    }

    /// Takes what [`Emission::LastOfBatch`] left out in the epochs below `frontier` (all of
    /// them with `None`). Read between runs of the operator, with `frontier` at most the
    /// dataflow's frontier, this never splits a batch: its epochs all lie on one side.
    pub fn take_collapsed(&self, frontier: Option<Epoch>) -> Collapsed {
        self.collapsed.borrow_mut().split_below(frontier)
    }
}

/// Builds the feature dataflow in `scope` over `inputs`; returns the feature collection and a
/// view of this worker's state size.
pub fn features<'s>(
    scope: Scope<'s, Epoch>,
    inputs: &mut Inputs,
    spec: &FeatureSpec,
) -> (VecCollection<'s, Epoch, (Key, FeatureVec)>, StateView) {
    features_with(scope, inputs, spec, Emission::EveryEpoch)
}

/// [`features`], emitting as `emission` says.
pub fn features_with<'s>(
    scope: Scope<'s, Epoch>,
    inputs: &mut Inputs,
    spec: &FeatureSpec,
    emission: Emission,
) -> (VecCollection<'s, Epoch, (Key, FeatureVec)>, StateView) {
    // Per-series records from the input stage, with their totals as differences.
    let series = inputs.series.to_collection(scope);
    // Every (sku, store) some worker has seen, once.
    let stores_by_sku = inputs.keys.to_collection(scope).distinct();
    // Calendar promotions and price plan entries, keyed by SKU.
    let promos = dated_records(inputs.promos.to_collection(scope), &stores_by_sku);
    let prices = dated_records(inputs.prices.to_collection(scope), &stores_by_sku);
    // Catalog attributes apply to every series of the SKU.
    let item_records = inputs
        .items
        .to_collection(scope)
        .join_map(stores_by_sku.clone(), |sku, attrs, store| {
            let key = Key {
                store: *store,
                sku: *sku,
            };
            (key, *attrs)
        })
        .flat_map(|(key, attrs)| attrs.records().map(move |rec| (key, rec)));
    // A closed store closes all its series.
    let store_records = inputs
        .stores
        .to_collection(scope)
        .filter(|(_, open)| !*open)
        .join_map(
            stores_by_sku.map(|(sku, store)| (store, sku)),
            |store, _, sku| {
                let key = Key {
                    store: *store,
                    sku: *sku,
                };
                (key, Rec::StoreInactive)
            },
        );
    // Calendar and reference records in the series' difference type.
    let reference_records = promos
        .concat(prices)
        .concat(item_records)
        .concat(store_records)
        .explode(|rec| Some((rec, Agg::present(1))));

    // The period each epoch belongs to, from every worker's input stage.
    let ticks = inputs.ticks.to_collection(scope);

    let view = StateView::default();
    let features = series_features(
        series.concat(reference_records),
        ticks,
        spec,
        &view,
        emission,
    );
    (features, view)
}

/// The records of dated reference data (promotions, price plan entries) keyed by SKU, for the
/// series they apply to: an entry of one store applies to that store's series directly, a
/// chain-wide one to every series of the SKU, including ones seen later.
fn dated_records<'s, V>(
    entries: VecCollection<'s, Epoch, (Id, V)>,
    stores_by_sku: &VecCollection<'s, Epoch, (Id, Id)>,
) -> VecCollection<'s, Epoch, (Key, Rec)>
where
    V: Dated + differential_dataflow::ExchangeData + differential_dataflow::Hashable,
{
    let in_one_store = entries
        .clone()
        .flat_map(|(sku, e)| e.store().map(|store| (Key { store, sku }, e.rec())));
    let chain_wide = entries
        .filter(|(_, e)| e.store().is_none())
        .map(|(sku, e)| (sku, e.rec()))
        .join_map(stores_by_sku.clone(), |sku, rec, store| {
            (
                Key {
                    store: *store,
                    sku: *sku,
                },
                *rec,
            )
        });
    in_one_store.concat(chain_wide)
}

/// How many updates ahead the features operator prefetches a series' state (4 to 32 measured
/// alike; 64 was slower).
const PREFETCH_AHEAD: usize = 16;

/// How many series ahead a rollover's pass over every series prefetches their state.
const PREFETCH_AHEAD_SCAN: usize = 8;

/// One update of a series' records.
type Update = ((Key, Rec), Epoch, Agg);

/// One tick: a period, the epoch it began at, and a count.
type Tick = (Period, Epoch, isize);

/// What the features operator holds per series.
#[derive(Default)]
struct Series {
    /// Totals of the periods inside the retention window, from the first evaluation on.
    window: Option<PeriodRing>,
    /// Stock totals of every period the series ever had: its stock position. Periods that
    /// leave the window keep only this contribution.
    stock: Agg,
    /// Every other record, sorted by record: periods ahead of the window (or all of them
    /// before the first evaluation), promotions and reference attributes.
    others: Vec<(Rec, Agg)>,
    /// The features last emitted, which are those of the records; `None` before the series
    /// was registered.
    features: Option<Emitted>,
    /// Workers that registered the series (its `Registered` record, kept apart from the
    /// others because every evaluation asks for it).
    registrations: i32,
    /// The last batch of completed epochs in which the series had updates, so that a
    /// rollover's pass over all series skips those already evaluated.
    batch: u64,
}

/// What evaluating a series takes besides the series.
struct Evaluator {
    /// The features to compute.
    spec: FeatureSpec,
    /// What the windows keep running totals of, from `spec`.
    plan: RingPlan,
    /// The series' state other than its window, rebuilt at each evaluation.
    scratch: SeriesState,
    /// Vectors to keep new features in.
    vecs: VecPool,
    /// New features not emitted yet ([`Emission::LastOfBatch`]).
    unsent: Vec<i64>,
}

impl Series {
    /// Adds one update's difference to the series.
    fn update(&mut self, plan: &RingPlan, rec: Rec, diff: &Agg) {
        if let Rec::Period(p) = rec {
            self.stock.plus_equals(&diff.stock_part());
            match &mut self.window {
                // A period older than the window adds to the stock position only.
                Some(w) if p <= w.now() => {
                    if !w.add(plan, p, diff) && diff.on_hand != 0 {
                        w.stock_levels_moved();
                    }
                }
                Some(w) => {
                    if diff.on_hand != 0 {
                        w.stock_levels_moved();
                    }
                    accumulate(&mut self.others, rec, diff)
                }
                None => accumulate(&mut self.others, rec, diff),
            }
        } else if rec == Rec::Registered {
            self.registrations += diff.n;
        } else {
            accumulate(&mut self.others, rec, diff);
        }
    }

    /// Moves the window to end with period `now`, taking over the periods it now covers from
    /// the other records.
    fn advance(&mut self, plan: &RingPlan, now: Period) {
        let window = self
            .window
            .get_or_insert_with(|| PeriodRing::new(plan, now));
        window.advance(plan, now, self.stock.on_hand);
        // Periods sort first among the other records, oldest first.
        let due = self
            .others
            .iter()
            .take_while(|(rec, _)| matches!(rec, Rec::Period(p) if *p <= now))
            .count();
        for (rec, agg) in self.others.drain(..due) {
            if let Rec::Period(p) = rec {
                window.add(plan, p, &agg);
                if agg.on_hand != 0 {
                    // Its stock was in the total already.
                    window.stock_levels_moved();
                }
            }
        }
        window.refresh_stock_levels(self.stock.on_hand);
    }

    /// Asks the processor to fetch what the next evaluation will read; with `rollover`, what
    /// moving the window by a period reads too.
    fn prefetch(&self, plan: &RingPlan, rollover: bool) {
        if let Some(f) = &self.features {
            // Only its reference counts: the values are compared by fingerprint.
            prefetch(f.vec.0.as_ptr());
        }
        // Reference attributes and promotions: a few records, over several lines.
        let bytes = std::mem::size_of_val(self.others.as_slice()).min(8 * 64);
        prefetch_bytes(self.others.as_ptr().cast(), bytes.max(1));
        if let Some(w) = &self.window {
            w.prefetch(plan, rollover);
        }
    }

    /// Calls `out` with records that rebuild this series (see [`StateView::export`]).
    fn export(&self, key: Key, out: &mut impl FnMut(Key, Rec, Agg)) {
        if self.registrations != 0 {
            out(key, Rec::Registered, Agg::present(self.registrations));
        }
        // The stock position of the periods no record below carries.
        let mut carry = self.stock;
        let mut period = |p: Period, agg: Agg| {
            let mut stock = agg.stock_part();
            stock.negate();
            carry.plus_equals(&stock);
            out(key, Rec::Period(p), agg);
        };
        let mut oldest = None;
        if let Some(w) = &self.window {
            w.for_each_period(&mut period);
            oldest = Some(w.now() - w.len() as Period + 1);
        }
        for (rec, agg) in &self.others {
            if let Rec::Period(p) = rec {
                period(*p, *agg);
                oldest = Some(oldest.map_or(*p, |o: Period| o.min(*p)));
            }
        }
        if !carry.is_zero() {
            // A period before every one above: it adds to the stock position only.
            let before = oldest.map_or(Period::MIN, |p| p.saturating_sub(1));
            out(key, Rec::Period(before), carry);
        }
    }

    /// Whether a worker registered the series: only then has it features.
    fn registered(&self) -> bool {
        self.registrations > 0
    }

    /// Evaluates the features as of period `now`, after moving the window to it, into the
    /// evaluator's buffer ([`SeriesState::last_values`]); returns their fingerprint, or `None`
    /// when the series has no features (before it was registered or any period began).
    fn features_at(&mut self, ev: &mut Evaluator, now: Option<Period>) -> Option<u64> {
        let now = now.filter(|_| self.registered())?;
        self.advance(&ev.plan, now);
        let w = self.window.as_ref()?;
        Some(fingerprint(self.evaluate(ev, w)))
    }

    /// Records held: periods with data in the window, and the others.
    fn records(&self) -> u64 {
        let periods = self.window.as_ref().map_or(0, PeriodRing::occupied);
        u64::from(periods) + self.others.len() as u64 + u64::from(self.registrations != 0)
    }

    /// Whether nothing is left of the series.
    fn is_empty(&self) -> bool {
        self.others.is_empty()
            && self.stock.is_zero()
            && self.window.is_none()
            && self.registrations == 0
    }

    /// Evaluates the features as of the end of `window`, the series' own, into the
    /// evaluator's buffer.
    fn evaluate<'e>(&self, ev: &'e mut Evaluator, window: &PeriodRing) -> &'e [i64] {
        let scratch = &mut ev.scratch;
        scratch.clear_context();
        scratch.stock = self.stock;
        for (rec, agg) in &self.others {
            match *rec {
                // Periods ahead of the window count towards the stock position only; the
                // registration is not kept here.
                Rec::Period(_) | Rec::Registered => {}
                Rec::Promo { start, end } if agg.n > 0 => scratch.promos.push((start, end)),
                Rec::Promo { .. } => {}
                Rec::Price { start, end, price } if agg.n > 0 => {
                    scratch.prices.push((start, end, price))
                }
                Rec::Price { .. } => {}
                _ if agg.n <= 0 => {}
                Rec::Category(id) => scratch.item.category = Some(id),
                Rec::LeadTime(days) => scratch.item.lead_time_days = Some(days),
                Rec::PackSize(milli) => scratch.item.pack_size = Some(milli),
                Rec::MinOrder(milli) => scratch.item.min_order_qty = Some(milli),
                Rec::ItemInactive => scratch.item.active = false,
                Rec::StoreInactive => scratch.store_open = false,
            }
        }
        evaluate_ring(&ev.spec, &ev.plan, window, scratch);
        // The running totals must give what a pass over the whole window gives (neither
        // loading the window nor `compute` touches the buffer the values are in).
        #[cfg(debug_assertions)]
        {
            scratch.load(window.now(), window);
            let full = crate::features::compute(&ev.spec, window.now(), scratch);
            debug_assert_eq!(
                scratch.last_values(),
                &*full.0,
                "running totals disagree with the window"
            );
        }
        scratch.last_values()
    }
}

/// Adds `diff` to the record `rec` in a list sorted by record, dropping it when it cancels out.
fn accumulate(records: &mut Vec<(Rec, Agg)>, rec: Rec, diff: &Agg) {
    match records.binary_search_by(|(r, _)| r.cmp(&rec)) {
        Ok(i) => {
            records[i].1.plus_equals(diff);
            if records[i].1.is_zero() {
                records.remove(i);
            }
        }
        Err(i) => {
            if !diff.is_zero() {
                records.insert(i, (rec, *diff));
            }
        }
    }
}

/// Asks the processor to fetch every cache line of `value`.
fn prefetch_value<T>(value: &T) {
    prefetch_bytes((value as *const T).cast(), std::mem::size_of::<T>());
}

/// Asks the processor to fetch the cache lines of the `bytes` bytes from `start`.
pub(crate) fn prefetch_bytes(start: *const u8, bytes: usize) {
    for offset in (0..bytes).step_by(64) {
        prefetch(start.wrapping_add(offset));
    }
}

/// The features of every series whose records changed, as a collection of `(key, features)`.
///
/// Epochs are totally ordered, so this operator keeps each series' accumulated records itself
/// (it is their only reader) instead of arranging them and replaying history as `reduce` does;
/// profiles showed that replay, then the trace walks, dominating the epoch cost. Once an epoch
/// is complete it applies that epoch's updates series by series, evaluates the features, and
/// emits a retraction of the features it last emitted (kept with the records, so they are not
/// evaluated again) and an insertion of the new ones only where they differ. At an epoch where
/// `ticks` say a period began, it does the same for every series it holds, with or without
/// updates: that is how windows slide. Period totals live in a fixed window per series
/// ([`PeriodRing`]); a period that leaves it keeps only its share of the stock position, so
/// state stays bounded without any retraction travelling through the dataflow.
pub fn series_features<'s>(
    records: VecCollection<'s, Epoch, (Key, Rec), Agg>,
    ticks: VecCollection<'s, Epoch, Period>,
    spec: &FeatureSpec,
    view: &StateView,
    emission: Emission,
) -> VecCollection<'s, Epoch, (Key, FeatureVec)> {
    let spec = spec.clone();
    let view = view.clone();
    let exchange = Exchange::new(|update: &Update| (update.0).0.hashed());
    // Every worker needs every tick: its series follow the same clock.
    let ticks = ticks.inner.broadcast();
    records
        .inner
        .binary_frontier(ticks, exchange, Pipeline, "SeriesFeatures", move |_, _| {
            // Updates and ticks waiting for their epoch to complete, and a capability for the
            // earliest of their times. The stash, like `ready`, keeps its capacity from epoch
            // to epoch: regrowing a buffer that large each time costs fresh pages from the
            // kernel.
            let mut stash: Vec<Update> = Vec::new();
            let mut tick_stash: Vec<Tick> = Vec::new();
            let mut hold: Option<Capability<Epoch>> = None;
            // Every series' records and last features, shared with the view (which reads
            // them only between runs of this closure).
            let table = Rc::clone(&view.table);
            let mut ev = Evaluator {
                plan: RingPlan::new(&spec),
                scratch: SeriesState::new(&spec),
                spec: spec.clone(),
                vecs: VecPool::default(),
                unsent: Vec::new(),
            };
            let mut ready: Vec<Update> = Vec::new();
            // The current period as of the completed epochs; `None` before the first tick.
            let mut now: Option<Period> = None;
            // The epochs of a batch at which a period began, with the period, in time order.
            let mut rolls: Vec<(Epoch, Period)> = Vec::new();
            // Batches of completed epochs processed so far.
            let mut batch: u64 = 0;
            // Records over all series, kept up to date as series change.
            let mut held: u64 = 0;
            move |(input, frontier), (tick_input, tick_frontier), output| {
                let mut keep = |cap: Capability<Epoch>| {
                    // Epochs are totally ordered: the least capability covers every time held.
                    if hold.as_ref().is_none_or(|h| cap.time() < h.time()) {
                        hold = Some(cap);
                    }
                };
                input.for_each(|cap, data| {
                    // Inputs always send under a capability; an empty stamp would carry no time.
                    let Some(cap) = cap.retain_least(0) else {
                        debug_assert!(data.is_empty(), "updates without a capability");
                        return;
                    };
                    keep(cap);
                    stash.append(data);
                });
                tick_input.for_each(|cap, data| {
                    let Some(cap) = cap.retain_least(0) else {
                        return;
                    };
                    keep(cap);
                    tick_stash.append(data);
                });
                let complete = |t: &Epoch| !frontier.less_equal(t) && !tick_frontier.less_equal(t);
                let Some(cap) = hold.take_if(|h| complete(h.time())) else {
                    return;
                };
                // Every update of every completed time goes in one pass, ordered by (series,
                // time): a message may carry updates of several times, and a series must see
                // its times in order even when they arrived in different messages.
                ready.clear();
                stash.retain(|u| {
                    if complete(&u.1) {
                        ready.push(*u);
                        false
                    } else {
                        true
                    }
                });
                // Periods that begin in the batch: each worker sends the same ticks, and a
                // worker that joined late repeats the current period.
                tick_stash.sort_unstable_by_key(|t| (t.1, t.0));
                let done = tick_stash.partition_point(|t| complete(&t.1));
                rolls.clear();
                for (period, time, _) in tick_stash.drain(..done) {
                    if rolls.last().map_or(now, |r| Some(r.1)) < Some(period) {
                        match rolls.last_mut() {
                            Some(last) if last.0 == time => last.1 = period,
                            _ => rolls.push((time, period)),
                        }
                    }
                }
                let later = stash
                    .iter()
                    .map(|u| u.1)
                    .chain(tick_stash.iter().map(|t| t.1));
                if let Some(later) = later.min() {
                    hold = Some(cap.delayed(&later));
                }
                ready.sort_unstable_by_key(|u| ((u.0).0, u.1));
                batch += 1;
                let mut state = table.borrow_mut();
                // A checkpoint's state goes in first: it is the state before every update here.
                let quiet_through = view.pending.borrow_mut().take().map(|(epoch, records)| {
                    let mut last: Option<(Key, usize)> = None;
                    for (key, rec, agg) in records {
                        let pos = match last {
                            Some((k, pos)) if k == key => pos,
                            _ => state.find_or_insert(key, table::hash(&key)),
                        };
                        last = Some((key, pos));
                        state.value_mut(pos).update(&ev.plan, rec, &agg);
                    }
                    held = state.entries().iter().map(|(_, s)| s.records()).sum();
                    epoch
                });
                let at = |time: Epoch| (time, quiet_through.is_some_and(|q| time <= q));
                // A restore's batch emits every epoch: its quiet epochs keep what they evaluate.
                let collapse = emission == Emission::LastOfBatch && quiet_through.is_none();
                let mut collapsed = view.collapsed.borrow_mut();
                let mut span = None;
                // The retractions of the last batch have been consumed by now, as a rule.
                ev.vecs.reclaim();
                let mut session = output.session(&cap);
                let mut give = |update| session.give(update);
                // The period in force at `time`, given the rolls before index `r`.
                let period_at = |r: usize| if r == 0 { now } else { Some(rolls[r - 1].1) };

                // Series with updates, each at every epoch where it had updates or a period
                // began.
                let mut i = 0;
                while i < ready.len() {
                    let key = (ready[i].0).0;
                    // Series are visited in key order, scattered over memory: their state is
                    // fetched in stages over the updates ahead (the index slot, then the
                    // entry it points to, then the window and vector the entry points to).
                    if let Some(u) = ready.get(i + 3 * PREFETCH_AHEAD) {
                        state.prefetch_slot(table::hash(&(u.0).0));
                    }
                    if let Some(u) = ready.get(i + 2 * PREFETCH_AHEAD) {
                        if let Some(pos) = state.candidate(table::hash(&(u.0).0)) {
                            prefetch_value(state.entry(pos));
                        }
                    }
                    if let Some(u) = ready.get(i + PREFETCH_AHEAD) {
                        if let Some(pos) = state.candidate(table::hash(&(u.0).0)) {
                            state.entry(pos).1.prefetch(&ev.plan, false);
                        }
                    }
                    let pos = state.find_or_insert(key, table::hash(&key));
                    let series = state.value_mut(pos);
                    series.batch = batch;
                    let before = series.records();
                    let mut old = series.features.take();
                    let mut latest = Latest::new();
                    let mut r = 0;
                    loop {
                        let update = ready.get(i).filter(|u| (u.0).0 == key).map(|u| u.1);
                        let roll = rolls.get(r).map(|r| r.0);
                        let Some(time) = update.into_iter().chain(roll).min() else {
                            break;
                        };
                        while i < ready.len() && (ready[i].0).0 == key && ready[i].1 == time {
                            series.update(&ev.plan, (ready[i].0).1, &ready[i].2);
                            i += 1;
                        }
                        while rolls.get(r).is_some_and(|r| r.0 <= time) {
                            r += 1;
                        }
                        let new = series.features_at(&mut ev, period_at(r));
                        if collapse {
                            let (scratch, unsent) = (&mut ev.scratch, &mut ev.unsent);
                            latest.see(time, new, &old, scratch, unsent, &mut collapsed, &mut span);
                        } else {
                            let values = ev.scratch.last_values();
                            emit(
                                &mut give,
                                key,
                                at(time),
                                &mut old,
                                new,
                                values,
                                &mut ev.vecs,
                            );
                        }
                    }
                    if collapse {
                        latest.finish(&mut give, key, &mut old, &ev.unsent, &mut ev.vecs);
                    }
                    held = held + series.records() - before;
                    if series.is_empty() {
                        state.remove(pos);
                    } else {
                        series.features = old;
                    }
                }

                // Every other series, at each epoch where a period began. The entries are
                // contiguous, so they come in order; their windows and vectors are fetched
                // a few series ahead.
                if !rolls.is_empty() {
                    let entries = state.entries_mut();
                    for j in 0..entries.len() {
                        if let Some((_, ahead)) = entries.get(j + PREFETCH_AHEAD_SCAN) {
                            ahead.prefetch(&ev.plan, true);
                        }
                        let (key, series) = &mut entries[j];
                        if series.batch == batch {
                            continue;
                        }
                        let before = series.records();
                        let mut old = series.features.take();
                        let mut latest = Latest::new();
                        for (r, (time, _)) in rolls.iter().enumerate() {
                            let new = series.features_at(&mut ev, period_at(r + 1));
                            if collapse {
                                let (scratch, unsent) = (&mut ev.scratch, &mut ev.unsent);
                                let span = &mut span;
                                latest.see(*time, new, &old, scratch, unsent, &mut collapsed, span);
                            } else {
                                let values = ev.scratch.last_values();
                                emit(
                                    &mut give,
                                    *key,
                                    at(*time),
                                    &mut old,
                                    new,
                                    values,
                                    &mut ev.vecs,
                                );
                            }
                        }
                        if collapse {
                            latest.finish(&mut give, *key, &mut old, &ev.unsent, &mut ev.vecs);
                        }
                        series.features = old;
                        held = held + series.records() - before;
                    }
                }
                if let Some(span) = span {
                    collapsed.spans.push(span);
                }
                now = period_at(rolls.len());
                view.size.set((state.len() as u64, held));
            }
        })
        .as_collection()
}

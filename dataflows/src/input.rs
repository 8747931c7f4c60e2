//! The input stage of one timely worker.
//!
//! ```text
//! events (arrival order, already assigned an epoch by the runner)
//!   -> FeatureInput::apply      per-period totals  -> series input   (key, Period(p)) += Agg
//!   -> first event of a series                      -> series input   (key, Registered) += 1
//!   -> FeatureInput::advance_to, a new period       -> ticks input    period            +1
//!   -> promotion upserts                            -> promos input   (sku, promotion) +-1
//!   -> price plan upserts                           -> prices input   (sku, entry)     +-1
//!   -> catalog and store upserts                    -> items / stores (id, attributes) +-1
//! ```
//!
//! Windows slide because every worker sends a tick at the epoch where a period begins: one
//! record per worker, not one per series. The features operator then moves the window of
//! period totals of every series it holds, keeping of the periods that left it only their share
//! of the stock position, and re-evaluates it. Nothing is scheduled at future times
//! (future-timed retractions make every epoch re-merge all pending updates, see PERF-NOTES).
//!
//! # Error handling
//! [`FeatureInput::apply`] refuses an event whose period already left the retention window
//! ([`Rejection::TooLate`]) or that lies after the current epoch; the caller dead-letters it.
//! Nothing here panics on input.

use std::collections::{HashMap, HashSet};

use differential_dataflow::input::InputSession;
use serde::{Deserialize, Serialize};

use crate::dataflow::{SeriesRecord, StateView};
use crate::features::FeatureSpec;
use crate::model::{Agg, Dated, Event, Id, IdHash, ItemAttrs, Key, PlannedPrice, Promotion, Rec};
use crate::time::{Clock, Epoch, Period};

/// The differential inputs one worker feeds.
pub struct Inputs {
    /// Per-series records: period totals and registrations.
    pub series: InputSession<Epoch, (Key, Rec), Agg>,
    /// The current period, sent by each worker at its first epoch and at every epoch that
    /// begins a period: the clock every series of every worker follows.
    pub ticks: InputSession<Epoch, Period, isize>,
    /// Calendar promotions by SKU.
    pub promos: InputSession<Epoch, (Id, Promotion), isize>,
    /// Price plan entries by SKU.
    pub prices: InputSession<Epoch, (Id, PlannedPrice), isize>,
    /// Series registered by this worker, as (sku, store).
    pub keys: InputSession<Epoch, (Id, Id), isize>,
    /// Catalog attributes by SKU.
    pub items: InputSession<Epoch, (Id, ItemAttrs), isize>,
    /// Whether each store is open, by store.
    pub stores: InputSession<Epoch, (Id, bool), isize>,
}

impl Default for Inputs {
    fn default() -> Self {
        Inputs {
            series: InputSession::new(),
            ticks: InputSession::new(),
            promos: InputSession::new(),
            prices: InputSession::new(),
            keys: InputSession::new(),
            items: InputSession::new(),
            stores: InputSession::new(),
        }
    }
}

/// Why an event was not applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// Its period left the retention window: it can no longer change any feature.
    TooLate {
        /// The event's period.
        period: Period,
        /// The oldest period still retained.
        oldest_retained: Period,
    },
    /// Its time lies after the current epoch (a runner bug, or the epoch was not advanced).
    AfterCurrentEpoch,
    /// Its time lies before 1970, outside the epoch range.
    BeforeEpochZero,
}

impl Rejection {
    /// A short, stable reason code for dead letters and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::TooLate { .. } => "too_late",
            Rejection::AfterCurrentEpoch => "future_time",
            Rejection::BeforeEpochZero => "before_epoch_zero",
        }
    }
}

/// The reference data an input stage holds (its current promotions, price plan, catalog
/// attributes and store states), for checkpoints.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reference {
    /// Calendar promotions by promotion id.
    pub promos: Vec<(Id, Promotion)>,
    /// Catalog attributes by SKU.
    pub items: Vec<(Id, ItemAttrs)>,
    /// Whether each store is open, by store.
    pub stores: Vec<(Id, bool)>,
    /// Price plan entries by entry id.
    pub prices: Vec<(Id, PlannedPrice)>,
}

impl Reference {
    /// Entities held.
    pub fn len(&self) -> usize {
        self.promos.len() + self.prices.len() + self.items.len() + self.stores.len()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One worker's input stage; see the module docs.
pub struct FeatureInput {
    /// Maps event times to epochs and periods.
    clock: Clock,
    /// Periods kept per series.
    retention: Period,
    /// The differential inputs.
    inputs: Inputs,
    /// The epoch the inputs are at; updates are applied at this time.
    epoch: Epoch,
    /// The current period; `None` before the first `advance_to`.
    now: Option<Period>,
    /// Series this worker has registered.
    keys: HashSet<Key, IdHash>,
    /// Current calendar promotions by id, for upserts.
    promos: HashMap<Id, Promotion>,
    /// Current price plan entries by id, for upserts.
    prices: HashMap<Id, PlannedPrice>,
    /// Current catalog attributes by SKU, for upserts.
    items: HashMap<Id, ItemAttrs>,
    /// Current store states, for upserts.
    stores: HashMap<Id, bool>,
}

/// Replaces `id`'s entry in `current` with `new` and sends the difference to `session`, where an
/// entry is keyed by `key_of` it.
fn upsert_by<V: Copy + PartialEq + Ord + std::fmt::Debug + 'static>(
    current: &mut HashMap<Id, V>,
    session: &mut InputSession<Epoch, (Id, V), isize>,
    id: Id,
    new: Option<V>,
    key_of: impl Fn(&V) -> Id,
) where
    (Id, V): differential_dataflow::Data,
{
    let old = match new {
        Some(v) => current.insert(id, v),
        None => current.remove(&id),
    };
    if old == new {
        return;
    }
    if let Some(old) = old {
        session.update((key_of(&old), old), -1);
    }
    if let Some(new) = new {
        session.update((key_of(&new), new), 1);
    }
}

/// [`upsert_by`] of an entity keyed by its own id (a catalog item, a store).
fn upsert<V: Copy + PartialEq + Ord + std::fmt::Debug + 'static>(
    current: &mut HashMap<Id, V>,
    session: &mut InputSession<Epoch, (Id, V), isize>,
    id: Id,
    new: Option<V>,
) where
    (Id, V): differential_dataflow::Data,
{
    upsert_by(current, session, id, new, |_| id);
}

impl FeatureInput {
    /// The input stage of one worker, for `spec`, at epoch 0.
    pub fn new(clock: Clock, spec: &FeatureSpec) -> Self {
        FeatureInput {
            clock,
            retention: spec.retention() as Period,
            inputs: Inputs::default(),
            epoch: 0,
            now: None,
            keys: HashSet::default(),
            promos: HashMap::new(),
            prices: HashMap::new(),
            items: HashMap::new(),
            stores: HashMap::new(),
        }
    }

    /// The differential inputs, to build the dataflow from.
    pub fn inputs_mut(&mut self) -> &mut Inputs {
        &mut self.inputs
    }

    /// The epoch updates are currently applied at.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// Number of series this worker has registered.
    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// Moves the inputs to `epoch` (never backwards); when that is the first epoch or starts a
    /// new period, sends the period as a tick, which moves every series' window.
    pub fn advance_to(&mut self, epoch: Epoch) {
        let epoch = epoch.max(self.epoch);
        self.epoch = epoch;
        self.inputs.series.advance_to(epoch);
        self.inputs.ticks.advance_to(epoch);
        self.inputs.promos.advance_to(epoch);
        self.inputs.prices.advance_to(epoch);
        self.inputs.keys.advance_to(epoch);
        self.inputs.items.advance_to(epoch);
        self.inputs.stores.advance_to(epoch);
        let period = self.clock.period_of_epoch(epoch);
        if self.now.is_none_or(|now| period > now) {
            self.inputs.ticks.update(period, 1);
            self.now = Some(period);
        }
    }

    /// Applies an event at the current epoch.
    pub fn apply(&mut self, event: &Event) -> Result<(), Rejection> {
        match event {
            Event::Promotion { promo_id, def } => {
                upsert_by(
                    &mut self.promos,
                    &mut self.inputs.promos,
                    *promo_id,
                    *def,
                    Dated::sku,
                );
                Ok(())
            }
            Event::PlannedPrice { price_id, def } => {
                upsert_by(
                    &mut self.prices,
                    &mut self.inputs.prices,
                    *price_id,
                    *def,
                    Dated::sku,
                );
                Ok(())
            }
            Event::Item { sku, def } => {
                upsert(&mut self.items, &mut self.inputs.items, *sku, *def);
                Ok(())
            }
            Event::Store { store, active } => {
                upsert(&mut self.stores, &mut self.inputs.stores, *store, *active);
                Ok(())
            }
            Event::Sale { key, ts, .. } | Event::Stock { key, ts, .. } => {
                if *ts < 0 {
                    return Err(Rejection::BeforeEpochZero);
                }
                if *ts >= self.clock.epoch_end(self.epoch) {
                    return Err(Rejection::AfterCurrentEpoch);
                }
                let now = match self.now {
                    Some(now) => now,
                    None => {
                        self.advance_to(self.epoch);
                        self.clock.period_of_epoch(self.epoch)
                    }
                };
                let period = self.clock.period_of(*ts);
                let oldest_retained = now - self.retention + 1;
                if period < oldest_retained {
                    return Err(Rejection::TooLate {
                        period,
                        oldest_retained,
                    });
                }
                let Some(agg) = Agg::of_event(event) else {
                    return Ok(());
                };
                if self.keys.insert(*key) {
                    self.inputs
                        .series
                        .update((*key, Rec::Registered), Agg::present(1));
                    self.inputs.keys.update((key.sku, key.store), 1);
                }
                self.inputs.series.update((*key, Rec::Period(period)), agg);
                Ok(())
            }
        }
    }

    /// The reference data this stage holds, sorted by id.
    pub fn reference(&self) -> Reference {
        fn sorted<V: Copy>(map: &HashMap<Id, V>) -> Vec<(Id, V)> {
            let mut v: Vec<(Id, V)> = map.iter().map(|(k, v)| (*k, *v)).collect();
            v.sort_unstable_by_key(|e| e.0);
            v
        }
        Reference {
            promos: sorted(&self.promos),
            prices: sorted(&self.prices),
            items: sorted(&self.items),
            stores: sorted(&self.stores),
        }
    }

    /// Restores a checkpoint into a fresh stage and its dataflow: moves the inputs to `epoch`,
    /// applies there the reference data, registers the series, and hands `series` (records of
    /// [`crate::dataflow::StateView::export`]) to the features operator through `view`. The
    /// dataflow then holds the checkpoint's state as of `epoch`, and emits nothing for it (the
    /// checkpointed run emitted those features already).
    pub fn restore(
        &mut self,
        epoch: Epoch,
        reference: &Reference,
        series: Vec<SeriesRecord>,
        view: &StateView,
    ) {
        self.advance_to(epoch);
        for (id, promo) in &reference.promos {
            upsert_by(
                &mut self.promos,
                &mut self.inputs.promos,
                *id,
                Some(*promo),
                Dated::sku,
            );
        }
        for (id, price) in &reference.prices {
            upsert_by(
                &mut self.prices,
                &mut self.inputs.prices,
                *id,
                Some(*price),
                Dated::sku,
            );
        }
        for (sku, attrs) in &reference.items {
            upsert(&mut self.items, &mut self.inputs.items, *sku, Some(*attrs));
        }
        for (store, open) in &reference.stores {
            upsert(
                &mut self.stores,
                &mut self.inputs.stores,
                *store,
                Some(*open),
            );
        }
        for (key, rec, _) in &series {
            // Reference data reaches a series through its key.
            if *rec == Rec::Registered && self.keys.insert(*key) {
                self.inputs.keys.update((key.sku, key.store), 1);
            }
        }
        view.restore(epoch, series);
    }

    /// Closes the inputs: the dataflow completes every epoch and finishes. Later updates go
    /// nowhere.
    pub fn close(&mut self) {
        self.flush();
        self.inputs = Inputs::default();
    }

    /// Sends buffered updates into the dataflow.
    pub fn flush(&mut self) {
        self.inputs.series.flush();
        self.inputs.ticks.flush();
        self.inputs.promos.flush();
        self.inputs.prices.flush();
        self.inputs.keys.flush();
        self.inputs.items.flush();
        self.inputs.stores.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::{PeriodKind, DAY_SECS};

    #[test]
    fn old_and_future_events_are_refused() {
        let spec = FeatureSpec::daily();
        let clock = Clock::new(900, PeriodKind::Day).unwrap();
        let mut input = FeatureInput::new(clock, &spec);
        let keys = [Key { store: 1, sku: 1 }, Key { store: 2, sku: 1 }];
        for day in 0..200i64 {
            let ts = 1_000 * DAY_SECS + day * DAY_SECS + 3600;
            input.advance_to(clock.epoch_of(ts).unwrap());
            for key in keys {
                let sale = Event::Sale {
                    key,
                    ts,
                    qty: 1000,
                    unit_price: None,
                    promo: false,
                };
                assert_eq!(input.apply(&sale), Ok(()));
            }
            input.flush();
        }
        assert_eq!(input.key_count(), keys.len());
        let old = Event::Sale {
            key: keys[0],
            ts: 1_000 * DAY_SECS,
            qty: 1000,
            unit_price: None,
            promo: false,
        };
        assert_eq!(input.apply(&old).unwrap_err().reason(), "too_late");
        let future = Event::Sale {
            key: keys[0],
            ts: 2_000 * DAY_SECS,
            qty: 1000,
            unit_price: None,
            promo: false,
        };
        assert_eq!(input.apply(&future), Err(Rejection::AfterCurrentEpoch));
    }
}

//! A stepping driver for the dataflow's tests: every event's epoch is scheduled up front, and N
//! timely workers visit the epochs one by one, each waiting until the dataflow completed it, so
//! each epoch's changes can be compared with a reference computed from scratch. (The product's
//! one driver is `stockcast::pipeline::stream`, which closes epochs as watermarks move.)
//!
//! The schedule: the watermark is the minimum, over the event inputs (sales, stock) that have
//! produced anything, of the largest event time seen, minus the allowed lateness. An epoch is
//! closed once the watermark reaches its end. An event whose epoch is already closed is *late*:
//! it is applied in the first open epoch (and still counts in its own demand period).
//! Reference data carries no event time and is applied in the first open epoch. Besides the
//! epochs that receive events, the first epoch of every period between the first and last
//! event is visited, so windows slide even through periods without data.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};

use dataflows::emit::Emission;
use dataflows::input::{FeatureInput, Rejection};
use dataflows::{Clock, Epoch, Event, FeatureSpec, FeatureVec, Key};
use stockcast::pipeline::dataflow::build;

/// Per-input watermark tracking.
#[derive(Clone, Debug)]
pub struct Watermarks {
    /// Allowed lateness in seconds.
    lateness: i64,
    /// Largest event time seen on the sales input.
    sales: Option<i64>,
    /// Largest event time seen on the stock input.
    stock: Option<i64>,
}

impl Watermarks {
    /// No events seen yet.
    pub fn new(allowed_lateness_secs: i64) -> Self {
        Watermarks {
            lateness: allowed_lateness_secs.max(0),
            sales: None,
            stock: None,
        }
    }

    /// Records an event time.
    pub fn observe(&mut self, event: &Event) {
        let slot = match event {
            Event::Sale { .. } => &mut self.sales,
            Event::Stock { .. } => &mut self.stock,
            Event::Promotion { .. }
            | Event::PlannedPrice { .. }
            | Event::Item { .. }
            | Event::Store { .. } => return,
        };
        if let Some(ts) = event.ts() {
            *slot = Some(slot.map_or(ts, |m| m.max(ts)));
        }
    }

    /// The watermark, once any input has seen an event.
    pub fn watermark(&self) -> Option<i64> {
        let w = match (self.sales, self.stock) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => return None,
        };
        Some(w - self.lateness)
    }

    /// The first epoch not yet closed.
    pub fn first_open(&self, clock: &Clock) -> Epoch {
        self.watermark()
            .and_then(|w| clock.epoch_of(w))
            .unwrap_or(0)
    }
}

/// One epoch to visit and the events applied in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// The epoch.
    pub epoch: Epoch,
    /// Indices of the events applied in it, in arrival order.
    pub events: Vec<u32>,
}

/// The whole schedule of a replay.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Steps in epoch order.
    pub steps: Vec<Step>,
    /// Events applied after their own epoch had closed.
    pub late: Vec<u32>,
}

/// Schedules `events` (in arrival order). With `until`, steps continue to that epoch (inclusive)
/// even past the last event.
pub fn plan(
    clock: &Clock,
    allowed_lateness_secs: i64,
    events: &[Event],
    until: Option<Epoch>,
) -> Plan {
    let mut marks = Watermarks::new(allowed_lateness_secs);
    let first = events
        .iter()
        .find_map(|e| e.ts().and_then(|ts| clock.epoch_of(ts)));
    let Some(first) = first.or(until) else {
        return Plan::default();
    };
    // The first epoch the watermark has not closed; nothing is closed before any event.
    let mut open: Epoch = 0;
    let mut assigned: Vec<(Epoch, u32)> = Vec::with_capacity(events.len());
    let mut late = Vec::new();
    for (i, event) in events.iter().enumerate() {
        let epoch = match event.ts().map(|ts| clock.epoch_of(ts)) {
            // Reference data, and times before 1970 (the input stage rejects those), apply in
            // the open epoch, but no earlier than the first event's.
            None | Some(None) => open.max(first),
            Some(Some(own)) if own < open => {
                late.push(i as u32);
                open
            }
            Some(Some(own)) => own,
        };
        assigned.push((epoch, i as u32));
        marks.observe(event);
        open = open.max(marks.first_open(clock));
    }
    let steps = steps(clock, assigned, None, until);
    Plan { steps, late }
}

/// The steps applying `assigned` (epoch, event index) pairs: one per distinct epoch, one at
/// `until`, and one at the first epoch of every period after `after`'s (or the first epoch's)
/// through the last, so windows slide through periods without data.
fn steps(
    clock: &Clock,
    mut assigned: Vec<(Epoch, u32)>,
    after: Option<Epoch>,
    until: Option<Epoch>,
) -> Vec<Step> {
    assigned.sort_unstable();
    let mut epochs: Vec<Epoch> = assigned.iter().map(|(e, _)| *e).collect();
    epochs.extend(until);
    epochs.sort_unstable();
    epochs.dedup();
    if let (Some(&lo), Some(&hi)) = (epochs.first(), epochs.last()) {
        let mut p = clock.period_of_epoch(after.unwrap_or(lo)) + 1;
        while p <= clock.period_of_epoch(hi) {
            epochs.push(clock.first_epoch_of_period(p));
            p += 1;
        }
        epochs.sort_unstable();
        epochs.dedup();
    }
    let mut steps: Vec<Step> = epochs
        .into_iter()
        .map(|epoch| Step {
            epoch,
            events: Vec::new(),
        })
        .collect();
    let mut s = 0;
    for (epoch, i) in assigned {
        while steps[s].epoch < epoch {
            s += 1;
        }
        steps[s].events.push(i);
    }
    steps
}

/// What one closed epoch produced.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EpochOutput {
    /// The epoch.
    pub epoch: Epoch,
    /// Series whose features changed, with the new vectors, in key order.
    pub changed: Vec<(Key, FeatureVec)>,
    /// Events refused by the input stage: (index into the event list, why).
    pub rejected: Vec<(u32, Rejection)>,
}

/// What a worker reports after each step.
struct Report {
    epoch: Epoch,
    changed: Vec<(Key, FeatureVec)>,
    rejected: Vec<(u32, Rejection)>,
}

/// Raised by a worker that panics; see the module docs.
#[derive(Clone, Default)]
struct Abort(Arc<AtomicBool>);

impl Abort {
    fn raised(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Raises its flag when dropped by a panicking thread.
struct RaiseOnPanic(Abort);

impl Drop for RaiseOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            (self.0).0.store(true, Ordering::SeqCst);
        }
    }
}

/// Which worker owns an event.
fn owner(event: &Event, peers: usize) -> usize {
    let h = match event {
        Event::Sale { key, .. } | Event::Stock { key, .. } => {
            key.store.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ key.sku
        }
        Event::Promotion { promo_id, .. } => *promo_id,
        Event::PlannedPrice { price_id, .. } => *price_id,
        // Every upsert of one entity goes to the same worker, which keeps its current value.
        Event::Item { sku, .. } => *sku,
        Event::Store { store, .. } => *store,
    };
    (h % peers as u64) as usize
}

/// Runs `plan` over `events` on `workers` threads; calls `on_epoch` for every visited epoch, in
/// order, on the calling thread, with the workers' shares merged in key order.
pub fn run(
    clock: Clock,
    spec: &FeatureSpec,
    workers: usize,
    events: Arc<Vec<Event>>,
    plan: Arc<Plan>,
    mut on_epoch: impl FnMut(EpochOutput),
) -> Result<(), String> {
    let workers = workers.max(1);
    // Bounded so workers cannot run far ahead of a slow consumer.
    let (tx, rx) = mpsc::sync_channel::<Report>(256);
    let spec = spec.clone();
    let abort = Abort::default();
    let guards = timely::execute(timely::Config::process(workers), move |worker| {
        let _raise = RaiseOnPanic(abort.clone());
        let index = worker.index();
        let peers = worker.peers();
        let tx = tx.clone();
        let mut input = FeatureInput::new(clock, &spec);
        let (probe, sink, _) = build(worker, &mut input, &spec, Emission::EveryEpoch);
        'steps: {
            for (s, step) in plan.steps.iter().enumerate() {
                input.advance_to(step.epoch);
                let mut rejected = Vec::new();
                for &i in &step.events {
                    let event = &events[i as usize];
                    if owner(event, peers) != index {
                        continue;
                    }
                    if let Err(why) = input.apply(event) {
                        rejected.push((i, why));
                    }
                }
                let next = plan.steps.get(s + 1).map_or(step.epoch + 1, |n| n.epoch);
                input.advance_to(next);
                input.flush();
                worker.step_while(|| probe.less_than(&next) && !abort.raised());
                if abort.raised() {
                    // A peer panicked: its share of the epoch will never come.
                    for dataflow in worker.installed_dataflows() {
                        worker.drop_dataflow(dataflow);
                    }
                    break 'steps;
                }
                let mut changed: Vec<(Key, FeatureVec)> = Vec::new();
                sink.borrow_mut().retain(|(time, key, vec)| {
                    if *time <= step.epoch {
                        changed.push((*key, vec.clone()));
                        false
                    } else {
                        true
                    }
                });
                let report = Report {
                    epoch: step.epoch,
                    changed,
                    rejected,
                };
                if tx.send(report).is_err() {
                    // The consumer hung up: nothing left to report to.
                    break 'steps;
                }
            }
        }
    })?;

    // Merge the workers' reports of each epoch; epochs complete in order.
    let mut pending: BTreeMap<Epoch, (usize, EpochOutput)> = BTreeMap::new();
    for report in rx {
        let entry = pending.entry(report.epoch).or_insert_with(|| {
            (
                0,
                EpochOutput {
                    epoch: report.epoch,
                    ..EpochOutput::default()
                },
            )
        });
        entry.0 += 1;
        entry.1.changed.extend(report.changed);
        entry.1.rejected.extend(report.rejected);
        while let Some(first) = pending.first_entry() {
            if first.get().0 < workers {
                break;
            }
            let (_, mut out) = first.remove();
            out.changed.sort_unstable_by_key(|c| c.0);
            out.rejected.sort_unstable_by_key(|(i, _)| *i);
            on_epoch(out);
        }
    }
    for result in guards.join() {
        result?;
    }
    if !pending.is_empty() {
        return Err(format!(
            "{} epochs were not reported by every worker",
            pending.len()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use dataflows::{Key, PeriodKind};

    fn sale(ts: i64) -> Event {
        Event::Sale {
            key: Key { store: 1, sku: 1 },
            ts,
            qty: 1000,
            unit_price: None,
            promo: false,
        }
    }

    #[test]
    fn late_events_go_to_the_open_epoch_and_empty_days_are_visited() {
        let clock = Clock::new(900, PeriodKind::Day).unwrap();
        let day = 86_400;
        let events = [
            sale(day),
            sale(day + 1000),
            sale(day + 10),
            sale(4 * day + 5),
        ];
        let p = plan(&clock, 0, &events, None);
        assert_eq!(p.late, vec![2]);
        let epochs: Vec<Epoch> = p.steps.iter().map(|s| s.epoch).collect();
        assert_eq!(epochs, vec![96, 97, 192, 288, 384]);
        assert_eq!(p.steps[1].events, vec![1, 2]);
        assert_eq!(p.steps[4].events, vec![3]);
    }

    #[test]
    fn lateness_keeps_epochs_open() {
        let clock = Clock::new(900, PeriodKind::Day).unwrap();
        let events = [sale(2000), sale(10)];
        assert_eq!(plan(&clock, 0, &events, None).late, vec![1]);
        assert!(plan(&clock, 3600, &events, None).late.is_empty());
    }

    #[test]
    fn an_input_that_never_spoke_does_not_hold_the_watermark() {
        let mut m = Watermarks::new(0);
        assert_eq!(m.watermark(), None);
        m.observe(&sale(500));
        assert_eq!(m.watermark(), Some(500));
    }
}

//! Which epoch each event is applied in, and which epochs must be visited.
//!
//! The watermark is the minimum, over the event inputs (sales, stock) that have produced
//! anything, of the largest event time seen, minus the allowed lateness. An epoch is closed
//! once the watermark reaches its end. An event whose epoch is already closed is *late*: it is
//! applied in the first open epoch (and still counts in its own demand period). Reference data
//! carries no event time and is applied in the first open epoch.
//!
//! Besides the epochs that receive events, the first epoch of every period between the first
//! and last event is visited, so windows slide even through periods without data.

use dataflows::{Clock, Epoch, Event};

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

/// Schedules input that arrives chunk by chunk (see [`super::run::Chunk`]) as [`plan`] schedules
/// it whole, for input whose timed events come in event-time order (a time-sorted dataset read
/// piece by piece): the steps of each chunk follow those of the chunks before. An event whose
/// epoch a step of an earlier chunk already passed is late, and is applied in the chunk's first
/// step, as the worker applies a late record.
#[derive(Clone, Debug)]
pub struct Scheduler {
    clock: Clock,
    marks: Watermarks,
    /// The first epoch the watermark has not closed.
    open: Epoch,
    /// The first timed event's epoch.
    first: Option<Epoch>,
    /// The last step's epoch so far.
    last: Option<Epoch>,
    /// Events applied after their own epoch had closed.
    late: u64,
}

impl Scheduler {
    /// Nothing scheduled yet.
    pub fn new(clock: Clock, allowed_lateness_secs: i64) -> Self {
        Scheduler {
            clock,
            marks: Watermarks::new(allowed_lateness_secs),
            open: 0,
            first: None,
            last: None,
            late: 0,
        }
    }

    /// Late events so far.
    pub fn late(&self) -> u64 {
        self.late
    }

    /// The steps of the next chunk of `events` (arrival order; indices into it). Until a timed
    /// event has been seen there is no epoch to apply anything in: like [`plan`], a chunk of
    /// reference data alone gets no step.
    pub fn chunk(&mut self, events: &[Event]) -> Vec<Step> {
        let clock = self.clock;
        if self.first.is_none() {
            self.first = events
                .iter()
                .find_map(|e| e.ts().and_then(|ts| clock.epoch_of(ts)));
        }
        let Some(first) = self.first else {
            return Vec::new();
        };
        let floor = self.last.map_or(0, |l| l + 1);
        let mut assigned: Vec<(Epoch, u32)> = Vec::with_capacity(events.len());
        for (i, event) in events.iter().enumerate() {
            let epoch = match event.ts().map(|ts| clock.epoch_of(ts)) {
                None | Some(None) => self.open.max(first),
                Some(Some(own)) if own < self.open || own < floor => {
                    self.late += 1;
                    self.open
                }
                Some(Some(own)) => own,
            };
            assigned.push((epoch.max(floor), i as u32));
            self.marks.observe(event);
            self.open = self.open.max(self.marks.first_open(&clock));
        }
        let Some(hi) = assigned.iter().map(|(e, _)| *e).max() else {
            return Vec::new();
        };
        let steps = steps(&clock, assigned, self.last, None);
        self.last = Some(hi);
        steps
    }
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
    fn chunks_of_sorted_input_get_the_whole_plan_and_late_ones_the_next_step() {
        let clock = Clock::new(900, PeriodKind::Day).unwrap();
        let day = 86_400;
        let events = [
            sale(day),
            sale(day + 10),
            sale(day + 1000),
            sale(4 * day + 5),
        ];
        let whole = plan(&clock, 0, &events, None);
        let mut s = Scheduler::new(clock, 0);
        let mut steps = s.chunk(&events[..2]);
        for mut step in s.chunk(&events[2..]) {
            step.events.iter_mut().for_each(|i| *i += 2);
            steps.push(step);
        }
        assert_eq!(steps, whole.steps);
        assert_eq!(s.late(), 0);
        // A chunk reaching back before the last step is applied in its first step.
        let back = s.chunk(&[sale(2 * day), sale(5 * day)]);
        let epochs: Vec<Epoch> = back.iter().map(|s| s.epoch).collect();
        assert_eq!(epochs, vec![385, 480]);
        assert_eq!(back[0].events, vec![0]);
        assert_eq!(s.late(), 1);
    }

    #[test]
    fn an_input_that_never_spoke_does_not_hold_the_watermark() {
        let mut m = Watermarks::new(0);
        assert_eq!(m.watermark(), None);
        m.observe(&sale(500));
        assert_eq!(m.watermark(), Some(500));
    }
}

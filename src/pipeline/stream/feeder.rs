//! One worker's partitions and its feed into the dataflow: watermarks per partition, held and
//! replayed records, idleness, and the advances it asks for.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dataflows::emit::Collapsed;
use dataflows::input::FeatureInput;
use dataflows::{Clock, Epoch, Event, FeatureVec, Key};
use serde::{Deserialize, Serialize};

use crate::config::{CatchUp, Resolved};
use crate::ids::{self, Dictionary};
use crate::source::files::FileKind;

use crate::kafka::wire::Partition;
use crate::pipeline::progress::Progress;
use crate::pipeline::snapshot::{self, Cut, PartDone};
use crate::pipeline::source::Record;

use super::closed::*;
use super::partition::*;

/// What a worker tells worker 0's process, which merges them into the closed advances: the
/// frontier, the counts, the offsets, the dead letters. Reports travel through the dataflow,
/// so they cross process boundaries in a cluster.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(super) struct Report {
    pub(super) worker: usize,
    /// The dataflow's closed frontier as this worker sees it; `None` once it finished.
    pub(super) frontier: Option<Epoch>,
    /// Series this worker's dataflow changed, per closed epoch (the series themselves go to
    /// the worker's own process, see [`Changes`]).
    pub(super) changed: BTreeMap<Epoch, u64>,
    /// (snapshot epoch, partition, offset): committable once the global frontier reaches it.
    pub(super) offsets: Vec<(Epoch, Partition, i64)>,
    /// Records consumed, by the epoch they took effect in and their input kind.
    pub(super) consumed: BTreeMap<(Epoch, FileKind), u64>,
    /// Late events, by the (open) epoch they were applied in.
    pub(super) late: BTreeMap<Epoch, u64>,
    pub(super) dead: Vec<DeadRecord>,
    /// Checkpoint parts written.
    pub(super) parts: Vec<PartDone>,
}

/// The series a worker's dataflow changed in closed epochs: they go to the first worker of the
/// worker's own process, whose thread scores and writes them.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct Changes {
    pub(super) worker: usize,
    /// As in [`Report`]: every change below it is in this message or an earlier one.
    pub(super) frontier: Option<Epoch>,
    pub(super) changed: Vec<(Epoch, Key, FeatureVec)>,
    /// What the dataflow left out of `changed` below the frontier (`catch_up = "latest"`).
    pub(super) collapsed: Collapsed,
}

/// A worker's input side: partitions, buffered events, the input stage.
pub(super) struct Feeder {
    pub(super) clock: Clock,
    pub(super) input: FeatureInput,
    pub(super) parts: Vec<PartState>,
    pub(super) dict: Dictionary,
    pub(super) known: HashSet<Key>,
    /// Events waiting for their epoch: epoch -> (partition index, offset, event).
    pub(super) pending: BTreeMap<Epoch, Vec<(usize, i64, Event)>>,
    pub(super) max_epoch: Option<Epoch>,
    /// Offsets noted before each advance, oldest first.
    pub(super) snapshots: VecDeque<(Epoch, Vec<i64>)>,
    // Since the last report:
    pub(super) names: Vec<(Key, String, String)>,
    /// Records consumed, by the epoch they take effect in (their own, or the open epoch when
    /// applied at once or dead-lettered) and their input kind.
    pub(super) consumed: BTreeMap<(Epoch, FileKind), u64>,
    /// Late events by the epoch they were applied in.
    pub(super) late: BTreeMap<Epoch, u64>,
    pub(super) dead: Vec<DeadRecord>,
    /// Records delivered again by the client and skipped.
    pub(super) redelivered: u64,
    /// The latest event time accepted: the wall clock plus `time.max_future_secs`, refreshed
    /// before every poll.
    pub(super) future_limit: i64,
    /// The process's live state, for metrics.
    pub(super) progress: Arc<Progress>,
    /// Per reference entity, the partition (index into `parts`) its current record came from:
    /// a checkpoint keeps reference data by partition, for whichever worker reads it next.
    pub(super) sources: HashMap<(FileKind, dataflows::model::Id), usize>,
    /// A checkpoint cut, until the dataflow completed the epochs before it and the state was
    /// exported.
    pub(super) cut: Option<Cut>,
    /// Records read after a restore that were already in the checkpoint's state.
    pub(super) skipped: u64,
    /// Changes of epochs before this are a restore's, already published: dropped.
    pub(super) restore_floor: Epoch,
    /// Checkpoint parts written, for the next report.
    pub(super) parts_done: Vec<PartDone>,
    /// `kafka.idle_timeout_secs` on the broker; none for input held in memory.
    pub(super) idle_after: Duration,
    /// How long after asking whether a silent partition is caught up to ask again:
    /// [`super::options::IDLE_RECHECK`] on the broker; at once for input held in memory.
    pub(super) recheck: Duration,
    /// How long the broker's word that a partition is caught up stays good (see
    /// [`super::watermarks::Watermarks::lasts`]).
    pub(super) idle_lasts: Duration,
    /// When the worker started reading.
    pub(super) started: Instant,
    /// `kafka.max_held_events`.
    pub(super) max_held: usize,
    /// Whether it held that many and paused the partitions ahead (see `throttle`).
    pub(super) throttling: bool,
    /// Events held for a later epoch: the sum of the partitions' `held`, kept as they change
    /// (it is read after every record).
    pub(super) held_total: usize,
    /// With `catch_up = "every_epoch"`, about how many changed series one call of
    /// [`Feeder::advance`] may make (see [`step_changes`]); `None`: no limit.
    pub(super) step_changes: Option<usize>,
}

/// With `catch_up = "every_epoch"`, about how many changed series one worker's step of the
/// input may make: an eighth of `[output] max_held_series`, shared among the cluster's `peers`
/// workers. A backfill read ahead of event time then goes into the dataflow a step at a time,
/// each fed once the last was complete, and stops while the process holds `max_held_series`
/// (one step per worker can go over it). In one step instead, every event read ahead would come
/// out at once, each with a feature vector of its own: `kafka.max_held_events` per worker, not
/// `max_held_series`, would bound them. With `"latest"` a step makes at most one vector per
/// series, and one large step lets the dataflow leave out the most.
pub(super) fn step_changes(cfg: &Resolved, peers: usize) -> Option<usize> {
    match cfg.output.catch_up {
        CatchUp::Latest => None,
        CatchUp::EveryEpoch => Some((cfg.output.max_held_series / 8 / peers.max(1)).max(1)),
    }
}

/// What a worker's input may do at an advance, given the checkpoint schedule.
#[derive(Clone, Copy, Debug)]
pub(super) struct Gate {
    /// The latest epoch the input may reach.
    pub(super) limit: Epoch,
    /// A checkpoint to cut when the input reaches it.
    pub(super) cut_at: Option<Epoch>,
}

impl Gate {
    pub(super) const OPEN: Gate = Gate {
        limit: Epoch::MAX,
        cut_at: None,
    };
}

impl Feeder {
    /// Publishes this worker's read positions (for the lag probe) and the change of its series
    /// and state record counts and its held events since `shown`.
    pub(super) fn show(&self, shown: &mut (i64, i64, i64), size: &dataflows::dataflow::StateView) {
        if let Ok(mut positions) = self.progress.positions.lock() {
            for p in &self.parts {
                positions.insert((p.part.topic.clone(), p.part.partition), p.next_offset);
                // The partition's lag shows (at 0) until the probe first measures it.
                let label = p.part.partition.to_string();
                let lag = &self.progress.metrics.consumer_lag;
                lag.with_label_values(&[p.part.topic.as_str(), &label]);
            }
        }
        let now = (
            self.input.key_count() as i64,
            size.records() as i64,
            self.held_events() as i64,
        );
        let m = &self.progress.metrics;
        m.state_keys.add(now.0 - shown.0);
        m.state_records.add(now.1 - shown.1);
        m.held_events.add(now.2 - shown.2);
        *shown = now;
    }

    pub(super) fn dead_letter(
        &mut self,
        p: usize,
        msg: &Record<'_>,
        reason: &'static str,
        detail: String,
    ) {
        self.count(p, self.input.epoch());
        let part = &self.parts[p];
        if msg.offset < part.committed {
            return;
        }
        let m = &self.progress.metrics;
        if reason != "too_late" {
            m.decode_failures.with_label_values(&[reason]).inc();
        }
        m.dead_letters.with_label_values(&[reason]).inc();
        self.dead.push(DeadRecord {
            partition: part.part.clone(),
            offset: msg.offset,
            key: msg.key.map(|k| bounded_copy(k, MAX_DEAD_KEY_BYTES)),
            value: msg.payload.map(|v| bounded_copy(v, MAX_DEAD_VALUE_BYTES)),
            original_len: msg.payload.map_or(0, <[u8]>::len),
            reason,
            detail: crate::decode::cut(&detail, 1024),
            row: None,
        });
    }

    /// Counts a record of partition `p` as consumed in `epoch`.
    pub(super) fn count(&mut self, p: usize, epoch: Epoch) {
        let kind = self.parts[p].part.kind;
        *self.consumed.entry((epoch, kind)).or_default() += 1;
    }

    /// Takes one record.
    pub(super) fn receive(&mut self, msg: &Record<'_>) {
        // A handful of partitions per worker: a scan beats hashing an owned topic name.
        let Some(p) = self
            .parts
            .iter()
            .position(|s| s.part.partition == msg.partition && s.part.topic == msg.topic)
        else {
            return;
        };
        let kind = {
            let part = &mut self.parts[p];
            part.last_seen = Instant::now();
            part.spoke = true;
            if part.already_read(msg.offset) {
                // Offsets only move forward here (the worker never seeks). A record below the
                // next offset is a re-delivery, e.g. after the client reset its position on a
                // broker error: applying it again would count its event twice.
                self.redelivered += 1;
                return;
            }
            part.next_offset = msg.offset + 1;
            part.since_resumed += 1;
            part.consumed_metric.inc();
            // Only right after a restore is anything left to replay: every other record skips
            // the set.
            let replayed = !part.replay.is_empty() && part.replay.remove(&msg.offset);
            if part.replay.iter().any(|o| *o < msg.offset) {
                // A partition arrives in order: held records below this one are gone.
                part.forget_replay_below(msg.offset);
            }
            if msg.offset < part.skip_below && !replayed {
                // In the restored checkpoint's state already.
                self.skipped += 1;
                return;
            }
            part.part.kind
        };
        if let Some(event) = msg.event {
            // Decoded, dated and named where it was spilled.
            self.place(p, msg, event.clone());
            return;
        }
        let record = match msg.payload {
            // A null value is a tombstone on the compacted reference topics; the key names
            // what is deleted.
            None if kind.is_reference() => {
                let Some(key) = msg.key.and_then(|k| std::str::from_utf8(k).ok()) else {
                    self.dead_letter(
                        p,
                        msg,
                        "missing_key",
                        format!("a {} tombstone needs the entity id as its key", kind.name()),
                    );
                    return;
                };
                if let Err(e) = crate::decode::check_id("key", key) {
                    self.dead_letter(p, msg, e.reason(), e.to_string());
                    return;
                }
                let event = match kind {
                    FileKind::Promotions => Event::Promotion {
                        promo_id: ids::reference_id(key),
                        def: None,
                    },
                    FileKind::Prices => Event::PlannedPrice {
                        price_id: ids::reference_id(key),
                        def: None,
                    },
                    FileKind::Catalog => Event::Item {
                        sku: ids::name_id(key),
                        def: None,
                    },
                    FileKind::Stores => Event::Store {
                        store: ids::name_id(key),
                        active: None,
                    },
                    // Not reference data (the guard above lets none in): a value is required.
                    FileKind::Sales | FileKind::Stock => {
                        self.dead_letter(p, msg, "malformed", "record has no value".into());
                        return;
                    }
                };
                self.apply_now(p, msg, &event);
                return;
            }
            None => {
                self.dead_letter(p, msg, "malformed", "record has no value".into());
                return;
            }
            Some(bytes) => match kind.decode_json(bytes) {
                Ok(r) => r,
                Err(e) => {
                    self.dead_letter(p, msg, e.reason(), e.to_string());
                    return;
                }
            },
        };
        // An event from the future never moves the clock (see the module docs).
        if let Err(e) = crate::decode::check_not_future(record.ts(), self.future_limit) {
            self.dead_letter(p, msg, e.reason(), e.to_string());
            return;
        }
        let event = match self.dict.event(&record, self.clock.period_kind()) {
            Ok(e) => e,
            Err(e) => {
                self.dead_letter(p, msg, "id_collision", e.to_string());
                return;
            }
        };
        if let Some(key) = event.key() {
            if self.known.insert(key) {
                let (store, sku) = self.dict.names(&key);
                self.names.push((key, store.to_string(), sku.to_string()));
            }
        }
        self.place(p, msg, event);
    }

    /// Applies `event` of partition `p` now, or holds it for its epoch.
    fn place(&mut self, p: usize, msg: &Record<'_>, event: Event) {
        let Some(ts) = event.ts() else {
            self.apply_now(p, msg, &event);
            return;
        };
        let Some(epoch) = self.clock.epoch_of(ts) else {
            self.dead_letter(
                p,
                msg,
                "before_epoch_zero",
                format!("event time {ts} is before 1970"),
            );
            return;
        };
        let part = &mut self.parts[p];
        part.max_ts = Some(part.max_ts.map_or(ts, |m| m.max(ts)));
        self.max_epoch = self.max_epoch.max(Some(epoch));
        if epoch > self.input.epoch() {
            if part.held.insert(msg.offset) {
                self.held_total += 1;
            }
            self.count(p, epoch);
            self.pending
                .entry(epoch)
                .or_default()
                .push((p, msg.offset, event));
        } else {
            if epoch < self.input.epoch() {
                *self.late.entry(self.input.epoch()).or_default() += 1;
            }
            self.apply_now(p, msg, &event);
        }
    }

    pub(super) fn apply_now(&mut self, p: usize, msg: &Record<'_>, event: &Event) {
        match self.input.apply(event) {
            Ok(()) => {
                let source = match event {
                    Event::Promotion { promo_id, def } => {
                        Some((FileKind::Promotions, *promo_id, def.is_some()))
                    }
                    Event::PlannedPrice { price_id, def } => {
                        Some((FileKind::Prices, *price_id, def.is_some()))
                    }
                    Event::Item { sku, def } => Some((FileKind::Catalog, *sku, def.is_some())),
                    Event::Store { store, active } => {
                        Some((FileKind::Stores, *store, active.is_some()))
                    }
                    _ => None,
                };
                match source {
                    Some((kind, id, true)) => {
                        self.sources.insert((kind, id), p);
                    }
                    Some((kind, id, false)) => {
                        self.sources.remove(&(kind, id));
                    }
                    None => {}
                }
                self.count(p, self.input.epoch())
            }
            // Counted as consumed there.
            Err(why) => self.dead_letter(p, msg, why.reason(), format!("{why:?}")),
        }
    }

    /// Whether the dataflow, at `frontier`, has yet to complete the last step: in steps
    /// (`step_changes`), the next is fed only once it has, so the held count includes its
    /// changes before the next step. (Letting two steps be in flight held more for no gain.)
    pub(super) fn step_in_flight(&self, frontier: Option<Epoch>) -> bool {
        self.step_changes.is_some() && frontier.is_some_and(|f| f < self.input.epoch())
    }

    /// Advances the input towards `target`, applying buffered events at their epochs and
    /// visiting the first epoch of every period on the way, as far as `gate` lets it; cuts
    /// a checkpoint where the gate says. Returns whether it reached `target`.
    pub(super) fn advance(
        &mut self,
        target: Epoch,
        gate: Gate,
        name: impl Fn(Epoch) -> String,
    ) -> bool {
        // Changed series this call may have made: an event changes one series at its epoch,
        // a period's first epoch every series of the worker.
        let mut changes = 0;
        loop {
            let cur = self.input.epoch();
            if self.step_changes.is_some_and(|most| changes >= most) {
                return cur >= target;
            }
            let mut stop = target.min(gate.limit);
            if let Some(cut) = &self.cut {
                stop = stop.min(cut.epoch);
            }
            if let Some(at) = gate.cut_at.filter(|at| *at > cur) {
                stop = stop.min(at);
            }
            if let Some(&first) = self.pending.keys().next() {
                stop = stop.min(first);
            }
            let keys = self.input.key_count();
            if keys > 0 {
                let next_period = self.clock.period_of_epoch(cur) + 1;
                let next = self.clock.first_epoch_of_period(next_period);
                if stop >= next {
                    stop = next;
                    changes += keys;
                }
            }
            if stop <= cur {
                return cur >= target;
            }
            let offsets = self.parts.iter().map(PartState::safe_offset).collect();
            match self.snapshots.back_mut() {
                Some(last) if last.1 == offsets => last.0 = stop,
                _ => self.snapshots.push_back((stop, offsets)),
            }
            self.input.advance_to(stop);
            if gate.cut_at == Some(stop) {
                // Before anything is applied at the checkpoint's epoch.
                self.cut = Some(self.cut_here(name(stop), stop, "periodic"));
            }
            if let Some(events) = self.pending.remove(&stop) {
                changes += events.len();
                for (p, offset, event) in events {
                    if self.parts[p].held.remove(&offset) {
                        self.held_total -= 1;
                    }
                    if let Err(why) = self.input.apply(&event) {
                        // Cannot happen for an event buffered for a later epoch; kept loud.
                        tracing::error!(?why, "buffered event refused");
                    }
                }
            }
        }
    }

    /// Notes where every partition stands, with the reference data and names, for a
    /// checkpoint at `epoch` (see [`snapshot`]).
    pub(super) fn cut_here(&self, name: String, epoch: Epoch, reason: &'static str) -> Cut {
        let parts = &self.parts;
        let now = Instant::now();
        let lasts = self.idle_lasts;
        Cut {
            name,
            epoch,
            reason,
            positions: parts
                .iter()
                .map(|p| p.position(self.idle_after, lasts, now))
                .collect(),
            reference: snapshot::reference_by_partition(self.input.reference(), |kind, id| {
                self.sources
                    .get(&(kind, id))
                    .map(|p| parts[*p].part.clone())
            }),
            names: self.dict.export(),
            at: Instant::now(),
        }
    }

    /// Starts from checkpoint `loaded`: the series whose key hashes to this worker (of
    /// `peers`), the partitions it reads with their reference data, every name.
    pub(super) fn restore(
        &mut self,
        loaded: &crate::checkpoint::Loaded,
        (index, peers): (usize, usize),
        view: &dataflows::dataflow::StateView,
    ) {
        use dataflows::model::Rec;
        let epoch = loaded.manifest.epoch;
        let mut reference = dataflows::input::Reference::default();
        let series = crate::checkpoint::Part::series_of(&loaded.parts, index, peers);
        for part in &loaded.parts {
            self.dict.import(&part.stores, &part.skus);
            for (partition, r) in &part.reference {
                let Some(p) = self.parts.iter().position(|s| s.part == *partition) else {
                    continue;
                };
                for (id, _) in &r.promos {
                    self.sources.insert((FileKind::Promotions, *id), p);
                }
                for (id, _) in &r.prices {
                    self.sources.insert((FileKind::Prices, *id), p);
                }
                for (id, _) in &r.items {
                    self.sources.insert((FileKind::Catalog, *id), p);
                }
                for (id, _) in &r.stores {
                    self.sources.insert((FileKind::Stores, *id), p);
                }
                reference.promos.extend(r.promos.iter().copied());
                reference.prices.extend(r.prices.iter().copied());
                reference.items.extend(r.items.iter().copied());
                reference.stores.extend(r.stores.iter().copied());
            }
            for position in &part.positions {
                if let Some(state) = self.parts.iter_mut().find(|s| s.part == position.partition) {
                    state.next_offset = position.resume_offset();
                    state.skip_below = position.next_offset;
                    state.replay = position.held.iter().copied().collect();
                    state.max_ts = position.max_ts;
                    state.spoke = position.next_offset > 0;
                    state.committed = state.committed.max(position.next_offset);
                    if position.idle {
                        // Idle at the cut: it may count as idle at once (once the broker
                        // confirms nothing follows), as it would have in the checkpointed run,
                        // instead of holding time back for a whole idle timeout.
                        state.last_seen = state
                            .last_seen
                            .checked_sub(self.idle_after)
                            .unwrap_or(state.last_seen);
                    }
                }
            }
        }
        for (key, rec, _) in &series {
            if *rec == Rec::Registered && self.known.insert(*key) {
                let (store, sku) = self.dict.names(key);
                self.names.push((*key, store.to_string(), sku.to_string()));
            }
        }
        self.max_epoch = self
            .parts
            .iter()
            .filter_map(|p| p.max_ts)
            .filter_map(|ts| self.clock.epoch_of(ts))
            .max();
        self.input
            .restore(epoch.saturating_sub(1), &reference, series, view);
        self.input.advance_to(epoch);
        self.restore_floor = epoch;
    }

    /// Offsets noted before every advance the frontier `frontier` passed, as (advance,
    /// partition, offset), oldest first: each is committable once the frontier reaches its
    /// advance.
    pub(super) fn committable(&mut self, frontier: Option<Epoch>) -> Vec<(Epoch, Partition, i64)> {
        let mut out = Vec::new();
        while let Some((epoch, _)) = self.snapshots.front() {
            if frontier.is_some_and(|f| *epoch > f) {
                break;
            }
            let Some((epoch, offsets)) = self.snapshots.pop_front() else {
                break;
            };
            out.extend(
                self.parts
                    .iter()
                    .zip(offsets)
                    .map(|(p, o)| (epoch, p.part.clone(), o)),
            );
        }
        out
    }
}

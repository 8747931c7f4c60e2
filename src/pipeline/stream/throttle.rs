//! How many events a worker holds read for epochs that cannot close yet, and the partitions it
//! pauses to keep them under `kafka.max_held_events`.
//!
//! A worker reads each of its partitions as fast as the broker hands them over, but an event
//! applies only once event time reaches its epoch, and event time waits for the slowest
//! partition of the cluster: one behind the others, one silent and not yet idle, one that has
//! not spoken, or a reference partition not read to its end. Meanwhile the events of the
//! partitions ahead wait in the feeder. At the cap, a worker pauses every partition whose
//! records would only wait, and reads on the ones event time waits for; it resumes the others
//! once it holds half the cap.
//!
//! A partition read since it was last resumed pauses only once it has read its quota: half the
//! cap, shared among the worker's timed partitions. Partitions that move in step (the usual
//! case: a cap below what the partitions' normal spread holds) would otherwise take turns
//! after every record, and each turn costs a fetch: librdkafka drops what it prefetched of a
//! paused partition. So a worker holds at most about one and a half times the cap.

use std::time::Instant;

use super::beacon::Mark;
use super::feeder::Feeder;
use super::partition::PartState;
use crate::pipeline::source::Source;

impl Feeder {
    /// Events read and held for a later epoch.
    pub(super) fn held_events(&self) -> usize {
        debug_assert_eq!(
            self.held_total,
            self.parts.iter().map(|p| p.held.len()).sum::<usize>()
        );
        self.held_total
    }

    /// Whether the worker should look at its pauses again after a record: it reached the cap,
    /// or it is pausing (the record may be a partition's first).
    pub(super) fn at_cap(&self) -> bool {
        self.throttling || self.held_events() >= self.max_held
    }

    /// Pauses the partitions whose records would only wait while the worker holds
    /// `kafka.max_held_events`, and resumes them once it holds half, or once event time waits
    /// on them. `cluster` is the mark of every worker together ([`super::beacon::lowest`]).
    pub(super) fn throttle(&mut self, source: &mut dyn Source, cluster: Mark, now: Instant) {
        let held = self.held_events();
        let over = if self.throttling {
            held > self.max_held / 2
        } else {
            held >= self.max_held
        };
        if over != self.throttling {
            tracing::debug!(held, cap = self.max_held, over, "held events");
        }
        self.throttling = over;
        let timed = self.parts.iter().filter(|p| p.timed()).count();
        let quota = (self.max_held / 2 / timed.max(1)).max(1);
        let metrics = &self.progress.metrics;
        for part in &mut self.parts {
            let pause = over && !may_read(part, cluster) && part.since_resumed >= quota;
            if pause == part.paused {
                continue;
            }
            let at = &part.part;
            if let Err(e) = source.pause(&at.topic, at.partition, pause) {
                tracing::warn!(partition = %at.label(), pause, error = %e, "cannot pause or resume a partition");
                continue;
            }
            part.paused = pause;
            tracing::trace!(partition = %at.label(), pause, max_ts = ?part.max_ts, ?cluster, "pause");
            if pause {
                metrics.partition_pauses.inc();
                metrics.partitions_paused.inc();
            } else {
                metrics.partitions_paused.dec();
                // Its silence while paused was the worker's doing.
                part.last_seen = now;
                part.since_resumed = 0;
            }
        }
    }

    /// The paused partitions, for the log.
    pub(super) fn paused(&self) -> Vec<String> {
        let paused = self.parts.iter().filter(|p| p.paused);
        paused.map(|p| p.part.label()).collect()
    }
}

/// Whether `part` is read while its worker holds the cap, given the cluster's mark: reference
/// partitions (their records apply at once, never held), those event time may be waiting on
/// (one that has not spoken, one with records to read again after a restore), and the timed
/// partitions at the cluster's least watermark, which only reading them moves on.
fn may_read(part: &PartState, cluster: Mark) -> bool {
    if !part.timed() || !part.spoke || !part.replay.is_empty() {
        return true;
    }
    match cluster {
        // Something else holds time: whatever this one reads waits.
        Mark::Holding => false,
        Mark::Active(low) => part.max_ts.is_none_or(|t| t <= low),
        Mark::Idle => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::stream::partition::spoken;
    use crate::source::files::FileKind;

    fn part(kind: FileKind, spoke: bool, max_ts: Option<i64>) -> PartState {
        let mut p = spoken(kind, Instant::now());
        (p.spoke, p.max_ts) = (spoke, max_ts);
        p
    }

    #[test]
    fn at_the_cap_only_what_event_time_waits_on_is_read() {
        let ahead = part(FileKind::Sales, true, Some(9_000));
        let lowest = part(FileKind::Stock, true, Some(1_800));
        let unspoken = part(FileKind::Sales, false, None);
        let catalog = part(FileKind::Catalog, true, None);
        let mut restored = part(FileKind::Sales, true, Some(9_000));
        restored.replay.insert(4);
        // Time waits on the slowest partition: only it moves time on.
        let low = Mark::Active(1_800);
        assert!(!may_read(&ahead, low));
        assert!(may_read(&lowest, low));
        // Elsewhere in the cluster: neither moves it.
        assert!(!may_read(&lowest, Mark::Active(900)));
        // Something holds time (a partition not heard from, reference data being read): only
        // what may be holding it is read.
        for p in [&ahead, &lowest] {
            assert!(!may_read(p, Mark::Holding));
        }
        for p in [&unspoken, &catalog, &restored] {
            assert!(may_read(p, Mark::Holding));
        }
        // Every partition idle: time moves on the wall clock, nothing to wait for.
        assert!(may_read(&ahead, Mark::Idle));
    }
}

//! One input partition as a worker tracks it: its watermark, the offsets read and held, the
//! records to re-read after a restore, and whether it is idle.

use crate::kafka::wire::Partition;
use crate::source::files::FileKind;
use std::collections::{BTreeSet, HashSet};
use std::time::{Duration, Instant};

/// What the broker last said of a silent partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Said {
    /// Nothing is left to read.
    CaughtUp,
    /// Its end (high watermark) is past the next offset: records are there, unread.
    Behind {
        /// The high watermark.
        end: i64,
    },
    /// No answer in time: an outage, or a broker too slow.
    NoAnswer,
}

/// One partition as a worker tracks it.
pub(super) struct PartState {
    pub(super) part: Partition,
    /// Largest event time seen.
    pub(super) max_ts: Option<i64>,
    /// When the last record arrived (or the worker started).
    pub(super) last_seen: Instant,
    /// Has any record arrived.
    pub(super) spoke: bool,
    /// Read to the end it had when the worker started (a reference partition; a timed one
    /// starts settled). Until then it holds event time back: see [`PartState::settles`].
    pub(super) settled: bool,
    /// Paused, so that the worker holds at most `kafka.max_held_events` (see `throttle`): its
    /// silence is not idleness.
    pub(super) paused: bool,
    /// Records read since it was last resumed (or since the start).
    pub(super) since_resumed: usize,
    /// The next offset to read.
    pub(super) next_offset: i64,
    /// Offsets of events read but still buffered for a later epoch.
    pub(super) held: BTreeSet<i64>,
    /// Records below this offset were handled before a restart: no dead letters for them.
    pub(super) committed: i64,
    /// When the broker was last asked whether this silent partition is caught up, and its answer.
    pub(super) idle_checked: Option<(Instant, Said)>,
    /// `stockcast_events_consumed_total` of this partition.
    pub(super) consumed_metric: prometheus::IntCounter,
    /// Records lost from the restored replay set (see [`PartState::forget_replay_below`]).
    pub(super) lost_metric: prometheus::IntCounter,
    /// After a restore: records below this offset are in the checkpoint's state, except...
    pub(super) skip_below: i64,
    /// ...these, buffered at the cut, which are read and applied again.
    pub(super) replay: HashSet<i64>,
}

impl PartState {
    /// Forgets the records buffered at the restored checkpoint's cut below `offset`: they
    /// will never be read again (retention removed them), and they must not hold time back.
    pub(super) fn forget_replay_below(&mut self, offset: i64) {
        let before = self.replay.len();
        self.replay.retain(|o| *o >= offset);
        let lost = before - self.replay.len();
        self.lost_metric.inc_by(lost as u64);
        tracing::error!(
            partition = %self.part.label(),
            lost,
            "records buffered at the checkpoint's cut were removed from the partition before \
             they could be read again: their events are lost"
        );
    }

    /// Whether `offset` was read before.
    pub(super) fn already_read(&self, offset: i64) -> bool {
        offset < self.next_offset
    }

    /// Silent for `idle_after`, and the broker confirmed within `lasts` (see
    /// [`super::watermarks::Watermarks::lasts`]) that nothing is left to read: a partition cut off by a
    /// broker outage is silent but not idle.
    pub(super) fn is_idle(&self, idle_after: Duration, lasts: Duration, now: Instant) -> bool {
        now.duration_since(self.last_seen) >= idle_after
            && self.idle_checked.is_some_and(|(at, said)| {
                said == Said::CaughtUp && at >= self.last_seen && now.duration_since(at) < lasts
            })
    }

    /// Whether the broker's word that nothing was left to read, asked at `asked`, settles this
    /// reference partition. Reference records carry no event time: each applies in the epoch
    /// open when it arrives. Read at start while sales move event time on, they would apply in
    /// whichever epoch their fetch happened to come back in, and a backfill's forecasts would
    /// depend on it. So the catalog, stores, promotions and prices the partition held when the
    /// worker started (or resumed) are read before event time moves: until the broker says it
    /// is caught up, at a moment when the partition had been silent for `quiet` (a broker may
    /// report a partition's end early, as the start of its last batch, and a short silence
    /// says that batch was not on its way), or whenever it is asked once the worker has run
    /// for the idle timeout, and at least 10 s (a partition updated without pause is never
    /// silent; see `options::SETTLE_WAIT_MIN`).
    pub(super) fn settles(&self, asked: Instant, quiet: Duration, waited: bool) -> bool {
        waited || asked.saturating_duration_since(self.last_seen) >= quiet
    }

    /// If this partition holds time back as silent for `idle_after` without counting as idle,
    /// or as a reference partition not settled yet, why: what the broker last said of it.
    pub(super) fn unconfirmed(
        &self,
        idle_after: Duration,
        lasts: Duration,
        now: Instant,
    ) -> Option<String> {
        let silent = now.duration_since(self.last_seen) >= idle_after;
        if (self.settled && !silent) || self.is_idle(idle_after, lasts, now) {
            return None;
        }
        let what = if self.settled {
            ""
        } else {
            "reference data not read to its end yet; "
        };
        let said = match self.idle_checked {
            None => "not asked yet".to_string(),
            Some((at, said)) => {
                let said = match said {
                    Said::CaughtUp => "caught up".to_string(),
                    Said::Behind { end } => {
                        format!("its end is {end}, the next offset {}", self.next_offset)
                    }
                    Said::NoAnswer => "no answer".to_string(),
                };
                format!("{said}, {:.1} s ago", now.duration_since(at).as_secs_f64())
            }
        };
        Some(format!("{}: {what}{said}", self.part.label()))
    }

    /// The lowest offset not yet applied.
    pub(super) fn safe_offset(&self) -> i64 {
        let replay = self.replay.iter().min().copied();
        self.held
            .first()
            .copied()
            .into_iter()
            .chain(replay)
            .min()
            .unwrap_or(self.next_offset)
    }

    /// Where reading stands, for a checkpoint cut now: records below the next offset are in
    /// the state except the held ones (buffered, or restored and not read again yet).
    pub(super) fn position(
        &self,
        idle_after: Duration,
        lasts: Duration,
        now: Instant,
    ) -> crate::checkpoint::Position {
        let mut held: Vec<i64> = self.held.iter().copied().collect();
        held.extend(self.replay.iter().copied());
        held.sort_unstable();
        crate::checkpoint::Position {
            partition: self.part.clone(),
            next_offset: self.next_offset.max(self.skip_below),
            held,
            max_ts: self.max_ts,
            idle: self.is_idle(idle_after, lasts, now),
        }
    }

    pub(super) fn timed(&self) -> bool {
        matches!(self.part.kind, FileKind::Sales | FileKind::Stock)
    }
}

/// For tests: partition 3 of `kind`'s topic, which spoke (event time 0, next offset 10) and
/// was last seen at `last_seen`.
#[cfg(test)]
pub(super) fn spoken(kind: FileKind, last_seen: Instant) -> PartState {
    let counter = || prometheus::IntCounter::new("c", "c").unwrap();
    PartState {
        part: Partition {
            kind,
            topic: kind.name().into(),
            partition: 3,
        },
        max_ts: Some(0),
        last_seen,
        spoke: true,
        settled: true,
        paused: false,
        since_resumed: 0,
        next_offset: 10,
        held: BTreeSet::new(),
        committed: 0,
        idle_checked: None,
        consumed_metric: counter(),
        lost_metric: counter(),
        skip_below: 0,
        replay: HashSet::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn silent_since(last_seen: Instant) -> PartState {
        spoken(FileKind::Sales, last_seen)
    }

    #[test]
    fn a_silent_partition_is_idle_only_while_a_confirmation_since_its_last_record_lasts() {
        let s = Duration::from_secs;
        // Later than now, so that instants before it exist however young the clock is.
        let t0 = Instant::now() + s(10);
        let (idle_after, lasts) = (s(5), s(3));
        let mut p = silent_since(t0);
        // Not silent long enough: neither idle nor waiting for the broker.
        assert!(!p.is_idle(idle_after, lasts, t0 + s(4)));
        assert_eq!(p.unconfirmed(idle_after, lasts, t0 + s(4)), None);
        // Silent, not asked yet.
        let said = p.unconfirmed(idle_after, lasts, t0 + s(6)).unwrap();
        assert_eq!(said, "sales/3: not asked yet");
        // Confirmed caught up: idle while the confirmation lasts.
        p.idle_checked = Some((t0 + s(6), Said::CaughtUp));
        assert!(p.is_idle(idle_after, lasts, t0 + s(8)));
        assert_eq!(p.unconfirmed(idle_after, lasts, t0 + s(8)), None);
        assert!(!p.is_idle(idle_after, lasts, t0 + s(9)));
        let said = p.unconfirmed(idle_after, lasts, t0 + s(9)).unwrap();
        assert_eq!(said, "sales/3: caught up, 3.0 s ago");
        // Records behind, or no answer.
        p.idle_checked = Some((t0 + s(6), Said::Behind { end: 12 }));
        assert!(!p.is_idle(idle_after, lasts, t0 + s(7)));
        let said = p.unconfirmed(idle_after, lasts, t0 + s(7)).unwrap();
        assert_eq!(
            said,
            "sales/3: its end is 12, the next offset 10, 1.0 s ago"
        );
        p.idle_checked = Some((t0 + s(6), Said::NoAnswer));
        assert!(!p.is_idle(idle_after, lasts, t0 + s(7)));
        let said = p.unconfirmed(idle_after, lasts, t0 + s(7)).unwrap();
        assert_eq!(said, "sales/3: no answer, 1.0 s ago");
        // A confirmation from before the last record says nothing about it.
        p.idle_checked = Some((t0 - s(1), Said::CaughtUp));
        assert!(!p.is_idle(idle_after, s(60), t0 + s(6)));
        p.last_seen = t0 - s(2);
        assert!(p.is_idle(idle_after, s(60), t0 + s(6)));
    }

    #[test]
    fn a_reference_partition_settles_on_an_answer_asked_after_a_silence_or_a_long_wait() {
        let s = Duration::from_secs;
        let t0 = Instant::now() + s(10);
        let mut p = spoken(FileKind::Catalog, t0);
        p.settled = false;
        // Asked while records were still coming: not settled, unless the worker waited long.
        assert!(!p.settles(t0, s(1), false));
        assert!(!p.settles(t0 - s(1), s(1), false));
        assert!(p.settles(t0, s(1), true));
        // Asked after a quiet second.
        assert!(p.settles(t0 + s(1), s(1), false));
        // Until it settles it holds time back even while it speaks, and says why.
        let said = p.unconfirmed(s(30), s(3), t0).unwrap();
        assert_eq!(
            said,
            "catalog/3: reference data not read to its end yet; not asked yet"
        );
        p.settled = true;
        assert_eq!(p.unconfirmed(s(30), s(3), t0), None);
    }
}

//! Whether a worker's partitions still hold event time back: the mark its beacon carries,
//! the silence that makes a partition idle, and the broker's word (asked on the thread of
//! [`super::watermarks`]) that a silent partition has nothing unread.

use std::time::{Duration, Instant};

use super::beacon::Mark;
use super::feeder::Feeder;
use super::options::{SETTLE_QUIET, SETTLE_RECHECK, SETTLE_WAIT_MIN};
use super::partition::*;
use super::watermarks::Watermarks;

impl Feeder {
    /// This worker's beacon.
    pub(super) fn mark(&self, now: Instant) -> Mark {
        let lasts = self.idle_lasts;
        let mut low: Option<i64> = None;
        for part in &self.parts {
            if !part.replay.is_empty() {
                // Records buffered at the restored checkpoint's cut are not read again yet.
                // Their times are in the restored watermark, so time could otherwise pass
                // their epochs before they come back, and they would arrive late.
                return Mark::Holding;
            }
            // A paused partition is silent because the worker stopped reading it.
            if !part.paused && part.is_idle(self.idle_after, lasts, now) {
                continue;
            }
            if !part.spoke || !part.settled {
                return Mark::Holding;
            }
            if part.timed() {
                if let Some(ts) = part.max_ts {
                    low = Some(low.map_or(ts, |l| l.min(ts)));
                }
            }
        }
        match low {
            Some(w) => Mark::Active(w),
            // Only reference partitions are speaking: they carry no time, so they hold nothing.
            None => Mark::Idle,
        }
    }

    /// Partitions silent for the idle timeout that still hold time back, with what the broker
    /// last said of each.
    pub(super) fn unconfirmed(&self, now: Instant) -> Vec<String> {
        self.parts
            .iter()
            .filter(|p| !p.paused)
            .filter_map(|p| p.unconfirmed(self.idle_after, self.idle_lasts, now))
            .collect()
    }

    /// Moves every partition's last sighting forward by `gap`, during which nobody listened.
    pub(super) fn not_listening(&mut self, gap: Duration) {
        for part in &mut self.parts {
            part.last_seen += gap;
        }
    }

    /// Takes the broker's answers about silent partitions, and asks about the next one that is
    /// due: silent for the idle timeout (or a reference partition not settled yet, see
    /// [`PartState::settles`]), and not asked about for `recheck` (the feeder's); the one asked
    /// about longest ago first, so on a slow broker every partition gets its turn.
    pub(super) fn check_idle(&mut self, probe: &mut Watermarks, now: Instant) {
        let quiet = self.idle_after.min(SETTLE_QUIET);
        let wait = settle_wait(self.idle_after);
        let started = self.started;
        let waited = |at: Instant| at.saturating_duration_since(started) >= wait;
        for answer in probe.answers() {
            let Some(part) = self.parts.get_mut(answer.part) else {
                continue;
            };
            let said = match answer.result {
                // Some brokers report the high watermark early (tansu: the start of the last
                // batch), never late: a high watermark past the next offset means unread
                // records.
                Ok((low, high)) => {
                    if part.replay.iter().any(|o| *o < low) {
                        part.forget_replay_below(low);
                    }
                    if high <= part.next_offset.max(low) {
                        if !part.settled && part.settles(answer.asked, quiet, waited(answer.asked))
                        {
                            part.settled = true;
                            tracing::debug!(partition = %part.part.label(), offset = part.next_offset, "reference partition read to its end");
                        }
                        Said::CaughtUp
                    } else {
                        Said::Behind { end: high }
                    }
                }
                Err(e) => {
                    tracing::debug!(partition = %part.part.label(), error = %e, "broker unreachable: the partition is not idle");
                    Said::NoAnswer
                }
            };
            part.idle_checked = Some((answer.asked, said));
        }
        self.idle_lasts = probe.lasts(self.parts.len());
        if probe.busy() {
            return;
        }
        let due = self
            .parts
            .iter()
            .enumerate()
            .filter(|(_, p)| !p.paused)
            .filter(|(_, p)| {
                let silent = now.duration_since(p.last_seen);
                let settling = !p.settled && (silent >= quiet || waited(now));
                // Event time waits on a settling partition: ask again sooner.
                let again = if settling {
                    self.recheck.min(SETTLE_RECHECK)
                } else {
                    self.recheck
                };
                (silent >= self.idle_after || settling)
                    && p.idle_checked
                        .is_none_or(|(at, _)| now.duration_since(at) >= again)
            })
            .min_by_key(|(_, p)| p.idle_checked.map(|(at, _)| at));
        if let Some((i, p)) = due {
            probe.ask(i, &p.part);
        }
    }
}

/// How long a worker runs before a reference partition that is never quiet settles on the
/// broker's word alone: the idle timeout `idle_after`, and at least [`SETTLE_WAIT_MIN`] (see
/// there). Input held in memory has no idle timeout and exact ends: no wait.
fn settle_wait(idle_after: Duration) -> Duration {
    match idle_after.is_zero() {
        true => Duration::ZERO,
        false => idle_after.max(SETTLE_WAIT_MIN),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reference_partition_never_quiet_settles_after_the_idle_timeout_and_at_least_10_s() {
        let s = Duration::from_secs;
        // The bench's 1 s idle timeout: tansu's early ends could settle a partition mid-batch.
        assert_eq!(settle_wait(s(1)), s(10));
        assert_eq!(settle_wait(s(30)), s(30));
        assert_eq!(settle_wait(Duration::ZERO), Duration::ZERO);
    }
}

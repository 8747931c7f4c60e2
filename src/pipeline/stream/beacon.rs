//! Watermarks shared between the workers: each broadcasts a beacon, and every worker combines them
//! into the same target.

use dataflows::{Clock, Epoch};
use serde::{Deserialize, Serialize};

use crate::pipeline::snapshot::Schedule;

/// One worker's state as broadcast to its peers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) enum Mark {
    /// Some partition has not spoken yet and is not idle: time may not advance.
    Holding,
    /// The least watermark over this worker's non-idle timed partitions.
    Active(i64),
    /// Every partition of this worker is idle (or it has none).
    Idle,
}

/// What a worker tells its peers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Beacon {
    pub(super) worker: usize,
    pub(super) mark: Mark,
    /// The latest epoch of any event this worker consumed (the end of a drain).
    pub(super) max_epoch: Option<Epoch>,
    /// The worker has applied everything and wants to stop (`exit_when_idle`).
    pub(super) draining: bool,
    /// The worker was told to stop (a signal to its process): every worker stops, so a cluster
    /// shuts down cleanly when any of its processes does.
    pub(super) stopping: bool,
    /// Worker 0's checkpoint decisions (the others send the default).
    pub(super) schedule: Schedule,
}

/// Where the global watermark puts the inputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Target {
    /// Not every worker can move yet.
    Hold,
    /// Advance to this epoch (all epochs before it are closed).
    Until(Epoch),
    /// Every partition is idle and the run should end: advance to this epoch, then close.
    Drain(Epoch),
}

/// The cluster's mark: holding while any worker holds (or has not been heard from), else the
/// least watermark of the active workers, else idle.
pub(super) fn lowest(beacons: &[Option<Beacon>]) -> Mark {
    lowest_of(beacons.iter().map(|b| b.map(|b| b.mark)))
}

/// [`lowest`], with worker `own`'s mark as it is now rather than as its last beacon said.
pub(super) fn lowest_with(beacons: &[Option<Beacon>], (own, mark): (usize, Mark)) -> Mark {
    let others = beacons.iter().enumerate().filter(|(i, _)| *i != own);
    let marks = others.map(|(_, b)| b.map(|b| b.mark));
    lowest_of(marks.chain(std::iter::once(Some(mark))))
}

fn lowest_of(marks: impl Iterator<Item = Option<Mark>>) -> Mark {
    let mut low: Option<i64> = None;
    for mark in marks {
        match mark {
            None | Some(Mark::Holding) => return Mark::Holding,
            Some(Mark::Active(w)) => low = Some(low.map_or(w, |l| l.min(w))),
            Some(Mark::Idle) => {}
        }
    }
    low.map_or(Mark::Idle, Mark::Active)
}

/// Combines every worker's beacon into where the inputs may go.
pub(super) fn target(
    beacons: &[Option<Beacon>],
    clock: &Clock,
    lateness: i64,
    exit_when_idle: bool,
    drain_through: Option<Epoch>,
    wall: i64,
) -> Target {
    let max_epoch = beacons.iter().flatten().filter_map(|b| b.max_epoch).max();
    let epoch_at = |t: i64| clock.epoch_of(t.saturating_sub(lateness)).unwrap_or(0);
    match lowest(beacons) {
        Mark::Holding => Target::Hold,
        Mark::Active(w) => Target::Until(epoch_at(w)),
        // The last event's epoch is the last one anything happens in: moving on to the next
        // would slide the windows into a period the input never reached.
        Mark::Idle if exit_when_idle => Target::Drain(match (max_epoch, drain_through) {
            (Some(e), t) => t.map_or(e, |t| t.max(e)),
            (None, t) => t.unwrap_or(0),
        }),
        Mark::Idle => Target::Until(epoch_at(wall)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dataflows::PeriodKind;

    fn beacon(worker: usize, mark: Mark, max_epoch: Option<Epoch>) -> Option<Beacon> {
        Some(Beacon {
            worker,
            mark,
            max_epoch,
            draining: false,
            stopping: false,
            schedule: Schedule::default(),
        })
    }

    #[test]
    fn the_slowest_speaking_partition_sets_the_target() {
        let clock = Clock::new(900, PeriodKind::Day).unwrap();
        let b = [
            beacon(0, Mark::Active(9_000), Some(10)),
            beacon(1, Mark::Active(1_800), Some(2)),
            beacon(2, Mark::Idle, Some(40)),
        ];
        assert_eq!(
            target(&b, &clock, 0, false, None, 1 << 40),
            Target::Until(2)
        );
        // Lateness keeps one more epoch open.
        assert_eq!(
            target(&b, &clock, 900, false, None, 1 << 40),
            Target::Until(1)
        );
    }

    #[test]
    fn unknown_or_holding_workers_hold_everyone() {
        let clock = Clock::new(900, PeriodKind::Day).unwrap();
        let b = [beacon(0, Mark::Active(9_000), None), None];
        assert_eq!(target(&b, &clock, 0, false, None, 0), Target::Hold);
        let b = [
            beacon(0, Mark::Active(9_000), None),
            beacon(1, Mark::Holding, None),
        ];
        assert_eq!(target(&b, &clock, 0, false, None, 0), Target::Hold);
    }

    #[test]
    fn all_idle_closes_on_the_wall_clock_or_drains() {
        let clock = Clock::new(900, PeriodKind::Day).unwrap();
        let b = [
            beacon(0, Mark::Idle, Some(7)),
            beacon(1, Mark::Idle, Some(12)),
        ];
        assert_eq!(
            target(&b, &clock, 0, false, None, 90_000),
            Target::Until(100)
        );
        assert_eq!(target(&b, &clock, 0, true, None, 90_000), Target::Drain(12));
        // Drained through a later epoch on demand, never to one before an event held.
        assert_eq!(
            target(&b, &clock, 0, true, Some(40), 90_000),
            Target::Drain(40)
        );
        assert_eq!(
            target(&b, &clock, 0, true, Some(5), 90_000),
            Target::Drain(12)
        );
    }
}

//! Event time, demand periods and epochs.
//!
//! Timestamps are seconds since the Unix epoch (UTC). A *period* is the unit of demand (a UTC
//! calendar day, or an ISO week running Monday to Sunday); an *epoch* is the timely timestamp, a
//! fixed slice of event time that divides a day evenly, so an epoch never straddles two periods.

use serde::{Deserialize, Serialize};

/// Seconds in a UTC day.
pub const DAY_SECS: i64 = 86_400;

/// Index of a demand period: days since 1970-01-01, or ISO weeks since the week holding it.
pub type Period = i32;

/// Timely timestamp: index of an epoch of `epoch_secs` since the Unix epoch.
pub type Epoch = u64;

/// The length of a demand period.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PeriodKind {
    /// UTC calendar days.
    Day,
    /// ISO weeks, Monday 00:00 UTC to Sunday 24:00 UTC.
    Week,
}

impl PeriodKind {
    /// Suffix used in feature names: `d` or `w`.
    pub fn suffix(self) -> &'static str {
        match self {
            PeriodKind::Day => "d",
            PeriodKind::Week => "w",
        }
    }

    /// The period containing instant `ts`.
    pub fn period_of(self, ts: i64) -> Period {
        let day = ts.div_euclid(DAY_SECS);
        // 1970-01-01 was a Thursday, so Monday-based weeks start three days earlier.
        let p = match self {
            PeriodKind::Day => day,
            PeriodKind::Week => (day + 3).div_euclid(7),
        };
        p as Period
    }

    /// The first instant of period `p`.
    pub fn period_start(self, p: Period) -> i64 {
        let p = i64::from(p);
        match self {
            PeriodKind::Day => p * DAY_SECS,
            PeriodKind::Week => (p * 7 - 3) * DAY_SECS,
        }
    }
}

/// Maps event time onto epochs and periods.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Clock {
    /// Length of an epoch in seconds; divides a day.
    epoch_secs: u64,
    /// Length of a demand period.
    period: PeriodKind,
}

/// Why a clock cannot be built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClockError(pub String);

impl std::fmt::Display for ClockError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ClockError {}

impl Clock {
    /// A clock with epochs of `epoch_secs`, which must divide 86,400 so no epoch spans two periods.
    pub fn new(epoch_secs: u64, period: PeriodKind) -> Result<Self, ClockError> {
        if epoch_secs == 0 || !(DAY_SECS as u64).is_multiple_of(epoch_secs) {
            return Err(ClockError(format!(
                "epoch_secs = {epoch_secs} must be a positive divisor of 86400"
            )));
        }
        Ok(Self { epoch_secs, period })
    }

    /// Length of an epoch in seconds.
    pub fn epoch_secs(&self) -> u64 {
        self.epoch_secs
    }

    /// Length of a demand period.
    pub fn period_kind(&self) -> PeriodKind {
        self.period
    }

    /// The epoch containing `ts`, or `None` for instants before 1970.
    pub fn epoch_of(&self, ts: i64) -> Option<Epoch> {
        u64::try_from(ts).ok().map(|t| t / self.epoch_secs)
    }

    /// First instant of epoch `e`.
    pub fn epoch_start(&self, e: Epoch) -> i64 {
        (e * self.epoch_secs) as i64
    }

    /// First instant after epoch `e` (its exclusive end).
    pub fn epoch_end(&self, e: Epoch) -> i64 {
        ((e + 1) * self.epoch_secs) as i64
    }

    /// The period that epoch `e` lies in.
    pub fn period_of_epoch(&self, e: Epoch) -> Period {
        self.period.period_of(self.epoch_start(e))
    }

    /// The period containing instant `ts`.
    pub fn period_of(&self, ts: i64) -> Period {
        self.period.period_of(ts)
    }

    /// The first epoch of period `p`.
    pub fn first_epoch_of_period(&self, p: Period) -> Epoch {
        (self.period.period_start(p).max(0) as u64) / self.epoch_secs
    }
}

/// Weekday of a day index, Monday = 0.
pub fn weekday_of_day(day: Period) -> usize {
    (i64::from(day) + 3).rem_euclid(7) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_weeks_start_on_monday() {
        // 2024-01-01 was a Monday; 2023-12-31 a Sunday.
        let monday = 19_723 * DAY_SECS;
        let week = PeriodKind::Week.period_of(monday);
        assert_eq!(PeriodKind::Week.period_of(monday - 1), week - 1);
        assert_eq!(PeriodKind::Week.period_of(monday + 7 * DAY_SECS - 1), week);
        assert_eq!(PeriodKind::Week.period_start(week), monday);
        assert_eq!(weekday_of_day(19_723), 0);
        assert_eq!(weekday_of_day(0), 3); // Thursday
    }

    #[test]
    fn epochs_divide_days() {
        assert!(Clock::new(900, PeriodKind::Day).is_ok());
        assert!(Clock::new(7 * 60, PeriodKind::Day).is_err());
        assert!(Clock::new(0, PeriodKind::Day).is_err());
        let c = Clock::new(900, PeriodKind::Week).unwrap();
        let p = c.period_of(1_700_000_000);
        let first = c.first_epoch_of_period(p);
        assert_eq!(c.period_of_epoch(first), p);
        assert_eq!(c.period_of_epoch(first - 1), p - 1);
        assert_eq!(c.epoch_of(-1), None);
    }
}

//! What a running worker shows the outside: the health checks, the HTTP server and the tests
//! read it; the workers and the sink update it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

/// What a running worker shows the outside (health checks, the HTTP server, tests): counters
/// updated as the closed frontier advances, the metrics, the latest forecasts and readiness.
pub struct Progress {
    /// Input records consumed (all topics, all workers), as the workers report them.
    pub consumed: std::sync::atomic::AtomicU64,
    /// The first open epoch (0 before the first advance).
    pub frontier: std::sync::atomic::AtomicU64,
    /// Every Prometheus metric.
    pub metrics: crate::metrics::Metrics,
    /// The latest forecast record of every series scored, by (store, SKU) name.
    pub latest: std::sync::RwLock<crate::records::Latest>,
    /// Wall-clock Unix seconds of the last advance of the closed epochs (0 before).
    pub last_advance: AtomicI64,
    /// Wall-clock Unix seconds when this process's worker state was created: stall detection
    /// counts from here until the first advance.
    pub started_at: i64,
    /// Event-time end of the last closed epoch, Unix seconds (`i64::MIN` before).
    pub last_epoch_end: AtomicI64,
    /// The global watermark, event-time Unix seconds (`i64::MIN` while unknown).
    pub watermark: AtomicI64,
    /// Every worker has its partitions assigned.
    pub assigned: AtomicBool,
    /// A forecaster is loaded.
    pub model_loaded: AtomicBool,
    /// The sinks whose last write failed (none before the first write).
    sinks_failing: std::sync::Mutex<std::collections::BTreeSet<&'static str>>,
    /// Workers that have their partitions assigned.
    pub(super) assigned_workers: std::sync::atomic::AtomicUsize,
    /// Next offset to read of every assigned partition, for the consumer lag.
    pub(crate) positions: std::sync::Mutex<HashMap<(String, i32), i64>>,
    /// Changed series this process's workers handed over and its sinks have not written yet
    /// (the workers stop reading while there are `[output] max_held_series`).
    pub(super) held_series: std::sync::atomic::AtomicUsize,
    /// The most changed series it held at once.
    pub(super) held_series_peak: std::sync::atomic::AtomicUsize,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            consumed: Default::default(),
            frontier: Default::default(),
            metrics: crate::metrics::Metrics::new(),
            latest: Default::default(),
            last_advance: AtomicI64::new(0),
            started_at: chrono::Utc::now().timestamp(),
            last_epoch_end: AtomicI64::new(i64::MIN),
            watermark: AtomicI64::new(i64::MIN),
            assigned: AtomicBool::new(false),
            model_loaded: AtomicBool::new(false),
            sinks_failing: Default::default(),
            assigned_workers: Default::default(),
            positions: Default::default(),
            held_series: Default::default(),
            held_series_peak: Default::default(),
        }
    }
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Progress")
            .field("consumed", &self.consumed)
            .field("frontier", &self.frontier)
            .finish_non_exhaustive()
    }
}

impl Progress {
    /// The most changed series this process held at once between its workers and its sinks
    /// (see `[output] max_held_series`).
    pub fn held_series_peak(&self) -> usize {
        self.held_series_peak.load(Ordering::Relaxed)
    }

    /// Notes whether `sink`'s last write succeeded.
    pub fn set_sink_ok(&self, sink: &'static str, ok: bool) {
        let mut failing = self.sinks_failing.lock().unwrap_or_else(|p| p.into_inner());
        if ok {
            failing.remove(sink);
        } else {
            failing.insert(sink);
        }
    }

    /// The sinks whose last write failed, in name order.
    pub fn failing_sinks(&self) -> Vec<&'static str> {
        let failing = self.sinks_failing.lock().unwrap_or_else(|p| p.into_inner());
        failing.iter().copied().collect()
    }

    /// Sets the lag gauges against the wall clock `now` (Unix seconds). A lag is never negative:
    /// event time ahead of the wall clock (up to `time.max_future_secs`) reads as 0.
    pub fn refresh_lags(&self, now: i64) {
        let lag = |t: i64| {
            if t == i64::MIN {
                0.0
            } else {
                now.saturating_sub(t).max(0) as f64
            }
        };
        let m = &self.metrics;
        m.watermark_lag_seconds
            .set(lag(self.watermark.load(Ordering::Relaxed)));
        m.epoch_lag_seconds
            .set(lag(self.last_epoch_end.load(Ordering::Relaxed)));
        let written = m.checkpoint_written_at.get();
        m.checkpoint_age_seconds.set(if written > 0 {
            now.saturating_sub(written).max(0) as f64
        } else {
            0.0
        });
    }

    /// Seconds since the last advance of the closed epochs, or since the start before the first.
    pub fn stalled_for(&self, now: i64) -> i64 {
        let last = self
            .last_advance
            .load(Ordering::Relaxed)
            .max(self.started_at);
        now.saturating_sub(last)
    }

    /// Notes that one of `workers` has its partitions.
    pub(super) fn worker_assigned(&self, workers: usize) {
        let n = self.assigned_workers.fetch_add(1, Ordering::SeqCst) + 1;
        if n >= workers {
            self.assigned.store(true, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stall_counts_from_the_start_until_the_first_advance() {
        let p = Progress::default();
        let start = p.started_at;
        assert_eq!(p.stalled_for(start + 100), 100);
        p.last_advance.store(start + 60, Ordering::Relaxed);
        assert_eq!(p.stalled_for(start + 100), 40);
        p.last_epoch_end.store(start + 5_000, Ordering::Relaxed);
        p.refresh_lags(start);
        assert_eq!(p.metrics.epoch_lag_seconds.get(), 0.0, "never negative");
    }
}

//! The retry every sink write shares: back off, count each attempt, report an outage once,
//! give up only when the run stops.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::kafka::progress::Progress;

/// Counts one write attempt of `sink`: `written` records on success, else a failure; the
/// outcome is what `/readyz` reports.
pub(super) fn count_attempt(progress: &Progress, sink: &str, written: Option<u64>) {
    let m = &progress.metrics;
    match written {
        Some(n) => m.sink_writes.with_label_values(&[sink]).inc_by(n),
        None => m.sink_failures.with_label_values(&[sink]).inc(),
    }
    progress.sink_ok.store(written.is_some(), Ordering::Relaxed);
}

/// Failed attempts in a row (about 6 s) after which a sink's outage is logged as an error.
pub(super) const OUTAGE_ATTEMPTS: u32 = 5;

/// Calls `write` until it succeeds, waiting 0.2 s doubling to 6.4 s between attempts, and
/// counts every attempt of `sink` (`written` records on success); `false` if the run stopped
/// first.
pub(super) fn retry_until_written(
    progress: &Progress,
    stop: &AtomicBool,
    retries: &mut u64,
    sink: &str,
    written: u64,
    mut write: impl FnMut() -> Result<(), String>,
) -> bool {
    let mut attempt = 0u32;
    loop {
        let result = write();
        count_attempt(progress, sink, result.is_ok().then_some(written));
        let Err(e) = result else { return true };
        if stop.load(Ordering::SeqCst) {
            tracing::warn!(sink, error = %e, "stopping with an advance not written; its offsets stay uncommitted");
            return false;
        }
        progress
            .metrics
            .sink_retries
            .with_label_values(&[sink])
            .inc();
        *retries += 1;
        let wait = Duration::from_millis(200u64 << attempt.min(5));
        if attempt == OUTAGE_ATTEMPTS {
            // Once per outage: an error (a Sentry issue when configured), the rest warnings.
            tracing::error!(sink, error = %e, attempts = attempt + 1, "sink unreachable; retrying until it returns, input offsets stay uncommitted");
        } else {
            tracing::warn!(sink, error = %e, retry_in_ms = wait.as_millis() as u64, "write failed");
        }
        sleep_unless_stopped(stop, wait);
        attempt += 1;
    }
}

/// Sleeps `wait`, or less once `stop` is set.
pub(super) fn sleep_unless_stopped(stop: &AtomicBool, wait: Duration) {
    let until = Instant::now() + wait;
    while !stop.load(Ordering::SeqCst) {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left.min(Duration::from_millis(100)));
    }
}

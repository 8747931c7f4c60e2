//! The retry every sink shares: back off, count each attempt, report an outage once, give up
//! only when the run stops or the sink says no attempt can succeed.

use std::time::Duration;

use super::build::Advance;
#[cfg(test)]
use super::sink::Stopping;
use super::sink::{Context, Sink, WriteError};
use crate::pipeline::progress::Progress;

/// Failed attempts in a row (about 6 s) after which a sink's outage is logged as an error.
pub(super) const OUTAGE_ATTEMPTS: u32 = 5;

/// Counts one write attempt of `sink`: `written` records on success, else a failure; the
/// outcome is what `/readyz` reports.
pub(super) fn count_attempt(progress: &Progress, sink: &'static str, written: Option<u64>) {
    let m = &progress.metrics;
    match written {
        Some(n) => m.sink_writes.with_label_values(&[sink]).inc_by(n),
        None => m.sink_failures.with_label_values(&[sink]).inc(),
    }
    progress.set_sink_ok(sink, written.is_some());
}

/// The wait before attempt `attempt + 1`: 0.2 s doubling to 6.4 s.
pub(super) fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(200u64 << attempt.min(5))
}

/// Writes `advance` to `sink` until it succeeds, waiting [`backoff`] between attempts and
/// counting every attempt; `Err` once the run stops first (`Stopped`) or the sink fails for
/// good (`Fatal`).
pub fn write_until_done(
    sink: &mut dyn Sink,
    advance: &Advance,
    cx: &mut Context<'_>,
) -> Result<(), WriteError> {
    let name = sink.name();
    let started = std::time::Instant::now();
    let mut attempt = 0u32;
    loop {
        let e = match sink.write(advance, cx) {
            Ok(written) => {
                count_attempt(cx.progress, name, Some(written));
                let m = &cx.progress.metrics.sink_write_seconds;
                m.with_label_values(&[name])
                    .observe(started.elapsed().as_secs_f64());
                return Ok(());
            }
            Err(e) => e,
        };
        count_attempt(cx.progress, name, None);
        match &e {
            WriteError::Transient(_) if !cx.stop.requested() => {}
            WriteError::Transient(why) => {
                tracing::warn!(sink = name, error = %why, "stopping with an advance not written; its offsets stay uncommitted");
                return Err(WriteError::Stopped);
            }
            WriteError::Fatal(_) | WriteError::Stopped => return Err(e),
        }
        let m = &cx.progress.metrics;
        m.sink_retries.with_label_values(&[name]).inc();
        cx.stats.retries += 1;
        let wait = backoff(attempt);
        if attempt == OUTAGE_ATTEMPTS {
            // Once per outage: an error (a Sentry issue when configured), the rest warnings.
            tracing::error!(sink = name, error = %e, attempts = attempt + 1, "sink unreachable; retrying until it returns, input offsets stay uncommitted");
        } else {
            tracing::warn!(sink = name, error = %e, retry_in_ms = wait.as_millis() as u64, "write failed");
        }
        cx.stop.sleep(wait);
        attempt += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    /// Fails `fails` times, then writes.
    struct Flaky {
        fails: u32,
        calls: u32,
        fatal: bool,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("down")]
    struct Down;

    impl Sink for Flaky {
        fn name(&self) -> &'static str {
            "flaky"
        }
        fn write(&mut self, _: &Advance, _: &mut Context<'_>) -> Result<u64, WriteError> {
            self.calls += 1;
            if self.calls <= self.fails {
                return Err(if self.fatal {
                    WriteError::Fatal(Box::new(Down))
                } else {
                    WriteError::transient(Down)
                });
            }
            Ok(7)
        }
    }

    fn run(sink: &mut Flaky, stop: bool) -> (Result<(), WriteError>, u64, Progress) {
        let progress = Progress::default();
        let stopping = Stopping::new(Arc::new(AtomicBool::new(stop)));
        let mut stats = crate::output::sink::Stats::default();
        let mut cx = Context {
            progress: &progress,
            stop: &stopping,
            stats: &mut stats,
        };
        let result = write_until_done(sink, &Advance::default(), &mut cx);
        (result, stats.retries, progress)
    }

    #[test]
    fn retries_a_transient_failure_until_written_and_counts_it() {
        let mut sink = Flaky {
            fails: 2,
            calls: 0,
            fatal: false,
        };
        let (result, retries, progress) = run(&mut sink, false);
        assert!(result.is_ok());
        assert_eq!((sink.calls, retries), (3, 2));
        let m = &progress.metrics;
        assert_eq!(m.sink_failures.with_label_values(&["flaky"]).get(), 2);
        assert_eq!(m.sink_writes.with_label_values(&["flaky"]).get(), 7);
        assert!(progress.failing_sinks().is_empty());
    }

    #[test]
    fn gives_up_when_stopping_or_for_good() {
        let mut sink = Flaky {
            fails: 5,
            calls: 0,
            fatal: false,
        };
        let (result, _, progress) = run(&mut sink, true);
        assert!(matches!(result, Err(WriteError::Stopped)));
        assert_eq!(sink.calls, 1);
        assert!(!progress.failing_sinks().is_empty());
        let mut sink = Flaky {
            fails: 5,
            calls: 0,
            fatal: true,
        };
        let (result, retries, _) = run(&mut sink, false);
        assert!(matches!(result, Err(WriteError::Fatal(_))));
        assert_eq!((sink.calls, retries), (1, 0));
    }
}

//! The consumer lag, measured on a thread and client of its own.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;

use crate::config::Resolved;

use crate::pipeline::stream::StreamOptions;

use super::offsets::consumer;

/// How often the consumer lag is measured.
pub(super) const LAG_EVERY: Duration = Duration::from_secs(5);
/// How long one partition's measurement may take: short, since stopping the worker waits for
/// the measurement under way.
const LAG_TIMEOUT: Duration = Duration::from_millis(500);

/// Measures the consumer lag of every assigned partition every [`LAG_EVERY`] on a thread and
/// client of its own (a broker request may block), until the returned guard is dropped.
pub(super) fn spawn_lag_probe(cfg: &Resolved, opts: &StreamOptions) -> Option<LagProbe> {
    let consumer = match consumer(cfg) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "no consumer-lag metric: cannot create its client");
            return None;
        }
    };
    let progress = Arc::clone(&opts.progress);
    let done = Arc::new(AtomicBool::new(false));
    let done2 = Arc::clone(&done);
    let thread = std::thread::Builder::new()
        .name("stockcast-lag".into())
        .spawn(move || {
            let mut last = Instant::now() - LAG_EVERY;
            while !done2.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(100));
                if last.elapsed() < LAG_EVERY {
                    continue;
                }
                last = Instant::now();
                let positions: Vec<((String, i32), i64)> = match progress.positions.lock() {
                    Ok(p) => p.iter().map(|(k, v)| (k.clone(), *v)).collect(),
                    Err(_) => return,
                };
                for ((topic, partition), position) in positions {
                    if done2.load(Ordering::SeqCst) {
                        return;
                    }
                    if let Ok((_, high)) = consumer.fetch_watermarks(&topic, partition, LAG_TIMEOUT)
                    {
                        progress
                            .metrics
                            .consumer_lag
                            .with_label_values(&[topic.as_str(), &partition.to_string()])
                            .set((high - position).max(0));
                    }
                }
            }
        })
        .ok()?;
    Some(LagProbe {
        done,
        thread: Some(thread),
    })
}

/// Stops the lag probe when dropped.
pub(super) struct LagProbe {
    pub(super) done: Arc<AtomicBool>,
    pub(super) thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for LagProbe {
    fn drop(&mut self) {
        self.done.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

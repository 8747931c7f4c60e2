//! The Kafka client settings every producer, consumer and admin client starts from, the input
//! topics, which worker reads which partition, and the producer context of `load` and the demo.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::producer::{BaseProducer, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientConfig, ClientContext};

use crate::config::KafkaConfig;
use crate::source::files::FileKind;

/// The client configuration every producer, consumer and admin client starts from.
pub fn client_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &kafka.brokers);
    for (k, v) in &kafka.client {
        c.set(k, v);
    }
    c
}

/// How long [`flush`] waits for delivery reports at a time.
const FLUSH_WAIT: Duration = Duration::from_millis(4);
/// How long each of its calls to librdkafka's flush lasts.
const FLUSH_KICK_MS: i32 = 1;

/// Sends what `producer` holds, lingering batches too, and serves its delivery reports, for up
/// to `slice` or until none is outstanding.
///
/// librdkafka sends a batch still within its `linger.ms` at once only while a call to its
/// flush lasts. rust-rdkafka's `flush` calls it with no wait and then polls, so through it the
/// last batches of every write waited out the linger (50 ms per chunk of forecasts: a tenth of
/// the kafka bench's wall time). A flush call that lasts throughout costs CPU instead: while it
/// lasts, librdkafka's broker thread spins on the batches the in-flight limit holds back (a
/// fifth more CPU for the whole worker in that bench). So this serves the reports for
/// [`FLUSH_WAIT`] at a time, and calls librdkafka's flush for [`FLUSH_KICK_MS`] only after a
/// wait in which nothing was answered, when what is left is likely lingering. (With reports as
/// events, as here, librdkafka's flush waits for them to be served, which this thread does
/// between the calls.)
pub fn flush<C: ProducerContext>(producer: &BaseProducer<C>, slice: Duration) {
    let end = Instant::now() + slice;
    let mut left = producer.in_flight_count();
    while left > 0 && Instant::now() < end {
        // Serves every report that comes in the time.
        producer.poll(FLUSH_WAIT);
        let now = producer.in_flight_count();
        if now == left {
            // SAFETY: the handle is `producer`'s, alive while it is borrowed here, and
            // librdkafka's flush may be called from any thread.
            unsafe {
                rdkafka::bindings::rd_kafka_flush(producer.client().native_ptr(), FLUSH_KICK_MS);
            }
        }
        left = now;
    }
}

/// A producer context counting records the broker did not acknowledge.
#[derive(Default)]
pub struct Acks {
    failed: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl Acks {
    /// Starts a new count.
    pub fn reset(&self) {
        self.failed.store(0, Ordering::Relaxed);
    }

    /// `Err` naming the count and the last error if any record failed since [`Acks::reset`].
    pub fn check(&self) -> Result<(), String> {
        let failed = self.failed.load(Ordering::Relaxed);
        if failed == 0 {
            return Ok(());
        }
        let last = self.last_error.lock().ok().and_then(|l| l.clone());
        Err(format!(
            "{failed} records not acknowledged (last error: {})",
            last.unwrap_or_default()
        ))
    }
}

impl ClientContext for Acks {}

impl ProducerContext for Acks {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            self.failed.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut last) = self.last_error.lock() {
                *last = Some(e.to_string());
            }
        }
    }
}

/// The input topics with their record kinds, in a fixed order.
pub fn input_topics(kafka: &KafkaConfig) -> [(FileKind, &str); 6] {
    FileKind::ALL.map(|kind| (kind, kafka.topics.input(kind)))
}

/// The worker that reads partition `partition` of every input topic.
pub fn partition_owner(partition: i32, partition_offset: u32, peers: usize) -> usize {
    ((partition as u64 + partition_offset as u64) % peers.max(1) as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_spread_over_workers_with_the_offset() {
        let owners: Vec<usize> = (0..4).map(|p| partition_owner(p, 0, 2)).collect();
        assert_eq!(owners, vec![0, 1, 0, 1]);
        let owners: Vec<usize> = (0..4).map(|p| partition_owner(p, 1, 3)).collect();
        assert_eq!(owners, vec![1, 2, 0, 1]);
        assert_eq!(partition_owner(5, 0, 1), 0);
    }
}

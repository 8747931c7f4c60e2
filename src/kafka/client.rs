//! The Kafka client settings every producer, consumer and admin client starts from, the input
//! topics, which worker reads which partition, and the producer context of `load` and the demo.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use rdkafka::producer::{DeliveryResult, ProducerContext};
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

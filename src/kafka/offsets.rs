//! The broker as the streaming driver's input (`Broker`): partition assignment, the consumer,
//! and where a restarted worker resumes (committed offsets and frontiers).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use dataflows::Epoch;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::config::{KafkaConfig, Resolved};
use crate::kafka::client::{client_config, input_topics, partition_owner};
use crate::kafka::wire::Partition;
use crate::pipeline::source::{Ends, PollError, Record, Source};

use crate::pipeline::stream::{Input, Opened, StreamError, IDLE_RECHECK, START_TIMEOUT};

/// The input topics on the broker of `[kafka]`: each worker reads its share of their
/// partitions with a consumer of its own (see [`assign`]), and asks for their watermarks with
/// a second one.
pub struct Broker {
    cfg: Resolved,
}

impl Broker {
    /// The input topics of `cfg`'s `[kafka]`.
    pub fn new(cfg: &Resolved) -> Broker {
        Broker { cfg: cfg.clone() }
    }
}

impl Input for Broker {
    fn open(
        &self,
        (index, peers): (usize, usize),
        start_at: &HashMap<(String, i32), i64>,
        lost: Option<&prometheus::IntGauge>,
    ) -> Result<Opened, StreamError> {
        let reader = consumer(&self.cfg)?;
        let assigned = assign(&reader, &self.cfg, index, peers, start_at, lost)?;
        Ok(Opened {
            source: Box::new(reader),
            ends: Box::new(consumer(&self.cfg)?),
            assigned,
        })
    }

    fn idleness(&self) -> (Duration, Duration) {
        (
            Duration::from_secs(self.cfg.kafka.idle_timeout_secs),
            IDLE_RECHECK,
        )
    }

    fn reader_of(&self, partition: &Partition, peers: usize) -> usize {
        partition_owner(partition.partition, self.cfg.kafka.partition_offset, peers)
    }
}

/// Reads the partition counts of the input topics and assigns this worker its share, from the
/// beginning (see the module docs); returns the partitions with their committed offsets.
pub(crate) fn assign(
    consumer: &BaseConsumer,
    cfg: &Resolved,
    index: usize,
    peers: usize,
    start_at: &HashMap<(String, i32), i64>,
    lost: Option<&prometheus::IntGauge>,
) -> Result<Vec<(Partition, i64)>, StreamError> {
    let kafka = &cfg.kafka;
    let mut mine = Vec::new();
    for (kind, topic) in input_topics(kafka) {
        let md = consumer
            .fetch_metadata(Some(topic), START_TIMEOUT)
            .map_err(StreamError::request(format!("metadata of topic `{topic}`")))?;
        let t = md
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .ok_or_else(|| StreamError::MissingTopic(topic.to_string()))?;
        if t.error().is_some() || t.partitions().is_empty() {
            return Err(StreamError::MissingTopic(topic.to_string()));
        }
        for p in t.partitions() {
            if partition_owner(p.id(), kafka.partition_offset, peers) == index {
                mine.push(Partition {
                    kind,
                    topic: topic.to_string(),
                    partition: p.id(),
                });
            }
        }
    }
    mine.sort();
    let mut tpl = TopicPartitionList::new();
    for p in &mine {
        tpl.add_partition(&p.topic, p.partition);
    }
    let committed = if mine.is_empty() {
        TopicPartitionList::new()
    } else {
        consumer
            .committed_offsets(tpl.clone(), START_TIMEOUT)
            .map_err(StreamError::request("committed offsets"))?
    };
    let mut out = Vec::new();
    for p in mine {
        let c = committed
            .find_partition(&p.topic, p.partition)
            .and_then(|e| e.offset().to_raw())
            .filter(|o| *o >= 0)
            .unwrap_or(0);
        let start = match start_at.get(&(p.topic.clone(), p.partition)) {
            Some(o) => Offset::Offset(*o),
            None => {
                if let Some(gauge) = lost {
                    if history_lost(consumer, &p) {
                        gauge.inc();
                    }
                }
                Offset::Beginning
            }
        };
        tpl.set_partition_offset(&p.topic, p.partition, start)
            .map_err(StreamError::request(format!(
                "start offset of {}",
                p.label()
            )))?;
        out.push((p, c));
    }
    consumer
        .assign(&tpl)
        .map_err(StreamError::request("assign"))?;
    Ok(out)
}

/// Says loudly when a partition read from its beginning no longer starts at offset 0: its
/// oldest records were deleted (retention), so the state rebuilt from it lacks their history.
pub(crate) fn history_lost(consumer: &BaseConsumer, p: &Partition) -> bool {
    match consumer.fetch_watermarks(&p.topic, p.partition, START_TIMEOUT) {
        Ok((low, _)) if low > 0 && !p.kind.is_reference() => {
            tracing::error!(
                partition = %p.label(),
                earliest_offset = low,
                "history lost: the partition's records below its earliest offset were deleted (retention) \
                 and no checkpoint holds them; features that look back further than what is left \
                 are computed from partial history. Configure [checkpoint] dir so that a restart \
                 does not depend on the topics' retention"
            );
            true
        }
        Ok(_) => false,
        Err(e) => {
            tracing::debug!(partition = %p.label(), error = %e, "earliest offset unknown");
            false
        }
    }
}

/// The consumer's own defaults, each unless `[kafka.client]` sets it.
const CONSUMER_DEFAULTS: [(&str, &str); 2] = [
    // A partition resumed after a pause (see `pipeline::stream::throttle`) is fetched once the
    // fetch in flight returns, and a fetch of partitions with nothing new waits this long on
    // the broker (librdkafka's default is 500 ms).
    ("fetch.wait.max.ms", "100"),
    // Once a partition's prefetched records pass librdkafka's queue thresholds
    // (`queued.min.messages`, `queued.max.messages.kbytes`), its next fetch waits this long
    // even after the worker has taken them all. With librdkafka's default of 1 s, a worker
    // reading a backlog took each partition's prefetch in a fraction of a second and then
    // waited out the rest. In the day-rollover bench (830k events, 4 partitions per topic),
    // event time waited 8.8 s at start for the reference partitions, fetched after the first
    // sales; with 10 ms it waits 3.1 s. The thresholds still bound what is prefetched.
    ("fetch.queue.backoff.ms", "10"),
];

/// The consumer every worker reads with: no group membership, no automatic commits.
pub(crate) fn consumer(cfg: &Resolved) -> Result<BaseConsumer, StreamError> {
    consumer_config(&cfg.kafka)
        .create()
        .map_err(|e| StreamError::Client(cfg.kafka.scrub(e)))
}

/// What [`consumer`] is created from: `[kafka.client]` over the consumer's own defaults.
fn consumer_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut config = client_config(kafka);
    for (key, value) in CONSUMER_DEFAULTS {
        if !kafka.client.contains_key(key) {
            config.set(key, value);
        }
    }
    config
        .set("group.id", &kafka.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest");
    config
}

/// The broker's consumer as the driver's source: its assigned partitions' records, as fetched.
impl Source for BaseConsumer {
    fn poll(
        &mut self,
        wait: Duration,
        take: &mut dyn FnMut(&Record<'_>),
    ) -> Option<Result<(), PollError>> {
        Some(match BaseConsumer::poll(self, wait)? {
            Ok(msg) => {
                take(&Record {
                    topic: msg.topic(),
                    partition: msg.partition(),
                    offset: msg.offset(),
                    key: msg.key(),
                    payload: msg.payload(),
                    event: None,
                });
                Ok(())
            }
            Err(e) => Err(PollError(e.to_string())),
        })
    }

    /// librdkafka drops what it fetched of a paused partition and, on resuming, fetches from
    /// the offset after the last record it handed over.
    fn pause(&mut self, topic: &str, partition: i32, paused: bool) -> Result<(), PollError> {
        let mut list = TopicPartitionList::new();
        list.add_partition(topic, partition);
        let done = if paused {
            Consumer::pause(self, &list)
        } else {
            Consumer::resume(self, &list)
        };
        done.map_err(|e| PollError(e.to_string()))
    }
}

/// The broker's watermarks, asked through a consumer of their own (on the reading consumer's
/// connection, the requests would queue behind fetches that wait for data).
impl Ends for BaseConsumer {
    fn ends(
        &self,
        topic: &str,
        partition: i32,
        timeout: Duration,
    ) -> Result<(i64, i64), PollError> {
        self.fetch_watermarks(topic, partition, timeout)
            .map_err(|e| PollError(e.to_string()))
    }
}

/// The epoch stored with committed offsets: outputs of epochs before it were acknowledged.
pub fn commit_metadata(frontier: Epoch) -> String {
    format!("stockcast-frontier={frontier}")
}

pub(crate) fn parse_commit_metadata(text: &str) -> Option<Epoch> {
    text.strip_prefix("stockcast-frontier=")?.parse().ok()
}

/// The frontier committed by a previous run under the configured group (the least over the
/// input partitions that carry one), or `None` for a first run.
pub fn committed_frontier(cfg: &Resolved) -> Result<Option<Epoch>, StreamError> {
    let consumer = consumer(cfg)?;
    let mut tpl = TopicPartitionList::new();
    for (_, topic) in input_topics(&cfg.kafka) {
        let md = consumer
            .fetch_metadata(Some(topic), START_TIMEOUT)
            .map_err(StreamError::request(format!("metadata of topic `{topic}`")))?;
        for t in md.topics() {
            for p in t.partitions() {
                tpl.add_partition(topic, p.id());
            }
        }
    }
    if tpl.count() == 0 {
        return Ok(None);
    }
    let committed = consumer
        .committed_offsets(tpl, START_TIMEOUT)
        .map_err(StreamError::request("committed offsets"))?;
    let elements = committed.elements();
    if let Some(f) = elements
        .iter()
        .filter_map(|e| parse_commit_metadata(e.metadata()))
        .min()
    {
        return Ok(Some(f));
    }
    if !elements
        .iter()
        .any(|e| e.offset().to_raw().is_some_and(|o| o >= 0))
    {
        return Ok(None);
    }
    // Offsets were committed but the broker dropped their metadata (tansu does): the progress
    // records, written just before each commit, say how far output went.
    last_progress_frontier(&consumer, &cfg.kafka.topics.epochs)
}

/// The largest frontier on the progress topic: read to its end (until it stays quiet past the
/// high watermark, which some brokers report early).
pub(crate) fn last_progress_frontier(
    consumer: &BaseConsumer,
    topic: &str,
) -> Result<Option<Epoch>, StreamError> {
    let kafka_err = |source| StreamError::Request {
        what: format!("reading `{topic}`"),
        source,
    };
    let md = consumer
        .fetch_metadata(Some(topic), START_TIMEOUT)
        .map_err(kafka_err)?;
    let mut tpl = TopicPartitionList::new();
    let mut high: HashMap<i32, i64> = HashMap::new();
    for t in md.topics() {
        for p in t.partitions() {
            let (_, hi) = consumer
                .fetch_watermarks(topic, p.id(), START_TIMEOUT)
                .map_err(kafka_err)?;
            high.insert(p.id(), hi);
            tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
                .map_err(kafka_err)?;
        }
    }
    consumer.assign(&tpl).map_err(kafka_err)?;
    let mut best: Option<Epoch> = None;
    let mut reached: HashMap<i32, i64> = HashMap::new();
    let mut quiet_since = Instant::now();
    let started = Instant::now();
    loop {
        match consumer.poll(Duration::from_millis(50)) {
            Some(Ok(m)) => {
                quiet_since = Instant::now();
                reached.insert(m.partition(), m.offset() + 1);
                if let Some(r) = m
                    .payload()
                    .and_then(|v| serde_json::from_slice::<crate::kafka::wire::EpochRecord>(v).ok())
                {
                    best = best.max(Some(r.frontier));
                }
            }
            Some(Err(e)) => return Err(kafka_err(e)),
            None => {}
        }
        let at_end = high
            .iter()
            .all(|(p, hi)| *hi <= 0 || reached.get(p).is_some_and(|r| *r >= *hi));
        if at_end && quiet_since.elapsed() > Duration::from_secs(1) {
            break;
        }
        if started.elapsed() > START_TIMEOUT {
            return Err(StreamError::Timeout {
                what: format!("reading `{topic}` to find where output stopped"),
                secs: START_TIMEOUT.as_secs(),
            });
        }
    }
    consumer.unassign().map_err(kafka_err)?;
    Ok(best)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_metadata_round_trips() {
        assert_eq!(parse_commit_metadata(&commit_metadata(4242)), Some(4242));
        assert_eq!(parse_commit_metadata("other"), None);
    }

    #[test]
    fn the_consumer_defaults_yield_to_kafka_client() {
        let mut kafka = KafkaConfig::default();
        let config = consumer_config(&kafka);
        assert_eq!(config.get("fetch.queue.backoff.ms"), Some("10"));
        assert_eq!(config.get("fetch.wait.max.ms"), Some("100"));
        kafka
            .client
            .insert("fetch.queue.backoff.ms".into(), "250".into());
        let config = consumer_config(&kafka);
        assert_eq!(config.get("fetch.queue.backoff.ms"), Some("250"));
        assert_eq!(config.get("enable.auto.commit"), Some("false"));
    }
}

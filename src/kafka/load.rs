//! `load`: publishes a dataset directory (the layout `replay` reads) into the input topics.
//!
//! Reference data goes first (with what `replay` derives where the dataset lacks it: the
//! promotion calendar from promotion flags, the price plan from the sales' prices), then sales and stock movements in event-time order (ties in file
//! order), exactly the order `replay` presents them in; events are keyed `store_id:sku_id`, so
//! each series stays on one partition and in order there. Rows that do not decode are reported
//! with file, line and reason, and not published.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use rdkafka::config::FromClientConfigAndContext;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use serde::Serialize;

use crate::config::KafkaConfig;
use crate::decode::Record;
use crate::records::dead::DeadLetterRecord;
use crate::source::files;
use crate::source::topics::to_publish;

use super::client::{client_config, Acks};
use super::{admin, wire};

/// Options of `load`.
pub struct LoadOptions {
    /// Dataset directory.
    pub data: PathBuf,
    /// Records per second at most; `None` for as fast as the broker takes them.
    pub rate: Option<f64>,
    /// Partitions of topics that do not exist yet.
    pub partitions: i32,
    /// Show a progress bar.
    pub progress: bool,
    /// The demand period, which the derived price plan and promotion calendar follow.
    pub period: dataflows::PeriodKind,
}

/// What `load` did.
#[derive(Debug, Serialize)]
pub struct LoadReport {
    /// Records published per topic.
    pub published: std::collections::BTreeMap<String, u64>,
    /// Rows that could not be decoded (not published).
    pub rejected: Vec<DeadLetterRecord>,
    /// Wall-clock seconds.
    pub secs: f64,
    /// Records per second.
    pub records_per_sec: f64,
}

/// Why `load` failed.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The dataset could not be read.
    #[error(transparent)]
    Data(#[from] files::LoadError),
    /// Topics could not be created.
    #[error(transparent)]
    Admin(#[from] admin::AdminError),
    /// The broker refused or did not acknowledge records.
    #[error("kafka: {0}")]
    Kafka(String),
}

/// The topic a record goes to.
pub fn topic_of<'a>(kafka: &'a KafkaConfig, record: &Record) -> &'a str {
    kafka.topics.input(files::FileKind::of(record))
}

/// [`to_publish`] without the origins.
pub fn records_to_publish(data: files::Dataset, period: dataflows::PeriodKind) -> Vec<Record> {
    to_publish(data, period)
        .into_iter()
        .map(|(r, _)| r)
        .collect()
}

/// An idempotent producer for publishing input records.
pub fn producer(kafka: &KafkaConfig) -> Result<BaseProducer<Acks>, LoadError> {
    let mut c = client_config(kafka);
    c.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "500000");
    BaseProducer::from_config_and_context(&c, Acks::default())
        .map_err(|e| LoadError::Kafka(format!("producer: {}", kafka.scrub(e))))
}

/// Produces one record, waiting while the local queue is full.
pub fn send(producer: &BaseProducer<Acks>, topic: &str, record: &Record) -> Result<(), LoadError> {
    let key = wire::record_key(record);
    let value = serde_json::to_vec(&wire::record_value(record))
        .map_err(|e| LoadError::Kafka(e.to_string()))?;
    let mut out = BaseRecord::to(topic).key(&key).payload(&value);
    loop {
        match producer.send(out) {
            Ok(()) => return Ok(()),
            Err((e, back)) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) => {
                out = back;
                producer.poll(Duration::from_millis(5));
            }
            Err((e, _)) => return Err(LoadError::Kafka(format!("produce to {topic}: {e}"))),
        }
    }
}

/// Publishes the dataset; returns once the broker acknowledged every record.
pub fn load(kafka: &KafkaConfig, opts: &LoadOptions) -> Result<LoadReport, LoadError> {
    let started = Instant::now();
    let data = files::load(&opts.data)?;
    admin::ensure_topics(kafka, opts.partitions)?;
    let rejected = data.dead_letters.clone();
    let records = records_to_publish(data, opts.period);
    let producer = producer(kafka)?;
    let bar = crate::display::progress_bar(
        records.len() as u64,
        "{elapsed_precise} [{bar:40}] {pos}/{len} records {per_sec}",
        opts.progress,
    );
    let mut published = std::collections::BTreeMap::new();
    for (i, record) in records.iter().enumerate() {
        if let Some(rate) = opts.rate.filter(|r| *r > 0.0) {
            let due = Duration::from_secs_f64(i as f64 / rate);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        let topic = topic_of(kafka, record);
        send(&producer, topic, record)?;
        *published.entry(topic.to_string()).or_insert(0u64) += 1;
        if i % 1024 == 0 {
            producer.poll(Duration::ZERO);
            bar.set_position(i as u64);
        }
    }
    producer
        .flush(Duration::from_secs(120))
        .map_err(|e| LoadError::Kafka(format!("not all records were acknowledged: {e}")))?;
    producer.context().check().map_err(LoadError::Kafka)?;
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    Ok(LoadReport {
        published,
        rejected,
        secs,
        records_per_sec: records.len() as f64 / secs.max(1e-9),
    })
}

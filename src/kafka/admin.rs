//! Topic creation for `load`, the tests and the demo, and deletion for the benchmarks.
//!
//! The worker never creates topics: a missing input topic stops it at start with the name.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;

use crate::config::KafkaConfig;

use super::client::{client_config, input_topics};

/// Why topics could not be created or deleted.
#[derive(Debug, thiserror::Error)]
#[error("{action} topic `{topic}`: {message}")]
pub struct AdminError {
    /// What was being done: `creating` or `deleting`.
    pub action: &'static str,
    /// The topic.
    pub topic: String,
    /// What the broker or client said.
    pub message: String,
}

const CREATING: &str = "creating";
const DELETING: &str = "deleting";

/// The admin client of `kafka`'s brokers.
fn admin(
    kafka: &KafkaConfig,
    action: &'static str,
) -> Result<AdminClient<DefaultClientContext>, AdminError> {
    client_config(kafka).create().map_err(|e| AdminError {
        action,
        topic: "*".into(),
        message: kafka.scrub(e),
    })
}

/// Every topic the worker reads or writes, with whether it is compacted.
pub fn all_topics(kafka: &KafkaConfig) -> Vec<(String, bool)> {
    let mut out: Vec<(String, bool)> = input_topics(kafka)
        .into_iter()
        .map(|(kind, name)| {
            let compacted = !matches!(
                kind,
                crate::source::files::FileKind::Sales | crate::source::files::FileKind::Stock
            );
            (name.to_string(), compacted)
        })
        .collect();
    let t = &kafka.topics;
    for name in [&t.forecasts, &t.epochs, &t.dead_letters] {
        out.push((name.clone(), false));
    }
    out
}

/// Creates every topic of the configuration that does not exist yet, with `partitions`
/// partitions (reference topics compacted); existing topics are left as they are.
pub fn ensure_topics(kafka: &KafkaConfig, partitions: i32) -> Result<(), AdminError> {
    let admin = admin(kafka, CREATING)?;
    let topics = all_topics(kafka);
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|(name, compacted)| {
            let t = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
            if *compacted {
                t.set("cleanup.policy", "compact")
            } else {
                t
            }
        })
        .collect();
    let results = futures_executor::block_on(admin.create_topics(&new, &options()));
    settled(results, RDKafkaErrorCode::TopicAlreadyExists, CREATING)
}

/// Deletes every topic of the configuration; those that do not exist are skipped. A benchmark
/// that made its own topics deletes them when it ends: the test broker keeps every topic in
/// memory until it stops, and a broker swollen by earlier runs makes later runs slower.
pub fn delete_topics(kafka: &KafkaConfig) -> Result<(), AdminError> {
    let admin = admin(kafka, DELETING)?;
    let topics = all_topics(kafka);
    let names: Vec<&str> = topics.iter().map(|(name, _)| name.as_str()).collect();
    let results = futures_executor::block_on(admin.delete_topics(&names, &options()));
    settled(results, RDKafkaErrorCode::UnknownTopicOrPartition, DELETING)
}

/// How long the broker may take over a request.
fn options() -> AdminOptions {
    AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)))
}

/// The first topic the request failed for, with why; a topic that failed with `done` (already
/// as asked) counts as settled.
fn settled(
    results: rdkafka::error::KafkaResult<Vec<rdkafka::admin::TopicResult>>,
    done: RDKafkaErrorCode,
    action: &'static str,
) -> Result<(), AdminError> {
    let results = results.map_err(|e| AdminError {
        action,
        topic: "*".into(),
        message: e.to_string(),
    })?;
    match results
        .into_iter()
        .find_map(|r| r.err().filter(|(_, code)| *code != done))
    {
        Some((topic, code)) => Err(AdminError {
            action,
            topic,
            message: code.to_string(),
        }),
        None => Ok(()),
    }
}

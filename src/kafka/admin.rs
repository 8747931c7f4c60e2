//! Topic creation for `load`, the tests and the demo.
//!
//! The worker never creates topics: a missing input topic stops it at start with the name.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;

use crate::config::KafkaConfig;

use super::client::{client_config, input_topics};

/// Why topics could not be created.
#[derive(Debug, thiserror::Error)]
#[error("creating topic `{topic}`: {message}")]
pub struct AdminError {
    /// The topic.
    pub topic: String,
    /// What the broker or client said.
    pub message: String,
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
    let admin: AdminClient<DefaultClientContext> =
        client_config(kafka).create().map_err(|e| AdminError {
            topic: "*".into(),
            message: kafka.scrub(e),
        })?;
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
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results =
        futures_executor::block_on(admin.create_topics(&new, &opts)).map_err(|e| AdminError {
            topic: "*".into(),
            message: e.to_string(),
        })?;
    for r in results {
        if let Err((topic, code)) = r {
            if code != RDKafkaErrorCode::TopicAlreadyExists {
                return Err(AdminError {
                    topic,
                    message: code.to_string(),
                });
            }
        }
    }
    Ok(())
}

//! The Kafka topics as a sink: an advance's dead letters and forecasts, then its progress
//! records, each only after what comes before was acknowledged.
//!
//! # Error handling
//! - **Transient failures** (broker down, timeouts): the write returns an error and is called
//!   again with the same advance ([`super::retry`]); only the records not acknowledged yet (and
//!   any later record of the same key) are produced again. When the idempotent producer hits a
//!   fatal error (e.g. the broker forgot its producer id), or after every few failed attempts in
//!   a row, it is replaced by a new one. Records may therefore appear twice on the output
//!   topics, never zero times (see the delivery guarantee in [`crate::kafka`]).
//! - **Permanent refusals of one record** (too large, invalid, not authorized): the record is
//!   replaced by a small `undeliverable` dead letter naming the topic, key, size and error, with
//!   the record's first bytes; it is counted (`stockcast_undeliverable_total`) and logged as an
//!   error. Should that dead letter be refused for good too, the dead-letter topic itself is
//!   unusable: the write fails for good, and nothing after it is committed.
//! - **Stopping**: a signal cuts the wait for acknowledgements to
//!   [`STOP_GRACE`](super::STOP_GRACE); then the advance counts as not delivered.

mod acks;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use rdkafka::config::FromClientConfigAndContext;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;

use self::acks::{refused_for_good, SinkAcks};
use super::build::Advance;
use super::sink::{Context, OutputError, Sink, WriteError};
use crate::config::{KafkaConfig, Resolved};
use crate::records::DeadLetterRecord;

use crate::kafka::wire::{ORIGINAL_LENGTH_HEADER, ORIGINAL_VALUE_HEADER};

/// Failed delivery attempts in a row after which the producer is replaced.
const REPLACE_AFTER_ATTEMPTS: u32 = 3;
/// How long one delivery attempt may wait for acknowledgements.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes of a refused record an `undeliverable` dead letter repeats.
const UNDELIVERABLE_PREFIX_BYTES: usize = 1024;

/// What an output record is: its metrics, and what a permanent refusal leads to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OutKind {
    Forecast,
    /// A dead letter, with its reason.
    DeadLetter(crate::metrics::Reason),
    Progress,
}

impl OutKind {
    fn name(self) -> &'static str {
        match self {
            OutKind::Forecast => "forecast",
            OutKind::DeadLetter(_) => "dead_letter",
            OutKind::Progress => "progress",
        }
    }
}

/// A record ready to produce.
struct Out {
    topic: String,
    key: String,
    value: Vec<u8>,
    /// The refused record's bytes (a dead letter's header), and its full length.
    original: Option<(Vec<u8>, usize)>,
    kind: OutKind,
}

/// Why the broker did not take a record.
#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    /// The broker or the client answered with an error.
    #[error("produce to {topic}: {source}")]
    Refused {
        /// The topic.
        topic: String,
        /// The answer.
        source: KafkaError,
    },
    /// No answer came in time.
    #[error("produce to {topic}: no acknowledgement within {secs} s")]
    NoAnswer {
        /// The topic.
        topic: String,
        /// How long the attempt waited.
        secs: u64,
    },
    /// The dead-letter topic refused the dead letter that stood for a refused record.
    #[error("topic `{topic}` refused an undeliverable notice: {reason}")]
    DeadLetterTopicRefuses {
        /// The dead-letter topic.
        topic: String,
        /// Why.
        reason: String,
    },
}

/// The records of the advance being written, and which are not acknowledged yet.
struct Delivery {
    batch: Vec<Out>,
    /// Indices into `batch` still to produce, increasing.
    todo: Vec<usize>,
    /// Records acknowledged so far.
    acked: u64,
}

/// The sink; see the module docs.
pub struct KafkaSink {
    kafka: KafkaConfig,
    producer: BaseProducer<SinkAcks>,
    /// The advance being written, between a failed attempt and the next.
    pending: Option<Delivery>,
    /// Failed attempts in a row.
    failures: u32,
}

fn producer(kafka: &KafkaConfig) -> Result<BaseProducer<SinkAcks>, OutputError> {
    let mut c = crate::kafka::client::client_config(kafka);
    c.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "20000");
    BaseProducer::from_config_and_context(&c, SinkAcks::default()).map_err(|e| OutputError::Kafka {
        client: "producer",
        error: kafka.scrub(e),
    })
}

impl KafkaSink {
    /// A sink producing to `cfg`'s output topics.
    pub fn new(cfg: &Resolved) -> Result<KafkaSink, OutputError> {
        Ok(KafkaSink {
            kafka: cfg.kafka.clone(),
            producer: producer(&cfg.kafka)?,
            pending: None,
            failures: 0,
        })
    }

    /// The records of `advance`, dead letters and forecasts first, progress records last.
    fn delivery(&self, advance: &Advance) -> Delivery {
        let topics = &self.kafka.topics;
        let dead = advance.dead_letters.iter().map(|d| Out {
            topic: topics.dead_letters.clone(),
            key: format!(
                "{}/{}@{}",
                d.record.topic, d.record.partition, d.record.offset
            ),
            value: serde_json::to_vec(&d.record).unwrap_or_default(),
            original: d.original.clone(),
            kind: OutKind::DeadLetter(d.reason),
        });
        let forecasts = advance.forecasts.iter().map(|r| Out {
            topic: topics.forecasts.clone(),
            key: format!("{}:{}", r.store_id, r.sku_id),
            value: serde_json::to_vec(r).unwrap_or_default(),
            original: None,
            kind: OutKind::Forecast,
        });
        let progress = advance.progress.iter().map(|r| Out {
            topic: topics.epochs.clone(),
            key: r.epoch_end.clone(),
            value: serde_json::to_vec(r).unwrap_or_default(),
            original: None,
            kind: OutKind::Progress,
        });
        let batch: Vec<Out> = dead.chain(forecasts).chain(progress).collect();
        Delivery {
            todo: (0..batch.len()).collect(),
            batch,
            acked: 0,
        }
    }

    /// Produces what `d` still holds until it is all acknowledged: first every record that is
    /// not a progress record, then the progress records.
    fn deliver(&mut self, d: &mut Delivery, cx: &mut Context<'_>) -> Result<(), WriteError> {
        loop {
            let first: Vec<usize> = (d.todo.iter().copied())
                .filter(|&i| d.batch[i].kind != OutKind::Progress)
                .collect();
            let now = if first.is_empty() {
                d.todo.clone()
            } else {
                first
            };
            if now.is_empty() {
                return Ok(());
            }
            let failures = self.attempt(&d.batch, &now, cx)?;
            d.acked += (now.len() - failures.len()) as u64;
            let mut retry: Vec<usize> = Vec::new();
            let mut transient: Option<ProduceError> = None;
            let mut failed: Vec<usize> = Vec::new();
            for (i, error, permanent) in failures {
                if !permanent {
                    transient.get_or_insert(error);
                    failed.push(i);
                    continue;
                }
                let notice = self.undeliverable(&d.batch[i], &error, cx)?;
                d.batch.push(notice);
                retry.push(d.batch.len() - 1);
            }
            // Per-key order: a later record of a key whose earlier one failed goes again too.
            if let Some(&first) = failed.iter().min() {
                let batch = &d.batch;
                let keys: HashSet<&str> = failed.iter().map(|&i| batch[i].key.as_str()).collect();
                retry.extend(
                    now.iter()
                        .copied()
                        .filter(|&j| j > first && keys.contains(batch[j].key.as_str())),
                );
            }
            retry.extend(failed);
            // What this attempt did not send is still to do.
            let sent: HashSet<usize> = now.into_iter().collect();
            retry.extend(d.todo.iter().copied().filter(|i| !sent.contains(i)));
            retry.sort_unstable();
            retry.dedup();
            d.todo = retry;
            if let Some(why) = transient {
                return Err(WriteError::transient(why));
            }
        }
    }

    /// A new producer, after a fatal error or every few failed attempts in a row: a broker
    /// that lost the producer's state (or rejects its sequence numbers after a reconnect) can
    /// leave it failing without a fatal error.
    fn after_failure(&mut self, cx: &mut Context<'_>) {
        self.failures += 1;
        let fatal = self.producer.client().fatal_error();
        if fatal.is_none() && !self.failures.is_multiple_of(REPLACE_AFTER_ATTEMPTS) {
            return;
        }
        tracing::warn!(?fatal, attempts = self.failures, "replacing the producer");
        match producer(&self.kafka) {
            Ok(p) => {
                self.producer = p;
                cx.stats.producers_replaced += 1;
            }
            Err(e) => tracing::error!(%e, "cannot create a producer"),
        }
    }

    /// The small dead letter that stands for `out`, which the broker refused for good; counts
    /// and logs it. `Err` when `out` is such a dead letter already: the dead-letter topic
    /// itself refuses.
    fn undeliverable(
        &self,
        out: &Out,
        error: &ProduceError,
        cx: &mut Context<'_>,
    ) -> Result<Out, WriteError> {
        if out.kind == OutKind::DeadLetter("undeliverable") {
            return Err(WriteError::Fatal(Box::new(
                ProduceError::DeadLetterTopicRefuses {
                    topic: out.topic.clone(),
                    reason: error.to_string(),
                },
            )));
        }
        let kind = out.kind.name();
        let m = &cx.progress.metrics;
        m.undeliverable.with_label_values(&["kafka", kind]).inc();
        tracing::error!(topic = %out.topic, key = %crate::decode::shown(&out.key), bytes = out.value.len(), record = kind, %error, "a record was refused for good; an undeliverable dead letter replaces it");
        let prefix = &out.value[..out.value.len().min(UNDELIVERABLE_PREFIX_BYTES)];
        let letter = DeadLetterRecord {
            topic: out.topic.clone(),
            partition: -1,
            offset: -1,
            reason: "undeliverable".into(),
            detail: format!("the {kind} record was refused for good: {error}"),
            key: Some(crate::decode::shown(&out.key)),
            value: Some(String::from_utf8_lossy(prefix).into_owned()),
            value_bytes: out.value.len(),
            value_truncated: prefix.len() < out.value.len(),
        };
        *cx.stats
            .dead_letters
            .entry("undeliverable".into())
            .or_default() += 1;
        m.dead_letters.with_label_values(&["undeliverable"]).inc();
        Ok(Out {
            topic: self.kafka.topics.dead_letters.clone(),
            key: format!("undeliverable/{}", out.topic),
            value: serde_json::to_vec(&letter).unwrap_or_default(),
            original: None,
            kind: OutKind::DeadLetter("undeliverable"),
        })
    }

    /// Produces the records `todo` of `batch` once and waits for their answers; returns the
    /// ones that failed, with the error and whether it is permanent.
    fn attempt(
        &mut self,
        batch: &[Out],
        todo: &[usize],
        cx: &Context<'_>,
    ) -> Result<Vec<(usize, ProduceError, bool)>, WriteError> {
        let generation = self.producer.context().start(batch.len(), todo);
        for &i in todo {
            let out = &batch[i];
            let opaque = ((generation as usize) << 32) | i;
            let mut record = BaseRecord::with_opaque_to(&out.topic, opaque)
                .key(out.key.as_bytes())
                .payload(&out.value);
            if let Some((original, len)) = &out.original {
                let mut headers = OwnedHeaders::new().insert(Header {
                    key: ORIGINAL_VALUE_HEADER,
                    value: Some(original.as_slice()),
                });
                if original.len() < *len {
                    let len = len.to_string();
                    headers = headers.insert(Header {
                        key: ORIGINAL_LENGTH_HEADER,
                        value: Some(len.as_bytes()),
                    });
                }
                record = record.headers(headers);
            }
            loop {
                match self.producer.send(record) {
                    Ok(()) => break,
                    Err((e, back)) => {
                        let full =
                            matches!(e.rdkafka_error_code(), Some(RDKafkaErrorCode::QueueFull));
                        if !full {
                            self.producer.context().answer(i, Err(e));
                            break;
                        }
                        if cx.stop.past_grace() {
                            return Err(WriteError::Stopped);
                        }
                        record = back;
                        self.producer.poll(Duration::from_millis(10));
                    }
                }
            }
        }
        let started = Instant::now();
        while self.producer.context().outstanding() > 0 && started.elapsed() < FLUSH_TIMEOUT {
            // Short slices, so a stop is seen while the broker does not answer.
            let _ = self.producer.flush(Duration::from_millis(200));
            if cx.stop.past_grace() {
                return Err(WriteError::Stopped);
            }
        }
        let mut failures = Vec::new();
        for (i, answer) in self.producer.context().take(todo) {
            let topic = batch[i].topic.clone();
            match answer {
                Some(Ok(())) => {}
                Some(Err(source)) => {
                    let permanent = refused_for_good(&source);
                    failures.push((i, ProduceError::Refused { topic, source }, permanent))
                }
                None => failures.push((
                    i,
                    ProduceError::NoAnswer {
                        topic,
                        secs: FLUSH_TIMEOUT.as_secs(),
                    },
                    false,
                )),
            }
        }
        Ok(failures)
    }
}

impl Sink for KafkaSink {
    fn name(&self) -> &'static str {
        "kafka"
    }

    fn write(&mut self, advance: &Advance, cx: &mut Context<'_>) -> Result<u64, WriteError> {
        let mut d = match self.pending.take() {
            Some(d) => d,
            None => self.delivery(advance),
        };
        match self.deliver(&mut d, cx) {
            Ok(()) => {
                self.failures = 0;
                // The undeliverable dead letters that stood in for refused records are out.
                let notices = (d.batch.iter())
                    .filter(|o| o.kind == OutKind::DeadLetter("undeliverable"))
                    .count() as u64;
                let written = &cx.progress.metrics.dead_letters_written;
                written
                    .with_label_values(&["undeliverable"])
                    .inc_by(notices);
                Ok(d.acked)
            }
            Err(e) => {
                if matches!(e, WriteError::Transient(_)) {
                    self.after_failure(cx);
                }
                self.pending = Some(d);
                Err(e)
            }
        }
    }
}

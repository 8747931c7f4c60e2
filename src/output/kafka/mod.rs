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
use std::io::Write as _;
use std::ops::Range;
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
use crate::kafka::client::Reporting;
use crate::records::json::Json;
use crate::records::{DeadContent, DeadLetterRecord, DeadSource};

use crate::kafka::wire::{ORIGINAL_LENGTH_HEADER, ORIGINAL_VALUE_HEADER};

/// Failed delivery attempts in a row after which the producer is replaced.
const REPLACE_AFTER_ATTEMPTS: u32 = 3;
/// How long one delivery attempt may wait for acknowledgements.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest byte buffer kept for the next delivery (a chunk of forecasts takes about 25 MB).
const SPARE_BYTES: usize = 64 << 20;
/// Records encoded at a time ahead of the one being produced: about 750 kB, so the first
/// batches go to the broker while the rest of a part is encoded.
const ENCODE_AHEAD: usize = 512;
/// Bytes of a refused record an `undeliverable` dead letter repeats.
const UNDELIVERABLE_PREFIX_BYTES: usize = 1024;

/// What an output record is: its metrics, and what a permanent refusal leads to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OutKind {
    Forecast,
    DeadLetter,
    /// The dead letter that stands for a record the broker refused for good.
    Undeliverable,
    Progress,
}

impl OutKind {
    fn name(self) -> &'static str {
        match self {
            OutKind::Forecast => "forecast",
            OutKind::DeadLetter | OutKind::Undeliverable => "dead_letter",
            OutKind::Progress => "progress",
        }
    }
}

/// Which output topic a record goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Topic {
    Forecasts,
    DeadLetters,
    Epochs,
}

/// A record ready to produce; its key and value are ranges of its delivery's `bytes`.
struct Out {
    topic: Topic,
    key: Range<usize>,
    value: Range<usize>,
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
///
/// The advance's records are encoded as they are first produced, a block at a time, so that
/// the broker works on the first batches while the rest are encoded: index `i` of the batch is
/// the advance's dead letters, then its forecasts, then its progress records, in order, and the
/// `undeliverable` notices that stand for refused records come after all of them.
struct Delivery {
    /// Every record's key and value, one after the other: one buffer per advance instead of
    /// two allocations per record.
    bytes: Vec<u8>,
    /// The records encoded so far.
    batch: Vec<Out>,
    /// The advance's dead letters and forecasts: the indices below are not progress records.
    before_progress: usize,
    /// The advance's records (`batch` holds them all once encoded, then the notices).
    total: usize,
    /// Indices into `batch` still to produce, increasing.
    todo: Vec<usize>,
    /// Records acknowledged so far.
    acked: u64,
}

impl Delivery {
    /// Appends a record whose key `key` writes and whose value is `value`'s JSON.
    fn push(
        &mut self,
        topic: Topic,
        kind: OutKind,
        key: impl FnOnce(&mut Vec<u8>),
        value: &impl Json,
        original: Option<(Vec<u8>, usize)>,
    ) -> Result<usize, serde_json::Error> {
        let start = self.bytes.len();
        key(&mut self.bytes);
        let mid = self.bytes.len();
        if let Err(e) = value.write_json(&mut self.bytes) {
            self.bytes.truncate(start);
            return Err(e);
        }
        self.batch.push(Out {
            topic,
            key: start..mid,
            value: mid..self.bytes.len(),
            original,
            kind,
        });
        Ok(self.batch.len() - 1)
    }

    /// Whether record `i` is one of the advance's progress records.
    fn is_progress(&self, i: usize) -> bool {
        if i < self.total {
            i >= self.before_progress
        } else {
            self.batch[i].kind == OutKind::Progress
        }
    }

    /// Encodes the advance's records below index `end` that are not encoded yet.
    fn encode_through(&mut self, advance: &Advance, end: usize) -> Result<(), WriteError> {
        let encode = |e: serde_json::Error| WriteError::Fatal(Box::new(e));
        let dead = advance.dead_letters.len();
        while self.batch.len() < end.min(self.total) {
            let j = self.batch.len();
            if let Some(r) = advance.dead_letters.get(j) {
                let key = |b: &mut Vec<u8>| {
                    let _ = write!(b, "{}", r.source);
                };
                let original = r.original.clone();
                self.push(Topic::DeadLetters, OutKind::DeadLetter, key, r, original)
            } else if let Some(r) = advance.forecasts.get(j - dead) {
                let key = |b: &mut Vec<u8>| {
                    b.extend_from_slice(r.store_id.as_bytes());
                    b.push(b':');
                    b.extend_from_slice(r.sku_id.as_bytes());
                };
                self.push(Topic::Forecasts, OutKind::Forecast, key, r, None)
            } else {
                let r = &advance.progress[j - self.before_progress];
                let key = |b: &mut Vec<u8>| b.extend_from_slice(r.epoch_end.as_bytes());
                self.push(Topic::Epochs, OutKind::Progress, key, r, None)
            }
            .map_err(encode)?;
        }
        Ok(())
    }

    fn key(&self, i: usize) -> &[u8] {
        &self.bytes[self.batch[i].key.clone()]
    }

    fn value(&self, i: usize) -> &[u8] {
        &self.bytes[self.batch[i].value.clone()]
    }
}

/// The sink; see the module docs.
pub struct KafkaSink {
    kafka: KafkaConfig,
    producer: Reporting<SinkAcks>,
    /// The advance being written, between a failed attempt and the next.
    pending: Option<Delivery>,
    /// The byte buffer of the last delivery, emptied, for the next: a chunk's records take
    /// tens of megabytes, which a fresh allocation would make the kernel zero again each time.
    spare: Vec<u8>,
    /// Failed attempts in a row.
    failures: u32,
}

fn producer(kafka: &KafkaConfig) -> Result<Reporting<SinkAcks>, OutputError> {
    let mut c = crate::kafka::client::client_config(kafka);
    if !kafka.client.contains_key("linger.ms") {
        // Each write ends with a flush, which sends at once whatever lingers: a long linger
        // costs no latency, and makes fewer, larger produce requests while a chunk is being
        // produced (about a fifth less CPU than 5 ms in the kafka bench's every_epoch runs).
        c.set("linger.ms", "50");
    }
    // Not the operator's to change: acknowledged means written to every replica, once, and a
    // record is given up on before `FLUSH_TIMEOUT` stops waiting for it.
    c.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.timeout.ms", "20000");
    BaseProducer::from_config_and_context(&c, SinkAcks::default())
        .map(Reporting::new)
        .map_err(|e| OutputError::Kafka {
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
            spare: Vec::new(),
            failures: 0,
        })
    }

    /// A delivery of `advance`'s records, dead letters and forecasts first, progress records
    /// last, none encoded yet.
    fn delivery(&mut self, advance: &Advance) -> Delivery {
        let before_progress = advance.dead_letters.len() + advance.forecasts.len();
        let n = before_progress + advance.progress.len();
        let mut bytes = std::mem::take(&mut self.spare);
        bytes.clear();
        // A forecast record over a horizon of 28 periods is about 1.5 kB.
        bytes.reserve(n * 1536);
        Delivery {
            bytes,
            batch: Vec::with_capacity(n),
            before_progress,
            total: n,
            todo: (0..n).collect(),
            acked: 0,
        }
    }

    fn topic(&self, topic: Topic) -> &str {
        let t = &self.kafka.topics;
        match topic {
            Topic::Forecasts => &t.forecasts,
            Topic::DeadLetters => &t.dead_letters,
            Topic::Epochs => &t.epochs,
        }
    }

    /// Produces what `d` still holds until it is all acknowledged: first every record that is
    /// not a progress record, then the progress records.
    fn deliver(
        &mut self,
        d: &mut Delivery,
        advance: &Advance,
        cx: &mut Context<'_>,
    ) -> Result<(), WriteError> {
        loop {
            let first: Vec<usize> = (d.todo.iter().copied())
                .filter(|&i| !d.is_progress(i))
                .collect();
            let now = if first.is_empty() {
                d.todo.clone()
            } else {
                first
            };
            if now.is_empty() {
                return Ok(());
            }
            let failures = self.attempt(d, advance, &now, cx)?;
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
                retry.push(self.undeliverable(d, i, &error, cx)?);
            }
            // Per-key order: a later record of a key whose earlier one failed goes again too.
            if let Some(&first) = failed.iter().min() {
                let keys: HashSet<&[u8]> = failed.iter().map(|&i| d.key(i)).collect();
                retry.extend(
                    now.iter()
                        .copied()
                        .filter(|&j| j > first && keys.contains(d.key(j))),
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

    /// Adds to `d` the small dead letter that stands for its record `i`, which the broker
    /// refused for good; counts and logs it; returns the notice's index. `Err` when record `i`
    /// is such a dead letter already: the dead-letter topic itself refuses.
    fn undeliverable(
        &self,
        d: &mut Delivery,
        i: usize,
        error: &ProduceError,
        cx: &mut Context<'_>,
    ) -> Result<usize, WriteError> {
        let out = &d.batch[i];
        let topic = self.topic(out.topic);
        if out.kind == OutKind::Undeliverable {
            return Err(WriteError::Fatal(Box::new(
                ProduceError::DeadLetterTopicRefuses {
                    topic: topic.to_string(),
                    reason: error.to_string(),
                },
            )));
        }
        let kind = out.kind.name();
        let key = crate::decode::shown(&String::from_utf8_lossy(d.key(i)));
        let value = d.value(i);
        let m = &cx.progress.metrics;
        m.undeliverable.with_label_values(&["kafka", kind]).inc();
        tracing::error!(topic, key = %key, bytes = value.len(), record = kind, %error, "a record was refused for good; an undeliverable dead letter replaces it");
        let prefix = &value[..value.len().min(UNDELIVERABLE_PREFIX_BYTES)];
        let letter = DeadLetterRecord {
            source: DeadSource::Topic {
                topic: topic.to_string(),
                partition: -1,
                offset: -1,
            },
            reason: "undeliverable".into(),
            detail: format!("the {kind} record was refused for good: {error}"),
            content: DeadContent::Message {
                key: Some(key),
                value: Some(String::from_utf8_lossy(prefix).into_owned()),
                value_bytes: value.len(),
                value_truncated: prefix.len() < value.len(),
            },
            original: None,
        };
        *cx.stats
            .dead_letters
            .entry("undeliverable".into())
            .or_default() += 1;
        m.dead_letters.with_label_values(&["undeliverable"]).inc();
        let key = |b: &mut Vec<u8>| {
            b.extend_from_slice(b"undeliverable/");
            b.extend_from_slice(topic.as_bytes());
        };
        let kind = OutKind::Undeliverable;
        d.push(Topic::DeadLetters, kind, key, &letter, None)
            .map_err(|e| WriteError::Fatal(Box::new(e)))
    }

    /// Produces the records `todo` of `d` once (encoding them first where they are not yet)
    /// and waits for their answers; returns the ones that failed, with the error and whether
    /// it is permanent.
    fn attempt(
        &self,
        d: &mut Delivery,
        advance: &Advance,
        todo: &[usize],
        cx: &Context<'_>,
    ) -> Result<Vec<(usize, ProduceError, bool)>, WriteError> {
        let generation = self
            .producer
            .context()
            .start(d.batch.len().max(d.total), todo);
        for &i in todo {
            if i >= d.batch.len() {
                d.encode_through(advance, i + ENCODE_AHEAD)?;
            }
            let out = &d.batch[i];
            let opaque = ((generation as usize) << 32) | i;
            let mut record = BaseRecord::with_opaque_to(self.topic(out.topic), opaque)
                .key(d.key(i))
                .payload(d.value(i));
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
                        self.producer.serve(Duration::from_millis(10));
                    }
                }
            }
        }
        // All of them, before any `undeliverable` notice is added after them.
        d.encode_through(advance, d.total)?;
        let started = Instant::now();
        while self.producer.context().outstanding() > 0 && started.elapsed() < FLUSH_TIMEOUT {
            // Short slices, so a stop is seen while the broker does not answer.
            self.producer.flush(Duration::from_millis(200));
            if cx.stop.past_grace() {
                return Err(WriteError::Stopped);
            }
        }
        let mut failures = Vec::new();
        for (i, answer) in self.producer.context().take(todo) {
            let topic = self.topic(d.batch[i].topic).to_string();
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
        match self.deliver(&mut d, advance, cx) {
            Ok(()) => {
                self.failures = 0;
                // The undeliverable dead letters that stood in for refused records are out.
                let notices = (d.batch.iter())
                    .filter(|o| o.kind == OutKind::Undeliverable)
                    .count() as u64;
                let written = &cx.progress.metrics.dead_letters_written;
                written
                    .with_label_values(&["undeliverable"])
                    .inc_by(notices);
                if d.bytes.capacity() <= SPARE_BYTES {
                    self.spare = d.bytes;
                }
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

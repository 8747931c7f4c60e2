//! The Kafka sink: per advance of the closed frontier, dead letters and forecasts, then the
//! progress records (one per closed epoch that did anything), then the offset commit, each step only after the previous was acknowledged.
//!
//! # Error handling
//! - **Transient failures** (broker down, timeouts): the records not acknowledged (and any
//!   later record of the same key) are produced again after a backoff, until they are or the
//!   run is stopped; the offsets are committed only after they were. When the idempotent
//!   producer hits a fatal error (e.g. the broker forgot its producer id), it is replaced by a
//!   new one before the retry. Records may therefore appear twice on the output topics, never
//!   zero times (see the delivery guarantee in [`super`]).
//! - **Permanent refusals of one record** (too large, invalid, not authorized): the record is
//!   replaced by a small `undeliverable` dead letter naming the topic, key, size and error, with
//!   the record's first bytes; it is counted (`stockcast_undeliverable_total`) and logged as an
//!   error. Should that dead letter be refused for good too, the dead-letter topic itself is
//!   unusable: the run stops with an error, and nothing after the batch is committed.
//! - **Halting**: once a batch was not delivered (the run stopped, or the error above), the sink
//!   writes and commits nothing more in this run, so offsets and progress records never pass
//!   undelivered output; the next run re-reads from the committed offsets and delivers it.
//! - **Stopping**: a signal cuts the wait for acknowledgements to [`STOP_GRACE`]; then the
//!   batch counts as not delivered (above). The process exits within about 30 s of the signal.
//!
//! Longer than 600 lines: the steps of one advance (records, delivery, the stores, the commit) are
//! still methods of one type. Taking the record building and the stores out behind one sink
//! interface is the planned next step; the acknowledgements, the retry and the committer already
//! live in files of their own.

mod acks;
mod committer;
mod retry;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dataflows::{Clock, Epoch, FeatureVec, Key, Schema};
use rdkafka::config::FromClientConfigAndContext;
use rdkafka::consumer::BaseConsumer;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use crate::config::{Resolved, TopicsConfig};
use crate::display::rfc3339;
use crate::forecast::Forecast;
use crate::ids::Dictionary;
use crate::model::scorer::{ModelWatch, Scorer};
use crate::records::ForecastRecord;

use self::acks::{refused_for_good, SinkAcks};
use self::committer::Committer;
use self::retry::{count_attempt, retry_until_written, sleep_unless_stopped};
use super::catch_up;
use super::client::client_config;
use super::stream::{commit_metadata, Closed, Progress};
use super::wire::{DeadLetterRecord, EpochRecord, ORIGINAL_LENGTH_HEADER, ORIGINAL_VALUE_HEADER};

/// Failed delivery attempts in a row after which the producer is replaced.
const REPLACE_AFTER_ATTEMPTS: u32 = 3;
/// How long one delivery attempt may wait for acknowledgements.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(30);
/// How long, once the run is told to stop, a delivery attempt may still wait for
/// acknowledgements before its batch counts as not delivered.
pub const STOP_GRACE: Duration = Duration::from_secs(10);
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

/// Why a batch was not delivered.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Halt {
    /// The run was told to stop first.
    Stopped,
    /// The dead-letter topic refused a record for good (nothing can be accounted for), or
    /// neither the model nor the baseline could score an advance.
    Fatal(String),
}

/// What the sink has done so far.
#[derive(Debug, Default, Clone)]
pub struct SinkStats {
    /// Advances of the closed frontier.
    pub advances: u64,
    /// Progress records written (one per closed epoch with input or output, and one for the
    /// last epoch of each advance).
    pub progress_records: u64,
    /// Epochs closed.
    pub epochs: u64,
    /// Forecast records written.
    pub forecasts: u64,
    /// Records consumed per input kind.
    pub consumed: BTreeMap<String, u64>,
    /// Late events.
    pub late: u64,
    /// Dead letters by reason.
    pub dead_letters: BTreeMap<String, u64>,
    /// Delivery attempts that had to be repeated.
    pub retries: u64,
    /// Producers replaced after a fatal error.
    pub producers_replaced: u64,
    /// End of the last closed epoch.
    pub last_epoch_end: Option<String>,
}

/// The sink; see the module docs.
pub struct KafkaSink {
    cfg: Resolved,
    clock: Clock,
    schema: Schema,
    /// Turns forecasts into order recommendations.
    planner: crate::replenish::Planner,
    scorer: Scorer,
    /// Watches the model directory; with it, every series' latest features are kept so a new
    /// model version can re-score them all.
    watch: Option<ModelWatch>,
    features: HashMap<Key, FeatureVec>,
    producer: BaseProducer<SinkAcks>,
    committer: Committer,
    /// Outputs of epochs before this were acknowledged by an earlier run.
    resume_from: Option<Epoch>,
    /// Dead letters written since the last progress record.
    dead_unrecorded: u64,
    stop: Arc<AtomicBool>,
    stats: SinkStats,
    /// The process's live state: metrics, latest forecasts, readiness.
    progress: Arc<Progress>,
    /// The PostgreSQL mart, if configured.
    mart: Option<crate::mart::Mart>,
    /// The Redis cache, if configured.
    cache: Option<crate::cache::Cache>,
    /// Forecast records produced and not yet in the mart and the cache.
    unwritten: Vec<ForecastRecord>,
    /// Set once a batch was not delivered: nothing more is written or committed in this run.
    halted: Option<Halt>,
    /// When the sink first saw the run told to stop.
    stop_seen: Option<Instant>,
}

/// Why the sink could not start, or stopped the run.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// A client or store could not be set up.
    #[error("kafka sink: {0}")]
    Start(String),
    /// Output was refused for good where nothing could account for it; nothing after it was
    /// committed.
    #[error("kafka sink halted: {0}")]
    Halted(String),
}

fn producer(cfg: &Resolved) -> Result<BaseProducer<SinkAcks>, SinkError> {
    let mut c = client_config(&cfg.kafka);
    c.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "20000");
    BaseProducer::from_config_and_context(&c, SinkAcks::default())
        .map_err(|e| SinkError::Start(format!("producer: {}", cfg.kafka.scrub(e))))
}

impl KafkaSink {
    /// A sink scoring with `scorer` (and swapping in the new versions `watch` finds);
    /// `resume_from` is the frontier a previous run committed.
    pub fn new(
        cfg: &Resolved,
        scorer: Scorer,
        watch: Option<ModelWatch>,
        resume_from: Option<Epoch>,
        stop: Arc<AtomicBool>,
        progress: Arc<Progress>,
    ) -> Result<Self, SinkError> {
        let model = scorer.model();
        progress.metrics.set_model(model.name(), model.version());
        progress.model_loaded.store(true, Ordering::SeqCst);
        let committer: BaseConsumer = client_config(&cfg.kafka)
            .set("group.id", &cfg.kafka.group_id)
            .set("enable.auto.commit", "false")
            .create()
            .map_err(|e| SinkError::Start(format!("committer: {}", cfg.kafka.scrub(e))))?;
        let committer = Committer::start(committer)
            .map_err(|e| SinkError::Start(format!("committer thread: {e}")))?;
        Ok(KafkaSink {
            cfg: cfg.clone(),
            clock: cfg.clock,
            schema: cfg.spec.schema(),
            planner: crate::replenish::Planner::new(
                &cfg.replenish,
                &cfg.spec.schema(),
                cfg.clock.period_kind(),
            ),
            scorer,
            watch,
            features: HashMap::new(),
            producer: producer(cfg)?,
            committer,
            resume_from,
            dead_unrecorded: 0,
            stop,
            stats: SinkStats::default(),
            progress,
            mart: if cfg.postgres.url.is_empty() {
                None
            } else {
                let mart = crate::mart::Mart::new(&cfg.postgres.url)
                    .map_err(|e| SinkError::Start(e.to_string()))?
                    .with_retention(cfg.postgres.history_retention_days);
                Some(mart)
            },
            cache: if cfg.redis.url.is_empty() {
                None
            } else {
                let r = &cfg.redis;
                let cache = crate::cache::Cache::new(&r.url, &r.key_prefix, r.ttl_secs)
                    .map_err(|e| SinkError::Start(e.to_string()))?;
                Some(cache)
            },
            unwritten: Vec::new(),
            halted: None,
            stop_seen: None,
        })
    }

    /// Why the sink stopped writing for good, if the dead-letter topic refused a record: the
    /// run failed.
    pub fn failure(&self) -> Option<&str> {
        match &self.halted {
            Some(Halt::Fatal(why)) => Some(why),
            _ => None,
        }
    }

    /// Notes that a batch was not delivered: nothing more is written or committed.
    fn halt(&mut self, why: Halt) {
        match &why {
            Halt::Stopped => tracing::warn!(
                "stopping with an advance not delivered: nothing later is written or committed; the next run delivers it"
            ),
            Halt::Fatal(e) => {
                tracing::error!(error = %e, "cannot go on; stopping without committing");
                self.stop.store(true, Ordering::SeqCst);
            }
        }
        self.halted.get_or_insert(why);
    }

    /// Whether the run was told to stop more than [`STOP_GRACE`] ago.
    fn past_grace(&mut self) -> bool {
        if !self.stop.load(Ordering::SeqCst) {
            return false;
        }
        self.stop_seen.get_or_insert_with(Instant::now).elapsed() >= STOP_GRACE
    }

    fn record(
        &self,
        end: &str,
        dict: &Dictionary,
        key: &Key,
        vec: &FeatureVec,
        forecast: &Forecast,
    ) -> ForecastRecord {
        ForecastRecord::new(
            end,
            dict.names(key),
            &self.schema,
            self.scorer.model(),
            &self.planner,
            vec,
            forecast,
        )
    }

    fn push_forecast(&mut self, batch: &mut Vec<Out>, topics: &TopicsConfig, rec: ForecastRecord) {
        batch.push(Out {
            topic: topics.forecasts.clone(),
            key: format!("{}:{}", rec.store_id, rec.sku_id),
            value: serde_json::to_vec(&rec).unwrap_or_default(),
            original: None,
            kind: OutKind::Forecast,
        });
        if self.mart.is_some() || self.cache.is_some() {
            self.unwritten.push(rec.clone());
        }
        if let Ok(mut latest) = self.progress.latest.write() {
            latest.insert((rec.store_id.clone(), rec.sku_id.clone()), rec);
        }
    }

    /// What was written so far.
    pub fn stats(&self) -> &SinkStats {
        &self.stats
    }

    /// The latest forecast of every series scored.
    pub fn latest(&self) -> HashMap<(String, String), ForecastRecord> {
        self.progress
            .latest
            .read()
            .map(|l| l.clone())
            .unwrap_or_default()
    }

    /// Scores `series` as of `epoch` and adds their forecast records to `batch`; returns the
    /// seconds spent scoring.
    fn score_into(
        &mut self,
        epoch: Epoch,
        series: &[(Key, FeatureVec)],
        dict: &Dictionary,
        topics: &TopicsConfig,
        batch: &mut Vec<Out>,
    ) -> Result<f64, Halt> {
        let end = rfc3339(self.clock.epoch_end(epoch));
        let vecs: Vec<&FeatureVec> = series.iter().map(|(_, v)| v).collect();
        let scoring = Instant::now();
        let forecasts = self
            .scorer
            .score(&vecs)
            .map_err(|e| Halt::Fatal(format!("scoring failed: {e}")))?;
        let secs = scoring.elapsed().as_secs_f64();
        for ((key, vec), forecast) in series.iter().zip(&forecasts) {
            let rec = self.record(&end, dict, key, vec, forecast);
            self.push_forecast(batch, topics, rec);
        }
        Ok(secs)
    }

    /// Writes one advance; returns once it is acknowledged and committed (or the run stops).
    pub fn on_closed(&mut self, mut closed: Closed, dict: &Dictionary) {
        if self.halted.is_some() {
            // An earlier batch was not delivered: writing this one could commit past it.
            return;
        }
        let topics = self.cfg.kafka.topics.clone();
        let mut batch: Vec<Out> = Vec::new();
        for d in &closed.dead {
            let letter = DeadLetterRecord {
                topic: d.partition.topic.clone(),
                partition: d.partition.partition,
                offset: d.offset,
                reason: d.reason.to_string(),
                detail: d.detail.clone(),
                key: d
                    .key
                    .as_deref()
                    .map(|k| String::from_utf8_lossy(k).into_owned()),
                value: d
                    .value
                    .as_deref()
                    .map(|v| String::from_utf8_lossy(v).into_owned()),
                value_bytes: d.original_len,
                value_truncated: d.value.as_ref().is_some_and(|v| v.len() < d.original_len),
            };
            *self
                .stats
                .dead_letters
                .entry(letter.reason.clone())
                .or_default() += 1;
            batch.push(Out {
                topic: topics.dead_letters.clone(),
                key: format!("{}/{}@{}", letter.topic, letter.partition, letter.offset),
                value: serde_json::to_vec(&letter).unwrap_or_default(),
                original: d.value.clone().map(|v| (v, d.original_len)),
                kind: OutKind::DeadLetter(d.reason),
            });
        }
        let advanced = closed.closed_at.is_some();
        let mut rescore = false;
        if advanced {
            if let Some(model) = self
                .watch
                .as_mut()
                .and_then(|w| w.poll(&self.schema, self.clock.period_kind()))
            {
                self.progress
                    .metrics
                    .set_model(&model.manifest.name, &model.manifest.version);
                self.scorer.set_model(Arc::new(model));
                rescore = true;
            }
        }
        let resume_from = self.resume_from;
        let suppressed = |e: Epoch| resume_from.is_some_and(|r| e < r);
        let superseded = catch_up::apply(self.cfg.output.catch_up, &mut closed.changed);
        self.progress.metrics.forecasts_superseded.inc_by(
            superseded
                .iter()
                .filter(|(e, _)| !suppressed(**e))
                .map(|(_, n)| n)
                .sum(),
        );
        // Forecast records per epoch, and the series re-scored after a model change.
        let mut changed_in: BTreeMap<Epoch, u64> = BTreeMap::new();
        let mut rescored: Option<(Epoch, u64)> = None;
        let mut scoring_secs = 0.0;
        let mut scored_now: HashSet<Key> = HashSet::new();
        for (epoch, changed) in &closed.changed {
            if self.watch.is_some() {
                self.features
                    .extend(changed.iter().map(|(k, v)| (*k, v.clone())));
            }
            if suppressed(*epoch) {
                continue;
            }
            match self.score_into(*epoch, changed, dict, &topics, &mut batch) {
                Ok(secs) => scoring_secs += secs,
                Err(halt) => return self.halt(halt),
            }
            if rescore {
                scored_now.extend(changed.iter().map(|(k, _)| *k));
            }
            changed_in.insert(*epoch, changed.len() as u64);
        }
        let newest = closed.epochs.last().map(|t| t.epoch);
        if let Some(e) = newest.filter(|e| rescore && !suppressed(*e)) {
            // A new model version: every other series once, at the newest closed epoch.
            let rest: Vec<(Key, FeatureVec)> = self
                .features
                .iter()
                .filter(|(k, _)| !scored_now.contains(k))
                .map(|(k, v)| (*k, v.clone()))
                .collect();
            match self.score_into(e, &rest, dict, &topics, &mut batch) {
                Ok(secs) => scoring_secs += secs,
                Err(halt) => return self.halt(halt),
            }
            rescored = Some((e, rest.len() as u64));
        }
        for (kind, n) in &closed.consumed {
            *self
                .stats
                .consumed
                .entry(kind.name().to_string())
                .or_default() += n;
        }
        self.stats.late += closed.late;
        let m = &self.progress.metrics;
        m.late_events.inc_by(closed.late);
        if let Err(halt) = self.deliver(batch) {
            self.halt(halt);
            return;
        }
        let m = &self.progress.metrics;
        for d in &closed.dead {
            m.dead_letters_written.with_label_values(&[d.reason]).inc();
        }
        m.dead_letters_pending.sub(closed.dead.len() as i64);
        self.dead_unrecorded += closed.dead.len() as u64;
        let keys_changed: u64 = changed_in.values().sum();
        self.stats.forecasts += keys_changed + rescored.map_or(0, |r| r.1);
        if let Ok(latest) = self.progress.latest.read() {
            m.api_series.set(latest.len() as i64);
        }
        if !advanced {
            return;
        }
        m.epochs_closed.inc_by(closed.epochs_closed);
        m.scoring_seconds.observe(scoring_secs);
        self.stats.advances += 1;
        self.stats.epochs += closed.epochs_closed;
        if let Some(e) = newest {
            self.stats.last_epoch_end = Some(rfc3339(self.clock.epoch_end(e)));
            self.progress
                .last_epoch_end
                .store(self.clock.epoch_end(e), Ordering::Relaxed);
        }
        self.progress
            .last_advance
            .store(chrono::Utc::now().timestamp(), Ordering::Relaxed);
        let frontier = closed
            .frontier
            .or_else(|| newest.map(|e| e + 1))
            .unwrap_or(0);
        // Nothing to record or commit while a restart is still rebuilding what was committed.
        if self.resume_from.is_some_and(|r| frontier < r) {
            return;
        }
        let latency_ms = closed
            .closed_at
            .map_or(0, |t| t.elapsed().as_millis() as u64);
        let mut records: Vec<EpochRecord> = Vec::with_capacity(closed.epochs.len());
        for tally in closed.epochs.iter().filter(|t| !suppressed(t.epoch + 1)) {
            let keys_changed = changed_in.get(&tally.epoch).copied().unwrap_or(0);
            let keys_scored = keys_changed
                + rescored
                    .filter(|(e, _)| *e == tally.epoch)
                    .map_or(0, |r| r.1);
            m.keys_changed.observe(keys_changed as f64);
            m.keys_scored.observe(keys_scored as f64);
            records.push(EpochRecord {
                epoch_end: rfc3339(self.clock.epoch_end(tally.epoch)),
                frontier: tally.epoch + 1,
                epochs_closed: tally.epochs_closed,
                consumed: tally
                    .consumed
                    .iter()
                    .map(|(k, n)| (k.name().to_string(), *n))
                    .collect(),
                late: tally.late,
                dead_letters: 0,
                keys_changed,
                keys_superseded: superseded.get(&tally.epoch).copied().unwrap_or(0),
                keys_scored,
                offsets: tally.offsets.iter().map(|(p, o)| (p.label(), *o)).collect(),
                latency_ms,
            });
        }
        if let Some(last) = records.last_mut() {
            last.dead_letters = self.dead_unrecorded;
        }
        if !self.write_stores(&records) {
            self.halt(Halt::Stopped);
            return;
        }
        let outs: Vec<Out> = records
            .iter()
            .map(|record| Out {
                topic: topics.epochs.clone(),
                key: record.epoch_end.clone(),
                value: serde_json::to_vec(record).unwrap_or_default(),
                original: None,
                kind: OutKind::Progress,
            })
            .collect();
        if let Err(halt) = self.deliver(outs) {
            self.halt(halt);
            return;
        }
        self.stats.progress_records += records.len() as u64;
        if !records.is_empty() {
            self.dead_unrecorded = 0;
        }
        self.commit(&closed, frontier);
        if let Some(t) = closed.closed_at {
            let m = &self.progress.metrics;
            m.epoch_seconds.observe(t.elapsed().as_secs_f64());
        }
    }

    /// Writes the advance's records (and progress records) into the mart and the cache, those
    /// configured, each retried with backoff until it succeeds; `false` if the run stopped
    /// first. The records are kept until both succeeded.
    fn write_stores(&mut self, progress: &[EpochRecord]) -> bool {
        let KafkaSink {
            mart,
            cache,
            unwritten,
            progress: live,
            stop,
            stats,
            ..
        } = self;
        if let Some(mart) = mart {
            let n = (unwritten.len() + progress.len()) as u64;
            let write = || mart.write(unwritten, progress).map_err(|e| e.to_string());
            if !retry_until_written(live, stop, &mut stats.retries, "postgres", n, write) {
                return false;
            }
        }
        if let Some(cache) = cache {
            let n = unwritten.len() as u64;
            let write = || cache.write(unwritten).map_err(|e| e.to_string());
            if !retry_until_written(live, stop, &mut stats.retries, "redis", n, write) {
                return false;
            }
        }
        unwritten.clear();
        true
    }

    /// Produces `batch` until every record is acknowledged, or replaced by an `undeliverable`
    /// dead letter that is (see the module docs).
    fn deliver(&mut self, mut batch: Vec<Out>) -> Result<(), Halt> {
        let mut todo: Vec<usize> = (0..batch.len()).collect();
        let mut attempt = 0u32;
        while !todo.is_empty() {
            let failures = self.attempt(&batch, &todo)?;
            // What was acknowledged counts, even when other records of the attempt failed.
            let written = (todo.len() - failures.len()) as u64;
            count_attempt(&self.progress, "kafka", Some(written));
            if failures.is_empty() {
                break;
            }
            count_attempt(&self.progress, "kafka", None);
            let mut retry: Vec<usize> = Vec::new();
            let mut transient: Option<String> = None;
            let mut failed: Vec<usize> = Vec::new();
            for (i, error, permanent) in failures {
                if !permanent {
                    transient.get_or_insert(error);
                    failed.push(i);
                    continue;
                }
                let notice = self.undeliverable(&batch[i], &error)?;
                batch.push(notice);
                retry.push(batch.len() - 1);
            }
            // Per-key order: a later record of a key whose earlier one failed goes again too.
            if let Some(&first) = failed.iter().min() {
                let keys: HashSet<&str> = failed.iter().map(|&i| batch[i].key.as_str()).collect();
                retry.extend(
                    todo.iter()
                        .copied()
                        .filter(|&j| j > first && keys.contains(batch[j].key.as_str())),
                );
            }
            retry.extend(failed);
            retry.sort_unstable();
            retry.dedup();
            todo = retry;
            let Some(why) = transient else { continue };
            if self.stop.load(Ordering::SeqCst) {
                tracing::warn!(%why, "stopping with an unacknowledged batch; its offsets stay uncommitted");
                return Err(Halt::Stopped);
            }
            self.stats.retries += 1;
            let retries = &self.progress.metrics.sink_retries;
            retries.with_label_values(&["kafka"]).inc();
            let wait = Duration::from_millis(200u64 << attempt.min(5));
            tracing::warn!(%why, records = todo.len(), retry_in_ms = wait.as_millis() as u64, "kafka delivery failed");
            sleep_unless_stopped(&self.stop, wait);
            attempt += 1;
            let fatal = self.producer.client().fatal_error();
            // A broker that lost the producer's state (or rejects its sequence numbers after a
            // reconnect) can leave it failing without a fatal error: after a few failed
            // attempts in a row, start a new producer too.
            if fatal.is_some() || attempt.is_multiple_of(REPLACE_AFTER_ATTEMPTS) {
                tracing::warn!(?fatal, attempts = attempt, "replacing the producer");
                match producer(&self.cfg) {
                    Ok(p) => {
                        self.producer = p;
                        self.stats.producers_replaced += 1;
                    }
                    Err(e) => tracing::error!(%e, "cannot create a producer"),
                }
            }
        }
        // The undeliverable dead letters that stood in for refused records are written now.
        let notices = batch
            .iter()
            .filter(|o| o.kind == OutKind::DeadLetter("undeliverable"))
            .count() as u64;
        if notices > 0 {
            let m = &self.progress.metrics;
            let written = &m.dead_letters_written;
            written
                .with_label_values(&["undeliverable"])
                .inc_by(notices);
            m.dead_letters_pending.sub(notices as i64);
        }
        Ok(())
    }

    /// The small dead letter that stands for `out`, which the broker refused for good; counts
    /// and logs it. `Err` when `out` is such a dead letter already, or a dead letter without
    /// its original bytes: the dead-letter topic itself refuses.
    fn undeliverable(&mut self, out: &Out, error: &str) -> Result<Out, Halt> {
        if out.kind == OutKind::DeadLetter("undeliverable") {
            return Err(Halt::Fatal(format!(
                "topic `{}` refused an undeliverable notice: {error}",
                out.topic
            )));
        }
        let kind = out.kind.name();
        self.progress
            .metrics
            .undeliverable
            .with_label_values(&["kafka", kind])
            .inc();
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
        *self
            .stats
            .dead_letters
            .entry("undeliverable".into())
            .or_default() += 1;
        self.progress
            .metrics
            .dead_letters
            .with_label_values(&["undeliverable"])
            .inc();
        self.progress.metrics.dead_letters_pending.inc();
        Ok(Out {
            topic: self.cfg.kafka.topics.dead_letters.clone(),
            key: format!("undeliverable/{}", out.topic),
            value: serde_json::to_vec(&letter).unwrap_or_default(),
            original: None,
            kind: OutKind::DeadLetter("undeliverable"),
        })
    }

    /// Produces the records `todo` of `batch` once and waits for their answers; returns the
    /// ones that failed with the error and whether it is permanent.
    fn attempt(
        &mut self,
        batch: &[Out],
        todo: &[usize],
    ) -> Result<Vec<(usize, String, bool)>, Halt> {
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
                        if self.past_grace() {
                            return Err(Halt::Stopped);
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
            if self.past_grace() {
                return Err(Halt::Stopped);
            }
        }
        let mut failures = Vec::new();
        for (i, answer) in self.producer.context().take(todo) {
            let topic = &batch[i].topic;
            match answer {
                Some(Ok(())) => {}
                Some(Err(e)) => {
                    failures.push((i, format!("produce to {topic}: {e}"), refused_for_good(&e)))
                }
                None => failures.push((
                    i,
                    format!(
                        "produce to {topic}: no acknowledgement within {} s",
                        FLUSH_TIMEOUT.as_secs()
                    ),
                    false,
                )),
            }
        }
        Ok(failures)
    }

    /// Commits the advance's offsets with the frontier in the metadata, retrying until done.
    fn commit(&mut self, closed: &Closed, frontier: Epoch) {
        if closed.offsets.is_empty() {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        for (p, offset) in &closed.offsets {
            let mut e = tpl.add_partition(&p.topic, p.partition);
            if e.set_offset(Offset::Offset(*offset)).is_err() {
                continue;
            }
            e.set_metadata(commit_metadata(frontier));
        }
        let mut attempt = 0u32;
        let started = Instant::now();
        while let Err(e) = self.commit_once(&tpl) {
            if self.stop.load(Ordering::SeqCst) {
                tracing::warn!(error = %e, "stopping with uncommitted offsets");
                self.halt(Halt::Stopped);
                return;
            }
            self.stats.retries += 1;
            let wait = Duration::from_millis(200u64 << attempt.min(5));
            tracing::warn!(error = %e, waited_s = started.elapsed().as_secs(), "offset commit failed; retrying");
            sleep_unless_stopped(&self.stop, wait);
            attempt += 1;
        }
    }

    /// One commit, waited for until it is answered or, once the run is stopping, for at most
    /// [`STOP_GRACE`].
    fn commit_once(&mut self, tpl: &TopicPartitionList) -> Result<(), String> {
        let seq = self.committer.send(tpl.clone())?;
        let started = Instant::now();
        let mut warned = Duration::ZERO;
        loop {
            if let Some(result) = self.committer.answer(seq, Duration::from_millis(100))? {
                return result;
            }
            if self.past_grace() {
                return Err("stopping before the commit was answered".into());
            }
            if started.elapsed() >= warned + FLUSH_TIMEOUT {
                warned = started.elapsed();
                tracing::warn!(
                    waited_s = warned.as_secs(),
                    "the offset commit is not answered yet (group coordinator unreachable?)"
                );
            }
        }
    }
}

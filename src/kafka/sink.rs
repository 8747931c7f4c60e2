//! The Kafka sink: per advance of the closed frontier, dead letters and forecasts, then the
//! progress records (one per closed epoch that did anything), then the offset commit, each step only after the previous was acknowledged.
//!
//! # Error handling
//! A batch that is not fully acknowledged (broker down, timeouts) is produced again after a
//! backoff, until it is or the run is stopped; the offsets are committed only after it was.
//! When the idempotent producer hits a fatal error (e.g. the broker forgot its producer id),
//! it is replaced by a new one before the retry. Records may therefore appear twice on the
//! output topics, never zero times (see the delivery guarantee in [`super`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dataflows::{Clock, Epoch, FeatureVec, Key, Schema};
use rdkafka::config::FromClientConfigAndContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use crate::config::{Resolved, TopicsConfig};
use crate::forecast::Forecast;
use crate::ids::Dictionary;
use crate::model::scorer::{ModelWatch, Scorer};
use crate::replay::{rfc3339, ForecastRecord};

use super::stream::{commit_metadata, Closed, Progress};
use super::wire::{DeadLetterRecord, EpochRecord, ORIGINAL_VALUE_HEADER};
use super::{client_config, Acks};

/// Failed delivery attempts in a row after which the producer is replaced.
const REPLACE_AFTER_ATTEMPTS: u32 = 3;
/// How long one delivery attempt may wait for acknowledgements.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(30);

/// A record ready to produce.
struct Out {
    topic: String,
    key: String,
    value: Vec<u8>,
    original: Option<Vec<u8>>,
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
    producer: BaseProducer<Acks>,
    committer: BaseConsumer,
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
}

/// Why the sink could not start.
#[derive(Debug, thiserror::Error)]
#[error("kafka sink: {0}")]
pub struct SinkError(String);

fn producer(cfg: &Resolved) -> Result<BaseProducer<Acks>, SinkError> {
    let mut c = client_config(&cfg.kafka);
    c.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "20000");
    BaseProducer::from_config_and_context(&c, Acks::default())
        .map_err(|e| SinkError(format!("producer: {e}")))
}

/// Counts one write attempt of `sink`: `written` records on success, else a failure; the
/// outcome is what `/readyz` reports.
fn count_attempt(progress: &Progress, sink: &str, written: Option<u64>) {
    let m = &progress.metrics;
    match written {
        Some(n) => m.sink_writes.with_label_values(&[sink]).inc_by(n),
        None => m.sink_failures.with_label_values(&[sink]).inc(),
    }
    progress.sink_ok.store(written.is_some(), Ordering::Relaxed);
}

/// Failed attempts in a row (about 6 s) after which a sink's outage is logged as an error.
const OUTAGE_ATTEMPTS: u32 = 5;

/// Calls `write` until it succeeds, waiting 0.2 s doubling to 6.4 s between attempts, and
/// counts every attempt of `sink` (`written` records on success); `false` if the run stopped
/// first.
fn retry_until_written(
    progress: &Progress,
    stop: &AtomicBool,
    retries: &mut u64,
    sink: &str,
    written: u64,
    mut write: impl FnMut() -> Result<(), String>,
) -> bool {
    let mut attempt = 0u32;
    loop {
        let result = write();
        count_attempt(progress, sink, result.is_ok().then_some(written));
        let Err(e) = result else { return true };
        if stop.load(Ordering::SeqCst) {
            tracing::warn!(sink, error = %e, "stopping with an advance not written; its offsets stay uncommitted");
            return false;
        }
        progress
            .metrics
            .sink_retries
            .with_label_values(&[sink])
            .inc();
        *retries += 1;
        let wait = Duration::from_millis(200u64 << attempt.min(5));
        if attempt == OUTAGE_ATTEMPTS {
            // Once per outage: an error (a Sentry issue when configured), the rest warnings.
            tracing::error!(sink, error = %e, attempts = attempt + 1, "sink unreachable; retrying until it returns, input offsets stay uncommitted");
        } else {
            tracing::warn!(sink, error = %e, retry_in_ms = wait.as_millis() as u64, "write failed");
        }
        std::thread::sleep(wait);
        attempt += 1;
    }
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
        let committer = client_config(&cfg.kafka)
            .set("group.id", &cfg.kafka.group_id)
            .set("enable.auto.commit", "false")
            .create()
            .map_err(|e| SinkError(format!("committer: {e}")))?;
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
                    .map_err(|e| SinkError(e.to_string()))?;
                Some(mart)
            },
            cache: if cfg.redis.url.is_empty() {
                None
            } else {
                let r = &cfg.redis;
                let cache = crate::cache::Cache::new(&r.url, &r.key_prefix, r.ttl_secs)
                    .map_err(|e| SinkError(e.to_string()))?;
                Some(cache)
            },
            unwritten: Vec::new(),
        })
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

    /// Writes one advance; returns once it is acknowledged and committed (or the run stops).
    pub fn on_closed(&mut self, closed: Closed, dict: &Dictionary) {
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
                original: d.value.clone(),
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
            let end = rfc3339(self.clock.epoch_end(*epoch));
            let vecs: Vec<&FeatureVec> = changed.iter().map(|(_, v)| v).collect();
            let scoring = Instant::now();
            let forecasts = self.scorer.score(&vecs);
            scoring_secs += scoring.elapsed().as_secs_f64();
            for ((key, vec), forecast) in changed.iter().zip(&forecasts) {
                let rec = self.record(&end, dict, key, vec, forecast);
                self.push_forecast(&mut batch, &topics, rec);
                if rescore {
                    scored_now.insert(*key);
                }
            }
            changed_in.insert(*epoch, changed.len() as u64);
        }
        let newest = closed.epochs.last().map(|t| t.epoch);
        if let Some(e) = newest.filter(|e| rescore && !suppressed(*e)) {
            // A new model version: every other series once, at the newest closed epoch.
            let end = rfc3339(self.clock.epoch_end(e));
            let rest: Vec<(Key, FeatureVec)> = self
                .features
                .iter()
                .filter(|(k, _)| !scored_now.contains(k))
                .map(|(k, v)| (*k, v.clone()))
                .collect();
            let vecs: Vec<&FeatureVec> = rest.iter().map(|(_, v)| v).collect();
            let scoring = Instant::now();
            let forecasts = self.scorer.score(&vecs);
            scoring_secs += scoring.elapsed().as_secs_f64();
            for ((key, vec), forecast) in rest.iter().zip(&forecasts) {
                let rec = self.record(&end, dict, key, vec, forecast);
                self.push_forecast(&mut batch, &topics, rec);
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
        if !self.deliver(&batch) {
            return;
        }
        let m = &self.progress.metrics;
        for d in &closed.dead {
            m.dead_letters.with_label_values(&[d.reason]).inc();
        }
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
                keys_scored,
                offsets: tally.offsets.iter().map(|(p, o)| (p.label(), *o)).collect(),
                latency_ms,
            });
        }
        if let Some(last) = records.last_mut() {
            last.dead_letters = self.dead_unrecorded;
        }
        if !self.write_stores(&records) {
            return;
        }
        let outs: Vec<Out> = records
            .iter()
            .map(|record| Out {
                topic: topics.epochs.clone(),
                key: record.epoch_end.clone(),
                value: serde_json::to_vec(record).unwrap_or_default(),
                original: None,
            })
            .collect();
        if !self.deliver(&outs) {
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

    /// Produces `batch` until every record is acknowledged; `false` if the run stopped first.
    fn deliver(&mut self, batch: &[Out]) -> bool {
        if batch.is_empty() {
            return true;
        }
        let mut attempt = 0u32;
        loop {
            let result = self.attempt(batch);
            let written = batch.len() as u64;
            count_attempt(&self.progress, "kafka", result.is_ok().then_some(written));
            match result {
                Ok(()) => return true,
                Err(why) => {
                    if self.stop.load(Ordering::SeqCst) {
                        tracing::warn!(%why, "stopping with an unacknowledged batch; its offsets stay uncommitted");
                        return false;
                    }
                    self.stats.retries += 1;
                    let retries = &self.progress.metrics.sink_retries;
                    retries.with_label_values(&["kafka"]).inc();
                    let wait = Duration::from_millis(200u64 << attempt.min(5));
                    tracing::warn!(%why, records = batch.len(), retry_in_ms = wait.as_millis() as u64, "kafka delivery failed");
                    std::thread::sleep(wait);
                    attempt += 1;
                    let fatal = self.producer.client().fatal_error();
                    // A broker that lost the producer's state (or rejects its sequence numbers
                    // after a reconnect) can leave it failing without a fatal error: after a few
                    // failed attempts in a row, start a new producer too.
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
            }
        }
    }

    fn attempt(&self, batch: &[Out]) -> Result<(), String> {
        let acks = self.producer.context();
        acks.reset();
        for out in batch {
            let mut record = BaseRecord::to(&out.topic)
                .key(out.key.as_bytes())
                .payload(&out.value);
            if let Some(original) = &out.original {
                record = record.headers(OwnedHeaders::new().insert(Header {
                    key: ORIGINAL_VALUE_HEADER,
                    value: Some(original.as_slice()),
                }));
            }
            loop {
                match self.producer.send(record) {
                    Ok(()) => break,
                    Err((e, back)) => {
                        let full =
                            matches!(e.rdkafka_error_code(), Some(RDKafkaErrorCode::QueueFull));
                        if !full {
                            return Err(format!("produce to {}: {e}", out.topic));
                        }
                        record = back;
                        self.producer.poll(Duration::from_millis(10));
                    }
                }
            }
        }
        self.producer
            .flush(FLUSH_TIMEOUT)
            .map_err(|e| format!("flush: {e}"))?;
        acks.check()
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
        while let Err(e) = self.committer.commit(&tpl, CommitMode::Sync) {
            if self.stop.load(Ordering::SeqCst) {
                tracing::warn!(error = %e, "stopping with uncommitted offsets");
                return;
            }
            self.stats.retries += 1;
            let wait = Duration::from_millis(200u64 << attempt.min(5));
            tracing::warn!(error = %e, waited_s = started.elapsed().as_secs(), "offset commit failed; retrying");
            std::thread::sleep(wait);
            attempt += 1;
        }
    }
}

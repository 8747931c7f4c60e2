//! From an advance of the closed frontier to the records every sink writes: on every process,
//! a scored and planned forecast per series its workers changed ([`Builder::forecasts`]); on
//! worker 0's process, once every process acknowledged its forecasts, dead letters for the
//! records that could not be used and a progress record per closed epoch that did anything
//! ([`Builder::progress`]).
//!
//! What is published follows `[output] catch_up` ([`super::catch_up`]); outputs of
//! epochs a previous run already delivered (below its committed frontier) are left out; and
//! when the model directory holds a new version, every series seen so far is scored again once,
//! at the newest closed epoch.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use dataflows::{Clock, Epoch, FeatureVec, Key, Schema};

use super::catch_up;
use crate::config::{CatchUp, Resolved};
use crate::display::rfc3339;
use crate::forecast::{Forecast, ScoreError};
use crate::ids::Dictionary;
use crate::model::scorer::{ModelWatch, Pending, Scorer};
use crate::pipeline::progress::Progress;
use crate::pipeline::stream::{Changed, Closed, Commit, DeadRecord, Delivered};
use crate::records::{
    DeadContent, DeadLetterRecord, DeadSource, EpochRecord, ForecastRecord, Stamp,
};
use crate::replenish::Planner;

/// Most forecast records the sinks are handed at once: a backfill that changes millions of
/// series is written in parts of this size, so memory stays bounded.
pub const CHUNK: usize = 16_384;

/// Series to score and write together, each with the epoch it changed in.
type Part<'a> = Vec<(Epoch, &'a (Key, FeatureVec))>;

/// The dead letter of a record the input side could not use.
fn dead_letter(d: &DeadRecord) -> DeadLetterRecord {
    let text = |b: &Option<Vec<u8>>| {
        b.as_deref()
            .map(|b| String::from_utf8_lossy(b).into_owned())
    };
    if let Some((file, line)) = &d.row {
        let value = text(&d.value).unwrap_or_default();
        return DeadLetterRecord::row(file, *line, d.reason, d.detail.clone(), value);
    }
    DeadLetterRecord {
        source: DeadSource::Topic {
            topic: d.partition.topic.clone(),
            partition: d.partition.partition,
            offset: d.offset,
        },
        reason: d.reason.to_string(),
        detail: d.detail.clone(),
        content: DeadContent::Message {
            key: text(&d.key),
            value: text(&d.value),
            value_bytes: d.original_len,
            value_truncated: d.value.as_ref().is_some_and(|v| v.len() < d.original_len),
        },
        original: d.value.clone().map(|v| (v, d.original_len)),
    }
}

/// Everything one advance writes, in the order a consumer should see it.
#[derive(Debug, Default)]
pub struct Advance {
    /// Records that could not be used, since the previous advance.
    pub dead_letters: Vec<DeadLetterRecord>,
    /// One per scored series, in epoch order.
    pub forecasts: Vec<ForecastRecord>,
    /// One per closed epoch that did anything, and one for the last closed epoch; empty when
    /// the frontier did not move or a restart is still below what a previous run committed.
    pub progress: Vec<EpochRecord>,
    /// What may be committed, by the processes that read it, after every sink acknowledged;
    /// `None` when nothing is committable.
    pub commit: Option<Commit>,
    /// When the dataflow closed the epochs.
    pub closed_at: Option<Instant>,
    /// Epochs closed, counting empty ones.
    pub epochs_closed: u64,
    /// The newest epoch closed, if the frontier moved.
    pub newest: Option<Epoch>,
    /// Records consumed per input kind in the epochs closed.
    pub consumed: BTreeMap<String, u64>,
    /// Late events applied in them.
    pub late: u64,
}

/// Why an advance could not be turned into records.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// Neither the model nor the baseline could score the changed series.
    #[error("scoring failed, the baseline too: {0}")]
    Scoring(#[from] ScoreError),
}

/// Turns advances into records; holds what that needs between advances.
pub struct Builder {
    clock: Clock,
    schema: Schema,
    catch_up: CatchUp,
    planner: Planner,
    scorer: Scorer,
    /// Watches the model directory; with it, every series' latest features are kept so a new
    /// model version can re-score them all.
    watch: Option<ModelWatch>,
    features: HashMap<Key, FeatureVec>,
    /// Outputs of epochs before this were delivered by an earlier run.
    resume_from: Option<Epoch>,
    /// Dead letters since the last progress record.
    dead_unrecorded: u64,
    progress: Arc<Progress>,
}

impl Builder {
    /// A builder scoring with `scorer` (and the new versions `watch` finds); `resume_from` is
    /// the frontier a previous run committed.
    pub fn new(
        cfg: &Resolved,
        scorer: Scorer,
        watch: Option<ModelWatch>,
        resume_from: Option<Epoch>,
        progress: Arc<Progress>,
    ) -> Builder {
        let model = scorer.model();
        progress.metrics.set_model(model.name(), model.version());
        progress.model_loaded.store(true, Ordering::SeqCst);
        let schema = cfg.spec.schema();
        Builder {
            clock: cfg.clock,
            planner: Planner::new(&cfg.replenish, &schema, cfg.clock.period_kind()),
            schema,
            catch_up: cfg.output.catch_up,
            scorer,
            watch,
            features: HashMap::new(),
            resume_from,
            dead_unrecorded: 0,
            progress,
        }
    }

    /// Publishes every epoch's forecast of every changed series, whatever `[output] catch_up`
    /// says: replay's files hold the whole history.
    pub fn every_epoch(mut self) -> Builder {
        self.catch_up = CatchUp::EveryEpoch;
        self
    }

    /// The event-time end of `epoch`, Unix seconds.
    pub fn epoch_end(&self, epoch: Epoch) -> i64 {
        self.clock.epoch_end(epoch)
    }

    fn suppressed(&self, epoch: Epoch) -> bool {
        self.resume_from.is_some_and(|r| epoch < r)
    }

    /// The records of `series`, each as of its epoch, scored `forecasts` (in the same order),
    /// into `out`.
    fn records_into(
        &self,
        series: &[(Epoch, &(Key, FeatureVec))],
        forecasts: Vec<Forecast>,
        dict: &Dictionary,
        out: &mut Vec<ForecastRecord>,
    ) {
        // The model's strings once per call; only the epoch's end changes along the part.
        let mut stamp = Stamp::new("".into(), &self.schema, self.scorer.model());
        let mut stamped: Option<Epoch> = None;
        for ((epoch, (key, vec)), f) in series.iter().zip(forecasts) {
            if stamped != Some(*epoch) {
                stamp.epoch_end = rfc3339(self.clock.epoch_end(*epoch)).into();
                stamped = Some(*epoch);
            }
            out.push(ForecastRecord::new(
                &stamp,
                dict.names(key),
                &self.schema,
                &self.planner,
                vec,
                f,
            ));
        }
    }

    /// The next part of up to [`CHUNK`] series from `series`, handed to the scoring threads;
    /// `None` when none is left.
    fn submit_part<'a>(
        &self,
        series: &mut impl Iterator<Item = (Epoch, &'a (Key, FeatureVec))>,
    ) -> Option<(Part<'a>, Pending)> {
        let part: Part = series.take(CHUNK).collect();
        if part.is_empty() {
            return None;
        }
        let vecs: Vec<&FeatureVec> = part.iter().map(|(_, (_, v))| v).collect();
        let pending = self.scorer.submit(&vecs);
        Some((part, pending))
    }

    /// A new model version, if the watched directory holds one: swapped in.
    fn new_model(&mut self) -> bool {
        let Some(model) = self
            .watch
            .as_mut()
            .and_then(|w| w.poll(&self.schema, self.clock.period_kind()))
        else {
            return false;
        };
        self.progress
            .metrics
            .set_model(&model.manifest.name, &model.manifest.version);
        self.scorer.set_model(Arc::new(model));
        true
    }

    /// Scores this process's changed series and hands `write` their forecast records, [`CHUNK`]
    /// at a time (the last part fewer), in epoch order (`write` may take the records); returns
    /// what to acknowledge once `write` took them all, or `None` if it refused one (the output
    /// halted).
    pub fn forecasts(
        &mut self,
        mut changed: Changed,
        dict: &Dictionary,
        mut write: impl FnMut(&mut Advance) -> bool,
    ) -> Result<Option<Delivered>, BuildError> {
        let rescore = self.new_model();
        let mut superseded = catch_up::apply(self.catch_up, &mut changed.changed);
        // And those the dataflow left out already.
        for (epoch, n) in std::mem::take(&mut changed.superseded) {
            *superseded.entry(epoch).or_default() += n;
        }
        let published_superseded = (superseded.iter())
            .filter(|(e, _)| !self.suppressed(**e))
            .map(|(_, n)| n)
            .sum();
        let m = &self.progress.metrics;
        m.forecasts_superseded.inc_by(published_superseded);
        let newest = changed
            .frontier
            .map(|f| f.saturating_sub(1))
            .or_else(|| changed.changed.last().map(|(e, _)| *e));
        let mut chunk = Advance {
            closed_at: changed.closed_at,
            newest,
            ..Advance::default()
        };
        let mut scoring_secs = 0.0;
        let mut scored_now: HashSet<Key> = HashSet::new();
        let mut rest: Vec<(Epoch, Vec<(Key, FeatureVec)>)> = Vec::new();
        for (epoch, series) in std::mem::take(&mut changed.changed) {
            if self.watch.is_some() {
                self.features
                    .extend(series.iter().map(|(k, v)| (*k, v.clone())));
            }
            if self.suppressed(epoch) {
                continue;
            }
            if rescore {
                scored_now.extend(series.iter().map(|(k, _)| *k));
            }
            rest.push((epoch, series));
        }
        let mut rescored = BTreeMap::new();
        if let Some(e) = newest.filter(|e| rescore && !self.suppressed(*e)) {
            // A new model version: every other series once, at the newest closed epoch.
            let others: Vec<(Key, FeatureVec)> = self
                .features
                .iter()
                .filter(|(k, _)| !scored_now.contains(k))
                .map(|(k, v)| (*k, v.clone()))
                .collect();
            rescored.insert(e, others.len() as u64);
            rest.push((e, others));
        }
        // Scoring runs one part ahead: while the output path builds and writes one part's
        // records, the scoring threads score the next. A part holds series of many epochs: in a
        // backfill with `every_epoch` most epochs change too few series to keep them busy.
        let mut all = rest
            .iter()
            .flat_map(|(epoch, series)| series.iter().map(move |s| (*epoch, s)));
        let mut next = self.submit_part(&mut all);
        while let Some((part, pending)) = next {
            next = self.submit_part(&mut all);
            let started = Instant::now();
            let forecasts = pending.wait()?;
            scoring_secs += started.elapsed().as_secs_f64();
            self.records_into(&part, forecasts, dict, &mut chunk.forecasts);
            if !write(&mut chunk) {
                return Ok(None);
            }
            chunk.forecasts.clear();
        }
        self.progress.metrics.scoring_seconds.observe(scoring_secs);
        Ok(Some(Delivered {
            through: changed.frontier,
            superseded,
            rescored,
            ..Delivered::default()
        }))
    }

    /// The dead letters, progress records and offsets of an advance every process
    /// acknowledged.
    pub fn progress(&mut self, mut closed: Closed) -> Advance {
        let m = &self.progress.metrics;
        let mut advance = Advance {
            dead_letters: closed.dead.iter().map(dead_letter).collect(),
            closed_at: closed.closed_at,
            epochs_closed: closed.epochs_closed,
            newest: closed.epochs.last().map(|t| t.epoch),
            consumed: closed
                .consumed
                .iter()
                .map(|(k, n)| (k.name().to_string(), *n))
                .collect(),
            late: closed.late,
            ..Advance::default()
        };
        m.late_events.inc_by(closed.late);
        self.dead_unrecorded += closed.dead.len() as u64;
        if closed.closed_at.is_none() {
            return advance;
        }
        m.epochs_closed.inc_by(closed.epochs_closed);
        let frontier = closed
            .frontier
            .or_else(|| advance.newest.map(|e| e + 1))
            .unwrap_or(0);
        // Nothing to record or commit while a restart is still rebuilding what was committed.
        if self.suppressed(frontier) {
            return advance;
        }
        let latency_ms = closed
            .closed_at
            .map_or(0, |t| t.elapsed().as_millis() as u64);
        for tally in closed
            .epochs
            .iter()
            .filter(|t| !self.suppressed(t.epoch + 1))
        {
            let keys_changed = tally.changed.saturating_sub(tally.superseded);
            let keys_scored = keys_changed + tally.rescored;
            m.keys_changed.observe(keys_changed as f64);
            m.keys_scored.observe(keys_scored as f64);
            advance.progress.push(EpochRecord {
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
                keys_superseded: tally.superseded,
                keys_scored,
                offsets: tally.offsets.iter().map(|(p, o)| (p.label(), *o)).collect(),
                latency_ms,
            });
        }
        if let Some(last) = advance.progress.last_mut() {
            last.dead_letters = std::mem::take(&mut self.dead_unrecorded);
        }
        if !closed.offsets.is_empty() {
            advance.commit = Some(Commit {
                frontier,
                offsets: std::mem::take(&mut closed.offsets),
            });
        }
        advance
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn a_large_advance_is_handed_over_in_chunks_in_epoch_order() {
        let origin = Path::new("<test>");
        let cfg = crate::config::Config::parse("", origin)
            .and_then(|c| c.resolve(origin))
            .unwrap();
        let fallbacks = prometheus::IntCounter::new("fallbacks", "test").unwrap();
        let (scorer, watch) = crate::model::scorer(&cfg, fallbacks).unwrap();
        let progress = Arc::new(Progress::default());
        // A restart that resumes at epoch 1: epoch 0 was delivered before.
        let mut builder = Builder::new(&cfg, scorer, watch, Some(1), progress);
        let width = cfg.spec.schema().features.len();
        let series = |store: u64, n: usize| -> Vec<(Key, FeatureVec)> {
            (0..n as u64)
                .map(|sku| (Key { store, sku }, FeatureVec::from(vec![0; width])))
                .collect()
        };
        let changed = || Changed {
            frontier: Some(4),
            changed: vec![
                (0, series(0, 5)),
                (1, series(1, CHUNK + 10)),
                (3, series(3, CHUNK)),
            ],
            ..Changed::default()
        };
        let dict = Dictionary::default();
        let mut chunks: Vec<Vec<String>> = Vec::new();
        let delivered = builder
            .forecasts(changed(), &dict, |a| {
                chunks.push(
                    a.forecasts
                        .iter()
                        .map(|r| r.epoch_end.to_string())
                        .collect(),
                );
                true
            })
            .unwrap()
            .expect("every chunk taken");
        assert_eq!(delivered.through, Some(4));
        let sizes: Vec<usize> = chunks.iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![CHUNK, CHUNK, 10]);
        let end = |e| rfc3339(cfg.clock.epoch_end(e));
        let mut want = vec![end(1); CHUNK + 10];
        want.extend(vec![end(3); CHUNK]);
        assert_eq!(chunks.concat(), want);
        // A sink that refuses the second chunk: nothing is acknowledged.
        let mut calls = 0;
        let refused = builder
            .forecasts(changed(), &dict, |_| {
                calls += 1;
                calls < 2
            })
            .unwrap();
        assert!(refused.is_none());
        assert_eq!(calls, 2);
    }
}

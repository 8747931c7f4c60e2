//! Scoring threads. The forecaster (the candle model, or a baseline) runs on threads of its own,
//! never inside a timely operator or on a tokio worker. The caller splits an epoch's changed
//! series into batches and sends them over a bounded channel; it blocks when every thread is busy
//! and the channel is full, which is the back-pressure on the dataflow side.
//!
//! The model can be swapped between epochs ([`Scorer::set_model`]); a batch is always scored by
//! the model it was sent with. [`ModelWatch`] notices a new version in the model directory.
//!
//! A batch the model cannot score (an error, a wrong number of forecasts, a scoring thread that
//! died) is scored by the baseline instead: every forecast then names the baseline and the
//! reason ([`Forecast::fallback`]), the error is logged (and so sent to Sentry), and the
//! series are counted. No series is ever left without a forecast.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::SystemTime;

use dataflows::{FeatureVec, PeriodKind, Schema};

use super::{read_manifest, ModelError, QuantileModel, MANIFEST_FILE};
use crate::forecast::{Fallback, Forecast, Forecaster, ScoreError};

/// Keeps candle's kernels on the thread that calls them, unless the environment already says
/// how many threads they use (`RAYON_NUM_THREADS`, `CANDLE_NUM_THREADS`). The worker scores on
/// its own scoring threads (`forecast.scoring_threads`), one batch each; candle's pools on top
/// of that spin at their barriers while the batches are small. In the `kafka` bench with the
/// model, serial kernels cost about a sixth less CPU with `latest` and a quarter less with
/// `every_epoch`. Training keeps candle's threads: only the commands that score call this.
///
/// Call it first thing in `main`, before any thread starts: it sets environment variables.
pub fn serial_kernels() {
    for var in ["RAYON_NUM_THREADS", "CANDLE_NUM_THREADS"] {
        if std::env::var_os(var).is_none() {
            std::env::set_var(var, "1");
        }
    }
}

struct Job {
    model: Arc<dyn Forecaster>,
    /// Position of the batch's first vector in the caller's list.
    first: usize,
    /// The caller's list, shared by every batch of it; this batch is `first..first + len`.
    vecs: Arc<[FeatureVec]>,
    len: usize,
    reply: mpsc::Sender<(usize, Result<Vec<Forecast>, ScoreError>)>,
}

/// What scoring needs besides the model: the baseline that stands in for it, and the count of
/// series it stood in for.
#[derive(Clone)]
struct Rescue {
    baseline: Arc<dyn Forecaster>,
    count: prometheus::IntCounter,
}

impl Rescue {
    /// `model`'s forecasts of `batch`, or the baseline's where the model cannot.
    fn score(
        &self,
        model: &dyn Forecaster,
        batch: &[&FeatureVec],
    ) -> Result<Vec<Forecast>, ScoreError> {
        let why = match model.forecast(batch) {
            Ok(f) if f.len() == batch.len() => return Ok(f),
            Ok(f) => format!("{} forecasts for a batch of {}", f.len(), batch.len()),
            Err(e) => e.to_string(),
        };
        self.fall_back(model, batch, why)
    }

    /// The baseline's forecasts of `batch`, each naming it and `why` the model did not score.
    fn fall_back(
        &self,
        model: &dyn Forecaster,
        batch: &[&FeatureVec],
        why: String,
    ) -> Result<Vec<Forecast>, ScoreError> {
        tracing::error!(
            model = model.name(),
            version = model.version(),
            series = batch.len(),
            baseline = self.baseline.name(),
            error = %why,
            "the model could not score a batch: the baseline scored it"
        );
        self.count.inc_by(batch.len() as u64);
        let info = Arc::new(Fallback {
            model: self.baseline.name().to_string(),
            version: self.baseline.version().to_string(),
            reason: why,
        });
        let mut out = self.baseline.forecast(batch)?;
        if out.len() != batch.len() {
            return Err(ScoreError(format!(
                "the baseline gave {} forecasts for a batch of {}",
                out.len(),
                batch.len()
            )));
        }
        for f in &mut out {
            f.fallback = Some(Arc::clone(&info));
        }
        Ok(out)
    }
}

/// A pool of scoring threads with the current model.
pub struct Scorer {
    model: Arc<dyn Forecaster>,
    rescue: Rescue,
    jobs: Option<SyncSender<Job>>,
    threads: Vec<JoinHandle<()>>,
    batch: usize,
}

impl Scorer {
    /// Starts `threads` scoring threads (at least one); batches of at most `batch` series.
    /// `baseline` scores a batch the model cannot; `fallbacks` counts the series it scored.
    pub fn new(
        model: Arc<dyn Forecaster>,
        (baseline, fallbacks): (Arc<dyn Forecaster>, prometheus::IntCounter),
        threads: usize,
        batch: usize,
    ) -> Self {
        let rescue = Rescue {
            baseline,
            count: fallbacks,
        };
        let threads = threads.max(1);
        let (tx, rx) = mpsc::sync_channel::<Job>(threads);
        let rx: Arc<Mutex<Receiver<Job>>> = Arc::new(Mutex::new(rx));
        let handles = (0..threads)
            .map(|n| {
                let rx = Arc::clone(&rx);
                let rescue = rescue.clone();
                std::thread::Builder::new()
                    .name(format!("scorer-{n}"))
                    .spawn(move || loop {
                        // Holding the lock only to receive: the next idle thread takes a job.
                        let job = match rx.lock() {
                            Ok(guard) => guard.recv(),
                            Err(_) => return,
                        };
                        let Ok(job) = job else { return };
                        let batch = &job.vecs[job.first..job.first + job.len];
                        let refs: Vec<&FeatureVec> = batch.iter().collect();
                        let out = rescue.score(job.model.as_ref(), &refs);
                        // The caller may have gone; nothing to do then.
                        let _ = job.reply.send((job.first, out));
                    })
                    .expect("spawning a scoring thread")
            })
            .collect();
        Scorer {
            model,
            rescue,
            jobs: Some(tx),
            threads: handles,
            batch: batch.max(1),
        }
    }

    /// The current model.
    pub fn model(&self) -> &dyn Forecaster {
        self.model.as_ref()
    }

    /// Replaces the model for the batches sent from now on.
    pub fn set_model(&mut self, model: Arc<dyn Forecaster>) {
        self.model = model;
    }

    /// Scores `vecs`, in order, on the scoring threads. A batch the model cannot score is
    /// scored by the baseline (see the module docs); an error means the baseline failed too.
    pub fn score(&self, vecs: &[&FeatureVec]) -> Result<Vec<Forecast>, ScoreError> {
        self.submit(vecs).wait()
    }

    /// Starts scoring `vecs` on the scoring threads and returns at once (unless every thread is
    /// busy and the queue full); [`Pending::wait`] gives the forecasts. The caller can build
    /// and write the previous batch's records meanwhile.
    pub fn submit(&self, vecs: &[&FeatureVec]) -> Pending {
        // One copy of the list (reference counts only), shared by the batches and by the
        // baseline should a batch not come back.
        let vecs: Arc<[FeatureVec]> = vecs.iter().map(|v| (*v).clone()).collect();
        let (reply, results) = mpsc::channel();
        let mut sent = 0;
        if let Some(jobs) = &self.jobs {
            for first in (0..vecs.len()).step_by(self.batch) {
                let job = Job {
                    model: Arc::clone(&self.model),
                    first,
                    vecs: Arc::clone(&vecs),
                    len: self.batch.min(vecs.len() - first),
                    reply: reply.clone(),
                };
                if jobs.send(job).is_err() {
                    break;
                }
                sent += 1;
            }
        }
        Pending {
            vecs,
            results,
            sent,
            model: Arc::clone(&self.model),
            rescue: self.rescue.clone(),
        }
    }
}

/// Forecasts on their way from the scoring threads ([`Scorer::submit`]).
pub struct Pending {
    vecs: Arc<[FeatureVec]>,
    results: Receiver<(usize, Result<Vec<Forecast>, ScoreError>)>,
    sent: usize,
    model: Arc<dyn Forecaster>,
    rescue: Rescue,
}

impl Pending {
    /// The forecasts, in the order of the vectors submitted; the baseline's for batches no
    /// thread answered.
    pub fn wait(self) -> Result<Vec<Forecast>, ScoreError> {
        let mut out: Vec<Option<Forecast>> = vec![None; self.vecs.len()];
        for (first, forecasts) in self.results.iter().take(self.sent) {
            for (k, f) in forecasts?.into_iter().enumerate() {
                out[first + k] = Some(f);
            }
        }
        // Batches whose thread died (or that found no thread): the baseline, here.
        let mut missing: Vec<usize> = Vec::new();
        for (i, f) in out.iter().enumerate() {
            if f.is_none() {
                missing.push(i);
            }
        }
        if !missing.is_empty() {
            let batch: Vec<&FeatureVec> = missing.iter().map(|i| &self.vecs[*i]).collect();
            let why = "no scoring thread answered (one panicked or they stopped)".to_string();
            let rescued = self.rescue.fall_back(self.model.as_ref(), &batch, why)?;
            for (i, f) in missing.into_iter().zip(rescued) {
                out[i] = Some(f);
            }
        }
        Ok(out.into_iter().flatten().collect())
    }
}

impl Drop for Scorer {
    fn drop(&mut self) {
        self.jobs = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Watches a model directory for a new version.
pub struct ModelWatch {
    dir: PathBuf,
    /// Modification time of the manifest when last read.
    seen: Option<SystemTime>,
    /// Version loaded.
    version: String,
}

fn modified(dir: &Path) -> Option<SystemTime> {
    std::fs::metadata(dir.join(MANIFEST_FILE))
        .and_then(|m| m.modified())
        .ok()
}

impl ModelWatch {
    /// Loads the model in `dir` and starts watching it.
    pub fn load(
        dir: &Path,
        schema: &Schema,
        period: PeriodKind,
    ) -> Result<(Self, QuantileModel), ModelError> {
        let seen = modified(dir);
        let model = QuantileModel::load(dir, schema, period)?;
        Ok((
            ModelWatch {
                dir: dir.to_path_buf(),
                seen,
                version: model.manifest.version.clone(),
            },
            model,
        ))
    }

    /// A new model, if the directory holds another version than the one loaded. A new version
    /// that cannot be loaded is reported as an error once and the current model is kept.
    pub fn poll(&mut self, schema: &Schema, period: PeriodKind) -> Option<QuantileModel> {
        let now = modified(&self.dir);
        if now == self.seen {
            return None;
        }
        let version = match read_manifest(&self.dir) {
            Ok(m) => m.version,
            Err(e) => {
                // Perhaps caught mid-write: look again at the next poll.
                tracing::warn!(error = %e, "model directory changed but its manifest is unreadable; keeping the current model");
                return None;
            }
        };
        self.seen = now;
        if version == self.version {
            return None;
        }
        match QuantileModel::load(&self.dir, schema, period) {
            Ok(model) => {
                tracing::info!(from = %self.version, to = %version, "new model version loaded; re-scoring every series once");
                self.version = version;
                Some(model)
            }
            Err(e) => {
                tracing::error!(error = %e, "new model version refused; keeping the current model");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forecast::{baseline, Baseline};

    fn weekly() -> (
        dataflows::Schema,
        Arc<dyn Forecaster>,
        prometheus::IntCounter,
    ) {
        let schema = dataflows::FeatureSpec::weekly().schema();
        let ma = baseline(Baseline::MovingAverage, &schema, PeriodKind::Week, 2).unwrap();
        let counter = prometheus::IntCounter::new("fallbacks", "test").unwrap();
        (schema, Arc::from(ma), counter)
    }

    /// Vectors whose 4-week sum is `4 * n` units for `n` in `0..count`: the moving average
    /// forecasts `n`.
    fn vectors(schema: &dataflows::Schema, count: i64) -> Vec<FeatureVec> {
        let i = schema.index("sales_sum_4w").unwrap();
        (0..count)
            .map(|n| {
                let mut v = vec![0; schema.features.len()];
                v[i] = n * 4000;
                FeatureVec::from(v)
            })
            .collect()
    }

    #[test]
    fn batches_come_back_in_order() {
        let (schema, ma, counter) = weekly();
        let scorer = Scorer::new(Arc::clone(&ma), (ma, counter.clone()), 3, 7);
        let vecs = vectors(&schema, 100);
        let refs: Vec<&FeatureVec> = vecs.iter().collect();
        let out = scorer.score(&refs).unwrap();
        let means: Vec<f64> = out.iter().map(|f| f.p50[0]).collect();
        assert_eq!(means, (0..100).map(f64::from).collect::<Vec<_>>());
        assert!(out.iter().all(|f| f.fallback.is_none()));
        assert_eq!(counter.get(), 0);
    }

    /// A model that fails in one of three ways on batches holding the vector `poison` (a
    /// 4-week sum of 4 * 13 units), and otherwise forecasts 1000 units.
    struct Broken(&'static str);

    impl Forecaster for Broken {
        fn name(&self) -> &str {
            "broken"
        }
        fn version(&self) -> &str {
            "7"
        }
        fn horizon(&self) -> usize {
            2
        }
        fn forecast(&self, batch: &[&FeatureVec]) -> Result<Vec<Forecast>, ScoreError> {
            let poisoned = batch.iter().any(|v| v.0.contains(&(13 * 4000)));
            match self.0 {
                "error" if poisoned => Err(ScoreError("shape mismatch".into())),
                "short" if poisoned => Ok(vec![Forecast::normal(vec![1000.0; 2], 0.0)]),
                "panic" if poisoned => panic!("a bug in the model"),
                _ => Ok(vec![Forecast::normal(vec![1000.0; 2], 0.0); batch.len()]),
            }
        }
    }

    #[test]
    fn a_batch_the_model_cannot_score_is_scored_by_the_baseline_and_says_so() {
        for how in ["error", "short", "panic"] {
            let (schema, ma, counter) = weekly();
            let scorer = Scorer::new(Arc::new(Broken(how)), (ma, counter.clone()), 2, 10);
            let vecs = vectors(&schema, 40);
            let refs: Vec<&FeatureVec> = vecs.iter().collect();
            let out = scorer.score(&refs).unwrap();
            assert_eq!(out.len(), 40, "{how}: every series has a forecast");
            for (n, f) in out.iter().enumerate() {
                if (10..20).contains(&n) {
                    // The batch of the poisoned vector: the baseline's forecast, and why.
                    assert_eq!(f.p50, vec![n as f64; 2], "{how}: series {n}");
                    let fb = f.fallback.as_ref().expect("marked as a fallback");
                    assert_eq!(fb.model, "baseline-ma");
                    assert!(!fb.reason.is_empty(), "{how}: a reason");
                } else {
                    assert_eq!(f.p50, vec![1000.0; 2], "{how}: series {n}");
                    assert!(f.fallback.is_none());
                }
            }
            assert_eq!(counter.get(), 10, "{how}: series counted");
        }
    }
}

//! Scoring threads. The forecaster (the candle model, or a baseline) runs on threads of its own,
//! never inside a timely operator or on a tokio worker. The caller splits an epoch's changed
//! series into batches and sends them over a bounded channel; it blocks when every thread is busy
//! and the channel is full, which is the back-pressure on the dataflow side.
//!
//! The model can be swapped between epochs ([`Scorer::set_model`]); a batch is always scored by
//! the model it was sent with. [`ModelWatch`] notices a new version in the model directory.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::SystemTime;

use dataflows::{FeatureVec, PeriodKind, Schema};

use super::{read_manifest, ModelError, QuantileModel, MANIFEST_FILE};
use crate::forecast::{Forecast, Forecaster};

struct Job {
    model: Arc<dyn Forecaster>,
    /// Position of the batch's first vector in the caller's list.
    first: usize,
    vecs: Vec<FeatureVec>,
    reply: mpsc::Sender<(usize, Vec<Forecast>)>,
}

/// A pool of scoring threads with the current model.
pub struct Scorer {
    model: Arc<dyn Forecaster>,
    jobs: Option<SyncSender<Job>>,
    threads: Vec<JoinHandle<()>>,
    batch: usize,
}

impl Scorer {
    /// Starts `threads` scoring threads (at least one); batches of at most `batch` series.
    pub fn new(model: Arc<dyn Forecaster>, threads: usize, batch: usize) -> Self {
        let threads = threads.max(1);
        let (tx, rx) = mpsc::sync_channel::<Job>(threads);
        let rx: Arc<Mutex<Receiver<Job>>> = Arc::new(Mutex::new(rx));
        let handles = (0..threads)
            .map(|n| {
                let rx = Arc::clone(&rx);
                std::thread::Builder::new()
                    .name(format!("scorer-{n}"))
                    .spawn(move || loop {
                        // Holding the lock only to receive: the next idle thread takes a job.
                        let job = match rx.lock() {
                            Ok(guard) => guard.recv(),
                            Err(_) => return,
                        };
                        let Ok(job) = job else { return };
                        let refs: Vec<&FeatureVec> = job.vecs.iter().collect();
                        let out = job.model.forecast(&refs);
                        // The caller may have gone; nothing to do then.
                        let _ = job.reply.send((job.first, out));
                    })
                    .expect("spawning a scoring thread")
            })
            .collect();
        Scorer {
            model,
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

    /// Scores `vecs`, in order, on the scoring threads.
    pub fn score(&self, vecs: &[&FeatureVec]) -> Vec<Forecast> {
        let Some(jobs) = &self.jobs else {
            return Vec::new();
        };
        let (reply, results) = mpsc::channel();
        let mut sent = 0;
        for (k, chunk) in vecs.chunks(self.batch).enumerate() {
            let job = Job {
                model: Arc::clone(&self.model),
                first: k * self.batch,
                vecs: chunk.iter().map(|v| (*v).clone()).collect(),
                reply: reply.clone(),
            };
            if jobs.send(job).is_err() {
                break;
            }
            sent += 1;
        }
        drop(reply);
        let mut out: Vec<Forecast> = vec![Forecast::default(); vecs.len()];
        for (first, forecasts) in results.iter().take(sent) {
            for (k, f) in forecasts.into_iter().enumerate() {
                out[first + k] = f;
            }
        }
        out
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

    #[test]
    fn batches_come_back_in_order() {
        let schema = dataflows::FeatureSpec::weekly().schema();
        let ma = baseline(Baseline::MovingAverage, &schema, PeriodKind::Week, 2).unwrap();
        let scorer = Scorer::new(Arc::from(ma), 3, 7);
        let i = schema.index("sales_sum_4w").unwrap();
        let vecs: Vec<FeatureVec> = (0..100)
            .map(|n| {
                let mut v = vec![0; schema.features.len()];
                v[i] = n * 4000;
                FeatureVec::from(v)
            })
            .collect();
        let refs: Vec<&FeatureVec> = vecs.iter().collect();
        let out = scorer.score(&refs);
        let means: Vec<f64> = out.iter().map(|f| f.p50[0]).collect();
        assert_eq!(means, (0..100).map(f64::from).collect::<Vec<_>>());
    }
}

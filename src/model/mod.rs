//! The demand model: a global quantile MLP (candle) over the dataflow's own features.
//!
//! - [`history`]: point-in-time feature snapshots per period, from the dataflow (the training
//!   set, and the backtest's inputs and actuals).
//! - [`net`]: the network and its input normalisation.
//! - [`train`]: `stockcast train`: pinball loss, time-based holdout, early stopping.
//! - [`backtest`]: `stockcast backtest`: rolling origins, metrics against the baselines.
//! - [`scorer`]: scoring threads fed by a bounded channel, used by the worker and replay.
//! - [`plot`]: PNG charts of the training and backtest reports.
//!
//! # The artifact
//! A model is a directory holding `model.safetensors` (the weights) and `manifest.json`
//! ([`Manifest`]). The manifest carries the ordered feature names and the schema hash the model
//! was trained on; [`QuantileModel::load`] refuses a model whose features differ from the running
//! schema, naming the missing and extra features, so a model can never read a column it was not
//! trained on.

pub mod backtest;
pub mod commands;
pub mod history;
pub mod net;
pub mod plot;
pub mod scorer;
pub mod train;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{Device, Tensor};
use dataflows::{FeatureVec, PeriodKind, Schema};
use serde::{Deserialize, Serialize};

use crate::config::Resolved;
use crate::forecast::{Forecast, Forecaster, MissingFeature, ScoreError};
use net::{Mlp, Normalisation};

/// File names inside a model directory.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// See [`WEIGHTS_FILE`].
pub const MANIFEST_FILE: &str = "manifest.json";

/// Validation metrics of a trained model, on its time-based holdout.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// sum |p50 - y| / sum |y|.
    pub wape: f64,
    /// sum (p50 - y) / sum |y|.
    pub bias: f64,
    /// Pinball loss at 0.5 / sum |y|.
    pub pinball50: f64,
    /// Pinball loss at 0.9 / sum |y|.
    pub pinball90: f64,
    /// Share of actuals at or below p90.
    pub coverage90: f64,
}

/// The range of periods a model learnt from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainedOn {
    /// Dataset directory.
    pub data: String,
    /// First period start (RFC 3339) of any training row.
    pub first_period: String,
    /// Start of the last period whose demand was used (as a target or a feature).
    pub last_period: String,
    /// Training rows.
    pub rows: usize,
    /// Holdout rows.
    pub validation_rows: usize,
    /// The share of (series, period) feature rows the history kept (1: all; see `--max-rows`).
    #[serde(default = "all_rows")]
    pub row_share: f64,
}

fn all_rows() -> f64 {
    1.0
}

/// How the model was trained.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Training {
    /// Random seed (initialisation and shuffling).
    pub seed: u64,
    /// Epochs run, including the patience after the best.
    pub epochs: usize,
    /// Epoch whose weights were kept (1-based).
    pub best_epoch: usize,
    /// Weight of a target period that ended out of stock (censored demand); 1 = no special case.
    pub censored_weight: f32,
    /// Hidden layer sizes.
    pub hidden: Vec<usize>,
    /// Decay of the moving average of the weights kept (0: the last step's weights).
    #[serde(default)]
    pub weight_average: f64,
    /// Training loss per epoch of the holdout run (weighted pinball, scale units).
    pub train_loss: Vec<f64>,
    /// Holdout loss per epoch.
    pub validation_loss: Vec<f64>,
    /// Training loss per epoch of the refit on all rows (empty without a refit).
    pub refit_loss: Vec<f64>,
}

/// `manifest.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Model name, written into every forecast record.
    pub name: String,
    /// Version: a hash of the weights, so a retrained model always gets a new one.
    pub version: String,
    /// When it was trained (RFC 3339).
    pub created: String,
    /// Ordered feature names the model reads.
    pub features: Vec<String>,
    /// Hash of those names (the dataflow's schema hash).
    pub schema_hash: String,
    /// Period length.
    pub period: PeriodKind,
    /// Periods forecast.
    pub horizon: usize,
    /// Quantiles of the outputs.
    pub quantiles: Vec<f64>,
    /// Input normalisation.
    pub normalisation: Normalisation,
    /// Training data range.
    pub trained_on: TrainedOn,
    /// Holdout metrics.
    pub validation: Metrics,
    /// Training settings and curves.
    pub training: Training,
}

/// Why a model could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file could not be read or written.
    #[error("{path}: {message}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why (the OS error).
        message: String,
    },
    /// The manifest is not valid JSON of the expected shape.
    #[error("{path}: invalid manifest: {message}")]
    Manifest {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The model was trained on other features than the running dataflow computes.
    #[error(
        "model {dir} does not match the feature schema (model {model_hash}, dataflow {schema_hash}): \
         missing from the dataflow: [{}]; not in the model: [{}]{}",
        missing.join(", "),
        extra.join(", "),
        if *reordered { "; same features in another order" } else { "" }
    )]
    Schema {
        /// The model directory.
        dir: PathBuf,
        /// Hash in the manifest.
        model_hash: String,
        /// Hash of the running schema.
        schema_hash: String,
        /// Features the model reads that the dataflow lacks.
        missing: Vec<String>,
        /// Features the dataflow has that the model does not read.
        extra: Vec<String>,
        /// Same sets, different order.
        reordered: bool,
    },
    /// The model is for another period length.
    #[error("model {dir} forecasts {model:?} periods, the dataflow runs {running:?} periods")]
    Period {
        /// The model directory.
        dir: PathBuf,
        /// The model's.
        model: PeriodKind,
        /// The running one.
        running: PeriodKind,
    },
    /// The weights could not be read or do not fit the manifest.
    #[error("{path}: {message}")]
    Weights {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// Checks that a manifest's features are exactly the schema's, in order.
pub fn check_schema(dir: &Path, manifest: &Manifest, schema: &Schema) -> Result<(), ModelError> {
    let running: Vec<&str> = schema.names().collect();
    if manifest.features == running && manifest.schema_hash == schema.hash {
        return Ok(());
    }
    let missing: Vec<String> = manifest
        .features
        .iter()
        .filter(|f| !running.contains(&f.as_str()))
        .cloned()
        .collect();
    let extra: Vec<String> = running
        .iter()
        .filter(|f| !manifest.features.iter().any(|m| m == *f))
        .map(|f| f.to_string())
        .collect();
    Err(ModelError::Schema {
        dir: dir.to_path_buf(),
        model_hash: manifest.schema_hash.clone(),
        schema_hash: schema.hash.clone(),
        reordered: missing.is_empty() && extra.is_empty(),
        missing,
        extra,
    })
}

/// Reads `DIR/manifest.json`.
pub fn read_manifest(dir: &Path) -> Result<Manifest, ModelError> {
    let path = dir.join(MANIFEST_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| ModelError::Io {
        path: path.clone(),
        message: e.to_string(),
    })?;
    let mut manifest: Manifest = serde_json::from_str(&text).map_err(|e| ModelError::Manifest {
        path,
        message: e.to_string(),
    })?;
    manifest.normalisation = manifest.normalisation.resolved();
    Ok(manifest)
}

/// A trained model, ready to score.
pub struct QuantileModel {
    /// Its manifest.
    pub manifest: Manifest,
    schema: Schema,
    net: Mlp,
}

impl QuantileModel {
    /// Loads `dir` for the running `schema` and period; refuses a mismatch.
    pub fn load(dir: &Path, schema: &Schema, period: PeriodKind) -> Result<Self, ModelError> {
        let manifest = read_manifest(dir)?;
        check_schema(dir, &manifest, schema)?;
        if manifest.period != period {
            return Err(ModelError::Period {
                dir: dir.to_path_buf(),
                model: manifest.period,
                running: period,
            });
        }
        let path = dir.join(WEIGHTS_FILE);
        let inputs = manifest.normalisation.width();
        if inputs != schema.features.len() + 1 {
            return Err(ModelError::Manifest {
                path: dir.join(MANIFEST_FILE),
                message: format!(
                    "normalisation has {inputs} columns for {} features",
                    schema.features.len()
                ),
            });
        }
        let net = Mlp::load(&path, inputs, manifest.horizon).map_err(|e| ModelError::Weights {
            path: path.clone(),
            message: e.to_string(),
        })?;
        Ok(QuantileModel {
            manifest,
            schema: schema.clone(),
            net,
        })
    }

    /// Builds a model from parts (training).
    pub fn from_parts(manifest: Manifest, schema: Schema, net: Mlp) -> Self {
        QuantileModel {
            manifest,
            schema,
            net,
        }
    }

    /// Writes `dir/model.safetensors` and `dir/manifest.json` (creating `dir`).
    pub fn save(&self, dir: &Path) -> Result<(), ModelError> {
        let io = |path: PathBuf| {
            move |e: std::io::Error| ModelError::Io {
                path,
                message: e.to_string(),
            }
        };
        std::fs::create_dir_all(dir).map_err(io(dir.to_path_buf()))?;
        let weights = dir.join(WEIGHTS_FILE);
        self.net.save(&weights).map_err(|e| ModelError::Weights {
            path: weights.clone(),
            message: e.to_string(),
        })?;
        let path = dir.join(MANIFEST_FILE);
        let mut text =
            serde_json::to_string_pretty(&self.manifest).map_err(|e| ModelError::Manifest {
                path: path.clone(),
                message: e.to_string(),
            })?;
        text.push('\n');
        std::fs::write(&path, text).map_err(io(path.clone()))
    }

    /// The network.
    pub fn net(&self) -> &Mlp {
        &self.net
    }

    /// Scores raw rows (natural units, schema order, NaN for missing): quantiles in units.
    pub fn forecast_rows(&self, rows: &[&[f32]]) -> candle_core::Result<Vec<Forecast>> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let norm = &self.manifest.normalisation;
        let width = norm.width();
        let mut x = vec![0f32; rows.len() * width];
        let mut scales = Vec::with_capacity(rows.len());
        for (r, row) in rows.iter().enumerate() {
            let s = norm.scale(row);
            norm.inputs(row, s, &mut x[r * width..(r + 1) * width]);
            scales.push(s);
        }
        let x = Tensor::from_vec(x, (rows.len(), width), &Device::Cpu)?;
        // The network's last layer as one flat copy; the quantiles are formed from it row by
        // row, straight into each forecast's units (what `forward` would give, without a
        // tensor and a pass over the batch per step).
        let y = self.net.head(&x)?;
        let horizon = self.net.horizon;
        let (n, outputs) = y.dims2()?;
        if (n, outputs) != (rows.len(), 3 * horizon) {
            return Err(candle_core::Error::Msg(format!(
                "the network gave ({n}, {outputs}) for {} rows and {horizon} periods",
                rows.len()
            )));
        }
        let out: Vec<f32> = y.flatten_all()?.to_vec1()?;
        Ok(scales
            .into_iter()
            .enumerate()
            .map(|(r, s)| {
                let row = &out[r * 3 * horizon..(r + 1) * 3 * horizon];
                let mut q = [
                    Vec::with_capacity(horizon),
                    Vec::with_capacity(horizon),
                    Vec::with_capacity(horizon),
                ];
                net::quantiles_of_head(row, horizon, |k, _, v| {
                    q[k].push(f64::from((v * s).max(0.0)));
                });
                let [p10, p50, p90] = q;
                Forecast {
                    p10,
                    p50,
                    p90,
                    fallback: None,
                }
            })
            .collect())
    }
}

impl Forecaster for QuantileModel {
    fn name(&self) -> &str {
        &self.manifest.name
    }
    fn version(&self) -> &str {
        &self.manifest.version
    }
    fn horizon(&self) -> usize {
        self.manifest.horizon
    }
    fn forecast(&self, batch: &[&FeatureVec]) -> Result<Vec<Forecast>, ScoreError> {
        let width = self.schema.features.len();
        let mut flat = Vec::with_capacity(batch.len() * width);
        for v in batch {
            history::natural(&self.schema, v, &mut flat);
        }
        let rows: Vec<&[f32]> = flat.chunks(width.max(1)).collect();
        // The scorer falls back to the baseline for this batch, and says so.
        self.forecast_rows(&rows)
            .map_err(|e| ScoreError(format!("candle forward pass: {e}")))
    }
}

/// Why no forecaster could be set up.
#[derive(Debug, thiserror::Error)]
pub enum ForecasterError {
    /// The configured model cannot be used.
    #[error(transparent)]
    Model(Box<ModelError>),
    /// The baseline does not fit the feature schema.
    #[error(transparent)]
    Baseline(#[from] MissingFeature),
}

impl From<ModelError> for ForecasterError {
    fn from(e: ModelError) -> Self {
        ForecasterError::Model(Box::new(e))
    }
}

/// The scoring threads a run starts with: the configured model (watched for new versions), or
/// the baseline when no model is configured, which is logged. The configured baseline stands in
/// for the model on a batch it cannot score; `fallbacks` counts those series.
pub fn scorer(
    cfg: &Resolved,
    fallbacks: prometheus::IntCounter,
) -> Result<(scorer::Scorer, Option<scorer::ModelWatch>), ForecasterError> {
    let schema = cfg.spec.schema();
    let period = cfg.clock.period_kind();
    let baseline = |horizon: usize| -> Result<Arc<dyn Forecaster>, ForecasterError> {
        Ok(Arc::from(crate::forecast::baseline(
            cfg.baseline,
            &schema,
            period,
            horizon,
        )?))
    };
    let (model, watch): (Arc<dyn Forecaster>, _) = match &cfg.model.dir {
        Some(dir) => {
            let (watch, model) = scorer::ModelWatch::load(dir, &schema, period)?;
            tracing::info!(
                model = %model.manifest.name,
                version = %model.manifest.version,
                dir = %dir.display(),
                "model loaded"
            );
            (Arc::new(model), Some(watch))
        }
        None => {
            let b = baseline(cfg.spec.horizon as usize)?;
            tracing::warn!(
                model = b.name(),
                "no model configured (forecast.model_dir / --model): forecasting with the baseline"
            );
            (b, None)
        }
    };
    let rescue = baseline(model.horizon())?;
    Ok((
        scorer::Scorer::new(
            model,
            (rescue, fallbacks),
            cfg.model.threads,
            cfg.model.batch,
        ),
        watch,
    ))
}

//! The `train` and `backtest` commands: history in, model directory or report out.

use std::path::Path;

use anyhow::Context;

use super::history::History;
use super::train::{self, TrainOptions};
use super::Metrics;
use crate::config::Resolved;

/// What `train` did.
pub struct TrainSummary {
    /// Model version.
    pub version: String,
    /// Training rows.
    pub rows: usize,
    /// Wall-clock seconds of snapshotting and training.
    pub secs: f64,
    /// Holdout metrics.
    pub validation: Metrics,
    /// The baselines' metrics on the same holdout points, by report name.
    pub baselines: Vec<(&'static str, Metrics)>,
}

/// Replays `data` (keeping the features of at most about `max_rows` series-periods), trains,
/// and writes the model and its report into `out`.
pub fn train(
    cfg: &Resolved,
    data: &Path,
    out: &Path,
    opts: &TrainOptions,
    max_rows: usize,
    workers: usize,
) -> anyhow::Result<TrainSummary> {
    let started = std::time::Instant::now();
    let history = History::load_sampled(cfg, data, None, workers, Some(max_rows))?;
    tracing::info!(
        series = history.keys.len(),
        periods = history.snapshots.len(),
        kept = format!("{:.4}", history.kept),
        secs = format!("{:.1}", started.elapsed().as_secs_f64()),
        "history snapshotted"
    );
    let (model, report) = train::train(&history, &data.display().to_string(), opts)?;
    let mut baselines = Vec::new();
    for (name, which) in super::backtest::BASELINES {
        let f = crate::forecast::baseline(which, &history.schema, history.period, opts.horizon)?;
        let m = super::backtest::score_points(&history, &report.holdout, f.as_ref(), opts.horizon)?;
        baselines.push((name, m));
    }
    model.save(out)?;
    super::plot::training_report(&model.manifest, out)
        .with_context(|| format!("writing the training report into {}", out.display()))?;
    let m = &model.manifest;
    Ok(TrainSummary {
        version: m.version.clone(),
        rows: m.trained_on.rows,
        secs: started.elapsed().as_secs_f64(),
        validation: m.validation.clone(),
        baselines,
    })
}

/// Replays `data`, runs the rolling-origin backtest and writes the report into `out`; returns the
/// backtest for the caller's summary.
pub fn backtest(
    cfg: &Resolved,
    data: &Path,
    out: &Path,
    opts: &super::backtest::BacktestOptions,
    workers: usize,
) -> anyhow::Result<super::backtest::Backtest> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let history = History::load(cfg, data, workers)?;
    let bt = super::backtest::run(&history, &data.display().to_string(), opts)?;
    super::plot::backtest_report(&history, &bt, out)
        .with_context(|| format!("writing the backtest report into {}", out.display()))?;
    Ok(bt)
}

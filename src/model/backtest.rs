//! Rolling-origin backtest of the model against the baselines, on the dataflow's snapshots.
//!
//! With `L` the last period of the data and `H` the horizon, the origins are `L - k*H` for
//! `k = origins..=1`. At origin `T` the model is trained on demand up to `T` only (or loaded),
//! every series known at `T` is forecast for `T + 1 ..= T + H` from its snapshot at `T`, and the
//! forecasts are compared with the realised demand of those periods (0 where a series sold
//! nothing). The baselines read the same snapshot.
//!
//! Metrics are pooled over series, origins and horizons, with `e = forecast - actual`:
//! WAPE = sum|e| / sum|y|, bias = sum e / sum|y|, pinball_q = sum of pinball loss at q / sum|y|,
//! coverage90 = share of actuals at or below p90, and MASE = the mean over (series, origin) of the
//! MAE divided by the series' in-sample MAE of the naive forecast at lag 7 (daily) or 1 (weekly)
//! up to the origin; series whose in-sample MAE is 0 are left out of MASE.

use std::collections::BTreeMap;

use dataflows::{FeatureVec, PeriodKind};
use serde::Serialize;

use super::history::History;
use super::train::{MetricSums, TrainOptions};
use super::{Metrics, QuantileModel};
use crate::forecast::{self, Baseline, Forecast, Forecaster, ScoreError};

/// Pooled metrics of one forecaster, as in `metrics.json`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Scores {
    /// sum|e| / sum|y|.
    pub wape: f64,
    /// Mean scaled absolute error (see the module docs).
    pub mase: f64,
    /// sum e / sum|y|.
    pub bias: f64,
    /// Pinball loss at 0.5 / sum|y|.
    pub pinball50: f64,
    /// Pinball loss at 0.9 / sum|y|.
    pub pinball90: f64,
    /// Share of actuals at or below p90.
    pub coverage90: f64,
}

/// One forecaster's forecasts at one origin, with what is needed to score them.
struct Scored {
    /// Series index, forecast.
    forecasts: Vec<(usize, Forecast)>,
}

/// Accumulates a forecaster's metrics over origins.
#[derive(Default, Clone)]
pub struct Accumulator {
    all: MetricSums,
    by_horizon: Vec<MetricSums>,
    mase_sum: f64,
    mase_n: f64,
    /// Series volume bucket -> sums.
    by_volume: Vec<MetricSums>,
    /// Only target periods that did not end out of stock (actual = demand).
    uncensored: MetricSums,
    /// Target periods the price plan put under a cut (`plan_discount_h*` of at least 5% at the
    /// origin), and the others.
    planned_cut: MetricSums,
    no_planned_cut: MetricSums,
}

impl Accumulator {
    /// The pooled scores.
    pub fn scores(&self) -> Scores {
        let m: Metrics = self.all.metrics();
        Scores {
            wape: m.wape,
            mase: if self.mase_n > 0.0 {
                self.mase_sum / self.mase_n
            } else {
                f64::NAN
            },
            bias: m.bias,
            pinball50: m.pinball50,
            pinball90: m.pinball90,
            coverage90: m.coverage90,
        }
    }

    /// WAPE per horizon step.
    pub fn wape_by_horizon(&self) -> Vec<f64> {
        self.by_horizon.iter().map(|s| s.metrics().wape).collect()
    }

    /// Pooled metrics over the target periods that did not end out of stock.
    pub fn uncensored(&self) -> Metrics {
        self.uncensored.metrics()
    }

    /// Pooled metrics over the target periods with a planned price cut, and over the others,
    /// with the number of (series, period) pairs in each.
    pub fn by_planned_cut(&self) -> [(Metrics, u64); 2] {
        [&self.planned_cut, &self.no_planned_cut].map(|s| (s.metrics(), s.count()))
    }

    /// WAPE per volume bucket (smallest first).
    pub fn wape_by_volume(&self) -> Vec<f64> {
        self.by_volume.iter().map(|s| s.metrics().wape).collect()
    }
}

/// Volume buckets of the WAPE-by-volume chart.
pub const VOLUME_BUCKETS: usize = 5;

/// Settings of a backtest.
pub struct BacktestOptions {
    /// Periods forecast at each origin.
    pub horizon: usize,
    /// Number of origins.
    pub origins: usize,
    /// Training settings (cutoff is set per origin).
    pub train: TrainOptions,
    /// Evaluate this model at every origin instead of training one per origin.
    pub model: Option<std::path::PathBuf>,
    /// Also train with censored periods weighted 1, to show what masking them changes (only when
    /// the data has stock-outs).
    pub censoring_ablation: bool,
}

/// A sample series' forecast at an origin, for the band chart.
#[derive(Clone, Debug)]
pub struct Band {
    /// Series index.
    pub series: usize,
    /// Origin snapshot position.
    pub origin: usize,
    /// Model forecast.
    pub forecast: Forecast,
}

/// Everything the report shows.
pub struct Backtest {
    /// Forecaster name -> accumulated metrics, in report order.
    pub results: Vec<(String, Accumulator)>,
    /// Origin periods (snapshot positions).
    pub origins: Vec<usize>,
    /// Horizon.
    pub horizon: usize,
    /// Model versions trained per origin.
    pub versions: Vec<String>,
    /// Sample of series forecasts (model), for plots.
    pub bands: Vec<Band>,
    /// Target periods that ended out of stock, over all origins.
    pub censored_targets: u64,
    /// Training seconds per origin.
    pub train_secs: Vec<f64>,
    /// Weight the model gave censored target periods.
    pub censored_weight: f32,
}

/// The baselines a model is compared with, by report name.
pub const BASELINES: [(&str, Baseline); 3] = [
    ("naive", Baseline::Naive),
    ("seasonal_naive", Baseline::SeasonalNaive),
    ("ma", Baseline::MovingAverage),
];

/// Converts a snapshot row back to a feature vector (milli-units rounded) for the baselines.
fn to_vec(history: &History, row: &[f32]) -> FeatureVec {
    FeatureVec(
        row.iter()
            .zip(&history.schema.features)
            .map(|(v, f)| {
                if v.is_nan() {
                    dataflows::model::MISSING
                } else {
                    (f64::from(*v) * f.scale as f64).round() as i64
                }
            })
            .collect(),
    )
}

/// In-sample MAE of the naive forecast at `lag` for series `i` over positions `..=t`.
fn naive_mae(history: &History, i: usize, t: usize, lag: usize) -> Option<f64> {
    let first = history.snapshots.iter().position(|s| i < s.n)?;
    let (mut sum, mut n) = (0f64, 0f64);
    for u in (first + lag)..=t {
        sum += f64::from((history.demand(u, i) - history.demand(u - lag, i)).abs());
        n += 1.0;
    }
    (n > 0.0 && sum > 0.0).then(|| sum / n)
}

/// Volume bucket of each series known at `t`: quantiles of demand over the longest window.
fn volume_buckets(history: &History, t: usize) -> Vec<usize> {
    let snap = &history.snapshots[t];
    let width = history.width();
    let col = history
        .schema
        .names()
        .enumerate()
        .filter(|(_, n)| n.starts_with("sales_sum_"))
        .last()
        .map(|(j, _)| j)
        .unwrap_or(0);
    let volume: Vec<f32> = (0..snap.n)
        .map(|i| {
            let v = snap.row(i, width).map_or(f32::NAN, |r| r[col]);
            if v.is_nan() {
                0.0
            } else {
                v
            }
        })
        .collect();
    let mut order: Vec<usize> = (0..snap.n).collect();
    order.sort_by(|a, b| volume[*a].total_cmp(&volume[*b]));
    let mut bucket = vec![0; snap.n];
    for (rank, i) in order.into_iter().enumerate() {
        bucket[i] = rank * VOLUME_BUCKETS / snap.n.max(1);
    }
    bucket
}

fn score_into(
    acc: &mut Accumulator,
    history: &History,
    t: usize,
    scored: &Scored,
    horizon: usize,
    buckets: &[usize],
) {
    let lag = match history.period {
        PeriodKind::Day => 7,
        PeriodKind::Week => 1,
    };
    acc.by_horizon.resize(horizon, MetricSums::default());
    acc.by_volume.resize(VOLUME_BUCKETS, MetricSums::default());
    // The planned discount of each step, as the origin's snapshot knew it.
    let discount_at: Vec<Option<usize>> = (1..=horizon)
        .map(|h| history.schema.index(&format!("plan_discount_h{h}")))
        .collect();
    let width = history.width();
    let cut = dataflows::features::CUT_DISCOUNT as f32 / 1000.0;
    for (i, f) in &scored.forecasts {
        let mut abs_err = 0.0;
        let row = history.snapshots[t].row(*i, width);
        for (h, discount) in discount_at.iter().enumerate() {
            let y = f64::from(history.demand(t + 1 + h, *i));
            let p = [f.p10[h], f.p50[h], f.p90[h]];
            acc.all.add(y, p);
            if discount.zip(row).is_some_and(|(c, r)| r[c] >= cut) {
                acc.planned_cut.add(y, p);
            } else {
                acc.no_planned_cut.add(y, p);
            }
            acc.by_horizon[h].add(y, p);
            acc.by_volume[buckets[*i]].add(y, p);
            if !history.censored(t + 1 + h, *i) {
                acc.uncensored.add(y, p);
            }
            abs_err += (p[1] - y).abs();
        }
        if let Some(d) = naive_mae(history, *i, t, lag) {
            acc.mase_sum += abs_err / horizon as f64 / d;
            acc.mase_n += 1.0;
        }
    }
}

/// Forecasts every series known at snapshot `t` with `f`, in series order.
pub(crate) fn forecast_series(
    history: &History,
    t: usize,
    f: &dyn Forecaster,
) -> Result<Vec<Forecast>, ScoreError> {
    Ok(forecast_all(history, t, f)?
        .forecasts
        .into_iter()
        .map(|(_, f)| f)
        .collect())
}

/// Pooled metrics of `f` at `points` (snapshot, series) over the `horizon` periods after each:
/// e.g. a baseline on the holdout rows of a training run ([`super::train::TrainReport`]).
pub fn score_points(
    history: &History,
    points: &[(usize, usize)],
    f: &dyn Forecaster,
    horizon: usize,
) -> Result<Metrics, ScoreError> {
    let width = history.width();
    let mut acc = MetricSums::default();
    for chunk in points.chunks(4096) {
        let mut vecs = Vec::with_capacity(chunk.len());
        for &(t, i) in chunk {
            let row = history.snapshots[t]
                .row(i, width)
                .ok_or_else(|| ScoreError(format!("no features of series {i} at {t}")))?;
            vecs.push(to_vec(history, row));
        }
        let refs: Vec<&FeatureVec> = vecs.iter().collect();
        let scored = f.forecast(&refs)?;
        if scored.len() != chunk.len() {
            return Err(ScoreError(format!(
                "{} forecasts for a batch of {}",
                scored.len(),
                chunk.len()
            )));
        }
        for (fc, &(t, i)) in scored.iter().zip(chunk) {
            for h in 0..horizon.min(fc.p50.len()) {
                let y = f64::from(history.demand(t + 1 + h, i));
                acc.add(y, [fc.p10[h], fc.p50[h], fc.p90[h]]);
            }
        }
    }
    Ok(acc.metrics())
}

/// Forecasts every series known at snapshot `t` with `f`. A measurement does not fall back to
/// a baseline: a batch the forecaster cannot score fails it.
fn forecast_all(history: &History, t: usize, f: &dyn Forecaster) -> Result<Scored, ScoreError> {
    let snap = &history.snapshots[t];
    let width = history.width();
    let (series, vecs): (Vec<usize>, Vec<FeatureVec>) = snap
        .rows(width)
        .map(|(i, row)| (i, to_vec(history, row)))
        .unzip();
    let refs: Vec<&FeatureVec> = vecs.iter().collect();
    let mut forecasts = Vec::with_capacity(snap.n);
    for (c, chunk) in refs.chunks(4096).enumerate() {
        let scored = f.forecast(chunk)?;
        if scored.len() != chunk.len() {
            return Err(ScoreError(format!(
                "{} forecasts for a batch of {}",
                scored.len(),
                chunk.len()
            )));
        }
        for (k, fc) in scored.into_iter().enumerate() {
            forecasts.push((series[c * 4096 + k], fc));
        }
    }
    Ok(Scored { forecasts })
}

/// Runs the backtest over `history`.
pub fn run(history: &History, data: &str, opts: &BacktestOptions) -> anyhow::Result<Backtest> {
    let h = opts.horizon;
    anyhow::ensure!(
        history.is_contiguous(),
        "the history skips a period; cannot backtest"
    );
    anyhow::ensure!(
        history.is_whole(),
        "the history kept a sample of its feature rows; a backtest needs them all"
    );
    let last = history.snapshots.len() - 1;
    let origins: Vec<usize> = (1..=opts.origins)
        .rev()
        .map(|k| last.checked_sub(k * h))
        .collect::<Option<_>>()
        .ok_or_else(|| {
            anyhow::anyhow!(
                "{} periods cannot hold {} origins {h} periods apart",
                last + 1,
                opts.origins
            )
        })?;
    let mut results: BTreeMap<String, Accumulator> = BTreeMap::new();
    let mut versions = Vec::new();
    let mut bands = Vec::new();
    let mut train_secs = Vec::new();
    let censored_targets: u64 = origins
        .iter()
        .map(|&t| {
            (1..=h)
                .map(|k| {
                    (0..history.snapshots[t].n)
                        .filter(|&i| history.censored(t + k, i))
                        .count() as u64
                })
                .sum::<u64>()
        })
        .sum();
    let loaded = match &opts.model {
        Some(dir) => Some(QuantileModel::load(dir, &history.schema, history.period)?),
        None => None,
    };
    let sample = sample_series(history, origins[0]);
    for &t in &origins {
        let buckets = volume_buckets(history, t);
        let mut models: Vec<(String, Box<dyn Forecaster>)> = Vec::new();
        let cutoff = history.snapshots[t].period;
        let mut variants = vec![("stockcast".to_string(), opts.train.censored_weight)];
        if opts.censoring_ablation && censored_targets > 0 && loaded.is_none() {
            variants.push(("stockcast_censored_as_demand".into(), 1.0));
        }
        if loaded.is_none() {
            for (name, weight) in variants {
                let mut o = opts.train.clone();
                o.cutoff = Some(cutoff);
                o.censored_weight = weight;
                let started = std::time::Instant::now();
                let (model, _) = super::train::train(history, data, &o)?;
                if name == "stockcast" {
                    train_secs.push(started.elapsed().as_secs_f64());
                    versions.push(model.manifest.version.clone());
                }
                tracing::info!(origin = t, model = %name, secs = format!("{:.1}", started.elapsed().as_secs_f64()), "trained");
                models.push((name, Box::new(model)));
            }
        }
        for (name, b) in BASELINES {
            models.push((
                name.to_string(),
                forecast::baseline(b, &history.schema, history.period, h)?,
            ));
        }
        let loaded_ref: Option<&dyn Forecaster> = loaded.as_ref().map(|m| m as &dyn Forecaster);
        let mut all: Vec<(String, &dyn Forecaster)> = models
            .iter()
            .map(|(n, m)| (n.clone(), m.as_ref()))
            .collect();
        if let Some(m) = loaded_ref {
            all.insert(0, ("stockcast".into(), m));
        }
        for (name, f) in all {
            let scored = forecast_all(history, t, f)
                .map_err(|e| anyhow::anyhow!("{name} could not score snapshot {t}: {e}"))?;
            if name == "stockcast" {
                bands.extend(
                    scored
                        .forecasts
                        .iter()
                        .filter(|(i, _)| sample.contains(i))
                        .map(|(i, f)| Band {
                            series: *i,
                            origin: t,
                            forecast: f.clone(),
                        }),
                );
            }
            score_into(
                results.entry(name).or_default(),
                history,
                t,
                &scored,
                h,
                &buckets,
            );
        }
    }
    let order = [
        "stockcast",
        "stockcast_censored_as_demand",
        "ma",
        "naive",
        "seasonal_naive",
    ];
    let results = order
        .iter()
        .filter_map(|n| results.remove(*n).map(|a| (n.to_string(), a)))
        .collect();
    Ok(Backtest {
        results,
        origins,
        horizon: h,
        versions,
        bands,
        censored_targets,
        train_secs,
        censored_weight: opts.train.censored_weight,
    })
}

/// Series for the band chart: ranks 1, 5%, 10%, 20%, 33% and 50% by demand up to `t`, so large
/// and small series both show.
fn sample_series(history: &History, t: usize) -> Vec<usize> {
    let n = history.snapshots[t].n;
    let mut by_volume: Vec<(f32, usize)> = (0..n)
        .map(|i| ((0..=t).map(|u| history.demand(u, i)).sum(), i))
        .collect();
    by_volume.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let mut ranks: Vec<usize> = [0, n / 20, n / 10, n / 5, n / 3, n / 2]
        .into_iter()
        .filter(|r| *r < n)
        .collect();
    ranks.dedup();
    ranks.into_iter().map(|r| by_volume[r].1).collect()
}

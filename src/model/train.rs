//! Training the quantile MLP on the dataflow's point-in-time snapshots.
//!
//! A row is (series `i`, period `t`): the features of snapshot `t` and the realised demand of
//! periods `t + 1 ..= t + H`. Rows are used only if their last target period is at or before the
//! cutoff, so nothing after the cutoff is read. The last `validation_periods` row periods form the
//! time-based holdout; training stops when its loss has not improved for `patience` epochs and the
//! best epoch's weights are kept. With `refit`, a fresh network (same seed) is then trained on
//! training and holdout rows together for that many epochs, so the most recent periods are learnt
//! from too.
//!
//! The loss is the pinball loss at 0.1, 0.5 and 0.9 on targets divided by the series' scale,
//! weighted by that scale: the weighted loss is the pinball loss in units, so the pooled metrics
//! (WAPE, scaled pinball) are what is minimised. Series with no demand over the longest window
//! (scale at its floor) are left out of training.
//!
//! Censored demand: a target period that ended with nothing on hand (known only where stock
//! movements are seen) sold at most what was there; its weight is `censored_weight` (0 masks it).
//!
//! Reproducible: initialisation and shuffling come from `seed` (ChaCha8); candle's CPU kernels
//! are deterministic for a given thread count.
//!
//! Longer than 600 lines: the rows, the loss, the training loop and the refit share
//! one matrix and its views, and read best in one place.

use std::time::Instant;

use candle_core::{Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::history::History;
use super::net::{pinball, Mlp, Normalisation};
use super::{Manifest, Metrics, QuantileModel, TrainedOn, Training};
use crate::display::{progress_bar, rfc3339};
use crate::forecast::QUANTILES;

/// Settings of a training run.
#[derive(Clone, Debug)]
pub struct TrainOptions {
    /// Model name in the manifest and in every forecast record.
    pub name: String,
    /// Periods forecast.
    pub horizon: usize,
    /// Last period whose demand may be used (default: the last one in the history).
    pub cutoff: Option<dataflows::Period>,
    /// Hidden layer sizes.
    pub hidden: Vec<usize>,
    /// Most epochs.
    pub max_epochs: usize,
    /// Rows per gradient step.
    pub batch_size: usize,
    /// AdamW learning rate.
    pub learning_rate: f64,
    /// AdamW weight decay.
    pub weight_decay: f64,
    /// Epochs without holdout improvement before stopping.
    pub patience: usize,
    /// Row periods in the holdout.
    pub validation_periods: usize,
    /// Seed of initialisation and shuffling.
    pub seed: u64,
    /// Weight of censored (stock-out) target periods.
    pub censored_weight: f32,
    /// Retrain on all rows for the best number of epochs.
    pub refit: bool,
    /// Decay of the exponential moving average of the weights that is evaluated and kept
    /// (0: the last step's weights).
    pub weight_average: f64,
    /// Show a progress bar.
    pub progress: bool,
    /// Log each epoch's losses (where no bar is shown, so a long run is seen to move).
    pub log_epochs: bool,
}

impl TrainOptions {
    /// Defaults for a horizon.
    pub fn new(horizon: usize) -> Self {
        TrainOptions {
            name: "stockcast-mlp".into(),
            horizon,
            cutoff: None,
            hidden: vec![128, 64],
            max_epochs: 40,
            batch_size: 512,
            learning_rate: 1e-3,
            weight_decay: 1e-4,
            patience: 4,
            validation_periods: horizon.max(8),
            seed: 42,
            censored_weight: 0.0,
            refit: true,
            weight_average: 0.999,
            progress: false,
            log_epochs: false,
        }
    }
}

/// Why training failed.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// Not enough history for the horizon, holdout and cutoff.
    #[error("not enough history: {0}")]
    Data(String),
    /// candle failed.
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
}

/// Training rows as dense matrices.
pub struct Rows {
    /// Inputs, `n x width`.
    pub x: Vec<f32>,
    /// Targets in scale units, `n x horizon`.
    pub y: Vec<f32>,
    /// Loss weights, `n x horizon`.
    pub w: Vec<f32>,
    /// Scale per row.
    pub scale: Vec<f32>,
    /// Rows.
    pub n: usize,
}

/// `(snapshot, series)` pairs of the row periods `periods` whose series has demand history.
fn candidates(
    history: &History,
    norm: &Normalisation,
    periods: std::ops::Range<usize>,
) -> Vec<(usize, usize, f32)> {
    let width = history.width();
    let mut out = Vec::new();
    for t in periods {
        for (i, row) in history.snapshots[t].rows(width) {
            let s = norm.scale(row);
            if s > norm.scale_floor {
                out.push((t, i, s));
            }
        }
    }
    out
}

/// Builds the rows of `pairs` with `norm`.
fn build(
    history: &History,
    norm: &Normalisation,
    pairs: &[(usize, usize, f32)],
    horizon: usize,
    censored_weight: f32,
) -> Rows {
    let width = norm.width();
    let fw = history.width();
    let n = pairs.len();
    let mut rows = Rows {
        x: vec![0.0; n * width],
        y: vec![0.0; n * horizon],
        w: vec![0.0; n * horizon],
        scale: Vec::with_capacity(n),
        n,
    };
    for (r, &(t, i, s)) in pairs.iter().enumerate() {
        rows.scale.push(s);
        // Every candidate's row was kept; a missing one would weigh nothing.
        let Some(raw) = history.snapshots[t].row(i, fw) else {
            continue;
        };
        norm.inputs(raw, s, &mut rows.x[r * width..(r + 1) * width]);
        for h in 0..horizon {
            rows.y[r * horizon + h] = history.demand(t + 1 + h, i) / s;
            let censored = history.censored(t + 1 + h, i);
            rows.w[r * horizon + h] = s * if censored { censored_weight } else { 1.0 };
        }
    }
    rows
}

/// Consecutive rows of a [`Rows`] (the training rows, the holdout, or both), with their loss
/// weights taken relative to their mean, which keeps the loss in a stable range. One matrix
/// serves the fit, the holdout and the refit.
#[derive(Clone, Copy)]
struct View<'a> {
    rows: &'a Rows,
    start: usize,
    n: usize,
    mean_weight: f64,
}

impl<'a> View<'a> {
    fn new(rows: &'a Rows, range: std::ops::Range<usize>) -> Self {
        let h = rows.w.len() / rows.n.max(1);
        let w = &rows.w[range.start * h..range.end * h];
        let mean = w.iter().map(|v| f64::from(*v)).sum::<f64>() / w.len().max(1) as f64;
        View {
            rows,
            start: range.start,
            n: range.len(),
            mean_weight: if mean > 0.0 { mean } else { 1.0 },
        }
    }
}

/// The tensors of rows `idx` (relative to the view).
fn batch_tensors(
    view: View<'_>,
    idx: &[usize],
    width: usize,
    horizon: usize,
) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
    let rows = view.rows;
    let mut x = Vec::with_capacity(idx.len() * width);
    let mut y = Vec::with_capacity(idx.len() * horizon);
    let mut w = Vec::with_capacity(idx.len() * horizon);
    for &r in idx {
        let r = view.start + r;
        x.extend_from_slice(&rows.x[r * width..(r + 1) * width]);
        y.extend_from_slice(&rows.y[r * horizon..(r + 1) * horizon]);
        w.extend(
            rows.w[r * horizon..(r + 1) * horizon]
                .iter()
                .map(|v| (f64::from(*v) / view.mean_weight) as f32),
        );
    }
    let d = &Device::Cpu;
    Ok((
        Tensor::from_vec(x, (idx.len(), width), d)?,
        Tensor::from_vec(y, (idx.len(), horizon), d)?,
        Tensor::from_vec(w, (idx.len(), horizon), d)?,
    ))
}

/// Mean weighted loss of `net` over `rows` (no gradient).
fn evaluate(net: &Mlp, rows: View<'_>, width: usize) -> candle_core::Result<f64> {
    let h = net.horizon;
    let (mut total, mut weight) = (0f64, 0f64);
    let all: Vec<usize> = (0..rows.n).collect();
    for chunk in all.chunks(8192) {
        let (x, y, w) = batch_tensors(rows, chunk, width, h)?;
        let wsum: f32 = w.sum_all()?.to_scalar()?;
        let loss: f32 = pinball(&net.forward(&x)?, &y, &w)?.to_scalar()?;
        total += f64::from(loss) * f64::from(wsum);
        weight += f64::from(wsum);
    }
    Ok(if weight > 0.0 { total / weight } else { 0.0 })
}

/// Pooled holdout metrics in units.
fn metrics(net: &Mlp, view: View<'_>, width: usize) -> candle_core::Result<Metrics> {
    let h = net.horizon;
    let all: Vec<usize> = (0..view.n).collect();
    let mut acc = MetricSums::default();
    let rows = view.rows;
    for chunk in all.chunks(8192) {
        let (x, _, _) = batch_tensors(view, chunk, width, h)?;
        let out: Vec<Vec<Vec<f32>>> = net.forward(&x)?.to_vec3()?;
        for (q, &r) in out.iter().zip(chunk) {
            let r = view.start + r;
            let s = f64::from(rows.scale[r]);
            for (k, y) in rows.y[r * h..(r + 1) * h].iter().enumerate() {
                let y = f64::from(*y) * s;
                let p: [f64; 3] = std::array::from_fn(|j| (f64::from(q[j][k]) * s).max(0.0));
                acc.add(y, p);
            }
        }
    }
    Ok(acc.metrics())
}

/// Running sums of the pooled metrics.
#[derive(Default, Clone, Copy, Debug)]
pub struct MetricSums {
    abs_y: f64,
    abs_e: f64,
    e: f64,
    pin50: f64,
    pin90: f64,
    covered: f64,
    n: f64,
}

/// Pinball loss of forecast `f` at quantile `q` for actual `y`.
pub fn pinball_loss(q: f64, y: f64, f: f64) -> f64 {
    let d = y - f;
    if d >= 0.0 {
        q * d
    } else {
        (q - 1.0) * d
    }
}

impl MetricSums {
    /// Adds one (actual, [p10, p50, p90]) pair.
    pub fn add(&mut self, y: f64, p: [f64; 3]) {
        let e = p[1] - y;
        self.abs_y += y.abs();
        self.abs_e += e.abs();
        self.e += e;
        self.pin50 += pinball_loss(QUANTILES[1], y, p[1]);
        self.pin90 += pinball_loss(QUANTILES[2], y, p[2]);
        self.covered += f64::from(u8::from(y <= p[2]));
        self.n += 1.0;
    }

    /// Sum of |actual|.
    pub fn abs_actual(&self) -> f64 {
        self.abs_y
    }

    /// Pairs added.
    pub fn count(&self) -> u64 {
        self.n as u64
    }

    /// The metrics (MASE is computed per series elsewhere).
    pub fn metrics(&self) -> Metrics {
        let d = self.abs_y.max(1e-12);
        Metrics {
            wape: self.abs_e / d,
            bias: self.e / d,
            pinball50: self.pin50 / d,
            pinball90: self.pin90 / d,
            coverage90: self.covered / self.n.max(1.0),
        }
    }
}

/// Runs `epochs` epochs (or until the holdout stops improving when `holdout` is given).
/// Returns the per-epoch losses and the best epoch; the net holds the best weights.
fn fit(
    net: &Mlp,
    train: View<'_>,
    holdout: Option<View<'_>>,
    opts: &TrainOptions,
    epochs: usize,
    bar: &indicatif::ProgressBar,
) -> Result<(Vec<f64>, Vec<f64>, usize), TrainError> {
    let width = train.rows.x.len() / train.rows.n.max(1);
    let h = opts.horizon;
    let mut opt = AdamW::new(
        net.vars(),
        ParamsAdamW {
            lr: opts.learning_rate,
            weight_decay: opts.weight_decay,
            ..ParamsAdamW::default()
        },
    )?;
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed ^ 0x5eed);
    let mut order: Vec<usize> = (0..train.n).collect();
    let (mut train_loss, mut val_loss) = (Vec::new(), Vec::new());
    let mut best: Option<(f64, usize, Vec<Tensor>)> = None;
    let mut average = WeightAverage::new(net, opts.weight_average)?;
    for epoch in 1..=epochs {
        order.shuffle(&mut rng);
        let (mut sum, mut batches) = (0f64, 0usize);
        for chunk in order.chunks(opts.batch_size) {
            let (x, y, w) = batch_tensors(train, chunk, width, h)?;
            let loss = pinball(&net.forward(&x)?, &y, &w)?;
            opt.backward_step(&loss)?;
            average.update(net)?;
            sum += f64::from(loss.to_scalar::<f32>()?);
            batches += 1;
        }
        train_loss.push(sum / batches.max(1) as f64);
        bar.inc(1);
        let Some(holdout) = holdout else {
            bar.set_message(format!("loss {:.4}", train_loss[epoch - 1]));
            if opts.log_epochs {
                tracing::info!(epoch, loss = train_loss[epoch - 1], "refit epoch done");
            }
            continue;
        };
        let current = average.swap_in(net)?;
        let v = evaluate(net, holdout, width)?;
        val_loss.push(v);
        bar.set_message(format!("loss {:.4} holdout {v:.4}", train_loss[epoch - 1]));
        if opts.log_epochs {
            // Without a terminal, the log shows that a long run is moving.
            tracing::info!(
                epoch,
                loss = train_loss[epoch - 1],
                holdout = v,
                "epoch done"
            );
        }
        if best.as_ref().is_none_or(|(b, _, _)| v < *b) {
            let weights = net
                .vars()
                .iter()
                .map(|var| var.as_tensor().copy())
                .collect::<candle_core::Result<Vec<_>>>()?;
            best = Some((v, epoch, weights));
        } else if best
            .as_ref()
            .is_some_and(|(_, e, _)| epoch - e >= opts.patience)
        {
            break;
        }
        average.swap_out(net, current)?;
    }
    if holdout.is_none() {
        average.swap_in(net)?;
    }
    let best_epoch = match best {
        Some((_, e, weights)) => {
            for (var, w) in net.vars().iter().zip(weights) {
                var.set(&w)?;
            }
            e
        }
        None => train_loss.len(),
    };
    Ok((train_loss, val_loss, best_epoch))
}

/// An exponential moving average of a network's weights over the gradient steps: the weights
/// evaluated and kept, which are less noisy than the last step's. Its decay warms up as
/// `min(decay, (1 + t) / (10 + t))` after `t` steps, so that on a small data set (few steps) it
/// does not keep the random initial weights.
struct WeightAverage {
    decay: f64,
    steps: u64,
    weights: Vec<Tensor>,
}

impl WeightAverage {
    fn new(net: &Mlp, decay: f64) -> candle_core::Result<Self> {
        // Detached: the average must not record the operations that built it, or every step
        // would lengthen a graph that is never freed.
        let weights = net
            .vars()
            .iter()
            .map(|v| Ok(v.as_tensor().detach().copy()?.detach()))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(WeightAverage {
            decay,
            steps: 0,
            weights,
        })
    }

    /// Moves the average towards the net's current weights.
    fn update(&mut self, net: &Mlp) -> candle_core::Result<()> {
        if self.decay <= 0.0 {
            return Ok(());
        }
        let t = self.steps as f64;
        let decay = self.decay.min((1.0 + t) / (10.0 + t));
        self.steps += 1;
        for (avg, var) in self.weights.iter_mut().zip(net.vars()) {
            let current = var.as_tensor().detach();
            *avg = ((&*avg * decay)? + (current * (1.0 - decay))?)?.detach();
        }
        Ok(())
    }

    /// Puts the average into the net; returns the weights it replaced.
    fn swap_in(&self, net: &Mlp) -> candle_core::Result<Vec<Tensor>> {
        let mut current = Vec::with_capacity(self.weights.len());
        for (avg, var) in self.weights.iter().zip(net.vars()) {
            current.push(var.as_tensor().copy()?);
            if self.decay > 0.0 {
                var.set(avg)?;
            }
        }
        Ok(current)
    }

    /// Puts `current` (from [`WeightAverage::swap_in`]) back into the net.
    fn swap_out(&self, net: &Mlp, current: Vec<Tensor>) -> candle_core::Result<()> {
        for (w, var) in current.iter().zip(net.vars()) {
            var.set(w)?;
        }
        Ok(())
    }
}

/// What a training run produced besides the model.
pub struct TrainReport {
    /// Wall-clock seconds.
    pub secs: f64,
    /// The holdout rows as (snapshot, series): the points the manifest's `validation` metrics
    /// are measured on (see [`super::backtest::score_points`]).
    pub holdout: Vec<(usize, usize)>,
}

/// Trains a model on `history` (read from `data`) with `opts`.
pub fn train(
    history: &History,
    data: &str,
    opts: &TrainOptions,
) -> Result<(QuantileModel, TrainReport), TrainError> {
    let started = Instant::now();
    let h = opts.horizon;
    if !history.is_contiguous() {
        return Err(TrainError::Data("snapshots skip a period".into()));
    }
    let last = match opts.cutoff {
        None => history.snapshots.len().checked_sub(1),
        Some(p) => history.position(p),
    }
    .ok_or_else(|| TrainError::Data(format!("no snapshot for cutoff {:?}", opts.cutoff)))?;
    // Row periods t with t + h <= last.
    let rows_end = (last + 1)
        .checked_sub(h)
        .ok_or_else(|| TrainError::Data(format!("{} periods for horizon {h}", last + 1)))?;
    let val_start = rows_end.saturating_sub(opts.validation_periods);
    if val_start == 0 {
        return Err(TrainError::Data(format!(
            "{} periods cannot hold a horizon of {h} and a holdout of {}",
            last + 1,
            opts.validation_periods
        )));
    }
    let mut norm = Normalisation::for_schema(&history.schema, history.period);
    let train_pairs = candidates(history, &norm, 0..val_start);
    let val_pairs = candidates(history, &norm, val_start..rows_end);
    if train_pairs.is_empty() || val_pairs.is_empty() {
        return Err(TrainError::Data(
            "no series with demand in the training range".into(),
        ));
    }
    let width = history.width();
    norm.fit(
        train_pairs
            .iter()
            .filter_map(|&(t, i, s)| Some((history.snapshots[t].row(i, width)?, s))),
    );
    // One matrix: the training rows, then the holdout's; the refit reads both.
    let n_train = train_pairs.len();
    let holdout: Vec<(usize, usize)> = val_pairs.iter().map(|&(t, i, _)| (t, i)).collect();
    let mut pairs = train_pairs;
    pairs.extend(val_pairs);
    let all_rows = build(history, &norm, &pairs, h, opts.censored_weight);
    drop(pairs);
    let train_rows = View::new(&all_rows, 0..n_train);
    let val_rows = View::new(&all_rows, n_train..all_rows.n);
    let in_width = norm.width();

    let total_epochs = opts.max_epochs as u64 * if opts.refit { 2 } else { 1 };
    let bar = progress_bar(
        total_epochs,
        "{elapsed_precise} [{bar:30}] epoch {pos}/{len} {msg}",
        opts.progress,
    );
    let net = Mlp::new(in_width, &opts.hidden, h, opts.seed)?;
    let (train_loss, val_loss, best_epoch) = fit(
        &net,
        train_rows,
        Some(val_rows),
        opts,
        opts.max_epochs,
        &bar,
    )?;
    let validation = metrics(&net, val_rows, in_width)?;
    let epochs_run = val_loss.len();
    let mut refit_loss = Vec::new();
    let net = if opts.refit {
        bar.set_length(epochs_run as u64 + best_epoch as u64);
        let refit = Mlp::new(in_width, &opts.hidden, h, opts.seed)?;
        let all = View::new(&all_rows, 0..all_rows.n);
        refit_loss = fit(&refit, all, None, opts, best_epoch, &bar)?.0;
        refit
    } else {
        net
    };
    bar.finish_and_clear();

    let start_of = |t: usize| rfc3339(history.period.period_start(history.snapshots[t].period));
    let dir = weights_version(&net)?;
    let manifest = Manifest {
        name: opts.name.clone(),
        version: dir,
        created: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        features: history.schema.names().map(str::to_string).collect(),
        schema_hash: history.schema.hash.clone(),
        period: history.period,
        horizon: h,
        quantiles: QUANTILES.to_vec(),
        normalisation: norm,
        trained_on: TrainedOn {
            data: data.to_string(),
            first_period: start_of(0),
            last_period: start_of(last),
            rows: train_rows.n,
            validation_rows: val_rows.n,
            row_share: history.kept,
        },
        validation,
        training: Training {
            seed: opts.seed,
            epochs: epochs_run,
            best_epoch,
            censored_weight: opts.censored_weight,
            hidden: opts.hidden.clone(),
            weight_average: opts.weight_average,
            train_loss,
            validation_loss: val_loss,
            refit_loss,
        },
    };
    let model = QuantileModel::from_parts(manifest, history.schema.clone(), net);
    Ok((
        model,
        TrainReport {
            secs: started.elapsed().as_secs_f64(),
            holdout,
        },
    ))
}

/// The version of a network: a hash of its weights.
fn weights_version(net: &Mlp) -> candle_core::Result<String> {
    let mut bytes = Vec::new();
    for var in net.vars() {
        for v in var.as_tensor().flatten_all()?.to_vec1::<f32>()? {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
    }
    Ok(format!("{:016x}", dataflows::features::fnv1a64(&bytes))[..12].to_string())
}

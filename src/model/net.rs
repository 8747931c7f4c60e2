//! The quantile MLP in candle, and the input normalisation it is trained and served with.
//!
//! # Inputs
//! Each series is put on its own scale first: `scale` is the largest of its recent mean demand
//! (`sales_mean_*`) and its mean demand over the longest window (`sales_sum_<longest>` / length),
//! floored at [`Normalisation::scale_floor`]. Demand-like features (lags, sums, means, standard
//! deviation, weekday profile, same-week-last-year, stock position) are divided by it (sums also
//! by their window), clipped to `±clip`, and every column is then standardised with the mean and
//! standard deviation measured on the training rows. A missing feature becomes 0 (the training
//! mean), and so do the reference features (lead time, pack size, minimum order, active,
//! category), which are for replenishment. One extra column, `log_scale`, tells the network the
//! series' volume.
//!
//! # Outputs
//! `3 * horizon` numbers per row, in units of the series' scale: the median `m` per period, and
//! two gaps; `p10 = m - softplus(a)` and `p90 = m + softplus(b)`, so quantiles never cross.
//! Forecasts are floored at zero when converted back to units.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use serde::{Deserialize, Serialize};

use dataflows::features::REFERENCE_FEATURES;
use dataflows::{PeriodKind, Schema};

/// One input column: which feature and how it is transformed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Column {
    /// Feature name (or `log_scale`).
    pub name: String,
    /// 0 for a feature used as is; else the feature is divided by `scale * per_scale` (1 for a
    /// per-period quantity, the window length for a sum).
    pub per_scale: f32,
    /// Training mean of the transformed value.
    pub mean: f32,
    /// Training standard deviation of the transformed value (at least 1e-6).
    pub std: f32,
    /// Not an input: a reference feature (lead time, pack size, ...) that describes how to
    /// replenish the series, not its demand; the network always sees 0.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ignored: bool,
}

/// How raw feature rows become network inputs; stored in the manifest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Normalisation {
    /// One entry per schema feature, in schema order, then `log_scale`.
    pub columns: Vec<Column>,
    /// Features whose value divided by the number defines the series' scale (the largest wins).
    pub scale_from: Vec<(String, f32)>,
    /// Smallest scale.
    pub scale_floor: f32,
    /// Clip of scaled demand features.
    pub clip: f32,
    /// `scale_from` as row positions (from `columns`, which follow the schema).
    #[serde(skip)]
    scale_at: Vec<(usize, f32)>,
}

/// Window length encoded at the end of a name like `sales_sum_13w`.
fn window_of(name: &str) -> Option<f32> {
    let digits: String = name
        .rsplit('_')
        .next()?
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

impl Normalisation {
    /// The transform for `schema`, with identity statistics (see [`Normalisation::fit`]).
    pub fn for_schema(schema: &Schema, period: PeriodKind) -> Self {
        let mut columns: Vec<Column> = schema
            .names()
            .map(|name| {
                let per_scale = if name.starts_with("sales_sum_") {
                    window_of(name).unwrap_or(1.0)
                } else if name.starts_with("sales_lag_")
                    || name.starts_with("sales_ly_")
                    || name.starts_with("sales_mean_")
                    || name.starts_with("sales_std_")
                    || name.starts_with("weekday_mean_")
                    || name == "on_hand"
                    || name == "on_order"
                {
                    1.0
                } else {
                    0.0
                };
                Column {
                    name: name.to_string(),
                    per_scale,
                    mean: 0.0,
                    std: 1.0,
                    ignored: REFERENCE_FEATURES.contains(&name),
                }
            })
            .collect();
        columns.push(Column {
            name: "log_scale".into(),
            per_scale: 0.0,
            mean: 0.0,
            std: 1.0,
            ignored: false,
        });
        let mut scale_from: Vec<(String, f32)> = schema
            .names()
            .filter(|n| n.starts_with("sales_mean_"))
            .map(|n| (n.to_string(), 1.0))
            .collect();
        let longest = schema
            .names()
            .filter(|n| n.starts_with("sales_sum_"))
            .filter_map(|n| Some((n, window_of(n)?)))
            .max_by(|a, b| a.1.total_cmp(&b.1));
        if let Some((n, w)) = longest {
            scale_from.push((n.to_string(), w));
        }
        Normalisation {
            columns,
            scale_from,
            scale_floor: match period {
                PeriodKind::Day => 0.05,
                PeriodKind::Week => 0.1,
            },
            clip: 50.0,
            scale_at: Vec::new(),
        }
        .resolved()
    }

    /// Resolves the scale features to row positions; call after deserialising.
    pub fn resolved(mut self) -> Self {
        self.scale_at = self
            .scale_from
            .iter()
            .filter_map(|(name, div)| {
                let i = self.columns.iter().position(|c| &c.name == name)?;
                Some((i, *div))
            })
            .collect();
        self
    }

    /// Inputs per row.
    pub fn width(&self) -> usize {
        self.columns.len()
    }

    /// The scale of a raw row (natural units, NaN for missing, schema order).
    pub fn scale(&self, row: &[f32]) -> f32 {
        let mut s = self.scale_floor;
        for (i, div) in &self.scale_at {
            let v = row[*i] / div;
            // NaN compares false: a missing feature never raises the scale.
            if v > s {
                s = v;
            }
        }
        s
    }

    /// Writes the transformed, not yet standardised, inputs of `row` at `scale` into `out`.
    fn transform(&self, row: &[f32], scale: f32, out: &mut [f32]) {
        let n = self.columns.len() - 1;
        for (j, c) in self.columns[..n].iter().enumerate() {
            let v = row[j];
            out[j] = if v.is_nan() || c.ignored {
                f32::NAN
            } else if c.per_scale > 0.0 {
                (v / (scale * c.per_scale)).clamp(-self.clip, self.clip)
            } else {
                v
            };
        }
        out[n] = scale.ln();
    }

    /// Inputs of `row` at `scale`: transformed and standardised; missing becomes 0.
    pub fn inputs(&self, row: &[f32], scale: f32, out: &mut [f32]) {
        self.transform(row, scale, out);
        for (x, c) in out.iter_mut().zip(&self.columns) {
            *x = if x.is_nan() {
                0.0
            } else {
                (*x - c.mean) / c.std
            };
        }
    }

    /// Sets every column's mean and standard deviation from raw `rows` with their scales.
    pub fn fit<'a>(&mut self, rows: impl Iterator<Item = (&'a [f32], f32)>) {
        let w = self.width();
        let (mut n, mut sum, mut sumsq) = (vec![0f64; w], vec![0f64; w], vec![0f64; w]);
        let mut buf = vec![0f32; w];
        for (row, scale) in rows {
            self.transform(row, scale, &mut buf);
            for j in 0..w {
                let v = buf[j];
                if !v.is_nan() {
                    n[j] += 1.0;
                    sum[j] += f64::from(v);
                    sumsq[j] += f64::from(v) * f64::from(v);
                }
            }
        }
        for (j, c) in self.columns.iter_mut().enumerate() {
            if n[j] > 0.0 {
                let mean = sum[j] / n[j];
                let var = (sumsq[j] / n[j] - mean * mean).max(0.0);
                c.mean = mean as f32;
                c.std = (var.sqrt() as f32).max(1e-6);
            }
        }
    }
}

/// The network: dense layers with ReLU between them.
pub struct Mlp {
    /// `(weight (in, out), bias (out))` per layer.
    layers: Vec<(Var, Var)>,
    /// Periods forecast.
    pub horizon: usize,
}

/// Tensor names in `model.safetensors`.
fn names(i: usize) -> (String, String) {
    (format!("layer{i}.weight"), format!("layer{i}.bias"))
}

impl Mlp {
    /// A network `inputs -> hidden... -> 3 * horizon`, He-initialised from `seed`.
    pub fn new(
        inputs: usize,
        hidden: &[usize],
        horizon: usize,
        seed: u64,
    ) -> candle_core::Result<Self> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut sizes = vec![inputs];
        sizes.extend_from_slice(hidden);
        sizes.push(3 * horizon);
        let mut layers = Vec::new();
        for w in sizes.windows(2) {
            let (i, o) = (w[0], w[1]);
            let normal = Normal::new(0.0f32, (2.0 / i as f32).sqrt()).expect("positive sd");
            let weights: Vec<f32> = (0..i * o).map(|_| normal.sample(&mut rng)).collect();
            let weight = Var::from_tensor(&Tensor::from_vec(weights, (i, o), &Device::Cpu)?)?;
            let bias = Var::from_tensor(&Tensor::zeros(o, DType::F32, &Device::Cpu)?)?;
            layers.push((weight, bias));
        }
        Ok(Mlp { layers, horizon })
    }

    /// The trainable variables.
    pub fn vars(&self) -> Vec<Var> {
        self.layers
            .iter()
            .flat_map(|(w, b)| [w.clone(), b.clone()])
            .collect()
    }

    /// The last layer's outputs `(batch, 3 * horizon)`, before the quantiles are formed: the
    /// median, then the lower and the upper spreads before softplus, per period.
    pub fn head(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut h = x.clone();
        let last = self.layers.len() - 1;
        for (i, (w, b)) in self.layers.iter().enumerate() {
            h = h.matmul(w.as_tensor())?.broadcast_add(b.as_tensor())?;
            if i < last {
                h = h.relu()?;
            }
        }
        Ok(h)
    }

    /// Quantiles `(batch, 3, horizon)` in scale units: p10, p50, p90. Training goes through
    /// here; scoring forms the same quantiles row by row from [`Mlp::head`] with
    /// [`quantiles_of_head`], without a tensor per step.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let h = self.head(x)?;
        let hz = self.horizon;
        let m = h.narrow(1, 0, hz)?;
        let lower = softplus(&h.narrow(1, hz, hz)?)?;
        let upper = softplus(&h.narrow(1, 2 * hz, hz)?)?;
        Tensor::stack(&[(&m - lower)?, m.clone(), (&m + upper)?], 1)
    }

    /// Writes the weights.
    pub fn save(&self, path: &Path) -> candle_core::Result<()> {
        let mut map: HashMap<String, Tensor> = HashMap::new();
        for (i, (w, b)) in self.layers.iter().enumerate() {
            let (wn, bn) = names(i);
            map.insert(wn, w.as_tensor().clone());
            map.insert(bn, b.as_tensor().clone());
        }
        candle_core::safetensors::save(&map, path)
    }

    /// Reads weights written by [`Mlp::save`]; checks the input and output sizes.
    pub fn load(path: &Path, inputs: usize, horizon: usize) -> candle_core::Result<Self> {
        let mut map = candle_core::safetensors::load(path, &Device::Cpu)?;
        let mut layers = Vec::new();
        for i in 0.. {
            let (wn, bn) = names(i);
            let (Some(w), Some(b)) = (map.remove(&wn), map.remove(&bn)) else {
                break;
            };
            layers.push((Var::from_tensor(&w)?, Var::from_tensor(&b)?));
        }
        let first = layers.first().map(|(w, _)| w.dims2()).transpose()?;
        let out = layers.last().map(|(w, _)| w.dims2()).transpose()?;
        match (first, out) {
            (Some((i, _)), Some((_, o))) if i == inputs && o == 3 * horizon => {
                Ok(Mlp { layers, horizon })
            }
            _ => Err(candle_core::Error::Msg(format!(
                "{}: expected layers from {inputs} inputs to {} outputs, found {:?} -> {:?}",
                path.display(),
                3 * horizon,
                first,
                out
            ))),
        }
    }
}

/// `ln(1 + e^x)`, stable for large |x|.
fn softplus(x: &Tensor) -> candle_core::Result<Tensor> {
    let tail = x.abs()?.neg()?.exp()?.affine(1.0, 1.0)?.log()?;
    x.relu()? + tail
}

/// [`softplus`] of one value, step for step.
fn softplus1(x: f32) -> f32 {
    x.max(0.0) + ((-x.abs()).exp() * 1.0 + 1.0).ln()
}

/// What [`Mlp::forward`] makes of one row of [`Mlp::head`] (`3 * horizon` values): calls
/// `out(quantile, period, value)` for p10, p50 and p90 in turn, each over the periods.
pub fn quantiles_of_head(row: &[f32], horizon: usize, mut out: impl FnMut(usize, usize, f32)) {
    let (m, rest) = row.split_at(horizon);
    let (lower, upper) = rest.split_at(horizon);
    for (t, (m, l)) in m.iter().zip(lower).enumerate() {
        out(0, t, m - softplus1(*l));
    }
    for (t, m) in m.iter().enumerate() {
        out(1, t, *m);
    }
    for (t, (m, u)) in m.iter().zip(upper).enumerate() {
        out(2, t, m + softplus1(*u));
    }
}

/// Weighted pinball loss of `pred` `(batch, 3, horizon)` against `target` `(batch, horizon)` with
/// `weight` `(batch, horizon)`: the sum over quantiles and periods, divided by the weight sum.
pub fn pinball(pred: &Tensor, target: &Tensor, weight: &Tensor) -> candle_core::Result<Tensor> {
    let mut total: Option<Tensor> = None;
    for (k, q) in crate::forecast::QUANTILES.iter().enumerate() {
        let p = pred.narrow(1, k, 1)?.squeeze(1)?;
        let diff = (target - p)?;
        let loss = ((diff.relu()? * *q)? + (diff.neg()?.relu()? * (1.0 - q))?)?;
        let weighted = (loss * weight)?.sum_all()?;
        total = Some(match total {
            Some(t) => (t + weighted)?,
            None => weighted,
        });
    }
    let total = total.expect("three quantiles");
    total / weight.sum_all()?.affine(1.0, 1e-9)?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_formed_from_the_head_are_forwards_to_the_bit() {
        let horizon = 7;
        let mlp = Mlp::new(6, &[16, 8], horizon, 11).unwrap();
        // Inputs wide enough that the spreads reach both sides of softplus's branches.
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let normal = Normal::new(0.0f32, 30.0).unwrap();
        let rows = 64;
        let x: Vec<f32> = (0..rows * 6).map(|_| normal.sample(&mut rng)).collect();
        let x = Tensor::from_vec(x, (rows, 6), &Device::Cpu).unwrap();
        let want: Vec<Vec<Vec<f32>>> = mlp.forward(&x).unwrap().to_vec3().unwrap();
        let head: Vec<Vec<f32>> = mlp.head(&x).unwrap().to_vec2().unwrap();
        let mut spreads = (0, 0);
        for (row, want) in head.iter().zip(&want) {
            let mut got = vec![vec![f32::NAN; horizon]; 3];
            quantiles_of_head(row, horizon, |q, t, v| got[q][t] = v);
            let bits = |v: &Vec<Vec<f32>>| -> Vec<u32> {
                v.iter().flatten().map(|x| x.to_bits()).collect()
            };
            assert_eq!(bits(&got), bits(want), "{row:?}");
            spreads.0 += row[horizon..].iter().filter(|v| **v < 0.0).count();
            spreads.1 += row[horizon..].iter().filter(|v| **v > 0.0).count();
        }
        assert!(spreads.0 > 0 && spreads.1 > 0, "{spreads:?}");
    }

    #[test]
    fn quantiles_never_cross_and_weights_round_trip() {
        let mlp = Mlp::new(5, &[8], 3, 7).unwrap();
        let x = Tensor::from_vec(
            (0..20).map(|v| v as f32 - 10.0).collect(),
            (4, 5),
            &Device::Cpu,
        )
        .unwrap();
        let y = mlp.forward(&x).unwrap();
        assert_eq!(y.dims(), &[4, 3, 3]);
        let v: Vec<Vec<Vec<f32>>> = y.to_vec3().unwrap();
        for row in &v {
            let (lo, mid, hi) = (&row[0], &row[1], &row[2]);
            for ((a, b), c) in lo.iter().zip(mid).zip(hi) {
                assert!(a <= b && b <= c);
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        mlp.save(&path).unwrap();
        let back = Mlp::load(&path, 5, 3).unwrap();
        assert_eq!(back.forward(&x).unwrap().to_vec3::<f32>().unwrap(), v);
        assert!(Mlp::load(&path, 6, 3).is_err());
    }

    #[test]
    fn pinball_matches_the_definition() {
        // One row, one period: target 10, quantiles 8, 10, 13.
        let pred = Tensor::from_vec(vec![8f32, 10.0, 13.0], (1, 3, 1), &Device::Cpu).unwrap();
        let target = Tensor::from_vec(vec![10f32], (1, 1), &Device::Cpu).unwrap();
        let weight = Tensor::from_vec(vec![2f32], (1, 1), &Device::Cpu).unwrap();
        let loss: f32 = pinball(&pred, &target, &weight)
            .unwrap()
            .to_scalar()
            .unwrap();
        // 0.1 * 2 + 0 + (1 - 0.9) * 3 = 0.5
        assert!((loss - 0.5).abs() < 1e-5, "{loss}");
    }

    #[test]
    fn windows_are_read_from_names() {
        assert_eq!(window_of("sales_sum_13w"), Some(13.0));
        assert_eq!(window_of("sales_sum_28d"), Some(28.0));
        let schema = dataflows::FeatureSpec::weekly().schema();
        let n = Normalisation::for_schema(&schema, PeriodKind::Week);
        assert_eq!(n.width(), schema.features.len() + 1);
        assert!(n
            .scale_from
            .iter()
            .any(|(f, w)| f == "sales_sum_52w" && *w == 52.0));
    }
}

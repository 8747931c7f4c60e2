//! Forecasters: from a series' feature vector to demand for the next `horizon` periods.
//!
//! Only series whose features changed in an epoch are scored. The baselines here read named
//! features from the schema, so they can only be built against a schema that has them; the
//! demand model (candle) will implement the same trait.

use dataflows::{FeatureVec, PeriodKind, Schema};
use serde::{Deserialize, Serialize};

/// A forecaster could not be built for a schema.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("forecaster `{forecaster}` needs feature `{feature}`, which the schema lacks")]
pub struct MissingFeature {
    /// The forecaster.
    pub forecaster: &'static str,
    /// The feature it needs.
    pub feature: String,
}

/// Why a forecaster could not score a batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ScoreError(pub String);

/// Which forecaster scored a series, and why, when the configured one could not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fallback {
    /// The forecaster that scored (a baseline).
    pub model: String,
    /// Its version.
    pub version: String,
    /// Why the configured model did not.
    pub reason: String,
}

/// The quantiles every forecaster produces, in [`Forecast`]'s field order.
pub const QUANTILES: [f64; 3] = [0.1, 0.5, 0.9];

/// z-score of the 0.9 quantile of a standard normal (the baselines' spread).
const Z90: f64 = 1.281_551_565_545;

/// One series' forecast: demand (units) per future period `now + 1 ..= now + horizon`, at the
/// quantiles 0.1, 0.5 and 0.9. `p10 <= p50 <= p90` element-wise.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Forecast {
    /// 0.1 quantile per period.
    pub p10: Vec<f64>,
    /// Median per period: the point forecast.
    pub p50: Vec<f64>,
    /// 0.9 quantile per period.
    pub p90: Vec<f64>,
    /// Set when the configured model failed on this series' batch and a baseline scored it.
    pub fallback: Option<std::sync::Arc<Fallback>>,
}

impl Forecast {
    /// A forecast around `p50` with a normal spread of `sd` per period, floored at zero.
    pub fn normal(p50: Vec<f64>, sd: f64) -> Self {
        let sd = sd.max(0.0);
        Forecast {
            p10: p50.iter().map(|m| (m - Z90 * sd).max(0.0)).collect(),
            p90: p50.iter().map(|m| m + Z90 * sd).collect(),
            p50,
            fallback: None,
        }
    }

    /// The quantile `q` (one of [`QUANTILES`]) per period.
    pub fn quantile(&self, q: usize) -> &[f64] {
        match q {
            0 => &self.p10,
            1 => &self.p50,
            _ => &self.p90,
        }
    }
}

/// Turns feature vectors into quantile forecasts. Implementations are shared between scoring
/// threads, so they are `Sync`; they score a whole batch at once.
pub trait Forecaster: Send + Sync {
    /// Model name written into every output record (e.g. `baseline-ma`).
    fn name(&self) -> &str;
    /// Model version.
    fn version(&self) -> &str;
    /// Periods forecast.
    fn horizon(&self) -> usize;
    /// Forecasts each vector of `batch`, in order, or says why it cannot.
    fn forecast(&self, batch: &[&FeatureVec]) -> Result<Vec<Forecast>, ScoreError>;
}

/// Which baseline to run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Baseline {
    /// Mean demand of the last 28 days / 4 weeks, flat over the horizon.
    #[default]
    MovingAverage,
    /// The latest complete period's demand, flat over the horizon.
    Naive,
    /// The same weekday last week (daily) or the same week last year (weekly).
    SeasonalNaive,
}

fn index(schema: &Schema, forecaster: &'static str, name: &str) -> Result<usize, MissingFeature> {
    schema.index(name).ok_or_else(|| MissingFeature {
        forecaster,
        feature: name.to_string(),
    })
}

/// Builds a baseline forecaster.
pub fn baseline(
    which: Baseline,
    schema: &Schema,
    period: PeriodKind,
    horizon: usize,
) -> Result<Box<dyn Forecaster>, MissingFeature> {
    Ok(match which {
        Baseline::MovingAverage => Box::new(Flat::moving_average(schema, period, horizon)?),
        Baseline::Naive => Box::new(Flat::naive(schema, period, horizon)?),
        Baseline::SeasonalNaive => Box::new(SeasonalNaive::new(schema, period, horizon)?),
    })
}

/// The spread every baseline shares: the standard deviation of demand over the stats window
/// (`sales_std_28d` / `sales_std_13w`), read as a normal error around the point forecast.
struct Spread {
    /// Schema position of the standard deviation.
    std: usize,
    /// Its scale.
    scale: f64,
}

impl Spread {
    fn new(
        schema: &Schema,
        forecaster: &'static str,
        period: PeriodKind,
    ) -> Result<Self, MissingFeature> {
        let name = match period {
            PeriodKind::Day => "sales_std_28d",
            PeriodKind::Week => "sales_std_13w",
        };
        let std = index(schema, forecaster, name)?;
        Ok(Spread {
            std,
            scale: schema.features[std].scale as f64,
        })
    }

    fn around(&self, f: &FeatureVec, p50: Vec<f64>) -> Forecast {
        let sd = f.raw(self.std).unwrap_or(0) as f64 / self.scale;
        Forecast::normal(p50, sd)
    }
}

/// A flat forecast: one feature, divided by the periods it spans, repeated over the horizon.
pub struct Flat {
    /// Forecaster name.
    name: &'static str,
    /// Schema position of the feature.
    source: usize,
    /// Scale of the feature times the periods it spans.
    divisor: f64,
    /// Periods forecast.
    horizon: usize,
    spread: Spread,
}

impl Flat {
    fn new(
        name: &'static str,
        schema: &Schema,
        period: PeriodKind,
        horizon: usize,
        (feature, periods): (&str, f64),
    ) -> Result<Self, MissingFeature> {
        let source = index(schema, name, feature)?;
        Ok(Flat {
            name,
            source,
            divisor: schema.features[source].scale as f64 * periods,
            horizon,
            spread: Spread::new(schema, name, period)?,
        })
    }

    /// The mean of the last 28 days or 4 weeks (the buyer's spreadsheet rule); needs
    /// `sales_sum_28d` (daily) or `sales_sum_4w` (weekly).
    pub fn moving_average(
        schema: &Schema,
        period: PeriodKind,
        horizon: usize,
    ) -> Result<Self, MissingFeature> {
        let source = match period {
            PeriodKind::Day => ("sales_sum_28d", 28.0),
            PeriodKind::Week => ("sales_sum_4w", 4.0),
        };
        Self::new("baseline-ma", schema, period, horizon, source)
    }

    /// The latest complete period's demand; needs `sales_lag_0<d|w>`.
    pub fn naive(
        schema: &Schema,
        period: PeriodKind,
        horizon: usize,
    ) -> Result<Self, MissingFeature> {
        let feature = format!("sales_lag_0{}", period.suffix());
        Self::new("baseline-naive", schema, period, horizon, (&feature, 1.0))
    }
}

impl Forecaster for Flat {
    fn name(&self) -> &str {
        self.name
    }
    fn version(&self) -> &str {
        "1"
    }
    fn horizon(&self) -> usize {
        self.horizon
    }
    fn forecast(&self, batch: &[&FeatureVec]) -> Result<Vec<Forecast>, ScoreError> {
        Ok(batch
            .iter()
            .map(|f| {
                let level = f.raw(self.source).unwrap_or(0) as f64 / self.divisor;
                self.spread.around(f, vec![level.max(0.0); self.horizon])
            })
            .collect())
    }
}

/// Seasonal naive: each future period repeats the same point of the previous season.
pub struct SeasonalNaive {
    /// Schema position of the value for each horizon step.
    sources: Vec<usize>,
    /// Scale of those features.
    scale: f64,
    spread: Spread,
}

impl SeasonalNaive {
    /// Against `schema`: daily needs `sales_lag_1d..=7d`, weekly `sales_ly_h1..=h<horizon>`.
    pub fn new(
        schema: &Schema,
        period: PeriodKind,
        horizon: usize,
    ) -> Result<Self, MissingFeature> {
        let sources = (1..=horizon)
            .map(|h| {
                let name = match period {
                    // Day now+h repeats the latest complete day of the same weekday.
                    PeriodKind::Day => format!("sales_lag_{}d", 7 - (h - 1) % 7),
                    PeriodKind::Week => format!("sales_ly_h{h}"),
                };
                index(schema, "baseline-snaive", &name)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let scale = sources
            .first()
            .map_or(1000.0, |i| schema.features[*i].scale as f64);
        Ok(SeasonalNaive {
            sources,
            scale,
            spread: Spread::new(schema, "baseline-snaive", period)?,
        })
    }
}

impl Forecaster for SeasonalNaive {
    fn name(&self) -> &str {
        "baseline-snaive"
    }
    fn version(&self) -> &str {
        "1"
    }
    fn horizon(&self) -> usize {
        self.sources.len()
    }
    fn forecast(&self, batch: &[&FeatureVec]) -> Result<Vec<Forecast>, ScoreError> {
        Ok(batch
            .iter()
            .map(|f| {
                let p50 = self
                    .sources
                    .iter()
                    .map(|i| (f.raw(*i).unwrap_or(0) as f64 / self.scale).max(0.0))
                    .collect();
                self.spread.around(f, p50)
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dataflows::FeatureSpec;

    #[test]
    fn baselines_read_their_features() {
        let spec = FeatureSpec::daily();
        let schema = spec.schema();
        let mut v = vec![0i64; schema.features.len()];
        v[schema.index("sales_sum_28d").unwrap()] = 56_000;
        v[schema.index("sales_lag_7d").unwrap()] = 3_000;
        v[schema.index("sales_lag_1d").unwrap()] = 9_000;
        v[schema.index("sales_lag_0d").unwrap()] = 5_000;
        v[schema.index("sales_std_28d").unwrap()] = 1_000;
        let v = FeatureVec::from(v);
        let ma = baseline(Baseline::MovingAverage, &schema, PeriodKind::Day, 3).unwrap();
        let f = &ma.forecast(&[&v]).unwrap()[0];
        assert_eq!(f.p50, vec![2.0; 3]);
        assert!((f.p90[0] - (2.0 + Z90)).abs() < 1e-9 && (f.p10[0] - (2.0 - Z90)).abs() < 1e-9);
        let naive = baseline(Baseline::Naive, &schema, PeriodKind::Day, 2).unwrap();
        assert_eq!(naive.forecast(&[&v]).unwrap()[0].p50, vec![5.0; 2]);
        let sn = baseline(Baseline::SeasonalNaive, &schema, PeriodKind::Day, 8).unwrap();
        let f = &sn.forecast(&[&v]).unwrap()[0].p50;
        assert_eq!((f[0], f[6], f[7]), (3.0, 9.0, 3.0));
        let weekly = FeatureSpec::weekly().schema();
        assert!(baseline(Baseline::MovingAverage, &weekly, PeriodKind::Day, 3).is_err());
    }
}

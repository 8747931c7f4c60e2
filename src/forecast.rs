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

/// Turns a feature vector into a point forecast per future period.
pub trait Forecaster: Send {
    /// Model name written into every output record (e.g. `baseline-ma`).
    fn name(&self) -> &str;
    /// Model version.
    fn version(&self) -> &str;
    /// Periods forecast.
    fn horizon(&self) -> usize;
    /// Forecast demand (units) for periods `now + 1 ..= now + horizon`.
    fn forecast(&self, features: &FeatureVec) -> Vec<f64>;
}

/// Which baseline to run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Baseline {
    /// Mean demand of the last 28 days / 4 weeks, flat over the horizon.
    #[default]
    MovingAverage,
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
        Baseline::MovingAverage => Box::new(MovingAverage::new(schema, period, horizon)?),
        Baseline::SeasonalNaive => Box::new(SeasonalNaive::new(schema, period, horizon)?),
    })
}

/// Flat forecast at the mean of the last 28 days or 4 weeks (the buyer's spreadsheet rule).
pub struct MovingAverage {
    /// Schema position of the rolling sum.
    sum: usize,
    /// Periods it spans.
    periods: f64,
    /// Scale of the sum.
    scale: f64,
    /// Periods forecast.
    horizon: usize,
}

impl MovingAverage {
    /// Against `schema`, which must have `sales_sum_28d` (daily) or `sales_sum_4w` (weekly).
    pub fn new(
        schema: &Schema,
        period: PeriodKind,
        horizon: usize,
    ) -> Result<Self, MissingFeature> {
        let (name, periods) = match period {
            PeriodKind::Day => ("sales_sum_28d", 28.0),
            PeriodKind::Week => ("sales_sum_4w", 4.0),
        };
        let sum = index(schema, "baseline-ma", name)?;
        Ok(MovingAverage {
            sum,
            periods,
            scale: schema.features[sum].scale as f64,
            horizon,
        })
    }
}

impl Forecaster for MovingAverage {
    fn name(&self) -> &str {
        "baseline-ma"
    }
    fn version(&self) -> &str {
        "1"
    }
    fn horizon(&self) -> usize {
        self.horizon
    }
    fn forecast(&self, f: &FeatureVec) -> Vec<f64> {
        let mean = f.raw(self.sum).unwrap_or(0) as f64 / self.scale / self.periods;
        vec![mean.max(0.0); self.horizon]
    }
}

/// Seasonal naive: each future period repeats the same point of the previous season.
pub struct SeasonalNaive {
    /// Schema position of the value for each horizon step.
    sources: Vec<usize>,
    /// Scale of those features.
    scale: f64,
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
        Ok(SeasonalNaive { sources, scale })
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
    fn forecast(&self, f: &FeatureVec) -> Vec<f64> {
        self.sources
            .iter()
            .map(|i| (f.raw(*i).unwrap_or(0) as f64 / self.scale).max(0.0))
            .collect()
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
        let v = FeatureVec(v);
        let ma = baseline(Baseline::MovingAverage, &schema, PeriodKind::Day, 3).unwrap();
        assert_eq!(ma.forecast(&v), vec![2.0; 3]);
        let sn = baseline(Baseline::SeasonalNaive, &schema, PeriodKind::Day, 8).unwrap();
        let f = sn.forecast(&v);
        assert_eq!((f[0], f[6], f[7]), (3.0, 9.0, 3.0));
        let weekly = FeatureSpec::weekly().schema();
        assert!(baseline(Baseline::MovingAverage, &weekly, PeriodKind::Day, 3).is_err());
    }
}

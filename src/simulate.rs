//! `stockcast simulate`: a replay of the history period by period through an inventory model, to
//! measure what an order policy achieves: stock-out periods, lost units, fill rate and the
//! inventory it holds.
//!
//! # The inventory model
//! - Series: those the history knows at the end of the period before the simulation starts,
//!   minus inactive items and stores. Series that first appear later are left out.
//! - Time is whole periods. At the start of each period the orders due arrive; then, every
//!   `review` periods, the policy orders; then the period's demand is served from stock. Demand
//!   that finds no stock is lost: the period is a stock-out period and the shortfall lost units.
//! - Demand is the realised sales of the period (returns count as zero). Where the data's own
//!   stock ran out, sales understate demand, for both policies alike.
//! - An order arrives `lead` periods after it is placed: the catalog's lead time (else the
//!   configured default) rounded up to whole periods, at least one. The review period is the
//!   configured one rounded to whole periods, at least one. Orders are whole packs, at least the
//!   minimum order quantity, for both policies.
//! - Every series starts with the same stock under every policy: the moving average of its
//!   demand before the start times the protection interval (lead + review), nothing on order.
//!   The first `lead` periods cannot be changed by any order and are not counted.
//! - Average inventory is the mean stock on hand at period ends over every counted
//!   (series, period), in the data's units.
//!
//! # Policies
//! - `stockcast`: the recommendation of [`crate::replenish`] from the model's quantile forecast
//!   made with the features of the period before, by a model trained only on periods before the
//!   simulation (or `--model`), at a service level.
//! - `ma`, the buyer's baseline: order up to the mean demand of the last 28 days (4 weeks) times
//!   the protection interval times a safety factor.
//!
//! # The headline
//! Each policy's settings trace a curve of stock-out periods against average inventory. For a
//! stockcast setting, the baseline's stock-out periods at the same average inventory are read off
//! the baseline's curve by linear interpolation between the two settings whose inventories
//! bracket it (none when it lies outside the swept range). `stockout_reduction_at_equal_inventory`
//! is `1 - stockcast / baseline` at the configured service level (`replenish.service_level`).
//!
//! Longer than 600 lines: the inventory model, the two policies, the sweep and the report are kept
//! in one file, so the simulation's rules can be read in one place.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use anyhow::Context;
use dataflows::PeriodKind;
use serde::Serialize;

use crate::config::Resolved;
use crate::display::rfc3339;
use crate::forecast::{Forecast, Forecaster};
use crate::model::backtest::forecast_series;
use crate::model::history::History;
use crate::model::train::{self, TrainOptions};
use crate::model::QuantileModel;
use crate::replenish::{order_size, recommend, Policy, Position, Reference};
use crate::source::files;

/// Which policy to simulate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyKind {
    /// The recommendation from the quantile model.
    Stockcast,
    /// The buyer's moving-average order-up-to rule.
    Ma,
}

impl PolicyKind {
    fn name(self) -> &'static str {
        match self {
            PolicyKind::Stockcast => "stockcast",
            PolicyKind::Ma => "ma",
        }
    }
}

/// Default service levels swept for stockcast.
pub const SERVICE_LEVELS: [f64; 11] = [
    0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.925, 0.95, 0.975, 0.99,
];

/// Default safety factors swept for the baseline.
pub const SAFETY_FACTORS: [f64; 16] = [
    0.6, 0.8, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.8, 2.0, 2.25, 2.5, 3.0, 3.5, 4.0,
];

/// Settings of a simulation.
#[derive(Clone, Debug)]
pub struct SimOptions {
    /// Periods simulated, ending with the last period of the data.
    pub periods: usize,
    /// Policies to run.
    pub policies: Vec<PolicyKind>,
    /// Service levels of the stockcast sweep.
    pub service_levels: Vec<f64>,
    /// Safety factors of the baseline sweep.
    pub safety_factors: Vec<f64>,
    /// Training settings of the model (its cutoff is set to the period before the simulation).
    pub train: TrainOptions,
    /// Use this model instead of training one.
    pub model: Option<PathBuf>,
}

impl SimOptions {
    /// Defaults for `period`: 26 weeks or 182 days, both policies, the default sweeps.
    pub fn new(period: PeriodKind, horizon: usize) -> Self {
        SimOptions {
            periods: match period {
                PeriodKind::Day => 182,
                PeriodKind::Week => 26,
            },
            policies: vec![PolicyKind::Stockcast, PolicyKind::Ma],
            service_levels: SERVICE_LEVELS.to_vec(),
            safety_factors: SAFETY_FACTORS.to_vec(),
            train: TrainOptions::new(horizon),
            model: None,
        }
    }
}

/// What one policy at one setting achieved.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Outcome {
    /// `stockcast` or `ma`.
    pub policy: &'static str,
    /// Service level (stockcast) or safety factor (ma).
    pub setting: f64,
    /// Mean stock on hand at period ends, units per series.
    pub avg_inventory: f64,
    /// Counted (series, period)s with lost demand.
    pub stockout_periods: u64,
    /// `stockout_periods` over counted (series, period)s.
    pub stockout_rate: f64,
    /// Demand not served, units.
    pub lost_units: f64,
    /// Demand, units.
    pub demand_units: f64,
    /// Served over demand.
    pub fill_rate: f64,
    /// Orders placed.
    pub orders: u64,
    /// Units ordered.
    pub ordered_units: f64,
}

/// Stockcast at one service level against the baseline at the same inventory.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Matched {
    /// Stockcast's service level.
    pub service_level: f64,
    /// Its average inventory.
    pub avg_inventory: f64,
    /// Its stock-out periods.
    pub stockout_periods: u64,
    /// The baseline's safety factors whose inventories bracket it.
    pub baseline_bracket: Option<(f64, f64)>,
    /// The baseline's stock-out periods interpolated at that inventory.
    pub baseline_stockout_periods: Option<f64>,
    /// `1 - stockcast / baseline`.
    pub reduction: Option<f64>,
}

/// Everything `summary.json` holds.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// Dataset directory.
    pub data: String,
    /// `day` or `week`.
    pub period: &'static str,
    /// First simulated period start (RFC 3339).
    pub first_period: String,
    /// Last simulated period start.
    pub last_period: String,
    /// Periods simulated.
    pub simulated_periods: usize,
    /// Series simulated.
    pub series: usize,
    /// (series, period)s counted per setting.
    pub counted: u64,
    /// Review period in periods.
    pub review_periods: usize,
    /// Lead times in periods: (lead, series with it).
    pub lead_periods: Vec<(usize, usize)>,
    /// Model version used by the stockcast policy.
    pub model_version: Option<String>,
    /// Every policy and setting.
    pub outcomes: Vec<Outcome>,
    /// Every stockcast setting matched against the baseline.
    pub matched: Vec<Matched>,
    /// Service level of the headline.
    pub headline_service_level: f64,
    /// `1 - stockcast stock-out periods / baseline's at equal inventory`, at that level.
    pub stockout_reduction_at_equal_inventory: Option<f64>,
}

/// One series in the simulation.
struct Series {
    /// History index.
    index: usize,
    /// Lead time, whole periods.
    lead: usize,
    /// Its policy (lead and review in whole periods).
    policy: Policy,
    /// Stock at the start.
    start: f64,
}

/// Totals of one setting.
#[derive(Default)]
struct Tally {
    periods: u64,
    inventory: f64,
    stockouts: u64,
    lost: f64,
    demand: f64,
    orders: u64,
    ordered: f64,
}

/// Runs one series through the inventory model: `demand[k]` is period k's demand, `decide(k,
/// position)` the order placed at the start of review period k.
fn run_series(
    demand: &[f64],
    start: f64,
    lead: usize,
    review: usize,
    mut decide: impl FnMut(usize, &Position) -> f64,
    tally: &mut Tally,
) {
    let mut on_hand = start;
    let mut pipeline: VecDeque<(usize, f64)> = VecDeque::new();
    for (k, &d) in demand.iter().enumerate() {
        while pipeline.front().is_some_and(|(due, _)| *due <= k) {
            on_hand += pipeline.pop_front().map_or(0.0, |(_, q)| q);
        }
        if k % review == 0 {
            let position = Position {
                on_hand,
                on_order: pipeline.iter().map(|(_, q)| q).sum(),
            };
            let q = decide(k, &position);
            if q > 0.0 {
                pipeline.push_back((k + lead, q));
                tally.orders += 1;
                tally.ordered += q;
            }
        }
        let d = d.max(0.0);
        let served = on_hand.min(d);
        on_hand -= served;
        if k >= lead {
            let lost = d - served;
            tally.periods += 1;
            tally.inventory += on_hand;
            tally.demand += d;
            tally.lost += lost;
            if lost > 1e-9 {
                tally.stockouts += 1;
            }
        }
    }
}

/// Mean demand of series `i` over the `window` periods before snapshot `t`.
fn moving_average(history: &History, t: usize, i: usize, window: usize) -> f64 {
    let from = t.saturating_sub(window);
    let n = t - from;
    if n == 0 {
        return 0.0;
    }
    (from..t)
        .map(|u| f64::from(history.demand(u, i)).max(0.0))
        .sum::<f64>()
        / n as f64
}

impl Tally {
    fn outcome(&self, policy: PolicyKind, setting: f64) -> Outcome {
        let n = self.periods.max(1) as f64;
        Outcome {
            policy: policy.name(),
            setting,
            avg_inventory: self.inventory / n,
            stockout_periods: self.stockouts,
            stockout_rate: self.stockouts as f64 / n,
            lost_units: self.lost,
            demand_units: self.demand,
            fill_rate: if self.demand > 0.0 {
                1.0 - self.lost / self.demand
            } else {
                1.0
            },
            orders: self.orders,
            ordered_units: self.ordered,
        }
    }
}

/// Stockcast's outcomes matched against the baseline's curve.
pub fn match_curves(stockcast: &[Outcome], baseline: &[Outcome]) -> Vec<Matched> {
    let mut curve: Vec<&Outcome> = baseline.iter().collect();
    curve.sort_by(|a, b| a.avg_inventory.total_cmp(&b.avg_inventory));
    stockcast
        .iter()
        .map(|s| {
            let inv = s.avg_inventory;
            let bracket = curve
                .windows(2)
                .find(|w| w[0].avg_inventory <= inv && inv <= w[1].avg_inventory);
            let at = bracket.map(|w| {
                let (a, b) = (w[0], w[1]);
                let span = b.avg_inventory - a.avg_inventory;
                let frac = if span > 0.0 {
                    (inv - a.avg_inventory) / span
                } else {
                    0.0
                };
                a.stockout_periods as f64
                    + frac * (b.stockout_periods as f64 - a.stockout_periods as f64)
            });
            Matched {
                service_level: s.setting,
                avg_inventory: inv,
                stockout_periods: s.stockout_periods,
                baseline_bracket: bracket.map(|w| (w[0].setting, w[1].setting)),
                baseline_stockout_periods: at,
                reduction: at
                    .filter(|b| *b > 0.0)
                    .map(|b| 1.0 - s.stockout_periods as f64 / b),
            }
        })
        .collect()
}

/// Loads `data`, simulates, and returns the summary (the caller writes the report).
pub fn simulate(
    cfg: &Resolved,
    data: &Path,
    opts: &SimOptions,
    workers: usize,
) -> anyhow::Result<Summary> {
    let dataset = files::load(data)?;
    let reference = Reference::from_records(dataset.records.iter().map(|(r, _)| r));
    let history = History::from_dataset(cfg, dataset, None, workers)?;
    anyhow::ensure!(
        history.is_contiguous(),
        "the history skips a period; cannot simulate"
    );
    let period = history.period;
    let per_day = match period {
        PeriodKind::Day => 1,
        PeriodKind::Week => 7,
    };
    let ma_window = 28 / per_day;
    let last = history.snapshots.len() - 1;
    let s0 = (last + 1)
        .checked_sub(opts.periods)
        .filter(|s| *s > ma_window)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "{} periods of data cannot hold {} simulated periods after {ma_window} of history",
                last + 1,
                opts.periods
            )
        })?;
    let known = history.snapshots[s0 - 1].n;
    let mut series = Vec::new();
    for i in 0..known {
        let (store, sku) = &history.names[i];
        let mut policy = reference.policy(&cfg.replenish, period, store, sku);
        if !policy.active {
            continue;
        }
        let lead = (policy.lead_time - 1e-9).ceil().max(1.0) as usize;
        let review = policy.review.round().max(1.0);
        policy.lead_time = lead as f64;
        policy.review = review;
        let start = moving_average(&history, s0, i, ma_window) * (lead as f64 + review);
        series.push(Series {
            index: i,
            lead,
            policy,
            start: start.round(),
        });
    }
    anyhow::ensure!(!series.is_empty(), "no active series before the simulation");
    let review = series[0].policy.review as usize;
    let demand: Vec<Vec<f64>> = series
        .iter()
        .map(|s| {
            (s0..=last)
                .map(|t| f64::from(history.demand(t, s.index)))
                .collect()
        })
        .collect();

    let mut outcomes = Vec::new();
    let mut model_version = None;
    if opts.policies.contains(&PolicyKind::Stockcast) {
        let model = match &opts.model {
            Some(dir) => QuantileModel::load(dir, &history.schema, period)?,
            None => {
                let mut o = opts.train.clone();
                o.cutoff = Some(history.snapshots[s0 - 1].period);
                let started = std::time::Instant::now();
                let (model, _) = train::train(&history, &data.display().to_string(), &o)?;
                tracing::info!(
                    version = %model.manifest.version,
                    secs = format!("{:.1}", started.elapsed().as_secs_f64()),
                    "model trained on the periods before the simulation"
                );
                model
            }
        };
        model_version = Some(model.manifest.version.clone());
        // Forecasts at every review, from the features of the period before.
        let forecasts: Vec<Vec<Forecast>> = (0..opts.periods)
            .step_by(review)
            .map(|k| forecast_series(&history, s0 + k - 1, &model as &dyn Forecaster))
            .collect::<Result<_, _>>()
            .map_err(|e| anyhow::anyhow!("the model could not score: {e}"))?;
        for &level in &opts.service_levels {
            let mut tally = Tally::default();
            for (s, d) in series.iter().zip(&demand) {
                let policy = Policy {
                    service_level: level,
                    ..s.policy.clone()
                };
                run_series(
                    d,
                    s.start,
                    s.lead,
                    review,
                    |k, pos| recommend(&forecasts[k / review][s.index], pos, &policy).order_qty,
                    &mut tally,
                );
            }
            outcomes.push(tally.outcome(PolicyKind::Stockcast, level));
        }
    }
    if opts.policies.contains(&PolicyKind::Ma) {
        for &factor in &opts.safety_factors {
            let mut tally = Tally::default();
            for (s, d) in series.iter().zip(&demand) {
                let cover = (s.lead + review) as f64;
                run_series(
                    d,
                    s.start,
                    s.lead,
                    review,
                    |k, pos| {
                        let target =
                            moving_average(&history, s0 + k, s.index, ma_window) * cover * factor;
                        order_size(
                            target - pos.on_hand.max(0.0) - pos.on_order,
                            s.policy.pack_size,
                            s.policy.min_order_qty,
                        )
                    },
                    &mut tally,
                );
            }
            outcomes.push(tally.outcome(PolicyKind::Ma, factor));
        }
    }
    let of = |p: PolicyKind| -> Vec<Outcome> {
        outcomes
            .iter()
            .filter(|o| o.policy == p.name())
            .cloned()
            .collect()
    };
    let matched = match_curves(&of(PolicyKind::Stockcast), &of(PolicyKind::Ma));
    let headline_level = cfg.replenish.service_level;
    let headline = matched
        .iter()
        .find(|m| (m.service_level - headline_level).abs() < 1e-9)
        .and_then(|m| m.reduction);
    let mut leads: std::collections::BTreeMap<usize, usize> = Default::default();
    for s in &series {
        *leads.entry(s.lead).or_default() += 1;
    }
    let start_of = |t: usize| rfc3339(period.period_start(history.snapshots[t].period));
    Ok(Summary {
        data: data.display().to_string(),
        period: match period {
            PeriodKind::Day => "day",
            PeriodKind::Week => "week",
        },
        first_period: start_of(s0),
        last_period: start_of(last),
        simulated_periods: opts.periods,
        series: series.len(),
        counted: series
            .iter()
            .map(|s| opts.periods.saturating_sub(s.lead) as u64)
            .sum(),
        review_periods: review,
        lead_periods: leads.into_iter().collect(),
        model_version,
        outcomes,
        matched,
        headline_service_level: headline_level,
        stockout_reduction_at_equal_inventory: headline,
    })
}

/// Writes `summary.json`, `report.md` and `tradeoff.png` into `out`.
pub fn write_report(summary: &Summary, out: &Path) -> anyhow::Result<()> {
    use std::fmt::Write as _;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let json = serde_json::to_string_pretty(summary)?;
    let path = out.join("summary.json");
    std::fs::write(&path, json + "\n").with_context(|| format!("writing {}", path.display()))?;

    let curve = |p: &str| -> Vec<(f64, f64)> {
        let mut v: Vec<(f64, f64)> = summary
            .outcomes
            .iter()
            .filter(|o| o.policy == p)
            .map(|o| (o.avg_inventory, 100.0 * o.stockout_rate))
            .collect();
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        v
    };
    crate::model::plot::xy_chart(
        &out.join("tradeoff.png"),
        &format!(
            "Stock-out rate against inventory: {}",
            Path::new(&summary.data)
                .file_name()
                .map_or(summary.data.clone(), |n| n.to_string_lossy().into_owned())
        ),
        "average inventory on hand per series (units)",
        "stock-out periods (% of series-periods)",
        &[
            ("stockcast (service level sweep)".into(), curve("stockcast")),
            ("moving average (safety factor sweep)".into(), curve("ma")),
        ],
    )?;

    let mut md = String::new();
    let s = summary;
    writeln!(md, "# Replenishment simulation: {}\n", s.data)?;
    writeln!(
        md,
        "{} series, {} {}s from {} to {}; review every {} period(s); lead times (periods: series) {:?}; model {}.\n",
        s.series,
        s.simulated_periods,
        s.period,
        s.first_period,
        s.last_period,
        s.review_periods,
        s.lead_periods,
        s.model_version.as_deref().unwrap_or("none"),
    )?;
    match s.stockout_reduction_at_equal_inventory {
        Some(r) => writeln!(
            md,
            "**Stock-out reduction at equal inventory** (stockcast at service level {}): **{:.1}%**\n",
            s.headline_service_level,
            100.0 * r
        )?,
        None => writeln!(
            md,
            "No matched comparison at service level {}: its inventory lies outside the baseline's swept range.\n",
            s.headline_service_level
        )?,
    }
    writeln!(md, "![trade-off](tradeoff.png)\n")?;
    writeln!(md, "## Every setting\n")?;
    writeln!(
        md,
        "| policy | setting | avg inventory | stock-out periods | stock-out rate | lost units | fill rate | orders |"
    )?;
    writeln!(md, "|---|---|---|---|---|---|---|---|")?;
    for o in &s.outcomes {
        writeln!(
            md,
            "| {} | {} | {:.2} | {} | {:.4} | {:.0} | {:.4} | {} |",
            o.policy,
            o.setting,
            o.avg_inventory,
            o.stockout_periods,
            o.stockout_rate,
            o.lost_units,
            o.fill_rate,
            o.orders
        )?;
    }
    writeln!(
        md,
        "\n## Stockcast against the baseline at equal inventory\n"
    )?;
    writeln!(
        md,
        "The baseline's stock-out periods are interpolated linearly in average inventory between the two safety factors that bracket stockcast's inventory.\n"
    )?;
    writeln!(
        md,
        "| service level | avg inventory | stockcast stock-outs | baseline bracket | baseline stock-outs | reduction |"
    )?;
    writeln!(md, "|---|---|---|---|---|---|")?;
    for m in &s.matched {
        let opt = |v: Option<f64>, f: &dyn Fn(f64) -> String| v.map_or("-".to_string(), f);
        writeln!(
            md,
            "| {} | {:.2} | {} | {} | {} | {} |",
            m.service_level,
            m.avg_inventory,
            m.stockout_periods,
            m.baseline_bracket
                .map_or("-".into(), |(a, b)| format!("{a} - {b}")),
            opt(m.baseline_stockout_periods, &|v| format!("{v:.1}")),
            opt(m.reduction, &|v| format!("{:.1}%", 100.0 * v)),
        )?;
    }
    let path = out.join("report.md");
    std::fs::write(&path, md).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_arrive_after_the_lead_time_and_unmet_demand_is_lost() {
        // Start with 5, order 10 at each review (every 2 periods), lead 1.
        let demand = [4.0, 4.0, 4.0, 4.0, 20.0, 0.0];
        let mut tally = Tally::default();
        let mut placed = Vec::new();
        run_series(
            &demand,
            5.0,
            1,
            2,
            |k, pos| {
                placed.push((k, pos.on_hand, pos.on_order));
                10.0
            },
            &mut tally,
        );
        // Period 0: 5 - 4 = 1 (not counted). 1: +10 -> 11 - 4 = 7. 2: order; 7 - 4 = 3.
        // 3: +10 -> 13 - 4 = 9. 4: order; 9 - 20 -> 0, 11 lost. 5: +10 -> 10.
        assert_eq!(placed, vec![(0, 5.0, 0.0), (2, 7.0, 0.0), (4, 9.0, 0.0)]);
        assert_eq!(tally.periods, 5);
        assert_eq!(tally.stockouts, 1);
        assert_eq!(tally.lost, 11.0);
        assert_eq!(tally.inventory, 7.0 + 3.0 + 9.0 + 0.0 + 10.0);
        assert_eq!(tally.demand, 32.0);
        assert_eq!(tally.orders, 3);
    }

    fn outcome(policy: PolicyKind, setting: f64, inv: f64, so: u64) -> Outcome {
        Tally {
            periods: 100,
            inventory: inv * 100.0,
            stockouts: so,
            ..Tally::default()
        }
        .outcome(policy, setting)
    }

    #[test]
    fn the_baseline_is_interpolated_at_equal_inventory() {
        let base = [
            outcome(PolicyKind::Ma, 1.0, 10.0, 40),
            outcome(PolicyKind::Ma, 2.0, 20.0, 20),
            outcome(PolicyKind::Ma, 3.0, 30.0, 10),
        ];
        let ours = [
            outcome(PolicyKind::Stockcast, 0.9, 15.0, 15),
            outcome(PolicyKind::Stockcast, 0.99, 35.0, 1),
        ];
        let m = match_curves(&ours, &base);
        assert_eq!(m[0].baseline_bracket, Some((1.0, 2.0)));
        assert_eq!(m[0].baseline_stockout_periods, Some(30.0));
        assert!((m[0].reduction.unwrap() - 0.5).abs() < 1e-12);
        // Outside the baseline's range: no comparison.
        assert_eq!(m[1].reduction, None);
    }
}

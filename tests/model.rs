//! The demand model on the real datasets: point-in-time training rows, a seeded and
//! reproducible artifact that refuses another schema, the worker scoring with it, and the
//! backtest against the accuracy bar of the model issue.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::{resolved, shared};
use dataflows::PeriodKind;
use stockcast::model::backtest::{self, BacktestOptions};
use stockcast::model::history::History;
use stockcast::model::train::{self, TrainOptions};
use stockcast::model::{ModelError, QuantileModel};
use stockcast::records::ForecastRecord;
use stockcast::replay::{self, ReplayOptions};

/// Bitwise equality of two feature rows (NaN = NaN).
fn same_row(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

#[test]
fn snapshots_are_point_in_time_and_every_series_moves_each_period() {
    let data = shared("dunnhumby_btf_dev");
    let cfg = resolved("week");
    let full = History::load(&cfg, &data, 2).unwrap();
    assert!(full.is_contiguous());
    assert_eq!(full.snapshots.len(), 156);
    let width = full.width();

    // Cut the data after period T: the snapshot of T must not change, so no row of T (or
    // earlier) can have read anything later.
    for t in [60usize, 120] {
        let period = full.snapshots[t].period;
        let end_of_t = PeriodKind::Week.period_start(period + 1) - 1;
        let cut = History::load_until(&cfg, &data, Some(end_of_t), 1).unwrap();
        assert_eq!(cut.snapshots.last().unwrap().period, period);
        let (a, b) = (&full.snapshots[t], cut.snapshots.last().unwrap());
        assert_eq!(a.n, b.n);
        assert_eq!(full.keys[..a.n], cut.keys[..b.n]);
        for i in 0..a.n {
            assert!(
                same_row(a.row(i, width).unwrap(), b.row(i, width).unwrap()),
                "series {i} at period {t} differs once later data exists"
            );
        }
    }

    // Every series is re-snapshotted each period: last period's demand is this one's lag 1.
    let lag0 = full.schema.index("sales_lag_0w").unwrap();
    let lag1 = full.schema.index("sales_lag_1w").unwrap();
    let mut checked = 0;
    for t in 1..full.snapshots.len() {
        let (prev, now) = (&full.snapshots[t - 1], &full.snapshots[t]);
        for i in 0..prev.n {
            assert_eq!(
                prev.row(i, width).unwrap()[lag0].to_bits(),
                now.row(i, width).unwrap()[lag1].to_bits()
            );
            checked += 1;
        }
    }
    assert!(checked > 300_000, "{checked}");
}

fn quick(horizon: usize, seed: u64) -> TrainOptions {
    let mut o = TrainOptions::new(horizon);
    o.seed = seed;
    o.max_epochs = 3;
    o.hidden = vec![32];
    o.refit = false;
    o
}

#[test]
fn training_is_seeded_the_artifact_round_trips_and_another_schema_is_refused() {
    let data = shared("m5_mini");
    let cfg = resolved("day");
    let history = History::load(&cfg, &data, 1).unwrap();
    let h = cfg.spec.horizon as usize;
    let (a, _) = train::train(&history, "m5_mini", &quick(h, 7)).unwrap();
    let (b, _) = train::train(&history, "m5_mini", &quick(h, 7)).unwrap();
    let (c, _) = train::train(&history, "m5_mini", &quick(h, 8)).unwrap();
    assert_eq!(
        a.manifest.version, b.manifest.version,
        "same seed, same weights"
    );
    assert_eq!(
        a.manifest.training.train_loss,
        b.manifest.training.train_loss
    );
    assert_ne!(a.manifest.version, c.manifest.version, "the seed matters");

    let m = &a.manifest;
    assert_eq!(m.features, cfg.spec.schema().names().collect::<Vec<_>>());
    assert_eq!(m.schema_hash, cfg.spec.schema().hash);
    assert_eq!(m.quantiles, vec![0.1, 0.5, 0.9]);
    assert_eq!(m.horizon, h);
    assert!(m.validation.wape.is_finite() && m.trained_on.rows > 0);
    assert_eq!(m.trained_on.last_period, "2016-04-24T00:00:00Z");

    let dir = tempfile::tempdir().unwrap();
    a.save(dir.path()).unwrap();
    let loaded = QuantileModel::load(dir.path(), &cfg.spec.schema(), PeriodKind::Day).unwrap();
    assert_eq!(loaded.manifest, a.manifest);
    let last = history.snapshots.last().unwrap();
    let rows: Vec<&[f32]> = last.rows(history.width()).map(|(_, r)| r).collect();
    let (x, y) = (
        a.forecast_rows(&rows).unwrap(),
        loaded.forecast_rows(&rows).unwrap(),
    );
    assert_eq!(x, y);
    for f in &x {
        assert_eq!(f.p50.len(), h);
        for k in 0..h {
            assert!(0.0 <= f.p10[k] && f.p10[k] <= f.p50[k] && f.p50[k] <= f.p90[k]);
        }
    }

    // The same model against a dataflow with other windows: refused, naming the features.
    let mut other = cfg.spec.clone();
    other.windows = vec![1, 7, 14, 28, 91];
    let err = match QuantileModel::load(dir.path(), &other.schema(), PeriodKind::Day) {
        Err(e) => e,
        Ok(_) => panic!("a model for another schema was accepted"),
    };
    assert!(matches!(err, ModelError::Schema { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("missing from the dataflow: [sales_sum_56d]")
            && text.contains("not in the model: [sales_sum_91d]"),
        "{text}"
    );
    let weekly = cfg.spec.schema();
    assert!(matches!(
        QuantileModel::load(dir.path(), &weekly, PeriodKind::Week),
        Err(ModelError::Period { .. })
    ));
}

fn forecast_lines(dir: &Path) -> Vec<ForecastRecord> {
    std::fs::read_to_string(dir.join("forecasts.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn replay_scores_with_the_model_and_says_which_model_scored() {
    let data = shared("m5_mini");
    let mut cfg = resolved("day");
    let history = History::load(&cfg, &data, 1).unwrap();
    let (model, _) = train::train(&history, "m5_mini", &quick(28, 1)).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let model_dir = tmp.path().join("model");
    model.save(&model_dir).unwrap();

    let run = |cfg: &stockcast::config::Resolved, out: &Path| {
        replay::replay(
            cfg,
            &ReplayOptions {
                data: data.clone(),
                out: out.to_path_buf(),
                workers: 2,
                progress: false,
            },
        )
        .unwrap()
    };
    let baseline = run(&cfg, &tmp.path().join("baseline"));
    assert_eq!(baseline.model, "baseline-ma");
    let lines = forecast_lines(&tmp.path().join("baseline"));
    assert!(lines.iter().all(|r| &*r.model == "baseline-ma"));

    cfg.model.dir = Some(model_dir.clone());
    let scored = run(&cfg, &tmp.path().join("model"));
    assert_eq!(scored.model, "stockcast-mlp");
    let lines = forecast_lines(&tmp.path().join("model"));
    assert_eq!(
        lines.len(),
        forecast_lines(&tmp.path().join("baseline")).len()
    );
    assert!(lines
        .iter()
        .all(|r| &*r.model == "stockcast-mlp" && *r.model_version == *model.manifest.version));
    // The record's quantiles are the model's own forecast of that series' features.
    let last = history.snapshots.last().unwrap();
    let rows: Vec<&[f32]> = last.rows(history.width()).map(|(_, r)| r).collect();
    let expected = model.forecast_rows(&rows).unwrap();
    // Only changed series are scored: a series' last record is from its last change, and
    // its features then are its final ones.
    let mut latest: std::collections::HashMap<(Arc<str>, Arc<str>), &ForecastRecord> =
        std::collections::HashMap::new();
    for r in &lines {
        latest.insert((r.store_id.clone(), r.sku_id.clone()), r);
    }
    assert_eq!(latest.len(), last.n);
    for (i, names) in history.names.iter().enumerate() {
        let rec = latest[names];
        for (got, want) in rec.forecast.iter().zip(&expected[i].p50) {
            assert!((got - want).abs() < 1e-3, "{names:?}: {got} vs {want}");
        }
        for (got, want) in rec.forecast_p90.iter().zip(&expected[i].p90) {
            assert!((got - want).abs() < 1e-3, "{names:?}: {got} vs {want}");
        }
    }
}

fn read_metrics(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("metrics.json")).unwrap()).unwrap()
}

/// The backtest of the model issue's bars: weekly, horizon 8, 3 origins, default training.
fn weekly_backtest(set: &str) -> (History, backtest::Backtest) {
    let history = History::load(&resolved("week"), &shared(set), 2).unwrap();
    let opts = BacktestOptions {
        horizon: 8,
        origins: 3,
        train: TrainOptions::new(8),
        model: None,
        censoring_ablation: true,
    };
    let bt = backtest::run(&history, set, &opts).unwrap();
    (history, bt)
}

/// The bars on dunnhumby_btf_dev (weekly, horizon 8, 3 origins): WAPE at least 5% below the
/// LightGBM-global anchor (<= 0.397) with pinball90 no worse (0.143), the model issue's; and no
/// worse than before the price plan (0.3786 / 0.111), the planned-prices issue's.
#[test]
fn dunnhumby_backtest_beats_the_lightgbm_anchor() {
    let (history, bt) = weekly_backtest("dunnhumby_btf_dev");
    let out = tempfile::tempdir().unwrap();
    stockcast::model::plot::backtest_report(&history, &bt, out.path()).unwrap();
    let m = read_metrics(out.path());
    let model = &m["stockcast"];
    let (wape, p90) = (
        model["wape"].as_f64().unwrap(),
        model["pinball90"].as_f64().unwrap(),
    );
    assert!(wape <= 0.3786, "WAPE {wape}");
    assert!(p90 <= 0.111, "pinball90 {p90}");
    // The baselines reproduce the published ones on these splits: the splits are the same.
    let ma = m["ma"]["wape"].as_f64().unwrap();
    assert!((ma - 0.472).abs() < 0.005, "moving average WAPE {ma}");
    for name in ["stockcast", "ma", "naive", "seasonal_naive"] {
        for key in [
            "wape",
            "mase",
            "bias",
            "pinball50",
            "pinball90",
            "coverage90",
        ] {
            assert!(m[name][key].is_number(), "{name}.{key}");
        }
    }
    for png in [
        "error_by_horizon.png",
        "forecast_bands.png",
        "wape_by_volume.png",
    ] {
        let bytes = std::fs::read(out.path().join(png)).unwrap();
        assert_eq!(&bytes[1..4], b"PNG", "{png}");
    }
    let report = std::fs::read_to_string(out.path().join("report.md")).unwrap();
    assert!(report.contains("| stockcast |"), "{report}");
    // The derived price plan has cuts: the report scores the forecasts of those periods apart.
    assert!(report.contains("## Planned price cuts"), "{report}");
}

/// On walmart_store_dept the first bar is the seasonal naive forecast (WAPE 0.107): yearly
/// seasonality and holidays dominate. The planned-prices issue's is no worse than before it
/// (0.0856 / 0.0226); this set has no prices, so the plan features are constant here.
#[test]
fn walmart_backtest_beats_seasonal_naive() {
    let (_, bt) = weekly_backtest("walmart_store_dept");
    let scores: std::collections::HashMap<String, backtest::Scores> = bt
        .results
        .iter()
        .map(|(n, a)| (n.clone(), a.scores()))
        .collect();
    let (model, snaive) = (&scores["stockcast"], &scores["seasonal_naive"]);
    assert!(
        (snaive.wape - 0.107).abs() < 0.002,
        "seasonal naive {}",
        snaive.wape
    );
    assert!(model.wape <= 0.0856, "WAPE {}", model.wape);
    assert!(model.pinball90 <= 0.0226, "pinball90 {}", model.pinball90);
    assert!(
        model.pinball90 <= snaive.pinball90,
        "pinball90 {}",
        model.pinball90
    );
}

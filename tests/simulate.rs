//! The replenishment simulation on real data: stockcast's recommendation against the buyer's
//! moving-average rule, and the bar of the replenishment issue.

mod common;

use common::{resolved, shared};
use stockcast::simulate::{self, SimOptions};

#[test]
fn dunnhumby_stockcast_has_30_percent_fewer_stockouts_at_equal_inventory() {
    let cfg = resolved("week");
    let data = shared("dunnhumby_btf_dev");
    let opts = SimOptions::new(cfg.clock.period_kind(), cfg.spec.horizon as usize);
    let summary = simulate::simulate(&cfg, &data, &opts, 2).unwrap();
    let out = tempfile::tempdir().unwrap();
    simulate::write_report(&summary, out.path()).unwrap();

    // The report: every setting of both sweeps, the chart and a summary a script can read.
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("summary.json")).unwrap())
            .unwrap();
    assert_eq!(
        json["outcomes"].as_array().unwrap().len(),
        opts.service_levels.len() + opts.safety_factors.len()
    );
    assert!(out.path().join("tradeoff.png").metadata().unwrap().len() > 10_000);
    assert!(out.path().join("report.md").exists());
    assert_eq!(summary.simulated_periods, 26);
    assert!(summary.series > 1000, "{} series", summary.series);

    // More service buys fewer stock-outs with more stock, on both curves.
    for policy in ["stockcast", "ma"] {
        let curve: Vec<_> = summary
            .outcomes
            .iter()
            .filter(|o| o.policy == policy)
            .collect();
        for w in curve.windows(2) {
            assert!(
                w[1].avg_inventory > w[0].avg_inventory
                    && w[1].stockout_periods <= w[0].stockout_periods,
                "{policy}: {:?} then {:?}",
                w[0],
                w[1]
            );
        }
    }

    let reduction = summary
        .stockout_reduction_at_equal_inventory
        .expect("the headline service level lies inside the baseline's range");
    assert_eq!(
        json["stockout_reduction_at_equal_inventory"].as_f64(),
        Some(reduction)
    );
    assert!(
        reduction >= 0.30,
        "stock-out reduction at equal inventory {reduction:.3} (bar 0.30)"
    );
}

#[test]
fn the_daily_simulation_reviews_weekly_and_reports_both_curves() {
    let cfg = resolved("day");
    let data = shared("m5_mini");
    let mut opts = SimOptions::new(cfg.clock.period_kind(), cfg.spec.horizon as usize);
    opts.service_levels = vec![0.8, 0.95];
    opts.safety_factors = vec![1.0, 1.5, 2.0];
    let summary = simulate::simulate(&cfg, &data, &opts, 1).unwrap();
    assert_eq!(summary.review_periods, 7);
    assert_eq!(summary.lead_periods, vec![(7, summary.series)]);
    // Orders every 7 days: 26 reviews in 182 days, for every series and setting at most.
    for o in &summary.outcomes {
        assert!(o.orders <= 26 * summary.series as u64, "{o:?}");
        assert!(o.fill_rate > 0.0 && o.fill_rate <= 1.0);
    }
    assert_eq!(summary.matched.len(), 2);
}

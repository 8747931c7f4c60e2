//! The training history read a bucket at a time from disk (how `train` reads a chain's history)
//! against the history of the dataset held in memory (how the demo and `simulate` read it): the
//! same snapshots, bit for bit, whatever the order of the files' rows; and a sampled history
//! keeps a share of the feature rows, unchanged, and every series' demand.

mod common;

use std::path::Path;

use common::resolved;
use stockcast::generate::{generate_to_dir, Params};
use stockcast::model::history::History;
use stockcast::source::files;

fn same(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

fn assert_same(spilled: &History, held: &History) {
    assert_eq!(spilled.snapshots.len(), held.snapshots.len());
    assert_eq!(spilled.keys, held.keys);
    assert_eq!(spilled.names, held.names);
    let width = held.width();
    for (t, (a, b)) in spilled.snapshots.iter().zip(&held.snapshots).enumerate() {
        assert_eq!((a.period, a.n), (b.period, b.n), "snapshot {t}");
        for i in 0..b.n {
            assert!(
                same(a.row(i, width).unwrap(), b.row(i, width).unwrap()),
                "series {i} differs at snapshot {t}"
            );
            assert_eq!(spilled.demand(t, i).to_bits(), held.demand(t, i).to_bits());
            assert_eq!(spilled.censored(t, i), held.censored(t, i));
        }
    }
}

/// A generated chain (stock movements, a promotion file, prices on the sales rows but no price
/// plan file, so the plan is derived) with its sales rows in reverse file order, and one more
/// dated 1969.
fn dataset(dir: &Path) {
    let params = Params {
        stores: 3,
        skus: 8,
        days: 100,
        ..Params::default()
    };
    generate_to_dir(&params, dir).unwrap();
    let sales = std::fs::read_to_string(dir.join("sales.csv")).unwrap();
    let mut lines: Vec<&str> = sales.lines().collect();
    lines[1..].reverse();
    // A sale before 1970, which the dataflow refuses, must not hold back anything else.
    let early = lines[1].replacen("2023-", "1969-", 1);
    lines.push(&early);
    std::fs::write(dir.join("sales.csv"), lines.join("\n") + "\n").unwrap();
}

#[test]
fn the_history_read_from_disk_equals_the_one_held_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    dataset(dir.path());
    for period in ["day", "week"] {
        let cfg = resolved(period);
        let held = History::from_dataset(&cfg, files::load(dir.path()).unwrap(), None, 2).unwrap();
        let spilled = History::load(&cfg, dir.path(), 2).unwrap();
        assert!(held.snapshots.len() > 10, "{period}");
        assert_same(&spilled, &held);
        // The price plan derived from the sales reached the features.
        let plan = held.schema.index("plan_price_rel_h1").unwrap();
        let last = held.snapshots.last().unwrap();
        assert!(last.rows(held.width()).any(|(_, r)| !r[plan].is_nan()));

        // Cut in the middle: the plan is still derived from every sales row, as in memory.
        let t = held.snapshots.len() / 2;
        let kind = cfg.clock.period_kind();
        let as_of = kind.period_start(held.snapshots[t].period + 1) - 1;
        let held =
            History::from_dataset(&cfg, files::load(dir.path()).unwrap(), Some(as_of), 1).unwrap();
        let spilled = History::load_until(&cfg, dir.path(), Some(as_of), 1).unwrap();
        assert_eq!(held.snapshots.len(), t + 1);
        assert_same(&spilled, &held);
    }
}

#[test]
fn a_sampled_history_keeps_a_share_of_the_rows_unchanged_and_all_demand() {
    let dir = tempfile::tempdir().unwrap();
    dataset(dir.path());
    let cfg = resolved("day");
    let whole = History::load(&cfg, dir.path(), 1).unwrap();
    let total: usize = 24 * whole.snapshots.len();
    let sampled = History::load_sampled(&cfg, dir.path(), None, 2, Some(total / 4)).unwrap();
    assert!(whole.is_whole() && !sampled.is_whole());
    assert!((sampled.kept - 0.25).abs() < 0.01, "{}", sampled.kept);
    let width = whole.width();
    let (mut kept, mut all) = (0usize, 0usize);
    for (t, (a, b)) in sampled.snapshots.iter().zip(&whole.snapshots).enumerate() {
        assert_eq!(a.n, b.n);
        for i in 0..b.n {
            all += 1;
            if let Some(row) = a.row(i, width) {
                kept += 1;
                assert!(same(row, b.row(i, width).unwrap()));
            }
            assert_eq!(sampled.demand(t, i).to_bits(), whole.demand(t, i).to_bits());
            assert_eq!(sampled.censored(t, i), whole.censored(t, i));
        }
    }
    let share = kept as f64 / all as f64;
    assert!((0.2..0.3).contains(&share), "{kept} of {all} rows kept");
    // The same rows for any worker count.
    let again = History::load_sampled(&cfg, dir.path(), None, 1, Some(total / 4)).unwrap();
    for (a, b) in sampled.snapshots.iter().zip(&again.snapshots) {
        let rows = |s: &stockcast::model::history::Snapshot| -> Vec<usize> {
            s.rows(width).map(|(i, _)| i).collect()
        };
        assert_eq!(rows(a), rows(b));
    }
    // A backtest needs every row, and says so.
    let opts = stockcast::model::backtest::BacktestOptions {
        horizon: 7,
        origins: 1,
        train: stockcast::model::train::TrainOptions::new(7),
        model: None,
        censoring_ablation: false,
    };
    let err = stockcast::model::backtest::run(&sampled, "x", &opts)
        .err()
        .unwrap();
    assert!(err.to_string().contains("sample"), "{err}");
}

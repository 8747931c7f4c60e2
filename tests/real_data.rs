//! End-to-end replays of the real datasets in ../shared/data, and the feature table's
//! definitions checked against an independent pass over the raw CSV.

mod common;

use std::collections::HashMap;
use std::path::Path;

use common::{resolved, shared};
use stockcast::replay::{self, ReplayOptions};

fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path).unwrap().lines().count()
}

#[test]
fn m5_mini_replays_daily_identically_with_1_and_3_workers() {
    let data = shared("m5_mini");
    let cfg = resolved("day");
    let tmp = tempfile::tempdir().unwrap();
    let mut outs = Vec::new();
    for workers in [1, 3] {
        let out = tmp.path().join(format!("w{workers}"));
        let s = replay::replay(
            &cfg,
            &ReplayOptions {
                data: data.clone(),
                out: out.clone(),
                workers,
                progress: false,
            },
        )
        .unwrap();
        assert_eq!(s.keys, 10);
        assert_eq!(s.events_read["sales"], 19_130);
        assert!(s.dead_letters.is_empty(), "{:?}", s.dead_letters);
        // 1,913 days, every series changing at the first epoch of each.
        assert_eq!(s.epochs, 1_913);
        outs.push(std::fs::read(out.join("forecasts.jsonl")).unwrap());
    }
    assert_eq!(outs[0], outs[1], "output depends on the number of workers");
    // What the scheduling driver replay ran on before the streaming one wrote, byte for byte
    // the same file (2026-12-06): one record per series and day it changed in.
    assert_eq!(lines(&tmp.path().join("w1/forecasts.jsonl")), 13_819);
}

#[test]
fn walmart_replays_weekly_with_its_negative_sales() {
    let data = shared("walmart_store_dept");
    let cfg = resolved("week");
    let tmp = tempfile::tempdir().unwrap();
    let s = replay::replay(
        &cfg,
        &ReplayOptions {
            data,
            out: tmp.path().to_path_buf(),
            workers: 2,
            progress: false,
        },
    )
    .unwrap();
    assert_eq!(s.events_read["sales"], 421_570);
    assert_eq!(s.keys, 3_331);
    assert!(s.dead_letters.is_empty(), "{:?}", s.dead_letters);
    assert_eq!(s.ignored_files, vec!["calendar.csv".to_string()]);
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("summary.json")).unwrap())
            .unwrap();
    assert_eq!(summary["period"], "week");
    assert!(summary["keys_scored_per_epoch"]["total"].as_u64().unwrap() > 100_000);
}

/// Sum of qty per (store, sku) over the `n` periods ending with the one containing `as_of`,
/// straight from the CSV.
fn raw_sums(dir: &Path, as_of: &str, days: i64) -> HashMap<(String, String), f64> {
    let as_of = chrono::NaiveDate::parse_from_str(as_of, "%Y-%m-%d").unwrap();
    let first = as_of - chrono::Duration::days(days - 1);
    let mut sums = HashMap::new();
    let mut r = csv::Reader::from_path(dir.join("sales.csv")).unwrap();
    let h = r.headers().unwrap().clone();
    let col = |n: &str| h.iter().position(|c| c == n).unwrap();
    let (d, s, k, q) = (col("date"), col("store_id"), col("sku_id"), col("qty"));
    for rec in r.records() {
        let rec = rec.unwrap();
        let date = chrono::NaiveDate::parse_from_str(&rec[d], "%Y-%m-%d").unwrap();
        let e = sums
            .entry((rec[s].to_string(), rec[k].to_string()))
            .or_insert(0.0);
        if date >= first && date <= as_of {
            *e += rec[q].parse::<f64>().unwrap();
        }
    }
    sums
}

/// Asserts that `column` of the feature table equals `expected` for every row; returns the
/// header and the rows.
fn check_sums(
    table: &Path,
    column: &str,
    expected: &HashMap<(String, String), f64>,
) -> (csv::StringRecord, Vec<csv::StringRecord>) {
    let mut r = csv::Reader::from_path(table).unwrap();
    let h = r.headers().unwrap().clone();
    assert_eq!((&h[0], &h[1]), ("store_id", "sku_id"));
    let col = h.iter().position(|c| c == column).unwrap();
    let mut rows = Vec::new();
    for rec in r.records() {
        let rec = rec.unwrap();
        let want = expected[&(rec[0].to_string(), rec[1].to_string())];
        let got: f64 = rec[col].parse().unwrap();
        assert!(
            (got - want).abs() < 1e-6,
            "{}/{}: {got} vs {want}",
            &rec[0],
            &rec[1]
        );
        rows.push(rec);
    }
    (h, rows)
}

#[test]
fn feature_table_sums_match_the_raw_csv() {
    let data = shared("m5_mini");
    let cfg = resolved("day");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("features.csv");
    let as_of = "2014-06-15";
    let t = replay::feature_table(
        &cfg,
        &data,
        stockcast::decode::parse_time("as_of", "2014-06-15T23:59:59Z").unwrap(),
        &out,
        2,
    )
    .unwrap();
    assert_eq!(t.rows, 10);
    let expected = raw_sums(&data, as_of, 28);
    let (_, rows) = check_sums(&out, "sales_sum_28d", &expected);
    assert_eq!(rows.len(), 10);
}

/// Past the last sale (2016-04-24) the windows still move on to the instant asked for: the
/// 28-day sums then cover 2016-04-13 to 2016-05-10, twelve days of data. The table is the same
/// whatever the number of workers.
#[test]
fn a_feature_table_past_the_last_event_slides_its_windows_to_the_instant() {
    let data = shared("m5_mini");
    let cfg = resolved("day");
    let tmp = tempfile::tempdir().unwrap();
    let as_of = stockcast::decode::parse_time("as_of", "2016-05-10T23:59:59Z").unwrap();
    let mut tables = Vec::new();
    for workers in [1, 3] {
        let out = tmp.path().join(format!("features-{workers}.csv"));
        let t = replay::feature_table(&cfg, &data, as_of, &out, workers).unwrap();
        assert_eq!(t.rows, 10);
        let expected = raw_sums(&data, "2016-05-10", 28);
        assert!(expected.values().any(|s| *s > 0.0));
        check_sums(&out, "sales_sum_28d", &expected);
        tables.push(std::fs::read(&out).unwrap());
    }
    assert_eq!(tables[0], tables[1]);
}

#[test]
fn dunnhumby_weekly_sums_match_the_raw_csv() {
    let data = shared("dunnhumby_btf_dev");
    let cfg = resolved("week");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("features.csv");
    // 2011-06-19 is a Sunday: the ISO week 2011-06-13..19 is the last of the window.
    let as_of = stockcast::decode::parse_time("as_of", "2011-06-19T23:59:59Z").unwrap();
    let t = replay::feature_table(&cfg, &data, as_of, &out, 2).unwrap();
    assert!(t.rows > 2_500, "{} rows", t.rows);
    let expected = raw_sums(&data, "2011-06-19", 13 * 7);
    let (h, records) = check_sums(&out, "sales_sum_13w", &expected);
    let promo = h.iter().position(|c| c == "promo_periods_13w").unwrap();
    let price = h.iter().position(|c| c == "price_last").unwrap();
    let with_promo = records
        .iter()
        .filter(|r| r[promo].parse::<i64>().unwrap() > 0)
        .count();
    let with_price = records.iter().filter(|r| !r[price].is_empty()).count();
    let checked = records.len();
    assert_eq!(checked, t.rows);
    assert!(
        with_promo > 100 && with_price > 1_000,
        "{with_promo} {with_price}"
    );
}

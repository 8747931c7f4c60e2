//! Criterion micro-benchmarks of the pure hot paths: decoding a sale (a CSV row, and a Kafka
//! record's JSON value), evaluating one series' features (done once per changed series per
//! epoch), both with the full pass over the window (`compute`, the definition) and from a
//! window's running totals (`compute_ring`, what the features operator runs), a feature
//! vector in natural units (done once per scored series, before the model), and writing one
//! forecast record's JSON (done once per record for the Kafka sink).

mod common;

use std::collections::HashMap;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use dataflows::features::{compute, compute_ring, PeriodRing, RingPlan, SeriesState};
use dataflows::{Agg, FeatureSpec};
use stockcast::decode::{self, CsvRow};
use stockcast::records::json::Json;
use stockcast::source::files::FileKind;

fn decode_sale(c: &mut Criterion) {
    let header: HashMap<String, usize> = [
        "event_id",
        "ts",
        "store_id",
        "sku_id",
        "qty",
        "unit_price",
        "promo",
    ]
    .iter()
    .enumerate()
    .map(|(i, h)| (h.to_string(), i))
    .collect();
    let record = csv::StringRecord::from(vec![
        "e1",
        "2024-03-01T10:15:00Z",
        "S001",
        "SKU00042",
        "2",
        "3.49",
        "1",
    ]);
    c.bench_function("decode/sale_csv_row", |b| {
        b.iter(|| {
            let row = CsvRow {
                header: &header,
                record: &record,
            };
            black_box(decode::sale(&row).unwrap())
        })
    });
    // A sale as the worker reads it from Kafka (the value `stockcast load` writes).
    let value = br#"{"event_id":"e1","ts":"2024-03-01T10:15:00Z","store_id":"S001","sku_id":"SKU00042","qty":2,"unit_price":3.49,"promo":true}"#;
    c.bench_function("decode/sale_json_value", |b| {
        b.iter(|| black_box(FileKind::Sales.decode_json(black_box(value)).unwrap()))
    });
    c.bench_function("decode/parse_milli", |b| {
        b.iter(|| black_box(decode::parse_milli("qty", black_box("24924.5")).unwrap()))
    });
}

/// The totals of the period of age `age` in a busy series: two priced sales and a stock
/// movement every period.
fn period_totals(age: i32) -> Agg {
    Agg {
        n: 2,
        qty: 1000 + i64::from(age % 5) * 1000,
        price_sum: 3980,
        price_n: 2,
        on_hand: -1000,
        stock_n: 1,
        ..Agg::default()
    }
}

fn evaluate_features(c: &mut Criterion) {
    for spec in [FeatureSpec::daily(), FeatureSpec::weekly()] {
        let mut st = SeriesState::new(&spec);
        let now = 20_000;
        let name = format!("features/compute_{:?}", spec.period).to_lowercase();
        c.bench_function(&name, |b| {
            b.iter(|| {
                st.clear();
                for age in 0..spec.retention() as i32 {
                    st.add(now, now - age, &period_totals(age));
                }
                black_box(compute(&spec, now, &mut st))
            })
        });
    }
}

fn evaluate_from_running_totals(c: &mut Criterion) {
    for spec in [FeatureSpec::daily(), FeatureSpec::weekly()] {
        let plan = RingPlan::new(&spec);
        let now = 20_000;
        let mut ring = PeriodRing::new(&plan, now);
        let mut st = SeriesState::new(&spec);
        for age in 0..spec.retention() as i32 {
            let agg = period_totals(age);
            ring.add(&plan, now - age, &agg);
            st.stock.on_hand += agg.on_hand;
            st.stock.stock_n += agg.stock_n;
        }
        // As the features operator leaves it: the stock-out mask rebuilt after the adds.
        ring.refresh_stock_levels(st.stock.on_hand);
        let name = format!("features/compute_ring_{:?}", spec.period).to_lowercase();
        c.bench_function(&name, |b| {
            b.iter(|| black_box(compute_ring(&spec, &plan, black_box(&ring), &mut st)))
        });
    }
}

fn natural_units(c: &mut Criterion) {
    for spec in [FeatureSpec::daily(), FeatureSpec::weekly()] {
        let schema = spec.schema();
        // Milli-units with every seventh feature missing.
        let vec = dataflows::FeatureVec::from(
            (0..schema.features.len() as i64)
                .map(|i| {
                    if i % 7 == 3 {
                        dataflows::model::MISSING
                    } else {
                        i * 1_234 - 5_000
                    }
                })
                .collect::<Vec<_>>(),
        );
        let mut out = Vec::with_capacity(schema.features.len());
        let name = format!("model/natural_{:?}", spec.period).to_lowercase();
        c.bench_function(&name, |b| {
            b.iter(|| {
                out.clear();
                stockcast::model::history::natural(&schema, black_box(&vec), &mut out);
                black_box(out.len())
            })
        });
        // Then the network's inputs of that row: its scale, transformed and standardised.
        let norm = stockcast::model::net::Normalisation::for_schema(&schema, spec.period);
        let mut row = Vec::with_capacity(schema.features.len());
        stockcast::model::history::natural(&schema, &vec, &mut row);
        let mut inputs = vec![0f32; norm.width()];
        let name = format!("model/inputs_{:?}", spec.period).to_lowercase();
        c.bench_function(&name, |b| {
            b.iter(|| {
                let row = black_box(&row[..]);
                let s = norm.scale(row);
                norm.inputs(row, s, &mut inputs);
                black_box(inputs[0])
            })
        });
    }
}

fn forecast_json(c: &mut Criterion) {
    let record = common::forecast_record(4242, "2024-03-01T00:00:00Z");
    let mut out = Vec::with_capacity(4096);
    // What the sinks write: the record's own writer.
    c.bench_function("records/forecast_json", |b| {
        b.iter(|| {
            out.clear();
            black_box(&record).write_json(&mut out).unwrap();
            black_box(out.len())
        })
    });
    // The same bytes through serde with the fast number formatter, for comparison.
    c.bench_function("records/forecast_json_serde", |b| {
        b.iter(|| {
            out.clear();
            stockcast::records::json::write(black_box(&record), &mut out).unwrap();
            black_box(out.len())
        })
    });
}

criterion_group!(
    benches,
    decode_sale,
    evaluate_features,
    evaluate_from_running_totals,
    natural_units,
    forecast_json
);
criterion_main!(benches);

//! Criterion micro-benchmarks of the pure hot paths: decoding a sale row, and evaluating one
//! series' features (done once per changed series per epoch).

use std::collections::HashMap;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use dataflows::features::{compute, SeriesState};
use dataflows::{Agg, FeatureSpec};
use stockcast::decode::{self, CsvRow};

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
    c.bench_function("decode/parse_milli", |b| {
        b.iter(|| black_box(decode::parse_milli("qty", black_box("24924.5")).unwrap()))
    });
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
                    let agg = Agg {
                        n: 2,
                        qty: 1000 + i64::from(age % 5) * 1000,
                        price_sum: 3980,
                        price_n: 2,
                        on_hand: -1000,
                        ..Agg::default()
                    };
                    st.add(now, now - age, &agg);
                }
                black_box(compute(&spec, now, &mut st))
            })
        });
    }
}

criterion_group!(benches, decode_sale, evaluate_features);
criterion_main!(benches);

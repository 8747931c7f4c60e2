//! Model benchmark: scoring throughput and per-epoch latency on the scoring threads, and
//! training time on dunnhumby_btf_dev. Prints figures with the machine's load beside them.
//!
//! `cargo bench --bench model` (add `-- --quick` to skip the training run).
//!
//! The scored model is trained here (briefly) on the dunnhumby history; throughput does not
//! depend on the weights, only on the network's shape, which is the shipped default.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use common::{cpu_secs, load, machine_speed_text, peak_rss_kib};
use dataflows::FeatureVec;
use stockcast::config::Config;
use stockcast::model::history::History;
use stockcast::model::scorer::Scorer;
use stockcast::model::train::{self, TrainOptions};

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/dunnhumby_btf_dev");
    let origin = Path::new("<bench>");
    let cfg = Config::parse("[time]\nperiod = \"week\"\n", origin)
        .and_then(|c| c.resolve(origin))
        .expect("weekly config");
    println!("load before: {}; {}", load(), machine_speed_text());
    let started = Instant::now();
    let history = History::load(&cfg, &data, 2).expect("dunnhumby_btf_dev history");
    println!(
        "history: {} series x {} periods snapshotted in {:.1} s",
        history.keys.len(),
        history.snapshots.len(),
        started.elapsed().as_secs_f64()
    );

    let h = cfg.spec.horizon as usize;
    let mut opts = TrainOptions::new(h);
    if quick {
        opts.max_epochs = 2;
        opts.refit = false;
    }
    let (cpu0, t0) = (cpu_secs(), Instant::now());
    let (model, _) = train::train(&history, "dunnhumby_btf_dev", &opts).expect("training");
    let m = &model.manifest;
    println!(
        "training ({}): {:.1} s wall, {:.1} s CPU, {} rows, {} epochs (best {}){}, holdout WAPE {:.4}; load {}",
        if quick { "quick: 2 epochs, no refit" } else { "default settings" },
        t0.elapsed().as_secs_f64(),
        cpu_secs() - cpu0,
        m.trained_on.rows,
        m.training.epochs,
        m.training.best_epoch,
        if opts.refit { " + refit" } else { "" },
        m.validation.wape,
        load()
    );

    // Feature vectors of real series, repeated up to 100k.
    let last = history.snapshots.last().expect("a snapshot");
    let scale: Vec<i64> = history.schema.features.iter().map(|f| f.scale).collect();
    let real: Vec<FeatureVec> = last
        .rows(history.width())
        .map(|(_, row)| {
            FeatureVec(
                row.iter()
                    .zip(&scale)
                    .map(|(v, s)| {
                        if v.is_nan() {
                            dataflows::model::MISSING
                        } else {
                            (f64::from(*v) * *s as f64).round() as i64
                        }
                    })
                    .collect(),
            )
        })
        .collect();
    let vecs: Vec<FeatureVec> = real.iter().cycle().take(100_000).cloned().collect();
    let model: Arc<dyn stockcast::forecast::Forecaster> = Arc::new(model);
    // The baseline that would stand in for the model on a batch it cannot score.
    let schema = cfg.spec.schema();
    let rescue = || {
        let b = stockcast::forecast::baseline(cfg.baseline, &schema, cfg.clock.period_kind(), h)
            .expect("a baseline");
        let counter = prometheus::IntCounter::new("fallbacks", "bench").expect("a counter");
        (Arc::from(b), counter)
    };

    println!("\nthroughput on 2 scoring threads (65,536 series per run, best of 3):");
    println!("| batch | items/s | load |");
    println!("|---|---|---|");
    let refs: Vec<&FeatureVec> = vecs.iter().take(65_536).collect();
    for batch in [256usize, 1024, 4096, 16_384, 65_536] {
        let scorer = Scorer::new(Arc::clone(&model), rescue(), 2, batch);
        let mut best = f64::MAX;
        for _ in 0..3 {
            let t = Instant::now();
            let out = scorer.score(&refs).expect("scored");
            assert_eq!(out.len(), refs.len());
            assert!(out.iter().all(|f| f.fallback.is_none()), "the model scored");
            best = best.min(t.elapsed().as_secs_f64());
        }
        println!("| {batch} | {:.0} | {} |", refs.len() as f64 / best, load());
    }

    println!("\nlatency per epoch (2 threads, batch 4096, median of 5):");
    println!("| changed series | ms | load |");
    println!("|---|---|---|");
    let scorer = Scorer::new(Arc::clone(&model), rescue(), 2, 4096);
    for n in [1_000usize, 10_000, 100_000] {
        let refs: Vec<&FeatureVec> = vecs.iter().take(n).collect();
        let mut times: Vec<f64> = (0..5)
            .map(|_| {
                let t = Instant::now();
                scorer.score(&refs).expect("scored");
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        times.sort_by(f64::total_cmp);
        println!("| {n} | {:.1} | {} |", times[2], load());
    }
    println!("\npeak RSS {} MiB", peak_rss_kib() / 1024);
}

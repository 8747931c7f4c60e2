//! Writes into the PostgreSQL mart: forecast records per second and the worker's CPU seconds,
//! each run into a database of its own. Prints figures with the machine's load.
//!
//! ```text
//! cargo bench --bench mart                              # 10 advances of 20,000 records, 3 runs
//! cargo bench --bench mart -- --records 50000 --advances 4 --runs 5
//! ```
//! The server: `STOCKCAST_TEST_POSTGRES` (default `host=127.0.0.1 user=postgres dbname=postgres`).

mod common;

use std::time::Instant;

use common::{
    arg, cpu_secs, forecast_record as record, load, postgres_admin as admin, postgres_cpu_secs,
};
use stockcast::mart::Mart;
use stockcast::records::{EpochRecord, ForecastRecord};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n = arg(&args, "--records", 20_000);
    let advances = arg(&args, "--advances", 10);
    let runs = arg(&args, "--runs", 3);
    println!("mart writes: {advances} advances of {n} forecast records, {runs} runs");
    let batches: Vec<(Vec<ForecastRecord>, EpochRecord)> = (0..advances)
        .map(|a| {
            let end = format!("2024-03-{:02}T00:00:00Z", 1 + a % 28);
            let records = (0..n).map(|i| record(i, &end)).collect();
            let progress = EpochRecord {
                epoch_end: end,
                frontier: a as u64,
                epochs_closed: 1,
                consumed: Default::default(),
                late: 0,
                dead_letters: 0,
                keys_changed: n as u64,
                keys_superseded: 0,
                keys_scored: n as u64,
                offsets: Default::default(),
                latency_ms: 0,
            };
            (records, progress)
        })
        .collect();
    for run in 0..runs {
        let db = format!("stockcast_bench_mart_{}_{run}", std::process::id());
        admin(&format!("CREATE DATABASE {db}"));
        let url = format!("host=127.0.0.1 user=postgres dbname={db}");
        let mut mart = Mart::connect(&url).expect("connect");
        let load_before = load();
        let cpu0 = cpu_secs();
        let server0 = postgres_cpu_secs();
        let started = Instant::now();
        for (records, progress) in &batches {
            mart.write(records, std::slice::from_ref(progress))
                .expect("write");
        }
        let secs = started.elapsed().as_secs_f64();
        let cpu = cpu_secs() - cpu0;
        let server = match (server0, postgres_cpu_secs()) {
            (Some(before), Some(now)) => format!("; the server {:.2} CPU-s", now - before),
            _ => String::new(),
        };
        drop(mart);
        admin(&format!("DROP DATABASE {db} WITH (FORCE)"));
        println!(
            "  {:.0} records/s ({secs:.2} s; the writer {cpu:.2} CPU-s{server}; load {load_before})",
            (n * advances) as f64 / secs
        );
    }
}

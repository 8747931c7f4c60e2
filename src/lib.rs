//! stockcast: incremental demand features, quantile forecasts and order recommendations for
//! retail (store, SKU) series, as a long-running Kafka worker and as batch commands.
//!
//! # Layout
//! In the order a record meets them (docs/architecture.md has the same map with the path of a
//! record through the worker):
//! - [`config`]: the TOML configuration, environment overrides, validation.
//! - [`source`]: a dataset directory read (`files`), held in memory as the input topics for
//!   the streaming driver (`topics`: replay, `features`), or turned into the dataflow's events
//!   (`prepare`), held or spilled to time buckets on disk (`spill`), for the same driver
//!   (`events`: the training history).
//! - [`decode`]: pure decoding of CSV/JSON records into typed sales, movements, reference data,
//!   and the reasons a record is refused; a JSON object read as borrowed fields (`decode::json`).
//! - [`ids`]: store/SKU names to the stable ids the dataflow uses.
//! - [`pipeline`]: the one driver of the `dataflows` crate's differential dataflow on N timely
//!   workers (`stream`), for every command: it reads an `Input` through `source`, feeds the
//!   dataflow it builds (`dataflow`), keeps watermarks and offsets, cuts checkpoints
//!   (`snapshot`) and shows its progress (`progress`). `stream` is one file per part:
//!   `options`, `worker`, `feeder`, `partition`, `idleness`, `throttle`, `watermarks`,
//!   `beacon`, `outbox`, `merger`, `closed` (docs/architecture.md says what each does), and
//!   `arrival`, tests that a run's output does not depend on when records arrive.
//! - [`kafka`]: the long-running worker on Kafka topics: the broker as the driver's input
//!   (`offsets`: assignment, resume points, committed frontiers), the consumer lag (`lag`),
//!   the publisher (`load`), topic admin (`admin`), client settings and partition ownership
//!   (`client`), the records on the topics (`wire`).
//! - [`checkpoint`]: checkpoints of the worker's state: format, store (`store`), pruning,
//!   restore.
//! - [`forecast`]: the `Forecaster` trait (quantile forecasts) and the baselines (moving
//!   average, naive, seasonal naive).
//! - [`model`]: the demand model (candle): snapshots from the dataflow (`history`), the network
//!   (`net`), training (`train`), backtest (`backtest`), scoring threads (`scorer`), report
//!   charts (`plot`), the `train` and `backtest` commands (`commands`).
//! - [`replenish`]: the order-up-to policy turning a quantile forecast and the stock position
//!   into a recommendation.
//! - [`records`]: the records the worker writes (forecast, progress, dead letter: one type for
//!   file rows and topic records, `records::dead`), and their JSON (`records::json`).
//! - [`output`]: the worker's output path: an advance to its records (`build`, `catch_up`), the
//!   `Sink` trait (`sink`) and its sinks (`postgres`, `redis`, `kafka` with the broker's
//!   answers per delivery in `kafka::acks`, and replay's `files`), the shared `retry`, the
//!   offset `committer`.
//! - [`mart`]: the PostgreSQL inventory mart (its tables in `schema`, partitions, binary COPY).
//! - [`cache`]: the Redis lookup cache.
//! - [`replay`]: the `replay` and `features` commands: files in, forecasts and tables out;
//!   both on the worker's streaming driver (`stream`, `features`), replay through its output
//!   path too.
//! - [`simulate`]: order policies replayed through an inventory model.
//! - [`http`]: `/metrics`, health checks and the read API.
//! - [`metrics`]: the Prometheus metrics, declared once.
//! - [`telemetry`]: logging and Sentry.
//! - [`signals`]: graceful shutdown on SIGINT and SIGTERM.
//! - [`memory`]: the process allocator (mimalloc) and the worker's page policy.
//! - [`display`]: instants as RFC 3339 text, progress bars.
//! - [`demo`]: the embedded default: an in-process Kafka mock cluster fed by the generator.
//! - [`generate`]: the seeded synthetic data generator behind `generate`, the demo and benches.
//! - [`cli`]: the command line.
//!
//! The feature logic itself lives in the `dataflows` crate, which knows nothing of files,
//! threads or the wall clock.

pub mod cache;
pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod decode;
pub mod demo;
pub mod display;
pub mod forecast;
pub mod generate;
pub mod http;
pub mod ids;
pub mod kafka;
pub mod mart;
pub mod memory;
pub mod metrics;
pub mod model;
pub mod output;
pub mod pipeline;
pub mod records;
pub mod replay;
pub mod replenish;
pub mod signals;
pub mod simulate;
pub mod source;
pub mod telemetry;

#[cfg(test)]
mod layout {
    use std::path::{Path, PathBuf};

    /// The `.rs` files under `dir`, recursively.
    fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                sources(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    /// Every module of this crate is named in the layout above, as `name` or `parent::name`, so
    /// that a module added without a word on where it fits fails here.
    #[test]
    fn the_layout_names_every_module() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
        let layout: String = (lib.lines())
            .take_while(|l| l.starts_with("//!"))
            .map(|l| format!("{}\n", &l[3..]))
            .collect();
        let mut files = Vec::new();
        sources(&src, &mut files);
        let mut unnamed = Vec::new();
        for file in files {
            let rel = file.strip_prefix(&src).unwrap().with_extension("");
            let mut parts: Vec<String> = (rel.components())
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if parts.last().is_some_and(|p| p == "mod") {
                parts.pop();
            }
            if parts == ["lib"] || parts == ["main"] {
                continue;
            }
            let name = parts.last().unwrap();
            if !layout.contains(&format!("`{name}`")) && !layout.contains(&format!("::{name}`")) {
                unnamed.push(parts.join("::"));
            }
        }
        assert!(
            unnamed.is_empty(),
            "src/lib.rs's layout does not name {unnamed:?}"
        );
    }
}

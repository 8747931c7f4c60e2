//! stockcast: incremental demand features, forecasts and (later) order recommendations for
//! retail (store, SKU) series.
//!
//! # Layout
//! - [`config`]: the TOML configuration and its resolution into a run's settings.
//! - [`decode`]: pure decoding of CSV/JSON records into typed sales, movements, reference data.
//! - [`source`]: where records come from (`files`: a dataset directory).
//! - [`ids`]: store/SKU names to the stable ids the dataflow uses.
//! - [`pipeline`]: scheduling events onto epochs (watermarks, lateness) and running the
//!   `dataflows` crate's differential dataflow on N timely workers.
//! - [`forecast`]: the `Forecaster` trait (quantile forecasts) and the baselines (moving
//!   average, naive, seasonal naive).
//! - [`replay`]: the `replay` and `features` commands: files in, forecasts and tables out.
//! - [`model`]: the demand model (candle): snapshots from the dataflow, training, backtest,
//!   scoring threads.
//! - [`replenish`]: the order-up-to policy turning a quantile forecast and the stock position
//!   into a recommendation (not yet wired into the outputs; see the replenishment issue).
//! - [`kafka`]: the long-running worker on Kafka topics (`run`), the publisher (`load`), topic
//!   admin, and the delivery guarantee.
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
pub mod metrics;
pub mod model;
pub mod pipeline;
pub mod records;
pub mod replay;
pub mod replenish;
pub mod signals;
pub mod simulate;
pub mod source;
pub mod telemetry;

/// The process allocator of every program built on this library (the worker, its tests and
/// benchmarks): mimalloc. The feature dataflow allocates and frees feature vectors and message
/// buffers at a high rate across worker threads, where glibc's malloc took about a sixth of the
/// feature benchmark's CPU time.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

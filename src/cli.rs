//! The command line: parsing and dispatch. Config (TOML) says what is computed; flags say how
//! this process runs and where data goes.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Parser, Subcommand};
use dataflows::PeriodKind;

use crate::config::{Config, Resolved};
use crate::forecast::Baseline;
use crate::{generate, replay};

/// Incremental retail demand features and forecasts per (store, SKU).
#[derive(Debug, Parser)]
#[command(name = "stockcast", version, about, long_about = None)]
pub struct Cli {
    /// Log as JSON lines instead of human-readable text.
    #[arg(long, global = true, env = "STOCKCAST_LOG_JSON")]
    pub log_json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Settings shared by the commands that run the dataflow.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// TOML config file (see config/stockcast.toml); defaults apply without one.
    #[arg(long, env = "STOCKCAST_CONFIG")]
    pub config: Option<PathBuf>,
    /// Demand period, overriding the config's `time.period`.
    #[arg(long, value_enum, env = "STOCKCAST_PERIOD")]
    pub period: Option<Period>,
    /// Timely worker threads; results are identical for any number.
    #[arg(long, default_value_t = 1, env = "STOCKCAST_WORKERS")]
    pub workers: usize,
}

/// Demand period on the command line.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Period {
    /// UTC calendar days.
    Day,
    /// ISO weeks (Monday to Sunday, UTC).
    Week,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Replay a dataset directory through the feature dataflow as fast as possible, writing
    /// forecasts.jsonl (one line per changed series per epoch), dead_letters.jsonl and
    /// summary.json into the output directory.
    Replay {
        /// Dataset directory (sales/stock/items/stores/promotions as CSV or JSON lines).
        #[arg(long)]
        data: PathBuf,
        /// Output directory (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// Baseline forecaster, overriding the config's `forecast.baseline`.
        #[arg(long, value_enum)]
        forecaster: Option<Baseline>,
        /// How to run.
        #[command(flatten)]
        run: RunArgs,
    },
    /// Write the point-in-time feature table (every series, every feature) computed from exactly
    /// the events with ts <= --as-of, through the same dataflow.
    Features {
        /// Dataset directory.
        #[arg(long)]
        data: PathBuf,
        /// The instant: RFC 3339, or a date (its 00:00:00 UTC).
        #[arg(long)]
        as_of: String,
        /// CSV file to write: store_id, sku_id, then one column per feature.
        #[arg(long)]
        out: PathBuf,
        /// How to run.
        #[command(flatten)]
        run: RunArgs,
    },
    /// Generate a seeded synthetic dataset (sales, stock movements, catalog, stores, promotions).
    Generate {
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// Number of stores.
        #[arg(long, default_value_t = 4)]
        stores: u32,
        /// Number of SKUs per store.
        #[arg(long, default_value_t = 25)]
        skus: u32,
        /// Days of history.
        #[arg(long, default_value_t = 365)]
        days: u32,
        /// First day (YYYY-MM-DD).
        #[arg(long, default_value = "2023-01-02")]
        start: String,
        /// Random seed.
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
    /// The embedded default: generate a small seeded dataset, replay it, print a summary.
    /// Needs no external service.
    Demo {
        /// Working directory for the generated data and the replay output.
        #[arg(long, default_value = "out/demo")]
        out: PathBuf,
        /// Timely worker threads.
        #[arg(long, default_value_t = 2)]
        workers: usize,
    },
    /// Validate a config file and print the effective configuration.
    CheckConfig {
        /// The file.
        file: PathBuf,
    },
}

/// Installs the tracing subscriber (stderr; `RUST_LOG` filters).
pub fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn resolve(args: &RunArgs) -> anyhow::Result<Resolved> {
    let (mut config, origin) = match &args.config {
        Some(path) => (Config::load(path)?, path.clone()),
        None => (Config::default(), PathBuf::from("<defaults>")),
    };
    if let Some(p) = args.period {
        config.time.period = match p {
            Period::Day => PeriodKind::Day,
            Period::Week => PeriodKind::Week,
        };
    }
    Ok(config.resolve(&origin)?)
}

fn parse_instant(text: &str) -> anyhow::Result<i64> {
    crate::decode::parse_time("as_of", text).map_err(|e| anyhow::anyhow!("--as-of: {e}"))
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Replay {
            data,
            out,
            forecaster,
            run,
        } => {
            let mut cfg = resolve(&run)?;
            if let Some(f) = forecaster {
                cfg.baseline = f;
            }
            let summary = replay::replay(
                &cfg,
                &replay::ReplayOptions {
                    data,
                    out: out.clone(),
                    workers: run.workers,
                    progress: std::io::stderr().is_terminal(),
                },
            )?;
            tracing::info!(
                epochs = summary.epochs,
                keys = summary.keys,
                late = summary.late_events,
                dead_letters = summary.dead_letters.values().sum::<u64>(),
                wall_secs = format!("{:.2}", summary.wall_secs),
                events_per_sec = format!("{:.0}", summary.events_per_sec),
                out = %out.display(),
                "replay done"
            );
        }
        Command::Features {
            data,
            as_of,
            out,
            run,
        } => {
            let cfg = resolve(&run)?;
            let t = parse_instant(&as_of)?;
            let table = replay::feature_table(&cfg, &data, t, &out, run.workers)?;
            tracing::info!(rows = table.rows, as_of = %table.as_of, schema = %table.schema_hash, out = %out.display(), "feature table written");
        }
        Command::Generate {
            out,
            stores,
            skus,
            days,
            start,
            seed,
        } => {
            let start = parse_instant(&start).context("--start")?;
            let params = generate::Params {
                stores,
                skus,
                days,
                start,
                seed,
                store_offset: 0,
            };
            let n = generate::generate_to_dir(&params, &out)
                .with_context(|| format!("writing {}", out.display()))?;
            tracing::info!(events = n, out = %out.display(), "dataset generated");
        }
        Command::Demo { out, workers } => demo(&out, workers)?,
        Command::CheckConfig { file } => {
            let config = Config::load(&file)?;
            config.resolve(&file)?;
            print!("{}", toml::to_string_pretty(&config)?);
        }
    }
    Ok(())
}

fn demo(out: &Path, workers: usize) -> anyhow::Result<()> {
    let data = out.join("data");
    let params = generate::Params::default();
    println!(
        "generating {} stores x {} SKUs x {} days (seed {}) into {}",
        params.stores,
        params.skus,
        params.days,
        params.seed,
        data.display()
    );
    generate::generate_to_dir(&params, &data)
        .with_context(|| format!("writing {}", data.display()))?;
    let cfg = Config::default().resolve(Path::new("<defaults>"))?;
    let replay_out = out.join("replay");
    let s = replay::replay(
        &cfg,
        &replay::ReplayOptions {
            data,
            out: replay_out.clone(),
            workers,
            progress: std::io::stderr().is_terminal(),
        },
    )?;
    println!(
        "\nreplayed with {} workers in {:.2} s ({:.0} records/s)",
        workers, s.wall_secs, s.events_per_sec
    );
    for (kind, n) in &s.events_read {
        println!("  {kind:<11} {n:>9}");
    }
    println!(
        "epochs closed {}, series {}, forecasts written {} (mean {:.1}, max {} per epoch)",
        s.epochs,
        s.keys,
        s.keys_scored_per_epoch.total,
        s.keys_scored_per_epoch.mean,
        s.keys_scored_per_epoch.max
    );
    println!(
        "late events {}, dead letters {:?}",
        s.late_events, s.dead_letters
    );
    print_top(
        &replay_out.join("forecasts.jsonl"),
        s.last_epoch_end.as_deref(),
    )?;
    println!("\noutputs in {}", replay_out.display());
    Ok(())
}

/// Prints the series with the largest forecast demand as of the last epoch each was scored.
fn print_top(path: &Path, last: Option<&str>) -> anyhow::Result<()> {
    use std::collections::HashMap;
    use std::io::BufRead;
    let file = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut latest: HashMap<(String, String), serde_json::Value> = HashMap::new();
    for line in std::io::BufReader::new(file).lines() {
        let v: serde_json::Value = serde_json::from_str(&line?)?;
        let key = (
            v["store_id"].as_str().unwrap_or_default().to_string(),
            v["sku_id"].as_str().unwrap_or_default().to_string(),
        );
        latest.insert(key, v);
    }
    let mut rows: Vec<(f64, &(String, String), &serde_json::Value)> = latest
        .iter()
        .map(|(k, v)| {
            let total: f64 = v["forecast"]
                .as_array()
                .map(|a| a.iter().filter_map(|x| x.as_f64()).sum())
                .unwrap_or(0.0);
            (total, k, v)
        })
        .collect();
    rows.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(b.1)));
    println!(
        "\ntop series by forecast demand, next 28 days, as of {}:",
        last.unwrap_or("-")
    );
    println!(
        "  {:<6} {:<9} {:>10} {:>9} {:>9}",
        "store", "sku", "forecast", "on_hand", "on_order"
    );
    for (total, (store, sku), v) in rows.iter().take(10) {
        println!(
            "  {:<6} {:<9} {:>10.1} {:>9} {:>9}",
            store,
            sku,
            total,
            v["on_hand"]
                .as_f64()
                .map_or("-".into(), |x| format!("{x:.0}")),
            v["on_order"]
                .as_f64()
                .map_or("-".into(), |x| format!("{x:.0}"))
        );
    }
    Ok(())
}

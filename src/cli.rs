//! The command line: parsing and dispatch. Config (TOML) says what is computed; flags say how
//! this process runs and where data goes.
//!
//! Longer than 600 lines: every command's flags and their dispatch, one function per command, so
//! the command line reads in one place.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
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

/// Training settings shared by `train` and `backtest`.
#[derive(Debug, Clone, Args)]
pub struct TrainArgs {
    /// Seed of initialisation and shuffling: the same seed and data give the same model.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Most training epochs (early stopping usually ends sooner).
    #[arg(long, default_value_t = 40)]
    pub max_epochs: usize,
    /// Loss weight of target periods that ended out of stock (censored demand); 0 masks them,
    /// 1 treats their sales as demand.
    #[arg(long, default_value_t = 0.0)]
    pub censored_weight: f32,
    /// Keep the early-stopped network instead of retraining on training and holdout rows.
    #[arg(long)]
    pub no_refit: bool,
    /// Rows per gradient step.
    #[arg(long, default_value_t = 512)]
    pub batch_size: usize,
    /// Decay of the moving average of the weights that is evaluated and kept, in [0, 1);
    /// 0 keeps the last step's weights.
    #[arg(long, default_value_t = 0.999, value_parser = weight_average)]
    pub weight_average: f64,
}

fn weight_average(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(d) if (0.0..1.0).contains(&d) => Ok(d),
        Ok(d) => Err(format!("{d} is not in [0, 1)")),
        Err(e) => Err(e.to_string()),
    }
}

impl TrainArgs {
    /// Training options for a horizon.
    pub fn options(&self, horizon: usize) -> crate::model::train::TrainOptions {
        let mut o = crate::model::train::TrainOptions::new(horizon);
        o.seed = self.seed;
        o.max_epochs = self.max_epochs;
        o.censored_weight = self.censored_weight;
        o.refit = !self.no_refit;
        o.batch_size = self.batch_size.max(1);
        o.weight_average = self.weight_average;
        o.progress = std::io::stderr().is_terminal();
        o.log_epochs = !o.progress;
        o
    }
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
        /// Model directory written by `train`, overriding the config's `forecast.model_dir`.
        #[arg(long, env = "STOCKCAST_MODEL")]
        model: Option<PathBuf>,
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
    /// The long-running worker: read the input topics, maintain the features, publish forecasts
    /// of the changed series and one progress record per advance of the closed epochs.
    Run {
        /// Kafka bootstrap servers, overriding `kafka.brokers`.
        #[arg(long, env = "STOCKCAST_KAFKA_BROKERS")]
        brokers: Option<String>,
        /// Once every partition has been idle for `kafka.idle_timeout_secs`, apply everything
        /// read, publish, commit and exit (backfills and batch runs) instead of closing epochs
        /// on the wall clock.
        #[arg(long)]
        exit_when_idle: bool,
        /// Ignore the checkpoints in `[checkpoint] dir` and rebuild the state from the topics
        /// (new checkpoints are still written there).
        #[arg(long)]
        from_scratch: bool,
        /// Baseline forecaster, overriding the config's `forecast.baseline`.
        #[arg(long, value_enum)]
        forecaster: Option<Baseline>,
        /// Model directory written by `train`, overriding the config's `forecast.model_dir`.
        #[arg(long, env = "STOCKCAST_MODEL")]
        model: Option<PathBuf>,
        /// Address of the HTTP server (metrics, health, read API), overriding `http.listen`;
        /// "" turns it off.
        #[arg(long, env = "STOCKCAST_LISTEN")]
        listen: Option<String>,
        /// Join a timely cluster: a file listing every process's `host:port`, one per line, in
        /// process order. Each process runs `--workers` threads and reads its workers' share of
        /// the partitions and scores and writes the series its workers hold; process 0 writes the
        /// progress records and commits offsets once every process acknowledged its part.
        #[arg(long, env = "STOCKCAST_HOSTS", requires = "process")]
        hosts: Option<PathBuf>,
        /// This process's index in the `--hosts` file, from 0.
        #[arg(long, env = "STOCKCAST_PROCESS", requires = "hosts")]
        process: Option<usize>,
        /// How to run.
        #[command(flatten)]
        run: RunArgs,
    },
    /// Publish a dataset directory (the layout `replay` reads) into the input topics, creating
    /// missing topics: reference data first, then events in time order, keyed store_id:sku_id.
    Load {
        /// Dataset directory.
        #[arg(long)]
        data: PathBuf,
        /// Records per second at most (default: as fast as the broker acknowledges).
        #[arg(long)]
        rate: Option<f64>,
        /// Partitions of the topics created.
        #[arg(long, default_value_t = 4)]
        partitions: i32,
        /// Kafka bootstrap servers, overriding `kafka.brokers`.
        #[arg(long, env = "STOCKCAST_KAFKA_BROKERS")]
        brokers: Option<String>,
        /// TOML config file (for `[kafka]`).
        #[arg(long, env = "STOCKCAST_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Train the demand model on a dataset's history: replay it through the feature dataflow,
    /// snapshot every series' features at each period end, learn the next `horizon` periods'
    /// demand. Writes MODEL_DIR/model.safetensors, manifest.json and a training report.
    Train {
        /// Dataset directory.
        #[arg(long)]
        data: PathBuf,
        /// Model directory to write (created).
        #[arg(long)]
        out: PathBuf,
        /// Periods forecast; overrides the config's `features.horizon` (and so the schema).
        #[arg(long)]
        horizon: Option<u32>,
        /// Use demand only up to this date (RFC 3339 or a date): its period is the last one read.
        #[arg(long)]
        until: Option<String>,
        /// Most (series, period) rows of features held for training. A larger history keeps an
        /// even random share of them (its demand is kept whole, as the targets); memory grows
        /// by about 8 bytes per feature per row.
        #[arg(long, default_value_t = 1_000_000)]
        max_rows: usize,
        /// How to train.
        #[command(flatten)]
        train: TrainArgs,
        /// How to run.
        #[command(flatten)]
        run: RunArgs,
    },
    /// Rolling-origin backtest: at each of the last N origins, H periods apart, train on the
    /// data up to the origin (or load --model), forecast H periods for every series and compare
    /// with what happened, next to the baselines. Writes report.md, metrics.json and charts.
    Backtest {
        /// Dataset directory.
        #[arg(long)]
        data: PathBuf,
        /// Periods forecast at each origin; overrides the config's `features.horizon`.
        #[arg(long)]
        horizon: Option<u32>,
        /// Number of origins.
        #[arg(long, default_value_t = 3)]
        origins: usize,
        /// Report directory (created).
        #[arg(long)]
        out: PathBuf,
        /// Evaluate this model directory at every origin instead of training per origin.
        #[arg(long)]
        model: Option<PathBuf>,
        /// How to train.
        #[command(flatten)]
        train: TrainArgs,
        /// How to run.
        #[command(flatten)]
        run: RunArgs,
    },
    /// Replay the history through an inventory model: orders by stockcast's recommendation (a
    /// model trained on the periods before, swept over service levels) and by the buyer's
    /// moving-average rule (swept over safety factors). Writes summary.json, report.md and
    /// tradeoff.png.
    Simulate {
        /// Dataset directory.
        #[arg(long)]
        data: PathBuf,
        /// Policies to simulate (comma-separated); the headline needs both.
        #[arg(long, value_enum, value_delimiter = ',', default_values_t = [crate::simulate::PolicyKind::Stockcast, crate::simulate::PolicyKind::Ma])]
        policy: Vec<crate::simulate::PolicyKind>,
        /// Report directory (created).
        #[arg(long)]
        out: PathBuf,
        /// Periods simulated, ending with the data's last (default 26 weeks or 182 days).
        #[arg(long)]
        periods: Option<usize>,
        /// Service levels of the stockcast sweep (comma-separated).
        #[arg(long, value_delimiter = ',')]
        service_levels: Option<Vec<f64>>,
        /// Safety factors of the baseline sweep (comma-separated).
        #[arg(long, value_delimiter = ',')]
        safety_factors: Option<Vec<f64>>,
        /// Use this model directory instead of training one on the periods before.
        #[arg(long)]
        model: Option<PathBuf>,
        /// How to train.
        #[command(flatten)]
        train: TrainArgs,
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
    /// The embedded default: start an in-process Kafka cluster, stream a seeded generated
    /// dataset into it day by day, run the worker against it through the same Kafka code as
    /// `run`, and print a summary. Needs no external service.
    Demo {
        /// Timely worker threads.
        #[arg(long, default_value_t = 2)]
        workers: usize,
        /// Days of generated history.
        #[arg(long, default_value_t = 365)]
        days: u32,
        /// After the data, keep the cluster and the worker running (producers can connect to
        /// the printed address) and serve HTTP (metrics, health, the read API) until Ctrl-C,
        /// then print the summary.
        #[arg(long)]
        serve: bool,
        /// Address of the HTTP server with `--serve`.
        #[arg(long, default_value = "127.0.0.1:9898")]
        listen: String,
    },
    /// Show the checkpoints of a checkpoint directory (`[checkpoint] dir`).
    Checkpoint {
        /// What to show.
        #[command(subcommand)]
        what: CheckpointCommand,
    },
    /// Validate a config file and print the effective configuration.
    CheckConfig {
        /// The file.
        file: PathBuf,
    },
}

/// `stockcast checkpoint ...`.
#[derive(Debug, Subcommand)]
pub enum CheckpointCommand {
    /// Every checkpoint, newest first: status, epoch, series, size, when written.
    List {
        /// The checkpoint directory.
        dir: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One checkpoint in detail (the newest complete one unless named): its settings, offsets
    /// per partition, parts.
    Inspect {
        /// The checkpoint directory.
        dir: PathBuf,
        /// The checkpoint's name (as `list` shows it).
        #[arg(long)]
        name: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

fn checkpoint_command(what: CheckpointCommand) -> anyhow::Result<()> {
    use crate::checkpoint::{list, DirStore};
    match what {
        CheckpointCommand::List { dir, json } => {
            anyhow::ensure!(
                dir.is_dir(),
                "checkpoint directory {} does not exist",
                dir.display()
            );
            let all = list(&DirStore::new(&dir))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&all)?);
                return Ok(());
            }
            println!(
                "{:<30} {:<10} {:>12} {:<20} {:>10} {:>12} {:>8}  written",
                "name", "status", "epoch", "epoch start", "series", "bytes", "workers"
            );
            for l in &all {
                let m = l.manifest.as_ref();
                println!(
                    "{:<30} {:<10} {:>12} {:<20} {:>10} {:>12} {:>8}  {}",
                    l.name,
                    l.status,
                    m.map(|m| m.epoch)
                        .or(l.epoch)
                        .map_or("-".into(), |e| e.to_string()),
                    m.map_or("-", |m| m.epoch_start.as_str()),
                    m.map_or("-".into(), |m| m.series().to_string()),
                    l.bytes,
                    m.map_or("-".into(), |m| m.workers.to_string()),
                    m.map_or_else(
                        || l.problem.clone().unwrap_or_default(),
                        |m| format!("{} ({})", m.created_at, m.reason)
                    ),
                );
            }
        }
        CheckpointCommand::Inspect { dir, name, json } => {
            anyhow::ensure!(
                dir.is_dir(),
                "checkpoint directory {} does not exist",
                dir.display()
            );
            let all = list(&DirStore::new(&dir))?;
            let chosen = match &name {
                Some(n) => all.iter().find(|l| &l.name == n),
                None => all.iter().find(|l| l.status == "complete"),
            };
            let Some(l) = chosen else {
                anyhow::bail!(
                    "{} in {}",
                    name.map_or("no complete checkpoint".to_string(), |n| format!(
                        "no checkpoint `{n}`"
                    )),
                    dir.display()
                );
            };
            if json {
                println!("{}", serde_json::to_string_pretty(l)?);
                return Ok(());
            }
            println!("checkpoint {} ({})", l.name, l.status);
            if let Some(p) = &l.problem {
                println!("problem: {p}");
            }
            let Some(m) = &l.manifest else {
                return Ok(());
            };
            println!(
                "epoch {} (starts {}), reason {}",
                m.epoch, m.epoch_start, m.reason
            );
            println!(
                "written {}, {} bytes, {} series",
                m.created_at,
                m.bytes(),
                m.series()
            );
            println!(
                "taken by {} workers in {} processes",
                m.workers, m.processes
            );
            let s = &m.settings;
            println!(
                "settings: period {}, epoch {} s, retention {} periods, schema {}, keys {}",
                s.period, s.epoch_secs, s.retention_periods, s.schema_hash, s.key_partitioning
            );
            println!("offsets (reading resumes at; next offset at the cut):");
            for o in &m.offsets {
                println!(
                    "  {}/{}: {} ({})",
                    o.topic, o.partition, o.resume_offset, o.next_offset
                );
            }
            println!("files:");
            for f in m.parts.iter().chain(&m.latest) {
                println!(
                    "  {} {} bytes, {} items, crc32 {:08x}",
                    f.file, f.bytes, f.items, f.crc32
                );
            }
        }
    }
    Ok(())
}

/// `run` once its config is resolved: joins the cluster if asked, serves HTTP, runs the worker.
fn worker_command(
    cfg: &Resolved,
    hosts: Option<PathBuf>,
    process: Option<usize>,
    workers: usize,
    exit_when_idle: bool,
    from_scratch: bool,
    listen: Option<String>,
) -> anyhow::Result<()> {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    crate::signals::stop_on_signals(stop.clone()).context("installing signal handlers")?;
    let cluster = match (hosts, process) {
        (Some(file), Some(process)) => Some(
            crate::pipeline::stream::Cluster::from_file(&file, process)
                .map_err(anyhow::Error::msg)?,
        ),
        _ => None,
    };
    if let Some(c) = &cluster {
        crate::signals::exit_on_peer_loss();
        tracing::info!(
            process = c.process,
            processes = c.hosts.len(),
            workers_per_process = workers,
            "joining the timely cluster"
        );
    }
    let opts = crate::pipeline::stream::StreamOptions {
        cluster,
        progress: Default::default(),
        workers,
        exit_when_idle,
        drain_through: None,
        stop,
        wall_clock: crate::pipeline::stream::system_clock(),
        from_scratch,
    };
    let listen = listen.unwrap_or_else(|| cfg.http.listen.clone());
    let _server = if listen.is_empty() {
        None
    } else {
        // In a cluster the other processes' series are read from the shared cache.
        let cache = if cfg.redis.url.is_empty() {
            None
        } else {
            let reader = crate::cache::CacheReader::new(&cfg.redis.url, &cfg.redis.key_prefix);
            Some(reader.context("redis.url")?)
        };
        let server = crate::http::serve(
            &listen,
            std::sync::Arc::clone(&opts.progress),
            cfg.http.stall_secs,
            cache,
        )
        .with_context(|| format!("serving HTTP on {listen}"))?;
        Some(server)
    };
    let r = crate::kafka::run_worker(cfg, &opts)?;
    let s = &r.stats;
    tracing::info!(
        epochs = s.epochs,
        forecasts = s.forecasts,
        progress_records = s.progress_records,
        offset_commits = s.offset_commits,
        consumed = ?s.consumed,
        late = s.late,
        dead_letters = ?s.dead_letters,
        last_epoch_end = s.last_epoch_end.as_deref().unwrap_or("-"),
        secs = format!("{:.2}", r.secs),
        "worker stopped"
    );
    Ok(())
}

/// The config file (or the defaults) with the environment's overrides.
fn load_config(path: Option<&PathBuf>) -> anyhow::Result<(Config, PathBuf)> {
    let (config, origin) = match path {
        Some(path) => (Config::load(path)?, path.clone()),
        None => (Config::default(), PathBuf::from("<defaults>")),
    };
    let (config, applied) = config.with_env(std::env::vars())?;
    if applied.is_empty() {
        return Ok((config, origin));
    }
    tracing::info!(variables = ?applied, "config overridden by the environment");
    let origin = PathBuf::from(format!("{} + {}", origin.display(), applied.join(", ")));
    Ok((config, origin))
}

fn resolve(args: &RunArgs) -> anyhow::Result<Resolved> {
    let (mut config, origin) = load_config(args.config.as_ref())?;
    if let Some(p) = args.period {
        config.time.period = match p {
            Period::Day => PeriodKind::Day,
            Period::Week => PeriodKind::Week,
        };
    }
    Ok(config.resolve(&origin)?)
}

/// [`resolve`], then `--horizon` over `forecast.horizon_periods` (it changes the schema).
fn resolve_with_horizon(args: &RunArgs, horizon: Option<u32>) -> anyhow::Result<Resolved> {
    let mut cfg = resolve(args)?;
    if let Some(h) = horizon {
        cfg.spec.horizon = h;
        cfg.spec.validate().context("--horizon")?;
    }
    Ok(cfg)
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
            model,
            run,
        } => {
            let mut cfg = resolve(&run)?;
            if let Some(f) = forecaster {
                cfg.baseline = f;
            }
            if model.is_some() {
                cfg.model.dir = model;
            }
            let opts = replay::ReplayOptions {
                data,
                out: out.clone(),
                workers: run.workers,
                progress: std::io::stderr().is_terminal(),
            };
            let summary = replay::replay(&cfg, &opts)?;
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
        Command::Train {
            data,
            out,
            horizon,
            until,
            max_rows,
            train,
            run,
        } => {
            let cfg = resolve_with_horizon(&run, horizon)?;
            let mut opts = train.options(cfg.spec.horizon as usize);
            if let Some(u) = until {
                let t = crate::decode::parse_time("until", &u)
                    .map_err(|e| anyhow::anyhow!("--until: {e}"))?;
                opts.cutoff = Some(cfg.clock.period_of(t));
            }
            let summary =
                crate::model::commands::train(&cfg, &data, &out, &opts, max_rows, run.workers)?;
            tracing::info!(
                model = %out.display(),
                version = summary.version,
                rows = summary.rows,
                secs = format!("{:.1}", summary.secs),
                holdout_wape = format!("{:.4}", summary.validation.wape),
                holdout_pinball90 = format!("{:.4}", summary.validation.pinball90),
                "model trained"
            );
            for (name, m) in &summary.baselines {
                tracing::info!(
                    baseline = name,
                    holdout_wape = format!("{:.4}", m.wape),
                    holdout_pinball90 = format!("{:.4}", m.pinball90),
                    "baseline on the same holdout"
                );
            }
        }
        Command::Backtest {
            data,
            horizon,
            origins,
            out,
            model,
            train,
            run,
        } => {
            let cfg = resolve_with_horizon(&run, horizon)?;
            let h = cfg.spec.horizon as usize;
            let opts = crate::model::backtest::BacktestOptions {
                horizon: h,
                origins,
                train: train.options(h),
                model,
                censoring_ablation: true,
            };
            let bt = crate::model::commands::backtest(&cfg, &data, &out, &opts, run.workers)?;
            for (name, acc) in &bt.results {
                let s = acc.scores();
                println!(
                    "{name:<30} WAPE {:.4}  MASE {:.4}  bias {:+.4}  pinball50 {:.4}  pinball90 {:.4}  coverage90 {:.3}",
                    s.wape, s.mase, s.bias, s.pinball50, s.pinball90, s.coverage90
                );
            }
            tracing::info!(out = %out.display(), "backtest report written");
        }
        Command::Simulate {
            data,
            policy,
            out,
            periods,
            service_levels,
            safety_factors,
            model,
            train,
            run,
        } => {
            let cfg = resolve_with_horizon(&run, None)?;
            let h = cfg.spec.horizon as usize;
            let mut opts = crate::simulate::SimOptions::new(cfg.clock.period_kind(), h);
            opts.policies = policy;
            opts.train = train.options(h);
            opts.model = model;
            if let Some(p) = periods {
                opts.periods = p;
            }
            if let Some(v) = service_levels {
                anyhow::ensure!(
                    v.iter().all(|l| *l > 0.0 && *l < 1.0),
                    "--service-levels: each must be strictly between 0 and 1"
                );
                opts.service_levels = v;
            }
            if let Some(v) = safety_factors {
                anyhow::ensure!(
                    v.iter().all(|f| *f > 0.0 && f.is_finite()),
                    "--safety-factors: each must be positive"
                );
                opts.safety_factors = v;
            }
            let summary = crate::simulate::simulate(&cfg, &data, &opts, run.workers)?;
            crate::simulate::write_report(&summary, &out)?;
            for o in &summary.outcomes {
                println!(
                    "{:<10} {:>6}  avg inventory {:>10.2}  stock-out periods {:>7} ({:.4})  fill rate {:.4}",
                    o.policy, o.setting, o.avg_inventory, o.stockout_periods, o.stockout_rate, o.fill_rate
                );
            }
            match summary.stockout_reduction_at_equal_inventory {
                Some(r) => println!(
                    "stock-out reduction at equal inventory (service level {}): {:.1}%",
                    summary.headline_service_level,
                    100.0 * r
                ),
                None => println!(
                    "no matched comparison at service level {}",
                    summary.headline_service_level
                ),
            }
            tracing::info!(out = %out.display(), "simulation report written");
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
        Command::Run {
            brokers,
            exit_when_idle,
            from_scratch,
            forecaster,
            model,
            listen,
            hosts,
            process,
            run,
        } => {
            let mut cfg = resolve(&run)?;
            if let Some(b) = brokers {
                cfg.kafka.brokers = b;
            }
            if let Some(f) = forecaster {
                cfg.baseline = f;
            }
            if model.is_some() {
                cfg.model.dir = model;
            }
            // Reports flush when this guard drops, after the worker's last words.
            let _sentry = crate::telemetry::start_sentry(&cfg.sentry);
            worker_command(
                &cfg,
                hosts,
                process,
                run.workers,
                exit_when_idle,
                from_scratch,
                listen,
            )
            .inspect_err(|e| tracing::error!(error = format!("{e:#}"), "the worker failed"))?;
        }
        Command::Load {
            data,
            rate,
            partitions,
            brokers,
            config,
        } => {
            let (config, origin) = load_config(config.as_ref())?;
            let resolved = config.resolve(&origin)?;
            let period = resolved.clock.period_kind();
            let mut kafka = resolved.kafka;
            if let Some(b) = brokers {
                kafka.brokers = b;
            }
            let r = crate::kafka::load::load(
                &kafka,
                &crate::kafka::load::LoadOptions {
                    data,
                    rate,
                    partitions,
                    progress: std::io::stderr().is_terminal(),
                    period,
                },
            )?;
            for d in &r.rejected {
                tracing::warn!(at = %d.source, reason = %d.reason, detail = %d.detail, "row not published");
            }
            tracing::info!(published = ?r.published, rejected = r.rejected.len(), secs = format!("{:.2}", r.secs), records_per_sec = format!("{:.0}", r.records_per_sec), "load done");
        }
        Command::Demo {
            workers,
            days,
            serve,
            listen,
        } => crate::demo::run(&crate::demo::DemoOptions {
            workers,
            serve,
            listen,
            params: generate::Params {
                days,
                ..generate::Params::default()
            },
            ..crate::demo::DemoOptions::default()
        })?,
        Command::Checkpoint { what } => checkpoint_command(what)?,
        Command::CheckConfig { file } => {
            let (mut config, origin) = load_config(Some(&file))?;
            config.resolve(&origin)?;
            config.postgres.url = config.postgres.masked();
            config.redis.url = crate::config::mask_password(&config.redis.url);
            config.sentry.dsn = config.sentry.masked();
            config.kafka.client = config.kafka.masked_client();
            print!("{}", toml::to_string_pretty(&config)?);
        }
    }
    Ok(())
}

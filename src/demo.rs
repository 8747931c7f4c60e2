//! `demo`: the embedded default. Trains a small demand model on the seeded generator's history
//! (holding its last horizon out to compare it with the moving-average baseline), starts
//! librdkafka's in-process mock cluster, streams the same data into it day by day (a live stream
//! over simulated time, with its price plan first and two deliberately broken records), runs the
//! worker against it through the same Kafka code as `run`, scoring with that model, and prints a
//! summary. Needs no external service.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use dataflows::time::DAY_SECS;
use dataflows::StockKind;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

use crate::config::{Config, Resolved};
use crate::decode::{CatalogItem, Movement, PromotionRec, Record, Sale, Store};
use crate::generate::{self, Generator, Item, Params, Promo};
use crate::kafka::{self, admin, load, Acks};
use crate::pipeline::stream;

/// Options of the demo.
pub struct DemoOptions {
    /// Timely workers.
    pub workers: usize,
    /// Partitions per topic.
    pub partitions: i32,
    /// Generator parameters.
    pub params: Params,
    /// Wall-clock pause between two simulated days.
    pub day_pause: Duration,
    /// Keep running after the data until SIGINT/SIGTERM, serving HTTP (metrics, health and the
    /// read API) on `listen`.
    pub serve: bool,
    /// Where `serve` listens.
    pub listen: String,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            workers: 2,
            partitions: 4,
            params: Params::default(),
            day_pause: Duration::from_millis(10),
            serve: false,
            listen: crate::config::HttpConfig::default().listen,
        }
    }
}

/// Feeds generated records to a producer.
struct Publisher<'a> {
    producer: &'a BaseProducer<Acks>,
    kafka: &'a crate::config::KafkaConfig,
    error: Option<load::LoadError>,
    sent: u64,
}

impl Publisher<'_> {
    fn send(&mut self, record: Record) {
        if self.error.is_some() {
            return;
        }
        let topic = load::topic_of(self.kafka, &record);
        match load::send(self.producer, topic, &record) {
            Ok(()) => self.sent += 1,
            Err(e) => self.error = Some(e),
        }
    }
}

impl generate::Sink for Publisher<'_> {
    fn reference(&mut self, items: &[Item], promos: &[Promo], params: &Params) {
        for it in items {
            self.send(Record::Catalog(CatalogItem {
                sku_id: generate::sku_name(it.sku),
                category: Some(it.category.to_string()),
                pack_size: Some(i64::from(it.pack_size) * 1000),
                lead_time_days: Some(i64::from(it.lead_time_days)),
                min_order_qty: Some(i64::from(it.pack_size) * 1000),
                active: true,
            }));
        }
        for s in params.store_offset..params.store_offset + params.stores {
            self.send(Record::Store(Store {
                store_id: generate::store_name(s),
                region: Some(format!("R{}", s % 3)),
                active: true,
            }));
        }
        let day = |d: u32| params.start + i64::from(d) * DAY_SECS;
        for p in promos {
            self.send(Record::Promotion(PromotionRec {
                promo_id: format!("P{:05}", p.id),
                store_id: p.store.map(generate::store_name),
                sku_id: generate::sku_name(p.sku),
                start: day(p.first_day),
                end: day(p.last_day) + DAY_SECS - 1,
                discount_pct: Some(i64::from(p.discount_pct) * 1000),
            }));
        }
    }

    fn sale(&mut self, ts: i64, store: u32, sku: u32, qty: i32, price_cents: u32, promo: bool) {
        self.send(Record::Sale(Sale {
            event_id: None,
            ts,
            store_id: generate::store_name(store),
            sku_id: generate::sku_name(sku),
            qty: i64::from(qty) * 1000,
            unit_price: Some(i64::from(price_cents) * 10),
            promo,
        }));
    }

    fn movement(&mut self, ts: i64, store: u32, sku: u32, kind: StockKind, qty: i32) {
        self.send(Record::Movement(Movement {
            event_id: None,
            ts,
            store_id: generate::store_name(store),
            sku_id: generate::sku_name(sku),
            kind,
            qty: i64::from(qty) * 1000,
        }));
    }
}

/// The model the demo trained, and how it did on its holdout.
struct DemoModel {
    /// Where it was saved.
    dir: std::path::PathBuf,
    /// Its name and version.
    name: String,
    version: String,
    /// Rows it was trained on, and the seconds the history and the training took.
    rows: usize,
    secs: f64,
    /// WAPE and pinball90 of the model and of the moving average on the holdout.
    model_scores: crate::model::backtest::Scores,
    baseline_scores: crate::model::backtest::Scores,
    /// The holdout's days.
    holdout: usize,
}

/// Trains the demo's model on the generated dataset in `data` (everything but the last horizon),
/// saves it under `data/model`, and scores it and the moving average on that last horizon.
/// `None` when the history is too short to train on (under three horizons).
fn train_model(
    cfg: &Resolved,
    data: &std::path::Path,
    dataset: crate::source::files::Dataset,
    workers: usize,
) -> anyhow::Result<Option<DemoModel>> {
    use crate::model::{backtest, history::History, train};
    let started = Instant::now();
    let history = History::from_dataset(cfg, dataset, None, workers)
        .context("replaying the generated history")?;
    let h = cfg.spec.horizon as usize;
    let last = history.snapshots.len().saturating_sub(1);
    if last <= 3 * h {
        return Ok(None);
    }
    let mut opts = train::TrainOptions::new(h);
    opts.name = "stockcast-demo".into();
    opts.hidden = vec![64, 32];
    opts.max_epochs = 12;
    opts.cutoff = Some(history.snapshots[last - h].period);
    let (model, _) = train::train(&history, "generated", &opts)?;
    let dir = data.join("model");
    model.save(&dir)?;
    let bt = backtest::run(
        &history,
        "generated",
        &backtest::BacktestOptions {
            horizon: h,
            origins: 1,
            train: opts,
            model: Some(dir.clone()),
            censoring_ablation: false,
        },
    )?;
    let scores = |name: &str| {
        bt.results
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| a.scores())
            .with_context(|| format!("the backtest has no {name} result"))
    };
    Ok(Some(DemoModel {
        dir,
        name: model.manifest.name.clone(),
        version: model.manifest.version.clone(),
        rows: model.manifest.trained_on.rows,
        secs: started.elapsed().as_secs_f64(),
        model_scores: scores("stockcast")?,
        baseline_scores: scores("ma")?,
        holdout: h,
    }))
}

/// Runs the demo and prints its summary to stdout.
pub fn run(opts: &DemoOptions) -> anyhow::Result<()> {
    let cluster = MockCluster::new(1).context("starting the in-process Kafka mock cluster")?;
    let mut cfg: Resolved = Config::default().resolve(std::path::Path::new("<defaults>"))?;
    cfg.kafka.brokers = cluster.bootstrap_servers();
    cfg.kafka.group_id = "stockcast-demo".into();
    // Long enough that a loaded machine starving the publisher for a moment does not make a
    // partition idle mid-stream (its next records would then be late); short enough for a demo.
    cfg.kafka.idle_timeout_secs = 5;
    // The demo compresses a year into seconds, so one advance closes many epochs that a live
    // worker would close one at a time (where both catch-up settings publish the same records).
    // Publishing every epoch shows what the live worker would have written.
    cfg.output.catch_up = crate::config::CatchUp::EveryEpoch;
    for (topic, _) in admin::all_topics(&cfg.kafka) {
        cluster
            .create_topic(&topic, opts.partitions, 1)
            .with_context(|| format!("creating topic {topic}"))?;
    }
    let p = &opts.params;

    // The chain's history: the same generated data the stream replays, written as a dataset.
    let data = tempfile::tempdir().context("creating a temporary directory")?;
    generate::generate_to_dir(p, data.path()).context("generating the demo's dataset")?;
    // The price plan the history implies (a retailer's is known ahead): published first, as
    // `load` does, so the worker sees the features the model was trained on.
    let dataset =
        crate::source::files::load(data.path()).context("reading the generated dataset")?;
    let plan: Vec<Record> =
        crate::source::prepare::derived_reference(&dataset, cfg.clock.period_kind())
            .into_iter()
            .map(|(r, _)| r)
            .collect();
    match train_model(&cfg, data.path(), dataset, opts.workers)? {
        Some(model) => {
            println!(
                "model {} {} trained in {:.1} s on {} rows of the generated history (days 1-{})\n\
         on the {} held-out days it scored WAPE {:.3} / pinball90 {:.3}; \
         the {}-day moving average WAPE {:.3} / pinball90 {:.3}",
                model.name,
                model.version,
                model.secs,
                model.rows,
                p.days as usize - model.holdout,
                model.holdout,
                model.model_scores.wape,
                model.model_scores.pinball90,
                cfg.spec.horizon,
                model.baseline_scores.wape,
                model.baseline_scores.pinball90,
            );
            cfg.model.dir = Some(model.dir.clone());
        }
        None => println!(
            "{} days are too few to train a model on (at least {} are needed): the {}-day moving \
             average forecasts",
            p.days,
            3 * cfg.spec.horizon + 2,
            cfg.spec.horizon
        ),
    }

    println!(
        "in-process Kafka cluster at {}: {} topics x {} partitions",
        cfg.kafka.brokers,
        admin::all_topics(&cfg.kafka).len(),
        opts.partitions
    );
    println!(
        "streaming {} stores x {} SKUs x {} days of generated data (seed {}) day by day, plus 2 broken records",
        p.stores, p.skus, p.days, p.seed
    );

    // Simulated wall clock: the start of the data while it streams, its end afterwards. Epochs
    // close on it when every partition is idle, as they would on the wall clock in production.
    let sim_now = Arc::new(AtomicI64::new(p.start));
    let stop = Arc::new(AtomicBool::new(false));
    let progress: Arc<stream::Progress> = Arc::default();
    let _server = if opts.serve {
        crate::signals::stop_on_signals(Arc::clone(&stop)).context("installing signal handlers")?;
        let server = crate::http::serve(
            &opts.listen,
            Arc::clone(&progress),
            cfg.http.stall_secs,
            None,
        )
        .with_context(|| format!("serving HTTP on {}", opts.listen))?;
        println!(
            "serving: produce to {} (topics stockcast.*); http://{}/v1/recommendations?limit=10, \
             /v1/forecasts/S000/SKU00014, /metrics; Ctrl-C stops and prints the summary",
            cfg.kafka.brokers, server.addr
        );
        Some(server)
    } else {
        None
    };
    let started = Instant::now();
    let publisher = {
        let kafka = cfg.kafka.clone();
        let params = p.clone();
        let sim_now = Arc::clone(&sim_now);
        let pause = opts.day_pause;
        std::thread::spawn(move || -> Result<u64, load::LoadError> {
            let producer = load::producer(&kafka)?;
            let mut out = Publisher {
                producer: &producer,
                kafka: &kafka,
                error: None,
                sent: 0,
            };
            let mut generator = Generator::new(&params);
            generate::Sink::reference(&mut out, generator.items(), generator.promos(), &params);
            for record in plan {
                out.send(record);
            }
            let mut day = 0i64;
            while generator.next_day(&mut out) {
                day += 1;
                if day == 30 {
                    // Two records a real feed might carry: cut-off JSON and a NaN quantity.
                    for bad in [
                        &br#"{"ts":"2023-02-01T09:00:00Z","store_id":"S000","sku_id":"#[..],
                        &br#"{"ts":"2023-02-01T09:00:00Z","store_id":"S000","sku_id":"SKU00000","qty":"NaN"}"#[..],
                    ] {
                        let _ = producer.send(
                            BaseRecord::to(&kafka.topics.sales)
                                .key("S000:SKU00000")
                                .payload(bad),
                        );
                    }
                }
                producer.poll(Duration::ZERO);
                std::thread::sleep(pause);
                if let Some(e) = out.error.take() {
                    return Err(e);
                }
            }
            producer
                .flush(Duration::from_secs(60))
                .map_err(|e| load::LoadError::Kafka(e.to_string()))?;
            producer.context().check().map_err(load::LoadError::Kafka)?;
            // Only now does the simulated wall clock reach the end of the data: simulated days
            // pass thousands of times faster than real ones, so a clock that followed them
            // would close epochs before their events could be read.
            sim_now.store(params.start + day * DAY_SECS, Ordering::SeqCst);
            Ok(out.sent)
        })
    };
    let clock = Arc::clone(&sim_now);
    let run = kafka::run_worker(
        &cfg,
        &stream::StreamOptions {
            cluster: None,
            progress,
            workers: opts.workers,
            exit_when_idle: !opts.serve,
            drain_through: None,
            stop: Arc::clone(&stop),
            wall_clock: Arc::new(move || clock.load(Ordering::SeqCst)),
            from_scratch: false,
        },
    );
    let published = publisher
        .join()
        .map_err(|_| anyhow::anyhow!("the demo publisher panicked"))??;
    let run = run?;
    let s = &run.stats;
    println!(
        "\nworker: {} timely workers, {:.2} s wall clock, {} records published",
        opts.workers,
        started.elapsed().as_secs_f64(),
        published
    );
    println!("consumed per topic:");
    for (kind, n) in &s.consumed {
        println!("  {kind:<11} {n:>9}");
    }
    println!(
        "epochs closed {} (last ends {}), progress records {}, forecast records {} (catch_up = \"{}\")",
        s.epochs,
        s.last_epoch_end.as_deref().unwrap_or("-"),
        s.progress_records,
        s.forecasts,
        cfg.output.catch_up.name()
    );
    println!("late events {}, dead letters {:?}", s.late, s.dead_letters);
    let mut scored_by: std::collections::BTreeMap<String, usize> = Default::default();
    for r in run.latest.values() {
        *scored_by
            .entry(format!("{} {}", r.model, r.model_version))
            .or_default() += 1;
    }
    println!("latest forecast of each series scored by: {scored_by:?}");
    print_top(&run.latest, s.last_epoch_end.as_deref(), cfg.spec.horizon);
    // Some of the worker's clients close on threads of their own after the run (the offset
    // committer is never joined, since a commit can block on an unreachable coordinator).
    // Tearing the cluster down under them makes librdkafka log every broker as down; the
    // process ends right after this, so the cluster is left for the exit to release.
    std::mem::forget(cluster);
    Ok(())
}

/// Prints the series with the largest forecast demand as of the last epoch each was scored.
pub fn print_top(latest: &crate::records::Latest, last: Option<&str>, horizon: u32) {
    let mut rows: Vec<(f64, &crate::records::ForecastRecord)> = latest
        .values()
        .map(|r| (r.forecast.iter().sum(), r))
        .collect();
    rows.sort_by(|a, b| {
        b.0.total_cmp(&a.0)
            .then_with(|| (&a.1.store_id, &a.1.sku_id).cmp(&(&b.1.store_id, &b.1.sku_id)))
    });
    println!(
        "\ntop series by forecast demand, next {horizon} periods, as of {}:",
        last.unwrap_or("-")
    );
    println!(
        "  {:<6} {:<9} {:>10} {:>9} {:>9} {:>9} {:>12} {:>6}",
        "store", "sku", "forecast", "on_hand", "on_order", "order", "order_up_to", "risk"
    );
    let num = |x: Option<f64>| x.map_or("-".into(), |x| format!("{x:.0}"));
    for (total, r) in rows.iter().take(10) {
        let a = &r.recommendation;
        println!(
            "  {:<6} {:<9} {:>10.1} {:>9} {:>9} {:>9} {:>12.0} {:>6}",
            r.store_id,
            r.sku_id,
            total,
            num(r.on_hand),
            num(r.on_order),
            num(a.order_qty),
            a.order_up_to,
            a.stockout_risk
                .map_or("-".into(), |p| format!("{:.0}%", 100.0 * p))
        );
    }
}

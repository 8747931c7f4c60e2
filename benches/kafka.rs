//! End-to-end throughput from a Kafka broker on this machine; prints figures with the machine's
//! load rather than timing assertions.
//!
//! ```text
//! scripts/kafka-broker.sh start
//! cargo bench --bench kafka                                   # 10,000 series x 28 days
//! cargo bench --bench kafka -- --stores 40 --skus 250 --days 28 --partitions 4 --workers 2
//! cargo bench --bench kafka -- --checkpoint-every 96 --checkpoint-interval 0
//! cargo bench --bench kafka -- --catch-up latest --model models/daily
//! cargo bench --bench kafka -- --stores 400 --skus 500 --days 2 --processes 1,2
//! cargo bench --bench kafka -- --mart --mart-connections 1
//! ```
//! With `--mart` the worker writes to a PostgreSQL mart as well as to Kafka (a database of the
//! run's own on `STOCKCAST_TEST_POSTGRES`'s server, dropped at the end; in-process runs only),
//! over `--mart-connections N` connections (default `[postgres] connections`'s), and prints the
//! server's CPU seconds when it runs on this machine.
//! With `--processes 1,2` the worker runs as that many `stockcast run` processes of one worker
//! each (a timely cluster on loopback) instead of in this process, once per count, each under a
//! group of its own; it prints the forecast records every process wrote per second of the
//! cluster's wall time, and the processes' CPU seconds; then, from the records' timestamps, the
//! rate while they were being written and the cores the processes and the broker kept busy
//! meanwhile. With many series and few days this is the output-heavy case: every day rollover
//! re-scores every daily series.
//! The worker runs once per `[output] catch_up` setting (`--catch-up latest|every_epoch|both`,
//! default both), each under a group of its own over the same topics; `--model DIR` scores
//! with a trained model instead of the baseline, `--scoring-batch N` sets
//! `forecast.scoring_batch`, `--max-held-series N` sets `[output] max_held_series`, and `--client KEY=VALUE` (repeatable) adds a `[kafka.client]`
//! property (librdkafka's) for every client of the run, to compare client settings.
//! In process it also prints where the output path's time went: each sink's writes
//! (`stockcast_sink_write_seconds`), the wait for the scoring threads, and how long the workers
//! stopped reading because the output path was behind (`stockcast_input_paused_seconds_total`),
//! and the most changed series the process held at once.
//! Beside the worker's CPU seconds it prints the broker's, when the broker is the one
//! `scripts/kafka-broker.sh` started on this machine (it shares the cores).
//! With `--checkpoint-every N`, the worker checkpoints into a temporary directory at every N-th
//! epoch (and at least `--checkpoint-interval` seconds apart, default 0), and a second run on
//! the same topics restores the last checkpoint and drains: its time is a restart's, against
//! the first run's rebuild from the topics.
//! The generator's dataset is loaded into fresh topics first (the produce rate is printed too;
//! the topics are deleted when the bench ends, so the test broker does not keep them);
//! then the worker (`run --exit-when-idle`) reads it all, publishes every forecast and progress
//! record, commits, and stops once every partition has been idle for one second. Events per
//! second count from the worker's start to the last partition going quiet (the idle second and
//! the final drain are excluded from the rate but shown).

mod common;

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use common::{
    arg, broker_cpu_secs, children_cpu_secs, cpu_secs, load, machine_speed_text, pid_cpu_secs,
    postgres_admin, postgres_cpu_secs, text_arg,
};
use stockcast::config::{CatchUp, Config};
use stockcast::generate::{self, Params};
use stockcast::kafka::{self, load as publish};
use stockcast::pipeline::stream;

/// Deletes the run's topics when dropped (see [`kafka::admin::delete_topics`]).
struct DeleteTopics(stockcast::config::KafkaConfig);

impl Drop for DeleteTopics {
    fn drop(&mut self) {
        if let Err(e) = kafka::admin::delete_topics(&self.0) {
            eprintln!("could not delete the run's topics: {e}");
        }
    }
}

fn main() {
    // As the worker's main does (see the functions' notes).
    stockcast::model::scorer::serial_kernels();
    let huge_pages = if stockcast::memory::no_transparent_huge_pages() {
        "off"
    } else {
        "as the system and MIMALLOC_ALLOW_THP say"
    };
    let args: Vec<String> = std::env::args().collect();
    if std::env::var_os("RUST_LOG").is_some() {
        // The worker's logs, when asked for (e.g. RUST_LOG=stockcast=info).
        stockcast::telemetry::init_tracing(false);
    }
    let stores = arg(&args, "--stores", 40u32);
    let skus = arg(&args, "--skus", 250u32);
    let days = arg(&args, "--days", 28u32);
    let partitions = arg(&args, "--partitions", 4i32);
    let workers = arg(&args, "--workers", 2usize);
    let checkpoint_every = arg(&args, "--checkpoint-every", 0u64);
    let checkpoint_interval = arg(&args, "--checkpoint-interval", 0u64);
    let modes = match text_arg(&args, "--catch-up").as_deref() {
        None | Some("both") => vec![CatchUp::Latest, CatchUp::EveryEpoch],
        Some("latest") => vec![CatchUp::Latest],
        Some("every_epoch") => vec![CatchUp::EveryEpoch],
        Some(other) => {
            eprintln!("--catch-up {other}: expected latest, every_epoch or both");
            std::process::exit(2);
        }
    };
    let brokers =
        std::env::var("STOCKCAST_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into());
    if std::net::TcpStream::connect(brokers.split(',').next().unwrap_or_default()).is_err() {
        eprintln!("no broker at {brokers}: run scripts/kafka-broker.sh start first");
        std::process::exit(2);
    }

    let tmp = tempfile::tempdir().expect("temp dir");
    let params = Params {
        stores,
        skus,
        days,
        ..Params::default()
    };
    let events = generate::generate_to_dir(&params, tmp.path()).expect("generate");
    let nonce = std::process::id();
    let text = format!(
        "[kafka]\nbrokers = \"{brokers}\"\ngroup_id = \"bench-{nonce}\"\nidle_timeout_secs = 1\n"
    );
    let mut config = Config::parse(&text, Path::new("<bench>")).expect("config");
    config.kafka.topics.prefix_all(&format!("bench-{nonce}."));
    let ck = tempfile::tempdir().expect("temp dir");
    if checkpoint_every > 0 {
        config.checkpoint.dir = ck.path().display().to_string();
        config.checkpoint.every_epochs = checkpoint_every;
        config.checkpoint.min_interval_secs = checkpoint_interval;
    }
    if let Some(model) = text_arg(&args, "--model") {
        config.forecast.model_dir = Some(model.into());
    }
    if let Some(n) = text_arg(&args, "--max-held-series") {
        config.output.max_held_series = n.parse().expect("--max-held-series: a number");
    }
    if let Some(n) = text_arg(&args, "--scoring-batch") {
        config.forecast.scoring_batch = Some(n.parse().expect("--scoring-batch: a number"));
    }
    for (i, _) in args.iter().enumerate().filter(|(_, a)| *a == "--client") {
        let Some((k, v)) = args.get(i + 1).and_then(|kv| kv.split_once('=')) else {
            eprintln!("--client: expected KEY=VALUE");
            std::process::exit(2);
        };
        config.kafka.client.insert(k.into(), v.into());
    }
    let mart = args.iter().any(|a| a == "--mart");
    let cfg = config.resolve(Path::new("<bench>")).expect("config");
    // The run's topics go when it ends, however it ends.
    let _topics = DeleteTopics(cfg.kafka.clone());

    println!(
        "kafka end to end: {} series ({stores} stores x {skus} SKUs), {days} days, {events} events, {partitions} partitions, {workers} workers; transparent huge pages {huge_pages}",
        stores * skus
    );
    let loaded = publish::load(
        &cfg.kafka,
        &publish::LoadOptions {
            data: tmp.path().to_path_buf(),
            rate: None,
            partitions,
            progress: false,
            period: dataflows::PeriodKind::Day,
        },
    )
    .expect("load");
    println!(
        "produce (stockcast load): {:.0} records/s ({:.2} s)",
        loaded.records_per_sec, loaded.secs
    );

    let options = || stream::StreamOptions {
        cluster: None,
        progress: Default::default(),
        workers,
        exit_when_idle: true,
        drain_through: None,
        stop: Arc::new(AtomicBool::new(false)),
        wall_clock: stream::system_clock(),
        from_scratch: false,
    };
    if let Some(counts) = text_arg(&args, "--processes") {
        for (run_no, n) in counts.split(',').filter_map(|n| n.parse().ok()).enumerate() {
            for mode in &modes {
                let mut cfg = cfg.clone();
                cfg.output.catch_up = *mode;
                cfg.kafka.group_id =
                    format!("{}-p{n}-{run_no}-{}", cfg.kafka.group_id, mode.name());
                cluster_run(&cfg, n);
            }
        }
        println!("load after: {}; {}", load(), machine_speed_text());
        return;
    }
    let mut first = None;
    for (run_no, mode) in modes.iter().enumerate() {
        let mut cfg = cfg.clone();
        cfg.output.catch_up = *mode;
        // Each setting reads the topics from the start, under a group of its own.
        cfg.kafka.group_id = format!("{}-{run_no}", cfg.kafka.group_id);
        // With --mart, the forecasts go to a PostgreSQL mart too, in a database of the run's own.
        let db = mart.then(|| format!("stockcast_bench_kafka_{nonce}_{run_no}"));
        if let Some(db) = &db {
            postgres_admin(&format!("CREATE DATABASE {db}"));
            cfg.postgres.url = format!("host=127.0.0.1 user=postgres dbname={db}");
            cfg.postgres.connections = arg(&args, "--mart-connections", cfg.postgres.connections);
        }
        println!(
            "catch_up = \"{}\", load before: {}; {}",
            mode.name(),
            load(),
            machine_speed_text()
        );
        let cpu0 = cpu_secs();
        let broker0 = broker_cpu_secs();
        let postgres0 = db.as_ref().and_then(|_| postgres_cpu_secs());
        let started = Instant::now();
        let opts = options();
        let progress = Arc::clone(&opts.progress);
        let run = kafka::run_worker(&cfg, &opts).expect("worker");
        let wall = started.elapsed().as_secs_f64();
        let cpu = cpu_secs() - cpu0;
        let consumed: u64 = run.stats.consumed.values().sum();
        // The last second of quiet is the idle timeout, not work.
        let busy = (wall - cfg.kafka.idle_timeout_secs as f64).max(1e-9);
        println!(
            "  {consumed} records consumed, {} forecast records ({} superseded) and {} progress records written in {} advances, {} epochs",
            run.stats.forecasts,
            progress.metrics.forecasts_superseded.get(),
            run.stats.progress_records,
            run.stats.advances,
            run.stats.epochs
        );
        let dead: u64 = run.stats.dead_letters.values().sum();
        println!(
            "  {} events applied late, {dead} dead letters",
            run.stats.late
        );
        println!(
            "  wall {wall:.2} s (of which {} s idle timeout), CPU {cpu:.2} s{}{}",
            cfg.kafka.idle_timeout_secs,
            broker_share(broker0),
            match (postgres0, postgres_cpu_secs()) {
                (Some(before), Some(now)) => format!(", PostgreSQL's CPU {:.2} s", now - before),
                _ => String::new(),
            }
        );
        println!(
            "  catch_up = \"{}\": consumed {:.0} events/s, wrote {:.0} forecast records/s, {:.0} events per CPU-s",
            mode.name(),
            consumed as f64 / busy,
            run.stats.forecasts as f64 / busy,
            consumed as f64 / cpu.max(1e-9)
        );
        println!(
            "  {}; held at most {} changed series",
            stage_seconds(&progress.metrics),
            progress.held_series_peak()
        );
        if let Some(db) = &db {
            postgres_admin(&format!("DROP DATABASE {db} WITH (FORCE)"));
            // The checkpoint restart below writes to Kafka only.
            cfg.postgres.url.clear();
        }
        first.get_or_insert((cfg, progress, busy));
    }
    let (cfg, progress, busy) = first.expect("one catch-up setting");
    if checkpoint_every > 0 {
        let m = &progress.metrics;
        let export = m.checkpoint_export_seconds.get_sample_sum();
        println!(
            "  checkpoints: {} written (every {checkpoint_every} epochs, >= {checkpoint_interval} s apart), \
             the last {} bytes; export stall {export:.2} s in all ({:.1}% of the busy wall time)",
            m.checkpoints_written.get(),
            m.checkpoint_bytes.get(),
            100.0 * export / busy
        );
        // A restart on the same topics: restore the last checkpoint, find nothing new, drain.
        let started = Instant::now();
        let opts = options();
        let progress = Arc::clone(&opts.progress);
        kafka::run_worker(&cfg, &opts).expect("restart");
        let restart =
            (started.elapsed().as_secs_f64() - cfg.kafka.idle_timeout_secs as f64).max(1e-9);
        println!(
            "  restart from the checkpoint: {restart:.2} s (idle timeout excluded; {} restore), \
             against {busy:.2} s to build the state from the topics: {:.1}x",
            progress.metrics.checkpoint_restores.get(),
            busy / restart
        );
    }
    println!("load after: {}; {}", load(), machine_speed_text());
}

/// Where the output path's time went: each sink's writes, the wait for the scoring threads,
/// and how long the workers stopped reading for the output path.
fn stage_seconds(m: &stockcast::metrics::Metrics) -> String {
    let sinks: Vec<String> = ["postgres", "redis", "kafka"]
        .iter()
        .filter_map(|sink| {
            let h = m
                .sink_write_seconds
                .get_metric_with_label_values(&[sink])
                .ok()?;
            (h.get_sample_count() > 0).then(|| {
                format!(
                    "{sink} {:.2} s in {} writes",
                    h.get_sample_sum(),
                    h.get_sample_count()
                )
            })
        })
        .collect();
    format!(
        "output path: sinks' writes {}; waited for scoring {:.2} s; input held back {:.2} worker-s",
        sinks.join(", "),
        m.scoring_seconds.get_sample_sum(),
        m.input_paused_seconds.get()
    )
}

/// Runs the worker as `processes` processes of one worker each, until every partition is idle;
/// prints what they wrote and the CPU they took.
fn cluster_run(cfg: &stockcast::config::Resolved, processes: usize) {
    let dir = tempfile::tempdir().expect("temp dir");
    let t = &cfg.kafka.topics;
    let file = dir.path().join("stockcast.toml");
    let text = format!(
        "[output]\ncatch_up = \"{}\"\n[http]\nlisten = \"\"\n[kafka]\nbrokers = \"{}\"\ngroup_id = \"{}\"\nidle_timeout_secs = {}\n\
         [kafka.topics]\nsales = \"{}\"\nstock = \"{}\"\ncatalog = \"{}\"\nstores = \"{}\"\npromotions = \"{}\"\nprices = \"{}\"\n\
         forecasts = \"{}\"\nepochs = \"{}\"\ndead_letters = \"{}\"\n",
        cfg.output.catch_up.name(),
        cfg.kafka.brokers, cfg.kafka.group_id, cfg.kafka.idle_timeout_secs, t.sales, t.stock,
        t.catalog, t.stores, t.promotions, t.prices, t.forecasts, t.epochs, t.dead_letters
    );
    let client = toml::to_string(&cfg.kafka.client).expect("[kafka.client] as TOML");
    let text = format!("{text}[kafka.client]\n{client}");
    std::fs::write(&file, text).expect("config file");
    let hosts = dir.path().join("hosts");
    let ports: Vec<u16> = (0..processes)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("port"))
        .collect::<Vec<_>>()
        .iter()
        .map(|l| l.local_addr().expect("port").port())
        .collect();
    let list: String = ports.iter().map(|p| format!("127.0.0.1:{p}\n")).collect();
    std::fs::write(&hosts, list).expect("hosts file");
    println!(
        "{processes} process(es) x 1 worker, catch_up = \"{}\", load before: {}; {}",
        cfg.output.catch_up.name(),
        load(),
        machine_speed_text()
    );
    let cpu0 = children_cpu_secs();
    let broker0 = broker_cpu_secs();
    let since = std::time::SystemTime::now();
    let started = Instant::now();
    let logs: Vec<std::path::PathBuf> = (0..processes)
        .map(|p| dir.path().join(format!("process-{p}.log")))
        .collect();
    let mut children: Vec<std::process::Child> = (0..processes)
        .map(|p| {
            let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_stockcast"));
            c.args(["run", "--workers", "1", "--exit-when-idle", "--config"])
                .arg(&file);
            if processes > 1 {
                c.arg("--hosts")
                    .arg(&hosts)
                    .args(["--process", &p.to_string()]);
            }
            c.stderr(std::fs::File::create(&logs[p]).expect("log file"))
                .spawn()
                .expect("stockcast run")
        })
        .collect();
    // The processes' and the broker's CPU seconds, sampled while they run (for the cores they
    // kept busy while writing, below).
    let mut samples: Vec<CpuSample> = Vec::new();
    let mut last_cpu: Vec<f64> = vec![0.0; processes];
    let mut running = processes;
    while running > 0 {
        running = 0;
        for (p, c) in children.iter_mut().enumerate() {
            match c.try_wait().expect("wait") {
                Some(status) => assert!(status.success(), "a process failed: {status:?}"),
                None => {
                    running += 1;
                    if let Some(secs) = pid_cpu_secs(c.id()) {
                        last_cpu[p] = secs;
                    }
                }
            }
        }
        samples.push(CpuSample {
            at_ms: unix_ms(std::time::SystemTime::now()),
            workers: last_cpu.iter().sum(),
            broker: broker_cpu_secs().unwrap_or(f64::NAN),
        });
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let wall = started.elapsed().as_secs_f64();
    let cpu = children_cpu_secs() - cpu0;
    let written: Vec<u64> = logs
        .iter()
        .map(|l| {
            let text = std::fs::read_to_string(l).unwrap_or_default();
            let field = " forecasts=";
            text.rfind(field)
                .map(|at| {
                    let rest = &text[at + field.len()..];
                    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                    digits.parse().unwrap_or(0)
                })
                .unwrap_or(0)
        })
        .collect();
    let total: u64 = written.iter().sum();
    // Each process's last line: what it consumed, wrote, dead-lettered and applied late.
    for (p, log) in logs.iter().enumerate() {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let last = text.lines().rev().find(|l| l.contains("worker stopped"));
        let fields = last
            .and_then(|l| l.split_once("worker stopped"))
            .map_or("", |(_, f)| f);
        println!("  process {p}:{fields}");
    }
    let busy = (wall - cfg.kafka.idle_timeout_secs as f64).max(1e-9);
    println!(
        "  forecast records written per process: {written:?}; wall {wall:.2} s ({} s idle timeout), CPU {cpu:.2} s (all processes){}",
        cfg.kafka.idle_timeout_secs,
        broker_share(broker0)
    );
    println!(
        "  {processes} process(es): {:.0} forecast records/s in all, {:.0} per process",
        total as f64 / busy,
        total as f64 / busy / processes as f64
    );
    let (stamped, first, last) = stamped_span(cfg, since);
    let span = (last - first) as f64 / 1000.0;
    let cores = |of: fn(&CpuSample) -> f64| {
        let at = |ms: i64| {
            samples
                .iter()
                .rev()
                .find(|s| s.at_ms <= ms)
                .or(samples.first())
                .map_or(f64::NAN, of)
        };
        (at(last) - at(first)) / span.max(1e-9)
    };
    println!(
        "  {processes} process(es) while writing: {stamped} forecast records stamped over {span:.2} s, \
         {:.0} records/s; meanwhile the processes kept {:.2} cores busy and the broker {:.2}",
        stamped as f64 / span.max(1e-9),
        cores(|s| s.workers),
        cores(|s| s.broker),
    );
}

/// The CPU seconds a cluster run's processes and the broker had taken at a moment.
struct CpuSample {
    at_ms: i64,
    workers: f64,
    broker: f64,
}

fn unix_ms(t: std::time::SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
}

/// How many records of the forecasts topic were stamped at or after `since`, and the first and
/// last stamps (Unix milliseconds). The producer stamps a record when the worker hands it
/// over, so this is the rate of the output path alone: without the start, where event time
/// waits for the reference data to be read, and without the idle timeout at the end. Earlier
/// runs of the bench wrote to the same topic, before `since`.
fn stamped_span(
    cfg: &stockcast::config::Resolved,
    since: std::time::SystemTime,
) -> (u64, i64, i64) {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{Message, Offset, TopicPartitionList};
    use std::time::Duration;

    let since_ms = unix_ms(since);
    let topic = &cfg.kafka.topics.forecasts;
    let consumer: BaseConsumer = kafka::client::client_config(&cfg.kafka)
        .set("group.id", format!("{}-stamps", cfg.kafka.group_id))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    // From offset 0, not the broker's earliest: see tests/support/kafka.rs on tansu's.
    let mut tpl = TopicPartitionList::new();
    for p in md.topics()[0].partitions() {
        tpl.add_partition_offset(topic, p.id(), Offset::Offset(0))
            .expect("partition");
    }
    consumer.assign(&tpl).expect("assign");
    let (mut count, mut first, mut last) = (0u64, i64::MAX, i64::MIN);
    // Until nothing came for a second: the topic was complete before this started.
    let mut quiet = Instant::now();
    while quiet.elapsed() < Duration::from_secs(1) {
        let Some(m) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        quiet = Instant::now();
        let Some(ts) = m.expect("record").timestamp().to_millis() else {
            continue;
        };
        if ts >= since_ms {
            count += 1;
            first = first.min(ts);
            last = last.max(ts);
        }
    }
    if count == 0 {
        return (0, 0, 0);
    }
    (count, first, last)
}

/// The CPU the test broker took since `before` (its [`broker_cpu_secs`] then), for the line
/// that gives the worker's: it runs on the same cores.
fn broker_share(before: Option<f64>) -> String {
    match (before, broker_cpu_secs()) {
        (Some(before), Some(now)) => format!(", the broker's CPU {:.2} s", now - before),
        _ => String::new(),
    }
}

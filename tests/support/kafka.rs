//! Kafka helpers shared by the integration tests that run the worker against the broker.

#![allow(dead_code)]

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use stockcast::config::{Config, KafkaConfig, Resolved};
use stockcast::kafka::{load, stream};

/// The broker the tests use (`STOCKCAST_KAFKA_BROKERS`, default 127.0.0.1:9092); fails with
/// what to do when none listens.
pub fn brokers() -> String {
    let b = std::env::var("STOCKCAST_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let first = b.split(',').next().unwrap_or_default().to_string();
    assert!(
        std::net::TcpStream::connect(&first).is_ok(),
        "no Kafka broker at {first}: start one with `scripts/kafka-broker.sh start` (scripts/test.sh does)"
    );
    b
}

/// A name part no other test run uses: process id and milliseconds, joined by `sep`.
pub fn nonce(sep: char) -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    format!("{}{sep}{ms}", std::process::id())
}

/// A config whose topics and group are this test's own.
pub fn config(test: &str, period: &str) -> Resolved {
    let nonce = nonce('-');
    let text = format!(
        "[time]\nperiod = \"{period}\"\n[kafka]\nbrokers = \"{}\"\ngroup_id = \"{test}-{nonce}\"\nidle_timeout_secs = 5\n[http]\nlisten = \"\"\n",
        brokers()
    );
    let mut cfg = Config::parse(&text, Path::new("<test>")).unwrap();
    cfg.kafka.topics.prefix_all(&format!("{test}-{nonce}."));
    cfg.resolve(Path::new("<test>")).unwrap()
}

/// Writes `cfg`'s Kafka settings and topics, then `extra` (more TOML), into `dir/stockcast.toml`
/// for a worker started as a process.
pub fn config_file(cfg: &Resolved, dir: &Path, extra: &str) -> std::path::PathBuf {
    let file = dir.join("stockcast.toml");
    let t = &cfg.kafka.topics;
    std::fs::write(
        &file,
        format!(
            "[kafka]\nbrokers = \"{}\"\ngroup_id = \"{}\"\nidle_timeout_secs = {}\n[kafka.topics]\nsales = \"{}\"\nstock = \"{}\"\ncatalog = \"{}\"\nstores = \"{}\"\npromotions = \"{}\"\nforecasts = \"{}\"\nepochs = \"{}\"\ndead_letters = \"{}\"\n{extra}",
            cfg.kafka.brokers, cfg.kafka.group_id, cfg.kafka.idle_timeout_secs, t.sales, t.stock,
            t.catalog, t.stores, t.promotions, t.forecasts, t.epochs, t.dead_letters
        ),
    )
    .unwrap();
    file
}

/// Options of a worker run that drains and exits once every partition is idle.
pub fn options(workers: usize) -> stream::StreamOptions {
    stream::StreamOptions {
        cluster: None,
        progress: Default::default(),
        workers,
        exit_when_idle: true,
        stop: Arc::new(AtomicBool::new(false)),
        wall_clock: stream::system_clock(),
    }
}

/// Publishes a dataset directory as fast as the broker takes it.
pub fn load_dir(kafka: &KafkaConfig, dir: &Path, partitions: i32) -> load::LoadReport {
    load::load(
        kafka,
        &load::LoadOptions {
            data: dir.to_path_buf(),
            rate: None,
            partitions,
            progress: false,
        },
    )
    .unwrap()
}

/// A small generated dataset (2 stores x 4 SKUs x 60 days, with stock movements) published
/// into `kafka`'s topics; keep the directory alive as long as needed.
pub fn load_generated(kafka: &KafkaConfig) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let params = stockcast::generate::Params {
        stores: 2,
        skus: 4,
        days: 60,
        ..Default::default()
    };
    stockcast::generate::generate_to_dir(&params, tmp.path()).unwrap();
    load_dir(kafka, tmp.path(), 2);
    tmp
}

/// Runs a worker on `cfg` whose sink `sink` is unreachable for its first 8 s: `bring_up`
/// makes it reachable then. Checks that the failures showed in readiness and the metrics, and
/// returns the run and its live state.
pub fn run_with_sink_down_for_8s<T>(
    cfg: &Resolved,
    sink: &str,
    bring_up: impl FnOnce() -> T,
) -> (stockcast::kafka::WorkerRun, Arc<stream::Progress>, T) {
    use std::sync::atomic::Ordering;
    use std::time::{Duration, Instant};
    let opts = options(2);
    let progress = Arc::clone(&opts.progress);
    let worker = {
        let cfg = cfg.clone();
        std::thread::spawn(move || stockcast::kafka::run_worker(&cfg, &opts).unwrap())
    };
    let up_at = Instant::now() + Duration::from_secs(8);
    let mut saw_unready = false;
    while Instant::now() < up_at {
        saw_unready |= !progress.sink_ok.load(Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(100));
    }
    let up = bring_up();
    let run = worker.join().unwrap();
    assert!(saw_unready, "the failed writes showed in readiness");
    let m = &progress.metrics;
    assert!(m.sink_failures.with_label_values(&[sink]).get() > 0);
    assert!(m.sink_retries.with_label_values(&[sink]).get() > 0);
    (run, progress, up)
}

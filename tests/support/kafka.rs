//! Kafka helpers shared by the integration tests that run the worker against the broker.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use stockcast::config::{Config, KafkaConfig, Resolved};
use stockcast::kafka::{load, wire};
use stockcast::pipeline::stream;
use stockcast::records::ForecastRecord;
use stockcast::replay::{self, ReplayOptions};

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

/// A config whose topics and group are this test's own. It publishes every epoch's forecasts
/// (`catch_up = "every_epoch"`), so its output equals `replay`'s record for record; a test of
/// `"latest"` sets that itself.
pub fn config(test: &str, period: &str) -> Resolved {
    let nonce = nonce('-');
    let text = format!(
        "[time]\nperiod = \"{period}\"\n[output]\ncatch_up = \"every_epoch\"\n[kafka]\nbrokers = \"{}\"\ngroup_id = \"{test}-{nonce}\"\nidle_timeout_secs = 5\n[http]\nlisten = \"\"\n",
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
            "[output]\ncatch_up = \"{}\"\n[kafka]\nbrokers = \"{}\"\ngroup_id = \"{}\"\nidle_timeout_secs = {}\n[kafka.topics]\nsales = \"{}\"\nstock = \"{}\"\ncatalog = \"{}\"\nstores = \"{}\"\npromotions = \"{}\"\nprices = \"{}\"\nforecasts = \"{}\"\nepochs = \"{}\"\ndead_letters = \"{}\"\n{extra}",
            cfg.output.catch_up.name(),
            cfg.kafka.brokers, cfg.kafka.group_id, cfg.kafka.idle_timeout_secs, t.sales, t.stock,
            t.catalog, t.stores, t.promotions, t.prices, t.forecasts, t.epochs, t.dead_letters
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
        drain_through: None,
        stop: Arc::new(AtomicBool::new(false)),
        wall_clock: stream::system_clock(),
        from_scratch: false,
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
            period: dataflows::PeriodKind::Day,
        },
    )
    .unwrap()
}

/// A small generated dataset (2 stores x 4 SKUs x 60 days, with stock movements) published
/// into `kafka`'s topics; keep the directory alive as long as needed.
pub fn load_generated(kafka: &KafkaConfig) -> tempfile::TempDir {
    load_generated_chain(kafka, (2, 4, 60), 2)
}

/// A generated dataset of `(stores, skus, days)` published into `kafka`'s topics over
/// `partitions` partitions; keep the directory alive as long as needed.
pub fn load_generated_chain(
    kafka: &KafkaConfig,
    (stores, skus, days): (u32, u32, u32),
    partitions: i32,
) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let params = stockcast::generate::Params {
        stores,
        skus,
        days,
        ..Default::default()
    };
    stockcast::generate::generate_to_dir(&params, tmp.path()).unwrap();
    load_dir(kafka, tmp.path(), partitions);
    tmp
}

/// How long a test waits for a worker (or another thread it started) to finish before it fails:
/// far above any run of the suite, so only a hang reaches it, and it ends the test with a
/// message instead of holding the whole suite until CI's limit.
pub const HANG_LIMIT: Duration = Duration::from_secs(600);

/// The result of `thread`, which must finish within [`HANG_LIMIT`]; a panic of the thread is
/// passed on.
pub fn join_within<T>(thread: std::thread::JoinHandle<T>, what: &str) -> T {
    let started = Instant::now();
    while !thread.is_finished() {
        assert!(
            started.elapsed() < HANG_LIMIT,
            "{what} did not finish within {HANG_LIMIT:?}: a hang"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    thread
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// Runs a worker on `cfg` whose sink `sink` is unreachable for its first 8 s: `bring_up`
/// makes it reachable then. Checks that the failures showed in readiness and the metrics, and
/// returns the run and its live state.
pub fn run_with_sink_down_for_8s<T>(
    cfg: &Resolved,
    sink: &str,
    bring_up: impl FnOnce() -> T,
) -> (stockcast::kafka::WorkerRun, Arc<stream::Progress>, T) {
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
        saw_unready |= !progress.failing_sinks().is_empty();
        std::thread::sleep(Duration::from_millis(100));
    }
    let up = bring_up();
    let run = join_within(worker, "the worker");
    assert!(saw_unready, "the failed writes showed in readiness");
    let m = &progress.metrics;
    assert!(m.sink_failures.with_label_values(&[sink]).get() > 0);
    assert!(m.sink_retries.with_label_values(&[sink]).get() > 0);
    (run, progress, up)
}

/// Copies the sales of `from` dated in `[lo, hi)` (compared as text) into `to`, with the price
/// plan of the whole of `from` (daily): a plan is known ahead, so every part carries all of it
/// and the parts together give the whole's features.
pub fn split_sales(from: &Path, to: &Path, lo: &str, hi: &str) {
    write_price_plan(from, to);
    std::fs::create_dir_all(to).unwrap();
    let text = std::fs::read_to_string(from.join("sales.csv")).unwrap();
    let mut lines = text.lines();
    let mut out = vec![lines.next().unwrap().to_string()];
    out.extend(
        lines
            .filter(|l| {
                let date = &l[..10];
                date >= lo && date < hi
            })
            .map(str::to_string),
    );
    std::fs::write(to.join("sales.csv"), out.join("\n") + "\n").unwrap();
}

/// Writes `to/prices.csv`: the price plan `replay` derives from the daily sales of `from`.
pub fn write_price_plan(from: &Path, to: &Path) {
    use stockcast::decode::Record;
    std::fs::create_dir_all(to).unwrap();
    let data = stockcast::source::files::load(from).unwrap();
    let time = |ts: i64| stockcast::display::rfc3339(ts);
    let mut out = vec!["price_id,store_id,sku_id,start,end,price".to_string()];
    let daily = dataflows::PeriodKind::Day;
    for (record, _) in stockcast::source::prepare::derived_reference(&data, daily) {
        if let Record::PlannedPrice(p) = record {
            out.push(format!(
                "{},{},{},{},{},{}.{:03}",
                p.price_id,
                p.store_id.unwrap_or_default(),
                p.sku_id,
                time(p.start),
                time(p.end),
                p.price / 1000,
                p.price % 1000
            ));
        }
    }
    std::fs::write(to.join("prices.csv"), out.join("\n") + "\n").unwrap();
}

/// m5_mini's sales before 2014 (10,680 records), from 2014 on (8,450), and all of them, as
/// datasets under `dir`.
pub fn m5_halves(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let m5 = shared("m5_mini");
    let (first, second, all) = (dir.join("a"), dir.join("b"), dir.join("all"));
    split_sales(&m5, &first, "0000", "2014-01-01");
    split_sales(&m5, &second, "2014-01-01", "9999");
    split_sales(&m5, &all, "0000", "9999");
    (first, second, all)
}

pub fn shared(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/data")
        .join(name);
    assert!(dir.exists(), "{} is missing", dir.display());
    dir
}

/// Every record of `topic` (all partitions) once `expect` have arrived.
pub fn consume(
    kafka: &KafkaConfig,
    topic: &str,
    expect: usize,
) -> Vec<(String, Vec<u8>, Option<Vec<u8>>)> {
    consume_within(kafka, topic, expect, Duration::from_secs(60))
}

/// Every value of `topic` decoded from JSON, once `expect` have arrived.
pub fn consume_json<T: serde::de::DeserializeOwned>(
    kafka: &KafkaConfig,
    topic: &str,
    expect: usize,
) -> Vec<T> {
    consume(kafka, topic, expect)
        .into_iter()
        .map(|(_, v, _)| serde_json::from_slice(&v).unwrap())
        .collect()
}

/// A consumer that reads topics the way the tests check them: no group offsets committed.
pub fn reader(brokers: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "stockcast-test-reader")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap()
}

/// Assigns `consumer` the `partitions` of `topic`, each from offset 0.
///
/// Every test's topics are new, so they begin at offset 0. Not `Offset::Beginning`: tansu
/// (0.6.0, memory storage) answers the earliest offset with the base offset of the batch it
/// stored first, and when two producers write one partition (a cluster's processes), a batch at
/// a higher offset can be stored before the one at 0, and the reader would start past it.
pub fn read_from_start(consumer: &BaseConsumer, topic: &str, partitions: &[i32]) {
    let mut tpl = TopicPartitionList::new();
    for p in partitions {
        tpl.add_partition_offset(topic, *p, Offset::Offset(0))
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
}

/// Every record of `topic` once `expect` have arrived, or what arrived within `wait`.
pub fn consume_within(
    kafka: &KafkaConfig,
    topic: &str,
    expect: usize,
    wait: Duration,
) -> Vec<(String, Vec<u8>, Option<Vec<u8>>)> {
    let consumer = reader(&kafka.brokers);
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let partitions: Vec<i32> = md.topics()[0].partitions().iter().map(|p| p.id()).collect();
    read_from_start(&consumer, topic, &partitions);
    let mut out = Vec::new();
    let deadline = Instant::now() + wait;
    while out.len() < expect && Instant::now() < deadline {
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            let m = m.unwrap();
            let original = m.headers().and_then(|h| {
                h.iter()
                    .find(|h| h.key == wire::ORIGINAL_VALUE_HEADER)
                    .and_then(|h| h.value.map(<[u8]>::to_vec))
            });
            out.push((
                String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                m.payload().unwrap_or_default().to_vec(),
                original,
            ));
        }
    }
    // Anything beyond what was expected would be a duplicate: wait a moment for it.
    let quiet = Instant::now() + Duration::from_millis(500);
    while Instant::now() < quiet {
        if let Some(m) = consumer.poll(Duration::from_millis(50)) {
            let m = m.unwrap();
            out.push((
                String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                m.payload().unwrap_or_default().to_vec(),
                None,
            ));
        }
    }
    out
}

pub fn sorted_forecasts(records: impl IntoIterator<Item = ForecastRecord>) -> Vec<String> {
    let mut v: Vec<String> = records
        .into_iter()
        .map(|r| serde_json::to_string(&r).unwrap())
        .collect();
    v.sort();
    v
}

/// Asserts two sorted forecast lists are equal; otherwise shows how many are missing and
/// extra, and the first few of each.
pub fn assert_same_forecasts(got: Vec<String>, want: Vec<String>) {
    if got == want {
        return;
    }
    let g: std::collections::BTreeSet<&String> = got.iter().collect();
    let w: std::collections::BTreeSet<&String> = want.iter().collect();
    let missing: Vec<&&String> = w.difference(&g).collect();
    let extra: Vec<&&String> = g.difference(&w).collect();
    let show = |v: &[&&String]| {
        v.iter()
            .take(5)
            .map(|s| format!("  {}", s.chars().take(300).collect::<String>()))
            .collect::<Vec<_>>()
            .join("\n")
    };
    panic!(
        "forecasts differ: {} got, {} wanted; {} missing, {} extra (the rest: repeats)\nmissing:\n{}\nextra:\n{}",
        got.len(),
        want.len(),
        missing.len(),
        extra.len(),
        show(&missing),
        show(&extra)
    );
}

pub fn replay_forecasts(cfg: &Resolved, data: &Path) -> Vec<ForecastRecord> {
    let tmp = tempfile::tempdir().unwrap();
    replay::replay(
        cfg,
        &ReplayOptions {
            data: data.to_path_buf(),
            out: tmp.path().to_path_buf(),
            workers: 1,
            progress: false,
        },
    )
    .unwrap();
    std::fs::read_to_string(tmp.path().join("forecasts.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

pub fn committed(cfg: &Resolved, topic: &str, partitions: i32) -> i64 {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &cfg.kafka.brokers)
        .set("group.id", &cfg.kafka.group_id)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let c = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap();
    c.elements()
        .iter()
        .filter_map(|e| e.offset().to_raw())
        .filter(|o| *o >= 0)
        .sum()
}

/// A TCP proxy in front of a broker that the test can cut: while cut, open connections are
/// shut and new ones are closed at once, as when a network path goes down. It can also hold
/// back every reply of the broker for a while, as a slow broker or a long network path does.
pub struct Proxy {
    cut: Arc<AtomicBool>,
    reply_delay_ms: Arc<AtomicU64>,
    conns: Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl Proxy {
    pub fn start(listener: std::net::TcpListener, target: u16) -> Proxy {
        let cut = Arc::new(AtomicBool::new(false));
        let reply_delay_ms = Arc::new(AtomicU64::new(0));
        let conns: Arc<std::sync::Mutex<Vec<std::net::TcpStream>>> = Arc::default();
        let (c, d, k) = (
            Arc::clone(&cut),
            Arc::clone(&reply_delay_ms),
            Arc::clone(&conns),
        );
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if c.load(Ordering::SeqCst) {
                    continue;
                }
                let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                let mut all = k.lock().unwrap();
                all.push(client.try_clone().unwrap());
                all.push(server.try_clone().unwrap());
                pipe(
                    client.try_clone().unwrap(),
                    server.try_clone().unwrap(),
                    None,
                );
                pipe(server, client, Some(Arc::clone(&d)));
            }
        });
        Proxy {
            cut,
            reply_delay_ms,
            conns,
        }
    }

    pub fn set_cut(&self, cut: bool) {
        self.cut.store(cut, Ordering::SeqCst);
        if cut {
            for s in self.conns.lock().unwrap().drain(..) {
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
        }
    }

    /// Every byte the broker sends from now on reaches its client `delay` after it was sent.
    pub fn set_reply_delay(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap();
        self.reply_delay_ms.store(ms, Ordering::SeqCst);
    }
}

/// Copies `from` to `to` on threads of its own until either end closes; with `delay`, each
/// chunk is written that many milliseconds after it was read, in order.
fn pipe(mut from: std::net::TcpStream, mut to: std::net::TcpStream, delay: Option<Arc<AtomicU64>>) {
    use std::io::{Read, Write};
    let Some(delay) = delay else {
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut from, &mut to);
            let _ = to.shutdown(std::net::Shutdown::Both);
        });
        return;
    };
    let (tx, rx) = std::sync::mpsc::channel::<(Instant, Vec<u8>)>();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n @ 1..) = from.read(&mut buf) {
            let due = Instant::now() + Duration::from_millis(delay.load(Ordering::SeqCst));
            if tx.send((due, buf[..n].to_vec())).is_err() {
                break;
            }
        }
    });
    std::thread::spawn(move || {
        for (due, chunk) in rx {
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
            if to.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Both);
    });
}

/// A tansu broker of this test's own, advertised at a proxy's port; stopped on drop.
pub struct OwnBroker {
    env: Vec<(&'static str, String)>,
}

impl OwnBroker {
    pub fn start(dir: &Path, port: u16, advertised: u16) -> OwnBroker {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let env = vec![
            ("STOCKCAST_KAFKA_PORT", port.to_string()),
            ("STOCKCAST_KAFKA_ADVERTISED_PORT", advertised.to_string()),
            ("STOCKCAST_BROKER_DIR", dir.display().to_string()),
        ];
        let status = std::process::Command::new(root.join("scripts/kafka-broker.sh"))
            .arg("start")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .status()
            .unwrap();
        assert!(status.success(), "scripts/kafka-broker.sh start failed");
        OwnBroker { env }
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let _ = std::process::Command::new(root.join("scripts/kafka-broker.sh"))
            .arg("stop")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .status();
    }
}

/// A broker of the test's own behind a proxy the test can cut: returns both, with the broker's
/// own port and the proxy's (the one clients use, and the broker advertises).
pub fn broker_behind_proxy(dir: &Path) -> (OwnBroker, Proxy, u16, u16) {
    brokers();
    let broker_port = free_port().local_addr().unwrap().port();
    let proxy_listener = free_port();
    let proxy_port = proxy_listener.local_addr().unwrap().port();
    let broker = OwnBroker::start(dir, broker_port, proxy_port);
    let proxy = Proxy::start(proxy_listener, broker_port);
    (broker, proxy, broker_port, proxy_port)
}

pub fn free_port() -> std::net::TcpListener {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap()
}

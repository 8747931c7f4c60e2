//! The worker against a real Kafka-protocol broker (tansu, started by `scripts/kafka-broker.sh`,
//! which the test command runs). Each test uses its own topics and consumer group.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use stockcast::config::{Config, KafkaConfig, Resolved};
use stockcast::kafka::{self, admin, load, stream, wire};
use stockcast::replay::{self, ForecastRecord, ReplayOptions};

fn brokers() -> String {
    let b = std::env::var("STOCKCAST_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let first = b.split(',').next().unwrap_or_default().to_string();
    assert!(
        std::net::TcpStream::connect(&first).is_ok(),
        "no Kafka broker at {first}: start one with `scripts/kafka-broker.sh start` (scripts/test.sh does)"
    );
    b
}

fn shared(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/data")
        .join(name);
    assert!(dir.exists(), "{} is missing", dir.display());
    dir
}

/// A config whose topics and group are this test's own.
fn config(test: &str, period: &str) -> Resolved {
    let nonce = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
    );
    let text = format!(
        "[time]\nperiod = \"{period}\"\n[kafka]\nbrokers = \"{}\"\ngroup_id = \"{test}-{nonce}\"\nidle_timeout_secs = 2\n",
        brokers()
    );
    let mut cfg = Config::parse(&text, Path::new("<test>")).unwrap();
    let t = &mut cfg.kafka.topics;
    for name in [
        &mut t.sales,
        &mut t.stock,
        &mut t.catalog,
        &mut t.stores,
        &mut t.promotions,
        &mut t.forecasts,
        &mut t.epochs,
        &mut t.dead_letters,
    ] {
        *name = format!("{test}-{nonce}.{name}");
    }
    cfg.resolve(Path::new("<test>")).unwrap()
}

fn options(workers: usize) -> stream::StreamOptions {
    stream::StreamOptions {
        workers,
        exit_when_idle: true,
        stop: Arc::new(AtomicBool::new(false)),
        wall_clock: stream::system_clock(),
    }
}

/// Every record of `topic` (all partitions) once `expect` have arrived.
fn consume(
    kafka: &KafkaConfig,
    topic: &str,
    expect: usize,
) -> Vec<(String, Vec<u8>, Option<Vec<u8>>)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &kafka.brokers)
        .set("group.id", "stockcast-test-reader")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in md.topics()[0].partitions() {
        tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
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

fn sorted_forecasts(records: impl IntoIterator<Item = ForecastRecord>) -> Vec<String> {
    let mut v: Vec<String> = records
        .into_iter()
        .map(|r| serde_json::to_string(&r).unwrap())
        .collect();
    v.sort();
    v
}

fn replay_forecasts(cfg: &Resolved, data: &Path) -> Vec<ForecastRecord> {
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

fn committed(cfg: &Resolved, topic: &str, partitions: i32) -> i64 {
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

#[test]
fn m5_mini_through_kafka_equals_replay_with_4_partitions_and_2_workers() {
    let cfg = config("e2e", "day");
    let data = shared("m5_mini");
    let loaded = load::load(
        &cfg.kafka,
        &load::LoadOptions {
            data: data.clone(),
            rate: None,
            partitions: 4,
            progress: false,
        },
    )
    .unwrap();
    assert_eq!(loaded.published[&cfg.kafka.topics.sales], 19_130);

    let run = kafka::run_worker(&cfg, &options(2)).unwrap();
    assert_eq!(run.stats.consumed["sales"], 19_130);
    assert!(
        run.stats.dead_letters.is_empty(),
        "{:?}",
        run.stats.dead_letters
    );

    let expected = replay_forecasts(&cfg, &data);
    assert_eq!(run.stats.forecasts as usize, expected.len());
    let got: Vec<ForecastRecord> = consume(&cfg.kafka, &cfg.kafka.topics.forecasts, expected.len())
        .into_iter()
        .map(|(key, value, _)| {
            let r: ForecastRecord = serde_json::from_slice(&value).unwrap();
            assert_eq!(key, format!("{}:{}", r.store_id, r.sku_id));
            r
        })
        .collect();
    assert_eq!(sorted_forecasts(got), sorted_forecasts(expected));

    // The progress records end at the last epoch, and every input offset was committed.
    let epochs = consume(
        &cfg.kafka,
        &cfg.kafka.topics.epochs,
        run.stats.advances as usize,
    );
    assert_eq!(epochs.len() as u64, run.stats.advances);
    let last: wire::EpochRecord = epochs
        .iter()
        .map(|(_, v, _)| serde_json::from_slice::<wire::EpochRecord>(v).unwrap())
        .max_by(|a, b| a.epoch_end.cmp(&b.epoch_end))
        .unwrap();
    assert_eq!(Some(last.epoch_end), run.stats.last_epoch_end);
    assert_eq!(committed(&cfg, &cfg.kafka.topics.sales, 4), 19_130);
}

#[test]
fn malformed_records_are_dead_lettered_with_their_bytes_and_reason() {
    let cfg = config("bad", "day");
    admin::ensure_topics(&cfg.kafka, 2).unwrap();
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &cfg.kafka.brokers)
        .create()
        .unwrap();
    let sales = &cfg.kafka.topics.sales;
    let stock = &cfg.kafka.topics.stock;
    let good: Vec<String> = (1..=20)
        .map(|d| {
            format!(r#"{{"ts":"2024-03-{d:02}T10:00:00Z","store_id":"S1","sku_id":"A","qty":2}}"#)
        })
        .collect();
    let bad: Vec<(&str, &[u8], &str)> = vec![
        (sales, b"{not json", "malformed"),
        (
            sales,
            br#"{"ts":"2024-03-05","store_id":"S1","qty":1}"#,
            "missing_field",
        ),
        (
            sales,
            br#"{"ts":"yesterday","store_id":"S1","sku_id":"A","qty":1}"#,
            "bad_time",
        ),
        (
            sales,
            br#"{"ts":"2024-03-05","store_id":"S1","sku_id":"A","qty":"NaN"}"#,
            "non_finite",
        ),
        (
            stock,
            br#"{"ts":"2024-03-05","store_id":"S1","sku_id":"A","kind":"theft","qty":1}"#,
            "unknown_kind",
        ),
        (sales, &[0xff, 0xfe, 0x00], "malformed"),
    ];
    for (i, g) in good.iter().enumerate() {
        producer
            .send(BaseRecord::to(sales).key("S1:A").payload(g.as_bytes()))
            .unwrap();
        if let Some((topic, bytes, _)) = bad.get(i) {
            producer
                .send(BaseRecord::to(topic).key("S1:A").payload(*bytes))
                .unwrap();
        }
    }
    producer.flush(Duration::from_secs(10)).unwrap();

    let run = kafka::run_worker(&cfg, &options(2)).unwrap();
    assert_eq!(run.stats.consumed["sales"], 25);
    assert_eq!(run.stats.consumed["stock"], 1);
    let total: u64 = run.stats.dead_letters.values().sum();
    assert_eq!(total, bad.len() as u64, "{:?}", run.stats.dead_letters);
    // Every good sale counted: the last forecast saw 20 days of 2 units.
    let last = &run.latest[&("S1".to_string(), "A".to_string())];
    assert_eq!(last.epoch_end, "2024-03-20T10:15:00Z");

    let letters = consume(&cfg.kafka, &cfg.kafka.topics.dead_letters, bad.len());
    assert_eq!(letters.len(), bad.len());
    let mut got: Vec<(String, Vec<u8>)> = letters
        .iter()
        .map(|(_, v, original)| {
            let d: wire::DeadLetterRecord = serde_json::from_slice(v).unwrap();
            assert!(!d.detail.is_empty());
            (d.reason, original.clone().unwrap_or_default())
        })
        .collect();
    let mut want: Vec<(String, Vec<u8>)> = bad
        .iter()
        .map(|(_, b, r)| (r.to_string(), b.to_vec()))
        .collect();
    got.sort();
    want.sort();
    assert_eq!(got, want);
}

/// Writes the sales of `from` whose date is in `[lo, hi)` into `to/sales.csv`.
fn split_sales(from: &Path, to: &Path, lo: &str, hi: &str) {
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

#[test]
fn a_restart_resumes_at_the_committed_frontier_without_double_counting() {
    let cfg = config("restart", "day");
    let m5 = shared("m5_mini");
    let tmp = tempfile::tempdir().unwrap();
    let (first, second, all) = (
        tmp.path().join("a"),
        tmp.path().join("b"),
        tmp.path().join("all"),
    );
    split_sales(&m5, &first, "0000", "2014-01-01");
    split_sales(&m5, &second, "2014-01-01", "9999");
    split_sales(&m5, &all, "0000", "9999");
    let load = |dir: &Path| {
        load::load(
            &cfg.kafka,
            &load::LoadOptions {
                data: dir.to_path_buf(),
                rate: None,
                partitions: 3,
                progress: false,
            },
        )
        .unwrap()
    };
    load(&first);
    let run1 = kafka::run_worker(&cfg, &options(2)).unwrap();
    assert_eq!(run1.resumed_from, None);
    load(&second);
    let run2 = kafka::run_worker(&cfg, &options(2)).unwrap();
    assert!(run2.resumed_from.is_some());
    // The second run re-read everything to rebuild its state...
    assert_eq!(run2.stats.consumed["sales"], 19_130);

    // ...yet the two runs together published exactly what one replay of everything does.
    let expected = replay_forecasts(&cfg, &all);
    assert_eq!(
        (run1.stats.forecasts + run2.stats.forecasts) as usize,
        expected.len()
    );
    let got: Vec<ForecastRecord> = consume(&cfg.kafka, &cfg.kafka.topics.forecasts, expected.len())
        .into_iter()
        .map(|(_, v, _)| serde_json::from_slice(&v).unwrap())
        .collect();
    assert_eq!(sorted_forecasts(got), sorted_forecasts(expected));
    assert_eq!(committed(&cfg, &cfg.kafka.topics.sales, 3), 19_130);
}

//! The worker as a hostile producer and a broken network would try it, against the real broker:
//! m5_mini's sales with over a thousand bad records interleaved (random bytes, truncated JSON,
//! NaN and 1e400 quantities, ids of the wrong JSON type, 1 MiB ids and timestamps, events
//! dated 9999 and 1900, nulls, NUL bytes, invalid UTF-8), one event from the year 9999 at the
//! head of every sales partition, a producer limit that refuses the largest dead letters for
//! good, a network cut mid-run, SIGTERM while the cut lasts, and a restart with
//! `--exit-when-idle`. What both runs published must be exactly replay's forecasts, and every
//! bad record must be on the dead-letter topic with its reason.
//!
//! Longer than 600 lines: the bad records, the cut, the signal and the checks of both runs are
//! one scenario, read top to bottom.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rdkafka::config::FromClientConfigAndContext;
use rdkafka::consumer::BaseConsumer;
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::ClientContext;
use stockcast::kafka::{self, admin, load, wire};
use stockcast::records::ForecastRecord;

#[path = "support/kafka.rs"]
mod support;
use support::{
    broker_behind_proxy, committed, config, config_file, consume_within, options, replay_forecasts,
    shared,
};

/// Where each record produced landed, by the index it was sent with.
#[derive(Default)]
struct Landed(Mutex<HashMap<usize, (i32, i64)>>);

impl ClientContext for Landed {}

impl ProducerContext for Landed {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, index: usize) {
        if let (Ok(m), true) = (result, index != usize::MAX) {
            self.0
                .lock()
                .unwrap()
                .insert(index, (m.partition(), m.offset()));
        }
    }
}

/// `landed` with the offsets the producer was not told found by reading the records back.
///
/// A delivery report can say that a record was written without saying where: in CI on
/// 2026-12-07 one bad record, produced while the cut lasted, was acknowledged with offset -1
/// (the producer sends a batch again after a cut, and the broker's answer to a batch it already
/// holds need not carry the offsets), and the topic held it once. Each such record takes the
/// lowest offset of its partition that holds its key and value and that no other bad record
/// holds.
fn offsets_read_back(
    cfg: &stockcast::config::Resolved,
    bad: &[Bad],
    mut landed: HashMap<usize, (i32, i64)>,
) -> HashMap<usize, (i32, i64)> {
    let mut indices: Vec<usize> = landed.keys().copied().collect();
    indices.sort_unstable();
    let (known, unknown): (Vec<usize>, Vec<usize>) =
        indices.into_iter().partition(|i| landed[i].1 >= 0);
    // Every 50th known record is looked for too, and must be found where the producer said:
    // the read-back is checked on every run, not only on the rare one that needs it.
    let checked: Vec<(usize, (i32, i64))> =
        known.iter().step_by(50).map(|i| (*i, landed[i])).collect();
    let mut wanted: Vec<usize> = unknown.clone();
    wanted.extend(checked.iter().map(|(i, _)| *i));
    // In the order they were produced, which within a partition is the order of the offsets.
    wanted.sort_unstable();
    let consumer = support::reader(&cfg.kafka.brokers);
    let mut taken: HashSet<(String, i32, i64)> = (known.iter())
        .filter(|i| !checked.iter().any(|(c, _)| c == *i))
        .map(|i| (bad[*i].topic.clone(), landed[i].0, landed[i].1))
        .collect();
    let mut read: HashMap<(String, i32), Vec<Held>> = HashMap::new();
    for &i in &wanted {
        let b = &bad[i];
        let p = landed[&i].0;
        let records = (read.entry((b.topic.clone(), p)))
            .or_insert_with(|| read_partition(&consumer, &b.topic, p));
        let found = (records.iter())
            .find(|(offset, key, value)| {
                *key == b.key
                    && *value == b.value
                    && !taken.contains(&(b.topic.clone(), p, *offset))
            })
            .map(|(offset, _, _)| *offset);
        if let Some(offset) = found {
            taken.insert((b.topic.clone(), p, offset));
            landed.insert(i, (p, offset));
        }
    }
    for (i, acknowledged) in &checked {
        assert_eq!(
            landed[i], *acknowledged,
            "bad record {i} read back at another offset than its acknowledgement's"
        );
    }
    eprintln!(
        "hostile: offsets read back for {} bad records acknowledged without theirs, and for {} acknowledged with theirs (the same offsets)",
        unknown.len(),
        checked.len()
    );
    landed
}

/// A record as a partition holds it: offset, key, value.
type Held = (i64, Option<Vec<u8>>, Option<Vec<u8>>);

/// Every record of one partition, read from offset 0 until it has been quiet for 2 s.
fn read_partition(consumer: &BaseConsumer, topic: &str, partition: i32) -> Vec<Held> {
    support::read_from_start(consumer, topic, &[partition]);
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last = Instant::now();
    while last.elapsed() < Duration::from_secs(2) && Instant::now() < deadline {
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            let m = m.unwrap();
            out.push((
                m.offset(),
                m.key().map(<[u8]>::to_vec),
                m.payload().map(<[u8]>::to_vec),
            ));
            last = Instant::now();
        }
    }
    out
}

/// A record the worker must refuse, and the reason it must give.
struct Bad {
    topic: String,
    partition: Option<i32>,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    reason: &'static str,
}

/// The bad records: every category at least ten times, seeded.
fn bad_records(cfg: &stockcast::config::Resolved) -> Vec<Bad> {
    let t = &cfg.kafka.topics;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(19);
    let sale = |fields: &str| format!(r#"{{"ts":"2012-06-01T10:00:00Z","qty":1,{fields}}}"#);
    let ok_ids = r#""store_id":"CA_1","sku_id":"HOBBIES_1_001""#;
    let mut out = Vec::new();
    let mut push = |topic: &str, value: Option<Vec<u8>>, reason: &'static str| {
        out.push(Bad {
            topic: topic.to_string(),
            partition: None,
            key: Some(b"CA_1:HOBBIES_1_001".to_vec()),
            value,
            reason,
        })
    };
    for i in 0..200 {
        let len = 1 + i % 150;
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        // Random bytes that happen to open an object still do not close one.
        if bytes[0] == b'{' {
            bytes[0] = b'[';
        }
        push(&t.sales, Some(bytes), "malformed");
        let whole = sale(ok_ids);
        let cut = 1 + (i % (whole.len() - 1));
        push(
            &t.sales,
            Some(whole.as_bytes()[..cut].to_vec()),
            "malformed",
        );
    }
    for _ in 0..100 {
        push(
            &t.sales,
            Some(
                sale(&format!(r#"{ok_ids},"qty":"NaN""#))
                    .replace(r#""qty":1,"#, "")
                    .into(),
            ),
            "non_finite",
        );
        push(
            &t.sales,
            Some(
                sale(&format!(r#"{ok_ids},"qty":"1e400""#))
                    .replace(r#""qty":1,"#, "")
                    .into(),
            ),
            "non_finite",
        );
        // A JSON number out of range is not valid JSON for the parser.
        push(
            &t.sales,
            Some(
                sale(&format!(r#"{ok_ids},"qty":1e400"#))
                    .replace(r#""qty":1,"#, "")
                    .into(),
            ),
            "malformed",
        );
        for wrong in [
            r#""store_id":{"x":1},"sku_id":"A""#,
            r#""store_id":"CA_1","sku_id":[1,2]"#,
            r#""store_id":"CA_1","sku_id":1.5"#,
            r#""store_id":true,"sku_id":"A""#,
            r#""store_id":"CA_1","sku_id":"A","event_id":{"id":7}"#,
            r#""store_id":"CA\u00001","sku_id":"A""#,
        ] {
            push(&t.sales, Some(sale(wrong).into()), "bad_id");
        }
        push(
            &t.sales,
            Some(sale(r#""store_id":null,"sku_id":"A""#).into()),
            "missing_field",
        );
        push(
            &t.sales,
            Some(
                format!(r#"{{"ts":"1900-01-01",{ok_ids},"qty":1}}"#)
                    .as_bytes()
                    .to_vec(),
            ),
            "before_epoch_zero",
        );
        push(
            &t.sales,
            Some(
                format!(r#"{{"ts":"9999-12-31T23:59:59Z",{ok_ids},"qty":1}}"#)
                    .as_bytes()
                    .to_vec(),
            ),
            "future_time",
        );
    }
    for _ in 0..20 {
        push(
            &t.sales,
            Some(b"{\"store_id\":\"caf\xe9\"}".to_vec()),
            "malformed",
        );
        push(
            &t.stock,
            Some(format!(r#"{{"ts":"2012-06-01",{ok_ids},"kind":"theft","qty":1}}"#).into()),
            "unknown_kind",
        );
        push(
            &t.catalog,
            Some(br#"{"sku_id":{"nested":true},"category":"HOBBIES"}"#.to_vec()),
            "bad_id",
        );
        push(
            &t.promotions,
            Some(
                br#"{"promo_id":"p","sku_id":"A","start":"2012-06-07","end":"2012-06-01"}"#
                    .to_vec(),
            ),
            "invalid_value",
        );
        push(
            &t.prices,
            Some(
                br#"{"price_id":"x","sku_id":"A","start":"2012-06-01","end":"2012-06-07","price":0}"#
                    .to_vec(),
            ),
            "invalid_value",
        );
    }
    for _ in 0..10 {
        // A tombstone needs the entity id as its key.
        out.push(Bad {
            topic: t.stores.clone(),
            partition: None,
            key: None,
            value: None,
            reason: "missing_key",
        });
    }
    let huge = "x".repeat(1 << 20);
    for _ in 0..5 {
        let mut push = |value: String, reason| {
            out.push(Bad {
                topic: t.sales.clone(),
                partition: None,
                key: Some(b"huge".to_vec()),
                value: Some(value.into_bytes()),
                reason,
            })
        };
        push(
            sale(&format!(r#""store_id":"{huge}","sku_id":"A""#)),
            "bad_id",
        );
        push(format!(r#"{{"ts":"{huge}",{ok_ids},"qty":1}}"#), "bad_time");
    }
    out
}

#[test]
fn hostile_input_a_cut_and_sigterm_then_a_restart_publish_exactly_replay() {
    let tmp = tempfile::tempdir().unwrap();
    let (_broker, proxy, broker_port, proxy_port) = broker_behind_proxy(&tmp.path().join("broker"));

    let mut cfg = config("hostile", "day");
    cfg.kafka.brokers = format!("127.0.0.1:{proxy_port}");
    // Run 2 drains once every partition was idle for 3 s.
    cfg.kafka.idle_timeout_secs = 3;
    // Dead letters of the 1 MiB records (their first 64 KiB) exceed this: the producer
    // refuses them for good, and small `undeliverable` records stand in for them.
    cfg.kafka
        .client
        .insert("message.max.bytes".into(), "60000".into());
    let partitions = 2;
    admin::ensure_topics(&cfg.kafka, partitions).unwrap();

    // Publish: a sale dated 9999 at the head of every sales partition, then m5_mini in
    // publishing order with a bad record after every 12 good ones.
    let mut bad = bad_records(&cfg);
    for p in 0..partitions {
        bad.insert(
            0,
            Bad {
                topic: cfg.kafka.topics.sales.clone(),
                partition: Some(p),
                key: Some(b"CA_1:HOBBIES_1_001".to_vec()),
                value: Some(
                    br#"{"ts":"9999-12-31","store_id":"CA_1","sku_id":"HOBBIES_1_001","qty":5}"#
                        .to_vec(),
                ),
                reason: "future_time",
            },
        );
    }
    let data = shared("m5_mini");
    let good = load::records_to_publish(
        stockcast::source::files::load(&data).unwrap(),
        cfg.clock.period_kind(),
    );
    // What is published, in order: (topic, partition, key, value, index of the bad record).
    type Item = (String, Option<i32>, Option<Vec<u8>>, Option<Vec<u8>>, usize);
    let bad_item = |i: usize| -> Item {
        let b = &bad[i];
        (
            b.topic.clone(),
            b.partition,
            b.key.clone(),
            b.value.clone(),
            i,
        )
    };
    let head = partitions as usize;
    let mut items: Vec<Item> = (0..head).map(bad_item).collect();
    let mut next_bad = head;
    for (i, record) in good.iter().enumerate() {
        let topic = load::topic_of(&cfg.kafka, record).to_string();
        let key = wire::record_key(record).into_bytes();
        let value = serde_json::to_vec(&wire::record_value(record)).unwrap();
        items.push((topic, None, Some(key), Some(value), usize::MAX));
        if i % 12 == 11 && next_bad < bad.len() {
            items.push(bad_item(next_bad));
            next_bad += 1;
        }
    }
    items.extend((next_bad..bad.len()).map(bad_item));
    let mut producer_cfg = rdkafka::ClientConfig::new();
    producer_cfg
        .set("bootstrap.servers", format!("127.0.0.1:{broker_port}"))
        .set("message.max.bytes", "2000000")
        .set("linger.ms", "20")
        // A produce request retried after a slow acknowledgement (a loaded machine) would
        // otherwise append its records twice, and the input would no longer be replay's.
        .set("enable.idempotence", "true");
    let producer: std::sync::Arc<BaseProducer<Landed>> = std::sync::Arc::new(
        BaseProducer::from_config_and_context(&producer_cfg, Landed::default()).unwrap(),
    );
    let send = |producer: &BaseProducer<Landed>, item: &Item| {
        let (topic, partition, key, value, i) = item;
        let mut r = BaseRecord::<[u8], [u8], usize>::with_opaque_to(topic, *i);
        if let Some(p) = partition {
            r = r.partition(*p);
        }
        if let Some(k) = key {
            r = r.key(k);
        }
        if let Some(v) = value {
            r = r.payload(v);
        }
        loop {
            match producer.send(r) {
                Ok(()) => break,
                Err((_, back)) => {
                    r = back;
                    producer.poll(Duration::from_millis(5));
                }
            }
        }
    };
    // The heads first (acknowledged before anything else), then 70% of the rest at once; the
    // last 30% trickle in while run 1 works, so its sales partitions never fall idle.
    for item in &items[..head] {
        send(&producer, item);
    }
    producer.flush(Duration::from_secs(30)).unwrap();
    let split = head + (items.len() - head) * 7 / 10;
    for item in &items[head..split] {
        send(&producer, item);
    }
    producer.flush(Duration::from_secs(60)).unwrap();
    let tail: Vec<Item> = items[split..].to_vec();
    let sales_total = items
        .iter()
        .filter(|i| i.0 == cfg.kafka.topics.sales)
        .count() as i64;
    eprintln!(
        "hostile: publishing {} good and {} bad records ({} on the sales topic), the last {} while run 1 runs",
        good.len(),
        bad.len(),
        sales_total,
        tail.len()
    );

    // Run 1: the long-running worker as a process, cut off from the broker mid-run, then
    // signalled while the cut lasts. Empty partitions (stock) fall idle after 5 s; the sales
    // partitions stay busy until the cut, during which an unreachable broker means not idle:
    // no epoch closes on the wall clock (which would forecast the days after the data), every
    // epoch closes by event time, as in replay, and the signal closes the last.
    let mut live = cfg.clone();
    live.kafka.idle_timeout_secs = 5;
    let file = config_file(
        &live,
        tmp.path(),
        "[http]\nlisten = \"127.0.0.1:0\"\n[kafka.client]\n\"message.max.bytes\" = \"60000\"\n",
    );
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_stockcast"))
        .args(["run", "--workers", "2", "--config"])
        .arg(&file)
        .env_remove("STOCKCAST_KAFKA_BROKERS")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let peak_kib = || -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmHWM:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            })
            .unwrap_or(0)
    };
    let trickle = {
        let producer = std::sync::Arc::clone(&producer);
        // Over about 40 s: the first commit comes once the empty partitions fell idle (5 s of
        // listening, confirmed with the broker), well before.
        let pause = Duration::from_secs(40) / tail.len().max(1) as u32;
        std::thread::spawn(move || {
            for item in &tail {
                send(&producer, item);
                std::thread::sleep(pause);
            }
            producer.flush(Duration::from_secs(120)).unwrap();
        })
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    while committed(&cfg, &cfg.kafka.topics.sales, partitions) == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let before_cut = committed(&cfg, &cfg.kafka.topics.sales, partitions);
    assert!(before_cut > 0, "run 1 committed nothing within 90 s");
    assert!(
        !trickle.is_finished(),
        "the cut comes while records still arrive"
    );
    proxy.set_cut(true);
    std::thread::sleep(Duration::from_secs(4));
    let peak = peak_kib();
    let signalled = Instant::now();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if signalled.elapsed() > Duration::from_secs(30) {
            // Where it hangs, for the failure message.
            let stacks = std::process::Command::new("gdb")
                .args([
                    "-p",
                    &pid.to_string(),
                    "-batch",
                    "-ex",
                    "thread apply all bt 12",
                ])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            let _ = child.kill();
            let mut log = String::new();
            let _ = std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut log);
            panic!("run 1 did not stop within 30 s of SIGTERM while its batch was failing\n{log}\n{stacks}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stop_secs = signalled.elapsed().as_secs_f64();
    let mut log = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut log).unwrap();
    assert!(exit.success(), "{exit:?}\n{log}");
    proxy.set_cut(false);
    trickle.join().unwrap();
    let landed = producer.context().0.lock().unwrap().clone();
    assert_eq!(landed.len(), bad.len(), "every bad record was acknowledged");
    let landed = offsets_read_back(&cfg, &bad, landed);
    let after_run1 = committed(&cfg, &cfg.kafka.topics.sales, partitions);
    eprintln!(
        "hostile: run 1 committed {before_cut} sales offsets before the cut, {after_run1} at exit; stopped {stop_secs:.1} s after SIGTERM; peak RSS {} MiB",
        peak / 1024
    );
    assert!(peak < 800 * 1024, "run 1 peaked at {} MiB", peak / 1024);
    assert!(
        log.contains("stopping with"),
        "run 1 stopped with a batch in flight:\n{log}"
    );

    // Run 2: restart under the same group and drain.
    let run2 = kafka::run_worker(&cfg, &options(2)).unwrap();
    assert!(run2.resumed_from.is_some());
    let after_run2 = committed(&cfg, &cfg.kafka.topics.sales, partitions);
    if after_run2 != sales_total {
        // Which side is off: the worker's commits, or the topic (a producer's duplicates).
        let held = consume_within(
            &cfg.kafka,
            &cfg.kafka.topics.sales,
            usize::MAX,
            Duration::from_secs(20),
        )
        .len();
        panic!(
            "{after_run2} sales offsets committed after the restart for {sales_total} records published; the topic holds {held}"
        );
    }

    // Forecasts: exactly replay's, duplicates allowed (at least once) and counted.
    let expected = replay_forecasts(&cfg, &data);
    let want: BTreeSet<String> = expected
        .iter()
        .map(|r| serde_json::to_string(r).unwrap())
        .collect();
    let got = consume_within(
        &cfg.kafka,
        &cfg.kafka.topics.forecasts,
        usize::MAX,
        Duration::from_secs(20),
    );
    let got: Vec<String> = got
        .into_iter()
        .map(|(_, v, _)| {
            let r: ForecastRecord = serde_json::from_slice(&v).unwrap();
            serde_json::to_string(&r).unwrap()
        })
        .collect();
    let distinct: BTreeSet<String> = got.iter().cloned().collect();
    let extra: Vec<&String> = distinct.difference(&want).take(3).collect();
    let missing: Vec<&String> = want.difference(&distinct).take(3).collect();
    eprintln!(
        "hostile: {} forecast records published for {} expected ({} duplicates)",
        got.len(),
        want.len(),
        got.len() - distinct.len()
    );
    assert!(extra.is_empty(), "published but not in replay: {extra:?}");
    assert!(
        missing.is_empty(),
        "in replay but never published: {missing:?}"
    );

    // Dead letters: every bad record, with its reason; the largest as `undeliverable` records
    // that carry the start of their dead letter.
    let letters = consume_within(
        &cfg.kafka,
        &cfg.kafka.topics.dead_letters,
        usize::MAX,
        Duration::from_secs(20),
    );
    let mut found: HashMap<(String, i32, i64), BTreeSet<String>> = HashMap::new();
    let mut undeliverable = 0;
    for (_, v, _) in &letters {
        assert!(v.len() < 200_000, "a dead letter of {} bytes", v.len());
        let d: wire::DeadLetterRecord = serde_json::from_slice(v).unwrap();
        let wire::DeadSource::Topic {
            topic: from,
            partition,
            offset,
        } = &d.source
        else {
            panic!("a dead letter on Kafka names no topic: {d:?}");
        };
        if d.reason == "undeliverable" {
            undeliverable += 1;
            assert_eq!(from, &cfg.kafka.topics.dead_letters);
            // The refused dead letter's first bytes name the record it was about.
            let text = match &d.content {
                wire::DeadContent::Message { value, .. } => value.clone().unwrap_or_default(),
                other => panic!("an undeliverable notice without the record: {other:?}"),
            };
            let topic = text
                .split(r#""topic":""#)
                .nth(1)
                .and_then(|s| s.split('"').next());
            let num = |field: &str| {
                text.split(&format!(r#""{field}":"#))
                    .nth(1)
                    .and_then(|s| s.split(',').next())
                    .and_then(|s| s.parse::<i64>().ok())
            };
            let reason = text
                .split(r#""reason":""#)
                .nth(1)
                .and_then(|s| s.split('"').next());
            if let (Some(t), Some(p), Some(o), Some(r)) =
                (topic, num("partition"), num("offset"), reason)
            {
                found
                    .entry((t.to_string(), p as i32, o))
                    .or_default()
                    .insert(r.to_string());
            }
            continue;
        }
        found
            .entry((from.clone(), *partition, *offset))
            .or_default()
            .insert(d.reason.clone());
    }
    let mut by_reason: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, b) in bad.iter().enumerate() {
        let (p, o) = landed[&i];
        let reasons = found.get(&(b.topic.clone(), p, o));
        assert!(
            reasons.is_some_and(|r| r.len() == 1 && r.contains(b.reason)),
            "bad record {i} ({}/{p}@{o}, expected {}): dead-lettered as {reasons:?}",
            b.topic,
            b.reason
        );
        *by_reason.entry(b.reason).or_default() += 1;
    }
    eprintln!(
        "hostile: {} dead-letter records for {} bad records, {undeliverable} of them undeliverable stand-ins; by reason {by_reason:?}",
        letters.len(),
        bad.len()
    );
    assert!(
        undeliverable >= 10,
        "the dead letters of the 1 MiB records were refused for good and replaced ({undeliverable})"
    );
    // Run 2 decided the dead letters above run 1's committed offsets and wrote them all.
    let m = &run2.stats;
    assert!(m.dead_letters.values().sum::<u64>() > 0);
}

/// The fuzz targets' seed corpus (`fuzz/seeds`, one file per input, the first byte choosing the
/// record kind) and seeded mutations of it through every decoder and the config parser: no
/// panic, and errors quote a bounded part of their input. `cargo fuzz` runs the same entry
/// points for millions of inputs (docs/reliability.md); this keeps them in the suite.
#[test]
fn seeds_and_their_mutations_never_break_a_decoder() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let mut inputs = 0u64;
    const PUNCT: &[u8] = b"{}[]\",:\\0e.-9\x00\xff";
    for (target, exercise) in [
        (
            "decode_json",
            (|b: &[u8]| {
                if let Some((&k, rest)) = b.split_first() {
                    stockcast::source::files::exercise(k, false, rest)
                }
            }) as fn(&[u8]),
        ),
        ("decode_csv", |b: &[u8]| {
            if let Some((&k, rest)) = b.split_first() {
                stockcast::source::files::exercise(k, true, rest)
            }
        }),
        ("config", stockcast::config::exercise),
    ] {
        let mut seeds: Vec<Vec<u8>> = std::fs::read_dir(root.join(target))
            .unwrap()
            .map(|e| std::fs::read(e.unwrap().path()).unwrap())
            .collect();
        seeds.sort();
        assert!(seeds.len() >= 10, "{target}: {} seeds", seeds.len());
        for seed in &seeds {
            exercise(seed);
            inputs += 1;
            for _ in 0..40 {
                let mut m = seed.clone();
                for _ in 0..rng.gen_range(1..6) {
                    let at = rng.gen_range(0..=m.len());
                    match rng.gen_range(0..4) {
                        0 if !m.is_empty() => {
                            m.remove(at.min(m.len() - 1));
                        }
                        1 => m.insert(at, rng.gen()),
                        2 => m.insert(at, PUNCT[rng.gen_range(0..PUNCT.len())]),
                        _ => m.truncate(at),
                    }
                }
                exercise(&m);
                inputs += 1;
            }
        }
    }
    // The largest values: 1 MiB ids and times, as a record and as a file.
    let huge = "x".repeat(1 << 20);
    for kind in 0..5u8 {
        for text in [
            format!(
                r#"{{"ts":"2024-01-01","store_id":"{huge}","sku_id":"{huge}","promo_id":"{huge}","qty":1}}"#
            ),
            format!(r#"{{"ts":"{huge}","store_id":"S","sku_id":"A","qty":"{huge}"}}"#),
        ] {
            stockcast::source::files::exercise(kind, false, text.as_bytes());
            inputs += 1;
        }
        let csv = format!("ts,store_id,sku_id,qty,promo_id\n2024-01-01,{huge},A,1,{huge}\n");
        stockcast::source::files::exercise(kind, true, csv.as_bytes());
        inputs += 1;
    }
    eprintln!("{inputs} hostile inputs decoded");
    assert!(inputs > 10_000);
}

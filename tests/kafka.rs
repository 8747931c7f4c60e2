//! The worker against a real Kafka-protocol broker (tansu, started by `scripts/kafka-broker.sh`,
//! which the test command runs). Each test uses its own topics and consumer group.
//!
//! Longer than 600 lines: one test per behaviour of the worker against the broker, with the
//! helpers only they use; `support/kafka.rs` holds what other test files share.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;
use stockcast::config::{CatchUp, Resolved};
use stockcast::kafka::{self, admin, load, wire};
use stockcast::pipeline::stream;
use stockcast::records::ForecastRecord;

#[path = "support/http.rs"]
mod http;
#[path = "support/kafka.rs"]
mod support;
use http::http_get;
use support::{
    assert_same_forecasts, broker_behind_proxy, committed, config, config_file, consume,
    consume_json, free_port, load_dir, m5_halves, options, replay_forecasts, shared,
    sorted_forecasts, split_sales,
};

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
            period: dataflows::PeriodKind::Day,
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
    let mut per_epoch: BTreeMap<String, u64> = BTreeMap::new();
    for f in &expected {
        *per_epoch.entry(f.epoch_end.to_string()).or_default() += 1;
    }
    let expected_first = per_epoch.keys().next().unwrap().clone();
    assert_same_forecasts(sorted_forecasts(got), sorted_forecasts(expected));

    // One progress record per epoch that consumed or changed anything (and the last): each
    // counts its own epoch's forecasts and events, and the last holds every input offset.
    let mut epochs: Vec<wire::EpochRecord> = consume_json(
        &cfg.kafka,
        &cfg.kafka.topics.epochs,
        run.stats.progress_records as usize,
    );
    assert!(run.stats.progress_records > run.stats.advances);
    assert_eq!(epochs.len() as u64, run.stats.progress_records);
    epochs.sort_by_key(|r| r.frontier);
    let mut previous = None;
    for r in &epochs {
        assert!(previous < Some(r.frontier), "two records for one epoch");
        let span = r.frontier - previous.unwrap_or(r.frontier - 1);
        assert_eq!(r.epochs_closed, span, "{r:?}");
        previous = Some(r.frontier);
        let want = per_epoch.remove(&r.epoch_end).unwrap_or(0);
        assert_eq!((r.keys_changed, r.keys_scored), (want, want), "{r:?}");
    }
    assert!(
        per_epoch.is_empty(),
        "epochs without a record: {per_epoch:?}"
    );
    // The first record is the first epoch with forecasts: the reference data read before the
    // first event counts there, and no empty epoch before it counts as closed.
    assert_eq!(epochs[0].epoch_end, expected_first);
    assert_eq!(epochs[0].epochs_closed, 1);
    assert_eq!(
        epochs[0].consumed.get("catalog"),
        loaded.published.get(&cfg.kafka.topics.catalog)
    );
    let closed: u64 = epochs.iter().map(|r| r.epochs_closed).sum();
    assert_eq!(closed, run.stats.epochs);
    assert_eq!(
        closed,
        epochs.last().unwrap().frontier - epochs[0].frontier + 1
    );
    let sales: u64 = epochs.iter().filter_map(|r| r.consumed.get("sales")).sum();
    assert_eq!(sales, 19_130);
    let last = epochs.last().unwrap();
    assert_eq!(Some(&last.epoch_end), run.stats.last_epoch_end.as_ref());
    let offsets: i64 = last
        .offsets
        .iter()
        .filter(|(p, _)| p.starts_with(cfg.kafka.topics.sales.as_str()))
        .map(|(_, o)| o)
        .sum();
    assert_eq!(offsets, 19_130);
    assert_eq!(committed(&cfg, &cfg.kafka.topics.sales, 4), 19_130);
}

/// Backfills the generated chain (10 stores x 50 SKUs x 40 days, several polls' worth of
/// records per worker) from 4 partitions with 2 workers under `cfg`: the output must be
/// replay's, and every offset committed. Returns the process's live state, for its metrics.
fn backfill_equals_replay(cfg: &Resolved) -> Arc<stream::Progress> {
    let dir = support::load_generated_chain(&cfg.kafka, (10, 50, 40), 4);
    let data = dir.path().to_path_buf();
    let opts = options(2);
    let progress = Arc::clone(&opts.progress);
    let worker = {
        let cfg = cfg.clone();
        std::thread::spawn(move || kafka::run_worker(&cfg, &opts).unwrap())
    };
    let run = support::join_within(worker, "the worker");
    let expected = replay_forecasts(cfg, &data);
    assert_eq!(run.stats.forecasts as usize, expected.len());
    let got: Vec<ForecastRecord> =
        consume_json(&cfg.kafka, &cfg.kafka.topics.forecasts, expected.len());
    assert_same_forecasts(sorted_forecasts(got), sorted_forecasts(expected));
    let sales = run.stats.consumed["sales"];
    assert_eq!(committed(cfg, &cfg.kafka.topics.sales, 4), sales as i64);
    progress
}

/// A process that holds `[output] max_held_series` changed series its sinks have not written
/// stops reading and holds its input until they are written. With a limit of one series it
/// pauses after nearly every step of the backfill, and must neither hang nor lose a record.
#[test]
fn a_process_at_its_limit_of_held_series_pauses_and_loses_nothing() {
    let mut cfg = config("held", "day");
    cfg.output.max_held_series = 1;
    let progress = backfill_equals_replay(&cfg);
    let paused = progress.metrics.input_paused.get();
    assert!(paused > 0, "the workers never reached the limit");
}

/// With `catch_up = "every_epoch"` a backfill read ahead of event time goes into the dataflow a
/// step at a time, so the changed series its process holds stay near `[output]
/// max_held_series`, however many events the workers read ahead (here every one: 40 days of
/// the chain, about 23,000 changed series, against a limit of 2,000). Each worker may go over
/// by a step or two: an eighth of the limit shared among the workers, or a day rollover of its
/// 250 series.
#[test]
fn a_backfill_with_every_epoch_holds_about_max_held_series() {
    let mut cfg = config("stepped", "day");
    cfg.output.max_held_series = 2_000;
    let progress = backfill_equals_replay(&cfg);
    let peak = progress.held_series_peak();
    println!("held at most {peak} changed series");
    assert!(peak > 0);
    assert!(
        peak <= 3_500,
        "held {peak} changed series at once, against [output] max_held_series = 2,000"
    );
}

/// A worker that holds `kafka.max_held_events` events for epochs that cannot close yet pauses
/// the partitions ahead (librdkafka stops fetching them) and resumes them as event time moves.
/// A resumed partition must go on after the last record it handed over: nothing skipped,
/// nothing read twice. With a cap of 4,000 the workers pause at start (event time waits for
/// every partition to speak and for the reference data while the sales are read) and for a
/// few seconds after.
#[test]
fn partitions_paused_at_the_held_event_cap_resume_where_they_stopped() {
    let mut cfg = config("capped", "day");
    cfg.kafka.max_held_events = 4_000;
    let progress = backfill_equals_replay(&cfg);
    let pauses = progress.metrics.partition_pauses.get();
    assert!(pauses > 0, "no partition was paused");
}

/// `catch_up = "latest"` on a backfill: each series once per advance, at the last epoch it
/// changed in. Every record published is replay's record of that series and epoch; every
/// epoch's progress record accounts for all of replay's records of that epoch (published or
/// superseded); and the newest record of every series is replay's newest.
#[test]
fn m5_mini_catching_up_with_latest_publishes_each_series_current_forecast_once_per_advance() {
    let mut cfg = config("latest", "day");
    cfg.output.catch_up = CatchUp::Latest;
    let data = shared("m5_mini");
    load_dir(&cfg.kafka, &data, 4);
    let run = kafka::run_worker(&cfg, &options(2)).unwrap();
    assert_eq!(run.stats.consumed["sales"], 19_130);
    let expected = replay_forecasts(&cfg, &data);
    let got: Vec<ForecastRecord> = consume_json(
        &cfg.kafka,
        &cfg.kafka.topics.forecasts,
        run.stats.forecasts as usize,
    );
    assert_eq!(got.len() as u64, run.stats.forecasts);
    assert!(
        got.len() < expected.len(),
        "a backfill closes many epochs per advance, so some forecasts are superseded: {} of {}",
        got.len(),
        expected.len()
    );
    let line = |r: &ForecastRecord| serde_json::to_string(r).unwrap();
    let wanted: std::collections::HashSet<String> = expected.iter().map(line).collect();
    for r in &got {
        assert!(
            wanted.contains(&line(r)),
            "not a replay record: {}",
            line(r)
        );
    }
    let newest = |records: &[ForecastRecord]| {
        let mut m: BTreeMap<(String, String), String> = BTreeMap::new();
        for r in records {
            let k = (r.store_id.to_string(), r.sku_id.to_string());
            if m.get(&k).is_none_or(|l| {
                serde_json::from_str::<ForecastRecord>(l).unwrap().epoch_end < r.epoch_end
            }) {
                m.insert(k, line(r));
            }
        }
        m
    };
    assert_eq!(newest(&got), newest(&expected));

    let epochs: Vec<wire::EpochRecord> = consume_json(
        &cfg.kafka,
        &cfg.kafka.topics.epochs,
        run.stats.progress_records as usize,
    );
    let mut per_epoch: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for f in &expected {
        per_epoch.entry(f.epoch_end.to_string()).or_default().0 += 1;
    }
    for f in &got {
        per_epoch.entry(f.epoch_end.to_string()).or_default().1 += 1;
    }
    let mut superseded = 0;
    for r in &epochs {
        let (replayed, published) = per_epoch.remove(&r.epoch_end).unwrap_or((0, 0));
        assert_eq!(r.keys_changed, published, "{r:?}");
        assert_eq!(r.keys_changed + r.keys_superseded, replayed, "{r:?}");
        superseded += r.keys_superseded;
    }
    assert!(
        per_epoch.is_empty(),
        "epochs without a record: {per_epoch:?}"
    );
    assert_eq!(superseded + got.len() as u64, expected.len() as u64);
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
    let last = &run.latest[&(Arc::from("S1"), Arc::from("A"))];
    assert_eq!(&*last.epoch_end, "2024-03-20T10:15:00Z");

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

#[test]
fn a_restart_resumes_at_the_committed_frontier_without_double_counting() {
    let cfg = config("restart", "day");
    let tmp = tempfile::tempdir().unwrap();
    let (first, second, all) = m5_halves(tmp.path());
    let load = |dir: &Path| load_dir(&cfg.kafka, dir, 3);
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
    eprintln!(
        "restart test: run 1 last epoch {:?}, {} forecasts, late {}; run 2 resumed at {:?}, {} forecasts, late {}",
        run1.stats.last_epoch_end,
        run1.stats.forecasts,
        run1.stats.late,
        run2.resumed_from.map(|e| stockcast::display::rfc3339(cfg.clock.epoch_start(e))),
        run2.stats.forecasts,
        run2.stats.late
    );
    assert_eq!(
        (run1.stats.forecasts + run2.stats.forecasts) as usize,
        expected.len()
    );
    let got: Vec<ForecastRecord> = consume(&cfg.kafka, &cfg.kafka.topics.forecasts, expected.len())
        .into_iter()
        .map(|(_, v, _)| serde_json::from_slice(&v).unwrap())
        .collect();
    assert_same_forecasts(sorted_forecasts(got), sorted_forecasts(expected));
    assert_eq!(committed(&cfg, &cfg.kafka.topics.sales, 3), 19_130);
}

#[test]
fn a_30_second_broker_outage_loses_and_double_counts_nothing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let tmp = tempfile::tempdir().unwrap();
    let (_broker, proxy, _, proxy_port) = broker_behind_proxy(&tmp.path().join("broker"));

    let mut cfg = config("outage", "day");
    cfg.kafka.brokers = format!("127.0.0.1:{proxy_port}");
    // Longer than the outage: a partition whose producer is cut off too is, from the broker's
    // side, idle; with a shorter timeout its events would (correctly) arrive late.
    cfg.kafka.idle_timeout_secs = 60;
    admin::ensure_topics(&cfg.kafka, 3).unwrap();
    let data = shared("m5_mini");

    // Events arrive while the worker runs: 19,130 sales at 2,000/s, through the proxy.
    let loader = {
        let kafka = cfg.kafka.clone();
        let data = data.clone();
        std::thread::spawn(move || {
            load::load(
                &kafka,
                &load::LoadOptions {
                    data,
                    rate: Some(2_000.0),
                    partitions: 3,
                    progress: false,
                    period: dataflows::PeriodKind::Day,
                },
            )
            .unwrap()
        })
    };
    // Every sales partition holds data before the worker starts: a partition empty at start
    // is idle, and the others would run ahead of it.
    std::thread::sleep(Duration::from_secs(1));
    // Silence never closes epochs here (the "wall clock" stays at 1970): only events do, and
    // stopping closes the rest.
    let stop = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(stream::Progress::default());
    let worker = {
        let cfg = cfg.clone();
        let opts = stream::StreamOptions {
            cluster: None,
            progress: Arc::clone(&progress),
            workers: 2,
            exit_when_idle: false,
            drain_through: None,
            stop: Arc::clone(&stop),
            wall_clock: Arc::new(|| 0),
            from_scratch: false,
        };
        std::thread::spawn(move || kafka::run_worker(&cfg, &opts).unwrap())
    };
    std::thread::sleep(Duration::from_secs(4));
    proxy.set_cut(true);
    std::thread::sleep(Duration::from_secs(30));
    proxy.set_cut(false);
    let t0 = Instant::now();
    let loaded = support::join_within(loader, "the loader");
    eprintln!("outage test: loader done {:?} after the cut", t0.elapsed());
    assert_eq!(loaded.published[&cfg.kafka.topics.sales], 19_130);
    // The outage interrupted the stream: at 2,000/s the load alone takes under 10 s.
    assert!(loaded.secs > 30.0, "load took {:.1} s", loaded.secs);

    // Wait until the worker has consumed everything and closed every epoch but the last,
    // still open one; stopping then finishes that epoch.
    let expected = replay_forecasts(&cfg, &data);
    let last_end = expected.iter().map(|r| r.epoch_end.clone()).max().unwrap();
    let last_epoch = cfg
        .clock
        .epoch_of(
            chrono::DateTime::parse_from_rfc3339(&last_end)
                .unwrap()
                .timestamp(),
        )
        .unwrap()
        - 1;
    let deadline = Instant::now() + Duration::from_secs(120);
    while (progress.consumed.load(Ordering::SeqCst) < loaded.published.values().sum::<u64>()
        || progress.frontier.load(Ordering::SeqCst) < last_epoch)
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("outage test: outputs seen {:?} after the cut", t0.elapsed());
    stop.store(true, Ordering::SeqCst);
    let run = support::join_within(worker, "the worker");
    eprintln!(
        "outage test: worker stopped {:?} after the cut; late {}, sink retries {}, producers replaced {}, forecasts {}",
        t0.elapsed(),
        run.stats.late,
        run.stats.retries,
        run.stats.producers_replaced,
        run.stats.forecasts
    );

    // Every event consumed exactly once, none refused, none late: silence during the outage
    // did not count as idleness.
    assert_eq!(run.stats.consumed["sales"], 19_130);
    assert!(
        run.stats.dead_letters.is_empty(),
        "{:?}",
        run.stats.dead_letters
    );
    assert_eq!(run.stats.late, 0);
    // The final state equals one replay of the data: the latest forecast of every series.
    let mut want: stockcast::records::Latest = Default::default();
    for r in expected {
        want.insert((r.store_id.clone(), r.sku_id.clone()), r);
    }
    assert_eq!(run.latest.len(), want.len());
    for (key, r) in &want {
        assert_eq!(run.latest[key].forecast, r.forecast, "{key:?}");
    }
}

#[test]
fn a_slow_broker_still_lets_silent_partitions_count_as_idle() {
    let tmp = tempfile::tempdir().unwrap();
    let (_broker, proxy, _, proxy_port) = broker_behind_proxy(&tmp.path().join("broker"));
    let mut cfg = config("slow", "day");
    cfg.kafka.brokers = format!("127.0.0.1:{proxy_port}");
    // 4 partitions of 6 input topics: each of the 2 workers reads 12.
    let data = tmp.path().join("data");
    let params = stockcast::generate::Params {
        stores: 2,
        skus: 4,
        days: 30,
        ..Default::default()
    };
    stockcast::generate::generate_to_dir(&params, &data).unwrap();
    let loaded = load_dir(&cfg.kafka, &data, 4);

    // Every answer of the broker now takes 300 ms: a round of idleness checks over 12
    // partitions takes longer than a check used to stay good, and each check is a pause
    // between two polls longer than the listening gap.
    proxy.set_reply_delay(Duration::from_millis(300));
    let opts = options(2);
    let stop = Arc::clone(&opts.stop);
    let started = Instant::now();
    let worker = {
        let cfg = cfg.clone();
        std::thread::spawn(move || kafka::run_worker(&cfg, &opts).unwrap())
    };
    // Far more than the run needs (the idle timeout is 5 s); a worker that never sees its
    // partitions idle would wait here for ever.
    let limit = Duration::from_secs(120);
    while !worker.is_finished() && started.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(100));
    }
    let drained = worker.is_finished();
    stop.store(true, Ordering::SeqCst);
    let run = support::join_within(worker, "the worker");
    assert!(
        drained,
        "the worker did not drain within {limit:?}: its silent partitions never counted as idle"
    );
    eprintln!(
        "slow broker: drained in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let sales = &cfg.kafka.topics.sales;
    assert_eq!(run.stats.consumed["sales"], loaded.published[sales]);
    assert!(run.stats.forecasts > 0);
    assert_eq!(committed(&cfg, sales, 4), loaded.published[sales] as i64);
}

#[test]
fn sigterm_stops_the_worker_cleanly_with_everything_committed() {
    let cfg = config("sigterm", "day");
    let data = shared("m5_mini");
    load::load(
        &cfg.kafka,
        &load::LoadOptions {
            data,
            rate: None,
            partitions: 2,
            progress: false,
            period: dataflows::PeriodKind::Day,
        },
    )
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let t = &cfg.kafka.topics;
    let mut short = cfg.clone();
    short.kafka.idle_timeout_secs = 2;
    let file = config_file(&short, tmp.path(), "[http]\nlisten = \"127.0.0.1:0\"\n");
    // The long-running worker (no --exit-when-idle): it only stops on a signal. Its HTTP
    // server takes any free port, so a worker already on 9898 does not matter.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_stockcast"))
        .args(["run", "--workers", "2", "--config"])
        .arg(&file)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while committed(&cfg, &t.sales, 2) < 19_130 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
    }
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let stopped = Instant::now();
    let exit = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(30),
            "the worker did not stop within 30 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut log = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut log).unwrap();
    assert!(exit.success(), "{exit:?}\n{log}");
    assert!(log.contains("SIGTERM"), "{log}");
    assert!(log.contains("worker stopped"), "{log}");
    assert_eq!(committed(&cfg, &t.sales, 2), 19_130);
}

/// A two-process timely cluster of `stockcast run` (1 worker each) on `cfg`'s topics, with
/// `args` added; its processes' log files are in `dir`.
struct TwoProcesses {
    children: Vec<std::process::Child>,
    logs: Vec<PathBuf>,
}

impl TwoProcesses {
    fn start(cfg: &Resolved, dir: &Path, args: &[&str]) -> TwoProcesses {
        let file = config_file(cfg, dir, "[http]\nlisten = \"\"\n");
        // Both listeners are held until both ports are known, so the two differ.
        let listeners = [free_port(), free_port()];
        let ports = listeners.map(|l| l.local_addr().unwrap().port());
        let hosts = dir.join("hosts");
        std::fs::write(
            &hosts,
            format!(
                "# process 0 first\n127.0.0.1:{}\n127.0.0.1:{}\n",
                ports[0], ports[1]
            ),
        )
        .unwrap();
        let logs: Vec<PathBuf> = (0..2)
            .map(|p| dir.join(format!("process-{p}.log")))
            .collect();
        let children = (0..2)
            .map(|p| {
                std::process::Command::new(env!("CARGO_BIN_EXE_stockcast"))
                    .args(["run", "--workers", "1", "--config"])
                    .arg(&file)
                    .arg("--hosts")
                    .arg(&hosts)
                    .args(["--process", &p.to_string()])
                    .args(args)
                    .stderr(std::fs::File::create(&logs[p]).unwrap())
                    .spawn()
                    .unwrap()
            })
            .collect();
        TwoProcesses { children, logs }
    }

    /// Waits up to `limit` for both to exit; asserts both succeeded; returns their logs.
    fn wait_success(mut self, limit: Duration) -> Vec<String> {
        let deadline = Instant::now() + limit;
        let mut exits = vec![None; 2];
        while exits.iter().any(Option::is_none) && Instant::now() < deadline {
            for (c, e) in self.children.iter_mut().zip(&mut exits) {
                if e.is_none() {
                    *e = c.try_wait().unwrap();
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        for c in &mut self.children {
            let _ = c.kill();
        }
        let log: Vec<String> = self
            .logs
            .iter()
            .map(|l| std::fs::read_to_string(l).unwrap())
            .collect();
        for (p, e) in exits.iter().enumerate() {
            assert!(
                e.is_some_and(|e| e.success()),
                "process {p} ended with {e:?} within {limit:?}:\n{}",
                log[p]
            );
        }
        log
    }
}

/// Two `stockcast run` processes forming one timely cluster (1 worker each) over 4 partitions:
/// each reads its own partitions, process 0 publishes, and the forecasts equal the replay's.
#[test]
fn a_cluster_of_two_processes_publishes_what_replay_computes() {
    let cfg = config("cluster", "day");
    let data = shared("m5_mini");
    load_dir(&cfg.kafka, &data, 4);
    let tmp = tempfile::tempdir().unwrap();
    let log = TwoProcesses::start(&cfg, tmp.path(), &["--exit-when-idle"])
        .wait_success(Duration::from_secs(240));
    // Each process read two of the four sales partitions.
    for (p, text) in log.iter().enumerate() {
        let assigned = text.lines().find(|l| l.contains("assigned")).unwrap();
        let sales = assigned
            .matches(&format!("{}/", cfg.kafka.topics.sales))
            .count();
        assert_eq!(sales, 2, "process {p}: {assigned}");
    }

    let expected = replay_forecasts(&cfg, &data);
    let got: Vec<ForecastRecord> = consume(&cfg.kafka, &cfg.kafka.topics.forecasts, expected.len())
        .into_iter()
        .map(|(_, value, _)| serde_json::from_slice(&value).unwrap())
        .collect();
    assert_same_forecasts(sorted_forecasts(got), sorted_forecasts(expected.clone()));
    // Each process scored and wrote the series its own workers hold, each record once.
    let count = |text: &str, field: &str| -> usize {
        let at = text.find(field).expect(field) + field.len();
        let digits: String = text[at..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().unwrap()
    };
    let written: Vec<usize> = log.iter().map(|t| count(t, " forecasts=")).collect();
    assert!(written.iter().all(|n| *n > 0), "{written:?}");
    assert_eq!(written.iter().sum::<usize>(), expected.len(), "{written:?}");
    // Process 0 wrote the progress records once both had written their part: each counts its
    // epoch's forecasts over both processes.
    let progress: Vec<wire::EpochRecord> = consume_json(
        &cfg.kafka,
        &cfg.kafka.topics.epochs,
        count(&log[0], "progress_records="),
    );
    assert_eq!(count(&log[1], "progress_records="), 0);
    let mut per_epoch: BTreeMap<String, u64> = BTreeMap::new();
    for f in &expected {
        *per_epoch.entry(f.epoch_end.to_string()).or_default() += 1;
    }
    for r in &progress {
        let want = per_epoch.remove(&r.epoch_end).unwrap_or(0);
        assert_eq!((r.keys_changed, r.keys_scored), (want, want), "{r:?}");
    }
    assert!(
        per_epoch.is_empty(),
        "epochs without a record: {per_epoch:?}"
    );
    // Each process committed the partitions it read (process 0 no longer commits process
    // 1's), and together every partition up to its end.
    let commits: Vec<usize> = log.iter().map(|t| count(t, " offset_commits=")).collect();
    assert!(commits.iter().all(|n| *n > 0), "{commits:?}");
    assert_eq!(committed(&cfg, &cfg.kafka.topics.sales, 4), 19_130);

    // The cluster restarted (no checkpoint: it reads every partition again) resumes where
    // output stopped: neither process writes a forecast again, and the offsets stay at the end.
    let again = TwoProcesses::start(&cfg, tmp.path(), &["--exit-when-idle"])
        .wait_success(Duration::from_secs(240));
    let rewritten: Vec<usize> = again.iter().map(|t| count(t, " forecasts=")).collect();
    assert_eq!(rewritten, vec![0, 0]);
    assert_eq!(committed(&cfg, &cfg.kafka.topics.sales, 4), 19_130);
}

/// SIGTERM to one process of a live cluster stops them all cleanly, everything committed.
#[test]
fn sigterm_to_one_process_stops_the_whole_cluster_cleanly() {
    let cfg = config("cluster-stop", "day");
    load_dir(&cfg.kafka, &shared("m5_mini"), 4);
    let tmp = tempfile::tempdir().unwrap();
    // Live mode: without a signal the cluster would run forever.
    let cluster = TwoProcesses::start(&cfg, tmp.path(), &[]);
    let deadline = Instant::now() + Duration::from_secs(120);
    while committed(&cfg, &cfg.kafka.topics.sales, 4) < 19_130 {
        assert!(
            Instant::now() < deadline,
            "the cluster committed too little"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let status = std::process::Command::new("kill")
        .args(["-TERM", &cluster.children[1].id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let log = cluster.wait_success(Duration::from_secs(30));
    assert!(log[1].contains("SIGTERM"), "{}", log[1]);
    assert!(log[0].contains("a peer is stopping"), "{}", log[0]);
    assert!(log[0].contains("worker stopped"), "{}", log[0]);
    assert_eq!(committed(&cfg, &cfg.kafka.topics.sales, 4), 19_130);
}

#[test]
fn a_new_model_version_rescores_every_series_once_then_only_changed_ones() {
    use stockcast::model::history::History;
    use stockcast::model::train::{self, TrainOptions};

    let mut cfg = config("reload", "day");
    // Long enough that the worker cannot drain between the two loads below.
    cfg.kafka.idle_timeout_secs = 20;
    let m5 = shared("m5_mini");
    let tmp = tempfile::tempdir().unwrap();
    let (first, second) = (tmp.path().join("a"), tmp.path().join("b"));
    split_sales(&m5, &first, "0000", "2014-01-01");
    // Then one sale of one series, later on the last day: the epoch it closes changes only
    // that series.
    let late_sale = "2013-12-31T12:00:00Z,CA_1,HOBBIES_1_001,3,8.26";
    std::fs::create_dir_all(&second).unwrap();
    std::fs::write(
        second.join("sales.csv"),
        format!("date,store_id,sku_id,qty,price\n{late_sale}\n"),
    )
    .unwrap();
    // The price plan (m5_mini's, known ahead) came with the first part.
    std::fs::write(
        second.join("prices.csv"),
        "price_id,store_id,sku_id,start,end,price\n",
    )
    .unwrap();
    let all = tmp.path().join("all");
    std::fs::create_dir_all(&all).unwrap();
    std::fs::copy(first.join("prices.csv"), all.join("prices.csv")).unwrap();
    let first_text = std::fs::read_to_string(first.join("sales.csv")).unwrap();
    std::fs::write(all.join("sales.csv"), format!("{first_text}{late_sale}\n")).unwrap();

    // Two versions of a small model, trained on the first half.
    let history = History::load(&cfg, &first, 1).unwrap();
    let versions: Vec<_> = [1u64, 2]
        .iter()
        .map(|seed| {
            let mut o = TrainOptions::new(cfg.spec.horizon as usize);
            o.seed = *seed;
            o.max_epochs = 2;
            o.hidden = vec![16];
            o.refit = false;
            train::train(&history, "m5_mini", &o).unwrap().0
        })
        .collect();
    let (v1, v2) = (
        versions[0].manifest.version.clone(),
        versions[1].manifest.version.clone(),
    );
    assert_ne!(v1, v2);
    let model_dir = tmp.path().join("model");
    versions[0].save(&model_dir).unwrap();
    cfg.model.dir = Some(model_dir.clone());

    let load = |dir: &Path| load_dir(&cfg.kafka, dir, 2).published.values().sum::<u64>();
    load(&first);
    let opts = options(2);
    let progress = Arc::clone(&opts.progress);
    let worker = {
        let cfg = cfg.clone();
        std::thread::spawn(move || kafka::run_worker(&cfg, &opts).unwrap())
    };
    // Partitions hold time back for one idle timeout from the worker's start even when empty,
    // so nothing closes before the late sale below arrives. It comes 10 s after the start:
    // the other partitions fall idle first (the frontier reaches its epoch), its own partition
    // later (the worker drains). The new version appears in between.
    std::thread::sleep(Duration::from_secs(10));
    assert_eq!(
        progress.frontier.load(Ordering::SeqCst),
        0,
        "an epoch closed before the idle timeout"
    );
    // The late sale closes the last day's first epoch (every series changed); its own epoch
    // stays open until the worker drains.
    load(&second);
    let noon = cfg
        .clock
        .epoch_of(stockcast::decode::parse_time("t", "2013-12-31T12:00:00Z").unwrap())
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while progress.frontier.load(Ordering::SeqCst) < noon {
        assert!(Instant::now() < deadline, "the late sale was not consumed");
        std::thread::sleep(Duration::from_millis(100));
    }
    versions[1].save(&model_dir).unwrap();
    let run = support::join_within(worker, "the worker");

    let records: Vec<ForecastRecord> = consume_json(
        &cfg.kafka,
        &cfg.kafka.topics.forecasts,
        run.stats.forecasts as usize,
    );
    assert_eq!(records.len() as u64, run.stats.forecasts);
    let switch = records
        .iter()
        .filter(|r| *r.model_version == *v2)
        .map(|r| r.epoch_end.to_string())
        .min()
        .expect("no record of the new version");
    // Before the switch only v1 scored, from it on only v2.
    for r in &records {
        let want = if *r.epoch_end < *switch { &v1 } else { &v2 };
        assert_eq!(
            &*r.model_version, want,
            "{} {}:{}",
            r.epoch_end, r.store_id, r.sku_id
        );
    }
    // The advance that switched scored its changed series and, once, every other series: the
    // only progress record with more keys scored than changed.
    let progress: Vec<wire::EpochRecord> = consume_json(
        &cfg.kafka,
        &cfg.kafka.topics.epochs,
        run.stats.progress_records as usize,
    );
    let switched: Vec<&wire::EpochRecord> = progress
        .iter()
        .filter(|p| p.keys_scored != p.keys_changed)
        .collect();
    assert_eq!(switched.len(), 1, "{switched:?}");
    let extra = switched[0].keys_scored - switched[0].keys_changed;
    assert_eq!((switched[0].keys_changed, extra), (1, 9));
    let switch_end = &switched[0].epoch_end;
    assert!(*switch_end >= switch);
    let mut renewed: Vec<(&str, &str)> = records
        .iter()
        .filter(|r| *r.model_version == *v2 && *r.epoch_end <= **switch_end)
        .map(|r| (&*r.store_id, &*r.sku_id))
        .collect();
    renewed.sort_unstable();
    renewed.dedup();
    assert_eq!(
        renewed.len(),
        10,
        "every series has a forecast of the new model"
    );
    // Apart from those extra records, exactly what a replay publishes: changed series only.
    let expected = replay_forecasts(&cfg, &all);
    assert_eq!(records.len(), expected.len() + extra as usize);
}

#[test]
fn the_http_api_and_every_metric_answer_from_a_running_worker() {
    let cfg = config("http", "day");
    let _data = support::load_generated(&cfg.kafka);
    let opts = options(2);
    let progress = Arc::clone(&opts.progress);
    let server = stockcast::http::serve("127.0.0.1:0", Arc::clone(&progress), 600, None).unwrap();
    let addr = server.addr;
    let worker = {
        let cfg = cfg.clone();
        std::thread::spawn(move || kafka::run_worker(&cfg, &opts).unwrap())
    };
    // Ready once the worker has its partitions and wrote its first advance (which may be its
    // last: the worker can drain in one step).
    let deadline = Instant::now() + Duration::from_secs(120);
    while progress.last_advance.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "no epoch closed");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (status, body) = http_get(addr, "/readyz");
    assert_eq!(status, 200, "{body}");
    assert_eq!(http_get(addr, "/healthz").0, 200);
    let run = support::join_within(worker, "the worker");
    assert!(run.stats.forecasts > 0);
    // The state: 8 series, each with many records (one per period with sales, attributes...).
    let m = &progress.metrics;
    assert_eq!(m.state_keys.get(), 8);
    assert!(m.state_records.get() > 8 * 10, "{}", m.state_records.get());
    assert_eq!(m.api_series.get(), run.latest.len() as i64);

    // Every metric the registry declares is exported, with the traffic it saw.
    let (status, text) = http_get(addr, "/metrics");
    assert_eq!(status, 200);
    for name in progress.metrics.names() {
        assert!(text.contains(&format!("# TYPE {name} ")), "{name} missing");
    }
    let sales = &cfg.kafka.topics.sales;
    assert!(
        text.contains(&format!(
            "stockcast_events_consumed_total{{partition=\"0\",topic=\"{sales}\"}}"
        )),
        "{text}"
    );
    assert!(text.contains("stockcast_model_info{name=\"baseline-ma\",version=\"1\"} 1"));
    assert!(
        !text.contains("S000") && !text.contains("SKU0"),
        "no series ids in labels"
    );
    let closed = text
        .lines()
        .find_map(|l| l.strip_prefix("stockcast_epochs_closed_total "))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap();
    assert_eq!(closed, run.stats.epochs);

    // The read API answers from the worker's state.
    let (store, sku) = run.latest.keys().next().unwrap().clone();
    let (status, body) = http_get(addr, &format!("/v1/forecasts/{store}/{sku}"));
    assert_eq!(status, 200, "{body}");
    let rec: ForecastRecord = serde_json::from_str(&body).unwrap();
    assert_eq!(rec, run.latest[&(store.clone(), sku)]);
    assert_eq!(http_get(addr, "/v1/forecasts/nope/none").0, 404);
    let (status, body) = http_get(addr, &format!("/v1/recommendations?store={store}&limit=3"));
    assert_eq!(status, 200, "{body}");
    let recs: Vec<ForecastRecord> = serde_json::from_str(&body).unwrap();
    assert!(!recs.is_empty() && recs.len() <= 3, "{body}");
    let qty = |r: &ForecastRecord| r.recommendation.order_qty.unwrap();
    for w in recs.windows(2) {
        assert!(qty(&w[0]) >= qty(&w[1]), "largest orders first");
    }
    assert!(recs.iter().all(|r| r.store_id == store && qty(r) > 0.0));
    let (status, body) = http_get(addr, "/v1/recommendations?limit=zero");
    assert_eq!(status, 400);
    assert!(body.contains("limit"), "{body}");
    drop(server);
}

#[test]
fn deleted_topics_are_gone_and_deleting_them_again_is_no_error() {
    let cfg = config("delete-topics", "day");
    admin::ensure_topics(&cfg.kafka, 2).unwrap();
    let mut all: Vec<String> = (admin::all_topics(&cfg.kafka).into_iter())
        .map(|(t, _)| t)
        .collect();
    all.sort();
    let consumer: rdkafka::consumer::BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", support::brokers())
        .create()
        .unwrap();
    // This test's topics among every topic the broker lists (none named, so none is created
    // by asking).
    let ours = || -> Vec<String> {
        let metadata =
            rdkafka::consumer::Consumer::fetch_metadata(&consumer, None, Duration::from_secs(10))
                .unwrap();
        let mut names: Vec<String> = (metadata.topics().iter())
            .map(|t| t.name().to_string())
            .filter(|n| all.contains(n))
            .collect();
        names.sort();
        names
    };
    assert_eq!(ours(), all);
    admin::delete_topics(&cfg.kafka).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = ours();
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "still listed: {left:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    admin::delete_topics(&cfg.kafka).unwrap();
}

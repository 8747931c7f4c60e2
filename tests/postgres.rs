//! The PostgreSQL inventory mart against a real server (127.0.0.1:5432, started by
//! `scripts/services.sh`): an advance lands atomically, a retried advance writes nothing twice,
//! and a worker whose database is down retries and loses nothing once it is back.
//!
//! Slightly over 600 lines: the tests share one server, its setup and its helpers, which read
//! best next to the tests that use them.

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use stockcast::mart::Mart;
use stockcast::records::EpochRecord;
use stockcast::records::ForecastRecord;
use stockcast::replenish::Advice;
use tokio_postgres::NoTls;

/// Tests that stop the server must not overlap the others.
static SERVER: Mutex<()> = Mutex::new(());

fn admin_url() -> String {
    std::env::var("STOCKCAST_TEST_POSTGRES")
        .unwrap_or_else(|_| "host=127.0.0.1 port=5432 user=postgres dbname=postgres".into())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Runs `sql` on `url`; returns the first column of every row as text.
fn query(rt: &tokio::runtime::Runtime, url: &str, sql: &str) -> Vec<Vec<Option<String>>> {
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(url, NoTls)
            .await
            .unwrap_or_else(|e| {
                panic!("no PostgreSQL at {url}: {e} (scripts/services.sh starts one)")
            });
        tokio::spawn(conn);
        let rows = client.simple_query(sql).await.unwrap();
        rows.into_iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => {
                    Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
                }
                _ => None,
            })
            .collect()
    })
}

/// Drops the test's database when the test ends.
struct Database(String);

impl Drop for Database {
    fn drop(&mut self) {
        let rt = runtime();
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.0);
        let _ = rt.block_on(async {
            let (client, conn) = tokio_postgres::connect(&admin_url(), NoTls).await?;
            tokio::spawn(conn);
            client.simple_query(&sql).await
        });
    }
}

/// A new, empty database (dropped with the returned guard); returns its connection string.
fn fresh_database(rt: &tokio::runtime::Runtime, test: &str) -> (String, Database) {
    let name = format!("stockcast_{test}_{}", kafka_support::nonce('_'));
    query(rt, &admin_url(), &format!("CREATE DATABASE {name}"));
    let url = format!("host=127.0.0.1 port=5432 user=postgres dbname={name}");
    (url, Database(name))
}

fn count(rt: &tokio::runtime::Runtime, url: &str, sql: &str) -> i64 {
    query(rt, url, sql)[0][0]
        .as_deref()
        .unwrap()
        .parse()
        .unwrap()
}

fn record(store: usize, sku: usize, epoch_end: &str, qty: f64) -> ForecastRecord {
    ForecastRecord {
        epoch_end: epoch_end.into(),
        store_id: format!("S{store}").into(),
        sku_id: format!("K{sku}").into(),
        schema_hash: "h".into(),
        model: "baseline-ma".into(),
        model_version: "1".into(),
        fallback_reason: None,
        forecast: vec![qty; 4],
        forecast_p10: vec![qty / 2.0; 4],
        forecast_p90: vec![qty * 2.0; 4],
        on_hand: Some(3.0),
        on_order: None,
        recommendation: Advice {
            order_qty: Some(qty),
            order_up_to: qty + 3.0,
            reorder_point: 1.0,
            cover_periods: None,
            stockout_risk: Some(0.5),
            lead_time_days: 7.0,
            review_days: 7.0,
            service_level: 0.95,
            pack_size: 1.0,
            min_order_qty: 0.0,
            active: true,
        },
    }
}

fn progress(epoch_end: &str, frontier: u64, keys: u64) -> EpochRecord {
    EpochRecord {
        epoch_end: epoch_end.into(),
        frontier,
        epochs_closed: 1,
        consumed: Default::default(),
        late: 0,
        dead_letters: 0,
        keys_changed: keys,
        keys_superseded: 0,
        keys_scored: keys,
        offsets: Default::default(),
        latency_ms: 0,
    }
}

#[test]
fn an_advance_lands_atomically_and_a_retry_writes_nothing_twice() {
    let _guard = SERVER.lock().unwrap_or_else(|e| e.into_inner());
    let rt = runtime();
    let (url, _db) = fresh_database(&rt, "atomic");
    let mut mart = Mart::connect(&url).unwrap();
    let n = 20_000usize;
    let first: Vec<ForecastRecord> = (0..n)
        .map(|i| record(i % 50, i / 50, "2024-01-01T00:15:00Z", 1.0))
        .collect();
    let second: Vec<ForecastRecord> = (0..n)
        .map(|i| record(i % 50, i / 50, "2024-01-01T00:30:00Z", 2.0))
        .collect();

    // A reader polling in one snapshot sees whole advances only.
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (stop, url) = (Arc::clone(&stop), url.clone());
        std::thread::spawn(move || {
            let rt = runtime();
            let mut seen = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let row = &query(
                    &rt,
                    &url,
                    "SELECT (SELECT count(*) FROM stockcast_forecast_history),
                            (SELECT count(*) FROM stockcast_epochs),
                            (SELECT count(*) FROM stockcast_forecasts)",
                )[0];
                let v: Vec<i64> = row
                    .iter()
                    .map(|c| c.as_deref().unwrap().parse().unwrap())
                    .collect();
                seen.push((v[0], v[1], v[2]));
            }
            seen
        })
    };
    mart.write(&first, &[progress("2024-01-01T00:15:00Z", 2, n as u64)])
        .unwrap();
    // An advance that closed two epochs: a progress row for each.
    let closing_two = [
        progress("2024-01-01T00:30:00Z", 3, n as u64),
        progress("2024-01-01T00:45:00Z", 4, 0),
    ];
    mart.write(&second, &closing_two).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::SeqCst);
    let seen = reader.join().unwrap();
    assert!(!seen.is_empty());
    let n = n as i64;
    for s in &seen {
        assert!(
            [(0, 0, 0), (n, 1, n), (2 * n, 3, n)].contains(s),
            "a reader saw part of an advance: {s:?}"
        );
    }
    assert_eq!(*seen.last().unwrap(), (2 * n, 3, n));

    // A retried advance (the first, again) changes nothing: no duplicates, and the current
    // table keeps the newer epoch.
    mart.write(&first, &[progress("2024-01-01T00:15:00Z", 2, n as u64)])
        .unwrap();
    assert_eq!(
        count(&rt, &url, "SELECT count(*) FROM stockcast_forecast_history"),
        2 * n
    );
    assert_eq!(count(&rt, &url, "SELECT count(*) FROM stockcast_epochs"), 3);
    // An advance cut differently after a restart: part of it is in the history already, the
    // rest is new. The held rows are skipped, the new ones land.
    let overlapping: Vec<ForecastRecord> = (0..100)
        .map(|i| record(i % 50, i / 50, "2024-01-01T00:30:00Z", 2.0))
        .chain((0..100).map(|i| record(i % 50, i / 50, "2024-01-01T00:45:00Z", 3.0)))
        .collect();
    mart.write(&overlapping, &[]).unwrap();
    assert_eq!(
        count(&rt, &url, "SELECT count(*) FROM stockcast_forecast_history"),
        2 * n + 100
    );
    assert_eq!(
        count(
            &rt,
            &url,
            "SELECT count(*) FROM stockcast_forecasts WHERE epoch_end = '2024-01-01T00:45:00Z'"
        ),
        100
    );
    assert_eq!(
        count(
            &rt,
            &url,
            "SELECT count(*) FROM stockcast_forecasts WHERE epoch_end = '2024-01-01T00:30:00Z'
                 AND order_qty = 2 AND forecast_total = 8"
        ),
        n - 100
    );
    // The current row carries the whole record.
    let json = &query(
        &rt,
        &url,
        "SELECT record::text FROM stockcast_forecast_records WHERE store_id = 'S3' AND sku_id = 'K7'",
    )[0][0];
    let rec: ForecastRecord = serde_json::from_str(json.as_deref().unwrap()).unwrap();
    assert_eq!(rec, record(3, 7, "2024-01-01T00:30:00Z", 2.0));
    // Reconnecting migrates nothing twice.
    drop(mart);
    Mart::connect(&url).unwrap();
    assert_eq!(
        count(&rt, &url, "SELECT count(*) FROM stockcast_migrations"),
        stockcast::mart::MIGRATIONS.len() as i64
    );
}

/// A part of an advance split by series over several connections: every record lands once,
/// each series' newest wins in the current table, the progress row comes after, and a retry
/// writes nothing twice.
#[test]
fn a_part_written_over_several_connections_lands_once_and_the_newest_wins() {
    use stockcast::output::{postgres::MartSink, Advance, Context, Sink, Stats, Stopping};
    let _guard = SERVER.lock().unwrap_or_else(|e| e.into_inner());
    let rt = runtime();
    let (url, _db) = fresh_database(&rt, "split");
    let cfg = stockcast::config::PostgresConfig {
        url: url.clone(),
        connections: 3,
        ..Default::default()
    };
    let mut sink = MartSink::new(&cfg).unwrap();
    // 3,000 series each at two epochs on two days (an every_epoch backfill), in epoch order.
    let n = 3000usize;
    let at = |end: &'static str, qty: f64| (0..n).map(move |i| record(i % 50, i / 50, end, qty));
    let forecasts: Vec<ForecastRecord> = at("2024-01-01T00:15:00Z", 1.0)
        .chain(at("2024-01-02T00:15:00Z", 2.0))
        .collect();
    let part = Advance {
        forecasts,
        ..Advance::default()
    };
    let closing = Advance {
        progress: vec![progress("2024-01-02T00:15:00Z", 2, n as u64)],
        ..Advance::default()
    };
    let progress_state = stockcast::pipeline::progress::Progress::default();
    let stop = Stopping::new(Arc::new(AtomicBool::new(false)));
    let mut stats = Stats::default();
    let mut cx = Context {
        progress: &progress_state,
        stop: &stop,
        stats: &mut stats,
    };
    for _ in 0..2 {
        // The second time round is a retry: nothing changes.
        assert_eq!(sink.write(&part, &mut cx).unwrap(), 2 * n as u64);
        assert_eq!(sink.write(&closing, &mut cx).unwrap(), 1);
        assert_eq!(
            count(&rt, &url, "SELECT count(*) FROM stockcast_forecast_history"),
            2 * n as i64
        );
        let current = "SELECT count(*) FROM stockcast_forecasts
            WHERE epoch_end = '2024-01-02T00:15:00Z' AND order_qty = 2";
        assert_eq!(count(&rt, &url, current), n as i64);
        assert_eq!(
            count(&rt, &url, "SELECT count(*) FROM stockcast_forecasts"),
            n as i64
        );
        assert_eq!(count(&rt, &url, "SELECT count(*) FROM stockcast_epochs"), 1);
    }
    // Every connection wrote its share, in a transaction of its own.
    let transactions = "SELECT count(DISTINCT xmin::text) FROM stockcast_forecast_history";
    assert_eq!(count(&rt, &url, transactions), 3);
}

/// A server that accepts the connection and never answers fails each attempt once the answer
/// timeout passed, so the retry (and a stop) can take over, instead of stalling the worker.
#[test]
fn a_server_that_never_answers_fails_each_attempt_in_bounded_time() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let url = format!("host=127.0.0.1 port={port} user=postgres dbname=test");
    let mut mart = Mart::new(&url)
        .unwrap()
        .with_answer_timeout(Duration::from_secs(2));
    let records = vec![record(1, 1, "2024-01-01T00:15:00Z", 1.0)];
    for _ in 0..2 {
        let started = std::time::Instant::now();
        let err = mart.write(&records, &[]).unwrap_err();
        assert!(
            matches!(err, stockcast::mart::MartError::Timeout { .. }),
            "{err}"
        );
        assert!(started.elapsed() < Duration::from_secs(30));
    }
    drop(silent);
}

fn partitions(rt: &tokio::runtime::Runtime, url: &str) -> Vec<String> {
    query(
        rt,
        url,
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = 'stockcast_forecast_history'::regclass ORDER BY 1",
    )
    .into_iter()
    .map(|r| r[0].clone().unwrap())
    .collect()
}

#[test]
fn history_is_partitioned_by_day_and_old_days_are_dropped_after_the_retention() {
    let _guard = SERVER.lock().unwrap_or_else(|e| e.into_inner());
    let rt = runtime();
    let (url, _db) = fresh_database(&rt, "retention");
    let mut mart = Mart::connect(&url).unwrap().with_retention(3);
    // Ten days, two epochs a day (one of them at midnight, which belongs to the next day).
    for day in 1..=10 {
        let ends = [
            format!("2024-02-{day:02}T12:00:00Z"),
            format!("2024-02-{:02}T00:00:00Z", day + 1),
        ];
        let records: Vec<ForecastRecord> = ends
            .iter()
            .flat_map(|e| (0..5).map(move |s| record(s, 1, e, 1.0)))
            .collect();
        let progress: Vec<EpochRecord> = ends
            .iter()
            .enumerate()
            .map(|(i, e)| progress(e, (2 * day + i) as u64, 5))
            .collect();
        mart.write(&records, &progress).unwrap();
    }
    // The newest epoch ends on 2024-02-11: the days from 2024-02-08 on are kept.
    assert_eq!(
        partitions(&rt, &url),
        [
            "stockcast_forecast_history_p20240208",
            "stockcast_forecast_history_p20240209",
            "stockcast_forecast_history_p20240210",
            "stockcast_forecast_history_p20240211",
        ]
    );
    // Each kept day holds its midnight and its midday epoch; 2024-02-11 only its midnight.
    assert_eq!(
        count(&rt, &url, "SELECT count(*) FROM stockcast_forecast_history"),
        5 * (2 + 2 + 2 + 1)
    );
    assert_eq!(
        count(
            &rt,
            &url,
            "SELECT count(*) FROM stockcast_forecast_history WHERE epoch_end < '2024-02-08T00:00:00Z'"
        ),
        0
    );
    // The current table and the epochs are not cut.
    assert_eq!(
        count(&rt, &url, "SELECT count(*) FROM stockcast_epochs"),
        20
    );
    assert_eq!(
        count(&rt, &url, "SELECT count(*) FROM stockcast_forecasts"),
        5
    );
    // A write into a dropped day (a republished old advance) recreates its partition.
    mart.write(&[record(0, 1, "2024-02-01T12:00:00Z", 1.0)], &[])
        .unwrap();
    assert!(partitions(&rt, &url).contains(&"stockcast_forecast_history_p20240201".to_string()));
    // Without a retention nothing is dropped.
    let (url, _db2) = fresh_database(&rt, "keep");
    let mut mart = Mart::connect(&url).unwrap();
    for day in 1..=5 {
        let e = format!("2024-02-{day:02}T12:00:00Z");
        mart.write(&[record(0, 1, &e, 1.0)], &[]).unwrap();
    }
    assert_eq!(partitions(&rt, &url).len(), 5);
}

#[test]
fn a_mart_of_the_first_schema_is_migrated_with_its_history_into_partitions() {
    let _guard = SERVER.lock().unwrap_or_else(|e| e.into_inner());
    let rt = runtime();
    let (url, _db) = fresh_database(&rt, "migrate");
    let (version, first) = stockcast::mart::MIGRATIONS[0];
    let mut old = vec![
        record(1, 1, "2024-03-01T10:00:00Z", 1.25),
        record(1, 1, "2024-03-02T10:00:00Z", 2.5),
        record(2, 1, "2024-03-02T11:00:00Z", 0.125),
    ];
    old[2].fallback_reason = Some("model failed".into());
    old[2].on_hand = None;
    old[2].recommendation.order_qty = None;
    let json = |r: &ForecastRecord| serde_json::to_string(r).unwrap();
    let history_rows: Vec<String> = old
        .iter()
        .map(|r| {
            format!(
                "('{}', '{}', '{}', '{}')",
                r.store_id,
                r.sku_id,
                r.epoch_end,
                json(r)
            )
        })
        .collect();
    let newest = [&old[1], &old[2]];
    let current_rows: Vec<String> = newest
        .iter()
        .map(|r| {
            format!(
                "('{}', '{}', '{}', '{}', '{}', {}, null, {}, null, null, null, '{}')",
                r.store_id,
                r.sku_id,
                r.epoch_end,
                r.model,
                r.model_version,
                r.forecast.iter().sum::<f64>(),
                r.recommendation.order_up_to,
                json(r)
            )
        })
        .collect();
    query(
        &rt,
        &url,
        &format!(
            "CREATE TABLE stockcast_migrations (version integer PRIMARY KEY,
                 applied_at timestamptz NOT NULL DEFAULT now());
             {first};
             INSERT INTO stockcast_migrations (version) VALUES ({version});
             INSERT INTO stockcast_forecast_history VALUES {};
             INSERT INTO stockcast_forecasts VALUES {};",
            history_rows.join(", "),
            current_rows.join(", ")
        ),
    );
    let mut mart = Mart::connect(&url).unwrap();
    assert_eq!(
        partitions(&rt, &url),
        [
            "stockcast_forecast_history_p20240301",
            "stockcast_forecast_history_p20240302"
        ]
    );
    // Every record comes back through the views exactly as it went in.
    let back = |sql: &str| -> Vec<ForecastRecord> {
        query(&rt, &url, sql)
            .into_iter()
            .map(|r| serde_json::from_str(r[0].as_deref().unwrap()).unwrap())
            .collect()
    };
    assert_eq!(
        back("SELECT record::text FROM stockcast_forecast_history_records ORDER BY epoch_end"),
        old
    );
    assert_eq!(
        back("SELECT record::text FROM stockcast_forecast_records ORDER BY epoch_end"),
        [old[1].clone(), old[2].clone()]
    );
    assert_eq!(
        count(
            &rt,
            &url,
            "SELECT count(*) FROM stockcast_forecasts WHERE forecast_total = 10"
        ),
        1
    );
    // Writes go on into the new tables, idempotently. One advance with two records of a
    // series, the newer first: the current table takes the newer.
    let r = record(1, 1, "2024-03-02T10:00:00Z", 2.5);
    mart.write(&[record(1, 1, "2024-03-03T10:00:00Z", 1.0), r], &[])
        .unwrap();
    assert_eq!(
        count(&rt, &url, "SELECT count(*) FROM stockcast_forecast_history"),
        4
    );
    assert_eq!(
        back("SELECT record::text FROM stockcast_forecast_records WHERE store_id = 'S1'"),
        [record(1, 1, "2024-03-03T10:00:00Z", 1.0)]
    );
    assert_eq!(
        count(
            &rt,
            &url,
            "SELECT count(*) FROM stockcast_forecasts WHERE store_id = 'S1' AND forecast_total = 4"
        ),
        1
    );
}

/// Stops or starts the local cluster (Debian's pg_ctlcluster, as scripts/services.sh uses).
fn cluster(action: &str) {
    let version = std::fs::read_dir("/etc/postgresql")
        .expect("/etc/postgresql: the test restarts the local Debian cluster")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .max()
        .expect("a cluster version");
    let status = Command::new("pg_ctlcluster")
        .args(["--skip-systemctl-redirect", &version, "main", action])
        .status()
        .expect("pg_ctlcluster");
    assert!(status.success(), "pg_ctlcluster {action}");
}

/// Starts the cluster again even if the test fails.
struct Restart;

impl Drop for Restart {
    fn drop(&mut self) {
        let _ = Command::new("sh")
            .args([
                "-c",
                "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql | sort | tail -1) main start 2>/dev/null",
            ])
            .status();
    }
}

#[path = "support/kafka.rs"]
mod kafka_support;

/// A fresh database and a worker config (own topics) that writes into it.
fn mart_test(
    rt: &tokio::runtime::Runtime,
    test: &str,
) -> (String, Database, stockcast::config::Resolved) {
    let (url, db) = fresh_database(rt, test);
    let mut cfg = kafka_support::config(&format!("mart-{test}"), "day");
    cfg.postgres.url = url.clone();
    (url, db, cfg)
}

/// The mart holds every forecast `run` emitted once, the newest per series, and its last epoch.
fn assert_mart_holds(rt: &tokio::runtime::Runtime, url: &str, run: &stockcast::kafka::WorkerRun) {
    assert!(run.stats.forecasts > 0);
    assert_eq!(
        count(rt, url, "SELECT count(*) FROM stockcast_forecast_history"),
        run.stats.forecasts as i64
    );
    assert_eq!(
        count(rt, url, "SELECT count(*) FROM stockcast_forecasts"),
        run.latest.len() as i64
    );
    let last = &query(
        rt,
        url,
        "SELECT to_char(max(epoch_end) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') FROM stockcast_epochs",
    )[0][0];
    assert_eq!(last.as_deref(), run.stats.last_epoch_end.as_deref());
}

#[test]
fn a_worker_retries_while_postgres_is_down_and_loses_nothing() {
    let _guard = SERVER.lock().unwrap_or_else(|e| e.into_inner());
    let rt = runtime();
    let (url, _db, cfg) = mart_test(&rt, "outage");
    let _data = kafka_support::load_generated(&cfg.kafka);

    // The database is down when the worker starts and comes back 8 s later.
    let _restart = Restart;
    cluster("stop");
    let (run, _, ()) =
        kafka_support::run_with_sink_down_for_8s(&cfg, "postgres", || cluster("start"));

    // Every forecast and progress record reached the mart, once.
    assert_mart_holds(&rt, &url, &run);
    // One row per progress record, each for its own epoch.
    let rows = count(&rt, &url, "SELECT count(*) FROM stockcast_epochs");
    assert!(rows > 0);
    assert_eq!(rows, run.stats.progress_records as i64);
}

#[test]
fn postgres_restarted_mid_run_loses_nothing() {
    let _guard = SERVER.lock().unwrap_or_else(|e| e.into_inner());
    let rt = runtime();
    let (url, _db, cfg) = mart_test(&rt, "restart");

    // A live stream: the dataset is published over ~25 s while the worker runs.
    let data = tempfile::tempdir().unwrap();
    let params = stockcast::generate::Params {
        stores: 2,
        skus: 5,
        days: 90,
        ..Default::default()
    };
    let events = stockcast::generate::generate_to_dir(&params, data.path()).unwrap();
    stockcast::kafka::admin::ensure_topics(&cfg.kafka, 2).unwrap();
    let loader = {
        let kafka = cfg.kafka.clone();
        let dir = data.path().to_path_buf();
        std::thread::spawn(move || {
            stockcast::kafka::load::load(
                &kafka,
                &stockcast::kafka::load::LoadOptions {
                    data: dir,
                    rate: Some(events as f64 / 25.0),
                    partitions: 2,
                    progress: false,
                    period: dataflows::PeriodKind::Day,
                },
            )
            .unwrap()
        })
    };
    let opts = kafka_support::options(2);
    let progress = Arc::clone(&opts.progress);
    let worker = {
        let cfg = cfg.clone();
        std::thread::spawn(move || stockcast::kafka::run_worker(&cfg, &opts).unwrap())
    };

    // Once the mart holds the first epochs, the server goes down for 3 s and comes back.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let history = "SELECT count(*) FROM stockcast_forecast_history";
    let migrated = "SELECT count(*) FROM pg_tables WHERE tablename = 'stockcast_forecast_history'";
    while count(&rt, &url, migrated) == 0 || count(&rt, &url, history) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "nothing reached the mart"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let before = count(&rt, &url, history);
    let _restart = Restart;
    cluster("stop");
    std::thread::sleep(Duration::from_secs(3));
    cluster("start");
    assert!(
        !loader.is_finished(),
        "the stream ended before the restart; it proves nothing"
    );
    let loaded = kafka_support::join_within(loader, "the loader");
    let run = kafka_support::join_within(worker, "the worker");

    let m = &progress.metrics;
    assert!(m.sink_failures.with_label_values(&["postgres"]).get() > 0);
    assert!(m.sink_retries.with_label_values(&["postgres"]).get() > 0);
    assert_eq!(
        run.stats.consumed["sales"],
        loaded.published[&cfg.kafka.topics.sales]
    );
    // Epochs were written before and after the restart, and every one of them exactly once.
    let after = count(&rt, &url, history);
    assert!(before > 0 && after > before, "{before} then {after}");
    assert_mart_holds(&rt, &url, &run);
}

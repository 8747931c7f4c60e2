//! The Redis cache against real servers: the shared one on 127.0.0.1:6379 (started by
//! `scripts/services.sh`) and one this test starts late on a port of its own, so a worker first
//! meets an unreachable cache, retries, and loses nothing.

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use stockcast::cache::Cache;

#[path = "support/http.rs"]
mod http;
#[path = "support/kafka.rs"]
mod kafka_support;

/// A redis-server of the test's own on a Unix socket (no TCP port another test could take
/// between choosing it and binding it), killed when dropped.
struct Server(Child);

impl Server {
    fn start(socket: &Path) -> Self {
        let child = Command::new("redis-server")
            .args(["--port", "0", "--unixsocket"])
            .arg(socket)
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server (scripts/services.sh installs it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while UnixStream::connect(socket).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Server(child)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn connection(url: &str) -> redis::Connection {
    redis::Client::open(url)
        .unwrap()
        .get_connection()
        .unwrap_or_else(|e| panic!("no Redis at {url}: {e} (scripts/services.sh starts one)"))
}

/// A forecast record of series (S1, K1).
fn rec(epoch: &str, qty: f64) -> stockcast::records::ForecastRecord {
    serde_json::from_value(serde_json::json!({
        "epoch_end": epoch, "store_id": "S1", "sku_id": "K1", "schema_hash": "h",
        "model": "baseline-ma", "model_version": "1", "forecast": [qty],
        "forecast_p10": [qty], "forecast_p90": [qty], "on_hand": 2.0, "on_order": null,
        "recommendation": {"order_qty": qty, "order_up_to": 5.0, "reorder_point": 1.0,
            "cover_periods": null, "stockout_risk": 0.1, "lead_time_days": 7.0,
            "review_days": 7.0, "service_level": 0.95, "pack_size": 1.0,
            "min_order_qty": 0.0, "active": true}
    }))
    .unwrap()
}

#[test]
fn the_newest_record_per_series_is_cached_with_its_ttl() {
    let url = "redis://127.0.0.1:6379/0";
    let prefix = format!("stockcast-test:{}:", kafka_support::nonce('-'));
    let mut cache = Cache::new(url, &prefix, 300).unwrap();
    let older = rec("2024-01-01T00:15:00Z", 1.0);
    let newer = rec("2024-01-01T00:30:00Z", 2.0);
    cache.write(&[older.clone(), newer.clone()]).unwrap();
    // Retried: same result.
    cache.write(&[older, newer.clone()]).unwrap();
    let mut c = connection(url);
    let key = cache.key("S1", "K1");
    let value: String = redis::cmd("GET").arg(&key).query(&mut c).unwrap();
    assert_eq!(
        serde_json::from_str::<stockcast::records::ForecastRecord>(&value).unwrap(),
        newer
    );
    let ttl: i64 = redis::cmd("TTL").arg(&key).query(&mut c).unwrap();
    assert!((1..=300).contains(&ttl), "ttl {ttl}");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query(&mut c)
        .unwrap();
    assert_eq!(keys, vec![key.clone()]);
    let _: () = redis::cmd("DEL").arg(&key).query(&mut c).unwrap();
}

#[test]
fn a_worker_retries_until_redis_answers_and_caches_every_series() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("redis.sock");
    let url = format!("redis+unix://{}", socket.display());
    let mut cfg = kafka_support::config("cache", "day");
    cfg.redis.url = url.clone();
    let _data = kafka_support::load_generated(&cfg.kafka);
    // Nothing listens on the socket for the first 8 s.
    let (run, _, _server) =
        kafka_support::run_with_sink_down_for_8s(&cfg, "redis", || Server::start(&socket));

    let mut c = connection(&url);
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("stockcast:forecast:*")
        .query(&mut c)
        .unwrap();
    assert_eq!(keys.len(), run.latest.len());
    for ((store, sku), want) in &run.latest {
        let value: String = redis::cmd("GET")
            .arg(format!("stockcast:forecast:{store}:{sku}"))
            .query(&mut c)
            .unwrap();
        let got: stockcast::records::ForecastRecord = serde_json::from_str(&value).unwrap();
        assert_eq!(&got, want);
    }
}

/// A server that accepts the connection and never answers fails the write in bounded time, so
/// the retry (and a stop) can take over, instead of stalling the worker.
#[test]
fn a_cache_that_never_answers_fails_the_write_in_bounded_time() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("redis://{}/0", silent.local_addr().unwrap());
    let mut cache = Cache::new(&url, "stockcast-test:", 300).unwrap();
    let started = Instant::now();
    let result = cache.write(&[rec("2024-01-01T00:30:00Z", 2.0)]);
    assert!(result.is_err(), "a write nothing answered succeeded");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );
    drop(silent);
}

/// In a cluster each process holds its own series: the read API of a process that does not
/// hold one answers from the cache every process writes, and says so when the cache is down.
#[test]
fn the_read_api_answers_a_series_another_process_holds_from_the_cache() {
    let url = "redis://127.0.0.1:6379/0";
    let prefix = format!("stockcast-test:{}:", kafka_support::nonce('-'));
    let mut cache = Cache::new(url, &prefix, 300).unwrap();
    let newer = rec("2024-01-01T00:30:00Z", 2.0);
    cache.write(std::slice::from_ref(&newer)).unwrap();
    // This process holds no series at all.
    let progress = std::sync::Arc::new(stockcast::pipeline::stream::Progress::default());
    let reader = stockcast::cache::CacheReader::new(url, &prefix).unwrap();
    let server =
        stockcast::http::serve("127.0.0.1:0", progress.clone(), 600, Some(reader)).unwrap();
    let (status, body) = http::http_get(server.addr, "/v1/forecasts/S1/K1");
    assert_eq!(status, 200, "{body}");
    let got: stockcast::records::ForecastRecord = serde_json::from_str(&body).unwrap();
    assert_eq!(got, newer);
    assert_eq!(http::http_get(server.addr, "/v1/forecasts/S1/K2").0, 404);
    // Without a cache, or with one that does not answer.
    let alone = stockcast::http::serve("127.0.0.1:0", progress.clone(), 600, None).unwrap();
    assert_eq!(http::http_get(alone.addr, "/v1/forecasts/S1/K1").0, 404);
    // A socket path nothing listens on (a TCP port could be taken by another test's socket).
    let nowhere = tempfile::tempdir().unwrap();
    let dead = format!(
        "redis+unix://{}",
        nowhere.path().join("none.sock").display()
    );
    let reader = stockcast::cache::CacheReader::new(&dead, &prefix).unwrap();
    let down = stockcast::http::serve("127.0.0.1:0", progress, 600, Some(reader)).unwrap();
    let (status, body) = http::http_get(down.addr, "/v1/forecasts/S1/K1");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("cache did not answer"), "{body}");
    let mut c = connection(url);
    let _: () = redis::cmd("DEL")
        .arg(cache.key("S1", "K1"))
        .query(&mut c)
        .unwrap();
}

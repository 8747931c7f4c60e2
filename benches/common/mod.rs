//! Machine figures the benches print beside their results.

#![allow(dead_code)]

/// The 1, 5 and 15-minute load averages.
pub fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// CPU seconds (user + system) of this process so far.
pub fn cpu_secs() -> f64 {
    stat_secs(11)
}

/// CPU seconds (user + system) of the test broker `scripts/kafka-broker.sh` started (its pid
/// file in `STOCKCAST_BROKER_DIR`, default `target/kafka-broker`), if it runs on this machine:
/// it shares the cores with the worker.
pub fn broker_cpu_secs() -> Option<f64> {
    let dir = std::env::var("STOCKCAST_BROKER_DIR")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/target/kafka-broker").into());
    let pid = std::fs::read_to_string(format!("{dir}/broker.pid")).ok()?;
    pid_cpu_secs(pid.trim().parse().ok()?)
}

/// CPU seconds (user + system) of the PostgreSQL server on this machine, if one runs here: its
/// processes' own, and those its postmaster reaped (a backend that exited took its CPU time
/// there). It shares the cores with the worker.
pub fn postgres_cpu_secs() -> Option<f64> {
    let mut total = None;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let path = entry.path().join("stat");
        let Ok(stat) = std::fs::read_to_string(&path) else {
            continue;
        };
        if !stat.contains("(postgres)") {
            continue;
        }
        let path = path.to_string_lossy();
        let mut secs = proc_stat_secs(&path, 11).unwrap_or(0.0);
        // The postmaster: its parent is not a postgres process.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().nth(1));
        let parent = ppid.and_then(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok());
        if !parent.is_some_and(|p| p.contains("(postgres)")) {
            secs += proc_stat_secs(&path, 13).unwrap_or(0.0);
        }
        *total.get_or_insert(0.0) += secs;
    }
    total
}

/// CPU seconds (user + system) of the running process `pid`, all its threads.
pub fn pid_cpu_secs(pid: u32) -> Option<f64> {
    proc_stat_secs(&format!("/proc/{pid}/stat"), 11)
}

/// CPU seconds (user + system) of this process's children that were waited for.
pub fn children_cpu_secs() -> f64 {
    stat_secs(13)
}

/// The sum of two adjacent clock-tick fields of /proc/self/stat (100 Hz), counted from the
/// field after the command name: utime and stime at 11, cutime and cstime at 13.
fn stat_secs(first: usize) -> f64 {
    proc_stat_secs("/proc/self/stat", first).unwrap_or(f64::NAN)
}

/// [`stat_secs`] of the process whose stat file is `path`.
fn proc_stat_secs(path: &str, first: usize) -> Option<f64> {
    let s = std::fs::read_to_string(path).ok()?;
    let rest = s.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some((f.get(first)?.parse::<f64>().ok()? + f.get(first + 1)?.parse::<f64>().ok()?) / 100.0)
}

/// Peak resident set size of this process, KiB.
pub fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// The value after `name` on the command line, parsed; `default` when absent or unparsable.
pub fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    text_arg(args, name)
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The text after `name` on the command line.
pub fn text_arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

/// Runs `sql` on the PostgreSQL server of `STOCKCAST_TEST_POSTGRES` (default
/// `host=127.0.0.1 user=postgres dbname=postgres`): the benches create and drop their databases.
pub fn postgres_admin(sql: &str) {
    let url = std::env::var("STOCKCAST_TEST_POSTGRES")
        .unwrap_or_else(|_| "host=127.0.0.1 user=postgres dbname=postgres".into());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("no PostgreSQL at {url}: {e} (scripts/services.sh)"));
        tokio::spawn(conn);
        client.simple_query(sql).await.expect(sql);
    });
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// A daily forecast record as the worker writes it (28 periods of three quantiles).
pub fn forecast_record(i: usize, epoch_end: &str) -> stockcast::records::ForecastRecord {
    let q = (i % 17) as f64 * 0.37;
    stockcast::records::ForecastRecord {
        epoch_end: epoch_end.into(),
        store_id: format!("store-{:03}", i % 100).into(),
        sku_id: format!("sku-{:06}", i / 100).into(),
        schema_hash: "9f3c2a1b7e6d5c4b".into(),
        model: "stockcast-mlp".into(),
        model_version: "a1b2c3d4e5f60718".into(),
        fallback_reason: None,
        // Rounded to three decimals, as the worker's records are.
        forecast: (0..28).map(|h| round3(q + h as f64 * 0.013)).collect(),
        forecast_p10: (0..28).map(|h| round3(q * 0.4 + h as f64 * 0.01)).collect(),
        forecast_p90: (0..28).map(|h| round3(q * 1.9 + h as f64 * 0.02)).collect(),
        on_hand: Some(12.0),
        on_order: Some(6.0),
        recommendation: stockcast::replenish::Advice {
            order_qty: Some(q.ceil()),
            order_up_to: q * 14.0,
            reorder_point: q * 7.0,
            cover_periods: Some(3.2),
            stockout_risk: Some(0.04),
            lead_time_days: 7.0,
            review_days: 7.0,
            service_level: 0.95,
            pack_size: 1.0,
            min_order_qty: 0.0,
            active: true,
        },
    }
}

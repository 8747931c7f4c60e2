//! Machine figures the benches print beside their results.

#![allow(dead_code)]

/// The 1, 5 and 15-minute load averages.
pub fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// What a CPU-second of this machine does right now, in three readings of this thread's CPU
/// time (each the median of seven rounds): millions of pseudo-random 64-bit keys sorted per
/// CPU-second (2^20 keys, 8 MiB: the core and its caches); nanoseconds per read of memory that
/// waits on the read before, at pseudo-random places in 128 MiB (main memory, and the walks of
/// the page tables of 4 KiB pages: what the worker's maps and vectors wait on); and
/// microseconds per page written for the first time (what fresh allocations cost).
///
/// These machines are shared virtual machines: on the same binary and input, a figure per
/// CPU-second has moved by a factor of two to three between sessions and between hours, and
/// the load average does not show it (it counts this machine's threads, not its neighbours').
/// Figures of two runs compare when these readings agree; docs/benchmarks.md gives the readings
/// beside its figures.
pub fn machine_speed() -> (f64, f64, f64) {
    // Allocated and touched before the rounds (page faults are not what is read), and freed
    // after them.
    let mut keys = vec![0u64; SORT_KEYS];
    let sort = median_of_7(|seed| sort_round(&mut keys, seed));
    drop(keys);
    // Each slot holds the next slot to read: x -> a x + c modulo a power of two, with c odd
    // and a = 1 mod 4, visits every slot, in an order no prefetcher follows.
    let next: Vec<u32> = (0..MEMORY_SLOTS as u64)
        .map(|i| {
            (i.wrapping_mul(0x5851_f42d_4c95_7f2d)
                .wrapping_add(0x1405_7b7e_f767_814f)
                & (MEMORY_SLOTS as u64 - 1)) as u32
        })
        .collect();
    let read = median_of_7(|seed| memory_round(&next, seed));
    drop(next);
    (sort, read, median_of_7(|_| page_round()))
}

/// Keys of a sort round: 8 MiB.
const SORT_KEYS: usize = 1 << 20;
/// Slots of the memory reading: 128 MiB of `u32`, four times a large last-level cache.
const MEMORY_SLOTS: usize = 1 << 25;

/// [`machine_speed`] as the benches print it.
pub fn machine_speed_text() -> String {
    let (sort, read, page) = machine_speed();
    format!(
        "machine: {sort:.1} M keys sorted per CPU-s, {read:.0} ns per random read, {page:.2} µs per page first touched"
    )
}

fn median_of_7(mut round: impl FnMut(u64) -> f64) -> f64 {
    let mut rounds: Vec<f64> = (0..7).map(&mut round).collect();
    rounds.sort_by(f64::total_cmp);
    rounds[3]
}

/// One round of the sort reading: M keys per CPU-second.
fn sort_round(keys: &mut [u64], seed: u64) -> f64 {
    let mut x = 0x9e37_79b9_7f4a_7c15 ^ seed;
    let started = thread_cpu_secs();
    for k in keys.iter_mut() {
        // xorshift64: the same keys on every machine.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *k = x;
    }
    keys.sort_unstable();
    std::hint::black_box(&keys);
    keys.len() as f64 / (thread_cpu_secs() - started).max(1e-9) / 1e6
}

/// One round of the memory reading: nanoseconds per read that waits on the one before.
fn memory_round(next: &[u32], seed: u64) -> f64 {
    const READS: usize = 200_000;
    let mut at = (seed as usize).wrapping_mul(0x9e37_79b9) & (next.len() - 1);
    let started = thread_cpu_secs();
    for _ in 0..READS {
        at = next[at] as usize;
    }
    std::hint::black_box(at);
    (thread_cpu_secs() - started).max(1e-9) / READS as f64 * 1e9
}

/// One round of the page reading: microseconds of CPU per 4 KiB page written for the first
/// time (the kernel's fault, zeroing and mapping), over 32 MiB mapped for the round and
/// unmapped after it.
fn page_round() -> f64 {
    const BYTES: usize = 32 << 20;
    const PAGE: usize = 4096;
    // SAFETY: a private anonymous mapping of BYTES, written only within its bounds, and
    // unmapped once; a failed mapping is not written to.
    unsafe {
        let at = libc::mmap(
            std::ptr::null_mut(),
            BYTES,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        if at == libc::MAP_FAILED {
            return f64::NAN;
        }
        let bytes = at.cast::<u8>();
        let started = thread_cpu_secs();
        for offset in (0..BYTES).step_by(PAGE) {
            bytes.add(offset).write_volatile(1);
        }
        let secs = thread_cpu_secs() - started;
        libc::munmap(at, BYTES);
        secs.max(1e-9) / (BYTES / PAGE) as f64 * 1e6
    }
}

/// CPU seconds of the calling thread so far, at the clock's resolution (nanoseconds).
fn thread_cpu_secs() -> f64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid timespec for the call to fill; the clock id is a constant.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
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

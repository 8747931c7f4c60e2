//! Checkpoints against the real broker: a restart from a checkpoint reads only what follows it
//! and publishes what an uninterrupted run does, into any number of workers; SIGKILL at random
//! moments of a live run loses nothing; corrupt and foreign checkpoints are handled as said.
//!
//! Longer than 600 lines: the scenarios share the helpers here that write, corrupt and read
//! checkpoints.

#[path = "support/kafka.rs"]
mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use stockcast::checkpoint::{self, DirStore, Store};
use stockcast::config::Resolved;
use stockcast::kafka::{self, input_topics};
use stockcast::records::ForecastRecord;
use support::*;

fn with_checkpoints(cfg: &Resolved, dir: &Path) -> Resolved {
    let mut cfg = cfg.clone();
    cfg.checkpoint.dir = dir.display().to_string();
    cfg
}

/// Every forecast record on the topic (waiting `wait` for stragglers): how many were
/// published, and the distinct ones, sorted.
fn published_forecasts(cfg: &Resolved, wait: Duration) -> (usize, Vec<String>) {
    let all: Vec<ForecastRecord> =
        consume_within(&cfg.kafka, &cfg.kafka.topics.forecasts, usize::MAX, wait)
            .into_iter()
            .filter_map(|(_, v, _)| serde_json::from_slice(&v).ok())
            .collect();
    let published = all.len();
    let mut got = sorted_forecasts(all);
    got.dedup();
    (published, got)
}

/// Records of `topic` fetched from the broker by the run (skipped ones included).
fn fetched(progress: &stockcast::pipeline::stream::Progress, topic: &str) -> u64 {
    let text = progress.metrics.render();
    text.lines()
        .filter(|l| {
            l.starts_with("stockcast_events_consumed_total{")
                && l.contains(&format!("topic=\"{topic}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[test]
fn a_restart_from_a_checkpoint_reads_only_what_follows_and_rescales() {
    let cfg = config("ckpt-restart", "day");
    let tmp = tempfile::tempdir().unwrap();
    let (first, second, all) = m5_halves(tmp.path());
    let ck = tmp.path().join("checkpoints");
    let cfg = with_checkpoints(&cfg, &ck);
    let sales = |dir: &Path| load_dir(&cfg.kafka, dir, 3).published[&cfg.kafka.topics.sales];
    let first_n = sales(&first);
    let run1 = kafka::run_worker(&cfg, &options(2)).unwrap();
    assert!(run1.stats.forecasts > 0);
    // The run's stop wrote a complete checkpoint.
    let store = DirStore::new(&ck);
    let listing = checkpoint::list(&store).unwrap();
    let complete: Vec<_> = listing.iter().filter(|l| l.status == "complete").collect();
    assert_eq!(complete.len(), 1, "{listing:?}");
    let manifest = complete[0].manifest.clone().unwrap();
    assert_eq!(manifest.reason, "stop");
    assert_eq!(manifest.workers, 2);
    assert_eq!(manifest.series(), 10);
    let resume: i64 = manifest
        .offsets
        .iter()
        .filter(|o| o.topic == cfg.kafka.topics.sales)
        .map(|o| o.resume_offset)
        .sum();
    assert_eq!(
        resume as u64, first_n,
        "every record of the first half is in it"
    );

    // An operator's view of it.
    let list = Command::new(env!("CARGO_BIN_EXE_stockcast"))
        .args(["checkpoint", "list", "--json"])
        .arg(&ck)
        .output()
        .unwrap();
    assert!(list.status.success());
    let listed: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(listed[0]["status"], "complete");
    assert_eq!(listed[0]["manifest"]["workers"], 2);
    let inspect = Command::new(env!("CARGO_BIN_EXE_stockcast"))
        .args(["checkpoint", "inspect"])
        .arg(&ck)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&inspect.stdout);
    assert!(inspect.status.success(), "{text}");
    assert!(
        text.contains("reason stop") && text.contains(&format!("{}/0: ", cfg.kafka.topics.sales)),
        "{text}"
    );

    let second_n = sales(&second);
    // Three workers now: the checkpoint's series and partitions are spread again.
    let opts = options(3);
    let progress = Arc::clone(&opts.progress);
    let run2 = kafka::run_worker(&cfg, &opts).unwrap();
    let read = fetched(&progress, &cfg.kafka.topics.sales);
    eprintln!(
        "checkpoint restart: run 1 read {first_n} sales, {} forecasts; checkpoint {} bytes; \
         run 2 (3 workers) fetched {read} sales records, {} forecasts, {:.1}s",
        run1.stats.forecasts,
        manifest.bytes(),
        run2.stats.forecasts,
        run2.secs
    );
    assert_eq!(
        read, second_n,
        "run 2 fetched no record below the checkpoint's offsets"
    );
    assert_eq!(run2.stats.consumed["sales"], second_n);
    // The read API answered at once: the restored latest records.
    assert!(run2.latest.len() >= 10);

    // Together the runs published exactly what one replay of everything does.
    let expected = replay_forecasts(&cfg, &all);
    assert_eq!(
        (run1.stats.forecasts + run2.stats.forecasts) as usize,
        expected.len()
    );
    let got: Vec<ForecastRecord> =
        consume_json(&cfg.kafka, &cfg.kafka.topics.forecasts, expected.len());
    assert_same_forecasts(sorted_forecasts(got), sorted_forecasts(expected));
}

#[test]
fn a_corrupt_checkpoint_is_passed_over_and_other_settings_are_refused() {
    let cfg = config("ckpt-corrupt", "day");
    let tmp = tempfile::tempdir().unwrap();
    let ck = tmp.path().join("checkpoints");
    let cfg = with_checkpoints(&cfg, &ck);
    let _data = load_generated(&cfg.kafka);
    let opts = options(2);
    let run1_progress = Arc::clone(&opts.progress);
    let run1 = kafka::run_worker(&cfg, &opts).unwrap();
    assert!(run1.stats.forecasts > 0);
    let store = DirStore::new(&ck);
    let good = checkpoint::list(&store).unwrap()[0].clone();
    assert_eq!(good.status, "complete");

    // A newer checkpoint whose part was torn by a crash: same files, one cut short.
    let newer = checkpoint::checkpoint_name(good.manifest.as_ref().unwrap().epoch + 100, 7);
    for (file, _) in store.files(&good.name).unwrap() {
        let mut bytes = store.get(&format!("{}/{file}", good.name)).unwrap();
        if file.starts_with("part-00001") {
            bytes.truncate(bytes.len() / 2);
        }
        if file == checkpoint::MANIFEST {
            let mut m: checkpoint::Manifest = serde_json::from_slice(&bytes).unwrap();
            m.epoch += 100;
            bytes = serde_json::to_vec(&m).unwrap();
        }
        store.put(&format!("{newer}/{file}"), &bytes).unwrap();
    }
    let settings = checkpoint::Settings::of(&cfg);
    let choice = checkpoint::newest(&store, &settings).unwrap();
    assert_eq!(choice.loaded.as_ref().unwrap().name, good.name);
    assert_eq!(choice.corrupt.len(), 1);
    assert!(
        choice.corrupt[0].1.contains("part-00001"),
        "{:?}",
        choice.corrupt
    );
    let opts = options(2);
    let progress = Arc::clone(&opts.progress);
    let run2 = kafka::run_worker(&cfg, &opts).unwrap();
    assert_eq!(run2.stats.forecasts, 0, "nothing new to publish");
    assert_eq!(progress.metrics.checkpoint_corrupt.get(), 1);
    assert_eq!(progress.metrics.checkpoint_restores.get(), 1);

    // Another epoch length: refused, with what differs.
    let mut other = cfg.clone();
    other.clock = dataflows::Clock::new(3600, dataflows::PeriodKind::Day).unwrap();
    let e = kafka::run_worker(&other, &options(1))
        .err()
        .expect("a checkpoint of other settings was used")
        .to_string();
    assert!(
        e.contains("epoch_secs: checkpoint 900, configured 3600") && e.contains("--from-scratch"),
        "{e}"
    );
    // --from-scratch ignores it.
    let mut opts = options(1);
    opts.from_scratch = true;
    let progress = Arc::clone(&opts.progress);
    kafka::run_worker(&other, &opts).unwrap();
    assert_eq!(progress.metrics.checkpoint_restores.get(), 0);
    assert_eq!(
        fetched(&progress, &cfg.kafka.topics.sales),
        fetched(&run1_progress, &cfg.kafka.topics.sales),
        "rebuilt from the beginning of the topics"
    );
}

/// `stockcast run ARGS --config CONFIG`, logging into `log`.
fn spawn(config: &Path, log: &Path, args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_stockcast"))
        .arg("run")
        .args(args)
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "info")
        .env_remove("STOCKCAST_KAFKA_BROKERS")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

#[test]
fn sigkill_at_random_moments_loses_nothing() {
    use rand::{Rng, SeedableRng};
    let mut cfg = config("ckpt-kill", "day");
    // Longer than any gap of the slow load below on any partition: no event is late, so the
    // live runs publish what replay does.
    cfg.kafka.idle_timeout_secs = 10;
    let tmp = tempfile::tempdir().unwrap();
    let ck = tmp.path().join("checkpoints");
    let cfg = with_checkpoints(&cfg, &ck);
    let data = tmp.path().join("data");
    let params = stockcast::generate::Params {
        stores: 3,
        skus: 6,
        days: 180,
        ..Default::default()
    };
    stockcast::generate::generate_to_dir(&params, &data).unwrap();
    // The mart too: a database of this test's own.
    let db = Database::create("ckpt_kill");
    let config_file = config_file(
        &cfg,
        tmp.path(),
        &format!(
            "[checkpoint]\ndir = \"{}\"\nevery_epochs = 1\nmin_interval_secs = 1\n[postgres]\nurl = \"{}\"\n",
            ck.display(),
            db.url
        ),
    );
    // The records arrive at a steady rate, over about 45 s, while the worker is killed and
    // restarted (ten runs of 3-8 s; the first of 12 s, since empty reference partitions hold
    // time back for an idle timeout at the first start).
    let records: usize = ["sales.csv", "stock.csv"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(data.join(f)).ok())
        .map(|t| t.lines().count())
        .sum();
    let rate = (records / 45).max(50).to_string();
    let mut loader = Command::new(env!("CARGO_BIN_EXE_stockcast"))
        .args(["load", "--partitions", "3", "--rate", &rate, "--data"])
        .arg(&data)
        .arg("--config")
        .arg(&config_file)
        .env_remove("STOCKCAST_KAFKA_BROKERS")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(20);
    let kills = 10;
    let mut restores = 0;
    for k in 0..kills {
        let log = tmp.path().join(format!("worker-{k}.log"));
        let mut child = spawn(&config_file, &log, &["--workers", "2"]);
        let ms = if k == 0 {
            12_000
        } else {
            rng.gen_range(3000..8000)
        };
        std::thread::sleep(Duration::from_millis(ms));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let text = std::fs::read_to_string(&log).unwrap();
        if text.contains("restoring from checkpoint") {
            restores += 1;
        }
    }
    // The load must still have been running for most of the kills.
    let loading_at_end = loader.try_wait().unwrap().is_none();
    let status = loader.wait().unwrap();
    assert!(status.success());
    // A last run to the end.
    let log = tmp.path().join("worker-last.log");
    let mut child = spawn(&config_file, &log, &["--workers", "2", "--exit-when-idle"]);
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            assert!(s.success(), "{}", std::fs::read_to_string(&log).unwrap());
            break;
        }
        assert!(Instant::now() < deadline, "the last run did not finish");
        std::thread::sleep(Duration::from_millis(200));
    }
    let expected = replay_forecasts(&cfg, &data);
    let (published, got) = published_forecasts(&cfg, Duration::from_secs(30));
    let duplicates = published - got.len();
    eprintln!(
        "sigkill test: {records} input records at {rate}/s, still loading after the kills: {loading_at_end}; {kills} kills, {restores} restores from a checkpoint, {published} forecast records published, \
         {duplicates} duplicates, {} distinct, replay {}",
        got.len(),
        expected.len()
    );
    assert!(restores >= kills / 2, "too few restores ({restores})");
    let expected = sorted_forecasts(expected);
    assert_same_forecasts(got, expected.clone());
    // The mart's history holds the same records, once each.
    let history: Vec<ForecastRecord> = db
        .texts("SELECT record::text FROM stockcast_forecast_history_records")
        .iter()
        .map(|t| serde_json::from_str(t).unwrap())
        .collect();
    assert_same_forecasts(sorted_forecasts(history), expected);
}

/// A PostgreSQL database of a test's own (127.0.0.1:5432, trust auth), dropped at the end.
struct Database {
    name: String,
    url: String,
}

impl Database {
    fn admin(sql: &str) {
        Self::run(
            "host=127.0.0.1 port=5432 user=postgres dbname=postgres",
            sql,
        );
    }

    fn run(url: &str, sql: &str) -> Vec<String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                .await
                .unwrap_or_else(|e| {
                    panic!("no PostgreSQL at {url}: {e} (scripts/services.sh starts one)")
                });
            tokio::spawn(conn);
            client
                .simple_query(sql)
                .await
                .unwrap()
                .into_iter()
                .filter_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                    _ => None,
                })
                .collect()
        })
    }

    fn create(test: &str) -> Database {
        let name = format!("stockcast_{test}_{}", nonce('_'));
        Self::admin(&format!("CREATE DATABASE {name}"));
        let url = format!("host=127.0.0.1 port=5432 user=postgres dbname={name}");
        Database { name, url }
    }

    /// The first column of every row of `sql`, as text.
    fn texts(&self, sql: &str) -> Vec<String> {
        Self::run(&self.url, sql)
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        Self::admin(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ));
    }
}

/// `stockcast run` as process `p` of a cluster of two (one worker each).
fn spawn_process(config: &Path, hosts: &Path, p: usize, log: &Path, args: &[&str]) -> Child {
    let (hosts, p) = (hosts.display().to_string(), p.to_string());
    let mut all = vec!["--workers", "1", "--hosts", &hosts, "--process", &p];
    all.extend_from_slice(args);
    spawn(config, log, &all)
}

/// Waits up to `limit` for `child` to exit; returns its status, or fails showing `log`.
fn wait_exit(child: &mut Child, limit: Duration, log: &Path) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "still running after {limit:?}:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One process writes a checkpoint; a cluster of two restores it (1 -> 2 processes), goes on
/// live and loses a process to SIGKILL: the survivor exits with the peer-lost status within
/// seconds; both restarted resume from the checkpoint, and every forecast of an uninterrupted
/// run was published.
#[test]
fn a_cluster_that_loses_a_process_exits_and_resumes_from_the_checkpoint() {
    let mut cfg = config("ckpt-cluster", "day");
    cfg.kafka.idle_timeout_secs = 3;
    let m5 = shared("m5_mini");
    let tmp = tempfile::tempdir().unwrap();
    let parts: Vec<_> = ["a", "b", "c", "all"]
        .iter()
        .map(|n| tmp.path().join(n))
        .collect();
    split_sales(&m5, &parts[0], "0000", "2012-01-01");
    split_sales(&m5, &parts[1], "2012-01-01", "2014-01-01");
    split_sales(&m5, &parts[2], "2014-01-01", "9999");
    split_sales(&m5, &parts[3], "0000", "9999");
    let ck = tmp.path().join("checkpoints");
    let cfg = with_checkpoints(&cfg, &ck);
    let load = |dir: &Path| load_dir(&cfg.kafka, dir, 4).published.values().sum::<u64>();

    // One process.
    load(&parts[0]);
    let run1 = kafka::run_worker(&cfg, &options(1)).unwrap();
    let store = DirStore::new(&ck);
    let first = checkpoint::list(&store).unwrap()[0].clone();
    assert_eq!(first.status, "complete");

    // Two processes restore it and go on. They would drain and exit once every partition
    // is idle for a minute, but lose a process before that. (A live run would close epochs
    // on the wall clock once idle, and the older data of the third part would then be late.)
    load(&parts[1]);
    // A checkpoint every week of event time, however fast the catch-up goes.
    let extra = format!(
        "[http]\nlisten = \"\"\n[checkpoint]\ndir = \"{}\"\nevery_epochs = 672\nmin_interval_secs = 0\n",
        ck.display()
    );
    let mut slow = cfg.clone();
    slow.kafka.idle_timeout_secs = 60;
    let slow_dir = tmp.path().join("slow");
    std::fs::create_dir_all(&slow_dir).unwrap();
    let slow_file = config_file(&slow, &slow_dir, &extra);
    let file = config_file(&cfg, tmp.path(), &extra);
    let hosts = tmp.path().join("hosts");
    let ports =
        [support::free_port(), support::free_port()].map(|l| l.local_addr().unwrap().port());
    std::fs::write(
        &hosts,
        format!("127.0.0.1:{}\n127.0.0.1:{}\n", ports[0], ports[1]),
    )
    .unwrap();
    let logs: Vec<_> = (0..4)
        .map(|i| tmp.path().join(format!("run-{i}.log")))
        .collect();
    let idle = ["--exit-when-idle"];
    let mut p0 = spawn_process(&slow_file, &hosts, 0, &logs[0], &idle);
    let mut p1 = spawn_process(&slow_file, &hosts, 1, &logs[1], &idle);
    let deadline = Instant::now() + Duration::from_secs(50);
    let newer = |l: &checkpoint::Listing| {
        l.status == "complete"
            && l.name != first.name
            && l.manifest.as_ref().is_some_and(|m| m.processes == 2)
    };
    while !checkpoint::list(&store).unwrap().iter().any(newer) {
        assert!(
            Instant::now() < deadline,
            "no checkpoint of the cluster:\n{}\n{}",
            std::fs::read_to_string(&logs[0]).unwrap(),
            std::fs::read_to_string(&logs[1]).unwrap()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let log0 = std::fs::read_to_string(&logs[0]).unwrap();
    assert!(log0.contains("restoring from checkpoint"), "{log0}");
    assert!(
        p0.try_wait().unwrap().is_none(),
        "process 0 ended early:\n{log0}"
    );
    p1.kill().unwrap(); // SIGKILL
    p1.wait().unwrap();
    let killed = Instant::now();
    let status = wait_exit(&mut p0, Duration::from_secs(30), &logs[0]);
    let noticed = killed.elapsed();
    let log0 = std::fs::read_to_string(&logs[0]).unwrap();
    assert_eq!(
        status.code(),
        Some(stockcast::signals::PEER_LOST_EXIT),
        "{log0}"
    );
    assert!(log0.contains("lost a peer"), "{log0}");

    // Both restarted: they resume from the newest checkpoint and finish the rest.
    load(&parts[2]);
    let mut p0 = spawn_process(&file, &hosts, 0, &logs[2], &idle);
    let mut p1 = spawn_process(&file, &hosts, 1, &logs[3], &idle);
    for (p, log) in [(&mut p0, &logs[2]), (&mut p1, &logs[3])] {
        let s = wait_exit(p, Duration::from_secs(240), log);
        assert!(s.success(), "{}", std::fs::read_to_string(log).unwrap());
        assert!(std::fs::read_to_string(log)
            .unwrap()
            .contains("restoring from checkpoint"));
    }
    let expected = replay_forecasts(&cfg, &parts[3]);
    let (published, got) = published_forecasts(&cfg, Duration::from_secs(20));
    eprintln!(
        "cluster test: run 1 (1 process) {} forecasts; the survivor exited {:.1}s after its peer's SIGKILL; \
         {published} records published in all, {} distinct, replay {}",
        run1.stats.forecasts,
        noticed.as_secs_f64(),
        got.len(),
        expected.len()
    );
    assert_same_forecasts(got, sorted_forecasts(expected));
}

/// Short retention: a checkpoint restored onto topics that hold only the records after it
/// (the first half of the data is not in them at all), its offsets mapped onto the new
/// topics. The forecasts after the restart are those of an uninterrupted run.
#[test]
fn a_checkpoint_restores_onto_topics_that_hold_only_the_tail() {
    let old = config("ckpt-tail-a", "day");
    let new = config("ckpt-tail-b", "day");
    let tmp = tempfile::tempdir().unwrap();
    let (first, second, all) = m5_halves(tmp.path());
    let (ck_old, ck_new) = (tmp.path().join("ck-a"), tmp.path().join("ck-b"));
    let old = with_checkpoints(&old, &ck_old);
    let new = with_checkpoints(&new, &ck_new);
    load_dir(&old.kafka, &first, 3);
    let run1 = kafka::run_worker(&old, &options(2)).unwrap();
    // The new topics get the second half only: their offsets start at 0.
    load_dir(&new.kafka, &second, 3);
    let mapped = map_checkpoint(&old, &new, &ck_old, &ck_new);
    let opts = options(2);
    let progress = Arc::clone(&opts.progress);
    let run2 = kafka::run_worker(&new, &opts).unwrap();
    assert_eq!(progress.metrics.checkpoint_restores.get(), 1);
    assert_eq!(progress.metrics.history_lost_partitions.get(), 0);
    let expected = replay_forecasts(&old, &all);
    let mut got: Vec<ForecastRecord> = consume_json(
        &old.kafka,
        &old.kafka.topics.forecasts,
        run1.stats.forecasts as usize,
    );
    got.extend(consume_json::<ForecastRecord>(
        &new.kafka,
        &new.kafka.topics.forecasts,
        run2.stats.forecasts as usize,
    ));
    eprintln!(
        "tail test: checkpoint {mapped} mapped onto topics holding only the second half; \
         {} + {} forecasts, replay {}",
        run1.stats.forecasts,
        run2.stats.forecasts,
        expected.len()
    );
    assert_same_forecasts(sorted_forecasts(got), sorted_forecasts(expected));
}

/// Copies the newest checkpoint of `from` (in `src`) into `dst` for the topics of `to`, whose
/// partitions hold exactly the records after the checkpoint: every position maps to offset 0.
fn map_checkpoint(from: &Resolved, to: &Resolved, src: &Path, dst: &Path) -> String {
    let (src, dst) = (DirStore::new(src), DirStore::new(dst));
    let settings = checkpoint::Settings::of(from);
    let loaded = checkpoint::newest(&src, &settings).unwrap().loaded.unwrap();
    let topic = |t: &str| {
        let (a, b) = (input_topics(&from.kafka), input_topics(&to.kafka));
        a.into_iter()
            .zip(b)
            .find(|((_, x), _)| *x == t)
            .map(|(_, (_, y))| y.to_string())
            .unwrap()
    };
    let mut manifest = loaded.manifest.clone();
    manifest.parts.clear();
    for mut part in loaded.parts {
        for p in &mut part.positions {
            assert!(
                p.held.is_empty(),
                "a stop checkpoint holds no buffered event"
            );
            p.partition.topic = topic(&p.partition.topic);
            p.next_offset = 0;
        }
        for (p, _) in &mut part.reference {
            p.topic = topic(&p.topic);
        }
        let bytes = checkpoint::encode(&settings, &part);
        let file = checkpoint::part_name(part.worker);
        dst.put(&format!("{}/{file}", loaded.name), &bytes).unwrap();
        manifest.parts.push(checkpoint::FileEntry {
            file,
            bytes: bytes.len() as u64,
            crc32: checkpoint::file_crc(&bytes),
            items: part.series_count(),
        });
    }
    for o in &mut manifest.offsets {
        o.topic = topic(&o.topic);
        o.resume_offset = 0;
        o.next_offset = 0;
    }
    let latest = format!("{}/{}", loaded.name, checkpoint::LATEST);
    dst.put(&latest, &src.get(&latest).unwrap()).unwrap();
    dst.put(
        &format!("{}/{}", loaded.name, checkpoint::MANIFEST),
        &serde_json::to_vec_pretty(&manifest).unwrap(),
    )
    .unwrap();
    loaded.name
}

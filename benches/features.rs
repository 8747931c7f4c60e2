//! Feature-maintenance benchmarks; prints figures (with the machine's load) rather than timing
//! assertions. Longer than 600 lines: every scenario (throughput, latency, memory and the rest)
//! uses this file's helpers that feed generated events and report the figures.
//!
//! ```text
//! cargo bench --bench features                       # all scenarios at their default sizes
//! cargo bench --bench features -- throughput --keys 100000 --days 28 --workers 2
//! cargo bench --bench features -- throughput --keys 100000 --warmup-days 56 --days 14
//! cargo bench --bench features -- latency --keys 100000
//! cargo bench --bench features -- memory --keys 1000000
//! ```
//! - throughput: generated events (the project's generator) for `keys` series over `days` days,
//!   pre-generated per worker, fed epoch by epoch through the input stage and the dataflow;
//!   with `--warmup-days`, that many days are fed untimed first (windows full: steady state).
//! - latency: every series gets a sale on day 0; then, inside day 1, epochs in which `--changes`
//!   series (default 1%) change; reports the median and p95 wall time per such epoch, and the
//!   rollover epoch.
//! - memory: streams `days` generated days through the dataflow in a child process and reports
//!   its peak RSS per series.
//! - checkpoint: builds the state of `keys` series over `days` days, then times what a
//!   checkpoint costs (each worker's export, the stall; encoding and writing its part, synced)
//!   and what a restart from it costs (reading, checking and decoding the parts, feeding them
//!   into a new dataflow until it caught up) against rebuilding the same state by feeding every
//!   event again. The rebuild here is the dataflow's share only: a rebuild from the topics adds
//!   fetching and decoding every record (the `kafka` bench measures that path).

mod common;

use common::{cpu_secs, load, machine_speed_text, peak_rss_kib};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use dataflows::features::fnv1a64;
use dataflows::input::FeatureInput;
use dataflows::model::Promotion;
use dataflows::time::DAY_SECS;
use dataflows::{Clock, Epoch, Event, FeatureSpec, Key, PeriodKind, StockKind};
use stockcast::generate::{self, Generator, Item, Params, Promo, Sink};
use timely::dataflow::operators::probe::Handle;

/// Collects generated events as dataflow events.
struct EventSink {
    stores: Vec<u64>,
    skus: Vec<u64>,
    events: Vec<Event>,
    promos: Vec<Event>,
    tag: u32,
}

impl EventSink {
    fn key(&self, store: u32, sku: u32) -> Key {
        Key {
            store: self.stores[store as usize],
            sku: self.skus[sku as usize],
        }
    }
}

impl Sink for EventSink {
    fn reference(&mut self, _items: &[Item], promos: &[Promo], params: &Params) {
        let clock = Clock::new(900, PeriodKind::Day).unwrap();
        for p in promos {
            let day = |d: u32| clock.period_of(params.start + i64::from(d) * DAY_SECS);
            self.promos.push(Event::Promotion {
                promo_id: fnv1a64(format!("P{}-{}", self.tag, p.id).as_bytes()),
                def: Some(Promotion {
                    store: p.store.map(|s| self.stores[s as usize]),
                    sku: self.skus[p.sku as usize],
                    start: day(p.first_day),
                    end: day(p.last_day),
                }),
            });
        }
    }
    fn sale(&mut self, ts: i64, store: u32, sku: u32, qty: i32, price_cents: u32, promo: bool) {
        self.events.push(Event::Sale {
            key: self.key(store, sku),
            ts,
            qty: i64::from(qty) * 1000,
            unit_price: Some(i64::from(price_cents) * 10),
            promo,
        });
    }
    fn movement(&mut self, ts: i64, store: u32, sku: u32, kind: StockKind, qty: i32) {
        self.events.push(Event::Stock {
            key: self.key(store, sku),
            ts,
            kind,
            qty: i64::from(qty) * 1000,
        });
    }
}

const SKUS: u32 = 1000;

fn worker_params(keys: u32, days: u32, index: usize, peers: usize) -> Params {
    let stores = (keys / SKUS).max(1);
    let per = stores.div_ceil(peers as u32);
    let first = per * index as u32;
    Params {
        stores: per.min(stores.saturating_sub(first)),
        skus: SKUS.min(keys),
        days,
        store_offset: first,
        seed: 42 + index as u64,
        ..Params::default()
    }
}

fn sink_for(params: &Params, tag: u32) -> EventSink {
    let total = params.store_offset + params.stores;
    EventSink {
        stores: (0..total)
            .map(|s| fnv1a64(generate::store_name(s).as_bytes()))
            .collect(),
        skus: (0..params.skus)
            .map(|s| fnv1a64(generate::sku_name(s).as_bytes()))
            .collect(),
        events: Vec::new(),
        promos: Vec::new(),
        tag,
    }
}

/// One worker's dataflow plus its input stage and a count of changed series per epoch.
struct Fixture {
    input: FeatureInput,
    probe: Handle<Epoch>,
    changed: std::rc::Rc<std::cell::Cell<u64>>,
    clock: Clock,
    /// Wall time spent in epochs that begin a period (every series re-evaluated).
    rollovers: Duration,
}

impl Fixture {
    fn new(worker: &mut timely::worker::Worker, clock: Clock, spec: &FeatureSpec) -> Self {
        let mut input = FeatureInput::new(clock, spec);
        let changed = std::rc::Rc::new(std::cell::Cell::new(0));
        let counter = changed.clone();
        let probe = worker.dataflow::<Epoch, _, _>(|scope| {
            dataflows::dataflow::features(scope, input.inputs_mut(), spec)
                .0
                .inspect_batch(move |_, batch| {
                    let n = batch.iter().filter(|u| u.2 > 0).count() as u64;
                    counter.set(counter.get() + n);
                })
                .probe()
                .0
        });
        Fixture {
            input,
            probe,
            changed,
            clock,
            rollovers: Duration::ZERO,
        }
    }

    /// Closes the current epoch: advances to `next` (rolling periods over on the way through
    /// each period's first epoch) and runs the dataflow until it caught up.
    fn close(&mut self, worker: &mut timely::worker::Worker, next: Epoch) {
        let cur = self.input.epoch();
        let mut p = self.clock.period_of_epoch(cur) + 1;
        while p <= self.clock.period_of_epoch(next) {
            let first = self.clock.first_epoch_of_period(p);
            if first > cur && first < next {
                self.step_to(worker, first);
            }
            p += 1;
        }
        self.step_to(worker, next);
    }

    /// Advances the input to `next` and runs the dataflow until it caught up.
    fn step_to(&mut self, worker: &mut timely::worker::Worker, next: Epoch) {
        // Closing the first epoch of a period is where every series moves to it.
        let cur = self.input.epoch();
        let rollover = self
            .clock
            .first_epoch_of_period(self.clock.period_of_epoch(cur))
            == cur;
        let started = Instant::now();
        self.input.advance_to(next);
        self.input.flush();
        worker.step_while(|| self.probe.less_than(&next));
        if rollover {
            self.rollovers += started.elapsed();
        }
    }

    /// Feeds events in time order, closing each epoch as the next begins.
    fn feed(&mut self, worker: &mut timely::worker::Worker, events: &[Event]) -> u64 {
        let mut epochs = 0;
        for ev in events {
            let e = self.clock.epoch_of(ev.ts().unwrap_or(0)).unwrap_or(0);
            if e > self.input.epoch() {
                self.close(worker, e);
                epochs += 1;
            }
            let _ = self.input.apply(ev);
        }
        epochs
    }
}

/// A worker's generator (its share of the stores), event sink and dataflow, with the promotion
/// calendar already applied.
fn start_worker(
    worker: &mut timely::worker::Worker,
    keys: u32,
    days: u32,
    clock: Clock,
    spec: &FeatureSpec,
) -> (Generator, EventSink, Fixture) {
    let params = worker_params(keys, days, worker.index(), worker.peers());
    let mut sink = sink_for(&params, worker.index() as u32);
    let g = Generator::new(&params);
    sink.reference(g.items(), g.promos(), &params);
    let mut fx = Fixture::new(worker, clock, spec);
    fx.input
        .advance_to(clock.epoch_of(params.start).unwrap_or(0));
    for p in &sink.promos {
        let _ = fx.input.apply(p);
    }
    (g, sink, fx)
}

/// Runs the timed part of a benchmark: a function of its own, so that a profiler can be told
/// to count only inside it (`valgrind --tool=callgrind --collect-atstart=no
/// --toggle-collect='*measured*'`).
#[inline(never)]
fn measured<R>(f: impl FnOnce() -> R) -> R {
    f()
}

fn throughput(keys: u32, warmup_days: u32, days: u32, workers: usize) {
    let speed = machine_speed_text();
    let spec = FeatureSpec::daily();
    let clock = Clock::new(900, PeriodKind::Day).unwrap();
    let barrier = Arc::new(Barrier::new(workers + 1));
    let results = Arc::new(Mutex::new(Vec::new()));
    let (b, r) = (barrier.clone(), results.clone());
    let gen_started = Instant::now();
    let guards = timely::execute(timely::Config::process(workers), move |worker| {
        let (mut g, mut sink, mut fx) =
            start_worker(worker, keys, warmup_days + days, clock, &spec);
        // Warm-up days fill the windows untimed, so the timed part sees a steady state.
        for _ in 0..warmup_days {
            g.next_day(&mut sink);
            fx.feed(worker, &sink.events);
            sink.events.clear();
        }
        while g.next_day(&mut sink) {}
        b.wait();
        let started = Instant::now();
        fx.changed.set(0);
        fx.rollovers = Duration::ZERO;
        let epochs = measured(|| {
            let epochs = fx.feed(worker, &sink.events);
            let last = fx.input.epoch() + 1;
            fx.close(worker, last);
            epochs
        });
        r.lock().unwrap().push((
            sink.events.len() as u64,
            epochs,
            fx.changed.get(),
            started.elapsed(),
            fx.input.key_count(),
            fx.rollovers,
        ));
        b.wait();
    })
    .unwrap();
    barrier.wait();
    let gen_secs = gen_started.elapsed().as_secs_f64();
    let cpu0 = cpu_secs();
    let t0 = Instant::now();
    barrier.wait();
    let wall = t0.elapsed().as_secs_f64();
    let cpu = cpu_secs() - cpu0;
    drop(guards);
    let r = results.lock().unwrap();
    let events: u64 = r.iter().map(|x| x.0).sum();
    let changed: u64 = r.iter().map(|x| x.2).sum();
    let series: usize = r.iter().map(|x| x.4).sum();
    // Workers close epochs in step, so worker 0's figure stands for all.
    let rollovers = r.iter().map(|x| x.5).max().unwrap_or_default();
    println!(
        "throughput: {series} series, {days} days after {warmup_days} warm-up days, {events} events, \
         {workers} workers: \
         {wall:.2} s wall, {cpu:.2} CPU-s -> {:.0} events/s, {:.0} events per CPU-s; \
         {changed} series updates emitted; day rollovers {:.2} s of the wall time \
         (generation {gen_secs:.1} s, excluded) [load {}; before the run, {speed}]",
        events as f64 / wall,
        events as f64 / cpu,
        rollovers.as_secs_f64(),
        load()
    );
}

fn latency(keys: u32, changes: u32, workers: usize, rounds: usize) {
    let spec = FeatureSpec::daily();
    let clock = Clock::new(900, PeriodKind::Day).unwrap();
    let start = 19_359 * DAY_SECS;
    let times = Arc::new(Mutex::new(Vec::new()));
    let t = times.clone();
    timely::execute(timely::Config::process(workers), move |worker| {
        let (index, peers) = (worker.index(), worker.peers());
        let mut fx = Fixture::new(worker, clock, &spec);
        let key = |i: u32| Key {
            store: u64::from(i / SKUS),
            sku: u64::from(i % SKUS),
        };
        let mine = |i: &u32| (*i as usize) % peers == index;
        let sale = |i: u32, ts: i64| Event::Sale {
            key: key(i),
            ts,
            qty: 1000,
            unit_price: Some(1990),
            promo: false,
        };
        let day0 = clock.epoch_of(start + 8 * 3600).unwrap();
        fx.input.advance_to(day0);
        for i in (0..keys).filter(mine) {
            let _ = fx.input.apply(&sale(i, start + 8 * 3600));
        }
        let rollover = clock.epoch_of(start + DAY_SECS).unwrap();
        let t0 = Instant::now();
        fx.close(worker, rollover);
        let load_time = t0.elapsed();
        let t1 = Instant::now();
        fx.close(worker, rollover + 1);
        let rollover_time = t1.elapsed();
        let mut per_epoch = Vec::new();
        let step = (keys / changes.max(1)).max(1) as usize;
        for round in 0..rounds {
            let e = rollover + 1 + round as u64;
            let ts = clock.epoch_start(e) + 1;
            fx.changed.set(0);
            let t = Instant::now();
            for i in (0..keys)
                .skip((round * 7) % step)
                .step_by(step)
                .filter(mine)
            {
                let _ = fx.input.apply(&sale(i, ts));
            }
            fx.close(worker, e + 1);
            per_epoch.push((t.elapsed(), fx.changed.get()));
        }
        if index == 0 {
            t.lock()
                .unwrap()
                .push((load_time, rollover_time, per_epoch));
        }
    })
    .unwrap();
    let mut r = times.lock().unwrap();
    let (load_time, rollover_time, per_epoch) = r.pop().unwrap();
    let mut lat: Vec<Duration> = per_epoch.iter().skip(2).map(|x| x.0).collect();
    lat.sort();
    let med = lat[lat.len() / 2];
    let p95 = lat[(lat.len() * 95 / 100).min(lat.len() - 1)];
    println!(
        "latency: {keys} series, {workers} workers, {changes} series changed per epoch \
         (worker 0 emitted {}): median {:.2} ms, p95 {:.2} ms over {} epochs; \
         day rollover {:.0} ms; initial load {:.0} ms [load {}]",
        per_epoch.last().map_or(0, |x| x.1),
        med.as_secs_f64() * 1e3,
        p95.as_secs_f64() * 1e3,
        lat.len(),
        rollover_time.as_secs_f64() * 1e3,
        load_time.as_secs_f64() * 1e3,
        load()
    );
}

fn memory(keys: u32, days: u32, workers: usize) {
    let spec = FeatureSpec::daily();
    let clock = Clock::new(900, PeriodKind::Day).unwrap();
    let counts = Arc::new(Mutex::new((0u64, 0usize)));
    let c = counts.clone();
    let started = Instant::now();
    timely::execute(timely::Config::process(workers), move |worker| {
        let (mut g, mut sink, mut fx) = start_worker(worker, keys, days, clock, &spec);
        let mut events = 0;
        while g.next_day(&mut sink) {
            fx.feed(worker, &sink.events);
            events += sink.events.len() as u64;
            sink.events.clear();
        }
        let last = fx.input.epoch() + 1;
        fx.close(worker, last);
        let mut c = c.lock().unwrap();
        c.0 += events;
        c.1 += fx.input.key_count();
    })
    .unwrap();
    let (events, series) = *counts.lock().unwrap();
    let rss = peak_rss_kib();
    println!(
        "memory: {series} series, {days} days, {events} events, {workers} workers: peak RSS {:.0} MiB \
         = {:.2} KiB per series; {:.0} s [load {}]",
        rss as f64 / 1024.0,
        rss as f64 / series.max(1) as f64,
        started.elapsed().as_secs_f64(),
        load()
    );
}

/// See the module docs.
fn checkpoint(keys: u32, days: u32, workers: usize) {
    use stockcast::checkpoint::{self as ck, DirStore, Part, Settings, Store};
    let spec = FeatureSpec::daily();
    let clock = Clock::new(900, PeriodKind::Day).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<DirStore> = Arc::new(DirStore::new(dir.path()));
    let settings = Settings {
        period: "day".into(),
        epoch_secs: 900,
        retention_periods: spec.retention(),
        schema_hash: spec.schema().hash,
        key_partitioning: "bench".into(),
    };
    let barrier = Arc::new(Barrier::new(workers));
    let results = Arc::new(Mutex::new(Vec::new()));
    let (r, st, set, b) = (
        results.clone(),
        store.clone(),
        settings.clone(),
        barrier.clone(),
    );
    // The parts' manifest entries, then the checkpoint as loaded, shared by the workers.
    let files = Arc::new(Mutex::new(Vec::new()));
    let shared: Arc<Mutex<Option<Arc<ck::Loaded>>>> = Arc::new(Mutex::new(None));
    timely::execute(timely::Config::process(workers), move |worker| {
        let params = worker_params(keys, days, worker.index(), worker.peers());
        let mut sink = sink_for(&params, worker.index() as u32);
        let mut g = Generator::new(&params);
        sink.reference(g.items(), g.promos(), &params);
        while g.next_day(&mut sink) {}
        let build = |worker: &mut timely::worker::Worker| {
            let mut input = FeatureInput::new(clock, &spec);
            let (probe, view) = worker.dataflow::<Epoch, _, _>(|scope| {
                let (features, view) =
                    dataflows::dataflow::features(scope, input.inputs_mut(), &spec);
                (features.probe().0, view)
            });
            (input, probe, view)
        };
        // The rebuild: every event through a new dataflow, epoch by epoch.
        let (mut input, probe, view) = build(worker);
        b.wait();
        let t0 = Instant::now();
        input.advance_to(clock.epoch_of(params.start).unwrap_or(0));
        for p in &sink.promos {
            let _ = input.apply(p);
        }
        for ev in &sink.events {
            let e = clock.epoch_of(ev.ts().unwrap_or(0)).unwrap_or(0);
            if e > input.epoch() {
                let mut p = clock.period_of_epoch(input.epoch()) + 1;
                while clock.first_epoch_of_period(p) < e {
                    let first = clock.first_epoch_of_period(p);
                    input.advance_to(first);
                    input.flush();
                    worker.step_while(|| probe.less_than(&first));
                    p += 1;
                }
                input.advance_to(e);
                input.flush();
                worker.step_while(|| probe.less_than(&e));
            }
            let _ = input.apply(ev);
        }
        let cut = input.epoch() + 1;
        input.advance_to(cut);
        input.flush();
        worker.step_while(|| probe.less_than(&cut));
        let rebuild = t0.elapsed();
        b.wait();
        // The checkpoint: the export (on the worker's thread), then encoding and writing.
        let t1 = Instant::now();
        let mut series = Vec::with_capacity(view.records() as usize);
        view.export(|k, r, a| series.push((k, r, a)));
        let export = t1.elapsed();
        let part = Part {
            epoch: cut,
            worker: worker.index(),
            peers: worker.peers(),
            reference: vec![],
            series,
            ..Part::default()
        };
        let t2 = Instant::now();
        let bytes = ck::encode(&set, &part);
        let file = ck::part_name(worker.index());
        st.put(&format!("bench/{file}"), &bytes).unwrap();
        let write = t2.elapsed();
        let records = part.series.len();
        files.lock().unwrap().push(ck::FileEntry {
            file,
            bytes: bytes.len() as u64,
            crc32: ck::file_crc(&bytes),
            items: part.series_count(),
        });
        drop(part);
        b.wait();
        if worker.index() == 0 {
            // The manifest, as the coordinator writes it.
            let mut parts = std::mem::take(&mut *files.lock().unwrap());
            parts.sort_by(|a, b| a.file.cmp(&b.file));
            let manifest = ck::Manifest {
                format: ck::FORMAT_VERSION,
                epoch: cut,
                epoch_start: String::new(),
                created_at: String::new(),
                reason: "periodic".into(),
                settings: set.clone(),
                workers: worker.peers(),
                processes: 1,
                parts,
                latest: None,
                offsets: vec![],
            };
            let json = serde_json::to_vec(&manifest).unwrap();
            st.put(&format!("bench/{}", ck::MANIFEST), &json).unwrap();
        }
        b.wait();
        // The restart: the process reads and checks every part (on every core), then each
        // worker keeps its series and restores them.
        let t3 = Instant::now();
        if worker.index() == 0 {
            let loaded = ck::load(&*st, "bench", &set)
                .unwrap()
                .expect("a checkpoint");
            *shared.lock().unwrap() = Some(Arc::new(loaded));
        }
        b.wait();
        let loaded = shared.lock().unwrap().clone().unwrap();
        let mine = Part::series_of(&loaded.parts, worker.index(), worker.peers());
        drop(loaded);
        b.wait();
        *shared.lock().unwrap() = None;
        let read = t3.elapsed();
        let (mut input2, probe2, view2) = build(worker);
        input2.restore(cut - 1, &input.reference(), mine, &view2);
        input2.advance_to(cut);
        input2.flush();
        worker.step_while(|| probe2.less_than(&cut));
        let restore = t3.elapsed();
        r.lock().unwrap().push(CheckpointRun {
            events: sink.events.len() as u64,
            series: view.series(),
            restored: view2.series(),
            records,
            bytes: bytes.len(),
            rebuild,
            export,
            write,
            read,
            restore,
        });
    })
    .unwrap();
    let r = results.lock().unwrap();
    let sum = |f: fn(&CheckpointRun) -> f64| -> f64 { r.iter().map(f).sum() };
    let max = |f: fn(&CheckpointRun) -> Duration| -> f64 {
        r.iter().map(f).max().unwrap_or_default().as_secs_f64()
    };
    let series = sum(|x| x.series as f64);
    let restored = sum(|x| x.restored as f64);
    assert_eq!(series, restored, "the restore holds every series");
    let bytes = sum(|x| x.bytes as f64);
    let rebuild = max(|x| x.rebuild);
    let restore = max(|x| x.restore);
    println!(
        "checkpoint: {series} series, {days} days, {} events, {workers} workers: {} records, \
         {:.0} MB ({:.0} bytes per series); export (stall) {:.2} s, encode+write+fsync {:.2} s; \
         restart: read+check+decode+split {:.2} s, restored and caught up in {restore:.2} s; \
         rebuild from the events (dataflow only) {rebuild:.2} s = {:.1}x the restart [load {}]",
        sum(|x| x.events as f64),
        sum(|x| x.records as f64),
        bytes / 1e6,
        bytes / series.max(1.0),
        max(|x| x.export),
        max(|x| x.write),
        max(|x| x.read),
        rebuild / restore.max(1e-9),
        load()
    );
}

/// One worker's figures in the checkpoint scenario.
struct CheckpointRun {
    events: u64,
    series: u64,
    restored: u64,
    records: usize,
    bytes: usize,
    rebuild: Duration,
    export: Duration,
    write: Duration,
    read: Duration,
    restore: Duration,
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let flag = |name: &str, default: u32| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1)?.parse().ok())
            .unwrap_or(default)
    };
    let workers = flag("--workers", 2) as usize;
    let wanted = |s: &str| args.iter().any(|a| a == s);
    let all = !["throughput", "latency", "memory", "checkpoint"]
        .iter()
        .any(|s| wanted(s));
    if wanted("throughput") || all {
        throughput(
            flag("--keys", 100_000),
            flag("--warmup-days", 0),
            flag("--days", 28),
            workers,
        );
    }
    if wanted("latency") || all {
        if all {
            // 1% of 100k series, then the same number of changes among 1M series, then 1% of 1M.
            latency(100_000, 1_000, workers, 30);
            latency(1_000_000, 1_000, workers, 30);
            latency(1_000_000, 10_000, workers, 30);
        } else {
            let keys = flag("--keys", 100_000);
            let changes = flag("--changes", keys / 100);
            latency(keys, changes, workers, flag("--rounds", 30) as usize);
        }
    }
    if wanted("checkpoint") || all {
        if all {
            checkpoint(100_000, 28, workers);
        } else {
            checkpoint(flag("--keys", 100_000), flag("--days", 28), workers);
        }
    }
    if wanted("memory") || all {
        if wanted("--child") {
            memory(flag("--keys", 1_000_000), flag("--days", 14), workers);
        } else {
            // A child process, so its peak RSS is the dataflow's alone.
            let exe = std::env::current_exe().unwrap();
            let status = std::process::Command::new(exe)
                .args(["memory", "--child"])
                .args(["--keys", &flag("--keys", 1_000_000).to_string()])
                .args(["--days", &flag("--days", 14).to_string()])
                .args(["--workers", &workers.to_string()])
                .status()
                .unwrap();
            assert!(status.success());
        }
    }
}

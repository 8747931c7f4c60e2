//! A seeded generator of realistic retail data, in the dataset layout `replay` reads.
//!
//! Per series it simulates a demand process (a per-SKU base rate scaled by store, weekday and
//! yearly seasonality, price changes with elasticity, calendar promotions with uplift, and
//! intermittent slow movers), serves that demand from a simulated shelf (so stock-outs censor
//! sales), replenishes with an (s, S) policy through orders and receipts after a lead time, and
//! adds shrink adjustments and the odd return. Everything derives from the seed: the same
//! parameters give byte-identical files.
//!
//! The generator streams events day by day, in time order, into a [`Sink`]; the file writer
//! and the benchmarks are two sinks.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, LogNormal, Poisson};

use dataflows::time::DAY_SECS;
use dataflows::StockKind;

/// Generator parameters.
#[derive(Clone, Debug)]
pub struct Params {
    /// Number of stores.
    pub stores: u32,
    /// Number of SKUs (every store sells every SKU).
    pub skus: u32,
    /// Days of history.
    pub days: u32,
    /// First day, seconds since the Unix epoch (midnight UTC).
    pub start: i64,
    /// Seed of everything.
    pub seed: u64,
    /// Index of the first store (so several generators can cover disjoint stores).
    pub store_offset: u32,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            stores: 4,
            skus: 25,
            days: 365,
            // 2023-01-02, a Monday.
            start: 19_359 * DAY_SECS,
            seed: 42,
            store_offset: 0,
        }
    }
}

/// Name of store `i`.
pub fn store_name(i: u32) -> String {
    format!("S{i:03}")
}

/// Name of SKU `i`.
pub fn sku_name(i: u32) -> String {
    format!("SKU{i:05}")
}

/// A generated catalog item.
#[derive(Clone, Debug)]
pub struct Item {
    /// SKU index.
    pub sku: u32,
    /// Category name.
    pub category: &'static str,
    /// Units per pack.
    pub pack_size: u32,
    /// Supplier lead time in days.
    pub lead_time_days: u32,
}

/// A generated calendar promotion.
#[derive(Clone, Debug)]
pub struct Promo {
    /// Promotion index.
    pub id: u32,
    /// One store, or all.
    pub store: Option<u32>,
    /// SKU index.
    pub sku: u32,
    /// First day index (from `start`).
    pub first_day: u32,
    /// Last day index, inclusive.
    pub last_day: u32,
    /// Discount in percent.
    pub discount_pct: u32,
}

/// Receives generated data in time order.
pub trait Sink {
    /// Catalog, stores and promotions, before any event.
    fn reference(&mut self, items: &[Item], promos: &[Promo], params: &Params);
    /// A sale of `qty` units (negative for a return) at `price_cents`.
    fn sale(&mut self, ts: i64, store: u32, sku: u32, qty: i32, price_cents: u32, promo: bool);
    /// A stock movement.
    fn movement(&mut self, ts: i64, store: u32, sku: u32, kind: StockKind, qty: i32);
}

const CATEGORIES: [&str; 5] = [
    "grocery",
    "household",
    "beverages",
    "snacks",
    "personal_care",
];
const WEEKDAY: [f64; 7] = [0.85, 0.9, 0.95, 1.0, 1.15, 1.35, 0.8];

struct SkuModel {
    rate: f64,
    price_cents: f64,
    yearly_amp: f64,
    yearly_phase: f64,
    item: Item,
}

struct Shelf {
    store_factor: f64,
    on_hand: i64,
    pipeline: Vec<(u32, i64)>,
}

/// The generator's state: models, calendar, shelves, and the next day to produce.
pub struct Generator {
    /// Parameters.
    params: Params,
    /// Randomness, all from the seed.
    rng: ChaCha8Rng,
    /// Demand model per SKU.
    skus: Vec<SkuModel>,
    /// Catalog.
    items: Vec<Item>,
    /// Promotion calendar.
    promos: Vec<Promo>,
    /// Promotion indices by SKU.
    promos_by_sku: Vec<Vec<usize>>,
    /// Shelf state per (store, SKU).
    shelves: Vec<Shelf>,
    /// Next day to generate.
    day: u32,
    /// Events of the day being generated, before sorting.
    buffer: Vec<(i64, u32, u32, Ev)>,
}

impl Generator {
    /// Draws the models and the promotion calendar.
    pub fn new(params: &Params) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(params.seed);
        let base = LogNormal::new(0.4, 0.9).unwrap_or_else(|_| unreachable!("constant parameters"));
        let skus: Vec<SkuModel> = (0..params.skus)
            .map(|i| {
                let slow = rng.gen_bool(0.25);
                let rate = if slow {
                    rng.gen_range(0.05..0.4)
                } else {
                    f64::min(base.sample(&mut rng), 40.0)
                };
                SkuModel {
                    rate,
                    price_cents: rng.gen_range(99.0..1299.0),
                    yearly_amp: rng.gen_range(0.0..0.4),
                    yearly_phase: rng.gen_range(0.0..365.0),
                    item: Item {
                        sku: i,
                        category: CATEGORIES[(i as usize) % CATEGORIES.len()],
                        pack_size: [1, 6, 12][rng.gen_range(0..3)],
                        lead_time_days: rng.gen_range(2..8),
                    },
                }
            })
            .collect();
        let mut promos = Vec::new();
        let mut promos_by_sku = vec![Vec::new(); params.skus as usize];
        for sku in 0..params.skus {
            let mut day = rng.gen_range(0..60u32);
            while day < params.days {
                let len = rng.gen_range(4..11u32);
                promos_by_sku[sku as usize].push(promos.len());
                promos.push(Promo {
                    id: promos.len() as u32,
                    store: rng
                        .gen_bool(0.3)
                        .then(|| params.store_offset + rng.gen_range(0..params.stores.max(1))),
                    sku,
                    first_day: day,
                    last_day: (day + len - 1).min(params.days.saturating_sub(1)),
                    discount_pct: [10, 15, 20, 25, 30][rng.gen_range(0..5)],
                });
                day += len + rng.gen_range(30..120u32);
            }
        }
        let items = skus.iter().map(|s| s.item.clone()).collect();
        let store_factor = LogNormal::new(0.0, 0.4).unwrap_or_else(|_| unreachable!());
        let shelves = (0..params.stores * params.skus)
            .map(|_| Shelf {
                store_factor: store_factor.sample(&mut rng),
                on_hand: 0,
                pipeline: Vec::new(),
            })
            .collect();
        Generator {
            params: params.clone(),
            rng,
            skus,
            items,
            promos,
            promos_by_sku,
            shelves,
            day: 0,
            buffer: Vec::new(),
        }
    }

    /// The catalog.
    pub fn items(&self) -> &[Item] {
        &self.items
    }

    /// The promotion calendar.
    pub fn promos(&self) -> &[Promo] {
        &self.promos
    }

    /// Generates the next day into `sink`, in time order; `false` once every day was produced.
    pub fn next_day(&mut self, sink: &mut dyn Sink) -> bool {
        let params = &self.params;
        let day = self.day;
        if day >= params.days {
            return false;
        }
        self.day += 1;
        let rng = &mut self.rng;
        let day_start = params.start + i64::from(day) * DAY_SECS;
        let weekday = dataflows::time::weekday_of_day((day_start / DAY_SECS) as i32);
        let events = &mut self.buffer;
        events.clear();
        for sku in 0..params.skus {
            let m = &mut self.skus[sku as usize];
            if rng.gen_bool(1.0 / 120.0) {
                m.price_cents *= rng.gen_range(0.85..1.15);
            }
            let yearly = 1.0
                + m.yearly_amp
                    * (2.0 * std::f64::consts::PI * (f64::from(day) - m.yearly_phase) / 365.0)
                        .sin();
            for local in 0..params.stores {
                let store = params.store_offset + local;
                let promo = self.promos_by_sku[sku as usize]
                    .iter()
                    .map(|i| &self.promos[*i])
                    .find(|p| {
                        p.first_day <= day
                            && day <= p.last_day
                            && p.store.is_none_or(|s| s == store)
                    });
                let discount = promo.map_or(0.0, |p| f64::from(p.discount_pct) / 100.0);
                let price = m.price_cents * (1.0 - discount);
                let uplift = if promo.is_some() { 1.3 } else { 1.0 };
                let shelf = &mut self.shelves[(local * params.skus + sku) as usize];
                let mean = m.rate * shelf.store_factor;
                let lambda =
                    mean * WEEKDAY[weekday] * yearly * uplift * (price / m.price_cents).powf(-1.5);
                if day == 0 {
                    shelf.on_hand = (mean * 14.0).ceil() as i64 + 2;
                    events.push((
                        day_start + 6 * 3600,
                        store,
                        sku,
                        Ev::Move(StockKind::Adjustment, shelf.on_hand as i32),
                    ));
                }
                // Deliveries due today arrive before opening.
                let mut k = 0;
                while k < shelf.pipeline.len() {
                    if shelf.pipeline[k].0 <= day {
                        let (_, q) = shelf.pipeline.swap_remove(k);
                        shelf.on_hand += q;
                        events.push((
                            day_start + 7 * 3600,
                            store,
                            sku,
                            Ev::Move(StockKind::Receipt, q as i32),
                        ));
                    } else {
                        k += 1;
                    }
                }
                let demand = if lambda > 0.0 {
                    Poisson::new(lambda).map_or(0, |p| p.sample(rng) as i64)
                } else {
                    0
                };
                let price = price.round() as u32;
                let mut sold = 0;
                while sold < demand && shelf.on_hand > 0 {
                    let q = if rng.gen_bool(0.8) { 1 } else { 2 }.min(shelf.on_hand);
                    shelf.on_hand -= q;
                    sold += q;
                    let ts = day_start + rng.gen_range(8 * 3600..22 * 3600);
                    events.push((ts, store, sku, Ev::Sale(q as i32, price, promo.is_some())));
                }
                if sold > 0 && rng.gen_bool(0.01) {
                    shelf.on_hand += 1;
                    let ts = day_start + rng.gen_range(8 * 3600..22 * 3600);
                    events.push((ts, store, sku, Ev::Sale(-1, price, false)));
                }
                if rng.gen_bool(0.02) && shelf.on_hand > 0 {
                    shelf.on_hand -= 1;
                    events.push((
                        day_start + 22 * 3600 + 600,
                        store,
                        sku,
                        Ev::Move(StockKind::Adjustment, -1),
                    ));
                }
                // End-of-day review: (s, S) with s covering the lead time plus 3 days.
                let lead = m.item.lead_time_days;
                let position = shelf.on_hand + shelf.pipeline.iter().map(|p| p.1).sum::<i64>();
                let s = (mean * (f64::from(lead) + 3.0)).ceil() as i64;
                if position <= s {
                    let target = (mean * (f64::from(lead) + 14.0)).ceil() as i64 + 1;
                    let pack = i64::from(m.item.pack_size);
                    let qty = ((target - position).max(1) + pack - 1) / pack * pack;
                    let late = if rng.gen_bool(0.1) {
                        rng.gen_range(1..3)
                    } else {
                        0
                    };
                    shelf.pipeline.push((day + lead + late, qty));
                    events.push((
                        day_start + 23 * 3600,
                        store,
                        sku,
                        Ev::Move(StockKind::Order, qty as i32),
                    ));
                }
            }
        }
        events.sort_by_key(|e| (e.0, e.1, e.2));
        for &(ts, store, sku, ev) in events.iter() {
            match ev {
                Ev::Sale(q, p, promo) => sink.sale(ts, store, sku, q, p, promo),
                Ev::Move(kind, q) => sink.movement(ts, store, sku, kind, q),
            }
        }
        true
    }
}

/// Runs the whole generator into `sink`.
pub fn generate(params: &Params, sink: &mut dyn Sink) {
    let mut generator = Generator::new(params);
    sink.reference(generator.items(), generator.promos(), params);
    while generator.next_day(sink) {}
}

#[derive(Clone, Copy)]
enum Ev {
    Sale(i32, u32, bool),
    Move(StockKind, i32),
}

/// Writes the dataset layout into a directory.
pub struct FileSink {
    sales: BufWriter<File>,
    stock: BufWriter<File>,
    next_id: u64,
    error: Option<std::io::Error>,
    /// Events written.
    pub events: u64,
}

impl FileSink {
    /// Creates `dir` and the event files in it.
    pub fn create(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let open =
            |n: &str| File::create(dir.join(n)).map(|f| BufWriter::with_capacity(1 << 20, f));
        let mut sales = open("sales.csv")?;
        let mut stock = open("stock.csv")?;
        writeln!(sales, "event_id,ts,store_id,sku_id,qty,unit_price,promo")?;
        writeln!(stock, "event_id,ts,store_id,sku_id,kind,qty")?;
        Ok(FileSink {
            sales,
            stock,
            next_id: 0,
            error: None,
            events: 0,
        })
    }

    fn track(&mut self, r: std::io::Result<()>) {
        if let Err(e) = r {
            self.error.get_or_insert(e);
        }
        self.next_id += 1;
        self.events += 1;
    }

    /// Flushes and reports the first write error.
    pub fn finish(mut self) -> std::io::Result<u64> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        self.sales.flush()?;
        self.stock.flush()?;
        Ok(self.events)
    }
}

fn ts_text(ts: i64) -> String {
    crate::display::rfc3339(ts)
}

fn write_reference(
    dir: &Path,
    items: &[Item],
    promos: &[Promo],
    params: &Params,
) -> std::io::Result<()> {
    let mut w = BufWriter::new(File::create(dir.join("items.csv"))?);
    writeln!(
        w,
        "sku_id,category,pack_size,lead_time_days,min_order_qty,active"
    )?;
    for it in items {
        writeln!(
            w,
            "{},{},{},{},{},true",
            sku_name(it.sku),
            it.category,
            it.pack_size,
            it.lead_time_days,
            it.pack_size
        )?;
    }
    w.flush()?;
    let mut w = BufWriter::new(File::create(dir.join("stores.csv"))?);
    writeln!(w, "store_id,region,active")?;
    for s in params.store_offset..params.store_offset + params.stores {
        writeln!(w, "{},R{},true", store_name(s), s % 3)?;
    }
    w.flush()?;
    let mut w = BufWriter::new(File::create(dir.join("promotions.csv"))?);
    writeln!(w, "promo_id,store_id,sku_id,start,end,discount_pct")?;
    let date = |d: u32| ts_text(params.start + i64::from(d) * DAY_SECS)[..10].to_string();
    for p in promos {
        writeln!(
            w,
            "P{:05},{},{},{},{},{}",
            p.id,
            p.store.map_or("*".to_string(), store_name),
            sku_name(p.sku),
            date(p.first_day),
            date(p.last_day),
            p.discount_pct
        )?;
    }
    w.flush()
}

/// A sink writing files, remembering its directory for the reference files.
pub struct DirSink<'a> {
    /// The directory.
    pub dir: &'a Path,
    /// The event files.
    pub files: FileSink,
}

impl Sink for DirSink<'_> {
    fn reference(&mut self, items: &[Item], promos: &[Promo], params: &Params) {
        let r = write_reference(self.dir, items, promos, params);
        if let Err(e) = r {
            self.files.error.get_or_insert(e);
        }
    }

    fn sale(&mut self, ts: i64, store: u32, sku: u32, qty: i32, price_cents: u32, promo: bool) {
        let f = &mut self.files;
        let r = writeln!(
            f.sales,
            "e{},{},{},{},{},{}.{:02},{}",
            f.next_id,
            ts_text(ts),
            store_name(store),
            sku_name(sku),
            qty,
            price_cents / 100,
            price_cents % 100,
            u8::from(promo)
        );
        f.track(r);
    }

    fn movement(&mut self, ts: i64, store: u32, sku: u32, kind: StockKind, qty: i32) {
        let f = &mut self.files;
        let kind = kind.name();
        let r = writeln!(
            f.stock,
            "m{},{},{},{},{},{}",
            f.next_id,
            ts_text(ts),
            store_name(store),
            sku_name(sku),
            kind,
            qty
        );
        f.track(r);
    }
}

/// Generates a dataset into `dir`; returns the number of events written.
pub fn generate_to_dir(params: &Params, dir: &Path) -> std::io::Result<u64> {
    let mut sink = DirSink {
        dir,
        files: FileSink::create(dir)?,
    };
    generate(params, &mut sink);
    sink.files.finish()
}

//! Test support: a naive batch reference of the feature definitions, and a seeded generator of
//! messy event streams (returns, late and out-of-order arrivals, promotions upserted and
//! deleted, stock movements).

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};

use dataflows::features::CUT_DISCOUNT;
use dataflows::features::{div_round, mean_std, WEEKS_PER_YEAR};
use dataflows::model::{Id, ItemAttrs, PlannedPrice, Promotion, MISSING};
use dataflows::time::weekday_of_day;
use dataflows::{Clock, Epoch, Event, FeatureSpec, FeatureVec, Key, Period, PeriodKind, StockKind};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Features of every series as of epoch `epoch`, computed from scratch from the events
/// (`assigned[i]` is the epoch event `i` was applied in). Events too old when applied are
/// returned separately.
pub fn reference(
    clock: &Clock,
    spec: &FeatureSpec,
    events: &[Event],
    assigned: &[Epoch],
    epoch: Epoch,
) -> (BTreeMap<Key, FeatureVec>, Vec<u32>) {
    let r = spec.retention() as Period;
    let now = clock.period_of_epoch(epoch);
    let mut too_late = Vec::new();
    let mut applied: Vec<&Event> = Vec::new();
    // Arrival order is the event order; apply those assigned at or before `epoch`.
    for (i, ev) in events.iter().enumerate() {
        if assigned[i] > epoch {
            continue;
        }
        if let Some(ts) = ev.ts() {
            let current = clock.period_of_epoch(assigned[i]);
            if clock.period_of(ts) <= current - r {
                too_late.push(i as u32);
                continue;
            }
        }
        applied.push(ev);
    }
    let mut promos: HashMap<Id, Promotion> = HashMap::new();
    let mut prices: HashMap<Id, PlannedPrice> = HashMap::new();
    let mut items: HashMap<Id, ItemAttrs> = HashMap::new();
    let mut stores: HashMap<Id, bool> = HashMap::new();
    for ev in &applied {
        match ev {
            Event::Promotion { promo_id, def } => {
                match def {
                    Some(d) => promos.insert(*promo_id, *d),
                    None => promos.remove(promo_id),
                };
            }
            Event::PlannedPrice { price_id, def } => {
                match def {
                    Some(d) => prices.insert(*price_id, *d),
                    None => prices.remove(price_id),
                };
            }
            Event::Item { sku, def } => {
                match def {
                    Some(d) => items.insert(*sku, *d),
                    None => items.remove(sku),
                };
            }
            Event::Store { store, active } => {
                match active {
                    Some(a) => stores.insert(*store, *a),
                    None => stores.remove(store),
                };
            }
            _ => {}
        }
    }
    let mut by_key: BTreeMap<Key, Vec<&Event>> = BTreeMap::new();
    for ev in &applied {
        if let Some(k) = ev.key() {
            by_key.entry(k).or_default().push(ev);
        }
    }
    let table = by_key
        .into_iter()
        .map(|(key, evs)| {
            let promos: Vec<(Period, Period)> = promos
                .values()
                .filter(|p| p.sku == key.sku && p.store.is_none_or(|s| s == key.store))
                .map(|p| (p.start, p.end))
                .collect();
            let plan: Vec<(Period, Period, i64)> = prices
                .values()
                .filter(|p| p.sku == key.sku && p.store.is_none_or(|s| s == key.store))
                .map(|p| (p.start, p.end, p.price))
                .collect();
            let mut v = series(clock, spec, now, &evs, &promos, &plan).0.to_vec();
            let item = items.get(&key.sku).copied().unwrap_or_default();
            let open = stores.get(&key.store).copied().unwrap_or(true);
            v.extend([
                item.lead_time_days.unwrap_or(MISSING),
                item.pack_size.unwrap_or(MISSING),
                item.min_order_qty.unwrap_or(MISSING),
                i64::from(item.active && open),
                item.category.map_or(MISSING, |c| c as i64),
            ]);
            (key, FeatureVec::from(v))
        })
        .collect();
    (table, too_late)
}

fn series(
    clock: &Clock,
    spec: &FeatureSpec,
    now: Period,
    evs: &[&Event],
    promos: &[(Period, Period)],
    plan: &[(Period, Period, i64)],
) -> FeatureVec {
    let r = spec.retention() as Period;
    let mut qty: HashMap<Period, i64> = HashMap::new();
    let mut price: HashMap<Period, (i64, i64)> = HashMap::new();
    let mut promo_sales: HashMap<Period, i64> = HashMap::new();
    let mut on_hand_delta: BTreeMap<Period, i64> = BTreeMap::new();
    let mut on_order = 0i64;
    let mut first_stock: Option<Period> = None;
    for ev in evs {
        let p = clock.period_of(ev.ts().unwrap());
        match **ev {
            Event::Sale {
                qty: q,
                unit_price,
                promo,
                ..
            } => {
                *qty.entry(p).or_default() += q;
                *on_hand_delta.entry(p).or_default() -= q;
                if let Some(u) = unit_price {
                    let e = price.entry(p).or_default();
                    e.0 += u;
                    e.1 += 1;
                }
                if promo {
                    *promo_sales.entry(p).or_default() += 1;
                }
            }
            Event::Stock { kind, qty: q, .. } => {
                first_stock = Some(first_stock.map_or(p, |f: Period| f.min(p)));
                match kind {
                    StockKind::Order => on_order += q,
                    StockKind::Receipt => {
                        on_order -= q;
                        *on_hand_delta.entry(p).or_default() += q;
                    }
                    StockKind::Adjustment => *on_hand_delta.entry(p).or_default() += q,
                }
            }
            _ => {}
        }
    }
    let q = |p: Period| qty.get(&p).copied().unwrap_or(0);
    let calendar = |p: Period| promos.iter().any(|(a, b)| *a <= p && p <= *b);
    let mut out = Vec::new();
    for k in 0..=spec.lags as Period {
        out.push(q(now - k));
    }
    for w in &spec.windows {
        out.push((0..*w as Period).map(|a| q(now - a)).sum());
    }
    let s = spec.stats_window as Period;
    let (mean, std) = mean_std((0..s).map(|a| q(now - a)), spec.stats_window);
    out.push(mean);
    out.push(std);
    match spec.period {
        PeriodKind::Day => {
            let weeks = spec.profile_weeks as Period;
            for wd in 0..7 {
                let sum: i64 = (now - 7 * weeks + 1..=now)
                    .filter(|d| weekday_of_day(*d) == wd)
                    .map(q)
                    .sum();
                out.push(div_round(i128::from(sum), i128::from(weeks)));
            }
        }
        PeriodKind::Week => {
            for h in 0..=spec.horizon as Period {
                out.push(q(now - WEEKS_PER_YEAR as Period + h));
            }
        }
    }
    let last_sale = qty.iter().filter(|(_, v)| **v > 0).map(|(p, _)| *p).max();
    out.push(last_sale.map_or(r, |p| (now - p).min(r)) as i64);
    out.push((0..s).filter(|a| q(now - a) <= 0).count() as i64);
    match first_stock {
        Some(first) => {
            let end_of = |p: Period| -> i64 { on_hand_delta.range(..=p).map(|(_, v)| v).sum() };
            out.push(
                (now - s..now)
                    .filter(|p| *p >= first && end_of(*p) <= 0)
                    .count() as i64,
            );
        }
        None => out.push(MISSING),
    }
    out.push(
        (now - s + 1..=now)
            .filter(|p| promo_sales.get(p).is_some_and(|n| *n > 0) || calendar(*p))
            .count() as i64,
    );
    let last_price = (now - r + 1..=now)
        .rev()
        .find_map(|p| price.get(&p).filter(|x| x.1 > 0))
        .map(|(s, n)| div_round(i128::from(*s), i128::from(*n)));
    out.push(last_price.unwrap_or(MISSING));
    let (ps, pn) = (now - spec.price_window as Period + 1..=now)
        .filter_map(|p| price.get(&p))
        .fold((0i128, 0i128), |acc, x| {
            (acc.0 + i128::from(x.0), acc.1 + i128::from(x.1))
        });
    out.push(match last_price {
        Some(l) if pn > 0 && ps > 0 => div_round(i128::from(l) * 1000 * pn, ps),
        _ => MISSING,
    });
    out.push(i64::from(
        calendar(now) || promo_sales.get(&now).is_some_and(|n| *n > 0),
    ));
    out.push(
        (1..=spec.horizon as Period)
            .filter(|h| calendar(now + h))
            .count() as i64,
    );
    for h in 1..=spec.horizon as Period {
        out.push(i64::from(calendar(now + h)));
    }
    plan_features(spec, now, &price, plan, &mut out);
    if first_stock.is_some() {
        out.push(on_hand_delta.values().sum());
        out.push(on_order.max(0));
    } else {
        out.push(MISSING);
        out.push(MISSING);
    }
    FeatureVec::from(out)
}

/// The price plan features, by their definition in docs/model.md.
fn plan_features(
    spec: &FeatureSpec,
    now: Period,
    sales: &HashMap<Period, (i64, i64)>,
    plan: &[(Period, Period, i64)],
    out: &mut Vec<i64>,
) {
    let s = spec.stats_window as Period;
    let h_max = spec.horizon as Period;
    let mean = |p: Period| {
        sales
            .get(&p)
            .filter(|x| x.1 > 0)
            .map(|(sum, n)| div_round(i128::from(*sum), i128::from(*n)))
    };
    let planned = |p: Period| {
        plan.iter()
            .filter(|(a, b, _)| *a <= p && p <= *b)
            .map(|x| x.2)
            .min()
    };
    let sales_high = (now - s + 1..=now).filter_map(mean).max().unwrap_or(0);
    let plan_high = plan
        .iter()
        .filter(|(a, b, _)| *b > now - s && *a <= now + h_max)
        .map(|x| x.2)
        .max()
        .unwrap_or(0);
    let high = sales_high.max(plan_high);
    if high == 0 {
        out.push(MISSING);
        out.push(0);
        for _ in 1..=h_max {
            out.extend([1000, 0, 0]);
        }
        return;
    }
    let rel = |x: i64| div_round(i128::from(x) * 1000, i128::from(high));
    let now_rel = rel(planned(now).or_else(|| mean(now)).unwrap_or(high));
    out.push(now_rel);
    out.push((1..=h_max).filter(|h| planned(now + h).is_some()).count() as i64);
    let mut before = (1000 - now_rel).max(0);
    for h in 1..=h_max {
        let r = planned(now + h).map_or(1000, rel);
        let discount = (1000 - r).max(0);
        let cut = if before < CUT_DISCOUNT && discount >= CUT_DISCOUNT {
            1
        } else if before >= CUT_DISCOUNT && discount < CUT_DISCOUNT {
            -1
        } else {
            0
        };
        out.extend([r, discount, cut]);
        before = discount;
    }
}

/// A small spec whose windows expire quickly, to exercise sliding and retention.
pub fn small_spec(period: PeriodKind) -> FeatureSpec {
    match period {
        PeriodKind::Day => FeatureSpec {
            period,
            windows: vec![1, 3, 7, 10],
            lags: 3,
            stats_window: 5,
            price_window: 4,
            profile_weeks: 2,
            horizon: 6,
        },
        PeriodKind::Week => FeatureSpec {
            period,
            windows: vec![1, 2, 4],
            lags: 2,
            stats_window: 3,
            price_window: 2,
            profile_weeks: 0,
            horizon: 3,
        },
    }
}

/// A messy random event stream in arrival order.
pub fn random_events(seed: u64, period: PeriodKind, n: usize) -> Vec<Event> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let span_days: i64 = match period {
        PeriodKind::Day => 40,
        PeriodKind::Week => 420,
    };
    let start = 19_000 * 86_400;
    let stores = rng.gen_range(1..4u64);
    let skus = rng.gen_range(1..5u64);
    let key = |rng: &mut ChaCha8Rng| Key {
        store: rng.gen_range(0..stores),
        sku: 100 + rng.gen_range(0..skus),
    };
    let mut timed: Vec<(i64, Event)> = (0..n)
        .map(|_| {
            let ts = start + rng.gen_range(0..span_days * 86_400);
            let k = key(&mut rng);
            let ev = if rng.gen_bool(0.75) {
                Event::Sale {
                    key: k,
                    ts,
                    qty: if rng.gen_bool(0.1) {
                        -rng.gen_range(1..3) * 1000
                    } else {
                        rng.gen_range(0..5) * 1000 + [0, 500, 250][rng.gen_range(0..3)]
                    },
                    unit_price: rng.gen_bool(0.6).then(|| rng.gen_range(500..3000)),
                    promo: rng.gen_bool(0.15),
                }
            } else {
                Event::Stock {
                    key: k,
                    ts,
                    kind: [StockKind::Order, StockKind::Receipt, StockKind::Adjustment]
                        [rng.gen_range(0..3)],
                    qty: rng.gen_range(0..20) * 1000,
                }
            };
            (ts, ev)
        })
        .collect();
    timed.sort_by_key(|(ts, _)| *ts);
    let mut events: Vec<Event> = timed.into_iter().map(|(_, e)| e).collect();
    // Displace some events later in arrival order (late arrivals), a few far (too late).
    for _ in 0..n / 8 {
        let i = rng.gen_range(0..events.len());
        let far = if rng.gen_bool(0.2) { n / 2 } else { n / 20 + 1 };
        let j = (i + rng.gen_range(1..=far)).min(events.len() - 1);
        let ev = events.remove(i);
        events.insert(j, ev);
    }
    // Promotions upserted and deleted, interleaved.
    let p = clock_for(period).period_of(start);
    let span = clock_for(period).period_of(start + span_days * 86_400) - p;
    for _ in 0..rng.gen_range(0..8) {
        let promo_id = rng.gen_range(0..4);
        let def = (!rng.gen_bool(0.2)).then(|| {
            let s = p + rng.gen_range(0..span.max(1));
            Promotion {
                store: rng.gen_bool(0.5).then(|| rng.gen_range(0..stores)),
                sku: 100 + rng.gen_range(0..skus),
                start: s,
                end: s + rng.gen_range(0..6),
            }
        });
        let at = rng.gen_range(0..=events.len());
        events.insert(at, Event::Promotion { promo_id, def });
    }
    // Price plan entries upserted and deleted, interleaved, overlapping: cuts, rises, and
    // entries of one store or of every store.
    for _ in 0..rng.gen_range(0..10) {
        let price_id = rng.gen_range(0..5);
        let def = (!rng.gen_bool(0.2)).then(|| {
            let s = p + rng.gen_range(0..span.max(1));
            PlannedPrice {
                store: rng.gen_bool(0.5).then(|| rng.gen_range(0..stores)),
                sku: 100 + rng.gen_range(0..skus),
                start: s,
                end: s + rng.gen_range(0..6),
                price: rng.gen_range(300..3500),
            }
        });
        let at = rng.gen_range(0..=events.len());
        events.insert(at, Event::PlannedPrice { price_id, def });
    }
    // Catalog items and stores upserted and deleted, interleaved: each change must reach
    // exactly the series of its SKU or store.
    for _ in 0..rng.gen_range(0..6) {
        let at = rng.gen_range(0..=events.len());
        let ev = if rng.gen_bool(0.6) {
            let def = (!rng.gen_bool(0.2)).then(|| ItemAttrs {
                category: rng.gen_bool(0.7).then(|| rng.gen_range(1..3)),
                lead_time_days: rng.gen_bool(0.8).then(|| rng.gen_range(1..4)),
                pack_size: rng.gen_bool(0.5).then(|| rng.gen_range(1..3) * 6000),
                min_order_qty: rng.gen_bool(0.3).then_some(12_000),
                active: rng.gen_bool(0.8),
            });
            Event::Item {
                sku: 100 + rng.gen_range(0..skus),
                def,
            }
        } else {
            Event::Store {
                store: rng.gen_range(0..stores),
                active: (!rng.gen_bool(0.2)).then(|| rng.gen_bool(0.6)),
            }
        };
        events.insert(at, ev);
    }
    events
}

/// The clock the randomized tests use: 6-hour epochs.
pub fn clock_for(period: PeriodKind) -> Clock {
    Clock::new(6 * 3600, period).unwrap()
}

/// A dataset directory in ../shared/data; fails with a clear message when it is missing.
pub fn shared(name: &str) -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/data")
        .join(name);
    assert!(
        dir.join("sales.csv").exists(),
        "{} is missing: the tests need ../shared/data beside the checkout",
        dir.display()
    );
    dir
}

/// The default configuration with `period` ("day" or "week").
pub fn resolved(period: &str) -> stockcast::config::Resolved {
    let text = format!("[time]\nperiod = \"{period}\"\n");
    let origin = std::path::Path::new("<test>");
    stockcast::config::Config::parse(&text, origin)
        .unwrap()
        .resolve(origin)
        .unwrap()
}

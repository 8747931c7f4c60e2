//! Reference data reaches exactly the series it concerns: a new lead time for one SKU, a
//! promotion added for one (store, SKU) and a planned price cut for another re-score exactly those
//! series in the epoch they arrive, and the lead time changes the recommendation.

mod common;
#[path = "support/stepping.rs"]
mod stepping;

use std::collections::BTreeMap;
use std::sync::Arc;

use dataflows::model::ItemAttrs;
use dataflows::{Event, FeatureVec, Key, PeriodKind, PlannedPrice, Promotion};
use stockcast::forecast::{baseline, Baseline};
use stockcast::replenish::Planner;

const DAY: i64 = 86_400;
const START: i64 = 19_000 * DAY;

fn item(lead: i64) -> ItemAttrs {
    ItemAttrs {
        lead_time_days: Some(lead),
        pack_size: Some(6_000),
        ..ItemAttrs::default()
    }
}

fn sale(key: Key, ts: i64, units: i64) -> Event {
    Event::Sale {
        key,
        ts,
        qty: units * 1000,
        unit_price: None,
        promo: false,
    }
}

#[test]
fn a_lead_time_a_promotion_and_a_price_cut_change_exactly_their_series_in_the_next_epoch() {
    let cfg = common::resolved("day");
    let clock = cfg.clock;
    let (a, b, c) = (10, 11, 12);
    let keys: Vec<Key> = (1..=3)
        .flat_map(|store| [a, b, c].map(|sku| Key { store, sku }))
        .collect();
    let day0 = PeriodKind::Day.period_of(START);
    let planned = |store, start, end, price| {
        Some(PlannedPrice {
            store,
            sku: c,
            start,
            end,
            price,
        })
    };
    let mut events = vec![
        Event::Item {
            sku: a,
            def: Some(item(3)),
        },
        // SKU c sells at 2.00 in every store.
        Event::PlannedPrice {
            price_id: 1,
            def: planned(None, day0, day0 + 90, 2000),
        },
    ];
    for day in 0..30 {
        for (n, key) in keys.iter().enumerate() {
            events.push(sale(*key, START + day * DAY, 1 + (n as i64 + day) % 4));
        }
    }
    // Day 30, 06:00: one sale of (1, c), then the reference changes, then a later sale.
    let six = START + 30 * DAY + 6 * 3600;
    events.push(sale(Key { store: 1, sku: c }, six, 2));
    events.push(Event::Item {
        sku: a,
        def: Some(item(14)),
    });
    let day31 = PeriodKind::Day.period_of(START + 31 * DAY);
    events.push(Event::Promotion {
        promo_id: 7,
        def: Some(Promotion {
            store: Some(2),
            sku: b,
            start: day31,
            end: day31 + 2,
        }),
    });
    // A cut of SKU c to 1.50 in store 3 on days 31-33.
    events.push(Event::PlannedPrice {
        price_id: 2,
        def: planned(Some(3), day31, day31 + 2, 1500),
    });
    events.push(sale(Key { store: 1, sku: c }, six + 3 * 3600, 1));

    let plan = stepping::plan(&clock, 0, &events, None);
    let mut outputs = Vec::new();
    stepping::run(
        clock,
        &cfg.spec,
        2,
        Arc::new(events),
        Arc::new(plan),
        |out| outputs.push(out),
    )
    .unwrap();

    let at_six = clock.epoch_of(six).unwrap();
    let mut before: BTreeMap<Key, FeatureVec> = BTreeMap::new();
    let mut changed_at_six = None;
    for out in outputs {
        if out.epoch == at_six {
            changed_at_six = Some(out.changed);
            break;
        }
        before.extend(out.changed);
    }
    let changed = changed_at_six.expect("the 06:00 epoch closed");
    let keys_changed: Vec<Key> = changed.iter().map(|(k, _)| *k).collect();
    let mut expected = vec![
        Key { store: 1, sku: a },
        Key { store: 1, sku: c },
        Key { store: 2, sku: a },
        Key { store: 2, sku: b },
        Key { store: 3, sku: a },
        Key { store: 3, sku: c },
    ];
    expected.sort();
    assert_eq!(keys_changed, expected);

    // Every series of SKU a now plans with a 14-day lead time, so it needs more stock.
    let schema = cfg.spec.schema();
    let ma = baseline(Baseline::MovingAverage, &schema, PeriodKind::Day, 28).unwrap();
    let planner = Planner::new(&cfg.replenish, &schema, PeriodKind::Day);
    let advise = |v: &FeatureVec| {
        let f = ma.forecast(&[v]).unwrap().remove(0);
        planner.advise(&schema, v, &f)
    };
    for (key, after) in &changed {
        let (old, new) = (advise(&before[key]), advise(after));
        if key.sku == a {
            assert_eq!((old.lead_time_days, new.lead_time_days), (3.0, 14.0));
            assert_eq!(new.pack_size, 6.0);
            assert!(new.order_up_to > old.order_up_to, "{old:?} {new:?}");
            assert!(new.reorder_point > old.reorder_point);
        } else {
            assert_eq!(new.lead_time_days, 7.0, "the configured default");
        }
    }
    // The promotion shows in the promoted series' features only.
    let promo_days = schema.index("promo_periods_next_28d").unwrap();
    let b2 = Key { store: 2, sku: b };
    let after_b2 = &changed.iter().find(|(k, _)| *k == b2).unwrap().1;
    assert_eq!((before[&b2].0[promo_days], after_b2.0[promo_days]), (0, 3));
    // The cut shows in store 3's series of c only: a 25% discount from tomorrow, for 3 days.
    let c3 = Key { store: 3, sku: c };
    let after_c3 = &changed.iter().find(|(k, _)| *k == c3).unwrap().1;
    let value = |v: &FeatureVec, name: &str| v.0[schema.index(name).unwrap()];
    for (name, old, new) in [
        ("plan_price_rel_h1", 1000, 750),
        ("plan_discount_h1", 0, 250),
        ("plan_cut_h1", 0, 1),
        ("plan_discount_h3", 0, 250),
        ("plan_cut_h4", 0, -1),
        ("plan_price_rel_h4", 1000, 1000),
        ("price_now_rel_regular", 1000, 1000),
        ("plan_periods_next_28d", 28, 28),
    ] {
        assert_eq!(
            (value(&before[&c3], name), value(after_c3, name)),
            (old, new),
            "{name}"
        );
    }
}

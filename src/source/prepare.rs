//! From a dataset's decoded records to the events the dataflow takes: ids, milli-units,
//! reference data first and timed events in event-time order. Replay, the feature table and
//! the training history all start here.

use std::collections::BTreeMap;

use dataflows::Event;

use crate::config::Resolved;
use crate::decode::Record;
use crate::ids::Dictionary;
use crate::records::dead::DeadLetterRecord;
use crate::source::files::{self, Dataset, Origin};

/// Events ready for the dataflow, in arrival order, with where each came from.
pub struct Prepared {
    /// Events in arrival order.
    pub events: Vec<Event>,
    /// Origin of each event.
    pub origins: Vec<Origin>,
    /// Names of stores and SKUs.
    pub dict: Dictionary,
    /// Rows refused while preparing (decode errors, id collisions).
    pub dead_letters: Vec<DeadLetterRecord>,
    /// Records read per kind.
    pub counts: BTreeMap<&'static str, u64>,
}

/// Turns decoded records into dataflow events: ids, periods for promotions, reference data first
/// and timed events in event-time order. With `as_of`, drops timed events after it.
pub fn prepare(cfg: &Resolved, data: Dataset, as_of: Option<i64>) -> Prepared {
    let mut dict = Dictionary::default();
    let mut dead_letters = data.dead_letters.clone();
    let mut counts: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut reference: Vec<(Event, Origin)> = Vec::new();
    let mut timed: Vec<(Event, Origin)> = Vec::new();
    let period = cfg.clock.period_kind();
    let future_limit = chrono::Utc::now()
        .timestamp()
        .saturating_add(cfg.max_future_secs);
    for (record, origin) in &data.records {
        let kind = files::FileKind::of(record).name();
        *counts.entry(kind).or_default() += 1;
        if let Err(e) = crate::decode::check_not_future(record.ts(), future_limit) {
            let file = data.file_name(*origin);
            dead_letters.push(files::refused(
                file,
                origin.line,
                e.reason(),
                e.to_string(),
                record,
            ));
            continue;
        }
        let event = dict.event(record, period);
        match event {
            Ok(e) if e.ts().is_some() => {
                if as_of.is_none_or(|t| e.ts().is_some_and(|ts| ts <= t)) {
                    timed.push((e, *origin));
                }
            }
            Ok(e) => reference.push((e, *origin)),
            Err(collision) => dead_letters.push(files::refused(
                data.file_name(*origin),
                origin.line,
                "id_collision",
                collision.to_string(),
                record,
            )),
        }
    }
    for (record, origin) in derived_reference(&data, period) {
        // The sales registered these names, so no collision can arise here.
        if let Ok(e) = dict.event(&record, period) {
            reference.push((e, origin));
        }
    }
    // Stable: equal times keep file order.
    timed.sort_by_key(|(e, _)| e.ts());
    let (events, origins) = reference.into_iter().chain(timed).unzip();
    Prepared {
        events,
        origins,
        dict,
        dead_letters,
        counts,
    }
}

/// The reference data a dataset implies where it lacks the file: the promotion calendar from
/// the sales rows' promotion flags, the price plan from their prices. `replay` and `load` both
/// add it, so the worker sees what replay sees.
pub fn derived_reference(data: &Dataset, period: dataflows::PeriodKind) -> Vec<(Record, Origin)> {
    // A file of the kind, even one without rows, is the dataset's own.
    let has = |kind: files::FileKind| data.files.iter().any(|f| f.kind == kind);
    let mut out = Vec::new();
    if !has(files::FileKind::Promotions) {
        out.extend(promo_calendar_from_sales(data, period));
    }
    if !has(files::FileKind::Prices) {
        out.extend(price_plan_from_sales(data, period));
    }
    out
}

/// How long the last price a series sold at is assumed to hold, in seconds.
const LAST_PRICE_HOLDS_SECS: i64 = 366 * 86_400;

/// A dataset without a price plan whose sales rows carry prices: each series' mean unit price
/// per period becomes its plan, as runs of periods at one price, each holding until the next
/// run starts (the last for a year). So the prices a retailer set ahead of time act as the price
/// plan, the assumption a global model given the prices of the forecast weeks makes too; a gap
/// without sales does not show in the plan. Ids are `sales:<store>:<sku>:<first period>`.
fn price_plan_from_sales(data: &Dataset, period: dataflows::PeriodKind) -> Vec<(Record, Origin)> {
    type Means = BTreeMap<dataflows::Period, (i128, i128, Origin)>;
    let mut by_series: BTreeMap<(&str, &str), Means> = BTreeMap::new();
    for (record, origin) in &data.records {
        let Record::Sale(sale) = record else { continue };
        let Some(price) = sale.unit_price.filter(|p| *p > 0) else {
            continue;
        };
        let periods = by_series
            .entry((sale.store_id.as_str(), sale.sku_id.as_str()))
            .or_default();
        let e = periods
            .entry(period.period_of(sale.ts))
            .or_insert((0, 0, *origin));
        e.0 += i128::from(price);
        e.1 += 1;
    }
    let mut out = Vec::new();
    for ((store, sku), periods) in by_series {
        let mut runs = PriceRuns::default();
        let mut origins = Vec::new();
        for (p, (sum, n, origin)) in periods {
            if runs.add_period(p, sum, n) {
                origins.push(origin);
            }
        }
        for (entry, origin) in runs.records(store, sku, period).into_iter().zip(origins) {
            out.push((entry, origin));
        }
    }
    out
}

/// One series' runs of periods at one mean sale price (see [`derived_reference`]), from its
/// periods in increasing order.
#[derive(Debug, Default)]
pub struct PriceRuns {
    /// (first period, mean price) of each run.
    runs: Vec<(dataflows::Period, i64)>,
}

impl PriceRuns {
    /// Adds a period whose sales summed `sum` over `n` priced rows; true if it starts a run.
    pub fn add_period(&mut self, p: dataflows::Period, sum: i128, n: i128) -> bool {
        let mean = dataflows::features::div_round(sum, n);
        let starts = self.runs.last().is_none_or(|r| r.1 != mean);
        if starts {
            self.runs.push((p, mean));
        }
        starts
    }

    /// The runs as price plan records, each holding until the next starts and the last for a
    /// year.
    pub fn records(&self, store: &str, sku: &str, period: dataflows::PeriodKind) -> Vec<Record> {
        let runs = &self.runs;
        runs.iter()
            .enumerate()
            .map(|(i, (start, price))| {
                let end = match runs.get(i + 1) {
                    Some(next) => period.period_start(next.0) - 1,
                    None => period.period_start(*start + 1) - 1 + LAST_PRICE_HOLDS_SECS,
                };
                Record::PlannedPrice(crate::decode::PlannedPriceRec {
                    price_id: format!("sales:{store}:{sku}:{start}"),
                    store_id: Some(store.to_string()),
                    sku_id: sku.to_string(),
                    start: period.period_start(*start),
                    end,
                    price: *price,
                })
            })
            .collect()
    }
}

/// The one-period calendar promotion a promotion-flagged sale in period `p` implies.
pub fn promo_of_flag(
    store: &str,
    sku: &str,
    p: dataflows::Period,
    period: dataflows::PeriodKind,
) -> Record {
    Record::Promotion(crate::decode::PromotionRec {
        promo_id: format!("sales:{store}:{sku}:{p}"),
        store_id: Some(store.to_string()),
        sku_id: sku.to_string(),
        start: period.period_start(p),
        end: period.period_start(p + 1) - 1,
        discount_pct: None,
    })
}

/// A dataset without a promotion calendar whose sales rows carry a `promo` flag: each flagged
/// (store, SKU, period) becomes a one-period calendar promotion, so the flag acts as the promotion
/// plan a retailer knows in advance (the `promo_next_*` features read it ahead of time). Ids are
/// `sales:<store>:<sku>:<period>`; duplicates within a period collapse to one.
fn promo_calendar_from_sales(
    data: &Dataset,
    period: dataflows::PeriodKind,
) -> Vec<(Record, Origin)> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for (record, origin) in &data.records {
        let Record::Sale(sale) = record else { continue };
        if !sale.promo {
            continue;
        }
        let p = period.period_of(sale.ts);
        if !seen.insert((sale.store_id.as_str(), sale.sku_id.as_str(), p)) {
            continue;
        }
        out.push((
            promo_of_flag(&sale.store_id, &sale.sku_id, p, period),
            *origin,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::PlannedPriceRec;

    fn plan_of(sales: &str, extra: Option<(&str, &str)>) -> Vec<PlannedPriceRec> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("sales.csv"), sales).unwrap();
        if let Some((name, text)) = extra {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        let data = files::load(dir.path()).unwrap();
        derived_reference(&data, dataflows::PeriodKind::Week)
            .into_iter()
            .filter_map(|(r, _)| match r {
                Record::PlannedPrice(p) => Some(p),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn the_sales_prices_become_runs_that_hold_until_the_next_one() {
        // Weeks 1-2 at 2.00 (one week's two sales average to it), a gap, week 4 at 1.50, week 5
        // at 2.00 again; another series with no price.
        let sales = "date,store_id,sku_id,qty,price\n\
            2024-01-01,S,A,1,2.00\n\
            2024-01-08,S,A,1,1.90\n\
            2024-01-09,S,A,1,2.10\n\
            2024-01-22,S,A,1,1.50\n\
            2024-01-29,S,A,1,2.00\n\
            2024-01-29,S,B,1,\n";
        let plan = plan_of(sales, None);
        let week = dataflows::PeriodKind::Week;
        let day = 86_400;
        let monday = |d: &str| crate::decode::parse_time("t", d).unwrap();
        let got: Vec<(i64, i64, i64)> = plan.iter().map(|p| (p.start, p.end, p.price)).collect();
        let w1 = week.period_start(week.period_of(monday("2024-01-01")));
        let w4 = week.period_start(week.period_of(monday("2024-01-22")));
        let w5 = week.period_start(week.period_of(monday("2024-01-29")));
        assert_eq!(
            got,
            vec![
                (w1, w4 - 1, 2000),
                (w4, w5 - 1, 1500),
                (w5, w5 + 7 * day - 1 + LAST_PRICE_HOLDS_SECS, 2000),
            ]
        );
        assert!(plan.iter().all(|p| p.store_id.as_deref() == Some("S")));
        // A dataset with a prices file, even an empty one, keeps to it.
        let empty = ("prices.csv", "price_id,store_id,sku_id,start,end,price\n");
        assert!(plan_of(sales, Some(empty)).is_empty());
    }
}

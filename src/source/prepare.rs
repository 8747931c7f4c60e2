//! From a dataset's decoded records to the events the dataflow takes: ids, milli-units,
//! reference data first and timed events in event-time order. Replay, the feature table and
//! the training history all start here.

use std::collections::BTreeMap;

use dataflows::Event;

use crate::config::Resolved;
use crate::decode::Record;
use crate::ids::Dictionary;
use crate::source::files::{self, Dataset, DeadLetter, Origin};

/// Events ready for the dataflow, in arrival order, with where each came from.
pub struct Prepared {
    /// Events in arrival order.
    pub events: Vec<Event>,
    /// Origin of each event.
    pub origins: Vec<Origin>,
    /// Names of stores and SKUs.
    pub dict: Dictionary,
    /// Rows refused while preparing (decode errors, id collisions).
    pub dead_letters: Vec<DeadLetter>,
    /// Records read per kind.
    pub counts: BTreeMap<&'static str, u64>,
}

fn record_text(record: &Record) -> String {
    format!("{record:?}")
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
            dead_letters.push(DeadLetter {
                file: data.file_name(*origin).to_string(),
                line: origin.line,
                reason: e.reason().into(),
                detail: e.to_string(),
                record: record_text(record),
            });
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
            Err(collision) => dead_letters.push(DeadLetter {
                file: data.file_name(*origin).to_string(),
                line: origin.line,
                reason: "id_collision".into(),
                detail: collision.to_string(),
                record: record_text(record),
            }),
        }
    }
    if !counts.contains_key("promotions") {
        reference.extend(promo_calendar_from_sales(&data, &mut dict, period));
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

/// A dataset without a promotion calendar whose sales rows carry a `promo` flag: each flagged
/// (store, SKU, period) becomes a one-period calendar promotion, so the flag acts as the promotion
/// plan a retailer knows in advance (the `promo_next_*` features read it ahead of time). Ids are
/// `sales:<store>:<sku>:<period>`; duplicates within a period collapse to one.
fn promo_calendar_from_sales(
    data: &Dataset,
    dict: &mut Dictionary,
    period: dataflows::PeriodKind,
) -> Vec<(Event, Origin)> {
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
        let promo = Record::Promotion(crate::decode::PromotionRec {
            promo_id: format!("sales:{}:{}:{p}", sale.store_id, sale.sku_id),
            store_id: Some(sale.store_id.clone()),
            sku_id: sale.sku_id.clone(),
            start: period.period_start(p),
            end: period.period_start(p + 1) - 1,
            discount_pct: None,
        });
        // The sale itself registered these names, so no collision can arise here.
        if let Ok(e) = dict.event(&promo, period) {
            out.push((e, *origin));
        }
    }
    out
}

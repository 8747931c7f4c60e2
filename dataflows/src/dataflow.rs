//! The feature dataflow: from the input stage's collections to per-series feature vectors.
//!
//! ```text
//! series  (key, Base|Period|Clock): Agg ─────────────────────────────┐
//! promos  (sku, promotion)  ── in one store ── (key, Promo) ─────────┤ concat -> arrange by key
//!                           └─ all stores ── join keys by sku ───────┘           │
//! keys    (sku, store) ── distinct ─┘                                            v
//!                                          features_total (per changed series) -> (key, FeatureVec)
//! ```
//!
//! The output is a collection; at each epoch its updates are exactly a retraction of the old and
//! an insertion of the new vector for each series whose features changed, and nothing else.

use differential_dataflow::difference::{IsZero, Semigroup};
use differential_dataflow::operators::arrange::Arranged;
use differential_dataflow::trace::cursor::cursor_list;
use differential_dataflow::trace::{BatchCursor, Cursor, Navigable, TraceReader};
use differential_dataflow::{AsCollection, VecCollection};
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::{CapabilitySet, Operator};
use timely::dataflow::Scope;
use timely::progress::{Antichain, Timestamp};

use crate::features::{compute, FeatureSpec, SeriesState};
use crate::input::Inputs;
use crate::model::{Agg, FeatureVec, Key, Rec};
use crate::time::{Epoch, Period};

/// Builds the feature dataflow in `scope` over `inputs`; returns the feature collection.
pub fn features<'s>(
    scope: Scope<'s, Epoch>,
    inputs: &mut Inputs,
    spec: &FeatureSpec,
) -> VecCollection<'s, Epoch, (Key, FeatureVec)> {
    // Per-series records from the input stage, with their totals as differences.
    let series = inputs.series.to_collection(scope);
    // Calendar promotions keyed by SKU.
    let promos = inputs.promos.to_collection(scope);
    // Every (sku, store) some worker has seen, once.
    let stores_by_sku = inputs.keys.to_collection(scope).distinct();

    // Promotions of a single store apply to that store's series directly.
    let store_promos = promos.clone().flat_map(|(sku, p)| {
        p.store.map(|store| {
            (
                Key { store, sku },
                Rec::Promo {
                    start: p.start,
                    end: p.end,
                },
            )
        })
    });
    // Chain-wide promotions apply to every series of the SKU, including ones seen later.
    let chain_promos = promos
        .filter(|(_, p)| p.store.is_none())
        .map(|(sku, p)| (sku, (p.start, p.end)))
        .join_map(stores_by_sku, |sku, &(start, end), store| {
            (
                Key {
                    store: *store,
                    sku: *sku,
                },
                Rec::Promo { start, end },
            )
        });
    // Promotion records in the series' difference type.
    let promo_records = store_promos
        .concat(chain_promos)
        .explode(|rec| Some((rec, Agg::present(1))));

    // All of a series' records, arranged once by series.
    let records = series
        .concat(promo_records)
        .arrange_by_key_named("Arrange: SeriesRecords");
    features_total(records, spec)
}

/// Evaluates a series' features from its accumulated records (sorted by record), or `None`
/// when no worker has registered the series.
fn evaluate(
    spec: &FeatureSpec,
    scratch: &mut SeriesState,
    records: &[(Rec, Agg)],
) -> Option<FeatureVec> {
    // The latest clock any worker set; a series has features once some worker registered it.
    let now = records
        .iter()
        .filter_map(|(rec, agg)| match rec {
            Rec::Clock(_) if agg.n > 0 => Some((agg.n - 1) as Period),
            _ => None,
        })
        .max()?;
    scratch.clear();
    for (rec, agg) in records {
        match *rec {
            Rec::Base => scratch.base.plus_equals(&agg.stock_part()),
            Rec::Period(p) => scratch.add(now, p, agg),
            Rec::Promo { start, end } if agg.n > 0 => scratch.promos.push((start, end)),
            Rec::Promo { .. } | Rec::Clock(_) => {}
        }
    }
    Some(compute(spec, now, scratch))
}

/// Adds `diff` to the record `rec` in a list sorted by record, dropping it when it cancels out.
fn accumulate(records: &mut Vec<(Rec, Agg)>, rec: Rec, diff: &Agg) {
    match records.binary_search_by(|(r, _)| r.cmp(&rec)) {
        Ok(i) => {
            records[i].1.plus_equals(diff);
            if records[i].1.is_zero() {
                records.remove(i);
            }
        }
        Err(i) => {
            if !diff.is_zero() {
                records.insert(i, (rec, *diff));
            }
        }
    }
}

/// The features of every series whose records changed, as a collection of `(key, features)`.
///
/// This is `reduce` specialised to totally ordered time (epochs), in the manner of
/// `count_total`: for each series in a new batch it accumulates the series' records from the
/// trace once, then applies the batch's updates time by time, evaluating the features before and
/// after and emitting a retraction and an insertion where they differ. Differential's general
/// `reduce` instead replays each touched key's history over a partially ordered time and keeps
/// an output arrangement; with epochs totally ordered neither is needed, and profiles showed the
/// replay dominating the epoch cost.
pub fn features_total<'s, Tr>(
    records: Arranged<'s, Tr>,
    spec: &FeatureSpec,
) -> VecCollection<'s, Epoch, (Key, FeatureVec)>
where
    Tr: TraceReader<Batch: Navigable, Time = Epoch> + Clone + 'static,
    for<'a> BatchCursor<Tr>: Cursor<Key<'a> = &'a Key, ValOwn = Rec, Time = Epoch, Diff = Agg>,
{
    let spec = spec.clone();
    let mut trace = records.trace.clone();
    records
        .stream
        .unary_frontier(Pipeline, "SeriesFeatures", move |_, _| {
            // Times before `lower` are in the trace; the batches received cover [lower, upper).
            let mut lower = Antichain::from_elem(Epoch::minimum());
            let mut upper = Antichain::from_elem(Epoch::minimum());
            let mut scratch = SeriesState::new(&spec);
            let mut accumulated: Vec<(Rec, Agg)> = Vec::new();
            let mut updates: Vec<(Epoch, Rec, Agg)> = Vec::new();
            move |(input, _frontier), output| {
                let mut batches = Vec::new();
                lower.clone_from(&upper);
                let mut caps = CapabilitySet::new();
                input.for_each(|cap, data| {
                    for cap in cap.retain_stamp(0).iter() {
                        caps.insert(cap.clone());
                    }
                    for batch in data.drain(..) {
                        upper.clone_from(batch.upper());
                        batches.push(batch);
                    }
                });
                if !caps.is_empty() {
                    let mut session = output.session(&caps);
                    let (mut batch_cursor, batch_storage) =
                        cursor_list(batches.into_iter().filter_map(|b| b.inner).collect());
                    let (mut trace_cursor, trace_storage) =
                        cursor_list(trace.batches_through(lower.borrow()).expect(
                            "invariant: the trace is only compacted up to this operator's lower bound",
                        ));
                    while let Some(key) = batch_cursor.get_key(&batch_storage) {
                        accumulated.clear();
                        trace_cursor.seek_key(&trace_storage, key);
                        if trace_cursor.get_key(&trace_storage) == Some(key) {
                            while let Some(val) = trace_cursor.get_val(&trace_storage) {
                                let mut sum = Agg::default();
                                trace_cursor.map_times(&trace_storage, |_, d| {
                                    sum.plus_equals(&BatchCursor::<Tr>::owned_diff(d))
                                });
                                if !sum.is_zero() {
                                    accumulated.push((BatchCursor::<Tr>::owned_val(val), sum));
                                }
                                trace_cursor.step_val(&trace_storage);
                            }
                        }
                        updates.clear();
                        while let Some(val) = batch_cursor.get_val(&batch_storage) {
                            let rec = BatchCursor::<Tr>::owned_val(val);
                            batch_cursor.map_times(&batch_storage, |t, d| {
                                updates.push((
                                    BatchCursor::<Tr>::owned_time(t),
                                    rec,
                                    BatchCursor::<Tr>::owned_diff(d),
                                ))
                            });
                            batch_cursor.step_val(&batch_storage);
                        }
                        updates.sort_by_key(|u| u.0);
                        let mut old = evaluate(&spec, &mut scratch, &accumulated);
                        let mut i = 0;
                        while i < updates.len() {
                            let time = updates[i].0;
                            while i < updates.len() && updates[i].0 == time {
                                accumulate(&mut accumulated, updates[i].1, &updates[i].2);
                                i += 1;
                            }
                            let new = evaluate(&spec, &mut scratch, &accumulated);
                            if new != old {
                                if let Some(o) = old.take() {
                                    session.give(((*key, o), time, -1));
                                }
                                if let Some(n) = &new {
                                    session.give(((*key, n.clone()), time, 1));
                                }
                                old = new;
                            }
                        }
                        batch_cursor.step_key(&batch_storage);
                    }
                }
                trace.advance_upper(&mut upper);
                trace.set_logical_compaction(upper.borrow());
                trace.set_physical_compaction(upper.borrow());
            }
        })
        .as_collection()
}

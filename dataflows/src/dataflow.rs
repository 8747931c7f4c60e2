//! The feature dataflow: from the input stage's collections to per-series feature vectors.
//!
//! ```text
//! series  (key, Base|Period|Tick) : Agg ─────────────────────────────┐
//! promos  (sku, promotion)  ── in one store ── (key, Promo) ─────────┤ concat -> reduce by key
//!                           └─ all stores ── join keys by sku ───────┘           │
//! keys    (sku, store) ── distinct ─┘                                            v
//!                                                              (key, FeatureVec) at every epoch
//! ```
//!
//! The output is a collection; at each epoch its updates are exactly a retraction of the old and
//! an insertion of the new vector for each series whose features changed, and nothing else.

use differential_dataflow::VecCollection;
use timely::dataflow::Scope;

use crate::features::{compute, FeatureSpec, SeriesState};
use crate::input::Inputs;
use crate::model::{Agg, FeatureVec, Key, Rec};
use crate::time::Epoch;

/// Builds the feature dataflow in `scope` over `inputs`; returns the feature collection.
pub fn features<'s>(
    scope: Scope<'s, Epoch>,
    inputs: &mut Inputs,
    spec: &FeatureSpec,
) -> VecCollection<'s, Epoch, (Key, FeatureVec)> {
    // Per-series records from the input stage, with their totals as differences.
    let series = inputs.series.to_collection(scope.clone());
    // Calendar promotions keyed by SKU.
    let promos = inputs.promos.to_collection(scope.clone());
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

    let spec = spec.clone();
    let mut scratch = SeriesState::new(&spec);
    series
        .concat(promo_records)
        .reduce_named("SeriesFeatures", move |_key, input, output| {
            let now = input
                .iter()
                .filter_map(|(rec, agg)| match rec {
                    Rec::Tick(p) if agg.n > 0 => Some(*p),
                    _ => None,
                })
                .max();
            // A series only has features once its worker ticks it (its first event).
            let Some(now) = now else { return };
            scratch.by_age.iter_mut().for_each(|a| *a = Agg::default());
            scratch.base = Agg::default();
            scratch.promos.clear();
            for (rec, agg) in input {
                match **rec {
                    Rec::Base => {
                        use differential_dataflow::difference::Semigroup;
                        scratch.base.plus_equals(&agg.stock_part());
                    }
                    Rec::Period(p) => scratch.add(now, p, agg),
                    Rec::Promo { start, end } if agg.n > 0 => scratch.promos.push((start, end)),
                    Rec::Promo { .. } | Rec::Tick(_) => {}
                }
            }
            output.push((compute(&spec, now, &scratch), 1));
        })
}

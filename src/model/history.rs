//! Point-in-time feature snapshots from the dataflow: the training set, the backtest's inputs and
//! its actuals all come from here.
//!
//! The history of a dataset is replayed through the same dataflow the worker runs
//! ([`pipeline::run`]). At the end of every period the latest feature vector of every series seen
//! so far is copied into a snapshot. A snapshot of period `t` holds exactly what the worker knew
//! when period `t` closed: features are point-in-time by construction of the dataflow, so no
//! future event reaches a row. The only forward-looking inputs are the promotion calendar
//! (`promo_next_*`), which is reference data a retailer plans ahead.
//!
//! Targets are read from later snapshots: the realised demand of period `t + h` is that
//! snapshot's `sales_lag_0`. A period whose closing stock position was zero or below is a
//! stock-out: its sales are censored demand ([`History::censored`]).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use dataflows::{Event, FeatureVec, Key, Period, PeriodKind, Schema};

use crate::config::Resolved;
use crate::pipeline;
use crate::source::files;
use crate::source::prepare::prepare;

/// Why a training history could not be built.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// The dataset could not be read.
    #[error(transparent)]
    Load(#[from] crate::source::files::LoadError),
    /// The dataflow failed.
    #[error(transparent)]
    Run(#[from] crate::pipeline::RunError),
}

/// The feature table of every series at the end of every period.
pub struct History {
    /// Feature schema of the snapshots.
    pub schema: Schema,
    /// Period length.
    pub period: PeriodKind,
    /// Series in order of first appearance: index `i` is `keys[i]`.
    pub keys: Vec<Key>,
    /// Store and SKU names per series.
    pub names: Vec<(String, String)>,
    /// Snapshots in period order, one per period from the first to the last with data.
    pub snapshots: Vec<Snapshot>,
    /// Position of `sales_lag_0` in the schema.
    demand: usize,
    /// Position of `on_hand`, if the schema has it.
    on_hand: Option<usize>,
}

/// Every known series' features at the end of one period.
pub struct Snapshot {
    /// The period.
    pub period: Period,
    /// Series `0..n` had appeared by the end of the period.
    pub n: usize,
    /// `n` rows of the schema's features in natural units; NaN where a feature is missing.
    pub values: Vec<f32>,
}

impl Snapshot {
    /// The feature row of series `i` (which must be `< n`).
    pub fn row(&self, i: usize, width: usize) -> &[f32] {
        &self.values[i * width..(i + 1) * width]
    }
}

/// A feature vector in natural units, NaN for missing.
pub fn natural(schema: &Schema, vec: &FeatureVec, out: &mut Vec<f32>) {
    out.extend(
        (0..schema.features.len()).map(|i| schema.value(vec, i).map_or(f32::NAN, |v| v as f32)),
    );
}

impl History {
    /// Replays `data_dir` with `cfg` and snapshots every period end.
    pub fn load(cfg: &Resolved, data_dir: &Path, workers: usize) -> Result<Self, HistoryError> {
        Self::load_until(cfg, data_dir, None, workers)
    }

    /// [`History::load`] from the timed events with `ts <= as_of` only (reference data, the
    /// promotion calendar included, is kept whole).
    pub fn load_until(
        cfg: &Resolved,
        data_dir: &Path,
        as_of: Option<i64>,
        workers: usize,
    ) -> Result<Self, HistoryError> {
        Self::from_dataset(cfg, files::load(data_dir)?, as_of, workers)
    }

    /// [`History::load_until`] of a dataset already read.
    pub fn from_dataset(
        cfg: &Resolved,
        data: files::Dataset,
        as_of: Option<i64>,
        workers: usize,
    ) -> Result<Self, HistoryError> {
        let mut prepared = prepare(cfg, data, as_of);
        let events = std::mem::take(&mut prepared.events);
        let mut history = Self::from_events(cfg, events, workers)?;
        history.names = history
            .keys
            .iter()
            .map(|k| prepared.dict.names(k))
            .collect();
        Ok(history)
    }

    /// Replays prepared `events` (arrival order); names are left as ids.
    pub fn from_events(
        cfg: &Resolved,
        events: Vec<Event>,
        workers: usize,
    ) -> Result<Self, HistoryError> {
        let schema = cfg.spec.schema();
        let width = schema.features.len();
        let demand = schema
            .index(&format!("sales_lag_0{}", cfg.clock.period_kind().suffix()))
            .expect("every schema has the current period's demand");
        let plan = pipeline::plan(&cfg.clock, cfg.allowed_lateness_secs, &events, None);
        // Replaying a long history takes a while: a bar on a terminal.
        let bar = crate::display::progress_bar(
            plan.steps.len() as u64,
            "{elapsed_precise} [{bar:40}] {pos}/{len} epochs replayed for the training history",
            std::io::IsTerminal::is_terminal(&std::io::stderr()),
        );
        let mut table: HashMap<Key, FeatureVec> = HashMap::new();
        let mut index: HashMap<Key, usize> = HashMap::new();
        let mut keys: Vec<Key> = Vec::new();
        let mut snapshots: Vec<Snapshot> = Vec::new();
        let mut current: Option<Period> = None;
        let take = |period: Period,
                    table: &HashMap<Key, FeatureVec>,
                    index: &mut HashMap<Key, usize>,
                    keys: &mut Vec<Key>,
                    snapshots: &mut Vec<Snapshot>| {
            // New series in key order, so indices do not depend on hash order.
            let mut fresh: Vec<Key> = table
                .keys()
                .filter(|k| !index.contains_key(k))
                .copied()
                .collect();
            fresh.sort_unstable();
            for k in fresh {
                index.insert(k, keys.len());
                keys.push(k);
            }
            let mut values = Vec::with_capacity(keys.len() * width);
            for k in keys.iter() {
                natural(&schema, &table[k], &mut values);
            }
            snapshots.push(Snapshot {
                period,
                n: keys.len(),
                values,
            });
        };
        pipeline::run(
            cfg.clock,
            &cfg.spec,
            workers,
            Arc::new(events),
            Arc::new(plan),
            |out| {
                bar.inc(1);
                let p = cfg.clock.period_of_epoch(out.epoch);
                if let Some(c) = current.filter(|c| *c < p) {
                    take(c, &table, &mut index, &mut keys, &mut snapshots);
                }
                current = Some(p);
                table.extend(out.changed);
            },
        )?;
        bar.finish_and_clear();
        if let Some(c) = current {
            take(c, &table, &mut index, &mut keys, &mut snapshots);
        }
        let names = keys
            .iter()
            .map(|k| (format!("#{:x}", k.store), format!("#{:x}", k.sku)))
            .collect();
        Ok(History {
            on_hand: schema.index("on_hand"),
            schema,
            period: cfg.clock.period_kind(),
            keys,
            names,
            snapshots,
            demand,
        })
    }

    /// Features per row.
    pub fn width(&self) -> usize {
        self.schema.features.len()
    }

    /// Position of the snapshot of period `p`.
    pub fn position(&self, p: Period) -> Option<usize> {
        let first = self.snapshots.first()?.period;
        let i = usize::try_from(p - first).ok()?;
        (self.snapshots.get(i)?.period == p).then_some(i)
    }

    /// Realised demand of series `i` in the period of snapshot `t` (0 before it appeared).
    pub fn demand(&self, t: usize, i: usize) -> f32 {
        let s = &self.snapshots[t];
        if i >= s.n {
            return 0.0;
        }
        let v = s.values[i * self.width() + self.demand];
        if v.is_nan() {
            0.0
        } else {
            v
        }
    }

    /// Whether series `i` ended the period of snapshot `t` with nothing on hand: its sales in that
    /// period are a lower bound of demand.
    pub fn censored(&self, t: usize, i: usize) -> bool {
        let s = &self.snapshots[t];
        match self.on_hand {
            Some(j) if i < s.n => s.values[i * self.width() + j] <= 0.0,
            _ => false,
        }
    }

    /// Whether snapshots are one period apart (no period was skipped).
    pub fn is_contiguous(&self) -> bool {
        self.snapshots
            .windows(2)
            .all(|w| w[1].period == w[0].period + 1)
    }
}

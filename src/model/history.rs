//! Point-in-time feature snapshots from the dataflow: the training set, the backtest's inputs and
//! its actuals all come from here.
//!
//! The history of a dataset is replayed through the same dataflow, on the same driver, as the
//! worker runs ([`crate::pipeline::stream`]). At the end of every period the latest feature vector of every series seen
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

use dataflows::{Epoch, FeatureVec, Key, Period, PeriodKind, Schema};

use crate::config::{CatchUp, Resolved};
use crate::ids::Dictionary;
use crate::pipeline::stream::{
    self, Changed, Closed, Commit, Delivered, Handler, Input, StreamOptions, Undelivered,
};
use crate::source::events::Events;
use crate::source::files;
use crate::source::prepare::prepare;

/// Why a training history could not be built.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// The dataset could not be read.
    #[error(transparent)]
    Load(#[from] crate::source::files::LoadError),
    /// The dataset could not be spilled to its time buckets.
    #[error(transparent)]
    Spill(#[from] crate::source::spill::SpillError),
    /// The streaming driver failed.
    #[error(transparent)]
    Stream(#[from] crate::pipeline::stream::StreamError),
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
    pub names: Vec<crate::ids::SeriesNames>,
    /// Snapshots in period order, one per period from the first to the last with data.
    pub snapshots: Vec<Snapshot>,
    /// The share of (series, period) feature rows kept (1: all).
    pub kept: f64,
}

/// Every known series' demand at the end of one period, and the features of those kept.
pub struct Snapshot {
    /// The period.
    pub period: Period,
    /// Series `0..n` had appeared by the end of the period.
    pub n: usize,
    /// The series whose feature rows were kept, in increasing order; `None`: all `0..n`.
    kept: Option<Vec<u32>>,
    /// The kept rows of the schema's features in natural units; NaN where a feature is missing.
    values: Vec<f32>,
    /// Realised demand (`sales_lag_0`) of series `0..n`; 0 where missing.
    demand: Vec<f32>,
    /// Whether series `0..n` ended the period with nothing on hand.
    empty: Vec<bool>,
}

impl Snapshot {
    /// The feature row of series `i`, if it was kept.
    pub fn row(&self, i: usize, width: usize) -> Option<&[f32]> {
        let at = match &self.kept {
            None => (i < self.n).then_some(i)?,
            Some(kept) => kept.binary_search(&(i as u32)).ok()?,
        };
        self.values.get(at * width..(at + 1) * width)
    }

    /// Whether every series' row was kept.
    pub fn is_whole(&self) -> bool {
        self.kept.is_none()
    }

    /// The kept rows: (series, row).
    pub fn rows(&self, width: usize) -> impl Iterator<Item = (usize, &[f32])> + '_ {
        let series: Box<dyn Iterator<Item = usize>> = match &self.kept {
            None => Box::new(0..self.n),
            Some(kept) => Box::new(kept.iter().map(|i| *i as usize)),
        };
        series.zip(self.values.chunks_exact(width.max(1)))
    }
}

/// A feature vector in natural units, NaN for missing: [`Schema::value`] of every feature, as
/// `f32`. Done once per scored series, so it walks the definitions and the values side by side,
/// without a branch or a bounds check per feature.
pub fn natural(schema: &Schema, vec: &FeatureVec, out: &mut Vec<f32>) {
    let values = &vec.0;
    if values.len() < schema.features.len() {
        // A vector shorter than its schema (not one the dataflow makes): the rest is missing.
        out.extend(
            (0..schema.features.len()).map(|i| schema.value(vec, i).map_or(f32::NAN, |v| v as f32)),
        );
        return;
    }
    out.extend(schema.features.iter().zip(values.iter()).map(|(f, &v)| {
        let x = (v as f64 / f.scale as f64) as f32;
        if v == dataflows::model::MISSING {
            f32::NAN
        } else {
            x
        }
    }));
}

/// Which (series, period) feature rows a history keeps: all, or a share chosen by a hash of the
/// series and the period (the same rows for the same data, whatever the worker count). Demand
/// and stock-outs are kept for every series and period: they are the targets.
#[derive(Clone, Copy, Debug)]
pub struct Sampling {
    /// The share kept, in (0, 1].
    pub fraction: f64,
    /// Seed of the choice.
    pub seed: u64,
}

impl Sampling {
    /// Every row.
    pub const ALL: Sampling = Sampling {
        fraction: 1.0,
        seed: 0,
    };

    /// At most about `max_rows` rows of `series` series over `periods` periods.
    pub fn at_most(max_rows: usize, series: usize, periods: usize, seed: u64) -> Self {
        let total = (series as f64) * (periods as f64);
        Sampling {
            fraction: if total <= max_rows as f64 {
                1.0
            } else {
                (max_rows as f64 / total).max(f64::MIN_POSITIVE)
            },
            seed,
        }
    }

    fn keeps(&self, key: &Key, period: Period) -> bool {
        if self.fraction >= 1.0 {
            return true;
        }
        let mut bytes = [0u8; 28];
        bytes[..8].copy_from_slice(&self.seed.to_le_bytes());
        bytes[8..16].copy_from_slice(&key.store.to_le_bytes());
        bytes[16..24].copy_from_slice(&key.sku.to_le_bytes());
        bytes[24..].copy_from_slice(&period.to_le_bytes());
        let h = dataflows::features::fnv1a64(&bytes);
        // The top 53 bits as a uniform number in [0, 1).
        ((h >> 11) as f64) / ((1u64 << 53) as f64) < self.fraction
    }
}

/// Replays `input` on the streaming driver, every epoch's changed series into a [`Builder`];
/// shows a bar of `periods` on a terminal (of the epochs when 0). The series are named by
/// their ids: the caller names them.
fn replay(
    cfg: &Resolved,
    schema: &Schema,
    sampling: Sampling,
    input: Arc<dyn Input>,
    periods: u64,
    workers: usize,
) -> Result<History, HistoryError> {
    let mut cfg = cfg.clone();
    cfg.output.catch_up = CatchUp::EveryEpoch;
    // Replaying a long history takes a while: a bar on a terminal.
    let (len, unit) = if periods > 0 {
        (periods, "periods")
    } else {
        (0, "epochs")
    };
    let bar = crate::display::progress_bar(
        len,
        &format!("{{elapsed_precise}} [{{bar:40}}] {{pos}}/{{len}} {unit} replayed for the training history"),
        std::io::IsTerminal::is_terminal(&std::io::stderr()),
    );
    let mut handler = Snapshots {
        builder: Builder::new(&cfg, schema, sampling),
        bar: bar.clone(),
        by_period: periods > 0,
        refused: 0,
    };
    let opts = StreamOptions::to_the_end(workers);
    stream::run(&cfg, &opts, input, None, &mut handler)?;
    if handler.refused > 0 {
        tracing::warn!(
            events = handler.refused,
            "events the dataflow refused are left out of the training history; `stockcast replay` lists them with file, line and reason"
        );
    }
    bar.finish_and_clear();
    Ok(handler.builder.finish(&cfg))
}

/// The driver's handler of a history replay: each closed epoch's changed series to the
/// builder, in epoch order.
struct Snapshots<'a> {
    builder: Builder<'a>,
    bar: indicatif::ProgressBar,
    /// Whether the bar counts periods (snapshots) rather than epochs.
    by_period: bool,
    /// Events the driver refused (dead letters).
    refused: u64,
}

impl Handler for Snapshots<'_> {
    fn changed(&mut self, changed: Changed, _: &Dictionary) -> Delivered {
        for (epoch, series) in changed.changed {
            let before = self.builder.snapshots.len();
            self.builder.epoch(epoch, series);
            self.bar.inc(if self.by_period {
                (self.builder.snapshots.len() - before) as u64
            } else {
                1
            });
        }
        Delivered {
            through: changed.frontier,
            superseded: changed.superseded,
            ..Delivered::default()
        }
    }

    fn closed(&mut self, closed: Closed) -> Result<Option<Commit>, Undelivered> {
        self.refused += closed.dead.len() as u64;
        Ok(None)
    }

    fn commit(&mut self, _: Commit) -> bool {
        true
    }
}

/// Turns the dataflow's closed epochs into snapshots (see [`History`]).
struct Builder<'a> {
    schema: &'a Schema,
    clock: dataflows::Clock,
    sampling: Sampling,
    demand: usize,
    on_hand: Option<usize>,
    table: HashMap<Key, FeatureVec>,
    index: HashMap<Key, usize>,
    keys: Vec<Key>,
    snapshots: Vec<Snapshot>,
    current: Option<Period>,
}

impl<'a> Builder<'a> {
    fn new(cfg: &Resolved, schema: &'a Schema, sampling: Sampling) -> Self {
        let demand = schema
            .index(&format!("sales_lag_0{}", cfg.clock.period_kind().suffix()))
            .expect("every schema has the current period's demand");
        Builder {
            schema,
            clock: cfg.clock,
            sampling,
            demand,
            on_hand: schema.index("on_hand"),
            table: HashMap::new(),
            index: HashMap::new(),
            keys: Vec::new(),
            snapshots: Vec::new(),
            current: None,
        }
    }

    /// Takes the series changed in `epoch`, after those of every earlier epoch.
    fn epoch(&mut self, epoch: Epoch, changed: Vec<(Key, FeatureVec)>) {
        let p = self.clock.period_of_epoch(epoch);
        if let Some(c) = self.current.filter(|c| *c < p) {
            self.take(c);
        }
        self.current = Some(p);
        self.table.extend(changed);
    }

    /// Snapshots period `period` from the latest vectors.
    fn take(&mut self, period: Period) {
        // New series in key order, so indices do not depend on hash order.
        let mut fresh: Vec<Key> = self
            .table
            .keys()
            .filter(|k| !self.index.contains_key(k))
            .copied()
            .collect();
        fresh.sort_unstable();
        for k in fresh {
            self.index.insert(k, self.keys.len());
            self.keys.push(k);
        }
        let n = self.keys.len();
        let whole = self.sampling.fraction >= 1.0;
        let mut kept = Vec::new();
        let mut values = Vec::new();
        let mut demand = Vec::with_capacity(n);
        let mut empty = Vec::with_capacity(n);
        let value = |vec: &FeatureVec, j: usize| self.schema.value(vec, j);
        for (i, k) in self.keys.iter().enumerate() {
            let vec = &self.table[k];
            demand.push(value(vec, self.demand).map_or(0.0, |v| v as f32));
            empty.push(
                self.on_hand
                    .and_then(|j| value(vec, j))
                    .is_some_and(|v| v <= 0.0),
            );
            if whole || self.sampling.keeps(k, period) {
                if !whole {
                    kept.push(i as u32);
                }
                natural(self.schema, vec, &mut values);
            }
        }
        values.shrink_to_fit();
        self.snapshots.push(Snapshot {
            period,
            n,
            kept: (!whole).then_some(kept),
            values,
            demand,
            empty,
        });
    }

    fn finish(mut self, cfg: &Resolved) -> History {
        if let Some(c) = self.current {
            self.take(c);
        }
        let names = self
            .keys
            .iter()
            .map(|k| {
                (
                    format!("#{:x}", k.store).into(),
                    format!("#{:x}", k.sku).into(),
                )
            })
            .collect();
        History {
            schema: self.schema.clone(),
            period: cfg.clock.period_kind(),
            keys: self.keys,
            names,
            snapshots: self.snapshots,
            kept: self.sampling.fraction.min(1.0),
        }
    }
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
        Self::load_sampled(cfg, data_dir, as_of, workers, None)
    }

    /// [`History::load_until`] keeping the feature rows of at most about `max_rows` (series,
    /// period) pairs (all with `None`). The dataset is spilled to time buckets on disk and
    /// replayed a bucket at a time ([`crate::source::events`]), so memory follows the kept
    /// rows, not the dataset's size.
    pub fn load_sampled(
        cfg: &Resolved,
        data_dir: &Path,
        as_of: Option<i64>,
        workers: usize,
        max_rows: Option<usize>,
    ) -> Result<Self, HistoryError> {
        let spilled = Arc::new(crate::source::spill::spill(cfg, data_dir, as_of)?);
        let sampling = max_rows.map_or(Sampling::ALL, |m| {
            Sampling::at_most(m, spilled.series(), spilled.periods(), 42)
        });
        tracing::info!(
            events = spilled.timed,
            series = spilled.series(),
            periods = spilled.periods(),
            kept = sampling.fraction.min(1.0),
            "history spilled; replaying"
        );
        let schema = cfg.spec.schema();
        let input = Events::spilled(Arc::clone(&spilled), &cfg.kafka.topics);
        let periods = spilled.periods() as u64;
        let mut history = replay(cfg, &schema, sampling, Arc::new(input), periods, workers)?;
        history.names = history.keys.iter().map(|k| spilled.dict.names(k)).collect();
        Ok(history)
    }

    /// [`History::load_until`] of a dataset already read, all rows kept.
    pub fn from_dataset(
        cfg: &Resolved,
        data: files::Dataset,
        as_of: Option<i64>,
        workers: usize,
    ) -> Result<Self, HistoryError> {
        let mut prepared = prepare(cfg, data, as_of);
        let events = std::mem::take(&mut prepared.events);
        let schema = cfg.spec.schema();
        let input = Arc::new(Events::held(events, &cfg.kafka.topics));
        let mut history = replay(cfg, &schema, Sampling::ALL, input, 0, workers)?;
        history.names = history
            .keys
            .iter()
            .map(|k| prepared.dict.names(k))
            .collect();
        Ok(history)
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
        self.snapshots[t].demand.get(i).copied().unwrap_or(0.0)
    }

    /// Whether series `i` ended the period of snapshot `t` with nothing on hand: its sales in that
    /// period are a lower bound of demand.
    pub fn censored(&self, t: usize, i: usize) -> bool {
        self.snapshots[t].empty.get(i).copied().unwrap_or(false)
    }

    /// Whether snapshots are one period apart (no period was skipped).
    pub fn is_contiguous(&self) -> bool {
        self.snapshots
            .windows(2)
            .all(|w| w[1].period == w[0].period + 1)
    }

    /// Whether every snapshot kept every series' features.
    pub fn is_whole(&self) -> bool {
        self.snapshots.iter().all(Snapshot::is_whole)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dataflows::model::MISSING;
    use dataflows::FeatureSpec;

    /// The definition: [`Schema::value`] per feature, NaN where it has none.
    fn by_definition(schema: &Schema, vec: &FeatureVec) -> Vec<f32> {
        (0..schema.features.len())
            .map(|i| schema.value(vec, i).map_or(f32::NAN, |v| v as f32))
            .collect()
    }

    #[test]
    fn natural_units_are_the_schemas_values_to_the_bit() {
        for spec in [FeatureSpec::daily(), FeatureSpec::weekly()] {
            let schema = spec.schema();
            let n = schema.features.len();
            let extremes = [MISSING, i64::MAX, MISSING + 1, 0, -1, 1, 999, 1_000_001];
            for len in [n, n + 3, n - 1, 0] {
                let values: Vec<i64> = (0..len as i64)
                    .map(|i| match i % 5 {
                        0 => extremes[(i as usize / 5) % extremes.len()],
                        1 => MISSING,
                        _ => i * 7_919 - 123_456,
                    })
                    .collect();
                let vec = FeatureVec::from(values);
                let mut ours = vec![7.0];
                natural(&schema, &vec, &mut ours);
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                let mut expected = vec![7.0];
                expected.extend(by_definition(&schema, &vec));
                assert_eq!(bits(&ours), bits(&expected), "{len} values, {n} features");
            }
        }
    }
}

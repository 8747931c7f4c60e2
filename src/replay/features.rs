//! `features`: the feature table of every series as of an instant, computed by the worker's
//! streaming driver over the dataset's events up to that instant.
//!
//! The dataset is read as replay reads it (`source::topics`), without the sales and stock
//! movements dated after the instant; the driver then moves the windows on to the instant's
//! epoch, past the last event, before it stops (`StreamOptions::drain_through`). Each series'
//! last feature vector is kept (`catch_up = "latest"`: the dataflow sends only that one).

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use dataflows::{FeatureVec, Key, Schema};
use serde::Serialize;

use crate::config::{CatchUp, Resolved};
use crate::display::rfc3339;
use crate::ids::{Dictionary, SeriesNames};
use crate::pipeline::stream::{
    self, Changed, Closed, Commit, Delivered, Handler, StreamOptions, Undelivered,
};
use crate::source::files;
use crate::source::topics::Topics;

use super::{create, write_err, ReplayError};

/// What `features` wrote.
#[derive(Debug, Serialize)]
pub struct FeatureTable {
    /// Series in the table.
    pub rows: usize,
    /// The instant the table is as of.
    pub as_of: String,
    /// Feature schema hash.
    pub schema_hash: String,
}

/// Computes the point-in-time feature table of every series from the events with `ts <= as_of`,
/// through the same dataflow, and writes it as CSV.
pub fn feature_table(
    cfg: &Resolved,
    data_dir: &Path,
    as_of: i64,
    out: &Path,
    workers: usize,
) -> Result<FeatureTable, ReplayError> {
    let data = files::load(data_dir)?;
    let undecoded = data.dead_letters.len();
    let latest = latest_features(cfg, data, as_of, workers)?;
    if undecoded > 0 || latest.refused > 0 {
        tracing::warn!(
            rows_not_decoded = undecoded,
            events_refused = latest.refused,
            "records left out of the feature table; `stockcast replay` lists them with file, line and reason"
        );
    }
    let schema = cfg.spec.schema();
    let mut rows: Vec<(SeriesNames, FeatureVec)> = latest.table.into_values().collect();
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    let mut w = csv::Writer::from_writer(create(out)?);
    let csv_err = |e: csv::Error| ReplayError::Write {
        path: out.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    };
    let mut header = vec!["store_id".to_string(), "sku_id".to_string()];
    header.extend(schema.names().map(str::to_string));
    w.write_record(&header).map_err(csv_err)?;
    for ((store, sku), vec) in &rows {
        let mut record = vec![store.to_string(), sku.to_string()];
        record.extend((0..schema.features.len()).map(|i| format_value(&schema, vec, i)));
        w.write_record(&record).map_err(csv_err)?;
    }
    w.flush().map_err(write_err(out))?;
    Ok(FeatureTable {
        rows: rows.len(),
        as_of: rfc3339(as_of),
        schema_hash: schema.hash,
    })
}

/// Every series' features as of an instant.
pub struct LatestFeatures {
    /// Per series, its names and its last feature vector.
    pub table: HashMap<Key, (SeriesNames, FeatureVec)>,
    /// Events the driver refused (dead letters: dated before 1970, too far ahead, colliding
    /// ids).
    pub refused: u64,
}

impl Handler for LatestFeatures {
    fn changed(&mut self, changed: Changed, dict: &Dictionary) -> Delivered {
        for (_, series) in changed.changed {
            for (key, vec) in series {
                match self.table.entry(key) {
                    Entry::Occupied(mut e) => e.get_mut().1 = vec,
                    Entry::Vacant(e) => {
                        e.insert((dict.names(&key), vec));
                    }
                }
            }
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

/// Runs the driver over `data`'s events with `ts <= as_of` (and all its reference data), with
/// the windows moved on to `as_of`'s epoch, and returns every series' features.
pub fn latest_features(
    cfg: &Resolved,
    data: files::Dataset,
    as_of: i64,
    workers: usize,
) -> Result<LatestFeatures, ReplayError> {
    let mut cfg = cfg.clone();
    cfg.output.catch_up = CatchUp::Latest;
    let period = cfg.clock.period_kind();
    let topics = Topics::new(data, period, &cfg.kafka.topics, Some(as_of))?;
    let opts = StreamOptions {
        drain_through: cfg.clock.epoch_of(as_of),
        ..StreamOptions::to_the_end(workers)
    };
    let mut latest = LatestFeatures {
        table: HashMap::new(),
        refused: 0,
    };
    stream::run(&cfg, &opts, Arc::new(Arc::new(topics)), None, &mut latest)?;
    Ok(latest)
}

/// A feature value as CSV text: empty when missing, integers for counts, else up to 3 decimals.
pub fn format_value(schema: &Schema, vec: &FeatureVec, i: usize) -> String {
    match vec.raw(i) {
        None => String::new(),
        Some(v) if schema.features[i].scale == 1 => v.to_string(),
        Some(v) => {
            let scale = schema.features[i].scale;
            let sign = if v < 0 { "-" } else { "" };
            let (int, frac) = (
                v.unsigned_abs() / scale as u64,
                v.unsigned_abs() % scale as u64,
            );
            if frac == 0 {
                format!("{sign}{int}")
            } else {
                let digits = scale.ilog10() as usize;
                let f = format!("{frac:0digits$}");
                format!("{sign}{int}.{}", f.trim_end_matches('0'))
            }
        }
    }
}

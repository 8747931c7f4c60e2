//! The PostgreSQL inventory mart as a sink: each part of an advance's forecasts (history and
//! current tables) and its progress rows ([`crate::mart`] has the schema), over
//! `[postgres] connections` connections at once.
//!
//! One connection's server process writes about 45,000 daily records a second on this
//! project's machines, and that was what a run writing to the mart waited for (docs/
//! benchmarks.md). So a part of an advance is split by series over the connections, each
//! writing its share in a transaction of its own, at the same time: a series always goes to
//! the same connection, so two transactions never update the same row of the current table
//! (no lock waits, no deadlocks). A reader therefore may see some series of an epoch before
//! others; the epoch is complete once its row is in `stockcast_epochs`, which is written only
//! after every part of it (docs/operations.md).

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use super::build::Advance;
use super::sink::{Context, OutputError, Sink, WriteError};
use crate::config::PostgresConfig;
use crate::mart::{Mart, MartError};
use crate::records::ForecastRecord;

/// Fewer forecasts than this are written over one connection: splitting them saves less than
/// the round trips it adds.
const SPLIT_MIN: usize = 2048;

/// Writes advances into the mart.
pub struct MartSink {
    /// The first also writes the progress rows, creates the history partitions and drops the
    /// old ones.
    marts: Vec<Mart>,
}

impl MartSink {
    /// The mart at `cfg.url`, with its history retention, over `cfg.connections`
    /// connections; each connects at its first write.
    pub fn new(cfg: &PostgresConfig) -> Result<MartSink, OutputError> {
        let mut marts = vec![Mart::new(&cfg.url)?.with_retention(cfg.history_retention_days)];
        for _ in 1..cfg.connections.max(1) {
            marts.push(Mart::new(&cfg.url)?);
        }
        Ok(MartSink { marts })
    }
}

/// Which of `n` connections writes the series (`store`, `sku`).
fn connection_of(store: &str, sku: &str, n: usize) -> usize {
    let mut h = DefaultHasher::new();
    (store, sku).hash(&mut h);
    (h.finish() % n as u64) as usize
}

/// Writes `records` over `marts`, each its series' share, at once; the first error.
fn write_split(marts: &mut [Mart], records: &[ForecastRecord]) -> Result<(), MartError> {
    let n = marts.len();
    let mut shares: Vec<Vec<&ForecastRecord>> = vec![Vec::with_capacity(records.len() / n); n];
    for r in records {
        shares[connection_of(&r.store_id, &r.sku_id, n)].push(r);
    }
    // Partitions first, on one connection: two creating the same one at once can fail.
    marts[0].create_partitions(records)?;
    std::thread::scope(|scope| {
        let writes: Vec<_> = (marts.iter_mut().zip(&shares))
            .map(|(mart, share)| scope.spawn(move || mart.write(share, &[])))
            .collect();
        let mut outcome = Ok(());
        for w in writes {
            // A writer that panicked is a bug: the panic goes on to the sink's caller, which
            // fails the advance for good.
            let result = w.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
            if outcome.is_ok() {
                outcome = result;
            }
        }
        outcome
    })
}

impl Sink for MartSink {
    fn name(&self) -> &'static str {
        "postgres"
    }

    fn write(&mut self, advance: &Advance, _: &mut Context<'_>) -> Result<u64, WriteError> {
        let (records, progress) = (&advance.forecasts, &advance.progress);
        if records.is_empty() && progress.is_empty() {
            return Ok(0);
        }
        if self.marts.len() == 1 || records.len() < SPLIT_MIN {
            self.marts[0].write(records, progress)
        } else {
            write_split(&mut self.marts, records).and_then(|()| {
                // The progress rows only after every share of the forecasts.
                match progress.is_empty() {
                    true => Ok(()),
                    false => self.marts[0].write::<ForecastRecord>(&[], progress),
                }
            })
        }
        .map_err(WriteError::transient)?;
        Ok((records.len() + progress.len()) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_series_always_goes_to_the_same_connection_and_all_are_used() {
        let mut used = [0usize; 3];
        for store in 0..20 {
            for sku in 0..20 {
                let (store, sku) = (store.to_string(), sku.to_string());
                let c = connection_of(&store, &sku, 3);
                assert_eq!(c, connection_of(&store, &sku, 3));
                used[c] += 1;
            }
        }
        assert!(used.iter().all(|&n| n > 80), "{used:?}");
        assert_eq!(connection_of("a", "b", 1), 0);
    }
}

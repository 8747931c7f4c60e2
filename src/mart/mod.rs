//! The PostgreSQL inventory mart: the sink a planner's reports and dashboards read.
//!
//! # Tables (created by the embedded migrations, see [`schema::MIGRATIONS`])
//! - `stockcast_forecasts`: the current forecast and recommendation per (store, SKU), one
//!   column per field of the record plus `forecast_total`; upserted, an older epoch never
//!   overwrites a newer one.
//! - `stockcast_forecast_history`: every forecast record emitted, in the same columns,
//!   appended; keyed by (store, SKU, epoch end) and indexed by epoch end; partitioned by day of
//!   epoch end (UTC), each day's partition created by the first write that needs it, and
//!   partitions older than the retention before the newest epoch written dropped after a
//!   write.
//! - `stockcast_epochs`: one row per progress record (the `stockcast.epochs` value).
//! - Views `stockcast_forecast_records` and `stockcast_forecast_history_records`: the same
//!   rows with the record as JSON (`record`), equal to the `forecasts.jsonl` line.
//!
//! # Guarantees
//! Each call of [`Mart::write`] is one transaction: its records by one binary `COPY` into a
//! staging table, then one `INSERT .. SELECT` into the history and one into the current table
//! (the newest record per series), and the progress rows by one batched `INSERT .. SELECT FROM
//! UNNEST(..)`, whatever the number of rows: a reader sees all of a write or none of it. The
//! sink (`output::postgres`) writes an advance in parts, over several connections at once, and
//! its progress rows last: an epoch is complete once its `stockcast_epochs` row is there.
//! Writes are idempotent: the history and the epochs ignore rows they already hold and the
//! current table keeps the newest epoch, so an advance retried after a failure (or
//! republished after a restart) writes nothing twice. The worker commits its input
//! offsets only after this commit (see [`crate::kafka`]).
//!
//! A failed write is retried by the caller with backoff; the connection is re-established on
//! each attempt after an error.

pub mod schema;

pub use schema::MIGRATIONS;

use std::borrow::Borrow;
use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, SystemTime};

use chrono::NaiveDate;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};

use crate::records::EpochRecord;
use crate::records::ForecastRecord;

/// The UTC day of an `epoch_end` (RFC 3339).
fn day_of(epoch_end: &str) -> Result<NaiveDate, MartError> {
    chrono::DateTime::parse_from_rfc3339(epoch_end)
        .map(|t| t.with_timezone(&chrono::Utc).date_naive())
        .map_err(|e| MartError::Record(format!("epoch_end {epoch_end:?}: {e}")))
}

/// Why the mart could not be written.
#[derive(Debug, thiserror::Error)]
pub enum MartError {
    /// Connecting, migrating or writing failed.
    #[error("postgres: {0}")]
    Db(#[from] tokio_postgres::Error),
    /// The local runtime could not start.
    #[error("postgres: {0}")]
    Runtime(#[from] std::io::Error),
    /// A record the mart cannot place (an `epoch_end` that is not RFC 3339).
    #[error("postgres: {0}")]
    Record(String),
    /// PostgreSQL did not answer in time; the connection was dropped.
    #[error("postgres: {what} did not finish within {secs} s; the connection was dropped")]
    Timeout {
        /// What was waiting: connecting, a write, dropping old partitions.
        what: &'static str,
        /// The limit it reached.
        secs: u64,
    },
}

/// A connection to the mart, with its own single-threaded runtime.
pub struct Mart {
    url: String,
    runtime: tokio::runtime::Runtime,
    client: Option<Client>,
    /// The task driving `client`'s connection, stopped with it.
    connection: Option<tokio::task::JoinHandle<()>>,
    /// History partitions known to exist (forgotten after a failed write).
    partitions: BTreeSet<NaiveDate>,
    /// Days of history kept before the newest written; 0 keeps everything.
    retention_days: u32,
    /// The newest day retention was applied for.
    retained_to: Option<NaiveDate>,
    /// How long an attempt may wait for answers ([`ANSWER_TIMEOUT`] unless set).
    answer_timeout: Duration,
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long connecting and migrating, one advance's transaction, or dropping old partitions
/// may take before the attempt fails and the connection is dropped: a server that accepted the
/// connection and stopped answering must not hold the worker for ever. An advance is written
/// in parts of at most [`crate::output::build::CHUNK`] records, seconds of work.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(120);

/// `work`, on `runtime`, failed with [`MartError::Timeout`] after `limit`.
fn within<T, E: Into<MartError>>(
    runtime: &tokio::runtime::Runtime,
    limit: Duration,
    what: &'static str,
    work: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, MartError> {
    runtime
        .block_on(async { tokio::time::timeout(limit, work).await })
        .map_err(|_| MartError::Timeout {
            what,
            secs: limit.as_secs(),
        })?
        .map_err(Into::into)
}

impl Mart {
    /// A mart at `url` (a libpq connection string or URL); connects (and applies missing
    /// migrations) at the first write.
    pub fn new(url: &str) -> Result<Self, MartError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Ok(Mart {
            url: url.to_string(),
            runtime,
            client: None,
            connection: None,
            partitions: BTreeSet::new(),
            retention_days: 0,
            retained_to: None,
            answer_timeout: ANSWER_TIMEOUT,
        })
    }

    /// Keeps `days` of history before the newest epoch written (0: everything); older daily
    /// partitions are dropped after a write.
    pub fn with_retention(mut self, days: u32) -> Self {
        self.retention_days = days;
        self
    }

    /// Fails an attempt (connecting, a write) that waited `limit` for answers, instead of
    /// after [`ANSWER_TIMEOUT`].
    pub fn with_answer_timeout(mut self, limit: Duration) -> Self {
        self.answer_timeout = limit;
        self
    }

    /// [`Mart::new`], connected now.
    pub fn connect(url: &str) -> Result<Self, MartError> {
        let mut mart = Self::new(url)?;
        mart.client()?;
        Ok(mart)
    }

    /// The live client, reconnecting (and migrating) if there is none or it closed.
    fn client(&mut self) -> Result<&Client, MartError> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.disconnect();
            let mut config: tokio_postgres::Config = self.url.parse()?;
            config.connect_timeout(CONNECT_TIMEOUT);
            let mut task = None;
            let connected = within(&self.runtime, self.answer_timeout, "connecting", async {
                let (mut client, connection) = config.connect(NoTls).await?;
                task = Some(tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        tracing::warn!(error = %e, "postgres connection closed");
                    }
                }));
                migrate(&mut client).await?;
                client.batch_execute(schema::STAGING_BUFFERS).await?;
                Ok::<_, tokio_postgres::Error>(client)
            });
            self.connection = task;
            match connected {
                Ok(client) => self.client = Some(client),
                Err(e) => {
                    self.disconnect();
                    return Err(e);
                }
            }
        }
        Ok(self.client.as_ref().expect("set above"))
    }

    /// Drops the connection, and stops the task driving it: a server that stopped answering
    /// would otherwise hold that task and its socket for ever.
    fn disconnect(&mut self) {
        self.client = None;
        if let Some(task) = self.connection.take() {
            task.abort();
        }
    }

    /// Writes one advance, its forecast `records` (in epoch order) and its progress records
    /// (one per epoch), in one transaction. Idempotent.
    pub fn write<R: Borrow<ForecastRecord>>(
        &mut self,
        records: &[R],
        progress: &[EpochRecord],
    ) -> Result<(), MartError> {
        let result = self.try_write(records, progress);
        if result.is_err() {
            // Start from a fresh connection, and check partitions again, next time.
            self.disconnect();
            self.partitions.clear();
            return result;
        }
        if let Some(newest) = records.iter().map(|r| &*r.borrow().epoch_end).max() {
            if let Err(e) = self.retain(day_of(newest)?) {
                // The write itself succeeded; the next advance tries again.
                tracing::warn!(error = %e, "postgres: dropping old history partitions failed");
                self.disconnect();
            }
        }
        Ok(())
    }

    /// `work` on the live client (connecting first, as [`Mart::client`]), failed with
    /// [`MartError::Timeout`] after the answer timeout.
    fn on_client<'a, T, F>(
        &'a mut self,
        what: &'static str,
        work: impl FnOnce(&'a mut Client) -> F,
    ) -> Result<T, MartError>
    where
        F: std::future::Future<Output = Result<T, tokio_postgres::Error>> + 'a,
    {
        self.client()?;
        let limit = self.answer_timeout;
        let Mart {
            runtime, client, ..
        } = self;
        let client = client.as_mut().expect("connected above");
        within(runtime, limit, what, work(client))
    }

    /// Drops the history partitions of days more than the retention before `newest`, once
    /// per new newest day.
    fn retain(&mut self, newest: NaiveDate) -> Result<(), MartError> {
        if self.retention_days == 0 || self.retained_to.is_some_and(|d| d >= newest) {
            return Ok(());
        }
        let cutoff = newest - chrono::Days::new(u64::from(self.retention_days));
        let dropped = self.on_client("dropping old history partitions", |client| async move {
            let rows = client.query(schema::LIST_PARTITIONS, &[]).await?;
            let mut dropped = Vec::new();
            for row in rows {
                let name: String = row.get(0);
                if let Some(day) = schema::partition_day(&name).filter(|d| *d < cutoff) {
                    client
                        .batch_execute(&format!(
                            "DROP TABLE IF EXISTS {}",
                            schema::partition_name(day)
                        ))
                        .await?;
                    dropped.push(day);
                }
            }
            Ok::<_, tokio_postgres::Error>(dropped)
        })?;
        for day in &dropped {
            self.partitions.remove(day);
        }
        if !dropped.is_empty() {
            tracing::info!(
                partitions = dropped.len(),
                before = %cutoff,
                "postgres: dropped forecast history older than the retention"
            );
        }
        self.retained_to = Some(newest);
        Ok(())
    }

    /// Creates the history partitions `records` need that this connection does not know of,
    /// in a transaction of their own. Connections writing parts of one advance at the same
    /// time call this on one of them first: two creating the same partition at once can fail.
    pub fn create_partitions<R: Borrow<ForecastRecord>>(
        &mut self,
        records: &[R],
    ) -> Result<(), MartError> {
        let mut days = BTreeSet::new();
        for r in records {
            days.insert(day_of(&r.borrow().epoch_end)?);
        }
        let missing: Vec<NaiveDate> = days.difference(&self.partitions).copied().collect();
        if missing.is_empty() {
            return Ok(());
        }
        let days = &missing;
        let created = self.on_client("creating history partitions", |client| async move {
            let tx = client.transaction().await?;
            for day in days {
                tx.batch_execute(&schema::create_partition(*day)).await?;
            }
            tx.commit().await
        });
        if let Err(e) = created {
            self.disconnect();
            return Err(e);
        }
        self.partitions.extend(missing);
        Ok(())
    }

    fn try_write<R: Borrow<ForecastRecord>>(
        &mut self,
        records: &[R],
        progress: &[EpochRecord],
    ) -> Result<(), MartError> {
        let records: Vec<&ForecastRecord> = records.iter().map(Borrow::borrow).collect();
        let mut days = BTreeSet::new();
        let mut times = Vec::with_capacity(records.len());
        for r in &records {
            let t = chrono::DateTime::parse_from_rfc3339(&r.epoch_end)
                .map_err(|e| MartError::Record(format!("epoch_end {:?}: {e}", r.epoch_end)))?;
            days.insert(t.with_timezone(&chrono::Utc).date_naive());
            times.push(SystemTime::from(t));
        }
        let series = records.iter().map(|r| (&*r.store_id, &*r.sku_id));
        let newest = newest_of_each_series(series.zip(times.iter().copied()));
        let missing: Vec<NaiveDate> = days.difference(&self.partitions).copied().collect();
        let epoch_ends: Vec<&str> = progress.iter().map(|p| p.epoch_end.as_str()).collect();
        let frontiers: Vec<i64> = progress.iter().map(|p| p.frontier as i64).collect();
        let changed: Vec<i64> = progress.iter().map(|p| p.keys_changed as i64).collect();
        let scored: Vec<i64> = progress.iter().map(|p| p.keys_scored as i64).collect();
        let progress_json: Vec<String> = progress
            .iter()
            .map(|p| serde_json::to_string(p).unwrap_or_default())
            .collect();
        let days = &missing;
        self.on_client("writing an advance", |client| async move {
            let mut tx = client.transaction().await?;
            for day in days {
                tx.batch_execute(&schema::create_partition(*day)).await?;
            }
            if !records.is_empty() {
                tx.batch_execute(schema::CREATE_STAGING).await?;
                let sink = tx.copy_in(&schema::copy_statement()).await?;
                let writer = BinaryCopyInWriter::new(sink, &schema::copy_types());
                let mut writer = std::pin::pin!(writer);
                for ((r, time), newest) in records.iter().zip(&times).zip(&newest) {
                    let a = &r.recommendation;
                    // Summed in order from 0, as PostgreSQL's `sum` over the array would.
                    let total = r.forecast.iter().fold(0.0, |sum, x| sum + x);
                    writer
                        .as_mut()
                        .write(&[
                            &&*r.store_id,
                            &&*r.sku_id,
                            time,
                            &&*r.schema_hash,
                            &&*r.model,
                            &&*r.model_version,
                            &r.fallback_reason,
                            &r.forecast,
                            &r.forecast_p10,
                            &r.forecast_p90,
                            &r.on_hand,
                            &r.on_order,
                            &a.order_qty,
                            &a.order_up_to,
                            &a.reorder_point,
                            &a.cover_periods,
                            &a.stockout_risk,
                            &a.lead_time_days,
                            &a.review_days,
                            &a.service_level,
                            &a.pack_size,
                            &a.min_order_qty,
                            &a.active,
                            &total,
                            newest,
                        ])
                        .await?;
                }
                writer.finish().await?;
                // A plain insert is a third cheaper than one that checks each row for a
                // conflict; an advance written before (a retry, a republish after a restart)
                // fails it, and is inserted again skipping the rows the history holds.
                let first = tx.savepoint("history").await?;
                match first.execute(&schema::insert_history(false), &[]).await {
                    Ok(_) => first.commit().await?,
                    Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                        first.rollback().await?;
                        tx.execute(&schema::insert_history(true), &[]).await?;
                    }
                    Err(e) => return Err(e),
                }
                tx.execute(&schema::upsert_current(), &[]).await?;
            }
            tx.execute(
                "INSERT INTO stockcast_epochs (epoch_end, frontier, keys_changed, keys_scored,
                     record)
                 SELECT e::timestamptz, f, c, s, r::jsonb
                 FROM UNNEST($1::text[], $2::int8[], $3::int8[], $4::int8[], $5::text[])
                     AS u(e, f, c, s, r)
                 ON CONFLICT DO NOTHING",
                &[&epoch_ends, &frontiers, &changed, &scored, &progress_json],
            )
            .await?;
            tx.commit().await
        })?;
        self.partitions.extend(missing);
        Ok(())
    }
}

/// Whether each record, given by its series and time, is its series' newest. Of two at the same
/// time the first counts, as in the history, which keeps the first row of a key.
fn newest_of_each_series<'a>(
    records: impl ExactSizeIterator<Item = ((&'a str, &'a str), SystemTime)>,
) -> Vec<bool> {
    let mut flags = vec![false; records.len()];
    let mut newest: HashMap<(&str, &str), (usize, SystemTime)> = HashMap::new();
    for (i, (series, time)) in records.enumerate() {
        let held = newest.entry(series).or_insert((i, time));
        if time > held.1 {
            *held = (i, time);
        }
    }
    for (i, _) in newest.into_values() {
        flags[i] = true;
    }
    flags
}

/// Applies the migrations the database lacks; concurrent workers serialise on a table lock.
async fn migrate(client: &mut Client) -> Result<(), tokio_postgres::Error> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS stockcast_migrations (
                version integer PRIMARY KEY,
                applied_at timestamptz NOT NULL DEFAULT now()
            )",
        )
        .await?;
    let tx = client.transaction().await?;
    tx.batch_execute("LOCK TABLE stockcast_migrations IN EXCLUSIVE MODE")
        .await?;
    let applied: Vec<i32> = tx
        .query("SELECT version FROM stockcast_migrations", &[])
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    for (version, sql) in schema::MIGRATIONS {
        if applied.contains(&version) {
            continue;
        }
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO stockcast_migrations (version) VALUES ($1)",
            &[&version],
        )
        .await?;
        tracing::info!(version, "postgres mart migrated");
    }
    tx.commit().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_series_newest_record_is_flagged_the_first_of_a_tie() {
        let records = [
            ("A", "2024-01-02T00:00:00Z"),
            ("B", "2024-01-01T00:00:00Z"),
            ("A", "2024-01-01T00:00:00Z"),
            ("B", "2024-01-01T00:00:00Z"),
            ("C", "2024-01-01T00:00:00Z"),
        ];
        let series = records.iter().map(|(store, t)| {
            let time = chrono::DateTime::parse_from_rfc3339(t).unwrap().into();
            ((*store, "K"), time)
        });
        assert_eq!(
            newest_of_each_series(series),
            [true, true, false, false, true]
        );
    }
}

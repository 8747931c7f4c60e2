//! The PostgreSQL inventory mart: the sink a planner's reports and dashboards read.
//!
//! # Tables (created by the embedded migrations, see [`MIGRATIONS`])
//! - `stockcast_forecasts`: the current forecast and recommendation per (store, SKU), upserted;
//!   an older epoch never overwrites a newer one.
//! - `stockcast_forecast_history`: every forecast record emitted, appended; keyed by (store, SKU,
//!   epoch end) and indexed by epoch end; partitioned by day of epoch end (UTC), each day's
//!   partition created by the first write that needs it, and partitions older than the
//!   retention before the newest epoch written dropped after a write.
//! - `stockcast_epochs`: one row per progress record (the `stockcast.epochs` value).
//!
//! # Guarantees
//! Each advance is written in one transaction: its history rows by one binary `COPY` into a
//! staging table and one `INSERT .. SELECT` from it (measured faster than one `INSERT ..
//! SELECT FROM UNNEST(..)`, and cheaper for the worker: `cargo bench --bench mart`), the
//! current rows and the progress rows by one batched `INSERT .. SELECT FROM UNNEST(..)` each,
//! whatever the number of rows: a reader sees all of an advance or none of it. Writes are idempotent: the history and the epochs ignore rows they
//! already hold and the current table keeps the newest epoch, so an advance retried after a
//! failure (or republished after a restart) writes nothing twice. The Kafka sink commits its
//! input offsets only after this commit (see [`crate::kafka`]).
//!
//! A failed write is retried by the caller with backoff; the connection is re-established on
//! each attempt after an error.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::NaiveDate;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, NoTls};

use crate::records::EpochRecord;
use crate::records::ForecastRecord;

/// Schema versions, applied in order, each once, in one transaction with the version row.
pub const MIGRATIONS: [(i32, &str); 2] = [
    (
        1,
        "CREATE TABLE stockcast_forecasts (
        store_id text NOT NULL,
        sku_id text NOT NULL,
        epoch_end timestamptz NOT NULL,
        model text NOT NULL,
        model_version text NOT NULL,
        forecast_total double precision NOT NULL,
        order_qty double precision,
        order_up_to double precision NOT NULL,
        stockout_risk double precision,
        on_hand double precision,
        on_order double precision,
        record jsonb NOT NULL,
        PRIMARY KEY (store_id, sku_id)
    );
    CREATE TABLE stockcast_forecast_history (
        store_id text NOT NULL,
        sku_id text NOT NULL,
        epoch_end timestamptz NOT NULL,
        record jsonb NOT NULL,
        PRIMARY KEY (store_id, sku_id, epoch_end)
    );
    CREATE INDEX stockcast_forecast_history_by_epoch ON stockcast_forecast_history (epoch_end);
    CREATE TABLE stockcast_epochs (
        epoch_end timestamptz PRIMARY KEY,
        frontier bigint NOT NULL,
        keys_changed bigint NOT NULL,
        keys_scored bigint NOT NULL,
        record jsonb NOT NULL
    );",
    ),
    (2, PARTITIONED_HISTORY),
];

/// Migration 2: the history table partitioned by day of `epoch_end` (UTC), so that retention
/// drops whole partitions instead of deleting rows. Rows of an existing table move into
/// partitions of their days.
const PARTITIONED_HISTORY: &str = "
    ALTER TABLE stockcast_forecast_history RENAME TO stockcast_forecast_history_v1;
    ALTER INDEX stockcast_forecast_history_by_epoch RENAME TO stockcast_forecast_history_v1_by_epoch;
    ALTER TABLE stockcast_forecast_history_v1
        RENAME CONSTRAINT stockcast_forecast_history_pkey TO stockcast_forecast_history_v1_pkey;
    CREATE TABLE stockcast_forecast_history (
        store_id text NOT NULL,
        sku_id text NOT NULL,
        epoch_end timestamptz NOT NULL,
        record jsonb NOT NULL,
        PRIMARY KEY (store_id, sku_id, epoch_end)
    ) PARTITION BY RANGE (epoch_end);
    CREATE INDEX stockcast_forecast_history_by_epoch ON stockcast_forecast_history (epoch_end);
    DO $$
    DECLARE d date;
    BEGIN
        FOR d IN SELECT DISTINCT (epoch_end AT TIME ZONE 'UTC')::date
                 FROM stockcast_forecast_history_v1 LOOP
            EXECUTE format(
                'CREATE TABLE %I PARTITION OF stockcast_forecast_history FOR VALUES FROM (%L) TO (%L)',
                'stockcast_forecast_history_p' || to_char(d, 'YYYYMMDD'),
                d::timestamp AT TIME ZONE 'UTC', (d + 1)::timestamp AT TIME ZONE 'UTC');
        END LOOP;
    END $$;
    INSERT INTO stockcast_forecast_history (store_id, sku_id, epoch_end, record)
        SELECT store_id, sku_id, epoch_end, record FROM stockcast_forecast_history_v1;
    DROP TABLE stockcast_forecast_history_v1;";

/// The name of the history partition of `day`.
fn partition_name(day: NaiveDate) -> String {
    format!("{HISTORY_PARTITION_PREFIX}{}", day.format("%Y%m%d"))
}

const HISTORY_PARTITION_PREFIX: &str = "stockcast_forecast_history_p";

/// The day a history partition's name stands for.
fn partition_day(name: &str) -> Option<NaiveDate> {
    let digits = name.strip_prefix(HISTORY_PARTITION_PREFIX)?;
    NaiveDate::parse_from_str(digits, "%Y%m%d").ok()
}

/// Creates the history partition of `day` unless it exists.
fn create_partition_sql(day: NaiveDate) -> String {
    let next = day.succ_opt().unwrap_or(NaiveDate::MAX);
    format!(
        "CREATE TABLE IF NOT EXISTS {} PARTITION OF stockcast_forecast_history \
         FOR VALUES FROM ('{day}T00:00:00Z') TO ('{next}T00:00:00Z')",
        partition_name(day)
    )
}

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
}

/// A connection to the mart, with its own single-threaded runtime.
pub struct Mart {
    url: String,
    runtime: tokio::runtime::Runtime,
    client: Option<Client>,
    /// History partitions known to exist (forgotten after a failed write).
    partitions: BTreeSet<NaiveDate>,
    /// Days of history kept before the newest written; 0 keeps everything.
    retention_days: u32,
    /// The newest day retention was applied for.
    retained_to: Option<NaiveDate>,
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

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
            partitions: BTreeSet::new(),
            retention_days: 0,
            retained_to: None,
        })
    }

    /// Keeps `days` of history before the newest epoch written (0: everything); older daily
    /// partitions are dropped after a write.
    pub fn with_retention(mut self, days: u32) -> Self {
        self.retention_days = days;
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
            self.client = None;
            let mut config: tokio_postgres::Config = self.url.parse()?;
            config.connect_timeout(CONNECT_TIMEOUT);
            let client = self.runtime.block_on(async {
                let (mut client, connection) = config.connect(NoTls).await?;
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        tracing::warn!(error = %e, "postgres connection closed");
                    }
                });
                migrate(&mut client).await?;
                Ok::<_, tokio_postgres::Error>(client)
            })?;
            self.client = Some(client);
        }
        Ok(self.client.as_ref().expect("set above"))
    }

    /// Writes one advance, its forecast `records` (in epoch order) and its progress records
    /// (one per epoch), in one transaction. Idempotent.
    pub fn write(
        &mut self,
        records: &[ForecastRecord],
        progress: &[EpochRecord],
    ) -> Result<(), MartError> {
        let result = self.try_write(records, progress);
        if result.is_err() {
            // Start from a fresh connection, and check partitions again, next time.
            self.client = None;
            self.partitions.clear();
            return result;
        }
        if let Some(newest) = records.iter().map(|r| r.epoch_end.as_str()).max() {
            if let Err(e) = self.retain(day_of(newest)?) {
                // The write itself succeeded; the next advance tries again.
                tracing::warn!(error = %e, "postgres: dropping old history partitions failed");
                self.client = None;
            }
        }
        Ok(())
    }

    /// Drops the history partitions of days more than the retention before `newest`, once
    /// per new newest day.
    fn retain(&mut self, newest: NaiveDate) -> Result<(), MartError> {
        if self.retention_days == 0 || self.retained_to.is_some_and(|d| d >= newest) {
            return Ok(());
        }
        let cutoff = newest - chrono::Days::new(u64::from(self.retention_days));
        self.client()?;
        let Mart {
            runtime, client, ..
        } = self;
        let client = client.as_mut().expect("connected above");
        let dropped = runtime.block_on(async {
            let rows = client
                .query(
                    "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                     WHERE i.inhparent = 'stockcast_forecast_history'::regclass",
                    &[],
                )
                .await?;
            let mut dropped = Vec::new();
            for row in rows {
                let name: String = row.get(0);
                if let Some(day) = partition_day(&name).filter(|d| *d < cutoff) {
                    client
                        .batch_execute(&format!("DROP TABLE IF EXISTS {}", partition_name(day)))
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

    fn try_write(
        &mut self,
        records: &[ForecastRecord],
        progress: &[EpochRecord],
    ) -> Result<(), MartError> {
        let history_json: Vec<String> = records
            .iter()
            .map(|r| serde_json::to_string(r).unwrap_or_default())
            .collect();
        let mut days = BTreeSet::new();
        for r in records {
            days.insert(day_of(&r.epoch_end)?);
        }
        let missing: Vec<NaiveDate> = days.difference(&self.partitions).copied().collect();
        let times: Vec<std::time::SystemTime> = records
            .iter()
            .map(|r| {
                chrono::DateTime::parse_from_rfc3339(&r.epoch_end)
                    .map(std::time::SystemTime::from)
                    .map_err(|e| MartError::Record(format!("epoch_end {:?}: {e}", r.epoch_end)))
            })
            .collect::<Result<_, _>>()?;
        // The newest record of each series (an advance may hold several epochs of one).
        let mut newest: std::collections::HashMap<(&str, &str), &ForecastRecord> =
            Default::default();
        for r in records {
            newest.insert((r.store_id.as_str(), r.sku_id.as_str()), r);
        }
        let current = Columns::of(newest.into_values());
        let epoch_ends: Vec<&str> = progress.iter().map(|p| p.epoch_end.as_str()).collect();
        let frontiers: Vec<i64> = progress.iter().map(|p| p.frontier as i64).collect();
        let changed: Vec<i64> = progress.iter().map(|p| p.keys_changed as i64).collect();
        let scored: Vec<i64> = progress.iter().map(|p| p.keys_scored as i64).collect();
        let progress_json: Vec<String> = progress
            .iter()
            .map(|p| serde_json::to_string(p).unwrap_or_default())
            .collect();
        self.client()?;
        let Mart {
            runtime, client, ..
        } = self;
        let client = client.as_mut().expect("connected above");
        runtime.block_on(async {
            let tx = client.transaction().await?;
            for day in &missing {
                tx.batch_execute(&create_partition_sql(*day)).await?;
            }
            tx.batch_execute(
                "CREATE TEMP TABLE IF NOT EXISTS stockcast_history_in (store_id text,
                     sku_id text, epoch_end timestamptz, record text) ON COMMIT DELETE ROWS",
            )
            .await?;
            let sink = tx
                .copy_in("COPY stockcast_history_in FROM STDIN (FORMAT binary)")
                .await?;
            let types = [Type::TEXT, Type::TEXT, Type::TIMESTAMPTZ, Type::TEXT];
            let writer = BinaryCopyInWriter::new(sink, &types);
            let mut writer = std::pin::pin!(writer);
            for ((r, time), json) in records.iter().zip(&times).zip(&history_json) {
                writer
                    .as_mut()
                    .write(&[&r.store_id, &r.sku_id, time, json])
                    .await?;
            }
            writer.finish().await?;
            tx.execute(
                "INSERT INTO stockcast_forecast_history (store_id, sku_id, epoch_end, record)
                 SELECT store_id, sku_id, epoch_end, record::jsonb FROM stockcast_history_in
                 ON CONFLICT DO NOTHING",
                &[],
            )
            .await?;

            tx.execute(
                "INSERT INTO stockcast_forecasts AS f (store_id, sku_id, epoch_end, model,
                     model_version, forecast_total, order_qty, order_up_to, stockout_risk,
                     on_hand, on_order, record)
                 SELECT s, k, e::timestamptz, m, v, t, q, u, x, h, o, r::jsonb
                 FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                     $6::float8[], $7::float8[], $8::float8[], $9::float8[], $10::float8[],
                     $11::float8[], $12::text[]) AS u(s, k, e, m, v, t, q, u, x, h, o, r)
                 ON CONFLICT (store_id, sku_id) DO UPDATE SET
                     epoch_end = EXCLUDED.epoch_end, model = EXCLUDED.model,
                     model_version = EXCLUDED.model_version,
                     forecast_total = EXCLUDED.forecast_total, order_qty = EXCLUDED.order_qty,
                     order_up_to = EXCLUDED.order_up_to,
                     stockout_risk = EXCLUDED.stockout_risk, on_hand = EXCLUDED.on_hand,
                     on_order = EXCLUDED.on_order, record = EXCLUDED.record
                 WHERE f.epoch_end <= EXCLUDED.epoch_end",
                &[
                    &current.store,
                    &current.sku,
                    &current.epoch,
                    &current.model,
                    &current.version,
                    &current.total,
                    &current.order_qty,
                    &current.order_up_to,
                    &current.risk,
                    &current.on_hand,
                    &current.on_order,
                    &current.json,
                ],
            )
            .await?;
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

/// Records as column arrays for `UNNEST`.
#[derive(Default)]
struct Columns {
    store: Vec<String>,
    sku: Vec<String>,
    epoch: Vec<String>,
    model: Vec<String>,
    version: Vec<String>,
    total: Vec<f64>,
    order_qty: Vec<Option<f64>>,
    order_up_to: Vec<f64>,
    risk: Vec<Option<f64>>,
    on_hand: Vec<Option<f64>>,
    on_order: Vec<Option<f64>>,
    json: Vec<String>,
}

impl Columns {
    fn of<'a>(records: impl Iterator<Item = &'a ForecastRecord>) -> Self {
        let mut c = Columns::default();
        for r in records {
            c.store.push(r.store_id.clone());
            c.sku.push(r.sku_id.clone());
            c.epoch.push(r.epoch_end.clone());
            c.model.push(r.model.clone());
            c.version.push(r.model_version.clone());
            c.total.push(r.forecast.iter().sum());
            c.order_qty.push(r.recommendation.order_qty);
            c.order_up_to.push(r.recommendation.order_up_to);
            c.risk.push(r.recommendation.stockout_risk);
            c.on_hand.push(r.on_hand);
            c.on_order.push(r.on_order);
            c.json.push(serde_json::to_string(r).unwrap_or_default());
        }
        c
    }
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
    for (version, sql) in MIGRATIONS {
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

//! The PostgreSQL inventory mart: the sink a planner's reports and dashboards read.
//!
//! # Tables (created by the embedded migrations, see [`MIGRATIONS`])
//! - `stockcast_forecasts`: the current forecast and recommendation per (store, SKU), upserted;
//!   an older epoch never overwrites a newer one.
//! - `stockcast_forecast_history`: every forecast record emitted, appended; keyed by (store, SKU,
//!   epoch end) and indexed by epoch end.
//! - `stockcast_epochs`: one row per progress record (the `stockcast.epochs` value).
//!
//! # Guarantees
//! Each advance is written in one transaction of three statements, each a single batched
//! `INSERT .. SELECT FROM UNNEST(..)` whatever the number of rows: a reader sees all of an
//! advance or none of it. Writes are idempotent: the history and the epochs ignore rows they
//! already hold and the current table keeps the newest epoch, so an advance retried after a
//! failure (or republished after a restart) writes nothing twice. The Kafka sink commits its
//! input offsets only after this commit (see [`crate::kafka`]).
//!
//! A failed write is retried by the caller with backoff; the connection is re-established on
//! each attempt after an error.

use std::time::Duration;

use tokio_postgres::{Client, NoTls};

use crate::records::EpochRecord;
use crate::records::ForecastRecord;

/// Schema versions, applied in order, each once, in one transaction with the version row.
pub const MIGRATIONS: [(i32, &str); 1] = [(
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
)];

/// Why the mart could not be written.
#[derive(Debug, thiserror::Error)]
pub enum MartError {
    /// Connecting, migrating or writing failed.
    #[error("postgres: {0}")]
    Db(#[from] tokio_postgres::Error),
    /// The local runtime could not start.
    #[error("postgres: {0}")]
    Runtime(#[from] std::io::Error),
}

/// A connection to the mart, with its own single-threaded runtime.
pub struct Mart {
    url: String,
    runtime: tokio::runtime::Runtime,
    client: Option<Client>,
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
        })
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
            // Start from a fresh connection next time.
            self.client = None;
        }
        result
    }

    fn try_write(
        &mut self,
        records: &[ForecastRecord],
        progress: &[EpochRecord],
    ) -> Result<(), MartError> {
        let history = Columns::of(records.iter());
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
            tx.execute(
                "INSERT INTO stockcast_forecast_history (store_id, sku_id, epoch_end, record)
                 SELECT s, k, e::timestamptz, r::jsonb
                 FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[]) AS u(s, k, e, r)
                 ON CONFLICT DO NOTHING",
                &[&history.store, &history.sku, &history.epoch, &history.json],
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

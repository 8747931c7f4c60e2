//! The mart's tables: the migrations that create them, the columns a forecast record is stored
//! in, the views that give it back as JSON, and the daily partitions of the history.
//!
//! A forecast record is stored in typed columns (`double precision[]` for the quantiles) rather
//! than as jsonb: PostgreSQL parses and stores a jsonb record of a daily forecast (about 2 KB of
//! text) several times slower than the same values in columns, and columns are what reports
//! query. `stockcast_forecast_records` and `stockcast_forecast_history_records` rebuild the
//! record as JSON, equal to the `forecasts.jsonl` line.

use chrono::NaiveDate;
use tokio_postgres::types::Type;

/// The columns of one forecast record, in the order of [`RECORD_COLUMNS`]: the history table,
/// the current table (which adds `forecast_total`) and the staging table have them all.
macro_rules! record_columns {
    () => {
        "store_id text NOT NULL,
        sku_id text NOT NULL,
        epoch_end timestamptz NOT NULL,
        schema_hash text NOT NULL,
        model text NOT NULL,
        model_version text NOT NULL,
        fallback_reason text,
        forecast double precision[] NOT NULL,
        forecast_p10 double precision[] NOT NULL,
        forecast_p90 double precision[] NOT NULL,
        on_hand double precision,
        on_order double precision,
        order_qty double precision,
        order_up_to double precision NOT NULL,
        reorder_point double precision NOT NULL,
        cover_periods double precision,
        stockout_risk double precision,
        lead_time_days double precision NOT NULL,
        review_days double precision NOT NULL,
        service_level double precision NOT NULL,
        pack_size double precision NOT NULL,
        min_order_qty double precision NOT NULL,
        active boolean NOT NULL"
    };
}

/// The same columns taken from a first-schema jsonb `record`.
macro_rules! columns_from_json {
    () => {
        "store_id, sku_id, epoch_end, record->>'schema_hash', record->>'model',
        record->>'model_version', record->>'fallback_reason',
        ARRAY(SELECT jsonb_array_elements_text(record->'forecast')::float8),
        ARRAY(SELECT jsonb_array_elements_text(record->'forecast_p10')::float8),
        ARRAY(SELECT jsonb_array_elements_text(record->'forecast_p90')::float8),
        (record->>'on_hand')::float8, (record->>'on_order')::float8,
        (record#>>'{recommendation,order_qty}')::float8,
        (record#>>'{recommendation,order_up_to}')::float8,
        (record#>>'{recommendation,reorder_point}')::float8,
        (record#>>'{recommendation,cover_periods}')::float8,
        (record#>>'{recommendation,stockout_risk}')::float8,
        (record#>>'{recommendation,lead_time_days}')::float8,
        (record#>>'{recommendation,review_days}')::float8,
        (record#>>'{recommendation,service_level}')::float8,
        (record#>>'{recommendation,pack_size}')::float8,
        (record#>>'{recommendation,min_order_qty}')::float8,
        (record#>>'{recommendation,active}')::boolean"
    };
}

/// The record as JSON, from the columns (the `forecasts.jsonl` line's fields).
macro_rules! record_json {
    () => {
        "jsonb_build_object(
            'epoch_end', to_char(epoch_end AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),
            'store_id', store_id, 'sku_id', sku_id, 'schema_hash', schema_hash, 'model', model,
            'model_version', model_version, 'fallback_reason', fallback_reason,
            'forecast', to_jsonb(forecast), 'forecast_p10', to_jsonb(forecast_p10),
            'forecast_p90', to_jsonb(forecast_p90), 'on_hand', on_hand, 'on_order', on_order,
            'recommendation', jsonb_build_object(
                'order_qty', order_qty, 'order_up_to', order_up_to,
                'reorder_point', reorder_point, 'cover_periods', cover_periods,
                'stockout_risk', stockout_risk, 'lead_time_days', lead_time_days,
                'review_days', review_days, 'service_level', service_level,
                'pack_size', pack_size, 'min_order_qty', min_order_qty, 'active', active))"
    };
}

/// The record columns' names and their types in the binary `COPY`.
pub const RECORD_COLUMNS: [(&str, Type); 23] = [
    ("store_id", Type::TEXT),
    ("sku_id", Type::TEXT),
    ("epoch_end", Type::TIMESTAMPTZ),
    ("schema_hash", Type::TEXT),
    ("model", Type::TEXT),
    ("model_version", Type::TEXT),
    ("fallback_reason", Type::TEXT),
    ("forecast", Type::FLOAT8_ARRAY),
    ("forecast_p10", Type::FLOAT8_ARRAY),
    ("forecast_p90", Type::FLOAT8_ARRAY),
    ("on_hand", Type::FLOAT8),
    ("on_order", Type::FLOAT8),
    ("order_qty", Type::FLOAT8),
    ("order_up_to", Type::FLOAT8),
    ("reorder_point", Type::FLOAT8),
    ("cover_periods", Type::FLOAT8),
    ("stockout_risk", Type::FLOAT8),
    ("lead_time_days", Type::FLOAT8),
    ("review_days", Type::FLOAT8),
    ("service_level", Type::FLOAT8),
    ("pack_size", Type::FLOAT8),
    ("min_order_qty", Type::FLOAT8),
    ("active", Type::BOOL),
];

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
    (2, TYPED_AND_PARTITIONED),
];

/// Migration 2: records in typed columns, and the history partitioned by day of `epoch_end`
/// (UTC), so that retention drops whole partitions instead of deleting rows. The rows of the
/// first schema move over (history rows into the partitions of their days).
const TYPED_AND_PARTITIONED: &str = concat!(
    "ALTER TABLE stockcast_forecast_history RENAME TO stockcast_forecast_history_v1;
    ALTER INDEX stockcast_forecast_history_by_epoch RENAME TO stockcast_forecast_history_v1_by_epoch;
    ALTER TABLE stockcast_forecast_history_v1
        RENAME CONSTRAINT stockcast_forecast_history_pkey TO stockcast_forecast_history_v1_pkey;
    CREATE TABLE stockcast_forecast_history (",
    record_columns!(),
    ",
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
    INSERT INTO stockcast_forecast_history SELECT ",
    columns_from_json!(),
    " FROM stockcast_forecast_history_v1;
    DROP TABLE stockcast_forecast_history_v1;
    ALTER TABLE stockcast_forecasts RENAME TO stockcast_forecasts_v1;
    ALTER TABLE stockcast_forecasts_v1
        RENAME CONSTRAINT stockcast_forecasts_pkey TO stockcast_forecasts_v1_pkey;
    CREATE TABLE stockcast_forecasts (",
    record_columns!(),
    ",
        forecast_total double precision NOT NULL,
        PRIMARY KEY (store_id, sku_id)
    ) WITH (fillfactor = 50);
    INSERT INTO stockcast_forecasts SELECT ",
    columns_from_json!(),
    ", forecast_total FROM stockcast_forecasts_v1;
    DROP TABLE stockcast_forecasts_v1;
    CREATE VIEW stockcast_forecast_records AS
        SELECT store_id, sku_id, epoch_end, ",
    record_json!(),
    " AS record FROM stockcast_forecasts;
    CREATE VIEW stockcast_forecast_history_records AS
        SELECT store_id, sku_id, epoch_end, ",
    record_json!(),
    " AS record FROM stockcast_forecast_history;"
);

/// The staging table an advance's records are copied into (emptied at commit): the record
/// columns, then `forecast_total` and whether the row is the newest of its series in the
/// advance, both computed by the writer so that the upsert of the current table neither sums
/// arrays nor sorts.
pub const CREATE_STAGING: &str = "CREATE TEMP TABLE IF NOT EXISTS stockcast_forecasts_in
    (LIKE stockcast_forecast_history, forecast_total double precision NOT NULL,
     newest boolean NOT NULL) ON COMMIT DELETE ROWS";

/// The staging table's columns after the record's, in the binary `COPY`.
pub const STAGING_EXTRA_COLUMNS: [(&str, Type); 2] =
    [("forecast_total", Type::FLOAT8), ("newest", Type::BOOL)];

/// The staging table's session buffers. Temporary tables live in them and spill to disk
/// beyond (PostgreSQL's default, 8 MB, holds about 6,000 daily records). Set before the
/// session first touches a temporary table; memory is taken only as used.
pub const STAGING_BUFFERS: &str = "SET temp_buffers = '128MB'";

/// The binary `COPY` into the staging table.
pub fn copy_statement() -> String {
    let extra = STAGING_EXTRA_COLUMNS.map(|(name, _)| name).join(", ");
    format!(
        "COPY stockcast_forecasts_in ({}, {extra}) FROM STDIN (FORMAT binary)",
        column_list()
    )
}

/// The column types of the binary `COPY`, in its order.
pub fn copy_types() -> Vec<Type> {
    RECORD_COLUMNS
        .iter()
        .chain(&STAGING_EXTRA_COLUMNS)
        .map(|(_, ty)| ty.clone())
        .collect()
}

fn column_list() -> String {
    RECORD_COLUMNS
        .iter()
        .map(|(name, _)| *name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// From the staging table into the history; with `skip_held`, rows it holds already are left
/// alone, without, they fail the statement.
pub fn insert_history(skip_held: bool) -> String {
    let columns = column_list();
    let conflict = if skip_held {
        " ON CONFLICT DO NOTHING"
    } else {
        ""
    };
    format!(
        "INSERT INTO stockcast_forecast_history ({columns})
         SELECT {columns} FROM stockcast_forecasts_in{conflict}"
    )
}

/// From the staging table, the newest record of each series into the current table; an older
/// epoch never overwrites a newer one.
pub fn upsert_current() -> String {
    let columns = column_list();
    let updated = RECORD_COLUMNS
        .iter()
        .map(|(name, _)| *name)
        .filter(|name| !matches!(*name, "store_id" | "sku_id"))
        .chain(["forecast_total"])
        .map(|name| format!("{name} = EXCLUDED.{name}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "INSERT INTO stockcast_forecasts AS f ({columns}, forecast_total)
         SELECT {columns}, forecast_total FROM stockcast_forecasts_in WHERE newest
         ON CONFLICT (store_id, sku_id) DO UPDATE SET {updated}
         WHERE f.epoch_end <= EXCLUDED.epoch_end"
    )
}

const HISTORY_PARTITION_PREFIX: &str = "stockcast_forecast_history_p";

/// The name of the history partition of `day`.
pub fn partition_name(day: NaiveDate) -> String {
    format!("{HISTORY_PARTITION_PREFIX}{}", day.format("%Y%m%d"))
}

/// The day a history partition's name stands for.
pub fn partition_day(name: &str) -> Option<NaiveDate> {
    let digits = name.strip_prefix(HISTORY_PARTITION_PREFIX)?;
    NaiveDate::parse_from_str(digits, "%Y%m%d").ok()
}

/// Creates the history partition of `day` unless it exists.
pub fn create_partition(day: NaiveDate) -> String {
    let next = day.succ_opt().unwrap_or(NaiveDate::MAX);
    format!(
        "CREATE TABLE IF NOT EXISTS {} PARTITION OF stockcast_forecast_history \
         FOR VALUES FROM ('{day}T00:00:00Z') TO ('{next}T00:00:00Z')",
        partition_name(day)
    )
}

/// The partitions of the history.
pub const LIST_PARTITIONS: &str = "SELECT c.relname::text FROM pg_inherits i
    JOIN pg_class c ON c.oid = i.inhrelid
    WHERE i.inhparent = 'stockcast_forecast_history'::regclass";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_names_round_trip_to_their_day() {
        let day = NaiveDate::from_ymd_opt(2024, 2, 29).unwrap();
        assert_eq!(partition_name(day), "stockcast_forecast_history_p20240229");
        assert_eq!(partition_day(&partition_name(day)), Some(day));
        assert_eq!(partition_day("stockcast_forecast_history_v1"), None);
        assert!(create_partition(day).contains("TO ('2024-03-01T00:00:00Z')"));
    }

    #[test]
    fn the_upsert_sets_every_column_but_the_key() {
        let sql = upsert_current();
        assert_eq!(
            sql.matches(" = EXCLUDED.").count(),
            RECORD_COLUMNS.len() - 2 + 1
        );
        assert!(!sql.contains("store_id = EXCLUDED"));
    }
}

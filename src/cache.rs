//! The Redis lookup cache: the latest forecast record of every series, for services that need
//! one series' numbers fast.
//!
//! One string value per series under `<prefix>forecast:<store_id>:<sku_id>` holding the
//! `forecasts.jsonl` record (recommendation included), written with a TTL so series that stop
//! changing age out. Each advance is one atomic pipeline (`MULTI`/`EXEC`) of `SET .. EX ..`
//! with the newest record of each series in it; rewriting it is harmless, so a retried advance
//! is idempotent. As with the mart, the worker commits its input offsets only after the
//! pipeline succeeded, and retries with backoff while Redis is unreachable.

use crate::records::json::Json;
use crate::records::ForecastRecord;

/// Why the cache could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// Redis failed or could not be reached.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// A record could not be encoded (a bug: retrying cannot help).
    #[error("cannot encode a forecast record: {0}")]
    Encode(#[from] serde_json::Error),
}

/// The key of a series under `prefix`.
fn key(prefix: &str, store: &str, sku: &str) -> String {
    format!("{prefix}forecast:{store}:{sku}")
}

/// How long connecting, or any one read or write of a pipeline, may wait for Redis before the
/// write fails (and is retried on a new connection): a server that accepts and never answers
/// must not stall the worker.
const WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A connection to the cache.
pub struct Cache {
    client: redis::Client,
    connection: Option<redis::Connection>,
    prefix: String,
    ttl_secs: u64,
}

impl Cache {
    /// A cache at `url` (`redis://host:port/db`); connects at the first write.
    pub fn new(url: &str, prefix: &str, ttl_secs: u64) -> Result<Self, CacheError> {
        Ok(Cache {
            client: redis::Client::open(url)?,
            connection: None,
            prefix: prefix.to_string(),
            ttl_secs,
        })
    }

    /// The key of a series.
    pub fn key(&self, store: &str, sku: &str) -> String {
        key(&self.prefix, store, sku)
    }

    /// Writes the newest of `records` per series in one atomic pipeline.
    pub fn write(&mut self, records: &[ForecastRecord]) -> Result<(), CacheError> {
        if records.is_empty() {
            return Ok(());
        }
        let mut newest: std::collections::HashMap<(&str, &str), &ForecastRecord> =
            Default::default();
        for r in records {
            newest.insert((&*r.store_id, &*r.sku_id), r);
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        for ((store, sku), r) in newest {
            let mut value = Vec::with_capacity(2048);
            r.write_json(&mut value)?;
            pipe.set_ex(self.key(store, sku), value, self.ttl_secs)
                .ignore();
        }
        let result = match self.connection.as_mut() {
            Some(c) => pipe.query::<()>(c),
            None => {
                let mut c = self.client.get_connection_with_timeout(WRITE_TIMEOUT)?;
                c.set_read_timeout(Some(WRITE_TIMEOUT))?;
                c.set_write_timeout(Some(WRITE_TIMEOUT))?;
                let r = pipe.query::<()>(&mut c);
                self.connection = Some(c);
                r
            }
        };
        if result.is_err() {
            // Reconnect at the next attempt.
            self.connection = None;
        }
        Ok(result?)
    }
}

/// Reads single series from the cache: how any process of a cluster answers the read API for a
/// series another process scored.
#[derive(Clone)]
pub struct CacheReader {
    client: redis::Client,
    prefix: String,
}

/// How long a lookup may wait for Redis.
const LOOKUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

impl CacheReader {
    /// A reader of the cache at `url` under `prefix`; connects at each lookup.
    pub fn new(url: &str, prefix: &str) -> Result<Self, CacheError> {
        Ok(CacheReader {
            client: redis::Client::open(url)?,
            prefix: prefix.to_string(),
        })
    }

    /// The cached record of a series, if there is one. A value that is not a record (written
    /// by something else under this prefix) counts as none, with a warning.
    pub fn get(&self, store: &str, sku: &str) -> Result<Option<ForecastRecord>, CacheError> {
        let mut c = self.client.get_connection_with_timeout(LOOKUP_TIMEOUT)?;
        c.set_read_timeout(Some(LOOKUP_TIMEOUT))?;
        let key = key(&self.prefix, store, sku);
        let value: Option<Vec<u8>> = redis::cmd("GET").arg(&key).query(&mut c)?;
        Ok(value.and_then(|v| match serde_json::from_slice(&v) {
            Ok(rec) => Some(rec),
            Err(e) => {
                tracing::warn!(key = %crate::decode::shown(&key), error = %e, "the cached value is not a forecast record");
                None
            }
        }))
    }
}

//! The Redis lookup cache as a sink: the newest forecast record of each series an advance
//! scored, in one atomic pipeline ([`crate::cache`] has the key layout).

use super::build::Advance;
use super::sink::{Context, OutputError, Sink, WriteError};
use crate::cache::{Cache, CacheError};
use crate::config::RedisConfig;

/// Writes advances into the cache.
pub struct CacheSink(Cache);

impl CacheSink {
    /// The cache at `cfg.url`, under its key prefix and TTL; connects at the first write.
    pub fn new(cfg: &RedisConfig) -> Result<CacheSink, OutputError> {
        Ok(CacheSink(Cache::new(
            &cfg.url,
            &cfg.key_prefix,
            cfg.ttl_secs,
        )?))
    }
}

impl Sink for CacheSink {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn write(&mut self, advance: &Advance, _: &mut Context<'_>) -> Result<u64, WriteError> {
        self.0.write(&advance.forecasts).map_err(|e| match e {
            CacheError::Encode(_) => WriteError::Fatal(Box::new(e)),
            CacheError::Redis(_) => WriteError::transient(e),
        })?;
        Ok(advance.forecasts.len() as u64)
    }
}

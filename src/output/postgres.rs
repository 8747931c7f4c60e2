//! The PostgreSQL inventory mart as a sink: each advance's forecasts (history and current
//! tables) and progress rows in one transaction ([`crate::mart`] has the schema).

use super::build::Advance;
use super::sink::{Context, OutputError, Sink, WriteError};
use crate::config::PostgresConfig;
use crate::mart::Mart;

/// Writes advances into the mart.
pub struct MartSink(Mart);

impl MartSink {
    /// The mart at `cfg.url`, with its history retention; connects at the first write.
    pub fn new(cfg: &PostgresConfig) -> Result<MartSink, OutputError> {
        Ok(MartSink(
            Mart::new(&cfg.url)?.with_retention(cfg.history_retention_days),
        ))
    }
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
        self.0
            .write(records, progress)
            .map_err(WriteError::transient)?;
        Ok((records.len() + progress.len()) as u64)
    }
}

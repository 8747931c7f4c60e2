//! Kafka in and out: the long-running worker (`run`), the backfill publisher (`load`) and the
//! embedded demo cluster.
//!
//! ```text
//! input topics ──► stream: N timely workers, each reading its own partitions (static assignment)
//!   sales, stock        decode ─► dead letters (original bytes, topic, partition, offset, reason)
//!   catalog, stores,    per-partition watermark ─► global watermark (broadcast between workers)
//!   promotions          events ─► dataflows::input ─► feature dataflow ─► changed (key, features)
//!                            │
//!                            ▼  merged per advance of the closed-epoch frontier
//!                    output: score, plan ─► mart, cache ─► stockcast.forecasts ─► stockcast.epochs
//!                            ─► commit offsets (see [`crate::output`])
//! ```
//!
//! # Delivery guarantee
//! - **Input**: an offset is committed (under `kafka.group_id`, with the closed-epoch frontier in
//!   the commit metadata) only after every forecast derived from events below it, and the
//!   epoch's progress record, were acknowledged by the broker. Events consumed but still waiting
//!   for their epoch to open hold their partition's commit back.
//! - **State** is restored from the newest complete checkpoint when `[checkpoint] dir` is set
//!   (see [`crate::checkpoint`] and [`snapshot`]): every partition is read from the checkpoint's
//!   position. Without one, the worker rebuilds it by reading every input partition from the
//!   beginning (bounded by the topics' retention). Either way it suppresses the output of epochs
//!   below the committed frontier, and the dead letters below the committed offsets: a restart
//!   neither double counts an event nor republishes what was acknowledged.
//! - **Output**: at least once. Records are produced by an idempotent producer (no duplicates or
//!   reordering within a producer session; per-key order is kept because the key picks the
//!   partition). A crash after producing an epoch's forecasts and before its progress record may
//!   republish that epoch after restart. The progress record on `stockcast.epochs` is written only
//!   after the epoch's forecasts are acknowledged: a consumer that reads forecasts up to the last
//!   progress record has complete epochs. Transactions are not used (the brokers available here
//!   accept them without honouring them), so a `read_committed` consumer can still see the
//!   forecasts of an epoch whose progress record is not yet written.

pub mod admin;
pub mod client;
mod lag;
pub mod load;
pub mod offsets;
pub mod wire;

pub use self::client::{client_config, input_topics, partition_owner, Acks};

use std::sync::Arc;

use crate::pipeline::{snapshot, stream};

/// What a worker run did.
pub struct WorkerRun {
    /// What the sink wrote.
    pub stats: crate::output::Stats,
    /// The latest forecast of every series scored.
    pub latest: crate::records::Latest,
    /// The frontier a previous run had committed, if this run resumed.
    pub resumed_from: Option<dataflows::Epoch>,
    /// Wall-clock seconds.
    pub secs: f64,
}

/// Why a worker run failed.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The source or the dataflow failed.
    #[error(transparent)]
    Stream(#[from] stream::StreamError),
    /// The output path could not start, or stopped the run.
    #[error(transparent)]
    Output(#[from] crate::output::OutputError),
    /// The forecaster does not fit the feature schema.
    #[error(transparent)]
    Forecaster(#[from] crate::model::ForecasterError),
    /// The checkpoints cannot be read, or were taken with other settings.
    #[error(transparent)]
    Checkpoint(#[from] crate::checkpoint::CheckpointError),
}

/// Whether a series (by store and SKU name) is held by this process's workers: the dataflow
/// routes each series to worker `hash(key) % peers`.
fn series_holder(opts: &stream::StreamOptions) -> impl Fn(&str, &str) -> bool {
    use differential_dataflow::Hashable;
    let workers = opts.workers.max(1);
    let (process, processes) = opts
        .cluster
        .as_ref()
        .map_or((0, 1), |c| (c.process, c.hosts.len()));
    let peers = (workers * processes) as u64;
    move |store: &str, sku: &str| {
        let key = dataflows::Key {
            store: crate::ids::name_id(store),
            sku: crate::ids::name_id(sku),
        };
        (key.hashed() % peers) as usize / workers == process
    }
}

/// Opens `[checkpoint] dir` and reads the checkpoint to restore (none with `--from-scratch`),
/// or says at start that the state is not checkpointed.
fn open_checkpoints(
    cfg: &crate::config::Resolved,
    opts: &stream::StreamOptions,
) -> Result<Option<Arc<snapshot::Checkpoints>>, WorkerError> {
    use crate::checkpoint::{self, DirStore, Settings};
    let c = &cfg.checkpoint;
    if c.dir.is_empty() {
        tracing::warn!(
            "no [checkpoint] dir (or STOCKCAST_CHECKPOINT_DIR): the state lives in memory only, \
             and a restart rebuilds it by reading every input partition from its beginning"
        );
        return Ok(None);
    }
    let store = Arc::new(DirStore::new(&c.dir));
    let settings = Settings::of(cfg);
    let m = &opts.progress.metrics;
    let restore = if opts.from_scratch {
        tracing::warn!(dir = %c.dir, "--from-scratch: checkpoints are ignored; the state is rebuilt from the topics");
        None
    } else {
        let choice = checkpoint::newest(&*store, &settings)?;
        for (name, why) in &choice.corrupt {
            m.checkpoint_corrupt.inc();
            tracing::error!(checkpoint = %name, problem = %why, "corrupt checkpoint passed over; an older one is used");
        }
        choice.loaded
    };
    match &restore {
        Some(l) => {
            m.checkpoint_restores.inc();
            if let Ok(t) = chrono::DateTime::parse_from_rfc3339(&l.manifest.created_at) {
                m.checkpoint_written_at.set(t.timestamp());
            }
            m.checkpoint_bytes.set(l.manifest.bytes() as i64);
            if let Ok(mut latest) = opts.progress.latest.write() {
                // The read API of a process answers the series its own workers hold.
                let held = series_holder(opts);
                for r in l.latest.iter().filter(|r| held(&r.store_id, &r.sku_id)) {
                    latest.insert((r.store_id.clone(), r.sku_id.clone()), r.clone());
                }
                m.api_series.set(latest.len() as i64);
            }
            tracing::info!(
                checkpoint = %l.name,
                dir = %c.dir,
                epoch_start = %l.manifest.epoch_start,
                series = l.manifest.series(),
                written_at = %l.manifest.created_at,
                workers_then = l.manifest.workers,
                "restoring from checkpoint: reading resumes at its offsets"
            );
        }
        None if !opts.from_scratch => {
            tracing::info!(dir = %c.dir, "no complete checkpoint: building the state from the topics");
        }
        None => {}
    }
    Ok(Some(Arc::new(snapshot::Checkpoints {
        store,
        settings,
        every_epochs: c.every_epochs,
        min_interval: std::time::Duration::from_secs(c.min_interval_secs),
        keep: c.keep,
        nonce: rand::random(),
        restore,
    })))
}

/// Runs the worker: resumes after the frontier a previous run committed, consumes, scores and
/// publishes until `opts` says to stop. In a cluster every process scores and writes the series
/// its workers hold and commits its own partitions' offsets; process 0 also writes the progress
/// records.
pub fn run_worker(
    cfg: &crate::config::Resolved,
    opts: &stream::StreamOptions,
) -> Result<WorkerRun, WorkerError> {
    let started = std::time::Instant::now();
    let resumed_from = offsets::committed_frontier(cfg)?;
    let checkpoints = open_checkpoints(cfg, opts)?;
    if let Some(f) = resumed_from {
        tracing::info!(
            frontier = %crate::display::rfc3339(cfg.clock.epoch_start(f)),
            "resuming: output resumes at the committed frontier"
        );
    }
    let (scorer, watch) =
        crate::model::scorer(cfg, opts.progress.metrics.scoring_fallbacks.clone())?;
    let mut outputs = crate::output::Outputs::new(
        cfg,
        scorer,
        watch,
        resumed_from,
        opts.stop.clone(),
        Arc::clone(&opts.progress),
    )?;
    // The consumer lag, measured beside the workers while they run.
    let _lag = lag::spawn_lag_probe(cfg, opts);
    let input = Arc::new(offsets::Broker::new(cfg));
    stream::run(cfg, opts, input, checkpoints, &mut outputs)?;
    if let Some(why) = outputs.failure() {
        return Err(crate::output::OutputError::Halted(why.to_string()).into());
    }
    Ok(WorkerRun {
        stats: outputs.stats().clone(),
        latest: outputs.latest(),
        resumed_from,
        secs: started.elapsed().as_secs_f64(),
    })
}

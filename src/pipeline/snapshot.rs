//! Checkpoints in the streaming worker: when to cut, the worker's part, the manifest.
//!
//! # When
//! Epochs that are multiples of `[checkpoint] every_epochs` are barriers. Worker 0 decides at
//! each barrier it reaches whether a checkpoint is cut there (due once
//! `min_interval_secs` passed since the previous one and its own writer is idle), and tells
//! every worker through its beacon ([`Schedule`]). No worker moves its input past a barrier
//! worker 0 has not decided, so every worker cuts at the same epoch `F`.
//!
//! # How
//! A worker cuts when its input reaches `F`, before applying anything at `F`: it notes every
//! partition's position (the next offset and the offsets of events buffered for `F` or
//! later), the reference data by source partition and the names it knows ([`Cut`]). It then
//! keeps reading and applying at `F`, but does not move past `F` until its dataflow completed
//! every epoch before `F`; at that moment the features operator holds exactly the state of
//! those epochs, which the worker exports (the only stall), and a thread of its own encodes
//! and writes the part. Process 0's [`Coordinator`] writes the manifest once every worker's
//! part is written and the outputs of every epoch before `F` were acknowledged.
//!
//! When the run stops, every worker writes a last part after its dataflow drained: its state
//! is then everything it applied, and the checkpoint's epoch the latest of the workers' next
//! epochs (the manifest's reason is `stop`).

use std::collections::{BTreeMap, HashMap};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dataflows::input::Reference;
use dataflows::model::Id;
use dataflows::Epoch;
use serde::{Deserialize, Serialize};

use crate::checkpoint::{self, FileEntry, Manifest, OffsetEntry, Part, Position, Settings, Store};
use crate::source::files::FileKind;

use super::progress::Progress;
use crate::kafka::wire::Partition;

/// How a run checkpoints: the store, the settings and the schedule's parameters, and the
/// checkpoint it restored from.
pub struct Checkpoints {
    /// Where checkpoints go.
    pub store: Arc<dyn Store>,
    /// The settings of this run.
    pub settings: Settings,
    /// Barriers are multiples of this.
    pub every_epochs: u64,
    /// Least wall-clock time between two periodic checkpoints.
    pub min_interval: Duration,
    /// Complete checkpoints kept.
    pub keep: usize,
    /// Names this run's checkpoints (worker 0's, sent to every worker).
    pub nonce: u64,
    /// The checkpoint the run starts from.
    pub restore: Option<checkpoint::Loaded>,
}

/// Worker 0's checkpoint decisions, as its beacon carries them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    /// Every barrier up to this epoch is decided.
    pub decided_through: Epoch,
    /// The latest barrier where a checkpoint is cut (0: none).
    pub at: Epoch,
    /// Worker 0's nonce: names the run's checkpoints.
    pub nonce: u64,
}

/// The first barrier after `epoch`.
pub fn next_barrier(epoch: Epoch, every: u64) -> Epoch {
    (epoch / every.max(1))
        .saturating_add(1)
        .saturating_mul(every.max(1))
}

impl Schedule {
    /// The latest epoch an input may reach: not past a barrier still undecided.
    pub fn limit(&self, every: u64) -> Epoch {
        next_barrier(self.decided_through, every) - 1
    }

    /// Worker 0's decisions for the barriers up to `goal`, where its input is at `current`.
    /// `due` says whether a checkpoint may start now; the first barrier decided while it does
    /// is cut. Nothing is decided past a cut worker 0 has not reached.
    pub fn decide(&mut self, every: u64, current: Epoch, goal: Epoch, due: bool) -> bool {
        if self.at > current {
            return false;
        }
        loop {
            let barrier = next_barrier(self.decided_through, every);
            if barrier > goal {
                return false;
            }
            self.decided_through = barrier;
            if due {
                self.at = barrier;
                return true;
            }
        }
    }
}

/// What a worker notes when its input reaches a checkpoint's epoch.
pub struct Cut {
    /// The checkpoint's name.
    pub name: String,
    /// Its epoch.
    pub epoch: Epoch,
    /// `periodic` or `stop`.
    pub reason: &'static str,
    /// Every partition the worker reads.
    pub positions: Vec<Position>,
    /// Reference data by source partition.
    pub reference: Vec<(Partition, Reference)>,
    /// Store and SKU names.
    pub names: crate::ids::Names,
    /// When it was cut.
    pub at: Instant,
}

impl Cut {
    /// The part of `worker` (of `peers`), with the series exported from its dataflow.
    pub fn into_part(
        self,
        worker: usize,
        peers: usize,
        series: Vec<(dataflows::Key, dataflows::model::Rec, dataflows::model::Agg)>,
    ) -> (PartJob, Part) {
        let job = PartJob {
            name: self.name,
            reason: self.reason,
            cut_at: self.at,
        };
        let part = Part {
            epoch: self.epoch,
            worker,
            peers,
            positions: self.positions,
            reference: self.reference,
            stores: self.names.0,
            skus: self.names.1,
            series,
        };
        (job, part)
    }
}

/// Groups reference data by the partition each entity came from.
pub fn reference_by_partition(
    all: Reference,
    source: impl Fn(FileKind, Id) -> Option<Partition>,
) -> Vec<(Partition, Reference)> {
    let mut by: BTreeMap<Partition, Reference> = BTreeMap::new();
    let mut orphans = 0;
    for (id, p) in all.promos {
        match source(FileKind::Promotions, id) {
            Some(part) => by.entry(part).or_default().promos.push((id, p)),
            None => orphans += 1,
        }
    }
    for (id, p) in all.prices {
        match source(FileKind::Prices, id) {
            Some(part) => by.entry(part).or_default().prices.push((id, p)),
            None => orphans += 1,
        }
    }
    for (id, a) in all.items {
        match source(FileKind::Catalog, id) {
            Some(part) => by.entry(part).or_default().items.push((id, a)),
            None => orphans += 1,
        }
    }
    for (id, s) in all.stores {
        match source(FileKind::Stores, id) {
            Some(part) => by.entry(part).or_default().stores.push((id, s)),
            None => orphans += 1,
        }
    }
    if orphans > 0 {
        tracing::error!(
            entities = orphans,
            "reference entities of unknown origin left out of the checkpoint"
        );
    }
    by.into_iter().collect()
}

/// What the writer thread is asked to write, besides the part.
pub struct PartJob {
    name: String,
    reason: &'static str,
    cut_at: Instant,
}

/// A part written (or not), as reported to process 0.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PartDone {
    /// The checkpoint.
    pub name: String,
    /// Its reason.
    pub reason: String,
    /// The part's epoch.
    pub epoch: Epoch,
    /// The worker.
    pub worker: usize,
    /// Workers of the run.
    pub peers: usize,
    /// The file, or why it was not written.
    pub file: Result<FileEntry, String>,
    /// Positions of the worker's partitions.
    pub offsets: Vec<OffsetEntry>,
    /// Seconds since the cut when the part was written.
    pub secs: f64,
}

/// A worker's writer thread: encodes and writes one part at a time.
pub struct Writer {
    jobs: Option<mpsc::SyncSender<(PartJob, Part)>>,
    done: mpsc::Receiver<PartDone>,
    thread: Option<std::thread::JoinHandle<()>>,
    busy: usize,
}

impl Writer {
    /// Starts the thread.
    pub fn start(store: Arc<dyn Store>, settings: Settings) -> Writer {
        let (tx, rx) = mpsc::sync_channel::<(PartJob, Part)>(1);
        let (done_tx, done) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("stockcast-checkpoint".into())
            .spawn(move || {
                for (job, part) in rx {
                    let done = write_part(&*store, &settings, job, &part);
                    if done_tx.send(done).is_err() {
                        return;
                    }
                }
            })
            .ok();
        Writer {
            jobs: Some(tx),
            done,
            thread,
            busy: 0,
        }
    }

    /// Whether a part is being written.
    pub fn busy(&self) -> bool {
        self.busy > 0
    }

    /// Hands a part over; `false` if one is still being written (this one is dropped: its
    /// checkpoint will not complete).
    pub fn submit(&mut self, job: PartJob, part: Part) -> bool {
        let Some(tx) = &self.jobs else { return false };
        if self.busy > 0 {
            return false;
        }
        match tx.try_send((job, part)) {
            Ok(()) => {
                self.busy += 1;
                true
            }
            Err(_) => false,
        }
    }

    /// Parts written since the last call.
    pub fn finished(&mut self) -> Vec<PartDone> {
        let out: Vec<PartDone> = self.done.try_iter().collect();
        self.busy -= out.len().min(self.busy);
        out
    }

    /// Waits for what is being written, stops the thread, returns what finished.
    pub fn close(mut self) -> Vec<PartDone> {
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.done.try_iter().collect()
    }
}

fn write_part(store: &dyn Store, settings: &Settings, job: PartJob, part: &Part) -> PartDone {
    let file = checkpoint::part_name(part.worker);
    let bytes = checkpoint::encode(settings, part);
    let entry = FileEntry {
        file: file.clone(),
        bytes: bytes.len() as u64,
        crc32: checkpoint::file_crc(&bytes),
        items: part.series_count(),
    };
    let result = store
        .put(&format!("{}/{file}", job.name), &bytes)
        .map(|()| entry)
        .map_err(|e| format!("writing {}/{}/{file}: {e}", store.describe(), job.name));
    PartDone {
        name: job.name,
        reason: job.reason.to_string(),
        epoch: part.epoch,
        worker: part.worker,
        peers: part.peers,
        file: result,
        offsets: part
            .positions
            .iter()
            .map(|p| OffsetEntry {
                topic: p.partition.topic.clone(),
                partition: p.partition.partition,
                resume_offset: p.resume_offset(),
                next_offset: p.next_offset,
            })
            .collect(),
        secs: job.cut_at.elapsed().as_secs_f64(),
    }
}

/// Process 0's side: completes checkpoints whose parts are all written and whose epochs'
/// outputs were acknowledged.
pub struct Coordinator {
    checkpoints: Arc<Checkpoints>,
    progress: Arc<Progress>,
    processes: usize,
    parts: HashMap<String, Vec<PartDone>>,
}

impl Coordinator {
    /// For a run of `processes` processes.
    pub fn new(checkpoints: Arc<Checkpoints>, progress: Arc<Progress>, processes: usize) -> Self {
        Coordinator {
            checkpoints,
            progress,
            processes,
            parts: HashMap::new(),
        }
    }

    /// Takes in reported parts.
    pub fn absorb(&mut self, done: Vec<PartDone>) {
        let m = &self.progress.metrics;
        for d in done {
            if let Err(e) = &d.file {
                m.checkpoint_failures.with_label_values(&["io"]).inc();
                tracing::error!(checkpoint = %d.name, worker = d.worker, error = %e, "checkpoint part not written");
            }
            self.parts.entry(d.name.clone()).or_default().push(d);
        }
    }

    /// Writes the manifest of every checkpoint whose parts are all in and whose epoch is at
    /// or below `delivered` (every epoch before it acknowledged; `None`: everything).
    pub fn complete(&mut self, delivered: Option<Epoch>, clock: &dataflows::Clock) {
        let ready: Vec<String> = self
            .parts
            .iter()
            .filter(|(_, parts)| {
                let peers = parts.first().map_or(usize::MAX, |p| p.peers);
                let epoch = parts.iter().map(|p| p.epoch).max().unwrap_or(0);
                parts.len() >= peers && delivered.is_none_or(|d| epoch <= d)
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in ready {
            let Some(parts) = self.parts.remove(&name) else {
                continue;
            };
            if parts.iter().any(|p| p.file.is_err()) {
                // Counted and logged when reported; the previous checkpoint stays the newest.
                continue;
            }
            let epoch = parts.iter().map(|p| p.epoch).max().unwrap_or(0);
            match self.write_manifest(&name, parts, clock) {
                Ok(()) => self.forget_older(epoch),
                Err(e) => {
                    self.progress
                        .metrics
                        .checkpoint_failures
                        .with_label_values(&["io"])
                        .inc();
                    tracing::error!(checkpoint = %name, error = %e, "checkpoint manifest not written");
                }
            }
        }
    }

    /// Forgets the parts of checkpoints older than `epoch`, which just completed: they can no
    /// longer be the newest (a worker skipped them), and pruning deletes their files.
    fn forget_older(&mut self, epoch: Epoch) {
        self.parts
            .retain(|_, parts| parts.iter().any(|p| p.epoch >= epoch));
    }

    fn write_manifest(
        &self,
        name: &str,
        mut parts: Vec<PartDone>,
        clock: &dataflows::Clock,
    ) -> Result<(), String> {
        let c = &self.checkpoints;
        let store = &*c.store;
        parts.sort_by_key(|p| p.worker);
        let epoch = parts.iter().map(|p| p.epoch).max().unwrap_or(0);
        let latest: Vec<crate::records::ForecastRecord> = self
            .progress
            .latest
            .read()
            .map(|l| l.values().cloned().collect())
            .unwrap_or_default();
        let json = serde_json::to_vec(&latest).map_err(|e| e.to_string())?;
        let bytes = checkpoint::encode(&c.settings, &json);
        store
            .put(&format!("{name}/{}", checkpoint::LATEST), &bytes)
            .map_err(|e| e.to_string())?;
        let latest = FileEntry {
            file: checkpoint::LATEST.to_string(),
            bytes: bytes.len() as u64,
            crc32: checkpoint::file_crc(&bytes),
            items: latest.len() as u64,
        };
        let mut offsets: Vec<OffsetEntry> = parts
            .iter()
            .flat_map(|p| p.offsets.iter().cloned())
            .collect();
        offsets.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        let cut_secs = parts.iter().map(|p| p.secs).fold(0.0, f64::max);
        let manifest = Manifest {
            format: checkpoint::FORMAT_VERSION,
            epoch,
            epoch_start: crate::display::rfc3339(clock.epoch_start(epoch)),
            created_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            reason: parts
                .first()
                .map_or("periodic".to_string(), |p| p.reason.clone()),
            settings: c.settings.clone(),
            workers: parts.first().map_or(0, |p| p.peers),
            processes: self.processes,
            parts: parts.into_iter().filter_map(|p| p.file.ok()).collect(),
            latest: Some(latest),
            offsets,
        };
        let text = serde_json::to_vec_pretty(&manifest).map_err(|e| e.to_string())?;
        store
            .put(&format!("{name}/{}", checkpoint::MANIFEST), &text)
            .map_err(|e| e.to_string())?;
        let m = &self.progress.metrics;
        m.checkpoints_written.inc();
        m.checkpoint_bytes.set(manifest.bytes() as i64);
        m.checkpoint_written_at.set(chrono::Utc::now().timestamp());
        m.checkpoint_seconds.observe(cut_secs);
        tracing::info!(
            checkpoint = %name,
            epoch_start = %manifest.epoch_start,
            series = manifest.series(),
            bytes = manifest.bytes(),
            reason = %manifest.reason,
            "checkpoint written"
        );
        match checkpoint::prune(store, c.keep, c.nonce) {
            Ok(deleted) if !deleted.is_empty() => {
                tracing::debug!(?deleted, "older checkpoints deleted");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "pruning checkpoints"),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn barriers_are_decided_in_order_and_a_cut_waits_for_worker_0() {
        let mut s = Schedule::default();
        assert_eq!(
            s.limit(4),
            3,
            "nothing decided: stop before the first barrier"
        );
        assert!(!s.decide(4, 0, 10, false));
        assert_eq!((s.decided_through, s.at), (8, 0));
        assert_eq!(s.limit(4), 11);
        assert!(s.decide(4, 9, 30, true), "due: the next barrier is cut");
        assert_eq!((s.decided_through, s.at), (12, 12));
        assert!(!s.decide(4, 10, 30, true), "nothing past a cut not reached");
        assert_eq!(s.limit(4), 15);
        assert!(s.decide(4, 12, 30, true));
        assert_eq!(s.at, 16);
    }
}

//! Checkpoints of the streaming worker's state, and restoring from them.
//!
//! # What a checkpoint is
//! At one epoch `F` of the closed frontier (every epoch before `F` closed, nothing of `F` or
//! later applied), every timely worker writes one part:
//! - the series records of its features operator ([`dataflows::dataflow::StateView::export`]):
//!   per series its period totals inside the retention window, one record carrying the stock
//!   position of older periods, its registrations. Fed into a new dataflow they rebuild the
//!   same windows, running totals and features; what the new dataflow emits for them is
//!   dropped, being what the old one emitted already;
//! - for each input partition it reads: the next offset, the offsets of events read but
//!   buffered for epochs `>= F`, the largest event time, and the reference data (catalog,
//!   stores, promotions) whose records came from that partition;
//! - the names of the stores and SKUs it read.
//!
//! Process 0 then writes the manifest, once every part is written and the outputs of every
//! epoch before `F` are acknowledged by the sinks and their offsets committed: a checkpoint
//! with a manifest is complete, one without is not and is never read. It writes beside it the
//! read API's latest records. Restoring reads the newest complete checkpoint, gives each worker
//! the series whose key hashes to it and the partitions (with their reference data) it now
//! owns, so a checkpoint restores into any number of workers or processes.
//!
//! # Files
//! Every file carries a header (magic, format version, CRC-32 of the rest, length) and the
//! [`Settings`] that shape the state: a file that does not check out is corrupt, and the
//! previous complete checkpoint is used; a checkpoint taken with other settings is refused
//! with the differences named. Writes go to a temporary name, are synced and renamed
//! ([`store::DirStore`]).
//!
//! Longer than 600 lines with its unit tests: the format, the manifest, loading and pruning are
//! kept together because they must agree byte for byte; the store is in `store.rs`.

pub mod store;

use std::collections::HashMap;
use std::io;

use bincode::Options;
use dataflows::input::Reference;
use dataflows::model::{Agg, Id, Rec};
use dataflows::{Epoch, Key};
use serde::{Deserialize, Serialize};

pub use store::{DirStore, Store};

use crate::config::Resolved;
use crate::kafka::wire::Partition;
use crate::records::ForecastRecord;

/// The version of the file layout; a reader refuses other versions. 2: reference data holds the
/// price plan.
pub const FORMAT_VERSION: u32 = 2;

/// The first bytes of every checkpoint file.
const MAGIC: &[u8; 8] = b"STKCKPT\0";

/// Bytes of the header: magic, version, CRC-32, payload length.
const HEADER: usize = 8 + 4 + 4 + 8;

/// The manifest's file name inside a checkpoint.
pub const MANIFEST: &str = "MANIFEST.json";

/// The read API's records' file name inside a checkpoint.
pub const LATEST: &str = "latest.bin";

/// What shapes the checkpointed state: a checkpoint restores only under the same settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    /// Demand period (`day` or `week`).
    pub period: String,
    /// Epoch length, seconds.
    pub epoch_secs: u64,
    /// Periods of history each series keeps.
    pub retention_periods: u32,
    /// Hash of the feature schema (names and scales).
    pub schema_hash: String,
    /// How series are spread over the workers (the features operator's exchange).
    pub key_partitioning: String,
}

/// The key partitioning of this version: series go to worker `Key::hashed() % workers`.
const KEY_PARTITIONING: &str = "key-hashed-mod-workers/1";

impl Settings {
    /// The settings of a resolved config.
    pub fn of(cfg: &Resolved) -> Self {
        Settings {
            period: format!("{:?}", cfg.clock.period_kind()).to_lowercase(),
            epoch_secs: cfg.clock.epoch_secs(),
            retention_periods: cfg.spec.retention(),
            schema_hash: cfg.spec.schema().hash,
            key_partitioning: KEY_PARTITIONING.to_string(),
        }
    }

    /// `field: checkpoint value -> configured value` for every field that differs.
    pub fn differences(&self, configured: &Settings) -> Vec<String> {
        let mut out = Vec::new();
        let mut cmp = |name: &str, a: String, b: String| {
            if a != b {
                out.push(format!("{name}: checkpoint {a}, configured {b}"));
            }
        };
        cmp("period", self.period.clone(), configured.period.clone());
        cmp(
            "epoch_secs",
            self.epoch_secs.to_string(),
            configured.epoch_secs.to_string(),
        );
        cmp(
            "retention_periods (from the feature windows)",
            self.retention_periods.to_string(),
            configured.retention_periods.to_string(),
        );
        cmp(
            "feature schema hash",
            self.schema_hash.clone(),
            configured.schema_hash.clone(),
        );
        cmp(
            "key partitioning",
            self.key_partitioning.clone(),
            configured.key_partitioning.clone(),
        );
        out
    }
}

/// Where one input partition's reading stood at the cut.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// The partition.
    pub partition: Partition,
    /// The next offset to read: every record below was read.
    pub next_offset: i64,
    /// Offsets below `next_offset` of events read but buffered for the checkpoint's epoch or
    /// later: they are read again after a restore; every other record below `next_offset`
    /// is in the checkpoint.
    pub held: Vec<i64>,
    /// The largest event time read.
    pub max_ts: Option<i64>,
    /// The partition was idle at the cut (silent and caught up): after a restore it may count
    /// as idle at once; otherwise it holds time back until it speaks or a full idle timeout.
    pub idle: bool,
}

impl Position {
    /// Where reading resumes: the oldest held event, else the next offset.
    pub fn resume_offset(&self) -> i64 {
        self.held.first().copied().unwrap_or(self.next_offset)
    }
}

/// One worker's part of a checkpoint.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Part {
    /// The checkpoint's epoch.
    pub epoch: Epoch,
    /// The worker (global index) and the number of workers of the run that wrote it.
    pub worker: usize,
    /// Workers of that run.
    pub peers: usize,
    /// The partitions this worker read.
    pub positions: Vec<Position>,
    /// Reference data by the partition its records came from.
    pub reference: Vec<(Partition, Reference)>,
    /// Store names by id.
    pub stores: Vec<(Id, String)>,
    /// SKU names by id.
    pub skus: Vec<(Id, String)>,
    /// Series records of this worker's features operator.
    pub series: Vec<(Key, Rec, Agg)>,
}

impl Part {
    /// The series records, of every part in `parts`, of the series that worker `index` of
    /// `peers` holds: those whose key hashes to it, as the dataflow's exchange routes them.
    /// A part keeps each series' records together, so each key is hashed once.
    pub fn series_of(parts: &[Part], index: usize, peers: usize) -> Vec<(Key, Rec, Agg)> {
        use differential_dataflow::hashable::Hashable;
        let total: usize = parts.iter().map(|p| p.series.len()).sum();
        let mut mine = Vec::with_capacity(total / peers.max(1) + total / 64);
        let mut last: Option<(Key, bool)> = None;
        for part in parts {
            for record in &part.series {
                let key = record.0;
                let keep = match last {
                    Some((k, keep)) if k == key => keep,
                    _ => (key.hashed() % peers.max(1) as u64) as usize == index,
                };
                last = Some((key, keep));
                if keep {
                    mine.push(*record);
                }
            }
        }
        mine
    }

    /// Series in the part (their registration records).
    pub fn series_count(&self) -> u64 {
        self.series
            .iter()
            .filter(|(_, r, _)| *r == Rec::Registered)
            .count() as u64
    }
}

/// A file of the manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Name inside the checkpoint.
    pub file: String,
    /// Size in bytes.
    pub bytes: u64,
    /// CRC-32 of the payload (after the header).
    pub crc32: u32,
    /// Series (parts) or records (the read API's file) it holds.
    pub items: u64,
}

/// An input partition's position in the manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffsetEntry {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Where reading resumes.
    pub resume_offset: i64,
    /// The next offset not read when the checkpoint was cut.
    pub next_offset: i64,
}

/// What makes a checkpoint complete, written last.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`FORMAT_VERSION`].
    pub format: u32,
    /// The checkpoint's epoch: every epoch before it is in the state and its outputs were
    /// acknowledged.
    pub epoch: Epoch,
    /// When that epoch starts (RFC 3339, event time).
    pub epoch_start: String,
    /// When the manifest was written (RFC 3339, wall clock).
    pub created_at: String,
    /// `periodic` or `stop`.
    pub reason: String,
    /// The settings it was taken with.
    pub settings: Settings,
    /// Workers of the run that wrote it, and its processes.
    pub workers: usize,
    /// Processes of that run.
    pub processes: usize,
    /// The parts, one per worker.
    pub parts: Vec<FileEntry>,
    /// The read API's latest records.
    pub latest: Option<FileEntry>,
    /// Every input partition's position.
    pub offsets: Vec<OffsetEntry>,
}

impl Manifest {
    /// Series over all parts.
    pub fn series(&self) -> u64 {
        self.parts.iter().map(|p| p.items).sum()
    }

    /// Bytes over all files.
    pub fn bytes(&self) -> u64 {
        self.parts.iter().chain(&self.latest).map(|p| p.bytes).sum()
    }
}

/// Why a checkpoint file or checkpoint could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The store failed.
    #[error("checkpoint store {store}: {source}")]
    Io {
        /// The store.
        store: String,
        /// The error.
        source: io::Error,
    },
    /// A file is damaged or not a checkpoint file.
    #[error("checkpoint file {file} is corrupt: {why}")]
    Corrupt {
        /// The file.
        file: String,
        /// What is wrong.
        why: String,
    },
    /// A checkpoint from other settings.
    #[error(
        "checkpoint {name} in {store} was taken with other settings ({}); \
         restore with the settings it was taken with, or start with --from-scratch \
         (or another [checkpoint] dir) to rebuild from the topics",
        differences.join("; ")
    )]
    OtherSettings {
        /// The store.
        store: String,
        /// The checkpoint.
        name: String,
        /// What differs.
        differences: Vec<String>,
    },
}

fn bincode_options() -> impl bincode::Options {
    bincode::DefaultOptions::new().with_limit(u64::MAX)
}

/// A checkpoint file: header, settings, body.
pub fn encode<T: Serialize>(settings: &Settings, body: &T) -> Vec<u8> {
    let mut payload = Vec::new();
    // Neither can fail: both types serialize without maps of non-string keys or skips.
    let _ = bincode_options().serialize_into(&mut payload, settings);
    let _ = bincode_options().serialize_into(&mut payload, body);
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

/// The CRC-32 an encoded file carries.
pub fn file_crc(bytes: &[u8]) -> u32 {
    bytes
        .get(12..16)
        .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Reads a file written by [`encode`], checking everything the header promises.
pub fn decode<T: serde::de::DeserializeOwned>(
    file: &str,
    bytes: &[u8],
) -> Result<(Settings, T), CheckpointError> {
    let corrupt = |why: String| CheckpointError::Corrupt {
        file: file.to_string(),
        why,
    };
    if bytes.len() < HEADER || &bytes[..8] != MAGIC {
        return Err(corrupt("not a stockcast checkpoint file".into()));
    }
    let word =
        |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    let version = word(8);
    if version != FORMAT_VERSION {
        return Err(corrupt(format!(
            "format version {version}, this build reads {FORMAT_VERSION}"
        )));
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&bytes[16..24]);
    let len = u64::from_le_bytes(len);
    let payload = &bytes[HEADER..];
    if payload.len() as u64 != len {
        return Err(corrupt(format!(
            "{} bytes after the header, the header says {len} (torn write)",
            payload.len()
        )));
    }
    let crc = crc32fast::hash(payload);
    if crc != word(12) {
        return Err(corrupt(format!(
            "checksum {crc:08x}, the header says {:08x}",
            word(12)
        )));
    }
    // From the slice, not through `io::Read`: several times faster on large parts.
    let mut de = bincode::Deserializer::from_slice(payload, bincode_options());
    let settings = Settings::deserialize(&mut de).map_err(|e| corrupt(format!("settings: {e}")))?;
    let body = T::deserialize(&mut de).map_err(|e| corrupt(format!("body: {e}")))?;
    Ok((settings, body))
}

/// The name of the checkpoint at `epoch` written by the run with `nonce`: names sort by epoch.
pub fn checkpoint_name(epoch: Epoch, nonce: u64) -> String {
    format!("{epoch:012}-{nonce:016x}")
}

/// The name of the checkpoint written when the run with `nonce` stops (its epoch is known
/// only once every part is in: it is in the manifest).
pub fn final_name(nonce: u64) -> String {
    format!("stop-{nonce:016x}")
}

/// The epoch in a checkpoint's name (none for a stop checkpoint's).
fn name_epoch(name: &str) -> Option<Epoch> {
    name.split('-').next()?.parse().ok()
}

/// The file name of worker `worker`'s part.
pub fn part_name(worker: usize) -> String {
    format!("part-{worker:05}.bin")
}

/// A checkpoint read back whole.
#[derive(Debug)]
pub struct Loaded {
    /// Its name.
    pub name: String,
    /// Its manifest.
    pub manifest: Manifest,
    /// Every part.
    pub parts: Vec<Part>,
    /// The read API's records.
    pub latest: Vec<ForecastRecord>,
}

/// One checkpoint as a listing shows it.
#[derive(Clone, Debug, Serialize)]
pub struct Listing {
    /// Its name.
    pub name: String,
    /// `complete`, `incomplete` (no manifest: being written, or cut short) or `corrupt`.
    pub status: String,
    /// Why it is corrupt.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// Its epoch.
    pub epoch: Option<Epoch>,
    /// Bytes on disk.
    pub bytes: u64,
    /// The manifest, when complete.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manifest: Option<Manifest>,
}

fn io_err(store: &dyn Store) -> impl Fn(io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        store: store.describe(),
        source,
    }
}

/// Reads a checkpoint's manifest: `Ok(None)` when it has none (incomplete).
fn read_manifest(store: &dyn Store, name: &str) -> Result<Option<Manifest>, CheckpointError> {
    let file = format!("{name}/{MANIFEST}");
    let bytes = match store.get(&file) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(store)(e)),
    };
    let manifest: Manifest =
        serde_json::from_slice(&bytes).map_err(|e| CheckpointError::Corrupt {
            file: file.clone(),
            why: e.to_string(),
        })?;
    if manifest.format != FORMAT_VERSION {
        return Err(CheckpointError::Corrupt {
            file,
            why: format!(
                "format version {}, this build reads {FORMAT_VERSION}",
                manifest.format
            ),
        });
    }
    Ok(Some(manifest))
}

/// Every checkpoint in the store, newest epoch first, with its status.
pub fn list(store: &dyn Store) -> Result<Vec<Listing>, CheckpointError> {
    let mut out = Vec::new();
    for name in store.checkpoints().map_err(io_err(store))? {
        let bytes = store
            .files(&name)
            .map(|f| f.iter().map(|(_, b)| b).sum())
            .unwrap_or(0);
        let (status, problem, manifest) = match read_manifest(store, &name) {
            Ok(Some(m)) => {
                // The manifest's sizes must match the files: a part cut short is corrupt.
                let files: HashMap<String, u64> =
                    store.files(&name).unwrap_or_default().into_iter().collect();
                let bad = m
                    .parts
                    .iter()
                    .chain(&m.latest)
                    .find(|p| files.get(&p.file) != Some(&p.bytes));
                match bad {
                    Some(p) => (
                        "corrupt",
                        Some(format!("{} is missing or not {} bytes", p.file, p.bytes)),
                        Some(m),
                    ),
                    None => ("complete", None, Some(m)),
                }
            }
            Ok(None) => ("incomplete", None, None),
            Err(e) => ("corrupt", Some(e.to_string()), None),
        };
        out.push(Listing {
            epoch: manifest.as_ref().map(|m| m.epoch).or(name_epoch(&name)),
            name,
            status: status.to_string(),
            problem,
            bytes,
            manifest,
        });
    }
    out.sort_by(|a, b| {
        let created = |l: &Listing| l.manifest.as_ref().map(|m| m.created_at.clone());
        (b.epoch, created(b)).cmp(&(a.epoch, created(a)))
    });
    Ok(out)
}

/// Reads checkpoint `name` whole, checking every file.
pub fn load(
    store: &dyn Store,
    name: &str,
    settings: &Settings,
) -> Result<Option<Loaded>, CheckpointError> {
    let Some(manifest) = read_manifest(store, name)? else {
        return Ok(None);
    };
    let differences = manifest.settings.differences(settings);
    if !differences.is_empty() {
        return Err(CheckpointError::OtherSettings {
            store: store.describe(),
            name: name.to_string(),
            differences,
        });
    }
    let load_part = |entry: &FileEntry| -> Result<Part, CheckpointError> {
        let file = format!("{name}/{}", entry.file);
        let bytes = store.get(&file).map_err(|e| CheckpointError::Corrupt {
            file: file.clone(),
            why: e.to_string(),
        })?;
        if file_crc(&bytes) != entry.crc32 {
            return Err(CheckpointError::Corrupt {
                file,
                why: "its checksum is not the manifest's (a file of another write)".into(),
            });
        }
        let (_, part): (Settings, Part) = decode(&file, &bytes)?;
        // A stop checkpoint's epoch is the latest of its parts'.
        let fits = part.epoch == manifest.epoch
            || (manifest.reason == "stop" && part.epoch <= manifest.epoch);
        if !fits {
            return Err(CheckpointError::Corrupt {
                file,
                why: format!(
                    "part of epoch {}, the manifest's is {}",
                    part.epoch, manifest.epoch
                ),
            });
        }
        Ok(part)
    };
    // Parts are read and decoded on as many threads as there are cores: decoding is most of
    // reading a checkpoint.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = manifest.parts.len().div_ceil(threads).max(1);
    let parts: Vec<Part> = std::thread::scope(|scope| {
        let handles: Vec<_> = manifest
            .parts
            .chunks(chunk)
            .map(|entries| scope.spawn(|| entries.iter().map(load_part).collect::<Vec<_>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect::<Result<_, _>>()
    })?;
    let latest = match &manifest.latest {
        None => Vec::new(),
        Some(entry) => {
            let file = format!("{name}/{}", entry.file);
            let bytes = store.get(&file).map_err(|e| CheckpointError::Corrupt {
                file: file.clone(),
                why: e.to_string(),
            })?;
            let (_, json): (Settings, Vec<u8>) = decode(&file, &bytes)?;
            serde_json::from_slice(&json).map_err(|e| CheckpointError::Corrupt {
                file,
                why: e.to_string(),
            })?
        }
    };
    Ok(Some(Loaded {
        name: name.to_string(),
        manifest,
        parts,
        latest,
    }))
}

/// What choosing a checkpoint to restore found.
#[derive(Debug, Default)]
pub struct Choice {
    /// The newest complete checkpoint that checked out.
    pub loaded: Option<Loaded>,
    /// Newer checkpoints passed over as corrupt, with why.
    pub corrupt: Vec<(String, String)>,
}

/// The newest complete checkpoint whose files all check out; corrupt ones are passed over
/// (and reported in the choice), one from other settings is an error.
pub fn newest(store: &dyn Store, settings: &Settings) -> Result<Choice, CheckpointError> {
    let mut choice = Choice::default();
    // Newest epoch first (a stop checkpoint's is in its manifest), then newest written.
    let names: Vec<String> = list(store)?
        .into_iter()
        .filter(|l| l.status != "incomplete")
        .map(|l| l.name)
        .collect();
    for name in names {
        match load(store, &name, settings) {
            Ok(Some(loaded)) => {
                choice.loaded = Some(loaded);
                break;
            }
            Ok(None) => {}
            Err(e @ CheckpointError::OtherSettings { .. }) => return Err(e),
            Err(e @ CheckpointError::Io { .. }) => return Err(e),
            Err(e) => choice.corrupt.push((name, e.to_string())),
        }
    }
    Ok(choice)
}

/// Deletes all but the newest `keep` complete checkpoints, and every incomplete or corrupt one
/// older than the newest complete one (those newer may still be being written). The run with
/// `nonce` calls this: its own stop checkpoint, whose epoch is known only from its manifest,
/// may still be being written and is kept; another run's unfinished one is deleted.
pub fn prune(store: &dyn Store, keep: usize, nonce: u64) -> Result<Vec<String>, CheckpointError> {
    let ours = final_name(nonce);
    let listing = list(store)?;
    let newest_complete = listing
        .iter()
        .find(|l| l.status == "complete")
        .and_then(|l| l.epoch);
    let mut complete_seen = 0;
    let mut deleted = Vec::new();
    for l in &listing {
        let doomed = if l.status == "complete" {
            complete_seen += 1;
            complete_seen > keep.max(1)
        } else {
            match l.epoch {
                Some(e) => newest_complete.is_some_and(|n| e < n),
                None => l.name != ours && newest_complete.is_some(),
            }
        };
        if doomed {
            store.delete(&l.name).map_err(io_err(store))?;
            deleted.push(l.name.clone());
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            period: "day".into(),
            epoch_secs: 900,
            retention_periods: 56,
            schema_hash: "abc".into(),
            key_partitioning: KEY_PARTITIONING.into(),
        }
    }

    #[test]
    fn files_round_trip_and_damage_is_named() {
        let part = Part {
            epoch: 42,
            series: vec![(Key { store: 1, sku: 2 }, Rec::Registered, Agg::present(1))],
            ..Part::default()
        };
        let bytes = encode(&settings(), &part);
        let (s, back): (Settings, Part) = decode("p", &bytes).unwrap();
        assert_eq!(s, settings());
        assert_eq!(back.series, part.series);
        let torn = &bytes[..bytes.len() - 1];
        let e = decode::<Part>("p", torn).unwrap_err().to_string();
        assert!(e.contains("torn write"), "{e}");
        let mut flipped = bytes.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        let e = decode::<Part>("p", &flipped).unwrap_err().to_string();
        assert!(e.contains("checksum"), "{e}");
        let e = decode::<Part>("p", b"hello").unwrap_err().to_string();
        assert!(e.contains("not a stockcast checkpoint"), "{e}");
    }

    /// Writes a checkpoint `name` of `epoch` with one part; with `complete`, its manifest.
    fn write(store: &DirStore, name: &str, epoch: Epoch, complete: bool) {
        let part = Part {
            epoch,
            ..Part::default()
        };
        let bytes = encode(&settings(), &part);
        store
            .put(&format!("{name}/{}", part_name(0)), &bytes)
            .unwrap();
        if complete {
            let manifest = Manifest {
                format: FORMAT_VERSION,
                epoch,
                epoch_start: String::new(),
                created_at: String::new(),
                reason: "periodic".into(),
                settings: settings(),
                workers: 1,
                processes: 1,
                parts: vec![FileEntry {
                    file: part_name(0),
                    bytes: bytes.len() as u64,
                    crc32: file_crc(&bytes),
                    items: 0,
                }],
                latest: None,
                offsets: vec![],
            };
            let json = serde_json::to_vec(&manifest).unwrap();
            store.put(&format!("{name}/{MANIFEST}"), &json).unwrap();
        }
    }

    #[test]
    fn pruning_keeps_the_newest_and_what_may_still_be_written() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirStore::new(dir.path());
        for epoch in [10, 20, 30] {
            write(&store, &checkpoint_name(epoch, 1), epoch, true);
        }
        // Unfinished: an older periodic one, a newer one, this run's stop checkpoint (still
        // being written: its epoch is not known yet) and an earlier run's.
        write(&store, &checkpoint_name(25, 1), 25, false);
        write(&store, &checkpoint_name(40, 1), 40, false);
        write(&store, &final_name(1), 35, false);
        write(&store, &final_name(7), 35, false);
        let mut deleted = prune(&store, 2, 1).unwrap();
        deleted.sort();
        let mut want = vec![
            checkpoint_name(10, 1),
            checkpoint_name(25, 1),
            final_name(7),
        ];
        want.sort();
        assert_eq!(deleted, want);
        let mut left: Vec<String> = list(&store).unwrap().into_iter().map(|l| l.name).collect();
        left.sort();
        let mut want = vec![
            checkpoint_name(20, 1),
            checkpoint_name(30, 1),
            checkpoint_name(40, 1),
            final_name(1),
        ];
        want.sort();
        assert_eq!(left, want);
    }

    #[test]
    fn differences_name_each_field() {
        let mut other = settings();
        other.epoch_secs = 3600;
        other.schema_hash = "def".into();
        let d = settings().differences(&other);
        assert_eq!(d.len(), 2, "{d:?}");
        assert!(d[0].contains("epoch_secs: checkpoint 900, configured 3600"));
        assert!(d[1].contains("schema hash"));
    }
}

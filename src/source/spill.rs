//! A dataset's events in time order without holding them in memory: the training history of a
//! chain (tens of millions of sales rows) is replayed from here.
//!
//! [`spill`] reads the files once (as [`super::prepare::prepare`] would) and writes each timed
//! event, in a compact binary form, to the file of its time bucket (a few periods) in a
//! temporary directory. Reference data stays in memory. The streaming driver then reads the
//! buckets in time order ([`super::events`]), each sorted by event time (stably, so equal times
//! keep file order): the events of `prepare`, a bucket at a time. Memory is bounded by the
//! largest bucket, whatever the file order.
//!
//! A dataset without a price plan or a promotion calendar gets them derived from its sales as
//! [`super::prepare::derived_reference`] does; here with one pass over the buckets in time order
//! before the replay, so that they are applied first, as replay applies them.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use dataflows::{Event, Key, Period, PeriodKind, StockKind};

use super::files::{self, FileKind, LoadError};
use super::prepare::{promo_of_flag, PriceRuns};
use crate::config::Resolved;
use crate::decode::Record;
use crate::ids::Dictionary;
use crate::records::dead::DeadLetterRecord;

/// Why a dataset could not be spilled.
#[derive(Debug, thiserror::Error)]
pub enum SpillError {
    /// The dataset could not be read.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The temporary files could not be written or read.
    #[error("spill files in {dir}: {cause}")]
    Io {
        /// The temporary directory.
        dir: PathBuf,
        /// The cause.
        cause: std::io::Error,
    },
}

/// Most bucket files open for writing at once; more are closed and reopened to append.
const OPEN_BUCKETS: usize = 256;

/// A dataset read and spilled to time buckets.
pub struct Spilled {
    /// Reference events (the files' rows, then the derived plan and calendar), applied first.
    pub reference: Vec<Event>,
    /// Names of stores and SKUs.
    pub dict: Dictionary,
    /// Rows refused (decode errors, future times, id collisions).
    pub dead_letters: Vec<DeadLetterRecord>,
    /// Records read per kind.
    pub counts: BTreeMap<&'static str, u64>,
    /// Timed events spilled.
    pub timed: u64,
    /// Of those, sales and stock movements.
    pub timed_kinds: (u64, u64),
    /// First and last period with a timed event.
    pub span: Option<(Period, Period)>,
    /// Series with timed events (up to `as_of`).
    series: usize,
    /// Series of the spilled events, by spill index.
    keys: Vec<Key>,
    /// Bucket files in time order.
    buckets: BTreeMap<i64, PathBuf>,
    /// Buckets of the sales after `as_of`: read for the derived plan and calendar only, which
    /// `prepare` derives from every sales row.
    later: BTreeMap<i64, PathBuf>,
    period: PeriodKind,
    dir: tempfile::TempDir,
}

/// Periods per bucket.
fn bucket_span(period: PeriodKind) -> i32 {
    match period {
        PeriodKind::Day => 7,
        PeriodKind::Week => 4,
    }
}

/// Bucket files being written.
struct Writers {
    dir: PathBuf,
    open: HashMap<i64, BufWriter<File>>,
    paths: BTreeMap<i64, PathBuf>,
}

impl Writers {
    fn write(&mut self, bucket: i64, bytes: &[u8]) -> std::io::Result<()> {
        if !self.open.contains_key(&bucket) {
            if self.open.len() >= OPEN_BUCKETS {
                self.flush()?;
            }
            let path = self
                .paths
                .entry(bucket)
                .or_insert_with(|| self.dir.join(format!("{bucket}.bin")));
            let file = File::options().create(true).append(true).open(&*path)?;
            self.open
                .insert(bucket, BufWriter::with_capacity(1 << 16, file));
        }
        match self.open.get_mut(&bucket) {
            Some(w) => w.write_all(bytes),
            None => Ok(()),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        for (_, mut w) in self.open.drain() {
            w.flush()?;
        }
        Ok(())
    }
}

const SALE: u8 = 0;
const STOCK: u8 = 1;

/// Appends the compact form of a timed event of series `index` to `out`.
fn encode(index: u32, event: &Event, out: &mut Vec<u8>) {
    match event {
        Event::Sale {
            ts,
            qty,
            unit_price,
            promo,
            ..
        } => {
            out.push(SALE);
            out.extend_from_slice(&index.to_le_bytes());
            out.extend_from_slice(&ts.to_le_bytes());
            out.extend_from_slice(&qty.to_le_bytes());
            out.push(u8::from(unit_price.is_some()));
            out.extend_from_slice(&unit_price.unwrap_or(0).to_le_bytes());
            out.push(u8::from(*promo));
        }
        Event::Stock { ts, kind, qty, .. } => {
            out.push(STOCK);
            out.extend_from_slice(&index.to_le_bytes());
            out.extend_from_slice(&ts.to_le_bytes());
            out.push(match kind {
                StockKind::Order => 0,
                StockKind::Receipt => 1,
                StockKind::Adjustment => 2,
            });
            out.extend_from_slice(&qty.to_le_bytes());
        }
        _ => {}
    }
}

/// Reads spilled bytes front to back.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> std::io::Result<&'a [u8]> {
        let (part, rest) = self.0.split_at_checked(n).ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, "truncated spill record")
        })?;
        self.0 = rest;
        Ok(part)
    }

    fn byte(&mut self) -> std::io::Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn int(&mut self) -> std::io::Result<i64> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(i64::from_le_bytes(b))
    }
}

/// Reads the events of one bucket file.
fn decode(bytes: &[u8], keys: &[Key]) -> std::io::Result<Vec<Event>> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let mut cur = Cursor(bytes);
    let mut events = Vec::new();
    while !cur.0.is_empty() {
        let tag = cur.byte()?;
        let mut index = [0u8; 4];
        index.copy_from_slice(cur.take(4)?);
        let key = *keys
            .get(u32::from_le_bytes(index) as usize)
            .ok_or_else(|| bad("spill record of an unknown series"))?;
        let ts = cur.int()?;
        events.push(match tag {
            SALE => {
                let qty = cur.int()?;
                let priced = cur.byte()? != 0;
                let price = cur.int()?;
                let promo = cur.byte()? != 0;
                Event::Sale {
                    key,
                    ts,
                    qty,
                    unit_price: priced.then_some(price),
                    promo,
                }
            }
            STOCK => {
                let kind = match cur.byte()? {
                    0 => StockKind::Order,
                    1 => StockKind::Receipt,
                    _ => StockKind::Adjustment,
                };
                let qty = cur.int()?;
                Event::Stock { key, ts, kind, qty }
            }
            _ => return Err(bad("spill record of an unknown kind")),
        });
    }
    Ok(events)
}

/// Reads the dataset in `data_dir` with `cfg` into time buckets under the system's temporary
/// directory; with `as_of`, timed events after it are left out.
pub fn spill(cfg: &Resolved, data_dir: &Path, as_of: Option<i64>) -> Result<Spilled, SpillError> {
    let dir = tempfile::Builder::new()
        .prefix("stockcast-spill-")
        .tempdir()
        .map_err(|cause| SpillError::Io {
            dir: std::env::temp_dir(),
            cause,
        })?;
    let dir_path = dir.path().to_path_buf();
    let io = |cause| SpillError::Io {
        dir: dir_path.clone(),
        cause,
    };
    let period = cfg.clock.period_kind();
    let span = bucket_span(period);
    let future_limit = chrono::Utc::now()
        .timestamp()
        .saturating_add(cfg.max_future_secs);
    let mut writers = Writers {
        dir: dir.path().to_path_buf(),
        open: HashMap::new(),
        paths: BTreeMap::new(),
    };
    let mut later = Writers {
        dir: dir.path().join("later"),
        open: HashMap::new(),
        paths: BTreeMap::new(),
    };
    std::fs::create_dir(&later.dir).map_err(io)?;
    let mut dict = Dictionary::default();
    let mut dead_letters = Vec::new();
    let mut counts: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut reference = Vec::new();
    let mut index: HashMap<Key, u32> = HashMap::new();
    let mut keys: Vec<Key> = Vec::new();
    let mut timed = 0u64;
    let mut timed_kinds = (0u64, 0u64);
    let mut timed_series: Vec<bool> = Vec::new();
    let mut first_last: Option<(Period, Period)> = None;
    let mut buf = Vec::with_capacity(64);
    let mut failed: Option<std::io::Error> = None;
    // Reading a chain's files takes a minute: a counter on a terminal.
    let bar = crate::display::progress_bar(
        0,
        "{elapsed_precise} {human_pos} rows read and spilled to time buckets",
        std::io::IsTerminal::is_terminal(&std::io::stderr()),
    );
    let mut each = |record: Record, origin: files::Origin, read: &[files::FileReport]| {
        bar.inc(1);
        let file = read[origin.file as usize].name.as_str();
        *counts.entry(FileKind::of(&record).name()).or_default() += 1;
        if let Err(e) = crate::decode::check_not_future(record.ts(), future_limit) {
            let line = origin.line;
            dead_letters.push(files::refused(
                file,
                line,
                e.reason(),
                e.to_string(),
                &record,
            ));
            return;
        }
        let event = match dict.event(&record, period) {
            Ok(e) => e,
            Err(collision) => {
                let detail = collision.to_string();
                let line = origin.line;
                dead_letters.push(files::refused(file, line, "id_collision", detail, &record));
                return;
            }
        };
        let (Some(ts), Event::Sale { key, .. } | Event::Stock { key, .. }) = (event.ts(), &event)
        else {
            reference.push(event);
            return;
        };
        if failed.is_some() {
            return;
        }
        if cfg.clock.epoch_of(ts).is_none() {
            // Before 1970: the input stage would refuse it. Refused here, it cannot leave a
            // bucket of its own ahead of the reference data.
            let why = dataflows::input::Rejection::BeforeEpochZero;
            let detail = format!("{why:?}");
            let line = origin.line;
            dead_letters.push(files::refused(file, line, why.reason(), detail, &record));
            return;
        }
        let next = keys.len() as u32;
        let i = *index.entry(*key).or_insert(next);
        if i == next {
            keys.push(*key);
        }
        let p = period.period_of(ts);
        buf.clear();
        encode(i, &event, &mut buf);
        let bucket = i64::from(p.div_euclid(span));
        let written = if as_of.is_some_and(|t| ts > t) {
            if !matches!(event, Event::Sale { .. }) {
                return;
            }
            later.write(bucket, &buf)
        } else {
            first_last = Some(first_last.map_or((p, p), |(a, b)| (a.min(p), b.max(p))));
            timed += 1;
            match event {
                Event::Sale { .. } => timed_kinds.0 += 1,
                _ => timed_kinds.1 += 1,
            }
            if timed_series.len() <= i as usize {
                timed_series.resize(i as usize + 1, false);
            }
            timed_series[i as usize] = true;
            writers.write(bucket, &buf)
        };
        if let Err(e) = written {
            failed = Some(e);
        }
    };
    let data = files::scan(data_dir, &mut each)?;
    bar.finish_and_clear();
    if let Some(e) = failed {
        return Err(io(e));
    }
    writers.flush().map_err(io)?;
    later.flush().map_err(io)?;
    let mut spilled = Spilled {
        reference,
        dict,
        dead_letters: [data.dead_letters.clone(), dead_letters].concat(),
        counts,
        timed,
        timed_kinds,
        span: first_last,
        series: timed_series.iter().filter(|t| **t).count(),
        keys,
        buckets: writers.paths,
        later: later.paths,
        period,
        dir,
    };
    let has = |kind: FileKind| data.files.iter().any(|f| f.kind == kind);
    let derived = spilled
        .derived_reference(!has(FileKind::Promotions), !has(FileKind::Prices))
        .map_err(io)?;
    for record in derived {
        // The sales registered these names, so no collision can arise here.
        if let Ok(e) = spilled.dict.event(&record, period) {
            spilled.reference.push(e);
        }
    }
    Ok(spilled)
}

/// A series' derivation state in the pass over the buckets.
#[derive(Default)]
struct Derivation {
    /// The period being summed: (period, sum of prices, priced rows).
    current: Option<(Period, i128, i128)>,
    runs: PriceRuns,
    /// The last period a promotion was derived for.
    promo: Option<Period>,
}

impl Spilled {
    /// Series with timed events.
    pub fn series(&self) -> usize {
        self.series
    }

    /// Periods from the first timed event's to the last's.
    pub fn periods(&self) -> usize {
        self.span.map_or(0, |(a, b)| {
            usize::try_from(i64::from(b) - i64::from(a) + 1).unwrap_or(0)
        })
    }

    /// The temporary directory of the buckets (removed on drop).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The bucket files of the events up to `as_of`, in time order.
    pub(super) fn bucket_paths(&self) -> impl Iterator<Item = &Path> {
        self.buckets.values().map(PathBuf::as_path)
    }

    /// The events of the bucket at `path`, in event-time order.
    pub(super) fn bucket(&self, path: &Path) -> std::io::Result<Vec<Event>> {
        let mut events = decode(&std::fs::read(path)?, &self.keys)?;
        events.sort_by_key(Event::ts);
        Ok(events)
    }

    /// The promotion calendar (`promos`) and price plan (`prices`) the sales imply, as
    /// records, in the order `prepare` derives them.
    fn derived_reference(&self, promos: bool, prices: bool) -> std::io::Result<Vec<Record>> {
        if !promos && !prices {
            return Ok(Vec::new());
        }
        let mut state: Vec<Derivation> = (0..self.keys.len())
            .map(|_| Derivation::default())
            .collect();
        let mut calendar = Vec::new();
        let mut index: HashMap<Key, usize> = HashMap::new();
        for (i, k) in self.keys.iter().enumerate() {
            index.insert(*k, i);
        }
        for path in self.buckets.values().chain(self.later.values()) {
            for event in self.bucket(path)? {
                let Event::Sale {
                    key,
                    ts,
                    unit_price,
                    promo,
                    ..
                } = event
                else {
                    continue;
                };
                let Some(s) = index.get(&key).and_then(|i| state.get_mut(*i)) else {
                    continue;
                };
                let p = self.period.period_of(ts);
                if promos && promo && s.promo != Some(p) {
                    s.promo = Some(p);
                    let (store, sku) = self.dict.names(&key);
                    calendar.push(promo_of_flag(&store, &sku, p, self.period));
                }
                let Some(price) = unit_price.filter(|p| *p > 0).filter(|_| prices) else {
                    continue;
                };
                match &mut s.current {
                    Some((q, sum, n)) if *q == p => {
                        *sum += i128::from(price);
                        *n += 1;
                    }
                    current => {
                        if let Some((q, sum, n)) = current.take() {
                            s.runs.add_period(q, sum, n);
                        }
                        *current = Some((p, i128::from(price), 1));
                    }
                }
            }
        }
        let mut plans: Vec<(crate::ids::SeriesNames, Vec<Record>)> = Vec::new();
        for (key, mut s) in self.keys.iter().zip(state) {
            if let Some((q, sum, n)) = s.current.take() {
                s.runs.add_period(q, sum, n);
            }
            let (store, sku) = self.dict.names(key);
            let records = s.runs.records(&store, &sku, self.period);
            if !records.is_empty() {
                plans.push(((store, sku), records));
            }
        }
        // As `prepare`: the calendar first, then the plan by store and SKU name.
        plans.sort_by(|a, b| a.0.cmp(&b.0));
        calendar.extend(plans.into_iter().flat_map(|(_, r)| r));
        Ok(calendar)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_survive_the_spill_form() {
        let key = Key { store: 7, sku: 9 };
        let events = [
            Event::Sale {
                key,
                ts: -5,
                qty: i64::MIN,
                unit_price: Some(i64::MAX),
                promo: true,
            },
            Event::Sale {
                key,
                ts: 1_700_000_000,
                qty: 3,
                unit_price: None,
                promo: false,
            },
            Event::Stock {
                key,
                ts: 2,
                kind: StockKind::Adjustment,
                qty: -4,
            },
        ];
        let mut bytes = Vec::new();
        for e in &events {
            encode(0, e, &mut bytes);
        }
        assert_eq!(decode(&bytes, &[key]).unwrap(), events.to_vec());
        // A cut record, or one naming an unknown series, is an error, not a panic.
        assert!(decode(&bytes[..bytes.len() - 1], &[key]).is_err());
        assert!(decode(&bytes, &[]).is_err());
    }
}

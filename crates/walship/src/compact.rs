//! Compaction and retention of one replica, working only through its [`Store`]. The
//! `replicate` job runs one compactor thread per replica, beside its uploader.
//!
//! - **Levels 1, 2, 3, …** (Litestream's defaults: every 30 s, 5 min, 1 h; aligned on
//!   the wall clock, lower levels first): level N merges the files of level N-1 that it
//!   does not cover yet, as far as they form a contiguous chain, into one file.
//! - **Snapshots** (level 9, every `snapshot-interval`, default 24 h): the newest full
//!   snapshot merged with the fewest files after it ([`restore::plan`]'s chain).
//! - **Retention** (default 24 h): deletes only what no restore to a state inside the
//!   window needs ([`Compactor::enforce_retention`]).
//!
//! A merge ([`merge`]) decodes the inputs in order, keeps the newest copy of each page
//! (pages past a file's commit size are dropped), and encodes one file in Litestream's
//! no-checksum form like every replica file: TXIDs from the first input's minimum to
//! the last one's maximum, the last one's commit size and timestamp. The merged pages
//! stay in memory up to 64 MiB, then go to a scratch file (memory is then one bit per
//! page). When every input has walship's checksum record, the records must chain (each
//! one's pre-apply checksum is the previous one's post-apply checksum) and the merged
//! file gets a record (pre of the first, post of the last); a merge never crosses a
//! broken link, so restore still sees it. A merged snapshot is checked against its
//! record page by page.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use ltx::{Checksum, DbChecksum, Decoder, Encoder, HEADER_FLAG_NO_CHECKSUM, Header, TxId};

use crate::config::Compaction;
use crate::error::{Error, Result};
use crate::replica_form::{self, Checksums};
use crate::restore::{self, Target};
use crate::store::{FileKey, SNAPSHOT_LEVEL, Store, list_all};

/// Merged pages stay in memory up to this many bytes, then spill to a scratch file.
pub const MEMORY_CAP: usize = 64 << 20;

/// The longest the compactor sleeps before looking at the wall clock again (it sleeps
/// until the next job is due, and is woken early by a stop).
const MAX_NAP: Duration = Duration::from_secs(5);

/// What the replica holds so far (the newest TXID uploaded to it), read by the
/// compactor to skip rounds with nothing new: an idle database costs no requests.
pub type Uploaded = Box<dyn Fn() -> TxId + Send>;

/// Starts the compactor of one replica; it returns soon after `halt` is set and the
/// thread is unparked. Its scratch files are `<scratch>/.<name>.*`.
pub fn spawn(
    store: Arc<dyn Store>,
    settings: Compaction,
    scratch: PathBuf,
    name: String,
    uploaded: Uploaded,
    halt: Arc<AtomicBool>,
) -> JoinHandle<()> {
    std::thread::spawn(move || run(store.as_ref(), settings, &scratch, &name, &uploaded, &halt))
}

/// The compactor's loop: compaction levels, snapshots and retention on their
/// intervals until `halt` is set. Each job first runs one interval after the start
/// (a snapshot check also at the start: a replica whose newest snapshot is older than
/// the interval gets one at once), then on the wall clock's multiples of its
/// interval, so that at the top of an hour level 1 runs before 2 before 3. Failures
/// are logged and retried at the next interval.
pub fn run(store: &dyn Store, settings: Compaction, scratch: &Path, name: &str, uploaded: &Uploaded, halt: &AtomicBool) {
    let mut c = Compactor::new(store, settings, scratch, name);
    c.remove_scratch();
    let start = now_ms();
    let after = |at: i64, interval: Duration| at.saturating_add(interval.as_millis().min(i64::MAX as u128) as i64);
    let mut level_due: Vec<i64> = c.settings.levels.iter().map(|i| after(start, *i)).collect();
    let mut snapshot_due = start;
    let mut retention_due = after(start, c.settings.retention_check_interval);
    let stopping = || halt.load(Ordering::Relaxed);
    while !stopping() {
        let now = now_ms();
        for (i, due) in level_due.iter_mut().enumerate() {
            if stopping() || now < *due {
                continue;
            }
            *due = next_slot(now, c.settings.levels[i]);
            let level = i as u8 + 1;
            // Nothing new below this level since it last ran: no request at all.
            let below = if level == 1 { Some(uploaded()) } else { c.tops.get(&(level - 1)).copied() };
            if let (Some(below), Some(top)) = (below, c.tops.get(&level))
                && below <= *top
            {
                continue;
            }
            if let Err(e) = c.compact_level(level, halt) {
                tracing::warn!(replica = %store.describe(), level, error = %e, "cannot compact; retrying at the next interval");
            }
        }
        if now >= snapshot_due && !stopping() {
            snapshot_due = next_slot(now, c.settings.snapshot_interval);
            if let Err(e) = c.snapshot_if_due(now, halt) {
                tracing::warn!(replica = %store.describe(), error = %e, "cannot write a snapshot; retrying at the next interval");
            }
        }
        if now >= retention_due && !stopping() {
            retention_due = next_slot(now, c.settings.retention_check_interval);
            if let Err(e) = c.enforce_retention(now) {
                tracing::warn!(replica = %store.describe(), error = %e, "cannot enforce retention; retrying at the next interval");
            }
        }
        let next = level_due.iter().copied().chain([snapshot_due, retention_due]).min().unwrap_or(i64::MAX);
        let nap = Duration::from_millis(next.saturating_sub(now_ms()).max(1) as u64).min(MAX_NAP);
        if !stopping() {
            std::thread::park_timeout(nap);
        }
    }
    c.remove_scratch();
}

/// The first multiple of `interval` (ms since the epoch) after `now`.
fn next_slot(now: i64, interval: Duration) -> i64 {
    let every = (interval.as_millis().min(i64::MAX as u128) as i64).max(1);
    (now.div_euclid(every) + 1).saturating_mul(every)
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Compacts and prunes one replica. It remembers what it learned (the newest file of
/// each level it writes, the files' timestamps) to keep storage requests few.
pub struct Compactor<'a> {
    store: &'a dyn Store,
    settings: Compaction,
    scratch: PathBuf,
    name: String,
    memory_cap: usize,
    /// Header timestamps (ms) of files read or written.
    times: HashMap<FileKey, i64>,
    /// The newest TXID of each compaction level (only this compactor writes them).
    tops: HashMap<u8, TxId>,
    /// The newest full snapshot (a file starting at TXID 1, any level), once known.
    newest_start: Option<FileKey>,
}

impl<'a> Compactor<'a> {
    /// A compactor of `store`; scratch files go to `<scratch>/.<name>.*`.
    pub fn new(store: &'a dyn Store, settings: Compaction, scratch: &Path, name: &str) -> Self {
        Compactor {
            store,
            settings,
            scratch: scratch.to_path_buf(),
            name: name.to_string(),
            memory_cap: MEMORY_CAP,
            times: HashMap::new(),
            tops: HashMap::new(),
            newest_start: None,
        }
    }

    /// Spills merges to disk past `bytes` of pages (for tests).
    pub fn with_memory_cap(mut self, bytes: usize) -> Self {
        self.memory_cap = bytes;
        self
    }

    fn scratch_path(&self, what: &str) -> PathBuf {
        self.scratch.join(format!(".{}.{what}", self.name))
    }

    fn remove_scratch(&self) {
        for what in ["ltx", "pages"] {
            let _ = std::fs::remove_file(self.scratch_path(what));
        }
    }

    /// Merges the files of level `level - 1` that level `level` does not cover yet
    /// (the contiguous chain after its newest file) into one level-`level` file.
    /// Returns the file written, if any.
    pub fn compact_level(&mut self, level: u8, halt: &AtomicBool) -> Result<Option<FileKey>> {
        if level == 0 || level as usize > crate::config::MAX_LEVELS {
            return Err(Error::Invalid(format!("compaction level {level} is not 1 to {}", crate::config::MAX_LEVELS)));
        }
        let top = match self.tops.get(&level) {
            Some(t) => *t,
            None => self.store.list(level)?.iter().map(|f| f.key.max).max().unwrap_or(TxId(0)),
        };
        self.tops.insert(level, top);
        let below: Vec<FileKey> = self.store.list_after(level - 1, top)?.iter().map(|f| f.key).collect();
        let chain = contiguous(&below);
        if chain.is_empty() {
            return Ok(None);
        }
        let written = self.merge_and_put(&chain, level, halt)?;
        if let Some(key) = written {
            self.tops.insert(level, key.max);
        }
        Ok(written)
    }

    /// Writes a new snapshot when the newest one is older than the snapshot interval
    /// and files follow it. Returns the snapshot written, if any.
    pub fn snapshot_if_due(&mut self, now: i64, halt: &AtomicBool) -> Result<Option<FileKey>> {
        let newest = match self.newest_start {
            Some(k) => Some(k),
            None => {
                let starts = start_points(&list_all(self.store)?.iter().map(|f| f.key).collect::<Vec<_>>());
                starts.last().copied()
            }
        };
        let Some(newest) = newest else { return Ok(None) };
        self.newest_start = Some(newest);
        let age = now - self.timestamp(newest)?;
        if age < self.settings.snapshot_interval.as_millis() as i64 {
            return Ok(None);
        }
        self.snapshot(halt)
    }

    /// Writes a level-9 snapshot: the newest full snapshot merged with the fewest
    /// files after it, up to the newest TXID. Returns it, or `None` when nothing
    /// follows the newest snapshot.
    pub fn snapshot(&mut self, halt: &AtomicBool) -> Result<Option<FileKey>> {
        let chain = match restore::plan(self.store, Target::Latest) {
            Ok(c) => c,
            Err(Error::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        if chain.len() < 2 {
            return Ok(None);
        }
        let keys: Vec<FileKey> = chain.iter().map(|f| f.key).collect();
        self.merge_and_put(&keys, SNAPSHOT_LEVEL, halt)
    }

    /// Merges `chain` (or the longest prefix that can be merged) into one file at
    /// `level` and stores it with its checksum record.
    fn merge_and_put(&mut self, chain: &[FileKey], level: u8, halt: &AtomicBool) -> Result<Option<FileKey>> {
        let sums = chain
            .iter()
            .map(|k| replica_form::get_checksums(self.store, *k))
            .collect::<Result<Vec<_>>>()?;
        let linked = linked_len(&sums);
        if linked < chain.len() {
            tracing::warn!(
                replica = %self.store.describe(),
                file = %chain[linked],
                after = %chain[linked - 1],
                "the database checksum before this file is not the one after the file before it: not compacting across them (restore will refuse this chain too)"
            );
        }
        let out = self.scratch_path("ltx");
        let spill = self.scratch_path("pages");
        let mut n = linked;
        let merged = loop {
            if n == 0 || halt.load(Ordering::Relaxed) {
                return Ok(None);
            }
            match merge_capped(self.store, &chain[..n], &sums[..n], level, &out, &spill, halt, self.memory_cap) {
                Ok(Merged::Written(m)) => break m,
                Ok(Merged::Gap) => {
                    tracing::debug!(replica = %self.store.describe(), level, files = n, "a page shrunk away and back; merging fewer files");
                    n /= 2;
                }
                Ok(Merged::Stopped) => {
                    let _ = std::fs::remove_file(&out);
                    return Ok(None);
                }
                Err(e) => {
                    let _ = std::fs::remove_file(&out);
                    return Err(e);
                }
            }
        };
        let stored = (|| {
            if let Some(s) = merged.sums {
                replica_form::put_checksums(self.store, merged.key, s)?;
            }
            match self.store.put(merged.key, &out) {
                // An earlier attempt stored it (its reply was lost): the same inputs
                // always merge to the same file.
                Ok(()) | Err(Error::AlreadyExists(_)) => Ok(()),
                Err(e) => Err(e),
            }
        })();
        let _ = std::fs::remove_file(&out);
        stored?;
        tracing::info!(replica = %self.store.describe(), file = %merged.key, inputs = n, "compacted");
        self.times.insert(merged.key, merged.timestamp_ms);
        if merged.key.min == TxId(1) && self.newest_start.is_none_or(|s| (s.max, s.level) < (merged.key.max, merged.key.level)) {
            self.newest_start = Some(merged.key);
        }
        Ok(Some(merged.key))
    }

    /// A file's timestamp (ms), from its header (read once).
    fn timestamp(&mut self, key: FileKey) -> Result<i64> {
        if let Some(t) = self.times.get(&key) {
            return Ok(*t);
        }
        let mut r = self.store.open(key)?;
        let mut buf = [0u8; ltx::HEADER_SIZE];
        std::io::Read::read_exact(&mut r, &mut buf).map_err(|e| Error::io(format!("read {key}"), e))?;
        let t = Header::decode(&buf).map_err(|e| Error::ltx(key.to_string(), e))?.timestamp_ms;
        self.times.insert(key, t);
        Ok(t)
    }

    /// How many of `keys` (in TXID order) were written at or before `cutoff`. Times
    /// grow with TXIDs, so a binary search reads a few headers only.
    fn count_old(&mut self, keys: &[FileKey], cutoff: i64) -> Result<usize> {
        let (mut lo, mut hi) = (0, keys.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            if self.timestamp(keys[mid])? <= cutoff {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        Ok(lo)
    }

    /// Deletes the files that no restore to a state newer than `now - retention`
    /// needs, and returns them:
    ///
    /// 1. Let S be the newest full snapshot (a file starting at TXID 1) written before
    ///    the window: every file ending at or before S's TXID goes (older snapshots
    ///    too). Every state in the window is S or later, so S and what follows suffice.
    /// 2. A file of levels 0–7 inside a file of a higher compaction level written
    ///    before the window goes, unless a kept full snapshot ends strictly inside
    ///    that cover (a restore starting there needs the finer files). States in the
    ///    window are past the cover, so a restore crosses it whole.
    ///
    /// The newest file of each level always stays (it tells each level where it is),
    /// and so does the newest level-0 file that would go (a restore by time looks for
    /// the newest level-0 file written before it). The checksum records of deleted
    /// files stay ([`Store`] has no way to delete them yet); restore ignores them.
    pub fn enforce_retention(&mut self, now: i64) -> Result<Vec<FileKey>> {
        let cutoff = now.saturating_sub(self.settings.retention.as_millis() as i64);
        let files: Vec<FileKey> = list_all(self.store)?.iter().map(|f| f.key).collect();
        let mut levels: Vec<Vec<FileKey>> = vec![Vec::new(); SNAPSHOT_LEVEL as usize + 1];
        for k in &files {
            levels[k.level as usize].push(*k);
        }
        let protected: HashSet<FileKey> =
            levels.iter().filter_map(|l| l.iter().max_by_key(|k| (k.max, k.min)).copied()).collect();
        let mut doomed: HashSet<FileKey> = HashSet::new();

        let starts = start_points(&files);
        if let Some(newest) = starts.last() {
            self.newest_start = Some(*newest);
        }
        let old = self.count_old(&starts, cutoff)?;
        if old > 0 {
            let s = starts[old - 1];
            doomed.extend(files.iter().filter(|k| **k != s && k.max <= s.max && !protected.contains(*k)));
        }

        let mut kept_starts: Vec<TxId> = starts.iter().filter(|k| !doomed.contains(*k)).map(|k| k.max).collect();
        kept_starts.sort();
        // Covers per level: kept files (sorted by TXID) and how many are old.
        let mut covers: Vec<(Vec<FileKey>, usize)> = vec![(Vec::new(), 0); SNAPSHOT_LEVEL as usize];
        let top = crate::config::MAX_LEVELS;
        for level in (0..=top).rev() {
            if level < top {
                for f in &levels[level] {
                    if doomed.contains(f) || protected.contains(f) {
                        continue;
                    }
                    let covered = (level + 1..=top).any(|j| {
                        let (list, old) = &covers[j];
                        let i = list.partition_point(|c| c.min <= f.min);
                        i > 0 && i - 1 < *old && {
                            let c = list[i - 1];
                            f.max <= c.max && !starts_inside(&kept_starts, c)
                        }
                    });
                    if covered {
                        doomed.insert(*f);
                    }
                }
            }
            if level > 0 {
                let kept: Vec<FileKey> = levels[level].iter().filter(|k| !doomed.contains(*k)).copied().collect();
                let old = self.count_old(&kept, cutoff)?;
                covers[level] = (kept, old);
            }
        }
        if let Some(newest_l0) = doomed.iter().filter(|k| k.level == 0).max_by_key(|k| k.max).copied() {
            doomed.remove(&newest_l0);
        }

        let oldest_kept = files.iter().filter(|k| !doomed.contains(*k)).map(|k| k.min).min();
        let mut doomed: Vec<FileKey> = doomed.into_iter().collect();
        doomed.sort_by_key(|k| (k.max, k.level));
        // Any order is safe: every file deleted lies inside one that stays.
        for (i, key) in doomed.iter().enumerate() {
            // The file first: a checksum record without its file is ignored.
            if let Err(e) = self.store.delete(*key).and_then(|()| self.store.delete_meta(&replica_form::checksums_name(*key))) {
                tracing::warn!(replica = %self.store.describe(), deleted = i, "retention stopped part way");
                return Err(e);
            }
            self.times.remove(key);
        }
        if !doomed.is_empty() {
            tracing::info!(
                replica = %self.store.describe(),
                deleted = doomed.len(),
                oldest_kept = ?oldest_kept,
                "retention: deleted files that no restore inside the window needs"
            );
        }
        Ok(doomed)
    }
}

/// Full snapshots (files starting at TXID 1, any level), oldest first.
fn start_points(files: &[FileKey]) -> Vec<FileKey> {
    let mut starts: Vec<FileKey> = files.iter().filter(|k| k.min == TxId(1)).copied().collect();
    starts.sort_by_key(|k| (k.max, k.level));
    starts
}

/// Whether a full snapshot in `starts` (sorted TXIDs) ends strictly inside `c`.
fn starts_inside(starts: &[TxId], c: FileKey) -> bool {
    let i = starts.partition_point(|t| *t < c.min);
    starts.get(i).is_some_and(|t| *t < c.max)
}

/// The contiguous chain at the start of `files` (sorted by TXID): each file starts
/// right after the previous one; files overlapping it are skipped, a gap ends it.
pub fn contiguous(files: &[FileKey]) -> Vec<FileKey> {
    let mut chain: Vec<FileKey> = Vec::new();
    for f in files {
        match chain.last() {
            None => chain.push(*f),
            Some(last) if f.min.0 == last.max.0 + 1 => chain.push(*f),
            Some(last) if f.min <= last.max => continue,
            Some(_) => break,
        }
    }
    chain
}

/// How many of the files, from the first, have checksum records that chain (a file
/// without a record links to anything).
pub fn linked_len(sums: &[Option<Checksums>]) -> usize {
    for i in 1..sums.len() {
        if let (Some(prev), Some(cur)) = (sums[i - 1], sums[i])
            && cur.pre != prev.post
        {
            return i;
        }
    }
    sums.len()
}

/// A merged file, written to the output path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MergedFile {
    /// Its key (level as asked, TXIDs of the inputs).
    pub key: FileKey,
    /// Its checksum record, when every input had one.
    pub sums: Option<Checksums>,
    /// Its header timestamp: the last input's.
    pub timestamp_ms: i64,
}

/// What [`merge`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Merged {
    /// The merged file is at the output path.
    Written(MergedFile),
    /// One file cannot hold these inputs: the database shrank below a page and grew
    /// back past it without rewriting it (only applying the files in order gives
    /// that page's state). Merge fewer of them.
    Gap,
    /// `halt` was set.
    Stopped,
}

/// Merges `inputs` (a contiguous chain, in order) from `store` into one file at
/// `level`, written to `out`; `sums` are the inputs' checksum records. Pages past
/// [`MEMORY_CAP`] bytes spill to the file `spill` (removed afterwards).
pub fn merge(
    store: &dyn Store,
    inputs: &[FileKey],
    sums: &[Option<Checksums>],
    level: u8,
    out: &Path,
    spill: &Path,
    halt: &AtomicBool,
) -> Result<Merged> {
    merge_capped(store, inputs, sums, level, out, spill, halt, MEMORY_CAP)
}

#[allow(clippy::too_many_arguments)]
fn merge_capped(
    store: &dyn Store,
    inputs: &[FileKey],
    sums: &[Option<Checksums>],
    level: u8,
    out: &Path,
    spill: &Path,
    halt: &AtomicBool,
    memory_cap: usize,
) -> Result<Merged> {
    let (Some(first), Some(last)) = (inputs.first(), inputs.last()) else {
        return Err(Error::Invalid("nothing to merge".into()));
    };
    if sums.len() != inputs.len() {
        return Err(Error::Invalid("one checksum record (or none) per input".into()));
    }
    for pair in inputs.windows(2) {
        if pair[1].min.0 != pair[0].max.0 + 1 {
            return Err(Error::Invalid(format!("{} does not follow {}", pair[1], pair[0])));
        }
    }
    if linked_len(sums) != sums.len() {
        return Err(Error::Corrupt(format!("the checksum records of {first} .. {last} do not chain")));
    }
    let mut pages: Option<Pages> = None;
    let mut header: Option<Header> = None;
    let mut min_commit = u32::MAX;
    let mut buf = Vec::new();
    for key in inputs {
        if halt.load(Ordering::Relaxed) {
            return Ok(Merged::Stopped);
        }
        let name = key.to_string();
        let mut dec = Decoder::new(store.open(*key)?).map_err(|e| Error::ltx(name.clone(), e))?;
        let h = dec.header().clone();
        if (h.min_txid, h.max_txid) != (key.min, key.max) {
            return Err(Error::Corrupt(format!("{name}: its header says TXIDs {}-{}, not what its name says", h.min_txid, h.max_txid)));
        }
        let pages = pages.get_or_insert_with(|| Pages::new(h.page_size as usize, memory_cap, spill.to_path_buf()));
        if h.page_size as usize != pages.page_size {
            return Err(Error::Corrupt(format!("{name}: page size {} differs from the earlier files' {}", h.page_size, pages.page_size)));
        }
        while let Some(pgno) = dec.next_page(&mut buf).map_err(|e| Error::ltx(name.clone(), e))? {
            pages.put(pgno, &buf).map_err(|e| Error::io(format!("write {}", spill.display()), e))?;
        }
        dec.finish().map_err(|e| Error::ltx(name.clone(), e))?;
        pages.truncate(h.commit).map_err(|e| Error::io(format!("truncate {}", spill.display()), e))?;
        min_commit = min_commit.min(h.commit);
        header = Some(h);
    }
    let (Some(mut pages), Some(last_header)) = (pages, header) else { unreachable!("inputs is not empty") };
    let commit = last_header.commit;
    let lock = ltx::lock_pgno(last_header.page_size);
    let snapshot = first.min == TxId(1);
    let from = if snapshot { 1 } else { min_commit.saturating_add(1) };
    if let Some(missing) = (from..=commit).find(|p| *p != lock && !pages.contains(*p)) {
        if missing > min_commit {
            return Ok(Merged::Gap);
        }
        return Err(Error::Corrupt(format!("{first}: a snapshot without page {missing}")));
    }
    let combined = match (sums.first(), sums.last()) {
        (Some(Some(a)), Some(Some(b))) if sums.iter().all(Option::is_some) => Some(Checksums { pre: a.pre, post: b.post }),
        _ => None,
    };
    let key = FileKey { level, min: first.min, max: last.max };
    let header = Header {
        flags: last_header.flags | HEADER_FLAG_NO_CHECKSUM,
        node_id: last_header.node_id,
        ..Header::new(last_header.page_size, commit, first.min, last.max, last_header.timestamp_ms, Checksum::ZERO)
    };
    let name = key.to_string();
    let file = File::create(out).map_err(|e| Error::io(format!("create {}", out.display()), e))?;
    let mut enc = Encoder::new(BufWriter::with_capacity(256 * 1024, file), &header).map_err(|e| Error::ltx(name.clone(), e))?;
    let mut db = DbChecksum::new();
    let mut failed: Option<Error> = None;
    pages
        .for_each(|pgno, data| {
            if snapshot {
                db.add(Checksum::page(pgno, data));
            }
            if let Err(e) = enc.encode_page(pgno, data) {
                failed = Some(Error::ltx(name.clone(), e));
                return false;
            }
            !halt.load(Ordering::Relaxed)
        })
        .map_err(|e| Error::io(format!("read {}", spill.display()), e))?;
    if let Some(e) = failed {
        return Err(e);
    }
    if halt.load(Ordering::Relaxed) {
        return Ok(Merged::Stopped);
    }
    enc.finish(Checksum::ZERO).map_err(|e| Error::ltx(name.clone(), e))?;
    enc.into_inner().flush().map_err(|e| Error::io(format!("write {}", out.display()), e))?;
    if snapshot && let Some(s) = combined && s.post != db.value() {
        return Err(Error::Corrupt(format!(
            "{first} .. {last}: the merged snapshot's database checksum is {}, but the checksum records say {}",
            db.value(),
            s.post
        )));
    }
    Ok(Merged::Written(MergedFile { key, sums: combined, timestamp_ms: header.timestamp_ms }))
}

/// The newest copy of each page: in memory up to a cap, then in a scratch file at
/// the page's offset (a sparse file) with one bit per page in memory.
struct Pages {
    page_size: usize,
    cap: usize,
    mem: BTreeMap<u32, Box<[u8]>>,
    spill: Option<Spill>,
    path: PathBuf,
}

struct Spill {
    file: File,
    present: Vec<u64>,
}

impl Pages {
    fn new(page_size: usize, cap: usize, path: PathBuf) -> Self {
        Pages { page_size, cap, mem: BTreeMap::new(), spill: None, path }
    }

    fn offset(&self, pgno: u32) -> u64 {
        (u64::from(pgno) - 1) * self.page_size as u64
    }

    fn put(&mut self, pgno: u32, data: &[u8]) -> std::io::Result<()> {
        let offset = self.offset(pgno);
        if let Some(s) = &mut self.spill {
            s.file.write_all_at(data, offset)?;
            let (word, bit) = ((pgno / 64) as usize, pgno % 64);
            if s.present.len() <= word {
                s.present.resize(word + 1, 0);
            }
            s.present[word] |= 1 << bit;
            return Ok(());
        }
        self.mem.insert(pgno, data.into());
        if self.mem.len().saturating_mul(self.page_size) > self.cap {
            let file = File::options().read(true).write(true).create(true).truncate(true).open(&self.path)?;
            let mut spill = Spill { file, present: Vec::new() };
            for (pgno, data) in std::mem::take(&mut self.mem) {
                spill.file.write_all_at(&data, self.offset(pgno))?;
                let word = (pgno / 64) as usize;
                if spill.present.len() <= word {
                    spill.present.resize(word + 1, 0);
                }
                spill.present[word] |= 1 << (pgno % 64);
            }
            self.spill = Some(spill);
        }
        Ok(())
    }

    /// Drops the pages past `commit`.
    fn truncate(&mut self, commit: u32) -> std::io::Result<()> {
        let size = self.offset(commit.saturating_add(1));
        match &mut self.spill {
            None => {
                self.mem.split_off(&commit.saturating_add(1));
            }
            Some(s) => {
                let word = (commit / 64) as usize;
                if word < s.present.len() {
                    s.present.truncate(word + 1);
                    let keep = commit % 64;
                    s.present[word] &= if keep == 63 { u64::MAX } else { (1u64 << (keep + 1)) - 1 };
                }
                if s.file.metadata()?.len() > size {
                    s.file.set_len(size)?;
                }
            }
        }
        Ok(())
    }

    fn contains(&self, pgno: u32) -> bool {
        match &self.spill {
            None => self.mem.contains_key(&pgno),
            Some(s) => s.present.get((pgno / 64) as usize).is_some_and(|w| w & (1 << (pgno % 64)) != 0),
        }
    }

    /// Calls `f` with each page in page order until it returns false.
    fn for_each(&mut self, mut f: impl FnMut(u32, &[u8]) -> bool) -> std::io::Result<()> {
        match &self.spill {
            None => {
                for (pgno, data) in &self.mem {
                    if !f(*pgno, data) {
                        break;
                    }
                }
            }
            Some(s) => {
                let mut buf = vec![0u8; self.page_size];
                for (w, word) in s.present.iter().enumerate() {
                    let mut bits = *word;
                    while bits != 0 {
                        let pgno = (w * 64) as u32 + bits.trailing_zeros();
                        bits &= bits - 1;
                        s.file.read_exact_at(&mut buf, (u64::from(pgno) - 1) * self.page_size as u64)?;
                        if !f(pgno, &buf) {
                            return Ok(());
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

impl Drop for Pages {
    fn drop(&mut self) {
        if self.spill.is_some() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests;

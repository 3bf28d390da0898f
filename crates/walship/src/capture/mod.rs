//! Capture: turns every commit of a live database into LTX files in the local state
//! folder, without missing or inventing a change.
//!
//! How it stays exact (see DESIGN.md §3):
//! - The *pin* connection holds a read transaction. While it does, SQLite can restart
//!   the WAL at most once, and only when every frame that existed when the pin was
//!   taken has been copied to the database and nothing was appended since. So once
//!   capture has read up to the end of the log at pin time ("caught up"), a change of
//!   WAL generation never hides a frame.
//! - Checkpoints are walship's: behind a write barrier (SQLite's WAL write lock, taken
//!   in the `-shm` file) it reads to the end, releases the pin, checkpoints and re-pins, so the
//!   pin is retaken caught up.
//! - [`PageSums`] keeps a checksum per page of the captured state. Pages whose content
//!   did not change are left out of the LTX file, and whenever continuity is in doubt
//!   (a gap without the pin, a crash) capture *rescans*: it reads every page through
//!   `sqlite_dbpage` in the pinned transaction and writes the pages that differ.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use ltx::{Checksum, Header, TxId};
use rusqlite::Connection;

use crate::error::{Error, Result};
use crate::local::{LocalDir, Pos};
use crate::pagesums::PageSums;
use crate::sqlite;
use crate::store::{FileKey, SNAPSHOT_LEVEL};
use crate::wal_tail::{self, Batch, Cursor, Tail};
use ltx::wal::WalHeader;

/// How long a checkpoint waits for the app's write lock before trying again later.
const BARRIER_WAIT: Duration = Duration::from_millis(500);

/// A TRUNCATE checkpoint waits for this long without commits. It needs the write
/// lock itself, so a commit can slip in between the barrier and it; the rescan that
/// this then costs is rare when the app is quiet. (Under steady writes the WAL stays
/// bounded without it: each PASSIVE checkpoint lets SQLite restart the log.)
const TRUNCATE_QUIET: Duration = Duration::from_millis(500);

/// Tuning of capture and checkpoints.
#[derive(Clone, Debug)]
pub struct CaptureOptions {
    /// Checkpoint (PASSIVE) once the WAL holds this many frames. Default 1000, SQLite's
    /// own autocheckpoint size: lower keeps the WAL smaller, higher checkpoints less.
    pub checkpoint_frames: u64,
    /// Checkpoint with TRUNCATE once the `-wal` file is larger than this. Default 8 MiB.
    pub truncate_bytes: u64,
    /// Most page bytes one capture holds in memory before it writes a file. Default 64 MiB.
    pub max_batch_bytes: usize,
    /// Under sustained writes, captures start at least this far apart, so the commits
    /// made meanwhile share one file; a commit after a quiet spell is captured at once.
    /// Default 10 ms: at a few thousand commits per second this cuts capture's CPU and
    /// the files written (and uploaded) per second several times over.
    pub min_interval: Duration,
}

impl Default for CaptureOptions {
    fn default() -> Self {
        CaptureOptions {
            checkpoint_frames: 1000,
            truncate_bytes: 8 << 20,
            max_batch_bytes: 64 << 20,
            min_interval: Duration::from_millis(10),
        }
    }
}

/// One database under capture.
pub struct Capture {
    db: PathBuf,
    wal: PathBuf,
    /// The `-shm` file, opened once and kept open: closing any descriptor of a file
    /// drops every POSIX lock this process holds on it, including SQLite's own (the
    /// pin's read lock). Open for writing: the write barrier is a lock on it.
    shm: File,
    pin: Connection,
    barrier: Connection,
    pinned: bool,
    caught_up: bool,
    cursor: Option<Cursor>,
    sums: Option<PageSums>,
    page_size: u32,
    pos: Pos,
    local: LocalDir,
    opts: CaptureOptions,
    checkpointed_at: u64,
    /// No TRUNCATE before this instant: pushed back by every commit seen (see
    /// [`Capture::checkpoint`] for why it waits for a quiet moment) and after a busy try.
    truncate_after: Instant,
}

impl Capture {
    /// Starts capturing `db`, continuing after `resume` (the newest position known
    /// locally or in a replica). Writes the first file at once: the changes since
    /// `resume`, a full image when the page checksums of `resume` are unknown, or a
    /// snapshot (TXID 1) when there is no history.
    pub fn open(db: &Path, local: LocalDir, resume: Pos, opts: CaptureOptions) -> Result<Capture> {
        let sums = if resume.txid.0 == 0 {
            None
        } else {
            PageSums::load(&local.pagesums_path(), resume.txid)?
                .filter(|s| s.checksum() == resume.checksum)
        };
        // Saved checksums are only valid for the clean stop that wrote them.
        crate::durable::remove_file(&local.pagesums_path())?;
        let pin = sqlite::open(db, Duration::from_secs(5))?;
        let barrier = sqlite::open(db, Duration::ZERO)?;
        let page_size = sqlite::page_size(&pin)?;
        // SQLite has the -shm open now (the pin read the schema in WAL mode).
        let shm_path = sibling(db, "-shm");
        let shm = File::options()
            .read(true)
            .write(true)
            .open(&shm_path)
            .map_err(|e| Error::io(format!("open {}", shm_path.display()), e))?;
        let mut capture = Capture {
            db: db.to_path_buf(),
            wal: sibling(db, "-wal"),
            shm,
            pin,
            barrier,
            pinned: false,
            caught_up: false,
            cursor: None,
            sums,
            page_size,
            pos: resume,
            local,
            opts,
            checkpointed_at: 0,
            truncate_after: Instant::now(),
        };
        capture.repin()?;
        capture.rescan()?;
        Ok(capture)
    }

    /// The position of the newest captured file.
    pub fn pos(&self) -> Pos {
        self.pos
    }

    /// Capture tuning.
    pub fn options(&self) -> &CaptureOptions {
        &self.opts
    }

    /// The local state folder.
    pub fn local(&self) -> &LocalDir {
        &self.local
    }

    /// Captures whatever was committed since the last call, checkpointing when due.
    /// Returns the files written.
    pub fn tick(&mut self) -> Result<Vec<FileKey>> {
        let mut written = Vec::new();
        self.give_way_if_asked(&mut written)?;
        if !self.pinned {
            self.repin()?;
            self.caught_up = false;
        }
        self.capture_to_end(&mut written)?;
        self.maybe_checkpoint(&mut written)?;
        // A checkpoint that gave way to the app's leaves it waiting for us: let it go now.
        self.give_way_if_asked(&mut written)?;
        Ok(written)
    }

    /// Writes a full snapshot of the current state to the local folder as a level-9
    /// file covering TXIDs 1..=current, to seed a replica that lacks history.
    pub fn snapshot(&mut self) -> Result<FileKey> {
        let mut written = Vec::new();
        if !self.write_barrier()? {
            return Err(Error::Interrupted);
        }
        let result = (|| -> Result<()> {
            self.capture_to_end(&mut written)?;
            // Re-pin under the barrier so the pinned view is exactly the captured state.
            sqlite::end(&self.pin)?;
            self.pinned = false;
            self.repin()?;
            self.caught_up = true;
            Ok(())
        })();
        self.release_barrier()?;
        result?;
        let key = FileKey { level: SNAPSHOT_LEVEL, min: TxId(1), max: self.pos.txid };
        let header = self.header(TxId(1), self.pos.txid, self.sqlite_page_count()?, Checksum::ZERO);
        let expected = self.pos.checksum;
        let lock = ltx::lock_pgno(self.page_size);
        let pin = &self.pin;
        self.local.write_ltx(key, &header, |enc| {
            let mut sums = PageSums::default();
            sqlite::for_each_page(pin, |pgno, data| {
                if pgno == lock {
                    return Ok(());
                }
                sums.set(pgno, Checksum::page(pgno, data));
                enc.encode_page(pgno, data).map_err(|e| Error::ltx(key.to_string(), e))
            })?;
            if sums.checksum() != expected {
                return Err(Error::Corrupt(format!(
                    "snapshot checksum {} differs from the captured position {}",
                    sums.checksum(),
                    expected
                )));
            }
            Ok(sums.checksum())
        })?;
        Ok(key)
    }

    /// Final capture at a clean stop; saves the page checksums so that the next start
    /// needs no full image.
    pub fn close(mut self) -> Result<Vec<FileKey>> {
        let mut written = Vec::new();
        self.capture_to_end(&mut written)?;
        if let Some(sums) = &self.sums {
            sums.save(&self.local.pagesums_path(), self.pos.txid)?;
        }
        sqlite::end(&self.pin)?;
        Ok(written)
    }

    /// Takes the write barrier, giving way to the app's blocking checkpoints: first the
    /// WAL write lock against other processes, then SQLite's own write lock against
    /// connections in this process (which POSIX locks do not hold back).
    fn write_barrier(&self) -> Result<bool> {
        let give_way = || self.foreign_blocking_checkpoint();
        if !sqlite::try_lock_writers(&self.shm, BARRIER_WAIT, give_way)? {
            return Ok(false);
        }
        match sqlite::try_write_barrier(&self.barrier, BARRIER_WAIT, give_way) {
            Ok(true) => Ok(true),
            other => {
                sqlite::unlock_writers(&self.shm)?;
                other
            }
        }
    }

    fn release_barrier(&self) -> Result<()> {
        sqlite::end(&self.barrier)?;
        sqlite::unlock_writers(&self.shm)
    }

    fn foreign_blocking_checkpoint(&self) -> bool {
        sqlite::foreign_blocking_checkpoint(&self.shm)
    }

    /// When another process runs a blocking checkpoint, which waits for our pin:
    /// capture what is committed, let go, and take the pin back once it is done.
    fn give_way_if_asked(&mut self, written: &mut Vec<FileKey>) -> Result<()> {
        if !self.foreign_blocking_checkpoint() {
            return Ok(());
        }
        self.capture_to_end(written)?;
        sqlite::end(&self.pin)?;
        self.pinned = false;
        self.caught_up = false;
        tracing::debug!(db = %self.db.display(), "stepping aside for the app's checkpoint");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline
            && sqlite::foreign_checkpoint(&self.shm)
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        self.repin()
    }

    fn repin(&mut self) -> Result<()> {
        if !self.pinned {
            sqlite::begin_read(&self.pin)?;
            self.pinned = true;
        }
        Ok(())
    }

    /// Reads the WAL until no committed frame is left, writing a file per batch.
    fn capture_to_end(&mut self, written: &mut Vec<FileKey>) -> Result<()> {
        loop {
            let limit = if self.cursor.is_none() { usize::MAX } else { self.opts.max_batch_bytes };
            match wal_tail::read(&self.wal, self.cursor, limit)? {
                Tail::Empty | Tail::NewGeneration(_) => {
                    if self.cursor.is_none() {
                        return Ok(());
                    }
                    if !self.caught_up {
                        tracing::info!(db = %self.db.display(), "the WAL restarted while walship was not pinned; rescanning");
                        self.rescan_into(written)?;
                    }
                    // Caught up: the old generation ended where the cursor is.
                    self.cursor = None;
                }
                Tail::Frames(header, batch) => {
                    let cut = !batch.complete;
                    if batch.end.is_none() && self.cursor.is_none() {
                        self.cursor = batch.start;
                    }
                    if let Some(key) = self.write_batch(&header, batch)? {
                        written.push(key);
                    }
                    if !self.caught_up && !cut {
                        // Read to the end after a gap: caught up if the log did not
                        // restart meanwhile (a restart would show in the salts).
                        let same = wal_tail::read_header(&self.wal)?
                            .is_some_and(|h| self.cursor.is_some_and(|c| c.salts == (h.salt1, h.salt2)));
                        if same {
                            self.caught_up = true;
                        }
                    }
                    if !cut {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Writes the committed pages of `batch` that differ from the captured state.
    fn write_batch(&mut self, wal: &WalHeader, batch: Batch) -> Result<Option<FileKey>> {
        let Some(end) = batch.end else { return Ok(None) };
        self.truncate_after = self.truncate_after.max(Instant::now() + TRUNCATE_QUIET);
        let sums = self.sums.as_ref().expect("page checksums are known after the first rescan");
        let lock = ltx::lock_pgno(self.page_size);
        let commit = batch.commit;
        let changed: Vec<(u32, Checksum)> = batch
            .pages
            .iter()
            .filter(|(pgno, _)| **pgno <= commit && **pgno != lock)
            .map(|(pgno, data)| (*pgno, Checksum::page(*pgno, data)))
            .filter(|(pgno, sum)| sums.differs(*pgno, *sum))
            .collect();
        if changed.is_empty() && commit == sums.page_count() {
            self.cursor = Some(end);
            return Ok(None);
        }
        let txid = TxId(self.pos.txid.0 + 1);
        let key = FileKey { level: 0, min: txid, max: txid };
        let mut header = self.header(txid, txid, commit, sums.checksum());
        let start = batch.start.map_or(0, |c| c.offset(self.page_size));
        header.wal_offset = start as i64;
        header.wal_size = (end.offset(self.page_size) - start) as i64;
        header.wal_salt1 = wal.salt1;
        header.wal_salt2 = wal.salt2;
        let post = sums.preview(commit, &changed);
        self.local.write_ltx(key, &header, |enc| {
            for (pgno, _) in &changed {
                enc.encode_page(*pgno, &batch.pages[pgno]).map_err(|e| Error::ltx(key.to_string(), e))?;
            }
            Ok(post)
        })?;
        if let Some(sums) = self.sums.as_mut() {
            sums.apply(commit, &changed);
            debug_assert_eq!(sums.checksum(), post);
        }
        self.pos = Pos { txid, checksum: post };
        self.cursor = Some(end);
        Ok(Some(key))
    }

    fn rescan(&mut self) -> Result<()> {
        let mut written = Vec::new();
        self.rescan_into(&mut written)
    }

    /// Reads every page in the pinned transaction and writes those that differ from the
    /// captured state (all of them when it is unknown). Afterwards the current WAL
    /// generation is read again from its first frame, which is safe: pages that did not
    /// change since the pin are dropped by the checksum comparison.
    fn rescan_into(&mut self, written: &mut Vec<FileKey>) -> Result<()> {
        self.repin()?;
        let count = self.sqlite_page_count()?;
        let lock = ltx::lock_pgno(self.page_size);
        let mut fresh = PageSums::default();
        fresh.resize(count);
        let (first, pre) = if self.pos.txid.0 == 0 {
            (TxId(1), Checksum::ZERO)
        } else {
            (TxId(self.pos.txid.0 + 1), self.pos.checksum)
        };
        let key = FileKey { level: 0, min: first, max: first };
        let mut header = self.header(first, first, count, pre);
        // Continuing a history whose checksum is unknown (a replica Litestream wrote):
        // this full image cannot name the state before it, so it carries no checksums.
        let unknown_pre = first.0 > 1 && pre == Checksum::ZERO;
        if unknown_pre {
            header.flags |= ltx::HEADER_FLAG_NO_CHECKSUM;
        }
        let pin = &self.pin;
        match &self.sums {
            None => {
                self.local.write_ltx(key, &header, |enc| {
                    sqlite::for_each_page(pin, |pgno, data| {
                        if pgno != lock {
                            fresh.set(pgno, Checksum::page(pgno, data));
                            enc.encode_page(pgno, data).map_err(|e| Error::ltx(key.to_string(), e))?;
                        }
                        Ok(())
                    })?;
                    Ok(if unknown_pre { Checksum::ZERO } else { fresh.checksum() })
                })?;
            }
            Some(old) => {
                let mut changed = Vec::new();
                sqlite::for_each_page(pin, |pgno, data| {
                    if pgno != lock {
                        let sum = Checksum::page(pgno, data);
                        fresh.set(pgno, sum);
                        if old.differs(pgno, sum) {
                            changed.push(pgno);
                        }
                    }
                    Ok(())
                })?;
                if changed.is_empty() && count == old.page_count() {
                    self.after_rescan(fresh);
                    return Ok(());
                }
                let mut stmt = pin.prepare("SELECT data FROM sqlite_dbpage WHERE pgno = ?1")?;
                self.local.write_ltx(key, &header, |enc| {
                    for pgno in &changed {
                        let data: Vec<u8> = stmt.query_row([pgno], |r| r.get(0))?;
                        if Checksum::page(*pgno, &data) != fresh.get(*pgno) {
                            return Err(Error::Interrupted);
                        }
                        enc.encode_page(*pgno, &data).map_err(|e| Error::ltx(key.to_string(), e))?;
                    }
                    Ok(fresh.checksum())
                })?;
            }
        }
        self.pos = Pos { txid: first, checksum: fresh.checksum() };
        written.push(key);
        self.after_rescan(fresh);
        Ok(())
    }

    fn after_rescan(&mut self, fresh: PageSums) {
        self.sums = Some(fresh);
        self.cursor = None;
        self.caught_up = true;
    }

    fn maybe_checkpoint(&mut self, written: &mut Vec<FileKey>) -> Result<()> {
        let frames = self.cursor.map_or(0, |c| c.frames);
        if frames < self.checkpointed_at {
            self.checkpointed_at = 0; // a new generation
        }
        let wal_bytes = std::fs::metadata(&self.wal).map_or(0, |m| m.len());
        if wal_bytes > self.opts.truncate_bytes && Instant::now() >= self.truncate_after {
            self.checkpoint(true, written)?;
        } else if frames >= self.checkpointed_at + self.opts.checkpoint_frames {
            self.checkpoint(false, written)?;
        }
        Ok(())
    }

    /// Checkpoints behind the write barrier. Under the barrier it only *reads* the
    /// commits not captured yet (writing them, with its fsyncs, waits until the app may
    /// commit again). With `truncate`, the barrier is released just before the TRUNCATE
    /// checkpoint (which needs the write lock itself), and `PRAGMA data_version` tells
    /// whether another connection committed in that gap.
    fn checkpoint(&mut self, truncate: bool, written: &mut Vec<FileKey>) -> Result<()> {
        self.presync_wal()?;
        if !self.write_barrier()? {
            return Ok(());
        }
        let started = Instant::now();
        let mut barrier_held = true;
        let result = (|| -> Result<Option<(WalHeader, Batch)>> {
            let mut pending = match wal_tail::read(&self.wal, self.cursor, usize::MAX)? {
                Tail::Frames(header, batch) if self.cursor.is_some() => Some((header, batch)),
                _ => {
                    self.capture_to_end(written)?;
                    None
                }
            };
            let end = pending.as_ref().and_then(|(_, b)| b.end).or(self.cursor);
            sqlite::end(&self.pin)?;
            self.pinned = false;
            let passive = sqlite::checkpoint(&self.pin, "PASSIVE")?;
            self.checkpointed_at = end.map_or(0, |c| c.frames);
            if truncate && !passive.busy && passive.log == passive.checkpointed {
                let before = sqlite::data_version(&self.pin)?;
                self.release_barrier()?;
                barrier_held = false;
                self.pin.busy_timeout(Duration::from_millis(50))?;
                let done = sqlite::checkpoint(&self.pin, "TRUNCATE");
                self.pin.busy_timeout(Duration::from_secs(5))?;
                if done?.busy {
                    self.truncate_after = Instant::now() + TRUNCATE_QUIET;
                }
                if sqlite::data_version(&self.pin)? != before {
                    // A commit slipped in before the TRUNCATE: it may be gone from the WAL.
                    // The rescan covers it and the pending commits alike.
                    self.repin()?;
                    self.caught_up = false;
                    tracing::info!(db = %self.db.display(), "a commit raced the truncate checkpoint; rescanning");
                    pending = None;
                    self.rescan_into(written)?;
                    return Ok(pending);
                }
            } else if truncate {
                self.truncate_after = Instant::now() + TRUNCATE_QUIET;
            }
            self.repin()?;
            self.caught_up = true;
            Ok(pending)
        })();
        if barrier_held {
            self.release_barrier()?;
        }
        tracing::debug!(truncate, frames = self.checkpointed_at, barrier = ?started.elapsed(), "checkpoint");
        let pending = match result {
            Ok(p) => p,
            Err(e) => {
                if !self.pinned {
                    self.caught_up = false;
                }
                return Err(e);
            }
        };
        if let Some((header, batch)) = pending {
            match self.write_batch(&header, batch) {
                Ok(key) => written.extend(key),
                Err(e) => {
                    // The log may be restarted over those frames now: rescan next time.
                    self.caught_up = false;
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Writes the WAL to disk before the barrier is taken: the checkpoint syncs the WAL
    /// first, and with most of it on disk already that sync (made while the app
    /// waits) is short. A failed fsync is a durability error, like any other.
    fn presync_wal(&self) -> Result<()> {
        match File::open(&self.wal) {
            Ok(f) => crate::durable::sync(&f, &self.wal),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(format!("open {}", self.wal.display()), e)),
        }
    }

    fn sqlite_page_count(&self) -> Result<u32> {
        Ok(self.pin.query_row("PRAGMA page_count", [], |r| r.get(0))?)
    }

    fn header(&self, min: TxId, max: TxId, commit: u32, pre: Checksum) -> Header {
        Header::new(self.page_size, commit, min, max, now_ms(), pre)
    }
}

/// `path` with `suffix` appended (`app.db` → `app.db-wal`).
pub fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests;

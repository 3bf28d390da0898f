//! Restore: rebuild a database from a replica at its newest state, at a TXID, or at a
//! point in time.
//!
//! - [`plan`] picks the fewest files: the newest snapshot (`min = 1`) at or before the
//!   target, then at each step the file reaching furthest without passing it.
//! - [`restore`] streams them into a temporary file page by page, decoding on one
//!   thread while another writes (memory stays bounded: four 1 MiB runs of pages and
//!   8 bytes of checksum per page), checks every file's checksums and the chain of
//!   database checksums, runs SQLite's check (through a memory map), then fsyncs and
//!   renames.

use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use ltx::{Decoder, Header, TxId};

use crate::capture::sibling;
use crate::durable;
use crate::error::{Error, Result};
use crate::pagesums::PageSums;
use crate::prefetch::{self, Prefetch};
use crate::replica_form;
use crate::store::{FileInfo, Store, list_all};

/// Which state to restore.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// The newest state in the replica.
    Latest,
    /// The state right after this TXID.
    TxId(TxId),
    /// The newest state captured at or before this time (a time after the newest file
    /// means the newest state).
    Time(DateTime<Utc>),
}

/// How to check the restored database with SQLite before it is put in place.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Check {
    /// `PRAGMA quick_check` (the default).
    #[default]
    Quick,
    /// `PRAGMA integrity_check`.
    Full,
    /// No SQLite check (LTX checksums are still verified).
    None,
}

/// What a restore did.
#[derive(Debug, Clone)]
pub struct Report {
    /// The TXID restored.
    pub txid: TxId,
    /// Files applied.
    pub files: usize,
    /// Database size in bytes.
    pub bytes: u64,
    /// Whether the final database checksum was verified (files written with
    /// Litestream's "no checksum" flag carry none).
    pub checksum_verified: bool,
}

/// Chooses the files to apply, in order, to reach `target`.
pub fn plan(store: &dyn Store, target: Target) -> Result<Vec<FileInfo>> {
    let files = list_all(store)?;
    let Some(newest) = files.iter().map(|f| f.key.max).max() else {
        return Err(Error::NotFound(format!("no LTX files in replica {}", store.describe())));
    };
    let goal = match target {
        Target::Latest => newest,
        Target::TxId(t) if t > newest => {
            return Err(Error::Invalid(format!(
                "TXID {t} is past the newest one in the replica ({newest})"
            )));
        }
        Target::TxId(t) => t,
        Target::Time(t) => txid_at(store, &files, t)?,
    };
    let mut chain: Vec<FileInfo> = Vec::new();
    let start = files
        .iter()
        .filter(|f| f.key.min == TxId(1) && f.key.max <= goal)
        .max_by_key(|f| (f.key.max, f.key.level));
    let Some(start) = start else {
        return Err(Error::Corrupt(format!(
            "replica {} has no snapshot at or before TXID {goal}",
            store.describe()
        )));
    };
    chain.push(*start);
    let mut at = start.key.max;
    while at < goal {
        let next = files
            .iter()
            .filter(|f| f.key.min.0 == at.0 + 1 && f.key.max <= goal)
            .max_by_key(|f| (f.key.max, f.key.level));
        let Some(next) = next else {
            return Err(Error::Corrupt(format!(
                "replica {} has no file starting at TXID {} (files are missing between {at} and {goal})",
                store.describe(),
                TxId(at.0 + 1)
            )));
        };
        chain.push(*next);
        at = next.key.max;
    }
    Ok(chain)
}

/// The newest TXID whose file was written at or before `time`.
fn txid_at(store: &dyn Store, files: &[FileInfo], time: DateTime<Utc>) -> Result<TxId> {
    let wanted = time.timestamp_millis();
    let mut best: Option<TxId> = None;
    let mut level0: Vec<&FileInfo> = files.iter().filter(|f| f.key.level == 0).collect();
    if level0.is_empty() {
        level0 = files.iter().collect();
    }
    level0.sort_by_key(|f| f.key.max);
    for f in level0 {
        let header = read_header(store, f)?;
        if header.timestamp_ms > wanted {
            break;
        }
        best = Some(best.map_or(f.key.max, |b| b.max(f.key.max)));
    }
    best.ok_or_else(|| {
        Error::Invalid(format!("replica {} has no state as old as {time}", store.describe()))
    })
}

fn read_header(store: &dyn Store, f: &FileInfo) -> Result<Header> {
    let mut r = store.open(f.key)?;
    let mut buf = [0u8; ltx::HEADER_SIZE];
    std::io::Read::read_exact(&mut r, &mut buf).map_err(|e| Error::io(format!("read {}", f.key), e))?;
    Header::decode(&buf).map_err(|e| Error::ltx(f.key.to_string(), e))
}

/// Restores `target` from `store` into `output`. Refuses to replace an existing file
/// unless `force`; the new database appears only once complete, verified and fsynced.
pub fn restore(store: &dyn Store, target: Target, output: &Path, force: bool, check: Check) -> Result<Report> {
    let wal = sibling(output, "-wal");
    let shm = sibling(output, "-shm");
    for path in [output, wal.as_path()] {
        if path.exists() && !force {
            return Err(Error::AlreadyExists(path.to_path_buf()));
        }
    }
    let chain = plan(store, target)?;
    let tmp = durable::temp_path(output);
    let result = apply(store, &chain, &tmp).and_then(|report| {
        sqlite_check(&tmp, check)?;
        Ok(report)
    });
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
    };
    // A stale WAL beside the new file would be replayed on top of it.
    for stale in [&wal, &shm] {
        durable::remove_file(stale)?;
    }
    fs::rename(&tmp, output).map_err(|e| Error::io(format!("rename to {}", output.display()), e))?;
    durable::sync_dir(&output.parent().map(Path::to_path_buf).filter(|p| !p.as_os_str().is_empty()).unwrap_or_else(|| PathBuf::from(".")))?;
    Ok(report)
}

fn apply(store: &dyn Store, chain: &[FileInfo], tmp: &Path) -> Result<Report> {
    prefetch::with_prefetch(store, chain, |ahead| apply_files(store, chain, ahead, tmp))
}

fn apply_files(store: &dyn Store, chain: &[FileInfo], ahead: &Prefetch, tmp: &Path) -> Result<Report> {
    let file = File::options()
        .write(true)
        .create_new(true)
        .open(tmp)
        .map_err(|e| Error::io(format!("create {}", tmp.display()), e))?;
    let mut sums = PageSums::default();
    let mut verified = true;
    let mut page_size = 0u32;
    let mut buf = Vec::new();
    let mut last_log = Instant::now();
    let mut pages_done = 0u64;
    let mut out = PageWriter::start(&file);
    for (i, info) in chain.iter().enumerate() {
        let name = info.key.to_string();
        let (reader, fetched_sums): (Box<dyn std::io::Read + Send>, _) = match ahead.take(i) {
            Some(fetched) => {
                let f = fetched?;
                (Box::new(std::io::Cursor::new(f.bytes)), Some(f.sums))
            }
            None => (store.open(info.key)?, None),
        };
        let mut dec = Decoder::new(reader).map_err(|e| Error::ltx(name.clone(), e))?;
        let header = dec.header().clone();
        if (header.min_txid, header.max_txid) != (info.key.min, info.key.max) {
            return Err(Error::Corrupt(format!(
                "{name}: its header says TXIDs {}-{}, not what its name says",
                header.min_txid, header.max_txid
            )));
        }
        if page_size == 0 {
            page_size = header.page_size;
        } else if header.page_size != page_size {
            return Err(Error::Corrupt(format!(
                "{name}: page size {} differs from the earlier files' {page_size}",
                header.page_size
            )));
        }
        let recorded = if header.has_checksums() {
            None
        } else if let Some(sums) = fetched_sums {
            sums
        } else {
            replica_form::get_checksums(store, info.key)?
        };
        let pre = recorded.map_or(header.pre_apply_checksum, |r| r.pre);
        let checked = header.has_checksums() || recorded.is_some();
        if i > 0 && checked && verified && pre != sums.checksum() {
            return Err(Error::Corrupt(format!(
                "{name}: expects database checksum {pre} before it, but the files before it give {}",
                sums.checksum()
            )));
        }
        while let Some((pgno, sum)) = dec.next_page_with_checksum(&mut buf).map_err(|e| Error::ltx(name.clone(), e))? {
            out.write((pgno as u64 - 1) * page_size as u64, &buf)
                .map_err(|e| Error::io(format!("write {}", tmp.display()), e))?;
            sums.set(pgno, sum);
            pages_done += 1;
            if last_log.elapsed() > Duration::from_secs(2) {
                tracing::info!(file = %name, pages = pages_done, "restoring");
                last_log = Instant::now();
            }
        }
        let trailer = dec.finish().map_err(|e| Error::ltx(name.clone(), e))?;
        sums.resize(header.commit);
        out.set_len(header.commit as u64 * page_size as u64)
            .map_err(|e| Error::io(format!("write {}", tmp.display()), e))?;
        let post = recorded.map_or(trailer.post_apply_checksum, |r| r.post);
        if checked && verified {
            if post != sums.checksum() {
                return Err(Error::Corrupt(format!(
                    "{name}: database checksum after applying it is {}, but it should be {post}",
                    sums.checksum()
                )));
            }
        } else {
            verified = false;
        }
    }
    out.finish().map_err(|e| Error::io(format!("write {}", tmp.display()), e))?;
    durable::sync(&file, tmp)?;
    let last = chain.last().expect("a plan has at least one file");
    Ok(Report {
        txid: last.key.max,
        files: chain.len(),
        bytes: sums.page_count() as u64 * page_size as u64,
        checksum_verified: verified,
    })
}

/// Writes the restored pages on a thread of its own, so decoding the next pages
/// overlaps copying these into the file and writing them to disk. Pages that follow each other on disk are
/// gathered into one write (a snapshot is one long run), so restoring costs about as
/// many system calls as copying the file.
struct PageWriter {
    ops: Option<SyncSender<Op>>,
    spare: Receiver<Vec<u8>>,
    thread: Option<JoinHandle<std::io::Result<()>>>,
    run: Vec<u8>,
    start: u64,
}

/// What the writer thread does, in order.
enum Op {
    Write(Vec<u8>, u64),
    SetLen(u64),
}

impl PageWriter {
    /// Largest write.
    const RUN: usize = 1 << 20;
    /// Runs in flight (and the buffers that carry them).
    const DEPTH: usize = 4;

    fn start(file: &File) -> PageWriter {
        let (ops, todo) = sync_channel::<Op>(Self::DEPTH);
        let (give_back, spare) = sync_channel(Self::DEPTH);
        for _ in 1..Self::DEPTH {
            give_back.send(Vec::with_capacity(Self::RUN)).expect("the receiver is alive");
        }
        let file = file.try_clone();
        let thread = std::thread::spawn(move || -> std::io::Result<()> {
            let file = file?;
            for op in todo {
                match op {
                    Op::Write(mut run, offset) => {
                        file.write_all_at(&run, offset)?;
                        start_writeback(&file, offset, run.len());
                        run.clear();
                        // The main thread may be gone already (it failed): fine.
                        let _ = give_back.send(run);
                    }
                    Op::SetLen(len) => file.set_len(len)?,
                }
            }
            Ok(())
        });
        PageWriter { ops: Some(ops), spare, thread: Some(thread), run: Vec::with_capacity(Self::RUN), start: 0 }
    }

    fn write(&mut self, offset: u64, page: &[u8]) -> std::io::Result<()> {
        if !self.run.is_empty() && (offset != self.start + self.run.len() as u64 || self.run.len() >= Self::RUN) {
            self.send_run()?;
        }
        if self.run.is_empty() {
            self.start = offset;
        }
        self.run.extend_from_slice(page);
        Ok(())
    }

    /// Sets the file's length once every page written so far is in place.
    fn set_len(&mut self, len: u64) -> std::io::Result<()> {
        self.send_run()?;
        self.send(Op::SetLen(len))
    }

    /// Waits until everything is written; returns the first error.
    fn finish(mut self) -> std::io::Result<()> {
        self.send_run()?;
        self.ops = None;
        self.join()
    }

    fn send_run(&mut self) -> std::io::Result<()> {
        if self.run.is_empty() {
            return Ok(());
        }
        let Ok(next) = self.spare.recv() else { return Err(self.stopped()) };
        let run = std::mem::replace(&mut self.run, next);
        self.send(Op::Write(run, self.start))
    }

    fn send(&mut self, op: Op) -> std::io::Result<()> {
        match self.ops.as_ref().map(|ops| ops.send(op)) {
            Some(Ok(())) => Ok(()),
            _ => Err(self.stopped()),
        }
    }

    /// Stops the thread and returns its result.
    fn join(&mut self) -> std::io::Result<()> {
        self.ops = None;
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(std::io::Error::other("the restore writer thread panicked")),
            None => Ok(()),
        }
    }

    /// Why the thread took no more work: its error.
    fn stopped(&mut self) -> std::io::Error {
        self.join().err().unwrap_or_else(|| std::io::Error::other("the restore writer thread stopped"))
    }
}

/// Asks the kernel to start writing a range to disk now, so the fsync at the end has
/// little left to wait for (cp + fsync pays for the whole file at once).
#[allow(unsafe_code)]
fn start_writeback(file: &File, offset: u64, len: usize) {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain syscall on a descriptor we own; it only starts writeback, and a
    // failure (e.g. an unsupported filesystem) leaves the work to the final fsync.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset as i64, len as i64, libc::SYNC_FILE_RANGE_WRITE);
    }
}

impl Drop for PageWriter {
    /// A failed restore stops the thread before its file is removed.
    fn drop(&mut self) {
        let _ = self.join();
    }
}

fn sqlite_check(path: &Path, check: Check) -> Result<()> {
    let pragma = match check {
        Check::None => return Ok(()),
        Check::Quick => "PRAGMA quick_check",
        Check::Full => "PRAGMA integrity_check",
    };
    let uri = format!("file:{}?immutable=1", path.display());
    let conn = rusqlite::Connection::open_with_flags(
        uri,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_URI,
    )?;
    // Through a memory map the check reads pages without copying them: about ten
    // times faster on a large database (SQLite caps the map at its own maximum).
    let len = fs::metadata(path).map_err(|e| Error::io(format!("stat {}", path.display()), e))?.len();
    conn.execute_batch(&format!("PRAGMA mmap_size = {len}"))?;
    let mut stmt = conn.prepare(pragma)?;
    let lines: Vec<String> = stmt.query_map([], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?;
    if lines != ["ok"] {
        let shown: Vec<&str> = lines.iter().flat_map(|l| l.lines()).take(3).collect();
        return Err(Error::Corrupt(format!(
            "the restored database fails {pragma}: {}{}",
            shown.join("; "),
            if lines.len() > 3 { format!(" (and {} more problems)", lines.len() - 3) } else { String::new() }
        )));
    }
    Ok(())
}

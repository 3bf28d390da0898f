//! SQLite plumbing for capture: walship's own connections, raw page reads through the
//! `sqlite_dbpage` virtual table, and a probe of the `-shm` lock bytes that tells when
//! another process runs a blocking checkpoint.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::error::{Error, Result};

/// Opens one of walship's connections to the database: read-write (it never writes,
/// but the write barrier needs a write lock), never checkpointing on its own, with a
/// small page cache.
pub fn open(path: &Path, busy: Duration) -> Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI,
    )?;
    conn.busy_timeout(busy)?;
    conn.execute_batch("PRAGMA wal_autocheckpoint=0; PRAGMA cache_size=-256;")?;
    Ok(conn)
}

/// Checks that `path` is a SQLite database in WAL mode, switching it to WAL when it is
/// in another journal mode (as Litestream does). Returns true when it switched.
pub fn ensure_wal(path: &Path) -> Result<bool> {
    let meta = std::fs::metadata(path)
        .map_err(|e| Error::BadDatabase(format!("database {}: {e}", path.display())))?;
    if !meta.is_file() {
        return Err(Error::BadDatabase(format!("database {} is not a file", path.display())));
    }
    let mut head = [0u8; 16];
    let n = std::io::Read::read(&mut File::open(path).map_err(|e| Error::io(format!("open {}", path.display()), e))?, &mut head)
        .map_err(|e| Error::io(format!("read {}", path.display()), e))?;
    if n < 16 || &head != b"SQLite format 3\0" {
        return Err(Error::BadDatabase(format!(
            "{} is not a SQLite database (an empty file is not one either: create it with sqlite3 first)",
            path.display()
        )));
    }
    let conn = open(path, Duration::from_secs(5))?;
    let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
    if mode.eq_ignore_ascii_case("wal") {
        return Ok(false);
    }
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(Error::BadDatabase(format!(
            "{} is in journal mode {mode:?} and could not be switched to WAL; run `PRAGMA journal_mode=WAL` on it while no other process has it open",
            path.display()
        )));
    }
    Ok(true)
}

/// Starts a read transaction that holds a WAL read mark until [`end`] is called.
pub fn begin_read(conn: &Connection) -> Result<()> {
    conn.execute_batch("BEGIN")?;
    if let Err(e) = conn.query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get::<_, i64>(0)) {
        let _ = conn.execute_batch("ROLLBACK");
        return Err(e.into());
    }
    Ok(())
}

/// Ends a transaction if one is open.
pub fn end(conn: &Connection) -> Result<()> {
    if !conn.is_autocommit() {
        conn.execute_batch("ROLLBACK")?;
    }
    Ok(())
}

/// Takes the WAL write lock that SQLite's writers take (`WAL_WRITE_LOCK`, byte 120 of
/// the `-shm` file): no other process can commit until [`unlock_writers`]. It is taken
/// directly rather than through `BEGIN IMMEDIATE`, whose read-then-lock sequence fails
/// with `SQLITE_BUSY_SNAPSHOT` whenever a commit lands in between, which under a busy
/// writer is nearly always. Retries every 20 µs until `wait` has passed or
/// `give_way()` says to stop (another process runs a blocking checkpoint that waits
/// for us: waiting for it in turn would be a deadlock). Returns false when it did not
/// get the lock. `shm` must be open for writing, and stay open (see [`Capture`]).
///
/// [`Capture`]: crate::capture::Capture
pub fn try_lock_writers(shm: &File, wait: Duration, give_way: impl Fn() -> bool) -> Result<bool> {
    let deadline = std::time::Instant::now() + wait;
    loop {
        match set_lock(shm, SHM_WRITE_LOCK, libc::F_WRLCK as libc::c_short) {
            Ok(()) => return Ok(true),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EACCES)) => {
                if std::time::Instant::now() >= deadline || give_way() {
                    return Ok(false);
                }
                std::thread::sleep(Duration::from_micros(20));
            }
            Err(e) => return Err(Error::io("lock the WAL's write lock in the -shm file", e)),
        }
    }
}

/// Takes SQLite's write lock through `BEGIN IMMEDIATE` on `conn` (a connection with a
/// zero busy timeout), retrying every 50 µs until `wait` has passed or `give_way()`.
/// Unlike [`try_lock_writers`] this holds back writers in this very process too (POSIX
/// locks never conflict within a process; SQLite's own bookkeeping does).
pub fn try_write_barrier(conn: &Connection, wait: Duration, give_way: impl Fn() -> bool) -> Result<bool> {
    let deadline = std::time::Instant::now() + wait;
    loop {
        match conn.execute_batch("BEGIN IMMEDIATE") {
            Ok(()) => return Ok(true),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if matches!(e.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) =>
            {
                if std::time::Instant::now() >= deadline || give_way() {
                    return Ok(false);
                }
                std::thread::sleep(Duration::from_micros(50));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Releases the lock [`try_lock_writers`] took.
pub fn unlock_writers(shm: &File) -> Result<()> {
    set_lock(shm, SHM_WRITE_LOCK, libc::F_UNLCK as libc::c_short)
        .map_err(|e| Error::io("unlock the WAL's write lock in the -shm file", e))
}

fn set_lock(file: &File, offset: i64, kind: libc::c_short) -> std::io::Result<()> {
    #[allow(unsafe_code)]
    // SAFETY: fcntl(F_SETLK) only reads the flock struct we pass.
    let rc = unsafe {
        let mut lock: libc::flock = std::mem::zeroed();
        lock.l_type = kind;
        lock.l_whence = libc::SEEK_SET as libc::c_short;
        lock.l_start = offset as libc::off_t;
        lock.l_len = 1;
        libc::fcntl(file.as_raw_fd(), libc::F_SETLK, &lock)
    };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

/// The database's page size.
pub fn page_size(conn: &Connection) -> Result<u32> {
    Ok(conn.query_row("PRAGMA page_size", [], |r| r.get(0))?)
}

/// `PRAGMA data_version`: changes when another connection commits or rewrites the WAL.
pub fn data_version(conn: &Connection) -> Result<i64> {
    Ok(conn.query_row("PRAGMA data_version", [], |r| r.get(0))?)
}

/// Result of `PRAGMA wal_checkpoint`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckpointResult {
    /// The checkpoint could not finish (readers or writers were in the way).
    pub busy: bool,
    /// Frames in the WAL.
    pub log: i64,
    /// Frames copied back to the database.
    pub checkpointed: i64,
}

/// Runs `PRAGMA wal_checkpoint(mode)`; `mode` is PASSIVE or TRUNCATE.
pub fn checkpoint(conn: &Connection, mode: &str) -> Result<CheckpointResult> {
    Ok(conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
        Ok(CheckpointResult { busy: r.get::<_, i64>(0)? != 0, log: r.get(1)?, checkpointed: r.get(2)? })
    })?)
}

/// Calls `f(pgno, page)` for every page of the database as the connection's current
/// read transaction sees it, in ascending page order.
pub fn for_each_page(conn: &Connection, mut f: impl FnMut(u32, &[u8]) -> Result<()>) -> Result<u32> {
    let mut stmt = conn.prepare("SELECT pgno, data FROM sqlite_dbpage")?;
    let mut rows = stmt.query([])?;
    let mut count = 0;
    while let Some(row) = rows.next()? {
        let pgno: u32 = row.get(0)?;
        let data = row.get_ref(1)?.as_blob().map_err(rusqlite::Error::from)?;
        f(pgno, data)?;
        count = pgno;
    }
    Ok(count)
}

/// The shm lock bytes SQLite's unix VFS uses (`WAL_WRITE_LOCK`, `WAL_CKPT_LOCK`).
const SHM_WRITE_LOCK: i64 = 120;
const SHM_CKPT_LOCK: i64 = 121;

/// Whether another process holds both the WAL write lock and the checkpoint lock: the
/// signature of a FULL/RESTART/TRUNCATE checkpoint, which waits for readers like ours.
pub fn foreign_blocking_checkpoint(shm: &File) -> bool {
    held_by_other_process(shm, SHM_CKPT_LOCK) && held_by_other_process(shm, SHM_WRITE_LOCK)
}

/// Whether another process holds the checkpoint lock.
pub fn foreign_checkpoint(shm: &File) -> bool {
    held_by_other_process(shm, SHM_CKPT_LOCK)
}

fn held_by_other_process(file: &File, offset: i64) -> bool {
    // F_GETLK never reports this process's own locks, which is what we want here.
    #[allow(unsafe_code)]
    // SAFETY: fcntl(F_GETLK) only reads and writes the flock struct we pass.
    unsafe {
        let mut lock: libc::flock = std::mem::zeroed();
        lock.l_type = libc::F_WRLCK as _;
        lock.l_whence = libc::SEEK_SET as _;
        lock.l_start = offset as _;
        lock.l_len = 1;
        libc::fcntl(file.as_raw_fd(), libc::F_GETLK, &mut lock) == 0 && lock.l_type != libc::F_UNLCK as libc::c_short
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> (tempfile::TempDir, std::path::PathBuf, Connection) {
        // (The app connection keeps the -shm file in existence.)
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let app = Connection::open(&path).unwrap();
        app.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t(x); INSERT INTO t VALUES (1);").unwrap();
        (dir, path, app)
    }

    /// The TRUNCATE race check in capture relies on this: our own TRUNCATE checkpoint
    /// leaves `data_version` alone, another connection's commit moves it.
    #[test]
    fn data_version_sees_foreign_commits_across_our_truncate() {
        let (_dir, path, app) = db();
        let ours = open(&path, Duration::from_secs(1)).unwrap();
        let before = data_version(&ours).unwrap();
        let r = checkpoint(&ours, "TRUNCATE").unwrap();
        assert!(!r.busy);
        assert_eq!(data_version(&ours).unwrap(), before, "own checkpoint must not count");

        app.execute("INSERT INTO t VALUES (2)", []).unwrap();
        let before = data_version(&ours).unwrap();
        app.execute("INSERT INTO t VALUES (3)", []).unwrap();
        let r = checkpoint(&ours, "TRUNCATE").unwrap();
        assert!(!r.busy);
        assert_ne!(data_version(&ours).unwrap(), before, "a foreign commit must count");
    }

    #[test]
    fn the_writer_lock_blocks_other_processes_writers() {
        let (dir, path, app) = db();
        let shm = File::options().read(true).write(true).open(dir.path().join("t.db-shm")).unwrap();
        assert!(try_lock_writers(&shm, Duration::from_millis(100), || false).unwrap());
        // Another process (same-process locks never conflict under POSIX).
        let insert = |timeout_ms: u32| {
            std::process::Command::new("python3")
                .args(["-c", &format!(
                    "import sqlite3; c=sqlite3.connect({:?}, timeout={}); c.execute('insert into t values (5)'); c.commit()",
                    path.to_str().unwrap(), f64::from(timeout_ms) / 1000.0
                )])
                .status()
                .unwrap()
                .success()
        };
        assert!(!insert(50), "a writer committed while walship held the write lock");
        unlock_writers(&shm).unwrap();
        assert!(insert(2000));
        let n: i64 = app.query_row("SELECT count(*) FROM t WHERE x = 5", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 1);
    }

    #[test]
    fn pages_come_in_order_and_whole() {
        let (_dir, path, app) = db();
        app.execute("INSERT INTO t SELECT zeroblob(5000) FROM generate_series(1, 20)", []).ok();
        let ours = open(&path, Duration::from_secs(1)).unwrap();
        begin_read(&ours).unwrap();
        let mut last = 0;
        let n = for_each_page(&ours, |pgno, data| {
            assert_eq!(pgno, last + 1);
            assert_eq!(data.len(), 4096);
            last = pgno;
            Ok(())
        })
        .unwrap();
        let count: u32 = ours.query_row("PRAGMA page_count", [], |r| r.get(0)).unwrap();
        assert_eq!(n, count);
    }

    #[test]
    fn non_sqlite_and_empty_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.db");
        std::fs::write(&junk, b"hello, this is not a database at all").unwrap();
        assert!(matches!(ensure_wal(&junk), Err(Error::BadDatabase(m)) if m.contains("not a SQLite database")));
        let empty = dir.path().join("empty.db");
        std::fs::write(&empty, b"").unwrap();
        assert!(matches!(ensure_wal(&empty), Err(Error::BadDatabase(_))));
        assert!(matches!(ensure_wal(&dir.path().join("missing.db")), Err(Error::BadDatabase(_))));
    }

    #[test]
    fn rollback_journal_databases_are_switched_to_wal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.db");
        Connection::open(&path).unwrap().execute_batch("CREATE TABLE t(x)").unwrap();
        assert!(ensure_wal(&path).unwrap());
        assert!(!ensure_wal(&path).unwrap());
    }
}

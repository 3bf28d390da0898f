//! Capture driven in-process against a real database and a real writer connection:
//! after every scenario, the local files restore to exactly the primary's content, and
//! every intermediate TXID restores to a database that passes `integrity_check`.

use std::path::{Path, PathBuf};

use rusqlite::Connection;

use super::*;
use crate::restore::{self, Check, Target};
use crate::store::folder::FolderStore;

struct Fixture {
    _dir: tempfile::TempDir,
    db: PathBuf,
    app: Connection,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let app = Connection::open(&db).unwrap();
    app.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB);").unwrap();
    app.busy_timeout(Duration::from_millis(200)).unwrap();
    Fixture { _dir: dir, db, app }
}

fn open(f: &Fixture, opts: CaptureOptions) -> Capture {
    let local = LocalDir::open(&f.db).unwrap();
    let resume = local.last_pos().unwrap().unwrap_or_default();
    Capture::open(&f.db, local, resume, opts).unwrap()
}

fn write(app: &Connection, rows: usize, size: usize) {
    for _ in 0..rows {
        app.execute("INSERT INTO t(v) VALUES (randomblob(?1))", [size as i64]).unwrap();
    }
}

/// A logical dump: every table's rows in rowid order.
fn content(conn: &Connection) -> String {
    let mut out = String::new();
    let mut tables = conn.prepare("SELECT name, sql FROM sqlite_schema ORDER BY name").unwrap();
    let rows: Vec<(String, Option<String>)> =
        tables.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().map(Result::unwrap).collect();
    for (name, sql) in rows {
        out.push_str(&format!("{name}: {sql:?}\n"));
        if sql.is_some_and(|s| s.starts_with("CREATE TABLE")) {
            let mut stmt = conn.prepare(&format!("SELECT quote(v) FROM \"{name}\" ORDER BY rowid")).unwrap();
            for v in stmt.query_map([], |r| r.get::<_, String>(0)).unwrap() {
                out.push_str(&v.unwrap());
                out.push('\n');
            }
        }
    }
    out
}

fn restore_local(db: &Path, target: Target) -> Connection {
    let store = FolderStore::new(LocalDir::path_for(db));
    let out = db.with_file_name(format!("restored-{}.db", now_ms() ^ rand_suffix()));
    restore::restore(&store, target, &out, false, Check::Full).unwrap();
    Connection::open(&out).unwrap()
}

fn rand_suffix() -> i64 {
    use std::sync::atomic::{AtomicI64, Ordering};
    static N: AtomicI64 = AtomicI64::new(0);
    N.fetch_add(1, Ordering::Relaxed) << 48
}

/// Restores latest and compares with the primary; restores every TXID and checks it.
fn check(f: &Fixture, capture: &Capture) {
    let latest = restore_local(&f.db, Target::Latest);
    assert_eq!(content(&latest), content(&f.app), "latest restore differs from the primary");
    for txid in 1..=capture.pos().txid.0 {
        restore_local(&f.db, Target::TxId(TxId(txid)));
    }
}

#[test]
fn every_commit_is_captured_and_restores_exactly() {
    let f = fixture();
    let mut c = open(&f, CaptureOptions::default());
    for round in 0..20 {
        write(&f.app, round % 4 + 1, 100 + round * 300);
        c.tick().unwrap();
    }
    f.app.execute("DELETE FROM t WHERE id % 2 = 0", []).unwrap();
    c.tick().unwrap();
    check(&f, &c);
}

#[test]
fn unchanged_pages_are_left_out() {
    let f = fixture();
    write(&f.app, 200, 500);
    let mut c = open(&f, CaptureOptions::default());
    f.app.execute("UPDATE t SET v = v WHERE id = 1", []).unwrap();
    let written = c.tick().unwrap();
    // Rewriting a row with the same bytes changes only page 1's change counter.
    for key in written {
        let bytes = std::fs::read(c.local().file_path(key)).unwrap();
        let (_, pages, _) = ltx::decode_all(&bytes).unwrap();
        assert!(pages.len() <= 2, "{} pages for a no-op update", pages.len());
    }
    check(&f, &c);
}

#[test]
fn our_checkpoints_keep_the_wal_bounded() {
    let f = fixture();
    let opts = CaptureOptions { checkpoint_frames: 50, truncate_bytes: 256 << 10, ..CaptureOptions::default() };
    let mut c = open(&f, opts);
    let mut max_wal = 0;
    for _ in 0..100 {
        write(&f.app, 5, 2000);
        c.tick().unwrap();
        max_wal = max_wal.max(std::fs::metadata(sibling(&f.db, "-wal")).map_or(0, |m| m.len()));
    }
    assert!(max_wal < 2 << 20, "WAL reached {max_wal} bytes");
    check(&f, &c);
}

#[test]
fn app_checkpoints_of_every_mode_lose_nothing() {
    let f = fixture();
    // The app's own connection checkpoints often, as apps do by default.
    f.app.execute_batch("PRAGMA wal_autocheckpoint=20").unwrap();
    let mut c = open(&f, CaptureOptions { checkpoint_frames: 30, ..CaptureOptions::default() });
    for round in 0..40 {
        write(&f.app, 3, 1500);
        if round % 5 == 0 {
            let mode = ["PASSIVE", "FULL", "RESTART", "TRUNCATE"][round / 5 % 4];
            // Busy results are fine (our pin may be in the way); lost commits are not.
            let _ = f.app.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |_| Ok(()));
        }
        if round % 3 != 0 {
            c.tick().unwrap();
        }
    }
    c.tick().unwrap();
    check(&f, &c);
}

#[test]
fn a_clean_restart_continues_with_only_the_changes() {
    let f = fixture();
    write(&f.app, 300, 1000);
    let c = open(&f, CaptureOptions::default());
    c.close().unwrap();
    f.app.execute("UPDATE t SET v = randomblob(10) WHERE id = 7", []).unwrap();
    let c = open(&f, CaptureOptions::default());
    let newest = c.local().files().unwrap().pop().unwrap();
    let (header, pages, _) = ltx::decode_all(&std::fs::read(c.local().file_path(newest)).unwrap()).unwrap();
    assert!(!header.is_snapshot());
    assert!(pages.len() < 5, "a one-row change after a clean stop wrote {} pages", pages.len());
    check(&f, &c);
}

#[test]
fn a_crash_restart_writes_a_full_image_and_stays_exact() {
    let f = fixture();
    write(&f.app, 100, 1000);
    let mut c = open(&f, CaptureOptions::default());
    write(&f.app, 10, 1000);
    c.tick().unwrap();
    drop(c); // no close: as after kill -9
    write(&f.app, 10, 1000);
    f.app.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())).unwrap();
    write(&f.app, 10, 1000);
    let c = open(&f, CaptureOptions::default());
    check(&f, &c);
}

#[test]
fn shrinking_databases_are_truncated() {
    let f = fixture();
    write(&f.app, 300, 3000);
    let mut c = open(&f, CaptureOptions::default());
    f.app.execute_batch("DELETE FROM t WHERE id > 10; VACUUM;").unwrap();
    c.tick().unwrap();
    let pages: u32 = f.app.query_row("PRAGMA page_count", [], |r| r.get(0)).unwrap();
    let restored = restore_local(&f.db, Target::Latest);
    let restored_pages: u32 = restored.query_row("PRAGMA page_count", [], |r| r.get(0)).unwrap();
    assert_eq!(pages, restored_pages);
    check(&f, &c);
}

#[test]
fn large_backlogs_are_split_at_commit_boundaries() {
    let f = fixture();
    let mut c = open(&f, CaptureOptions { max_batch_bytes: 64 << 10, ..CaptureOptions::default() });
    // The first read after a rescan is never cut (see `capture_to_end`), so start after it.
    write(&f.app, 1, 10);
    c.tick().unwrap();
    write(&f.app, 200, 3000);
    let written = c.tick().unwrap();
    assert!(written.len() > 3, "{} files for a 600 KB backlog with a 64 KB batch limit", written.len());
    check(&f, &c);
}

#[test]
fn snapshots_match_the_captured_state() {
    let f = fixture();
    write(&f.app, 50, 2000);
    let mut c = open(&f, CaptureOptions::default());
    write(&f.app, 5, 2000);
    let key = c.snapshot().unwrap();
    assert_eq!(key.level, SNAPSHOT_LEVEL);
    assert_eq!(key.max, c.pos().txid);
    check(&f, &c);
}

#[test]
fn a_burst_is_truncated_once_commits_pause() {
    let f = fixture();
    let opts = CaptureOptions { checkpoint_frames: 1_000_000, truncate_bytes: 256 << 10, ..CaptureOptions::default() };
    let mut c = open(&f, opts);
    f.app.execute_batch("BEGIN").unwrap();
    write(&f.app, 500, 4000);
    f.app.execute_batch("COMMIT").unwrap();
    c.tick().unwrap();
    let wal = sibling(&f.db, "-wal");
    assert!(std::fs::metadata(&wal).unwrap().len() > 1 << 20);
    std::thread::sleep(TRUNCATE_QUIET + Duration::from_millis(100));
    c.tick().unwrap();
    assert_eq!(std::fs::metadata(&wal).unwrap().len(), 0, "the WAL was not truncated after the pause");
    write(&f.app, 3, 100);
    c.tick().unwrap();
    check(&f, &c);
}

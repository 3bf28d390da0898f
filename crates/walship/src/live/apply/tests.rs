//! The follower's apply path against real databases: files captured from a real
//! primary are applied to a replica; readers, crashes, bad files and foreign writes.

use std::path::PathBuf;

use rusqlite::Connection;

use super::*;
use crate::capture::{Capture, CaptureOptions};
use crate::local::LocalDir;

struct Primary {
    dir: tempfile::TempDir,
    db: PathBuf,
    app: Connection,
    capture: Capture,
}

fn primary() -> Primary {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let app = Connection::open(&db).unwrap();
    app.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB);").unwrap();
    let capture = Capture::open(&db, LocalDir::open(&db).unwrap(), Pos::default(), CaptureOptions::default()).unwrap();
    Primary { dir, db, app, capture }
}

impl Primary {
    /// Commits `rows` inserts and captures them; returns the new files' paths.
    fn commit(&mut self, rows: usize) -> Vec<PathBuf> {
        for _ in 0..rows {
            self.app.execute("INSERT INTO t(v) VALUES (randomblob(300))", []).unwrap();
        }
        self.capture.tick().unwrap().into_iter().map(|k| self.capture.local().file_path(k)).collect()
    }

    fn snapshot(&mut self) -> PathBuf {
        let key = self.capture.snapshot().unwrap();
        self.capture.local().file_path(key)
    }

    fn replica(&self, name: &str) -> (PathBuf, PositionFile) {
        let path = self.dir.path().join(name);
        (path.clone(), PositionFile::new(self.dir.path().join(format!("{name}.position"))))
    }
}

fn apply_file(db: &mut ReplicaDb, path: &std::path::Path) -> Applied {
    db.apply(std::fs::File::open(path).unwrap(), &path.display().to_string(), None).unwrap()
}

fn dump(path: &std::path::Path) -> Vec<(i64, Vec<u8>)> {
    let conn = Connection::open(path).unwrap();
    let mut stmt = conn.prepare("SELECT id, v FROM t ORDER BY id").unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().map(Result::unwrap).collect()
}

fn integrity(path: &std::path::Path) -> String {
    Connection::open(path).unwrap().query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap()
}

#[test]
fn snapshot_then_files_give_the_primary_state_and_readers_see_whole_transactions() {
    let mut p = primary();
    p.commit(50);
    let snap = p.snapshot();
    let (path, position) = p.replica("replica.db");
    let mut r = ReplicaDb::open(&path, position).unwrap();
    assert_eq!(r.pos().txid, TxId(0));
    assert!(matches!(apply_file(&mut r, &snap), Applied::Ok(_)));
    assert_eq!(dump(&path), dump(&p.db));
    assert_eq!(r.pos(), p.capture.pos());

    // A reader inside a read transaction keeps its view while files are applied.
    let reader = Connection::open(&path).unwrap();
    reader.execute_batch("BEGIN").unwrap();
    let before: i64 = reader.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap();
    for _ in 0..5 {
        for f in p.commit(7) {
            assert!(matches!(apply_file(&mut r, &f), Applied::Ok(_)));
        }
    }
    let during: i64 = reader.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap();
    assert_eq!(before, during);
    reader.execute_batch("COMMIT").unwrap();
    let after: i64 = reader.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap();
    assert_eq!(after, before + 35);
    assert_eq!(dump(&path), dump(&p.db));
    assert_eq!(integrity(&path), "ok");
    assert_eq!(r.pos(), p.capture.pos());
    let mode: String = Connection::open(&path).unwrap().query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
    assert_eq!(mode, "wal");
}

#[test]
fn shrinking_database_is_truncated_and_reopen_resumes() {
    let mut p = primary();
    p.commit(400);
    let snap = p.snapshot();
    let (path, position) = p.replica("replica.db");
    let mut r = ReplicaDb::open(&path, position).unwrap();
    apply_file(&mut r, &snap);
    p.app.execute_batch("DELETE FROM t WHERE id > 10; VACUUM;").unwrap();
    for f in p.commit(1) {
        assert!(matches!(apply_file(&mut r, &f), Applied::Ok(_)));
    }
    let pages = |path: &std::path::Path| -> i64 { Connection::open(path).unwrap().query_row("PRAGMA page_count", [], |r| r.get(0)).unwrap() };
    assert_eq!(pages(&path), pages(&p.db));
    assert_eq!(dump(&path), dump(&p.db));
    let pos = r.pos();
    drop(r);
    let (_, position) = p.replica("replica.db");
    let r = ReplicaDb::open(&path, position).unwrap();
    assert_eq!(r.pos(), pos, "a clean reopen resumes at the saved position");
}

#[test]
fn bad_files_change_nothing() {
    let mut p = primary();
    p.commit(20);
    let snap = p.snapshot();
    let (path, position) = p.replica("replica.db");
    let mut r = ReplicaDb::open(&path, position).unwrap();
    apply_file(&mut r, &snap);
    let before = (dump(&path), r.pos());
    let files = p.commit(30);
    let bytes = std::fs::read(&files[0]).unwrap();

    // Cut short: the transaction is rolled back.
    assert!(r.apply(&bytes[..bytes.len() - 20], "cut", None).is_err());
    // One flipped bit in a page.
    let mut flipped = bytes.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x10;
    assert!(r.apply(&flipped[..], "flipped", None).is_err());
    assert_eq!((dump(&path), r.pos()), before);
    assert_eq!(integrity(&path), "ok");

    // A file that does not follow the position is a gap, not applied.
    let later = p.commit(3);
    assert!(matches!(r.apply(std::fs::File::open(&later[0]).unwrap(), "later", None).unwrap(), Applied::Gap));
    assert_eq!((dump(&path), r.pos()), before);
    // The good files still apply afterwards.
    assert!(matches!(r.apply(&bytes[..], "good", None).unwrap(), Applied::Ok(_)));
    assert!(matches!(apply_file(&mut r, &later[0]), Applied::Ok(_)));
    assert_eq!(dump(&path), dump(&p.db));
}

#[test]
fn foreign_writes_are_detected_and_a_snapshot_heals_them() {
    let mut p = primary();
    p.commit(20);
    let snap = p.snapshot();
    let (path, position) = p.replica("replica.db");
    let mut r = ReplicaDb::open(&path, position).unwrap();
    apply_file(&mut r, &snap);
    assert!(!r.check_foreign_writes().unwrap());

    // A checkpoint by another connection is not a content change.
    Connection::open(&path).unwrap().execute_batch("PRAGMA wal_checkpoint(TRUNCATE)").unwrap();
    assert!(!r.check_foreign_writes().unwrap());

    Connection::open(&path).unwrap().execute("UPDATE t SET v = x'00' WHERE id = 3", []).unwrap();
    assert!(r.check_foreign_writes().unwrap());
    assert_eq!(r.pos().txid, TxId(0), "the position is forgotten");
    let files = p.commit(2);
    assert!(matches!(apply_file(&mut r, &files[0]), Applied::Gap), "only a snapshot can follow");
    let snap = p.snapshot();
    assert!(matches!(apply_file(&mut r, &snap), Applied::Ok(_)));
    assert_eq!(dump(&path), dump(&p.db));

    // Written while the follower was down: found at open.
    let pos = r.pos();
    drop(r);
    Connection::open(&path).unwrap().execute("DELETE FROM t WHERE id = 4", []).unwrap();
    let (_, position) = p.replica("replica.db");
    let r = ReplicaDb::open(&path, position).unwrap();
    assert_ne!(r.pos(), pos);
    assert_eq!(r.pos().txid, TxId(0));
}

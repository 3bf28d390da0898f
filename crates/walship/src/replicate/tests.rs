//! `run` in-process with a real writer thread and fault-injecting stores: replication
//! converges, and a replica that fails never holds up capture or the other replicas.

use std::sync::Arc;
use std::thread;

use rusqlite::Connection;

use super::*;
use crate::restore::{self, Check, Target};
use crate::store::faulty::{Faults, FaultyStore};
use crate::store::folder::FolderStore;

fn database(dir: &Path) -> PathBuf {
    let db = dir.join("app.db");
    let c = Connection::open(&db).unwrap();
    c.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB);").unwrap();
    db
}

fn rows(db: &Path) -> Vec<(i64, Vec<u8>)> {
    let c = Connection::open(db).unwrap();
    let mut s = c.prepare("SELECT id, v FROM t ORDER BY id").unwrap();
    s.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().map(Result::unwrap).collect()
}

/// Runs replicate while a writer commits `commits` transactions, then stops it.
fn replicate_while_writing(db: &Path, spec: DbSpec, commits: usize) -> Result<()> {
    let stop = Arc::new(Stop::default());
    let runner = {
        let stop = stop.clone();
        thread::spawn(move || run(spec, stop))
    };
    let app = Connection::open(db).unwrap();
    app.busy_timeout(Duration::from_secs(5)).unwrap();
    for i in 0..commits {
        app.execute("INSERT INTO t(v) VALUES (randomblob(?1))", [(i % 7) as i64 * 700 + 10]).unwrap();
        if i % 10 == 0 {
            app.execute("DELETE FROM t WHERE id % 5 = 0", []).unwrap();
        }
        thread::sleep(Duration::from_millis(2));
    }
    stop.set();
    runner.join().unwrap()
}

fn restored_rows(replica: &Path) -> Vec<(i64, Vec<u8>)> {
    let out = replica.with_extension("restored.db");
    restore::restore(&FolderStore::new(replica.to_path_buf()), Target::Latest, &out, true, Check::Full).unwrap();
    rows(&out)
}

#[test]
fn replication_converges_through_storage_faults() {
    let dir = tempfile::tempdir().unwrap();
    let db = database(dir.path());
    let replica = dir.path().join("replica");
    let faulty = FaultyStore::new(
        Box::new(FolderStore::new(replica.clone())),
        Faults { fail: 0.15, lost: 0.1, seed: 3, ..Faults::default() },
    );
    let spec = DbSpec { drain: Duration::from_secs(60), ..DbSpec::new(db.clone(), vec![Box::new(faulty)]) };
    replicate_while_writing(&db, spec, 80).unwrap();
    assert_eq!(restored_rows(&replica), rows(&db));
}

#[test]
fn a_failing_replica_holds_up_neither_capture_nor_the_other_replica() {
    let dir = tempfile::tempdir().unwrap();
    let db = database(dir.path());
    let good = dir.path().join("good");
    // A first run leaves local state, so the next start need not list the dead replica.
    let spec = DbSpec::new(db.clone(), vec![Box::new(FolderStore::new(good.clone()))]);
    replicate_while_writing(&db, spec, 5).unwrap();
    let dead = FaultyStore::new(
        Box::new(FolderStore::new(dir.path().join("dead"))),
        Faults { fail: 1.0, ..Faults::default() },
    );
    let spec = DbSpec {
        drain: Duration::from_secs(2),
        ..DbSpec::new(db.clone(), vec![Box::new(FolderStore::new(good.clone())), Box::new(dead)])
    };
    let err = replicate_while_writing(&db, spec, 100).unwrap_err();
    assert!(err.to_string().contains("took no file"), "{err}");
    assert_eq!(restored_rows(&good), rows(&db));
    // The files the dead replica lacks stay local, for the next start.
    let local = crate::local::list(&LocalDir::path_for(&db.canonicalize().unwrap()), 0).unwrap();
    assert!(local.len() > 10, "only {} local files kept for the dead replica", local.len());
}

#[test]
fn without_local_state_a_start_waits_for_the_replicas_history() {
    let dir = tempfile::tempdir().unwrap();
    let db = database(dir.path());
    let replica = dir.path().join("replica");
    let spec = DbSpec::new(db.clone(), vec![Box::new(FolderStore::new(replica.clone()))]);
    replicate_while_writing(&db, spec, 20).unwrap();
    let before = FolderStore::new(replica.clone()).list(0).unwrap().len();
    // The state folder is lost (a new machine): numbering must continue the replica's.
    std::fs::remove_dir_all(LocalDir::path_for(&db.canonicalize().unwrap())).unwrap();
    let flaky = FaultyStore::new(
        Box::new(FolderStore::new(replica.clone())),
        Faults { first: 3, ..Faults::default() },
    );
    replicate_while_writing(&db, DbSpec::new(db.clone(), vec![Box::new(flaky)]), 150).unwrap();
    let files = FolderStore::new(replica.clone()).list(0).unwrap();
    assert!(files.len() > before);
    for pair in files.windows(2) {
        assert_eq!(pair[0].key.max.0 + 1, pair[1].key.min.0, "gap or overlap: {pair:?}");
    }
    assert_eq!(restored_rows(&replica), rows(&db));
}

#[test]
fn a_new_replica_is_seeded_with_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let db = database(dir.path());
    let first = dir.path().join("first");
    let spec = DbSpec::new(db.clone(), vec![Box::new(FolderStore::new(first.clone()))]);
    replicate_while_writing(&db, spec, 40).unwrap();
    // A second replica joins later: the local files before it are gone, so it needs a snapshot.
    let second = dir.path().join("second");
    let spec = DbSpec::new(
        db.clone(),
        vec![Box::new(FolderStore::new(first.clone())), Box::new(FolderStore::new(second.clone()))],
    );
    replicate_while_writing(&db, spec, 40).unwrap();
    assert_eq!(restored_rows(&first), rows(&db));
    assert_eq!(restored_rows(&second), rows(&db));
    assert!(!FolderStore::new(second).list(SNAPSHOT_LEVEL).unwrap().is_empty());
}

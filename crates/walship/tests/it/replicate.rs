//! `walship replicate` against real concurrent writers.

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::support::*;
use crate::workload::{FAST, MIXED, SCHEMA, UNTIL_STOPPED};

const SECS: Duration = Duration::from_secs(1);

/// Two writers, random DML with overflow blobs, DDL and their own checkpoints, while
/// walship replicates; a restore mid-flight is consistent and the final one is exact.
#[test]
fn concurrent_writers_with_ddl_and_app_checkpoints() {
    let dir = tempdir();
    let db = dir.path().join("app.db");
    let replica = dir.path().join("replica");
    create_db(&db, SCHEMA);
    let mut rep = Replicator::start(&db, &[s(&replica)]);
    let w1 = Writer::start(MIXED, &[s(&db), "11", "5", "1"]);
    let w2 = Writer::start(MIXED, &[s(&db), "22", "5", "2"]);

    // Mid-flight, twice: the replica restores to a consistent database while writes go on.
    for (i, min_txid) in [(0, 5u64), (1, 40)] {
        assert!(
            wait_until(20 * SECS, || newest_txid(&replica) >= min_txid),
            "replica did not reach TXID {min_txid}; log:\n{}",
            rep.0.log_text()
        );
        let mid = dir.path().join(format!("mid{i}.db"));
        restore_hash(s(&replica), &mid, &["--check", "full"], false);
    }

    w1.finish(30 * SECS);
    w2.finish(30 * SECS);
    rep.assert_running();
    rep.stop();

    let primary = dump_hash(&db, false);
    let out = dir.path().join("restored.db");
    assert_eq!(restore_hash(s(&replica), &out, &[], false), primary, "final restore differs from the primary");
    let files = ltx_files(&replica);
    assert!(files.iter().filter(|f| f.0 == 0).count() > 20, "too few captures for 5 s of writes: {files:?}");
}

/// `kill -9` of walship at random moments while a writer keeps going; every restart
/// continues the history without gaps or duplicates and the final restore is exact.
#[test]
fn kill_9_and_restart_loses_nothing() {
    let seed: u64 = std::env::var("WALSHIP_IT_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    println!("kill_9 seed: {seed} (set WALSHIP_IT_SEED to repeat)");
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempdir();
    let db = dir.path().join("app.db");
    let replica = dir.path().join("replica");
    let stop_file = dir.path().join("stop");
    create_db(&db, SCHEMA);
    let writer = Writer::start(UNTIL_STOPPED, &[s(&db), "5", s(&stop_file)]);

    for cycle in 0..5 {
        let mut rep = Replicator::start(&db, &[s(&replica)]);
        // The kill moment (random on purpose; nothing is asserted from this wait).
        std::thread::sleep(Duration::from_millis(rng.random_range(200..1500)));
        rep.assert_running();
        rep.0.kill9();
        // Whatever reached the replica so far restores to a consistent database.
        if newest_txid(&replica) > 0 {
            let out = dir.path().join(format!("cycle{cycle}.db"));
            restore_hash(s(&replica), &out, &[], false);
        }
    }

    let before = newest_txid(&replica);
    let mut rep = Replicator::start(&db, &[s(&replica)]);
    assert!(
        wait_until(20 * SECS, || newest_txid(&replica) > before + 3),
        "no progress after the last restart; log:\n{}",
        rep.0.log_text()
    );
    std::fs::write(&stop_file, b"").unwrap();
    writer.finish(30 * SECS);
    wait_stable(&replica, SECS, 30 * SECS);
    rep.assert_running();
    rep.stop();

    let out = dir.path().join("restored.db");
    assert_eq!(restore_hash(s(&replica), &out, &[], false), dump_hash(&db, false), "seed {seed}");
    assert_contiguous(&ltx_files(&replica), seed);
}

#[track_caller]
fn assert_contiguous(files: &[(u8, u64, u64)], seed: u64) {
    let l0: Vec<(u64, u64)> = files.iter().filter(|f| f.0 == 0).map(|f| (f.1, f.2)).collect();
    assert!(!l0.is_empty());
    assert_eq!(l0[0].0, 1, "level 0 does not start at TXID 1 (seed {seed}): {l0:?}");
    for pair in l0.windows(2) {
        assert_eq!(pair[1].0, pair[0].1 + 1, "gap or duplicate in level 0 after {:?} (seed {seed}): {l0:?}", pair[0]);
    }
}

const APP_TRUNCATE: &str = r#"
import sqlite3, sys, time, os
db, n = sys.argv[1], int(sys.argv[2])
c = sqlite3.connect(db, timeout=10, isolation_level=None)
c.execute("PRAGMA busy_timeout=10000")
for i in range(n):
    c.execute("INSERT INTO t(w, k, v) VALUES (3, ?, ?)", (i, os.urandom(2000)))
t = time.time()
busy, log, ckpt = c.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
el = time.time() - t
c.execute("INSERT INTO t(w, k, v) VALUES (4, 0, 'after')")
c.close()
print(busy, log, ckpt, el)
"#;

/// The app's own TRUNCATE checkpoint (with a long busy timeout) must not wait for
/// walship's read pin: Litestream's makes it hang for the whole busy timeout.
#[test]
fn app_truncate_checkpoint_is_not_blocked() {
    let dir = tempdir();
    let db = dir.path().join("app.db");
    let replica = dir.path().join("replica");
    create_db(&db, SCHEMA);
    let rep = Replicator::start(&db, &[s(&replica)]);
    assert!(wait_until(10 * SECS, || newest_txid(&replica) >= 1), "no first file; log:\n{}", rep.0.log_text());
    for round in 0..3 {
        let out = python(APP_TRUNCATE, &[s(&db), "50"]);
        let f: Vec<&str> = out.split_whitespace().collect();
        let elapsed: f64 = f[3].parse().unwrap();
        assert_eq!(f[0], "0", "round {round}: TRUNCATE checkpoint reported busy ({out}) after {elapsed:.2}s");
        assert!(elapsed < 5.0, "round {round}: TRUNCATE checkpoint took {elapsed:.2}s");
    }
    rep.finish_and_check(&db, &replica, 20 * SECS);
}

/// A writer going flat out for 5 s: walship's checkpoints keep the `-wal` file bounded
/// and the replica keeps up.
#[test]
fn fast_writer_wal_stays_bounded() {
    let dir = tempdir();
    let db = dir.path().join("app.db");
    let wal = dir.path().join("app.db-wal");
    let replica = dir.path().join("replica");
    create_db(&db, SCHEMA);
    let rep = Replicator::start(&db, &[s(&replica)]);
    assert!(wait_until(10 * SECS, || newest_txid(&replica) >= 1), "no first file; log:\n{}", rep.0.log_text());
    let mut writer = Writer::start(FAST, &[s(&db), "5"]);
    let mut max_wal = 0u64;
    let started = Instant::now();
    while writer.0.running() {
        max_wal = max_wal.max(std::fs::metadata(&wal).map_or(0, |m| m.len()));
        assert!(started.elapsed() < 60 * SECS, "writer did not finish");
        std::thread::sleep(Duration::from_millis(10));
    }
    writer.finish(SECS);
    println!("largest -wal seen: {} KiB", max_wal / 1024);
    assert!(max_wal > 0, "never saw a -wal file");
    assert!(max_wal <= 64 << 20, "-wal grew to {max_wal} bytes");
    rep.finish_and_check(&db, &replica, 60 * SECS);
}

/// Under sustained writes captures start at least `min-capture-interval` apart (each
/// pass writes at most two files: the commits it found, and those a checkpoint found),
/// and nothing is lost by grouping commits.
#[test]
fn sustained_writes_are_captured_at_the_min_interval() {
    let dir = tempdir();
    let db = dir.path().join("app.db");
    let replica = dir.path().join("replica");
    create_db(&db, SCHEMA);
    let config = dir.path().join("walship.yml");
    let yaml = format!("dbs:\n  - path: {}\n    min-capture-interval: 250ms\n    replica:\n      path: {}\n", db.display(), replica.display());
    std::fs::write(&config, yaml).unwrap();
    let rep = Replicator::start_config(&config);
    assert!(wait_until(10 * SECS, || newest_txid(&replica) >= 1), "no first file; log:\n{}", rep.0.log_text());
    let first = newest_txid(&replica);
    let started = Instant::now();
    let writer = Writer::start(FAST, &[s(&db), "2"]);
    writer.finish(60 * SECS);
    let last = wait_stable(&replica, SECS, 60 * SECS);
    // Passes start 250 ms apart from the first one after `first`; the final one may
    // come after the writer stopped.
    let passes = (started.elapsed() + SECS).as_millis() / 250 + 1;
    let captures = u128::from(last - first);
    println!("{captures} files for the writer's commits in {:?} ({passes} passes at most)", started.elapsed());
    assert!(captures >= 2, "the writer's commits made {captures} files");
    assert!(captures <= 2 * passes, "{captures} files in {passes} passes: captures were not spaced");
    rep.finish_and_check(&db, &replica, 60 * SECS);
}

/// `replicate --config` with `$VAR` expansion and two replicas per database.
#[test]
fn config_file_with_env_and_two_replicas() {
    let dir = tempdir();
    let db = dir.path().join("app.db");
    let r1 = dir.path().join("r1");
    let r2 = dir.path().join("r2");
    create_db(&db, SCHEMA);
    let config = dir.path().join("walship.yml");
    std::fs::write(
        &config,
        format!(
            "dbs:\n  - path: {}\n    replicas:\n      - type: file\n        path: $WALSHIP_IT_DIR/r1\n      - url: file://${{WALSHIP_IT_DIR}}/r2\n",
            db.display()
        ),
    )
    .unwrap();
    let mut cmd = std::process::Command::new(bin());
    cmd.arg("replicate").arg("--config").arg(&config).env("WALSHIP_IT_DIR", dir.path());
    let mut rep = Replicator(Proc::spawn("walship replicate", cmd, Some(dir.path().join("replicate.log"))));
    exec(&db, "INSERT INTO t(w, k, v) VALUES (1, 1, randomblob(5000)); INSERT INTO t(w, k, v) VALUES (1, 2, 'x');");
    let primary = dump_hash(&db, false);
    for r in [&r1, &r2] {
        let out = dir.path().join(format!("{}.db", r.file_name().unwrap().to_string_lossy()));
        assert!(
            wait_until(20 * SECS, || {
                newest_txid(r) >= 2
                    && restore(s(r), &out, &["--force"]).status.success()
                    && dump_hash(&out, false) == primary
            }),
            "replica {} never matched the primary; log:\n{}",
            r.display(),
            rep.0.log_text()
        );
    }
    rep.assert_running();
    rep.stop();
}

/// SIGTERM right after a commit: the final capture still uploads it.
#[test]
fn sigterm_uploads_the_last_commits() {
    let dir = tempdir();
    let db = dir.path().join("app.db");
    let replica = dir.path().join("replica");
    create_db(&db, SCHEMA);
    let mut rep = Replicator::start(&db, &[s(&replica)]);
    assert!(wait_until(10 * SECS, || newest_txid(&replica) >= 1), "no first file; log:\n{}", rep.0.log_text());
    exec(&db, "INSERT INTO t(w, k, v) VALUES (1, 1, randomblob(7000)); INSERT INTO t(w, k, v) VALUES (1, 2, 'last');");
    rep.0.signal(libc::SIGTERM);
    let status = rep.0.wait_timeout(30 * SECS).expect("replicate exits after SIGTERM");
    assert!(status.success(), "exit {status}; log:\n{}", rep.0.log_text());
    let out = dir.path().join("restored.db");
    assert_eq!(restore_hash(s(&replica), &out, &[], false), dump_hash(&db, false), "the last commits were not uploaded");
}

/// Writes made while walship is stopped (including a TRUNCATE checkpoint that moves
/// them into the database file) are picked up at the next start, continuing the TXIDs.
#[test]
fn restart_after_clean_stop_catches_up_offline_writes() {
    let dir = tempdir();
    let db = dir.path().join("app.db");
    let replica = dir.path().join("replica");
    create_db(&db, SCHEMA);
    let rep = Replicator::start(&db, &[s(&replica)]);
    exec(&db, "INSERT INTO t(w, k, v) VALUES (1, 1, randomblob(3000));");
    wait_stable(&replica, SECS, 20 * SECS);
    rep.stop();
    let first_run = newest_txid(&replica);

    exec(&db, "INSERT INTO t(w, k, v) VALUES (1, 2, randomblob(9000)); UPDATE t SET k = 7 WHERE k = 1;");
    let out = python(
        "import sqlite3,sys\nc=sqlite3.connect(sys.argv[1],isolation_level=None)\nc.execute(\"INSERT INTO t(w,k,v) VALUES (1,3,'x')\")\nprint(c.execute('PRAGMA wal_checkpoint(TRUNCATE)').fetchone()[0])",
        &[s(&db)],
    );
    assert_eq!(out.trim(), "0", "offline TRUNCATE checkpoint was busy");
    exec(&db, "DELETE FROM t WHERE k = 2;");
    let primary = dump_hash(&db, false);

    let rep = Replicator::start(&db, &[s(&replica)]);
    assert!(
        wait_until(20 * SECS, || newest_txid(&replica) > first_run),
        "offline writes not captured; log:\n{}",
        rep.0.log_text()
    );
    wait_stable(&replica, SECS, 20 * SECS);
    rep.stop();
    let out = dir.path().join("restored.db");
    assert_eq!(restore_hash(s(&replica), &out, &[], false), primary);
    let l0: Vec<(u64, u64)> = ltx_files(&replica).iter().filter(|f| f.0 == 0).map(|f| (f.1, f.2)).collect();
    for pair in l0.windows(2) {
        assert_eq!(pair[1].0, pair[0].1 + 1, "gap or duplicate: {l0:?}");
    }
    // The state of the first run is still restorable by TXID.
    let out = dir.path().join("first.db");
    restore_hash(s(&replica), &out, &["--txid", &first_run.to_string()], false);
}

const SMALL_AUTOCHECKPOINT: &str = r#"
import sqlite3, sys, os
db, n = sys.argv[1], int(sys.argv[2])
c = sqlite3.connect(db, timeout=10, isolation_level=None)
c.execute("PRAGMA busy_timeout=10000")
c.execute("PRAGMA wal_autocheckpoint=8")
for i in range(n):
    c.execute("INSERT INTO t(w, k, v) VALUES (5, ?, ?)", (i, os.urandom(1500)))
c.close()
"#;

/// The app's own automatic checkpoints, very frequent here, must never let SQLite
/// restart the WAL over frames walship has not read (its read pin prevents that).
#[test]
fn frequent_app_autocheckpoints_lose_nothing() {
    let dir = tempdir();
    let db = dir.path().join("app.db");
    let replica = dir.path().join("replica");
    create_db(&db, SCHEMA);
    let mut rep = Replicator::start(&db, &[s(&replica)]);
    assert!(wait_until(10 * SECS, || newest_txid(&replica) >= 1), "no first file; log:\n{}", rep.0.log_text());
    python(SMALL_AUTOCHECKPOINT, &[s(&db), "3000"]);
    wait_stable(&replica, SECS, 30 * SECS);
    rep.assert_running();
    rep.stop();
    let out = dir.path().join("restored.db");
    let o = restore(s(&replica), &out, &["--check", "full"]);
    assert!(o.status.success(), "restore failed: {}", short(&stderr(&o)));
    assert_eq!(dump_hash(&out, false), dump_hash(&db, false));
}

/// A replica that stays down while the local folder passes its size cap: the oldest
/// local files are dropped, and the replica is re-seeded with a snapshot when it
/// returns, after which it restores to exactly the primary.
#[test]
fn a_replica_down_past_the_local_cap_is_reseeded() {
    let dir = tempdir();
    let db = dir.path().join("app.db");
    create_db(&db, SCHEMA);
    let rep = dir.path().join("rep");
    let config = dir.path().join("walship.yml");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    std::fs::write(
        &config,
        format!("listen: 127.0.0.1:{port}\ndbs:\n  - path: {}\n    local-cap-bytes: 300000\n    replicas:\n      - path: {}\n", s(&db), s(&rep)),
    )
    .unwrap();
    let behind = || http_json(port, "/status")["databases"][0]["replicas"][0]["behind"].as_bool();
    let mut r = Replicator::start_config(&config);
    exec(&db, "INSERT INTO t(w, k, v) VALUES (1, 1, randomblob(100));");
    assert!(wait_until(Duration::from_secs(10), || newest_txid(&rep) >= 2), "first upload");

    // Down: the replica's folder is replaced by a plain file, so every upload fails.
    let away = dir.path().join("rep.away");
    std::fs::rename(&rep, &away).unwrap();
    std::fs::write(&rep, b"not a folder").unwrap();
    for i in 0..60 {
        exec(&db, &format!("INSERT INTO t(w, k, v) VALUES (1, {i}, randomblob(20000));"));
    }
    let capped = wait_until(Duration::from_secs(20), || r.0.log_text().contains("reached its size cap"));
    assert!(capped, "the cap was never enforced; log:\n{}", r.0.log_text());
    assert!(wait_until(Duration::from_secs(10), || behind() == Some(true)), "/status does not say the replica is behind");

    // Back: the replica is re-seeded and catches up.
    std::fs::remove_file(&rep).unwrap();
    std::fs::rename(&away, &rep).unwrap();
    exec(&db, "DELETE FROM t WHERE k % 3 = 0;");
    assert!(wait_until(Duration::from_secs(30), || behind() == Some(false)), "/status still says the replica is behind");
    r.assert_running();
    r.finish_and_check(&db, &rep, Duration::from_secs(60));
    assert!(ltx_files(&rep).iter().any(|f| f.0 == 9), "no snapshot re-seeded the replica");
}

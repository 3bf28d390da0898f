//! Compaction, snapshots and retention in a running `walship replicate`, with short
//! intervals from the YAML config (Litestream's key names).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::*;
use crate::workload::SCHEMA;

const SECS: Duration = Duration::from_secs(1);
/// The replica's retention in the config below.
const RETENTION: Duration = Duration::from_secs(12);

/// One state of the primary: its TXID, content hash and when it was in the replica.
#[derive(Debug)]
struct Step {
    txid: u64,
    hash: String,
    ms: i64,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).unwrap().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The file count in restore's summary line ("... (12 files, ...").
fn restored_files(stderr: &str) -> usize {
    let rest = stderr.split(" files,").next().and_then(|s| s.rsplit('(').next()).unwrap_or_default();
    rest.trim().parse().unwrap_or_else(|_| panic!("no file count in {stderr:?}"))
}

/// Commits one transaction and waits until the replica holds it; returns its state.
fn step(db: &Path, replica: &Path, i: usize, log: &dyn Fn() -> String) -> Step {
    let before = newest_txid(replica);
    exec(
        db,
        &format!(
            "BEGIN; INSERT INTO t(w, k, v) VALUES (1, {i}, randomblob({})), (2, {i}, randomblob(30)); \
             UPDATE t SET k = k + 1, v = randomblob(200) WHERE id % 7 = {}; DELETE FROM t WHERE id % 11 = {}; COMMIT;",
            100 + (i * 997) % 6000,
            i % 7,
            i % 11
        ),
    );
    assert!(wait_until(10 * SECS, || newest_txid(replica) > before), "step {i} never reached the replica; log:\n{}", log());
    // One transaction is one capture: the newest TXID is this state.
    let txid = newest_txid(replica);
    let hash = dump_hash(db, false);
    let ms = now_ms();
    // The next file's timestamp comes strictly after `ms`.
    std::thread::sleep(Duration::from_millis(5));
    Step { txid, hash, ms }
}

#[test]
fn levels_snapshots_and_retention_while_writing() {
    let dir = tempdir();
    let db = dir.path().join("app.db");
    let replica = dir.path().join("replica");
    create_db(&db, SCHEMA);
    let config = dir.path().join("walship.yml");
    std::fs::write(
        &config,
        format!(
            "levels:\n  - interval: 1s\n  - interval: 2s\n  - interval: 4s\nsnapshot:\n  interval: 5s\n  retention: 1h\n\
             dbs:\n  - path: {}\n    replica:\n      type: file\n      path: {}\n      retention: {}s\n      retention-check-interval: 1s\n",
            db.display(),
            replica.display(),
            RETENTION.as_secs()
        ),
    )
    .unwrap();
    let rep = Replicator::start_config(&config);
    let log = || rep.0.log_text();
    let started = Instant::now();
    let mut steps = Vec::new();
    while started.elapsed() < 26 * SECS {
        steps.push(step(&db, &replica, steps.len(), &log));
        std::thread::sleep(Duration::from_millis(150));
    }
    // A last round of every level and of retention.
    std::thread::sleep(Duration::from_millis(2500));
    let mut rep = rep;
    rep.assert_running();
    let stopped = now_ms();
    rep.stop();
    let log = std::fs::read_to_string(dir.path().join("replicate.log")).unwrap_or_default();
    assert!(!log.contains("WARN") && !log.contains("ERROR"), "warnings in the log:\n{log}");

    let files = ltx_files(&replica);
    let levels: std::collections::BTreeSet<u8> = files.iter().map(|f| f.0).collect();
    assert_eq!(levels.into_iter().collect::<Vec<_>>(), [0, 1, 2, 3, 9], "levels in the replica: {files:?}");
    let listed = walship_ltx(s(&replica));
    assert_eq!(listed.len(), files.len(), "`walship ltx` lists every file");
    assert!(listed.iter().any(|l| l.level == 9 && l.max != l.min), "a snapshot written by the compactor: {files:?}");
    // Retention deleted the first TXIDs and most level-0 files.
    let l0: Vec<_> = files.iter().filter(|f| f.0 == 0).collect();
    assert!(l0.iter().all(|f| f.1 > steps[0].txid), "old level-0 files are gone: {l0:?}");
    assert!(l0.len() * 3 < steps.len() * 2, "{} level-0 files for {} commits", l0.len(), steps.len());
    // The checksum records of deleted files went with them.
    for level in [0u8, 1, 2, 3, 9] {
        let records = std::fs::read_dir(replica.join("walship/checksums").join(level.to_string())).map_or(0, |d| d.count());
        let kept = files.iter().filter(|f| f.0 == level).count();
        assert!(records <= kept, "level {level}: {records} checksum records for {kept} files");
    }
    // Snapshots every 5 s: those of the window, the one before it, and the newest.
    assert!(files.iter().filter(|f| f.0 == 9).count() <= 2 + RETENTION.as_secs() as usize / 5, "old snapshots are gone: {files:?}");

    // The latest state, from few files.
    let last = steps.last().unwrap();
    assert_eq!(dump_hash(&db, false), last.hash);
    let out = dir.path().join("latest.db");
    let o = restore(s(&replica), &out, &["--check", "full"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(dump_hash(&out, false), last.hash);
    let used = restored_files(&stderr(&o));
    assert!(used <= 6, "latest restored from {used} files ({} commits)", steps.len());
    let per_level: Vec<(u8, usize)> =
        [0, 1, 2, 3, 9].iter().map(|l| (*l, files.iter().filter(|f| f.0 == *l).count())).collect();
    println!("{} commits; files per level {per_level:?}; latest restored from {used} files", steps.len());

    // Every state inside the window, by TXID and by time; older ones only if still whole.
    let window_start = stopped - RETENTION.as_millis() as i64;
    let mut inside = 0;
    for (i, st) in steps.iter().enumerate() {
        let out = dir.path().join(format!("step{i}.db"));
        if st.ms >= window_start {
            inside += 1;
            assert_eq!(restore_hash(s(&replica), &out, &["--txid", &st.txid.to_string()], false), st.hash, "step {i} by TXID");
            let _ = std::fs::remove_file(&out);
            assert_eq!(restore_hash(s(&replica), &out, &["--timestamp", &rfc3339(st.ms)], false), st.hash, "step {i} by time");
        } else {
            let o = restore(s(&replica), &out, &["--txid", &st.txid.to_string()]);
            if o.status.success() {
                assert_eq!(dump_hash(&out, false), st.hash, "step {i} (outside the window) restored to another state");
            }
        }
    }
    assert!(inside >= 10, "{inside} states inside the window");
    assert_error(&restore(s(&replica), &dir.path().join("first.db"), &["--txid", &steps[0].txid.to_string()]));

    // Litestream restores the compacted replica too.
    if let Some(ls) = litestream_bin() {
        let out = dir.path().join("theirs.db");
        let o = Command::new(&ls)
            .env_remove("AWS_CA_BUNDLE")
            .args(["restore", "-o", s(&out), &format!("file://{}", replica.display())])
            .output()
            .expect("run litestream");
        assert!(o.status.success(), "litestream restore of the compacted replica failed:\n{}{}", stdout(&o), stderr(&o));
        let (hash, integrity) = db_check(&out, false);
        assert_eq!((hash.as_str(), integrity.as_str()), (last.hash.as_str(), "ok"), "litestream's restore");
        let mid = steps.iter().find(|st| st.ms >= window_start + 2000).unwrap();
        let out = dir.path().join("theirs-mid.db");
        let o = Command::new(&ls)
            .env_remove("AWS_CA_BUNDLE")
            .args(["restore", "-o", s(&out), "-txid", &format!("{:016x}", mid.txid), &format!("file://{}", replica.display())])
            .output()
            .expect("run litestream");
        assert!(o.status.success(), "litestream restore -txid of the compacted replica failed:\n{}{}", stdout(&o), stderr(&o));
        assert_eq!(dump_hash(&out, false), mid.hash, "litestream's restore at TXID {}", mid.txid);
    } else {
        println!("litestream not installed: its restore of a compacted replica is not checked");
    }
}

/// The storage requests `walship replicate` reports at exit: (LIST, PUT, GET, DELETE).
fn requests_at_exit(log: &str) -> (u64, u64, u64, u64) {
    let line = log.lines().rev().find(|l| l.contains("storage requests made")).unwrap_or_else(|| panic!("no request counts in:\n{log}"));
    let n = |what: &str| -> u64 {
        let at = line.find(&format!("{what} ")).unwrap_or_else(|| panic!("{what} missing in {line}")) + what.len() + 1;
        line[at..].split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
    };
    (n("LIST"), n("PUT"), n("GET"), n("DELETE"))
}

/// An idle database costs no storage requests, even with compaction due every second:
/// a run idle for 6 s makes exactly as many as one idle for 1 s.
#[test]
fn an_idle_database_makes_no_requests() {
    let counts = |idle: Duration| {
        let dir = tempdir();
        let db = dir.path().join("app.db");
        create_db(&db, SCHEMA);
        exec(&db, "INSERT INTO t(w, k, v) VALUES (1, 1, randomblob(100));");
        let config = dir.path().join("walship.yml");
        std::fs::write(
            &config,
            format!(
                "levels:\n  - interval: 1s\n  - interval: 2s\n  - interval: 3s\ndbs:\n  - path: {}\n    replica:\n      type: file\n      path: {}\n",
                s(&db),
                s(&dir.path().join("rep"))
            ),
        )
        .unwrap();
        let mut r = Replicator::start_config(&config);
        // Let the first rounds of every level run (they list each level once).
        std::thread::sleep(Duration::from_secs(4) + idle);
        r.0.interrupt(Duration::from_secs(30));
        requests_at_exit(&r.0.log_text())
    };
    let short = counts(Duration::from_secs(1));
    let long = counts(Duration::from_secs(6));
    assert_eq!(short, long, "idle seconds cost requests (LIST, PUT, GET, DELETE)");
    println!("requests of an idle replicate run (start, 5 s idle, stop): {short:?}");
}

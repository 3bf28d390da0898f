//! `walship restore`: point in time, and refusing damaged replicas and clobbering.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::*;
use crate::workload::SCHEMA;

const SECS: Duration = Duration::from_secs(1);

/// One confirmed state of the primary.
#[derive(Debug)]
struct Step {
    txid: u64,
    hash: String,
    time: String,
}

/// The TXID in restore's summary line ("... at TXID 000000000000000a ...").
fn summary_txid(stderr: &str) -> Option<u64> {
    let rest = stderr.split("at TXID ").nth(1)?;
    u64::from_str_radix(rest.split_whitespace().next()?, 16).ok()
}

/// Waits until the replica restores to exactly the primary's current content; returns
/// the TXID that state is at, checked against `walship ltx`.
#[track_caller]
fn confirm_step(db: &Path, replica: &Path, scratch: &Path, log: &dyn Fn() -> String) -> Step {
    let primary = dump_hash(db, false);
    let mut txid = None;
    let ok = wait_until(20 * SECS, || {
        let out = restore(s(replica), scratch, &["--force"]);
        if out.status.success() && dump_hash(scratch, false) == primary {
            txid = summary_txid(&stderr(&out));
            true
        } else {
            false
        }
    });
    assert!(ok, "the replica never caught up with the primary; log:\n{}", log());
    let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let time = chrono::DateTime::from_timestamp_millis(ms).unwrap().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let listed = walship_ltx(s(replica));
    let newest = listed.iter().map(|l| u64::from_str_radix(&l.max, 16).unwrap()).max().unwrap();
    let txid = txid.expect("restore summary names the TXID");
    assert_eq!(txid, newest, "restore's TXID vs the newest in `walship ltx`");
    assert!(integrity_ok(scratch));
    // Keep the next file's timestamp strictly after `time` (millisecond resolution).
    std::thread::sleep(Duration::from_millis(5));
    Step { txid, hash: primary, time }
}

#[test]
fn point_in_time_by_txid_and_timestamp() {
    let dir = tempdir();
    let db = dir.path().join("app.db");
    let replica = dir.path().join("replica");
    let scratch = dir.path().join("scratch.db");
    create_db(&db, SCHEMA);
    let rep = Replicator::start(&db, &[s(&replica)]);
    let log = || rep.0.log_text();
    let mut steps = vec![confirm_step(&db, &replica, &scratch, &log)];
    let changes = [
        "INSERT INTO t(w, k, v) VALUES (1, 1, randomblob(10)), (1, 2, randomblob(500)), (1, 3, randomblob(6000));",
        "UPDATE t SET v = randomblob(7000) WHERE k = 1; INSERT INTO t(w, k, v) VALUES (1, 4, 'four');",
        "DELETE FROM t WHERE k = 2; CREATE INDEX t_k ON t(k);",
        "CREATE TABLE u(a, b); INSERT INTO u VALUES (1, randomblob(9000)); DELETE FROM t WHERE k = 3;",
        "BEGIN; INSERT INTO t(w, k, v) SELECT 2, value, randomblob(300) FROM (WITH RECURSIVE c(value) AS (SELECT 1 UNION ALL SELECT value + 1 FROM c WHERE value < 200) SELECT value FROM c); COMMIT;",
        "DROP INDEX t_k; UPDATE t SET k = k * 10;",
    ];
    for sql in changes {
        exec(&db, sql);
        steps.push(confirm_step(&db, &replica, &scratch, &log));
    }
    rep.stop();
    let mut hashes: Vec<&str> = steps.iter().map(|s| s.hash.as_str()).collect();
    hashes.dedup();
    assert_eq!(hashes.len(), steps.len(), "every step changes the content");
    for pair in steps.windows(2) {
        assert!(pair[1].txid > pair[0].txid, "TXIDs increase with each step: {steps:?}");
    }

    for (i, step) in steps.iter().enumerate() {
        let hex = format!("{:016x}", step.txid);
        let dec = step.txid.to_string();
        for args in [["--txid", hex.as_str()], ["--txid", dec.as_str()], ["--timestamp", step.time.as_str()]] {
            let out = dir.path().join(format!("step{i}-{}.db", args[0].trim_start_matches('-')));
            let _ = std::fs::remove_file(&out);
            assert_eq!(restore_hash(s(&replica), &out, &args, false), step.hash, "step {i} restored with {args:?}");
        }
    }

    let latest = &steps.last().unwrap().hash;
    let out = dir.path().join("future.db");
    assert_eq!(&restore_hash(s(&replica), &out, &["--timestamp", "2999-01-01T00:00:00Z"], false), latest);
    let out = dir.path().join("latest.db");
    assert_eq!(&restore_hash(s(&replica), &out, &[], false), latest);

    let out = dir.path().join("past.db");
    assert_error(&restore(s(&replica), &out, &["--timestamp", "2001-01-01T00:00:00Z"]));
    assert!(!out.exists());
    let past_end = format!("{}", steps.last().unwrap().txid + 1);
    assert_error(&restore(s(&replica), &out, &["--txid", &past_end]));
    assert!(!out.exists());
}

/// Builds a replica with several captures; returns the hash at every TXID.
fn build_replica(dir: &Path) -> (PathBuf, Vec<(u64, String)>) {
    let db = dir.join("app.db");
    let replica = dir.join("replica");
    create_db(&db, SCHEMA);
    let rep = Replicator::start(&db, &[s(&replica)]);
    let mut expected = 1;
    assert!(wait_until(10 * SECS, || newest_txid(&replica) >= 1), "no first file; log:\n{}", rep.0.log_text());
    for i in 0..7 {
        exec(&db, &format!("INSERT INTO t(w, k, v) VALUES (1, {i}, randomblob({}));", 100 + i * 1500));
        expected += 1;
        assert!(
            wait_until(10 * SECS, || newest_txid(&replica) >= expected),
            "replica stuck before TXID {expected}; log:\n{}",
            rep.0.log_text()
        );
    }
    rep.stop();
    let newest = newest_txid(&replica);
    let mut hashes = Vec::new();
    for txid in 1..=newest {
        let out = dir.join(format!("good-{txid}.db"));
        hashes.push((txid, restore_hash(s(&replica), &out, &["--txid", &txid.to_string()], false)));
    }
    assert_eq!(hashes.last().unwrap().1, dump_hash(&db, false));
    (replica, hashes)
}

fn l0_path(replica: &Path, txid: u64) -> PathBuf {
    replica.join("ltx/0").join(format!("{txid:016x}-{txid:016x}.ltx"))
}

/// The level-0 file `delta` TXIDs after (or before) the one at `path`.
fn sibling_txid(path: &Path, delta: i64) -> PathBuf {
    let name = path.file_name().unwrap().to_str().unwrap();
    let txid = u64::from_str_radix(&name[..16], 16).unwrap().checked_add_signed(delta).unwrap();
    path.with_file_name(format!("{txid:016x}-{txid:016x}.ltx"))
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

#[test]
fn restore_refuses_to_clobber_and_rejects_damage() {
    let dir = tempdir();
    let (replica, hashes) = build_replica(dir.path());
    let latest = hashes.last().unwrap().1.clone();
    let newest = hashes.last().unwrap().0;
    assert!(newest >= 6, "need several files, have {newest}");

    // An existing output is left alone without --force, replaced with it.
    let out = dir.path().join("existing.db");
    std::fs::write(&out, b"precious, not a database").unwrap();
    assert_error(&restore(s(&replica), &out, &[]));
    assert_eq!(std::fs::read(&out).unwrap(), b"precious, not a database");
    assert_eq!(restore_hash(s(&replica), &out, &["--force"], false), latest);

    // Damaged copies of the replica, each broken at TXID `bad`.
    let bad = newest / 2 + 1;
    type Damage = fn(&Path);
    let damages: [(&str, Damage); 6] = [
        ("truncated", |p| {
            let len = std::fs::metadata(p).unwrap().len();
            std::fs::File::options().write(true).open(p).unwrap().set_len(len / 2).unwrap();
        }),
        ("bitflip", |p| {
            let mut bytes = std::fs::read(p).unwrap();
            let i = bytes.len() / 2;
            bytes[i] ^= 0x10;
            std::fs::write(p, bytes).unwrap();
        }),
        ("missing", |p| std::fs::remove_file(p).unwrap()),
        // The next file's content under this file's name (files reordered).
        ("reordered", |p| {
            let next = sibling_txid(p, 1);
            let (a, b) = (std::fs::read(p).unwrap(), std::fs::read(&next).unwrap());
            std::fs::write(p, b).unwrap();
            std::fs::write(next, a).unwrap();
        }),
        // A copy of the previous file stored again under this file's name.
        ("duplicated", |p| std::fs::copy(sibling_txid(p, -1), p).map(drop).unwrap()),
        // The right file, but its checksum record says another state came before it.
        ("foreign record", |p| {
            let name = p.file_name().unwrap().to_str().unwrap().trim_end_matches(".ltx").to_string();
            let record = p.parent().unwrap().join("../../walship/checksums/0").join(name);
            let text = std::fs::read_to_string(&record).unwrap();
            let (pre, post) = text.trim().split_once(' ').unwrap();
            let pre = format!("{:016x}", u64::from_str_radix(pre, 16).unwrap() ^ 1);
            std::fs::write(&record, format!("{pre} {post}\n")).unwrap();
        }),
    ];
    for (what, damage) in damages {
        let copy = dir.path().join(format!("replica-{what}"));
        copy_dir(&replica, &copy);
        damage(&l0_path(&copy, bad));
        let outdir = dir.path().join(format!("out-{what}"));
        std::fs::create_dir(&outdir).unwrap();
        let out = outdir.join("restored.db");
        let line = assert_error(&restore(s(&copy), &out, &[]));
        if what != "missing" {
            let name = format!("{bad:016x}-{bad:016x}.ltx");
            assert!(line.contains(&name), "{what}: the error should name {name}: {line}");
        }
        assert!(names(&outdir).is_empty(), "{what}: files left behind: {:?}", names(&outdir));
        // Every TXID before the damage still restores exactly.
        for (txid, hash) in hashes.iter().filter(|(t, _)| *t < bad) {
            let out = outdir.join(format!("before-{txid}.db"));
            assert_eq!(
                &restore_hash(s(&copy), &out, &["--txid", &format!("{txid:016x}")], false),
                hash,
                "{what}: TXID {txid}"
            );
        }
        // A target at or past the damage fails.
        let out = outdir.join("at-bad.db");
        assert_error(&restore(s(&copy), &out, &["--txid", &bad.to_string()]));
        assert!(!out.exists());
    }
}

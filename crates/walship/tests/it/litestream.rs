//! Compatibility with Litestream 0.5: its replicas restore with walship, ours with it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support::*;
use crate::workload::SCHEMA;

const SECS: Duration = Duration::from_secs(1);
const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/fixtures/litestream-0.5.17");

/// The replica Litestream 0.5.17 wrote restores, at every TXID, to exactly the
/// content Litestream's own restore gives.
#[test]
fn litestream_fixture_restores_at_every_txid() {
    let fixture = Path::new(FIXTURE);
    if !fixture.join("manifest.json").is_file() {
        println!("skipped: fixture {} is absent", fixture.display());
        return;
    }
    let dir = tempdir();
    let replica = dir.path().join("replica");
    copy_dir(&fixture.join("replica"), &replica);
    let manifest = python(
        "import json,sys\nm=json.load(open(sys.argv[1]))\nprint('latest', m['final_user_dump_sha256'])\nfor r in m['restore_at_txid']: print(r['txid'], r['user_dump_sha256'])\nfor f in m['files']: print('file', f)",
        &[fixture.join("manifest.json").to_str().unwrap()],
    );
    let mut latest = None;
    let mut at_txid = Vec::new();
    let mut files = Vec::new();
    for line in manifest.lines() {
        let (a, b) = line.split_once(' ').unwrap();
        match a {
            "latest" => latest = Some(b.to_string()),
            "file" => files.push(b.to_string()),
            txid => at_txid.push((txid.to_string(), b.to_string())),
        }
    }
    assert!(at_txid.len() >= 2, "manifest lists TXIDs: {manifest}");

    let listed: Vec<String> =
        walship_ltx(s(&replica)).iter().map(|l| format!("ltx/{}/{}-{}.ltx", l.level, l.min, l.max)).collect();
    let mut expected_files = files.clone();
    expected_files.sort();
    let mut listed_sorted = listed.clone();
    listed_sorted.sort();
    assert_eq!(listed_sorted, expected_files, "walship ltx lists the replica's files");

    let out = dir.path().join("latest.db");
    assert_eq!(Some(restore_hash(s(&replica), &out, &[], true)), latest, "latest");
    for (txid, hash) in &at_txid {
        let out = dir.path().join(format!("txid-{txid}.db"));
        assert_eq!(&restore_hash(s(&replica), &out, &["--txid", txid, "--check", "full"], true), hash, "TXID {txid}");
    }
}

fn litestream_or_skip() -> Option<PathBuf> {
    let bin = litestream_bin();
    if bin.is_none() {
        println!("skipped: litestream not installed");
    }
    bin
}

fn litestream_cmd(bin: &Path) -> Command {
    let mut cmd = Command::new(bin);
    cmd.env_remove("AWS_CA_BUNDLE");
    cmd
}

/// Litestream restores a replica walship wrote.
#[test]
fn litestream_restores_walship_replica() {
    let Some(ls) = litestream_or_skip() else { return };
    let dir = tempdir();
    let db = dir.path().join("app.db");
    let replica = dir.path().join("replica");
    create_db(&db, SCHEMA);
    let rep = Replicator::start(&db, &[&format!("file://{}", replica.display())]);
    for i in 0..5 {
        exec(&db, &format!("INSERT INTO t(w, k, v) VALUES (1, {i}, randomblob({}));", 10 + i * 2500));
        let want = i as u64 + 2;
        assert!(wait_until(10 * SECS, || newest_txid(&replica) >= want), "log:\n{}", rep.0.log_text());
    }
    exec(&db, "CREATE INDEX t_k ON t(k); DELETE FROM t WHERE k = 2;");
    wait_stable(&replica, SECS, 20 * SECS);
    rep.stop();
    let primary = dump_hash(&db, false);
    // Our own restore first, so a Litestream failure is clearly about compatibility.
    assert_eq!(restore_hash(s(&replica), &dir.path().join("ours.db"), &[], false), primary);

    let out = dir.path().join("theirs.db");
    let o = litestream_cmd(&ls)
        .args(["restore", "-o", s(&out), &format!("file://{}", replica.display())])
        .output()
        .expect("run litestream");
    assert!(o.status.success(), "litestream restore of walship's replica failed:\n{}{}", stdout(&o), stderr(&o));
    let (hash, integrity) = db_check(&out, false);
    assert_eq!(integrity, "ok");
    assert_eq!(hash, primary, "litestream's restore of walship's replica differs from the primary");
}

/// walship restores a replica the real Litestream writes, at the latest state.
#[test]
fn walship_restores_litestream_replica() {
    let Some(ls) = litestream_or_skip() else { return };
    let dir = tempdir();
    let db = dir.path().join("app.db");
    let replica = dir.path().join("replica");
    create_db(&db, SCHEMA);
    let config = dir.path().join("litestream.yml");
    std::fs::write(
        &config,
        format!(
            "dbs:\n  - path: {}\n    monitor-interval: 100ms\n    replica:\n      type: file\n      path: {}\n      sync-interval: 100ms\n",
            db.display(),
            replica.display()
        ),
    )
    .unwrap();
    let mut cmd = litestream_cmd(&ls);
    cmd.args(["replicate", "-config", s(&config)]);
    let mut lsp = Proc::spawn("litestream replicate", cmd, Some(dir.path().join("litestream.log")));
    let out = dir.path().join("restored.db");
    for (i, sql) in [
        "INSERT INTO t(w, k, v) VALUES (1, 1, randomblob(10)), (1, 2, randomblob(500)), (1, 3, randomblob(6000));",
        "UPDATE t SET v = randomblob(7000) WHERE k = 1; CREATE INDEX t_k ON t(k);",
        "DELETE FROM t WHERE k = 2; CREATE TABLE u(a); INSERT INTO u VALUES (randomblob(9000));",
    ]
    .iter()
    .enumerate()
    {
        exec(&db, sql);
        let primary = dump_hash(&db, true);
        let ok = wait_until(20 * SECS, || {
            let o = restore(s(&replica), &out, &["--force", "--check", "full"]);
            o.status.success() && dump_hash(&out, true) == primary
        });
        assert!(ok, "step {i}: walship's restore never matched the primary; litestream log:\n{}", lsp.log_text());
    }
    let status = lsp.interrupt(20 * SECS);
    assert!(status.success() || status.code().is_none(), "litestream exited with {status}");
    let primary = dump_hash(&db, true);
    assert_eq!(restore_hash(s(&replica), &out, &["--force"], true), primary);
}

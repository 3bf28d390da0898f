//! Bad input gives one `error: ...` line and a non-zero exit, never a panic or a hang.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use crate::support::*;
use crate::workload::SCHEMA;

/// Runs walship with stdout/stderr captured, failing the test if it does not exit
/// within 15 s (a replicate that should have refused to start would run forever).
#[track_caller]
fn run(dir: &Path, args: &[&str]) -> Output {
    let out_path = dir.join("cmd.stdout");
    let err_path = dir.join("cmd.stderr");
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .env("WALSHIP_LOG", "warn")
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap());
    let mut p = Proc { child: cmd.spawn().expect("spawn walship"), name: "walship".into(), log: None };
    let status = p.wait_timeout(Duration::from_secs(15));
    let stderr = std::fs::read(&err_path).unwrap();
    let Some(status) = status else {
        panic!("walship {args:?} still running after 15 s; stderr:\n{}", String::from_utf8_lossy(&stderr));
    };
    Output { status, stdout: std::fs::read(&out_path).unwrap(), stderr }
}

/// A clap usage error: non-zero, no panic.
#[track_caller]
fn assert_usage_error(out: &Output) {
    assert!(!out.status.success(), "expected a usage error: {}", stderr(out));
    assert!(!stderr(out).contains("panicked"), "{}", stderr(out));
    assert!(stderr(out).contains("error"), "{}", stderr(out));
}

#[test]
fn replicate_refuses_bad_databases() {
    let dir = tempdir();
    let d = dir.path();
    let replica = d.join("replica");

    let line = assert_error(&run(d, &["replicate", s(&d.join("missing.db")), s(&replica)]));
    assert!(line.contains("missing.db"), "{line}");

    let text = d.join("notes.db");
    std::fs::write(&text, "this is not a database\n".repeat(300)).unwrap();
    assert_error(&run(d, &["replicate", s(&text), s(&replica)]));
    assert_eq!(std::fs::read(&text).unwrap(), "this is not a database\n".repeat(300).into_bytes(), "not-SQLite file modified");

    let empty = d.join("empty.db");
    std::fs::write(&empty, b"").unwrap();
    assert_error(&run(d, &["replicate", s(&empty), s(&replica)]));

    let dir_db = d.join("adir.db");
    std::fs::create_dir(&dir_db).unwrap();
    assert_error(&run(d, &["replicate", s(&dir_db), s(&replica)]));

    assert!(newest_txid(&replica) == 0, "nothing may reach the replica");
}

#[test]
fn replicate_refuses_bad_replicas() {
    let dir = tempdir();
    let d = dir.path();
    let db = d.join("app.db");
    create_db(&db, SCHEMA);
    let file = d.join("plain-file");
    std::fs::write(&file, b"x").unwrap();

    assert_error(&run(d, &["replicate", s(&db), "s3x://bad"]));
    assert_error(&run(d, &["replicate", s(&db), "file://relative/path"]));
    assert_error(&run(d, &["replicate", s(&db), ""]));
    assert_usage_error(&run(d, &["replicate"]));
    let line = assert_error(&run(d, &["replicate", s(&db)]));
    assert!(line.contains("REPLICA"), "{line}");
}

/// A replica that can never be written (its folder would be under a regular file) is
/// refused, rather than retried forever.
#[test]
fn replicate_refuses_replica_under_a_regular_file() {
    let dir = tempdir();
    let d = dir.path();
    let db = d.join("app.db");
    create_db(&db, SCHEMA);
    let file = d.join("plain-file");
    std::fs::write(&file, b"x").unwrap();
    let line = assert_error(&run(d, &["replicate", s(&db), s(&file.join("sub"))]));
    assert!(line.contains("plain-file"), "{line}");
}

/// A YAML syntax error is reported on one line too.
#[test]
fn malformed_config_is_one_error_line() {
    let dir = tempdir();
    let config = dir.path().join("bad.yml");
    std::fs::write(&config, "dbs: [\n  - path: {\n").unwrap();
    let line = assert_error(&run(dir.path(), &["replicate", "--config", s(&config)]));
    assert!(line.contains("config"), "{line}");
}

#[test]
fn replicate_refuses_bad_configs() {
    let dir = tempdir();
    let d = dir.path();
    let db = d.join("app.db");
    create_db(&db, SCHEMA);
    let replica = d.join("replica");

    let line = assert_error(&run(d, &["replicate", "--config", s(&d.join("nope.yml"))]));
    assert!(line.contains("nope.yml"), "{line}");

    let cases = [
        ("unknown-key", format!("dbs:\n  - path: {}\n    replica: {{path: {}}}\n    frobnicate: 3\n", db.display(), replica.display()), Some("frobnicate")),
        ("no-replica", format!("dbs:\n  - path: {}\n", db.display()), Some("replica")),
        ("unset-var", "dbs:\n  - path: $WALSHIP_IT_SURELY_UNSET\n    replica: {path: /tmp/x}\n".to_string(), Some("WALSHIP_IT_SURELY_UNSET")),
        ("bad-type", format!("dbs:\n  - path: {}\n    replica: {{type: s4, path: {}}}\n", db.display(), replica.display()), Some("s4")),
        ("empty", String::new(), None),
    ];
    // Check every case, then report all that went wrong.
    let mut problems = Vec::new();
    for (name, text, needle) in cases {
        let config = d.join(format!("{name}.yml"));
        std::fs::write(&config, text).unwrap();
        let out = run(d, &["replicate", "--config", s(&config)]);
        let err = stderr(&out);
        assert!(!out.status.success(), "{name}: accepted");
        assert!(!err.contains("panicked"), "{name}: {err}");
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        if lines.len() != 1 || !lines[0].starts_with("error:") {
            problems.push(format!("{name}: not one `error:` line: {err:?}"));
        }
        if let Some(needle) = needle.filter(|n| !err.contains(n)) {
            problems.push(format!("{name}: the error does not mention {needle:?}: {err:?}"));
        }
    }
    assert_usage_error(&run(d, &["replicate", s(&db), s(&replica), "--config", s(&d.join("x.yml"))]));
    assert_eq!(newest_txid(&replica), 0);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn restore_refuses_bad_arguments() {
    let dir = tempdir();
    let d = dir.path();
    let empty = d.join("empty-replica");
    std::fs::create_dir(&empty).unwrap();
    let out = d.join("out.db");
    let o = |extra: &[&str], replica: &Path| {
        let mut args = vec!["restore", "-o", s(&out)];
        args.extend_from_slice(extra);
        args.push(s(replica));
        run(d, &args)
    };
    // A real replica, so that argument errors are not masked by an empty one.
    let db = d.join("app.db");
    let replica = d.join("replica");
    create_db(&db, SCHEMA);
    let rep = Replicator::start(&db, &[s(&replica)]);
    assert!(wait_until(Duration::from_secs(10), || newest_txid(&replica) >= 1), "log:\n{}", rep.0.log_text());
    rep.stop();

    let line = assert_error(&o(&["--txid", "zz"], &replica));
    assert!(line.contains("zz"), "{line}");
    assert_error(&o(&["--txid=-1"], &replica));
    let line = assert_error(&o(&["--timestamp", "yesterday"], &replica));
    assert!(line.contains("yesterday"), "{line}");
    assert_usage_error(&o(&["--txid", "1", "--timestamp", "2020-01-01T00:00:00Z"], &replica));
    assert_usage_error(&o(&["--check", "sometimes"], &replica));
    assert_error(&o(&[], &empty));
    assert_error(&o(&[], &d.join("does-not-exist")));
    assert_error(&o(&[], Path::new("s3x://bad")));
    assert!(!out.exists(), "no output after errors");
    // And the good replica does restore (the errors above were the arguments' fault).
    assert!(o(&[], &replica).status.success());
    assert!(integrity_ok(&out));

    // A missing folder lists nothing (or is refused); it must not invent files.
    let o = run(d, &["ltx", s(&d.join("does-not-exist"))]);
    assert!(!stderr(&o).contains("panicked"));
    if o.status.success() {
        assert_eq!(stdout(&o).lines().count(), 1, "only the header: {}", stdout(&o));
    } else {
        assert_error(&o);
    }
    assert_error(&run(d, &["ltx", "file://relative"]));
}

#[test]
fn version_and_help() {
    let dir = tempdir();
    let out = run(dir.path(), &["version"]);
    assert!(out.status.success());
    assert!(stdout(&out).starts_with("walship "), "{}", stdout(&out));
    let out = run(dir.path(), &["--help"]);
    assert!(out.status.success());
    for cmd in ["replicate", "restore", "ltx"] {
        assert!(stdout(&out).contains(cmd), "help lacks {cmd}");
    }
    assert_usage_error(&run(dir.path(), &["frobnicate"]));
    let o = run(dir.path(), &[]);
    assert!(!o.status.success() && !stderr(&o).contains("panicked"), "{}", stderr(&o));
    assert!(stderr(&o).contains("Usage"), "{}", stderr(&o));
}

/// A rollback-journal database is switched to WAL and replicated.
#[test]
fn rollback_journal_database_is_switched_to_wal() {
    let dir = tempdir();
    let db = dir.path().join("old.db");
    python(
        "import sqlite3,sys\nc=sqlite3.connect(sys.argv[1],isolation_level=None)\nc.execute('PRAGMA journal_mode=DELETE')\nc.execute('CREATE TABLE t(a, b)')\nc.execute('INSERT INTO t VALUES (1, randomblob(5000))')\nc.close()",
        &[s(&db)],
    );
    let mode = |db: &Path| python("import sqlite3,sys\nprint(sqlite3.connect(sys.argv[1]).execute('PRAGMA journal_mode').fetchone()[0])", &[s(db)]);
    assert_eq!(mode(&db).trim(), "delete");
    let replica = dir.path().join("replica");
    let mut rep = Replicator::start(&db, &[s(&replica)]);
    assert!(wait_until(Duration::from_secs(10), || newest_txid(&replica) >= 1), "log:\n{}", rep.0.log_text());
    exec(&db, "INSERT INTO t VALUES (2, 'two');");
    let primary = dump_hash(&db, false);
    let out = dir.path().join("restored.db");
    assert!(
        wait_until(Duration::from_secs(10), || restore(s(&replica), &out, &["--force"]).status.success()
            && dump_hash(&out, false) == primary),
        "log:\n{}",
        rep.0.log_text()
    );
    rep.assert_running();
    rep.stop();
    assert_eq!(mode(&db).trim(), "wal");
}

/// A second replicator on the same database is refused while the first runs.
#[test]
fn second_replicator_is_refused() {
    let dir = tempdir();
    let db = dir.path().join("app.db");
    create_db(&db, SCHEMA);
    let replica = dir.path().join("replica");
    let mut rep = Replicator::start(&db, &[s(&replica)]);
    assert!(wait_until(Duration::from_secs(10), || newest_txid(&replica) >= 1), "log:\n{}", rep.0.log_text());
    let line = assert_error(&run(dir.path(), &["replicate", s(&db), s(&dir.path().join("other"))]));
    assert!(line.contains("another walship"), "{line}");
    rep.assert_running();
    rep.stop();
}

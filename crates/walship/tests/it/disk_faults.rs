//! Disk faults in the local state folder: ENOSPC (a small tmpfs filled up under a
//! running `walship replicate`) and EIO (libfiu's `fiu-run` failing fsync, write and
//! read calls inside walship). Whatever walship does — stop with one clear `error:`
//! line, or keep going and recover once the disk is healthy again — the replica must
//! always restore to a real state of the primary, and a restart on a healthy disk must
//! bring it level with the primary.
//!
//! The writer inserts ids 1, 2, 3, ... one per transaction, each with a blob derived
//! from its id, so a state is checkable on its own: a restore must hold exactly ids
//! 1..=k with the right blobs, and k can be no more than the primary has.
//!
//! Skipped (with a note on stderr) when tmpfs cannot be mounted (not root, no
//! CAP_SYS_ADMIN) or `fiu-run` is not installed (scripts/test installs fiu-utils).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

use crate::support::*;

/// Writer: one row per transaction, `id = max(id) + 1`, 1500 incompressible bytes
/// derived from the id. Errors (a full disk) are counted, the transaction is rolled
/// back and retried after re-reading the committed maximum. Runs until STOPFILE
/// exists. Args: DB STOPFILE.
const SEQ_WRITER: &str = r#"
import sqlite3, sys, time, os, random
db, stop = sys.argv[1], sys.argv[2]
def blob(i):
    return random.Random(i).randbytes(1500)
c = sqlite3.connect(db, timeout=10, isolation_level=None)
c.execute("PRAGMA busy_timeout=10000")
while not os.path.exists(stop):
    try:
        c.execute("BEGIN IMMEDIATE")
        n = c.execute("SELECT coalesce(max(id), 0) FROM t").fetchone()[0]
        c.execute("INSERT INTO t(id, v) VALUES (?, ?)", (n + 1, blob(n + 1)))
        c.execute("COMMIT")
    except sqlite3.Error:
        try:
            c.execute("ROLLBACK")
        except sqlite3.Error:
            pass
        time.sleep(0.02)
    time.sleep(0.002)
c.close()
"#;

/// Checks a database holds exactly ids 1..=k with the writer's blobs and passes
/// `PRAGMA integrity_check`; prints k, or `BAD: reason`. Args: DB.
const SEQ_CHECK: &str = r#"
import sqlite3, sys, random
c = sqlite3.connect(sys.argv[1])
integrity = "; ".join(r[0] for r in c.execute("PRAGMA integrity_check"))
if integrity != "ok":
    print("BAD: integrity_check: " + integrity[:300]); sys.exit()
k = 0
for i, v in c.execute("SELECT id, v FROM t ORDER BY id"):
    if i != k + 1:
        print(f"BAD: id {i} follows {k}"); sys.exit()
    if v != random.Random(i).randbytes(1500):
        print(f"BAD: row {i} has the wrong blob"); sys.exit()
    k = i
print(k)
"#;

const SCHEMA: &str = "CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB);";

/// The k of a checkable database (ids 1..=k); panics with the reason when it is not.
#[track_caller]
fn seq_rows(db: &Path) -> u64 {
    let out = python(SEQ_CHECK, &[s(db)]);
    let line = out.trim();
    line.parse().unwrap_or_else(|_| panic!("{}: {line}", db.display()))
}

/// A tmpfs mounted for one test; unmounted (lazily) on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs", s(dir)]).output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs(dir.to_path_buf())),
            Ok(o) => {
                eprintln!("note: cannot mount a tmpfs ({}); skipping the ENOSPC test", stderr(&o).trim());
                None
            }
            Err(e) => {
                eprintln!("note: cannot run mount ({e}); skipping the ENOSPC test");
                None
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).output();
    }
}

/// Fills the filesystem holding `dir` with `filler` until ENOSPC.
fn fill(filler: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(filler).expect("create filler");
    let chunk = vec![0xa5u8; 16 * 1024];
    while f.write_all(&chunk).is_ok() {}
    // Whatever is left below one chunk.
    while f.write_all(&chunk[..512]).is_ok() {}
    let _ = f.sync_all();
}

/// `walship replicate DB REPLICA` (optionally under `fiu-run` with `fiu` commands),
/// logging at warn level to `log`.
fn start_replicate(db: &Path, replica: &Path, log: &Path, fiu: &[&str]) -> Proc {
    let mut cmd = if fiu.is_empty() {
        Command::new(bin())
    } else {
        let mut c = Command::new("fiu-run");
        c.arg("-x").arg("-f").arg("");
        for spec in fiu {
            c.arg("-c").arg(spec);
        }
        c.arg(bin());
        c
    };
    cmd.arg("replicate").arg(db).arg(replica).env("WALSHIP_LOG", "warn");
    let _ = std::fs::remove_file(log);
    Proc::spawn("walship replicate", cmd, Some(log.to_path_buf()))
}

/// How a replicator run under faults ended.
#[derive(Debug)]
enum Ended {
    /// Still running (it rode the faults out); it has been stopped with SIGINT.
    Survived(ExitStatus),
    /// It stopped by itself, with this `error:` line.
    Stopped(String),
}

/// Checks a replicator that exited by itself: non-zero, no panic, exactly one `error:`
/// line, which is the last line. With `fiu`, a write to stderr itself may be failed by
/// the injection (Rust's `eprintln!` then panics); that is tolerated and reported.
#[track_caller]
fn check_stopped(p: &mut Proc, status: ExitStatus, fiu: bool) -> String {
    let log = p.log_text();
    if fiu && log.contains("failed printing to stderr") {
        eprintln!(
            "note: fiu failed walship's own write to stderr; exit ({status}) not judged; log:\n{}",
            short_tail(&log)
        );
        return "error: (stderr write failed under injection)".into();
    }
    // notify's inotify watcher unwraps the write to its event-loop eventfd when dropped;
    // fiu fails that write too (a real disk never can).
    if fiu && log.contains("notify") && log.contains("inotify.rs") && log.contains("panicked") {
        eprintln!(
            "note: fiu failed notify's eventfd write (panic in its Drop); exit ({status}) not judged; log:\n{}",
            short_tail(&log)
        );
        return "error: (notify eventfd write failed under injection)".into();
    }
    assert!(!status.success(), "walship exited 0 by itself; log:\n{}", short_tail(&log));
    assert!(!log.contains("panicked"), "walship panicked; log:\n{}", short_tail(&log));
    let errors: Vec<&str> = log.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "expected one `error:` line; log:\n{}", short_tail(&log));
    let last = log.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or_default();
    assert_eq!(last, errors[0], "the `error:` line must be the last line; log:\n{}", short_tail(&log));
    errors[0].to_string()
}

/// The last 1500 characters of a log.
fn short_tail(log: &str) -> String {
    let n = log.chars().count();
    log.chars().skip(n.saturating_sub(1500)).collect()
}

/// Waits up to `wait` for the replicator to exit by itself; if it is still running,
/// stops it with SIGINT.
fn end_run(p: &mut Proc, wait: Duration, fiu: bool) -> Ended {
    if let Some(status) = p.wait_timeout(wait) {
        return Ended::Stopped(check_stopped(p, status, fiu));
    }
    // A stop waits up to 30 s (walship's drain) for the replicas to take the last files.
    let status = p.interrupt(Duration::from_secs(45));
    Ended::Survived(status)
}

/// A restore of the replica as it is now: must hold a real state of the primary `db`
/// (ids 1..=k, and the primary, read after the restore, has at least k). Returns k (0
/// when the replica has no file yet).
#[track_caller]
fn restore_prefix(replica: &Path, out: &Path, db: &Path) -> u64 {
    assert_ltx_files_decode(replica);
    assert_ltx_files_decode(&local_dir(db));
    if newest_txid(replica) == 0 {
        return 0;
    }
    let _ = std::fs::remove_file(out);
    let o = restore(s(replica), out, &["--check", "full"]);
    assert!(o.status.success(), "restore of the replica failed: {}", short(&stderr(&o)));
    let k = seq_rows(out);
    let primary = seq_rows(db);
    assert!(k <= primary, "restored {k} rows, the primary has only {primary}");
    k
}

/// The local state folder of `db`.
fn local_dir(db: &Path) -> PathBuf {
    db.with_file_name(format!(".{}-walship", db.file_name().unwrap().to_string_lossy()))
}

/// Every published LTX file under `root/ltx/<level>/` (temporary files start with a dot
/// and are skipped) must decode completely, checksums included: walship may stop
/// anywhere, but must never leave a torn file under a final name, locally or in the
/// replica. Call only while no replicator runs.
#[track_caller]
fn assert_ltx_files_decode(root: &Path) {
    let Ok(levels) = std::fs::read_dir(root.join("ltx")) else { return };
    for level in levels.flatten() {
        for f in std::fs::read_dir(level.path()).into_iter().flatten().flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || !name.ends_with(".ltx") {
                continue;
            }
            let bytes = std::fs::read(f.path()).unwrap();
            if let Err(e) = ltx::decode_all(&bytes) {
                panic!("{} does not decode: {e}", f.path().display());
            }
        }
    }
}

/// After the faults: a fresh replicator on a healthy disk must bring the replica level
/// with the primary, and a restore must equal it.
#[track_caller]
fn recover_and_compare(db: &Path, replica: &Path, log: &Path, out: &Path) {
    let primary = seq_rows(db);
    let mut p = start_replicate(db, replica, log, &[]);
    let caught_up = wait_until(Duration::from_secs(15), || {
        std::fs::read_to_string(log).is_ok_and(|l| !l.is_empty() && l.contains("error:"))
            || newest_txid(replica) > 0 && {
                // Cheap check first: a file newer than the last restore appeared.
                let _ = std::fs::remove_file(out);
                restore(s(replica), out, &["--check", "none"]).status.success() && seq_rows(out) == primary
            }
    });
    let status = p.interrupt(Duration::from_secs(20));
    let log_text = p.log_text();
    assert!(
        caught_up && status.success(),
        "a healthy restart did not catch up ({status}); log:\n{}",
        short_tail(&log_text)
    );
    let _ = std::fs::remove_file(out);
    let o = restore(s(replica), out, &["--check", "full"]);
    assert!(o.status.success(), "final restore failed: {}", short(&stderr(&o)));
    assert_eq!(seq_rows(out), primary, "final restore differs from the primary");
    assert_eq!(dump_hash(out, false), dump_hash(db, false), "final restore's content hash");
}

/// ENOSPC: the filesystem of the local state folder fills up while a writer is busy;
/// then space is freed. `state_only`: only the state folder is on the tmpfs (through a
/// symlink); otherwise the whole database folder is (the writer and walship's
/// checkpoints hit the full disk too).
fn enospc(state_only: bool) {
    let tmp = tempdir();
    // Big enough for the database and its WAL at their natural size (walship checkpoints
    // at 1000 frames: about 4 MiB of WAL), so the disk is full only while the filler is.
    let Some(_mnt) = Tmpfs::mount(&tmp.path().join("mnt"), "8m") else { return };
    let mnt = tmp.path().join("mnt");
    let db = if state_only {
        let state = mnt.join("state");
        std::fs::create_dir(&state).unwrap();
        std::os::unix::fs::symlink(&state, tmp.path().join(".app.db-walship")).unwrap();
        tmp.path().join("app.db")
    } else {
        mnt.join("app.db")
    };
    let replica = tmp.path().join("replica");
    let log = tmp.path().join("replicate.log");
    let stop = tmp.path().join("stop");
    let out = tmp.path().join("restored.db");
    create_db(&db, SCHEMA);

    let mut p = start_replicate(&db, &replica, &log, &[]);
    let writer = Writer::start(SEQ_WRITER, &[s(&db), s(&stop)]);
    assert!(
        wait_until(Duration::from_secs(10), || newest_txid(&replica) >= 10),
        "replication never started; log:\n{}",
        p.log_text()
    );

    // Fill the disk and keep it full for a while, with the writer still trying.
    let filler = mnt.join("filler");
    fill(&filler);
    std::thread::sleep(Duration::from_millis(1500));
    let during = seq_rows(&db);
    std::fs::remove_file(&filler).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    std::fs::write(&stop, b"").unwrap();
    writer.finish(Duration::from_secs(10));
    let primary = seq_rows(&db);
    assert!(primary >= during);

    match end_run(&mut p, Duration::from_millis(1500), false) {
        Ended::Survived(status) => {
            assert!(status.success(), "walship exited with {status} at SIGINT; log:\n{}", short_tail(&p.log_text()));
            // It rode the full disk out: the replica must be level with the primary.
            let k = restore_prefix(&replica, &out, &db);
            assert_eq!(k, primary, "walship kept running but the replica is behind after a clean stop");
            eprintln!("enospc(state_only={state_only}): walship recovered; {primary} rows replicated");
        }
        Ended::Stopped(line) => {
            assert!(
                line.contains("space")
                    || line.contains("full")
                    || line.contains("ENOSPC")
                    || line.contains("os error 28"),
                "the error does not say the disk is full: {line}"
            );
            let k = restore_prefix(&replica, &out, &db);
            eprintln!("enospc(state_only={state_only}): walship stopped ({line}); replica has 1..={k} of {primary}");
        }
    }
    drop(p);
    recover_and_compare(&db, &replica, &log, &out);
}

#[test]
fn enospc_in_the_state_folder_stops_or_recovers_and_never_corrupts() {
    enospc(true);
}

#[test]
fn enospc_on_the_database_disk_stops_or_recovers_and_never_corrupts() {
    enospc(false);
}

fn fiu_available() -> bool {
    let ok = Command::new("fiu-run").arg("-h").output().is_ok_and(|o| !o.stdout.is_empty() || !o.stderr.is_empty());
    if !ok {
        eprintln!("note: fiu-run (Debian's fiu-utils) is not installed; skipping the EIO test");
    }
    ok
}

/// EIO: walship runs under `fiu-run` with fsync, then write/read calls failing at
/// random (the writer is not under injection). Each faulty run must end with one clean
/// `error:` line or survive; the replica must restore to a real state after each; a
/// healthy restart must catch up exactly.
#[test]
fn eio_from_fsync_write_and_read_stops_cleanly_and_never_corrupts() {
    if !fiu_available() {
        return;
    }
    let tmp = tempdir();
    let db = tmp.path().join("app.db");
    let replica = tmp.path().join("replica");
    let log = tmp.path().join("replicate.log");
    let stop = tmp.path().join("stop");
    let out = tmp.path().join("restored.db");
    create_db(&db, SCHEMA);
    let writer = Writer::start(SEQ_WRITER, &[s(&db), s(&stop)]);

    let runs: [&[&str]; 2] = [
        &["enable_random name=posix/io/sync/*,probability=0.05"],
        &[
            "enable_random name=posix/io/rw/write,probability=0.01",
            "enable_random name=posix/io/rw/pwrite,probability=0.01",
            "enable_random name=posix/io/rw/read,probability=0.005",
            "enable_random name=posix/io/rw/pread,probability=0.005",
        ],
    ];
    for (i, fiu) in runs.iter().enumerate() {
        let mut p = start_replicate(&db, &replica, &log, fiu);
        let ended = end_run(&mut p, Duration::from_millis(2500), true);
        if let Ended::Survived(status) = &ended {
            // SIGINT under injection: a clean exit or one clean error line.
            if !status.success() {
                check_stopped(&mut p, *status, true);
            }
        }
        let k = restore_prefix(&replica, &out, &db);
        eprintln!("eio run {i} ({fiu:?}): {ended:?}; replica restores 1..={k}");
    }
    std::fs::write(&stop, b"").unwrap();
    writer.finish(Duration::from_secs(10));
    recover_and_compare(&db, &replica, &log, &out);
}

/// A restore onto a disk too small for the database fails with one clear error (from
/// the thread that writes the pages) and leaves nothing behind: no output file, no
/// temporary file. The same restore then succeeds on a disk with room.
#[test]
fn restore_onto_a_full_disk_fails_cleanly() {
    let tmp = tempdir();
    let Some(_mnt) = Tmpfs::mount(&tmp.path().join("mnt"), "2m") else { return };
    let mnt = tmp.path().join("mnt");
    let db = tmp.path().join("app.db");
    let replica = tmp.path().join("replica");
    create_db(&db, SCHEMA);
    // About 6 MiB of incompressible rows: three times the small disk.
    exec(&db, "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1500) INSERT INTO t(v) SELECT randomblob(4000) FROM n;");
    let mut p = start_replicate(&db, &replica, &tmp.path().join("replicate.log"), &[]);
    assert!(wait_until(Duration::from_secs(20), || newest_txid(&replica) >= 1), "no file; log:\n{}", p.log_text());
    assert!(p.interrupt(Duration::from_secs(30)).success());
    let target = mnt.join("restored.db");
    let o = restore(s(&replica), &target, &[]);
    assert!(!o.status.success(), "a restore onto a full disk succeeded");
    let err = stderr(&o);
    assert!(err.starts_with("error: ") && err.contains("No space left"), "unclear error: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "more than one line: {err}");
    let left: Vec<_> = std::fs::read_dir(&mnt).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(left.is_empty(), "a failed restore left {left:?} behind");
    let roomy = tmp.path().join("restored.db");
    assert!(restore(s(&replica), &roomy, &[]).status.success());
    assert_eq!(dump_hash(&roomy, false), dump_hash(&db, false));
}

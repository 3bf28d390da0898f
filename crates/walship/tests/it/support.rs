//! Helpers shared by the integration tests: real processes (walship, python3 writers,
//! Litestream), guards that kill them on drop, content hashes and replica listings.

#![allow(dead_code)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// The `walship` binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_walship")
}

/// Runs `walship ARGS` to completion.
pub fn walship(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .env("WALSHIP_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("run walship")
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The first 600 characters of a long message (SQLite check reports can run to
/// thousands of lines).
pub fn short(text: &str) -> String {
    let mut s: String = text.chars().take(600).collect();
    if s.len() < text.len() {
        s.push_str(" [...]");
    }
    s
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Asserts a walship run failed the way runtime errors must: non-zero exit, exactly
/// one stderr line starting with `error:`, no panic. Returns that line.
#[track_caller]
pub fn assert_error(out: &Output) -> String {
    let err = stderr(out);
    assert!(!out.status.success(), "expected failure, got success; stderr: {}", short(&err));
    assert!(!err.contains("panicked"), "walship panicked: {}", short(&err));
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one error line, got: {}", short(&err));
    assert!(lines[0].starts_with("error:"), "expected `error: ...`, got: {}", short(&err));
    lines[0].to_string()
}

/// Polls `f` every 50 ms until it returns true or `timeout` passes; returns whether it did.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A child process that is SIGKILLed and reaped when dropped.
pub struct Proc {
    pub child: Child,
    pub name: String,
    pub log: Option<PathBuf>,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command, log: Option<PathBuf>) -> Proc {
        cmd.stdin(Stdio::null());
        match &log {
            Some(path) => {
                let f = File::options().create(true).append(true).open(path).expect("open log");
                cmd.stdout(f.try_clone().expect("clone log")).stderr(f);
            }
            None => {
                cmd.stdout(Stdio::null()).stderr(Stdio::inherit());
            }
        }
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        Proc { child, name: name.to_string(), log }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid; the child is not reaped yet.
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits for exit up to `timeout`; `None` if it is still running.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGINT and waits for the exit status (panics after `timeout`).
    #[track_caller]
    pub fn interrupt(&mut self, timeout: Duration) -> ExitStatus {
        self.signal(libc::SIGINT);
        match self.wait_timeout(timeout) {
            Some(s) => s,
            None => panic!("{} did not exit within {timeout:?} of SIGINT; log:\n{}", self.name, self.log_text()),
        }
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log_text(&self) -> String {
        self.log.as_ref().and_then(|p| std::fs::read_to_string(p).ok()).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// `walship replicate DB REPLICA...` under a guard, logging to `<dir>/replicate.log`.
pub struct Replicator(pub Proc);

impl Replicator {
    pub fn start(db: &Path, replicas: &[&str]) -> Replicator {
        let mut cmd = Command::new(bin());
        cmd.arg("replicate").arg(db).args(replicas).env("WALSHIP_LOG", "info");
        let log = db.with_file_name("replicate.log");
        Replicator(Proc::spawn("walship replicate", cmd, Some(log)))
    }

    pub fn start_config(config: &Path) -> Replicator {
        let mut cmd = Command::new(bin());
        cmd.arg("replicate").arg("--config").arg(config).env("WALSHIP_LOG", "info");
        let log = config.with_file_name("replicate.log");
        Replicator(Proc::spawn("walship replicate", cmd, Some(log)))
    }

    /// SIGINT, then asserts a clean exit (status 0) within 30 s.
    #[track_caller]
    pub fn stop(mut self) {
        let status = self.0.interrupt(Duration::from_secs(30));
        assert!(status.success(), "walship replicate exited with {status}; log:\n{}", self.0.log_text());
    }

    /// Waits until `replica` has been quiet for a second (at most `timeout`), checks the
    /// process is alive, stops it cleanly, and asserts that the replica restores to
    /// exactly the primary `db` (restored next to it as `restored.db`).
    #[track_caller]
    pub fn finish_and_check(mut self, db: &Path, replica: &Path, timeout: Duration) {
        wait_stable(replica, Duration::from_secs(1), timeout);
        self.assert_running();
        self.stop();
        let out = db.with_file_name("restored.db");
        assert_eq!(restore_hash(s(replica), &out, &[], false), dump_hash(db, false), "restore differs from the primary");
    }

    /// Asserts the process is still alive (it must not die on its own).
    #[track_caller]
    pub fn assert_running(&mut self) {
        assert!(self.0.running(), "walship replicate died; log:\n{}", self.0.log_text());
    }
}

/// A python3 process running `script` with `args`, under a guard.
pub struct Writer(pub Proc);

impl Writer {
    pub fn start(script: &str, args: &[&str]) -> Writer {
        let mut cmd = Command::new("python3");
        cmd.arg("-c").arg(script).args(args);
        Writer(Proc::spawn("python3 writer", cmd, None))
    }

    /// Waits for the writer to finish by itself and asserts it succeeded.
    #[track_caller]
    pub fn finish(mut self, timeout: Duration) {
        let status = self.0.wait_timeout(timeout).unwrap_or_else(|| panic!("writer still running after {timeout:?}"));
        assert!(status.success(), "writer failed: {status}");
    }
}

/// Runs a python3 script to completion and returns its stdout; panics on failure.
#[track_caller]
pub fn python(script: &str, args: &[&str]) -> String {
    let out = Command::new("python3").arg("-c").arg(script).args(args).output().expect("run python3");
    assert!(out.status.success(), "python3 failed: {}\n{}", stderr(&out), script);
    stdout(&out)
}

const CHECK_PY: &str = r#"
import sqlite3, hashlib, sys
path, filt = sys.argv[1], sys.argv[2] == "1"
c = sqlite3.connect(path, timeout=10)
integrity = "; ".join(r[0] for r in c.execute("PRAGMA integrity_check"))
h = hashlib.sha256()
for line in c.iterdump():
    if filt and "_litestream" in line:
        continue
    h.update((line + "\n").encode())
c.close()
print(h.hexdigest())
print(integrity)
"#;

/// `(content hash, integrity_check result)` of a database: the hash is sha256 over
/// Python's `iterdump()` lines, each followed by `\n`; with `filter_litestream`, lines
/// mentioning `_litestream` are left out.
pub fn db_check(path: &Path, filter_litestream: bool) -> (String, String) {
    let out = python(CHECK_PY, &[path.to_str().unwrap(), if filter_litestream { "1" } else { "0" }]);
    let mut lines = out.lines();
    (lines.next().unwrap_or_default().to_string(), lines.next().unwrap_or_default().to_string())
}

pub fn dump_hash(path: &Path, filter_litestream: bool) -> String {
    db_check(path, filter_litestream).0
}

pub fn integrity_ok(path: &Path) -> bool {
    db_check(path, false).1 == "ok"
}

/// Every LTX file of a folder replica as `(level, min, max)`, sorted.
pub fn ltx_files(replica: &Path) -> Vec<(u8, u64, u64)> {
    let mut out = Vec::new();
    let Ok(levels) = std::fs::read_dir(replica.join("ltx")) else { return out };
    for level in levels.flatten() {
        let Some(lvl) = level.file_name().to_str().and_then(|s| s.parse::<u8>().ok()) else { continue };
        let Ok(files) = std::fs::read_dir(level.path()) else { continue };
        for f in files.flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            let Some(stem) = name.strip_suffix(".ltx") else { continue };
            let Some((a, b)) = stem.split_once('-') else { continue };
            if let (Ok(min), Ok(max)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) {
                out.push((lvl, min, max));
            }
        }
    }
    out.sort();
    out
}

/// The newest TXID in a folder replica (0 when empty).
pub fn newest_txid(replica: &Path) -> u64 {
    ltx_files(replica).iter().map(|f| f.2).max().unwrap_or(0)
}

/// Waits until the replica's newest TXID has not changed for `quiet`; returns it.
#[track_caller]
pub fn wait_stable(replica: &Path, quiet: Duration, timeout: Duration) -> u64 {
    let deadline = Instant::now() + timeout;
    let mut last = newest_txid(replica);
    let mut since = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let now = newest_txid(replica);
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= quiet && now > 0 {
            return now;
        }
        assert!(Instant::now() < deadline, "replica {} never became stable (newest TXID {last})", replica.display());
    }
}

/// One line of `walship ltx`.
#[derive(Debug, Clone)]
pub struct LtxLine {
    pub level: u8,
    pub min: String,
    pub max: String,
    pub size: u64,
    pub created: String,
}

/// Runs `walship ltx REPLICA` and parses its lines.
#[track_caller]
pub fn walship_ltx(replica: &str) -> Vec<LtxLine> {
    let out = walship(&["ltx", replica]);
    assert!(out.status.success(), "walship ltx failed: {}", stderr(&out));
    let text = stdout(&out);
    let mut lines = text.lines();
    let header = lines.next().expect("header line");
    assert!(header.contains("level") && header.contains("min_txid"), "header: {header}");
    lines
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(f.len(), 5, "ltx line {l:?}");
            LtxLine {
                level: f[0].parse().expect("level"),
                min: f[1].to_string(),
                max: f[2].to_string(),
                size: f[3].parse().expect("size"),
                created: f[4].to_string(),
            }
        })
        .collect()
}

/// `walship restore -o OUT EXTRA... REPLICA`.
pub fn restore(replica: &str, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["restore", "-o", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    args.push(replica);
    walship(&args)
}

/// Restores and asserts success; returns the restored content hash after checking
/// `PRAGMA integrity_check` is ok.
#[track_caller]
pub fn restore_hash(replica: &str, out: &Path, extra: &[&str], filter_litestream: bool) -> String {
    let o = restore(replica, out, extra);
    assert!(o.status.success(), "restore {extra:?} failed: {}", short(&stderr(&o)));
    assert!(stderr(&o).contains("restored"), "no summary line: {}", stderr(&o));
    let (hash, integrity) = db_check(out, filter_litestream);
    assert_eq!(integrity, "ok", "integrity_check of restored {}", out.display());
    hash
}

/// Creates a WAL-mode database with `sql` run in it.
pub fn create_db(path: &Path, sql: &str) {
    python(
        "import sqlite3,sys\nc=sqlite3.connect(sys.argv[1],isolation_level=None)\nc.execute('PRAGMA journal_mode=WAL')\nc.executescript(sys.argv[2])\nc.close()",
        &[path.to_str().unwrap(), sql],
    );
}

/// Runs SQL statements against a database in one python3 process.
pub fn exec(path: &Path, sql: &str) {
    python(
        "import sqlite3,sys\nc=sqlite3.connect(sys.argv[1],timeout=10,isolation_level=None)\nc.executescript(sys.argv[2])\nc.close()",
        &[path.to_str().unwrap(), sql],
    );
}

/// A fresh temp dir for one test.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("walship-it-").tempdir().expect("tempdir")
}

/// Path → `&str` shorthand.
pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Litestream's binary: `$LITESTREAM_BIN`, else `litestream` on PATH.
pub fn litestream_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("LITESTREAM_BIN") {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join("litestream")).find(|p| p.is_file())
}

/// Copies a folder tree; the copies are writable even when the originals (shared/) are not.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
            // shared/ is read-only; the copies need not be.
            let mut perm = std::fs::metadata(&target).unwrap().permissions();
            #[allow(clippy::permissions_set_readonly_false)]
            perm.set_readonly(false);
            std::fs::set_permissions(&target, perm).unwrap();
        }
    }
}

/// `GET http://127.0.0.1:PORT/PATH` as JSON (`Null` when there is no answer).
pub fn http_json(port: u16, path: &str) -> serde_json::Value {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    client
        .get(format!("http://127.0.0.1:{port}{path}"))
        .send()
        .ok()
        .and_then(|r| r.text().ok())
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(serde_json::Value::Null)
}

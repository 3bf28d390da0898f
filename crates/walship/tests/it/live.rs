//! Live replicas end to end: a real primary (`walship replicate --listen`), real
//! followers (`walship follow`), a python3 bank workload whose invariants readers check
//! on every follower, with fresh and long-lived connections, while followers and the
//! primary are killed, connections dropped and delayed, and replicas written behind
//! walship's back.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};
use serde_json::Value;

use crate::fault_proxy::FaultProxy;
use crate::support::*;
use crate::workload::{BANK, BANK_SCHEMA};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `walship replicate DB REPLICAS --listen 127.0.0.1:PORT EXTRA`, logging beside DB.
fn primary(db: &Path, replicas: &[&str], port: u16, extra: &[&str]) -> Proc {
    let mut cmd = Command::new(bin());
    cmd.arg("replicate").arg(db).args(replicas).args(["--listen", &format!("127.0.0.1:{port}")]).args(extra);
    cmd.env("WALSHIP_LOG", "info");
    let p = Proc::spawn("walship replicate", cmd, Some(db.with_file_name("primary.log")));
    assert!(wait_until(Duration::from_secs(20), || get(port, "/status", None).0 == 200), "primary did not start");
    p
}

/// `walship follow SOURCE REPLICA --listen 127.0.0.1:PORT EXTRA`, logging beside REPLICA.
fn follower(source: &str, replica: &Path, port: u16, extra: &[&str]) -> Proc {
    let mut cmd = Command::new(bin());
    cmd.arg("follow").arg(source).arg(replica).args(["--listen", &format!("127.0.0.1:{port}")]).args(extra);
    cmd.env("WALSHIP_LOG", "info");
    let p = Proc::spawn("walship follow", cmd, Some(replica.with_extension("log")));
    assert!(wait_until(Duration::from_secs(20), || get(port, "/status", None).0 == 200), "follower did not start");
    p
}

fn client() -> reqwest::blocking::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::blocking::Client::builder().timeout(Duration::from_secs(60)).build().unwrap()
}

fn request(method: reqwest::Method, port: u16, path: &str, token: Option<&str>) -> (u16, Value) {
    let mut req = client().request(method, format!("http://127.0.0.1:{port}{path}"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    match req.send() {
        Ok(resp) => {
            let code = resp.status().as_u16();
            (code, resp.text().ok().and_then(|t| serde_json::from_str(&t).ok()).unwrap_or(Value::Null))
        }
        Err(_) => (0, Value::Null),
    }
}

fn get(port: u16, path: &str, token: Option<&str>) -> (u16, Value) {
    request(reqwest::Method::GET, port, path, token)
}

/// `POST /sync/app` on the primary: the TXID holding every commit so far.
#[track_caller]
fn sync(port: u16) -> (u64, String) {
    let (code, v) = request(reqwest::Method::POST, port, "/sync/app", None);
    assert_eq!(code, 200, "sync answered {code}: {v}");
    (v["txid"].as_u64().unwrap(), v["checksum"].as_str().unwrap().to_string())
}

/// `GET /wait/app?txid=N` on a follower.
fn wait_txid(port: u16, txid: u64, timeout: &str) -> bool {
    get(port, &format!("/wait/app?txid={txid}&timeout={timeout}"), None).0 == 200
}

/// The follower's `/status` entry for `app`.
fn status(port: u16) -> Value {
    get(port, "/status", None).1["databases"][0].clone()
}

/// Waits until the follower on `port` reached the primary's current state.
#[track_caller]
fn assert_caught_up(primary_port: u16, follower_port: u16, what: &str) {
    let (txid, checksum) = sync(primary_port);
    assert!(wait_txid(follower_port, txid, "60s"), "{what} did not reach TXID {txid}: {}", status(follower_port));
    let st = status(follower_port);
    if st["txid"].as_u64() == Some(txid) {
        assert_eq!(st["checksum"].as_str(), Some(checksum.as_str()), "{what}: same TXID, different checksum");
    }
}

/// Readers on one replica checking the bank's invariants: one opens a fresh
/// connection for every read, one keeps its connection.
struct Readers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<(u64, Vec<String>)>>,
}

impl Readers {
    fn start(path: &Path) -> Readers {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = [false, true]
            .into_iter()
            .map(|long_lived| {
                let (stop, path) = (stop.clone(), path.to_path_buf());
                std::thread::spawn(move || read_loop(&path, long_lived, &stop))
            })
            .collect();
        Readers { stop, threads }
    }

    /// Stops the readers; returns (reads, violations).
    fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = (0, Vec::new());
        for t in self.threads {
            let (n, v) = t.join().unwrap();
            total.0 += n;
            total.1.extend(v);
        }
        total
    }
}

fn open_ro(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
    conn.busy_timeout(Duration::from_secs(2))?;
    Ok(conn)
}

fn read_loop(path: &Path, long_lived: bool, stop: &AtomicBool) -> (u64, Vec<String>) {
    let (mut reads, mut violations, mut last_max) = (0u64, Vec::new(), 0i64);
    let mut conn: Option<Connection> = None;
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(2));
        if conn.is_none() || !long_lived {
            conn = path.exists().then(|| open_ro(path).ok()).flatten();
        }
        let Some(c) = &conn else { continue };
        match read_once(c) {
            Ok(None) => {}
            Ok(Some((sum, accounts, max_id, rows))) => {
                reads += 1;
                if sum != 100_000 || accounts != 100 || max_id != rows || max_id < last_max {
                    violations.push(format!(
                        "{} reader: sum {sum}, accounts {accounts}, log max id {max_id} with {rows} rows, earlier max {last_max}",
                        if long_lived { "long-lived" } else { "fresh" }
                    ));
                }
                last_max = last_max.max(max_id);
            }
            Err(e) => violations.push(format!("read error: {e}")),
        }
    }
    (reads, violations)
}

/// One consistent read: (sum of balances, accounts, max log id, log rows); `None`
/// while the replica has no tables yet or is busy.
fn read_once(c: &Connection) -> rusqlite::Result<Option<(i64, i64, i64, i64)>> {
    let result = (|| {
        c.execute_batch("BEGIN")?;
        let (sum, n) = c.query_row("SELECT coalesce(sum(balance), 0), count(*) FROM accounts", [], |r| Ok((r.get(0)?, r.get(1)?)))?;
        let (max, rows) = c.query_row("SELECT coalesce(max(id), 0), count(*) FROM log", [], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok((sum, n, max, rows))
    })();
    let _ = c.execute_batch("COMMIT");
    match result {
        Ok(v) => Ok(Some(v)),
        Err(rusqlite::Error::SqliteFailure(e, msg))
            if e.code == rusqlite::ErrorCode::DatabaseBusy
                || msg.as_deref().is_some_and(|m| m.contains("no such table")) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

fn bank_db(dir: &Path) -> PathBuf {
    let db = dir.join("app.db");
    create_db(&db, BANK_SCHEMA);
    db
}

#[track_caller]
fn assert_same(primary: &Path, replica: &Path) {
    let (want, ok) = db_check(primary, false);
    assert_eq!(ok, "ok");
    let (got, ok) = db_check(replica, false);
    assert_eq!(ok, "ok", "{} fails integrity_check", replica.display());
    assert_eq!(got, want, "{} differs from the primary", replica.display());
}

#[test]
fn three_followers_see_only_whole_transactions() {
    let dir = tempdir();
    let db = bank_db(dir.path());
    let p = free_port();
    let _primary = primary(&db, &[s(&dir.path().join("backup"))], p, &[]);
    let url = format!("http://127.0.0.1:{p}/app");
    let ports = [free_port(), free_port(), free_port()];
    let replicas: Vec<PathBuf> = (0..3).map(|i| dir.path().join(format!("replica{i}.db"))).collect();
    let mut followers = vec![
        follower(&url, &replicas[0], ports[0], &[]),
        follower(&url, &replicas[1], ports[1], &[]),
        // Cascaded: fed by the first follower.
        follower(&format!("http://127.0.0.1:{}/app", ports[0]), &replicas[2], ports[2], &[]),
    ];
    let readers: Vec<Readers> = replicas.iter().map(|r| Readers::start(r)).collect();
    let writer = Writer::start(BANK, &[s(&db), "1", "8"]);

    // Kill the second follower mid-stream and restart it: it resumes from its position.
    std::thread::sleep(Duration::from_secs(3));
    followers[1].kill9();
    std::thread::sleep(Duration::from_millis(500));
    followers[1] = follower(&url, &replicas[1], ports[1], &[]);
    writer.finish(Duration::from_secs(60));

    for (i, port) in ports.iter().enumerate() {
        assert_caught_up(p, *port, &format!("follower {i}"));
    }
    assert_eq!(status(ports[1])["upstream"]["snapshots_applied"], 0, "the restarted follower needed a snapshot");
    let mut total = 0;
    for (i, r) in readers.into_iter().enumerate() {
        let (reads, violations) = r.finish();
        assert!(violations.is_empty(), "follower {i}: {} violations, first: {}", violations.len(), violations[0]);
        assert!(reads > 100, "follower {i}: only {reads} reads");
        total += reads;
    }
    println!("reads checked on 3 followers: {total}, violations: 0");
    for r in &replicas {
        assert_same(&db, r);
    }
    for mut f in followers {
        assert!(f.running(), "a follower died: {}", f.log_text());
    }
}

#[test]
fn followers_ride_out_dropped_delayed_and_stalled_connections_and_a_primary_crash() {
    let dir = tempdir();
    let db = bank_db(dir.path());
    let p = free_port();
    let mut prim = primary(&db, &[s(&dir.path().join("backup"))], p, &[]);
    let proxy = FaultProxy::start(format!("127.0.0.1:{p}").parse().unwrap());
    let replica = dir.path().join("replica.db");
    let fport = free_port();
    let mut f = follower(&format!("http://{}/app", proxy.addr()), &replica, fport, &[]);
    let readers = Readers::start(&replica);
    let writer = Writer::start(BANK, &[s(&db), "2", "10"]);
    let start = Instant::now();
    for round in 0.. {
        if start.elapsed() > Duration::from_secs(8) {
            break;
        }
        std::thread::sleep(Duration::from_millis(400));
        match round % 5 {
            0 => proxy.drop_connections(),
            1 => proxy.set_delay(Duration::from_millis(30)),
            2 => {
                proxy.set_delay(Duration::ZERO);
                proxy.set_stall(true);
            }
            3 => {
                proxy.set_stall(false);
                proxy.set_refuse(true);
                proxy.drop_connections();
            }
            _ => proxy.set_refuse(false),
        }
        if round == 7 {
            // The primary dies without warning and comes back on the same port.
            prim.kill9();
            prim = primary(&db, &[s(&dir.path().join("backup"))], p, &[]);
        }
    }
    proxy.set_refuse(false);
    proxy.set_stall(false);
    proxy.set_delay(Duration::ZERO);
    writer.finish(Duration::from_secs(60));
    assert_caught_up(p, fport, "the follower");
    let (reads, violations) = readers.finish();
    assert!(violations.is_empty(), "{} violations, first: {}", violations.len(), violations[0]);
    assert!(reads > 100, "only {reads} reads");
    assert!(proxy.connections() > 3, "the faults never cut a connection");
    assert_same(&db, &replica);
    assert!(f.running(), "the follower died: {}", f.log_text());
}

#[test]
fn foreign_writes_are_healed_and_a_restored_primary_is_followed() {
    let dir = tempdir();
    let db = bank_db(dir.path());
    let backup = dir.path().join("backup");
    let p = free_port();
    let mut prim = primary(&db, &[s(&backup)], p, &[]);
    let replica = dir.path().join("replica.db");
    let fport = free_port();
    let mut f = follower(&format!("http://127.0.0.1:{p}/app"), &replica, fport, &[]);
    Writer::start(BANK, &[s(&db), "3", "2"]).finish(Duration::from_secs(60));
    assert_caught_up(p, fport, "the follower");
    let (early, _) = sync(p);

    // Someone writes to the replica behind walship's back.
    exec(&replica, "UPDATE accounts SET balance = balance + 1 WHERE id = 1; DELETE FROM log WHERE id = 3;");
    assert!(
        wait_until(Duration::from_secs(20), || status(fport)["upstream"]["foreign_writes_healed"].as_u64() >= Some(1)),
        "the foreign write was not noticed: {}",
        status(fport)
    );
    assert_caught_up(p, fport, "the healed follower");
    assert_same(&db, &replica);

    // More history, then the primary is rebuilt from its backup at an earlier TXID
    // (a new machine: no local state) and takes different writes.
    Writer::start(BANK, &[s(&db), "4", "1"]).finish(Duration::from_secs(60));
    assert_caught_up(p, fport, "the follower");
    prim.interrupt(Duration::from_secs(30));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    std::fs::remove_dir_all(dir.path().join(".app.db-walship")).unwrap();
    let out = walship(&["restore", "-o", s(&db), "--txid", &early.to_string(), s(&backup)]);
    assert!(out.status.success(), "{}", stderr(&out));
    exec(&db, "INSERT INTO log(a, b, amount, pad) VALUES (1, 2, 0, x'00');");
    let _prim = primary(&db, &[s(&backup)], p, &[]);
    assert_caught_up(p, fport, "the follower of the restored primary");
    assert_same(&db, &replica);
    assert!(status(fport)["upstream"]["snapshots_applied"].as_u64() >= Some(1));
    assert!(f.running(), "the follower died: {}", f.log_text());
}

#[test]
fn token_guards_every_endpoint_and_wait_times_out() {
    let dir = tempdir();
    let db = bank_db(dir.path());
    let p = free_port();
    let mut cmd = Command::new(bin());
    cmd.arg("replicate").arg(&db).args(["--listen", &format!("127.0.0.1:{p}")]).env("WALSHIP_TOKEN", "s3cret");
    let _primary = Proc::spawn("walship replicate", cmd, Some(db.with_file_name("primary.log")));
    assert!(wait_until(Duration::from_secs(20), || get(p, "/status", None).0 == 401), "expected 401 without a token");
    assert_eq!(get(p, "/status", Some("wrong")).0, 401);
    assert_eq!(request(reqwest::Method::POST, p, "/sync/app", None).0, 401);
    assert_eq!(get(p, "/stream/app", None).0, 401);
    assert_eq!(get(p, "/status", Some("s3cret")).0, 200);
    assert_eq!(get(p, "/stream/other", Some("s3cret")).0, 404);
    assert_eq!(get(p, "/stream/..%2F..%2Fetc", Some("s3cret")).0, 404);

    let replica = dir.path().join("replica.db");
    let fport = free_port();
    let mut cmd = Command::new(bin());
    cmd.arg("follow").arg(format!("http://127.0.0.1:{p}/app")).arg(&replica).args(["--listen", &format!("127.0.0.1:{fport}")]);
    cmd.env("WALSHIP_TOKEN", "s3cret").env("WALSHIP_LOG", "info");
    let _f = Proc::spawn("walship follow", cmd, Some(replica.with_extension("log")));
    exec(&db, "INSERT INTO log(a, b, amount) VALUES (1, 2, 3);");
    let (code, v) = request(reqwest::Method::POST, p, "/sync/app", Some("s3cret"));
    assert_eq!(code, 200);
    let txid = v["txid"].as_u64().unwrap();
    assert!(wait_until(Duration::from_secs(20), || get(fport, &format!("/wait/app?txid={txid}&timeout=1s"), Some("s3cret")).0 == 200));
    assert_same(&db, &replica);
    let started = Instant::now();
    let (code, v) = get(fport, &format!("/wait/app?txid={}&timeout=300ms", txid + 1000), Some("s3cret"));
    assert_eq!(code, 408, "{v}");
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(get(fport, "/wait/app?txid=1&timeout=forever", Some("s3cret")).0, 400);
    assert_eq!(request(reqwest::Method::POST, fport, "/sync/app", Some("s3cret")).0, 405);
}

#[test]
fn follow_a_folder_replica_by_polling() {
    let dir = tempdir();
    let db = bank_db(dir.path());
    let backup = dir.path().join("backup");
    let rep = Replicator::start(&db, &[s(&backup)]);
    // Served (for /wait) under its file name without extension.
    std::fs::create_dir(dir.path().join("follower")).unwrap();
    let replica = dir.path().join("follower").join("app.db");
    let fport = free_port();
    let _f = follower(s(&backup), &replica, fport, &[]);
    let readers = Readers::start(&replica);
    Writer::start(BANK, &[s(&db), "5", "4"]).finish(Duration::from_secs(60));
    let newest = wait_stable(&backup, Duration::from_secs(1), Duration::from_secs(30));
    assert!(wait_txid(fport, newest, "30s"), "the follower did not reach {newest}: {}", status(fport));
    let (reads, violations) = readers.finish();
    assert!(violations.is_empty(), "{} violations, first: {}", violations.len(), violations[0]);
    assert!(reads > 50, "only {reads} reads");
    rep.stop();
    assert_same(&db, &replica);
}

#[test]
fn follow_errors_are_one_clear_line() {
    let dir = tempdir();
    let err = assert_error(&walship(&["follow", "http://127.0.0.1:1/", s(&dir.path().join("r.db"))]));
    assert!(err.contains("names no database"), "{err}");
    let err = assert_error(&walship(&["follow", "http://127.0.0.1:1/app", s(&dir.path().join("nope/r.db"))]));
    assert!(err.contains("does not exist"), "{err}");
    let db = bank_db(dir.path());
    let err = assert_error(&walship(&["replicate", s(&db), "--listen", "256.0.0.1:80"]));
    assert!(err.contains("cannot listen on"), "{err}");
}

/// Checks that a bank replica holds a state the primary really had: every balance is
/// 1000 plus the transfers its log records, and its log rows are the primary's.
#[track_caller]
fn assert_real_bank_state(primary: &Path, replica: &Path) -> i64 {
    let r = open_ro(replica).unwrap();
    r.execute_batch("BEGIN").unwrap();
    let mut expected = vec![1000i64; 101];
    let mut log = Vec::new();
    {
        let mut stmt = r.prepare("SELECT id, a, b, amount, hex(pad) FROM log ORDER BY id").unwrap();
        let rows = stmt.query_map([], |row| Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?, row.get::<_, i64>(2)?, row.get::<_, i64>(3)?, row.get::<_, Option<String>>(4)?))).unwrap();
        for row in rows {
            let (id, a, b, amount, pad) = row.unwrap();
            expected[a as usize] -= amount;
            expected[b as usize] += amount;
            log.push((id, a, b, amount, pad));
        }
    }
    let mut stmt = r.prepare("SELECT id, balance FROM accounts ORDER BY id").unwrap();
    let balances: Vec<(i64, i64)> = stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?))).unwrap().map(Result::unwrap).collect();
    assert_eq!(balances.len(), 100);
    for (id, balance) in balances {
        assert_eq!(balance, expected[id as usize], "account {id} does not match the replica's own log: a torn or unreal state");
    }
    let p = open_ro(primary).unwrap();
    let mut stmt = p.prepare("SELECT id, a, b, amount, hex(pad) FROM log WHERE id <= ?1 ORDER BY id").unwrap();
    let max = log.last().map_or(0, |l| l.0);
    let theirs: Vec<(i64, i64, i64, i64, Option<String>)> = stmt
        .query_map([max], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?, row.get(4)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(theirs == log, "the replica's log differs from the primary's up to id {max}");
    max
}

#[test]
fn follower_killed_mid_apply_always_holds_a_real_state() {
    let dir = tempdir();
    let db = bank_db(dir.path());
    let p = free_port();
    let _primary = primary(&db, &[], p, &[]);
    let url = format!("http://127.0.0.1:{p}/app");
    let replica = dir.path().join("replica.db");
    let fport = free_port();
    let writer = Writer::start(BANK, &[s(&db), "6", "8"]);
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let (mut kills, mut last) = (0, 0);
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(7) {
        let mut f = follower(&url, &replica, fport, &[]);
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        std::thread::sleep(Duration::from_millis(100 + rng % 400));
        f.kill9();
        kills += 1;
        if replica.exists() {
            let (_, ok) = db_check(&replica, false);
            assert_eq!(ok, "ok", "integrity_check after kill {kills}");
            let at = assert_real_bank_state(&db, &replica);
            assert!(at >= last, "the replica went back in time: log id {at} after {last}");
            last = at;
        }
    }
    writer.finish(Duration::from_secs(60));
    let _f = follower(&url, &replica, fport, &[]);
    assert_caught_up(p, fport, "the follower");
    assert_same(&db, &replica);
    println!("follower killed {kills} times; every state real");
}

#[test]
fn a_corrupt_file_in_a_followed_replica_is_refused() {
    let dir = tempdir();
    let db = bank_db(dir.path());
    let backup = dir.path().join("backup");
    let rep = Replicator::start(&db, &[s(&backup)]);
    Writer::start(BANK, &[s(&db), "7", "1"]).finish(Duration::from_secs(60));
    let newest = wait_stable(&backup, Duration::from_secs(1), Duration::from_secs(30));
    rep.stop();
    // Flip one byte in the middle of a file halfway through the history.
    let files: Vec<_> = ltx_files(&backup).into_iter().filter(|f| f.0 == 0 && f.1 > 5).collect();
    let victim = files[files.len() / 2];
    let path = backup.join("ltx/0").join(format!("{:016x}-{:016x}.ltx", victim.1, victim.2));
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&path, bytes).unwrap();

    std::fs::create_dir(dir.path().join("f")).unwrap();
    let replica = dir.path().join("f").join("app.db");
    let fport = free_port();
    let mut f = follower(s(&backup), &replica, fport, &[]);
    let stuck = wait_until(Duration::from_secs(20), || status(fport)["txid"].as_u64() == Some(victim.1 - 1));
    assert!(stuck, "the follower did not stop before the bad file: {}", status(fport));
    let err = status(fport)["upstream"]["last_error"].as_str().unwrap_or_default().to_string();
    assert!(err.contains(&format!("{:016x}", victim.1)), "the error does not name the bad file: {err}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(status(fport)["txid"].as_u64(), Some(victim.1 - 1), "applied past the bad file");
    assert!(newest > victim.2);
    assert_real_bank_state(&db, &replica);
    assert!(f.running(), "{}", f.log_text());
}

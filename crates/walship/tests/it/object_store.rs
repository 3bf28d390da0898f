//! Object-storage and SFTP replicas against real servers on 127.0.0.1: moto (S3),
//! azurite (Azure Blob) and OpenSSH's sshd (SFTP), started by `scripts/test-servers`
//! (which `scripts/test` runs). Without their variables (`WALSHIP_TEST_S3_ENDPOINT`,
//! `WALSHIP_TEST_AZURE_ENDPOINT`, `WALSHIP_TEST_SFTP_URL`) these tests print a note and
//! pass, so a bare `cargo test` still works.
//!
//! Credentials are always explicit and fake (SSH keys generated for the test server);
//! nothing but 127.0.0.1 is contacted.

use std::io::Read;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ltx::TxId;
use walship::Error;
use walship::store::{self, FileKey, Store};

use crate::support::*;
use crate::workload::{SCHEMA, UNTIL_STOPPED};

const SECS: Duration = Duration::from_secs(1);
/// Azurite's documented development account key.
const AZURITE_KEY: &str = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// A prefix no other test (or earlier run) uses.
fn unique(name: &str) -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    format!("it/{name}-{}-{nanos}", std::process::id())
}

fn var(name: &str) -> Option<String> {
    let v = std::env::var(name).ok().filter(|v| !v.is_empty());
    if v.is_none() {
        println!("skipped: {name} is not set (scripts/test starts the test servers and sets it)");
    }
    v
}

struct S3 {
    endpoint: String,
    bucket: String,
}

fn s3() -> Option<S3> {
    let endpoint = var("WALSHIP_TEST_S3_ENDPOINT")?;
    let bucket = std::env::var("WALSHIP_TEST_S3_BUCKET").unwrap_or_else(|_| "walship-test".into());
    Some(S3 { endpoint, bucket })
}

impl S3 {
    fn url(&self, prefix: &str) -> String {
        format!(
            "s3://{}/{prefix}?endpoint={}&region=us-east-1&force-path-style=true&access-key-id=test&secret-access-key=test",
            self.bucket, self.endpoint
        )
    }
}

fn azure_url(prefix: &str) -> Option<String> {
    let endpoint = var("WALSHIP_TEST_AZURE_ENDPOINT")?;
    let container = std::env::var("WALSHIP_TEST_AZURE_CONTAINER").unwrap_or_else(|_| "walship-test".into());
    let key: String = url_encode(AZURITE_KEY);
    Some(format!("abs://devstoreaccount1@{container}/{prefix}?endpoint={endpoint}&account-key={key}"))
}

/// The SFTP test server's URL (`WALSHIP_TEST_SFTP_URL`) with the replica in folder
/// `sub` below its root.
fn sftp_url(sub: &str) -> Option<String> {
    let url = var("WALSHIP_TEST_SFTP_URL")?;
    let (base, query) = url.split_once('?').unwrap_or((&url, ""));
    Some(format!("{}/{sub}?{query}", base.trim_end_matches('/')))
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn key(level: u8, min: u64, max: u64) -> FileKey {
    FileKey { level, min: TxId(min), max: TxId(max) }
}

/// Deterministic, incompressible-enough bytes.
fn bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn read_all_small_reads(mut r: Box<dyn Read + Send>) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 7919]; // odd size: chunk boundaries never line up
    loop {
        let n = r.read(&mut buf).expect("read");
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&buf[..n]);
    }
}

/// The contract of [`Store`], run against every backend.
fn conformance(store: &dyn Store, scratch: &Path) {
    let what = store.describe();
    store.init().unwrap_or_else(|e| panic!("{what}: init: {e}"));
    assert!(store.list(0).unwrap().is_empty(), "{what}: a fresh replica lists nothing");

    let put = |k: FileKey, data: &[u8]| {
        let local = scratch.join(format!("{}-{}-{}", k.level, k.min, k.max));
        std::fs::write(&local, data).unwrap();
        store.put(k, &local)
    };
    // Out of order; sizes differ so the listing's sizes are checked too.
    for (i, k) in [key(0, 3, 3), key(0, 1, 1), key(0, 2, 2), key(0, 1, 2), key(9, 1, 3)].into_iter().enumerate() {
        put(k, &bytes(100 + i, i as u64)).unwrap_or_else(|e| panic!("{what}: put {k}: {e}"));
    }
    let listed: Vec<(FileKey, u64)> = store.list(0).unwrap().iter().map(|f| (f.key, f.size)).collect();
    assert_eq!(
        listed,
        [(key(0, 1, 1), 101), (key(0, 1, 2), 103), (key(0, 2, 2), 102), (key(0, 3, 3), 100)],
        "{what}: level 0 sorted by (min, max)"
    );
    assert_eq!(store.list(9).unwrap().iter().map(|f| f.key).collect::<Vec<_>>(), [key(9, 1, 3)], "{what}");
    assert!(store.list(1).unwrap().is_empty(), "{what}: an empty level");
    let after = |t: u64| store.list_after(0, TxId(t)).unwrap().iter().map(|f| f.key).collect::<Vec<_>>();
    assert_eq!(after(0).len(), 4, "{what}: list_after(0)");
    assert_eq!(after(1), [key(0, 2, 2), key(0, 3, 3)], "{what}: list_after(1) starts past TXID 1");
    assert!(after(3).is_empty(), "{what}: nothing after the newest");
    assert_eq!(store::list_all(store).unwrap().len(), 5, "{what}");

    // Never overwrite.
    match put(key(0, 2, 2), b"other") {
        Err(Error::AlreadyExists(_)) => {}
        r => panic!("{what}: second put of a key gave {r:?}"),
    }
    assert_eq!(read_all_small_reads(store.open(key(0, 2, 2)).unwrap()), bytes(102, 2), "{what}: first put kept");

    // Multi-MB objects stream back intact: one below and one above the single-PUT size.
    for (k, n) in [(key(1, 1, 3), 3 << 20), (key(9, 4, 4), (17 << 20) + 12345)] {
        let data = bytes(n, n as u64);
        put(k, &data).unwrap_or_else(|e| panic!("{what}: put {n} bytes: {e}"));
        assert_eq!(store.list(k.level).unwrap().iter().find(|f| f.key == k).map(|f| f.size), Some(n as u64));
        let got = read_all_small_reads(store.open(k).unwrap());
        assert!(got == data, "{what}: {n}-byte object read back differently ({} bytes)", got.len());
        assert!(matches!(put(k, b"x"), Err(Error::AlreadyExists(_))), "{what}: big object overwritten");
    }

    match store.open(key(0, 7, 7)) {
        Err(Error::NotFound(_)) => {}
        Err(e) => panic!("{what}: open of a missing key gave {e:?}"),
        Ok(_) => panic!("{what}: open of a missing key succeeded"),
    }

    store.delete(key(0, 1, 2)).unwrap();
    store.delete(key(0, 1, 2)).unwrap(); // missing: not an error
    assert_eq!(
        store.list(0).unwrap().iter().map(|f| f.key).collect::<Vec<_>>(),
        [key(0, 1, 1), key(0, 2, 2), key(0, 3, 3)],
        "{what}: after delete"
    );

    assert_eq!(store.get_meta("walship/checksums/x").unwrap(), None, "{what}");
    store.put_meta("walship/checksums/x", b"one").unwrap();
    assert_eq!(store.get_meta("walship/checksums/x").unwrap().as_deref(), Some(&b"one"[..]), "{what}");
    store.put_meta("walship/checksums/x", b"two, longer").unwrap();
    assert_eq!(store.get_meta("walship/checksums/x").unwrap().as_deref(), Some(&b"two, longer"[..]), "{what}");
    // walship's own objects never show up as LTX files.
    assert_eq!(store::list_all(store).unwrap().len(), 6, "{what}");
    store.put_meta("walship/checksums/y", b"gone soon").unwrap();
    store.delete_meta("walship/checksums/y").unwrap();
    assert_eq!(store.get_meta("walship/checksums/y").unwrap(), None, "{what}: delete_meta");
    store.delete_meta("walship/checksums/y").unwrap(); // missing: not an error
    store.init().unwrap();
}

#[test]
fn conformance_folder() {
    let dir = tempdir();
    let store = store::open(s(&dir.path().join("replica"))).unwrap();
    conformance(store.as_ref(), dir.path());
}

#[test]
fn conformance_s3() {
    conformance_at(s3().map(|s3| s3.url(&unique("conformance"))));
}

#[test]
fn conformance_azure() {
    conformance_at(azure_url(&unique("conformance")));
}

#[test]
fn conformance_sftp() {
    conformance_at(sftp_url(&unique("conformance")));
}

/// Runs the conformance suite against the replica at `url` (skipped when its test
/// server is not configured).
fn conformance_at(url: Option<String>) {
    let Some(url) = url else { return };
    let dir = tempdir();
    let store = store::open(&url).unwrap();
    conformance(store.as_ref(), dir.path());
}

/// A missing bucket or container stops `init` with one line that names it.
#[test]
fn missing_bucket_or_container_is_a_clear_error() {
    let mut urls = Vec::new();
    if let Some(s3) = s3() {
        urls.push(S3 { bucket: "walship-no-such-bucket".into(), ..s3 }.url("x"));
    }
    if let Some(url) = azure_url("x") {
        urls.push(url.replacen("@walship-test/", "@walship-no-such-container/", 1).replacen(
            &format!("@{}/", std::env::var("WALSHIP_TEST_AZURE_CONTAINER").unwrap_or_default()),
            "@walship-no-such-container/",
            1,
        ));
    }
    for url in urls {
        let err = store::open(&url).unwrap().init().unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, Error::Invalid(_)), "{msg}");
        assert!(msg.contains("walship-no-such-"), "{msg}");
        assert!(!msg.contains('\n') && !msg.contains("secret") && !msg.contains(AZURITE_KEY), "{msg}");
    }
}

/// `walship replicate DB s3://…` under a live writer, SIGINT, then `walship restore` from
/// S3 equals the primary.
#[test]
fn replicate_to_s3_and_restore() {
    let Some(s3) = s3() else { return };
    let dir = tempdir();
    let db = dir.path().join("app.db");
    create_db(&db, SCHEMA);
    let url = s3.url(&unique("e2e"));
    let rep = Replicator::start(&db, &[&url]);
    let stop = dir.path().join("stop");
    let writer = Writer::start(UNTIL_STOPPED, &[s(&db), "7", s(&stop)]);
    std::thread::sleep(2 * SECS);
    std::fs::write(&stop, b"").unwrap();
    writer.finish(20 * SECS);
    exec(&db, "CREATE INDEX t_k ON t(k);");
    rep.stop();
    let files = walship_ltx(&url);
    assert!(files.len() >= 2, "replica lists {} files", files.len());
    assert_eq!(restore_hash(&url, &dir.path().join("restored.db"), &["--check", "full"], false), dump_hash(&db, false));
}

/// A follower polling an S3 replica converges on the primary while it is written.
#[test]
fn follow_an_s3_replica() {
    let Some(s3) = s3() else { return };
    let dir = tempdir();
    let db = dir.path().join("app.db");
    create_db(&db, SCHEMA);
    let url = s3.url(&unique("follow"));
    let rep = Replicator::start(&db, &[&url]);
    let stop = dir.path().join("stop");
    let writer = Writer::start(UNTIL_STOPPED, &[s(&db), "8", s(&stop)]);
    let replica = dir.path().join("replica.db");
    let mut cmd = Command::new(bin());
    cmd.arg("follow").arg(&url).arg(&replica).env("WALSHIP_LOG", "info");
    let mut follower = Proc::spawn("walship follow", cmd, Some(dir.path().join("follow.log")));
    std::thread::sleep(2 * SECS);
    std::fs::write(&stop, b"").unwrap();
    writer.finish(20 * SECS);
    rep.stop();
    let want = dump_hash(&db, false);
    let converged = wait_until(30 * SECS, || replica.exists() && db_check(&replica, false) == (want.clone(), "ok".into()));
    assert!(converged, "the follower did not converge; log:\n{}", follower.log_text());
    assert!(follower.running(), "the follower died: {}", follower.log_text());
}

/// Compaction and retention against S3: the replica gains compacted levels, loses old
/// level-0 files, and restores to exactly the primary.
#[test]
fn compaction_and_retention_on_s3() {
    let Some(s3) = s3() else { return };
    let dir = tempdir();
    let db = dir.path().join("app.db");
    create_db(&db, SCHEMA);
    let url = s3.url(&unique("compact"));
    let config = dir.path().join("walship.yml");
    std::fs::write(
        &config,
        format!(
            "levels:\n  - interval: 1s\n  - interval: 2s\n  - interval: 3s\nsnapshot:\n  interval: 3s\n\
             dbs:\n  - path: {}\n    replicas:\n      - url: '{url}'\n        retention: 4s\n        retention-check-interval: 1s\n",
            s(&db)
        ),
    )
    .unwrap();
    let rep = Replicator::start_config(&config);
    let stop = dir.path().join("stop");
    let writer = Writer::start(UNTIL_STOPPED, &[s(&db), "9", s(&stop)]);
    std::thread::sleep(9 * SECS);
    std::fs::write(&stop, b"").unwrap();
    writer.finish(20 * SECS);
    // Retention needs a full-state file older than its 4 s window: give it time.
    let deleted = wait_until(40 * SECS, || rep.0.log_text().contains("retention: deleted"));
    assert!(deleted, "retention never deleted a file:\n{}", rep.0.log_text());
    rep.stop();
    let files = walship_ltx(&url);
    let levels: std::collections::BTreeSet<u8> = files.iter().map(|f| f.level).collect();
    assert!(levels.contains(&1) && levels.contains(&2), "levels in the S3 replica: {levels:?}");
    assert_eq!(restore_hash(&url, &dir.path().join("restored.db"), &["--check", "full"], false), dump_hash(&db, false));
}

fn litestream_s3_config(db: &Path, s3: &S3, prefix: &str) -> String {
    format!(
        "dbs:\n  - path: {}\n    monitor-interval: 100ms\n    replica:\n      type: s3\n      bucket: {}\n      path: {prefix}\n      endpoint: {}\n      region: us-east-1\n      force-path-style: true\n      sync-interval: 100ms\n",
        db.display(),
        s3.bucket,
        s3.endpoint
    )
}

fn litestream(bin: &Path) -> Command {
    let mut cmd = Command::new(bin);
    cmd.env_remove("AWS_CA_BUNDLE")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_EC2_METADATA_DISABLED", "true");
    cmd
}

fn litestream_or_skip() -> Option<std::path::PathBuf> {
    let bin = litestream_bin();
    if bin.is_none() {
        println!("skipped: litestream not installed");
    }
    bin
}

/// Litestream restores an S3 replica walship wrote.
#[test]
fn litestream_restores_walship_s3_replica() {
    let Some(s3) = s3() else { return };
    let Some(ls) = litestream_or_skip() else { return };
    let dir = tempdir();
    let db = dir.path().join("app.db");
    create_db(&db, SCHEMA);
    let prefix = unique("to-litestream");
    let url = s3.url(&prefix);
    let rep = Replicator::start(&db, &[&url]);
    for i in 0..4 {
        exec(&db, &format!("INSERT INTO t(w, k, v) VALUES (1, {i}, randomblob({}));", 10 + i * 3000));
    }
    exec(&db, "CREATE INDEX t_k ON t(k); DELETE FROM t WHERE k = 2;");
    rep.stop();
    let primary = dump_hash(&db, false);

    let config = dir.path().join("litestream.yml");
    std::fs::write(&config, litestream_s3_config(&db, &s3, &prefix)).unwrap();
    let out = dir.path().join("theirs.db");
    let o = litestream(&ls).args(["restore", "-config", s(&config), "-o", s(&out), s(&db)]).output().expect("run litestream");
    assert!(o.status.success(), "litestream restore of walship's S3 replica failed:\n{}{}", stdout(&o), stderr(&o));
    let (hash, integrity) = db_check(&out, false);
    assert_eq!(integrity, "ok");
    assert_eq!(hash, primary, "litestream's restore of walship's S3 replica differs from the primary");
}

/// walship restores an S3 replica the real Litestream writes.
#[test]
fn walship_restores_litestream_s3_replica() {
    let Some(s3) = s3() else { return };
    let Some(ls) = litestream_or_skip() else { return };
    let dir = tempdir();
    let db = dir.path().join("app.db");
    create_db(&db, SCHEMA);
    let prefix = unique("from-litestream");
    let config = dir.path().join("litestream.yml");
    std::fs::write(&config, litestream_s3_config(&db, &s3, &prefix)).unwrap();
    let mut cmd = litestream(&ls);
    cmd.args(["replicate", "-config", s(&config)]);
    let mut lsp = Proc::spawn("litestream replicate", cmd, Some(dir.path().join("litestream.log")));
    exec(&db, "INSERT INTO t(w, k, v) VALUES (1, 1, randomblob(10)), (1, 2, randomblob(500)), (1, 3, randomblob(6000));");
    exec(&db, "UPDATE t SET v = randomblob(7000) WHERE k = 1; CREATE INDEX t_k ON t(k); DELETE FROM t WHERE k = 2;");
    let primary = dump_hash(&db, true);
    let url = s3.url(&prefix);
    let out = dir.path().join("restored.db");
    let ok = wait_until(20 * SECS, || {
        let o = restore(&url, &out, &["--force", "--check", "full"]);
        o.status.success() && dump_hash(&out, true) == primary
    });
    assert!(ok, "walship's restore from Litestream's S3 replica never matched the primary; litestream log:\n{}", lsp.log_text());
    let status = lsp.interrupt(20 * SECS);
    assert!(status.success() || status.code().is_none(), "litestream exited with {status}");
}

/// `walship replicate DB sftp://…` under a live writer, SIGINT, then `walship restore`
/// from the SFTP server equals the primary; the files are where Litestream puts them.
#[test]
fn replicate_to_sftp_and_restore() {
    let Some(url) = sftp_url(&unique("e2e")) else { return };
    let dir = tempdir();
    let db = dir.path().join("app.db");
    create_db(&db, SCHEMA);
    let rep = Replicator::start(&db, &[&url]);
    let stop = dir.path().join("stop");
    let writer = Writer::start(UNTIL_STOPPED, &[s(&db), "7", s(&stop)]);
    std::thread::sleep(2 * SECS);
    std::fs::write(&stop, b"").unwrap();
    writer.finish(20 * SECS);
    exec(&db, "CREATE INDEX t_k ON t(k);");
    rep.stop();
    let files = walship_ltx(&url);
    assert!(files.len() >= 2, "replica lists {} files", files.len());
    // The server's folder holds Litestream's layout (the test server is local).
    let root = url.split_once("127.0.0.1:").unwrap().1.split_once('/').unwrap().1.split_once('?').unwrap().0;
    let level0 = Path::new("/").join(root).join("ltx/0");
    let first = &files.iter().find(|f| f.level == 0).expect("a level-0 file");
    assert!(level0.join(format!("{}-{}.ltx", first.min, first.max)).is_file(), "no {}/{}-{}.ltx", level0.display(), first.min, first.max);
    assert_eq!(restore_hash(&url, &dir.path().join("restored.db"), &["--check", "full"], false), dump_hash(&db, false));
}

/// The SFTP server's key must be the one known_hosts holds for it: an unknown or
/// different key stops `walship restore` with one line naming the host and the key's
/// fingerprint.
#[test]
fn sftp_host_key_must_match_known_hosts() {
    let Some(url) = sftp_url(&unique("host-key")) else { return };
    let dir = tempdir();
    let known = url.split("known-hosts=").nth(1).expect("known-hosts in WALSHIP_TEST_SFTP_URL").split('&').next().unwrap();
    let line = std::fs::read_to_string(known).unwrap();
    let host = line.split_whitespace().next().unwrap().to_string(); // [127.0.0.1]:PORT
    let o = Command::new("ssh-keygen").args(["-l", "-f", known]).output().expect("ssh-keygen");
    let real = stdout(&o).split_whitespace().nth(1).expect("fingerprint").to_string();
    assert!(real.starts_with("SHA256:"), "{real}");

    // Another key recorded for the same host: a mismatch.
    let other = dir.path().join("other");
    let o = Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f", s(&other)]).output().expect("ssh-keygen");
    assert!(o.status.success(), "{}", stderr(&o));
    let other_pub = std::fs::read_to_string(other.with_extension("pub")).unwrap();
    let changed = dir.path().join("known_hosts_changed");
    std::fs::write(&changed, format!("# a comment\n{host} {}", other_pub)).unwrap();
    let out = restore(&url.replace(known, s(&changed)), &dir.path().join("a.db"), &[]);
    let msg = assert_error(&out);
    assert!(msg.contains("HOST KEY MISMATCH") && msg.contains(&host) && msg.contains(&real), "{msg}");
    assert!(msg.contains(s(&changed)) && msg.contains("line 2"), "{msg}");
    assert!(!dir.path().join("a.db").exists());

    // No line for the host: not known; the message says how to check and add it.
    let empty = dir.path().join("known_hosts_empty");
    std::fs::write(&empty, "").unwrap();
    let msg = assert_error(&restore(&url.replace(known, s(&empty)), &dir.path().join("b.db"), &[]));
    assert!(msg.contains("not known") && msg.contains(&host) && msg.contains(&real) && msg.contains("ssh-keyscan"), "{msg}");

    // The right key, given as Litestream's host-key instead of a known_hosts file.
    let pinned: Vec<&str> = line.split_whitespace().skip(1).take(2).collect();
    let pinned_url = url.replace(&format!("known-hosts={known}"), &format!("host-key={}", url_encode(&pinned.join(" "))));
    let store = store::open(&pinned_url).unwrap();
    store.init().unwrap();
    assert!(store.list(0).unwrap().is_empty());
}

/// One SSH connection serves every call, and a new one replaces it when it breaks:
/// reads retry on the new connection at once; an upload cut off fails (the uploader
/// retries it) and the next attempt goes through.
#[test]
fn sftp_reconnects_after_the_connection_drops() {
    use crate::fault_proxy::FaultProxy;
    let Some(url) = sftp_url(&unique("reconnect")) else { return };
    let dir = tempdir();
    // Through a proxy that can cut the connection; known_hosts names the proxy's port.
    let (base, query) = url.split_once('?').unwrap();
    let port: u16 = base.split("127.0.0.1:").nth(1).unwrap().split('/').next().unwrap().parse().unwrap();
    let proxy = FaultProxy::start(([127, 0, 0, 1], port).into());
    let known = query.split("known-hosts=").nth(1).expect("known-hosts in WALSHIP_TEST_SFTP_URL").split('&').next().unwrap();
    let via_proxy = dir.path().join("known_hosts");
    let line = std::fs::read_to_string(known).unwrap();
    std::fs::write(&via_proxy, line.replace(&format!("]:{port} "), &format!("]:{} ", proxy.addr().port()))).unwrap();
    let url = format!(
        "{}?{}",
        base.replace(&format!(":{port}/"), &format!(":{}/", proxy.addr().port())),
        query.replace(known, s(&via_proxy))
    );
    let store = store::open(&url).unwrap();
    store.init().unwrap();
    store.put_bytes(key(0, 1, 1), b"one").unwrap();
    for _ in 0..3 {
        assert_eq!(store.list(0).unwrap().len(), 1);
    }
    assert_eq!(proxy.connections(), 1, "one connection for every call");

    proxy.drop_connections();
    assert_eq!(store.list(0).unwrap().len(), 1, "a read after the drop");
    assert_eq!(proxy.connections(), 2);

    proxy.drop_connections();
    let _ = store.put_bytes(key(0, 2, 2), b"two"); // may fail: the connection was cut
    match store.put_bytes(key(0, 2, 2), b"two") {
        Ok(()) | Err(Error::AlreadyExists(_)) => {}
        Err(e) => panic!("upload after a reconnect: {e}"),
    }
    assert_eq!(read_all_small_reads(store.open(key(0, 2, 2)).unwrap()), b"two");
    assert_eq!(store.list(0).unwrap().len(), 2);
}

/// Litestream's `type: sftp` replica for the SFTP test server's folder `sub` (Litestream
/// skips the host-key check without `host-key`; walship never does).
fn litestream_sftp_config(db: &Path, url: &str) -> String {
    let (base, query) = url.split_once('?').unwrap();
    let (host, path) = base.trim_start_matches("sftp://").split_once('@').unwrap().1.split_once('/').unwrap();
    let key = query.split("key=").nth(1).unwrap().split('&').next().unwrap();
    let user = base.trim_start_matches("sftp://").split_once('@').unwrap().0;
    format!(
        "dbs:\n  - path: {}\n    monitor-interval: 100ms\n    replica:\n      type: sftp\n      host: {host}\n      user: {user}\n      key-path: {key}\n      path: /{path}\n      sync-interval: 100ms\n",
        db.display()
    )
}

/// Litestream restores an SFTP replica walship wrote.
#[test]
fn litestream_restores_walship_sftp_replica() {
    let Some(url) = sftp_url(&unique("to-litestream")) else { return };
    let Some(ls) = litestream_or_skip() else { return };
    let dir = tempdir();
    let db = dir.path().join("app.db");
    create_db(&db, SCHEMA);
    let rep = Replicator::start(&db, &[&url]);
    for i in 0..4 {
        exec(&db, &format!("INSERT INTO t(w, k, v) VALUES (1, {i}, randomblob({}));", 10 + i * 3000));
    }
    exec(&db, "CREATE INDEX t_k ON t(k); DELETE FROM t WHERE k = 2;");
    rep.stop();
    let primary = dump_hash(&db, false);

    let config = dir.path().join("litestream.yml");
    std::fs::write(&config, litestream_sftp_config(&db, &url)).unwrap();
    let out = dir.path().join("theirs.db");
    let o = Command::new(&ls).args(["restore", "-config", s(&config), "-o", s(&out), s(&db)]).output().expect("run litestream");
    assert!(o.status.success(), "litestream restore of walship's SFTP replica failed:\n{}{}", stdout(&o), stderr(&o));
    let (hash, integrity) = db_check(&out, false);
    assert_eq!(integrity, "ok");
    assert_eq!(hash, primary, "litestream's restore of walship's SFTP replica differs from the primary");
}

/// walship restores an SFTP replica the real Litestream writes.
#[test]
fn walship_restores_litestream_sftp_replica() {
    let Some(url) = sftp_url(&unique("from-litestream")) else { return };
    let Some(ls) = litestream_or_skip() else { return };
    let dir = tempdir();
    let db = dir.path().join("app.db");
    create_db(&db, SCHEMA);
    let config = dir.path().join("litestream.yml");
    std::fs::write(&config, litestream_sftp_config(&db, &url)).unwrap();
    let mut cmd = Command::new(&ls);
    cmd.args(["replicate", "-config", s(&config)]);
    let mut lsp = Proc::spawn("litestream replicate", cmd, Some(dir.path().join("litestream.log")));
    exec(&db, "INSERT INTO t(w, k, v) VALUES (1, 1, randomblob(10)), (1, 2, randomblob(500)), (1, 3, randomblob(6000));");
    exec(&db, "UPDATE t SET v = randomblob(7000) WHERE k = 1; CREATE INDEX t_k ON t(k); DELETE FROM t WHERE k = 2;");
    let primary = dump_hash(&db, true);
    let out = dir.path().join("restored.db");
    let ok = wait_until(20 * SECS, || {
        let o = restore(&url, &out, &["--force", "--check", "full"]);
        o.status.success() && dump_hash(&out, true) == primary
    });
    assert!(ok, "walship's restore from Litestream's SFTP replica never matched the primary; litestream log:\n{}", lsp.log_text());
    let status = lsp.interrupt(20 * SECS);
    assert!(status.success() || status.code().is_none(), "litestream exited with {status}");
}

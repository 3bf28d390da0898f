//! `walship follow`: keeps a replica database up to date from a primary's HTTP stream
//! (or a cascading follower's), or by polling a replica location in storage.
//!
//! Every file is verified and applied in one transaction ([`ReplicaDb::apply`]).
//! Anything unexpected (a gap, a bad file, a dropped connection, a write to the
//! replica behind walship's back) ends the current stream; the follower reconnects
//! from its position, with a snapshot when its position is unknown.

use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ltx::{Checksum, Header, TxId};
use serde_json::{Value, json};

use crate::capture::now_ms;
use crate::error::{Error, Result};
use crate::live::apply::{Applied, ReplicaDb};
use crate::live::feed::Feed;
use crate::live::frame::{Frame, FrameReader};
use crate::live::position::PositionFile;
use crate::local::LocalDir;
use crate::replica_form;
use crate::restore::{self, Target};
use crate::store::{FileInfo, FileKey, SNAPSHOT_LEVEL, Store};

/// Files a cascading follower keeps for its own followers.
const CASCADE_WINDOW: usize = 1000;

/// Where a follower gets its changes.
pub enum Source {
    /// A primary's (or follower's) server: `base` URL and database name.
    Http {
        /// e.g. `http://primary:4000`.
        base: String,
        /// The database's name on that server.
        name: String,
        /// Bearer token, if the server wants one.
        token: Option<String>,
    },
    /// A replica location, polled.
    Store(Box<dyn Store>),
}

impl Source {
    /// Parses `http(s)://host:port/<name>`; anything else is a replica location.
    pub fn parse(arg: &str, token: Option<String>) -> Result<Source> {
        if arg.starts_with("http://") || arg.starts_with("https://") {
            let url = url::Url::parse(arg).map_err(|e| Error::Invalid(format!("source {arg:?}: {e}")))?;
            let name = url.path_segments().and_then(|mut s| s.next_back()).filter(|n| !n.is_empty());
            let Some(name) = name else {
                return Err(Error::Invalid(format!(
                    "source {arg:?} names no database: use http://host:port/<name>, where <name> is the primary's database file name without its extension"
                )));
            };
            let name = name.to_string();
            let base = arg[..arg.len() - name.len()].trim_end_matches('/').to_string();
            return Ok(Source::Http { base, name, token });
        }
        Ok(Source::Store(crate::store::open(arg)?))
    }

    fn describe(&self) -> String {
        match self {
            Source::Http { base, name, .. } => format!("{base}/{name}"),
            Source::Store(s) => s.describe(),
        }
    }
}

/// The follower's view of its upstream, for `/status` and logs.
#[derive(Debug, Default)]
pub struct Upstream {
    /// Whether a stream is open.
    pub connected: bool,
    /// The upstream's newest TXID, from its last heartbeat (or listing).
    pub txid: TxId,
    /// When the follower first saw the upstream ahead of it (cleared when caught up).
    pub behind_since: Option<Instant>,
    /// Writes to the replica behind walship's back, found and healed.
    pub foreign_writes: u64,
    /// Snapshots applied.
    pub snapshots: u64,
    /// Files applied.
    pub files: u64,
    /// The last error, if any.
    pub last_error: Option<String>,
}

/// A follower.
pub struct Follower {
    source: Source,
    db: ReplicaDb,
    local: LocalDir,
    feed: Arc<Feed>,
    upstream: Arc<Mutex<Upstream>>,
    /// Keep applied files for cascaded followers.
    cascade: bool,
}

impl Follower {
    /// Opens the replica at `replica` (created when missing) and its state folder.
    pub fn open(source: Source, replica: &Path, name: String, cascade: bool) -> Result<Follower> {
        if let Some(dir) = replica.parent().filter(|d| !d.as_os_str().is_empty())
            && !dir.is_dir()
        {
            return Err(Error::Invalid(format!("folder {} does not exist", dir.display())));
        }
        let local = LocalDir::open(replica)?;
        let db = ReplicaDb::open(replica, PositionFile::new(local.root().join("position")))?;
        let feed = Arc::new(Feed::new(name, local.root().to_path_buf()));
        feed.publish(db.pos(), now_ms());
        Ok(Follower { source, db, local, feed, upstream: Arc::default(), cascade })
    }

    /// The feed the follower publishes its position to (and serves from, cascading).
    pub fn feed(&self) -> Arc<Feed> {
        self.feed.clone()
    }

    /// `/status` fields describing the upstream.
    pub fn status(&self) -> Arc<dyn Fn(&str) -> Value + Send + Sync> {
        let upstream = self.upstream.clone();
        let source = self.source.describe();
        let feed = self.feed.clone();
        Arc::new(move |_| {
            let u = upstream.lock().unwrap_or_else(|p| p.into_inner());
            let (pos, _) = feed.pos();
            json!({
                "source": source,
                "connected": u.connected,
                "txid": u.txid.0,
                "lag_txids": u.txid.0.saturating_sub(pos.txid.0),
                "lag_ms": u.behind_since.map_or(0, |t| t.elapsed().as_millis() as u64),
                "files_applied": u.files,
                "snapshots_applied": u.snapshots,
                "foreign_writes_healed": u.foreign_writes,
                "last_error": u.last_error,
            })
        })
    }

    /// Follows until `stop` is set.
    pub fn run(mut self, stop: &AtomicBool) -> Result<()> {
        let done = Arc::new(AtomicBool::new(false));
        let checkpointer = {
            let (path, done) = (self.db.path().to_path_buf(), done.clone());
            std::thread::spawn(move || checkpoint_loop(&path, &done))
        };
        let result = self.follow(stop);
        done.store(true, Ordering::Relaxed);
        let _ = checkpointer.join();
        result
    }

    fn follow(&mut self, stop: &AtomicBool) -> Result<()> {
        tracing::info!(source = %self.source.describe(), replica = %self.db.path().display(), txid = %self.db.pos().txid, "following");
        let mut backoff = Duration::ZERO;
        let mut idle = Duration::ZERO;
        while !stop.load(Ordering::Relaxed) {
            let outcome = match &self.source {
                Source::Http { base, name, token } => {
                    let url = format!("{base}/stream/{name}");
                    let token = token.clone();
                    self.stream_once(&url, token.as_deref(), stop)
                }
                Source::Store(_) => self.poll_once(),
            };
            self.set(|u| u.connected = false);
            match outcome {
                Ok(progress) => {
                    backoff = Duration::ZERO;
                    if matches!(self.source, Source::Store(_)) {
                        // Poll fast while changes come, slower while idle.
                        idle = if progress { Duration::ZERO } else { (idle * 2).clamp(Duration::from_millis(50), Duration::from_secs(2)) };
                        sleep_unless(stop, idle);
                    }
                }
                Err(e) => {
                    backoff = (backoff * 2).clamp(Duration::from_millis(50), Duration::from_secs(5));
                    tracing::warn!(source = %self.source.describe(), error = %e, retry_in = ?backoff, "following interrupted");
                    self.set(|u| u.last_error = Some(e.to_string()));
                    sleep_unless(stop, backoff);
                }
            }
        }
        self.feed.stop();
        Ok(())
    }

    fn set(&self, f: impl FnOnce(&mut Upstream)) {
        f(&mut self.upstream.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// One connection to an HTTP source, until it ends or something is wrong.
    /// `Ok` when the upstream closed the stream cleanly.
    fn stream_once(&mut self, url: &str, token: Option<&str>, stop: &AtomicBool) -> Result<bool> {
        // reqwest is built without a bundled TLS provider: install ring's (once).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::blocking::Client::builder()
            // Per read: heartbeats come every second, so silence means a dead link.
            .timeout(Duration::from_secs(5))
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .build()
            .map_err(|e| Error::Invalid(format!("HTTP client: {e}")))?;
        let pos = self.db.pos();
        let url = if pos.txid == TxId(0) { url.to_string() } else { format!("{url}?txid={}&checksum={}", pos.txid, pos.checksum) };
        let url = url.as_str();
        let mut req = client.get(url);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().map_err(|e| Error::io(format!("connect to {url}"), std::io::Error::other(e)))?;
        if !resp.status().is_success() {
            let code = resp.status();
            let text = resp.text().unwrap_or_default();
            return Err(Error::Invalid(format!("{url} answered {code}: {}", text.trim())));
        }
        self.set(|u| {
            u.connected = true;
            u.last_error = None;
        });
        let mut frames = FrameReader::new(resp);
        let mut progress = false;
        while !stop.load(Ordering::Relaxed) {
            let frame = frames.next_frame().map_err(|e| Error::io(format!("read the stream from {url}"), e))?;
            match frame {
                None => return Ok(progress),
                Some(Frame::Heartbeat(h)) => {
                    self.heal_foreign_writes()?;
                    let at = self.db.pos().txid;
                    self.set(|u| {
                        u.txid = h.txid;
                        if h.txid <= at {
                            u.behind_since = None;
                        } else if u.behind_since.is_none() {
                            u.behind_since = Some(Instant::now());
                        }
                    });
                    if self.db.pos().txid == TxId(0) {
                        // A foreign write made the position unknown: ask again for a snapshot.
                        return Ok(progress);
                    }
                }
                Some(Frame::Ltx(body)) => {
                    self.heal_foreign_writes()?;
                    match self.apply(body, url, None)? {
                        true => progress = true,
                        false => return Ok(progress),
                    }
                }
            }
            self.serve_snapshot_request()?;
        }
        Ok(progress)
    }

    /// One poll of a storage source: applies every new file. True when any was.
    fn poll_once(&mut self) -> Result<bool> {
        self.heal_foreign_writes()?;
        self.serve_snapshot_request()?;
        let Source::Store(store) = &self.source else { return Ok(false) };
        let pos = self.db.pos();
        let mut chain: Vec<FileInfo> = Vec::new();
        if pos.txid != TxId(0) {
            let mut files = store.list_after(0, pos.txid)?;
            files.sort_by_key(|f| f.key);
            let mut at = pos.txid;
            for f in files {
                if f.key.min.0 == at.0 + 1 {
                    at = f.key.max;
                    chain.push(f);
                }
            }
            if let Some(newest) = chain.last() {
                self.set(|u| u.txid = u.txid.max(newest.key.max));
            }
        }
        if chain.is_empty() {
            // Unknown position, or a gap (files compacted or removed): start again
            // from the newest snapshot, if it is ahead of us.
            let newest = list_newest(store.as_ref(), pos.txid)?;
            if newest.is_none_or(|t| t <= pos.txid) {
                return Ok(false);
            }
            chain = match restore::plan(store.as_ref(), Target::Latest) {
                Ok(c) => c,
                Err(Error::NotFound(_)) => return Ok(false),
                Err(e) => return Err(e),
            };
            if pos.txid != TxId(0) && chain.first().is_some_and(|f| f.key.max <= pos.txid && f.key.min == TxId(1)) {
                // The newest snapshot is not ahead of us: wait for one that is.
                chain.retain(|f| f.key.min > pos.txid);
                if chain.first().is_none_or(|f| f.key.min.0 != pos.txid.0 + 1) {
                    return Ok(false);
                }
            }
        }
        let mut progress = false;
        for f in chain {
            let Source::Store(store) = &self.source else { unreachable!() };
            let sums = replica_form::get_checksums(store.as_ref(), f.key)?;
            let reader = store.open(f.key)?;
            let name = format!("{} in {}", f.key, store.describe());
            if !self.apply(reader, &name, sums)? {
                break;
            }
            progress = true;
        }
        Ok(progress)
    }

    /// Applies one file (keeping a copy for cascaded followers). False on a gap.
    fn apply(&mut self, body: impl Read, from: &str, sums: Option<replica_form::Checksums>) -> Result<bool> {
        let tmp = self.local.root().join(".incoming.ltx");
        let applied = if self.cascade {
            let file = std::fs::File::create(&tmp).map_err(|e| Error::io(format!("create {}", tmp.display()), e))?;
            self.db.apply(Tee { r: body, w: std::io::BufWriter::new(file) }, from, sums)
        } else {
            self.db.apply(body, from, sums)
        };
        let header = match applied {
            Ok(Applied::Ok(h)) => h,
            Ok(Applied::Gap) => {
                tracing::info!(from, txid = %self.db.pos().txid, "the next file does not follow the replica's position; reconnecting");
                return Ok(false);
            }
            Err(e) => {
                return Err(Error::Corrupt(format!("rejected a file from {from} (nothing was applied): {e}")));
            }
        };
        let snapshot = header.is_snapshot();
        tracing::debug!(txid = %header.max_txid, "applied");
        self.set(|u| {
            u.files += 1;
            u.snapshots += u64::from(snapshot);
            if u.txid <= header.max_txid {
                u.behind_since = None;
            }
        });
        if snapshot {
            tracing::info!(txid = %header.max_txid, "applied a snapshot");
        }
        if self.cascade {
            self.keep(&tmp, &header)?;
        }
        self.feed.publish(self.db.pos(), now_ms());
        Ok(true)
    }

    /// Moves an applied file into the state folder, where the server finds it.
    fn keep(&self, tmp: &Path, header: &Header) -> Result<()> {
        let level = if header.is_snapshot() { SNAPSHOT_LEVEL } else { 0 };
        let key = FileKey { level, min: header.min_txid, max: header.max_txid };
        let path = self.local.file_path(key);
        std::fs::rename(tmp, &path).map_err(|e| Error::io(format!("rename {} to {}", tmp.display(), path.display()), e))?;
        let files = self.local.files()?;
        for key in files.iter().take(files.len().saturating_sub(CASCADE_WINDOW)) {
            self.local.remove(*key)?;
        }
        let snaps = self.local.snapshots()?;
        for key in snaps.iter().take(snaps.len().saturating_sub(1)) {
            self.local.remove(*key)?;
        }
        Ok(())
    }

    /// Checks for writes behind walship's back; after one, the position is unknown
    /// and the next file must be a snapshot.
    fn heal_foreign_writes(&mut self) -> Result<()> {
        if self.db.check_foreign_writes()? {
            tracing::warn!(
                replica = %self.db.path().display(),
                "something other than walship wrote to the replica; re-syncing it from the source (open replicas read-only: ?mode=ro or PRAGMA query_only)"
            );
            self.set(|u| u.foreign_writes += 1);
        }
        Ok(())
    }

    /// A cascaded follower asked for a snapshot: write one from the replica.
    fn serve_snapshot_request(&mut self) -> Result<()> {
        if !self.cascade || !self.feed.take_snapshot_request() {
            return Ok(());
        }
        let pos = self.db.pos();
        if pos.txid == TxId(0) {
            return Ok(());
        }
        let key = FileKey { level: SNAPSHOT_LEVEL, min: TxId(1), max: pos.txid };
        let header = Header::new(self.db.page_size(), self.db.page_count(), TxId(1), pos.txid, now_ms(), Checksum::ZERO);
        let db = &self.db;
        self.local.write_ltx(key, &header, |enc| {
            db.for_each_page(|pgno, data| enc.encode_page(pgno, data).map_err(|e| Error::ltx(key.to_string(), e)))?;
            Ok(pos.checksum)
        })?;
        tracing::info!(file = %key, "wrote a snapshot for a cascaded follower");
        self.feed.publish(pos, now_ms());
        Ok(())
    }
}

/// Keeps the replica's WAL short from a connection of its own, so that applying a
/// file never waits for a checkpoint: PASSIVE once the WAL passes 4 MiB (it never
/// blocks the follower or readers).
fn checkpoint_loop(replica: &Path, done: &AtomicBool) {
    let wal = crate::capture::sibling(replica, "-wal");
    let mut conn: Option<rusqlite::Connection> = None;
    while !done.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(200));
        if std::fs::metadata(&wal).map_or(0, |m| m.len()) < 4 << 20 {
            continue;
        }
        if conn.is_none() {
            conn = crate::sqlite::open(replica, Duration::from_millis(100)).ok();
        }
        if let Some(c) = &conn
            && let Err(e) = crate::sqlite::checkpoint(c, "PASSIVE")
        {
            tracing::debug!(error = %e, "replica checkpoint");
        }
    }
}

/// The newest TXID in a store's snapshots (all start at TXID 1) and its level-0 files
/// past `after`.
fn list_newest(store: &dyn Store, after: TxId) -> Result<Option<TxId>> {
    let snapshots = store.list(SNAPSHOT_LEVEL)?.iter().map(|f| f.key.max).max();
    Ok(snapshots.max(store.list_after(0, after)?.iter().map(|f| f.key.max).max()))
}

fn sleep_unless(stop: &AtomicBool, d: Duration) {
    let until = Instant::now() + d;
    while !stop.load(Ordering::Relaxed) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(10).min(until.saturating_duration_since(Instant::now())));
    }
}

/// Copies what is read into a file.
struct Tee<R, W> {
    r: R,
    w: W,
}

impl<R: Read, W: std::io::Write> Read for Tee<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.r.read(buf)?;
        self.w.write_all(&buf[..n])?;
        if n == 0 {
            self.w.flush()?;
        }
        Ok(n)
    }
}

/// The replica's name in URLs when none is given: its file name without extension.
pub fn default_name(replica: &Path) -> String {
    replica.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "db".into())
}

//! `walship replicate`: one capture thread per database, woken by inotify (with a
//! fallback tick of 100 ms, 1 s when idle; see [`crate::wake`]), and one uploader
//! thread per replica, so a slow or failing replica never holds up capture or the
//! other replicas. Local files are removed once every replica has them; a replica that
//! lacks history is seeded with a snapshot. Each replica also has a compactor thread
//! ([`compact`]): levels, snapshots, retention.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use ltx::{Checksum, TxId};

use crate::capture::{Capture, CaptureOptions};
use crate::compact;
use crate::config::Compaction;
use crate::error::{Error, Result};
use crate::live::feed::Feed;
use crate::local::{self, LocalDir, Pos};
use crate::replica_form;
use crate::store::{FileKey, PUT_BYTES_MAX, SNAPSHOT_LEVEL, Store, list_all};
use crate::wake::{Stop, Wake};

/// The fallback wake-up interval when no file event arrives (in case inotify misses
/// writes, e.g. on a network file system), while the database is busy.
const TICK: Duration = Duration::from_millis(100);

/// The fallback interval once nothing was captured for [`IDLE_AFTER`]: an idle
/// database costs (almost) no CPU.
const IDLE_TICK: Duration = Duration::from_secs(1);

/// How long without a capture before the fallback slows to [`IDLE_TICK`]; longer than
/// the pause in commits a TRUNCATE checkpoint waits for.
const IDLE_AFTER: Duration = Duration::from_secs(2);

/// Captured files kept locally for live followers after every replica has them: a
/// follower further behind gets a snapshot.
const FOLLOWER_WINDOW: usize = 1000;

/// One database and where it goes.
#[derive(Debug)]
pub struct DbSpec {
    /// The database file.
    pub path: PathBuf,
    /// Its replicas.
    pub replicas: Vec<Box<dyn Store>>,
    /// Capture tuning.
    pub opts: CaptureOptions,
    /// How long a stop waits for the replicas to take the last files (default 30 s).
    pub drain: Duration,
    /// Live followers served from this database, if any.
    pub feed: Option<Arc<Feed>>,
    /// Compaction and retention of each replica, in order (a missing entry means the
    /// defaults).
    pub compaction: Vec<Compaction>,
    /// The most captured bytes kept locally for a replica that is down (default 1 GiB);
    /// past it the oldest are dropped and that replica is re-seeded with a snapshot
    /// when it returns.
    pub local_cap_bytes: u64,
}

impl DbSpec {
    /// A database with default tuning.
    pub fn new(path: PathBuf, replicas: Vec<Box<dyn Store>>) -> Self {
        DbSpec {
            path,
            replicas,
            opts: CaptureOptions::default(),
            drain: Duration::from_secs(30),
            feed: None,
            compaction: Vec::new(),
            local_cap_bytes: 1 << 30,
        }
    }
}

/// Replicates `db` until `stop` is set, then captures a last time, uploads what is
/// left and returns.
pub fn run(db: DbSpec, stop: Arc<Stop>) -> Result<()> {
    let path = db.path.canonicalize().map_err(|e| Error::BadDatabase(format!("database {}: {e}", db.path.display())))?;
    if crate::sqlite::ensure_wal(&path)? {
        tracing::warn!(db = %path.display(), "switched the database to WAL mode (walship needs it)");
    }
    for store in &db.replicas {
        store.init().map_err(|e| Error::Invalid(format!("replica {}: {e}", store.describe())))?;
    }
    let local = LocalDir::open(&path)?;
    let resume = resume_pos(&local, &db.replicas, &stop)?;
    let mut capture = Capture::open(&path, local, resume, db.opts)?;
    tracing::info!(db = %path.display(), txid = %capture.pos().txid, replicas = db.replicas.len(), "replicating");

    let shared = Arc::new(Shared::new(db.replicas.len()));
    let root = LocalDir::path_for(&path);
    let stores: Vec<Arc<dyn Store>> = db.replicas.into_iter().map(Arc::from).collect();
    let uploaders: Vec<_> = stores
        .iter()
        .enumerate()
        .map(|(i, store)| {
            let store = store.clone();
            let shared = shared.clone();
            let root = root.clone();
            std::thread::spawn(move || upload_loop(i, store.as_ref(), &root, &shared))
        })
        .collect();
    let halt = Arc::new(AtomicBool::new(false));
    let compactors: Vec<_> = stores
        .iter()
        .enumerate()
        .map(|(i, store)| {
            let settings = db.compaction.get(i).cloned().unwrap_or_default();
            let shared = shared.clone();
            let uploaded: compact::Uploaded = Box::new(move || shared.read(|s| s.acked[i]));
            compact::spawn(store.clone(), settings, root.clone(), format!("compact-{i}"), uploaded, halt.clone())
        })
        .collect();

    let wake = Wake::new(&path)?;
    stop.wake_on_set(wake.waker());
    if let Some(feed) = &db.feed {
        feed.set_waker(wake.waker());
    }
    let result = capture_loop(&mut capture, &shared, db.feed.as_deref(), &wake, &stop, db.local_cap_bytes);
    halt.store(true, Ordering::Relaxed);
    compactors.iter().for_each(|c| c.thread().unpark());
    let closed = capture.close();
    if let Some(feed) = &db.feed {
        feed.stop();
    }
    shared.update(|s| s.stopping = true);
    // Wait while the replicas make progress; give up after `drain` without any.
    let mut progress = (Instant::now(), shared.read(|s| s.acked.clone()));
    while !uploaders.iter().all(|h| h.is_finished()) {
        std::thread::sleep(Duration::from_millis(20));
        let acked = shared.read(|s| s.acked.clone());
        if acked != progress.1 {
            progress = (Instant::now(), acked);
        } else if progress.0.elapsed() > db.drain {
            shared.update(|s| s.abandon = true);
            return Err(Error::Invalid(format!(
                "{}: a replica took no file for {}s while stopping; the rest stay in the local state folder and will be uploaded at the next start",
                path.display(),
                db.drain.as_secs()
            )));
        }
    }
    // A compactor stops between two files; one stuck in a storage call is left behind.
    let deadline = Instant::now() + db.drain;
    while compactors.iter().any(|h| !h.is_finished()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    result?;
    closed?;
    Ok(())
}

fn capture_loop(capture: &mut Capture, shared: &Shared, feed: Option<&Feed>, wake: &Wake, stop: &Stop, cap: u64) -> Result<()> {
    let mut pruned_at = None;
    let mut cap_checked = Instant::now();
    if let Some(feed) = feed {
        feed.publish(capture.pos(), crate::capture::now_ms());
    }
    let min_interval = capture.options().min_interval;
    let mut last_capture: Option<Instant> = None;
    while !stop.is_set() {
        let idle = last_capture.is_none_or(|t| t.elapsed() > IDLE_AFTER);
        wake.wait(if idle { IDLE_TICK } else { TICK });
        // Under sustained writes, let commits gather (see `CaptureOptions::min_interval`).
        if let Some(wait) = last_capture.and_then(|t| min_interval.checked_sub(t.elapsed())) {
            std::thread::sleep(wait);
        }
        // Sync requests made before this pass are answered by it.
        let asked = feed.map(Feed::sync_asked);
        let started = Instant::now();
        match capture.tick() {
            Ok(written) if !written.is_empty() => {
                last_capture = Some(started);
                tracing::debug!(txid = %capture.pos().txid, "captured");
                if let Some(feed) = feed {
                    feed.publish(capture.pos(), crate::capture::now_ms());
                }
                shared.notify();
            }
            Ok(_) => {}
            Err(Error::Interrupted) => continue,
            Err(e) => return Err(e),
        }
        if let (Some(feed), Some(asked)) = (feed, asked) {
            feed.sync_done(asked);
        }
        let for_replicas = shared.read(|s| s.need_snapshot.iter().any(|n| *n));
        // Followers need one newer than the newest in the folder.
        let for_followers = feed.is_some_and(Feed::take_snapshot_request)
            && capture.local().snapshots()?.last().is_none_or(|s| s.max < capture.pos().txid);
        if for_replicas || for_followers {
            match capture.snapshot() {
                Ok(key) => {
                    tracing::info!(file = %key, for_replicas, for_followers, "wrote a snapshot");
                    shared.update(|s| s.need_snapshot.iter_mut().for_each(|n| *n = false));
                    if let Some(feed) = feed {
                        feed.publish(capture.pos(), crate::capture::now_ms());
                    }
                }
                Err(Error::Interrupted) => {
                    if for_followers && let Some(feed) = feed {
                        feed.want_snapshot();
                    }
                }
                Err(e) => return Err(e),
            }
        }
        let acked = shared.read(|s| s.acked.iter().copied().min()).unwrap_or(capture.pos().txid);
        if Some(acked) != pruned_at {
            prune(capture.local(), acked, if feed.is_some() { FOLLOWER_WINDOW } else { 1 })?;
            pruned_at = Some(acked);
        }
        if cap_checked.elapsed() >= CAP_CHECK_EVERY {
            cap_checked = Instant::now();
            enforce_cap(capture.local(), shared, cap)?;
            if let Some(feed) = feed {
                feed.set_replicas(shared.read(|s| s.acked.iter().zip(&s.behind).map(|(a, b)| (*a, *b)).collect()));
            }
        }
    }
    Ok(())
}

/// How often the local folder's size is checked against the cap.
const CAP_CHECK_EVERY: Duration = Duration::from_secs(2);

/// Drops the oldest captured files once the local folder holds more than `cap` bytes
/// of them (a replica has been down for long): the replicas that still needed them are
/// re-seeded with a snapshot when they return.
fn enforce_cap(local: &LocalDir, shared: &Shared, cap: u64) -> Result<()> {
    let files = local.files()?;
    let sizes: Vec<u64> = files.iter().map(|k| std::fs::metadata(local.file_path(*k)).map_or(0, |m| m.len())).collect();
    let mut total: u64 = sizes.iter().sum();
    if total <= cap {
        return Ok(());
    }
    let mut dropped = TxId(0);
    // Down to three quarters of the cap, never the newest file (it holds the position).
    for (key, size) in files.iter().zip(&sizes).take(files.len().saturating_sub(1)) {
        if total <= cap / 4 * 3 {
            break;
        }
        local.remove(*key)?;
        total -= size;
        dropped = key.max;
    }
    let behind: Vec<usize> = shared.read(|s| s.acked.iter().enumerate().filter(|(_, a)| **a < dropped).map(|(i, _)| i).collect());
    shared.update(|s| behind.iter().for_each(|i| s.behind[*i] = true));
    tracing::warn!(
        cap_bytes = cap,
        dropped_through = %dropped,
        replicas_behind = ?behind,
        "the local state folder reached its size cap while a replica was behind: dropped the oldest files; that replica will be re-seeded with a snapshot when it returns"
    );
    Ok(())
}

/// Removes local files that every replica has (up to `acked`), always keeping the
/// newest `keep` (at least the newest one, which records the current position) and,
/// while followers are served (`keep` > 1), the newest snapshot.
fn prune(local: &LocalDir, acked: TxId, keep: usize) -> Result<()> {
    let files = local.files()?;
    for key in files.iter().take(files.len().saturating_sub(keep.max(1))).filter(|k| k.max <= acked) {
        local.remove(*key)?;
    }
    let snapshots = local.snapshots()?;
    let keep_snapshots = usize::from(keep > 1);
    for key in snapshots.iter().take(snapshots.len().saturating_sub(keep_snapshots)).filter(|k| k.max <= acked) {
        local.remove(*key)?;
    }
    Ok(())
}

/// Where to continue: the newest local file, or a replica's newest file when the
/// local state is missing or behind (a new machine, a deleted state folder).
///
/// Without local state, TXIDs must continue after every replica's history (new files
/// must never collide with old ones), so each replica is listed, retrying until it
/// answers or `stop` is set. With local state, an unreachable replica is skipped: its
/// uploader finds out later where it stands.
fn resume_pos(local: &LocalDir, replicas: &[Box<dyn Store>], stop: &Stop) -> Result<Pos> {
    let known = local.last_pos()?;
    let mut pos = known.unwrap_or_default();
    for store in replicas {
        let mut backoff = Backoff::default();
        let newest = loop {
            match list_all(store.as_ref()) {
                Ok(files) => break files.into_iter().max_by_key(|f| (f.key.max, f.key.level)),
                Err(e) if known.is_some() => {
                    tracing::warn!(replica = %store.describe(), error = %e, "cannot list the replica at start");
                    break None;
                }
                Err(_) if stop.is_set() => {
                    return Err(Error::Invalid(format!("replica {}: stopped before it could be listed", store.describe())));
                }
                Err(e) => backoff.fail(store.as_ref(), "list the replica (needed to number new files)", &e),
            }
        };
        if let Some(f) = newest.filter(|f| f.key.max > pos.txid) {
            pos = Pos { txid: f.key.max, checksum: replica_checksum(store.as_ref(), f.key)? };
        }
    }
    Ok(pos)
}

/// The database checksum after a replica file, from walship's record of it (zero when
/// unknown, e.g. for a replica written by Litestream).
fn replica_checksum(store: &dyn Store, key: FileKey) -> Result<Checksum> {
    Ok(replica_form::get_checksums(store, key)?.map_or(Checksum::ZERO, |c| c.post))
}

/// Uploads local files to one replica, in TXID order, retrying with backoff, until
/// the database stops and nothing is left (or the stop gives up on this replica).
fn upload_loop(i: usize, store: &dyn Store, root: &Path, shared: &Shared) {
    let mut backoff = Backoff::default();
    let mut remote: Option<TxId> = None;
    while !shared.read(|s| s.abandon) {
        let Some(have) = remote else {
            match list_all(store) {
                Ok(files) => {
                    let have = files.iter().map(|f| f.key.max).max().unwrap_or(TxId(0));
                    remote = Some(have);
                    shared.update(|s| s.acked[i] = have);
                    backoff.reset();
                }
                Err(e) => backoff.fail(store, "list the replica", &e),
            }
            continue;
        };
        let seen = shared.read(|s| s.seq);
        let Some((key, path)) = pending(root, have) else {
            if shared.read(|s| s.stopping) {
                return;
            }
            shared.wait(seen, TICK * 10);
            continue;
        };
        let result = if key.min.0 == have.0 + 1 || (have.0 == 0 && key.min.0 == 1) {
            upload(store, root, i, key, &path).map(|()| key.max)
        } else if let Some((snap, snap_path)) = snapshot_covering(root, key.min) {
            upload(store, root, i, snap, &snap_path).map(|()| snap.max)
        } else {
            tracing::info!(replica = %store.describe(), have = %have, next = %key.min, "the replica lacks history; asking for a snapshot");
            shared.update(|s| s.need_snapshot[i] = true);
            shared.wait(seen + 1, TICK * 10);
            continue;
        };
        let done = match result {
            Ok(max) => max,
            Err(Error::AlreadyExists(_)) => match same_as_remote(store, root, i, key, &path) {
                // An earlier attempt stored it and its reply was lost.
                Ok(true) => key.max,
                Ok(false) => {
                    tracing::error!(replica = %store.describe(), file = %key, "the replica already holds a different file under this name (another primary, or a lost local state?); not uploading to it any more");
                    return;
                }
                Err(e) => {
                    backoff.fail(store, &format!("compare {key} with the replica's copy"), &e);
                    continue;
                }
            },
            Err(e) => {
                backoff.fail(store, &format!("upload {key}"), &e);
                continue;
            }
        };
        remote = Some(done);
        backoff.reset();
        // A snapshot went up in place of missing history: the replica is whole again.
        let reseeded = key.min.0 > have.0 + 1;
        shared.update(|s| {
            s.acked[i] = done;
            if reseeded {
                s.behind[i] = false;
            }
        });
    }
}

/// Exponential backoff with jitter between failed storage calls: 20 ms doubling to 5 s.
#[derive(Default)]
struct Backoff {
    failures: u32,
}

impl Backoff {
    fn fail(&mut self, store: &dyn Store, what: &str, e: &Error) {
        self.failures += 1;
        let base = Duration::from_millis(10) * 2u32.pow(self.failures.min(9));
        let delay = base.min(Duration::from_secs(5));
        // Jitter from the clock's nanoseconds: replicas failing together retry apart.
        let jitter = Duration::from_nanos(u64::from(std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos())) % (delay.as_nanos() as u64 / 2 + 1));
        tracing::warn!(replica = %store.describe(), error = %e, retry_in = ?(delay / 2 + jitter), "cannot {what}; retrying");
        std::thread::sleep(delay / 2 + jitter);
    }

    fn reset(&mut self) {
        self.failures = 0;
    }
}

/// Uploads one local file in Litestream's form, its checksum record first (a record
/// without its file is ignored by restore; a file without its record is still usable).
fn upload(store: &dyn Store, root: &Path, replica: usize, key: FileKey, local: &Path) -> Result<()> {
    let size = std::fs::metadata(local).map_err(|e| Error::io(format!("stat {}", local.display()), e))?.len();
    if size as usize <= PUT_BYTES_MAX / 2 {
        // Small files (nearly all of them) are converted in memory: no temporary file.
        let mut bytes = Vec::with_capacity(size as usize + 1024);
        let sums = replica_form::write_litestream_form(local, &mut bytes)?;
        if let Some(sums) = sums {
            replica_form::put_checksums(store, key, sums)?;
        }
        return store.put_bytes(key, &bytes);
    }
    let tmp = root.join(format!(".upload-{replica}-{}", key.file_name()));
    let result = replica_form::to_litestream_form(local, &tmp)
        .and_then(|sums| sums.map_or(Ok(()), |sums| replica_form::put_checksums(store, key, sums)))
        .and_then(|()| store.put(key, &tmp));
    let _ = std::fs::remove_file(&tmp);
    result
}

/// Whether the replica's file at `key` is exactly what uploading `local` would store.
fn same_as_remote(store: &dyn Store, root: &Path, replica: usize, key: FileKey, local: &Path) -> Result<bool> {
    let tmp = root.join(format!(".compare-{replica}-{}", key.file_name()));
    let result = (|| {
        replica_form::to_litestream_form(local, &tmp)?;
        let mine = std::fs::File::open(&tmp).map_err(|e| Error::io(format!("open {}", tmp.display()), e))?;
        same_bytes(std::io::BufReader::new(mine), store.open(key)?)
            .map_err(|e| Error::io(format!("compare {key}"), e))
    })();
    let _ = std::fs::remove_file(&tmp);
    result
}

fn same_bytes(mut a: impl std::io::Read, mut b: impl std::io::Read) -> std::io::Result<bool> {
    let (mut x, mut y) = (vec![0u8; 64 << 10], vec![0u8; 64 << 10]);
    loop {
        let n = a.read(&mut x)?;
        if n == 0 {
            return Ok(b.read(&mut y[..1])? == 0);
        }
        let mut got = 0;
        while got < n {
            let m = b.read(&mut y[got..n])?;
            if m == 0 {
                return Ok(false);
            }
            got += m;
        }
        if x[..n] != y[..n] {
            return Ok(false);
        }
    }
}

/// The oldest local file past `remote`.
fn pending(root: &Path, remote: TxId) -> Option<(FileKey, PathBuf)> {
    let key = local::list(root, 0).ok()?.into_iter().find(|k| k.max > remote)?;
    Some((key, local::file_path(root, key)))
}

/// A local snapshot that lets a replica continue with the file starting at `next`.
fn snapshot_covering(root: &Path, next: TxId) -> Option<(FileKey, PathBuf)> {
    let key = local::list(root, SNAPSHOT_LEVEL).ok()?.into_iter().filter(|k| k.max.0 + 1 >= next.0).max()?;
    Some((key, local::file_path(root, key)))
}

/// State shared by a database's capture thread and its uploaders.
struct Shared {
    state: Mutex<State>,
    cv: Condvar,
}

struct State {
    acked: Vec<TxId>,
    /// Replicas whose next files were dropped by the local size cap, until a snapshot
    /// brings them back.
    behind: Vec<bool>,
    need_snapshot: Vec<bool>,
    stopping: bool,
    /// Set when a stop gave up waiting: uploaders quit where they are.
    abandon: bool,
    /// Bumped on every change, so a waiter can tell whether it missed one.
    seq: u64,
}

impl Shared {
    fn new(replicas: usize) -> Self {
        Shared {
            state: Mutex::new(State {
                acked: vec![TxId(0); replicas],
                behind: vec![false; replicas],
                need_snapshot: vec![false; replicas],
                stopping: false,
                abandon: false,
                seq: 0,
            }),
            cv: Condvar::new(),
        }
    }

    fn read<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        f(&self.state.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn update(&self, f: impl FnOnce(&mut State)) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut state);
        state.seq += 1;
        self.cv.notify_all();
    }

    fn notify(&self) {
        self.update(|_| {});
    }

    /// Waits for a change after `seen` (returns at once if one already happened).
    fn wait(&self, seen: u64, timeout: Duration) {
        let guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let _ = self.cv.wait_timeout_while(guard, timeout, |s| s.seq <= seen && !s.stopping);
    }
}

#[cfg(test)]
mod tests;

//! What a server streams from: one database's state folder (`ltx/0` files, `ltx/9`
//! snapshots, as written by capture on a primary or kept by a cascading follower), its
//! current position, and requests back to whoever produces the files (a snapshot for
//! a follower that needs one; a sync on the primary).

use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use ltx::TxId;

use crate::local::Pos;
use crate::wake::Waker;

/// One database as seen by the server and by its producer.
#[derive(Debug)]
pub struct Feed {
    name: String,
    root: PathBuf,
    state: Mutex<State>,
    cv: Condvar,
    /// Wakes the producer (the capture loop on a primary).
    waker: Mutex<Option<Waker>>,
}

#[derive(Debug, Default)]
struct State {
    pos: Pos,
    newest_ms: i64,
    /// Bumped on every change, so a waiter can tell whether it missed one.
    seq: u64,
    snapshot_wanted: bool,
    sync_asked: u64,
    sync_done: u64,
    stopping: bool,
    next_follower: u64,
    followers: Vec<Follower>,
    /// Each replica's newest TXID and whether it is behind the local size cap.
    replicas: Vec<(TxId, bool)>,
}

/// A connected follower, for `/status`.
#[derive(Clone, Debug)]
pub struct Follower {
    /// Connection id.
    pub id: u64,
    /// Its address.
    pub peer: String,
    /// The last TXID sent to it.
    pub txid: TxId,
    /// When it connected.
    pub since: Instant,
}

impl Feed {
    /// A feed named `name` (the name followers ask for) over the state folder `root`.
    pub fn new(name: String, root: PathBuf) -> Self {
        Feed { name, root, state: Mutex::default(), cv: Condvar::new(), waker: Mutex::new(None) }
    }

    /// The database's name in URLs.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The state folder the files are read from.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Sets the channel that wakes the producer.
    pub fn set_waker(&self, waker: Waker) {
        *self.waker.lock().unwrap_or_else(|p| p.into_inner()) = Some(waker);
    }

    fn update<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let out = f(&mut s);
        s.seq += 1;
        self.cv.notify_all();
        out
    }

    fn read<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        f(&self.state.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn wake_producer(&self) {
        if let Some(w) = &*self.waker.lock().unwrap_or_else(|p| p.into_inner()) {
            w.wake();
        }
    }

    /// Producer: the newest file is written; followers may read up to `pos`.
    pub fn publish(&self, pos: Pos, newest_ms: i64) {
        self.update(|s| {
            if s.pos != pos {
                s.pos = pos;
                s.newest_ms = newest_ms;
            }
        });
    }

    /// The current position and when its file was written.
    pub fn pos(&self) -> (Pos, i64) {
        self.read(|s| (s.pos, s.newest_ms))
    }

    /// The change counter, for [`Feed::wait`].
    pub fn seq(&self) -> u64 {
        self.read(|s| s.seq)
    }

    /// Waits for a change after `seen` (at once if one already happened), or `timeout`.
    pub fn wait(&self, seen: u64, timeout: Duration) {
        let guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let _ = self.cv.wait_timeout_while(guard, timeout, |s| s.seq <= seen && !s.stopping);
    }

    /// Waits until the position reaches `txid` (true) or `timeout` passes (false).
    pub fn wait_for(&self, txid: TxId, timeout: Duration) -> bool {
        let guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (s, _) = self
            .cv
            .wait_timeout_while(guard, timeout, |s| s.pos.txid < txid && !s.stopping)
            .unwrap_or_else(|p| p.into_inner());
        s.pos.txid >= txid
    }

    /// Server: a follower needs a snapshot newer than what the folder holds.
    pub fn want_snapshot(&self) {
        self.update(|s| s.snapshot_wanted = true);
        self.wake_producer();
    }

    /// Producer: whether a snapshot was asked for (clears the request).
    pub fn take_snapshot_request(&self) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::take(&mut s.snapshot_wanted)
    }

    /// Server: waits until the producer has captured every commit made before this
    /// call; returns the position then, or `None` after `timeout`.
    pub fn sync(&self, timeout: Duration) -> Option<Pos> {
        let n = self.update(|s| {
            s.sync_asked += 1;
            s.sync_asked
        });
        self.wake_producer();
        let guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (s, _) = self
            .cv
            .wait_timeout_while(guard, timeout, |s| s.sync_done < n && !s.stopping)
            .unwrap_or_else(|p| p.into_inner());
        (s.sync_done >= n).then_some(s.pos)
    }

    /// Producer, before a capture pass: the sync requests this pass will answer.
    pub fn sync_asked(&self) -> u64 {
        self.read(|s| s.sync_asked)
    }

    /// Producer, after a capture pass that published its position: requests up to
    /// `asked` are answered.
    pub fn sync_done(&self, asked: u64) {
        self.update(|s| s.sync_done = s.sync_done.max(asked));
    }

    /// Producer: the database stops; waiters return.
    pub fn stop(&self) {
        self.update(|s| s.stopping = true);
    }

    /// Whether the database stopped.
    pub fn stopping(&self) -> bool {
        self.read(|s| s.stopping)
    }

    /// Server: a follower connected; returns its id.
    pub fn follower_joined(&self, peer: String, txid: TxId) -> u64 {
        self.update(|s| {
            s.next_follower += 1;
            let id = s.next_follower;
            s.followers.push(Follower { id, peer, txid, since: Instant::now() });
            id
        })
    }

    /// Server: follower `id` was sent everything up to `txid`.
    pub fn follower_at(&self, id: u64, txid: TxId) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = s.followers.iter_mut().find(|f| f.id == id) {
            f.txid = txid;
        }
    }

    /// Server: follower `id` disconnected.
    pub fn follower_left(&self, id: u64) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.followers.retain(|f| f.id != id);
    }

    /// Producer: each replica's newest TXID and whether it fell behind the local cap.
    pub fn set_replicas(&self, replicas: Vec<(TxId, bool)>) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.replicas = replicas;
    }

    /// Each replica's newest TXID and whether it is behind (re-seeded when it returns).
    pub fn replicas(&self) -> Vec<(TxId, bool)> {
        self.read(|s| s.replicas.clone())
    }

    /// The connected followers.
    pub fn followers(&self) -> Vec<Follower> {
        self.read(|s| s.followers.clone())
    }
}

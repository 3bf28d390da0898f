//! Streams one database to one follower: from the follower's position, the files in
//! the state folder in TXID order, or a snapshot when the position is unknown, older
//! than the folder keeps, or diverged (its checksum does not match the history);
//! heartbeats in between. Runs on its own thread and writes into a bounded channel, so
//! a slow follower only ever waits on itself.

use std::io::Read;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ltx::TxId;

use crate::capture::now_ms;
use crate::live::feed::Feed;
use crate::live::frame::{self, Heartbeat};
use crate::local::{self, Pos};
use crate::store::SNAPSHOT_LEVEL;

/// How often a heartbeat is sent while nothing else is.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);

/// Bytes per chunk handed to the connection.
const CHUNK: usize = 64 << 10;

/// The next thing a follower at some position needs.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// Send this file; the follower is then at `Pos`.
    Send(PathBuf, Pos),
    /// Nothing new.
    Wait,
    /// The follower needs a snapshot and the folder has none it can use.
    NeedSnapshot,
}

/// Streams `feed` to a follower at `from` (TXID 0 = unknown), calling `send` with each
/// chunk of bytes, until `send` returns false (the follower is gone) or the feed stops.
/// `sent` is told each TXID the follower has been sent.
pub fn stream(feed: &Feed, from: Pos, mut send: impl FnMut(Vec<u8>) -> bool, mut sent: impl FnMut(TxId)) {
    let mut pos = from;
    let mut last_beat: Option<Instant> = None;
    while !feed.stopping() {
        let seen = feed.seq();
        let (current, newest_ms) = feed.pos();
        if current.txid == TxId(0) {
            // The producer has not published yet.
            feed.wait(seen, HEARTBEAT_EVERY);
            continue;
        }
        let step = next_step(feed, pos, current);
        match step {
            Step::Send(path, next) => {
                // Pruned between listing and opening: look again.
                let Ok(file) = std::fs::File::open(&path) else { continue };
                if !send_file(file, &mut send) {
                    return;
                }
                pos = next;
                tracing::debug!(txid = %pos.txid, "sent");
                sent(pos.txid);
            }
            Step::Wait | Step::NeedSnapshot => {
                if step == Step::NeedSnapshot {
                    feed.want_snapshot();
                }
                if last_beat.is_none_or(|t| t.elapsed() >= HEARTBEAT_EVERY) {
                    let beat = Heartbeat { txid: current.txid, checksum: current.checksum, now_ms: now_ms(), newest_ms };
                    if !send(frame::heartbeat(&beat)) {
                        return;
                    }
                    last_beat = Some(Instant::now());
                }
                let until_beat = HEARTBEAT_EVERY.saturating_sub(last_beat.map_or(Duration::ZERO, |t| t.elapsed()));
                feed.wait(seen, until_beat.max(Duration::from_millis(1)));
            }
        }
    }
}

fn next_step(feed: &Feed, pos: Pos, current: Pos) -> Step {
    let root = feed.root();
    if pos.txid == current.txid && pos.checksum == current.checksum {
        return Step::Wait;
    }
    if pos.txid != TxId(0) && pos.txid < current.txid {
        let files = local::list(root, 0).unwrap_or_default();
        if let Some(key) = files.iter().find(|k| k.min.0 == pos.txid.0 + 1) {
            let path = local::file_path(root, *key);
            if let Ok((header, trailer)) = local::read_header_trailer(&path)
                && header.pre_apply_checksum == pos.checksum
            {
                return Step::Send(path, Pos { txid: header.max_txid, checksum: trailer.post_apply_checksum });
            }
        }
    }
    // Unknown, too old, ahead of us, or diverged: a snapshot, never one older than a
    // position that is merely behind (readers must not see time go backwards).
    let files = local::list(root, 0).unwrap_or_default();
    let snapshots = local::list(root, SNAPSHOT_LEVEL).unwrap_or_default();
    let diverged = pos.txid == TxId(0) || pos.txid >= current.txid || !files.iter().any(|k| k.min.0 == pos.txid.0 + 1);
    for snap in snapshots.iter().rev().filter(|s| s.max <= current.txid) {
        let continues = snap.max == current.txid || files.iter().any(|k| k.min.0 == snap.max.0 + 1);
        let not_back = diverged || snap.max > pos.txid;
        if continues && not_back {
            let path = local::file_path(root, *snap);
            if let Ok((header, trailer)) = local::read_header_trailer(&path) {
                return Step::Send(path, Pos { txid: header.max_txid, checksum: trailer.post_apply_checksum });
            }
        }
    }
    Step::NeedSnapshot
}

/// Sends one file as an LTX frame; false when the follower went away or the file
/// could not be read (the stream is then cut: a partial frame cannot be taken back).
fn send_file(mut file: std::fs::File, send: &mut impl FnMut(Vec<u8>) -> bool) -> bool {
    let Ok(len) = file.metadata().map(|m| m.len()) else { return false };
    let mut buf = Vec::with_capacity(CHUNK.min(len as usize + frame::HEADER_LEN));
    buf.extend_from_slice(&frame::header(frame::LTX, len));
    let mut left = len;
    loop {
        let room = CHUNK - buf.len();
        let want = room.min(left as usize);
        let start = buf.len();
        buf.resize(start + want, 0);
        if file.read_exact(&mut buf[start..]).is_err() || !send(std::mem::take(&mut buf)) {
            return false;
        }
        left -= want as u64;
        if left == 0 {
            return true;
        }
        buf.reserve(CHUNK);
    }
}

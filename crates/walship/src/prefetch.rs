//! Downloads the files of a restore ahead of the one being applied, on a few threads:
//! with many small files in object storage, a restore waits on round trips, not on
//! bandwidth. Only small files are fetched ahead, and only a few of them, so memory
//! stays bounded; larger files are streamed when their turn comes.

use std::io::Read;
use std::sync::{Condvar, Mutex};

use crate::error::{Error, Result};
use crate::replica_form::{self, Checksums};
use crate::store::{FileInfo, Store};

/// Downloading threads.
const THREADS: usize = 4;
/// Files this size or smaller are fetched ahead.
const SMALL: u64 = 4 << 20;
/// How many files past the one being applied may be fetched (at most
/// `AHEAD × SMALL` bytes held).
const AHEAD: usize = 8;

/// A file fetched ahead: its bytes and walship's checksum record of it.
pub struct Fetched {
    /// The whole file.
    pub bytes: Vec<u8>,
    /// Its checksum record, if the replica has one.
    pub sums: Option<Checksums>,
}

/// The files of a chain, fetched ahead.
pub struct Prefetch<'a> {
    chain: &'a [FileInfo],
    state: Mutex<State>,
    cv: Condvar,
}

struct State {
    slots: Vec<Option<Result<Fetched>>>,
    next: usize,
    consumed: usize,
    done: bool,
}

/// Runs `f` while threads fetch `chain`'s small files ahead of it.
pub fn with_prefetch<T>(store: &dyn Store, chain: &[FileInfo], f: impl FnOnce(&Prefetch) -> T) -> T {
    let p = Prefetch {
        chain,
        state: Mutex::new(State { slots: (0..chain.len()).map(|_| None).collect(), next: 0, consumed: 0, done: false }),
        cv: Condvar::new(),
    };
    std::thread::scope(|s| {
        for _ in 0..THREADS.min(chain.len()) {
            s.spawn(|| p.worker(store));
        }
        let out = f(&p);
        p.lock().done = true;
        p.cv.notify_all();
        out
    })
}

impl Prefetch<'_> {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn worker(&self, store: &dyn Store) {
        loop {
            let i = {
                let mut s = self.lock();
                loop {
                    if s.done || s.next >= self.chain.len() {
                        return;
                    }
                    if s.next < s.consumed + AHEAD {
                        break;
                    }
                    s = self.cv.wait(s).unwrap_or_else(|p| p.into_inner());
                }
                s.next += 1;
                s.next - 1
            };
            let info = self.chain[i];
            if info.size > SMALL {
                continue;
            }
            let fetched = fetch(store, info);
            self.lock().slots[i] = Some(fetched);
            self.cv.notify_all();
        }
    }

    /// File `i` of the chain, if it was small enough to fetch ahead (`None`: stream it).
    /// Marks the files before it as consumed, letting the threads move on.
    pub fn take(&self, i: usize) -> Option<Result<Fetched>> {
        let mut s = self.lock();
        s.consumed = i + 1;
        self.cv.notify_all();
        if self.chain[i].size > SMALL {
            return None;
        }
        loop {
            if let Some(r) = s.slots[i].take() {
                return Some(r);
            }
            s = self.cv.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }
}

fn fetch(store: &dyn Store, info: FileInfo) -> Result<Fetched> {
    let mut bytes = Vec::with_capacity(info.size as usize);
    store
        .open(info.key)?
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(format!("read {} from {}", info.key, store.describe()), e))?;
    let sums = replica_form::get_checksums(store, info.key)?;
    Ok(Fetched { bytes, sums })
}

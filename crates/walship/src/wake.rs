//! What wakes a database's capture thread: inotify on the database's folder (writes to
//! the `-wal` file or its creation) and an eventfd that other threads signal (a
//! follower's sync or snapshot request). Both are read by the capture thread itself,
//! so while it works the kernel merges the WAL's write events into one instead of
//! waking a watcher thread for each commit.
#![allow(unsafe_code)]

use std::ffi::OsString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::error::{Error, Result};

/// The capture thread's side: waits for a reason to look at the WAL.
#[derive(Debug)]
pub struct Wake {
    inotify: OwnedFd,
    event: Arc<OwnedFd>,
    wal_name: OsString,
}

/// Signals a [`Wake`] from any thread.
#[derive(Clone, Debug)]
pub struct Waker(Arc<OwnedFd>);

impl Waker {
    /// Wakes the capture thread (at once if it is waiting, else on its next wait).
    pub fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to an eventfd we own.
        unsafe {
            libc::write(self.0.as_raw_fd(), (&raw const one).cast(), 8);
        }
    }
}

/// A stop request shared by the threads of one command: a flag, and the waiting
/// threads to wake when it is set (so a stop is noticed at once, however long they
/// sleep).
#[derive(Debug, Default)]
pub struct Stop {
    flag: AtomicBool,
    wakers: Mutex<Vec<Waker>>,
}

impl Stop {
    /// Whether a stop was requested.
    pub fn is_set(&self) -> bool {
        self.flag.load(Ordering::Relaxed)
    }

    /// Requests the stop and wakes every registered thread.
    pub fn set(&self) {
        self.flag.store(true, Ordering::Relaxed);
        self.wakers.lock().unwrap_or_else(|e| e.into_inner()).iter().for_each(Waker::wake);
    }

    /// Wakes `waker` when the stop is set (at once if it already is).
    pub fn wake_on_set(&self, waker: Waker) {
        self.wakers.lock().unwrap_or_else(|e| e.into_inner()).push(waker.clone());
        if self.is_set() {
            waker.wake();
        }
    }

    /// The flag itself, for code that only polls it.
    pub fn flag(&self) -> &AtomicBool {
        &self.flag
    }
}

fn os_err(what: &str) -> Error {
    Error::io(what.to_string(), std::io::Error::last_os_error())
}

impl Wake {
    /// Watches the folder of `db` for writes to `<db>-wal`.
    pub fn new(db: &Path) -> Result<Wake> {
        let dir = db.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let mut wal_name = db.file_name().unwrap_or_default().to_os_string();
        wal_name.push("-wal");
        // SAFETY: plain syscalls; each returned descriptor is checked, then owned.
        let inotify = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if inotify < 0 {
            return Err(os_err("start inotify"));
        }
        let inotify = unsafe { OwnedFd::from_raw_fd(inotify) };
        let mut cdir = dir.as_os_str().as_bytes().to_vec();
        cdir.push(0);
        let mask = libc::IN_MODIFY | libc::IN_CREATE | libc::IN_MOVED_TO;
        let wd = unsafe { libc::inotify_add_watch(inotify.as_raw_fd(), cdir.as_ptr().cast(), mask) };
        if wd < 0 {
            return Err(os_err(&format!("watch {}", dir.display())));
        }
        let event = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if event < 0 {
            return Err(os_err("create an eventfd"));
        }
        let event = Arc::new(unsafe { OwnedFd::from_raw_fd(event) });
        Ok(Wake { inotify, event, wal_name })
    }

    /// A handle other threads use to wake this one.
    pub fn waker(&self) -> Waker {
        Waker(self.event.clone())
    }

    /// Waits until the WAL is written, a [`Waker`] fires, or `timeout` passes; then
    /// consumes everything pending. Returns false on a timeout.
    pub fn wait(&self, timeout: Duration) -> bool {
        let mut fds = [
            libc::pollfd { fd: self.inotify.as_raw_fd(), events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: self.event.as_raw_fd(), events: libc::POLLIN, revents: 0 },
        ];
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let ms = left.as_millis().min(i32::MAX as u128) as i32;
            // SAFETY: polls two live descriptors described by a live array.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, ms) };
            if n == 0 {
                return false;
            }
            if n < 0 {
                if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                // Never spin on a broken poll: behave like a timeout.
                std::thread::sleep(left);
                return false;
            }
            let woken = fds[1].revents != 0 && self.drain_event();
            let wal = fds[0].revents != 0 && self.drain_inotify();
            if woken || wal {
                return true;
            }
            // Only events about other files: keep waiting until the deadline.
            fds[0].revents = 0;
            fds[1].revents = 0;
        }
    }

    fn drain_event(&self) -> bool {
        let mut count: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64 from our eventfd.
        let n = unsafe { libc::read(self.event.as_raw_fd(), (&raw mut count).cast(), 8) };
        n == 8
    }

    /// Reads every queued inotify event; true if one concerns the WAL.
    fn drain_inotify(&self) -> bool {
        let mut buf = [0u8; 4096];
        let mut hit = false;
        loop {
            // SAFETY: reads into a live buffer of the given length.
            let n = unsafe { libc::read(self.inotify.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                return hit;
            }
            let mut at = 0usize;
            let head = std::mem::size_of::<libc::inotify_event>();
            while at + head <= n as usize {
                // Fields of struct inotify_event: wd, mask, cookie, len (all 32-bit), then the name.
                let len = u32::from_ne_bytes(buf[at + 12..at + 16].try_into().expect("4 bytes")) as usize;
                let name = &buf[at + head..(at + head + len).min(n as usize)];
                let name = name.split(|b| *b == 0).next().unwrap_or_default();
                if name == self.wal_name.as_bytes() {
                    hit = true;
                }
                at += head + len;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wakes_on_wal_writes_and_wakers_not_on_other_files() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("app.db");
        let wake = Wake::new(&db).unwrap();
        assert!(!wake.wait(Duration::from_millis(20)), "nothing happened yet");
        std::fs::write(dir.path().join("other.log"), b"x").unwrap();
        assert!(!wake.wait(Duration::from_millis(20)), "another file is not the WAL");
        std::fs::write(dir.path().join("app.db-wal"), b"x").unwrap();
        assert!(wake.wait(Duration::from_millis(500)));
        // Many writes while busy are merged: one wait consumes them all.
        for _ in 0..100 {
            std::fs::OpenOptions::new().append(true).open(dir.path().join("app.db-wal")).unwrap();
            std::fs::write(dir.path().join("app.db-wal"), b"yy").unwrap();
        }
        assert!(wake.wait(Duration::from_millis(500)));
        assert!(!wake.wait(Duration::from_millis(20)));
        let waker = wake.waker();
        std::thread::spawn(move || waker.wake());
        assert!(wake.wait(Duration::from_secs(2)));
    }
}

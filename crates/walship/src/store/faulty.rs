//! A store wrapper that injects faults, for tests: it fails a share of calls (or every
//! Nth call) with a retryable I/O error, can fail a `put` *after* the inner store took
//! the file (the reply was lost), and adds latency.
//!
//! Tests use it directly; the `walship` binary applies it to every replica when the
//! environment variable `WALSHIP_TEST_STORE_FAULTS` is set, e.g.
//! `fail=0.3,lost=0.1,latency_ms=5,seed=7` (testing only; never in production).

use std::io::Read;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use super::{FileInfo, FileKey, Store};
use crate::error::{Error, Result};

/// Which faults to inject.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Faults {
    /// Share of calls that fail before reaching the inner store (0.0–1.0).
    pub fail: f64,
    /// Share of successful `put`s whose success is reported as a failure.
    pub lost: f64,
    /// Fail every Nth call (0 = never).
    pub every: u64,
    /// Fail the first N calls (an outage at start).
    pub first: u64,
    /// Latency added to every call.
    pub latency: Duration,
    /// Seed of the fault sequence.
    pub seed: u64,
}

impl Faults {
    /// Parses `fail=0.3,lost=0.1,every=5,first=3,latency_ms=5,seed=7` (any subset).
    pub fn parse(spec: &str) -> Result<Faults> {
        let mut f = Faults::default();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| Error::Invalid(format!("store faults: {part:?} is not key=value")))?;
            let bad = || Error::Invalid(format!("store faults: bad value in {part:?}"));
            match k {
                "fail" => f.fail = v.parse().map_err(|_| bad())?,
                "lost" => f.lost = v.parse().map_err(|_| bad())?,
                "every" => f.every = v.parse().map_err(|_| bad())?,
                "first" => f.first = v.parse().map_err(|_| bad())?,
                "latency_ms" => f.latency = Duration::from_millis(v.parse().map_err(|_| bad())?),
                "seed" => f.seed = v.parse().map_err(|_| bad())?,
                _ => return Err(Error::Invalid(format!("store faults: unknown key {k:?}"))),
            }
        }
        Ok(f)
    }
}

/// A store that fails on purpose.
#[derive(Debug)]
pub struct FaultyStore {
    inner: Box<dyn Store>,
    faults: Faults,
    state: Mutex<(u64, u64)>, // (calls, rng state)
}

impl FaultyStore {
    /// Wraps `inner`.
    pub fn new(inner: Box<dyn Store>, faults: Faults) -> Self {
        let seed = faults.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        FaultyStore { inner, faults, state: Mutex::new((0, seed)) }
    }

    /// Decides the next call's fate: (fail before, random draw for `lost`).
    fn next(&self) -> (bool, f64) {
        std::thread::sleep(self.faults.latency);
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.0 += 1;
        let mut draw = || {
            // xorshift64*: small, deterministic, good enough for fault schedules.
            s.1 ^= s.1 >> 12;
            s.1 ^= s.1 << 25;
            s.1 ^= s.1 >> 27;
            (s.1.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
        };
        let (a, b) = (draw(), draw());
        let nth = self.faults.every > 0 && s.0.is_multiple_of(self.faults.every);
        (nth || s.0 <= self.faults.first || a < self.faults.fail, b)
    }

    fn fault(what: &str) -> Error {
        Error::io(format!("injected fault in {what}"), std::io::Error::other("injected"))
    }
}

impl Store for FaultyStore {
    fn list(&self, level: u8) -> Result<Vec<FileInfo>> {
        if self.next().0 {
            return Err(Self::fault("list"));
        }
        self.inner.list(level)
    }

    fn put(&self, key: FileKey, local: &Path) -> Result<()> {
        let (fail, draw) = self.next();
        if fail {
            return Err(Self::fault("put"));
        }
        self.inner.put(key, local)?;
        if draw < self.faults.lost {
            return Err(Self::fault("put (reply lost)"));
        }
        Ok(())
    }

    fn put_bytes(&self, key: FileKey, bytes: &[u8]) -> Result<()> {
        let (fail, draw) = self.next();
        if fail {
            return Err(Self::fault("put"));
        }
        self.inner.put_bytes(key, bytes)?;
        if draw < self.faults.lost {
            return Err(Self::fault("put (reply lost)"));
        }
        Ok(())
    }

    fn open(&self, key: FileKey) -> Result<Box<dyn Read + Send>> {
        if self.next().0 {
            return Err(Self::fault("open"));
        }
        self.inner.open(key)
    }

    fn delete(&self, key: FileKey) -> Result<()> {
        if self.next().0 {
            return Err(Self::fault("delete"));
        }
        self.inner.delete(key)
    }

    fn describe(&self) -> String {
        format!("{} (with injected faults)", self.inner.describe())
    }

    fn init(&self) -> Result<()> {
        self.inner.init()
    }

    fn put_meta(&self, name: &str, bytes: &[u8]) -> Result<()> {
        if self.next().0 {
            return Err(Self::fault("put_meta"));
        }
        self.inner.put_meta(name, bytes)
    }

    fn delete_meta(&self, name: &str) -> Result<()> {
        if self.next().0 {
            return Err(Self::fault("delete"));
        }
        self.inner.delete_meta(name)
    }

    fn get_meta(&self, name: &str) -> Result<Option<Vec<u8>>> {
        if self.next().0 {
            return Err(Self::fault("get_meta"));
        }
        self.inner.get_meta(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_bad_ones_are_refused() {
        let f = Faults::parse("fail=0.25, lost=0.1,every=3,latency_ms=2,seed=9").unwrap();
        assert_eq!(f, Faults { fail: 0.25, lost: 0.1, every: 3, latency: Duration::from_millis(2), seed: 9, first: 0 });
        for bad in ["fail", "fail=x", "bogus=1"] {
            assert!(Faults::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_nth_call_fails() {
        let dir = tempfile::tempdir().unwrap();
        let store = FaultyStore::new(
            Box::new(super::super::folder::FolderStore::new(dir.path().to_path_buf())),
            Faults { every: 3, ..Faults::default() },
        );
        let results: Vec<bool> = (0..6).map(|_| store.list(0).is_ok()).collect();
        assert_eq!(results, [true, true, false, true, true, false]);
    }
}

//! A store wrapper that counts the requests made to a replica (LIST, PUT, GET,
//! DELETE), so their cost can be reported: object stores bill per request.

use std::fmt;
use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use ltx::TxId;

use crate::error::Result;
use crate::store::{FileInfo, FileKey, Store};

/// Requests made so far.
#[derive(Debug, Default)]
pub struct Counts {
    /// LIST requests.
    pub list: AtomicU64,
    /// PUT requests (files and walship's records).
    pub put: AtomicU64,
    /// GET requests (files and walship's records).
    pub get: AtomicU64,
    /// DELETE requests.
    pub delete: AtomicU64,
}

impl fmt::Display for Counts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "LIST {}, PUT {}, GET {}, DELETE {}",
            self.list.load(Relaxed),
            self.put.load(Relaxed),
            self.get.load(Relaxed),
            self.delete.load(Relaxed)
        )
    }
}

/// Counts every request to the store it wraps.
#[derive(Debug)]
pub struct Counted {
    inner: Box<dyn Store>,
    counts: Arc<Counts>,
}

impl Counted {
    /// Wraps `inner`.
    pub fn new(inner: Box<dyn Store>) -> Self {
        Counted { inner, counts: Arc::default() }
    }

    /// The counters (shared: they keep counting).
    pub fn counts(&self) -> Arc<Counts> {
        self.counts.clone()
    }
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Relaxed);
}

impl Store for Counted {
    fn list(&self, level: u8) -> Result<Vec<FileInfo>> {
        bump(&self.counts.list);
        self.inner.list(level)
    }

    fn list_after(&self, level: u8, after: TxId) -> Result<Vec<FileInfo>> {
        bump(&self.counts.list);
        self.inner.list_after(level, after)
    }

    fn put(&self, key: FileKey, local: &Path) -> Result<()> {
        bump(&self.counts.put);
        self.inner.put(key, local)
    }

    fn put_bytes(&self, key: FileKey, bytes: &[u8]) -> Result<()> {
        bump(&self.counts.put);
        self.inner.put_bytes(key, bytes)
    }

    fn open(&self, key: FileKey) -> Result<Box<dyn Read + Send>> {
        bump(&self.counts.get);
        self.inner.open(key)
    }

    fn delete(&self, key: FileKey) -> Result<()> {
        bump(&self.counts.delete);
        self.inner.delete(key)
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn init(&self) -> Result<()> {
        self.inner.init()
    }

    fn put_meta(&self, name: &str, bytes: &[u8]) -> Result<()> {
        bump(&self.counts.put);
        self.inner.put_meta(name, bytes)
    }

    fn delete_meta(&self, name: &str) -> Result<()> {
        bump(&self.counts.delete);
        self.inner.delete_meta(name)
    }

    fn get_meta(&self, name: &str) -> Result<Option<Vec<u8>>> {
        bump(&self.counts.get);
        self.inner.get_meta(name)
    }
}

//! The page checksums of the last captured state: one CRC-64 per page (8 bytes per
//! page, 2 MiB per GiB of database), so that each capture can drop pages that did not
//! change and keep the rolling database checksum exact without reading old pages.

use std::io::Read;
use std::path::Path;

use ltx::{Checksum, DbChecksum, TxId};

use crate::durable;
use crate::error::{Error, Result};

/// Per-page checksums and the database checksum they add up to.
#[derive(Clone, Debug)]
pub struct PageSums {
    sums: Vec<Checksum>,
    db: DbChecksum,
}

impl Default for PageSums {
    fn default() -> Self {
        PageSums { sums: Vec::new(), db: DbChecksum::new() }
    }
}

impl PageSums {
    /// Number of pages in the database.
    pub fn page_count(&self) -> u32 {
        self.sums.len() as u32
    }

    /// The database checksum.
    pub fn checksum(&self) -> Checksum {
        self.db.value()
    }

    /// Page `pgno`'s checksum ([`Checksum::ZERO`] when absent).
    pub fn get(&self, pgno: u32) -> Checksum {
        self.sums.get(pgno as usize - 1).copied().unwrap_or(Checksum::ZERO)
    }

    /// Whether page `pgno` would change if set to a page with checksum `sum`.
    pub fn differs(&self, pgno: u32, sum: Checksum) -> bool {
        self.sums.get(pgno as usize - 1) != Some(&sum)
    }

    /// Records page `pgno`'s new checksum. Pages past the end extend the database
    /// (gaps, such as the lock page, stay absent).
    pub fn set(&mut self, pgno: u32, sum: Checksum) {
        let i = pgno as usize - 1;
        if i >= self.sums.len() {
            self.sums.resize(i + 1, Checksum::ZERO);
        }
        let old = std::mem::replace(&mut self.sums[i], sum);
        if old != Checksum::ZERO {
            self.db.remove(old);
        }
        self.db.add(sum);
    }

    /// Sets the database size in pages, dropping pages past it.
    pub fn resize(&mut self, pages: u32) {
        while self.sums.len() > pages as usize {
            if let Some(old) = self.sums.pop().filter(|s| *s != Checksum::ZERO) {
                self.db.remove(old);
            }
        }
        self.sums.resize(pages as usize, Checksum::ZERO);
    }

    /// The database checksum after [`PageSums::apply`] with the same arguments,
    /// without changing anything.
    pub fn preview(&self, commit: u32, changes: &[(u32, Checksum)]) -> Checksum {
        let mut db = self.db;
        for old in self.sums.iter().skip(commit as usize).filter(|s| **s != Checksum::ZERO) {
            db.remove(*old);
        }
        for (pgno, sum) in changes.iter().filter(|(p, _)| *p <= commit) {
            let old = self.get(*pgno);
            if old != Checksum::ZERO {
                db.remove(old);
            }
            db.add(*sum);
        }
        db.value()
    }

    /// Sets the database size to `commit` pages and records the changed pages.
    pub fn apply(&mut self, commit: u32, changes: &[(u32, Checksum)]) {
        self.resize(commit);
        for (pgno, sum) in changes.iter().filter(|(p, _)| *p <= commit) {
            self.set(*pgno, *sum);
        }
    }

    /// Saves the checksums, tagged with the TXID they describe, durably.
    pub fn save(&self, path: &Path, txid: TxId) -> Result<()> {
        let mut bytes = Vec::with_capacity(16 + self.sums.len() * 8);
        bytes.extend_from_slice(b"WSPS");
        bytes.extend_from_slice(&txid.0.to_be_bytes());
        bytes.extend_from_slice(&(self.sums.len() as u32).to_be_bytes());
        for s in &self.sums {
            bytes.extend_from_slice(&s.0.to_be_bytes());
        }
        durable::write_bytes(path, durable::Mode::Overwrite, &bytes)
    }

    /// Loads checksums saved for exactly `txid`; `None` when the file is missing, for
    /// another TXID, or damaged (the caller then re-reads every page).
    pub fn load(path: &Path, txid: TxId) -> Result<Option<PageSums>> {
        let mut bytes = Vec::new();
        match std::fs::File::open(path) {
            Ok(mut f) => f.read_to_end(&mut bytes).map_err(|e| Error::io(format!("read {}", path.display()), e))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(format!("open {}", path.display()), e)),
        };
        if bytes.len() < 16 || &bytes[..4] != b"WSPS" {
            return Ok(None);
        }
        let saved = u64::from_be_bytes(bytes[4..12].try_into().expect("8 bytes"));
        let n = u32::from_be_bytes(bytes[12..16].try_into().expect("4 bytes")) as usize;
        if saved != txid.0 || bytes.len() != 16 + n * 8 {
            return Ok(None);
        }
        let mut sums = PageSums::default();
        for (i, chunk) in bytes[16..].chunks_exact(8).enumerate() {
            let s = Checksum(u64::from_be_bytes(chunk.try_into().expect("8 bytes")));
            if s != Checksum::ZERO {
                sums.set(i as u32 + 1, s);
            }
        }
        sums.resize(n as u32);
        Ok(Some(sums))
    }
}

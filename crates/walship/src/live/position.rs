//! A follower's position file: the state the replica was in before the transaction
//! being committed and the state after it, written before each COMMIT. After a crash
//! the replica holds one of the two, and [`crate::live::apply::ReplicaDb::open`] finds
//! which by its checksum. Written in place as one fixed-size write, not fsynced (a
//! rename per transaction costs a millisecond of writeback): a position lost or torn
//! by a power cut matches no checksum and only costs a snapshot, never a wrong state.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use ltx::{Checksum, TxId};

use crate::error::{Error, Result};
use crate::local::Pos;

/// The primary's values of the page-1 bytes SQLite rewrites on each commit to the
/// replica: the file change counter (24–27) and version-valid-for + SQLite version
/// (92–99).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeaderBytes([u8; 12]);

impl HeaderBytes {
    /// The bytes as they are in `page1`.
    pub fn from_page(page1: &[u8]) -> HeaderBytes {
        let mut b = [0u8; 12];
        if page1.len() >= 100 {
            b[..4].copy_from_slice(&page1[24..28]);
            b[4..].copy_from_slice(&page1[92..100]);
        }
        HeaderBytes(b)
    }

    /// Writes the bytes back into `page1`.
    pub fn patch(&self, page1: &mut [u8]) {
        if page1.len() >= 100 {
            page1[24..28].copy_from_slice(&self.0[..4]);
            page1[92..100].copy_from_slice(&self.0[4..]);
        }
    }
}

/// A position with the page-1 bytes that go with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Saved {
    /// TXID and database checksum.
    pub pos: Pos,
    /// The primary's rewritten page-1 bytes at that TXID.
    pub header: HeaderBytes,
}

/// Size of the file: the header line and two candidates fit, padded with spaces.
const FILE_LEN: usize = 256;

/// The position file of one replica.
#[derive(Debug)]
pub struct PositionFile {
    path: PathBuf,
    file: Option<File>,
}

impl PositionFile {
    /// The file at `path`.
    pub fn new(path: PathBuf) -> Self {
        PositionFile { path, file: None }
    }

    /// Saves the candidate states (older first).
    pub fn save(&mut self, states: &[Saved]) -> Result<()> {
        let mut text = String::from("walship-position 1\n");
        for s in states.iter().filter(|s| s.pos.txid != TxId(0)) {
            let hex: String = s.header.0.iter().map(|b| format!("{b:02x}")).collect();
            text.push_str(&format!("{} {} {hex}\n", s.pos.txid, s.pos.checksum));
        }
        let mut bytes = text.into_bytes();
        bytes.resize(FILE_LEN, b' ');
        let what = || format!("write {}", self.path.display());
        if self.file.is_none() {
            let f = File::options().create(true).truncate(false).write(true).open(&self.path).map_err(|e| Error::io(what(), e))?;
            f.set_len(FILE_LEN as u64).map_err(|e| Error::io(what(), e))?;
            self.file = Some(f);
        }
        let file = self.file.as_ref().expect("opened above");
        file.write_all_at(&bytes, 0).map_err(|e| Error::io(what(), e))
    }

    /// The saved candidates, newest first; empty when the file is missing or damaged.
    pub fn load(&self) -> Result<Vec<Saved>> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(format!("read {}", self.path.display()), e)),
        };
        let mut lines = text.lines();
        if lines.next() != Some("walship-position 1") {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for line in lines.map(str::trim).filter(|l| !l.is_empty()) {
            match parse_line(line) {
                Some(s) => out.push(s),
                None => return Ok(Vec::new()),
            }
        }
        out.reverse();
        Ok(out)
    }
}

fn parse_line(line: &str) -> Option<Saved> {
    let mut parts = line.split(' ');
    let txid: TxId = parts.next()?.parse().ok()?;
    let checksum = Checksum(u64::from_str_radix(parts.next()?, 16).ok()?);
    let hex = parts.next()?;
    if hex.len() != 24 || parts.next().is_some() {
        return None;
    }
    let mut b = [0u8; 12];
    for (i, byte) in b.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(Saved { pos: Pos { txid, checksum }, header: HeaderBytes(b) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_and_loads_newest_first_and_ignores_damage() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = PositionFile::new(dir.path().join("position"));
        assert!(file.load().unwrap().is_empty());
        let a = Saved { pos: Pos { txid: TxId(5), checksum: Checksum(0x8000_0000_0000_00ff) }, header: HeaderBytes([1; 12]) };
        let b = Saved { pos: Pos { txid: TxId(6), checksum: Checksum(0x8000_0000_0000_0abc) }, header: HeaderBytes([2; 12]) };
        file.save(&[a, b]).unwrap();
        assert_eq!(file.load().unwrap(), vec![b, a]);
        file.save(&[b]).unwrap();
        assert_eq!(file.load().unwrap(), vec![b]);
        std::fs::write(dir.path().join("position"), "walship-position 1\nzz 1 00\n").unwrap();
        assert!(file.load().unwrap().is_empty());
    }
}

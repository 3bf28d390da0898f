//! Replica storage: a small trait keyed by LTX file identity, in Litestream 0.5's layout.
//!
//! - [`Store`]: the trait every backend implements.
//! - [`FileKey`] / [`FileInfo`]: which file, and what a listing says about it.
//! - [`folder`]: a local or NFS folder (`<dir>/ltx/<level>/<min>-<max>.ltx`).
//! - [`object`]: S3 (and S3-compatibles), Azure Blob Storage and GCS.
//! - [`sftp`]: an SFTP server (`<path>/ltx/<level>/<min>-<max>.ltx`), over SSH.
//! - [`faulty`]: a wrapper that injects failures and latency, for tests.
//! - [`open`]: turns a replica argument (path, `file://`, `s3://`, `abs://`, `gs://`,
//!   `sftp://` URL) into a store.

pub mod counted;
pub mod faulty;
pub mod folder;
pub mod object;
pub mod sftp;

use std::fmt;
use std::io::Read;
use std::path::PathBuf;

use ltx::TxId;

use crate::error::{Error, Result};

/// The compaction level of full snapshots.
pub const SNAPSHOT_LEVEL: u8 = 9;

/// Identity of one LTX file in a replica: level and TXID range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FileKey {
    /// Compaction level: 0 per capture, 1–3 compacted, 9 snapshots.
    pub level: u8,
    /// First TXID the file covers.
    pub min: TxId,
    /// Last TXID the file covers.
    pub max: TxId,
}

impl FileKey {
    /// The file name Litestream uses: `<min>-<max>.ltx`, 16 hex digits each.
    pub fn file_name(&self) -> String {
        format!("{}-{}.ltx", self.min, self.max)
    }

    /// Parses a file name of the form `<min>-<max>.ltx` at `level`.
    pub fn parse(level: u8, name: &str) -> Option<FileKey> {
        let stem = name.strip_suffix(".ltx")?;
        let (min, max) = stem.split_once('-')?;
        let hex = |s: &str| {
            (s.len() == 16 && s.bytes().all(|b| b.is_ascii_hexdigit()))
                .then(|| u64::from_str_radix(s, 16).ok())
                .flatten()
        };
        let (min, max) = (hex(min)?, hex(max)?);
        (min <= max).then_some(FileKey { level, min: TxId(min), max: TxId(max) })
    }
}

impl fmt::Display for FileKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ltx/{}/{}", self.level, self.file_name())
    }
}

/// One listed file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileInfo {
    /// Which file.
    pub key: FileKey,
    /// Its size in bytes.
    pub size: u64,
}

/// Storage for one replica.
///
/// # Contract
/// - `put` is atomic (a reader sees the whole file or nothing) and never overwrites:
///   putting an existing key fails with [`Error::AlreadyExists`].
/// - `list` returns the level's files sorted by `(min, max)`; a missing level is empty.
/// - `open` of a missing key fails with [`Error::NotFound`].
pub trait Store: Send + Sync + fmt::Debug {
    /// Lists the files at one level.
    fn list(&self, level: u8) -> Result<Vec<FileInfo>>;
    /// Lists the files at one level that start after TXID `after` (object stores ask
    /// only for keys past it, so a poll costs the same however long the history).
    fn list_after(&self, level: u8, after: TxId) -> Result<Vec<FileInfo>> {
        let mut files = self.list(level)?;
        files.retain(|f| f.key.min > after);
        Ok(files)
    }
    /// Stores a file from a local path.
    fn put(&self, key: FileKey, local: &std::path::Path) -> Result<()>;
    /// Stores a small file (at most [`PUT_BYTES_MAX`]) held in memory; same rules as `put`.
    fn put_bytes(&self, key: FileKey, bytes: &[u8]) -> Result<()>;
    /// Opens a file for streaming reads.
    fn open(&self, key: FileKey) -> Result<Box<dyn Read + Send>>;
    /// Deletes a file (a missing file is not an error).
    fn delete(&self, key: FileKey) -> Result<()>;
    /// Where the replica is, for messages.
    fn describe(&self) -> String;
    /// Prepares the replica for writing (creates its folder, ...) and fails when it
    /// cannot be written, so that `replicate` stops at once instead of retrying forever.
    fn init(&self) -> Result<()>;
    /// Stores a small walship-only object under `name` (a `/`-separated path below the
    /// replica root, always under `walship/`), replacing any earlier one atomically.
    fn put_meta(&self, name: &str, bytes: &[u8]) -> Result<()>;
    /// Reads a walship-only object; `None` when it does not exist.
    fn get_meta(&self, name: &str) -> Result<Option<Vec<u8>>>;
    /// Deletes a walship-only object (a missing one is not an error).
    fn delete_meta(&self, name: &str) -> Result<()>;
}

/// The largest file [`Store::put_bytes`] takes (larger ones go through a local file).
pub const PUT_BYTES_MAX: usize = 4 << 20;

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn read_full<R: Read + ?Sized>(r: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Lists every level (0..=9) of a store, sorted by level then TXID.
pub fn list_all(store: &dyn Store) -> Result<Vec<FileInfo>> {
    let mut all = Vec::new();
    for level in 0..=SNAPSHOT_LEVEL {
        all.extend(store.list(level)?);
    }
    Ok(all)
}

/// Opens the store a replica argument names: a folder path, a `file://` URL, an
/// object-storage URL (`s3://`, `abs://`, `gs://`; see [`object`]) or an `sftp://` URL
/// (see [`sftp`]).
pub fn open(arg: &str) -> Result<Box<dyn Store>> {
    if let Some((scheme, _)) = arg.split_once("://")
        && matches!(scheme, "s3" | "abs" | "az" | "azure" | "gs" | "gcs")
    {
        return Ok(Box::new(object::ObjectStore::open(arg)?));
    }
    if arg.starts_with("sftp://") {
        return Ok(Box::new(sftp::SftpStore::open(arg)?));
    }
    let path = if let Some(rest) = arg.strip_prefix("file://") {
        if !rest.starts_with('/') {
            return Err(Error::Invalid(format!(
                "replica URL {arg:?}: a file URL needs an absolute path, like file:///var/backups/app"
            )));
        }
        PathBuf::from(rest)
    } else if let Some((scheme, _)) = arg.split_once("://") {
        return Err(Error::Invalid(format!(
            "replica URL {arg:?}: scheme {scheme:?} is not supported (use a folder path, file://, s3://, abs://, gs:// or sftp://)"
        )));
    } else if arg.is_empty() {
        return Err(Error::Invalid("replica path is empty".into()));
    } else {
        PathBuf::from(arg)
    };
    Ok(Box::new(folder::FolderStore::new(path)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_round_trip_and_reject_junk() {
        let key = FileKey { level: 3, min: TxId(1), max: TxId(0xa7) };
        assert_eq!(key.file_name(), "0000000000000001-00000000000000a7.ltx");
        assert_eq!(FileKey::parse(3, &key.file_name()), Some(key));
        for bad in ["1-2.ltx", "0000000000000002-0000000000000001.ltx", "x.ltx",
                    "000000000000000g-0000000000000001.ltx", "0000000000000001-0000000000000001.tmp"] {
            assert_eq!(FileKey::parse(0, bad), None, "{bad}");
        }
    }

    #[test]
    fn replica_arguments_are_checked() {
        assert!(open("/tmp/x").is_ok());
        assert!(open("file:///tmp/x").is_ok());
        assert!(open("sftp://me@127.0.0.1:1/x").is_ok(), "nothing is contacted before the first call");
        for bad in ["", "file://relative", "gopher://x/y", "sftp://host-without-user/x"] {
            assert!(matches!(open(bad), Err(Error::Invalid(_))), "{bad}");
        }
    }
}

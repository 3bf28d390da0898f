//! The local state folder, a hidden sibling of the database (`.app.db-walship/`):
//! captured LTX files waiting for upload, laid out like a folder replica (`ltx/0/`,
//! snapshots in `ltx/9/`, so `walship restore` can read it), the page checksums saved
//! at a clean stop (`pagesums`) and the lock that keeps two replicators off one
//! database (`lock`).

use std::fs::{self, File};
use std::io::{BufWriter, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use ltx::{Checksum, Encoder, Header, TxId};

use crate::durable;
use crate::error::{Error, Result};
use crate::store::{FileKey, SNAPSHOT_LEVEL};

/// A position in a database's history: the last TXID and the database checksum after it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pos {
    /// Last captured TXID (0 before the first capture).
    pub txid: TxId,
    /// Database checksum after that TXID.
    pub checksum: Checksum,
}

/// One database's local state folder.
#[derive(Debug)]
pub struct LocalDir {
    root: PathBuf,
    _lock: File,
}

impl LocalDir {
    /// The state folder for the database at `db`.
    pub fn path_for(db: &Path) -> PathBuf {
        let name = db.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        db.with_file_name(format!(".{name}-walship"))
    }

    /// Opens (creating) the state folder and takes its lock.
    pub fn open(db: &Path) -> Result<LocalDir> {
        let root = Self::path_for(db);
        durable::create_dir_all(&root.join("ltx").join("0"))?;
        durable::create_dir_all(&root.join("ltx").join(SNAPSHOT_LEVEL.to_string()))?;
        let lock_path = root.join("lock");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| Error::io(format!("open {}", lock_path.display()), e))?;
        lock.try_lock().map_err(|_| {
            Error::Invalid(format!(
                "another walship process is replicating {} (lock {} is held)",
                db.display(),
                lock_path.display()
            ))
        })?;
        Ok(LocalDir { root, _lock: lock })
    }

    /// Where the page checksums are saved.
    pub fn pagesums_path(&self) -> PathBuf {
        self.root.join("pagesums")
    }

    /// The folder itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Local path of a captured file.
    pub fn file_path(&self, key: FileKey) -> PathBuf {
        file_path(&self.root, key)
    }

    /// Captured files waiting in the folder, oldest first (level 0 only).
    pub fn files(&self) -> Result<Vec<FileKey>> {
        list(&self.root, 0)
    }

    /// Snapshots waiting in the folder, oldest first.
    pub fn snapshots(&self) -> Result<Vec<FileKey>> {
        list(&self.root, SNAPSHOT_LEVEL)
    }

    /// The position after the newest captured file (read from its header and trailer).
    pub fn last_pos(&self) -> Result<Option<Pos>> {
        let Some(key) = self.files()?.pop() else { return Ok(None) };
        let path = self.file_path(key);
        let (header, trailer) = read_header_trailer(&path)?;
        Ok(Some(Pos { txid: header.max_txid, checksum: trailer.post_apply_checksum }))
    }

    /// Writes an LTX file durably: `fill` encodes the pages; the file appears under its
    /// final name only once complete and fsynced.
    pub fn write_ltx(
        &self,
        key: FileKey,
        header: &Header,
        fill: impl FnOnce(&mut Encoder<BufWriter<&mut File>>) -> Result<Checksum>,
    ) -> Result<PathBuf> {
        let path = self.file_path(key);
        let name = key.file_name();
        durable::write_file(&path, durable::Mode::Overwrite, |file| {
            let mut enc = Encoder::new(BufWriter::with_capacity(256 * 1024, file), header)
                .map_err(|e| Error::ltx(name.clone(), e))?;
            let post = fill(&mut enc)?;
            enc.finish(post).map_err(|e| Error::ltx(name.clone(), e))?;
            use std::io::Write;
            enc.into_inner().flush().map_err(|e| Error::io(format!("write {name}"), e))
        })?;
        Ok(path)
    }

    /// Removes a captured file that every replica has.
    pub fn remove(&self, key: FileKey) -> Result<()> {
        durable::remove_file(&self.file_path(key))
    }
}

/// Path of a captured file in the state folder at `root`.
pub fn file_path(root: &Path, key: FileKey) -> PathBuf {
    root.join("ltx").join(key.level.to_string()).join(key.file_name())
}

/// Files at `level` in the state folder at `root`, oldest first.
pub fn list(root: &Path, level: u8) -> Result<Vec<FileKey>> {
    let dir = root.join("ltx").join(level.to_string());
    let mut keys = Vec::new();
    for entry in fs::read_dir(&dir).map_err(|e| Error::io(format!("list {}", dir.display()), e))? {
        let entry = entry.map_err(|e| Error::io(format!("list {}", dir.display()), e))?;
        if let Some(key) = entry.file_name().to_str().and_then(|n| FileKey::parse(level, n)) {
            keys.push(key);
        }
    }
    keys.sort();
    Ok(keys)
}

/// Reads an LTX file's header and trailer without decoding its pages.
pub fn read_header_trailer(path: &Path) -> Result<(Header, ltx::Trailer)> {
    let name = path.display().to_string();
    let mut f = File::open(path).map_err(|e| Error::io(format!("open {name}"), e))?;
    let mut hb = [0u8; ltx::HEADER_SIZE];
    f.read_exact(&mut hb).map_err(|e| Error::io(format!("read {name}"), e))?;
    let header = Header::decode(&hb).map_err(|e| Error::ltx(name.clone(), e))?;
    let mut tb = [0u8; ltx::TRAILER_SIZE];
    f.seek(SeekFrom::End(-(ltx::TRAILER_SIZE as i64)))
        .and_then(|_| f.read_exact(&mut tb))
        .map_err(|e| Error::io(format!("read {name}"), e))?;
    let trailer = ltx::Trailer {
        post_apply_checksum: Checksum(u64::from_be_bytes(tb[..8].try_into().expect("8 bytes"))),
        file_checksum: Checksum(u64::from_be_bytes(tb[8..].try_into().expect("8 bytes"))),
    };
    Ok((header, trailer))
}

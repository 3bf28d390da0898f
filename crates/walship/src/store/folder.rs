//! A replica in a local (or NFS) folder, in Litestream 0.5's file layout:
//! `<dir>/ltx/<level>/<min>-<max>.ltx`.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use super::{FileInfo, FileKey, Store};
use crate::durable;
use crate::error::{Error, Result};

/// A folder replica.
#[derive(Debug, Clone)]
pub struct FolderStore {
    root: PathBuf,
}

impl FolderStore {
    /// A store rooted at `root` (created on first write).
    pub fn new(root: PathBuf) -> Self {
        FolderStore { root }
    }

    fn level_dir(&self, level: u8) -> PathBuf {
        self.root.join("ltx").join(level.to_string())
    }

    fn path(&self, key: FileKey) -> PathBuf {
        self.level_dir(key.level).join(key.file_name())
    }
}

impl Store for FolderStore {
    fn list(&self, level: u8) -> Result<Vec<FileInfo>> {
        let dir = self.level_dir(level);
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(format!("list {}", dir.display()), e)),
        };
        let mut files = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(format!("list {}", dir.display()), e))?;
            let name = entry.file_name();
            let Some(key) = name.to_str().and_then(|n| FileKey::parse(level, n)) else {
                continue;
            };
            let size = entry
                .metadata()
                .map_err(|e| Error::io(format!("stat {}", entry.path().display()), e))?
                .len();
            files.push(FileInfo { key, size });
        }
        files.sort_by_key(|f| (f.key.min, f.key.max));
        Ok(files)
    }

    fn put(&self, key: FileKey, local: &Path) -> Result<()> {
        let dir = self.level_dir(key.level);
        durable::create_dir_all(&dir)?;
        let mut src =
            fs::File::open(local).map_err(|e| Error::io(format!("open {}", local.display()), e))?;
        durable::write_file(&self.path(key), durable::Mode::CreateNew, |dst| {
            io::copy(&mut src, dst)
                .map(drop)
                .map_err(|e| Error::io(format!("copy {} to {}", local.display(), dir.display()), e))
        })
    }

    fn put_bytes(&self, key: FileKey, bytes: &[u8]) -> Result<()> {
        durable::create_dir_all(&self.level_dir(key.level))?;
        durable::write_bytes(&self.path(key), durable::Mode::CreateNew, bytes)
    }

    fn open(&self, key: FileKey) -> Result<Box<dyn Read + Send>> {
        let path = self.path(key);
        match fs::File::open(&path) {
            Ok(f) => Ok(Box::new(io::BufReader::with_capacity(256 * 1024, f))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(Error::NotFound(path.display().to_string()))
            }
            Err(e) => Err(Error::io(format!("open {}", path.display()), e)),
        }
    }

    fn delete(&self, key: FileKey) -> Result<()> {
        durable::remove_file(&self.path(key))
    }

    fn describe(&self) -> String {
        self.root.display().to_string()
    }

    fn init(&self) -> Result<()> {
        let dir = self.root.join("ltx");
        durable::create_dir_all(&dir)?;
        let probe = durable::temp_path(&dir.join("probe"));
        fs::write(&probe, b"")
            .and_then(|()| fs::remove_file(&probe))
            .map_err(|e| Error::Invalid(format!("replica folder {} is not writable: {e}", self.root.display())))
    }

    fn put_meta(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let path = self.root.join(name);
        if let Some(dir) = path.parent() {
            durable::create_dir_all(dir)?;
        }
        durable::write_bytes(&path, durable::Mode::Overwrite, bytes)
    }

    fn delete_meta(&self, name: &str) -> Result<()> {
        match fs::remove_file(self.root.join(name)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(Error::io(format!("remove {name}"), e)),
            _ => Ok(()),
        }
    }

    fn get_meta(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let path = self.root.join(name);
        match fs::read(&path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(format!("read {}", path.display()), e)),
        }
    }
}

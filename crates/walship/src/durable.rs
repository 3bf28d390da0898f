//! Crash-safe file writes: every file walship keeps is written temp file → fsync →
//! rename (or hard link, to never overwrite) → fsync of the folder. A failed fsync is
//! reported as [`Error::Durability`], which callers treat as fatal for that database
//! instead of retrying (the kernel may already have dropped the dirty pages).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// How [`write_file`] treats an existing file at the destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Replace it atomically.
    Overwrite,
    /// Leave it alone and fail with `AlreadyExists`.
    CreateNew,
}

/// Writes a file durably: `fill` writes the content into a temporary sibling, which is
/// then fsynced and moved into place, and the folder is fsynced.
pub fn write_file(
    path: &Path,
    mode: Mode,
    fill: impl FnOnce(&mut File) -> Result<()>,
) -> Result<()> {
    let dir = parent(path);
    let tmp = temp_path(path);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(|e| Error::io(format!("create {}", tmp.display()), e))?;
    let result = fill(&mut file)
        .and_then(|()| file.flush().map_err(|e| Error::io(format!("write {}", tmp.display()), e)))
        .and_then(|()| sync(&file, &tmp));
    drop(file);
    let result = result.and_then(|()| publish(&tmp, path, mode));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
        return result;
    }
    sync_dir(&dir)
}

/// Writes `bytes` durably to `path` (see [`write_file`]).
pub fn write_bytes(path: &Path, mode: Mode, bytes: &[u8]) -> Result<()> {
    write_file(path, mode, |f| {
        f.write_all(bytes)
            .map_err(|e| Error::io(format!("write {}", path.display()), e))
    })
}

/// Creates `dir` and its parents, fsyncing each new folder's parent.
pub fn create_dir_all(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(p) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dir_all(p)?;
    }
    match fs::create_dir(dir) {
        Ok(()) => sync_dir(&parent(dir)),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(Error::io(format!("create folder {}", dir.display()), e)),
    }
}

/// fsyncs an open file; failure is a durability error.
pub fn sync(file: &File, path: &Path) -> Result<()> {
    file.sync_all().map_err(|e| Error::Durability {
        path: path.to_path_buf(),
        cause: e,
    })
}

/// fsyncs a folder so that renames and creations inside it survive a crash.
pub fn sync_dir(dir: &Path) -> Result<()> {
    let f = File::open(dir).map_err(|e| Error::io(format!("open folder {}", dir.display()), e))?;
    sync(&f, dir)
}

/// Removes a file (missing is fine) and fsyncs its folder.
pub fn remove_file(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => sync_dir(&parent(path)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("remove {}", path.display()), e)),
    }
}

/// A unique temporary sibling of `path` (same folder, so the rename is atomic).
pub fn temp_path(path: &Path) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let name = path.file_name().map(|s| s.to_string_lossy()).unwrap_or_default();
    parent(path).join(format!(".{name}.tmp-{}-{n}", std::process::id()))
}

fn publish(tmp: &Path, path: &Path, mode: Mode) -> Result<()> {
    match mode {
        Mode::Overwrite => fs::rename(tmp, path)
            .map_err(|e| Error::io(format!("rename to {}", path.display()), e)),
        Mode::CreateNew => {
            fs::hard_link(tmp, path).map_err(|e| {
                if e.kind() == io::ErrorKind::AlreadyExists {
                    Error::AlreadyExists(path.to_path_buf())
                } else {
                    Error::io(format!("link {}", path.display()), e)
                }
            })?;
            fs::remove_file(tmp).map_err(|e| Error::io(format!("remove {}", tmp.display()), e))
        }
    }
}

fn parent(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

//! The library's error type: variants are what a caller acts on.

use std::path::PathBuf;

/// Result with the library's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors from capture, storage and restore.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // The causes below are part of each message and deliberately not `#[source]`s:
    // the CLI prints the whole chain, which would repeat them.
    /// An I/O operation failed; `what` says which.
    #[error("{what}: {cause}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        cause: std::io::Error,
    },
    /// fsync failed: the data may not be on disk. Replication of the database stops.
    #[error("fsync of {path} failed ({cause}); stopping, because data may not be on disk")]
    Durability {
        /// The file or folder whose fsync failed.
        path: PathBuf,
        /// The underlying error.
        cause: std::io::Error,
    },
    /// A file that must never be overwritten already exists.
    #[error("{0} already exists")]
    AlreadyExists(PathBuf),
    /// A file that was asked for does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// SQLite reported an error.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// An LTX file is malformed or fails its checksums.
    #[error("{file}: {cause}")]
    Ltx {
        /// Which file.
        file: String,
        /// What is wrong with it.
        cause: ltx::Error,
    },
    /// The database cannot be replicated as it is (not SQLite, not WAL, ...).
    #[error("{0}")]
    BadDatabase(String),
    /// The replica's files do not form a usable chain, or fail verification.
    #[error("{0}")]
    Corrupt(String),
    /// The WAL changed while it was being read; reading again will succeed.
    #[error("the WAL changed while it was read")]
    Interrupted,
    /// A configuration or argument is invalid.
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    /// An I/O error with a description of what was being done.
    pub fn io(what: impl Into<String>, cause: std::io::Error) -> Self {
        Error::Io { what: what.into(), cause }
    }

    /// An LTX format error in the named file.
    pub fn ltx(file: impl Into<String>, cause: ltx::Error) -> Self {
        Error::Ltx { file: file.into(), cause }
    }
}

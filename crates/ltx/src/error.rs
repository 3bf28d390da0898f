//! The crate's error type.

use crate::Checksum;

/// Everything that can go wrong while encoding or decoding LTX files or
/// reading a SQLite WAL.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O error from the underlying reader or writer.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The file does not start with the LTX magic `LTX1`.
    #[error("bad magic: not an LTX file")]
    BadMagic,
    /// A header field (or combination of fields) is invalid.
    #[error("invalid LTX header: {0}")]
    InvalidHeader(String),
    /// The trailer is inconsistent with the header (checksum rules).
    #[error("invalid LTX trailer: {0}")]
    InvalidTrailer(String),
    /// The page size is not a power of two in `512..=65536`.
    #[error("invalid page size: {0}")]
    InvalidPageSize(u32),
    /// Pages were not in the required order.
    #[error("page order violated: page {pgno} after page {prev}")]
    PageOrder {
        /// The previous page number (0 when `pgno` is the first page).
        prev: u32,
        /// The offending page number.
        pgno: u32,
    },
    /// A page number that may not appear in this file.
    #[error("invalid page {pgno}: {reason}")]
    InvalidPage {
        /// The offending page number.
        pgno: u32,
        /// Why the page number is not allowed.
        reason: &'static str,
    },
    /// Page data length differs from the header's page size.
    #[error("page size mismatch: expected {expected} bytes, got {actual}")]
    PageSizeMismatch {
        /// The page size from the header.
        expected: usize,
        /// The length that was supplied or decoded.
        actual: usize,
    },
    /// The bytes are not a well-formed LTX file: bad LZ4 data, bad sizes,
    /// truncation, trailing bytes or a page index that disagrees with the pages.
    #[error("corrupt LTX file: {0}")]
    Corrupt(String),
    /// A stored checksum does not match the computed one.
    #[error("{what} mismatch: expected {expected}, computed {actual}")]
    ChecksumMismatch {
        /// Which checksum failed, e.g. `"file checksum"`.
        what: &'static str,
        /// The value stored in the file.
        expected: Checksum,
        /// The value computed from the data.
        actual: Checksum,
    },
    /// A string is not a valid transaction ID.
    #[error("invalid transaction id: {0:?}")]
    InvalidTxId(String),
    /// The encoder or decoder was used in the wrong state (e.g. a page after
    /// `finish`, or any call after an earlier write failed).
    #[error("invalid state: {0}")]
    InvalidState(&'static str),
    /// The SQLite WAL header is invalid.
    #[error("invalid WAL: {0}")]
    InvalidWal(String),
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Maps an unexpected end of input to [`Error::Corrupt`] naming what was being
/// read; any other I/O error stays [`Error::Io`].
pub(crate) fn truncated(what: &str) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            Error::Corrupt(format!("truncated {what}"))
        } else {
            Error::Io(e)
        }
    }
}

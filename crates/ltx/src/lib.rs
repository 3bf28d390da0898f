//! The LTX file format as written by Litestream 0.5 (superfly/ltx, format
//! version 3), plus a SQLite WAL reader. Pure and synchronous: everything
//! works over `std::io::Read` / `Write` or byte slices.
//!
//! Module map:
//! - [`header`](Header): the 100-byte header, the 16-byte trailer, constants.
//! - [`Checksum`], [`DbChecksum`]: CRC-64/ISO page, database and file checksums.
//! - [`TxId`]: transaction IDs.
//! - [`Encoder`] / [`Decoder`] / [`decode_all`]: page frames (size-prefixed
//!   LZ4 blocks), the page index and the trailer; the encoder's LZ4 output
//!   is byte-identical to Litestream's.
//! - [`wal`]: SQLite WAL header, frames and checksums.
//!
//! The byte layout is documented in the crate's README.md.
#![deny(missing_docs, unsafe_code)]

mod checksum;
mod decoder;
mod encoder;
mod error;
mod header;
mod lz4;
mod page;
mod txid;
pub mod wal;

pub use checksum::{Checksum, DbChecksum};
pub use decoder::{Decoder, decode_all};
pub use encoder::Encoder;
pub use error::{Error, Result};
pub use header::{
    HEADER_FLAG_MASK, HEADER_FLAG_NO_CHECKSUM, HEADER_SIZE, Header, MAGIC, MAX_PAGE_SIZE,
    MIN_PAGE_SIZE, PENDING_BYTE, TRAILER_SIZE, Trailer, is_valid_page_size, lock_pgno,
};
pub use page::{PAGE_FLAG_SIZE, PAGE_HEADER_SIZE, PageIndexEntry};
pub use txid::TxId;

//! The form captured files take in a replica.
//!
//! Litestream 0.5 re-encodes files with its "no checksum" flag when it restores or
//! compacts, and refuses inputs whose header or trailer carry database checksums. So a
//! replica holds each file in that form (flag set, pre- and post-apply checksums zero,
//! file checksum recomputed), and walship keeps the real database checksums beside it
//! under its own prefix (`walship/checksums/<level>/<min>-<max>`), where Litestream
//! never looks. Restore reads them back to verify the chain of database states.

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::Path;

use ltx::{Checksum, Decoder, Encoder, HEADER_FLAG_NO_CHECKSUM};

use crate::error::{Error, Result};
use crate::store::{FileKey, Store};

/// The database checksums before and after a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Checksums {
    /// Before applying the file (zero for a snapshot).
    pub pre: Checksum,
    /// After applying it.
    pub post: Checksum,
}

/// Writes `local` to `out` in Litestream's form and returns the checksums it carried
/// (`None` when it carried none).
pub fn to_litestream_form(local: &Path, out: &Path) -> Result<Option<Checksums>> {
    let dst = File::create(out).map_err(|e| Error::io(format!("create {}", out.display()), e))?;
    let mut w = BufWriter::with_capacity(256 * 1024, dst);
    let sums = write_litestream_form(local, &mut w)?;
    w.flush().map_err(|e| Error::io(format!("write {}", out.display()), e))?;
    Ok(sums)
}

/// [`to_litestream_form`] into any writer (a `Vec` for small files).
pub fn write_litestream_form(local: &Path, out: impl Write) -> Result<Option<Checksums>> {
    let name = local.display().to_string();
    let src = File::open(local).map_err(|e| Error::io(format!("open {name}"), e))?;
    let mut dec = Decoder::new(BufReader::with_capacity(256 * 1024, src)).map_err(|e| Error::ltx(name.clone(), e))?;
    let mut header = dec.header().clone();
    let had = header.has_checksums();
    let pre = header.pre_apply_checksum;
    header.flags |= HEADER_FLAG_NO_CHECKSUM;
    header.pre_apply_checksum = Checksum::ZERO;
    let mut enc = Encoder::new(out, &header).map_err(|e| Error::ltx(name.clone(), e))?;
    let mut page = Vec::new();
    while let Some(pgno) = dec.next_page(&mut page).map_err(|e| Error::ltx(name.clone(), e))? {
        enc.encode_page_compressed(pgno, &page, dec.compressed()).map_err(|e| Error::ltx(name.clone(), e))?;
    }
    let trailer = dec.finish().map_err(|e| Error::ltx(name.clone(), e))?;
    enc.finish(Checksum::ZERO).map_err(|e| Error::ltx(name.clone(), e))?;
    enc.into_inner().flush().map_err(|e| Error::io(format!("write {name} in Litestream's form"), e))?;
    Ok(had.then_some(Checksums { pre, post: trailer.post_apply_checksum }))
}

/// Where a file's checksums live in a replica.
pub fn checksums_name(key: FileKey) -> String {
    format!("walship/checksums/{}/{}-{}", key.level, key.min, key.max)
}

/// Stores a file's checksums beside it.
pub fn put_checksums(store: &dyn Store, key: FileKey, sums: Checksums) -> Result<()> {
    store.put_meta(&checksums_name(key), format!("{} {}\n", sums.pre, sums.post).as_bytes())
}

/// Reads a file's checksums, if walship stored them (files written by Litestream have
/// none; a damaged record counts as none).
pub fn get_checksums(store: &dyn Store, key: FileKey) -> Result<Option<Checksums>> {
    let Some(bytes) = store.get_meta(&checksums_name(key))? else { return Ok(None) };
    let text = String::from_utf8_lossy(&bytes);
    let mut parts = text.split_whitespace().map(|p| u64::from_str_radix(p, 16).ok());
    Ok(match (parts.next().flatten(), parts.next().flatten()) {
        (Some(pre), Some(post)) => Some(Checksums { pre: Checksum(pre), post: Checksum(post) }),
        _ => None,
    })
}

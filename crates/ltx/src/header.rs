//! The 100-byte LTX header and the 16-byte trailer.

use crate::{Checksum, Error, Result, TxId};

/// The first four bytes of every LTX file.
pub const MAGIC: [u8; 4] = *b"LTX1";
/// Size of the encoded header in bytes.
pub const HEADER_SIZE: usize = 100;
/// Size of the encoded trailer in bytes.
pub const TRAILER_SIZE: usize = 16;
/// Header flag: the file tracks no database checksums (pre-/post-apply
/// checksums must be zero). Litestream 0.5 sets it on every file.
pub const HEADER_FLAG_NO_CHECKSUM: u32 = 1 << 1;
/// All header flags this format version defines.
pub const HEADER_FLAG_MASK: u32 = HEADER_FLAG_NO_CHECKSUM;
/// Largest SQLite page size.
pub const MAX_PAGE_SIZE: u32 = 65536;
/// Smallest SQLite page size.
pub const MIN_PAGE_SIZE: u32 = 512;
/// Byte offset of SQLite's lock (pending byte) page.
pub const PENDING_BYTE: u32 = 0x4000_0000;

/// Whether `page_size` is a power of two in `512..=65536`.
pub fn is_valid_page_size(page_size: u32) -> bool {
    page_size.is_power_of_two() && (MIN_PAGE_SIZE..=MAX_PAGE_SIZE).contains(&page_size)
}

/// Lock page number for a page size: the page holding byte offset 1 GiB
/// (`0x40000000 / page_size + 1`). It is never stored in an LTX file.
/// `page_size` must be non-zero (any valid page size).
pub fn lock_pgno(page_size: u32) -> u32 {
    PENDING_BYTE / page_size.max(1) + 1
}

/// The LTX file header (all integers big-endian on disk).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// Header flags ([`HEADER_FLAG_NO_CHECKSUM`] is the only one defined).
    pub flags: u32,
    /// Database page size in bytes.
    pub page_size: u32,
    /// Database size in pages after applying this file (0 = deleted database).
    pub commit: u32,
    /// First transaction ID covered by this file.
    pub min_txid: TxId,
    /// Last transaction ID covered by this file.
    pub max_txid: TxId,
    /// Creation time in milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// Database checksum before applying this file (zero for snapshots and
    /// for files with [`HEADER_FLAG_NO_CHECKSUM`]).
    pub pre_apply_checksum: Checksum,
    /// Offset of the source segment in the original WAL; zero if none.
    pub wal_offset: i64,
    /// Size of the source WAL segment; zero if none.
    pub wal_size: i64,
    /// Salt-1 of the source WAL header; zero if none.
    pub wal_salt1: u32,
    /// Salt-2 of the source WAL header; zero if none.
    pub wal_salt2: u32,
    /// ID of the node that wrote the file; zero if unset.
    pub node_id: u64,
}

impl Header {
    /// A header for pages of `page_size` bytes, a database of `commit` pages after the
    /// file, TXIDs `min..=max`, written at `timestamp_ms`, continuing from the database
    /// checksum `pre` (zero for a snapshot); no flags, no WAL source, no node ID.
    pub fn new(page_size: u32, commit: u32, min: TxId, max: TxId, timestamp_ms: i64, pre: Checksum) -> Header {
        Header {
            flags: 0,
            page_size,
            commit,
            min_txid: min,
            max_txid: max,
            timestamp_ms,
            pre_apply_checksum: pre,
            wal_offset: 0,
            wal_size: 0,
            wal_salt1: 0,
            wal_salt2: 0,
            node_id: 0,
        }
    }

    /// Encodes the header; bytes 80..100 (reserved) are zero.
    pub fn encode(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..4].copy_from_slice(&MAGIC);
        b[4..8].copy_from_slice(&self.flags.to_be_bytes());
        b[8..12].copy_from_slice(&self.page_size.to_be_bytes());
        b[12..16].copy_from_slice(&self.commit.to_be_bytes());
        b[16..24].copy_from_slice(&self.min_txid.0.to_be_bytes());
        b[24..32].copy_from_slice(&self.max_txid.0.to_be_bytes());
        b[32..40].copy_from_slice(&self.timestamp_ms.to_be_bytes());
        b[40..48].copy_from_slice(&self.pre_apply_checksum.0.to_be_bytes());
        b[48..56].copy_from_slice(&self.wal_offset.to_be_bytes());
        b[56..64].copy_from_slice(&self.wal_size.to_be_bytes());
        b[64..68].copy_from_slice(&self.wal_salt1.to_be_bytes());
        b[68..72].copy_from_slice(&self.wal_salt2.to_be_bytes());
        b[72..80].copy_from_slice(&self.node_id.to_be_bytes());
        b
    }

    /// Decodes and validates a header. Reserved bytes 80..100 are ignored,
    /// as Litestream does.
    pub fn decode(b: &[u8; HEADER_SIZE]) -> Result<Header> {
        if b[0..4] != MAGIC {
            return Err(Error::BadMagic);
        }
        let u32_at = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let u64_at = |i: usize| (u64::from(u32_at(i)) << 32) | u64::from(u32_at(i + 4));
        let h = Header {
            flags: u32_at(4),
            page_size: u32_at(8),
            commit: u32_at(12),
            min_txid: TxId(u64_at(16)),
            max_txid: TxId(u64_at(24)),
            timestamp_ms: u64_at(32) as i64,
            pre_apply_checksum: Checksum(u64_at(40)),
            wal_offset: u64_at(48) as i64,
            wal_size: u64_at(56) as i64,
            wal_salt1: u32_at(64),
            wal_salt2: u32_at(68),
            node_id: u64_at(72),
        };
        h.validate()?;
        Ok(h)
    }

    /// Checks the rules of Go's `Header.Validate`: known flags, valid page
    /// size, non-zero ordered TXIDs, non-negative WAL fields, salts/size only
    /// with an offset, and the pre-apply checksum rules (zero on snapshots
    /// and with [`HEADER_FLAG_NO_CHECKSUM`]; otherwise non-zero with the flag
    /// bit).
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidHeader(m));
        if self.flags & !HEADER_FLAG_MASK != 0 {
            return bad(format!("invalid flags: 0x{:08x}", self.flags));
        }
        if !is_valid_page_size(self.page_size) {
            return Err(Error::InvalidPageSize(self.page_size));
        }
        if self.min_txid.0 == 0 {
            return bad("minimum transaction id required".into());
        }
        if self.max_txid.0 == 0 {
            return bad("maximum transaction id required".into());
        }
        if self.min_txid > self.max_txid {
            return bad(format!(
                "transaction ids out of order: ({},{})",
                self.min_txid, self.max_txid
            ));
        }
        if self.wal_offset < 0 {
            return bad(format!(
                "wal offset cannot be negative: {}",
                self.wal_offset
            ));
        }
        if self.wal_size < 0 {
            return bad(format!("wal size cannot be negative: {}", self.wal_size));
        }
        if (self.wal_salt1 != 0 || self.wal_salt2 != 0) && self.wal_offset == 0 {
            return bad("wal offset required if salt exists".into());
        }
        if self.wal_offset == 0 && self.wal_size != 0 {
            return bad("wal offset required if wal size exists".into());
        }
        let pre = self.pre_apply_checksum;
        if self.is_snapshot() {
            if pre != Checksum::ZERO {
                return bad("pre-apply checksum must be zero on snapshots".into());
            }
        } else if !self.has_checksums() {
            if pre != Checksum::ZERO {
                return bad("pre-apply checksum not allowed with the no-checksum flag".into());
            }
        } else if pre == Checksum::ZERO {
            return bad("pre-apply checksum required on non-snapshot files".into());
        } else if !pre.has_flag() {
            return bad("invalid pre-apply checksum format (flag bit missing)".into());
        }
        Ok(())
    }

    /// A snapshot holds the whole database: its `min_txid` is 1.
    pub fn is_snapshot(&self) -> bool {
        self.min_txid == TxId(1)
    }

    /// Whether database checksums are tracked (the no-checksum flag is clear).
    pub fn has_checksums(&self) -> bool {
        self.flags & HEADER_FLAG_NO_CHECKSUM == 0
    }

    /// Lock page number for this header's page size.
    pub fn lock_pgno(&self) -> u32 {
        lock_pgno(self.page_size)
    }
}

/// The LTX file trailer (two big-endian u64).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Trailer {
    /// Database checksum after applying this file (zero with the
    /// no-checksum flag).
    pub post_apply_checksum: Checksum,
    /// CRC-64 of the file up to the trailer's last 8 bytes, flag bit set
    /// (see the crate README for the exact coverage).
    pub file_checksum: Checksum,
}

impl Trailer {
    /// Encodes the trailer.
    pub fn encode(&self) -> [u8; TRAILER_SIZE] {
        let mut b = [0u8; TRAILER_SIZE];
        b[0..8].copy_from_slice(&self.post_apply_checksum.0.to_be_bytes());
        b[8..16].copy_from_slice(&self.file_checksum.0.to_be_bytes());
        b
    }

    /// Decodes a trailer (no validation).
    pub fn decode(b: &[u8; TRAILER_SIZE]) -> Trailer {
        let mut post = [0u8; 8];
        let mut file = [0u8; 8];
        post.copy_from_slice(&b[0..8]);
        file.copy_from_slice(&b[8..16]);
        Trailer {
            post_apply_checksum: Checksum(u64::from_be_bytes(post)),
            file_checksum: Checksum(u64::from_be_bytes(file)),
        }
    }

    /// Checks the rules of Go's `Trailer.Validate`, which Litestream's
    /// encoder (and so its compactor) enforces: with the no-checksum flag the
    /// post-apply checksum must be zero, otherwise non-zero with the flag
    /// bit; the file checksum must be non-zero with the flag bit.
    pub fn validate(&self, header: &Header) -> Result<()> {
        check_post_apply(header, self.post_apply_checksum)?;
        if !self.file_checksum.has_flag() {
            return Err(Error::InvalidTrailer(
                "file checksum missing or without flag bit".into(),
            ));
        }
        Ok(())
    }
}

/// The post-apply checksum half of [`Trailer::validate`], plus Go's encoder
/// rule that a zero-page database (`commit == 0`) has post-apply checksum
/// [`Checksum::FLAG`] (so such files cannot carry the no-checksum flag).
pub(crate) fn check_post_apply(header: &Header, post: Checksum) -> Result<()> {
    let bad = |m: &str| Err(Error::InvalidTrailer(m.into()));
    if !header.has_checksums() {
        if post != Checksum::ZERO {
            return bad("post-apply checksum not allowed with the no-checksum flag");
        }
    } else if post == Checksum::ZERO {
        return bad("post-apply checksum required");
    } else if !post.has_flag() {
        return bad("invalid post-apply checksum format (flag bit missing)");
    }
    if header.commit == 0 && post != Checksum::FLAG {
        return bad("post-apply checksum must be the empty-database checksum for commit 0");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr() -> Header {
        Header {
            flags: HEADER_FLAG_NO_CHECKSUM,
            page_size: 4096,
            commit: 2,
            min_txid: TxId(2),
            max_txid: TxId(3),
            timestamp_ms: 1_700_000_000_000,
            pre_apply_checksum: Checksum::ZERO,
            wal_offset: 32,
            wal_size: 8272,
            wal_salt1: 1,
            wal_salt2: 2,
            node_id: 9,
        }
    }

    #[test]
    fn round_trip() {
        let h = hdr();
        assert_eq!(Header::decode(&h.encode()).unwrap(), h);
    }

    #[test]
    fn validation_rules() {
        let check = |f: &dyn Fn(&mut Header)| {
            let mut h = hdr();
            f(&mut h);
            h.validate()
        };
        assert!(matches!(
            check(&|h| h.flags = 1),
            Err(Error::InvalidHeader(_))
        ));
        assert!(matches!(
            check(&|h| h.page_size = 1 << 31),
            Err(Error::InvalidPageSize(_))
        ));
        assert!(matches!(
            check(&|h| h.page_size = 1000),
            Err(Error::InvalidPageSize(1000))
        ));
        assert!(check(&|h| h.min_txid = TxId(0)).is_err());
        assert!(check(&|h| h.min_txid = TxId(4)).is_err());
        assert!(check(&|h| h.wal_offset = -1).is_err());
        assert!(check(&|h| h.wal_offset = 0).is_err()); // salts without offset
        assert!(check(&|h| h.pre_apply_checksum = Checksum::FLAG).is_err());
        // Snapshot: pre-apply must be zero even with checksums tracked.
        assert!(
            check(&|h| {
                h.min_txid = TxId(1);
                h.flags = 0;
            })
            .is_ok()
        );
        assert!(
            check(&|h| {
                h.min_txid = TxId(1);
                h.flags = 0;
                h.pre_apply_checksum = Checksum::FLAG;
            })
            .is_err()
        );
        // Tracked, non-snapshot: pre-apply required with flag bit.
        assert!(check(&|h| h.flags = 0).is_err());
        assert!(
            check(&|h| {
                h.flags = 0;
                h.pre_apply_checksum = Checksum(5);
            })
            .is_err()
        );
        assert!(
            check(&|h| {
                h.flags = 0;
                h.pre_apply_checksum = Checksum(5 | 1 << 63);
            })
            .is_ok()
        );
    }

    #[test]
    fn bad_magic() {
        let mut b = hdr().encode();
        b[0] = b'X';
        assert!(matches!(Header::decode(&b), Err(Error::BadMagic)));
    }

    #[test]
    fn lock_page() {
        assert_eq!(lock_pgno(4096), 262145);
        assert_eq!(lock_pgno(65536), 16385);
        assert_eq!(lock_pgno(512), 2097153);
    }

    #[test]
    fn trailer_rules() {
        let h = hdr();
        let t = Trailer {
            post_apply_checksum: Checksum::ZERO,
            file_checksum: Checksum(1 << 63 | 7),
        };
        assert!(t.validate(&h).is_ok());
        assert_eq!(Trailer::decode(&t.encode()), t);
        let t2 = Trailer {
            post_apply_checksum: Checksum(1 << 63 | 3),
            ..t
        };
        assert!(matches!(t2.validate(&h), Err(Error::InvalidTrailer(_))));
        let tracked = Header {
            flags: 0,
            pre_apply_checksum: Checksum::FLAG,
            ..h
        };
        assert!(t2.validate(&tracked).is_ok());
        assert!(t.validate(&tracked).is_err());
        let empty = Header {
            commit: 0,
            ..tracked
        };
        assert!(t2.validate(&empty).is_err());
        assert!(
            Trailer {
                post_apply_checksum: Checksum::FLAG,
                ..t
            }
            .validate(&empty)
            .is_ok()
        );
    }
}

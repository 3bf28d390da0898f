//! LTX checksums: CRC-64/ISO as Go's `hash/crc64` computes it, with the high
//! bit ([`Checksum::FLAG`]) always set on real checksums so they are non-zero.

use std::fmt;

/// A running CRC-64/GO-ISO (SIMD-accelerated: checksums are most of the CPU that
/// capture and restore spend).
pub(crate) type Crc64Digest = crc_fast::Digest;

/// A new CRC-64/ISO digest (the file checksum hasher).
pub(crate) fn digest() -> Crc64Digest {
    crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc64GoIso)
}

/// A 64-bit LTX checksum. Zero means "absent"; real checksums carry
/// [`Checksum::FLAG`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct Checksum(pub u64);

impl Checksum {
    /// The absent checksum.
    pub const ZERO: Checksum = Checksum(0);
    /// The high bit set on every real checksum (Go's `ChecksumFlag`, `1 << 63`).
    pub const FLAG: Checksum = Checksum(1 << 63);

    /// Checksum of one database page: `FLAG | crc64(pgno as u32 BE ‖ data)`.
    pub fn page(pgno: u32, data: &[u8]) -> Checksum {
        let mut d = digest();
        d.update(&pgno.to_be_bytes());
        d.update(data);
        Checksum(Self::FLAG.0 | d.finalize())
    }

    /// Adds or removes (XOR is its own inverse) a page checksum to or from a
    /// database checksum; the result always has the flag bit set, as Go's
    /// `ChecksumFlag | (a ^ b)`.
    pub fn xor(self, other: Checksum) -> Checksum {
        Checksum(Self::FLAG.0 | (self.0 ^ other.0))
    }

    /// Whether the flag bit is set.
    pub fn has_flag(self) -> bool {
        self.0 & Self::FLAG.0 != 0
    }
}

impl fmt::Display for Checksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Incremental database checksum: the XOR of the page checksums of every
/// page (the lock page excluded), with the flag bit set. The checksum of an
/// empty database is [`Checksum::FLAG`], as in Go.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct DbChecksum {
    acc: u64,
}

impl DbChecksum {
    /// The checksum of an empty database.
    pub fn new() -> DbChecksum {
        DbChecksum::default()
    }

    /// Adds a page checksum (e.g. a page that now exists).
    pub fn add(&mut self, page: Checksum) {
        self.acc ^= page.0;
    }

    /// Removes a page checksum (e.g. the old content of an overwritten page).
    pub fn remove(&mut self, page: Checksum) {
        self.acc ^= page.0;
    }

    /// The current database checksum (flag bit always set).
    pub fn value(&self) -> Checksum {
        Checksum(Checksum::FLAG.0 | self.acc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_matches_go_iso_check_value() {
        // Go: crc64.Checksum([]byte("123456789"), crc64.MakeTable(crc64.ISO)).
        assert_eq!(crc_fast::checksum(crc_fast::CrcAlgorithm::Crc64GoIso, b"123456789"), 0xb90956c775a41001);
    }

    #[test]
    fn page_checksum_hashes_pgno_then_data() {
        let data = [7u8; 512];
        let mut raw = 3u32.to_be_bytes().to_vec();
        raw.extend_from_slice(&data);
        assert_eq!(
            Checksum::page(3, &data),
            Checksum(crc::Crc::<u64>::new(&crc::CRC_64_GO_ISO).checksum(&raw) | (1 << 63))
        );
    }

    #[test]
    fn simd_crc_equals_the_table_crc_for_any_split() {
        let table = crc::Crc::<u64>::new(&crc::CRC_64_GO_ISO);
        let data: Vec<u8> = (0..70_001u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        for split in [0, 1, 15, 16, 17, 4096, 65_537, 70_001] {
            let mut d = digest();
            d.update(&data[..split]);
            d.update(&data[split..]);
            assert_eq!(d.finalize(), table.checksum(&data), "split at {split}");
        }
    }

    #[test]
    fn db_checksum_add_remove() {
        let a = Checksum::page(1, &[1; 512]);
        let b = Checksum::page(2, &[2; 512]);
        let mut db = DbChecksum::new();
        assert_eq!(db.value(), Checksum::FLAG);
        db.add(a);
        db.add(b);
        assert_eq!(db.value(), Checksum::FLAG.xor(a).xor(b));
        db.remove(a);
        assert_eq!(db.value(), b);
        db.remove(b);
        assert_eq!(db.value(), Checksum::FLAG);
    }
}

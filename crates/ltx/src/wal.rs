//! SQLite WAL reader: header, frame headers, the cumulative checksum and a
//! sequential frame reader. Pure: works over any [`Read`].
//!
//! Layout (all header integers big-endian): a 32-byte header (magic,
//! version, page size, checkpoint sequence, salt-1, salt-2, checksum-1,
//! checksum-2), then frames of a 24-byte frame header (pgno, commit size —
//! non-zero only on a transaction's last frame — salt-1, salt-2, checksum-1,
//! checksum-2) followed by one page.

use std::io::{ErrorKind, Read};

use crate::header::is_valid_page_size;
use crate::{Error, Result};

/// Size of the WAL header.
pub const WAL_HEADER_SIZE: usize = 32;
/// Size of a WAL frame header.
pub const FRAME_HEADER_SIZE: usize = 24;
/// WAL magic with little-endian checksums.
pub const WAL_MAGIC_LE: u32 = 0x377f_0682;
/// WAL magic with big-endian checksums.
pub const WAL_MAGIC_BE: u32 = 0x377f_0683;
/// The only WAL format version.
pub const WAL_VERSION: u32 = 3_007_000;

fn be32(b: &[u8], i: usize) -> u32 {
    u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

/// The 32-byte WAL header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalHeader {
    /// [`WAL_MAGIC_LE`] or [`WAL_MAGIC_BE`].
    pub magic: u32,
    /// Format version, [`WAL_VERSION`].
    pub version: u32,
    /// Page size in bytes (65536 is stored on disk as 1).
    pub page_size: u32,
    /// Checkpoint sequence number.
    pub checkpoint_seq: u32,
    /// Salt-1, copied into every frame of this WAL generation.
    pub salt1: u32,
    /// Salt-2, copied into every frame of this WAL generation.
    pub salt2: u32,
    /// Checksum-1 over header bytes 0..24; seeds frame 0's checksum.
    pub checksum1: u32,
    /// Checksum-2 over header bytes 0..24; seeds frame 0's checksum.
    pub checksum2: u32,
}

impl WalHeader {
    /// A header with its checksum computed (for tests and fixtures).
    pub fn new(
        big_endian: bool,
        page_size: u32,
        checkpoint_seq: u32,
        salt1: u32,
        salt2: u32,
    ) -> WalHeader {
        let mut h = WalHeader {
            magic: if big_endian {
                WAL_MAGIC_BE
            } else {
                WAL_MAGIC_LE
            },
            version: WAL_VERSION,
            page_size,
            checkpoint_seq,
            salt1,
            salt2,
            checksum1: 0,
            checksum2: 0,
        };
        (h.checksum1, h.checksum2) = wal_checksum(big_endian, (0, 0), &h.encode()[..24]);
        h
    }

    /// Decodes the first 32 bytes of `b`; checks the magic, version, page
    /// size and header checksum.
    pub fn decode(b: &[u8]) -> Result<WalHeader> {
        let bad = |m: String| Err(Error::InvalidWal(m));
        if b.len() < WAL_HEADER_SIZE {
            return bad(format!(
                "header needs {WAL_HEADER_SIZE} bytes, got {}",
                b.len()
            ));
        }
        let raw_page_size = be32(b, 8);
        let h = WalHeader {
            magic: be32(b, 0),
            version: be32(b, 4),
            page_size: if raw_page_size == 1 {
                65536
            } else {
                raw_page_size
            },
            checkpoint_seq: be32(b, 12),
            salt1: be32(b, 16),
            salt2: be32(b, 20),
            checksum1: be32(b, 24),
            checksum2: be32(b, 28),
        };
        if h.magic != WAL_MAGIC_LE && h.magic != WAL_MAGIC_BE {
            return bad(format!("bad magic 0x{:08x}", h.magic));
        }
        if h.version != WAL_VERSION {
            return bad(format!("unsupported version {}", h.version));
        }
        if !is_valid_page_size(h.page_size) {
            return bad(format!("invalid page size {raw_page_size}"));
        }
        let sum = wal_checksum(h.big_endian_checksums(), (0, 0), &b[..24]);
        if sum != (h.checksum1, h.checksum2) {
            return bad(format!(
                "header checksum mismatch: stored {:08x}{:08x}, computed {:08x}{:08x}",
                h.checksum1, h.checksum2, sum.0, sum.1
            ));
        }
        Ok(h)
    }

    /// Whether checksums are computed over big-endian words (magic low bit).
    pub fn big_endian_checksums(&self) -> bool {
        self.magic & 1 == 1
    }

    /// Encodes the header as stored (page size 65536 written as 1).
    pub fn encode(&self) -> [u8; WAL_HEADER_SIZE] {
        let page_size = if self.page_size == 65536 {
            1
        } else {
            self.page_size
        };
        let fields = [
            self.magic,
            self.version,
            page_size,
            self.checkpoint_seq,
            self.salt1,
            self.salt2,
            self.checksum1,
            self.checksum2,
        ];
        let mut b = [0u8; WAL_HEADER_SIZE];
        for (chunk, v) in b.chunks_exact_mut(4).zip(fields) {
            chunk.copy_from_slice(&v.to_be_bytes());
        }
        b
    }
}

/// A 24-byte WAL frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// Page number of the page that follows.
    pub pgno: u32,
    /// Database size in pages after this commit; non-zero only on a
    /// transaction's last frame.
    pub commit: u32,
    /// Must equal the WAL header's salt-1.
    pub salt1: u32,
    /// Must equal the WAL header's salt-2.
    pub salt2: u32,
    /// Cumulative checksum-1 through this frame.
    pub checksum1: u32,
    /// Cumulative checksum-2 through this frame.
    pub checksum2: u32,
}

impl FrameHeader {
    /// Decodes the first 24 bytes of `b`; missing bytes read as zero (which
    /// never forms a valid frame, as pgno 0 and the salts fail).
    pub fn decode(b: &[u8]) -> FrameHeader {
        let mut a = [0u8; FRAME_HEADER_SIZE];
        let n = b.len().min(FRAME_HEADER_SIZE);
        a[..n].copy_from_slice(&b[..n]);
        FrameHeader {
            pgno: be32(&a, 0),
            commit: be32(&a, 4),
            salt1: be32(&a, 8),
            salt2: be32(&a, 12),
            checksum1: be32(&a, 16),
            checksum2: be32(&a, 20),
        }
    }

    /// Encodes the frame header.
    pub fn encode(&self) -> [u8; FRAME_HEADER_SIZE] {
        let fields = [
            self.pgno,
            self.commit,
            self.salt1,
            self.salt2,
            self.checksum1,
            self.checksum2,
        ];
        let mut b = [0u8; FRAME_HEADER_SIZE];
        for (chunk, v) in b.chunks_exact_mut(4).zip(fields) {
            chunk.copy_from_slice(&v.to_be_bytes());
        }
        b
    }

    /// A valid frame header for `page` following checksum `seed` in the WAL
    /// described by `wal` (for tests and fixtures). Its
    /// `(checksum1, checksum2)` seeds the next frame.
    pub fn compute(
        wal: &WalHeader,
        seed: (u32, u32),
        pgno: u32,
        commit: u32,
        page: &[u8],
    ) -> FrameHeader {
        let mut h = FrameHeader {
            pgno,
            commit,
            salt1: wal.salt1,
            salt2: wal.salt2,
            checksum1: 0,
            checksum2: 0,
        };
        let be = wal.big_endian_checksums();
        let s = wal_checksum(be, seed, &h.encode()[..8]);
        (h.checksum1, h.checksum2) = wal_checksum(be, s, page);
        h
    }

    /// Whether this frame ends a transaction.
    pub fn is_commit(&self) -> bool {
        self.commit != 0
    }
}

/// SQLite's rolling WAL checksum: for each pair of 32-bit words `(x0, x1)`
/// (read in the given byte order), `s0 += x0 + s1; s1 += x1 + s0`, wrapping.
/// `data.len()` should be a multiple of 8; a shorter tail is ignored.
pub fn wal_checksum(big_endian: bool, seed: (u32, u32), data: &[u8]) -> (u32, u32) {
    let word = |b: &[u8]| {
        let a = [b[0], b[1], b[2], b[3]];
        if big_endian {
            u32::from_be_bytes(a)
        } else {
            u32::from_le_bytes(a)
        }
    };
    let (mut s0, mut s1) = seed;
    for pair in data.chunks_exact(8) {
        s0 = s0.wrapping_add(word(&pair[..4])).wrapping_add(s1);
        s1 = s1.wrapping_add(word(&pair[4..])).wrapping_add(s0);
    }
    (s0, s1)
}

/// Reads frames sequentially from a reader positioned at a frame boundary.
/// A frame is valid when it is complete, has a non-zero pgno, carries the
/// header's salts and its checksum continues the cumulative checksum; the
/// first invalid frame ends the log (`Ok(None)` from then on), as in SQLite.
/// Whether a frame is committed (followed by a commit frame) is the
/// caller's concern.
pub struct FrameReader<R: Read> {
    r: R,
    header: WalHeader,
    checksum: (u32, u32),
    frames: u64,
    buf: Vec<u8>,
    done: bool,
}

impl<R: Read> FrameReader<R> {
    /// A reader starting at a frame boundary; `seed` is the checksum after
    /// the previous frame, or the header's `(checksum1, checksum2)` for
    /// frame 0.
    pub fn new(r: R, header: &WalHeader, seed: (u32, u32)) -> Self {
        FrameReader {
            r,
            header: *header,
            checksum: seed,
            frames: 0,
            buf: vec![0; FRAME_HEADER_SIZE + header.page_size as usize],
            done: false,
        }
    }

    /// The next valid frame and its page, or `None` at the end of the valid
    /// log. I/O errors other than a short read are returned. (Not an
    /// `Iterator`: the page borrows the reader's buffer.)
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Option<(FrameHeader, &[u8])>> {
        if self.done {
            return Ok(None);
        }
        if read_full(&mut self.r, &mut self.buf)? < self.buf.len() {
            self.done = true;
            return Ok(None);
        }
        let fh = FrameHeader::decode(&self.buf);
        let be = self.header.big_endian_checksums();
        let sum = wal_checksum(be, self.checksum, &self.buf[..8]);
        let sum = wal_checksum(be, sum, &self.buf[FRAME_HEADER_SIZE..]);
        let valid = fh.pgno != 0
            && fh.salt1 == self.header.salt1
            && fh.salt2 == self.header.salt2
            && sum == (fh.checksum1, fh.checksum2);
        if !valid {
            self.done = true;
            return Ok(None);
        }
        self.checksum = sum;
        self.frames += 1;
        Ok(Some((fh, &self.buf[FRAME_HEADER_SIZE..])))
    }

    /// Running checksum after the last returned frame.
    pub fn checksum(&self) -> (u32, u32) {
        self.checksum
    }

    /// Number of valid frames returned so far.
    pub fn frames_read(&self) -> u64 {
        self.frames
    }
}

/// Fills `buf` as far as the input allows; returns the bytes read.
fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::Io(e)),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_by_hand() {
        // Words (LE): x0=1, x1=2, x2=3, x3=4.
        let data = [1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4, 0, 0, 0];
        // s0=0+1+0=1, s1=0+2+1=3; s0=1+3+3=7, s1=3+4+7=14.
        assert_eq!(wal_checksum(false, (0, 0), &data), (7, 14));
        // Same bytes as BE words: 0x01000000, 0x02000000, ...
        let (a, b) = (0x0100_0000u32, 0x0200_0000u32);
        let (s0, s1) = (a, b.wrapping_add(a));
        let s0b = s0.wrapping_add(0x0300_0000).wrapping_add(s1);
        let s1b = s1.wrapping_add(0x0400_0000).wrapping_add(s0b);
        assert_eq!(wal_checksum(true, (0, 0), &data), (s0b, s1b));
        // Wrapping and seeding.
        assert_eq!(
            wal_checksum(false, (u32::MAX, 1), &[1, 0, 0, 0, 0, 0, 0, 0]),
            (1, 2)
        );
    }

    #[test]
    fn header_round_trip_and_validation() {
        for be in [false, true] {
            for ps in [512, 4096, 65536] {
                let h = WalHeader::new(be, ps, 3, 0xdead_beef, 0x1234_5678);
                let b = h.encode();
                assert_eq!(WalHeader::decode(&b).unwrap(), h);
                assert_eq!(h.big_endian_checksums(), be);
                if ps == 65536 {
                    assert_eq!(be32(&b, 8), 1);
                }
            }
        }
        let good = WalHeader::new(false, 4096, 0, 1, 2).encode();
        for (i, v) in [(0usize, 0x377f_0684u32), (4, 3_007_001), (8, 1000), (16, 9)] {
            let mut b = good;
            b[i..i + 4].copy_from_slice(&v.to_be_bytes());
            assert!(
                matches!(WalHeader::decode(&b), Err(Error::InvalidWal(_))),
                "field at {i}"
            );
        }
        assert!(WalHeader::decode(&good[..31]).is_err());
    }

    #[test]
    fn frames_stop_at_short_or_bad() {
        for be in [false, true] {
            frames_stop_at_short_or_bad_in(be);
        }
    }

    fn frames_stop_at_short_or_bad_in(big_endian: bool) {
        let h = WalHeader::new(big_endian, 512, 0, 7, 8);
        let mut wal = Vec::new();
        let mut seed = (h.checksum1, h.checksum2);
        for pgno in 1..=3u32 {
            let page = vec![pgno as u8; 512];
            let fh = FrameHeader::compute(&h, seed, pgno, if pgno == 3 { 3 } else { 0 }, &page);
            seed = (fh.checksum1, fh.checksum2);
            wal.extend_from_slice(&fh.encode());
            wal.extend_from_slice(&page);
        }
        wal.extend_from_slice(&[0; 100]); // short trailing frame
        let mut r = FrameReader::new(&wal[..], &h, (h.checksum1, h.checksum2));
        let mut got = Vec::new();
        while let Some((fh, page)) = r.next().unwrap() {
            assert_eq!(page, vec![fh.pgno as u8; 512].as_slice());
            got.push((fh.pgno, fh.is_commit()));
        }
        assert_eq!(got, [(1, false), (2, false), (3, true)]);
        assert_eq!(r.frames_read(), 3);
        assert_eq!(r.checksum(), seed);
        assert!(r.next().unwrap().is_none());

        // Resume mid-file from the checksum after frame 1.
        let frame = FRAME_HEADER_SIZE + 512;
        let f1 = FrameHeader::decode(&wal[..24]);
        let mut r = FrameReader::new(&wal[frame..], &h, (f1.checksum1, f1.checksum2));
        assert_eq!(r.next().unwrap().unwrap().0.pgno, 2);
        // Wrong seed: first frame invalid.
        let mut r = FrameReader::new(&wal[frame..], &h, (0, 0));
        assert!(r.next().unwrap().is_none());
    }

    #[test]
    fn io_error_is_an_error() {
        struct Failing;
        impl Read for Failing {
            fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
                Err(std::io::Error::other("disk on fire"))
            }
        }
        let h = WalHeader::new(false, 512, 0, 7, 8);
        let mut r = FrameReader::new(Failing, &h, (0, 0));
        assert!(matches!(r.next(), Err(Error::Io(_))));
    }
}

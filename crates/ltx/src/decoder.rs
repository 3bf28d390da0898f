//! Streaming LTX decoder.

use std::io::{ErrorKind, Read};

use crate::checksum::digest;
use crate::error::truncated;
use crate::lz4::{compress_bound, decompress_exact};
use crate::page::{PAGE_FLAG_SIZE, PAGE_HEADER_SIZE, PageIndex, PageIndexEntry, check_page_order};
use crate::{Checksum, DbChecksum, Error, HEADER_SIZE, Header, Result, TRAILER_SIZE, Trailer};

/// Longest uvarint encoding of a u64.
const MAX_UVARINT_LEN: usize = 10;

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Pages,
    PagesDone,
    Finished(Trailer),
}

/// Streaming decoder over any reader. Checks every page frame (order as the
/// encoder requires, LZ4 data expanding to exactly one page), the page index
/// against the frames read, and at [`Decoder::finish`] the file checksum and
/// that nothing follows the trailer. For snapshots that track checksums it
/// also checks the post-apply checksum, as Litestream's decoder does.
pub struct Decoder<R: Read> {
    r: R,
    header: Header,
    hash: crate::checksum::Crc64Digest,
    /// Bytes consumed so far.
    n: u64,
    prev_pgno: u32,
    /// The frames read, which the page index must list exactly.
    frames: PageIndex,
    /// Whether the page index was read and matched the frames.
    index_checked: bool,
    compressed: Vec<u8>,
    /// Running database checksum, for tracked snapshots only.
    db_checksum: Option<DbChecksum>,
    state: State,
}

impl<R: Read> Decoder<R> {
    /// Reads and validates the header.
    pub fn new(mut r: R) -> Result<Self> {
        let mut b = [0u8; HEADER_SIZE];
        r.read_exact(&mut b).map_err(truncated("header"))?;
        let header = Header::decode(&b)?;
        let mut hash = digest();
        hash.update(&b);
        let db_checksum = (header.is_snapshot() && header.has_checksums()).then(DbChecksum::new);
        Ok(Decoder {
            r,
            header,
            hash,
            n: HEADER_SIZE as u64,
            prev_pgno: 0,
            frames: PageIndex::default(),
            index_checked: false,
            compressed: Vec::new(),
            db_checksum,
            state: State::Pages,
        })
    }

    /// The validated header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The page index read from the file (empty until [`Decoder::finish`] has checked
    /// it against the page frames).
    pub fn page_index(&self) -> impl Iterator<Item = PageIndexEntry> + '_ {
        self.frames.entries().take(if self.index_checked { usize::MAX } else { 0 })
    }

    /// Reads the next page into `buf` (resized to the page size); returns
    /// `Ok(Some(pgno))`, or `Ok(None)` at the end-of-pages marker (and on
    /// every later call).
    pub fn next_page(&mut self, buf: &mut Vec<u8>) -> Result<Option<u32>> {
        Ok(self.read_page(buf, false)?.map(|(pgno, _)| pgno))
    }

    /// Like [`Decoder::next_page`], and also returns the page's checksum
    /// ([`Checksum::page`]), computed once for the caller and the decoder's own
    /// snapshot check.
    pub fn next_page_with_checksum(&mut self, buf: &mut Vec<u8>) -> Result<Option<(u32, Checksum)>> {
        Ok(self.read_page(buf, true)?.map(|(pgno, sum)| (pgno, sum.expect("asked for"))))
    }

    fn read_page(&mut self, buf: &mut Vec<u8>, want_sum: bool) -> Result<Option<(u32, Option<Checksum>)>> {
        if self.state != State::Pages {
            return Ok(None);
        }
        let mut ph = [0u8; PAGE_HEADER_SIZE];
        self.read_hashed(&mut ph, "page header")?;
        let pgno = u32::from_be_bytes([ph[0], ph[1], ph[2], ph[3]]);
        let flags = u16::from_be_bytes([ph[4], ph[5]]);
        if pgno == 0 && flags == 0 {
            self.state = State::PagesDone;
            return Ok(None);
        }
        if flags != PAGE_FLAG_SIZE {
            return Err(Error::Corrupt(format!(
                "page {pgno}: unsupported page flags 0x{flags:04x} (only size-prefixed LZ4 blocks are supported)"
            )));
        }
        check_page_order(&self.header, self.prev_pgno, pgno)?;

        let mut size = [0u8; 4];
        self.read_hashed(&mut size, "page size prefix")?;
        let size = u32::from_be_bytes(size) as usize;
        let page_size = self.header.page_size as usize;
        if size == 0 || size > compress_bound(page_size) {
            return Err(Error::Corrupt(format!(
                "page {pgno}: compressed size {size} out of range"
            )));
        }
        self.compressed.resize(size, 0);
        self.r
            .read_exact(&mut self.compressed)
            .map_err(truncated("page data"))?;
        buf.resize(page_size, 0);
        decompress_exact(&self.compressed, buf)
            .map_err(|e| Error::Corrupt(format!("page {pgno}: {e}")))?;
        self.hash.update(buf);

        let frame = (PAGE_HEADER_SIZE + 4 + size) as u64;
        self.frames.push(PageIndexEntry {
            pgno,
            offset: self.n - (PAGE_HEADER_SIZE + 4) as u64,
            size: frame,
        });
        self.n += size as u64;
        self.prev_pgno = pgno;
        let sum = (want_sum || self.db_checksum.is_some()).then(|| Checksum::page(pgno, buf));
        if let (Some(db), Some(sum)) = (&mut self.db_checksum, sum) {
            db.add(sum);
        }
        Ok(Some((pgno, sum)))
    }

    /// The LZ4 block of the page last returned by [`Decoder::next_page`] (for
    /// [`crate::Encoder::encode_page_compressed`]).
    pub fn compressed(&self) -> &[u8] {
        &self.compressed
    }

    /// Consumes the remaining pages, the page index and the trailer; checks
    /// the index, the file checksum, that the input ends there, and (tracked
    /// snapshots only) the post-apply checksum. Returns the trailer; a second
    /// call returns it again.
    pub fn finish(&mut self) -> Result<Trailer> {
        if let State::Finished(t) = self.state {
            return Ok(t);
        }
        let mut scratch = Vec::new();
        while self.next_page(&mut scratch)?.is_some() {}
        self.read_index()?;

        let mut post = [0u8; 8];
        self.read_hashed(&mut post, "trailer")?;
        let mut t = [0u8; TRAILER_SIZE];
        t[..8].copy_from_slice(&post);
        self.r
            .read_exact(&mut t[8..])
            .map_err(truncated("trailer"))?;
        let trailer = Trailer::decode(&t);

        let actual = Checksum(Checksum::FLAG.0 | self.hash.finalize());
        if actual != trailer.file_checksum {
            return Err(Error::ChecksumMismatch {
                what: "file checksum",
                expected: trailer.file_checksum,
                actual,
            });
        }
        if let Some(db) = self.db_checksum
            && db.value() != trailer.post_apply_checksum
        {
            return Err(Error::ChecksumMismatch {
                what: "snapshot post-apply checksum",
                expected: trailer.post_apply_checksum,
                actual: db.value(),
            });
        }
        let mut extra = [0u8; 1];
        loop {
            match self.r.read(&mut extra) {
                Ok(0) => break,
                Ok(_) => return Err(Error::Corrupt("trailing bytes after the trailer".into())),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::Io(e)),
            }
        }
        self.state = State::Finished(trailer);
        Ok(trailer)
    }

    /// Reads the page index and checks it lists exactly the frames read.
    fn read_index(&mut self) -> Result<()> {
        let start = self.n;
        let frames = std::mem::take(&mut self.frames);
        let mut expected = frames.entries();
        let mut listed = 0usize;
        loop {
            let pgno = self.read_uvarint()?;
            if pgno == 0 {
                break;
            }
            let offset = self.read_uvarint()?;
            let size = self.read_uvarint()?;
            let entry = u32::try_from(pgno)
                .ok()
                .map(|pgno| PageIndexEntry { pgno, offset, size });
            match entry {
                Some(e) if expected.next() == Some(e) => listed += 1,
                _ => {
                    return Err(Error::Corrupt(format!(
                        "page index entry for page {pgno} does not match the page frames"
                    )));
                }
            }
        }
        if listed != frames.len() {
            return Err(Error::Corrupt("page index is missing pages".into()));
        }
        drop(expected);
        self.frames = frames;
        self.index_checked = true;
        let len = self.n - start;
        let mut stored = [0u8; 8];
        self.read_hashed(&mut stored, "page index size")?;
        let stored = u64::from_be_bytes(stored);
        if stored != len {
            return Err(Error::Corrupt(format!(
                "page index size is {stored}, index has {len} bytes"
            )));
        }
        Ok(())
    }

    fn read_uvarint(&mut self) -> Result<u64> {
        let mut v = 0u64;
        for i in 0..MAX_UVARINT_LEN {
            let mut b = [0u8; 1];
            self.read_hashed(&mut b, "page index")?;
            let low = u64::from(b[0] & 0x7f);
            if i == MAX_UVARINT_LEN - 1 && b[0] > 1 {
                break;
            }
            v |= low << (7 * i);
            if b[0] < 0x80 {
                return Ok(v);
            }
        }
        Err(Error::Corrupt("page index varint overflows u64".into()))
    }

    /// Reads exactly `b.len()` bytes and adds them to the file checksum.
    fn read_hashed(&mut self, b: &mut [u8], what: &str) -> Result<()> {
        self.r.read_exact(b).map_err(truncated(what))?;
        self.hash.update(b);
        self.n += b.len() as u64;
        Ok(())
    }
}

/// Decodes a whole file from bytes: header, pages `(pgno, bytes)` and trailer.
#[allow(clippy::type_complexity)] // the plain tuple is the documented API
pub fn decode_all(bytes: &[u8]) -> Result<(Header, Vec<(u32, Vec<u8>)>, Trailer)> {
    let mut dec = Decoder::new(bytes)?;
    let mut pages = Vec::new();
    let mut buf = Vec::new();
    while let Some(pgno) = dec.next_page(&mut buf)? {
        pages.push((pgno, buf.clone()));
    }
    let trailer = dec.finish()?;
    Ok((dec.header().clone(), pages, trailer))
}

//! Streaming LTX encoder.

use std::io::Write;

use crate::checksum::digest;
use crate::header::check_post_apply;
use crate::lz4::{Compressor, compress_bound};
use crate::page::{PAGE_FLAG_SIZE, PAGE_HEADER_SIZE, PageIndex, PageIndexEntry, check_page_order};
use crate::{Checksum, Error, Header, Result, Trailer};

enum State {
    Pages,
    Failed,
    Finished(Trailer),
}

/// Streaming encoder. Pages must be written in strictly ascending pgno
/// order (a snapshot must hold every page `1..=commit` except the lock
/// page), never beyond `commit`, each exactly `page_size` bytes. The output
/// is byte-identical to Litestream's for the same header and pages.
pub struct Encoder<W: Write> {
    w: W,
    header: Header,
    hash: crate::checksum::Crc64Digest,
    /// Bytes written so far.
    n: u64,
    prev_pgno: u32,
    index: PageIndex,
    compressor: Compressor,
    frame: Vec<u8>,
    state: State,
}

impl<W: Write> Encoder<W> {
    /// Validates `header` and writes it.
    pub fn new(mut w: W, header: &Header) -> Result<Self> {
        header.validate()?;
        let bytes = header.encode();
        w.write_all(&bytes)?;
        let mut hash = digest();
        hash.update(&bytes);
        Ok(Encoder {
            w,
            header: header.clone(),
            hash,
            n: bytes.len() as u64,
            prev_pgno: 0,
            index: PageIndex::default(),
            compressor: Compressor::new(),
            frame: Vec::new(),
            state: State::Pages,
        })
    }

    /// The header this encoder writes.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Compresses and writes one page frame.
    pub fn encode_page(&mut self, pgno: u32, data: &[u8]) -> Result<()> {
        self.write_frame(pgno, data, None)
    }

    /// Writes one page frame whose LZ4 block is already known: `compressed` must be
    /// the block a [`crate::Decoder`] read for this very `data` (see
    /// [`crate::Decoder::compressed`]). Re-framing a file this way (new header or
    /// trailer, same pages) costs no compression.
    pub fn encode_page_compressed(&mut self, pgno: u32, data: &[u8], compressed: &[u8]) -> Result<()> {
        if compressed.is_empty() || compressed.len() > compress_bound(self.header.page_size as usize) {
            return Err(Error::Corrupt(format!("page {pgno}: compressed size {} out of range", compressed.len())));
        }
        self.write_frame(pgno, data, Some(compressed))
    }

    fn write_frame(&mut self, pgno: u32, data: &[u8], compressed: Option<&[u8]>) -> Result<()> {
        self.check_usable()?;
        let page_size = self.header.page_size as usize;
        if data.len() != page_size {
            return Err(Error::PageSizeMismatch {
                expected: page_size,
                actual: data.len(),
            });
        }
        check_page_order(&self.header, self.prev_pgno, pgno)?;

        let mut frame = std::mem::take(&mut self.frame);
        frame.clear();
        frame.reserve(PAGE_HEADER_SIZE + 4 + compress_bound(page_size));
        frame.extend_from_slice(&pgno.to_be_bytes());
        frame.extend_from_slice(&PAGE_FLAG_SIZE.to_be_bytes());
        frame.extend_from_slice(&[0; 4]);
        let data_at = frame.len();
        match compressed {
            Some(block) => frame.extend_from_slice(block),
            None => self.compressor.compress(data, &mut frame),
        }
        let size = (frame.len() - data_at) as u32;
        frame[PAGE_HEADER_SIZE..data_at].copy_from_slice(&size.to_be_bytes());

        let written = self.w.write_all(&frame);
        // The file checksum covers the frame header, size and the
        // *uncompressed* page.
        self.hash.update(&frame[..data_at]);
        self.hash.update(data);
        let size = frame.len() as u64;
        self.frame = frame;
        self.fail_on(written)?;
        self.index.push(PageIndexEntry {
            pgno,
            offset: self.n,
            size,
        });
        self.n += size;
        self.prev_pgno = pgno;
        Ok(())
    }

    /// Writes the end-of-pages marker, the page index and the trailer, and
    /// returns the trailer. `post_apply_checksum` must be zero when the
    /// header has the no-checksum flag, else the database checksum (with
    /// [`Checksum::FLAG`]); nothing is written if it is invalid. A second
    /// call returns the same trailer and writes nothing.
    pub fn finish(&mut self, post_apply_checksum: Checksum) -> Result<Trailer> {
        if let State::Finished(t) = self.state {
            return Ok(t);
        }
        self.check_usable()?;
        check_post_apply(&self.header, post_apply_checksum)?;

        let mut tail = vec![0u8; PAGE_HEADER_SIZE];
        self.index.encode_into(&mut tail);
        tail.extend_from_slice(&post_apply_checksum.0.to_be_bytes());
        self.hash.update(&tail);
        let file_checksum = Checksum(Checksum::FLAG.0 | self.hash.finalize());
        tail.extend_from_slice(&file_checksum.0.to_be_bytes());
        let written = self.w.write_all(&tail).and_then(|()| self.w.flush());
        self.fail_on(written)?;
        self.n += tail.len() as u64;
        let trailer = Trailer {
            post_apply_checksum,
            file_checksum,
        };
        self.state = State::Finished(trailer);
        Ok(trailer)
    }

    /// Returns the underlying writer.
    pub fn into_inner(self) -> W {
        self.w
    }

    /// Number of bytes written so far.
    pub fn bytes_written(&self) -> u64 {
        self.n
    }

    fn check_usable(&self) -> Result<()> {
        match self.state {
            State::Pages => Ok(()),
            State::Failed => Err(Error::InvalidState("encoder failed earlier")),
            State::Finished(_) => Err(Error::InvalidState("encoder already finished")),
        }
    }

    fn fail_on(&mut self, r: std::io::Result<()>) -> Result<()> {
        r.map_err(|e| {
            self.state = State::Failed;
            Error::Io(e)
        })
    }
}

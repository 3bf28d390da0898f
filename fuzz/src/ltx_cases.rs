// Fuzz bodies for the `ltx` crate, shared by the fuzz targets (`fuzz/fuzz_targets/`) and
// by the regression replay in `crates/ltx/tests/fuzz_regressions.rs`, so CI runs every
// committed input through exactly the code the fuzzer ran. Depends on `ltx` only.
//
// Each body must never panic: errors are fine, and so is success. The bodies assert a few
// invariants that hold for every input (they are bugs in `ltx` when they fail).

use std::io::Read;

use ltx::wal::{FRAME_HEADER_SIZE, FrameHeader, FrameReader, WAL_HEADER_SIZE, WalHeader};
use ltx::{Decoder, HEADER_SIZE, decode_all};

/// A reader that hands out at most `chunk` bytes per `read`, to exercise the decoders'
/// handling of short reads.
struct Chunked<'a> {
    data: &'a [u8],
    chunk: usize,
}

impl Read for Chunked<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.chunk).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

/// Pages read `(pgno, bytes)` and whether `finish` succeeded.
type Streamed = (Vec<(u32, Vec<u8>)>, bool);

/// Streams a decoder to the end: header, every page, `finish` (twice: the second call
/// must return the same trailer). Returns the pages read and whether `finish` succeeded.
fn stream<R: Read>(r: R) -> Option<Streamed> {
    let mut dec = Decoder::new(r).ok()?;
    let page_size = dec.header().page_size as usize;
    let mut pages = Vec::new();
    let mut buf = Vec::new();
    loop {
        match dec.next_page(&mut buf) {
            Ok(Some(pgno)) => {
                assert_eq!(buf.len(), page_size, "page {pgno} has the wrong size");
                assert!(!dec.compressed().is_empty());
                pages.push((pgno, buf.clone()));
            }
            Ok(None) => {
                // The end-of-pages marker is sticky.
                assert_eq!(dec.next_page(&mut buf).ok(), Some(None));
                break;
            }
            Err(_) => return Some((pages, false)),
        }
    }
    let first = dec.finish();
    let ok = first.is_ok();
    if let Ok(t) = first {
        assert_eq!(dec.finish().ok(), Some(t), "a second finish() must return the trailer again");
        assert_eq!(dec.page_index().count(), pages.len(), "page index vs pages read");
    }
    Some((pages, ok))
}

/// `ltx_decode`: the streaming [`Decoder`] over the bytes (read whole, and again through
/// a reader returning short reads), then [`decode_all`]; all three must agree.
pub fn ltx_decode(data: &[u8]) {
    let chunk = data.first().map_or(1, |b| usize::from(b % 7) + 1);
    let whole = stream(data);
    let chunked = stream(Chunked { data, chunk });
    assert_eq!(whole, chunked, "short reads changed the decoder's result");
    let all = decode_all(data);
    match (&all, &whole) {
        (Ok((header, pages, _)), Some((streamed, true))) => {
            assert_eq!(pages, streamed);
            assert!(header.validate().is_ok());
        }
        (Err(_), None | Some((_, false))) => {}
        _ => panic!("decode_all and the streaming decoder disagree"),
    }
    // Anything after a valid header: the header alone must decode the same way.
    if data.len() >= HEADER_SIZE {
        let h: &[u8; HEADER_SIZE] = data[..HEADER_SIZE].try_into().unwrap();
        assert_eq!(ltx::Header::decode(h).is_ok(), whole.is_some());
    }
}

/// Reads every valid frame of a WAL body; returns the frames read.
fn read_frames<R: Read>(r: R, header: &WalHeader, page_size: usize) -> u64 {
    let mut reader = FrameReader::new(r, header, (header.checksum1, header.checksum2));
    let mut n = 0u64;
    while let Ok(Some((fh, page))) = reader.next() {
        assert_eq!(page.len(), page_size);
        assert_ne!(fh.pgno, 0);
        assert_eq!((fh.salt1, fh.salt2), (header.salt1, header.salt2));
        assert_eq!(reader.checksum(), (fh.checksum1, fh.checksum2));
        n += 1;
    }
    // The end of the valid log is sticky.
    assert!(matches!(reader.next(), Ok(None)));
    assert_eq!(reader.frames_read(), n);
    n
}

/// `wal_frames`: two passes.
/// 1. Raw: [`WalHeader::decode`] over the bytes and, when it succeeds, a [`FrameReader`]
///    over what follows (whole and through short reads).
/// 2. Repaired: a valid header built from the input's fields (small page size), then
///    the input's frames with salts and checksums made valid except where the input's
///    control byte says to leave a frame alone, so the fuzzer reaches long valid logs
///    and every way one can end.
pub fn wal_frames(data: &[u8]) {
    if let Ok(h) = WalHeader::decode(data) {
        let body = &data[WAL_HEADER_SIZE..];
        let ps = h.page_size as usize;
        let a = read_frames(body, &h, ps);
        let chunk = usize::from(data[WAL_HEADER_SIZE.min(data.len() - 1)] % 13) + 1;
        let b = read_frames(Chunked { data: body, chunk }, &h, ps);
        assert_eq!(a, b, "short reads changed the frames read");
        assert!(a <= (body.len() / (FRAME_HEADER_SIZE + ps)) as u64);
        // Re-encoding the decoded header gives the input's bytes back.
        assert_eq!(&h.encode()[..], &data[..WAL_HEADER_SIZE]);
    }

    // Repaired pass.
    if data.len() < 12 {
        return;
    }
    let be = data[0] & 1 == 1;
    let page_size = [512u32, 1024][usize::from(data[1] & 1)];
    let salt1 = u32::from_be_bytes([data[2], data[3], data[4], data[5]]);
    let salt2 = u32::from_be_bytes([data[6], data[7], data[8], data[9]]);
    let keep_bad = data[10]; // bit i: leave frame i (mod 8) as the input has it
    let header = WalHeader::new(be, page_size, u32::from(data[11]), salt1, salt2);
    let encoded = header.encode();
    assert_eq!(WalHeader::decode(&encoded).ok(), Some(header));
    let ps = page_size as usize;
    let mut wal = encoded.to_vec();
    let mut seed = (header.checksum1, header.checksum2);
    let mut expect_valid = 0u64;
    let mut still_valid = true;
    for (i, frame) in data[12..].chunks(FRAME_HEADER_SIZE + ps).enumerate() {
        if frame.len() < FRAME_HEADER_SIZE + ps || keep_bad & (1 << (i % 8)) != 0 {
            wal.extend_from_slice(frame);
            still_valid = false;
            continue;
        }
        let given = FrameHeader::decode(frame);
        let page = &frame[FRAME_HEADER_SIZE..];
        let fh = FrameHeader::compute(&header, seed, given.pgno, given.commit, page);
        seed = (fh.checksum1, fh.checksum2);
        wal.extend_from_slice(&fh.encode());
        wal.extend_from_slice(page);
        if still_valid && fh.pgno != 0 {
            expect_valid += 1;
        } else {
            still_valid = false;
        }
    }
    let h = WalHeader::decode(&wal).expect("a header made by WalHeader::new decodes");
    let n = read_frames(&wal[WAL_HEADER_SIZE..], &h, ps);
    // Every repaired frame before the first untouched one (or pgno 0) is valid; an
    // untouched frame may happen to be valid too, so more is fine.
    assert!(n >= expect_valid, "read {n} frames, {expect_valid} were valid");
}

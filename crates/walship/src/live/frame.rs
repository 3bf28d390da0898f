//! The stream's wire format: a sequence of frames, each `kind` (1 byte), `length`
//! (8 bytes, big-endian) and `length` bytes of payload.
//!
//! - `H` heartbeat (32 bytes): the sender's position (TXID, database checksum), the
//!   sender's clock (ms since the Unix epoch) and the time of its newest file.
//! - `L` LTX file: one whole LTX file with its real checksums, read in place from the
//!   stream (never buffered whole: lengths come from the network).

use std::io::{self, Read};

use ltx::{Checksum, TxId};

/// Frame kind of a heartbeat.
pub const HEARTBEAT: u8 = b'H';
/// Frame kind of an LTX file.
pub const LTX: u8 = b'L';
/// Size of a frame header.
pub const HEADER_LEN: usize = 9;
const HEARTBEAT_LEN: u64 = 32;
/// The largest LTX frame accepted (1 TiB): a bound on what a length may claim.
pub const MAX_LTX_LEN: u64 = 1 << 40;

/// A heartbeat: where the sender stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heartbeat {
    /// The sender's newest TXID.
    pub txid: TxId,
    /// The database checksum after it.
    pub checksum: Checksum,
    /// The sender's clock when it sent this (ms since the Unix epoch).
    pub now_ms: i64,
    /// When the sender's newest file was written (ms since the Unix epoch).
    pub newest_ms: i64,
}

/// Encodes a heartbeat frame.
pub fn heartbeat(h: &Heartbeat) -> Vec<u8> {
    let mut b = header(HEARTBEAT, HEARTBEAT_LEN).to_vec();
    b.extend_from_slice(&h.txid.0.to_be_bytes());
    b.extend_from_slice(&h.checksum.0.to_be_bytes());
    b.extend_from_slice(&h.now_ms.to_be_bytes());
    b.extend_from_slice(&h.newest_ms.to_be_bytes());
    b
}

/// Encodes a frame header.
pub fn header(kind: u8, len: u64) -> [u8; HEADER_LEN] {
    let mut b = [0u8; HEADER_LEN];
    b[0] = kind;
    b[1..].copy_from_slice(&len.to_be_bytes());
    b
}

/// One decoded frame.
#[derive(Debug)]
pub enum Frame<'a, R: Read> {
    /// A heartbeat.
    Heartbeat(Heartbeat),
    /// An LTX file: read exactly its bytes from here, then call [`FrameReader::next_frame`].
    Ltx(io::Take<&'a mut R>),
}

/// Reads frames from a byte stream.
pub struct FrameReader<R: Read> {
    r: R,
}

impl<R: Read> FrameReader<R> {
    /// Frames from `r`.
    pub fn new(r: R) -> Self {
        FrameReader { r }
    }

    /// The next frame; `Ok(None)` when the stream ends cleanly between frames.
    pub fn next_frame(&mut self) -> io::Result<Option<Frame<'_, R>>> {
        let mut h = [0u8; HEADER_LEN];
        let mut got = 0;
        while got < HEADER_LEN {
            match self.r.read(&mut h[got..]) {
                Ok(0) if got == 0 => return Ok(None),
                Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "stream ended inside a frame header")),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let len = u64::from_be_bytes(h[1..].try_into().expect("8 bytes"));
        match h[0] {
            HEARTBEAT if len == HEARTBEAT_LEN => {
                let mut b = [0u8; HEARTBEAT_LEN as usize];
                self.r.read_exact(&mut b)?;
                let word = |i: usize| u64::from_be_bytes(b[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
                Ok(Some(Frame::Heartbeat(Heartbeat {
                    txid: TxId(word(0)),
                    checksum: Checksum(word(1)),
                    now_ms: word(2) as i64,
                    newest_ms: word(3) as i64,
                })))
            }
            LTX if len <= MAX_LTX_LEN => Ok(Some(Frame::Ltx((&mut self.r).take(len)))),
            kind => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad stream frame: kind 0x{kind:02x}, length {len}"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_bad_ones_are_refused() {
        let hb = Heartbeat { txid: TxId(7), checksum: Checksum(0x8000_0000_0000_0001), now_ms: 5, newest_ms: 4 };
        let mut bytes = heartbeat(&hb);
        bytes.extend_from_slice(&header(LTX, 3));
        bytes.extend_from_slice(b"abc");
        let mut r = FrameReader::new(&bytes[..]);
        assert!(matches!(r.next_frame().unwrap(), Some(Frame::Heartbeat(h)) if h == hb));
        match r.next_frame().unwrap() {
            Some(Frame::Ltx(mut body)) => {
                let mut s = String::new();
                body.read_to_string(&mut s).unwrap();
                assert_eq!(s, "abc");
            }
            other => panic!("{other:?}"),
        }
        assert!(r.next_frame().unwrap().is_none());

        for bad in [header(b'X', 0).to_vec(), header(HEARTBEAT, 31).to_vec(), header(LTX, MAX_LTX_LEN + 1).to_vec(), vec![b'H', 0]] {
            assert!(FrameReader::new(&bad[..]).next_frame().is_err(), "{bad:?}");
        }
    }
}

//! Reads the committed tail of a `-wal` file: frames after a known position, validated
//! by salts and SQLite's cumulative checksums, up to the last commit frame. The newest
//! copy of each page wins; frames after the last commit are not committed yet and are
//! left for the next read.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use ltx::wal::{FRAME_HEADER_SIZE, FrameReader, WAL_HEADER_SIZE, WalHeader};

use crate::error::{Error, Result};

/// Where reading stopped in one WAL generation (a generation ends when SQLite restarts
/// the log with new salts).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cursor {
    /// The generation's salts.
    pub salts: (u32, u32),
    /// Frames consumed (all of them up to a commit frame).
    pub frames: u64,
    /// The cumulative checksum after the last consumed frame.
    pub checksum: (u32, u32),
}

impl Cursor {
    /// Byte offset of the next frame.
    pub fn offset(&self, page_size: u32) -> u64 {
        WAL_HEADER_SIZE as u64 + self.frames * (FRAME_HEADER_SIZE as u64 + page_size as u64)
    }
}

/// Committed pages read from the WAL.
#[derive(Debug, Default)]
pub struct Batch {
    /// Newest committed copy of each page.
    pub pages: BTreeMap<u32, Vec<u8>>,
    /// Database size in pages after the last commit read (0 when none was read).
    pub commit: u32,
    /// Where the next read starts.
    pub end: Option<Cursor>,
    /// Where this read started.
    pub start: Option<Cursor>,
    /// False when the read stopped at the size limit with more frames left.
    pub complete: bool,
}

/// What the WAL file holds right now.
#[derive(Debug)]
pub enum Tail {
    /// No valid WAL header: the log is empty (never written, or truncated).
    Empty,
    /// A generation other than the cursor's: the log was restarted.
    NewGeneration(WalHeader),
    /// Committed frames from the cursor (or the generation's start) on.
    Frames(WalHeader, Batch),
}

/// Reads the WAL's header; `None` when the file is missing, short or not a valid header.
pub fn read_header(wal: &Path) -> Result<Option<WalHeader>> {
    let mut f = match File::open(wal) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(format!("open {}", wal.display()), e)),
    };
    let mut buf = [0u8; WAL_HEADER_SIZE];
    match f.read_exact(&mut buf) {
        Ok(()) => Ok(WalHeader::decode(&buf).ok()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(Error::io(format!("read {}", wal.display()), e)),
    }
}

/// Reads committed frames after `cursor` (or from the start of the current generation
/// when `cursor` is `None`), stopping at a commit boundary once `max_bytes` of pages
/// are held.
pub fn read(wal: &Path, cursor: Option<Cursor>, max_bytes: usize) -> Result<Tail> {
    let mut f = match File::open(wal) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Tail::Empty),
        Err(e) => return Err(Error::io(format!("open {}", wal.display()), e)),
    };
    let mut hbuf = [0u8; WAL_HEADER_SIZE];
    match f.read_exact(&mut hbuf) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(Tail::Empty),
        Err(e) => return Err(Error::io(format!("read {}", wal.display()), e)),
    }
    let Ok(header) = WalHeader::decode(&hbuf) else {
        return Ok(Tail::Empty);
    };
    let start = match cursor {
        Some(c) if c.salts != (header.salt1, header.salt2) => return Ok(Tail::NewGeneration(header)),
        Some(c) => c,
        None => Cursor {
            salts: (header.salt1, header.salt2),
            frames: 0,
            checksum: (header.checksum1, header.checksum2),
        },
    };
    f.seek(SeekFrom::Start(start.offset(header.page_size)))
        .map_err(|e| Error::io(format!("seek {}", wal.display()), e))?;
    let reader = BufReader::with_capacity(1 << 20, f);
    let mut frames = FrameReader::new(reader, &header, start.checksum);
    let mut batch = Batch { start: Some(start), complete: true, ..Batch::default() };
    let mut pending: Vec<(u32, Vec<u8>)> = Vec::new();
    let mut held = 0usize;
    loop {
        let next = frames.next().map_err(|e| Error::ltx(wal.display().to_string(), e))?;
        let Some((fh, page)) = next else { break };
        pending.push((fh.pgno, page.to_vec()));
        if fh.is_commit() {
            for (pgno, data) in pending.drain(..) {
                held += data.len();
                batch.pages.insert(pgno, data);
            }
            batch.commit = fh.commit;
            batch.end = Some(Cursor {
                salts: start.salts,
                frames: start.frames + frames.frames_read(),
                checksum: frames.checksum(),
            });
            if held >= max_bytes {
                batch.complete = false;
                break;
            }
        }
    }
    Ok(Tail::Frames(header, batch))
}

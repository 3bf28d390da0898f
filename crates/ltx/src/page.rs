//! Page frames, the page-ordering rules and the page index, shared by the
//! encoder and decoder.

use crate::{Error, Header, Result};

/// Size of a page frame header: pgno (u32 BE) + flags (u16 BE).
pub const PAGE_HEADER_SIZE: usize = 6;
/// Page-header flag: a u32 BE compressed size follows and the data is one
/// LZ4 block. Litestream 0.5 sets it on every page.
pub const PAGE_FLAG_SIZE: u16 = 1;

/// One page-index entry: where a page frame sits in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageIndexEntry {
    /// Page number.
    pub pgno: u32,
    /// Byte offset of the page frame header from the start of the file.
    pub offset: u64,
    /// Frame size: page header + size prefix + compressed data.
    pub size: u64,
}

/// Checks that `pgno` may follow `prev` (0 = first page) in a file with this
/// header, exactly as Go's `Encoder.EncodePage` does: non-zero, at most
/// `commit`, never the lock page; snapshots start at 1 and are contiguous
/// (skipping the lock page); other files strictly ascend.
pub(crate) fn check_page_order(header: &Header, prev: u32, pgno: u32) -> Result<()> {
    let invalid = |reason| Err(Error::InvalidPage { pgno, reason });
    if pgno == 0 {
        return invalid("page number 0");
    }
    if pgno > header.commit {
        return invalid("page number beyond the commit size");
    }
    let lock = header.lock_pgno();
    if pgno == lock {
        return invalid("the lock page is never stored");
    }
    let in_order = if header.is_snapshot() {
        match prev {
            0 => pgno == 1,
            p if p == lock - 1 => Some(pgno) == p.checked_add(2),
            p => Some(pgno) == p.checked_add(1),
        }
    } else {
        pgno > prev
    };
    if in_order {
        Ok(())
    } else {
        Err(Error::PageOrder { prev, pgno })
    }
}

/// Appends `v` as an unsigned LEB128 varint (Go `binary.AppendUvarint`).
pub(crate) fn put_uvarint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A page index as it is built, page frame by page frame, kept in its encoded form
/// (about 8 bytes per page instead of 24): a snapshot of a large database has
/// millions of pages.
#[derive(Clone, Debug, Default)]
pub(crate) struct PageIndex {
    /// One `(pgno, offset, size)` uvarint triple per page, in page order.
    triples: Vec<u8>,
    len: usize,
}

impl PageIndex {
    /// Adds the next page frame.
    pub(crate) fn push(&mut self, e: PageIndexEntry) {
        put_uvarint(&mut self.triples, u64::from(e.pgno));
        put_uvarint(&mut self.triples, e.offset);
        put_uvarint(&mut self.triples, e.size);
        self.len += 1;
    }

    /// Number of entries.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The entries, in order.
    pub(crate) fn entries(&self) -> impl Iterator<Item = PageIndexEntry> + '_ {
        let mut rest = &self.triples[..];
        std::iter::from_fn(move || {
            let pgno = take_uvarint(&mut rest)?;
            let offset = take_uvarint(&mut rest)?;
            let size = take_uvarint(&mut rest)?;
            Some(PageIndexEntry { pgno: pgno as u32, offset, size })
        })
    }

    /// Appends the encoded index: the triples, a zero uvarint, then the u64 BE byte
    /// length of both.
    pub(crate) fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.triples);
        put_uvarint(out, 0);
        let len = self.triples.len() as u64 + 1;
        out.extend_from_slice(&len.to_be_bytes());
    }
}

/// Reads a uvarint written by [`put_uvarint`] off the front of `rest`.
fn take_uvarint(rest: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for (i, b) in rest.iter().enumerate() {
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            *rest = &rest[i + 1..];
            return Some(v);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Checksum, TxId};

    #[test]
    fn uvarint() {
        let mut v = Vec::new();
        put_uvarint(&mut v, 300);
        assert_eq!(v, [0xac, 0x02]);
    }

    #[test]
    fn page_index_round_trip() {
        let mut index = PageIndex::default();
        let entries = [
            PageIndexEntry { pgno: 1, offset: 100, size: 30 },
            PageIndexEntry { pgno: u32::MAX, offset: u64::MAX, size: 1 << 40 },
            PageIndexEntry { pgno: 300, offset: 0, size: 0 },
        ];
        entries.iter().for_each(|e| index.push(*e));
        assert_eq!(index.len(), 3);
        assert_eq!(index.entries().collect::<Vec<_>>(), entries);
        let mut out = Vec::new();
        index.encode_into(&mut out);
        let body = out.len() - 8;
        assert_eq!(out[body - 1], 0, "zero end marker");
        assert_eq!(u64::from_be_bytes(out[body..].try_into().unwrap()), body as u64);
    }

    #[test]
    fn order_rules() {
        let mut h = Header {
            flags: 2,
            page_size: 65536,
            commit: 20000,
            min_txid: TxId(1),
            max_txid: TxId(1),
            timestamp_ms: 0,
            pre_apply_checksum: Checksum::ZERO,
            wal_offset: 0,
            wal_size: 0,
            wal_salt1: 0,
            wal_salt2: 0,
            node_id: 0,
        };
        let lock = h.lock_pgno();
        assert!(check_page_order(&h, 0, 1).is_ok());
        assert!(matches!(
            check_page_order(&h, 0, 2),
            Err(Error::PageOrder { prev: 0, pgno: 2 })
        ));
        assert!(check_page_order(&h, 1, 3).is_err());
        assert!(matches!(
            check_page_order(&h, lock - 1, lock),
            Err(Error::InvalidPage { .. })
        ));
        assert!(check_page_order(&h, lock - 1, lock + 1).is_ok());
        assert!(matches!(
            check_page_order(&h, 5, 20001),
            Err(Error::InvalidPage { .. })
        ));
        h.min_txid = TxId(2);
        h.max_txid = TxId(2);
        assert!(check_page_order(&h, 0, 7).is_ok());
        assert!(check_page_order(&h, 7, 9).is_ok());
        assert!(check_page_order(&h, 9, 9).is_err());
        assert!(check_page_order(&h, 0, 0).is_err());
    }
}

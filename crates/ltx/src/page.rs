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

/// Encodes the page index: one `(pgno, offset, size)` uvarint triple per
/// page in page order, a zero uvarint, then the u64 BE byte length of
/// everything before it (triples and end marker).
pub(crate) fn encode_index(entries: &[PageIndexEntry], out: &mut Vec<u8>) {
    let start = out.len();
    for e in entries {
        put_uvarint(out, u64::from(e.pgno));
        put_uvarint(out, e.offset);
        put_uvarint(out, e.size);
    }
    put_uvarint(out, 0);
    let len = (out.len() - start) as u64;
    out.extend_from_slice(&len.to_be_bytes());
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

//! Integration tests: Litestream 0.5.17 fixtures, round trips, committed
//! corruption fixtures and WAL fixtures.

use std::path::{Path, PathBuf};

use ltx::wal::{FRAME_HEADER_SIZE, FrameHeader, FrameReader, WAL_HEADER_SIZE, WalHeader};
use ltx::{
    Checksum, DbChecksum, Decoder, Encoder, Error, HEADER_FLAG_NO_CHECKSUM, HEADER_SIZE, Header,
    TxId, decode_all, lock_pgno,
};
use proptest::prelude::*;

const LITESTREAM_LTX: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../../shared/fixtures/litestream-0.5.17/replica/ltx"
);
const TESTDATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata");

fn encode(header: &Header, pages: &[(u32, Vec<u8>)], post: Checksum) -> Vec<u8> {
    let mut enc = Encoder::new(Vec::new(), header).unwrap();
    for (pgno, data) in pages {
        enc.encode_page(*pgno, data).unwrap();
    }
    enc.finish(post).unwrap();
    enc.into_inner()
}

fn litestream_files() -> Vec<PathBuf> {
    let root = Path::new(LITESTREAM_LTX);
    if !root.is_dir() {
        eprintln!("note: {LITESTREAM_LTX} absent; skipping Litestream fixture checks");
        return Vec::new();
    }
    let mut files = Vec::new();
    for level in std::fs::read_dir(root).unwrap() {
        for f in std::fs::read_dir(level.unwrap().path()).unwrap() {
            files.push(f.unwrap().path());
        }
    }
    files.sort();
    files
}

#[test]
fn litestream_fixtures_decode_and_reencode_identically() {
    let files = litestream_files();
    for path in &files {
        let bytes = std::fs::read(path).unwrap();
        let (header, pages, trailer) =
            decode_all(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));

        // The file name is MinTXID-MaxTXID.
        let name = path.file_stem().unwrap().to_str().unwrap();
        let (min, max) = name.split_once('-').unwrap();
        assert_eq!(header.min_txid, min.parse::<TxId>().unwrap());
        assert_eq!(header.max_txid, max.parse::<TxId>().unwrap());
        assert_eq!(header.flags, HEADER_FLAG_NO_CHECKSUM);
        assert_eq!(header.page_size, 4096);
        assert!(header.commit >= 1 && header.timestamp_ms > 1_600_000_000_000);
        assert_eq!(header.pre_apply_checksum, Checksum::ZERO);
        assert_eq!(trailer.post_apply_checksum, Checksum::ZERO);
        assert!(!pages.is_empty());
        if header.is_snapshot() {
            let pgnos: Vec<u32> = pages.iter().map(|p| p.0).collect();
            assert_eq!(pgnos, (1..=header.commit).collect::<Vec<_>>());
            assert_eq!(&pages[0].1[..16], b"SQLite format 3\0");
        }

        let again = encode(&header, &pages, trailer.post_apply_checksum);
        assert!(again == bytes, "{}: re-encoding differs", path.display());
    }
    eprintln!("checked {} Litestream files", files.len());
}

#[test]
fn reframing_with_the_read_lz4_blocks_is_byte_identical() {
    for path in litestream_files() {
        let bytes = std::fs::read(&path).unwrap();
        let mut dec = Decoder::new(&bytes[..]).unwrap();
        let mut enc = Encoder::new(Vec::new(), &dec.header().clone()).unwrap();
        let mut page = Vec::new();
        while let Some(pgno) = dec.next_page(&mut page).unwrap() {
            enc.encode_page_compressed(pgno, &page, dec.compressed()).unwrap();
        }
        let trailer = dec.finish().unwrap();
        enc.finish(trailer.post_apply_checksum).unwrap();
        assert!(enc.into_inner() == bytes, "{}: re-framing differs", path.display());
    }
}

#[test]
fn streaming_decoder_matches_decode_all_and_finish_skips_pages() {
    for path in litestream_files() {
        let bytes = std::fs::read(&path).unwrap();
        let (_, pages, trailer) = decode_all(&bytes).unwrap();
        let mut dec = Decoder::new(&bytes[..]).unwrap();
        let mut buf = Vec::new();
        assert_eq!(dec.next_page(&mut buf).unwrap(), Some(pages[0].0));
        assert_eq!(buf, pages[0].1);
        assert_eq!(dec.finish().unwrap(), trailer);
        assert_eq!(dec.finish().unwrap(), trailer);
        assert_eq!(dec.page_index().count(), pages.len());
        assert_eq!(dec.next_page(&mut buf).unwrap(), None);
    }
}

#[test]
fn page_checksums_from_the_decoder_match_the_pages() {
    for path in litestream_files() {
        let bytes = std::fs::read(&path).unwrap();
        let (_, pages, trailer) = decode_all(&bytes).unwrap();
        let mut dec = Decoder::new(&bytes[..]).unwrap();
        let mut buf = Vec::new();
        for (pgno, data) in &pages {
            let (got, sum) = dec.next_page_with_checksum(&mut buf).unwrap().unwrap();
            assert_eq!((got, &buf), (*pgno, data));
            assert_eq!(sum, Checksum::page(*pgno, data));
        }
        assert_eq!(dec.next_page_with_checksum(&mut buf).unwrap(), None);
        assert_eq!(dec.finish().unwrap(), trailer);
    }
}

fn header(page_size: u32, commit: u32, min: u64, max: u64) -> Header {
    Header {
        flags: HEADER_FLAG_NO_CHECKSUM,
        page_size,
        commit,
        min_txid: TxId(min),
        max_txid: TxId(max),
        timestamp_ms: 1_764_000_000_000,
        pre_apply_checksum: Checksum::ZERO,
        wal_offset: 32,
        wal_size: 4096,
        wal_salt1: 0x1111,
        wal_salt2: 0x2222,
        node_id: 0,
    }
}

fn page_strategy(page_size: usize) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), page_size),
        (
            any::<u8>(),
            proptest::collection::vec((0..page_size, any::<u8>()), 0..20)
        )
            .prop_map(move |(fill, pokes)| {
                let mut p = vec![fill; page_size];
                for (i, b) in pokes {
                    p[i] = b;
                }
                p
            }),
        proptest::collection::vec(0u8..4, page_size / 16).prop_map(|small| small.repeat(16)),
    ]
}

fn file_strategy() -> impl Strategy<Value = (Header, Vec<(u32, Vec<u8>)>)> {
    (
        9u32..=16,
        any::<bool>(),
        1u64..1000,
        any::<i64>(),
        any::<u64>(),
    )
        .prop_flat_map(|(shift, snapshot, min, ts, node)| {
            let page_size = 1usize << shift;
            let pgnos = if snapshot {
                (1u32..5)
                    .prop_map(|n| (1..=n).collect::<Vec<u32>>())
                    .boxed()
            } else {
                proptest::collection::btree_set(1u32..200, 1..5)
                    .prop_map(|s| s.into_iter().collect())
                    .boxed()
            };
            (
                Just((page_size, snapshot, min, ts, node)),
                pgnos.prop_flat_map(move |pgnos| {
                    let n = pgnos.len();
                    (
                        Just(pgnos),
                        proptest::collection::vec(page_strategy(page_size), n),
                    )
                }),
            )
        })
        .prop_map(|((page_size, snapshot, min, ts, node), (pgnos, datas))| {
            let commit = *pgnos.last().unwrap();
            let min = if snapshot { 1 } else { min + 1 };
            let mut h = header(page_size as u32, commit, min, min + 3);
            h.timestamp_ms = ts;
            h.node_id = node;
            (h, pgnos.into_iter().zip(datas).collect())
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn encode_decode_round_trip((h, pages) in file_strategy()) {
        let bytes = encode(&h, &pages, Checksum::ZERO);
        let (h2, pages2, trailer) = decode_all(&bytes).unwrap();
        prop_assert_eq!(h2, h);
        prop_assert_eq!(pages2, pages);
        prop_assert_eq!(trailer.post_apply_checksum, Checksum::ZERO);
    }

    #[test]
    fn tracked_checksums_round_trip((mut h, pages) in file_strategy()) {
        h.flags = 0;
        let mut db = DbChecksum::new();
        for (pgno, data) in &pages {
            db.add(Checksum::page(*pgno, data));
        }
        if !h.is_snapshot() {
            h.pre_apply_checksum = Checksum(Checksum::FLAG.0 | 42);
        }
        let bytes = encode(&h, &pages, db.value());
        let (_, _, trailer) = decode_all(&bytes).unwrap();
        prop_assert_eq!(trailer.post_apply_checksum, db.value());
    }

    #[test]
    fn txid_display_parse_round_trip(v in any::<u64>()) {
        let t = TxId(v);
        prop_assert_eq!(t.to_string().parse::<TxId>().unwrap(), t);
        prop_assert_eq!(t.to_string().len(), 16);
        let dec = v.to_string();
        if dec.len() != 16 {
            prop_assert_eq!(dec.parse::<TxId>().unwrap(), t);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(tail in proptest::collection::vec(any::<u8>(), 0..600), cut in 0usize..700) {
        let h = header(512, 3, 2, 2).encode();
        let good = encode(&header(512, 3, 2, 2), &[(2, vec![5; 512])], Checksum::ZERO);
        let mut mixed = h.to_vec();
        mixed.extend_from_slice(&tail);
        let _ = decode_all(&mixed);
        let _ = decode_all(&good[..cut.min(good.len())]);
    }
}

#[test]
fn snapshot_with_wrong_post_apply_checksum_is_rejected() {
    let mut h = header(512, 2, 1, 1);
    h.flags = 0;
    let pages = vec![(1, vec![1u8; 512]), (2, vec![2u8; 512])];
    let bytes = encode(&h, &pages, Checksum(Checksum::FLAG.0 | 1));
    assert!(matches!(
        decode_all(&bytes),
        Err(Error::ChecksumMismatch {
            what: "snapshot post-apply checksum",
            ..
        })
    ));
}

#[test]
fn encoder_enforces_rules() {
    let h = header(512, 10, 1, 1);
    let mut enc = Encoder::new(Vec::new(), &h).unwrap();
    assert!(matches!(
        enc.encode_page(2, &[0; 512]),
        Err(Error::PageOrder { prev: 0, pgno: 2 })
    ));
    assert!(matches!(
        enc.encode_page(1, &[0; 511]),
        Err(Error::PageSizeMismatch {
            expected: 512,
            actual: 511
        })
    ));
    enc.encode_page(1, &[0; 512]).unwrap();
    assert!(matches!(
        enc.encode_page(11, &[0; 512]),
        Err(Error::InvalidPage { pgno: 11, .. })
    ));
    // The no-checksum flag forbids a post-apply checksum; nothing is written.
    let before = enc.bytes_written();
    assert!(matches!(
        enc.finish(Checksum::FLAG),
        Err(Error::InvalidTrailer(_))
    ));
    assert_eq!(enc.bytes_written(), before);
    let t = enc.finish(Checksum::ZERO).unwrap();
    let len = enc.bytes_written();
    assert_eq!(enc.finish(Checksum::ZERO).unwrap(), t);
    assert_eq!(enc.bytes_written(), len);
    assert!(matches!(
        enc.encode_page(2, &[0; 512]),
        Err(Error::InvalidState(_))
    ));
    assert_eq!(enc.into_inner().len() as u64, len);

    // The lock page is skipped in a snapshot and never stored.
    let lock = lock_pgno(65536);
    let h = header(65536, lock + 1, 2, 2);
    let mut enc = Encoder::new(Vec::new(), &h).unwrap();
    assert!(matches!(
        enc.encode_page(lock, &vec![0; 65536]),
        Err(Error::InvalidPage { .. })
    ));
    enc.encode_page(lock + 1, &vec![0; 65536]).unwrap();

    let mut bad = header(512, 1, 1, 1);
    bad.pre_apply_checksum = Checksum::FLAG;
    assert!(matches!(
        Encoder::new(Vec::new(), &bad),
        Err(Error::InvalidHeader(_))
    ));
}

#[test]
fn huge_page_size_or_compressed_size_errors_without_allocating() {
    let good = encode(&header(512, 1, 2, 2), &[(1, vec![9; 512])], Checksum::ZERO);
    let mut b = good.clone();
    b[8..12].copy_from_slice(&(1u32 << 31).to_be_bytes());
    assert!(matches!(
        decode_all(&b),
        Err(Error::InvalidPageSize(0x8000_0000))
    ));
    let mut b = good.clone();
    b[HEADER_SIZE + 6..HEADER_SIZE + 10].copy_from_slice(&u32::MAX.to_be_bytes());
    assert!(matches!(decode_all(&b), Err(Error::Corrupt(m)) if m.contains("compressed size")));
}

#[test]
fn trailing_bytes_and_bad_magic_are_rejected() {
    let mut good = encode(&header(512, 1, 2, 2), &[(1, vec![9; 512])], Checksum::ZERO);
    let mut bad = good.clone();
    bad[0] = b'X';
    assert!(matches!(decode_all(&bad), Err(Error::BadMagic)));
    good.push(0);
    assert!(matches!(decode_all(&good), Err(Error::Corrupt(m)) if m.contains("trailing")));
}

// --- committed fixtures -------------------------------------------------

fn testdata(rel: &str) -> Vec<u8> {
    std::fs::read(Path::new(TESTDATA).join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Deterministic incompressible bytes (xorshift).
fn noise(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn fixture_ltx() -> Vec<u8> {
    let pages = vec![(2, noise(2, 512)), (5, vec![0x55; 512])];
    encode(&header(512, 5, 2, 2), &pages, Checksum::ZERO)
}

struct Wal {
    header: WalHeader,
    bytes: Vec<u8>,
    seed: (u32, u32),
}

impl Wal {
    fn new(salt1: u32) -> Wal {
        let header = WalHeader::new(false, 512, 1, salt1, 0xabcd);
        Wal {
            header,
            bytes: header.encode().to_vec(),
            seed: (header.checksum1, header.checksum2),
        }
    }

    fn frame(&mut self, pgno: u32, commit: u32) -> &mut Self {
        let page = vec![pgno as u8; 512];
        let fh = FrameHeader::compute(&self.header, self.seed, pgno, commit, &page);
        self.seed = (fh.checksum1, fh.checksum2);
        self.bytes.extend_from_slice(&fh.encode());
        self.bytes.extend_from_slice(&page);
        self
    }
}

fn fixture_wals() -> [(&'static str, Vec<u8>); 3] {
    let valid = Wal::new(0x5a17)
        .frame(1, 0)
        .frame(2, 0)
        .frame(3, 3)
        .bytes
        .clone();
    let mut salt = Wal::new(0x5a17);
    salt.frame(1, 0).frame(2, 2);
    // A frame from another WAL generation: other salt, self-consistent checksum.
    let other = WalHeader::new(false, 512, 1, 0x0bad, 0xabcd);
    let page = vec![3u8; 512];
    let fh = FrameHeader::compute(&other, salt.seed, 3, 3, &page);
    salt.bytes.extend_from_slice(&fh.encode());
    salt.bytes.extend_from_slice(&page);
    let mut cks = Wal::new(0x5a17)
        .frame(1, 1)
        .frame(2, 0)
        .frame(3, 3)
        .bytes
        .clone();
    cks[WAL_HEADER_SIZE + (FRAME_HEADER_SIZE + 512) + FRAME_HEADER_SIZE + 100] ^= 0x01;
    [
        ("wal/valid.wal", valid),
        ("wal/salt_mismatch.wal", salt.bytes),
        ("wal/checksum_mismatch.wal", cks),
    ]
}

#[test]
#[ignore = "rewrites crates/ltx/testdata"]
fn regenerate_fixtures() {
    let good = fixture_ltx();
    let mut files = vec![("ltx/truncated.ltx", good[..HEADER_SIZE + 300].to_vec())];
    let mut flipped = good.clone();
    // Byte 50 of page 2's literal run (incompressible data is stored verbatim
    // after the token and length bytes).
    flipped[HEADER_SIZE + 10 + 50] ^= 0x40;
    files.push(("ltx/bitflip.ltx", flipped));
    files.extend(fixture_wals());
    for (rel, bytes) in files {
        let path = Path::new(TESTDATA).join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
}

#[test]
fn committed_fixtures_are_current() {
    for (rel, bytes) in fixture_wals() {
        assert_eq!(
            testdata(rel),
            bytes,
            "{rel} is stale; run regenerate_fixtures"
        );
    }
    assert_eq!(
        testdata("ltx/truncated.ltx"),
        fixture_ltx()[..HEADER_SIZE + 300]
    );
}

#[test]
fn truncated_ltx_is_corrupt() {
    let b = testdata("ltx/truncated.ltx");
    assert!(matches!(decode_all(&b), Err(Error::Corrupt(m)) if m.starts_with("truncated")));
    for cut in 0..b.len() {
        assert!(decode_all(&b[..cut]).is_err());
    }
    let full = fixture_ltx();
    for cut in 0..full.len() {
        assert!(decode_all(&full[..cut]).is_err(), "cut at {cut}");
    }
}

#[test]
fn bitflip_ltx_fails_file_checksum() {
    let b = testdata("ltx/bitflip.ltx");
    let mut dec = Decoder::new(&b[..]).unwrap();
    let mut buf = Vec::new();
    assert_eq!(dec.next_page(&mut buf).unwrap(), Some(2));
    assert_ne!(buf, noise(2, 512)); // decodes, but to the wrong bytes
    assert!(matches!(
        dec.finish(),
        Err(Error::ChecksumMismatch {
            what: "file checksum",
            ..
        })
    ));
}

fn read_wal(bytes: &[u8]) -> Vec<(u32, u32)> {
    let h = WalHeader::decode(bytes).unwrap();
    let mut r = FrameReader::new(&bytes[WAL_HEADER_SIZE..], &h, (h.checksum1, h.checksum2));
    let mut frames = Vec::new();
    while let Some((fh, page)) = r.next().unwrap() {
        assert!(page.iter().all(|&b| b == fh.pgno as u8));
        frames.push((fh.pgno, fh.commit));
    }
    assert_eq!(r.frames_read(), frames.len() as u64);
    frames
}

#[test]
fn wal_fixtures() {
    assert_eq!(
        read_wal(&testdata("wal/valid.wal")),
        [(1, 0), (2, 0), (3, 3)]
    );
    assert_eq!(
        read_wal(&testdata("wal/salt_mismatch.wal")),
        [(1, 0), (2, 2)]
    );
    assert_eq!(read_wal(&testdata("wal/checksum_mismatch.wal")), [(1, 1)]);
    let h = WalHeader::decode(&testdata("wal/valid.wal")).unwrap();
    assert_eq!((h.page_size, h.salt1, h.checkpoint_seq), (512, 0x5a17, 1));
    assert!(!h.big_endian_checksums());
}

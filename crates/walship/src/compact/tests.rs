//! Merges, compaction levels, snapshots and retention against real files in a folder
//! replica, checked by restoring (which verifies every checksum record) and comparing
//! with a model of the database.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;

use chrono::DateTime;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::pagesums::PageSums;
use crate::restore::{Check, Report};
use crate::store::folder::FolderStore;

const PAGE: u32 = 512;
static NO_HALT: AtomicBool = AtomicBool::new(false);

/// A database history written as level-0 files, with the state after every TXID.
struct Fixture {
    dir: tempfile::TempDir,
    store: FolderStore,
    /// `states[t]`: the pages after TXID `t` (`states[0]` is empty).
    states: Vec<Vec<Option<Vec<u8>>>>,
    sums: PageSums,
    rng: SmallRng,
}

impl Fixture {
    fn new(seed: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = FolderStore::new(dir.path().join("replica"));
        Fixture { dir, store, states: vec![Vec::new()], sums: PageSums::default(), rng: SmallRng::seed_from_u64(seed) }
    }

    fn scratch(&self) -> &Path {
        self.dir.path()
    }

    fn txid(&self) -> u64 {
        self.states.len() as u64 - 1
    }

    fn page(&mut self) -> Vec<u8> {
        let mut p = vec![0u8; PAGE as usize];
        // Compressible and not: half the pages are mostly one byte.
        if self.rng.random_bool(0.5) {
            p.fill(self.rng.random());
            p[0] = self.rng.random();
        } else {
            self.rng.fill(&mut p[..]);
        }
        p
    }

    /// Commits a random change like SQLite's: some pages rewritten, the size up or
    /// down, and every page of a growth written.
    fn commit_random(&mut self, ts: i64) {
        let old = self.states.last().unwrap().len() as u32;
        let commit = if old == 0 {
            self.rng.random_range(1..30)
        } else {
            match self.rng.random_range(0..10) {
                0 => self.rng.random_range(1..=old),
                1..=3 => old + self.rng.random_range(1..5),
                _ => old,
            }
        };
        let mut changes = BTreeMap::new();
        for p in old.min(commit) + 1..=commit {
            changes.insert(p, self.page());
        }
        if old > 0 {
            for _ in 0..self.rng.random_range(1..6) {
                let p = self.rng.random_range(1..=old.min(commit));
                changes.insert(p, self.page());
            }
        }
        self.commit(commit, changes.into_iter().collect(), ts);
    }

    /// Writes the next TXID as a level-0 file in Litestream's form with its checksum
    /// record, and records the new state.
    fn commit(&mut self, commit: u32, changes: Vec<(u32, Vec<u8>)>, ts: i64) {
        let txid = TxId(self.txid() + 1);
        let pre = if txid == TxId(1) { Checksum::ZERO } else { self.sums.checksum() };
        let mut state = self.states.last().unwrap().clone();
        for (p, data) in &changes {
            let i = *p as usize - 1;
            if state.len() <= i {
                state.resize(i + 1, None);
            }
            state[i] = Some(data.clone());
            self.sums.set(*p, Checksum::page(*p, data));
        }
        state.resize(commit as usize, None);
        self.sums.resize(commit);
        let key = FileKey { level: 0, min: txid, max: txid };
        let header = Header {
            flags: HEADER_FLAG_NO_CHECKSUM,
            page_size: PAGE,
            commit,
            min_txid: txid,
            max_txid: txid,
            timestamp_ms: ts,
            pre_apply_checksum: Checksum::ZERO,
            wal_offset: 0,
            wal_size: 0,
            wal_salt1: 0,
            wal_salt2: 0,
            node_id: 0,
        };
        let path = self.dir.path().join("new.ltx");
        let mut enc = Encoder::new(File::create(&path).unwrap(), &header).unwrap();
        for (p, data) in &changes {
            enc.encode_page(*p, data).unwrap();
        }
        enc.finish(Checksum::ZERO).unwrap();
        replica_form::put_checksums(&self.store, key, Checksums { pre, post: self.sums.checksum() }).unwrap();
        self.store.put(key, &path).unwrap();
        self.states.push(state);
    }

    /// The database file after TXID `t`.
    fn bytes(&self, t: u64) -> Vec<u8> {
        self.states[t as usize].iter().flat_map(|p| p.clone().unwrap_or_else(|| vec![0; PAGE as usize])).collect()
    }

    fn restore(&self, target: Target) -> Result<(Vec<u8>, Report)> {
        let out = self.dir.path().join("restored.db");
        let report = restore::restore(&self.store, target, &out, true, Check::None)?;
        Ok((std::fs::read(&out).unwrap(), report))
    }

    /// Asserts that restoring TXID `t` gives exactly the model's state, checksums verified.
    #[track_caller]
    fn assert_restores(&self, t: u64) -> Report {
        let (bytes, report) = self.restore(Target::TxId(TxId(t))).unwrap_or_else(|e| panic!("restore TXID {t}: {e}"));
        assert_eq!(report.txid, TxId(t));
        assert!(report.checksum_verified, "TXID {t}: checksums not verified");
        assert!(bytes == self.bytes(t), "TXID {t}: restored content differs from the model");
        report
    }

    /// The store, to give a compactor (which borrows it) while the fixture changes.
    fn store(&self) -> FolderStore {
        self.store.clone()
    }

    fn keys(&self, level: u8) -> Vec<FileKey> {
        self.store.list(level).unwrap().iter().map(|f| f.key).collect()
    }

    fn sums(&self, keys: &[FileKey]) -> Vec<Option<Checksums>> {
        keys.iter().map(|k| replica_form::get_checksums(&self.store, *k).unwrap()).collect()
    }
}

fn l0(a: u64, b: u64) -> Vec<FileKey> {
    (a..=b).map(|t| FileKey { level: 0, min: TxId(t), max: TxId(t) }).collect()
}

#[test]
fn merge_equals_applying_the_inputs_in_order() {
    for seed in 0..40u64 {
        let mut f = Fixture::new(seed);
        let n = f.rng.random_range(2..16);
        for t in 1..=n {
            f.commit_random(t as i64 * 1000);
        }
        let a = f.rng.random_range(1..=n);
        let b = f.rng.random_range(a..=n);
        let inputs = l0(a, b);
        let sums = f.sums(&inputs);
        // Every third case spills to the scratch file after two pages.
        let cap = if seed % 3 == 0 { 2 * PAGE as usize } else { MEMORY_CAP };
        let out = f.scratch().join("merged.ltx");
        let spill = f.scratch().join("spill");
        let merged = merge_capped(&f.store, &inputs, &sums, 1, &out, &spill, &NO_HALT, cap).unwrap();
        let Merged::Written(m) = merged else { panic!("seed {seed}: {merged:?}") };
        assert!(!spill.exists(), "the scratch file is removed");
        assert_eq!(m.key, FileKey { level: 1, min: TxId(a), max: TxId(b) });
        assert_eq!(m.timestamp_ms, b as i64 * 1000);
        assert_eq!(m.sums, Some(Checksums { pre: sums[0].unwrap().pre, post: sums.last().unwrap().unwrap().post }));
        let header = Decoder::new(File::open(&out).unwrap()).unwrap().header().clone();
        assert!(!header.has_checksums() && header.pre_apply_checksum == Checksum::ZERO);
        replica_form::put_checksums(&f.store, m.key, m.sums.unwrap()).unwrap();
        f.store.put(m.key, &out).unwrap();
        // Restore reaches `b` through the merged file (the plan prefers it), checking
        // every checksum on the way.
        let plan = restore::plan(&f.store, Target::TxId(TxId(b))).unwrap();
        assert!(plan.iter().any(|p| p.key == m.key), "seed {seed}: plan {plan:?} skips {}", m.key);
        f.assert_restores(b);
        for t in 1..=n {
            f.assert_restores(t);
        }
    }
}

#[test]
fn spilled_and_in_memory_merges_are_identical() {
    let mut f = Fixture::new(7);
    for t in 1..=40 {
        f.commit_random(t);
    }
    let inputs = l0(1, 40);
    let sums = f.sums(&inputs);
    let (a, b) = (f.scratch().join("a.ltx"), f.scratch().join("b.ltx"));
    let spill = f.scratch().join("spill");
    merge_capped(&f.store, &inputs, &sums, 9, &a, &spill, &NO_HALT, MEMORY_CAP).unwrap();
    merge_capped(&f.store, &inputs, &sums, 9, &b, &spill, &NO_HALT, 3 * PAGE as usize).unwrap();
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
}

#[test]
fn a_broken_checksum_chain_is_never_merged_across() {
    let mut f = Fixture::new(3);
    for t in 1..=12 {
        f.commit_random(t);
    }
    // File 8's record no longer follows file 7's.
    let k8 = l0(8, 8)[0];
    let mut s8 = replica_form::get_checksums(&f.store, k8).unwrap().unwrap();
    s8.pre = Checksum(s8.pre.0 ^ 1);
    replica_form::put_checksums(&f.store, k8, s8).unwrap();
    assert!(matches!(merge(&f.store, &l0(2, 12), &f.sums(&l0(2, 12)), 1, &f.scratch().join("x"), &f.scratch().join("y"), &NO_HALT), Err(Error::Corrupt(_))));
    let store = f.store();
    let mut c = Compactor::new(&store, Compaction::default(), f.scratch(), "test");
    assert_eq!(c.compact_level(1, &NO_HALT).unwrap(), Some(FileKey { level: 1, min: TxId(1), max: TxId(7) }));
    assert_eq!(c.compact_level(1, &NO_HALT).unwrap(), Some(FileKey { level: 1, min: TxId(8), max: TxId(12) }));
    assert_eq!(c.compact_level(1, &NO_HALT).unwrap(), None);
    // Restore still sees the break.
    f.assert_restores(7);
    assert!(matches!(f.restore(Target::TxId(TxId(8))), Err(Error::Corrupt(_))));
}

#[test]
fn a_page_shrunk_away_and_back_unwritten_splits_the_merge() {
    let mut f = Fixture::new(5);
    let pages: Vec<(u32, Vec<u8>)> = (1..=6).map(|p| (p, vec![p as u8; PAGE as usize])).collect();
    f.commit(6, pages, 1);
    f.commit(6, vec![(2, vec![9; PAGE as usize])], 2);
    f.commit(3, vec![(1, vec![7; PAGE as usize])], 3);
    // Back to 6 pages, rewriting only page 5: pages 4 and 6 are zeros now.
    f.commit(6, vec![(5, vec![8; PAGE as usize])], 4);
    f.commit(6, vec![(1, vec![6; PAGE as usize])], 5);
    let inputs = l0(2, 5);
    let out = f.scratch().join("m.ltx");
    let spill = f.scratch().join("spill");
    assert_eq!(merge(&f.store, &inputs, &f.sums(&inputs), 1, &out, &spill, &NO_HALT).unwrap(), Merged::Gap);
    let store = f.store();
    let mut c = Compactor::new(&store, Compaction::default(), f.scratch(), "test");
    while c.compact_level(1, &NO_HALT).unwrap().is_some() {}
    c.snapshot(&NO_HALT).unwrap();
    for t in 1..=5 {
        f.assert_restores(t);
    }
    // No one file can hold state 5 with its checksum (pages 4 and 6 are absent, not
    // zero pages), so the snapshot stops before TXID 4.
    let (bytes, report) = f.restore(Target::Latest).unwrap();
    assert_eq!(bytes, f.bytes(5));
    assert!(f.keys(SNAPSHOT_LEVEL).iter().all(|k| k.max < TxId(4)), "{:?}", f.keys(SNAPSHOT_LEVEL));
    assert!(report.files <= 3, "{report:?}");
}

#[test]
fn levels_and_snapshots_make_restores_use_few_files() {
    let mut f = Fixture::new(11);
    let store = f.store();
    // Merges past four pages spill to the scratch file.
    let mut c = Compactor::new(&store, Compaction::default(), f.scratch(), "test").with_memory_cap(4 * PAGE as usize);
    let mut t = 0;
    for round in 1..=24 {
        for _ in 0..f.rng.random_range(1..5) {
            t += 1;
            f.commit_random(t);
        }
        c.compact_level(1, &NO_HALT).unwrap();
        if round % 3 == 0 {
            c.compact_level(2, &NO_HALT).unwrap();
        }
        if round % 6 == 0 {
            c.compact_level(3, &NO_HALT).unwrap();
        }
    }
    let n = f.txid();
    let report = f.assert_restores(n);
    assert!(report.files <= 4, "latest from {} files (L0 [1,1] + L3 covering the rest)", report.files);
    for t in 1..=n {
        f.assert_restores(t);
    }
    let snap = c.snapshot(&NO_HALT).unwrap().expect("a snapshot");
    assert_eq!(snap, FileKey { level: SNAPSHOT_LEVEL, min: TxId(1), max: TxId(n) });
    assert_eq!(f.assert_restores(n).files, 1);
    assert_eq!(c.snapshot(&NO_HALT).unwrap(), None, "nothing new after the snapshot");
    // Levels above 1 hold only merges of the level below.
    for level in 1..=3u8 {
        let keys = f.keys(level);
        assert!(!keys.is_empty(), "level {level} has files");
        assert_eq!(contiguous(&keys), keys, "level {level} is one chain");
    }
}

/// A history with compactions and snapshots at random moments, then retention at
/// every cutoff: each state from the cutoff on restores exactly (by TXID and by time),
/// and files were deleted.
#[test]
fn retention_keeps_every_state_inside_the_window() {
    for seed in 0..8u64 {
        let mut f = Fixture::new(100 + seed);
        let store = f.store();
    let mut c = Compactor::new(&store, Compaction::default(), f.scratch(), "test");
        let n = 80;
        for t in 1..=n {
            f.commit_random(t as i64 * 1000);
            let r: u32 = f.rng.random_range(0..100);
            if r < 30 {
                c.compact_level(1, &NO_HALT).unwrap();
            }
            if r < 10 {
                c.compact_level(2, &NO_HALT).unwrap();
            }
            if r < 4 {
                c.compact_level(3, &NO_HALT).unwrap();
            }
            if r >= 95 {
                c.snapshot(&NO_HALT).unwrap();
            }
        }
        let before = list_all(&f.store).unwrap().len();
        let mut deleted = 0;
        let mut cutoffs: Vec<u64> = (0..4).map(|_| f.rng.random_range(10..=n)).collect();
        cutoffs.sort();
        for cutoff in cutoffs {
            // retention 1 s, so "now" is one second after the cutoff state.
            c.settings.retention = Duration::from_secs(1);
            deleted += c.enforce_retention(cutoff as i64 * 1000 + 1000).unwrap().len();
            for t in cutoff..=n {
                f.assert_restores(t);
                let time = DateTime::from_timestamp_millis(t as i64 * 1000 + 500).unwrap();
                let (bytes, report) = f.restore(Target::Time(time)).unwrap_or_else(|e| panic!("seed {seed}: time of {t}: {e}"));
                assert_eq!((report.txid, bytes == f.bytes(t)), (TxId(t), true), "seed {seed}: restore at the time of TXID {t}");
            }
            // Keep compacting after retention.
            c.compact_level(1, &NO_HALT).unwrap();
            c.compact_level(2, &NO_HALT).unwrap();
        }
        let after = list_all(&f.store).unwrap().len();
        assert!(deleted > 0 && after < before, "seed {seed}: {before} files, {after} after retention");
    }
}

#[test]
fn retention_deletes_what_the_newest_old_snapshot_replaces() {
    let mut f = Fixture::new(9);
    let store = f.store();
    let mut c = Compactor::new(&store, Compaction::default(), f.scratch(), "test");
    for t in 1..=30 {
        f.commit_random(t * 1000);
        if t % 5 == 0 {
            c.compact_level(1, &NO_HALT).unwrap();
        }
        if t == 10 || t == 20 {
            c.snapshot(&NO_HALT).unwrap();
        }
    }
    c.settings.retention = Duration::from_millis(500);
    // The window starts at TXID 25's time: the snapshot at 20 is the newest before it.
    let deleted = c.enforce_retention(25_500).unwrap();
    let left = list_all(&f.store).unwrap();
    assert!(deleted.contains(&FileKey { level: SNAPSHOT_LEVEL, min: TxId(1), max: TxId(10) }));
    assert!(left.iter().all(|i| i.key.max > TxId(20) || i.key == FileKey { level: SNAPSHOT_LEVEL, min: TxId(1), max: TxId(20) }), "{left:?}");
    // L0 21..25 lie inside L1 [21, 25], written at 25 s: they go but the last one,
    // which restore by time needs.
    let l0: Vec<u64> = f.keys(0).iter().map(|k| k.min.0).collect();
    assert_eq!(l0, (25..=30).collect::<Vec<_>>());
    for t in 25..=30 {
        f.assert_restores(t);
    }
    assert!(f.restore(Target::TxId(TxId(19))).is_err());
}

#[test]
fn durations_and_alignment() {
    let s = Duration::from_secs;
    assert_eq!((next_slot(1_000, s(1)), next_slot(1_999, s(1))), (2_000, 2_000));
    assert_eq!((next_slot(29_999, s(30)), next_slot(30_000, s(30))), (30_000, 60_000));
    assert_eq!(next_slot(5, Duration::from_secs(u64::MAX)), i64::MAX);
    assert_eq!(contiguous(&[l0(1, 3), l0(5, 6)].concat()), l0(1, 3));
    let overlapping = vec![FileKey { level: 1, min: TxId(1), max: TxId(4) }, FileKey { level: 1, min: TxId(3), max: TxId(5) }, FileKey { level: 1, min: TxId(5), max: TxId(5) }];
    assert_eq!(contiguous(&overlapping), vec![overlapping[0], overlapping[2]]);
}

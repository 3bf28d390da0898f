//! Applies LTX files to a follower's database, each inside ONE SQLite write
//! transaction through the `sqlite_dbpage` virtual table, from a separate in-memory
//! connection that ATTACHes the replica (the method sqlite3_rsync uses). Pages go
//! through SQLite's pager and WAL, so readers of the replica only ever see whole
//! transactions.
//!
//! The follower keeps a CRC per page of the *primary's* pages. SQLite rewrites a few
//! page-1 header bytes on commit (24–27, 92–99), so the primary's values of those bytes
//! are kept beside the position and patched in whenever the replica's page 1 is read
//! for a checksum.

use std::io::Read;
use std::path::{Path, PathBuf};

use ltx::{Checksum, Decoder, Header, TxId};
use rusqlite::{Connection, config::DbConfig};

use crate::error::{Error, Result};
use crate::live::position::{HeaderBytes, PositionFile, Saved};
use crate::local::Pos;
use crate::pagesums::PageSums;
use crate::replica_form::Checksums;

/// What applying a file led to.
#[derive(Debug)]
pub enum Applied {
    /// The file (whose header this is) was applied.
    Ok(Header),
    /// The file does not continue the replica's position (its TXIDs or pre-apply
    /// checksum do not follow): nothing was changed.
    Gap,
}

/// A follower's database and what walship knows of its content.
pub struct ReplicaDb {
    conn: Connection,
    path: PathBuf,
    position: PositionFile,
    sums: PageSums,
    /// The primary's page-1 bytes that SQLite rewrites on the replica.
    header_bytes: HeaderBytes,
    page_size: u32,
    pos: Pos,
    data_version: i64,
}

impl ReplicaDb {
    /// Opens (creating when missing) the replica at `path`, keeping its position in
    /// `position`. Reads every page once to check that the replica still holds the
    /// state the position names; when it does not (a write behind walship's back, a
    /// crash before the position was saved) the position is unknown and the next
    /// file must be a snapshot.
    pub fn open(path: &Path, position: PositionFile) -> Result<ReplicaDb> {
        let conn = Connection::open_in_memory()?;
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_DEFENSIVE, false)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute("ATTACH DATABASE ?1 AS r", [path.to_string_lossy()])?;
        // NORMAL: a commit is not fsynced. After a power cut the replica may be older
        // than its position file; the checksum check at open then asks for a snapshot.
        // Checkpoints run on another thread (see `follow`), never in an apply.
        conn.execute_batch("PRAGMA r.cache_size=-1024; PRAGMA r.synchronous=NORMAL; PRAGMA wal_autocheckpoint=0;")?;
        let mut db = ReplicaDb {
            conn,
            path: path.to_path_buf(),
            position,
            sums: PageSums::default(),
            header_bytes: HeaderBytes::default(),
            page_size: 0,
            pos: Pos::default(),
            data_version: 0,
        };
        db.data_version = db.data_version()?;
        let saved = db.position.load()?;
        for candidate in saved {
            if db.verify(&candidate)? {
                db.pos = candidate.pos;
                db.header_bytes = candidate.header;
                break;
            }
        }
        Ok(db)
    }

    /// The replica's position (TXID 0 when unknown: the next file must be a snapshot).
    pub fn pos(&self) -> Pos {
        self.pos
    }

    /// The replica's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether something other than walship committed to the replica since walship's
    /// last commit and changed its content. Then the position is forgotten (the next
    /// file must be a snapshot) and true is returned. A commit that left the content
    /// as walship wrote it (say, a checkpoint) only updates the watermark.
    pub fn check_foreign_writes(&mut self) -> Result<bool> {
        let now = self.data_version()?;
        if now == self.data_version {
            return Ok(false);
        }
        let saved = Saved { pos: self.pos, header: self.header_bytes };
        let intact = self.pos.txid != TxId(0) && self.verify(&saved)?;
        self.data_version = now;
        if intact {
            return Ok(false);
        }
        self.pos = Pos::default();
        Ok(true)
    }

    /// Applies one LTX file read from `r` in a single write transaction, after
    /// checking that it continues the replica's position. Every page is written
    /// before the file's checksums are known, so a file that fails them (or ends
    /// early) is rolled back: the replica never holds part of a file. `expect` gives
    /// the database checksums of a file stored without them (Litestream's form).
    pub fn apply(&mut self, r: impl Read, name: &str, expect: Option<Checksums>) -> Result<Applied> {
        let mut dec = Decoder::new(r).map_err(|e| Error::ltx(name, e))?;
        let mut header = dec.header().clone();
        if let Some(sums) = expect.filter(|_| !header.has_checksums()) {
            header.flags &= !ltx::HEADER_FLAG_NO_CHECKSUM;
            header.pre_apply_checksum = sums.pre;
        }
        let expected_post = expect.map(|s| s.post);
        if !self.continues(&header) {
            return Ok(Applied::Gap);
        }
        let empty = self.conn.query_row("PRAGMA r.page_count", [], |r| r.get::<_, u32>(0))? == 0;
        if empty {
            // A new replica takes the primary's page size.
            self.conn.execute_batch(&format!("PRAGMA r.page_size={}", header.page_size))?;
        }
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        match self.write_pages(&mut dec, &header, name, expected_post) {
            Ok(done) => {
                // The position goes first: after a crash the replica holds either
                // state, and both are in the file.
                self.position.save(&[
                    Saved { pos: self.pos, header: self.header_bytes },
                    Saved { pos: done.pos, header: done.header },
                ])?;
                if let Err(e) = self.conn.execute_batch("COMMIT") {
                    let _ = self.conn.execute_batch("ROLLBACK");
                    return Err(e.into());
                }
                self.commit_done(done);
                Ok(Applied::Ok(header))
            }
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                Err(e)
            }
        }
    }

    /// Calls `f(pgno, page)` for every page of the primary's state at [`Self::pos`]
    /// (page 1 as the primary has it), inside one read transaction.
    pub fn for_each_page(&self, mut f: impl FnMut(u32, &[u8]) -> Result<()>) -> Result<u32> {
        self.conn.execute_batch("BEGIN")?;
        let result = (|| {
            let mut stmt = self.conn.prepare_cached("SELECT pgno, data FROM sqlite_dbpage('r')")?;
            let mut rows = stmt.query([])?;
            let mut count = 0;
            let lock = ltx::lock_pgno(self.page_size.max(512));
            while let Some(row) = rows.next()? {
                let pgno: u32 = row.get(0)?;
                let data = row.get_ref(1)?.as_blob().map_err(rusqlite::Error::from)?;
                if pgno == 1 {
                    let mut page1 = data.to_vec();
                    self.header_bytes.patch(&mut page1);
                    f(pgno, &page1)?;
                } else if pgno != lock {
                    f(pgno, data)?;
                }
                count = pgno;
            }
            Ok(count)
        })();
        let _ = self.conn.execute_batch("ROLLBACK");
        result
    }

    /// The database's page size (0 while empty).
    pub fn page_size(&self) -> u32 {
        self.page_size
    }

    /// The replica's size in pages as walship last wrote it.
    pub fn page_count(&self) -> u32 {
        self.sums.page_count()
    }

    fn continues(&self, h: &Header) -> bool {
        if h.is_snapshot() {
            return true;
        }
        self.pos.txid != TxId(0)
            && h.min_txid.0 == self.pos.txid.0 + 1
            && (!h.has_checksums() || h.pre_apply_checksum == self.pos.checksum)
            && h.page_size == self.page_size
    }

    fn write_pages<R: Read>(&mut self, dec: &mut Decoder<R>, h: &Header, name: &str, expected_post: Option<Checksum>) -> Result<Done> {
        let pages_before: u32 = self.conn.query_row("PRAGMA r.page_count", [], |r| r.get(0))?;
        if pages_before != 0 && h.page_size != self.current_page_size()? {
            return Err(Error::Corrupt(format!(
                "{name}: page size {} differs from the replica's; delete {} and its state folder to start over",
                h.page_size,
                self.path.display()
            )));
        }
        let mut insert = self.conn.prepare_cached("INSERT INTO sqlite_dbpage(pgno, data, schema) VALUES (?1, ?2, 'r')")?;
        let mut changes = Vec::new();
        let mut header = self.header_bytes;
        let mut page = Vec::new();
        // Pages past the current end must follow one another (a snapshot starts from
        // nothing), so the size a file claims is always backed by pages it carries.
        let mut end = if h.is_snapshot() { 0 } else { pages_before };
        let lock = ltx::lock_pgno(h.page_size);
        while let Some(pgno) = dec.next_page(&mut page).map_err(|e| Error::ltx(name, e))? {
            if pgno > end {
                if pgno != end + 1 && !(pgno == end + 2 && end + 1 == lock) {
                    return Err(Error::Corrupt(format!("{name}: page {pgno} is past the end of the database ({end} pages)")));
                }
                end = pgno;
            }
            if pgno == 1 {
                header = HeaderBytes::from_page(&page);
            }
            changes.push((pgno, Checksum::page(pgno, &page)));
            insert.execute(rusqlite::params![pgno, &page])?;
        }
        let trailer = dec.finish().map_err(|e| Error::ltx(name, e))?;
        if h.commit > end {
            return Err(Error::Corrupt(format!("{name}: says the database has {} pages, but only {end} exist", h.commit)));
        }
        if h.commit < pages_before.max(self.sums.page_count()) {
            insert.execute(rusqlite::params![h.commit + 1, rusqlite::types::Null])?;
        }
        let sums = if h.is_snapshot() {
            let mut fresh = PageSums::default();
            fresh.apply(h.commit, &changes);
            Some(fresh)
        } else {
            None
        };
        let post = match &sums {
            Some(s) => s.checksum(),
            None => self.sums.preview(h.commit, &changes),
        };
        let expected = expected_post.or(h.has_checksums().then_some(trailer.post_apply_checksum));
        if let Some(expected) = expected.filter(|e| *e != post) {
            return Err(Error::Corrupt(format!(
                "{name}: the database checksum after it would be {post}, the history says {expected}"
            )));
        }
        Ok(Done { pos: Pos { txid: h.max_txid, checksum: post }, header, commit: h.commit, changes, sums, page_size: h.page_size })
    }

    fn commit_done(&mut self, done: Done) {
        match done.sums {
            Some(s) => self.sums = s,
            None => self.sums.apply(done.commit, &done.changes),
        }
        self.pos = done.pos;
        self.header_bytes = done.header;
        self.page_size = done.page_size;
        // Our own commit does not move our connection's data_version; a foreign one will.
        if let Ok(v) = self.data_version() {
            self.data_version = v;
        }
    }

    /// Reads every page and checks that, with page 1's rewritten bytes patched back,
    /// the replica adds up to `saved`'s checksum. Rebuilds the page checksums on the way.
    fn verify(&mut self, saved: &Saved) -> Result<bool> {
        let mut sums = PageSums::default();
        let mut page_size = 0;
        self.conn.execute_batch("BEGIN")?;
        let scan = (|| -> Result<()> {
            let mut stmt = self.conn.prepare_cached("SELECT pgno, data FROM sqlite_dbpage('r')")?;
            let mut rows = stmt.query([])?;
            while let Some(row) = rows.next()? {
                let pgno: u32 = row.get(0)?;
                let data = row.get_ref(1)?.as_blob().map_err(rusqlite::Error::from)?;
                page_size = data.len() as u32;
                if pgno == 1 {
                    let mut page1 = data.to_vec();
                    saved.header.patch(&mut page1);
                    sums.set(1, Checksum::page(1, &page1));
                } else if pgno != ltx::lock_pgno(page_size) {
                    sums.set(pgno, Checksum::page(pgno, data));
                }
            }
            Ok(())
        })();
        let _ = self.conn.execute_batch("ROLLBACK");
        scan?;
        if sums.page_count() == 0 || sums.checksum() != saved.pos.checksum {
            return Ok(false);
        }
        self.sums = sums;
        self.page_size = page_size;
        Ok(true)
    }

    fn current_page_size(&self) -> Result<u32> {
        Ok(self.conn.query_row("PRAGMA r.page_size", [], |r| r.get(0))?)
    }

    fn data_version(&self) -> Result<i64> {
        Ok(self.conn.query_row("PRAGMA r.data_version", [], |r| r.get(0))?)
    }
}

/// A file written but not yet committed: what the replica will know after COMMIT.
struct Done {
    pos: Pos,
    header: HeaderBytes,
    commit: u32,
    changes: Vec<(u32, Checksum)>,
    sums: Option<PageSums>,
    page_size: u32,
}

#[cfg(test)]
mod tests;

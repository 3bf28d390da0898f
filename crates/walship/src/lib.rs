//! walship: streams a live SQLite database's changes off the machine as LTX files.
//!
//! Map of the crate (dependencies point down the list):
//! - [`replicate`]: the `replicate` job: capture thread + one uploader per replica.
//! - [`compact`]: per-replica compaction (levels 1–3, snapshots at 9) and retention.
//! - [`restore`]: rebuild a database from a replica (latest, TXID, timestamp).
//!   - [`prefetch`]: fetches the next small files of a restore on a few threads.
//! - [`live`]: live read replicas: the primary's HTTP server and the follower.
//! - [`capture`]: turns commits into local LTX files; owns every checkpoint.
//!   - [`wake`]: inotify on the `-wal` + an eventfd: what wakes the capture thread.
//!   - [`wal_tail`]: reads committed frames from the `-wal` file.
//!   - [`sqlite`]: walship's own connections, `sqlite_dbpage`, the -shm write lock (the barrier) and lock probes.
//!   - [`pagesums`]: per-page checksums of the captured state.
//! - [`local`]: the hidden state folder beside the database.
//! - [`replica_form`]: files in Litestream's no-checksum form + walship's checksum records.
//! - [`store`]: replica storage (folder, S3, Azure, GCS, SFTP), in Litestream 0.5's layouts.
//! - [`config`]: YAML configuration (Litestream's keys accepted).
//! - [`durable`]: temp → fsync → rename → fsync folder.
//! - [`error`]: the library's typed errors.
#![deny(missing_docs, unsafe_code)]

pub mod capture;
pub mod compact;
pub mod config;
pub mod durable;
pub mod error;
pub mod live;
pub mod local;
pub mod pagesums;
pub mod prefetch;
pub mod replica_form;
pub mod replicate;
pub mod restore;
pub mod sqlite;
pub mod store;
pub mod wake;
pub mod wal_tail;

pub use error::{Error, Result};

//! Integration tests: real `walship` processes, real python3 `sqlite3` writers, and the
//! real Litestream binary when installed.

mod cli_errors;
mod compaction;
mod disk_faults;
mod fault_proxy;
mod fuzz_replay;
mod litestream;
mod live;
mod object_store;
mod replicate;
mod restore;
mod support;
mod workload;

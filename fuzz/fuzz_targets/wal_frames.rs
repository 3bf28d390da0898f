//! Fuzz target `wal_frames`: see `fuzz/src/ltx_cases.rs` and docs/fuzzing.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    walship_fuzz::ltx_cases::wal_frames(data);
});

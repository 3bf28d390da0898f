//! Fuzz target `stream_frames`: see `fuzz/src/stream_cases.rs` and docs/fuzzing.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    walship_fuzz::stream_cases::stream_frames(data);
});

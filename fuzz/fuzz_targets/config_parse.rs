//! Fuzz target `config_parse`: see `fuzz/src/config_cases.rs` and docs/fuzzing.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    walship_fuzz::config_cases::config_parse(data);
});

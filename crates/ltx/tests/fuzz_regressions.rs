//! Replays the committed fuzz inputs (testdata/fuzz/<target>/, see docs/fuzzing.md)
//! through the same code the fuzz targets run (fuzz/src/ltx_cases.rs), so CI checks
//! them without a fuzzer: each must run without a panic (errors are fine).

use std::path::Path;

mod cases {
    include!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz/src/ltx_cases.rs"));
}

/// Every file of `testdata/<dir>`, sorted; at least one must exist.
fn inputs(dir: &str) -> Vec<(String, Vec<u8>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata").join(dir);
    let mut files: Vec<_> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no inputs in {}", root.display());
    files.into_iter().map(|p| (p.display().to_string(), std::fs::read(&p).unwrap())).collect()
}

fn replay(dirs: &[&str], body: fn(&[u8])) {
    for dir in dirs {
        for (name, bytes) in inputs(dir) {
            let r = std::panic::catch_unwind(|| body(&bytes));
            assert!(r.is_ok(), "{name} panicked (reproduce: cargo fuzz run with this file, see docs/fuzzing.md)");
        }
    }
}

#[test]
fn ltx_decode_regressions() {
    replay(&["fuzz/ltx_decode", "ltx"], cases::ltx_decode);
}

#[test]
fn wal_frames_regressions() {
    replay(&["fuzz/wal_frames", "wal"], cases::wal_frames);
}

/// Structured edge cases, beside the fuzzer's finds: empty and short inputs, and
/// every prefix of a committed input.
#[test]
fn short_inputs_and_prefixes() {
    for len in 0..=200 {
        let zeros = vec![0u8; len];
        cases::ltx_decode(&zeros);
        cases::wal_frames(&zeros);
    }
    for (_, bytes) in inputs("ltx") {
        for end in 0..=bytes.len() {
            cases::ltx_decode(&bytes[..end]);
        }
    }
    for (_, bytes) in inputs("wal") {
        for end in (0..=bytes.len()).step_by(7) {
            cases::wal_frames(&bytes[..end]);
        }
    }
}

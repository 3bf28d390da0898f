//! Replays the committed `config_parse` and `stream_frames` fuzz inputs
//! (tests/it/fuzz_config/, tests/it/fuzz_stream/, see
//! docs/fuzzing.md) through the fuzz targets' own bodies (fuzz/src/*_cases.rs), so CI
//! checks them without a fuzzer: each must parse or be refused, never panic.

mod cases {
    include!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz/src/config_cases.rs"));
}

mod stream {
    include!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz/src/stream_cases.rs"));
}

#[test]
fn config_parse_regressions() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/fuzz_config");
    let mut files: Vec<_> = std::fs::read_dir(&root).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert!(!files.is_empty(), "no inputs in {}", root.display());
    for path in files {
        let bytes = std::fs::read(&path).unwrap();
        let r = std::panic::catch_unwind(|| cases::config_parse(&bytes));
        assert!(r.is_ok(), "{} panicked", path.display());
    }
}

#[test]
fn stream_frames_regressions() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/fuzz_stream");
    let mut files: Vec<_> = std::fs::read_dir(&root).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert!(!files.is_empty(), "no inputs in {}", root.display());
    for path in files {
        let bytes = std::fs::read(&path).unwrap();
        let r = std::panic::catch_unwind(|| stream::stream_frames(&bytes));
        assert!(r.is_ok(), "{} panicked", path.display());
    }
}

//! Fuzz bodies shared by the fuzz targets and by the regression replays in the crates'
//! tests (which include these files with `#[path]`). See docs/fuzzing.md.

pub mod config_cases;
pub mod ltx_cases;
pub mod stream_cases;

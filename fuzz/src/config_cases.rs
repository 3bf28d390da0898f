// Fuzz body for walship's configuration parser, shared by the `config_parse` fuzz
// target and the regression replay in `crates/walship/tests/it/fuzz_replay.rs`.

/// `config_parse`: [`walship::config::parse`] over arbitrary UTF-8 (the bytes decoded
/// lossily, so every input is tried). Must not panic; a parsed config must list at least
/// one database, each with at least one replica location.
pub fn config_parse(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = walship::config::expand_env(&text);
    if let Ok(config) = walship::config::parse(&text) {
        assert!(!config.dbs.is_empty());
        for db in &config.dbs {
            let locations = db.replica_locations().expect("parse() checked the replicas");
            assert!(!locations.is_empty());
        }
    }
}

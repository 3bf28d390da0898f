//! The YAML configuration. It accepts Litestream's `litestream.yml` keys for databases
//! and file replicas, with `$VAR` / `${VAR}` expansion from the environment:
//!
//! ```yaml
//! dbs:
//!   - path: /data/app.db
//!     replica:            # Litestream 0.5 style: one replica
//!       type: file
//!       path: /backups/app
//!   - path: /data/other.db
//!     replicas:           # several replicas (walship extension; Litestream 0.3 style)
//!       - url: file:///backups/other
//!       - path: /mnt/nfs/other
//! ```

use std::path::PathBuf;

use serde::Deserialize;

use crate::error::{Error, Result};

/// A whole configuration file.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The databases to replicate.
    #[serde(default)]
    pub dbs: Vec<DbConfig>,
    /// Accepted for Litestream compatibility and ignored (logging, metrics address, ...).
    #[serde(default, rename = "addr")]
    pub _addr: Option<String>,
    /// Accepted for Litestream compatibility and ignored.
    #[serde(default, rename = "logging")]
    pub _logging: Option<serde::de::IgnoredAny>,
}

/// One database.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct DbConfig {
    /// Path of the SQLite database.
    pub path: PathBuf,
    /// One replica (Litestream 0.5's key).
    #[serde(default)]
    pub replica: Option<ReplicaConfig>,
    /// Several replicas.
    #[serde(default)]
    pub replicas: Vec<ReplicaConfig>,
    /// Litestream's `monitor-interval` and other tuning keys are accepted and ignored:
    /// capture is event-driven.
    #[serde(default, rename = "monitor-interval")]
    pub _monitor_interval: Option<String>,
    /// Accepted and ignored (walship decides checkpoints by `checkpoint-frames`).
    #[serde(default, rename = "checkpoint-interval")]
    pub _checkpoint_interval: Option<String>,
    /// Checkpoint once the WAL holds this many frames (default 1000).
    #[serde(default, alias = "min-checkpoint-page-count")]
    pub checkpoint_frames: Option<u64>,
    /// TRUNCATE the WAL once it is larger than this many bytes (default 8 MiB).
    #[serde(default)]
    pub truncate_bytes: Option<u64>,
}

/// One replica destination.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaConfig {
    /// `file` (the default when `path` is given).
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// Folder of a file replica.
    #[serde(default)]
    pub path: Option<String>,
    /// A replica URL (`file:///…`).
    #[serde(default)]
    pub url: Option<String>,
    /// Litestream's optional replica name; used in messages only.
    #[serde(default)]
    pub name: Option<String>,
}

impl ReplicaConfig {
    /// The replica argument this entry stands for (a folder path or URL).
    pub fn location(&self) -> Result<String> {
        match (&self.url, &self.path, self.kind.as_deref()) {
            (Some(_), Some(_), _) => Err(Error::Invalid("a replica has both `url` and `path`; give one".into())),
            (Some(url), None, _) => Ok(url.clone()),
            (None, Some(path), None | Some("file")) => Ok(path.clone()),
            (None, Some(_), Some(other)) => Err(Error::Invalid(format!(
                "replica type {other:?} is not supported yet (supported: file)"
            ))),
            (None, None, _) => Err(Error::Invalid("a replica needs `path` or `url`".into())),
        }
    }
}

impl DbConfig {
    /// Every replica of this database, from `replica` and `replicas` together.
    pub fn replica_locations(&self) -> Result<Vec<String>> {
        let all: Vec<String> =
            self.replica.iter().chain(&self.replicas).map(ReplicaConfig::location).collect::<Result<_>>()?;
        if all.is_empty() {
            return Err(Error::Invalid(format!("database {} has no replica", self.path.display())));
        }
        Ok(all)
    }
}

/// Parses a configuration text, expanding environment variables first.
pub fn parse(text: &str) -> Result<Config> {
    let expanded = expand_env(text)?;
    let config: Config = serde_saphyr::from_str(&expanded).map_err(|e| {
        // The parser appends a source snippet; the first line says what and where.
        let msg = e.to_string();
        let first = msg.lines().next().unwrap_or_default().trim_start_matches("error: ");
        Error::Invalid(format!("config: {first}"))
    })?;
    if config.dbs.is_empty() {
        return Err(Error::Invalid("config: `dbs` lists no database".into()));
    }
    for db in &config.dbs {
        db.replica_locations()?;
    }
    Ok(config)
}

/// Replaces `$VAR` and `${VAR}` with the variable's value; `$$` is a literal `$`.
/// An unset variable is an error (an empty path would be worse).
pub fn expand_env(text: &str) -> Result<String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        rest = &rest[i + 1..];
        let (name, after) = if let Some(body) = rest.strip_prefix('{') {
            let end = body.find('}').ok_or_else(|| Error::Invalid("config: unclosed ${".into()))?;
            (&body[..end], &body[end + 1..])
        } else if let Some(after) = rest.strip_prefix('$') {
            out.push('$');
            rest = after;
            continue;
        } else {
            let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len());
            (&rest[..end], &rest[end..])
        };
        if name.is_empty() {
            out.push('$');
            continue;
        }
        let value = std::env::var(name)
            .map_err(|_| Error::Invalid(format!("config: environment variable {name} is not set")))?;
        out.push_str(&value);
        rest = after;
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn litestream_style_config_parses() {
        let home = std::env::var("PATH").unwrap();
        let c = parse(
            "dbs:\n  - path: /data/app.db\n    replica:\n      type: file\n      path: ${PATH}/app\n  - path: /data/b.db\n    replicas:\n      - url: file:///x\n      - path: $PATH/b\n",
        )
        .unwrap();
        assert_eq!(c.dbs[0].replica_locations().unwrap(), [format!("{home}/app")]);
        assert_eq!(c.dbs[1].replica_locations().unwrap(), ["file:///x".to_string(), format!("{home}/b")]);
    }

    #[test]
    fn bad_configs_are_refused_with_a_reason() {
        for (text, needle) in [
            ("dbs: []\n", "no database"),
            ("dbs:\n  - path: /a.db\n", "no replica"),
            ("dbs:\n  - path: /a.db\n    replica:\n      type: s4\n      path: x\n", "not supported"),
            ("dbs:\n  - path: /a.db\n    bogus: 1\n", "bogus"),
            ("dbs:\n  - path: $WALSHIP_SURELY_UNSET_VAR\n", "not set"),
            ("dbs: [\n", "config"),
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text:?} gave {err:?}");
        }
    }
}

//! The YAML configuration. It accepts Litestream's `litestream.yml` keys for databases
//! and file and object-storage replicas, with `$VAR` / `${VAR}` expansion from the environment:
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
//!   - path: /data/third.db
//!     replica:            # object storage, Litestream's keys
//!       type: s3          # or abs (account-name, account-key, bucket = container), gs
//!       bucket: my-bucket
//!       path: third
//!       endpoint: http://127.0.0.1:9000   # S3-compatibles; optional
//!       region: us-east-1
//!       force-path-style: true
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
    /// Serve live followers on this address (e.g. `0.0.0.0:4000`).
    #[serde(default)]
    pub listen: Option<String>,
    /// Bearer token followers must send (`$VAR` expansion applies).
    #[serde(default)]
    pub token: Option<String>,
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
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ReplicaConfig {
    /// `file` (the default when `path` is given), `s3`, `abs` or `gs`.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// Folder of a file replica; key prefix of an object-storage replica.
    #[serde(default)]
    pub path: Option<String>,
    /// A replica URL (`file:///…`, `s3://…`, `abs://…`, `gs://…`).
    #[serde(default)]
    pub url: Option<String>,
    /// Litestream's optional replica name; used in messages only.
    #[serde(default)]
    pub name: Option<String>,
    /// S3 / GCS bucket, or Azure container.
    #[serde(default)]
    pub bucket: Option<String>,
    /// Endpoint URL (S3-compatibles, Azurite).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// S3 region.
    #[serde(default)]
    pub region: Option<String>,
    /// S3 path-style requests.
    #[serde(default)]
    pub force_path_style: Option<bool>,
    /// S3 access key id (else from the environment).
    #[serde(default)]
    pub access_key_id: Option<String>,
    /// S3 secret access key (else from the environment).
    #[serde(default)]
    pub secret_access_key: Option<String>,
    /// Azure storage account.
    #[serde(default)]
    pub account_name: Option<String>,
    /// Azure account key (else from the environment).
    #[serde(default)]
    pub account_key: Option<String>,
    /// Litestream's tuning keys, accepted so that its configs load, and ignored:
    /// uploads start at once, compaction and retention are walship's own, TLS is
    /// always verified, and request signing and part sizes are the client's.
    #[serde(default, rename = "sync-interval")]
    pub _sync_interval: Option<serde::de::IgnoredAny>,
    #[serde(default, rename = "retention")]
    #[doc(hidden)]
    pub _retention: Option<serde::de::IgnoredAny>,
    #[serde(default, rename = "retention-check-interval")]
    #[doc(hidden)]
    pub _retention_check_interval: Option<serde::de::IgnoredAny>,
    #[serde(default, rename = "snapshot-interval")]
    #[doc(hidden)]
    pub _snapshot_interval: Option<serde::de::IgnoredAny>,
    #[serde(default, rename = "validation-interval")]
    #[doc(hidden)]
    pub _validation_interval: Option<serde::de::IgnoredAny>,
    #[serde(default, rename = "skip-verify")]
    #[doc(hidden)]
    pub _skip_verify: Option<serde::de::IgnoredAny>,
    #[serde(default, rename = "sign-payload")]
    #[doc(hidden)]
    pub _sign_payload: Option<serde::de::IgnoredAny>,
    #[serde(default, rename = "require-content-md5")]
    #[doc(hidden)]
    pub _require_content_md5: Option<serde::de::IgnoredAny>,
    #[serde(default, rename = "part-size")]
    #[doc(hidden)]
    pub _part_size: Option<serde::de::IgnoredAny>,
    #[serde(default, rename = "concurrency")]
    #[doc(hidden)]
    pub _concurrency: Option<serde::de::IgnoredAny>,
}

impl std::fmt::Debug for ReplicaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print secrets.
        f.debug_struct("ReplicaConfig")
            .field("kind", &self.kind)
            .field("path", &self.path)
            .field("url", &self.url.as_deref().map(|u| u.split('?').next().unwrap_or_default()))
            .field("name", &self.name)
            .field("bucket", &self.bucket)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("account_name", &self.account_name)
            .finish_non_exhaustive()
    }
}

impl ReplicaConfig {
    /// The replica argument this entry stands for (a folder path or URL). Object-storage
    /// keys become the URL's query (which may then hold secrets: never log it whole).
    pub fn location(&self) -> Result<String> {
        let object_kind = matches!(self.kind.as_deref(), Some("s3" | "abs" | "gs" | "gcs"));
        match (&self.url, &self.path, self.kind.as_deref()) {
            (Some(_), Some(_), _) => Err(Error::Invalid("a replica has both `url` and `path`; give one".into())),
            (Some(url), None, _) => self.add_object_keys(url),
            (None, path, Some(kind)) if object_kind => {
                let bucket = self.bucket.as_deref().filter(|b| !b.is_empty()).ok_or_else(|| {
                    Error::Invalid(format!(
                        "a replica of type {kind} needs `bucket`{}",
                        if kind == "abs" { " (the container)" } else { "" }
                    ))
                })?;
                let host = if kind == "abs" {
                    let account = self.account_name.as_deref().filter(|a| !a.is_empty()).ok_or_else(|| {
                        Error::Invalid("a replica of type abs needs `account-name`".into())
                    })?;
                    format!("{account}@{bucket}")
                } else {
                    bucket.to_string()
                };
                let scheme = if kind == "gcs" { "gs" } else { kind };
                let mut url = url::Url::parse(&format!("{scheme}://{host}/"))
                    .map_err(|e| Error::Invalid(format!("replica bucket {bucket:?}: {e}")))?;
                url.set_path(path.as_deref().unwrap_or_default().trim_start_matches('/'));
                self.add_object_keys(url.as_str())
            }
            (None, Some(path), None | Some("file")) => {
                // Object-storage keys on a folder replica are a mistake worth reporting.
                self.add_object_keys("file:///")?;
                Ok(path.clone())
            }
            (None, Some(_), Some(other)) => Err(Error::Invalid(format!(
                "replica type {other:?} is not supported (supported: file, s3, abs, gs)"
            ))),
            (None, None, _) => Err(Error::Invalid("a replica needs `path` or `url`".into())),
        }
    }

    /// Appends the object-storage keys given in the config to a URL's query.
    fn add_object_keys(&self, url: &str) -> Result<String> {
        let pairs = [
            ("endpoint", self.endpoint.clone()),
            ("region", self.region.clone()),
            ("force-path-style", self.force_path_style.map(|b| b.to_string())),
            ("access-key-id", self.access_key_id.clone()),
            ("secret-access-key", self.secret_access_key.clone()),
            ("account-key", self.account_key.clone()),
        ];
        let given: Vec<(&str, String)> =
            pairs.into_iter().filter_map(|(k, v)| v.filter(|v| !v.is_empty()).map(|v| (k, v))).collect();
        if given.is_empty() {
            return Ok(url.to_string());
        }
        let mut parsed = url::Url::parse(url).map_err(|_| {
            Error::Invalid(format!("replica keys {:?} need an object-storage replica (type s3, abs or gs)", given[0].0))
        })?;
        if !matches!(parsed.scheme(), "s3" | "abs" | "gs" | "gcs" | "az" | "azure") {
            return Err(Error::Invalid(format!(
                "replica key {:?} needs an object-storage replica (type s3, abs or gs)",
                given[0].0
            )));
        }
        parsed.query_pairs_mut().extend_pairs(given);
        Ok(parsed.to_string())
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
    fn litestream_object_storage_replicas_become_urls() {
        let c = parse(
            r#"
dbs:
  - path: /a.db
    replica:
      type: s3
      bucket: bkt
      path: /db/a b
      endpoint: http://127.0.0.1:9000
      region: us-east-1
      force-path-style: true
      access-key-id: AK
      secret-access-key: S/K+1=
      sync-interval: 1s
      retention: 24h
      snapshot-interval: 1h
  - path: /b.db
    replica:
      type: abs
      account-name: devstoreaccount1
      account-key: a2V5
      bucket: cont
      path: b
      endpoint: http://127.0.0.1:10000/devstoreaccount1
  - path: /c.db
    replica:
      type: gs
      bucket: gbkt
      path: c
  - path: /d.db
    replica:
      url: s3://bkt/d
      region: eu-west-1
"#,
        )
        .unwrap();
        let spec = |i: usize| {
            crate::store::object::Spec::parse(&c.dbs[i].replica_locations().unwrap()[0]).unwrap()
        };
        let s3 = spec(0);
        assert_eq!((s3.bucket.as_str(), s3.prefix.as_str()), ("bkt", "db/a b"));
        assert_eq!(s3.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!((s3.access_key_id.as_deref(), s3.secret_access_key.as_deref()), (Some("AK"), Some("S/K+1=")));
        assert!(s3.force_path_style);
        let abs = spec(1);
        assert_eq!((abs.account.as_deref(), abs.bucket.as_str(), abs.prefix.as_str()), (Some("devstoreaccount1"), "cont", "b"));
        assert_eq!(abs.account_key.as_deref(), Some("a2V5"));
        assert_eq!(abs.endpoint.as_deref(), Some("http://127.0.0.1:10000/devstoreaccount1"));
        let gs = spec(2);
        assert_eq!((gs.bucket.as_str(), gs.prefix.as_str()), ("gbkt", "c"));
        let d = spec(3);
        assert_eq!((d.bucket.as_str(), d.region.as_deref()), ("bkt", Some("eu-west-1")));
    }

    #[test]
    fn bad_configs_are_refused_with_a_reason() {
        for (text, needle) in [
            ("dbs: []\n", "no database"),
            ("dbs:\n  - path: /a.db\n", "no replica"),
            ("dbs:\n  - path: /a.db\n    replica:\n      type: s4\n      path: x\n", "not supported"),
            ("dbs:\n  - path: /a.db\n    replica:\n      type: s3\n      path: x\n", "needs `bucket`"),
            ("dbs:\n  - path: /a.db\n    replica:\n      type: abs\n      bucket: c\n", "account-name"),
            ("dbs:\n  - path: /a.db\n    replica:\n      path: /x\n      region: r\n", "object-storage"),
            ("dbs:\n  - path: /a.db\n    bogus: 1\n", "bogus"),
            ("dbs:\n  - path: $WALSHIP_SURELY_UNSET_VAR\n", "not set"),
            ("dbs: [\n", "config"),
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text:?} gave {err:?}");
        }
    }
}

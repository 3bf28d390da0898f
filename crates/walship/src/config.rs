//! The YAML configuration. It accepts Litestream's `litestream.yml` keys for databases
//! and file, object-storage and SFTP replicas, with `$VAR` / `${VAR}` expansion from the
//! environment:
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
//!   - path: /data/fourth.db
//!     replica:            # SFTP, Litestream's keys
//!       type: sftp
//!       host: backup.example.com:22
//!       user: walship
//!       key-path: /etc/walship/id_ed25519   # or password: ${SFTP_PASSWORD}
//!       path: /backups/fourth             # relative: in the login folder
//!       known-hosts-path: /etc/walship/known_hosts   # default ~/.ssh/known_hosts
//! levels:                 # compaction levels 1, 2, 3 (Litestream 0.5's key and defaults)
//!   - interval: 30s
//!   - interval: 5m
//!   - interval: 1h
//! snapshot:               # full snapshots (level 9) and how long history is kept
//!   interval: 24h
//!   retention: 24h
//! ```
//!
//! A replica may override these with `retention`, `snapshot-interval`,
//! `retention-check-interval` and its own `levels` ([`Compaction`] has the defaults).

use std::path::PathBuf;
use std::time::Duration;

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
    /// Compaction levels 1, 2, 3, … and how often each runs (Litestream 0.5's `levels`).
    #[serde(default)]
    pub levels: Option<Vec<LevelConfig>>,
    /// Full snapshots and retention (Litestream 0.5's `snapshot`).
    #[serde(default)]
    pub snapshot: Option<SnapshotConfig>,
    /// Accepted and ignored: walship keeps level-0 files for the whole `retention`
    /// window, so that every TXID in it stays restorable.
    #[serde(default, rename = "l0-retention")]
    pub _l0_retention: Option<serde::de::IgnoredAny>,
    /// Accepted and ignored (see `l0-retention`).
    #[serde(default, rename = "l0-retention-check-interval")]
    pub _l0_retention_check_interval: Option<serde::de::IgnoredAny>,
}

/// One compaction level (`levels:` entry).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LevelConfig {
    /// How often the level is compacted, as a Go duration (`30s`, `5m`, `1h`).
    pub interval: String,
}

/// Litestream 0.5's `snapshot:` section.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SnapshotConfig {
    /// How often a full snapshot is written (default 24h).
    #[serde(default)]
    pub interval: Option<String>,
    /// How long every state stays restorable (default 24h).
    #[serde(default)]
    pub retention: Option<String>,
}

/// Compaction and retention of one replica. The defaults are Litestream 0.5's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compaction {
    /// How often levels 1, 2, 3, … (at most 8) are compacted: each merges the files of
    /// the level below that it does not cover yet into one file. Default 30 s, 5 min,
    /// 1 h. More levels or longer intervals: fewer files to restore, later merges.
    /// Empty: no compaction (level-0 files and snapshots only).
    pub levels: Vec<Duration>,
    /// How often a full snapshot (level 9) is made from the replica's files. Default
    /// 24 h. Shorter: faster restores, one database-sized upload each time.
    pub snapshot_interval: Duration,
    /// How long every state stays restorable (by TXID or time). Default 24 h. Older
    /// files go once a snapshot older than the window makes them unnecessary, so a
    /// replica holds between one `retention` and one `retention + snapshot_interval`
    /// of history.
    pub retention: Duration,
    /// How often retention is enforced. Default 1 h (each check lists every level).
    pub retention_check_interval: Duration,
}

impl Default for Compaction {
    fn default() -> Self {
        Compaction {
            levels: vec![Duration::from_secs(30), Duration::from_secs(5 * 60), Duration::from_secs(3600)],
            snapshot_interval: Duration::from_secs(24 * 3600),
            retention: Duration::from_secs(24 * 3600),
            retention_check_interval: Duration::from_secs(3600),
        }
    }
}

/// The most compaction levels (level 9 holds snapshots).
pub const MAX_LEVELS: usize = 8;

impl Compaction {
    /// These settings with the keys that are given replaced (`what` names the place in
    /// messages).
    fn with(
        &self,
        what: &str,
        levels: Option<&[LevelConfig]>,
        snapshot_interval: Option<&str>,
        retention: Option<&str>,
        retention_check_interval: Option<&str>,
    ) -> Result<Compaction> {
        let positive = |key: &str, text: &str| {
            let d = parse_duration(text).map_err(|e| Error::Invalid(format!("config: {what}`{key}`: {e}")))?;
            if d.is_zero() {
                return Err(Error::Invalid(format!("config: {what}`{key}` must be greater than 0")));
            }
            Ok(d)
        };
        let mut out = self.clone();
        if let Some(levels) = levels {
            if levels.len() > MAX_LEVELS {
                return Err(Error::Invalid(format!(
                    "config: {what}`levels` lists {} levels; at most {MAX_LEVELS} (level 9 holds snapshots)",
                    levels.len()
                )));
            }
            out.levels = levels.iter().map(|l| positive("levels[].interval", &l.interval)).collect::<Result<_>>()?;
        }
        if let Some(t) = snapshot_interval {
            out.snapshot_interval = positive("snapshot-interval", t)?;
        }
        if let Some(t) = retention {
            out.retention = positive("retention", t)?;
        }
        if let Some(t) = retention_check_interval {
            out.retention_check_interval = positive("retention-check-interval", t)?;
        }
        Ok(out)
    }
}

/// Parses a Go duration: decimal numbers with units `ns`, `us` (or `µs`), `ms`, `s`,
/// `m`, `h`, e.g. `30s`, `1h30m`, `1.5h`, `500ms`; a bare `0` is zero.
pub fn parse_duration(text: &str) -> Result<Duration> {
    let bad = || Error::Invalid(format!("{text:?} is not a duration like 30s, 5m, 1h or 1h30m"));
    let t = text.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    if t.is_empty() {
        return Err(bad());
    }
    let mut rest = t;
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let num: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        total += num * scale;
    }
    Duration::try_from_secs_f64(total).map_err(|_| bad())
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
    /// Most captured bytes kept locally for a replica that is down (default 1 GiB).
    #[serde(default)]
    pub local_cap_bytes: Option<u64>,
    /// Under sustained writes, captures start at least this far apart (a duration,
    /// default `10ms`; `0` captures every commit as soon as it is seen).
    #[serde(default, rename = "min-capture-interval")]
    pub min_capture_interval_text: Option<String>,
    /// `min-capture-interval`, parsed (filled in by [`parse`]).
    #[serde(skip)]
    pub min_capture_interval: Option<Duration>,
    /// Compaction and retention of each replica, in the order of
    /// [`DbConfig::replica_locations`] (filled in by [`parse`]).
    #[serde(skip)]
    pub compaction: Vec<Compaction>,
}

/// One replica destination.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ReplicaConfig {
    /// `file` (the default when `path` is given), `s3`, `abs`, `gs` or `sftp`.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// Folder of a file replica; key prefix of an object-storage replica; folder on the
    /// SFTP server (absolute, or relative to the login folder).
    #[serde(default)]
    pub path: Option<String>,
    /// A replica URL (`file:///…`, `s3://…`, `abs://…`, `gs://…`, `sftp://…`).
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
    /// SFTP server: `HOST` or `HOST:PORT` (port 22 by default).
    #[serde(default)]
    pub host: Option<String>,
    /// SFTP login name.
    #[serde(default)]
    pub user: Option<String>,
    /// SFTP password (else `WALSHIP_SFTP_PASSWORD`). A key is the better choice.
    #[serde(default)]
    pub password: Option<String>,
    /// SFTP private key file, ed25519 or ECDSA (passphrase from
    /// `WALSHIP_SFTP_KEY_PASSPHRASE`).
    #[serde(default)]
    pub key_path: Option<String>,
    /// The SFTP server's public key as in known_hosts (`ssh-ed25519 AAAA…`); replaces the
    /// known_hosts check. Litestream skips the check without it; walship never does.
    #[serde(default)]
    pub host_key: Option<String>,
    /// known_hosts file that must hold the SFTP server's key (default
    /// `~/.ssh/known_hosts`).
    #[serde(default, alias = "known-hosts")]
    pub known_hosts_path: Option<String>,
    /// How long this replica keeps every state restorable (overrides `snapshot.retention`).
    #[serde(default)]
    pub retention: Option<String>,
    /// How often retention is enforced on this replica (default 1h).
    #[serde(default)]
    pub retention_check_interval: Option<String>,
    /// How often this replica gets a full snapshot (overrides `snapshot.interval`).
    #[serde(default)]
    pub snapshot_interval: Option<String>,
    /// This replica's compaction levels (overrides the top-level `levels`).
    #[serde(default)]
    pub levels: Option<Vec<LevelConfig>>,
    /// Litestream's tuning keys, accepted so that its configs load, and ignored:
    /// uploads start at once, TLS is always verified, and request signing and part
    /// sizes are the client's.
    #[serde(default, rename = "sync-interval")]
    pub _sync_interval: Option<serde::de::IgnoredAny>,
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
    #[serde(default, rename = "concurrent-writes")]
    #[doc(hidden)]
    pub _concurrent_writes: Option<serde::de::IgnoredAny>,
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
            .field("host", &self.host)
            .field("user", &self.user)
            .field("key_path", &self.key_path)
            .finish_non_exhaustive()
    }
}

impl ReplicaConfig {
    /// The replica argument this entry stands for (a folder path or URL). Object-storage
    /// and SFTP keys become the URL's query (which may then hold secrets: never log it
    /// whole).
    pub fn location(&self) -> Result<String> {
        let object_kind = matches!(self.kind.as_deref(), Some("s3" | "abs" | "gs" | "gcs"));
        let sftp_kind = self.kind.as_deref() == Some("sftp");
        if let Some((key, _)) = [("host", &self.host), ("user", &self.user)].into_iter().find(|(_, v)| v.is_some())
            && (!sftp_kind || self.url.is_some())
        {
            return Err(Error::Invalid(if sftp_kind {
                format!("replica key {key:?} goes with `path`, not `url` (put it in the sftp:// URL)")
            } else {
                format!("replica key {key:?} needs an sftp replica (type sftp)")
            }));
        }
        match (&self.url, &self.path, self.kind.as_deref()) {
            (Some(_), Some(_), _) => Err(Error::Invalid("a replica has both `url` and `path`; give one".into())),
            (Some(url), None, _) => self.add_object_keys(url),
            (None, path, Some("sftp")) => {
                let need = |key: &str, v: &Option<String>, what: &str| {
                    v.clone().filter(|v| !v.is_empty()).ok_or_else(|| {
                        Error::Invalid(format!("a replica of type sftp needs `{key}` ({what})"))
                    })
                };
                let host = need("host", &self.host, "HOST or HOST:PORT")?;
                let user = need("user", &self.user, "the login name")?;
                let path = need("path", path, "the folder on the server")?;
                let bad = |e: &dyn std::fmt::Display| Error::Invalid(format!("replica host {host:?}: {e}"));
                let mut url = url::Url::parse(&format!("sftp://{host}/")).map_err(|e| bad(&e))?;
                url.set_username(&user).map_err(|()| bad(&"cannot hold a user"))?;
                // Like Litestream, a relative path is relative to the login folder.
                url.set_path(&if path.starts_with('/') { path } else { format!("/~/{path}") });
                self.add_object_keys(url.as_str())
            }
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
                "replica type {other:?} is not supported (supported: file, s3, abs, gs, sftp)"
            ))),
            (None, None, _) => Err(Error::Invalid("a replica needs `path` or `url`".into())),
        }
    }

    /// Appends the object-storage or SFTP keys given in the config to a URL's query.
    fn add_object_keys(&self, url: &str) -> Result<String> {
        // (config key, query key, value)
        let object = [
            ("endpoint", "endpoint", self.endpoint.clone()),
            ("region", "region", self.region.clone()),
            ("force-path-style", "force-path-style", self.force_path_style.map(|b| b.to_string())),
            ("access-key-id", "access-key-id", self.access_key_id.clone()),
            ("secret-access-key", "secret-access-key", self.secret_access_key.clone()),
            ("account-key", "account-key", self.account_key.clone()),
        ];
        let sftp = [
            ("key-path", "key", self.key_path.clone()),
            ("password", "password", self.password.clone()),
            ("host-key", "host-key", self.host_key.clone()),
            ("known-hosts-path", "known-hosts", self.known_hosts_path.clone()),
        ];
        fn given<const N: usize>(pairs: [(&'static str, &'static str, Option<String>); N]) -> Vec<(&'static str, &'static str, String)> {
            pairs.into_iter().filter_map(|(c, q, v)| v.filter(|v| !v.is_empty()).map(|v| (c, q, v))).collect()
        }
        let (object, sftp) = (given(object), given(sftp));
        if object.is_empty() && sftp.is_empty() {
            return Ok(url.to_string());
        }
        let scheme = url.split_once("://").map_or("", |(s, _)| s);
        if let Some((key, _, _)) = object.first()
            && !matches!(scheme, "s3" | "abs" | "gs" | "gcs" | "az" | "azure")
        {
            return Err(Error::Invalid(format!("replica key {key:?} needs an object-storage replica (type s3, abs or gs)")));
        }
        if let Some((key, _, _)) = sftp.first()
            && scheme != "sftp"
        {
            return Err(Error::Invalid(format!("replica key {key:?} needs an sftp replica (type sftp)")));
        }
        let mut parsed = url::Url::parse(url).map_err(|e| Error::Invalid(format!("replica URL: {e}")))?;
        parsed.query_pairs_mut().extend_pairs(object.into_iter().chain(sftp).map(|(_, q, v)| (q, v)));
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
    let mut config: Config = serde_saphyr::from_str(&expanded).map_err(|e| {
        // The parser appends a source snippet; the first line says what and where.
        let msg = e.to_string();
        let first = msg.lines().next().unwrap_or_default().trim_start_matches("error: ");
        Error::Invalid(format!("config: {first}"))
    })?;
    if config.dbs.is_empty() {
        return Err(Error::Invalid("config: `dbs` lists no database".into()));
    }
    let global = Compaction::default().with(
        "",
        config.levels.as_deref(),
        config.snapshot.as_ref().and_then(|s| s.interval.as_deref()),
        config.snapshot.as_ref().and_then(|s| s.retention.as_deref()),
        None,
    )?;
    for db in &mut config.dbs {
        db.replica_locations()?;
        if let Some(text) = &db.min_capture_interval_text {
            let d = parse_duration(text)
                .map_err(|e| Error::Invalid(format!("config: {}: `min-capture-interval`: {e}", db.path.display())))?;
            if d > Duration::from_secs(1) {
                return Err(Error::Invalid(format!(
                    "config: {}: `min-capture-interval` is {text}; at most 1s (commits must leave the machine within a second)",
                    db.path.display()
                )));
            }
            db.min_capture_interval = Some(d);
        }
        db.compaction = db
            .replica
            .iter()
            .chain(&db.replicas)
            .map(|r| {
                let what = format!("replica of {}: ", db.path.display());
                global.with(
                    &what,
                    r.levels.as_deref(),
                    r.snapshot_interval.as_deref(),
                    r.retention.as_deref(),
                    r.retention_check_interval.as_deref(),
                )
            })
            .collect::<Result<_>>()?;
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
        assert_eq!(c.dbs[0].min_capture_interval, None);
        let c = parse("dbs:\n  - path: /a.db\n    min-capture-interval: 0\n    replica:\n      path: /x\n").unwrap();
        assert_eq!(c.dbs[0].min_capture_interval, Some(Duration::ZERO));
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
    fn litestream_sftp_replicas_become_urls() {
        let c = parse(
            r#"
dbs:
  - path: /a.db
    replica:
      type: sftp
      host: backup.example.com:2222
      user: wal ship
      password: "p@ss word+/"
      key-path: /etc/walship/id_ed25519
      path: /backups/a b
      host-key: ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ
      concurrent-writes: true
  - path: /b.db
    replica:
      type: sftp
      host: 10.0.0.2
      user: u
      path: backups/b
      known-hosts-path: /etc/walship/known_hosts
  - path: /c.db
    replica:
      url: sftp://u@h/c
      key-path: /k
"#,
        )
        .unwrap();
        let spec = |i: usize| crate::store::sftp::Spec::parse(&c.dbs[i].replica_locations().unwrap()[0]).unwrap();
        let a = spec(0);
        assert_eq!((a.host.as_str(), a.port, a.user.as_str(), a.path.as_str()), ("backup.example.com", 2222, "wal ship", "/backups/a b"));
        assert_eq!(a.password.as_deref(), Some("p@ss word+/"));
        assert_eq!(a.key_path.as_deref(), Some(std::path::Path::new("/etc/walship/id_ed25519")));
        assert!(a.host_key.as_deref().is_some_and(|k| k.starts_with("ssh-ed25519 AAAAC3")));
        let b = spec(1);
        assert_eq!((b.host.as_str(), b.port, b.path.as_str()), ("10.0.0.2", 22, "~/backups/b"));
        assert_eq!(b.known_hosts.as_deref(), Some(std::path::Path::new("/etc/walship/known_hosts")));
        assert_eq!(spec(2).key_path.as_deref(), Some(std::path::Path::new("/k")));
    }

    #[test]
    fn compaction_keys_litestream_names_and_overrides() {
        let s = Duration::from_secs;
        let c = parse(
            "levels:\n  - interval: 1s\n  - interval: 1m30s\nsnapshot:\n  interval: 2h\n  retention: 36h\nl0-retention: 5m\n\
             dbs:\n  - path: /a.db\n    replicas:\n      - path: /x\n      - path: /y\n        retention: 1h\n        snapshot-interval: 30m\n        retention-check-interval: 10s\n        levels: []\n\
             \n  - path: /b.db\n    replica:\n      path: /z\n",
        )
        .unwrap();
        let top = Compaction {
            levels: vec![s(1), s(90)],
            snapshot_interval: s(7200),
            retention: s(36 * 3600),
            retention_check_interval: s(3600),
        };
        assert_eq!(c.dbs[0].compaction, [
            top.clone(),
            Compaction { levels: vec![], snapshot_interval: s(1800), retention: s(3600), retention_check_interval: s(10) },
        ]);
        assert_eq!(c.dbs[1].compaction, [top]);
        let plain = parse("dbs:\n  - path: /a.db\n    replica:\n      path: /x\n").unwrap();
        assert_eq!(plain.dbs[0].compaction, [Compaction::default()]);
        assert_eq!(Compaction::default().levels, [s(30), s(300), s(3600)]);
        for (text, d) in [("0", Duration::ZERO), ("500ms", Duration::from_millis(500)), ("1.5h", s(5400)), ("2h45m10s", s(9910)), ("10us", Duration::from_micros(10))] {
            assert_eq!(parse_duration(text).unwrap(), d, "{text}");
        }
        for bad in ["", "5", "1d", "h", "1.2.3s", "-1s", "1 s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
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
            ("dbs:\n  - path: /a.db\n    replica:\n      type: sftp\n      user: u\n      path: x\n", "needs `host`"),
            ("dbs:\n  - path: /a.db\n    replica:\n      type: sftp\n      host: h\n      path: x\n", "needs `user`"),
            ("dbs:\n  - path: /a.db\n    replica:\n      type: sftp\n      host: h\n      user: u\n", "needs `path`"),
            ("dbs:\n  - path: /a.db\n    replica:\n      type: s3\n      bucket: b\n      key-path: /k\n", "needs an sftp replica"),
            ("dbs:\n  - path: /a.db\n    replica:\n      path: /x\n      host: h\n", "needs an sftp replica"),
            ("dbs:\n  - path: /a.db\n    replica:\n      type: sftp\n      url: sftp://u@h/x\n      host: h\n", "not `url`"),
            ("dbs:\n  - path: /a.db\n    replica:\n      type: sftp\n      host: h\n      user: u\n      path: /x\n      region: r\n", "object-storage"),
            ("dbs:\n  - path: $WALSHIP_SURELY_UNSET_VAR\n", "not set"),
            ("dbs: [\n", "config"),
            ("levels:\n  - interval: 0s\ndbs:\n  - path: /a.db\n    replica:\n      path: /x\n", "greater than 0"),
            ("snapshot:\n  interval: soon\ndbs:\n  - path: /a.db\n    replica:\n      path: /x\n", "not a duration"),
            ("dbs:\n  - path: /a.db\n    replica:\n      path: /x\n      retention: 1 day\n", "retention"),
            ("dbs:\n  - path: /a.db\n    min-capture-interval: 2s\n    replica:\n      path: /x\n", "at most 1s"),
            ("dbs:\n  - path: /a.db\n    min-capture-interval: fast\n    replica:\n      path: /x\n", "min-capture-interval"),
            ("dbs:\n  - path: /a.db\n    replica:\n      path: /x\n      levels: [{interval: 1s}, {interval: 1s}, {interval: 1s}, {interval: 1s}, {interval: 1s}, {interval: 1s}, {interval: 1s}, {interval: 1s}, {interval: 1s}]\n", "at most 8"),
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text:?} gave {err:?}");
        }
    }
}

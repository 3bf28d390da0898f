//! Replica URLs: `sftp://USER[:PASSWORD]@HOST[:PORT]/PATH?key=…&known-hosts=…`.

use std::fmt;
use std::path::PathBuf;

use super::known_hosts::parse_host_key;
use crate::error::{Error, Result};

/// Query keys a replica URL may carry.
const QUERY_KEYS: &str = "key, key-path, password, known-hosts, host-key";

/// Everything needed to reach one SFTP replica, parsed from a URL.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Spec {
    /// Server name or address (IPv6 without brackets).
    pub host: String,
    /// SSH port (22 by default).
    pub port: u16,
    /// Login name.
    pub user: String,
    /// Replica folder: absolute (`/backups/app`), or relative to the login folder
    /// (`~/backups/app`, `~`). No trailing `/`.
    pub path: String,
    /// Private key file.
    pub key_path: Option<PathBuf>,
    /// Password.
    pub password: Option<String>,
    /// known_hosts file (default `~/.ssh/known_hosts`).
    pub known_hosts: Option<PathBuf>,
    /// The server's public key (`ssh-ed25519 AAAA…`); replaces the known_hosts check.
    pub host_key: Option<String>,
}

impl fmt::Debug for Spec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the password.
        f.debug_struct("Spec")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("path", &self.path)
            .field("key_path", &self.key_path)
            .field("known_hosts", &self.known_hosts)
            .field("host_key", &self.host_key)
            .finish_non_exhaustive()
    }
}

impl Spec {
    /// Parses `sftp://USER[:PASSWORD]@HOST[:PORT]/PATH[?…]`. Errors are one line and
    /// never echo the password.
    pub fn parse(arg: &str) -> Result<Spec> {
        let bad = |why: &str| Error::Invalid(format!("replica URL {}: {why}", redact(arg)));
        if !arg.starts_with("sftp://") {
            return Err(bad("not an sftp:// URL"));
        }
        let url = url::Url::parse(arg).map_err(|e| bad(&e.to_string()))?;
        let host = match url.host() {
            Some(url::Host::Domain(d)) if !d.is_empty() => d.to_string(),
            Some(url::Host::Ipv4(a)) => a.to_string(),
            Some(url::Host::Ipv6(a)) => a.to_string(),
            _ => return Err(bad("the host is missing, like sftp://USER@HOST/path")),
        };
        if url.username().is_empty() {
            return Err(bad("the user is missing, like sftp://USER@HOST/path"));
        }
        let mut spec = Spec {
            host,
            port: url.port().unwrap_or(22),
            user: decode(url.username()),
            path: clean_path(&decode(url.path())).ok_or_else(|| {
                bad("give the replica's folder on the server, like sftp://USER@HOST/backups/app (absolute) or sftp://USER@HOST/~/backups/app (in the login folder)")
            })?,
            password: url.password().map(decode),
            ..Spec::default()
        };
        for (k, v) in url.query_pairs() {
            let v = v.into_owned();
            match k.as_ref() {
                "key" | "key-path" => spec.key_path = Some(PathBuf::from(v)),
                "password" => spec.password = Some(v),
                "known-hosts" | "known-hosts-path" => spec.known_hosts = Some(PathBuf::from(v)),
                "host-key" => {
                    parse_host_key(&v).map_err(|e| bad(&format!("host-key: {e}")))?;
                    spec.host_key = Some(v);
                }
                k => return Err(bad(&format!("unknown query key {k:?} (known: {QUERY_KEYS})"))),
            }
        }
        if spec.password.as_deref().is_some_and(str::is_empty) {
            spec.password = None;
        }
        if spec.password.is_none() {
            spec.password = std::env::var("WALSHIP_SFTP_PASSWORD").ok().filter(|p| !p.is_empty());
        }
        Ok(spec)
    }

    /// The replica as a URL without secrets, for messages.
    pub fn describe(&self) -> String {
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        let port = if self.port == 22 { String::new() } else { format!(":{}", self.port) };
        let path = if self.path.starts_with('~') { format!("/{}", self.path) } else { self.path.clone() };
        format!("sftp://{}@{host}{port}{path}", self.user)
    }

    /// `host:port` (or `[v6]:port`) for messages.
    pub(super) fn address(&self) -> String {
        if self.host.contains(':') { format!("[{}]:{}", self.host, self.port) } else { format!("{}:{}", self.host, self.port) }
    }
}

/// A path made absolute-or-`~`, without empty or `.` components and trailing `/`; `None`
/// for the server's root (almost surely a mistake) or `..`.
fn clean_path(path: &str) -> Option<String> {
    let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty() && *s != ".").collect();
    if parts.is_empty() || parts.contains(&"..") {
        return None;
    }
    Some(if parts[0] == "~" { parts.join("/") } else { format!("/{}", parts.join("/")) })
}

fn decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// A URL without its query and without the password of its user info.
fn redact(arg: &str) -> String {
    let mut base = arg.split_once('?').map_or(arg, |(b, _)| b).to_string();
    if let Some((scheme, rest)) = base.split_once("://")
        && let Some((user, host)) = rest.split_once('@')
        && let Some((name, _)) = user.split_once(':')
    {
        base = format!("{scheme}://{name}:…@{host}");
    }
    if arg.contains('?') { format!("{base}?…") } else { base }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn urls_parse_into_the_litestream_layout() {
        let s = Spec::parse("sftp://backup@db.example.com:2222/srv/backups//app/?key=/k/id_ed25519&known-hosts=/k/kh").unwrap();
        assert_eq!((s.host.as_str(), s.port, s.user.as_str(), s.path.as_str()), ("db.example.com", 2222, "backup", "/srv/backups/app"));
        assert_eq!(s.key_path.as_deref(), Some(Path::new("/k/id_ed25519")));
        assert_eq!(s.known_hosts.as_deref(), Some(Path::new("/k/kh")));
        assert_eq!(s.describe(), "sftp://backup@db.example.com:2222/srv/backups/app");

        // Litestream's forms: password in the user info, key-path, default port.
        let s = Spec::parse("sftp://u%40x:p%2Fw@10.0.0.1/data?key-path=/id").unwrap();
        assert_eq!((s.user.as_str(), s.password.as_deref(), s.port), ("u@x", Some("p/w"), 22));
        assert_eq!(s.key_path.as_deref(), Some(Path::new("/id")));
        assert_eq!(s.describe(), "sftp://u@x@10.0.0.1/data");
        assert!(!format!("{s:?}").contains("p/w"));

        let s = Spec::parse("sftp://u@[::1]:22/~/app").unwrap();
        assert_eq!((s.host.as_str(), s.path.as_str()), ("::1", "~/app"));
        assert_eq!(s.describe(), "sftp://u@[::1]/~/app");
        assert_eq!(s.address(), "[::1]:22");

        let pinned = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ";
        let s = Spec::parse(&format!("sftp://u@h/p?host-key={}", pinned.replace(' ', "%20").replace('+', "%2B"))).unwrap();
        assert_eq!(s.host_key.as_deref(), Some(pinned));
    }

    #[test]
    fn bad_urls_are_one_clear_line_without_secrets() {
        for (url, needle) in [
            ("sftp:///path", "host is missing"),
            ("sftp://host/path", "user is missing"),
            ("sftp://u@host", "folder on the server"),
            ("sftp://u@host/", "folder on the server"),
            ("sftp://u@host/a/..", "folder on the server"),
            ("sftp://u@host:99999/p", "port"),
            ("sftp://u@host/p?bogus=1", "bogus"),
            ("sftp://u@host/p?region=x", "region"),
            ("sftp://u@host/p?host-key=nonsense", "host-key"),
            ("sftp://u:hunter2@/p", "host"),
            ("s3://b/p", "not an sftp"),
        ] {
            let e = Spec::parse(url).unwrap_err();
            assert!(matches!(e, Error::Invalid(_)), "{url}: {e:?}");
            let msg = e.to_string();
            assert!(msg.contains(needle), "{url}: {msg}");
            assert!(!msg.contains('\n') && !msg.contains("hunter2"), "{msg}");
        }
        let msg = Spec::parse("sftp://u@h/p?password=hunter2&bogus=1").unwrap_err().to_string();
        assert!(!msg.contains("hunter2"), "{msg}");
    }
}

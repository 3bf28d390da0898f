//! The server's key check: a pinned key (Litestream's `host-key`) or a known_hosts file
//! read the way OpenSSH reads it (comma-separated names, `[host]:port` for other ports,
//! hashed `|1|salt|hash` names, `*`/`?` wildcards, `!` negations, `@revoked` lines;
//! `@cert-authority` lines are skipped: certificates are not supported).

use std::io;
use std::path::{Path, PathBuf};

use russh::keys::{Algorithm, HashAlg, PublicKey};

pub(super) fn parse_host_key(text: &str) -> std::result::Result<PublicKey, String> {
    let mut fields = text.split_whitespace();
    let (Some(algo), Some(b64)) = (fields.next(), fields.next()) else {
        return Err("expected the key as in known_hosts, like \"ssh-ed25519 AAAA…\"".into());
    };
    PublicKey::from_openssh(&format!("{algo} {b64}")).map_err(|e| format!("cannot parse {algo:?} key: {e}"))
}

pub(super) fn fingerprint(key: &PublicKey) -> String {
    format!("{} {}", key.algorithm().as_str(), key.fingerprint(HashAlg::Sha256))
}

/// How the server's key is checked.
#[derive(Clone, Debug)]
pub(super) enum HostKeys {
    /// It must be this key.
    Pinned(PublicKey),
    /// It must be in this known_hosts file.
    File(PathBuf),
}

/// One line of a known_hosts file that names the host.
struct KnownLine {
    line: usize,
    revoked: bool,
    /// The key, or its algorithm's name when the key cannot be parsed.
    key: std::result::Result<PublicKey, String>,
}

impl HostKeys {
    fn file_lines(path: &Path, host: &str, port: u16) -> std::result::Result<Vec<KnownLine>, String> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(format!("cannot read known_hosts file {}: {e}", path.display())),
        };
        let name = if port == 22 { host.to_ascii_lowercase() } else { format!("[{}]:{port}", host.to_ascii_lowercase()) };
        let mut out = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let mut fields = line.split_whitespace().peekable();
            if fields.peek().is_none_or(|f| f.starts_with('#')) {
                continue;
            }
            let marker = fields.next_if(|f| f.starts_with('@'));
            let (Some(hosts), Some(algo), Some(b64)) = (fields.next(), fields.next(), fields.next()) else {
                continue;
            };
            if marker == Some("@cert-authority") || !hosts_match(hosts, &name) {
                continue;
            }
            let key = PublicKey::from_openssh(&format!("{algo} {b64}")).map_err(|_| algo.to_string());
            out.push(KnownLine { line: i + 1, revoked: marker == Some("@revoked"), key });
        }
        Ok(out)
    }

    /// The key algorithms on record for the host, so that the server is asked for one of
    /// those first (as OpenSSH does).
    pub(super) fn algorithms(&self, host: &str, port: u16) -> Vec<Algorithm> {
        match self {
            HostKeys::Pinned(k) => vec![k.algorithm()],
            HostKeys::File(path) => Self::file_lines(path, host, port)
                .unwrap_or_default()
                .into_iter()
                .filter(|l| !l.revoked)
                .filter_map(|l| l.key.ok().map(|k| k.algorithm()))
                .collect(),
        }
    }

    /// Accepts the server's key, or says in one line why not.
    pub(super) fn check(&self, host: &str, port: u16, offered: &PublicKey) -> std::result::Result<(), String> {
        let who = if port == 22 { host.to_string() } else { format!("[{host}]:{port}") };
        let path = match self {
            HostKeys::Pinned(k) if k.key_data() == offered.key_data() => return Ok(()),
            HostKeys::Pinned(k) => {
                return Err(format!(
                    "HOST KEY MISMATCH for {who}: the server offered {}, but host-key is {}; not connecting (someone may be intercepting the connection, or the server's key changed)",
                    fingerprint(offered),
                    fingerprint(k)
                ));
            }
            HostKeys::File(path) => path,
        };
        let lines = Self::file_lines(path, host, port)?;
        if let Some(l) = lines.iter().find(|l| l.revoked && l.key.as_ref().is_ok_and(|k| k.key_data() == offered.key_data())) {
            return Err(format!(
                "the host key of {who} ({}) is marked @revoked in {} line {}; not connecting",
                fingerprint(offered),
                path.display(),
                l.line
            ));
        }
        let valid = || lines.iter().filter(|l| !l.revoked);
        if valid().any(|l| l.key.as_ref().is_ok_and(|k| k.key_data() == offered.key_data())) {
            return Ok(());
        }
        if let Some(l) = valid().find(|l| l.key.as_ref().is_ok_and(|k| k.algorithm() == offered.algorithm())) {
            let recorded = l.key.as_ref().map(fingerprint).unwrap_or_default();
            return Err(format!(
                "HOST KEY MISMATCH for {who}: the server offered {}, but {} line {} holds {recorded}; not connecting (someone may be intercepting the connection, or the server's key changed: if so, fix that line)",
                fingerprint(offered),
                path.display(),
                l.line
            ));
        }
        let port_arg = if port == 22 { String::new() } else { format!("-p {port} ") };
        let others: Vec<String> =
            valid().map(|l| l.key.as_ref().map_or_else(|a| a.clone(), |k| k.algorithm().as_str().to_string())).collect();
        let others = if others.is_empty() { String::new() } else { format!(" (it holds only {} keys for it)", others.join(", ")) };
        Err(format!(
            "the host key of {who} is not known: the server offered {}, which is in no line of {}{others}; if that fingerprint is the server's, add its key (ssh-keyscan {port_arg}{host} >> {}) or give it as host-key",
            fingerprint(offered),
            path.display(),
            path.display()
        ))
    }
}

/// Whether a known_hosts host field (comma-separated patterns, `!` negations, `*` and `?`
/// wildcards, hashed `|1|salt|hash` entries) names `name` (`host` or `[host]:port`).
fn hosts_match(field: &str, name: &str) -> bool {
    let mut hit = false;
    for pattern in field.split(',') {
        let (negated, pattern) = match pattern.strip_prefix('!') {
            Some(p) => (true, p),
            None => (false, pattern),
        };
        let matched = if let Some(hashed) = pattern.strip_prefix("|1|") {
            hashed_match(hashed, name)
        } else {
            glob(pattern.to_ascii_lowercase().as_bytes(), name.as_bytes())
        };
        if matched && negated {
            return false;
        }
        hit |= matched;
    }
    hit
}

/// `salt|hash` (base64 both): HMAC-SHA1 of `name` keyed with the salt equals the hash.
fn hashed_match(hashed: &str, name: &str) -> bool {
    let Some((salt, hash)) = hashed.split_once('|') else { return false };
    let b64 = data_encoding::BASE64;
    let (Ok(salt), Ok(hash)) = (b64.decode(salt.as_bytes()), b64.decode(hash.as_bytes())) else { return false };
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, &salt);
    ring::hmac::verify(&key, name.as_bytes(), &hash).is_ok()
}

fn glob(pattern: &[u8], text: &[u8]) -> bool {
    match (pattern.first(), text.first()) {
        (None, None) => true,
        (Some(b'*'), _) => glob(&pattern[1..], text) || (!text.is_empty() && glob(pattern, &text[1..])),
        (Some(b'?'), Some(_)) => glob(&pattern[1..], &text[1..]),
        (Some(p), Some(t)) if p == t => glob(&pattern[1..], &text[1..]),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use russh::keys::PrivateKey;

    use super::*;

    fn key(seed: u8) -> PublicKey {
        let private = ed25519_from_seed(seed);
        private.public_key().clone()
    }

    fn ed25519_from_seed(seed: u8) -> PrivateKey {
        let pair = russh::keys::ssh_key::private::Ed25519Keypair::from_seed(&[seed; 32]);
        PrivateKey::from(pair)
    }

    fn line(hosts: &str, k: &PublicKey) -> String {
        format!("{hosts} {}\n", k.to_openssh().unwrap())
    }

    #[test]
    fn known_hosts_lines_are_matched_like_openssh() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("known_hosts");
        let keys = HostKeys::File(path.clone());
        let (good, other) = (key(1), key(2));
        // Hashed entry for [h.example]:2222, as `ssh-keygen -H` writes it.
        let salt = [7u8; 20];
        let mac = ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, &salt), b"[h.example]:2222");
        let b64 = data_encoding::BASE64;
        let hashed = format!("|1|{}|{}", b64.encode(&salt), b64.encode(mac.as_ref()));
        std::fs::write(
            &path,
            format!(
                "# comment\n\n{}{}{}{}{}",
                line("plain.example,10.0.0.9", &good),
                line("[ported.example]:2200", &good),
                line(&hashed, &good),
                line("*.wild.example,!bad.wild.example", &good),
                line("changed.example", &other),
            ),
        )
        .unwrap();
        for (host, port) in [("plain.example", 22), ("PLAIN.example", 22), ("10.0.0.9", 22), ("ported.example", 2200), ("h.example", 2222), ("a.wild.example", 22)] {
            assert_eq!(keys.check(host, port, &good), Ok(()), "{host}:{port}");
        }
        // Wrong port, negated, unknown: "not known", with the fingerprint and the fix.
        for (host, port) in [("plain.example", 2222), ("ported.example", 22), ("bad.wild.example", 22), ("nowhere.example", 22)] {
            let e = keys.check(host, port, &good).unwrap_err();
            assert!(e.contains("not known") && e.contains(&good.fingerprint(HashAlg::Sha256).to_string()), "{e}");
            assert!(e.contains("ssh-keyscan") && !e.contains('\n'), "{e}");
        }
        let e = keys.check("changed.example", 22, &good).unwrap_err();
        assert!(e.contains("HOST KEY MISMATCH for changed.example") && e.contains("line 7"), "{e}");
        assert!(e.contains(&good.fingerprint(HashAlg::Sha256).to_string()) && e.contains(&other.fingerprint(HashAlg::Sha256).to_string()), "{e}");

        std::fs::write(&path, format!("@revoked {}{}", line("r.example", &good), line("r.example", &good))).unwrap();
        assert!(keys.check("r.example", 22, &good).unwrap_err().contains("@revoked"));
        assert_eq!(keys.algorithms("plain.example", 22), Vec::<Algorithm>::new());

        let missing = HostKeys::File(dir.path().join("nope"));
        assert!(missing.check("h", 22, &good).unwrap_err().contains("not known"));

        let pinned = HostKeys::Pinned(good.clone());
        assert_eq!(pinned.check("x", 1, &good), Ok(()));
        assert!(pinned.check("x", 1, &other).unwrap_err().contains("HOST KEY MISMATCH for [x]:1"));
    }

    #[test]
    fn globs() {
        assert!(glob(b"*.example", b"a.b.example"));
        assert!(glob(b"h?st", b"host"));
        assert!(!glob(b"h?st", b"hst"));
        assert!(glob(b"*", b""));
        assert!(!glob(b"a*", b"ba"));
    }
}

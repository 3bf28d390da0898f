//! Replicas on an SFTP server (OpenSSH's `internal-sftp`, or any SFTP v3 server) through
//! `russh` + `russh-sftp`, behind the synchronous [`Store`] trait.
//!
//! Layout, as Litestream 0.5 writes it: `<path>/ltx/<level>/<min>-<max>.ltx`;
//! walship-only objects ([`Store::put_meta`]) under `<path>/walship/…`.
//!
//! Replica URL: `sftp://USER@HOST:PORT/PATH?key=FILE&known-hosts=FILE` (port 22 by
//! default; `PATH` is absolute on the server, `/~/PATH` is relative to the login folder).
//! Query keys (Litestream's config names in brackets):
//! - `key` (`key-path`): private key file, ed25519 or ECDSA (this build has no RSA);
//!   passphrase from `WALSHIP_SFTP_KEY_PASSPHRASE`. Without `key` or a password,
//!   `~/.ssh/id_ed25519` and `~/.ssh/id_ecdsa` are tried.
//! - `password`: else the URL's `USER:PASSWORD@`, else `WALSHIP_SFTP_PASSWORD`.
//! - `known-hosts`: the known_hosts file the server's key must be in (default
//!   `~/.ssh/known_hosts`; plain, `[host]:port`, hashed, wildcard and `@revoked` lines).
//! - `host-key`: the server's public key itself (`ssh-ed25519 AAAA…`, Litestream's
//!   `host-key`); replaces the known_hosts check.
//!
//! The host key is always checked: an unknown or changed key stops with an error that
//! names the host and the key's fingerprint. There is no "accept any key" mode.
//!
//! Each store keeps one SSH connection (opened on first use, opened again when it
//! breaks) and a small tokio runtime (one worker thread) that every call blocks on.
//! Every SFTP request times out after 30 s. Writes go to a temp file in the target's
//! folder, are fsynced when the server offers `fsync@openssh.com`, then renamed: a plain
//! SFTP rename, which never replaces an existing file (OpenSSH links, then unlinks), for
//! LTX files; `posix-rename@openssh.com` (replace) for walship's objects. Reads and
//! writes keep a few requests in flight, so memory stays bounded whatever the file size.

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::client::{self, AuthResult, KeyboardInteractiveAuthResponse};
use russh::{MethodKind, MethodSet};
use russh::keys::{Algorithm, PrivateKey, PrivateKeyWithHashAlg, PublicKey};
use russh_sftp::client::RawSftpSession;
use russh_sftp::client::error::Error as SftpError;
use russh_sftp::protocol::{FileAttributes, OpenFlags, Packet, StatusCode};
use tokio::task::JoinHandle;

use super::{FileInfo, FileKey, Store};
use crate::error::{Error, Result};

mod known_hosts;
mod spec;

use known_hosts::{HostKeys, parse_host_key};
pub use spec::Spec;

/// Timeout of connecting (TCP, key exchange, authentication, SFTP start) and of each
/// SFTP request.
const TIMEOUT: Duration = Duration::from_secs(30);
/// Largest read or write request (servers must take 32 KiB; OpenSSH announces more).
const CHUNK_MAX: u32 = 64 * 1024;
/// Requests kept in flight by one read or write.
const DEPTH: usize = 8;

/// The SSH client's callbacks: only the host-key check.
struct Client {
    host: String,
    port: u16,
    keys: HostKeys,
}

/// Why a connection attempt failed.
#[derive(Debug)]
enum ConnectError {
    /// The host key was refused (one line, for the user).
    HostKey(String),
    /// Anything else.
    Ssh(russh::Error),
}

impl From<russh::Error> for ConnectError {
    fn from(e: russh::Error) -> Self {
        ConnectError::Ssh(e)
    }
}

impl client::Handler for Client {
    type Error = ConnectError;

    async fn check_server_key(&mut self, key: &PublicKey) -> std::result::Result<bool, ConnectError> {
        self.keys.check(&self.host, self.port, key).map(|()| true).map_err(ConnectError::HostKey)
    }
}

/// One open connection: the SSH session and the SFTP channel on it.
struct Conn {
    ssh: client::Handle<Client>,
    sftp: Arc<RawSftpSession>,
    /// The replica folder, absolute.
    root: String,
    /// The server offers `fsync@openssh.com`.
    fsync: bool,
    /// The server offers `posix-rename@openssh.com`.
    posix_rename: bool,
    /// Size of read and write requests.
    chunk: u32,
}

impl Conn {
    fn broken(&self) -> bool {
        self.ssh.is_closed()
    }

    /// Runs `f` until it ends or the SSH connection closes, whichever comes first (SFTP
    /// requests pending on a closed connection would otherwise wait out their timeout).
    async fn guard<T>(&self, f: impl Future<Output = Step<T>>) -> Step<T> {
        let closed = async {
            while !self.broken() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        match futures_util::future::select(std::pin::pin!(f), std::pin::pin!(closed)).await {
            futures_util::future::Either::Left((r, _)) => r,
            futures_util::future::Either::Right(((), _)) => Err(Fail::Sftp(SftpError::UnexpectedBehavior("the SSH connection closed".into()))),
        }
    }
}

/// A failed step of an operation: an SFTP answer or a local error.
enum Fail {
    Sftp(SftpError),
    Local(Error),
}

impl From<SftpError> for Fail {
    fn from(e: SftpError) -> Self {
        Fail::Sftp(e)
    }
}

impl From<Error> for Fail {
    fn from(e: Error) -> Self {
        Fail::Local(e)
    }
}

type Step<T> = std::result::Result<T, Fail>;

/// The SFTP answer "no such file".
fn missing(e: &SftpError) -> bool {
    matches!(e, SftpError::Status(s) if s.status_code == StatusCode::NoSuchFile)
}

/// The connection is unusable after this error (no answer, channel gone, ...).
fn breaks_connection(e: &Fail) -> bool {
    match e {
        Fail::Sftp(SftpError::Status(s)) => matches!(s.status_code, StatusCode::NoConnection | StatusCode::ConnectionLost),
        Fail::Sftp(SftpError::Limited(_)) => false,
        Fail::Sftp(_) => true,
        Fail::Local(_) => false,
    }
}

fn sftp_message(e: &SftpError) -> String {
    match e {
        SftpError::Status(s) if s.error_message.is_empty() => s.status_code.to_string(),
        SftpError::Status(s) => s.error_message.clone(),
        SftpError::Timeout => format!("no answer within {} s", TIMEOUT.as_secs()),
        e => e.to_string(),
    }
}

/// A replica on an SFTP server.
pub struct SftpStore {
    spec: Spec,
    runtime: Arc<tokio::runtime::Runtime>,
    conn: Mutex<Option<Arc<Conn>>>,
    /// Folders known to exist (cleared with the connection).
    dirs: Mutex<HashSet<String>>,
}

impl fmt::Debug for SftpStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SftpStore").field("spec", &self.spec).finish_non_exhaustive()
    }
}

static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// A temp name beside `path` that no other writer uses (never a valid LTX file name).
fn temp_beside(path: &str) -> String {
    let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let seq = TEMP_SEQ.fetch_add(1, Ordering::Relaxed);
    format!("{dir}/.{name}.tmp-{}-{seq}-{nanos:x}", std::process::id())
}

fn parent(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(p, _)| p)
}

impl SftpStore {
    /// Opens the store a URL names (nothing is contacted until the first call).
    pub fn open(arg: &str) -> Result<SftpStore> {
        SftpStore::new(Spec::parse(arg)?)
    }

    /// A store for `spec` (nothing is contacted until the first call).
    pub fn new(spec: Spec) -> Result<SftpStore> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("walship-sftp")
            .enable_all()
            .build()
            .map_err(|e| Error::io("start the SFTP runtime", e))?;
        Ok(SftpStore { spec, runtime: Arc::new(runtime), conn: Mutex::new(None), dirs: Mutex::new(HashSet::new()) })
    }

    /// The parsed location.
    pub fn spec(&self) -> &Spec {
        &self.spec
    }

    fn host_keys(&self) -> Result<HostKeys> {
        if let Some(k) = &self.spec.host_key {
            return parse_host_key(k).map(HostKeys::Pinned).map_err(|e| Error::Invalid(format!("host-key: {e}")));
        }
        if let Some(p) = &self.spec.known_hosts {
            return Ok(HostKeys::File(p.clone()));
        }
        let home = std::env::var_os("HOME").filter(|h| !h.is_empty()).ok_or_else(|| {
            Error::Invalid(format!("{}: HOME is not set: give known-hosts=FILE or host-key", self.describe()))
        })?;
        Ok(HostKeys::File(PathBuf::from(home).join(".ssh/known_hosts")))
    }

    /// The private keys to offer: `key`, else the usual files in `~/.ssh` when no
    /// password is given either.
    fn private_keys(&self) -> Result<Vec<(PathBuf, PrivateKey)>> {
        let paths: Vec<PathBuf> = match (&self.spec.key_path, &self.spec.password) {
            (Some(p), _) => vec![p.clone()],
            (None, Some(_)) => vec![],
            (None, None) => {
                let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
                let found: Vec<PathBuf> =
                    ["id_ed25519", "id_ecdsa"].iter().map(|n| home.join(".ssh").join(n)).filter(|p| p.exists()).collect();
                if found.is_empty() {
                    return Err(Error::Invalid(format!(
                        "{}: no credentials: give key=FILE (key-path) or a password (password=, WALSHIP_SFTP_PASSWORD)",
                        self.describe()
                    )));
                }
                found
            }
        };
        let passphrase = std::env::var("WALSHIP_SFTP_KEY_PASSPHRASE").ok().filter(|p| !p.is_empty());
        paths
            .into_iter()
            .map(|path| {
                let key = russh::keys::load_secret_key(&path, passphrase.as_deref()).map_err(|e| {
                    let why = match e {
                        russh::keys::Error::KeyIsEncrypted => "it is encrypted: set WALSHIP_SFTP_KEY_PASSPHRASE".to_string(),
                        russh::keys::Error::IO(e) => e.to_string(),
                        e => e.to_string(),
                    };
                    Error::Invalid(format!("SSH key {}: {why}", path.display()))
                })?;
                if key.algorithm().is_rsa() {
                    return Err(Error::Invalid(format!(
                        "SSH key {}: RSA keys are not supported; use an ed25519 or ECDSA key (ssh-keygen -t ed25519)",
                        path.display()
                    )));
                }
                Ok((path, key))
            })
            .collect()
    }

    /// Connects, checks the host key, logs in and starts SFTP.
    fn connect(&self) -> Result<Conn> {
        let keys = self.host_keys()?;
        let private = self.private_keys()?;
        let spec = &self.spec;
        let known = keys.algorithms(&spec.host, spec.port);
        let mut preferred = russh::Preferred::default();
        let (mut first, rest): (Vec<Algorithm>, Vec<Algorithm>) = preferred
            .key
            .iter()
            .cloned()
            .partition(|a| known.iter().any(|k| k == a || (k.clone().is_rsa() && a.clone().is_rsa())));
        first.extend(rest);
        preferred.key = first.into();
        let config = Arc::new(client::Config {
            preferred,
            inactivity_timeout: None,
            keepalive_interval: Some(Duration::from_secs(15)),
            keepalive_max: 4,
            nodelay: true,
            ..client::Config::default()
        });
        let handler = Client { host: spec.host.clone(), port: spec.port, keys };
        let addr = spec.address();
        let fail = |what: &str, e: String| Error::io(format!("{what} {}", self.describe()), io::Error::other(e));
        let work = async {
            let mut ssh = match client::connect(config, (spec.host.as_str(), spec.port), handler).await {
                Ok(s) => s,
                Err(ConnectError::HostKey(msg)) => return Err(Error::Invalid(format!("sftp: {msg}"))),
                Err(ConnectError::Ssh(russh::Error::IO(e))) => {
                    return Err(Error::io(format!("connect to {}", self.describe()), e));
                }
                Err(ConnectError::Ssh(e)) => return Err(fail("connect to", e.to_string())),
            };
            let mut tried = Vec::new();
            // The methods the server still offers, from its last refusal.
            let mut offered: Option<MethodSet> = None;
            let mut done = false;
            let login = |e: russh::Error| fail("log in to", e.to_string());
            for (path, key) in private {
                tried.push(format!("key {}", path.display()));
                let key = PrivateKeyWithHashAlg::new(Arc::new(key), None);
                match ssh.authenticate_publickey(&spec.user, key).await.map_err(login)? {
                    AuthResult::Success => {
                        done = true;
                        break;
                    }
                    AuthResult::Failure { remaining_methods, .. } => offered = Some(remaining_methods),
                }
            }
            if !done && let Some(pw) = &spec.password {
                tried.push("password".into());
                match ssh.authenticate_password(&spec.user, pw).await.map_err(login)? {
                    AuthResult::Success => done = true,
                    AuthResult::Failure { remaining_methods, .. } => offered = Some(remaining_methods),
                }
                // Servers that ask for passwords through PAM offer keyboard-interactive
                // instead: answer its hidden prompts with the password.
                if !done && offered.as_ref().is_some_and(|m| m.contains(&MethodKind::KeyboardInteractive)) {
                    tried.push("keyboard-interactive".into());
                    let mut reply = ssh.authenticate_keyboard_interactive_start(&spec.user, None).await.map_err(login)?;
                    for _ in 0..4 {
                        match reply {
                            KeyboardInteractiveAuthResponse::Success => {
                                done = true;
                                break;
                            }
                            KeyboardInteractiveAuthResponse::Failure { remaining_methods, .. } => {
                                offered = Some(remaining_methods);
                                break;
                            }
                            KeyboardInteractiveAuthResponse::InfoRequest { prompts, .. } => {
                                let answers = prompts.iter().map(|p| if p.echo { String::new() } else { pw.clone() }).collect();
                                reply = ssh.authenticate_keyboard_interactive_respond(answers).await.map_err(login)?;
                            }
                        }
                    }
                }
            }
            if !done {
                let accepts = offered
                    .map(|m| format!("; it accepts: {}", m.iter().map(<&str>::from).collect::<Vec<_>>().join(", ")))
                    .unwrap_or_default();
                return Err(Error::Invalid(format!(
                    "sftp: {addr} refused user {:?} (tried {}){accepts}",
                    spec.user,
                    tried.join(", ")
                )));
            }
            let channel = ssh.channel_open_session().await.map_err(|e| fail("open a channel on", e.to_string()))?;
            channel.request_subsystem(true, "sftp").await.map_err(|e| fail("start SFTP on", e.to_string()))?;
            let cfg = russh_sftp::client::Config { request_timeout_secs: TIMEOUT.as_secs(), ..Default::default() };
            let mut sftp = RawSftpSession::new_with_config(channel.into_stream(), cfg);
            let version = sftp.init().await.map_err(|e| fail("start SFTP on", sftp_message(&e)))?;
            let has = |name: &str| version.extensions.contains_key(name);
            let mut chunk = 32 * 1024;
            if has("limits@openssh.com") {
                let limits: russh_sftp::client::rawsession::Limits =
                    sftp.limits().await.map_err(|e| fail("start SFTP on", sftp_message(&e)))?.into();
                let smallest = [limits.read_len, limits.write_len].into_iter().flatten().min().unwrap_or(u64::from(CHUNK_MAX));
                chunk = smallest.clamp(4096, u64::from(CHUNK_MAX)) as u32;
                sftp.set_limits(limits);
            }
            let root = if let Some(rest) = spec.path.strip_prefix('~') {
                let home = sftp.realpath(".").await.map_err(|e| fail("find the login folder on", sftp_message(&e)))?;
                let home = home.files.first().map(|f| f.filename.clone()).unwrap_or_default();
                format!("{}{rest}", home.trim_end_matches('/'))
            } else {
                spec.path.clone()
            };
            Ok(Conn {
                ssh,
                sftp: Arc::new(sftp),
                root,
                fsync: has("fsync@openssh.com"),
                posix_rename: has("posix-rename@openssh.com"),
                chunk,
            })
        };
        match self.runtime.block_on(async { tokio::time::timeout(TIMEOUT, work).await }) {
            Ok(r) => r,
            Err(_) => Err(Error::io(
                format!("connect to {}", self.describe()),
                io::Error::new(io::ErrorKind::TimedOut, format!("no answer within {} s", TIMEOUT.as_secs())),
            )),
        }
    }

    /// The open connection, or a new one. `fresh` is true for a new one.
    fn conn(&self) -> Result<(Arc<Conn>, bool)> {
        let mut guard = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = guard.as_ref().filter(|c| !c.broken()) {
            return Ok((c.clone(), false));
        }
        *guard = None;
        self.dirs.lock().unwrap_or_else(|e| e.into_inner()).clear();
        let c = Arc::new(self.connect()?);
        *guard = Some(c.clone());
        Ok((c, true))
    }

    fn drop_conn(&self, c: &Arc<Conn>) {
        let mut guard = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        if guard.as_ref().is_some_and(|g| Arc::ptr_eq(g, c)) {
            *guard = None;
        }
    }

    /// Runs `op` on the connection. On an error that breaks the connection, the
    /// connection is dropped (the next call opens a new one); when `retry`, an operation
    /// that failed on an old connection runs once more on a new one.
    fn run<T>(&self, what: &str, retry: bool, op: impl AsyncFn(&Arc<Conn>) -> Step<T>) -> Result<T> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (c, fresh) = self.conn()?;
            let result = self.runtime.block_on(c.guard(op(&c)));
            match result {
                Ok(v) => return Ok(v),
                Err(e) => {
                    let broken = breaks_connection(&e);
                    if broken {
                        self.drop_conn(&c);
                        if retry && !fresh && attempt == 1 {
                            tracing::debug!(replica = %self.describe(), what, "the SFTP connection broke; trying again on a new one");
                            continue;
                        }
                    }
                    return Err(self.error(what, e));
                }
            }
        }
    }

    fn error(&self, what: &str, e: Fail) -> Error {
        let what = format!("{what} in {}", self.describe());
        match e {
            Fail::Local(e) => e,
            Fail::Sftp(SftpError::Status(s)) if s.status_code == StatusCode::NoSuchFile => Error::NotFound(what),
            Fail::Sftp(e) => {
                let kind = match &e {
                    SftpError::Status(s) if s.status_code == StatusCode::PermissionDenied => io::ErrorKind::PermissionDenied,
                    SftpError::Timeout => io::ErrorKind::TimedOut,
                    _ => io::ErrorKind::Other,
                };
                Error::io(what, io::Error::new(kind, sftp_message(&e)))
            }
        }
    }

    fn level_dir(c: &Conn, level: u8) -> String {
        format!("{}/ltx/{level}", c.root)
    }

    fn file_path(c: &Conn, key: FileKey) -> String {
        format!("{}/{}", Self::level_dir(c, key.level), key.file_name())
    }

    /// `mkdir -p`, remembering the folders that exist.
    async fn mkdir_p(&self, c: &Conn, dir: &str) -> Step<()> {
        if self.dirs.lock().unwrap_or_else(|e| e.into_inner()).contains(dir) {
            return Ok(());
        }
        // Walk up to the first folder that exists, then create the rest downwards.
        let mut absent = Vec::new();
        let mut at = dir;
        while !at.is_empty() {
            match c.sftp.stat(at).await {
                Ok(a) if a.attrs.is_dir() || a.attrs.permissions.is_none() => break,
                Ok(_) => {
                    return Err(Fail::Local(Error::Invalid(format!("{at} on {} is not a folder", self.spec.address()))));
                }
                Err(e) if missing(&e) => {
                    absent.push(at);
                    at = parent(at);
                }
                Err(e) => return Err(e.into()),
            }
        }
        for d in absent.into_iter().rev() {
            let attrs = FileAttributes { permissions: Some(0o755), ..FileAttributes::empty() };
            if let Err(e) = c.sftp.mkdir(d, attrs).await {
                // Someone else may have made it meanwhile.
                match c.sftp.stat(d).await {
                    Ok(a) if a.attrs.is_dir() => {}
                    _ => return Err(e.into()),
                }
            }
        }
        self.dirs.lock().unwrap_or_else(|e| e.into_inner()).insert(dir.to_string());
        Ok(())
    }

    /// Writes `src` to a new temp file beside `path` (created, written with requests in
    /// flight, fsynced when possible, closed); returns its name. The temp file is
    /// removed on failure.
    async fn write_temp(&self, c: &Conn, path: &str, src: &mut (dyn Read + Send)) -> Step<String> {
        let tmp = temp_beside(path);
        let attrs = FileAttributes { permissions: Some(0o644), ..FileAttributes::empty() };
        let flags = OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::EXCLUDE;
        let handle = match c.sftp.open(tmp.as_str(), flags, attrs.clone()).await {
            Ok(h) => h.handle,
            Err(e) if missing(&e) => {
                // The folder went away (someone cleaned up): make it again, once.
                self.dirs.lock().unwrap_or_else(|e| e.into_inner()).remove(parent(path));
                self.mkdir_p(c, parent(path)).await?;
                c.sftp.open(tmp.as_str(), flags, attrs).await?.handle
            }
            Err(e) => return Err(e.into()),
        };
        let written = self.write_handle(c, &handle, src).await;
        let closed = c.sftp.close(handle.as_str()).await;
        let result = match (written, closed) {
            (Err(e), _) => Err(e),
            (Ok(()), Err(e)) => Err(e.into()),
            (Ok(()), Ok(_)) => Ok(tmp.clone()),
        };
        if result.is_err() {
            let _ = c.sftp.remove(tmp.as_str()).await;
        }
        result
    }

    async fn write_handle(&self, c: &Conn, handle: &str, src: &mut (dyn Read + Send)) -> Step<()> {
        let mut inflight: VecDeque<JoinHandle<std::result::Result<(), SftpError>>> = VecDeque::new();
        let mut offset = 0u64;
        let mut buf = vec![0u8; c.chunk as usize];
        let mut mtime = None;
        let result: Step<()> = async {
            loop {
                let n = super::read_full(src, &mut buf).map_err(|e| Error::io("read the local file", e))?;
                if n == 0 {
                    break;
                }
                if offset == 0 && n >= ltx::HEADER_SIZE {
                    // Like Litestream: the file's time is the LTX header's (restores by
                    // time use it).
                    let header: &[u8; ltx::HEADER_SIZE] = buf[..ltx::HEADER_SIZE].try_into().unwrap_or(&[0; ltx::HEADER_SIZE]);
                    mtime = ltx::Header::decode(header).ok().and_then(|h| u32::try_from(h.timestamp_ms / 1000).ok());
                }
                if inflight.len() >= DEPTH
                    && let Some(first) = inflight.pop_front()
                {
                    join(first).await?;
                }
                let (sftp, h, data) = (c.sftp.clone(), handle.to_string(), buf[..n].to_vec());
                inflight.push_back(tokio::spawn(async move { sftp.write(h, offset, data).await.map(drop) }));
                offset += n as u64;
            }
            while let Some(first) = inflight.pop_front() {
                join(first).await?;
            }
            Ok(())
        }
        .await;
        if result.is_err() {
            for w in inflight {
                w.abort();
            }
            return result;
        }
        if let Some(t) = mtime {
            let attrs = FileAttributes { atime: Some(t), mtime: Some(t), ..FileAttributes::empty() };
            if let Err(e) = c.sftp.fsetstat(handle, attrs).await {
                tracing::debug!(replica = %self.describe(), error = %sftp_message(&e), "cannot set the file time");
            }
        }
        if c.fsync {
            c.sftp.fsync(handle).await?;
        }
        Ok(())
    }

    /// Stores a new file at `path` from `src`; never replaces one.
    async fn put_new(&self, c: &Conn, path: &str, src: &mut (dyn Read + Send)) -> Step<()> {
        self.mkdir_p(c, parent(path)).await?;
        let exists = |path: &str| Fail::Local(Error::AlreadyExists(PathBuf::from(format!("{path} on {}", self.spec.address()))));
        // A server whose rename replaces files would break "never overwrite": look first.
        match c.sftp.lstat(path).await {
            Ok(_) => return Err(exists(path)),
            Err(e) if missing(&e) => {}
            Err(e) => return Err(e.into()),
        }
        let tmp = self.write_temp(c, path, src).await?;
        // SFTP v3 rename fails when the target exists (OpenSSH: link(2), then unlink).
        match c.sftp.rename(tmp.as_str(), path).await {
            Ok(_) => Ok(()),
            Err(e) => {
                let _ = c.sftp.remove(tmp.as_str()).await;
                match c.sftp.lstat(path).await {
                    Ok(_) => Err(exists(path)),
                    Err(_) => Err(e.into()),
                }
            }
        }
    }

    /// Stores `bytes` at `path`, replacing any file there atomically (when the server
    /// offers `posix-rename@openssh.com`; else remove, then rename).
    async fn put_replace(&self, c: &Conn, path: &str, bytes: &[u8]) -> Step<()> {
        self.mkdir_p(c, parent(path)).await?;
        let tmp = self.write_temp(c, path, &mut &bytes[..]).await?;
        let renamed = if c.posix_rename {
            let mut data = Vec::with_capacity(8 + tmp.len() + path.len());
            for s in [tmp.as_str(), path] {
                data.extend_from_slice(&(s.len() as u32).to_be_bytes());
                data.extend_from_slice(s.as_bytes());
            }
            match c.sftp.extended("posix-rename@openssh.com", data).await {
                Ok(Packet::Status(s)) if s.status_code == StatusCode::Ok => Ok(()),
                Ok(Packet::Status(s)) => Err(SftpError::Status(s)),
                Ok(_) => Err(SftpError::UnexpectedPacket),
                Err(e) => Err(e),
            }
        } else {
            match c.sftp.remove(path).await {
                Ok(_) => {}
                Err(e) if missing(&e) => {}
                Err(e) => {
                    let _ = c.sftp.remove(tmp.as_str()).await;
                    return Err(e.into());
                }
            }
            c.sftp.rename(tmp.as_str(), path).await.map(drop)
        };
        if let Err(e) = renamed {
            let _ = c.sftp.remove(tmp.as_str()).await;
            return Err(e.into());
        }
        Ok(())
    }

    async fn remove(&self, c: &Conn, path: &str) -> Step<()> {
        match c.sftp.remove(path).await {
            Ok(_) => Ok(()),
            Err(e) if missing(&e) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

async fn join<T>(task: JoinHandle<std::result::Result<T, SftpError>>) -> Step<T> {
    match task.await {
        Ok(r) => r.map_err(Fail::Sftp),
        Err(e) => Err(Fail::Local(Error::io("SFTP request", io::Error::other(e.to_string())))),
    }
}

/// One read request in flight.
type ReadTask = JoinHandle<std::result::Result<Vec<u8>, SftpError>>;

/// Reads an SFTP file of known size with a few requests in flight.
struct FileReader {
    runtime: Arc<tokio::runtime::Runtime>,
    conn: Arc<Conn>,
    handle: String,
    size: u64,
    /// Offset of the next request to send.
    next: u64,
    /// Requests sent: offset, length, answer.
    inflight: VecDeque<(u64, u32, ReadTask)>,
    chunk: Vec<u8>,
    pos: usize,
    what: String,
}

impl FileReader {
    fn request(&self, offset: u64, len: u32) -> ReadTask {
        let (sftp, h) = (self.conn.sftp.clone(), self.handle.clone());
        self.runtime.spawn(async move { sftp.read(h, offset, len).await.map(|d| d.data) })
    }

    fn fail(&self, why: impl fmt::Display) -> io::Error {
        io::Error::other(format!("{}: {why}", self.what))
    }
}

impl Read for FileReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.chunk.len() {
            while self.inflight.len() < DEPTH && self.next < self.size {
                let len = (self.size - self.next).min(u64::from(self.conn.chunk)) as u32;
                self.inflight.push_back((self.next, len, self.request(self.next, len)));
                self.next += u64::from(len);
            }
            let Some((offset, len, task)) = self.inflight.pop_front() else { return Ok(0) };
            let mut data = match self.runtime.block_on(self.conn.guard(join(task))) {
                Ok(d) => d,
                Err(Fail::Sftp(e)) => return Err(self.fail(sftp_message(&e))),
                Err(Fail::Local(e)) => return Err(self.fail(e)),
            };
            // A server may answer with less than asked: fetch the rest before going on.
            while (data.len() as u64) < u64::from(len) {
                let at = offset + data.len() as u64;
                let more = match self.runtime.block_on(self.conn.guard(join(self.request(at, len - data.len() as u32)))) {
                    Ok(d) if !d.is_empty() => d,
                    Err(Fail::Sftp(SftpError::Status(s))) if s.status_code == StatusCode::Eof => {
                        return Err(self.fail(format!("the file ends at byte {at}, before its listed size {}", self.size)));
                    }
                    Ok(_) => return Err(self.fail("empty read")),
                    Err(Fail::Sftp(e)) => return Err(self.fail(sftp_message(&e))),
                    Err(Fail::Local(e)) => return Err(self.fail(e)),
                };
                data.extend_from_slice(&more);
            }
            data.truncate(len as usize);
            self.chunk = data;
            self.pos = 0;
        }
        let n = buf.len().min(self.chunk.len() - self.pos);
        buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl Drop for FileReader {
    fn drop(&mut self) {
        for (_, _, task) in self.inflight.drain(..) {
            task.abort();
        }
        let (sftp, h) = (self.conn.sftp.clone(), std::mem::take(&mut self.handle));
        self.runtime.spawn(async move {
            let _ = sftp.close(h).await;
        });
    }
}

impl Store for SftpStore {
    fn list(&self, level: u8) -> Result<Vec<FileInfo>> {
        self.run(&format!("list ltx/{level}"), true, async |c| {
            let dir = Self::level_dir(c, level);
            let handle = match c.sftp.opendir(dir.as_str()).await {
                Ok(h) => h.handle,
                Err(e) if missing(&e) => return Ok(Vec::new()),
                Err(e) => return Err(e.into()),
            };
            let mut files = Vec::new();
            let listed: Step<()> = async {
                loop {
                    match c.sftp.readdir(handle.as_str()).await {
                        Ok(name) => {
                            for f in name.files {
                                let regular = f.attrs.permissions.is_none() || f.attrs.is_regular();
                                if let Some(key) = FileKey::parse(level, &f.filename).filter(|_| regular) {
                                    files.push(FileInfo { key, size: f.attrs.size.unwrap_or(0) });
                                }
                            }
                        }
                        Err(SftpError::Status(s)) if s.status_code == StatusCode::Eof => return Ok(()),
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            .await;
            let _ = c.sftp.close(handle.as_str()).await;
            listed?;
            files.sort_by_key(|f| (f.key.min, f.key.max));
            Ok(files)
        })
    }

    fn put(&self, key: FileKey, local: &Path) -> Result<()> {
        // Opened per attempt: a retry must start from the first byte.
        self.run(&format!("upload {key}"), false, async |c| {
            let mut file =
                std::fs::File::open(local).map_err(|e| Error::io(format!("open {}", local.display()), e))?;
            self.put_new(c, &Self::file_path(c, key), &mut file).await
        })
    }

    fn put_bytes(&self, key: FileKey, bytes: &[u8]) -> Result<()> {
        self.run(&format!("upload {key}"), false, async |c| self.put_new(c, &Self::file_path(c, key), &mut &bytes[..]).await)
    }

    fn open(&self, key: FileKey) -> Result<Box<dyn Read + Send>> {
        let (conn, handle, size) = self.run(&format!("{key}"), true, async |c| {
            let path = Self::file_path(c, key);
            let handle = c.sftp.open(path.as_str(), OpenFlags::READ, FileAttributes::empty()).await?.handle;
            match c.sftp.fstat(handle.as_str()).await {
                Ok(a) => Ok((c.clone(), handle, a.attrs.size.unwrap_or(0))),
                Err(e) => {
                    let _ = c.sftp.close(handle).await;
                    Err(e.into())
                }
            }
        })?;
        Ok(Box::new(FileReader {
            runtime: self.runtime.clone(),
            conn,
            handle,
            size,
            next: 0,
            inflight: VecDeque::new(),
            chunk: Vec::new(),
            pos: 0,
            what: format!("read {key} from {}", self.describe()),
        }))
    }

    fn delete(&self, key: FileKey) -> Result<()> {
        self.run(&format!("delete {key}"), true, async |c| self.remove(c, &Self::file_path(c, key)).await)
    }

    fn describe(&self) -> String {
        self.spec.describe()
    }

    fn init(&self) -> Result<()> {
        let (c, _) = self.conn()?;
        let dir = format!("{}/ltx", c.root);
        let result = self.runtime.block_on(c.guard(async {
            self.mkdir_p(&c, &dir).await?;
            let probe = temp_beside(&format!("{dir}/probe"));
            let flags = OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::EXCLUDE;
            let h = c.sftp.open(probe.as_str(), flags, FileAttributes::empty()).await?.handle;
            let _ = c.sftp.close(h).await;
            c.sftp.remove(probe.as_str()).await?;
            Ok(())
        }));
        result.map_err(|e: Fail| match e {
            Fail::Local(e) => e,
            Fail::Sftp(e) => Error::Invalid(format!("cannot write to folder {dir} on {}: {}", self.spec.address(), sftp_message(&e))),
        })
    }

    fn put_meta(&self, name: &str, bytes: &[u8]) -> Result<()> {
        self.run(&format!("write {name}"), true, async |c| self.put_replace(c, &format!("{}/{name}", c.root), bytes).await)
    }

    fn get_meta(&self, name: &str) -> Result<Option<Vec<u8>>> {
        self.run(&format!("read {name}"), true, async |c| {
            let path = format!("{}/{name}", c.root);
            let handle = match c.sftp.open(path.as_str(), OpenFlags::READ, FileAttributes::empty()).await {
                Ok(h) => h.handle,
                Err(e) if missing(&e) => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            let mut bytes = Vec::new();
            let read: Step<()> = async {
                loop {
                    match c.sftp.read(handle.as_str(), bytes.len() as u64, c.chunk).await {
                        Ok(d) if d.data.is_empty() => return Ok(()),
                        Ok(d) => bytes.extend_from_slice(&d.data),
                        Err(SftpError::Status(s)) if s.status_code == StatusCode::Eof => return Ok(()),
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            .await;
            let _ = c.sftp.close(handle.as_str()).await;
            read.map(|()| Some(bytes))
        })
    }

    fn delete_meta(&self, name: &str) -> Result<()> {
        self.run(&format!("delete {name}"), true, async |c| self.remove(c, &format!("{}/{name}", c.root)).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_build_without_network() {
        let s = SftpStore::open("sftp://u:pw@127.0.0.1:1/x").unwrap();
        assert_eq!(s.describe(), "sftp://u@127.0.0.1:1/x");
        assert!(!format!("{s:?}").contains("pw"));
        assert!(super::super::open("sftp://u@127.0.0.1:1/x").is_ok());
    }
}

//! Replicas in object storage (S3 and S3-compatibles, Azure Blob Storage, Google Cloud
//! Storage) through the `object_store` crate, behind the synchronous [`Store`] trait.
//!
//! Each store owns a small tokio runtime (one worker thread); every call blocks on it.
//! [`Store::open`] returns a reader that pulls the object's body chunk by chunk, so
//! memory stays bounded whatever the object's size.
//!
//! Key layout, as Litestream 0.5 writes it:
//! - S3: `<prefix>/<level as %04x>/<min>-<max>.ltx`
//! - Azure Blob and GCS: `<prefix>/ltx/<level>/<min>-<max>.ltx`
//! - walship-only objects ([`Store::put_meta`]): `<prefix>/walship/…`
//!
//! Replica URLs:
//! - `s3://BUCKET/PREFIX?endpoint=URL&region=R&force-path-style=true` (credentials from
//!   `access-key-id` / `secret-access-key`, else `AWS_ACCESS_KEY_ID` /
//!   `AWS_SECRET_ACCESS_KEY`, else `LITESTREAM_ACCESS_KEY_ID` /
//!   `LITESTREAM_SECRET_ACCESS_KEY`, else the instance's role)
//! - `abs://ACCOUNT@CONTAINER/PREFIX?endpoint=URL` (key from `account-key`, else
//!   `AZURE_STORAGE_ACCOUNT_KEY`, else `LITESTREAM_AZURE_ACCOUNT_KEY`)
//! - `gs://BUCKET/PREFIX` (service-account file from `GOOGLE_APPLICATION_CREDENTIALS`)

use std::fmt;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use object_store::path::Path as ObjPath;
use object_store::{
    BackoffConfig, ClientOptions, ObjectStore as _, ObjectStoreExt, PutMode, PutOptions, PutPayload, RetryConfig,
    WriteMultipart,
};

use super::{FileInfo, FileKey, Store};
use crate::error::{Error, Result};

/// Objects up to this size are uploaded with one conditional PUT; larger ones in parts.
const SINGLE_PUT_MAX: u64 = 16 * 1024 * 1024;
/// Part size of multipart uploads (S3 needs at least 5 MiB).
const PART_SIZE: usize = 8 * 1024 * 1024;
/// Per-request timeout of everything but downloads (which use a per-read timeout).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Which service a replica lives in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Amazon S3 or an S3-compatible service.
    S3,
    /// Azure Blob Storage.
    Azure,
    /// Google Cloud Storage.
    Gcs,
}

impl Kind {
    fn scheme(self) -> &'static str {
        match self {
            Kind::S3 => "s3",
            Kind::Azure => "abs",
            Kind::Gcs => "gs",
        }
    }
}

/// Everything needed to reach one object-storage replica, parsed from a URL.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Spec {
    /// The service (always set after parsing).
    pub kind: Option<Kind>,
    /// Bucket (S3, GCS) or container (Azure).
    pub bucket: String,
    /// Key prefix without leading or trailing `/` (may be empty).
    pub prefix: String,
    /// Endpoint URL (S3-compatibles, Azurite, ...).
    pub endpoint: Option<String>,
    /// S3 region.
    pub region: Option<String>,
    /// S3 path-style requests (`http://host/bucket/key`).
    pub force_path_style: bool,
    /// S3 access key id.
    pub access_key_id: Option<String>,
    /// S3 secret access key.
    pub secret_access_key: Option<String>,
    /// Azure storage account.
    pub account: Option<String>,
    /// Azure account key.
    pub account_key: Option<String>,
}

impl fmt::Debug for Spec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print secrets.
        f.debug_struct("Spec")
            .field("kind", &self.kind)
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("force_path_style", &self.force_path_style)
            .field("account", &self.account)
            .finish_non_exhaustive()
    }
}

/// Query keys a replica URL may carry (Litestream's spellings and walship's).
const QUERY_KEYS: &str =
    "endpoint, region, force-path-style, access-key-id, secret-access-key, account-key";

impl Spec {
    /// Parses `s3://…`, `abs://…` or `gs://…`. Errors are one line and never echo secrets.
    pub fn parse(arg: &str) -> Result<Spec> {
        let (scheme, _) = arg.split_once("://").unwrap_or(("", ""));
        let kind = match scheme {
            "s3" => Kind::S3,
            "abs" | "az" | "azure" => Kind::Azure,
            "gs" | "gcs" => Kind::Gcs,
            _ => return Err(Error::Invalid(format!("replica URL {}: not an object-storage URL", redact(arg)))),
        };
        let bad = |why: &str| Error::Invalid(format!("replica URL {}: {why}", redact(arg)));
        let url = url::Url::parse(arg).map_err(|e| bad(&e.to_string()))?;
        let host = url.host_str().unwrap_or_default().to_string();
        let mut spec = Spec { kind: Some(kind), prefix: clean_prefix(url.path()), ..Spec::default() };
        match kind {
            Kind::Azure => {
                // abs://ACCOUNT@CONTAINER/PREFIX (Litestream's form).
                if url.username().is_empty() {
                    return Err(bad("give the storage account, like abs://ACCOUNT@CONTAINER/path"));
                }
                spec.account = Some(decode(url.username()));
                spec.bucket = host;
            }
            Kind::S3 | Kind::Gcs => {
                if !url.username().is_empty() || url.password().is_some() {
                    return Err(bad("credentials do not belong in the host part; use access-key-id/secret-access-key or the environment"));
                }
                spec.bucket = host;
            }
        }
        if spec.bucket.is_empty() {
            return Err(bad(if kind == Kind::Azure { "the container is missing" } else { "the bucket is missing" }));
        }
        for (k, v) in url.query_pairs() {
            let v = v.into_owned();
            match (k.as_ref(), kind) {
                ("endpoint", Kind::S3 | Kind::Azure) => {
                    let v = if v.contains("://") { v } else { format!("http://{v}") };
                    url::Url::parse(&v).map_err(|e| bad(&format!("endpoint {v:?}: {e}")))?;
                    spec.endpoint = Some(v);
                    if kind == Kind::S3 {
                        // Custom endpoints (MinIO, moto, ...) mostly want path-style
                        // requests, as Litestream assumes too, unless told otherwise.
                        spec.force_path_style = true;
                    }
                }
                ("region", Kind::S3) => spec.region = Some(v),
                ("force-path-style" | "forcePathStyle", Kind::S3) => {
                    spec.force_path_style = parse_bool(&v).ok_or_else(|| bad("force-path-style must be true or false"))?;
                }
                ("access-key-id", Kind::S3) => spec.access_key_id = Some(v),
                ("secret-access-key", Kind::S3) => spec.secret_access_key = Some(v),
                ("account-key", Kind::Azure) => spec.account_key = Some(v),
                (k, _) => {
                    return Err(bad(&format!("unknown or misplaced query key {k:?} (known: {QUERY_KEYS})")));
                }
            }
        }
        // Query order must not matter: an explicit force-path-style wins over the
        // endpoint's default.
        if let Some((_, v)) = url.query_pairs().find(|(k, _)| k == "force-path-style" || k == "forcePathStyle") {
            spec.force_path_style = parse_bool(&v).unwrap_or(spec.force_path_style);
        }
        Ok(spec)
    }

    /// The replica as a URL without secrets, for messages.
    pub fn describe(&self) -> String {
        let kind = self.kind.unwrap_or(Kind::S3);
        let account = self.account.as_deref().map(|a| format!("{a}@")).unwrap_or_default();
        let mut s = format!("{}://{account}{}/{}", kind.scheme(), self.bucket, self.prefix);
        if let Some(e) = &self.endpoint {
            s.push_str(&format!(" (endpoint {e})"));
        }
        s
    }

    /// The object key of an LTX file.
    pub fn key(&self, key: FileKey) -> String {
        format!("{}{}", self.level_prefix(key.level), key.file_name())
    }

    /// The key prefix of a level's files, ending in `/`.
    pub fn level_prefix(&self, level: u8) -> String {
        match self.kind.unwrap_or(Kind::S3) {
            Kind::S3 => join(&self.prefix, &format!("{level:04x}/")),
            Kind::Azure | Kind::Gcs => join(&self.prefix, &format!("ltx/{level}/")),
        }
    }

    /// The object key of a walship-only object.
    pub fn meta_key(&self, name: &str) -> String {
        join(&self.prefix, name)
    }
}

fn join(prefix: &str, rest: &str) -> String {
    if prefix.is_empty() { rest.to_string() } else { format!("{prefix}/{rest}") }
}

fn clean_prefix(path: &str) -> String {
    decode(path).split('/').filter(|s| !s.is_empty()).collect::<Vec<_>>().join("/")
}

fn decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "true" | "1" | "yes" => Some(true),
        "false" | "0" | "no" => Some(false),
        _ => None,
    }
}

/// A URL with its query (which may hold secrets) and user info's password removed.
fn redact(arg: &str) -> String {
    let mut base = arg.split_once('?').map_or(arg, |(b, _)| b).to_string();
    if let Some((scheme, rest)) = base.split_once("://")
        && let Some((user, host)) = rest.split_once('@')
        && user.contains(':')
    {
        base = format!("{scheme}://…@{host}");
    }
    if arg.contains('?') { format!("{base}?…") } else { base }
}

fn env(names: &[&str]) -> Option<String> {
    names.iter().find_map(|n| std::env::var(n).ok().filter(|v| !v.is_empty()))
}

/// A replica in object storage.
pub struct ObjectStore {
    spec: Spec,
    runtime: Arc<tokio::runtime::Runtime>,
    /// Everything but downloads: a total per-request timeout.
    ops: Arc<dyn object_store::ObjectStore>,
    /// Downloads: no total timeout (a large snapshot may take minutes), a per-read one.
    reads: Arc<dyn object_store::ObjectStore>,
}

impl fmt::Debug for ObjectStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectStore").field("spec", &self.spec).finish_non_exhaustive()
    }
}

impl ObjectStore {
    /// Opens the store a URL names (no request is made until the first call).
    pub fn open(arg: &str) -> Result<ObjectStore> {
        ObjectStore::new(Spec::parse(arg)?)
    }

    /// A store for `spec` (no request is made until the first call).
    pub fn new(spec: Spec) -> Result<ObjectStore> {
        // reqwest is built without a bundled TLS provider: install ring's (once per
        // process; a second install fails harmlessly).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("walship-objstore")
            .enable_all()
            .build()
            .map_err(|e| Error::io("start the object-storage runtime", e))?;
        let allow_http = spec.endpoint.as_deref().is_some_and(|e| e.starts_with("http://"));
        let base = ClientOptions::new().with_allow_http(allow_http).with_connect_timeout(Duration::from_secs(10));
        let ops_opts = base.clone().with_timeout(REQUEST_TIMEOUT);
        let read_opts = base.with_timeout_disabled().with_read_timeout(REQUEST_TIMEOUT);
        let ops = build(&spec, ops_opts)?;
        let reads = build(&spec, read_opts)?;
        Ok(ObjectStore { spec, runtime: Arc::new(runtime), ops, reads })
    }

    /// The parsed location.
    pub fn spec(&self) -> &Spec {
        &self.spec
    }

    fn path(&self, key: &str) -> Result<ObjPath> {
        ObjPath::parse(key).map_err(|e| Error::Invalid(format!("replica {}: bad object key {key:?}: {e}", self.describe())))
    }

    fn err(&self, what: impl fmt::Display, e: object_store::Error) -> Error {
        let what = format!("{what} in {}", self.describe());
        match e {
            object_store::Error::NotFound { .. } => Error::NotFound(what),
            e => Error::io(what, io::Error::other(one_line(&e))),
        }
    }

    fn block_on<F: Future>(&self, f: F) -> F::Output {
        self.runtime.block_on(f)
    }

    /// One conditional PUT: fails with [`Error::AlreadyExists`] when the key exists.
    fn put_created(&self, path: &ObjPath, key: FileKey, bytes: Vec<u8>) -> Result<()> {
        let opts = PutOptions { mode: PutMode::Create, ..PutOptions::default() };
        match self.block_on(self.ops.put_opts(path, PutPayload::from(bytes), opts)) {
            Ok(_) => Ok(()),
            Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => {
                Err(Error::AlreadyExists(PathBuf::from(format!("{} in {}", self.spec.key(key), self.describe()))))
            }
            Err(e) => Err(self.err(format!("upload {key}"), e)),
        }
    }

    fn put_multipart(&self, path: &ObjPath, file: &mut std::fs::File, key: FileKey) -> Result<()> {
        // Multipart uploads cannot be conditional: check first. Keys are content
        // addressed by TXID range, so a lost race only rewrites the same file.
        match self.block_on(self.ops.head(path)) {
            Ok(_) => return Err(Error::AlreadyExists(PathBuf::from(self.spec.key(key)))),
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(self.err(format!("check {key}"), e)),
        }
        let upload = self.block_on(self.ops.put_multipart(path)).map_err(|e| self.err(format!("upload {key}"), e))?;
        // WriteMultipart spawns each part's upload: it needs the runtime's context.
        let _context = self.runtime.enter();
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        let mut buf = vec![0u8; PART_SIZE];
        let result: Result<()> = (|| {
            loop {
                let n = super::read_full(file, &mut buf).map_err(|e| Error::io(format!("read local file for {key}"), e))?;
                if n == 0 {
                    return Ok(());
                }
                self.block_on(writer.wait_for_capacity(1)).map_err(|e| self.err(format!("upload {key}"), e))?;
                writer.write(&buf[..n]);
            }
        })();
        match result {
            Ok(()) => self.block_on(writer.finish()).map(drop).map_err(|e| self.err(format!("upload {key}"), e)),
            Err(e) => {
                let _ = self.block_on(writer.abort());
                Err(e)
            }
        }
    }
}

/// object_store's message on one line (its Display already includes its sources), with
/// an XML error body cut down to its code and message.
fn one_line(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string().split_whitespace().collect::<Vec<_>>().join(" ");
    if let Some(start) = s.find("<?xml").or_else(|| s.find("<Error>")) {
        let tag = |t: &str| {
            let open = format!("<{t}>");
            let from = s.find(&open)? + open.len();
            let len = s[from..].find('<')?;
            Some(s[from..from + len].to_string())
        };
        let summary = [tag("Code"), tag("Message")].into_iter().flatten().collect::<Vec<_>>().join(": ");
        s.truncate(start);
        s.push_str(&summary);
    }
    s
}

fn build(spec: &Spec, options: ClientOptions) -> Result<Arc<dyn object_store::ObjectStore>> {
    // walship's uploader retries with its own backoff; keep the client's retries few.
    let retry = RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            base: 2.0,
        },
        max_retries: 2,
        retry_timeout: Duration::from_secs(20),
    };
    let bad = |e: object_store::Error| Error::Invalid(format!("replica {}: {}", spec.describe(), one_line(&e)));
    Ok(match spec.kind.unwrap_or(Kind::S3) {
        Kind::S3 => {
            let mut b = object_store::aws::AmazonS3Builder::new()
                .with_bucket_name(&spec.bucket)
                .with_region(spec.region.clone().or_else(|| env(&["AWS_REGION", "AWS_DEFAULT_REGION"])).unwrap_or_else(|| "us-east-1".into()))
                .with_virtual_hosted_style_request(!spec.force_path_style)
                .with_client_options(options)
                .with_retry(retry);
            if let Some(e) = &spec.endpoint {
                b = b.with_endpoint(e);
            }
            let id = spec.access_key_id.clone().or_else(|| env(&["AWS_ACCESS_KEY_ID"])).or_else(|| env(&["LITESTREAM_ACCESS_KEY_ID"]));
            let secret = spec
                .secret_access_key
                .clone()
                .or_else(|| env(&["AWS_SECRET_ACCESS_KEY"]))
                .or_else(|| env(&["LITESTREAM_SECRET_ACCESS_KEY"]));
            match (id, secret) {
                (Some(id), Some(secret)) => {
                    b = b.with_access_key_id(id).with_secret_access_key(secret);
                    if let Some(token) = env(&["AWS_SESSION_TOKEN"]) {
                        b = b.with_token(token);
                    }
                }
                (None, None) => {} // the instance's role (metadata service)
                _ => {
                    return Err(Error::Invalid(format!(
                        "replica {}: give both an access key id and a secret access key, or neither",
                        spec.describe()
                    )));
                }
            }
            Arc::new(b.build().map_err(bad)?)
        }
        Kind::Azure => {
            let account = spec.account.clone().unwrap_or_default();
            let mut b = object_store::azure::MicrosoftAzureBuilder::new()
                .with_account(&account)
                .with_container_name(&spec.bucket)
                .with_client_options(options)
                .with_retry(retry);
            if let Some(e) = &spec.endpoint {
                b = b.with_endpoint(e.clone());
            }
            let key = spec
                .account_key
                .clone()
                .or_else(|| env(&["AZURE_STORAGE_ACCOUNT_KEY"]))
                .or_else(|| env(&["LITESTREAM_AZURE_ACCOUNT_KEY"]));
            // Without a key object_store would ask a metadata service for a token;
            // ask for the key instead (as Litestream does).
            let Some(key) = key else {
                return Err(Error::Invalid(format!(
                    "replica {}: give the account key (account-key, or AZURE_STORAGE_ACCOUNT_KEY / LITESTREAM_AZURE_ACCOUNT_KEY)",
                    spec.describe()
                )));
            };
            b = b.with_access_key(key);
            Arc::new(b.build().map_err(bad)?)
        }
        Kind::Gcs => {
            let mut b = object_store::gcp::GoogleCloudStorageBuilder::new()
                .with_bucket_name(&spec.bucket)
                .with_client_options(options)
                .with_retry(retry);
            if let Some(path) = env(&["GOOGLE_APPLICATION_CREDENTIALS"]) {
                b = b.with_service_account_path(path);
            }
            Arc::new(b.build().map_err(bad)?)
        }
    })
}

/// A reader that pulls an object's body one chunk at a time.
struct BodyReader {
    runtime: Arc<tokio::runtime::Runtime>,
    stream: BoxStream<'static, object_store::Result<Bytes>>,
    chunk: Bytes,
    what: String,
}

impl Read for BodyReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.chunk.is_empty() {
            match self.runtime.block_on(self.stream.next()) {
                None => return Ok(0),
                Some(Ok(b)) => self.chunk = b,
                Some(Err(e)) => return Err(io::Error::other(format!("{}: {}", self.what, one_line(&e)))),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk.split_to(n));
        Ok(n)
    }
}

impl Store for ObjectStore {
    fn list(&self, level: u8) -> Result<Vec<FileInfo>> {
        let prefix = self.spec.level_prefix(level);
        let path = self.path(prefix.trim_end_matches('/'))?;
        let listing = self
            .block_on(self.ops.list_with_delimiter(Some(&path)))
            .map_err(|e| self.err(format!("list {prefix}"), e))?;
        let mut files: Vec<FileInfo> = listing
            .objects
            .iter()
            .filter_map(|o| {
                let key = FileKey::parse(level, o.location.filename()?)?;
                Some(FileInfo { key, size: o.size })
            })
            .collect();
        files.sort_by_key(|f| (f.key.min, f.key.max));
        Ok(files)
    }

    fn list_after(&self, level: u8, after: ltx::TxId) -> Result<Vec<FileInfo>> {
        let prefix = self.spec.level_prefix(level);
        let dir = self.path(prefix.trim_end_matches('/'))?;
        // Keys sort by their 16-hex-digit minimum TXID: start past every key of `after`.
        let offset = self.path(&format!("{prefix}{after}-ffffffffffffffff.ltx"))?;
        let mut listing = self.ops.list_with_offset(Some(&dir), &offset);
        let mut files = Vec::new();
        self.block_on(async {
            while let Some(meta) = listing.next().await {
                let meta = meta.map_err(|e| self.err(format!("list {prefix}"), e))?;
                let name = meta.location.filename().unwrap_or_default();
                if let Some(key) = FileKey::parse(level, name).filter(|k| k.min > after) {
                    files.push(FileInfo { key, size: meta.size });
                }
            }
            Ok::<_, Error>(())
        })?;
        files.sort_by_key(|f| (f.key.min, f.key.max));
        Ok(files)
    }

    fn put(&self, key: FileKey, local: &Path) -> Result<()> {
        let path = self.path(&self.spec.key(key))?;
        let mut file =
            std::fs::File::open(local).map_err(|e| Error::io(format!("open {}", local.display()), e))?;
        let size = file.metadata().map_err(|e| Error::io(format!("stat {}", local.display()), e))?.len();
        if size > SINGLE_PUT_MAX {
            return self.put_multipart(&path, &mut file, key);
        }
        let mut bytes = Vec::with_capacity(size as usize);
        file.read_to_end(&mut bytes).map_err(|e| Error::io(format!("read {}", local.display()), e))?;
        self.put_created(&path, key, bytes)
    }

    fn put_bytes(&self, key: FileKey, bytes: &[u8]) -> Result<()> {
        let path = self.path(&self.spec.key(key))?;
        self.put_created(&path, key, bytes.to_vec())
    }

    fn open(&self, key: FileKey) -> Result<Box<dyn Read + Send>> {
        let path = self.path(&self.spec.key(key))?;
        let got = self.block_on(self.reads.get(&path)).map_err(|e| self.err(format!("{key}"), e))?;
        Ok(Box::new(BodyReader {
            runtime: self.runtime.clone(),
            stream: got.into_stream(),
            chunk: Bytes::new(),
            what: format!("read {key} from {}", self.describe()),
        }))
    }

    fn delete(&self, key: FileKey) -> Result<()> {
        let path = self.path(&self.spec.key(key))?;
        match self.block_on(self.ops.delete(&path)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.err(format!("delete {key}"), e)),
        }
    }

    fn describe(&self) -> String {
        self.spec.describe()
    }

    fn init(&self) -> Result<()> {
        let what = if self.spec.kind == Some(Kind::Azure) { "container" } else { "bucket" };
        let fail = |op: &str, e: object_store::Error| {
            Error::Invalid(format!(
                "cannot {op} {what} {:?} (does it exist, and may these credentials write to it?): {}",
                self.spec.bucket,
                one_line(&e)
            ))
        };
        let root = self.path(&self.spec.meta_key("walship"))?;
        self.block_on(self.ops.list_with_delimiter(Some(&root))).map_err(|e| fail("list", e))?;
        let probe = self.path(&self.spec.meta_key("walship/probe"))?;
        self.block_on(self.ops.put(&probe, PutPayload::from_static(b"")))
            .map_err(|e| fail("write to", e))?;
        Ok(())
    }

    fn put_meta(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let path = self.path(&self.spec.meta_key(name))?;
        self.block_on(self.ops.put(&path, PutPayload::from(bytes.to_vec())))
            .map(drop)
            .map_err(|e| self.err(format!("write {name}"), e))
    }

    fn delete_meta(&self, name: &str) -> Result<()> {
        let path = self.path(&self.spec.meta_key(name))?;
        match self.block_on(self.ops.delete(&path)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.err(format!("delete {name}"), e)),
        }
    }

    fn get_meta(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let path = self.path(&self.spec.meta_key(name))?;
        let got = match self.block_on(self.ops.get(&path)) {
            Ok(g) => g,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.err(format!("read {name}"), e)),
        };
        let bytes = self.block_on(got.bytes()).map_err(|e| self.err(format!("read {name}"), e))?;
        Ok(Some(bytes.to_vec()))
    }
}

#[cfg(test)]
mod tests {
    use ltx::TxId;

    use super::*;

    #[test]
    fn urls_parse_into_litestream_layouts() {
        let s = Spec::parse("s3://my-bkt/some/db/?endpoint=http://127.0.0.1:9000&region=eu-west-1").unwrap();
        assert_eq!((s.kind, s.bucket.as_str(), s.prefix.as_str()), (Some(Kind::S3), "my-bkt", "some/db"));
        assert_eq!(s.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(s.region.as_deref(), Some("eu-west-1"));
        assert!(s.force_path_style, "a custom endpoint defaults to path style");
        let key = FileKey { level: 9, min: TxId(1), max: TxId(0xa7) };
        assert_eq!(s.key(key), "some/db/0009/0000000000000001-00000000000000a7.ltx");
        assert_eq!(s.key(FileKey { level: 10, ..key }), "some/db/000a/0000000000000001-00000000000000a7.ltx");
        assert_eq!(s.meta_key("walship/checksums/x"), "some/db/walship/checksums/x");
        assert_eq!(s.describe(), "s3://my-bkt/some/db (endpoint http://127.0.0.1:9000)");

        let s = Spec::parse("s3://b1b/p?force-path-style=false&endpoint=h:1").unwrap();
        assert!(!s.force_path_style);
        assert_eq!(s.endpoint.as_deref(), Some("http://h:1"));

        let a = Spec::parse("abs://acct@cont/db?endpoint=http://127.0.0.1:10000/acct").unwrap();
        assert_eq!((a.kind, a.account.as_deref(), a.bucket.as_str()), (Some(Kind::Azure), Some("acct"), "cont"));
        assert_eq!(a.key(key), "db/ltx/9/0000000000000001-00000000000000a7.ltx");

        let g = Spec::parse("gs://bkt/a/b").unwrap();
        assert_eq!(g.key(FileKey { level: 0, ..key }), "a/b/ltx/0/0000000000000001-00000000000000a7.ltx");
        let g = Spec::parse("gs://bkt").unwrap();
        assert_eq!(g.key(FileKey { level: 0, ..key }), "ltx/0/0000000000000001-00000000000000a7.ltx");
        assert_eq!(g.meta_key("walship/x"), "walship/x");
    }

    #[test]
    fn bad_urls_are_one_clear_line_without_secrets() {
        for (url, needle) in [
            ("s3:///path", "bucket is missing"),
            ("abs://container/path", "storage account"),
            ("s3://b1b/p?bogus=1", "bogus"),
            ("s3://b1b/p?account-key=x", "account-key"),
            ("s3://b1b/p?force-path-style=maybe", "force-path-style"),
            ("s3://user:pw@b1b/p", "credentials"),
        ] {
            let e = Spec::parse(url).unwrap_err();
            assert!(matches!(e, Error::Invalid(_)), "{url}: {e:?}");
            let msg = e.to_string();
            assert!(msg.contains(needle), "{url}: {msg}");
            assert!(!msg.contains('\n'), "{msg}");
            assert!(!msg.contains("pw"), "{msg}");
        }
        let msg = Spec::parse("s3://b1b/p?secret-access-key=hunter2&bogus=1").unwrap_err().to_string();
        assert!(!msg.contains("hunter2"), "{msg}");
    }

    #[test]
    fn stores_build_without_network() {
        // Building makes no request; GCS without credentials still builds (it would use
        // the metadata service on first use).
        let s = ObjectStore::open("s3://bkt/p?endpoint=http://127.0.0.1:1&access-key-id=a&secret-access-key=b").unwrap();
        assert!(!format!("{s:?}").contains("secret"));
        assert!(ObjectStore::open("abs://devstoreaccount1@c/p?endpoint=http://127.0.0.1:1/devstoreaccount1&account-key=a2V5").is_ok());
        if std::env::var_os("AZURE_STORAGE_ACCOUNT_KEY").is_none() && std::env::var_os("LITESTREAM_AZURE_ACCOUNT_KEY").is_none() {
            let e = ObjectStore::open("abs://acct@c/p").unwrap_err().to_string();
            assert!(e.contains("account key"), "{e}");
        }
        assert!(matches!(
            ObjectStore::open("s3://bkt/p?access-key-id=a"),
            Err(Error::Invalid(m)) if m.contains("both") || std::env::var_os("AWS_SECRET_ACCESS_KEY").is_some()
        ));
    }
}

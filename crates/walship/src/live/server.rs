//! The HTTP server of a primary or a cascading follower:
//!
//! - `GET /stream/<db>?txid=N&checksum=HEX`: the change stream from that position
//!   (frames, see [`crate::live::frame`]); no position = a snapshot first.
//! - `POST /sync/<db>` (primary): captures every commit made so far and answers
//!   `{"db", "txid", "checksum"}`; a follower that reached `txid` has them all.
//! - `GET /wait/<db>?txid=N&timeout=5s`: answers once the position reaches N
//!   (200), or 408 after the timeout.
//! - `GET /status`: positions, lag and connected followers, as JSON.
//!
//! With a token, every request needs `Authorization: Bearer <token>` (compared in
//! constant time). Database names are looked up in the served set, never used as paths.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use ltx::{Checksum, TxId};
use serde::Deserialize;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

use crate::error::{Error, Result};
use crate::live::feed::Feed;
use crate::live::sender;
use crate::local::Pos;

/// Extra `/status` fields a follower adds for its upstream.
pub type StatusExtra = Arc<dyn Fn(&str) -> Value + Send + Sync>;

/// What the server serves.
pub struct Served {
    /// The databases, by name.
    pub feeds: Vec<Arc<Feed>>,
    /// Bearer token every request must carry, if any.
    pub token: Option<String>,
    /// `primary` or `follower` (in `/status`).
    pub role: &'static str,
    /// Whether `/sync` is offered (primaries only).
    pub sync: bool,
    /// Per-database status fields added by the caller.
    pub extra: Option<StatusExtra>,
}

struct App {
    feeds: BTreeMap<String, Arc<Feed>>,
    token: Option<Vec<u8>>,
    role: &'static str,
    sync: bool,
    extra: Option<StatusExtra>,
}

/// A running server; dropping it stops it.
pub struct Server {
    addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts serving on `addr` (port 0 picks one) on a thread of its own.
pub fn start(addr: &str, served: Served) -> Result<Server> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_io()
        .enable_time()
        .thread_name("walship-http")
        .build()
        .map_err(|e| Error::io("start the HTTP server's runtime", e))?;
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(addr))
        .map_err(|e| Error::Invalid(format!("cannot listen on {addr}: {e}")))?;
    let local = listener.local_addr().map_err(|e| Error::io("read the listening address", e))?;
    let mut feeds = BTreeMap::new();
    for feed in served.feeds {
        if feeds.insert(feed.name().to_string(), feed.clone()).is_some() {
            return Err(Error::Invalid(format!(
                "two databases would be served under the name {:?}; give them distinct file names",
                feed.name()
            )));
        }
    }
    let app = Arc::new(App {
        feeds,
        token: served.token.map(String::into_bytes),
        role: served.role,
        sync: served.sync,
        extra: served.extra,
    });
    let router = Router::new()
        .route("/stream/{db}", get(stream))
        .route("/sync/{db}", post(sync))
        .route("/wait/{db}", get(wait))
        .route("/status", get(status))
        .layer(middleware::from_fn_with_state(app.clone(), auth))
        .layer(DefaultBodyLimit::max(1024))
        .with_state(app);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("walship-http".into())
        .spawn(move || {
            let serve = axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>())
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                });
            if let Err(e) = rt.block_on(async { serve.await }) {
                tracing::error!(error = %e, "HTTP server failed");
            }
            rt.shutdown_timeout(Duration::from_millis(200));
        })
        .map_err(|e| Error::io("start the HTTP server thread", e))?;
    tracing::info!(addr = %local, "serving live replicas");
    Ok(Server { addr: local, shutdown: Some(tx), thread: Some(thread) })
}

async fn auth(State(app): State<Arc<App>>, headers: HeaderMap, req: Request, next: Next) -> Response {
    if let Some(token) = &app.token {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
            .unwrap_or(b"");
        if !bool::from(given.ct_eq(token)) {
            return error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
        }
    }
    next.run(req).await
}

fn error(code: StatusCode, message: &str) -> Response {
    (code, axum::Json(json!({ "error": message }))).into_response()
}

fn feed(app: &App, db: &str) -> Option<Arc<Feed>> {
    app.feeds.get(db).cloned()
}

fn no_such_database() -> Response {
    error(StatusCode::NOT_FOUND, "no such database")
}

#[derive(Deserialize)]
struct StreamQuery {
    txid: Option<String>,
    checksum: Option<String>,
}

async fn stream(
    State(app): State<Arc<App>>,
    Path(db): Path<String>,
    Query(q): Query<StreamQuery>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<SocketAddr>,
) -> Response {
    let Some(feed) = feed(&app, &db) else { return no_such_database() };
    let from = match (q.txid.as_deref(), q.checksum.as_deref()) {
        (None, None) => Pos::default(),
        (Some(t), Some(c)) => match (t.parse::<TxId>(), u64::from_str_radix(c, 16)) {
            (Ok(txid), Ok(sum)) => Pos { txid, checksum: Checksum(sum) },
            _ => return error(StatusCode::BAD_REQUEST, "txid must be 16 hex digits or decimal, checksum 16 hex digits"),
        },
        _ => return error(StatusCode::BAD_REQUEST, "give both txid and checksum, or neither"),
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(8);
    let id = feed.follower_joined(peer.to_string(), from.txid);
    let worker_feed = feed.clone();
    std::thread::spawn(move || {
        sender::stream(&worker_feed, from, |chunk| tx.blocking_send(chunk).is_ok(), |txid| worker_feed.follower_at(id, txid));
        worker_feed.follower_left(id);
    });
    let body = futures_util::stream::poll_fn(move |cx| {
        rx.poll_recv(cx).map(|chunk| chunk.map(|c| Ok::<_, std::convert::Infallible>(bytes::Bytes::from(c))))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/vnd.walship.stream")
        .header(header::CACHE_CONTROL, "no-store")
        .body(Body::from_stream(body))
        .unwrap_or_else(|_| error(StatusCode::INTERNAL_SERVER_ERROR, "response"))
}

async fn sync(State(app): State<Arc<App>>, Path(db): Path<String>) -> Response {
    if !app.sync {
        return error(StatusCode::METHOD_NOT_ALLOWED, "sync is served by the primary only");
    }
    let Some(feed) = feed(&app, &db) else { return no_such_database() };
    let name = db.clone();
    match tokio::task::spawn_blocking(move || feed.sync(Duration::from_secs(30))).await {
        Ok(Some(pos)) => axum::Json(json!({ "db": name, "txid": pos.txid.0, "checksum": pos.checksum.to_string() })).into_response(),
        _ => error(StatusCode::SERVICE_UNAVAILABLE, "capture did not answer within 30 s"),
    }
}

#[derive(Deserialize)]
struct WaitQuery {
    txid: String,
    timeout: Option<String>,
}

async fn wait(State(app): State<Arc<App>>, Path(db): Path<String>, Query(q): Query<WaitQuery>) -> Response {
    let Some(feed) = feed(&app, &db) else { return no_such_database() };
    let Ok(txid) = q.txid.parse::<TxId>() else {
        return error(StatusCode::BAD_REQUEST, "txid must be a decimal number or 16 hex digits");
    };
    let timeout = match q.timeout.as_deref().map(parse_duration) {
        None => Duration::from_secs(5),
        Some(Some(d)) if d <= Duration::from_secs(300) => d,
        Some(_) => return error(StatusCode::BAD_REQUEST, "timeout must look like 500ms or 5s (at most 300s)"),
    };
    let waiter = feed.clone();
    let reached = tokio::task::spawn_blocking(move || waiter.wait_for(txid, timeout)).await.unwrap_or(false);
    let (pos, _) = feed.pos();
    let code = if reached { StatusCode::OK } else { StatusCode::REQUEST_TIMEOUT };
    (code, axum::Json(json!({ "db": db, "txid": pos.txid.0, "reached": reached }))).into_response()
}

async fn status(State(app): State<Arc<App>>) -> Response {
    let dbs: Vec<Value> = app
        .feeds
        .values()
        .map(|feed| {
            let (pos, newest_ms) = feed.pos();
            let followers: Vec<Value> = feed
                .followers()
                .iter()
                .map(|f| json!({ "peer": f.peer, "txid": f.txid.0, "connected_s": f.since.elapsed().as_secs() }))
                .collect();
            let mut v = json!({
                "name": feed.name(),
                "txid": pos.txid.0,
                "checksum": pos.checksum.to_string(),
                "newest_file_ms": newest_ms,
                "followers": followers,
                "replicas": feed
                    .replicas()
                    .iter()
                    .map(|(txid, behind)| json!({ "txid": txid.0, "behind": behind }))
                    .collect::<Vec<_>>(),
            });
            if let (Some(extra), Some(obj)) = (&app.extra, v.as_object_mut()) {
                obj.insert("upstream".into(), extra(feed.name()));
            }
            v
        })
        .collect();
    axum::Json(json!({ "role": app.role, "databases": dbs })).into_response()
}

/// Parses `500ms`, `5s`, `2m` or a plain number of seconds.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (num, unit) = s.find(|c: char| !c.is_ascii_digit()).map_or((s, ""), |i| s.split_at(i));
    let n: u64 = num.parse().ok()?;
    match unit {
        "" | "s" => Some(Duration::from_secs(n)),
        "ms" => Some(Duration::from_millis(n)),
        "m" => Some(Duration::from_secs(n.checked_mul(60)?)),
        _ => None,
    }
}

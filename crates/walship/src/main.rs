//! The `walship` command line.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use walship::capture::CaptureOptions;
use walship::live::feed::Feed;
use walship::live::follow::{self, Follower, Source};
use walship::live::server::{self, Served};
use walship::local::LocalDir;
use walship::replicate::{self, DbSpec};
use walship::wake::Stop;
use walship::restore::{self, Check, Target};
use walship::store::{self, Store as _};
use walship::store::counted::{Counted, Counts};

/// Streams a live SQLite database's changes to replicas; restores it from them.
#[derive(Parser)]
#[command(name = "walship", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Capture every commit of DB and copy it to each REPLICA (a folder, or a file://,
    /// s3://, abs:// or gs:// URL); with --listen, also serve live followers.
    /// SIGINT/SIGTERM capture and upload what is left, then exit 0.
    Replicate {
        /// The SQLite database (WAL mode; switched to it if needed).
        #[arg(required_unless_present = "config", conflicts_with = "config")]
        db: Option<PathBuf>,
        /// Where to copy it: folder paths, or file://, s3://, abs:// or gs:// URLs.
        #[arg(requires = "db")]
        replicas: Vec<String>,
        /// A YAML config listing databases and replicas (Litestream's keys work).
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// Serve live followers on this address (e.g. 0.0.0.0:4000); each database
        /// under its file name without extension: http://host:4000/<name>.
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
        /// Bearer token every request to the server must carry.
        #[arg(long, env = "WALSHIP_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Keep REPLICA_DB, a readable copy of a database, up to date from SOURCE: a
    /// primary's server (http://primary:4000/<name>) or a replica location (folder,
    /// file://, s3://, abs://, gs://), polled. Open REPLICA_DB read-only in your app.
    Follow {
        /// http://host:port/<name>, or a replica location.
        source: String,
        /// The replica database (created when missing).
        replica: PathBuf,
        /// Serve followers of this follower on this address (cascading), plus
        /// /wait and /status.
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
        /// Bearer token for SOURCE and for this follower's own server.
        #[arg(long, env = "WALSHIP_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Rebuild a database from REPLICA.
    Restore {
        /// The replica: a folder, or a file://, s3://, abs:// or gs:// URL.
        replica: String,
        /// Where to write the database.
        #[arg(short, long)]
        output: PathBuf,
        /// Restore the state right after this TXID (16 hex digits, or a decimal number).
        #[arg(long, conflicts_with = "timestamp")]
        txid: Option<String>,
        /// Restore the newest state at or before this time (RFC 3339, e.g. 2026-11-26T10:00:00Z).
        #[arg(long)]
        timestamp: Option<String>,
        /// Replace OUTPUT if it exists.
        #[arg(long)]
        force: bool,
        /// SQLite check of the result before it is put in place.
        #[arg(long, value_enum, default_value_t = CheckArg::Quick)]
        check: CheckArg,
    },
    /// List the LTX files in REPLICA: level, TXID range, size, time.
    Ltx {
        /// The replica: a folder, or a file://, s3://, abs:// or gs:// URL.
        replica: String,
    },
    /// Print the version.
    Version,
}

#[derive(Clone, Copy, ValueEnum)]
enum CheckArg {
    /// PRAGMA quick_check.
    Quick,
    /// PRAGMA integrity_check.
    Full,
    /// No SQLite check (LTX checksums are still verified).
    None,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WALSHIP_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { ExitCode::from(2) } else { ExitCode::SUCCESS };
        }
    };
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Never panic over a closed stderr: the exit code still tells.
            let _ = writeln!(std::io::stderr(), "error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Replicate { db, replicas, config, listen, token } => replicate_cmd(db, replicas, config, listen, token),
        Command::Follow { source, replica, listen, token } => follow_cmd(&source, &replica, listen, token),
        Command::Restore { replica, output, txid, timestamp, force, check } => {
            let target = match (txid, timestamp) {
                (Some(t), _) => Target::TxId(t.parse().map_err(|_| {
                    anyhow::anyhow!("--txid {t:?} is not a TXID (16 hex digits like 00000000000000a7, or a decimal number)")
                })?),
                (None, Some(ts)) => Target::Time(
                    chrono::DateTime::parse_from_rfc3339(&ts)
                        .with_context(|| format!("--timestamp {ts:?} is not an RFC 3339 time like 2026-11-26T10:00:00Z"))?
                        .to_utc(),
                ),
                (None, None) => Target::Latest,
            };
            let check = match check {
                CheckArg::Quick => Check::Quick,
                CheckArg::Full => Check::Full,
                CheckArg::None => Check::None,
            };
            let store = store::open(&replica)?;
            let started = std::time::Instant::now();
            let report = restore::restore(store.as_ref(), target, &output, force, check)?;
            let _ = writeln!(
                std::io::stderr(),
                "restored {} at TXID {} ({} files, {} bytes, checksum {}) in {:.2?}",
                output.display(),
                report.txid,
                report.files,
                report.bytes,
                if report.checksum_verified { "verified" } else { "not recorded by the writer" },
                started.elapsed()
            );
            Ok(())
        }
        Command::Ltx { replica } => {
            let store = store::open(&replica)?;
            let files = store::list_all(store.as_ref())?;
            let mut out = std::io::stdout().lock();
            let mut lines = vec![format!("{:<5} {:<16} {:<16} {:>12}  created", "level", "min_txid", "max_txid", "size")];
            for f in files {
                let mut r = store.open(f.key)?;
                let mut buf = [0u8; ltx::HEADER_SIZE];
                std::io::Read::read_exact(&mut r, &mut buf).with_context(|| format!("read {}", f.key))?;
                let header = ltx::Header::decode(&buf).with_context(|| format!("{}", f.key))?;
                let time = chrono::DateTime::from_timestamp_millis(header.timestamp_ms)
                    .map_or_else(|| "?".to_string(), |t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
                lines.push(format!("{:<5} {} {} {:>12}  {}", f.key.level, f.key.min, f.key.max, f.size, time));
            }
            for line in lines {
                match writeln!(out, "{line}") {
                    // A closed pipe (`walship ltx … | head`) is the reader's choice, not an error.
                    Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
                    r => r?,
                }
            }
            Ok(())
        }
        Command::Version => {
            println!("walship {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
    }
}

/// Request counters of each replica, logged at exit.
type RequestCounts = Vec<(String, Arc<Counts>)>;

/// Opens a replica for `replicate`, counting its requests, and wrapped in fault
/// injection when the test-only variable `WALSHIP_TEST_STORE_FAULTS` is set.
fn open_replica(arg: &str, counts: &mut RequestCounts) -> walship::Result<Box<dyn store::Store>> {
    let mut store = store::open(arg)?;
    if let Ok(spec) = std::env::var("WALSHIP_TEST_STORE_FAULTS") {
        let faults = store::faulty::Faults::parse(&spec)?;
        tracing::warn!(replica = arg, faults = spec, "injecting storage faults (WALSHIP_TEST_STORE_FAULTS)");
        store = Box::new(store::faulty::FaultyStore::new(store, faults));
    }
    let counted = Counted::new(store);
    counts.push((counted.describe(), counted.counts()));
    Ok(Box::new(counted))
}

fn replicate_cmd(
    db: Option<PathBuf>,
    replicas: Vec<String>,
    config: Option<PathBuf>,
    mut listen: Option<String>,
    mut token: Option<String>,
) -> anyhow::Result<()> {
    let mut counts = RequestCounts::new();
    let mut specs: Vec<DbSpec> = if let Some(path) = config {
        let text = std::fs::read_to_string(&path).with_context(|| format!("read config {}", path.display()))?;
        let config = walship::config::parse(&text)?;
        listen = listen.or(config.listen);
        token = token.or(config.token);
        config
            .dbs
            .into_iter()
            .map(|db| {
                let mut opts = CaptureOptions::default();
                if let Some(n) = db.checkpoint_frames {
                    opts.checkpoint_frames = n;
                }
                if let Some(n) = db.truncate_bytes {
                    opts.truncate_bytes = n;
                }
                if let Some(d) = db.min_capture_interval {
                    opts.min_interval = d;
                }
                let replicas = db.replica_locations()?.iter().map(|r| open_replica(r, &mut counts)).collect::<Result<_, _>>()?;
                let mut spec = DbSpec { opts, compaction: db.compaction, ..DbSpec::new(db.path, replicas) };
                if let Some(cap) = db.local_cap_bytes {
                    spec.local_cap_bytes = cap;
                }
                Ok(spec)
            })
            .collect::<anyhow::Result<_>>()?
    } else {
        let db = db.expect("clap requires DB without --config");
        if replicas.is_empty() && listen.is_none() {
            bail!("give at least one REPLICA after the database (a folder path or URL), or --listen to serve live followers");
        }
        let replicas = replicas.iter().map(|r| open_replica(r, &mut counts)).collect::<Result<_, _>>()?;
        vec![DbSpec::new(db, replicas)]
    };
    let _server = match &listen {
        Some(addr) => {
            let mut feeds = Vec::new();
            for spec in &mut specs {
                let path = std::path::absolute(&spec.path).unwrap_or_else(|_| spec.path.clone());
                let feed = Arc::new(Feed::new(follow::default_name(&path), LocalDir::path_for(&path)));
                spec.feed = Some(feed.clone());
                feeds.push(feed);
            }
            Some(server::start(addr, Served { feeds, token, role: "primary", sync: true, extra: None })?)
        }
        None => None,
    };
    let stop = stop_on_signal("stopping: capturing and uploading what is left")?;
    let handles: Vec<_> = specs
        .into_iter()
        .map(|spec| {
            let stop = stop.clone();
            let name = spec.path.display().to_string();
            (name, std::thread::spawn(move || {
                let r = replicate::run(spec, stop.clone());
                // One database failing stops the others too: the operator must look.
                stop.set();
                r
            }))
        })
        .collect();
    let mut first_error = None;
    for (name, handle) in handles {
        match handle.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                if first_error.is_none() {
                    first_error = Some(anyhow::Error::new(e).context(name));
                }
            }
            Err(_) => bail!("{name}: the replication thread crashed"),
        }
    }
    for (replica, c) in &counts {
        tracing::info!(replica, requests = %c, "storage requests made");
    }
    first_error.map_or(Ok(()), Err)
}

/// A stop set by the first SIGINT or SIGTERM.
fn stop_on_signal(message: &'static str) -> anyhow::Result<Arc<Stop>> {
    let stop = Arc::new(Stop::default());
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM])
        .context("install signal handlers")?;
    let flag = stop.clone();
    std::thread::spawn(move || {
        if signals.forever().next().is_some() {
            tracing::info!("{message}");
            flag.set();
        }
    });
    Ok(stop)
}

fn follow_cmd(source: &str, replica: &std::path::Path, listen: Option<String>, token: Option<String>) -> anyhow::Result<()> {
    let source = Source::parse(source, token.clone())?;
    let name = match &source {
        Source::Http { name, .. } => name.clone(),
        Source::Store(_) => follow::default_name(replica),
    };
    let follower = Follower::open(source, replica, name, listen.is_some())?;
    let _server = match &listen {
        Some(addr) => Some(server::start(
            addr,
            Served { feeds: vec![follower.feed()], token, role: "follower", sync: false, extra: Some(follower.status()) },
        )?),
        None => None,
    };
    let stop = stop_on_signal("stopping")?;
    follower.run(stop.flag())?;
    Ok(())
}

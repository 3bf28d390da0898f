//! A small TCP fault proxy for the integration tests: it sits between a client and a
//! server on 127.0.0.1 and, on demand, drops connections, refuses new ones, delays
//! traffic or stalls it. With no fault set it forwards bytes as they arrive.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// A TCP proxy on 127.0.0.1 that forwards to `target` and can drop or delay traffic on demand.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

/// State shared by the proxy handle, the accept thread and the copy threads.
#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    refuse: AtomicBool,
    stall: AtomicBool,
    delay_nanos: AtomicU64,
    accepted: AtomicUsize,
    next_id: AtomicU64,
    /// Clones of every open stream (both sides), keyed by connection id.
    streams: Mutex<Vec<(u64, TcpStream)>>,
}

impl FaultProxy {
    /// Binds 127.0.0.1:0 and starts forwarding every accepted connection to `target`.
    pub fn start(target: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind fault proxy");
        let addr = listener.local_addr().expect("fault proxy address");
        let shared = Arc::new(Shared::default());
        let sh = shared.clone();
        let accept = thread::spawn(move || accept_loop(listener, target, sh));
        FaultProxy {
            addr,
            shared,
            accept: Some(accept),
        }
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes every open connection now, both the client and the target side.
    pub fn drop_connections(&self) {
        for (_, s) in self.shared.streams.lock().unwrap().iter() {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    /// While `refuse` is true, new connections are accepted and closed at once.
    pub fn set_refuse(&self, refuse: bool) {
        self.shared.refuse.store(refuse, SeqCst);
    }

    /// Each forwarded chunk waits `delay` before it is sent on (zero: no delay).
    pub fn set_delay(&self, delay: Duration) {
        let nanos = u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX);
        self.shared.delay_nanos.store(nanos, SeqCst);
    }

    /// While `stall` is true, forwarding pauses: bytes are held and connections stay open.
    pub fn set_stall(&self, stall: bool) {
        self.shared.stall.store(stall, SeqCst);
    }

    /// The number of connections accepted so far (refused ones included).
    pub fn connections(&self) -> usize {
        self.shared.accepted.load(SeqCst)
    }
}

impl Drop for FaultProxy {
    /// Stops the accept thread and closes all connections.
    fn drop(&mut self) {
        self.shared.stop.store(true, SeqCst);
        // Wake the blocking accept; join only if the wake-up got through.
        let woke = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1)).is_ok();
        if let (true, Some(handle)) = (woke, self.accept.take()) {
            let _ = handle.join();
        }
        self.drop_connections();
    }
}

fn accept_loop(listener: TcpListener, target: SocketAddr, sh: Arc<Shared>) {
    for client in listener.incoming() {
        if sh.stop.load(SeqCst) {
            return;
        }
        let Ok(client) = client else {
            thread::sleep(Duration::from_millis(5)); // e.g. out of file descriptors
            continue;
        };
        sh.accepted.fetch_add(1, SeqCst);
        if sh.refuse.load(SeqCst) {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        }
        let id = sh.next_id.fetch_add(1, SeqCst);
        if register(&sh, id, &client).is_err() {
            continue;
        }
        let sh = sh.clone();
        thread::spawn(move || {
            serve(id, client, target, &sh);
            sh.streams.lock().unwrap().retain(|(i, _)| *i != id);
        });
    }
}

/// Keeps a clone of `s` so `drop_connections` can shut it down.
fn register(sh: &Shared, id: u64, s: &TcpStream) -> std::io::Result<()> {
    s.set_nodelay(true)?;
    sh.streams.lock().unwrap().push((id, s.try_clone()?));
    Ok(())
}

/// Connects to `target` and copies both ways until both directions are done.
fn serve(id: u64, client: TcpStream, target: SocketAddr, sh: &Arc<Shared>) {
    let Ok(server) = TcpStream::connect_timeout(&target, Duration::from_secs(5)) else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    let (Ok(client2), Ok(server2)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    if register(sh, id, &server).is_err() || sh.stop.load(SeqCst) {
        let _ = client.shutdown(Shutdown::Both);
        return;
    }
    let sh2 = sh.clone();
    let up = thread::spawn(move || copy(client, server, &sh2));
    copy(server2, client2, sh);
    let _ = up.join();
}

/// Copies `src` to `dst` chunk by chunk, honouring the stall and delay settings. On end
/// of stream it half-closes `dst`; on an error it shuts down both streams.
fn copy(mut src: TcpStream, mut dst: TcpStream, sh: &Shared) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => {
                let _ = dst.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        while sh.stall.load(SeqCst) && !sh.stop.load(SeqCst) {
            thread::sleep(Duration::from_millis(1));
        }
        let delay = sh.delay_nanos.load(SeqCst);
        if delay > 0 {
            thread::sleep(Duration::from_nanos(delay));
        }
        if dst.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = src.shutdown(Shutdown::Both);
    let _ = dst.shutdown(Shutdown::Both);
}

/// An echo server on 127.0.0.1: every connection gets its bytes back until it closes.
fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            thread::spawn(move || {
                let mut r = s.try_clone().unwrap();
                let _ = std::io::copy(&mut r, &mut s);
                let _ = s.shutdown(Shutdown::Write);
            });
        }
    });
    addr
}

/// Connects to the proxy with a read timeout of `timeout`.
fn connect(proxy: &FaultProxy, timeout: Duration) -> TcpStream {
    let s = TcpStream::connect(proxy.addr()).unwrap();
    s.set_read_timeout(Some(timeout)).unwrap();
    s
}

/// Whether a read error is a read timeout rather than the connection closing.
fn is_timeout(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

/// Asserts that the peer has closed `s` (end of stream or a reset, not a timeout).
fn assert_closed(s: &mut TcpStream) {
    match s.read(&mut [0u8; 1]) {
        Ok(n) => assert_eq!(n, 0, "read data from a connection that should be closed"),
        Err(e) => assert!(!is_timeout(&e), "connection still open: {e}"),
    }
}

#[test]
fn bytes_pass_through_unchanged() {
    let proxy = FaultProxy::start(echo_server());
    let mut s = connect(&proxy, Duration::from_secs(2));
    let data: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
    let mut w = s.try_clone().unwrap();
    let sent = data.clone();
    let writer = thread::spawn(move || {
        w.write_all(&sent).unwrap();
        w.shutdown(Shutdown::Write).unwrap();
    });
    let mut back = Vec::new();
    s.read_to_end(&mut back).unwrap();
    writer.join().unwrap();
    assert_eq!(back.len(), data.len());
    assert!(back == data, "echoed bytes differ from the sent ones");
    assert_eq!(proxy.connections(), 1);
}

#[test]
fn drop_connections_closes_clients() {
    let proxy = FaultProxy::start(echo_server());
    let mut s = connect(&proxy, Duration::from_secs(1));
    s.write_all(b"hi").unwrap();
    let mut buf = [0u8; 2];
    s.read_exact(&mut buf).unwrap();
    let t = Instant::now();
    proxy.drop_connections();
    assert_closed(&mut s);
    assert!(t.elapsed() < Duration::from_secs(1));
}

#[test]
fn refuse_closes_new_connections() {
    let proxy = FaultProxy::start(echo_server());
    proxy.set_refuse(true);
    assert_closed(&mut connect(&proxy, Duration::from_secs(1)));
    assert_eq!(proxy.connections(), 1);
    proxy.set_refuse(false);
    let mut s = connect(&proxy, Duration::from_secs(1));
    let mut buf = [0u8; 1];
    s.write_all(b"x").unwrap();
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"x");
    assert_eq!(proxy.connections(), 2);
}

#[test]
fn delay_slows_round_trip() {
    let proxy = FaultProxy::start(echo_server());
    proxy.set_delay(Duration::from_millis(100));
    let mut s = connect(&proxy, Duration::from_secs(1));
    let t = Instant::now();
    s.write_all(b"d").unwrap();
    let mut buf = [0u8; 1];
    s.read_exact(&mut buf).unwrap();
    let rtt = t.elapsed();
    assert!(rtt >= Duration::from_millis(100), "round trip took {rtt:?}");
}

#[test]
fn stall_holds_data_until_unstalled() {
    let proxy = FaultProxy::start(echo_server());
    proxy.set_stall(true);
    let mut s = connect(&proxy, Duration::from_millis(300));
    s.write_all(b"abc").unwrap();
    let mut buf = [0u8; 3];
    match s.read(&mut buf) {
        Err(e) => assert!(is_timeout(&e), "stalled connection failed: {e}"),
        Ok(n) => panic!("read {n} bytes through a stalled proxy"),
    }
    proxy.set_stall(false);
    s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"abc");
}

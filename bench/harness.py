"""Building blocks of the benchmark: replicator processes, the app's writer, a replica
watcher and /proc readings. Standard library only; everything stays on this machine.

- `Tool`: how to start one replicator (walship, Litestream with default or 10 ms
  intervals) on a database and a folder replica, how to restore from it, and how to
  start a live follower (`walship follow`, `litestream restore -f`).
- `Process`: one running process of ours; SIGINT to stop, SIGKILL if it hangs; CPU
  (utime+stime) and peak RSS (VmHWM) read from /proc/PID of the process itself.
  `Replicator` and `Follower` are the two kinds.
- `App`: the application's connection (WAL, synchronous=NORMAL, busy_timeout 5000) and a
  counter of the WAL frames it writes (read from the -shm wal-index header).
- `Watcher`: a thread watching `<replica>/ltx/0` (inotify) that records when the highest
  TXID grows.
"""

import ctypes
import http.client
import json
import os
import re
import select
import signal
import socket
import sqlite3
import struct
import subprocess
import threading
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")
LTX_NAME = re.compile(r"^([0-9a-f]{16})-([0-9a-f]{16})\.ltx$")
BUSY_TIMEOUT_MS = 5000

# Every child process we start, so that nothing outlives the benchmark.
_children = set()


def kill_all_children():
    for p in list(_children):
        if p.poll() is None:
            try:
                p.kill()
                p.wait(timeout=5)
            except Exception:
                pass
        _children.discard(p)


def spawn(cmd, log_path, env=None):
    log = open(log_path, "ab")
    p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    log.close()
    _children.add(p)
    return p


def run_timed(cmd, env=None):
    """Runs cmd to completion; returns its wall time in seconds. Raises on failure."""
    t0 = time.monotonic()
    r = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    dt = time.monotonic() - t0
    if r.returncode != 0:
        raise RuntimeError("%s failed (exit %d): %s" % (" ".join(cmd), r.returncode, r.stderr.decode(errors="replace")[-2000:]))
    return dt


def free_port():
    """A free TCP port on 127.0.0.1 (free when asked; nothing holds it afterwards)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def http_json(method, addr, path, timeout=10.0):
    """One request to http://addr/path: (status, parsed JSON body or None); status 0 if
    nothing answered. http.client, so that no proxy setting applies."""
    host, port = addr.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, (json.loads(body) if body else None)
    except (OSError, ValueError):
        return 0, None
    finally:
        conn.close()


# ---------------------------------------------------------------------------- tools

class Tool:
    """A replicator configuration under test."""

    def __init__(self, key, label, kind, binary, interval=None):
        self.key, self.label, self.kind, self.binary, self.interval = key, label, kind, binary, interval

    @property
    def settle(self):
        """How long the replica may lag by design (Litestream syncs once per interval)."""
        if self.kind == "litestream":
            return 1.0 if self.interval is None else 0.05
        return 0.0

    def env(self):
        env = dict(os.environ)
        env.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_EC2_METADATA_DISABLED="true")
        if self.kind == "litestream":
            env.pop("AWS_CA_BUNDLE", None)  # Litestream's S3 client refuses to start with it
            env["AWS_EC2_METADATA_DISABLED"] = "true"
        return env

    def replicate_cmd(self, db, replica, workdir, listen=None):
        """`listen` (walship only): the address of the live-follower server."""
        s3 = not isinstance(replica, str)
        if self.kind == "walship":
            return [self.binary, "replicate", db, replica.url() if s3 else replica] + (["--listen", listen] if listen else [])
        cfg = os.path.join(workdir, "litestream-%s.yml" % self.key)
        lines = ["dbs:", "  - path: %s" % db]
        if self.interval:
            lines.append("    monitor-interval: %s" % self.interval)
        if s3:
            lines += ["    replica:", "      type: s3", "      bucket: %s" % replica.server.BUCKET,
                      "      path: %s" % replica.prefix, "      endpoint: %s" % replica.server.endpoint,
                      "      region: us-east-1", "      force-path-style: true"]
        else:
            lines += ["    replica:", "      type: file", "      path: %s" % replica]
        if self.interval:
            lines.append("      sync-interval: %s" % self.interval)
        with open(cfg, "w") as f:
            f.write("\n".join(lines) + "\n")
        return [self.binary, "replicate", "-config", cfg]

    def restore_cmd(self, replica, out, check=None):
        if self.kind == "walship":
            cmd = [self.binary, "restore", "-o", out]
            if check:
                cmd += ["--check", check]
            return cmd + [replica if isinstance(replica, str) else replica.url()]
        return [self.binary, "restore", "-o", out, "file://" + os.path.abspath(replica)]

    def follow_cmd(self, source, out):
        """walship: `follow http://host:port/<name> out`; Litestream: `restore -f` of the
        folder replica (polled every `-follow-interval`, 1 s by default)."""
        if self.kind == "walship":
            return [self.binary, "follow", source, out]
        interval = ["-follow-interval", self.interval] if self.interval else []
        return [self.binary, "restore", "-f"] + interval + ["-o", out, "file://" + os.path.abspath(source)]


# ---------------------------------------------------------------------------- /proc

def proc_cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_status_kib(pid, key):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return None


def ltx_max_txid(replica):
    """Highest max-TXID among `<replica>/ltx/0/*.ltx` (complete files only), 0 if none."""
    if not isinstance(replica, str):
        return replica.max_txid()
    best = 0
    try:
        names = os.listdir(os.path.join(replica, "ltx", "0"))
    except FileNotFoundError:
        return 0
    for n in names:
        m = LTX_NAME.match(n)
        if m:
            v = int(m.group(2), 16)
            if v > best:
                best = v
    return best


def list_files(root):
    out = set()
    for d, _, files in os.walk(root):
        for n in files:
            out.add(os.path.join(d, n))
    return out


def dir_bytes(root):
    total = 0
    for d, _, files in os.walk(root):
        for n in files:
            try:
                total += os.path.getsize(os.path.join(d, n))
            except FileNotFoundError:
                pass
    return total


# ---------------------------------------------------------------------------- processes

class Process:
    def __init__(self, label, cmd, log, env):
        self.label, self.log = label, log
        self.proc = spawn(cmd, log, env=env)
        self.pid = self.proc.pid

    def cpu(self):
        return proc_cpu_seconds(self.pid)

    def hwm_kib(self):
        return proc_status_kib(self.pid, "VmHWM")

    def alive(self):
        return self.proc.poll() is None

    def tail(self, n=2000):
        try:
            with open(self.log, "rb") as f:
                return f.read()[-n:].decode(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout=60.0):
        """SIGINT (a replicator's final capture and upload), then wait; SIGKILL if it hangs.
        Returns the exit code."""
        p = self.proc
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
            try:
                p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
                _children.discard(p)
                raise RuntimeError("%s did not stop within %.0f s of SIGINT" % (self.label, timeout))
        _children.discard(p)
        return p.returncode


class Replicator(Process):
    def __init__(self, tool, db, replica, workdir, listen=None):
        self.tool, self.db, self.replica = tool, db, replica
        super().__init__(tool.label, tool.replicate_cmd(db, replica, workdir, listen),
                         os.path.join(workdir, "%s.log" % tool.key), tool.env())

    def wait_ready(self, timeout=60.0):
        """Waits for the first complete file in ltx/0 (the initial snapshot)."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError("%s exited early (%s); see %s:\n%s" % (self.label, self.proc.returncode, self.log, self.tail()))
            if ltx_max_txid(self.replica) > 0:
                return time.monotonic() - t0
            time.sleep(0.005)
        raise RuntimeError("%s wrote no file in %.0f s; see %s" % (self.label, timeout, self.log))

    def wait_quiet(self, quiet, timeout=60.0):
        """Waits until the replica's highest TXID has not changed for `quiet` seconds.
        Returns the time (monotonic) at which it last changed."""
        last, last_t = ltx_max_txid(self.replica), time.monotonic()
        t0 = last_t
        while time.monotonic() - t0 < timeout:
            time.sleep(0.002)
            cur = ltx_max_txid(self.replica)
            now = time.monotonic()
            if cur != last:
                last, last_t = cur, now
            elif now - last_t >= quiet:
                return last_t
        return last_t


class Follower(Process):
    """A live follower keeping `db` (created by the follower) up to date from `source`."""

    def __init__(self, tool, source, db, workdir):
        self.tool, self.db = tool, db
        super().__init__(tool.label + " follower", tool.follow_cmd(source, db),
                         os.path.join(workdir, "%s-follow.log" % tool.key), tool.env())

    def wait_ready(self, timeout=60.0):
        """Waits for the follower's db to hold table t (its snapshot applied). Each look is
        a short-lived read-only connection."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError("%s exited early (%s); see %s:\n%s" % (self.label, self.proc.returncode, self.log, self.tail()))
            if os.path.exists(self.db):
                try:
                    c = sqlite3.connect("file:%s?mode=ro" % self.db, uri=True)
                    try:
                        if c.execute("SELECT 1 FROM sqlite_master WHERE name = 't'").fetchone():
                            return time.monotonic() - t0
                    finally:
                        c.close()
                except sqlite3.Error:
                    pass
            time.sleep(0.01)
        raise RuntimeError("%s: no table t in %s after %.0f s; see %s" % (self.label, self.db, timeout, self.log))


# ---------------------------------------------------------------------------- app side

def create_db(path):
    c = sqlite3.connect(path, isolation_level=None)
    c.execute("PRAGMA journal_mode=WAL")
    c.execute("CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, at REAL, marker TEXT, pad BLOB)")
    c.close()


class WalFrames:
    """Counts WAL frames appended, from the wal-index header at the start of -shm:
    mxFrame (u32 at 16) and the salts (8 bytes at 32); a new salt is a restarted WAL."""

    def __init__(self, db):
        self.fd = os.open(db + "-shm", os.O_RDONLY)
        self.frames = 0
        self.mx, self.salt, self.page_size = self._read()

    def _read(self):
        h = os.pread(self.fd, 48, 0)
        mx, = struct.unpack_from("=I", h, 16)
        sz, = struct.unpack_from("=H", h, 14)
        return mx, h[32:40], (65536 if sz == 1 else sz)

    def update(self):
        mx, salt, _ = self._read()
        if salt != self.salt or mx < self.mx:
            self.frames += mx
        else:
            self.frames += mx - self.mx
        self.mx, self.salt = mx, salt

    @property
    def bytes(self):
        return self.frames * self.page_size

    def close(self):
        os.close(self.fd)


class App:
    """The application: one connection, WAL, synchronous=NORMAL, busy_timeout 5000."""

    INSERT = "INSERT INTO t(at, marker, pad) VALUES (?, ?, ?)"

    def __init__(self, db):
        self.db = db
        self.conn = sqlite3.connect(db, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
        self.conn.execute("PRAGMA busy_timeout=%d" % BUSY_TIMEOUT_MS)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.seq = self.conn.execute("SELECT coalesce(max(id), 0) FROM t").fetchone()[0]
        self.pad = os.urandom(50).hex().encode()  # 100 bytes per row
        self.commit()  # makes sure -shm exists and the wal-index header is set up
        self.wal = WalFrames(db)

    def commit(self):
        """One INSERT of one row = one transaction (autocommit)."""
        self.seq += 1
        self.conn.execute(self.INSERT, (time.time(), "m%d" % self.seq, self.pad))

    def checkpoint_truncate(self):
        """The app's own PRAGMA wal_checkpoint(TRUNCATE): (seconds, busy flag, error or None)."""
        t0 = time.monotonic()
        try:
            row = self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            err = None
        except sqlite3.OperationalError as e:
            row, err = (1, -1, -1), str(e)
        return time.monotonic() - t0, bool(row[0]), err

    def wal_size(self):
        try:
            return os.path.getsize(self.db + "-wal")
        except FileNotFoundError:
            return 0

    def close(self):
        self.wal.close()
        self.conn.close()


# ---------------------------------------------------------------------------- watcher

class Watcher(threading.Thread):
    """Records (time, max TXID) whenever the highest complete file in `<replica>/ltx/0`
    grows. Uses inotify through ctypes, so it costs no CPU while waiting and timestamps
    the event itself; falls back to polling every 0.5 ms where inotify is unavailable.
    A complete file appears by rename (IN_MOVED_TO: Litestream), by hard link of a
    written temp file (IN_CREATE of a non-empty file: walship), or, if a tool wrote the
    final name in place, when it is closed (IN_CLOSE_WRITE). Temp names do not match."""

    IN_CLOSE_WRITE, IN_MOVED_TO, IN_CREATE, IN_CLOEXEC = 0x8, 0x80, 0x100, 0o2000000

    def __init__(self, replica, poll=0.0005):
        super().__init__(daemon=True)
        self.dir, self.poll = os.path.join(replica, "ltx", "0"), poll
        self.events = []
        self._halt_r, self._halt_w = os.pipe()
        self.fd = self._inotify()
        self.max = ltx_max_txid(replica)  # after the watch is set up: nothing is missed
        self.method = "inotify" if self.fd is not None else "polling every %.1f ms" % (poll * 1000)

    def _inotify(self):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = libc.inotify_init1(self.IN_CLOEXEC)
            if fd < 0:
                return None
            if libc.inotify_add_watch(fd, self.dir.encode(), self.IN_MOVED_TO | self.IN_CLOSE_WRITE | self.IN_CREATE) < 0:
                os.close(fd)
                return None
            return fd
        except (OSError, AttributeError):
            return None

    def _seen(self, m, t):
        if m > self.max:
            self.events.append((t, m))
            self.max = m

    def run(self):
        if self.fd is None:
            while not select.select([self._halt_r], [], [], self.poll)[0]:
                self._seen(ltx_max_txid(os.path.dirname(os.path.dirname(self.dir))), time.monotonic())
            return
        while True:
            ready = select.select([self.fd, self._halt_r], [], [])[0]
            if self._halt_r in ready:
                return
            buf = os.read(self.fd, 1 << 16)
            t = time.monotonic()
            off, best = 0, 0
            while off + 16 <= len(buf):
                _, mask, _, n = struct.unpack_from("iIII", buf, off)
                name = buf[off + 16:off + 16 + n].split(b"\0", 1)[0].decode(errors="replace")
                off += 16 + n
                m = LTX_NAME.match(name)
                if not m:
                    continue
                if mask & self.IN_CREATE and not mask & (self.IN_MOVED_TO | self.IN_CLOSE_WRITE):
                    try:  # a hard link of a complete file, or a file still being written?
                        if os.path.getsize(os.path.join(self.dir, name)) == 0:
                            continue
                    except OSError:
                        continue
                best = max(best, int(m.group(2), 16))
            self._seen(best, t)

    def stop(self):
        os.write(self._halt_w, b"x")
        self.join()
        for fd in (self.fd, self._halt_r, self._halt_w):
            if fd is not None:
                os.close(fd)


# ---------------------------------------------------------------------------- S3 (moto)

class S3Server:
    """A moto_server (S3) of our own on a free 127.0.0.1 port, with one bucket. moto logs
    one line per request (werkzeug), which `requests()` counts. Found at
    target/test-venv/bin/moto_server (installed by scripts/test-servers) or MOTO_SERVER."""

    BUCKET = "walship-bench"
    REQ_LINE = re.compile(rb'"(?:\x1b\[[0-9;]*m)*(GET|PUT|POST|DELETE|HEAD) (\S+) HTTP/')

    def __init__(self, root, workdir, timeout=30.0):
        import urllib.request
        binary = os.environ.get("MOTO_SERVER") or os.path.join(root, "target", "test-venv", "bin", "moto_server")
        if not os.access(binary, os.X_OK):
            raise RuntimeError("no moto_server at %s (scripts/test-servers start installs it)" % binary)
        self.port = free_port()
        self.endpoint = "http://127.0.0.1:%d" % self.port
        self.log = os.path.join(workdir, "moto.log")
        self.proc = spawn([binary, "-H", "127.0.0.1", "-p", str(self.port)], self.log)
        deadline = time.monotonic() + timeout
        while True:
            try:
                req = urllib.request.Request("%s/%s" % (self.endpoint, self.BUCKET), method="PUT", data=b"")
                urllib.request.urlopen(req, timeout=2)
                break
            except Exception as e:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("moto_server did not come up: %s" % e)
                time.sleep(0.1)
        self._n = 0

    def replica(self, prefix):
        return S3Replica(self, prefix)

    def requests(self):
        """{method: count} of every request moto has logged so far."""
        out = {}
        with open(self.log, "rb") as f:
            for line in f:
                m = self.REQ_LINE.search(line)
                if m:
                    out[m.group(1).decode()] = out.get(m.group(1).decode(), 0) + 1
        return out

    def stop(self):
        p = self.proc
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        _children.discard(p)


class S3Replica:
    """A prefix in the bench bucket. L0 files are `<prefix>/0000/<min>-<max>.ltx` (the
    Litestream 0.5 layout, which walship also writes). Listing is a plain ListObjectsV2
    GET (moto does not check signatures), parsed with xml.etree."""

    NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"

    def __init__(self, server, prefix):
        self.server, self.prefix = server, prefix.strip("/")
        self.l0 = self.prefix + "/0000/"

    def url(self):
        return "s3://%s/%s?endpoint=%s&region=us-east-1&force-path-style=true" % (
            self.server.BUCKET, self.prefix, self.server.endpoint)

    def list_l0(self, start_after=None, conn=None):
        """Returns (max TXID, last key) of the complete files in L0 listed after start_after."""
        import http.client
        import urllib.parse
        import xml.etree.ElementTree as ET
        q = {"list-type": "2", "prefix": self.l0}
        if start_after:
            q["start-after"] = start_after
        path = "/%s?%s" % (self.server.BUCKET, urllib.parse.urlencode(q))
        own = conn is None
        if own:
            conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=10)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            body = resp.read()
        finally:
            if own:
                conn.close()
        if resp.status != 200:
            raise RuntimeError("S3 list %s: HTTP %d %s" % (path, resp.status, body[:200]))
        best, last = 0, start_after
        for c in ET.fromstring(body).iter(self.NS + "Contents"):
            key = c.find(self.NS + "Key").text
            m = LTX_NAME.match(key.rsplit("/", 1)[-1])
            if m:
                best = max(best, int(m.group(2), 16))
                if last is None or key > last:
                    last = key
        return best, last

    def max_txid(self):
        return self.list_l0()[0]


class S3Watcher(threading.Thread):
    """Polls `<prefix>/0000/` every `poll` seconds (a ListObjectsV2 with start-after the
    newest key seen, so answers stay small) and records (time the answer arrived, max
    TXID) whenever the highest TXID grows. `rtt` collects each poll's round-trip time."""

    def __init__(self, replica, poll=0.002):
        super().__init__(daemon=True)
        self.replica, self.poll = replica, poll
        self.events, self.rtt = [], []
        self._halt = threading.Event()
        self.max, self.last = replica.list_l0()
        self.method = "polling every %.0f ms" % (poll * 1000)

    def run(self):
        import http.client
        while not self._halt.wait(self.poll):
            conn = http.client.HTTPConnection("127.0.0.1", self.replica.server.port, timeout=10)
            t0 = time.monotonic()
            try:
                m, last = self.replica.list_l0(self.last, conn)
            except Exception:
                continue
            finally:
                conn.close()
            t = time.monotonic()
            self.rtt.append(t - t0)
            self.last = last
            if m > self.max:
                self.events.append((t, m))
                self.max = m

    def stop(self):
        self._halt.set()
        self.join()

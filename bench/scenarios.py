"""The measurements. Each function runs one scenario once against one tool (or none, for
the app-alone baseline) in a fresh folder under the work dir and returns a dict of
plain numbers, which `report.py` summarises over runs.

- `lag`: paced writer (one row per transaction), commit return → a file covering the
  commit visible in the replica's ltx/0.
- `throughput`: max-rate writer for N seconds; tx/s, -wal size (end, max), replicator
  CPU per MB of WAL, peak RSS, catch-up time after the writer stops.
- `checkpoint`: the app's own `PRAGMA wal_checkpoint(TRUNCATE)` after bursts of writes.
- `idle_load`: CPU and files written while idle, then files written at 10 tx/s.
- `lag` with `s3=`: the same against a prefix in a local moto S3 bucket, seen by polling
  the bucket listing.
- `s3_requests`: S3 requests (from moto's log) while idle, then at 10 tx/s.
- `restore`: restore time of a big database vs `cp` + fsync of the same file.
- `follower`: paced writer, commit return → the row readable in a live follower's db
  (walship `follow` of the primary's --listen server, Litestream `restore -f` of the
  folder replica); then the follower's CPU with the primary idle, and its peak RSS.
"""

import bisect
import os
import sqlite3
import subprocess
import time

from harness import (App, Follower, Replicator, S3Watcher, Watcher, create_db, dir_bytes, free_port, http_json,
                     list_files, ltx_max_txid, run_timed)


class Ctx:
    def __init__(self, work, log):
        self.work, self.log, self._n = work, log, 0

    def fresh(self, name):
        self._n += 1
        d = os.path.join(self.work, "%03d-%s" % (self._n, name))
        os.makedirs(d)
        return d, os.path.join(d, "app.db"), os.path.join(d, "replica")


def _start(ctx, tool, db, replica, d, listen=None):
    r = Replicator(tool, db, replica, d, listen)
    try:
        r.wait_ready()
    except Exception:
        r.stop(timeout=10)
        raise
    time.sleep(0.2)
    return r


def _stop(r):
    rc = r.stop()
    if rc != 0:
        raise RuntimeError("%s exited %s after SIGINT; log tail:\n%s" % (r.label, rc, r.tail()))


def _pace(t0, i, rate):
    delay = t0 + i / rate - time.monotonic()
    if delay > 0:
        time.sleep(delay)


def _verify_restore(tool, replica, src_db, d):
    """Restores the replica and compares row count and max id with the source."""
    out = os.path.join(d, "verify.db")
    run_timed(tool.restore_cmd(replica, out), env=tool.env())
    q = "SELECT count(*), coalesce(max(id), 0) FROM t"
    a = sqlite3.connect(src_db).execute(q).fetchone()
    b = sqlite3.connect(out).execute(q).fetchone()
    os.remove(out)
    if a != b:
        raise RuntimeError("%s: restored (count, max id) %s != source %s" % (tool.label, b, a))


# ---------------------------------------------------------------------------- lag

def lag(ctx, tool, seconds, rate=20.0, s3=None):
    d, db, rep = ctx.fresh(("s3lag-" if s3 else "lag-") + tool.key)
    if s3:
        rep = s3.replica(os.path.basename(d))
    create_db(db)
    r = _start(ctx, tool, db, rep, d)
    try:
        app = App(db)
        time.sleep(0.1 + tool.settle)
        w = S3Watcher(rep) if s3 else Watcher(rep)
        w.start()
        cpu0, frames0 = r.cpu(), app.wal.frames
        commits = []  # (commit return time, highest TXID visible just before the commit)
        n = int(seconds * rate)
        t0 = time.monotonic()
        for i in range(n):
            _pace(t0, i, rate)
            if s3:  # the poller's view, then a listing of anything newer
                known, after = w.max, w.last
                before = max(known, rep.list_l0(after)[0])
            else:
                before = ltx_max_txid(rep)
            app.commit()
            commits.append((time.monotonic(), before))
            app.wal.update()
        deadline = time.monotonic() + 5 + 2 * tool.settle
        while w.max <= commits[-1][1] and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(0.05)
        cpu1, hwm = r.cpu(), r.hwm_kib()
        w.stop()
        shipped = (app.wal.frames - frames0) * app.wal.page_size
        app.close()
    finally:
        _stop(r)
    if tool.kind == "walship":
        _verify_restore(tool, rep, db, d)
    ev_t = [e[0] for e in w.events]
    ev_max = [e[1] for e in w.events]
    lags, missing = [], 0
    for t_commit, before in commits:
        k = bisect.bisect_right(ev_max, before)
        if k == len(ev_max):
            missing += 1
        else:
            lags.append(max(0.0, ev_t[k] - t_commit) * 1000)
    lags.sort()
    res = {
        "commits": len(commits), "missing": missing, "lags_ms": [round(x, 3) for x in lags],
        "files_l0": len(w.events), "wal_bytes": shipped, "cpu_s": cpu1 - cpu0,
        "hwm_kib": hwm, "watch": w.method,
    }
    if s3:
        rtt = sorted(w.rtt)
        res["poll_rtt_ms_median"] = rtt[len(rtt) // 2] * 1000 if rtt else None
        res["polls"] = len(rtt)
    return res


# ---------------------------------------------------------------------------- throughput

def throughput(ctx, tool, seconds):
    d, db, rep = ctx.fresh("tput-" + (tool.key if tool else "none"))
    create_db(db)
    r = _start(ctx, tool, db, rep, d) if tool else None
    try:
        app = App(db)
        if r:
            time.sleep(0.1 + tool.settle)
            cpu0 = r.cpu()
        frames0 = app.wal.frames
        n, wal_max = 0, 0
        t0 = time.monotonic()
        while True:
            for _ in range(50):
                app.commit()
                app.wal.update()
            n += 50
            wal_max = max(wal_max, app.wal_size())
            t_end = time.monotonic()
            if t_end - t0 >= seconds:
                break
        wal_end = app.wal_size()
        res = {"tx": n, "seconds": t_end - t0, "tps": n / (t_end - t0), "wal_end": wal_end,
               "wal_max": max(wal_max, wal_end)}
        shipped = (app.wal.frames - frames0) * app.wal.page_size
        res["wal_bytes"] = shipped
        if r:
            last = r.wait_quiet(quiet=max(0.5, 2 * tool.settle + 0.3), timeout=120)
            res["catchup_s"] = max(0.0, last - t_end)
            res["cpu_s"] = r.cpu() - cpu0
            res["cpu_ms_per_mb"] = res["cpu_s"] * 1000 / (shipped / 1e6) if shipped else None
            res["hwm_kib"] = r.hwm_kib()
        app.close()
    finally:
        if r:
            _stop(r)
    return res


# ---------------------------------------------------------------------------- checkpoint

def checkpoint(ctx, tool, reps, rows):
    d, db, rep = ctx.fresh("ckpt-" + (tool.key if tool else "none"))
    create_db(db)
    r = _start(ctx, tool, db, rep, d) if tool else None
    out = []
    try:
        app = App(db)
        for _ in range(reps):
            for _ in range(rows):
                app.commit()
            dt, busy, err = app.checkpoint_truncate()
            out.append({"ms": dt * 1000, "busy": busy, "error": err, "wal_after": app.wal_size()})
            time.sleep(0.2)
        app.close()
    finally:
        if r:
            _stop(r)
    return out


# ---------------------------------------------------------------------------- idle / load

def idle_load(ctx, tool, idle_s, load_s, rate=10.0):
    d, db, rep = ctx.fresh("idle-" + tool.key)
    create_db(db)
    r = _start(ctx, tool, db, rep, d)
    try:
        app = App(db)
        t0 = time.monotonic()
        for i in range(10):
            _pace(t0, i, 20.0)
            app.commit()
        r.wait_quiet(quiet=0.5 + 2 * tool.settle, timeout=30)
        files0, cpu0, t0 = list_files(rep), r.cpu(), time.monotonic()
        time.sleep(idle_s)
        cpu1, files1, t1 = r.cpu(), list_files(rep), time.monotonic()
        n = int(load_s * rate)
        for i in range(n):
            _pace(t1, i, rate)
            app.commit()
        _pace(t1, n, rate)
        files2, t2 = list_files(rep), time.monotonic()
        app.close()
    finally:
        _stop(r)
    idle_new = len(files1 - files0)
    load_new = files2 - files1
    load_ltx = [f for f in load_new if os.sep + "ltx" + os.sep in f]
    return {
        "idle_s": t1 - t0, "idle_cpu_s": cpu1 - cpu0, "idle_cpu_pct": (cpu1 - cpu0) / (t1 - t0) * 100,
        "idle_files": idle_new, "idle_files_per_h": idle_new * 3600 / (t1 - t0),
        "load_s": t2 - t1, "load_files": len(load_new), "load_files_per_h": len(load_new) * 3600 / (t2 - t1),
        "load_ltx_files_per_h": len(load_ltx) * 3600 / (t2 - t1),
    }


def s3_requests(ctx, tool, s3, idle_s, load_s, rate=10.0):
    """S3 requests per hour (counted from moto's request log) while idle, then at 10 tx/s.
    Nothing else talks to moto during the two windows."""
    d, db, _ = ctx.fresh("s3req-" + tool.key)
    rep = s3.replica(os.path.basename(d))
    create_db(db)
    r = _start(ctx, tool, db, rep, d)
    try:
        app = App(db)
        t0 = time.monotonic()
        for i in range(10):
            _pace(t0, i, 20.0)
            app.commit()
        r.wait_quiet(quiet=0.5 + 2 * tool.settle, timeout=30)
        time.sleep(0.2)
        q0, t0 = s3.requests(), time.monotonic()
        time.sleep(idle_s)
        q1, t1 = s3.requests(), time.monotonic()
        n = int(load_s * rate)
        for i in range(n):
            _pace(t1, i, rate)
            app.commit()
        _pace(t1, n, rate)
        q2, t2 = s3.requests(), time.monotonic()
        app.close()
    finally:
        _stop(r)

    def diff(a, b):
        return {k: b.get(k, 0) - a.get(k, 0) for k in set(a) | set(b) if b.get(k, 0) - a.get(k, 0)}
    idle, load = diff(q0, q1), diff(q1, q2)
    return {"idle_s": t1 - t0, "idle_req": idle, "idle_req_per_h": sum(idle.values()) * 3600 / (t1 - t0),
            "load_s": t2 - t1, "load_req": load, "load_req_per_h": sum(load.values()) * 3600 / (t2 - t1),
            "load_put_per_h": load.get("PUT", 0) * 3600 / (t2 - t1)}


# ---------------------------------------------------------------------------- restore

def build_big_db(path, size_bytes, row_bytes=16384):
    """A database of about size_bytes made of big rows (hex text of random bytes:
    realistic half-compressible content, mostly overflow pages)."""
    create_db(path)
    c = sqlite3.connect(path, isolation_level=None)
    c.execute("PRAGMA journal_mode=WAL")
    c.execute("PRAGMA synchronous=NORMAL")
    c.execute("CREATE TABLE IF NOT EXISTS big(id INTEGER PRIMARY KEY, body TEXT)")
    rows = max(1, size_bytes // row_bytes)
    done = 0
    while done < rows:
        c.execute("BEGIN")
        for _ in range(min(200, rows - done)):
            c.execute("INSERT INTO big(body) VALUES (?)", (os.urandom(row_bytes // 2).hex(),))
        c.execute("COMMIT")
        done += min(200, rows - done)
    c.execute("INSERT INTO t(at, marker) VALUES (?, 'last')", (time.time(),))
    c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    c.close()


def _digest(db):
    c = sqlite3.connect(db)
    try:
        return c.execute("SELECT count(*), sum(length(body)), max(id) FROM big").fetchone()
    finally:
        c.close()


def cp_fsync(src, dst):
    t0 = time.monotonic()
    subprocess.run(["cp", src, dst], check=True)
    fd = os.open(dst, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    return time.monotonic() - t0


def restore(ctx, label, size_bytes, tools, reps):
    d, db, _ = ctx.fresh("restore-" + label)
    ctx.log("  building a %s database of big rows" % label)
    build_big_db(db, size_bytes)
    db_bytes = os.path.getsize(db)
    expect = _digest(db)
    out = os.path.join(d, "out.db")
    res = {"db_bytes": db_bytes, "cp_s": [], "tools": {}}
    cp_fsync(db, out)  # warm-up
    for _ in range(reps):
        os.remove(out)
        res["cp_s"].append(cp_fsync(db, out))
    os.remove(out)
    for tool in tools:
        rep = os.path.join(d, "replica-" + tool.key)
        ctx.log("  %s: initial sync of %.0f MB" % (tool.label, db_bytes / 1e6))
        t0 = time.monotonic()
        r = Replicator(tool, db, rep, d)
        try:
            r.wait_ready(timeout=1800)
            r.wait_quiet(quiet=1.0 + 2 * tool.settle, timeout=1800)
            cpu, hwm = r.cpu(), r.hwm_kib()
        finally:
            _stop(r)
        t = {"sync_s": time.monotonic() - t0, "sync_cpu_s": cpu, "sync_hwm_kib": hwm,
             "replica_bytes": dir_bytes(rep), "restore_s": []}
        variants = [("restore_s", None)]
        if tool.kind == "walship":
            variants.append(("restore_nocheck_s", "none"))
            t["restore_nocheck_s"] = []
        for key, check in variants:
            cmd = tool.restore_cmd(rep, out, check)
            run_timed(cmd, env=tool.env())  # warm-up, and the content check
            got = _digest(out)
            if got != expect:
                raise RuntimeError("%s restore of %s: (count, bytes, max id) %s != %s" % (tool.label, label, got, expect))
            for _ in range(reps):
                os.remove(out)
                t[key].append(run_timed(cmd, env=tool.env()))
            os.remove(out)
        res["tools"][tool.key] = t
        subprocess.run(["rm", "-rf", rep], check=True)
    return res


# ---------------------------------------------------------------------------- follower

def _max_id(db, conn=None):
    """max(id) in the follower's db through conn, or a read-only connection of its own."""
    c = conn or sqlite3.connect("file:%s?mode=ro" % db, uri=True)
    try:
        return c.execute("SELECT coalesce(max(id), 0) FROM t").fetchone()[0]
    finally:
        if conn is None:
            c.close()


def _until(cond, timeout, what, step=0.005):
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise RuntimeError("%s: not within %.0f s" % (what, timeout))
        time.sleep(step)
    return time.monotonic() - t0


def follower(ctx, tool, seconds, idle_s=0, rate=20.0, reopen=False):
    """Paced writer (one row per transaction); after each commit a read-only reader of the
    follower's db polls SELECT max(id) (0.1 ms apart) until the row is there, and the
    commit's lag runs to that poll's answer. Commits stay on the rate: a commit still
    pending when the next is due is resolved by later polls. The reader is one long-lived
    connection, or (reopen) a new connection per poll. If the oldest pending commit is
    not visible within 5 s (+ 2 × the tool's sync interval), the run stops there
    (stalled): the long-lived reader is closed and we note whether the follower then
    catches up. Then, if idle_s, the follower's and the primary's CPU while the primary is
    idle for idle_s."""
    d, db, rep = ctx.fresh(("follow-reopen-" if reopen else "follow-") + tool.key)
    fdb = os.path.join(d, "follower.db")
    create_db(db)
    listen = "127.0.0.1:%d" % free_port() if tool.kind == "walship" else None
    name = os.path.splitext(os.path.basename(db))[0]
    give_up = 5 + 2 * tool.settle
    r = _start(ctx, tool, db, rep, d, listen)
    f = reader = None
    try:
        if listen:
            _until(lambda: http_json("GET", listen, "/status", timeout=2)[0] == 200, 30, "GET /status on the primary")
        app = App(db)
        f = Follower(tool, "http://%s/%s" % (listen, name) if listen else rep, fdb, d)
        f.wait_ready()
        _until(lambda: _max_id(fdb) >= app.seq, 30, "follower catching up")
        if listen:  # the primary's view: /sync, then /status lists the follower at that TXID
            code, body = http_json("POST", listen, "/sync/" + name)
            if code != 200:
                raise RuntimeError("POST /sync/%s: HTTP %s" % (name, code))

            def at_sync():
                st = http_json("GET", listen, "/status", timeout=2)[1] or {}
                return any(x["txid"] >= body["txid"] for db_ in st.get("databases", []) if db_["name"] == name
                           for x in db_["followers"])
            _until(at_sync, 10, "the primary's /status listing the follower at TXID %s" % body["txid"])
        time.sleep(0.1 + tool.settle)
        if not reopen:
            reader = sqlite3.connect("file:%s?mode=ro" % fdb, uri=True)
        pending, lags, stalled = [], [], False  # pending: (id, commit return time)
        n = int(seconds * rate)
        cpu0 = f.cpu()
        t0 = time.monotonic()
        for i in range(n + 1):
            due = t0 + i / rate if i < n else float("inf")
            while pending and time.monotonic() < due:
                seen = _max_id(fdb, reader)
                now = time.monotonic()
                while pending and pending[0][0] <= seen:
                    lags.append((now - pending.pop(0)[1]) * 1000)
                if pending and now - pending[0][1] > give_up:
                    stalled = True
                    break
                time.sleep(0.0001)
            if i == n or stalled:
                break
            _pace(t0, i, rate)
            app.commit()
            pending.append((app.seq, time.monotonic()))
        t1 = time.monotonic()
        res = {"commits": len(lags) + len(pending), "missing": len(pending), "lags_ms": sorted(round(x, 3) for x in lags),
               "stalled": stalled, "reader": "new connection per poll" if reopen else "one long-lived connection",
               "cpu_pct": (f.cpu() - cpu0) / (t1 - t0) * 100}
        if reader:
            reader.close()
            reader = None
        if stalled:
            try:
                res["caught_up_after_close_s"] = _until(lambda: _max_id(fdb) >= app.seq, give_up, "catch-up")
            except RuntimeError:
                res["caught_up_after_close_s"] = None
        else:
            q = "SELECT count(*), coalesce(max(id), 0) FROM t"
            c = sqlite3.connect("file:%s?mode=ro" % fdb, uri=True)
            a, b = app.conn.execute(q).fetchone(), c.execute(q).fetchone()
            c.close()
            if a != b:
                raise RuntimeError("%s follower: (count, max id) %s != primary %s" % (tool.label, b, a))
        if idle_s:
            time.sleep(0.5 + 2 * tool.settle)
            c0, p0, t0 = f.cpu(), r.cpu(), time.monotonic()
            time.sleep(idle_s)
            c1, p1, t1 = f.cpu(), r.cpu(), time.monotonic()
            res.update(idle_s=t1 - t0, idle_cpu_pct=(c1 - c0) / (t1 - t0) * 100,
                       primary_idle_cpu_pct=(p1 - p0) / (t1 - t0) * 100)
        res["hwm_kib"] = f.hwm_kib()
        app.close()
    finally:
        if reader:
            reader.close()
        try:
            if f:
                _stop(f)
        finally:
            _stop(r)
    return res

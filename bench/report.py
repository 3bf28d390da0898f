"""Turns the raw per-run numbers into the results table (markdown), and draws the lag
distributions (folder replica, live follower) as a hand-written SVG (cumulative
distribution, log-scale lag axis). Sections whose scenario did not run (bench/run
--only) are left out of the table."""

import math
import statistics

TOOLS = ["walship", "ls-default", "ls-10ms"]


def summary(values):
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals)}


def fmt_num(x, digits=None):
    if x is None:
        return "—"
    if x == 0:
        return "0"
    if digits is not None:
        return "%.*f" % (digits, x)
    a = abs(x)
    if a >= 1000:
        return "%.0f" % x
    if a >= 100:
        return "%.0f" % x
    if a >= 10:
        return "%.1f" % x
    if a >= 1:
        return "%.2f" % x
    return "%.3f" % x


def fmt_summary(s, digits=None):
    if s is None:
        return "—"
    if s["n"] == 1 or s["min"] == s["max"]:
        return fmt_num(s["median"], digits)
    return "%s [%s–%s]" % (fmt_num(s["median"], digits), fmt_num(s["min"], digits), fmt_num(s["max"], digits))


def percentile(sorted_vals, p):
    if not sorted_vals:
        return None
    k = min(len(sorted_vals) - 1, max(0, int(math.ceil(p / 100 * len(sorted_vals))) - 1))
    return sorted_vals[k]


def _ratio(a, b):
    if a is None or b is None or not b["median"]:
        return None
    return a["median"] / b["median"]


def build_rows(raw, tools_run, notes):
    """Rows of (metric, {tool: summary or text}, target). Cells may be strings."""
    rows = []

    def per_tool(fn):
        return {k: fn(k) for k in TOOLS if k in tools_run}

    # lag
    lag = raw.get("lag", {})
    def lag_stat(fn):
        return per_tool(lambda k: summary([fn(r) for r in lag.get(k, [])]))
    if lag:
        rows.append(("commit → in folder replica lag, median (ms)", lag_stat(lambda r: percentile(r["lags_ms"], 50)), "≤10 ms"))
        rows.append(("… lag p99 (ms)", lag_stat(lambda r: percentile(r["lags_ms"], 99)), ""))
        rows.append(("… lag max (ms)", lag_stat(lambda r: r["lags_ms"][-1] if r["lags_ms"] else None), "≤50 ms"))
        rows.append(("… commits with no covering file", per_tool(lambda k: "%d / %d" % (
            sum(r["missing"] for r in lag.get(k, [])), sum(r["commits"] for r in lag.get(k, [])))), "0"))

    # throughput
    tp = raw.get("throughput", {})
    if tp:
        base = summary([r["tps"] for r in tp.get("none", [])])
        rows.append(("app tx/s, 1-row tx (no replicator: %s)" % fmt_summary(base, 0),
                     per_tool(lambda k: summary([r["tps"] for r in tp.get(k, [])])), ""))
        def paired_ratio(k):
            return summary([w["tps"] / n["tps"] for w, n in zip(tp.get(k, []), tp.get("none", []))])
        rows.append(("app tx/s with ÷ without replicator", per_tool(paired_ratio), "≥0.95"))
        mib = 1024 * 1024
        rows.append(("-wal size at end of max-rate run (MiB; none: %s)" % fmt_summary(summary([r["wal_end"] / mib for r in tp.get("none", [])])),
                     per_tool(lambda k: summary([r["wal_end"] / mib for r in tp.get(k, [])])), "≤16 MiB"))
        rows.append(("-wal size max during the run (MiB; none: %s)" % fmt_summary(summary([r["wal_max"] / mib for r in tp.get("none", [])])),
                     per_tool(lambda k: summary([r["wal_max"] / mib for r in tp.get(k, [])])), ""))
        rows.append(("replica catch-up after the writer stops (ms)",
                     per_tool(lambda k: summary([r["catchup_s"] * 1000 for r in tp.get(k, [])])), ""))
        rows.append(("replicator CPU per MB of WAL, max-rate run (ms/MB)",
                     per_tool(lambda k: summary([r["cpu_ms_per_mb"] for r in tp.get(k, [])])), "≤5 ms"))
        rows.append(("replicator CPU per MB of WAL, 20 tx/s run (ms/MB)",
                     per_tool(lambda k: summary([r["cpu_s"] * 1000 / (r["wal_bytes"] / 1e6) if r["wal_bytes"] else None for r in lag.get(k, [])])), ""))
        rows.append(("replicator peak RSS, VmHWM (MiB)",
                     per_tool(lambda k: summary([r["hwm_kib"] / 1024 for r in tp.get(k, []) + lag.get(k, []) if r.get("hwm_kib")])), "≤20 MiB"))

    # checkpoint
    ck = raw.get("checkpoint", {})
    if ck:
        def ck_ms(k):
            return summary([x["ms"] for run in ck.get(k, []) for x in run])
        rows.append(("app wal_checkpoint(TRUNCATE) time (ms; none: %s)" % fmt_summary(ck_ms("none")), per_tool(ck_ms),
                     "well under busy_timeout (5000)"))
        def ck_busy(k):
            xs = [x for run in ck.get(k, []) for x in run]
            if not xs:
                return None
            return "%d / %d" % (sum(1 for x in xs if x["busy"]), len(xs))
        rows.append(("… returned busy (none: %s)" % (ck_busy("none") or "—"), per_tool(ck_busy), "0"))

    # restore
    rs = raw.get("restore", {})
    for label in ("100MB", "1GB") if rs else []:
        r = rs.get(label)
        if not r:
            if label == "1GB":
                rows.append(("restore 1 GB ÷ cp+fsync", {k: "not run (--full)" for k in TOOLS if k in tools_run}, "≤1.3"))
            continue
        cp = summary(r["cp_s"])
        size = "%.0f MB" % (r["db_bytes"] / 1e6)
        target = "≤1.3" if label == "1GB" else "≤2"
        rows.append(("restore %s (s; cp+fsync: %s)" % (size, fmt_summary(cp)),
                     per_tool(lambda k: summary(r["tools"][k]["restore_s"]) if k in r["tools"] else None), ""))
        rows.append(("restore %s ÷ cp+fsync" % size,
                     per_tool(lambda k: summary([x / cp["median"] for x in r["tools"][k]["restore_s"]]) if k in r["tools"] else None), target))
        if "walship" in r["tools"]:
            w = r["tools"]["walship"]
            rows.append(("… walship restore --check none ÷ cp+fsync (%s)" % size,
                         {"walship": summary([x / cp["median"] for x in w["restore_nocheck_s"]])}, target))
        rows.append(("initial sync of the %s db (s)" % size,
                     per_tool(lambda k: summary([r["tools"][k]["sync_s"]]) if k in r["tools"] else None), ""))
        rows.append(("… peak RSS during it (MiB)",
                     per_tool(lambda k: summary([r["tools"][k]["sync_hwm_kib"] / 1024]) if k in r["tools"] else None), "≤20 MiB"))

    # S3
    s3l = raw.get("s3_lag", {})
    if any(s3l.values()):
        def s3_stat(fn):
            return per_tool(lambda k: summary([fn(r) for r in s3l.get(k, [])]))
        rows.append(("commit → restorable lag, local S3 (moto), median (ms)", s3_stat(lambda r: percentile(r["lags_ms"], 50)), "≤50 ms"))
        rows.append(("… S3 lag p99 (ms)", s3_stat(lambda r: percentile(r["lags_ms"], 99)), ""))
        rows.append(("… S3 lag max (ms)", s3_stat(lambda r: r["lags_ms"][-1] if r["lags_ms"] else None), ""))
        rows.append(("… commits with no covering object", per_tool(lambda k: "%d / %d" % (
            sum(r["missing"] for r in s3l.get(k, [])), sum(r["commits"] for r in s3l.get(k, []))) if s3l.get(k) else "failed"), "0"))
    s3r = raw.get("s3_req", {})
    if any(s3r.values()):
        rows.append(("S3 requests per hour, idle (1 run)", per_tool(lambda k: summary([r["idle_req_per_h"] for r in s3r.get(k, [])])), ""))
        rows.append(("S3 requests per hour at 10 tx/s (1 run)", per_tool(lambda k: summary([r["load_req_per_h"] for r in s3r.get(k, [])])), ""))
        rows.append(("… of which PUT", per_tool(lambda k: summary([r["load_put_per_h"] for r in s3r.get(k, [])])), ""))

    # idle / load
    il = raw.get("idle", {})
    if il:
        rows.append(("idle CPU, no writes (% of a core)", per_tool(lambda k: summary([r["idle_cpu_pct"] for r in il.get(k, [])])), "0 %"))
        rows.append(("files written per hour, idle", per_tool(lambda k: summary([r["idle_files_per_h"] for r in il.get(k, [])])), ""))
        rows.append(("files written per hour at 10 tx/s (all files)", per_tool(lambda k: summary([r["load_files_per_h"] for r in il.get(k, [])])), ""))
        rows.append(("… of which .ltx files", per_tool(lambda k: summary([r["load_ltx_files_per_h"] for r in il.get(k, [])])), ""))

    # live follower (walship follow over HTTP; Litestream restore -f of the folder replica)
    for key, reader in (("follow", "one long-lived reader"), ("follow_reopen", "new reader connection per poll")):
        fl = raw.get(key, {})
        if not any(fl.values()):
            continue
        def fl_stat(fn, fl=fl):
            def cell(k):
                runs = fl.get(k)
                if not runs:
                    return "failed"
                s = summary([fn(r) for r in runs])
                return s if s else "stalled" if any(r["stalled"] for r in runs) else None
            return per_tool(cell)
        rows.append(("commit → visible on a live follower, %s, median (ms)" % reader, fl_stat(lambda r: percentile(r["lags_ms"], 50)), ""))
        rows.append(("… follower lag p99 (ms)", fl_stat(lambda r: percentile(r["lags_ms"], 99)), ""))
        rows.append(("… follower lag max (ms)", fl_stat(lambda r: r["lags_ms"][-1] if r["lags_ms"] else None), ""))
        rows.append(("… commits never visible (a stall ends the run: none for 5 s + 2 sync intervals)", per_tool(lambda k, fl=fl: "%d / %d%s" % (
            sum(r["missing"] for r in fl[k]), sum(r["commits"] for r in fl[k]),
            " (stalled: %d of %d runs)" % (sum(r["stalled"] for r in fl[k]), len(fl[k])) if any(r["stalled"] for r in fl[k]) else "")
            if fl.get(k) else "failed"), "0"))
    fr = raw.get("follow_reopen", {})
    if any(fr.values()):
        def fr_stat(fn):
            return per_tool(lambda k: summary([fn(r) for r in fr.get(k, []) if fn(r) is not None]))
        rows.append(("follower CPU at 20 tx/s (% of a core)", fr_stat(lambda r: r["cpu_pct"]), ""))
        rows.append(("follower idle CPU, primary idle (% of a core)", fr_stat(lambda r: r.get("idle_cpu_pct")), ""))
        rows.append(("follower peak RSS, VmHWM (MiB)", fr_stat(lambda r: r["hwm_kib"] / 1024 if r.get("hwm_kib") else None), ""))
        rows.append(("primary idle CPU with a live follower (% of a core)", fr_stat(lambda r: r.get("primary_idle_cpu_pct")), ""))
    return rows


def markdown(meta, rows, tools_run, notes):
    head = ["metric", "walship median [min–max]", "Litestream default", "Litestream 10ms", "ratio (walship ÷ LS default · ÷ LS 10ms)", "target"]
    out = []
    out.append("Date: %s · machine: %s × %s, Linux %s · walship %s · Litestream %s · SQLite %s (writer)"
               % (meta["date"], meta["nproc"], meta["cpu"], meta["kernel"], meta["walship_commit"],
                  meta["litestream_version"], meta["sqlite_version"]))
    out.append("")
    out.append("Command: `%s` (mode %s, %s runs each). Load average (1/5/15 min) at start %s, at end %s. "
               "Ratios matter more than absolute times."
               % (meta["command"], meta["mode"], meta["runs"], meta.get("loadavg_start", "?"), meta.get("loadavg_end", "?")))
    out.append("")
    out.append("| " + " | ".join(head) + " |")
    out.append("|" + "|".join("---" for _ in head) + "|")
    for metric, cells, target in rows:
        vals = []
        for k in TOOLS:
            c = cells.get(k)
            if k not in tools_run:
                vals.append("skipped")
            elif isinstance(c, str):
                vals.append(c)
            else:
                vals.append(fmt_summary(c))
        w, d, t = (cells.get(k) for k in TOOLS)
        if isinstance(w, dict):
            r1 = _ratio(w, d if isinstance(d, dict) else None)
            r2 = _ratio(w, t if isinstance(t, dict) else None)
            ratio = "%s · %s" % (fmt_num(r1), fmt_num(r2)) if (r1, r2) != (None, None) else ""
        else:
            ratio = ""
        out.append("| %s | %s | %s | %s | %s | %s |" % (metric, vals[0], vals[1], vals[2], ratio, target))
    if notes:
        out.append("")
        for n in notes:
            out.append("- " + n)
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------- SVG

COLORS = {"walship": "#1f77b4", "ls-default": "#d62728", "ls-10ms": "#ff7f0e"}
LABELS = {"walship": "walship", "ls-default": "Litestream (default 1 s)", "ls-10ms": "Litestream (10 ms)"}
# (raw key, dash pattern, legend suffix) of the lag families drawn
SERIES = [("lag", None, "folder replica"), ("follow", "7 4", "follower, long-lived reader"),
          ("follow_reopen", "2 3", "follower, new reader per poll")]


def lag_svg(lag, title, follow=None, follow_reopen=None):
    """Cumulative distribution of every commit's lag (all runs pooled), x on a log scale:
    solid = file in the folder replica, dashed/dotted = row readable on a live follower."""
    W, H, L, R, T, B = 760, 420, 70, 20, 40, 60
    lo, hi = 0.1, 5000.0
    def x(ms):
        ms = min(max(ms, lo), hi)
        return L + (math.log10(ms) - math.log10(lo)) / (math.log10(hi) - math.log10(lo)) * (W - L - R)
    def y(frac):
        return T + (1 - frac) * (H - T - B)
    s = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">' % (W, H),
         '<rect width="100%" height="100%" fill="white"/>',
         '<text x="%d" y="22" font-size="15">%s</text>' % (L, _esc(title))]
    for ms in (0.1, 1, 10, 100, 1000):
        s.append('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#ddd"/>' % (x(ms), T, x(ms), H - B))
        s.append('<text x="%.1f" y="%d" text-anchor="middle">%g</text>' % (x(ms), H - B + 16, ms))
    for ms in (10, 50):  # targets: median ≤10 ms, max ≤50 ms
        s.append('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#2ca02c" stroke-dasharray="4 3"/>' % (x(ms), T, x(ms), H - B))
    s.append('<text x="%.1f" y="%d" fill="#2ca02c">targets 10 / 50 ms</text>' % (x(10) + 4, T + 12))
    for f in (0, 0.25, 0.5, 0.75, 1):
        s.append('<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#eee"/>' % (L, y(f), W - R, y(f)))
        s.append('<text x="%d" y="%.1f" text-anchor="end">%d%%</text>' % (L - 6, y(f) + 4, f * 100))
    s.append('<text x="%d" y="%d" text-anchor="middle">lag from commit return to file visible in replica (solid) or row readable on a</text>' % ((L + W - R) // 2, H - 26))
    s.append('<text x="%d" y="%d" text-anchor="middle">live follower (dashed, dotted) (ms, log scale; clamped to 0.1 ms)</text>' % ((L + W - R) // 2, H - 10))
    s.append('<text transform="translate(16,%d) rotate(-90)" text-anchor="middle">commits with lag ≤ x</text>' % ((T + H - B) // 2))
    s.append('<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="#333"/>' % (L, T, W - L - R, H - T - B))
    ly = T + 30
    families = {"lag": lag, "follow": follow or {}, "follow_reopen": follow_reopen or {}}
    for key, dash, what in SERIES:
        for k in TOOLS:
            vals = sorted(v for run in families[key].get(k, []) for v in run["lags_ms"])
            if not vals:
                if any(run.get("stalled") for run in families[key].get(k, [])):
                    s.append('<text x="%d" y="%d">%s → %s: stalled, no commit visible (no curve)</text>' % (
                        L + 30, ly, _esc(LABELS[k]), what))
                    ly += 18
                continue
            n = len(vals)
            pts = ["%.1f,%.1f" % (x(vals[0]), y(0))]
            for i, v in enumerate(vals):
                pts.append("%.1f,%.1f" % (x(v), y(i / n)))
                pts.append("%.1f,%.1f" % (x(v), y((i + 1) / n)))
            da = ' stroke-dasharray="%s"' % dash if dash else ""
            s.append('<polyline fill="none" stroke="%s" stroke-width="2"%s points="%s"/>' % (COLORS[k], da, " ".join(pts)))
            med = percentile(vals, 50)
            s.append('<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="%s" stroke-width="3"%s/>' % (L + 8, ly - 4, L + 26, ly - 4, COLORS[k], da))
            s.append('<text x="%d" y="%d">%s → %s: n=%d, median %s ms, max %s ms</text>' % (
                L + 30, ly, _esc(LABELS[k]), what, n, fmt_num(med), fmt_num(vals[-1])))
            ly += 18
    s.append("</svg>")
    return "\n".join(s) + "\n"


def _esc(t):
    return t.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")

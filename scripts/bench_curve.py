#!/usr/bin/env python3
"""The open-loop latency curve: Postern and Postfix at 25/50/75/90% of Postern's peak.

Issue 15 item 4; results in docs/performance.md ("Scale: 50,000 idle
connections and the latency curve"). For each case (default: tls-4k,
STARTTLS in and TLS out; also plain-4k):

 1. Peak: closed-loop `postern-bench load` against Postern at C connections
    (default 50), --peak-rounds rounds; the median delivered msg/s is the peak.
 2. For each fraction F (default 0.25, 0.5, 0.75, 0.9): open-loop load at
    R = F x peak msg/s (`load --rate R`: message k of connection i is due at
    (k*C + i)/R s), the same R for Postern and for Postfix, alternating
    which goes first. Every run is bounded: --messages per connection, and
    `--deadline` (no new message after 3x the time the run should take + 10 s;
    what was not sent by then is reported as not_sent). Every run is
    checked exactly-once at the sink, as in scripts/bench.py.
 3. Report p50/p99 DATA->250 (the end of DATA written -> the 250), plus how
    far behind schedule messages started (an MTA that cannot keep up makes
    the load generator fall behind: its DATA->250 stays bounded by the 50
    connections, its backlog grows) and due->250 (from when a message was
    due to its 250: the open-loop response time including that backlog).

Writes target/bench/curve-STAMP.json, target/bench/curve-STAMP.md and one
SVG per case, target/bench/latency-curve-CASE.svg (a self-written SVG, no
plotting library; --svg-dir to put them elsewhere, e.g. docs/performance).

    python3 scripts/bench_curve.py --postern-bin target/release/postern \\
        --bench-bin target/release/postern-bench

Reuses scripts/bench.py's Sink, Postern and Postfix set-up (the same
configuration and certificates as the main bench).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from xml.sax.saxutils import escape

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (scripts/bench.py)

# (name, mode, route, size): the case families of scripts/bench.py.
CASES = {
    "plain-4k": ("plain", "plain", "4k"),
    "tls-4k": ("starttls", "tls", "4k"),
}

FRACTIONS = (0.25, 0.5, 0.75, 0.9)


# ---------------------------------------------------------------------------
# pure helpers (tests/test_bench_curve.py)


def rate_schedule(peak: float, fractions=FRACTIONS) -> list[tuple[float, int]]:
    """(fraction, offered msg/s) for each fraction of the peak; rates are
    whole msg/s, at least 1."""
    if not (peak > 0 and math.isfinite(peak)):
        raise ValueError(f"peak must be a positive number of msg/s, not {peak!r}")
    out = []
    for f in fractions:
        if not 0 < f <= 1.5:
            raise ValueError(f"fraction {f!r} out of range (0, 1.5]")
        out.append((f, max(1, round(peak * f))))
    return out


def run_deadline(messages_total: int, rate: float) -> float:
    """Seconds after which an open-loop run sends no new message: three
    times what the schedule takes, plus 10 s."""
    return round(3 * messages_total / rate + 10, 1)


def _nice_log_ticks(lo: float, hi: float) -> list[float]:
    ticks = []
    e = math.floor(math.log10(lo))
    while 10 ** e <= hi * 1.0001:
        for m in (1, 2, 5):
            v = m * 10 ** e
            if lo / 1.0001 <= v <= hi * 1.0001:
                ticks.append(v)
        e += 1
    return ticks


def _nice_linear_ticks(lo: float, hi: float, n: int = 6) -> list[float]:
    span = hi - lo
    if span <= 0:
        return [lo]
    raw = span / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.ceil(lo / step) * step
    ticks = []
    v = start
    while v <= hi + step * 1e-6:
        ticks.append(round(v, 10))
        v += step
    return ticks


def _fmt_tick(v: float) -> str:
    if v >= 1:
        return f"{v:,.0f}" if v == int(v) else f"{v:g}"
    return f"{v:g}"


COLOURS = {"Postern": "#1f77b4", "Postfix": "#d62728"}


def svg_curve(title: str, subtitle: str, series: list[dict], x_label: str, y_label: str,
              x_notes: dict[float, str] | None = None, width: int = 760, height: int = 470) -> str:
    """An SVG line chart with a logarithmic y axis.

    series: [{"name": "Postern p99", "mta": "Postern", "dash": bool,
              "points": [(x, y), ...]}]; points with y None are skipped.
    x_notes: extra text under x tick positions (e.g. "25%")."""
    sub_lines = subtitle.split("\n")
    left, right, top, bottom = 78, 190, 62 + 14 * (len(sub_lines) - 1), 78
    pw, ph = width - left - right, height - top - bottom
    xs = [x for s in series for x, y in s["points"] if y is not None]
    ys = [y for s in series for x, y in s["points"] if y is not None and y > 0]
    if not xs or not ys:
        raise ValueError("nothing to plot")
    x_lo, x_hi = 0.0, max(xs) * 1.08
    y_lo = 10 ** math.floor(math.log10(min(ys)))
    y_hi = 10 ** math.ceil(math.log10(max(ys)))
    if y_hi <= y_lo:
        y_hi = y_lo * 10

    def px(x: float) -> float:
        return left + (x - x_lo) / (x_hi - x_lo) * pw

    def py(y: float) -> float:
        return top + ph - (math.log10(y) - math.log10(y_lo)) / (math.log10(y_hi) - math.log10(y_lo)) * ph

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="Helvetica, Arial, sans-serif" font-size="12">',
           f'<rect x="0" y="0" width="{width}" height="{height}" fill="white"/>',
           f'<text x="{left}" y="24" font-size="16" font-weight="bold">{escape(title)}</text>',
           *(f'<text x="{left}" y="{44 + 14 * i}" font-size="11" fill="#444">{escape(line)}</text>'
             for i, line in enumerate(sub_lines))]
    # grid and y ticks
    for t in _nice_log_ticks(y_lo, y_hi):
        y = py(t)
        major = abs(math.log10(t) - round(math.log10(t))) < 1e-9
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + pw}" y2="{y:.1f}" '
                   f'stroke="{"#ccc" if major else "#eee"}" stroke-width="1"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{_fmt_tick(t)}</text>')
    # x ticks: the measured rates
    for x in sorted(set(xs)):
        X = px(x)
        out.append(f'<line x1="{X:.1f}" y1="{top}" x2="{X:.1f}" y2="{top + ph}" stroke="#eee" stroke-width="1"/>')
        out.append(f'<text x="{X:.1f}" y="{top + ph + 16}" text-anchor="middle">{_fmt_tick(x)}</text>')
        if x_notes and x in x_notes:
            out.append(f'<text x="{X:.1f}" y="{top + ph + 30}" text-anchor="middle" fill="#666" '
                       f'font-size="11">{escape(x_notes[x])}</text>')
    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#333" stroke-width="1"/>')
    out.append(f'<text x="{left + pw / 2:.1f}" y="{height - 18}" text-anchor="middle">{escape(x_label)}</text>')
    out.append(f'<text transform="translate(20,{top + ph / 2:.1f}) rotate(-90)" text-anchor="middle">'
               f'{escape(y_label)}</text>')
    # series
    for i, s in enumerate(series):
        colour = COLOURS.get(s.get("mta", ""), "#333")
        pts = [(px(x), py(y)) for x, y in s["points"] if y is not None and y > 0]
        dash = ' stroke-dasharray="6,4"' if s.get("dash") else ""
        if len(pts) > 1:
            path = " ".join(f"{X:.1f},{Y:.1f}" for X, Y in pts)
            out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"{dash}/>')
        for (X, Y), (x, y) in zip(pts, [(x, y) for x, y in s["points"] if y is not None and y > 0]):
            shape = (f'<rect x="{X - 4:.1f}" y="{Y - 4:.1f}" width="8" height="8" fill="white" '
                     f'stroke="{colour}" stroke-width="2">' if s.get("dash") else
                     f'<circle cx="{X:.1f}" cy="{Y:.1f}" r="4" fill="{colour}">')
            tag = "rect" if s.get("dash") else "circle"
            out.append(f'{shape}<title>{escape(s["name"])}: {_fmt_tick(x)} msg/s, {y:.2f} ms</title></{tag}>')
        # legend
        ly = top + 10 + i * 22
        lx = left + pw + 16
        out.append(f'<line x1="{lx}" y1="{ly}" x2="{lx + 28}" y2="{ly}" stroke="{colour}" stroke-width="2"{dash}/>')
        out.append(f'<text x="{lx + 36}" y="{ly + 4}">{escape(s["name"])}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------
# the runs


def one(bench_bin: Path, mta, sink, case: str, conns: int, msgs: int, extra: list[str],
        run_id: str, delivery_timeout: float) -> dict:
    mode, route, size = CASES[case]
    r = bench.load(bench_bin, mta, sink, (case, mode, route, size, conns, msgs, extra), run_id, delivery_timeout)
    d = r.get("delivery", {})
    r["_ok"] = bool(d.get("exactly_once")) and r.get("failed") == 0
    return r


def point(r: dict) -> dict:
    d = r.get("delivery", {})
    return {
        "offered_per_sec": r.get("rate"),
        "sent": r.get("sent"),
        "not_sent": r.get("not_sent"),
        "accepted": r.get("accepted"),
        "failed": r.get("failed"),
        "errors": r.get("errors", [])[:3],
        "accepted_per_sec": r.get("accepted_per_sec"),
        "delivered_per_sec": d.get("delivered_per_sec"),
        "p50_ms": r["latency_ms"]["p50"],
        "p99_ms": r["latency_ms"]["p99"],
        "behind_p99_ms": r.get("behind_ms", {}).get("p99"),
        "behind_max_ms": r.get("behind_ms", {}).get("max"),
        "due_to_250_p50_ms": r.get("due_to_250_ms", {}).get("p50"),
        "due_to_250_p99_ms": r.get("due_to_250_ms", {}).get("p99"),
        "exactly_once": r["_ok"],
        "cpu_per_1000": r.get("mta", {}).get("cpu_secs_per_1000"),
    }


def fmt(v, digits=0):
    return "–" if v is None else f"{v:,.{digits}f}"


def report(meta: dict, results: dict) -> str:
    lines = [f"Latency curve, started {meta['started']} UTC, took {meta['duration_s']:.0f} s; Postern at git "
             f"{meta['machine'].get('git', {}).get('commit', '?')}; load average before / after: "
             f"{meta['load_before']} / {meta['load_after']}; {meta['connections']} connections; "
             f"certificates {meta['certificates']}", ""]
    for case, res in results.items():
        lines.append(f"### {case}: peak (closed loop, Postern, {meta['connections']} connections) "
                     f"{res['peak']:,.0f} delivered msg/s (rounds: "
                     f"{', '.join(f'{p:,.0f}' for p in res['peak_rounds'])})")
        lines.append("")
        lines.append("| % of peak | offered msg/s | MTA | accepted msg/s | p50 DATA→250 ms | p99 DATA→250 ms "
                     "| started behind schedule p99 / max ms | due→250 p50 / p99 ms | not sent | CPU s/1k | exactly once |")
        lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
        for p in res["points"]:
            for who in ("postern", "postfix"):
                q = p.get(who)
                if not q:
                    continue
                lines.append(
                    f"| {p['fraction'] * 100:.0f}% | {p['rate']:,} | {who} | {fmt(q['accepted_per_sec'])} "
                    f"| {fmt(q['p50_ms'], 1)} | {fmt(q['p99_ms'], 1)} "
                    f"| {fmt(q['behind_p99_ms'], 0)} / {fmt(q['behind_max_ms'], 0)} "
                    f"| {fmt(q['due_to_250_p50_ms'], 1)} / {fmt(q['due_to_250_p99_ms'], 1)} "
                    f"| {q['not_sent']} | {fmt(q['cpu_per_1000'], 2)} "
                    f"| {'yes' if q['exactly_once'] else 'NO ' + '; '.join(q['errors'])} |")
        lines.append("")
    return "\n".join(lines)


def plot(case: str, res: dict, meta: dict) -> str:
    series = []
    for who, label in (("postern", "Postern"), ("postfix", "Postfix")):
        for pct, dash in (("p50_ms", False), ("p99_ms", True)):
            pts = [(p["rate"], p[who][pct]) for p in res["points"] if p.get(who)]
            if pts:
                series.append({"name": f"{label} {pct[:3]}", "mta": label, "dash": dash, "points": pts})
    notes = {p["rate"]: f"{p['fraction'] * 100:.0f}%" for p in res["points"]}
    mode = "STARTTLS in, TLS out" if case.startswith("tls") else "plaintext both sides"
    return svg_curve(
        f"DATA→250 latency vs offered load, {case} ({mode})",
        f"{meta['connections']} connections, open loop; % = share of Postern's closed-loop peak "
        f"({res['peak']:,.0f} msg/s)\n{meta['started']} UTC, 1-minute load average {meta['load_before'][0]:.1f}"
        + (f" before, {meta['load_after'][0]:.1f} after" if meta.get("load_after") else ""),
        series, "offered load, msg/s (same for both MTAs)", "DATA→250, ms (log scale)", notes)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--postern-bin", default=str(bench.REPO / "target" / "release" / "postern"))
    ap.add_argument("--bench-bin", default=str(bench.REPO / "target" / "release" / "postern-bench"))
    ap.add_argument("--cases", default="tls-4k,plain-4k", help=f"comma-separated, of {sorted(CASES)}")
    ap.add_argument("-c", "--connections", type=int, default=50)
    ap.add_argument("--peak-messages", type=int, default=60, help="messages per connection, peak runs")
    ap.add_argument("--peak-rounds", type=int, default=3)
    ap.add_argument("--messages", type=int, default=60, help="messages per connection at each rate")
    ap.add_argument("--fractions", default=",".join(map(str, FRACTIONS)))
    ap.add_argument("--no-postfix", action="store_true")
    ap.add_argument("--rsa-only", action="store_true")
    ap.add_argument("--out", default=str(bench.REPO / "target" / "bench"))
    ap.add_argument("--svg-dir", default="", help="where the SVGs go (default: --out)")
    ap.add_argument("--delivery-timeout", type=float, default=120)
    ap.add_argument("--replot", default="", metavar="CURVE.json",
                    help="only redraw the SVGs (and print the tables) from an earlier run's curve-*.json")
    args = ap.parse_args()
    if args.replot:
        saved = json.loads(Path(args.replot).read_text())
        svg_dir = Path(args.svg_dir or args.out)
        svg_dir.mkdir(parents=True, exist_ok=True)
        for case, res in saved["results"].items():
            (svg_dir / f"latency-curve-{case}.svg").write_text(plot(case, res, saved["meta"]))
        print(report(saved["meta"], saved["results"]))
        return 0
    cases = args.cases.split(",")
    for c in cases:
        if c not in CASES:
            ap.error(f"unknown case {c!r}; known: {sorted(CASES)}")
    fractions = [float(f) for f in args.fractions.split(",")]

    started = time.time()
    meta = {"started": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M"),
            "machine": bench.machine(), "load_before": bench.loadavg(), "connections": args.connections,
            "certificates": "RSA-4096 only" if args.rsa_only else "RSA-4096 + ECDSA P-256 (both MTAs)",
            "argv": sys.argv[1:]}
    bench.log(f"load average: {meta['load_before']}")
    work = Path(tempfile.mkdtemp(prefix="postern-curve-", dir="/tmp"))
    work.chmod(0o755)
    bin_dir = work / "bin"
    bin_dir.mkdir()
    postern_bin, bench_bin = bin_dir / "postern", bin_dir / "postern-bench"
    shutil.copy2(args.postern_bin, postern_bin)
    shutil.copy2(args.bench_bin, bench_bin)
    bin_dir.chmod(0o755)
    cert, key = work / "mta.pem", work / "mta.key"
    bench.run(["openssl", "req", "-x509", "-newkey", "rsa:4096", "-nodes", "-keyout", str(key), "-out", str(cert),
               "-days", "30", "-subj", "/CN=mta.bench", "-addext", "subjectAltName=DNS:mta.bench"])
    ecdsa = None
    if not args.rsa_only:
        ecdsa = (work / "mta-ec.pem", work / "mta-ec.key")
        bench.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                   "-keyout", str(ecdsa[1]), "-out", str(ecdsa[0]), "-days", "30", "-subj", "/CN=mta.bench",
                   "-addext", "subjectAltName=DNS:mta.bench"])
    sink = bench.Sink(bench_bin, work)
    mtas = []
    results: dict[str, dict] = {}
    ok = True
    seq = 0
    try:
        postern = bench.Postern(postern_bin, work / "postern", sink, cert, key, ecdsa=ecdsa)
        postern.start()
        mtas.append(postern)
        if not args.no_postfix:
            postfix = bench.Postfix(work / "postfix", sink, cert, key, ecdsa=ecdsa)
            postfix.start()
            mtas.append(postfix)
        for m in mtas:  # warm-up, not measured
            for case in cases:
                r = one(bench_bin, m, sink, case, 2, 10, [], f"w{m.name}{case.replace('-', '')}",
                        args.delivery_timeout)
                if not r["_ok"]:
                    raise RuntimeError(f"warm-up against {m.name} failed: {json.dumps(r)[:2000]}")
        for case in cases:
            peaks = []
            for rnd in range(args.peak_rounds):
                seq += 1
                r = one(bench_bin, postern, sink, case, args.connections, args.peak_messages, [],
                        f"peak{case.replace('-', '')}r{rnd}s{seq}", args.delivery_timeout)
                ok &= r["_ok"]
                peaks.append(r.get("delivery", {}).get("delivered_per_sec") or 0)
                bench.log(f"{case} peak round {rnd + 1}: {peaks[-1]:.0f} delivered msg/s, "
                          f"p99 {r['latency_ms']['p99']:.1f} ms, exactly once: {r['_ok']}")
                time.sleep(0.5)
            peak = statistics.median(peaks)
            res = {"peak": peak, "peak_rounds": peaks, "points": []}
            results[case] = res
            total = args.connections * args.messages
            for i, (f, rate) in enumerate(rate_schedule(peak, fractions)):
                p = {"fraction": f, "rate": rate, "deadline_s": run_deadline(total, rate)}
                order = mtas if i % 2 == 0 else mtas[::-1]
                for m in order:
                    seq += 1
                    r = one(bench_bin, m, sink, case, args.connections, args.messages,
                            ["--rate", str(rate), "--deadline", str(p["deadline_s"])],
                            f"curve{case.replace('-', '')}f{int(f * 100)}{m.name}s{seq}", args.delivery_timeout)
                    ok &= r["_ok"]
                    q = point(r)
                    p[m.name] = q
                    bench.log(f"{case} {f * 100:.0f}% ({rate} msg/s) {m.name:7}: accepted {q['accepted_per_sec']:.0f}/s "
                              f"p50 {q['p50_ms']:.1f} p99 {q['p99_ms']:.1f} ms, behind p99 {q['behind_p99_ms']:.0f} ms, "
                              f"not sent {q['not_sent']}, exactly once: {q['exactly_once']}")
                    time.sleep(0.5)
                res["points"].append(p)
    finally:
        for m in mtas:
            try:
                m.stop()
            except Exception as e:
                bench.log(f"stopping {m.name}: {e}")
        sink.stop()
    meta["load_after"] = bench.loadavg()
    meta["duration_s"] = time.time() - started
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    svg_dir = Path(args.svg_dir) if args.svg_dir else out
    svg_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    text = report(meta, results)
    (out / f"curve-{stamp}.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    (out / f"curve-{stamp}.md").write_text(text + "\n")
    for case, res in results.items():
        if res["points"]:
            (svg_dir / f"latency-curve-{case}.svg").write_text(plot(case, res, meta))
    print(text)
    bench.log(f"raw: {out / f'curve-{stamp}.json'}; report: {out / f'curve-{stamp}.md'}; SVG in {svg_dir}")
    shutil.rmtree(work, ignore_errors=True)
    if not ok:
        bench.log("FAILED: some message was not delivered exactly once")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

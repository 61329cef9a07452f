#!/usr/bin/env python3
"""plot.py — latency plots of a load-test run as one SVG (stdlib only).

    python3 loadtest/plot.py loadtest/results/<timestamp>     # writes latency.svg there

Two parts, from the first run in results.json:
1. latency by percentile (HdrHistogram style: x = 0 … 99.99 %, log-spaced;
   y = latency, log scale), one line per measurement — exact for loadgen
   (from its histogram), from the reported percentiles for oha, k6 and
   redis-benchmark;
2. latency histograms (share of requests per log-spaced latency bucket,
   10 per decade) of the measurements that carry a full histogram (loadgen:
   live sale, stampede, mixed).
"""

import json
import math
import sys
from pathlib import Path

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf", "#393b79", "#637939", "#843c39", "#7b4173"]

QS = [0.0, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9999]


def esc(s):
    return str(s).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def quantile_points(m):
    """[(q, ms)] of one measurement."""
    if m.get("histogram_ms"):
        total = sum(n for _, n in m["histogram_ms"])
        if not total:
            return []
        pts, acc, prev_hi = [], 0, 0.0
        for hi, n in m["histogram_ms"]:
            if n:
                acc += n
                pts.append((acc / total, hi if acc < total else max(hi, prev_hi)))
            prev_hi = hi
        # Sample at the standard quantiles (the upper bucket edge reached).
        out = []
        for q in QS[1:]:
            for cq, v in pts:
                if cq >= q:
                    out.append((q, v))
                    break
        if m.get("max"):
            out.append((0.99999, m["max"]))
        return out
    pct = m.get("percentiles_ms") or {}
    out = []
    for k, v in pct.items():
        if v is None:
            continue
        try:
            q = float(k.lstrip("p")) / 100
        except ValueError:
            continue
        out.append((q, v))
    if not out:
        for q, key in ((0.5, "p50"), (0.99, "p99"), (0.999, "p999")):
            if m.get(key) is not None:
                out.append((q, m[key]))
    if m.get("max"):
        out.append((0.99999, m["max"]))
    return sorted(out)


def xpos(q):
    # log10(1 / (1 - q)): 0 % → 0, 90 % → 1, 99 % → 2, 99.9 % → 3, 99.99 % → 4, max → 5
    return math.log10(1 / max(1 - q, 1e-5))


def percentile_chart(ms, x0, y0, w, h, title):
    out = []
    series = [(name, quantile_points(m)) for name, m in ms]
    series = [(n, [(q, v) for q, v in p if v and v > 0]) for n, p in series]
    series = [(n, p) for n, p in series if p]
    if not series:
        return out, 0
    vals = [v for _, p in series for _, v in p]
    lo = 10 ** math.floor(math.log10(min(vals)))
    hi = 10 ** math.ceil(math.log10(max(vals)))
    if hi <= lo:
        hi = lo * 10
    xmax = 5.0

    def X(q):
        return x0 + xpos(q) / xmax * w

    def Y(v):
        return y0 + h - (math.log10(v) - math.log10(lo)) / (math.log10(hi) - math.log10(lo)) * h

    out.append(f'<text x="{x0}" y="{y0 - 12}" font-size="15" font-weight="bold">{esc(title)}</text>')
    out.append(f'<rect x="{x0}" y="{y0}" width="{w}" height="{h}" fill="none" stroke="#999"/>')
    d = lo
    while d <= hi * 1.0001:
        y = Y(d)
        out.append(f'<line x1="{x0}" y1="{y:.1f}" x2="{x0 + w}" y2="{y:.1f}" stroke="#eee"/>')
        out.append(f'<text x="{x0 - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end">{d:g} ms</text>')
        d *= 10
    for q, label in ((0, "0 %"), (0.9, "90 %"), (0.99, "99 %"), (0.999, "99.9 %"), (0.9999, "99.99 %"),
                     (0.99999, "max")):
        x = X(q)
        out.append(f'<line x1="{x:.1f}" y1="{y0}" x2="{x:.1f}" y2="{y0 + h}" stroke="#eee"/>')
        out.append(f'<text x="{x:.1f}" y="{y0 + h + 16}" font-size="11" text-anchor="middle">{label}</text>')
    for i, (name, pts) in enumerate(series):
        col = PALETTE[i % len(PALETTE)]
        path = " ".join(f"{'M' if j == 0 else 'L'}{X(q):.1f},{Y(v):.1f}" for j, (q, v) in enumerate(pts))
        out.append(f'<path d="{path}" fill="none" stroke="{col}" stroke-width="2"/>')
        ly = y0 + 14 + i * 16
        out.append(f'<rect x="{x0 + w + 14}" y="{ly - 9}" width="12" height="4" fill="{col}"/>')
        out.append(f'<text x="{x0 + w + 32}" y="{ly - 3}" font-size="12">{esc(name)}</text>')
        # A label at the line's end, too.
        q_end, v_end = pts[-1]
        out.append(f'<text x="{X(q_end) - 4:.1f}" y="{Y(v_end) - 3:.1f}" font-size="9" fill="{col}" '
                   f'text-anchor="end">{esc(name)}</text>')
    return out, h + 40


def histogram_panel(name, m, x0, y0, w, h, col):
    out = []
    hist = [(hi, n) for hi, n in m.get("histogram_ms", [])]
    total = sum(n for _, n in hist)
    if not total:
        return out
    nz = [i for i, (_, n) in enumerate(hist) if n]
    a, b = max(nz[0] - 1, 0), min(nz[-1] + 2, len(hist))
    hist = hist[a:b]
    peak = max(n for _, n in hist) / total
    bw = w / len(hist)
    out.append(f'<text x="{x0}" y="{y0 - 6}" font-size="12" font-weight="bold">{esc(name)} — '
               f'{total} requests, p50 {m.get("p50", 0):.2f} ms, p99 {m.get("p99", 0):.2f} ms</text>')
    out.append(f'<rect x="{x0}" y="{y0}" width="{w}" height="{h}" fill="none" stroke="#999"/>')
    for i, (hi, n) in enumerate(hist):
        share = n / total
        bh = share / peak * (h - 4)
        out.append(f'<rect x="{x0 + i * bw + 0.5:.1f}" y="{y0 + h - bh:.1f}" width="{max(bw - 1, 0.5):.1f}" '
                   f'height="{bh:.1f}" fill="{col}"><title>≤ {hi:g} ms: {n} ({share:.2%})</title></rect>')
    # Decade ticks.
    for i, (hi, _) in enumerate(hist):
        lg = math.log10(hi)
        if abs(lg - round(lg)) < 1e-6:
            x = x0 + (i + 1) * bw
            out.append(f'<line x1="{x:.1f}" y1="{y0 + h}" x2="{x:.1f}" y2="{y0 + h + 4}" stroke="#333"/>')
            out.append(f'<text x="{x:.1f}" y="{y0 + h + 15}" font-size="10" text-anchor="middle">{hi:g} ms</text>')
    out.append(f'<text x="{x0 + 2}" y="{y0 + 12}" font-size="10" fill="#555">peak {peak:.1%}</text>')
    return out


def write_svg(data, path):
    results = {str(k): v for k, v in data.get("results", {}).items()}
    if not results:
        Path(path).write_text('<svg xmlns="http://www.w3.org/2000/svg" width="400" height="40">'
                              '<text x="10" y="25">no results</text></svg>')
        return
    run = sorted(results, key=int)[0]
    ms = sorted(results[run].items())
    ms = [(n, m) for n, m in ms if not n.startswith("workers_")]
    W = 1250
    parts = []
    purchase = [(n, m) for n, m in ms if n.startswith(("redis_benchmark", "fcall", "live", "stampede", "mixed"))]
    http = [(n, m) for n, m in ms if (n, m) not in purchase]
    y = 50
    for title, group in (("Purchase path and its Redis ceilings: latency by percentile (log–log)", purchase),
                         ("HTTP paths and the bare axum ceiling: latency by percentile (log–log)", http)):
        if not group:
            continue
        chart, used = percentile_chart(group, 80, y, 820, 330, title)
        parts += chart
        y += used + 40
    hists = [(n, m) for n, m in ms if m.get("histogram_ms")]
    pw, ph, cols = 350, 150, 3
    if hists:
        parts.append(f'<text x="80" y="{y}" font-size="15" font-weight="bold">Latency histograms '
                     f'(share of requests per bucket, 10 buckets per decade; loadgen)</text>')
        y += 30
    for i, (n, m) in enumerate(hists):
        cx = 80 + (i % cols) * (pw + 40)
        cy = y + (i // cols) * (ph + 50)
        parts += histogram_panel(n, m, cx, cy, pw, ph, PALETTE[i % len(PALETTE)])
    rows = (len(hists) + cols - 1) // cols
    H = y + rows * (ph + 50) + 20
    meta = data.get("meta", {})
    head = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
            f'font-family="sans-serif"><rect width="100%" height="100%" fill="white"/>'
            f'<text x="80" y="22" font-size="13" fill="#555">flashsale load test {esc(meta.get("started", ""))}, '
            f'run {run} — {esc(meta.get("command", ""))}</text>')
    Path(path).write_text(head + "\n".join(parts) + "</svg>\n")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    d = Path(sys.argv[1])
    write_svg(json.loads((d / "results.json").read_text()), d / "latency.svg")
    print(d / "latency.svg")

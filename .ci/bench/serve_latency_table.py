#!/usr/bin/env python3
"""The Markdown table of .ci/bench/serve_latency.sh from its results folder
(runs.tsv, wrk-*.txt, bench_forward.json, meta.txt).

    python3 .ci/bench/serve_latency_table.py runs/serve-latency
"""

import json
import re
import sys
from pathlib import Path

UNITS = {"us": 1.0, "ms": 1e3, "s": 1e6, "m": 60e6, "h": 3600e6}

SCENARIOS = {
    "noop": ("GET /v2/health/live (no work: the HTTP floor)", None),
    "single": ("(a) GET /predict/risk?area=7&at=next, cache on", "forward_1_row"),
    "batch": ("(b) POST infer {\"periods\": 6}: 21 areas x 6 periods, cache on",
              "forward_126_rows"),
    "single-no-cache": ("(a) GET /predict/risk?area=7&at=next, --no-cache",
                        "forward_1_row"),
}


def micros(text):
    m = re.fullmatch(r"([0-9.]+)(us|ms|s|m|h)", text.strip())
    if not m:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(m.group(1)) * UNITS[m.group(2)]


def parse_wrk(path):
    text = Path(path).read_text()
    out = {}
    for q in ("50", "99"):
        m = re.search(rf"^\s*{q}(?:\.000)?%\s+(\S+)\s*$", text, re.M)
        if not m:
            raise SystemExit(f"{path}: no {q}% line (was wrk run with --latency?)")
        out[f"p{q}"] = micros(m.group(1))
    m = re.search(r"^Requests/sec:\s+([0-9.]+)", text, re.M)
    if not m:
        raise SystemExit(f"{path}: no Requests/sec line")
    out["rps"] = float(m.group(1))
    m = re.search(r"^\s*(\d+) requests in", text, re.M)
    out["requests"] = int(m.group(1)) if m else None
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    out["non2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    out["socket_errors"] = sum(map(int, m.groups())) if m else 0
    out["timeouts"] = int(m.group(4)) if m else 0
    return out


def fmt_us(us):
    if us >= 1e6:
        return f"{us / 1e6:.2f} s"
    if us >= 1e3:
        return f"{us / 1e3:.2f} ms"
    return f"{us:.0f} µs"


def fmt_ratio(x):
    return f"{x:.0f}×" if x >= 100 else f"{x:.1f}×"


def main():
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    out = Path(sys.argv[1])
    meta = dict(line.split("=", 1) for line in (out / "meta.txt").read_text().splitlines()
                if "=" in line)
    ref = json.loads((out / "bench_forward.json").read_text())
    runs = [line.split("\t") for line in (out / "runs.tsv").read_text().splitlines() if line]

    print(f"### Prediction service latency ({meta.get('date', '?')}, commit {meta.get('commit', '?')})")
    print()
    if meta.get("pin") == "1":
        where = ("the service pinned to core 0 (one tokio worker, `--threads 1`), wrk to "
                 "core 1 (`wrk -t1`)")
    else:
        where = ("**wrk runs on the same cores as the service** (wrk -t2, or -t1 at 1 "
                 "connection), so at 8 and 64 connections it takes CPU from the service; "
                 "service `--threads 1`, tokio's workers = cores")
    print(f"Machine: {meta.get('machine', '?')} cores; {where}. Release build. Model "
          f"`{meta.get('model', '?')}`, records `{meta.get('data', '?')}`; "
          f"wrk -d{meta.get('duration', '?')} --latency.")
    if meta.get("stall"):
        print()
        print(f"Scheduling floor of the p99: a thread timing its own gaps while "
              f"{meta['machine'].split(' ')[0]} busy loops shared the cores saw "
              f"{meta['stall']} (the service's, wrk's and the OS's threads compete "
              f"the same way at 8 and 64 connections).")
    print()
    print("| scenario | connections | requests/s | p50 | p99 | p50 / forward | p99 / forward | p99 / no-op p99 | errors |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    noop = {conns: parse_wrk(out / fname) for scenario, conns, fname in runs
            if scenario == "noop"}
    failed = []
    for scenario, conns, fname in runs:
        w = parse_wrk(out / fname)
        label, ref_key = SCENARIOS.get(scenario, (scenario, "forward_1_row"))
        r = ref[ref_key] if ref_key else None
        floor = noop.get(conns)
        errors = w["non2xx"] + w["socket_errors"]
        if w["non2xx"]:
            failed.append(f"{fname}: {w['non2xx']} non-2xx responses")
        err = "0" if not errors else (
            f"{w['non2xx']} non-2xx, {w['socket_errors']} socket"
            + (f" ({w['timeouts']} timeouts)" if w["timeouts"] else ""))
        fwd50 = fmt_ratio(w['p50'] / r['p50_us']) if r else "-"
        fwd99 = fmt_ratio(w['p99'] / r['p99_us']) if r else "-"
        vs_noop = fmt_ratio(w['p99'] / floor['p99']) if floor and r else "-"
        print(f"| {label} | {conns} | {w['rps']:,.0f} | {fmt_us(w['p50'])} | "
              f"{fmt_us(w['p99'])} | {fwd50} | {fwd99} | {vs_noop} | {err} |")
    print()
    print(f"Reference, `fedcrime-client serve --bench-forward {meta.get('forward_n', '?')} "
          f"--threads 1` in the same run (in process, no HTTP); the ratios divide by the "
          f"matching forward pass (1 row for (a), 126 rows for (b)):")
    print()
    print("| reference | p50 | p99 | mean |")
    print("|---|---:|---:|---:|")
    names = {
        "forward_1_row": "bare forward pass, 1 row",
        "forward_126_rows": "bare forward pass, 126 rows (21 areas x 6 periods)",
        "featurize_and_forward_21_areas": "featurize + forward, 21 areas at the next period (a cache miss)",
    }
    for key in sorted(ref, key=lambda k: (list(names).index(k) if k in names else 99, k)):
        t = ref[key]
        print(f"| {names.get(key, key)} | {fmt_us(t['p50_us'])} | {fmt_us(t['p99_us'])} | "
              f"{fmt_us(t['mean_us'])} |")
    if failed:
        raise SystemExit("serve_latency: " + "; ".join(failed))


if __name__ == "__main__":
    main()

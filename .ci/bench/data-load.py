#!/usr/bin/env python3
"""Benchmark: the synthetic generator, and load + clean of its output by
fedcrime, against pandas reading (and cleaning the same way) the very same file
in the same run. Every figure is the best of --repeat runs; peak RSS comes from
/usr/bin/time.

    make build
    $VIRTUAL_ENV/bin/python .ci/bench/data-load.py --rows 1000000

Needs pandas (the torch venv has it) and /usr/bin/time.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

PANDAS = r'''
import sys, time
import pandas as pd
path, mode = sys.argv[1], sys.argv[2]
t0 = time.perf_counter()
df = pd.read_csv(path, dtype={"DR_NO": str, "TIME OCC": str, "AREA": str, "Rpt Dist No": str,
                              "Mocodes": str, "Crm Cd 2": str, "Crm Cd 3": str, "Crm Cd 4": str})
if mode == "clean":
    # what fedcrime's loader does: dates, times, codes, drops, dedup, 0,0
    # imputed from the reporting district's mean, unknown ages, sort, per area
    occ = pd.to_datetime(df["DATE OCC"].str.slice(0, 10), format="%m/%d/%Y", errors="coerce")
    rpt = pd.to_datetime(df["Date Rptd"].str.slice(0, 10), format="%m/%d/%Y", errors="coerce")
    t = pd.to_numeric(df["TIME OCC"], errors="coerce")
    df["minute"] = (t // 100) * 60 + t % 100
    df["area"] = pd.to_numeric(df["AREA"], errors="coerce")
    df["rd"] = pd.to_numeric(df["Rpt Dist No"], errors="coerce")
    df["occ"], df["rpt"] = occ, rpt
    df = df[occ.notna() & rpt.notna() & (rpt >= occ) & df["area"].between(1, 21) & df["minute"].notna()]
    df = df.drop_duplicates("DR_NO")
    zero = (df["LAT"] == 0) & (df["LON"] == 0)
    lat, lon = df["LAT"].where(~zero), df["LON"].where(~zero)
    df["LAT"] = lat.fillna(lat.groupby(df["rd"]).transform("mean"))
    df["LON"] = lon.fillna(lon.groupby(df["rd"]).transform("mean"))
    df["age"] = df["Vict Age"].where(df["Vict Age"] > 0)
    df = df.sort_values(["occ", "minute", "DR_NO"])
    assert len(df.groupby("area").size()) == 21
print(f"INNER {time.perf_counter() - t0:.4f} {len(df)}")
'''


def timed(cmd, **kw):
    """Runs cmd under /usr/bin/time; returns (wall s, peak RSS MB, stdout, stderr)."""
    with tempfile.NamedTemporaryFile("r") as tf:
        t0 = time.perf_counter()
        p = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", tf.name] + cmd,
                           capture_output=True, text=True, **kw)
        wall = time.perf_counter() - t0
        if p.returncode != 0:
            sys.exit(f"failed: {' '.join(cmd)}\n{p.stderr}")
        rss_kb = int(tf.read().strip().splitlines()[-1])
    return wall, rss_kb / 1024, p.stdout, p.stderr


def inner_seconds(log):
    for line in log.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        secs = rec.get("fields", {}).get("seconds")
        if secs is not None:
            return float(secs)
    return float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", default="runs/bench")
    ap.add_argument("--sim", default="target/release/fedcrime-sim")
    a = ap.parse_args()
    os.makedirs(a.dir, exist_ok=True)
    csv = os.path.join(a.dir, f"synth-{a.rows}.csv")
    sim = [a.sim]

    def best(runs):
        return min(runs, key=lambda r: r[0])

    out = {}
    for path in (csv, csv + ".gz"):
        runs = [timed(sim + ["-q", "synth", "--rows", str(a.rows), "--seed", "1", "--out", path]) for _ in range(a.repeat)]
        w, rss, _, _ = best(runs)
        out[f"synth {os.path.basename(path)}"] = (w, rss)
        print(f"synth {a.rows} rows -> {path} ({os.path.getsize(path) / 1e6:.1f} MB): {w:.2f} s wall, peak RSS {rss:.0f} MB")
    with open(csv, "rb") as f:  # page cache
        while f.read(1 << 24):
            pass

    for path in (csv, csv + ".gz"):
        runs = []
        for _ in range(a.repeat):
            w, rss, stdout, stderr = timed(sim + ["--log-format", "json", "inspect", "--data", path, "--json"])
            report = json.loads(stdout)
            assert report["rows_kept"] == a.rows, report["rows_kept"]
            runs.append((inner_seconds(stderr), w, rss))
        inner, w, rss = min(runs)
        out[f"fedcrime {os.path.basename(path)}"] = (inner, w, rss)
        print(f"fedcrime load+clean {os.path.basename(path)}: {inner:.3f} s in-process, {w:.2f} s process, peak RSS {rss:.0f} MB")

    import pandas
    for mode in ("read", "clean"):
        runs = []
        for _ in range(a.repeat):
            w, rss, stdout, _ = timed([sys.executable, "-c", PANDAS, csv, mode])
            inner = float(stdout.split("INNER")[1].split()[0])
            runs.append((inner, w, rss))
        inner, w, rss = min(runs)
        label = "read_csv" if mode == "read" else "read_csv+clean"
        out[f"pandas {label}"] = (inner, w, rss)
        print(f"pandas {pandas.__version__} {label}: {inner:.3f} s in-process, {w:.2f} s process, peak RSS {rss:.0f} MB")

    rust = out[f"fedcrime {os.path.basename(csv)}"]
    for label in ("read_csv", "read_csv+clean"):
        p = out[f"pandas {label}"]
        print(f"ratio pandas {label} / fedcrime load+clean: {p[0] / rust[0]:.1f}x in-process, {p[1] / rust[1]:.1f}x process")


if __name__ == "__main__":
    main()

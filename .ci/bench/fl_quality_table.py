#!/usr/bin/env python3
"""The issue-12 quality table from .ci/bench/fl_quality.sh's outputs.

For every <set>/<task>-<model> study: the test headline (macro-F1 for risk,
MAE for counts) of each method at its best validation step (metrics.csv's
last `test_*_at_best` per method), the best naive baseline (report.md), the
ratio FedAvg / centralized and whether the goals hold (>= 0.98x macro-F1,
<= 1.05x MAE; every model above its best naive baseline)."""
import csv
import re
import sys
from pathlib import Path


def selected(study: Path):
    rows = list(csv.DictReader(open(study / "metrics.csv")))
    col = next(k for k in rows[0] if k.endswith("_at_best"))
    last = {}
    for r in rows:
        last[r["method"]] = r
    return {m: (float(r[col]), int(r["best_step"]), int(r["step"])) for m, r in last.items()}


def naive(study: Path, higher):
    best = None
    for line in open(study / "report.md"):
        m = re.match(r"\| (\S+) \(naive\) \| - \| - \| - \| ([0-9.]+) \|", line)
        if m:
            v = float(m.group(2))
            if best is None or (v > best[1] if higher else v < best[1]):
                best = (m.group(1), v)
    return best


def main(out: Path):
    print("| data | task | model | centralized | data-parallel | FedAvg | best other | best naive | FedAvg / central | goals |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---|")
    for study in sorted(p for p in out.glob("*/*") if p.is_dir() and not p.name.endswith("-other")):
        if not (study / "report.md").is_file():
            continue
        task, model = study.name.split("-", 1)
        higher = task == "risk"
        s = selected(study)
        other = {}
        o = study.parent / (study.name + "-other")
        if (o / "metrics.csv").is_file():
            other = selected(o)
        c = s.get("centralized")
        dp = next((v for k, v in s.items() if k.startswith("data-parallel")), None)
        fed = s.get("fedavg")
        n = naive(study, higher)
        fmt = lambda v: f"{v[0]:.4f} (step {v[1]}/{v[2]})" if v else "-"
        oth = ", ".join(f"{k} {fmt(v)}" for k, v in other.items()) or "-"
        ratio = fed[0] / c[0] if fed and c else float("nan")
        goal_ratio = ratio >= 0.98 if higher else ratio <= 1.05
        # Compared at the 4 decimals shown: a tie is not a win.
        beats = lambda v: v is not None and n is not None and (
            round(v[0], 4) > round(n[1], 4) if higher else round(v[0], 4) < round(n[1], 4))
        misses = []
        if not goal_ratio:
            misses.append("ratio")
        for name, v in [("central", c), ("fedavg", fed)]:
            if not beats(v):
                misses.append(f"{name} <= naive")
        goals = "met" if not misses else "missed: " + ", ".join(misses)
        print(f"| {study.parent.name} | {task} | {model} | {fmt(c)} | {fmt(dp)} | {fmt(fed)} | {oth} | "
              f"{n[0] + ' ' + format(n[1], '.4f') if n else '-'} | {ratio:.3f}x | {goals} |")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/fl-quality"))

#!/usr/bin/env python3
"""Markdown tables of `.ci/bench/explain_fairness.sh`'s outputs.

Usage: python3 .ci/bench/explain_fairness_table.py [OUT]
"""

import json
import os
import re
import sys

OUT = sys.argv[1] if len(sys.argv) > 1 else "runs/explain-fairness"
SETS = ["la_crime_2020_sample", "la_crime_2024_02"]
MODELS = ["risk-dnn", "counts-lstm", "counts-gat-tcn"]


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except OSError:
        return None


def baselines(report):
    """Test-split headline of each naive baseline from train's report.md."""
    try:
        text = open(report).read()
    except OSError:
        return {}
    test = text.split("## Test split")[1].split("##")[0]
    lines = [l for l in test.splitlines() if l.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    col = header.index("macro_f1") if "macro_f1" in header else header.index("mae")
    out = {}
    for l in lines[2:]:
        cells = [c.strip() for c in l.strip("|").split("|")]
        out[cells[0].strip("*")] = float(cells[col])
    return out


def top(s, k=3):
    return ", ".join(f"{r['group']} ({r['mean_abs']:.3g})" for r in s["ranking"][:k])


print("### Explanations\n")
print("| data | model | method (samples) | top 3 features, mean \\|SHAP\\| | max additivity error | seconds | x one inference pass | GradientSHAP 1,000 samples: seconds, x inference, max additivity error |")
print("|---|---|---|---|---:|---:|---:|---|")
for s in SETS:
    for m in MODELS:
        e = load(f"{OUT}/{s}/{m}/explain/summary.json")
        g = load(f"{OUT}/{s}/{m}/explain-gradient-1000/summary.json")
        if not e:
            continue
        grad = (
            f"{g['seconds']:.1f} s, {g['cost_ratio']:.0f}x, {g['summary']['max_additivity_error']:.1e}"
            if g
            else "-"
        )
        print(
            f"| {s} | {m} | {e['method']} ({e['summary']['rows']}) | {top(e)} | "
            f"{e['summary']['max_additivity_error']:.1e} | {e['seconds']:.1f} | {e['cost_ratio']:.0f} | {grad} |"
        )

print("\n### Fairness by bureau (test split)\n")
print("| data | model | score | high risk: DP difference / ratio | high risk: EO difference / ratio | per-level max DP difference | counts: MAE spread / bias spread |")
print("|---|---|---:|---|---|---:|---|")
for s in SETS:
    for m in MODELS:
        f = load(f"{OUT}/{s}/{m}/fairness/fairness.json")
        if not f:
            continue
        if f["risk"]:
            h = f["risk"]["high_risk"]
            lv = max(b["demographic_parity_difference"] for b in f["risk"]["per_level"])
            r = lambda v: "-" if v is None else f"{v:.3f}"
            print(
                f"| {s} | {m} | macro-F1 {f['macro_f1']:.4f} | {h['demographic_parity_difference']:.3f} / {r(h['demographic_parity_ratio'])} | "
                f"{h['equalized_odds_difference']:.3f} / {r(h['equalized_odds_ratio'])} | {lv:.3f} | - |"
            )
        else:
            c = f["counts"]
            print(f"| {s} | {m} | MAE {f['mae']:.4f} | - | - | - | {c['mae_difference']:.3f} / {c['bias_difference']:.3f} |")

print("\n### Fairness-aware training: dnn risk, groups by bureau (test split, best validation epoch)\n")
print("| data | training | macro-F1 | high risk DP diff | high risk EO diff | max per-level DP diff | max per-level EO diff |")
print("|---|---|---:|---:|---:|---:|---:|")
for s in SETS:
    root = f"{OUT}/{s}/tradeoff"
    if not os.path.isdir(root):
        continue
    for setting in ["none", "reweigh", "penalty-0.3", "penalty-1", "penalty-3", "penalty-eo-1", "penalty-eo-3"]:
        f = load(f"{root}/{setting}/fairness/fairness.json")
        if not f:
            continue
        h = f["risk"]["high_risk"]
        lv = f["risk"]["per_level"]
        print(
            f"| {s} | {setting} | {f['macro_f1']:.4f} | {h['demographic_parity_difference']:.3f} | {h['equalized_odds_difference']:.3f} | "
            f"{max(b['demographic_parity_difference'] for b in lv):.3f} | {max(b['equalized_odds_difference'] for b in lv):.3f} |"
        )
    b = baselines(f"{root}/none/report.md")
    for name, v in b.items():
        if name != "dnn":
            print(f"| {s} | baseline: {name} | {v:.4f} | | | | |")

#!/usr/bin/env bash
# Issue 6: seconds per federated round without training, for the one-machine
# federation (`fedcrime-sim bench rounds`), next to same-run references: a
# memcpy of the round's model bytes (to every sampled station and back) and
# a plain TCP loopback copy of the same bytes. 21 stations at ~20k, ~1M and
# ~10M parameters over QUIC + mutual TLS and in memory, then 1,000 virtual
# stations with 100 sampled per round (memory, then QUIC).
#
#   cargo build --release -p fedcrime-sim && .ci/bench/sim-rounds.sh
#
# Prints a Markdown table (see BENCHMARKS.md). Flower 1.42's simulation on
# the same machine, no training: 0.20 / 0.54 / 2.73 s per round for 21
# clients at 20k / 1M / 10M, 0.91 s per round for 1,000 clients (100 sampled).
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-target/release/fedcrime-sim}
runs() {
  for p in 20k 1m 10m; do
    for t in quic memory; do
      "$BIN" bench rounds --params "$p" --transport "$t" --rounds 6 --json
    done
  done
  "$BIN" bench rounds --params 20k --stations 1000 --fraction 0.1 --transport memory --rounds 11 --json
  "$BIN" bench rounds --params 20k --stations 1000 --fraction 0.1 --transport quic --rounds 6 --json
}
runs 2>/dev/null | python3 -c '
import json, sys
flower = {(21, 20189): 0.20, (21, 1000697): 0.54, (21, 10003449): 2.73, (1000, 20189): 0.91}
print("| transport | stations (sampled) | params | s / round | slowest station s | overhead s | MB / round | memcpy s | TCP s | overhead / memcpy | overhead / TCP | peak RSS MiB | Flower s / round | Flower / fedcrime |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for line in sys.stdin:
    r = json.loads(line)
    f = flower.get((r["stations"], r["params"]))
    print("| {transport} | {stations} ({sampled}) | {params} | {round_s:.4f} | {slowest_fit_s:.4f} | {overhead_s:.4f} | {mb:.1f} | {memcpy_s:.4f} | {tcp_s:.4f} | {overhead_vs_memcpy:.1f} | {overhead_vs_tcp:.2f} | {peak_rss_mib:.0f} | {fl} | {ratio} |".format(
        mb=r["bytes_per_round"] / 1e6,
        fl="-" if f is None else "%.2f" % f,
        ratio="-" if f is None else "%.1fx" % (f / r["round_s"]),
        **r))
'

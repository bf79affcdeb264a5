#!/usr/bin/env bash
# Issue 14 on the real LAPD samples: for dnn (risk), lstm (counts) and
# gat-tcn (counts) on the 2020 sample and the Feb 2024 month, train with the
# defaults, explain (the default method on 200 test samples, 20 with 10
# background rows for gat-tcn, and GradientSHAP on 1,000 for the cost ratio) and audit fairness by bureau; then the
# fairness-aware training trade-off of the dnn risk model (reweighing and
# parity penalties). Finished outputs are kept, so a rerun resumes.
#
#   cargo build --release -p fedcrime-sim && .ci/bench/explain_fairness.sh [OUT]
#   python3 .ci/bench/explain_fairness_table.py OUT   # the markdown tables
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-target/release/fedcrime-sim}
D=../shared/data/la-crime
OUT=${1:-runs/explain-fairness}
for set in la_crime_2020_sample la_crime_2024_02; do
  [ -f "$D/$set.csv" ] || { echo "skipped: $D/$set.csv is absent"; continue; }
  for tm in risk:dnn counts:lstm counts:gat-tcn; do
    t=${tm%%:*}; m=${tm##*:}; o=$OUT/$set/$t-$m
    [ -f "$o/model.safetensors" ] || "$BIN" -q train --data "$D/$set.csv" --task "$t" --model "$m" --no-progress --out "$o"
    # gat-tcn runs the whole city per sample and its 10 groups are explained
    # exactly (1,024 coalitions): fewer samples (and explain's default of 10
    # background rows for it).
    # GradientSHAP takes one backward pass per output: gat-tcn has 168 (21
    # areas x 8 categories), so it gets 20 draws per sample instead of 200.
    small=(); draws=()
    [ "$m" = gat-tcn ] && small=(--samples 20 --background 10) && draws=(--nsamples 20)
    [ -f "$o/explain/summary.json" ] || "$BIN" -q explain --model "$o" --no-progress "${small[@]}"
    [ -f "$o/explain-gradient-1000/summary.json" ] || "$BIN" -q explain --model "$o" --method gradient --samples 1000 "${draws[@]}" --no-progress --out "$o/explain-gradient-1000"
    [ -f "$o/fairness/fairness.json" ] || "$BIN" -q fairness --model "$o" --groups bureau
  done
  # The trade-off: the same split and initial weights, fairness-aware training.
  for f in none reweigh penalty:0.3 penalty:1 penalty:3 penalty-eo:1 penalty-eo:3; do
    o=$OUT/$set/tradeoff/${f/:/-}
    [ -f "$o/model.safetensors" ] || "$BIN" -q train --data "$D/$set.csv" --task risk --model dnn --fairness "$f" --no-progress --out "$o"
    [ -f "$o/fairness/fairness.json" ] || "$BIN" -q fairness --model "$o" --groups bureau
  done
done

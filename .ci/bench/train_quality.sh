#!/usr/bin/env bash
# Quality of every model against its naive baselines on the real LAPD samples
# (issue 3): for each sample and (task, model), one `fedcrime-sim train` with
# the defaults and one `fedcrime-sim tune` (random subset of the paper's grid,
# chosen on validation). Writes OUT/<sample>/<task>-<model>/{report.md,...}
# and OUT/<sample>/<task>-<model>-tune/{tune.md,tune.csv}, then prints a summary.
#
#   cargo build --release -p fedcrime-sim && .ci/bench/train_quality.sh [OUT]
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-target/release/fedcrime-sim}
D=../shared/data/la-crime
OUT=${1:-runs/quality}
TRIALS=${TRIALS:-8}
THREADS=${THREADS:-1}
for f in la_crime_2024_02 la_crime_2020_sample; do
  [ -f "$D/$f.csv" ] || { echo "skipped: $D/$f.csv is absent"; continue; }
  mkdir -p "$OUT/$f"
  for tm in risk:dnn risk:lstm counts:dnn counts:lstm counts:gat-tcn; do
    t=${tm%%:*}; m=${tm##*:}; o=$OUT/$f/$t-$m
    # Finished outputs are kept: rerunning resumes.
    [ -f "$o/report.md" ] ||
      "$BIN" -q train --task "$t" --model "$m" --data "$D/$f.csv" --threads "$THREADS" --out "$o"
    [ -f "$o-tune/tune.md" ] ||
      "$BIN" -q tune --task "$t" --model "$m" --data "$D/$f.csv" --threads "$THREADS" \
        --trials "$TRIALS" --epochs 60 --patience 8 --out "$o-tune"
  done
done
for r in "$OUT"/*/*/report.md; do
  echo "### $r"
  sed -n '/^| predictor/,/^$/p' "$r" | grep -v '^|---'
  grep -E '^The model|^- ran' "$r"
done
for r in "$OUT"/*/*-tune/tune.md; do
  echo "### $r (best by validation)"
  sed -n '5,7p' "$r"
done

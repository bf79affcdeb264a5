#!/usr/bin/env bash
# The learning-quality table of issue 12: every model x task on the real LAPD
# samples and the 1M-row synthetic set, each method at its best validation
# step, with the defaults a new user gets (`fedcrime-sim simulate` without
# tuning flags): FedAvg, centralized and data-parallel in one study, plus
# the best other strategy (tuned on validation, see BENCHMARKS.md) with
# --no-centralized. Natural partition (one station per LAPD area); gat-tcn
# federates by bureau. Finished outputs are kept, so a rerun resumes.
#
#   cargo build --release -p fedcrime-sim && .ci/bench/fl_quality.sh [OUT] [COMBOS...]
#   python3 .ci/bench/fl_quality_table.py OUT   # the markdown table
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-target/release/fedcrime-sim}
D=../shared/data/la-crime
OUT=${1:-runs/fl-quality}
shift || true
COMBOS=${*:-risk:dnn risk:lstm counts:dnn counts:lstm counts:gat-tcn}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
other() { case $1 in risk) echo "fedadam:eta=0.01" ;; counts) echo "fedprox:mu=1" ;; esac; }
for set in la_crime_2024_02 la_crime_2020_sample synthetic-1m; do
  case $set in
    synthetic-1m) src=(--rows 1000000) ;;
    *) [ -f "$D/$set.csv" ] || { echo "skipped: $D/$set.csv is absent"; continue; }
       src=(--data "$D/$set.csv") ;;
  esac
  for tm in $COMBOS; do
    t=${tm%%:*}; m=${tm##*:}; o=$OUT/$set/$t-$m
    part=()
    [ "$m" = gat-tcn ] && part=(--partition bureau)
    [ -f "$o/report.md" ] ||
      "$BIN" -q simulate "${src[@]}" --task "$t" --model "$m" "${part[@]}" --transport memory --out "$o"
    s=$(other "$t")
    [ -f "$o-other/report.md" ] ||
      "$BIN" -q simulate "${src[@]}" --task "$t" --model "$m" "${part[@]}" --transport memory \
        --strategy "$s" --no-centralized --out "$o-other"
  done
done
python3 "$(dirname "$0")/fl_quality_table.py" "$OUT"

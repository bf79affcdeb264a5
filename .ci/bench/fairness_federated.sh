#!/usr/bin/env bash
# Fairness across precincts on the real Feb 2024 month (dnn risk, one station
# per LAPD area, memory transport, the defaults otherwise): FedAvg against
# q-FedAvg (q = 1, 5) judged by every station's own test macro-F1 of the
# selected model (station-scores.csv), and a fairness-aware federation
# (penalty:1 at every station) with federated explanations (--explain 100).
# Finished outputs are kept, so a rerun resumes.
#
#   cargo build --release -p fedcrime-sim && .ci/bench/fairness_federated.sh [OUT]
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-target/release/fedcrime-sim}
D=../shared/data/la-crime/la_crime_2024_02.csv
OUT=${1:-runs/fairness-federated}
[ -f "$D" ] || { echo "skipped: $D is absent"; exit 0; }
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
run() {
  local name=$1; shift
  [ -f "$OUT/$name/report.md" ] || "$BIN" -q simulate --data "$D" --transport memory --no-centralized --out "$OUT/$name" "$@"
}
run fedavg --strategy fedavg
run qfedavg-q0.5 --strategy qfedavg:q=0.5
run qfedavg-q1 --strategy qfedavg:q=1
run qfedavg-q5 --strategy qfedavg:q=5
run fedavg-penalty1-explain --strategy fedavg --fairness penalty:1 --explain 100
run fedavg-reweigh --strategy fedavg --fairness reweigh
for d in "$OUT"/*/; do
  [ -f "$d/fairness/fairness.json" ] || "$BIN" -q fairness --model "$d" --groups bureau
  echo "== $(basename "$d")"
  grep -A2 "^## Per-station" "$d/report.md" | tail -1
  grep -m1 "^| \*\*" "$d/report.md" || true
  jq -c '{macro_f1, high_risk_dpd: .risk.high_risk.demographic_parity_difference, high_risk_eod: .risk.high_risk.equalized_odds_difference, max_level_dpd: ([.risk.per_level[].demographic_parity_difference] | max)}' "$d/fairness/fairness.json"
done

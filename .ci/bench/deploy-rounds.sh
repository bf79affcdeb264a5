#!/usr/bin/env bash
# Issue 16: a real deployment on one machine (fedcrime-server + N fedcrime-client
# processes, echoing stations); see deploy_rounds.py for what is measured.
#
#   cargo build --release -p fedcrime-server -p fedcrime-client -p fedcrime-sim -p fedcrime-certs
#   .ci/bench/deploy-rounds.sh [--stations 21] [--rounds 6] [--sizes 20k,1m,10m] [--json]
set -euo pipefail
exec python3 "$(dirname "$0")/deploy_rounds.py" "$@"

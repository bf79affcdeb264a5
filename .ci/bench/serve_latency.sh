#!/usr/bin/env bash
# Latency of the station's prediction service (`fedcrime-client serve`,
# release build, --threads 1) under wrk, against the bare forward pass of
# its model measured in the same run (`serve --bench-forward`):
#
#   (a) single predictions  GET /predict/risk?area=7&at=next
#   (b) a batch of 21 areas x 6 periods  POST /v2/models/fedcrime/infer {"periods": 6}
#
# at 1, 8 and 64 connections with the prediction cache on (the default), and
# (a) again with --no-cache at 1 and 64 connections.
#
#   .ci/bench/serve_latency.sh [MODEL] [DATA] [OUT]
#
#   MODEL  a folder with model.safetensors (default runs/x-dnn-risk-2020 when
#          present, else one trained into OUT/model with fedcrime-sim train
#          on DATA)
#   DATA   the station's records (default ../shared/data/la-crime/la_crime_2020_sample.csv)
#   OUT    results (default runs/serve-latency): wrk-*.txt (raw wrk output),
#          bench_forward.json, serve-*.log, runs.tsv and table.md
#
# Environment: DURATION (wrk -d, default 10s), CONNS (default "1 8 64"),
# FORWARD_N (--bench-forward N, default 2000), BIN (default target/release),
# PIN (default 1 on 2+ cores): the service on core 0 with one tokio worker,
# wrk on core 1 with one thread, so the two do not take CPU from each
# other; PIN=0 lets both float over every core.
#
# Each connection count also measures GET /v2/health/live, which does no
# work: the HTTP floor of this machine, to read the prediction rows against.
set -euo pipefail
cd "$(dirname "$0")/../.."

BIN=${BIN:-target/release}
DATA=${2:-../shared/data/la-crime/la_crime_2020_sample.csv}
OUT=${3:-runs/serve-latency}
DURATION=${DURATION:-10s}
CONNS=${CONNS:-1 8 64}
FORWARD_N=${FORWARD_N:-2000}
if [ "$(nproc)" -ge 2 ]; then PIN=${PIN:-1}; else PIN=0; fi
if [ "$PIN" = 1 ]; then
  command -v taskset >/dev/null || { echo "serve_latency: taskset missing (util-linux); PIN=0" >&2; PIN=0; }
fi
if [ "$PIN" = 1 ]; then
  ON_SERVICE=(env TOKIO_WORKER_THREADS=1 taskset -c 0)
  ON_WRK=(taskset -c 1)
else
  ON_SERVICE=()
  ON_WRK=()
fi
# The service is told --threads 1; nothing else should change libtorch's threads.
unset OMP_NUM_THREADS MKL_NUM_THREADS

die() { echo "serve_latency: error: $*" >&2; exit 1; }
command -v wrk >/dev/null || die "wrk is not installed (apt-get install wrk)"
command -v curl >/dev/null || die "curl is not installed"
[ -f "$DATA" ] || die "no data file $DATA"

CLIENT=$BIN/fedcrime-client
SIM=$BIN/fedcrime-sim
build() {
  if [ ! -x "$BIN/$1" ]; then
    [ "$BIN" = target/release ] || die "$BIN/$1 is missing"
    echo "building $1 (release)..." >&2
    eval "$(make -s env)"
    cargo build --release -p "$1"
  fi
}
build fedcrime-client

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
if [ -n "${1:-}" ]; then
  MODEL=$1
elif [ -f runs/x-dnn-risk-2020/model.safetensors ]; then
  MODEL=runs/x-dnn-risk-2020
else
  MODEL=$OUT/model
  if [ ! -f "$MODEL/model.safetensors" ]; then
    build fedcrime-sim
    echo "training a risk DNN on $DATA into $MODEL..." >&2
    "$SIM" -q train --data "$DATA" --task risk --model dnn --no-progress --out "$MODEL"
  fi
fi
[ -e "$MODEL" ] || die "no model $MODEL"

rm -f "$OUT"/wrk-*.txt "$OUT"/serve-*.log "$OUT"/runs.tsv "$OUT"/table.md "$OUT"/bench_forward.json
WORK=$(mktemp -d)
PID=
cleanup() {
  if [ -n "$PID" ] && kill -0 "$PID" 2>/dev/null; then
    kill "$PID" 2>/dev/null || true
    wait "$PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cat >"$WORK/batch.lua" <<'EOF'
wrk.method = "POST"
wrk.body = '{"periods": 6}'
wrk.headers["Content-Type"] = "application/json"
EOF

# start NAME [FLAGS...]: the service on a port the kernel picks; sets PORT and PID.
start() {
  local name=$1; shift
  local log=$OUT/serve-$name.log
  rm -f "$WORK/incidents.store"
  NO_COLOR=1 "${ON_SERVICE[@]}" "$CLIENT" serve --model "$MODEL" --data "$DATA" --listen 127.0.0.1:0 \
    --store "$WORK/incidents.store" --threads 1 --log-level warn "$@" >"$log" 2>&1 &
  PID=$!
  PORT=
  for _ in $(seq 600); do
    kill -0 "$PID" 2>/dev/null || { cat "$log" >&2; die "the service exited (log $log)"; }
    PORT=$(sed -n 's|.*serving .* on http://127\.0\.0\.1:\([0-9]*\).*|\1|p' "$log" | head -1)
    if [ -n "$PORT" ] && [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/v2/health/ready")" = 200 ]; then
      return 0
    fi
    sleep 0.1
  done
  die "the service was not ready after 60 s (log $log)"
}

stop() {
  kill "$PID" 2>/dev/null || true
  wait "$PID" 2>/dev/null || true
  PID=
}

# check NAME EXPECTED_PREDICTIONS CURL_ARGS...: one request answers 200 with
# that many predictions (and warms the service up).
check() {
  local what=$1 want=$2; shift 2
  local body code
  body=$(curl -s -w '\n%{http_code}' "$@")
  code=${body##*$'\n'}
  body=${body%$'\n'*}
  [ "$code" = 200 ] || die "$what: HTTP $code: $body"
  local n
  n=$(printf '%s' "$body" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["predictions"]))')
  [ "$n" = "$want" ] || die "$what: $n predictions, expected $want: ${body:0:300}"
}

# bench SCENARIO CONNS URL [wrk args...]
bench() {
  local scenario=$1 c=$2 url=$3; shift 3
  local t=$(( c < 2 ? c : 2 ))   # wrk needs connections >= threads
  [ "$PIN" = 1 ] && t=1            # one core for wrk
  local f=$OUT/wrk-$scenario-c$c.txt
  echo "${ON_WRK[*]} wrk -t$t -c$c -d$DURATION --latency $* $url" >"$f"
  "${ON_WRK[@]}" wrk -t"$t" -c"$c" -d"$DURATION" --latency "$@" "$url" >>"$f" 2>&1 \
    || { cat "$f" >&2; die "wrk failed ($f)"; }
  if grep -q "Non-2xx or 3xx responses" "$f"; then
    cat "$f" >&2
    die "$scenario at $c connections: the service answered non-2xx ($f)"
  fi
  grep -q "Requests/sec" "$f" || { cat "$f" >&2; die "no result in $f"; }
  printf '%s\t%s\t%s\n' "$scenario" "$c" "$(basename "$f")" >>"$OUT/runs.tsv"
  echo "  $scenario c=$c: $(grep 'Requests/sec' "$f" | tr -s ' ')" >&2
}

echo "reference: --bench-forward $FORWARD_N..." >&2
"$CLIENT" serve --model "$MODEL" --data "$DATA" --threads 1 --log-level warn \
  --bench-forward "$FORWARD_N" >"$OUT/bench_forward.json" 2>"$OUT/serve-bench-forward.log" \
  || { cat "$OUT/serve-bench-forward.log" >&2; die "--bench-forward failed"; }

start cache
SINGLE="http://127.0.0.1:$PORT/predict/risk?area=7&at=next"
BATCH="http://127.0.0.1:$PORT/v2/models/fedcrime/infer"
check "GET /predict/risk" 1 "$SINGLE"
check "POST infer {\"periods\": 6}" 126 -H 'Content-Type: application/json' -d '{"periods": 6}' "$BATCH"
for c in $CONNS; do bench noop "$c" "http://127.0.0.1:$PORT/v2/health/live"; done
for c in $CONNS; do bench single "$c" "$SINGLE"; done
for c in $CONNS; do bench batch "$c" "$BATCH" -s "$WORK/batch.lua"; done
stop

start no-cache --no-cache
SINGLE="http://127.0.0.1:$PORT/predict/risk?area=7&at=next"
check "GET /predict/risk (--no-cache)" 1 "$SINGLE"
for c in 1 64; do bench single-no-cache "$c" "$SINGLE"; done
stop

# How long this machine deschedules a thread when more threads are runnable
# than there are cores (as wrk + the service are at 8 and 64 connections):
# the floor under the p99 of those rows.
STALL=$(python3 - "$(nproc)" <<'EOF'
import subprocess, sys, time
busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(int(sys.argv[1]))]
try:
    end = time.perf_counter() + 3
    last = time.perf_counter()
    worst, n = 0.0, 0
    while (now := time.perf_counter()) < end:
        gap = now - last
        if gap > 0.005:
            n += 1
            worst = max(worst, gap)
        last = now
    print(f"{n} stalls over 5 ms in 3 s, the longest {worst * 1e3:.0f} ms")
finally:
    for p in busy:
        p.kill()
EOF
)
{
  echo "stall=$STALL"
  echo "pin=$PIN"
  echo "machine=$(nproc) x $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)"
  echo "model=$MODEL"
  echo "data=$DATA"
  echo "commit=$(git rev-parse --short HEAD 2>/dev/null || echo ?)$(git diff --quiet HEAD -- client common 2>/dev/null || echo '+changes')"
  echo "duration=$DURATION"
  echo "forward_n=$FORWARD_N"
  echo "date=$(date -u +%Y-%m-%dT%H:%MZ)"
} >"$OUT/meta.txt"
python3 .ci/bench/serve_latency_table.py "$OUT" | tee "$OUT/table.md"

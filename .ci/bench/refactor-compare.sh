#!/usr/bin/env bash
# Issue 10: the crate split must not slow anything down. Runs `bench rounds`,
# `bench aggregation` and `bench train` of two builds back to back on the same
# machine, alternating (before, after, before, after), and prints each pair.
#
#   BEFORE=/path/to/old/fedcrime-sim AFTER=target/release/fedcrime-sim \
#     .ci/bench/refactor-compare.sh
#
# Each figure is the build's own ratio to a reference measured in the same
# run (memcpy, plain TCP, PyTorch), so the two builds can be compared even on
# a noisy shared machine; the raw seconds are printed too.
set -euo pipefail
cd "$(dirname "$0")/../.."
BEFORE=${BEFORE:?the old fedcrime-sim binary}
AFTER=${AFTER:-target/release/fedcrime-sim}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
rounds() {
  "$1" bench rounds --params 20k --transport quic --rounds 6 --json -q
  "$1" bench rounds --params 1m --transport memory --rounds 6 --json -q
  "$1" bench rounds --params 1m --transport quic --rounds 6 --json -q
  "$1" bench rounds --params 20k --stations 1000 --fraction 0.1 --transport memory --rounds 11 --json -q
}
for pass in 1 2; do
  for side in before after; do
    bin=$BEFORE; [ "$side" = after ] && bin=$AFTER
    rounds "$bin" | sed "s/^/$side pass$pass rounds /"
    "$bin" bench aggregation --params 1000000 --json -q | sed "s/^/$side pass$pass aggregation /"
    "$bin" bench train --cases dnn,lstm --rounds 1 --rows 100000 -q 2>/dev/null | sed "s/^/$side pass$pass train /"
  done
done

#!/usr/bin/env bash
# Framework overhead per federated round: 21 stations over QUIC + mutual TLS
# on loopback at ~20k, ~1M and ~10M parameters, stations that do not train
# (their update is the model they received), against a plain TCP loopback
# round trip of the same bytes measured in the same run.
#
#   .ci/bench/round-overhead.sh
#
# Prints a Markdown table (see BENCHMARKS.md).
set -euo pipefail
cd "$(dirname "$0")/../.."
eval "$(make -s env)"
cargo test --release -p fedcrime-tests --test e2e -- --ignored --nocapture --test-threads 1 bench_round_overhead

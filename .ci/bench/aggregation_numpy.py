#!/usr/bin/env python3
"""NumPy reference for `fedcrime-common`'s aggregation benchmark (fl::bench).

Aggregates UPDATES random float32 models of PARAMS values the way Python
federated frameworks do it with NumPy (weighted sum with a reduce over
per-update scaled copies, `np.median(axis=0)`, Krum with a norm per pair),
next to a memcpy of the same bytes (`np.copyto`) measured in the same run.

    $VIRTUAL_ENV/bin/python .ci/bench/aggregation_numpy.py [PARAMS ...]
"""
import sys
import time
from functools import reduce

import numpy as np


def fedavg(updates, weights):
    total = sum(weights)
    scaled = [u * w for u, w in zip(updates, weights)]
    return reduce(np.add, scaled) / total


def fedmedian(updates):
    return np.median(np.stack(updates), axis=0)


def krum(updates, byzantine=1):
    k = len(updates)
    d = np.zeros((k, k))
    for i in range(k):
        for j in range(i + 1, k):
            d[i, j] = d[j, i] = np.linalg.norm(updates[i] - updates[j]) ** 2
    closest = max(1, k - byzantine - 2)
    scores = [np.sort(np.delete(d[i], i))[:closest].sum() for i in range(k)]
    return updates[int(np.argmin(scores))]


def median_time(f, repeats):
    f()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def main():
    sizes = [int(a) for a in sys.argv[1:]] or [1_000_000, 10_000_000]
    k = 21
    rng = np.random.default_rng(1)
    print("| strategy | params | updates | aggregate ms | memcpy ms | ratio |")
    print("|---|---:|---:|---:|---:|---:|")
    for n in sizes:
        updates = [rng.uniform(-1, 1, n).astype(np.float32) for _ in range(k)]
        weights = [100 + 10 * i for i in range(k)]
        dst = np.empty(n, dtype=np.float32)
        repeats = 5 if n <= 1_000_000 else 3

        def copy():
            for u in updates:
                np.copyto(dst, u)

        memcpy = median_time(copy, repeats)
        for name, f in [
            ("fedavg", lambda: fedavg(updates, weights)),
            ("fedmedian", lambda: fedmedian(updates)),
            ("krum:byzantine=1", lambda: krum(updates)),
        ]:
            t = median_time(f, 1 if name != "fedavg" and n > 1_000_000 else repeats)
            print(f"| {name} | {n} | {k} | {t * 1e3:.2f} | {memcpy * 1e3:.2f} | {t / memcpy:.2f} |")


if __name__ == "__main__":
    main()

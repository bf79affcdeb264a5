#!/usr/bin/env python3
"""Cross-check of `fedcrime-sim explain` against the `shap` package.

Loads a dnn saved by `fedcrime-sim train` (model.safetensors, read with
numpy and run in PyTorch), the explanation's problem.json (the explained
rows, the background and the feature groups) and values.csv (fedcrime's
values), and recomputes the values with shap's KernelExplainer.

Grouped features: shap explains a function of G group switches,
g(z) = mean over background rows b of f(x with group k from x where z_k = 1,
from b where z_k = 0), against an all-zero background, at z = 1. That is the
interventional coalition value fedcrime uses, so with every coalition
enumerated (nsamples >= 2^G - 2) both compute the exact Shapley values and
must agree up to float32 rounding; with sampling, up to the sampling error.

Not in CI (it needs `pip install shap` in the PyTorch virtualenv).

Usage:
  fedcrime-sim explain --model DIR --method kernel --nsamples 131070 \
      --samples 10 --background 10 --out DIR/explain-check
  python3 .ci/bench/shap_crosscheck.py DIR DIR/explain-check [NSAMPLES]
Prints one JSON line: the largest absolute difference, the additivity
errors of both, and the seconds each took.
"""

import csv
import json
import struct
import sys
import time

import numpy as np
import shap
import torch


def load_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    meta = header.pop("__metadata__", {})
    tensors = {}
    for name, t in header.items():
        assert t["dtype"] == "F32", f"{name}: {t['dtype']}"
        a, b = t["data_offsets"]
        tensors[name] = torch.from_numpy(
            np.frombuffer(data[a:b], dtype=np.float32).reshape(t["shape"]).copy()
        )
    return tensors, meta


def dnn(tensors, config):
    """The fedcrime dnn: hidden Linear -> ReLU layers, a linear head (risk:
    softmax of the logits is what is explained)."""
    layers = config["layers"]
    hidden = [(tensors[f"hidden.{i}.weight"], tensors[f"hidden.{i}.bias"]) for i in range(layers)]
    head = (tensors["head.weight"], tensors["head.bias"])
    area = tensors.get("area.weight")

    def f(x):
        with torch.no_grad():
            # The flat row is the features, then the sequence view, which
            # the dnn does not read.
            t = torch.from_numpy(np.asarray(x, dtype=np.float32))[:, : config["input_dim"]]
            h = t
            for w, b in hidden:
                h = torch.relu(h @ w.T + b)
            out = h @ head[0].T + head[1]
            if area is not None:
                out = out + t @ area.T
            if config["task"] == "risk":
                return torch.softmax(out, -1).numpy().astype(np.float64)
            return torch.exp(out.clamp(max=20.0)).numpy().astype(np.float64)

    return f


def main():
    torch.set_num_threads(1)
    model_dir, explain_dir = sys.argv[1], sys.argv[2]
    nsamples = sys.argv[3] if len(sys.argv) > 3 else None
    tensors, meta = load_safetensors(f"{model_dir}/model.safetensors")
    config = json.loads(meta["fedcrime.model_config"])
    assert config["kind"] == "dnn", "the cross-check rebuilds the dnn only"
    f = dnn(tensors, config)
    p = json.load(open(f"{explain_dir}/problem.json"))
    rows = np.asarray(p["rows"], dtype=np.float32)
    bg = np.asarray(p["background"], dtype=np.float32)
    w = np.asarray(p["background_weights"], dtype=np.float64)
    w = w / w.sum()
    groups = [g["columns"] for g in p["groups"]]
    names = [g["name"] for g in p["groups"]]
    G = len(groups)
    dim = p["dim"]
    member = np.zeros((G, dim), dtype=np.float32)
    for k, cols in enumerate(groups):
        member[k, cols] = 1.0

    ours = {}
    with open(f"{explain_dir}/values.csv") as fh:
        for r in csv.DictReader(fh):
            ours[(int(r["sample"]), r["output"])] = [float(r[n]) for n in names]
    samples = sorted({k[0] for k in ours})
    assert len(samples) == len(rows), (len(samples), len(rows))

    diffs, add_errs = [], []
    t0 = time.time()
    for i, x in enumerate(rows):

        def g(z, x=x):
            # Coalitions z [m, G] -> inputs [m, background, dim]: group k's
            # columns from x where z_k = 1, from the background row otherwise.
            z = np.asarray(z) > 0.5
            take = z.astype(np.float32) @ member > 0.5
            out = np.empty((len(z), len(p["outputs"])))
            step = max(1, 65536 // len(bg))
            for a in range(0, len(z), step):
                t = take[a : a + step]
                inp = np.where(t[:, None, :], x[None, None, :], bg[None, :, :])
                y = f(inp.reshape(-1, dim)).reshape(len(t), len(bg), -1)
                out[a : a + step] = (y * w[None, :, None]).sum(1)
            return out

        ex = shap.KernelExplainer(g, np.zeros((1, G)))
        # No feature selection: every group gets its value (shap 0.51 selects
        # 10 by default).
        kw = {"silent": True, "l1_reg": False}
        if nsamples:
            kw["nsamples"] = int(nsamples)
        sv = ex.shap_values(np.ones((1, G)), **kw)
        sv = np.asarray(sv)
        # shap >= 0.45: [rows, features, outputs]; older: a list per output.
        if sv.ndim == 3 and sv.shape[0] == 1:
            sv = sv[0].T
        else:
            sv = sv[:, 0, :]
        for o, name in enumerate(p["outputs"]):
            mine = np.asarray(ours[(samples[i], name)])
            diffs.append(np.abs(mine - sv[o]).max())
            fx = g(np.ones((1, G)))[0][o]
            add_errs.append(abs(ex.expected_value[o] + sv[o].sum() - fx))
    seconds = time.time() - t0
    print(json.dumps({
        "rows": len(rows),
        "groups": G,
        "outputs": len(p["outputs"]),
        "shap_version": shap.__version__,
        "nsamples": nsamples or "auto",
        "max_abs_difference": float(max(diffs)),
        "mean_abs_difference": float(np.mean(diffs)),
        "shap_max_additivity_error": float(max(add_errs)),
        "shap_seconds": seconds,
    }))


if __name__ == "__main__":
    main()

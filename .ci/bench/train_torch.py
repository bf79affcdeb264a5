#!/usr/bin/env python3
"""PyTorch reference for `fedcrime-sim bench train`.

Trains the same architecture as fedcrime's tch models on the same samples,
with the same batch size, optimizer and thread count, and prints the training
throughput as one JSON line. `fedcrime-sim bench train` writes the samples and
a manifest, runs this script, and prints the Rust/PyTorch ratio.

The models mirror `common/src/model/{dnn,lstm}.rs`:
- dnn: `layers` x (Linear(hidden) -> ReLU -> Dropout), then a Linear head.
- lstm: nn.LSTM(seq_dim, hidden, layers, batch_first) -> last hidden state ->
  Dropout -> concat with the flat features -> Linear head.
Losses: cross-entropy (risk), Poisson NLL on log-rates (counts).

The training loop is idiomatic fast PyTorch: the whole split resident in
tensors, a `randperm` per epoch, batches by fancy indexing, Adam with
`zero_grad(set_to_none=True)`.

Usage: train_torch.py MANIFEST.json
"""

import json
import os
import sys
import time

import numpy as np
import torch
from torch import nn


class Dnn(nn.Module):
    def __init__(self, m):
        super().__init__()
        width = m["input_dim"]
        self.hidden = nn.ModuleList()
        for _ in range(m["layers"]):
            self.hidden.append(nn.Linear(width, m["hidden"]))
            width = m["hidden"]
        self.head = nn.Linear(width, m["output_dim"])
        self.dropout = m["dropout"]

    def forward(self, features, sequences):
        x = features
        for layer in self.hidden:
            x = torch.relu(layer(x))
            if self.dropout > 0:
                x = nn.functional.dropout(x, self.dropout, self.training)
        return self.head(x)


class Lstm(nn.Module):
    def __init__(self, m):
        super().__init__()
        self.lstm = nn.LSTM(
            m["seq_dim"],
            m["hidden"],
            m["layers"],
            batch_first=True,
            dropout=m["dropout"] if m["layers"] > 1 else 0.0,
        )
        self.head = nn.Linear(m["hidden"] + m["input_dim"], m["output_dim"])
        self.dropout = m["dropout"]

    def forward(self, features, sequences):
        _, (h, _) = self.lstm(sequences)
        x = h[-1]
        if self.dropout > 0:
            x = nn.functional.dropout(x, self.dropout, self.training)
        return self.head(torch.cat([x, features], 1))


def load(path, dtype, shape):
    return torch.from_numpy(np.fromfile(path, dtype=dtype).reshape(shape))


def main():
    with open(sys.argv[1]) as f:
        m = json.load(f)
    torch.set_num_threads(m["threads"])
    torch.manual_seed(m["seed"])
    n = m["n"]
    base = os.path.dirname(os.path.abspath(sys.argv[1]))
    features = load(os.path.join(base, m["features"]), np.float32, (n, m["input_dim"]))
    sequences = None
    if m.get("sequences"):
        sequences = load(
            os.path.join(base, m["sequences"]), np.float32, (n, m["seq_steps"], m["seq_dim"])
        )
    if m["task"] == "risk":
        target = load(os.path.join(base, m["target"]), np.int64, (n,))
        loss_fn = nn.CrossEntropyLoss()
    else:
        target = load(os.path.join(base, m["target"]), np.float32, (n, m["output_dim"]))
        loss_fn = nn.PoissonNLLLoss(log_input=True, full=False, eps=1e-8)
    model = Dnn(m) if m["model"] == "dnn" else Lstm(m)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=m["lr"])
    bs = m["batch_size"]
    epochs = []
    for _ in range(m["epochs"]):
        t0 = time.perf_counter()
        perm = torch.randperm(n)
        total = 0.0
        for i in range(0, n, bs):
            idx = perm[i : i + bs]
            x = features[idx]
            s = sequences[idx] if sequences is not None else None
            y = target[idx]
            out = model(x, s)
            loss = loss_fn(out, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach() * len(idx)
        total = float(total)
        secs = time.perf_counter() - t0
        epochs.append({"seconds": secs, "samples_per_sec": n / secs, "train_loss": total / n})
    print(
        json.dumps(
            {
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "epochs": epochs,
                "samples_per_sec": max(e["samples_per_sec"] for e in epochs),
            }
        )
    )


if __name__ == "__main__":
    main()

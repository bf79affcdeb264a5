#!/usr/bin/env python3
"""Flower's SecAgg+ workflow timed the way `fedcrime-sim bench rounds` times
fedcrime's: echoing clients (no training) in Flower's Simulation Engine,
seconds per round from the strategy's aggregation calls (median of rounds 2
and later), with and without secure aggregation, in one process run.

    python3 -m venv /tmp/flwr && /tmp/flwr/bin/pip install "flwr[simulation]==1.42.0"
    /tmp/flwr/bin/python .ci/bench/flower_secagg.py --clients 21 --params 1000000 --rounds 5

SecAgg+ settings as close to fedcrime's defaults as Flower allows: every
client shares with every other (complete graph, num_shares = clients) and
the reconstruction threshold is fedcrime's t = max(floor(2k/3), floor(k/2)+1)
for k = clients - 1 neighbours, plus the client itself.
"""

import argparse
import json
import statistics
import time

import numpy as np
from flwr.client import ClientApp, NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.common import Context, ndarrays_to_parameters
from flwr.server import Grid, LegacyContext, ServerApp, ServerConfig
from flwr.server.strategy import FedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.simulation import run_simulation


class Echo(NumPyClient):
    """Answers each round with the model it received."""

    def fit(self, parameters, config):
        return parameters, 1, {}


class Timed(FedAvg):
    """FedAvg that records when each round's aggregation happens."""

    def __init__(self, stamps, **kw):
        super().__init__(**kw)
        self.stamps = stamps

    def aggregate_fit(self, server_round, results, failures):
        out = super().aggregate_fit(server_round, results, failures)
        self.stamps.append(time.perf_counter())
        return out


def run(clients: int, params: int, rounds: int, secagg: bool) -> list:
    stamps = []
    strategy = Timed(
        stamps,
        fraction_fit=1.0,
        fraction_evaluate=0.0,
        min_fit_clients=clients,
        min_available_clients=clients,
        initial_parameters=ndarrays_to_parameters([np.zeros(params, dtype=np.float32)]),
    )
    k = clients - 1
    threshold = max(2 * k // 3, k // 2 + 1) + 1
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        ctx = LegacyContext(context=context, config=ServerConfig(num_rounds=rounds), strategy=strategy)
        fit = SecAggPlusWorkflow(num_shares=clients, reconstruction_threshold=threshold) if secagg else None
        workflow = DefaultWorkflow(fit_workflow=fit) if secagg else DefaultWorkflow()
        workflow(grid, ctx)

    client = ClientApp(
        client_fn=lambda context: Echo().to_client(),
        mods=[secaggplus_mod] if secagg else [],
    )
    run_simulation(
        server_app=server,
        client_app=client,
        num_supernodes=clients,
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}},
    )
    return [b - a for a, b in zip(stamps, stamps[1:])]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--clients", type=int, default=21)
    p.add_argument("--params", type=int, default=1_000_000)
    p.add_argument("--rounds", type=int, default=5)
    a = p.parse_args()
    out = {"clients": a.clients, "params": a.params}
    for name, secagg in [("plain", False), ("secagg", True)]:
        rounds = run(a.clients, a.params, a.rounds, secagg)
        out[f"{name}_s"] = statistics.median(rounds) if rounds else None
        out[f"{name}_rounds_s"] = rounds
    if out["plain_s"] and out["secagg_s"]:
        out["ratio"] = out["secagg_s"] / out["plain_s"]
    print(json.dumps(out))


if __name__ == "__main__":
    main()

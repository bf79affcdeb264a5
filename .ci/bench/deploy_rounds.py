#!/usr/bin/env python3
"""Issue 16: per-round overhead of a real deployment on one machine.

Starts `fedcrime-server` and N `fedcrime-client --echo` processes as an agency
and its precincts would (a PKI from `fedcrime-certs init`, mutual TLS over
QUIC on 127.0.0.1), for a `dnn` of ~20k, ~1M and ~10M parameters. Stations
do not train (`--echo`: each answers with the model it received), so a
round's time is the framework's: encode, send, receive, validate, sum,
checkpoint. Reports per round (median of rounds 2..R, from the server's
metrics.jsonl): the round time, the overhead (round time minus the slowest
station's reported work) and the peak of all processes' summed proportional
set size (PSS, sampled every 0.2 s from /proc/PID/smaps_rollup), next to
references measured in the same run by `fedcrime-sim bench rounds`: the
in-process federation over QUIC and a plain TCP loopback copy of the same
bytes.

Reading smaps_rollup walks a process's page tables under its memory-map
lock, about 1 ms per fedcrime process: 22 of them every 0.2 s take a tenth
of a core and stall the processes' page faults. So each size runs twice:
the round times come from a run with no sampling, the peak PSS from a
second, sampled run (whose round time is reported too, `round_s_sampled`).
`--one-pass` measures both in one sampled run, as before stop 28.

    cargo build --release -p fedcrime-server -p fedcrime-client -p fedcrime-sim
    .ci/bench/deploy-rounds.sh [--stations 21] [--rounds 6] [--sizes 20k,1m,10m] [--json]

With NETNS=1 in the environment the processes run in the network
namespaces `.ci/bench/wan.sh` sets up (see there). With AUDIT=0 the server
runs without its audit log and without requiring signed updates (the
defaults keep both on), to measure what they cost.
"""

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("BIN_DIR", ROOT / "target" / "release"))
# Flower 1.42 deployment (gRPC) on this machine, from the project brief.
FLOWER_DEPLOY_S = "34-61"


def sh(*args, **kw):
    return subprocess.run([str(a) for a in args], check=True, text=True, capture_output=True, **kw)


def hidden_for(params: str, reference: bool) -> dict:
    """The reference in-process run at this size (also gives the width);
    without `reference`, a short in-memory run only for the width."""
    transport, rounds = ("quic", "4") if reference else ("memory", "2")
    out = sh(BIN / "fedcrime-sim", "-q", "bench", "rounds", "--params", params,
             "--transport", transport, "--rounds", rounds, "--json").stdout
    return json.loads(out.strip().splitlines()[-1])


def rate_bytes_s(rate: str) -> float:
    """`100mbit`, `1gbit` as bytes per second."""
    r = rate.lower()
    for suffix, mult in (("gbit", 1e9), ("mbit", 1e6), ("kbit", 1e3)):
        if r.endswith(suffix):
            return float(r[: -len(suffix)]) * mult / 8
    raise SystemExit(f"rate {rate!r}: expected e.g. 100mbit or 1gbit")


def bandwidth_bound(bytes_out: float, bytes_in: float, stations: int, station_rate: str, agency_rate: str,
                    rtt_s: float = 0.0) -> float:
    """Seconds a round needs at least: the models down, then the updates up,
    each through the slower of the agency's link (all stations' bytes) and a
    station's link (its share), plus the farthest station's round-trip time
    (its model's first byte goes down and its update's last byte comes back;
    connections outlive rounds, so no handshake is paid per round)."""
    a, s = rate_bytes_s(agency_rate), rate_bytes_s(station_rate)
    down = max(bytes_out / a, bytes_out / stations / s)
    up = max(bytes_in / a, bytes_in / stations / s)
    return down + up + rtt_s


def pipelined_bound(bytes_out: float, bytes_in: float, stations: int, station_rate: str, agency_rate: str,
                    rtt_s: float = 0.0) -> float:
    """The strict lower bound, with downloads and uploads overlapping as
    well as they could: all models through the agency's link and then the
    last station's update through its own link, or the first station's model
    through its link and then every update through the agency's."""
    a, s = rate_bytes_s(agency_rate), rate_bytes_s(station_rate)
    one_down = bytes_out / stations / min(a, s)
    one_up = bytes_in / stations / min(a, s)
    return max(bytes_out / a + one_up, one_down + bytes_in / a) + rtt_s


def add_bounds(row: dict, bound: str, stations: int, rtt_ms: float) -> None:
    """Adds both bounds of `row`'s bytes for `bound` = "STATION_RATE,AGENCY_RATE"
    and the largest round-trip time, and the round time's ratio to each."""
    station_rate, agency_rate = bound.split(",")
    rtt_s = rtt_ms / 1e3
    row["rtt_ms"] = rtt_ms
    row["bound_s"] = bandwidth_bound(row["bytes_out"], row["bytes_in"], stations, station_rate, agency_rate, rtt_s)
    row["round_vs_bound"] = row["round_s"] / row["bound_s"]
    row["strict_bound_s"] = pipelined_bound(row["bytes_out"], row["bytes_in"], stations, station_rate,
                                            agency_rate, rtt_s)
    row["round_vs_strict_bound"] = row["round_s"] / row["strict_bound_s"]


def pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def transport_toml() -> str:
    """The `[transport]` table of both configs: CONGESTION names the
    controller, TRANSPORT_EXTRA adds raw TOML lines (`;`-separated), e.g.
    TRANSPORT_EXTRA='send_window = 2097152'."""
    lines = []
    if os.environ.get("CONGESTION"):
        lines.append(f'congestion = "{os.environ["CONGESTION"]}"')
    lines += [x.strip() for x in os.environ.get("TRANSPORT_EXTRA", "").split(";") if x.strip()]
    return "[transport]\n" + "\n".join(lines) + "\n" if lines else ""


def server_toml(pki: Path, out: Path, hidden: int, stations: int, rounds: int, port: int, listen_host: str) -> str:
    enc = os.environ.get("UPDATE_ENCODING", "f32")
    return f"""
listen = "{listen_host}:{port}"
run_id = "deploy-bench"
linger_s = 5
[tls]
ca = "{pki}/ca.pem"
cert = "{pki}/server.pem"
key = "{pki}/server.key"
crl = "{pki}/crl.pem"
[model]
kind = "dnn"
hidden = {hidden}
layers = 3
dropout = 0.0
[federation]
rounds = {rounds}
min_stations = {stations}
fraction_fit = 1.0
min_fit = {stations}
min_updates = {stations}
eval_every = 0
[wire]
max_frame_bytes = 67108864
update_encoding = "{enc}"
[output]
dir = "{out}"
""" + audit_toml() + transport_toml()


def audit_toml() -> str:
    """The [audit] section: the server's defaults, or both off with AUDIT=0."""
    if os.environ.get("AUDIT", "1") == "0":
        return "[audit]\nenabled = false\nrequire_signed_updates = false\n"
    return ""


def netns_prefix(name: str) -> list:
    return ["ip", "netns", "exec", name] if os.environ.get("NETNS") == "1" else []


def run_size(params: str, stations: int, rounds: int, workdir: Path, reference: bool,
             sample_pss: bool = True) -> dict:
    ref = hidden_for(params, reference)
    hidden = ref["hidden"]
    pki = workdir / f"pki-{params}"
    sh(BIN / "fedcrime-certs", "init", "--out", pki, "--stations", stations, "--force")
    out = workdir / f"out-{params}"
    port = 47000 + (hash(params) % 1000)
    server_host = os.environ.get("SERVER_HOST", "127.0.0.1")
    listen_host = "0.0.0.0" if os.environ.get("NETNS") == "1" else "127.0.0.1"
    cfg = workdir / f"server-{params}.toml"
    cfg.write_text(server_toml(pki, out, hidden, stations, rounds, port, listen_host))
    env = dict(os.environ, RUST_LOG=os.environ.get("DEPLOY_LOG", "warn"))
    station_cfg = workdir / "station.toml"
    station_cfg.write_text(f'server = "{server_host}:{port}"\n[tls]\nca = "{pki}/ca.pem"\ncert = "x"\nkey = "x"\n'
                           + transport_toml())
    procs = []
    server = subprocess.Popen(netns_prefix("fc-agency") + [str(BIN / "fedcrime-server"), "--config", str(cfg)],
                              env=env, stdout=subprocess.DEVNULL, stderr=open(workdir / f"server-{params}.log", "w"))
    procs.append(server)
    time.sleep(1.0)
    names = sorted(p.stem for p in (pki / "stations").glob("*.pem"))
    for i, name in enumerate(names):
        ns = f"fc-st{i % int(os.environ.get('NETNS_STATIONS', '1') or 1)}"
        procs.append(subprocess.Popen(
            netns_prefix(ns) + [str(BIN / "fedcrime-client"), "--config", str(station_cfg),
                                "--pki", str(pki), "--station", name,
                                "--server", f"{server_host}:{port}", "--server-name", "localhost", "--echo"],
            env=env, stdout=subprocess.DEVNULL, stderr=open(workdir / f"client-{params}-{name}.log", "w")))
    peak = 0
    deadline = time.time() + 900
    try:
        while server.poll() is None and time.time() < deadline:
            if sample_pss:
                total = sum(pss_kib(p.pid) for p in procs if p.poll() is None)
                peak = max(peak, total)
            time.sleep(float(os.environ.get("PSS_INTERVAL_S", "0.2")))
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
    if server.returncode != 0:
        raise SystemExit(f"server failed ({server.returncode}); see {workdir}/server-{params}.log")
    records = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines() if l.strip()]
    records = records[1:] or records  # the first round includes the stations joining
    round_s = statistics.median(r["round_s"] for r in records)
    overhead_s = statistics.median(r.get("overhead_s") or float("nan") for r in records)
    bytes_out = statistics.median(r["bytes_out"] for r in records)
    bytes_in = statistics.median(r["bytes_in"] for r in records)
    out_row = {
        "label": os.environ.get("LABEL", "quic"),
        "congestion": os.environ.get("CONGESTION", "cubic"),
        "update_encoding": os.environ.get("UPDATE_ENCODING", "f32"),
        "bytes_out": bytes_out,
        "bytes_in": bytes_in,
    }
    if not reference:
        return dict(out_row, params=ref["params"], hidden=hidden, stations=stations, rounds=len(records),
                    round_s=round_s, overhead_s=overhead_s, peak_pss_mib=peak / 1024)
    return {
        **out_row,
        "params": ref["params"],
        "hidden": hidden,
        "stations": stations,
        "rounds": len(records),
        "round_s": round_s,
        "overhead_s": overhead_s,
        "peak_pss_mib": peak / 1024,
        "bytes_per_round": ref["bytes_per_round"],
        "inprocess_quic_round_s": ref["round_s"],
        "tcp_s": ref["tcp_s"],
        "memcpy_s": ref["memcpy_s"],
        "overhead_vs_tcp": overhead_s / ref["tcp_s"],
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stations", type=int, default=21)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--sizes", default="20k,1m,10m")
    ap.add_argument("--json", action="store_true", help="one JSON object per size")
    ap.add_argument("--no-reference", action="store_true",
                    help="skip the in-process reference run (the WAN benchmark)")
    ap.add_argument("--label", default=None, help="a label for the rows")
    ap.add_argument("--one-pass", action="store_true",
                    help="time the rounds in the run that samples PSS (no second run)")
    ap.add_argument("--bound", default=None, metavar="STATION_RATE,AGENCY_RATE",
                    help="add the bandwidth bound of each round for these link rates, e.g. 100mbit,1gbit")
    ap.add_argument("--rtt-ms", type=float, default=0.0,
                    help="the largest station round-trip time, added to the bounds")
    args = ap.parse_args()
    if args.label:
        os.environ["LABEL"] = args.label
    for b in ("fedcrime-server", "fedcrime-client", "fedcrime-sim", "fedcrime-certs"):
        if not (BIN / b).exists():
            raise SystemExit(f"{BIN / b} is missing: cargo build --release -p fedcrime-server "
                             "-p fedcrime-client -p fedcrime-sim -p fedcrime-certs")
    rows = []
    keep = os.environ.get("KEEP_DIR")
    with (contextlib.nullcontext(keep) if keep else tempfile.TemporaryDirectory(prefix="fc-deploy-")) as d:
        for size in args.sizes.split(","):
            r = run_size(size, args.stations, args.rounds, Path(d), not args.no_reference,
                         sample_pss=args.one_pass)
            if not args.one_pass:
                (Path(d) / "pss").mkdir(exist_ok=True)
                m = run_size(size, args.stations, args.rounds, Path(d) / "pss", False, sample_pss=True)
                r["peak_pss_mib"] = m["peak_pss_mib"]
                r["round_s_sampled"] = m["round_s"]
            if args.bound:
                add_bounds(r, args.bound, args.stations, args.rtt_ms)
            rows.append(r)
            if args.json:
                print(json.dumps(r), flush=True)
    if not args.json:
        print("| params | stations | round s | overhead s | TCP copy s | overhead / TCP | in-process QUIC s | peak PSS, all processes | Flower deployment s |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        def cell(r, key, fmt):
            # --no-reference leaves the reference columns out.
            return format(r[key], fmt) if key in r else "-"
        for r in rows:
            print(f"| {r['params']} | {r['stations']} | {r['round_s']:.3f} | {r['overhead_s']:.3f} | "
                  f"{cell(r, 'tcp_s', '.3f')} | {cell(r, 'overhead_vs_tcp', '.1f')} | "
                  f"{cell(r, 'inprocess_quic_round_s', '.3f')} | "
                  f"{r['peak_pss_mib']:.0f} MiB | {FLOWER_DEPLOY_S} |")


if __name__ == "__main__":
    main()

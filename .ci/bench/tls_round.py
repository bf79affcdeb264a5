#!/usr/bin/env python3
"""Issue 16, the WAN benchmark's TCP reference: a federated round's bytes
over TCP + TLS 1.3 with client certificates (OpenSSL, through Python's ssl
module), with no framework at all.

The agency process (namespace fc-agency) accepts one connection per station
(namespaces fc-st0..); each round it sends the model's bytes to every station
at once, and each station sends the same number back as its update; the round
ends when every update has arrived. Same PKI kind as fedcrime (fedcrime-certs
init), same bytes as `fedcrime-sim bench rounds` at that size (f32 model and
update). Run by wan.sh; prints one JSON line with the median round (rounds 2..R)
and the bandwidth bound of the round for the given link rates.
"""

import argparse
import json
import os
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("BIN_DIR", ROOT / "target" / "release"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from deploy_rounds import add_bounds  # noqa: E402

PORT = 47444
CHUNK = 1 << 20


def recv_exact(conn, view):
    got = 0
    while got < len(view):
        n = conn.recv_into(view[got:], min(CHUNK, len(view) - got))
        if n == 0:
            raise ConnectionError("peer closed")
        got += n


def serve(args):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(f"{args.pki}/server.pem", f"{args.pki}/server.key")
    ctx.load_verify_locations(f"{args.pki}/ca.pem")
    ctx.verify_mode = ssl.CERT_REQUIRED
    lsock = socket.create_server(("0.0.0.0", PORT), backlog=args.stations)
    # Accepted connections inherit the listener's congestion control.
    lsock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, args.congestion.encode())
    conns = []
    while len(conns) < args.stations:
        c, _ = lsock.accept()
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conns.append(ctx.wrap_socket(c, server_side=True))
    payload = bytes(args.bytes)
    times = []
    for _ in range(args.rounds):
        t0 = time.perf_counter()

        def one(conn):
            conn.sendall(payload)
            buf = bytearray(args.bytes)
            recv_exact(conn, memoryview(buf))

        threads = [threading.Thread(target=one, args=(c,)) for c in conns]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        times.append(time.perf_counter() - t0)
    for c in conns:
        c.close()
    print(json.dumps({"times": times}), flush=True)


def connect(args):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_verify_locations(f"{args.pki}/ca.pem")
    ctx.load_cert_chain(f"{args.pki}/stations/{args.station}.pem", f"{args.pki}/stations/{args.station}.key")
    for _ in range(100):
        try:
            raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, args.congestion.encode())
            raw.connect((args.server, PORT))
            break
        except OSError:
            time.sleep(0.1)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    conn = ctx.wrap_socket(raw, server_hostname="localhost")
    buf = bytearray(args.bytes)
    for _ in range(args.rounds):
        recv_exact(conn, memoryview(buf))
        conn.sendall(buf)
    conn.close()


def orchestrate(args):
    ref = json.loads(subprocess.run(
        [str(BIN / "fedcrime-sim"), "-q", "bench", "rounds", "--params", args.size, "--transport", "memory",
         "--rounds", "2", "--json"], check=True, text=True, capture_output=True).stdout.strip().splitlines()[-1])
    nbytes = ref["params"] * 4
    with tempfile.TemporaryDirectory(prefix="fc-tls-") as d:
        pki = Path(d) / "pki"
        subprocess.run([str(BIN / "fedcrime-certs"), "init", "--out", str(pki), "--stations", str(args.stations)],
                       check=True, capture_output=True)
        me = str(Path(__file__).resolve())
        server = subprocess.Popen(["ip", "netns", "exec", "fc-agency", sys.executable, me, "serve", "--pki", str(pki),
                                   "--stations", str(args.stations), "--bytes", str(nbytes), "--congestion", args.congestion,
                                   "--rounds", str(args.rounds)], stdout=subprocess.PIPE, text=True)
        names = sorted(p.stem for p in (pki / "stations").glob("*.pem"))
        clients = [subprocess.Popen(["ip", "netns", "exec", f"fc-st{i}", sys.executable, me, "connect",
                                     "--pki", str(pki), "--station", name, "--server", "10.77.0.1",
                                     "--bytes", str(nbytes), "--rounds", str(args.rounds),
                                     "--congestion", args.congestion])
                   for i, name in enumerate(names)]
        out, _ = server.communicate(timeout=1800)
        for c in clients:
            c.wait(timeout=60)
    times = json.loads(out.strip().splitlines()[-1])["times"]
    round_s = statistics.median(times[1:] or times)
    row = {"label": f"tcp-tls13-{args.congestion}", "congestion": args.congestion, "params": ref["params"], "stations": args.stations, "rounds": len(times) - 1,
           "round_s": round_s, "bytes_out": nbytes * args.stations, "bytes_in": nbytes * args.stations}
    if args.bound:
        add_bounds(row, args.bound, args.stations, args.rtt_ms)
    print(json.dumps(row), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("role", nargs="?", default="run", choices=["run", "serve", "connect"])
    ap.add_argument("--stations", type=int, default=21)
    ap.add_argument("--size", default="1m")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--bound", default=None)
    ap.add_argument("--congestion", default="cubic",
                    help="TCP congestion control of both ends (see /proc/sys/net/ipv4/tcp_available_congestion_control)")
    ap.add_argument("--rtt-ms", type=float, default=0.0, help="the largest round-trip time, added to the bounds")
    ap.add_argument("--pki")
    ap.add_argument("--station")
    ap.add_argument("--server")
    ap.add_argument("--bytes", type=int)
    args = ap.parse_args()
    {"run": orchestrate, "serve": serve, "connect": connect}[args.role](args)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""fedcrime's chaos suite: real fedcrime-server, fedcrime-client and
fedcrime-sim swarm processes on 127.0.0.1, with faults injected from
outside, as an agency would meet them. Each scenario prints its pass rule
and what it measured; the run ends with a Markdown table (also written to
--table) and exits non-zero if any scenario failed.

    .ci/chaos/chaos.py                  # every scenario (make chaos)
    .ci/chaos/chaos.py --smoke          # the short subset run by make test
    .ci/chaos/chaos.py --only dup,flood # some scenarios

Binaries are taken from --bin (default target/release, else target/debug).
Only the Python standard library is used; the certificate matrix needs
`openssl` for two of its kinds (skipped with a message when absent) and the
full-disk scenario needs root (mount a small tmpfs; skipped otherwise).
"""

import argparse
import csv
import hashlib
import json
import os
import random
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data" / "la-crime"


class Skip(Exception):
    """A scenario that cannot run here (says why)."""


class Fail(Exception):
    """A pass rule that did not hold."""


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    """A child process with its output in a log file."""

    def __init__(self, name, argv, log, env=None):
        self.name = name
        self.log = Path(log)
        self.fh = open(self.log, "ab")
        self.argv = [str(a) for a in argv]
        self.started = time.monotonic()
        self.p = subprocess.Popen(self.argv, stdout=self.fh, stderr=subprocess.STDOUT,
                                  env=env, start_new_session=True)

    def wait(self, timeout):
        try:
            return self.p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise Fail(f"{self.name} still running after {timeout:.0f} s (log {self.log})")

    def signal(self, sig):
        if self.p.poll() is None:
            try:
                os.kill(self.p.pid, sig)
            except ProcessLookupError:
                pass

    def kill(self):
        self.signal(signal.SIGKILL)
        try:
            self.p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass

    def alive(self):
        return self.p.poll() is None

    def text(self):
        self.fh.flush()
        return self.log.read_text(errors="replace")

    def rss_kib(self):
        try:
            for line in Path(f"/proc/{self.p.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        except OSError:
            return None
        return None


def wait_until(what, cond, timeout, every=0.05):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = cond()
        if v:
            return v
        time.sleep(every)
    raise Fail(f"timed out after {timeout:.0f} s waiting for {what}")


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def metrics_rows(out):
    path = Path(out) / "metrics.csv"
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def jsonl_rows(out):
    path = Path(out) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def completed_names(out, after=0):
    """Stations whose updates were aggregated in rounds after `after`."""
    names = set()
    for r in jsonl_rows(out):
        if r.get("round", 0) > after:
            names.update(r.get("completed", []))
    return names


class Suite:
    def __init__(self, args):
        self.args = args
        self.bin = Path(args.bin)
        self.tmp = Path(tempfile.mkdtemp(prefix="fedcrime-chaos-"))
        self.procs = []
        self.results = []
        self.env = dict(os.environ, OMP_NUM_THREADS="1", RUST_BACKTRACE="1")
        self.env.pop("RUST_LOG", None)
        self._data = None

    # -- tools ------------------------------------------------------------
    def exe(self, name):
        p = self.bin / name
        if not p.exists():
            raise SystemExit(f"chaos: {p} is missing; build with `cargo build --release --bins`")
        return p

    def run(self, argv, **kw):
        r = subprocess.run([str(a) for a in argv], capture_output=True, text=True, env=self.env, **kw)
        if r.returncode != 0:
            raise Fail(f"{' '.join(map(str, argv))} failed ({r.returncode}): {r.stderr.strip()[-800:]}")
        return r

    def spawn(self, name, argv, log):
        p = Proc(name, argv, log, env=self.env)
        self.procs.append(p)
        return p

    def pki(self, d, stations, agency=None):
        d = Path(d)
        argv = [self.exe("fedcrime-certs"), "init", "--out", d, "--stations", stations]
        if agency:
            argv += ["--agency", agency]
        self.run(argv)
        return d

    def data(self):
        """The records stations train on: the real February 2024 month when
        present, else synthetic LA-like records."""
        if self._data is None:
            real = SHARED / "la_crime_2024_02.csv"
            if real.exists():
                self._data = real
            else:
                out = self.tmp / "synth.csv"
                self.run([self.exe("fedcrime-sim"), "-q", "synth", "--rows", "20000", "--out", out])
                self._data = out
        return self._data

    def server_toml(self, d, port, out, rounds, stations, **over):
        fed = {
            "rounds": rounds, "min_stations": stations, "min_fit": stations,
            "min_updates": stations, "fraction_fit": 1.0, "round_deadline": 60.0,
            "eval_every": 0, "seed": 7,
        }
        fed.update(over.pop("federation", {}))
        strategy = over.pop("strategy", 'name = "fedavg"')
        evaluation = over.pop("evaluation", None)
        linger = over.pop("linger_s", 30)
        # A station holds one area's records (~120 training samples): 40
        # local epochs make a round last long enough to be hit mid-round.
        epochs = over.pop("epochs", 40)
        model = over.pop("model", 'kind = "dnn"\nhidden = 16\nlayers = 2\ndropout = 0.0')
        assert not over, over
        lines = [
            f'listen = "127.0.0.1:{port}"', 'run_id = "chaos"', f"linger_s = {linger}", "",
            "[tls]", f'ca = "{d}/pki/ca.pem"', f'cert = "{d}/pki/server.pem"',
            f'key = "{d}/pki/server.key"', f'crl = "{d}/pki/crl.pem"', "crl_check_interval_ms = 200", "",
            "[model]", model, "", "[federation]",
        ]
        lines += [f"{k} = {json.dumps(v)}" for k, v in fed.items()]
        lines += ["", "[federation.retry]", "max_retries = 5", "backoff = 0.5", "",
                  "[train]", f"epochs = {epochs}", "batch_size = 32", "lr = 0.01", "",
                  "[strategy]", strategy, "", "[output]", f'dir = "{out}"', "",
                  "[log]", 'format = "json"', 'level = "info"', ""]
        if evaluation:
            lines += ["[evaluation]", f'data = "{evaluation}"', 'split = "test"', ""]
        path = Path(d) / f"server-{port}.toml"
        path.write_text("\n".join(lines))
        return path

    def server(self, d, config, log, resume=False):
        argv = [self.exe("fedcrime-server"), "--config", config]
        if resume:
            argv.append("--resume")
        return self.spawn("server", argv, log)

    def client(self, d, station, port, log, area=None, cert=None):
        argv = [self.exe("fedcrime-client"), "--server", f"127.0.0.1:{port}",
                "--server-name", "localhost", "--data", self.data(), "--log-format", "json"]
        if cert:
            argv += ["--ca", cert[0], "--cert", cert[1], "--key", cert[2]]
        else:
            argv += ["--pki", Path(d) / "pki", "--station", station]
        num = int(station.rsplit("-", 1)[-1]) if station and station[-1].isdigit() else 1
        argv += ["--area", str(area or ((num - 1) % 21 + 1))]
        return self.spawn(station, argv, log)

    def cleanup(self):
        for p in self.procs:
            p.kill()
        self.procs.clear()

    # -- bookkeeping --------------------------------------------------------
    def scenario(self, name, rule, fn):
        print(f"\n== {name}\n   pass rule: {rule}", flush=True)
        d = self.tmp / name
        d.mkdir()
        t0 = time.monotonic()
        try:
            measured = fn(d)
            status = "PASS"
        except Skip as e:
            measured, status = f"skipped: {e}", "SKIP"
        except Fail as e:
            measured, status = str(e), "FAIL"
        except Exception as e:  # a bug of the harness is a failure too
            measured, status = f"{type(e).__name__}: {e}", "FAIL"
        finally:
            self.cleanup()
        secs = time.monotonic() - t0
        print(f"   {status} ({secs:.0f} s): {measured}", flush=True)
        if status == "FAIL":
            print(f"   logs: {d}", flush=True)
        self.results.append((name, rule, status, measured, secs))

    def table(self):
        out = ["| scenario | pass rule | result | measured | time |", "|---|---|---|---|---|"]
        for name, rule, status, measured, secs in self.results:
            m = measured.replace("|", "/").replace("\n", " ")
            out.append(f"| {name} | {rule} | {status} | {m} | {secs:.0f} s |")
        return "\n".join(out)


# -- scenarios ----------------------------------------------------------------

def joined_count(proc, since=0):
    return proc.text()[since:].count("station joined")


def bad_certificates(s, d):
    pki = s.pki(d / "pki", 1)
    other = s.pki(d / "other", 1, agency="Another Agency")
    certs = s.exe("fedcrime-certs")
    ca = pki / "ca.pem"
    kinds = {}
    kinds["another agency's CA"] = (ca, other / "stations/station-01.pem", other / "stations/station-01.key")
    s.run([certs, "add-station", "--dir", pki, "--name", "expired", "--valid-from", "2020-01-01", "--valid-days", "2"])
    kinds["expired"] = (ca, pki / "stations/expired.pem", pki / "stations/expired.key")
    s.run([certs, "add-station", "--dir", pki, "--name", "future", "--valid-from", "2035-01-01"])
    kinds["not yet valid"] = (ca, pki / "stations/future.pem", pki / "stations/future.key")
    s.run([certs, "add-station", "--dir", pki, "--name", "revoked"])
    s.run([certs, "revoke", "--dir", pki, "--station", "revoked"])
    kinds["revoked"] = (ca, pki / "stations/revoked.pem", pki / "stations/revoked.key")
    kinds["server certificate as a station's"] = (ca, pki / "server.pem", pki / "server.key")
    kinds["certificate with another station's key"] = (
        ca, pki / "stations/station-01.pem", pki / "stations/revoked.key")
    if shutil.which("openssl"):
        key = d / "ss.key"
        s.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
               "-nodes", "-keyout", key, "-out", d / "ss.pem", "-days", "30", "-subj", "/CN=station-01",
               "-addext", "subjectAltName=URI:urn:fedcrime:station:station-01",
               "-addext", "extendedKeyUsage=clientAuth"])
        kinds["self-signed"] = (ca, d / "ss.pem", key)
        nk = d / "noid.key"
        s.run(["openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
               "-keyout", nk, "-out", d / "noid.csr", "-subj", "/CN=station-01"])
        (d / "ext.cnf").write_text("extendedKeyUsage=clientAuth\nsubjectAltName=DNS:station-01\n")
        s.run(["openssl", "x509", "-req", "-in", d / "noid.csr", "-CA", ca, "-CAkey", pki / "ca.key",
               "-CAcreateserial", "-out", d / "noid.pem", "-days", "30", "-extfile", d / "ext.cnf"])
        kinds["agency-signed, no station identity"] = (ca, d / "noid.pem", nk)
    port = free_port()
    cfg = s.server_toml(d, port, d / "out", rounds=3, stations=1)
    srv = s.server(d, cfg, d / "server.log")
    wait_until("the server", lambda: "server ready" in srv.text(), 60)
    refused = []
    for kind, cert in kinds.items():
        c = s.client(d, "bad", port, d / f"bad-{len(refused)}.log", area=1, cert=cert)
        rc = c.wait(60)
        text = c.text().lower()
        if rc == 0:
            raise Fail(f"{kind}: the station was admitted (exit 0)")
        if not any(w in text for w in ("refused", "certificate", "key", "expired", "revoked")):
            raise Fail(f"{kind}: exit {rc} without naming the certificate: {c.text()[-300:]}")
        if not srv.alive():
            raise Fail(f"the server died after the {kind} attempt")
        refused.append(f"{kind} (exit {rc})")
    good = s.client(d, "station-01", port, d / "good.log")
    if good.wait(300) != 0:
        raise Fail(f"the honest station failed: {good.text()[-400:]}")
    if srv.wait(60) != 0:
        raise Fail("the server failed")
    missing = "" if shutil.which("openssl") else " (openssl absent: self-signed and no-identity kinds skipped)"
    return f"{len(refused)} kinds refused{missing}: " + ", ".join(refused) + "; honest station completed 3 rounds"


def kill_server(s, d, kills):
    """kill -9 at random points, --resume at once; the final model must equal an
    uninterrupted run's, and stations must be back within 3 s of each restart."""
    stations = 3
    rounds = 3 * kills + 4
    pki = s.pki(d / "pki", stations)
    del pki
    models = {}
    recoveries = []
    for mode in ("reference", "chaos"):
        port = free_port()
        out = d / f"out-{mode}"
        cfg = s.server_toml(d, port, out, rounds=rounds, stations=stations)
        log = d / f"server-{mode}.log"
        srv = s.server(d, cfg, log)
        clients = [s.client(d, f"station-{i:02}", port, d / f"{mode}-{i}.log") for i in range(1, stations + 1)]
        rng = random.Random(11)
        done_kills = 0
        while mode == "chaos" and done_kills < kills:
            # a random point: some rounds in, plus a random fraction of a round
            target = 1 + done_kills * (rounds // 2) // max(kills, 1)
            wait_until(f"round {target}", lambda: len(metrics_rows(out)) >= target or not srv.alive(), 300)
            time.sleep(rng.uniform(0.0, 0.6))
            if len(metrics_rows(out)) >= rounds:
                break
            srv.kill()
            done_kills += 1
            before = log.stat().st_size
            t0 = time.monotonic()
            srv = s.server(d, cfg, log, resume=True)
            back = wait_until("stations back", lambda: (
                srv.text()[before:].count("station joined") >= stations) or not srv.alive(), 60)
            if not srv.alive():
                raise Fail(f"the resumed server exited: {srv.text()[-600:]}")
            del back
            recoveries.append(time.monotonic() - t0)
        if srv.wait(600) != 0:
            raise Fail(f"{mode}: the server failed: {srv.text()[-600:]}")
        for c in clients:
            c.wait(60)
        models[mode] = sha256(out / "model.safetensors")
    if models["reference"] != models["chaos"]:
        raise Fail("the final model differs from the uninterrupted run's")
    worst = max(recoveries) if recoveries else 0.0
    if worst >= 3.0:
        raise Fail(f"recovery took up to {worst:.2f} s (rule: < 3 s): {[round(r, 2) for r in recoveries]}")
    return (f"{len(recoveries)} kills; final model identical (sha256 {models['chaos'][:12]}); "
            f"stations back {min(recoveries):.2f}-{worst:.2f} s after each restart "
            f"(median {sorted(recoveries)[len(recoveries) // 2]:.2f} s)")


def stations_killed(s, d):
    n, rounds = 10, 16
    s.pki(d / "pki", n)
    port = free_port()
    out = d / "out"
    cfg = s.server_toml(d, port, out, rounds=rounds, stations=n,
                        federation={"min_stations": 7, "min_fit": 7, "min_updates": 7})
    srv = s.server(d, cfg, d / "server.log")
    clients = {i: s.client(d, f"station-{i:02}", port, d / f"c{i}.log") for i in range(1, n + 1)}
    wait_until("round 2", lambda: len(metrics_rows(out)) >= 2, 300)
    victims = random.Random(3).sample(range(1, n + 1), 3)
    t_kill = time.monotonic()
    for v in victims:
        clients[v].kill()
    killed_round = len(metrics_rows(out)) + 1
    wait_until(f"round {killed_round}", lambda: len(metrics_rows(out)) >= killed_round, 120)
    detect = time.monotonic() - t_kill
    wait_until("round 5", lambda: len(metrics_rows(out)) >= 5, 300)
    for v in victims:
        clients[v] = s.client(d, f"station-{v:02}", port, d / f"c{v}-again.log")
    if srv.wait(600) != 0:
        raise Fail(f"the server failed: {srv.text()[-600:]}")
    rows = metrics_rows(out)
    if len(rows) != rounds:
        raise Fail(f"{len(rows)} of {rounds} rounds")
    later = completed_names(out, after=5)
    back = [v for v in victims if f"station-{v:02}" in later]
    if len(back) != 3:
        raise Fail(f"only {len(back)} of 3 restarted stations took part in rounds 6-{rounds}")
    for c in clients.values():
        c.wait(60)
    return (f"3 of 10 stations kill -9'd in round {killed_round}: that round ended {detect:.1f} s later "
            f"without them; restarted after round 5, all 3 took part again; "
            f"{len(rows)} rounds completed")


def station_stopped(s, d):
    n = 4
    s.pki(d / "pki", n)
    port = free_port()
    out = d / "out"
    cfg = s.server_toml(d, port, out, rounds=30, stations=n,
                        federation={"min_stations": 3, "min_fit": 3, "min_updates": 3, "round_deadline": 20.0})
    srv = s.server(d, cfg, d / "server.log")
    clients = [s.client(d, f"station-{i:02}", port, d / f"c{i}.log") for i in range(1, n + 1)]
    wait_until("round 2", lambda: len(metrics_rows(out)) >= 2, 300)
    victim = clients[1]
    victim.signal(signal.SIGSTOP)
    t0 = time.monotonic()
    r = len(metrics_rows(out)) + 1
    wait_until(f"round {r}", lambda: len(metrics_rows(out)) >= r, 120)
    took = time.monotonic() - t0
    time.sleep(1.0)
    victim.signal(signal.SIGCONT)
    if srv.wait(600) != 0:
        raise Fail(f"the server failed: {srv.text()[-600:]}")
    rc = victim.wait(120)
    rows = metrics_rows(out)
    del rows
    rejoined = "station-02" in completed_names(out, after=r)
    if rc != 0:
        raise Fail(f"the stopped station exited {rc} after SIGCONT")
    return (f"a station SIGSTOPped mid-run: round {r} ended {took:.1f} s later without it "
            f"(deadline 20 s; its silent connection was dropped); after SIGCONT it "
            f"{'rejoined later rounds' if rejoined else 'reconnected and finished'}; exit 0")


def duplicate_identity(s, d):
    n = 3
    s.pki(d / "pki", n)
    port = free_port()
    out = d / "out"
    # Rounds long enough (200 local epochs) that the run cannot end while the
    # duplicate process is still starting (loading libtorch and its records).
    cfg = s.server_toml(d, port, out, rounds=6, stations=n, epochs=200,
                        federation={"round_deadline": 60.0})
    srv = s.server(d, cfg, d / "server.log")
    clients = [s.client(d, f"station-{i:02}", port, d / f"c{i}.log") for i in range(1, n + 1)]
    wait_until("stations joined", lambda: joined_count(srv) >= n, 120)
    dup = s.client(d, "station-01", port, d / "duplicate.log")
    wait_until("the duplicate's first refusal", lambda: "standing by" in dup.text() or not srv.alive(), 120)
    if srv.wait(600) != 0:
        raise Fail(f"the server failed (a duplicate must never abort the run): {srv.text()[-600:]}")
    rows = metrics_rows(out)
    failed = [r["round"] for r in rows if r.get("failed_disconnected", "0") not in ("", "0")]
    if failed or len(rows) != 6:
        raise Fail(f"{len(rows)} rounds, disconnect failures in rounds {failed}")
    for c in clients:
        if c.wait(60) != 0:
            raise Fail(f"{c.name} failed")
    refusals = srv.text().count("a second connection with this station's certificate is refused")
    dup.signal(signal.SIGTERM)
    dup.wait(30)
    if "standing by" not in dup.text():
        raise Fail("the duplicate process did not stand by")
    if refusals == 0:
        raise Fail("the server never refused the duplicate")
    return (f"6 rounds, no round lost a station; the duplicate was refused {refusals} time(s) "
            f"and stood by (never fought for the session)")


def udp_flood(s, d):
    n = 3
    s.pki(d / "pki", n)
    times = {}
    rate = [0]
    for mode in ("baseline", "flood"):
        port = free_port()
        out = d / f"out-{mode}"
        cfg = s.server_toml(d, port, out, rounds=8, stations=n)
        srv = s.server(d, cfg, d / f"server-{mode}.log")
        stop = threading.Event()

        def flood():
            rng = random.Random(5)
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sent, t0 = 0, time.monotonic()
            while not stop.is_set():
                try:
                    sock.sendto(rng.randbytes(rng.randint(1, 1400)), ("127.0.0.1", port))
                    sent += 1
                except OSError:
                    time.sleep(0.001)
            rate[0] = sent / max(time.monotonic() - t0, 1e-9)

        th = threading.Thread(target=flood, daemon=True)
        if mode == "flood":
            th.start()
        t0 = time.monotonic()
        clients = [s.client(d, f"station-{i:02}", port, d / f"{mode}-{i}.log") for i in range(1, n + 1)]
        rc = srv.wait(600)
        times[mode] = time.monotonic() - t0
        stop.set()
        if mode == "flood":
            th.join()
        if rc != 0:
            raise Fail(f"{mode}: the server failed: {srv.text()[-600:]}")
        for c in clients:
            c.wait(60)
        if len(metrics_rows(out)) != 8:
            raise Fail(f"{mode}: {len(metrics_rows(out))} of 8 rounds")
    ratio = times["flood"] / times["baseline"]
    if ratio > 3.0:
        raise Fail(f"the run took {ratio:.1f}x as long under the flood")
    return (f"{rate[0]:,.0f} garbage datagrams/s at the server port: run completed in "
            f"{times['flood']:.1f} s vs {times['baseline']:.1f} s without ({ratio:.2f}x)")


def full_disk(s, d):
    if os.geteuid() != 0 or not shutil.which("mount"):
        raise Skip("needs root to mount a small tmpfs")
    n = 2
    s.pki(d / "pki", n)
    mnt = d / "disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        raise Skip(f"cannot mount a tmpfs: {r.stderr.strip()}")
    try:
        port = free_port()
        out = mnt / "out"
        cfg = s.server_toml(d, port, out, rounds=40, stations=n,
                            model='kind = "dnn"\nhidden = 128\nlayers = 3\ndropout = 0.0')
        srv = s.server(d, cfg, d / "server.log")
        clients = [s.client(d, f"station-{i:02}", port, d / f"c{i}.log") for i in range(1, n + 1)]
        wait_until("round 1", lambda: len(metrics_rows(out)) >= 1, 300)
        filler = mnt / "filler"
        with open(filler, "wb") as f:
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:
                pass
        rc = srv.wait(300)
        text = srv.text()
        if rc == 0:
            raise Fail("the server did not notice the full disk")
        if "panicked" in text:
            raise Fail("the server panicked")
        if "No space left" not in text and "space" not in text.lower():
            raise Fail(f"the error does not say the disk is full: {text[-400:]}")
        done = len(metrics_rows(out))
        filler.unlink()
        for c in clients:
            c.kill()
        port2 = free_port()
        cfg2 = s.server_toml(d, port2, out, rounds=done + 2, stations=n,
                             model='kind = "dnn"\nhidden = 128\nlayers = 3\ndropout = 0.0')
        srv2 = s.server(d, cfg2, d / "server-resumed.log", resume=True)
        clients = [s.client(d, f"station-{i:02}", port2, d / f"r{i}.log") for i in range(1, n + 1)]
        if srv2.wait(300) != 0:
            raise Fail(f"resuming after freeing space failed: {srv2.text()[-600:]}")
        for c in clients:
            c.wait(60)
        return (f"disk filled after round {done}: the server stopped with exit {rc} and a "
                f"'no space' error, no panic; after freeing space --resume completed rounds "
                f"{done + 1}-{done + 2}")
    finally:
        for p in s.procs:
            p.kill()
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def truncated_checkpoint(s, d):
    n, rounds = 2, 6
    s.pki(d / "pki", n)
    models = {}
    for mode in ("reference", "chaos"):
        port = free_port()
        out = d / f"out-{mode}"
        cfg = s.server_toml(d, port, out, rounds=rounds, stations=n)
        log = d / f"server-{mode}.log"
        srv = s.server(d, cfg, log)
        clients = [s.client(d, f"station-{i:02}", port, d / f"{mode}-{i}.log") for i in range(1, n + 1)]
        if mode == "chaos":
            wait_until("round 4 checkpointed", lambda: (out / "checkpoints/round-000004/state.json").exists()
                       and (out / "checkpoints/latest.json").exists()
                       and json.loads((out / "checkpoints/latest.json").read_text())["round"] >= 4, 300)
            srv.kill()
            latest = json.loads((out / "checkpoints/latest.json").read_text())
            model = out / "checkpoints" / latest["dir"] / "model.safetensors"
            size = model.stat().st_size
            with open(model, "r+b") as f:
                f.truncate(size // 2)
            srv = s.server(d, cfg, log, resume=True)
            broken_round = latest["round"]
        if srv.wait(600) != 0:
            raise Fail(f"{mode}: the server failed: {srv.text()[-600:]}")
        for c in clients:
            c.wait(60)
        models[mode] = sha256(out / "model.safetensors")
    text = (d / "server-chaos.log").read_text()
    if "resuming from the newest intact checkpoint" not in text:
        raise Fail("no fallback logged")
    if models["reference"] != models["chaos"]:
        raise Fail("the final model differs from the uninterrupted run's")
    aside = list((d / "out-chaos/checkpoints").glob("round-*.broken*"))
    return (f"round {broken_round}'s model truncated to half: resume fell back to round "
            f"{broken_round - 1}, kept the broken folder aside ({aside[0].name if aside else 'none'}), "
            f"final model identical to the uninterrupted run")


def thousand_stations(s, d, n=1000, rounds=20):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 8192)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    t0 = time.monotonic()
    s.pki(d / "pki", n)
    certs_s = time.monotonic() - t0
    port = free_port()
    out = d / "out"
    sample = max(1, n // 10)
    cfg = s.server_toml(d, port, out, rounds=rounds, stations=n,
                        federation={"min_stations": n, "min_fit": sample, "min_updates": sample,
                                    "fraction_fit": 0.1, "round_deadline": 120.0})
    srv = s.server(d, cfg, d / "server.log")
    wait_until("the server", lambda: "server ready" in srv.text(), 60)
    swarm = s.spawn("swarm", [s.exe("fedcrime-sim"), "-q", "swarm", "--server", f"127.0.0.1:{port}",
                              "--pki", d / "pki", "--stations", f"1-{n}", "--work", "echo"],
                    d / "swarm.log")
    rss = {}
    t_start = None
    while srv.alive():
        done = len(metrics_rows(out))
        if done and done not in rss:
            rss[done] = srv.rss_kib()
            if t_start is None:
                t_start = time.monotonic()
        time.sleep(0.02)
    if srv.wait(10) != 0:
        raise Fail(f"the server failed: {srv.text()[-600:]}")
    swarm.wait(120)
    if len(metrics_rows(out)) != rounds:
        raise Fail(f"{len(metrics_rows(out))} of {rounds} rounds")
    # Rounds can finish faster than the sampling: the first sample from
    # round 5 on is the reference.
    start = min((r for r in rss if r >= 5), default=None)
    base = rss.get(start) if start else None
    later = [v for r, v in rss.items() if start and r > start and v]
    if not base or not later:
        raise Fail(f"memory samples missing: {rss}")
    drift = max(abs(v - base) / base for v in later)
    if drift > 0.05:
        raise Fail(f"server memory moved {drift:.1%} after round 5 (rule: 5%): {rss}")
    return (f"{n} stations connected ({sample} sampled per round), {rounds} rounds; server RSS "
            f"{base / 1024:.0f} MiB at round {start}, at most {drift:.1%} away in {len(later)} later samples "
            f"up to round {rounds}; "
            f"({certs_s:.0f} s to issue the certificates)")


def poisoned_stations(s, d):
    """Each robust strategy three times on the same records: 20 honest
    stations; the 16 of them that stay honest, alone; those 16 with 4
    poisoned stations. An aggregator cannot bring back the records the 4
    attackers hold (stations are areas, so that changes the data), so the
    rule compares the attacked run with the 16 honest stations alone; the
    20-station run is shown beside it."""
    n, honest, rounds, last = 20, 16, 15, 5
    s.pki(d / "pki", n)
    data = s.data()
    poison = "sign-flip:17;scale=10:18;nan:19;random:20"
    strategies = [("fedavg", 'name = "fedavg"'), ("fedmedian", 'name = "fedmedian"'),
                  ("fedtrimmedavg", 'name = "fedtrimmedavg"\nbeta = 0.25'),
                  ("krum", 'name = "krum"\nbyzantine = 4')]
    setups = [("clean20", n, None), ("clean16", honest, None), ("poisoned", n, poison)]
    scores = {}
    for name, strategy in strategies:
        for tag, count, spec in setups:
            key = f"{name}-{tag}"
            port = free_port()
            out = d / f"out-{key}"
            cfg = s.server_toml(d, port, out, rounds=rounds, stations=count, strategy=strategy, epochs=2,
                                evaluation=data,
                                federation={"min_updates": count // 2, "eval_every": 1})
            srv = s.server(d, cfg, d / f"server-{key}.log")
            wait_until("the server", lambda: "server ready" in srv.text() or not srv.alive(), 120)
            argv = [s.exe("fedcrime-sim"), "-q", "swarm", "--server", f"127.0.0.1:{port}", "--pki",
                    d / "pki", "--stations", f"1-{count}", "--work", "train", "--data", data]
            if spec:
                argv += ["--poison", spec]
            sw = s.spawn("swarm", argv, d / f"swarm-{key}.log")
            if srv.wait(1200) != 0:
                raise Fail(f"{key}: the server failed: {srv.text()[-600:]}")
            sw.wait(120)
            rows = metrics_rows(out)
            for col in ("server_accuracy", "server_macro_f1"):
                vals = [float(r[col]) for r in rows[-last:] if r.get(col) not in (None, "")]
                if len(vals) != last:
                    raise Fail(f"{key}: {col} missing in the last {last} rounds")
                scores[(key, col)] = 100 * sum(vals) / len(vals)
    lines, worst = [], 0.0
    for name, _ in strategies:
        acc = [scores[(f"{name}-{t}", "server_accuracy")] for t in ("clean20", "clean16", "poisoned")]
        f1 = [scores[(f"{name}-{t}", "server_macro_f1")] for t in ("clean20", "clean16", "poisoned")]
        if name != "fedavg":
            worst = max(worst, acc[1] - acc[2])
        lines.append(f"{name} accuracy {acc[2]:.1f} (16 honest alone {acc[1]:.1f}, all 20 {acc[0]:.1f}), "
                     f"macro-F1 {f1[2]:.1f} ({f1[1]:.1f}, {f1[0]:.1f})")
    summary = (f"4 of 20 stations poisoned (sign flip, x10, NaN, random); server-side test scores x100, "
               f"mean of rounds {rounds - last + 1}-{rounds}: " + "; ".join(lines) + " (fedavg for contrast)")
    if worst > 2.0:
        raise Fail(summary + f" -- a robust strategy lost {worst:.1f} accuracy points to the attack (rule: <= 2)")
    return summary


SCENARIOS = [
    ("certificates", "every kind of bad certificate is refused, the server keeps serving and an honest station completes the run",
     bad_certificates),
    ("server-kill", "kill -9 of the server at 10 random points, each followed by --resume: the final model equals an uninterrupted run's, stations are back < 3 s after each restart",
     lambda s, d: kill_server(s, d, 10)),
    ("stations-killed", "30% of stations kill -9'd mid-round, restarted later: the round ends without them well before its deadline, the run completes, they take part again",
     stations_killed),
    ("station-stopped", "a station SIGSTOPped past the deadline: the round goes on without it, it recovers after SIGCONT",
     station_stopped),
    ("duplicate", "a second process with a station's certificate never aborts the run or takes a round from the first; it is refused and stands by",
     duplicate_identity),
    ("udp-flood", "a UDP garbage flood at the server port during a run: the run completes, at most 3x slower",
     udp_flood),
    ("full-disk", "the output disk fills mid-run: the server stops with a clear error (no panic), nothing completed is lost, --resume completes after space is freed",
     full_disk),
    ("truncated-checkpoint", "the latest checkpoint truncated: --resume falls back to the previous one and the final model equals an uninterrupted run's",
     truncated_checkpoint),
    ("1000-stations", "1,000 concurrent connections for 20 rounds: server memory within 5% of round 5's from round 6 on",
     thousand_stations),
    ("poisoned", "20% poisoned stations: median, trimmed mean (beta 0.25) and Krum within 2 accuracy points of the same strategy on the honest stations alone (macro-F1 shown)",
     poisoned_stations),
]

SMOKE = {
    "certificates": bad_certificates,
    "server-kill": lambda s, d: kill_server(s, d, 2),
    "duplicate": duplicate_identity,
}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_bin = ROOT / "target" / "release"
    if not (default_bin / "fedcrime-server").exists():
        default_bin = ROOT / "target" / "debug"
    ap.add_argument("--bin", default=str(default_bin), help="folder of the fedcrime binaries")
    ap.add_argument("--smoke", action="store_true", help="the short subset (make test)")
    ap.add_argument("--only", help="comma-separated scenario names")
    ap.add_argument("--table", help="also write the results table to this file")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    args = ap.parse_args()
    suite = Suite(args)
    chosen = [(n, r, f) for n, r, f in SCENARIOS]
    if args.smoke:
        chosen = [(n, r + " (smoke: fewer kills)" if n == "server-kill" else r, SMOKE[n])
                  for n, r, _ in SCENARIOS if n in SMOKE]
    if args.only:
        want = set(args.only.split(","))
        unknown = want - {n for n, _, _ in SCENARIOS}
        if unknown:
            raise SystemExit(f"unknown scenarios: {sorted(unknown)}")
        chosen = [c for c in chosen if c[0] in want]
    print(f"chaos: binaries {suite.bin}, work folder {suite.tmp}")
    try:
        for name, rule, fn in chosen:
            suite.scenario(name, rule, lambda d, fn=fn: fn(suite, d))
    finally:
        suite.cleanup()
    table = suite.table()
    print("\n" + table)
    if args.table:
        Path(args.table).write_text(table + "\n")
    failed = [r[0] for r in suite.results if r[2] == "FAIL"]
    if not failed and not args.keep:
        shutil.rmtree(suite.tmp, ignore_errors=True)
    if failed:
        print(f"\nchaos: FAILED: {', '.join(failed)} (logs in {suite.tmp})")
        return 1
    print("\nchaos: all scenarios passed" + (" (some skipped)" if any(r[2] == "SKIP" for r in suite.results) else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())

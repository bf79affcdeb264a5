#!/usr/bin/env python3
"""kill -9 durability of the prediction service's ingestion
(`fedcrime-client serve`, POST /incidents), against real processes.

    .ci/chaos/serve_durability.py                     # debug binaries
    .ci/chaos/serve_durability.py --bin target/release --rounds 10 --seed 3

What it does, in a temporary folder (removed at the end unless --keep, or
on failure, when its logs are kept and named):

1. trains a tiny risk DNN with `fedcrime-sim train` (1 epoch, hidden 8; on
   ../shared/data/la-crime/la_crime_2024_02.csv when present, else on
   5,000 synthetic rows), since CI has no runs/ folder;
2. starts `fedcrime-client serve --area 7` on a port the kernel picks, over
   the same records (the file, or synthetic data) and a store in the folder;
3. for each of --rounds rounds: a thread POSTs batches of new area-7
   incidents (CSV, the export's 28-column header, fresh DR_NOs) while the
   main thread SIGKILLs the service at a random moment (seeded); every
   DR_NO whose POST was answered 200 with all rows "added" is
   acknowledged. The service is restarted over the same --store, its
   "incident store opened" log line is checked (loaded between the
   acknowledged and the sent rows, no ERROR line), and every DR_NO
   acknowledged in that round (after the last restart: in any round) must
   be served by GET /incidents/{dr_no} (200);
4. after the last restart: posting an acknowledged batch again reports
   only duplicates, a JSON row is taken, and bad inputs answer 4xx with a
   JSON "error" naming the problem (415 content type, 422 a row of AREA 8
   naming the row and AREA, 400 malformed CSV, 413 a ~5 MB body over the
   default 4 MiB limit, 404/422 an unknown area in /predict/risk);
5. starts a second service over the same store while the first runs: it
   must refuse, or neither may lose what it acknowledged.

Known defects of the service (a wrong row number in the AREA error, a row
repeated inside one body not counted, two services sharing a store) are
printed as WARN lines and do not fail the run; --strict makes them fail.

kill -9 tests the process, not the machine: what write() handed to the
kernel survives it even without fsync (power loss is not simulated).

Prints a short report; exit 0 on success, 1 with the failed rule, 2 when
it cannot start (binaries missing). Python standard library only.
"""

import argparse
import csv
import datetime
import http.client
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data" / "la-crime"
REAL_FILE = SHARED / "la_crime_2024_02.csv"
SCHEMA_RS = ROOT / "common" / "data" / "src" / "schema.rs"
AREA = 7

# The export's header, as in common/data/src/schema.rs (HEADER); read from
# there when it can be, this copy is the fallback.
HEADER_FALLBACK = [
    "DR_NO", "Date Rptd", "DATE OCC", "TIME OCC", "AREA", "AREA NAME",
    "Rpt Dist No", "Part 1-2", "Crm Cd", "Crm Cd Desc", "Mocodes", "Vict Age",
    "Vict Sex", "Vict Descent", "Premis Cd", "Premis Desc", "Weapon Used Cd",
    "Weapon Desc", "Status", "Status Desc", "Crm Cd 1", "Crm Cd 2", "Crm Cd 3",
    "Crm Cd 4", "LOCATION", "Cross Street", "LAT", "LON",
]

ANSI = re.compile(r"\x1b\[[0-9;]*m")


class Fail(Exception):
    """A rule that did not hold."""


STRICT = False
KNOWN = []


def known(msg):
    """A known defect of the service: a warning, or a failure with --strict."""
    if STRICT:
        raise Fail(msg)
    KNOWN.append(msg)
    print(f"  WARN (known issue, --strict fails on it): {msg}", flush=True)


def log(msg):
    print(msg, flush=True)


# --------------------------------------------------------------------------
# rows


def schema_header():
    """The 28 column names from schema.rs, else the fallback copy."""
    try:
        text = SCHEMA_RS.read_text()
        m = re.search(r"const HEADER: \[&str; COLUMN_COUNT\] = \[(.*?)\];", text, re.S)
        names = re.findall(r'"([^"]*)"', m.group(1)) if m else []
        if len(names) == 28:
            return names, "common/data/src/schema.rs"
    except OSError:
        pass
    return list(HEADER_FALLBACK), "the script's copy of the header"


def csv_line(cells):
    out = []
    for c in cells:
        c = str(c)
        if any(ch in c for ch in ',"\r\n'):
            c = '"' + c.replace('"', '""') + '"'
        out.append(c)
    return ",".join(out)


def split_csv_line(line):
    """One CSV record (no embedded newlines in the export's rows)."""
    return next(csv.reader([line]))


class Rows:
    """Area-7 incident rows with fresh DR_NOs, from templates."""

    def __init__(self, header, templates, source):
        self.header = header
        self.templates = templates  # lists of 28 cells
        self.source = source
        self.next_id = 990_700_000  # year "99", area 07: no real DR_NO
        self.lock = threading.Lock()

    def fresh_ids(self, n):
        with self.lock:
            first = self.next_id
            self.next_id += n
        return list(range(first, first + n))

    def cells(self, dr_no, k=0, area=None):
        row = list(self.templates[k % len(self.templates)])
        row[0] = str(dr_no)
        if area is not None:
            row[4] = f"{area:02d}"
            row[5] = {8: "West LA"}.get(area, row[5])
            row[6] = f"{area:02d}{row[6][-2:]}"
        return row

    def csv(self, ids, area_of=None, change=None):
        """A CSV body of `ids`; `area_of(k)` sets row k's area, `change[k]`
        ({column index: value}) other cells of row k."""
        lines = [",".join(self.header)]
        for k, dr in enumerate(ids):
            area = area_of(k) if area_of else None
            cells = self.cells(dr, k, area)
            for col, value in ((change or {}).get(k) or {}).items():
                cells[col] = value
            lines.append(csv_line(cells))
        return ("\n".join(lines) + "\n").encode()


def load_templates(header, real):
    """A few area-7 rows: from the real file, else built from the header."""
    if real:
        with open(REAL_FILE, newline="") as f:
            file_header = split_csv_line(f.readline().rstrip("\r\n"))
            if [h.strip().lower() for h in file_header] != [h.lower() for h in header]:
                raise Fail(f"{REAL_FILE}: header differs from schema.rs: {file_header}")
            rows = []
            for line in f:
                cells = split_csv_line(line.rstrip("\r\n"))
                if len(cells) == 28 and cells[4].strip().lstrip("0") == str(AREA):
                    rows.append(cells)
                if len(rows) == 8:
                    break
        if not rows:
            raise Fail(f"{REAL_FILE}: no area-{AREA} row")
        return rows, f"{len(rows)} area-7 rows of {REAL_FILE.name}"
    # Synthetic records: rows built column by column (what the loader
    # accepts: MM/DD/YYYY dates, TIME OCC HHMM, AREA 1..21, a crime code).
    # The dates are set later, just before the service's "next" period.
    values = {
        "DR_NO": "0", "Date Rptd": "", "DATE OCC": "", "TIME OCC": "1230",
        "AREA": "07", "AREA NAME": "Wilshire", "Rpt Dist No": "0721",
        "Part 1-2": "1", "Crm Cd": "624", "Crm Cd Desc": "BATTERY - SIMPLE ASSAULT",
        "Mocodes": "0416", "Vict Age": "32", "Vict Sex": "M", "Vict Descent": "H",
        "Premis Cd": "101", "Premis Desc": "STREET", "Weapon Used Cd": "",
        "Weapon Desc": "", "Status": "IC", "Status Desc": "Invest Cont",
        "Crm Cd 1": "624", "Crm Cd 2": "", "Crm Cd 3": "", "Crm Cd 4": "",
        "LOCATION": "700 S  LA BREA                     AV", "Cross Street": "",
        "LAT": "34.0622", "LON": "-118.3441",
    }
    missing = [h for h in header if h not in values]
    if missing:
        raise Fail(f"schema.rs names columns this script does not know: {missing}")
    base = [values[h] for h in header]
    rows = []
    for k, (code, desc, t) in enumerate([
        ("624", "BATTERY - SIMPLE ASSAULT", "1230"),
        ("330", "BURGLARY FROM VEHICLE", "0215"),
        ("510", "VEHICLE - STOLEN", "2140"),
        ("354", "THEFT OF IDENTITY", "0900"),
    ]):
        r = list(base)
        r[header.index("Crm Cd")] = code
        r[header.index("Crm Cd 1")] = code
        r[header.index("Crm Cd Desc")] = desc
        r[header.index("TIME OCC")] = t
        rows.append(r)
    return rows, "rows built from the header (synthetic records)"


def set_dates(rows, day_mmddyyyy):
    for r in rows.templates:
        r[1] = f"{day_mmddyyyy} 12:00:00 AM"
        r[2] = f"{day_mmddyyyy} 12:00:00 AM"


# --------------------------------------------------------------------------
# processes and HTTP


class Service:
    """One fedcrime-client serve process, output in a log file."""

    def __init__(self, argv, logfile):
        self.logfile = Path(logfile)
        self.fh = open(self.logfile, "ab")
        self.start_at = self.logfile.stat().st_size
        self.p = subprocess.Popen([str(a) for a in argv], stdout=self.fh,
                                  stderr=subprocess.STDOUT, start_new_session=True,
                                  env={**os.environ, "NO_COLOR": "1"})
        self.port = None

    def text(self):
        with open(self.logfile, "rb") as f:
            f.seek(self.start_at)
            return ANSI.sub("", f.read().decode("utf-8", "replace"))

    def wait_ready(self, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.p.poll() is not None:
                raise Fail(f"the service exited with {self.p.returncode} before it was "
                           f"ready:\n{tail(self.text())}")
            if self.port is None:
                m = re.search(r"serving \S+ on http://127\.0\.0\.1:(\d+)", self.text())
                if m:
                    self.port = int(m.group(1))
            if self.port is not None:
                try:
                    status, _ = request(self.port, "GET", "/v2/health/ready", timeout=2)
                    if status == 200:
                        return
                except OSError:
                    pass
            time.sleep(0.05)
        raise Fail(f"the service was not ready after {timeout:.0f} s:\n{tail(self.text())}")

    def kill(self):
        if self.p.poll() is None:
            try:
                os.kill(self.p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        self.fh.close()


def tail(text, n=15):
    return "\n".join("    " + line for line in text.strip().splitlines()[-n:])


def request(port, method, path, body=None, content_type=None, timeout=10):
    """(status, parsed JSON or raw text). Raises OSError on a dead peer."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {}
        if content_type:
            headers["Content-Type"] = content_type
        try:
            conn.request(method, path, body=body, headers=headers)
        except (BrokenPipeError, ConnectionResetError):
            # The server may answer (413) and close before taking the whole
            # body: its answer can still be read.
            pass
        r = conn.getresponse()
        raw = r.read()
        try:
            return r.status, json.loads(raw)
        except ValueError:
            return r.status, raw.decode("utf-8", "replace")
    finally:
        conn.close()


class Poster(threading.Thread):
    """POSTs batches until stopped or the service dies; keeps what was
    acknowledged."""

    def __init__(self, port, rows, batch):
        super().__init__(daemon=True)
        self.port, self.rows, self.batch = port, rows, batch
        self.stop = threading.Event()
        self.acked = []        # DR_NOs of 200 "added" == batch
        self.acked_batches = []
        self.sent = []         # every DR_NO sent (acknowledged or not)
        self.in_flight = []    # the batch whose answer never came
        self.errors = []       # unexpected answers (not a dead peer)

    def run(self):
        while not self.stop.is_set():
            ids = self.rows.fresh_ids(self.batch)
            self.sent.extend(ids)
            try:
                status, body = request(self.port, "POST", "/incidents",
                                       self.rows.csv(ids), "text/csv", timeout=10)
            except (OSError, http.client.HTTPException):
                self.in_flight = ids
                return
            if status == 200 and isinstance(body, dict) and body.get("added") == len(ids):
                self.acked.extend(ids)
                self.acked_batches.append(ids)
            else:
                self.errors.append(f"POST /incidents: {status} {body}")
                return


# --------------------------------------------------------------------------
# the test


def check_error(port, what, method, path, body, ctype, statuses, words):
    status, reply = request(port, method, path, body, ctype)
    msg = reply.get("error") if isinstance(reply, dict) else None
    ok = status in statuses and isinstance(msg, str) and all(
        w.lower() in msg.lower() for w in words)
    line = f"  {what}: {status} {json.dumps(msg)[:150]}"
    if not ok:
        raise Fail(f"{what}: expected {'/'.join(map(str, statuses))} with a JSON "
                   f"\"error\" naming {words}, got {status} {str(reply)[:300]}")
    return line


def open_report(service):
    """The 'incident store opened' line of the latest start: (loaded, torn)."""
    text = service.text()
    bad = [l for l in text.splitlines() if '"level":"ERROR"' in l or " ERROR " in l]
    if bad:
        raise Fail("the restart logged errors:\n" + "\n".join(bad[:5]))
    for line in text.splitlines():
        if not line.startswith("{"):
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        f = rec.get("fields", {})
        if f.get("message") == "incident store opened":
            return int(f["loaded"]), int(f["torn_bytes_cut"]), int(f["history"])
    raise Fail(f"no 'incident store opened' log line:\n{tail(text)}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default="target/debug", help="folder of the binaries")
    ap.add_argument("--rounds", type=int, default=5, help="kill/restart cycles")
    ap.add_argument("--seed", type=int, default=20240229)
    ap.add_argument("--batch", type=int, default=20, help="rows per POST")
    ap.add_argument("--synthetic", action="store_true",
                    help="synthetic records even when the real file is present")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    ap.add_argument("--strict", action="store_true",
                    help="fail on the known issues too (reported as WARN otherwise)")
    args = ap.parse_args()
    global STRICT
    STRICT = args.strict

    bin_dir = Path(args.bin)
    if not bin_dir.is_absolute():
        bin_dir = ROOT / bin_dir
    client, sim = bin_dir / "fedcrime-client", bin_dir / "fedcrime-sim"
    for b in (client, sim):
        if not os.access(b, os.X_OK):
            print(f"serve_durability: {b} is missing: build it first "
                  f"(cargo build -p fedcrime-client -p fedcrime-sim)", file=sys.stderr)
            return 2

    # A SIGTERM (CI timeout) still runs the clean-up below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    rng = random.Random(args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="fedcrime-serve-durability-"))
    services = []
    ok = False
    t0 = time.monotonic()
    try:
        real = REAL_FILE.is_file() and not args.synthetic
        header, header_src = schema_header()
        templates, rows_src = load_templates(header, real)
        rows = Rows(header, templates, rows_src)
        log(f"serve durability: {args.rounds} kill -9 rounds, seed {args.seed}, "
            f"batches of {args.batch}, binaries {bin_dir}")
        log(f"  records: {REAL_FILE if real else 'synthetic (fedcrime-client default)'}; "
            f"header from {header_src}; posted rows from {rows_src}")

        # 1. a tiny model
        model = tmp / "model"
        train = [sim, "train", "--model", "dnn", "--task", "risk", "--epochs", "1",
                 "--hidden", "8", "--threads", "1", "--seed", "1", "--no-progress",
                 "-q", "--out", model]
        train += ["--data", REAL_FILE] if real else ["--rows", "5000"]
        t = time.monotonic()
        r = subprocess.run([str(a) for a in train], capture_output=True, text=True,
                           timeout=120)
        if r.returncode != 0 or not (model / "model.safetensors").is_file():
            raise Fail(f"training the tiny model failed ({r.returncode}):\n"
                       f"{tail(r.stdout + r.stderr)}")
        log(f"  trained a tiny model in {time.monotonic() - t:.1f} s")

        store = tmp / "incidents.store"
        logfile = tmp / "serve.log"
        serve = [client, "serve", "--model", model, "--area", str(AREA),
                 "--listen", "127.0.0.1:0", "--store", store, "--threads", "1",
                 "--log-format", "json", "--log-level", "info"]
        if real:
            serve += ["--data", REAL_FILE]

        def start():
            s = Service(serve, logfile)
            services.append(s)
            s.wait_ready(60)
            return s

        s = start()
        loaded, torn, base_history = open_report(s)
        if loaded != 0:
            raise Fail(f"a fresh store loaded {loaded} incidents")
        if not real:
            # Dates of the posted rows: the day before the next period.
            st, body = request(s.port, "GET", f"/predict/risk?area={AREA}&at=next")
            if st != 200:
                raise Fail(f"/predict/risk: {st} {body}")
            y, m, d = map(int, body["predictions"][0]["at"][:10].split("-"))
            day = datetime.date(y, m, d) - datetime.timedelta(days=1)
            set_dates(rows, day.strftime("%m/%d/%Y"))

        # A first POST, checked by hand.
        ids = rows.fresh_ids(3)
        st, body = request(s.port, "POST", "/incidents", rows.csv(ids), "text/csv")
        if st != 200 or not isinstance(body, dict) or body.get("added") != 3:
            raise Fail(f"first POST /incidents: expected 200 with \"added\": 3, got "
                       f"{st} {body}")
        log(f"  first POST: 200 {json.dumps(body)}")
        acked = list(ids)
        acked_batches = [ids]
        sent = list(ids)
        partial_in_flight = 0

        # 2. kill -9 rounds
        log("  round  acked  sent  in-flight(stored)  restart: loaded torn-bytes  checked  s")
        for rnd in range(1, args.rounds + 1):
            rt = time.monotonic()
            poster = Poster(s.port, rows, args.batch)
            poster.start()
            time.sleep(rng.uniform(0.2, 1.0))
            s.kill()
            poster.stop.set()
            poster.join(15)
            if poster.is_alive():
                raise Fail("the posting thread hangs after the kill")
            if poster.errors:
                raise Fail("unexpected answer before the kill: " + poster.errors[0])
            acked += poster.acked
            acked_batches += poster.acked_batches
            sent += poster.sent

            s = start()
            loaded, torn, history = open_report(s)
            if not len(acked) <= loaded <= len(sent):
                raise Fail(f"round {rnd}: the store loaded {loaded} incidents; "
                           f"{len(acked)} were acknowledged, {len(sent)} sent")
            if history != base_history + loaded:
                raise Fail(f"round {rnd}: history {history} != records {base_history} "
                           f"+ stored {loaded}")
            # The DR_NOs acknowledged in this round; after the last restart,
            # every one acknowledged in any round.
            check = acked if rnd == args.rounds else poster.acked
            conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=10)
            missing = []
            ct = time.monotonic()
            for dr in check:
                conn.request("GET", f"/incidents/{dr}")
                resp = conn.getresponse()
                body = resp.read()
                if resp.status != 200:
                    missing.append((dr, resp.status, body[:120]))
                elif json.loads(body).get("dr_no") != dr:
                    missing.append((dr, resp.status, body[:120]))
            # The batch in flight at the kill: stored whole, or not at all
            # (a kill cannot tear one write(); partial is reported).
            stored_in_flight = 0
            for dr in poster.in_flight:
                conn.request("GET", f"/incidents/{dr}")
                resp = conn.getresponse()
                resp.read()
                stored_in_flight += resp.status == 200
            conn.close()
            get_rate = len(check) / max(time.monotonic() - ct, 1e-9)
            if missing:
                raise Fail(f"round {rnd}: {len(missing)} acknowledged incident(s) lost "
                           f"after kill -9, e.g. {missing[:3]}")
            if 0 < stored_in_flight < len(poster.in_flight):
                partial_in_flight += 1
            log(f"  {rnd:5d}  {len(poster.acked):5d}  {len(poster.sent):4d}  "
                f"{len(poster.in_flight):9d}({stored_in_flight:2d})      "
                f"{loaded:6d} {torn:10d}  {len(check):7d}  {time.monotonic() - rt:.1f}")
        log(f"  (the last check: {len(acked)} GET /incidents/{{dr_no}} at {get_rate:.0f}/s "
            f"over a history of {history})")
        if len(acked) <= 3:
            raise Fail("no batch was acknowledged during the rounds: "
                       "the kills came too early (try another --seed)")

        # 3. duplicates, JSON, bad inputs
        log("  after the last restart:")
        again = acked_batches[len(acked_batches) // 2]
        st, body = request(s.port, "POST", "/incidents", rows.csv(again), "text/csv")
        if st != 200 or body.get("added") != 0 or body.get("duplicates") != len(again):
            raise Fail(f"an acknowledged batch posted again: expected 200 with added 0, "
                       f"duplicates {len(again)}; got {st} {body}")
        log(f"  acknowledged batch again: 200 {json.dumps(body)}")
        new = rows.fresh_ids(1)[0]
        st, body = request(s.port, "POST", "/incidents", rows.csv([new, again[0]]),
                           "text/csv")
        if st != 200 or (body.get("added"), body.get("duplicates")) != (1, 1):
            raise Fail(f"1 new + 1 stored row: expected 200 with added 1, duplicates 1; "
                       f"got {st} {body}")
        log(f"  1 new + 1 stored row: 200 {json.dumps(body)}")
        new = rows.fresh_ids(1)[0]
        st, body = request(s.port, "POST", "/incidents", rows.csv([new, new]), "text/csv")
        if st != 200 or body.get("added") != 1:
            raise Fail(f"a row sent twice in one body: expected 200 with added 1; "
                       f"got {st} {body}")
        if body.get("duplicates") != 1:
            known(f"a row sent twice in one body: added {body.get('added')} + duplicates "
                  f"{body.get('duplicates')} != 2 rows sent (the CSV loader drops the "
                  f"repeat before ingestion counts it)")
        else:
            log(f"  1 row twice in one body: 200 {json.dumps(body)}")
        jid = rows.fresh_ids(1)[0]
        obj = dict(zip(header, rows.cells(jid)))
        st, body = request(s.port, "POST", "/incidents", json.dumps(obj).encode(),
                           "application/json")
        st2, _ = request(s.port, "GET", f"/incidents/{jid}")
        if st != 200 or body.get("added") != 1 or st2 != 200:
            raise Fail(f"a JSON row: POST {st} {body}, then GET {st2}")
        log(f"  JSON row: 200 {json.dumps(body)}, then GET 200")

        bad_ids = rows.fresh_ids(3)
        lines = [
            check_error(s.port, "text/plain", "POST", "/incidents", rows.csv(bad_ids),
                        "text/plain", {415}, ["content type"]),
            check_error(s.port, "no content type", "POST", "/incidents",
                        rows.csv(bad_ids), None, {415}, ["content type"]),
            check_error(s.port, "row 2 of AREA 8", "POST", "/incidents",
                        rows.csv(bad_ids, lambda k: 8 if k == 1 else None), "text/csv",
                        {422}, ["DR_NO", str(bad_ids[1]), "AREA", "8"]),
        ]
        # The row must be named by its DR_NO, whatever the order of the body:
        # row 1 is AREA 8 and the latest of the batch in time.
        same_day = rows.templates[0][2]
        when = {k: {1: same_day, 2: same_day, 3: t} for k, t in
                enumerate(["2300", "0100", "0200"])}
        st, reply = request(s.port, "POST", "/incidents",
                            rows.csv(bad_ids, lambda k: 8 if k == 0 else None, when),
                            "text/csv")
        msg = reply.get("error", "") if isinstance(reply, dict) else str(reply)
        if st != 422 or "AREA" not in msg:
            raise Fail(f"row 1 of AREA 8: expected 422 naming AREA, got {st} {reply}")
        if f"DR_NO {bad_ids[0]}" not in msg:
            raise Fail(f"row 1 of AREA 8 (a later TIME OCC than rows 2-3): the error does "
                       f"not name its DR_NO {bad_ids[0]}: {msg!r}")
        else:
            lines.append(f"  row 1 of AREA 8, out of time order: {st} {json.dumps(msg)}")
        # Refused whole: none of that batch was stored.
        for dr in bad_ids:
            st, _ = request(s.port, "GET", f"/incidents/{dr}")
            if st != 404:
                raise Fail(f"a refused batch was partly stored: GET /incidents/{dr} {st}")
        good = rows.csv(rows.fresh_ids(2)).decode().splitlines()
        short = good[2].rsplit(",", 10)[0]
        lines += [
            check_error(s.port, "malformed CSV (short row)", "POST", "/incidents",
                        "\n".join(good[:2] + [short]).encode() + b"\n", "text/csv",
                        {400}, ["CSV", "line 3"]),
            check_error(s.port, "malformed CSV (no header)", "POST", "/incidents",
                        b"this is not, a crime export\n1,2\n", "text/csv", {400},
                        ["CSV", "header"]),
            check_error(s.port, "malformed JSON", "POST", "/incidents", b'{"DR_NO": ',
                        "application/json", {400}, ["JSON"]),
            check_error(s.port, "DATE OCC Feb 30", "POST", "/incidents",
                        rows.csv(rows.fresh_ids(2), change={1: {2: "02/30/2024 12:00:00 AM"}}),
                        "text/csv", {400, 422}, ["row 2", "DATE OCC"]),
        ]
        big = rows.csv(rows.fresh_ids(1)) + b"#" * (5 * 1000 * 1000) + b"\n"
        lines.append(check_error(s.port, f"{len(big) / 1e6:.1f} MB body", "POST",
                                 "/incidents", big, "text/csv", {413}, ["max_body_bytes"]))
        lines += [
            check_error(s.port, "/predict/risk area 8 (not served)", "GET",
                        "/predict/risk?area=8&at=next", None, None, {404, 422},
                        ["area 8"]),
            check_error(s.port, "/predict/risk area 99", "GET",
                        "/predict/risk?area=99&at=next", None, None, {404, 422},
                        ["area", "99"]),
            check_error(s.port, "/predict/risk area Atlantis", "GET",
                        "/predict/risk?area=Atlantis", None, None, {404, 422},
                        ["area", "Atlantis"]),
            check_error(s.port, "GET /incidents/not-a-number", "GET",
                        "/incidents/abc", None, None, {400}, ["DR_NO"]),
        ]
        for line in lines:
            log(line)
        st, body = request(s.port, "GET", "/v2/health/ready")
        if st != 200 or s.p.poll() is not None:
            raise Fail(f"the service is not ready after the bad inputs: {st} {body}")
        st, body = request(s.port, "GET", f"/predict/risk?area={AREA}&at=next")
        if st != 200:
            raise Fail(f"/predict/risk after ingestion: {st} {body}")

        # 5. a second service over the same store (an overlapping restart):
        # it must refuse to start, or both must keep what they acknowledged.
        other = Service(serve, tmp / "serve-second.log")
        services.append(other)
        try:
            other.wait_ready(60)
        except Fail:
            other = None
        if other is None:
            log("  a second service on the same --store: refused to start")
        else:
            ia, ib = rows.fresh_ids(5), rows.fresh_ids(5)
            for svc, ids in ((s, ia), (other, ib)):
                st, body = request(svc.port, "POST", "/incidents", rows.csv(ids), "text/csv")
                if st != 200 or body.get("added") != len(ids):
                    raise Fail(f"POST to one of two services on one store: {st} {body}")
            s.kill()
            other.kill()
            s = start()
            lost = [dr for dr in acked[-200:] + ia + ib
                    if request(s.port, "GET", f"/incidents/{dr}")[0] != 200]
            if lost:
                known(f"two services over one --store both start and acknowledge, then "
                      f"{len(lost)} acknowledged incident(s) are lost (no lock on the "
                      f"store; each appends at its own offset): e.g. {lost[:3]}")
            else:
                log("  a second service on the same --store: started, nothing lost")

        log(f"serve durability: PASS: {len(acked)} acknowledged incidents survived "
            f"{args.rounds} kill -9 rounds ({len(sent)} sent"
            + (f"; {partial_in_flight} in-flight batch(es) partly stored" if
               partial_in_flight else "")
            + f"), {time.monotonic() - t0:.1f} s"
            + (f"; {len(KNOWN)} known issue(s) warned" if KNOWN else ""))
        ok = True
        return 0
    except Fail as e:
        print(f"serve durability: FAIL: {e}", file=sys.stderr)
        return 1
    finally:
        for s in services:
            s.kill()
        if ok and not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"  (files kept in {tmp}: serve.log, incidents.store, model/)",
                  file=sys.stderr if not ok else sys.stdout)


if __name__ == "__main__":
    sys.exit(main())

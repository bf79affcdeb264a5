#!/usr/bin/env python3
"""The pandas reference of `fedcrime-sim bench data`.

Reads an LAPD crime export (.csv or .csv.gz) with pandas and does the same
work as the Rust pipeline's load and task grouping: parse every column, drop
duplicate DR_NO, parse both date columns, map crime codes to the 8 categories
and count incidents per (area, date, 4-hour block) and per (area, day,
category). Prints one JSON object with the timings (seconds, measured inside
the script from before read_csv to after the last groupby, so interpreter
start-up and imports are not counted) and the peak RSS.

    python .ci/bench/data_pandas.py FILE --lut LUT.json

LUT.json maps crime codes to category indices (`{"110": 0, ...}`), written by
the Rust side from `Category::from_crime_code` so both sides categorize alike.
"""

import argparse
import json
import resource
import sys
import time

import numpy as np
import pandas as pd


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("file")
    ap.add_argument("--lut", required=True, help="JSON crime code -> category index")
    args = ap.parse_args()

    with open(args.lut) as f:
        raw = json.load(f)
    other = raw.get("other", 7)
    lut = np.full(10000, other, dtype=np.int8)
    for code, cat in raw["codes"].items():
        lut[int(code)] = cat

    t0 = time.perf_counter()
    df = pd.read_csv(args.file, low_memory=False)
    t_read = time.perf_counter()

    rows_read = len(df)
    df = df.drop_duplicates("DR_NO")
    # Both export formats start with MM/DD/YYYY ("12:00:00 AM" or "00:00" follow).
    occ = pd.to_datetime(df["DATE OCC"].str.slice(0, 10), format="%m/%d/%Y", errors="coerce")
    rptd = pd.to_datetime(df["Date Rptd"].str.slice(0, 10), format="%m/%d/%Y", errors="coerce")
    area = pd.to_numeric(df["AREA"], errors="coerce")
    tocc = pd.to_numeric(df["TIME OCC"], errors="coerce")
    code = pd.to_numeric(df["Crm Cd"], errors="coerce")
    ok = occ.notna() & rptd.notna() & area.between(1, 21) & tocc.between(0, 2359) & code.notna()
    occ, area, tocc, code = occ[ok], area[ok].astype(np.int8), tocc[ok], code[ok]
    hours = (tocc // 100).astype(np.int16)
    block = (hours // 4).astype(np.int8)
    cat = lut[np.clip(code.to_numpy(dtype=np.int64), 0, len(lut) - 1)]
    t_clean = time.perf_counter()

    risk = occ.groupby([area, occ, block]).size()
    counts = occ.groupby([area, occ, cat]).size()
    t_end = time.perf_counter()

    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "rows_read": int(rows_read),
                "rows_kept": int(ok.sum()),
                "risk_groups": int(len(risk)),
                "counts_groups": int(len(counts)),
                "read_seconds": t_read - t0,
                "clean_seconds": t_clean - t_read,
                "groupby_seconds": t_end - t_clean,
                "seconds": t_end - t0,
                "peak_rss_mb": peak_kb / 1024.0,
                "pandas": pd.__version__,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

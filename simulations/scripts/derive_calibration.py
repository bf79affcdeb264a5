#!/usr/bin/env python3
"""Derives the synthetic generator's calibration table from the real LAPD samples.

Usage (from the repository root, with pandas available, e.g. the torch venv):

    python simulations/scripts/derive_calibration.py ../shared/data/la-crime > /tmp/calibration.rs

It prints the body of the tables in `common/src/data/calibration.rs`; the test
`data::calibration::tests::table_matches_real_samples` recomputes the key
statistics from the same files in Rust and checks the table against them.

Sources: `la_crime_2024_02.csv` (one whole month, the untouched city export) for
volumes, category mixes, time profiles, victims, weapons, premises and places;
both files pooled for weekday profiles (per-weekday rates); the 2020 sample for
what only it shows: the older 24-hour date layout, LAT/LON 0,0 and the
long-delay tail of reporting (the February file is cut one month after the
crimes, so it has no long delays). The 2020 sample is not used for volumes or
mixes: it over-represents some crime codes (e.g. 331) and central areas.
"""
import sys

import numpy as np
import pandas as pd

CATS = ["violent", "robbery", "burglary", "theft", "vehicle", "vandalism", "sex_offence", "other"]


def category(code: int) -> int:
    """Mirror of Category::from_crime_code."""
    def r(a, b):
        return a <= code <= b
    if code in (110, 113, 230, 231, 235, 236, 250, 251, 647, 753, 761, 763, 910, 928, 930) or r(622, 627) or r(434, 436) or r(920, 922):
        return 0
    if code in (210, 220):
        return 1
    if code in (310, 320, 330, 410):
        return 2
    if r(341, 354) or r(440, 453) or r(470, 475) or code in (480, 485, 487, 491, 950, 951) or r(649, 660) or r(662, 670):
        return 3
    if code in (510, 520, 522, 331, 420, 421, 433):
        return 4
    if code in (740, 745, 648, 924, 926):
        return 5
    if code in (121, 122, 760, 762, 860, 932, 956) or r(805, 850):
        return 6
    return 7


def fmt(v, nd=4):
    """Rounded to `nd` decimals, trailing zeros trimmed (clippy's excessive_precision)."""
    s = f"{v:.{nd}f}".rstrip("0")
    return s + "0" if s.endswith(".") else s


def arr(vals, nd=4):
    return "[" + ", ".join(fmt(v, nd) for v in vals) + "]"


def load(path):
    d = pd.read_csv(path, dtype=str, keep_default_na=False)
    d["cat"] = d["Crm Cd"].astype(int).map(category)
    d["area"] = d["AREA"].astype(int)
    t = d["TIME OCC"].astype(int)
    d["hour"] = t // 100
    d["minute"] = t % 100
    d["occ"] = pd.to_datetime(d["DATE OCC"].str.slice(0, 10), format="%m/%d/%Y")
    d["rptd"] = pd.to_datetime(d["Date Rptd"].str.slice(0, 10), format="%m/%d/%Y")
    return d


def main(root):
    m = load(f"{root}/la_crime_2024_02.csv")
    s = load(f"{root}/la_crime_2020_sample.csv")
    out = []
    p = out.append

    share = m.groupby("area").size().reindex(range(1, 22), fill_value=0)
    p("pub const AREA_SHARE: [f32; AREA_COUNT] = " + arr(share / share.sum()) + ";")

    mix = pd.crosstab(m.area, m.cat).reindex(columns=range(8), fill_value=0)
    mix = mix.div(mix.sum(axis=1), axis=0)
    p("pub const CATEGORY_MIX: [[f32; Category::COUNT]; AREA_COUNT] = [")
    for a in range(1, 22):
        p("    " + arr(mix.loc[a]) + ",")
    p("];")

    hours = pd.crosstab(m.cat, m.hour).reindex(columns=range(24), fill_value=0)
    hours = hours.div(hours.sum(axis=1), axis=0)
    p("pub const HOUR_PROFILE: [[f32; 24]; Category::COUNT] = [")
    for c in range(8):
        p("    " + arr(hours.loc[c]) + ",")
    p("];")

    # weekday rates: incidents per calendar weekday in each file's range, pooled
    rates = np.zeros((8, 7))
    for d in (m, s):
        days = pd.date_range(d.occ.min(), d.occ.max())
        n_wd = days.day_of_week.value_counts().reindex(range(7), fill_value=0).to_numpy()
        ct = pd.crosstab(d.cat, d.occ.dt.day_of_week).reindex(index=range(8), columns=range(7), fill_value=0).to_numpy()
        rates += ct / n_wd
    rates = rates / rates.sum(axis=1, keepdims=True)
    p("pub const WEEKDAY_PROFILE: [[f32; 7]; Category::COUNT] = [")
    for c in range(8):
        p("    " + arr(rates[c]) + ",")
    p("];")

    minutes = m.minute.value_counts().reindex(range(60), fill_value=0)
    p("pub const MINUTE_PROFILE: [f32; 60] = " + arr(minutes / minutes.sum(), 5) + ";")

    night = m.hour.isin([20, 21, 22, 23, 0, 1, 2, 3])
    nf = m[night].groupby("area").size() / m.groupby("area").size() / night.mean()
    p("pub const NIGHT_FACTOR: [f32; AREA_COUNT] = " + arr(nf.reindex(range(1, 22)), 3) + ";")

    ok = m[(m.LAT.astype(float) != 0)]
    lat, lon = ok.LAT.astype(float), ok.LON.astype(float)
    g = pd.DataFrame({"area": ok.area, "lat": lat, "lon": lon}).groupby("area")
    p("pub const AREA_PLACE: [(f32, f32, f32, f32); AREA_COUNT] = [")
    for a in range(1, 22):
        q = g.get_group(a)
        p(f"    ({fmt(q.lat.mean())}, {fmt(q.lon.mean())}, {fmt(q.lat.std())}, {fmt(q.lon.std())}),")
    p("];")

    sexes = ["", "M", "F", "X", "H"]
    vs = pd.crosstab(m.cat, m["Vict Sex"]).reindex(index=range(8), columns=sexes, fill_value=0)
    vs = vs.div(vs.sum(axis=1), axis=0)
    p("pub const VICTIM_SEX: [[f32; 5]; Category::COUNT] = [")
    for c in range(8):
        p("    " + arr(vs.loc[c]) + ",")
    p("];")
    age_unknown = (m["Vict Age"].astype(int) <= 0).groupby(m["Vict Sex"]).mean().reindex(sexes, fill_value=0)
    p("pub const AGE_UNKNOWN_BY_SEX: [f32; 5] = " + arr(age_unknown) + ";")
    ages = m["Vict Age"].astype(int)
    bins = [(1, 17), (18, 24), (25, 34), (35, 44), (45, 54), (55, 64), (65, 99)]
    known = ages[ages > 0]
    p("pub const AGE_BINS: [(u8, u8, f32); 7] = [")
    for lo, hi in bins:
        p(f"    ({lo}, {hi}, {fmt(((known >= lo) & (known <= hi)).mean())}),")
    p("];")
    px = (m[m["Vict Sex"] == "X"]["Vict Descent"] == "X").mean()
    p(f"pub const DESCENT_X_GIVEN_SEX_X: f32 = {fmt(px)};")
    desc = m[(m["Vict Sex"].isin(["M", "F", "H"])) & (m["Vict Descent"] != "")]["Vict Descent"].value_counts(normalize=True)
    desc = desc[desc >= 0.001]
    p("pub const DESCENT: [(u8, f32); %d] = [" % len(desc))
    for k, v in desc.items():
        p(f"    (b'{k}', {fmt(v)}),")
    p("];")

    wr = (m["Weapon Used Cd"] != "").groupby(m.cat).mean().reindex(range(8))
    p("pub const WEAPON_RATE: [f32; Category::COUNT] = " + arr(wr) + ";")
    w = m[m["Weapon Used Cd"] != ""].groupby(["Weapon Used Cd", "Weapon Desc"]).size().sort_values(ascending=False).head(12)
    p("pub const WEAPONS: [Coded; %d] = [" % len(w))
    for (code, dsc), n in w.items():
        p(f"    Coded::new({int(code)}, {fmt(n / w.sum())}, {dsc!r}),".replace("'", '"'))
    p("];")

    # crime codes: per category the codes covering 95% (at most 8)
    p("pub const CRIME_CODES: [CrimeCode; N_CRIME_CODES] = [")
    n = 0
    for c in range(8):
        cc = m[m.cat == c].groupby(["Crm Cd", "Crm Cd Desc", "Part 1-2"]).size().sort_values(ascending=False)
        cum = (cc.cumsum() / cc.sum())
        keep = cc[: max(1, min(8, int((cum < 0.95).sum()) + 1))]
        for (code, dsc, part), k in keep.items():
            p(f"    CrimeCode::new(Category::{['Violent','Robbery','Burglary','Theft','Vehicle','Vandalism','SexOffence','Other'][c]}, {int(code)}, {part}, {fmt(k / keep.sum())}, \"{dsc}\"),")
            n += 1
    p("];")
    p(f"pub const N_CRIME_CODES: usize = {n};")

    p("pub const PREMISES: [[Coded; 5]; Category::COUNT] = [")
    for c in range(8):
        pr = m[m.cat == c].groupby(["Premis Cd", "Premis Desc"]).size().sort_values(ascending=False).head(5)
        p("    [")
        for (code, dsc), k in pr.items():
            p(f"        Coded::new({int(code)}, {fmt(k / pr.sum())}, \"{dsc}\"),")
        p("    ],")
    p("];")

    st = m.groupby(["Status", "Status Desc"]).size().sort_values(ascending=False)
    p("pub const STATUS: [(&str, &str, f32); %d] = [" % len(st))
    for (code, dsc), k in st.items():
        p(f"    (\"{code}\", \"{dsc}\", {fmt(k / st.sum())}),")
    p("];")

    mo = pd.Series(" ".join(m.Mocodes).split()).value_counts().head(24)
    p("pub const MOCODES: [&str; 24] = [" + ", ".join(f'"{k}"' for k in mo.index) + "];")
    nmo = m.Mocodes.str.split().str.len().clip(upper=10).value_counts(normalize=True).reindex(range(11), fill_value=0)
    p("pub const MOCODE_COUNT: [f32; 11] = " + arr(nmo) + ";")
    p(f"pub const P_CROSS_STREET: f32 = {fmt((m['Cross Street'] != '').mean())};")
    p(f"pub const P_CRM_CD_2: f32 = {fmt((m['Crm Cd 2'] != '').mean())};")

    delay = (s.rptd - s.occ).dt.days
    edges = [(0, 0), (1, 1), (2, 2), (3, 7), (8, 30), (31, 90), (91, 365), (366, 1100)]
    p("pub const REPORT_DELAY: [(u16, u16, f32); 8] = [")
    for lo, hi in edges:
        p(f"    ({lo}, {hi}, {fmt(((delay >= lo) & (delay <= hi)).mean())}),")
    p("];")
    fields = pd.concat([s["Date Rptd"], s["DATE OCC"]])
    p(f"pub const P_DATE_24H: f32 = {fmt((~fields.str.contains('M')).mean())};")
    mixed = s["Date Rptd"].str.contains("M") != s["DATE OCC"].str.contains("M")
    p(f"pub const P_MIXED_DATE_ROW: f32 = {fmt(mixed.mean())};")
    p(f"pub const P_NEGATIVE_AGE: f32 = {fmt((s['Vict Age'].astype(int) < 0).sum() / (s['Vict Age'].astype(int) <= 0).sum())};")
    p(f"pub const P_ZERO_COORDS: f32 = {fmt((s.LAT.astype(float) == 0).mean())};")
    p(f"pub const P_LEADING_ZERO_DR_NO: f32 = {fmt(s.DR_NO.str.startswith('0').mean())};")
    print("\n".join(out))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/la-crime")

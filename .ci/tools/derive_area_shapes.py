#!/usr/bin/env python3
"""Derive server/assets/la-areas.json, the simplified outlines of the 21 LAPD
areas for an in-page map, from the LA GeoHub "LAPD Divisions" layer shipped in
../shared/data/la-crime/lapd_divisions.geojson (see server/assets/README.md).

Standard library only. Run from anywhere:

    python3 .ci/tools/derive_area_shapes.py            # (re)write the asset
    python3 .ci/tools/derive_area_shapes.py --check    # exit 1 if it is stale

Steps:

1. Read the FeatureCollection (lon/lat, CRS84). Every feature must carry
   PREC = area code 1..21 (each code exactly once) and APREC = the upper-case
   name, which must match the project's own name for that code in
   common/data/src/areas.rs (the AREAS table; "WEST LOS ANGELES" = "West LA",
   "NORTH HOLLYWOOD" = "N Hollywood"). Code, name and bureau come from AREAS.
2. Per area, keep the polygon parts (exterior rings) of at least
   --min-fraction (1 %) of the area's total exterior area, and the holes of
   the kept parts of at least the same size; smaller islands and holes go.
3. Simplify with Douglas-Peucker (--tolerance metres, point-to-segment
   distance) in one equirectangular projection centred on the layer's bounding
   box. Neighbouring areas share their boundary vertices in the layer (up to
   differences in the 9th decimal, which are snapped away first), so the
   rings are cut into arcs at the vertices where boundaries meet
   (a vertex with other than two distinct neighbours) and every arc is
   simplified once, in a canonical direction: shared borders stay shared, the
   map has no slivers or gaps between areas. An arc whose simplified form
   would make a ring cross itself or another ring is simplified again with
   half the tolerance, until nothing crosses (none needs it at 80 m).
4. Orient exterior rings counter-clockwise and holes clockwise (RFC 7946),
   round to 5 decimals (about 1 m), drop repeated points, keep rings closed.
5. Centroid: the area-weighted centroid of the division as in the layer
   (all rings, holes subtracted), rounded to 5 decimals; it equals the
   centroid of common/data/src/areas.rs.
6. Check: no ring crosses itself or another ring (after rounding), every centroid
   lies inside its simplified area, and the simplified area is within
   --max-area-error of the original (spherical area, as areas.rs computes
   km2). A failed check stops the script without writing.

The output is deterministic: the same input gives the same bytes.
"""
import argparse
import hashlib
import json
import math
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_INPUT = ROOT / ".." / "shared" / "data" / "la-crime" / "lapd_divisions.geojson"
DEFAULT_AREAS_RS = ROOT / "common" / "data" / "src" / "areas.rs"
DEFAULT_OUTPUT = ROOT / "server" / "assets" / "la-areas.json"
SOURCE_NAME = "../shared/data/la-crime/lapd_divisions.geojson"
DERIVED_BY = ".ci/tools/derive_area_shapes.py"

# Names of the GIS layer that differ from the crime export's AREA NAME.
ALIASES = {"WEST LOS ANGELES": "West LA", "NORTH HOLLYWOOD": "N Hollywood"}
R_EARTH_M = 6371008.8
AREA_COUNT = 21
# Vertices of different rings closer than this (degrees, about 1 cm) are one.
SNAP_DEG = 1e-7


class Fail(Exception):
    pass


# ---------------------------------------------------------------- inputs


def read_project_areas(path):
    """{code: (name, bureau, (lat, lon))} from the AREAS table of areas.rs."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise Fail(f"cannot read the project's area table {path}: {e}")
    pat = re.compile(
        r"info\(\s*(\d+)\s*,\s*\"([^\"]+)\"\s*,\s*Bureau::(\w+)\s*,\s*[-0-9.]+\s*,"
        r"\s*\(\s*([-0-9.]+)\s*,\s*([-0-9.]+)\s*\)"
    )
    areas = {}
    for m in pat.finditer(text):
        code = int(m.group(1))
        if code in areas:
            raise Fail(f"{path}: area code {code} appears twice in AREAS")
        areas[code] = (m.group(2), m.group(3), (float(m.group(4)), float(m.group(5))))
    if sorted(areas) != list(range(1, AREA_COUNT + 1)):
        raise Fail(
            f"{path}: expected the AREAS table with codes 1..{AREA_COUNT}, "
            f"parsed codes {sorted(areas)}"
        )
    return areas


def match_name(aprec, project):
    """The project's area code whose name matches the layer's APREC."""
    if not isinstance(aprec, str) or not aprec.strip():
        return None
    key = aprec.strip().upper()
    wanted = ALIASES.get(key, aprec.strip())
    for code, (name, _, _) in project.items():
        if name.lower() == wanted.lower():
            return code
    return None


def prec_of(props, index):
    if "PREC" not in props or props["PREC"] is None:
        raise Fail(f"feature #{index} (APREC {props.get('APREC')!r}) has no PREC (area code)")
    v = props["PREC"]
    if isinstance(v, bool):
        code = None
    elif isinstance(v, int):
        code = v
    elif isinstance(v, float) and v.is_integer():
        code = int(v)
    elif isinstance(v, str) and v.strip().isdigit():
        code = int(v.strip())
    else:
        code = None
    if code is None or not 1 <= code <= AREA_COUNT:
        raise Fail(
            f"feature #{index} (APREC {props.get('APREC')!r}) has PREC {v!r}, "
            f"not an area code in 1..{AREA_COUNT}"
        )
    return code


def ring_points(ring, where):
    if not isinstance(ring, list) or len(ring) < 4:
        raise Fail(f"{where}: a ring with fewer than 4 positions")
    pts = []
    for p in ring:
        if (
            not isinstance(p, list)
            or len(p) < 2
            or not all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in p[:2])
        ):
            raise Fail(f"{where}: a position that is not [lon, lat]: {p!r}")
        lon, lat = float(p[0]), float(p[1])
        if not (-180 <= lon <= 180 and -90 <= lat <= 90):
            raise Fail(f"{where}: position {p!r} is not lon/lat in degrees")
        if not pts or pts[-1] != (lon, lat):
            pts.append((lon, lat))
    if pts[0] != pts[-1]:
        pts.append(pts[0])
    if len(pts) < 4:
        raise Fail(f"{where}: a ring with fewer than 3 distinct positions")
    return pts[:-1]  # open: the closing position is implied


def read_divisions(path, project):
    """{code: [[exterior, hole, ...], ...]} with open rings of (lon, lat)."""
    if not path.is_file():
        raise Fail(
            f"input not found: {path}\n"
            "  (the LAPD division polygons ship with the LA crime samples in "
            "../shared/data/la-crime/, see its README.md; or pass --input)"
        )
    raw = path.read_bytes()
    try:
        doc = json.loads(raw)
    except ValueError as e:
        raise Fail(f"{path}: not valid JSON: {e}")
    if not isinstance(doc, dict) or doc.get("type") != "FeatureCollection":
        raise Fail(f"{path}: not a GeoJSON FeatureCollection")
    crs = ((doc.get("crs") or {}).get("properties") or {}).get("name", "")
    if crs and not re.search(r"(CRS84|EPSG:+4326)$", crs):
        raise Fail(f"{path}: coordinates in {crs}, expected lon/lat (CRS84)")
    divisions = {}
    for i, feat in enumerate(doc.get("features") or []):
        props = feat.get("properties") or {}
        code = prec_of(props, i)
        if code in divisions:
            raise Fail(f"PREC {code} appears in more than one feature (feature #{i})")
        aprec = props.get("APREC")
        named = match_name(aprec, project)
        if named is None:
            raise Fail(
                f"feature #{i}: APREC {aprec!r} (PREC {code}) matches no area name of "
                f"common/data/src/areas.rs (known aliases: {ALIASES})"
            )
        if named != code:
            raise Fail(
                f"feature #{i}: APREC {aprec!r} is area {named} ({project[named][0]}) "
                f"in areas.rs but the feature says PREC {code} ({project[code][0]})"
            )
        geom = feat.get("geometry") or {}
        where = f"PREC {code} ({aprec})"
        if geom.get("type") == "Polygon":
            polys = [geom.get("coordinates")]
        elif geom.get("type") == "MultiPolygon":
            polys = geom.get("coordinates")
        else:
            raise Fail(f"{where}: geometry {geom.get('type')!r}, expected (Multi)Polygon")
        if not polys or not all(isinstance(p, list) and p for p in polys):
            raise Fail(f"{where}: empty geometry")
        divisions[code] = [[ring_points(r, where) for r in poly] for poly in polys]
    missing = [c for c in range(1, AREA_COUNT + 1) if c not in divisions]
    if missing:
        raise Fail(
            f"{path}: no feature for area code(s) {missing} "
            f"({', '.join(project[c][0] for c in missing)})"
        )
    return divisions, hashlib.sha256(raw).hexdigest()


# ---------------------------------------------------------------- geometry


def planar_signed_area(ring):
    """Shoelace area of an open ring in its own units (positive = CCW)."""
    s = 0.0
    n = len(ring)
    for i in range(n):
        x1, y1 = ring[i]
        x2, y2 = ring[(i + 1) % n]
        s += x1 * y2 - x2 * y1
    return s / 2.0


def spherical_area_km2(ring):
    """|area| of an open lon/lat ring, spherical-excess approximation as in areas.rs."""
    s = 0.0
    n = len(ring)
    for i in range(n):
        lon1, lat1 = ring[i]
        lon2, lat2 = ring[(i + 1) % n]
        s += math.radians(lon2 - lon1) * (
            2 + math.sin(math.radians(lat1)) + math.sin(math.radians(lat2))
        )
    return abs(s) * (R_EARTH_M / 1000.0) ** 2 / 2.0


def centroid(polys):
    """Area-weighted centroid (lon, lat) of polygons with holes."""
    ax = ay = a = 0.0
    for poly in polys:
        for k, ring in enumerate(poly):
            sa = planar_signed_area(ring)
            sign = 1.0 if k == 0 else -1.0
            # orient: exterior counts positive, holes negative
            w = sign * abs(sa)
            cx = cy = 0.0
            n = len(ring)
            for i in range(n):
                x1, y1 = ring[i]
                x2, y2 = ring[(i + 1) % n]
                cross = x1 * y2 - x2 * y1
                cx += (x1 + x2) * cross
                cy += (y1 + y2) * cross
            cx /= 6.0 * sa
            cy /= 6.0 * sa
            ax += w * cx
            ay += w * cy
            a += w
    return ax / a, ay / a


def point_in_ring(pt, ring):
    x, y = pt
    inside = False
    n = len(ring)
    for i in range(n):
        x1, y1 = ring[i]
        x2, y2 = ring[(i + 1) % n]
        if (y1 > y) != (y2 > y) and x < x1 + (y - y1) * (x2 - x1) / (y2 - y1):
            inside = not inside
    return inside


class Projection:
    """Equirectangular projection in metres around (lon0, lat0)."""

    def __init__(self, lon0, lat0):
        self.lon0, self.lat0 = lon0, lat0
        self.kx = math.radians(1.0) * R_EARTH_M * math.cos(math.radians(lat0))
        self.ky = math.radians(1.0) * R_EARTH_M

    def __call__(self, p):
        return ((p[0] - self.lon0) * self.kx, (p[1] - self.lat0) * self.ky)


def seg_dist2(p, a, b):
    ax, ay = a
    dx, dy = b[0] - ax, b[1] - ay
    px, py = p[0] - ax, p[1] - ay
    dd = dx * dx + dy * dy
    if dd > 0:
        t = max(0.0, min(1.0, (px * dx + py * dy) / dd))
        px -= t * dx
        py -= t * dy
    return px * px + py * py


def douglas_peucker(pts, proj, tol):
    """Indices of pts kept by Douglas-Peucker; pts[0] != pts[-1]."""
    xy = [proj(p) for p in pts]
    keep = [False] * len(pts)
    keep[0] = keep[-1] = True
    tol2 = tol * tol
    stack = [(0, len(pts) - 1)]
    while stack:
        i, j = stack.pop()
        best, best_d = -1, tol2
        for k in range(i + 1, j):
            d = seg_dist2(xy[k], xy[i], xy[j])
            if d > best_d:
                best, best_d = k, d
        if best >= 0:
            keep[best] = True
            stack.append((i, best))
            stack.append((best, j))
    return [p for p, k in zip(pts, keep) if k]


def simplify_arc(arc, proj, tol):
    """Simplify an arc (list of points, endpoints kept); a closed arc
    (first == last) is split at its farthest point first."""
    if arc[0] == arc[-1]:
        o = proj(arc[0])
        far = max(
            range(1, len(arc) - 1),
            key=lambda k: ((proj(arc[k])[0] - o[0]) ** 2 + (proj(arc[k])[1] - o[1]) ** 2, -k),
        )
        return simplify_arc(arc[: far + 1], proj, tol) + simplify_arc(arc[far:], proj, tol)[1:]
    return douglas_peucker(arc, proj, tol)


def snap_rings(rings, eps=SNAP_DEG):
    """Merge vertices closer than eps degrees (in both coordinates) into the
    first of them seen: the layer stores some shared border vertices of
    neighbouring divisions with differences in the 9th decimal."""
    reps = {}
    out = []
    for ring in rings:
        res = []
        for p in ring:
            cx, cy = math.floor(p[0] / eps), math.floor(p[1] / eps)
            q = None
            for dx in (-1, 0, 1):
                for dy in (-1, 0, 1):
                    for r in reps.get((cx + dx, cy + dy), ()):
                        if abs(r[0] - p[0]) <= eps and abs(r[1] - p[1]) <= eps:
                            q = r
                            break
                    if q:
                        break
                if q:
                    break
            if q is None:
                q = p
                reps.setdefault((cx, cy), []).append(p)
            if not res or res[-1] != q:
                res.append(q)
        while len(res) > 1 and res[-1] == res[0]:
            res.pop()
        out.append(res)
    return out


def simplify_rings(rings, proj, tol):
    """Simplify open rings that may share boundary arcs; shared arcs are
    simplified once so that neighbours keep identical borders. An arc whose
    simplification makes a ring cross itself or another ring is simplified
    again with half the tolerance (down to 0: every non-collinear vertex),
    until nothing crosses. Returns the rings and {tolerance: arcs} of the
    arcs that needed a finer tolerance."""
    nbrs = {}
    for ring in rings:
        n = len(ring)
        for i in range(n):
            a, b = ring[i], ring[(i + 1) % n]
            nbrs.setdefault(a, set()).add(b)
            nbrs.setdefault(b, set()).add(a)
    nodes = {p for p, s in nbrs.items() if len(s) != 2}
    ring_arcs = []  # per ring: [(arc key, flipped)], the arcs in ring order
    for ring in rings:
        n = len(ring)
        idx = [i for i in range(n) if ring[i] in nodes]
        if not idx:  # nothing shared: anchor at the lexicographically smallest vertex
            idx = [min(range(n), key=lambda i: ring[i])]
        start = min(idx, key=lambda i: ring[i])
        ring = ring[start:] + ring[:start]
        idx = sorted((i - start) % n for i in idx) + [n]
        closed = ring + [ring[0]]
        arcs = []
        for a, b in zip(idx, idx[1:]):
            arc = closed[a : b + 1]
            rev = arc[::-1]
            arcs.append((tuple(arc), False) if arc <= rev else (tuple(rev), True))
        ring_arcs.append(arcs)
    arc_tol = {key: tol for arcs in ring_arcs for key, _ in arcs}
    cache = {}
    while True:
        out, seg_arc = [], []
        for arcs in ring_arcs:
            res, owner = [], []
            for key, flipped in arcs:
                t = arc_tol[key]
                if (key, t) not in cache:
                    cache[(key, t)] = simplify_arc(list(key), proj, t)
                s = cache[(key, t)][::-1] if flipped else cache[(key, t)]
                if not res:
                    res.append(s[0])
                res.extend(s[1:])
                owner.extend([key] * (len(s) - 1))
            out.append(res[:-1])
            seg_arc.append(owner)
        bad = {seg_arc[r][k] for pair in conflicts(out) for r, k in pair}
        if not bad:
            refined = {}
            for key, t in arc_tol.items():
                if t != tol:
                    refined[t] = refined.get(t, 0) + 1
            return out, refined
        for key in sorted(bad):
            if arc_tol[key] == 0:
                raise Fail(f"simplified boundaries still cross near {key[0]} with no simplification")
            arc_tol[key] = arc_tol[key] / 2 if arc_tol[key] > 1 else 0


def round_ring(ring, ccw):
    pts = []
    for lon, lat in ring:
        p = (round(lon, 5), round(lat, 5))
        if not pts or pts[-1] != p:
            pts.append(p)
    while len(pts) > 1 and pts[-1] == pts[0]:
        pts.pop()
    if len(pts) < 3:
        return None
    if (planar_signed_area(pts) > 0) != ccw:
        pts.reverse()
        pts = pts[-1:] + pts[:-1]  # keep the same first point
    return pts


def _orient(a, b, c):
    return (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])


def _on_seg(a, b, p):
    return min(a[0], b[0]) <= p[0] <= max(a[0], b[0]) and min(a[1], b[1]) <= p[1] <= max(a[1], b[1])


def segments_conflict(a, b, c, d):
    """True when segments ab and cd meet anywhere other than a shared endpoint
    (crossing, touching in the interior, or overlapping)."""
    shared = {a, b} & {c, d}
    if shared:
        if len(shared) == 2:
            return False  # the same segment (a shared border edge)
        s = shared.pop()
        o1, o2 = (b if a == s else a), (d if c == s else c)
        # collinear and pointing the same way: an overlap
        return _orient(s, o1, o2) == 0 and (o1[0] - s[0]) * (o2[0] - s[0]) + (o1[1] - s[1]) * (o2[1] - s[1]) > 0
    d1, d2 = _orient(c, d, a), _orient(c, d, b)
    d3, d4 = _orient(a, b, c), _orient(a, b, d)
    if ((d1 > 0) != (d2 > 0)) and d1 != 0 and d2 != 0 and ((d3 > 0) != (d4 > 0)) and d3 != 0 and d4 != 0:
        return True
    return (
        (d1 == 0 and _on_seg(c, d, a))
        or (d2 == 0 and _on_seg(c, d, b))
        or (d3 == 0 and _on_seg(a, b, c))
        or (d4 == 0 and _on_seg(a, b, d))
    )


def conflicts(rings, cell=0.005):
    """Pairs ((ring, segment), (ring, segment)) of segments that meet other
    than at shared vertices or as a shared edge: a ring crossing or touching
    itself or another ring. Segment k of a ring runs from point k to k + 1."""
    grid = {}
    segs = []
    for ri, ring in enumerate(rings):
        n = len(ring)
        for k in range(n):
            a, b = ring[k], ring[(k + 1) % n]
            sid = len(segs)
            segs.append((ri, k, a, b))
            for gx in range(math.floor(min(a[0], b[0]) / cell), math.floor(max(a[0], b[0]) / cell) + 1):
                for gy in range(math.floor(min(a[1], b[1]) / cell), math.floor(max(a[1], b[1]) / cell) + 1):
                    grid.setdefault((gx, gy), []).append(sid)
    found = set()
    seen = set()
    for ids in grid.values():
        for x in range(len(ids)):
            for y in range(x + 1, len(ids)):
                s, t = ids[x], ids[y]
                if (s, t) in seen:
                    continue
                seen.add((s, t))
                ri, ki, a, b = segs[s]
                rj, kj, c, d = segs[t]
                if segments_conflict(a, b, c, d):
                    found.add(((ri, ki), (rj, kj)))
    return found


# ---------------------------------------------------------------- main


def fmt(x):
    return repr(round(x, 5))


def fmt_ring(ring):
    closed = list(ring) + [ring[0]]
    return "[" + ",".join(f"[{fmt(lon)},{fmt(lat)}]" for lon, lat in closed) + "]"


def derive(args):
    project = read_project_areas(Path(args.areas_rs))
    divisions, sha = read_divisions(Path(args.input), project)

    lons = [p[0] for polys in divisions.values() for poly in polys for r in poly for p in r]
    lats = [p[1] for polys in divisions.values() for poly in polys for r in poly for p in r]
    proj = Projection((min(lons) + max(lons)) / 2, (min(lats) + max(lats)) / 2)

    # 1. drop small parts and holes
    kept = {}  # code -> list of (ring, is_hole)
    dropped = {}
    for code in sorted(divisions):
        polys = divisions[code]
        total = sum(abs(planar_signed_area([proj(p) for p in poly[0]])) for poly in polys)
        rings, gone = [], []
        for poly in polys:
            ext_a = abs(planar_signed_area([proj(p) for p in poly[0]]))
            if ext_a < args.min_fraction * total:
                gone.append(("part", ext_a / total))
                continue
            rings.append((poly[0], False))
            for hole in poly[1:]:
                ha = abs(planar_signed_area([proj(p) for p in hole]))
                if ha < args.min_fraction * total:
                    gone.append(("hole", ha / total))
                else:
                    rings.append((hole, True))
        kept[code] = rings
        dropped[code] = gone

    # 2. simplify all kept rings together (shared arcs once)
    order = [(code, i) for code in sorted(kept) for i in range(len(kept[code]))]
    simplified, refined = simplify_rings(snap_rings([kept[c][i][0] for c, i in order]), proj, args.tolerance)

    # 3. orient, round, assemble
    areas = []
    problems = []
    report = []
    all_rings = []
    for code in sorted(kept):
        name, bureau, rs_centroid = project[code]
        exts, holes = [], []
        for (c, i), ring in zip(order, simplified):
            if c != code:
                continue
            is_hole = kept[c][i][1]
            r = round_ring(ring, ccw=not is_hole)
            if r is None:
                problems.append(f"{code} {name}: a ring collapsed below 3 points at this tolerance")
                continue
            (holes if is_hole else exts).append(r)
        cen = centroid(divisions[code])
        cen = (round(cen[0], 5), round(cen[1], 5))

        orig_km2 = sum(
            spherical_area_km2(r) * (1 if k == 0 else -1)
            for poly in divisions[code]
            for k, r in enumerate(poly)
        )
        simp_km2 = sum(spherical_area_km2(r) for r in exts) - sum(spherical_area_km2(r) for r in holes)
        ratio = simp_km2 / orig_km2
        inside = any(point_in_ring(cen, r) for r in exts) and not any(point_in_ring(cen, r) for r in holes)
        c_xy = proj(cen)
        margin = min(
            math.sqrt(seg_dist2(c_xy, proj(r[k]), proj(r[(k + 1) % len(r)])))
            for r in exts + holes
            for k in range(len(r))
        )
        npts = sum(len(r) + 1 for r in exts + holes)
        orig_pts = sum(len(r) + 1 for poly in divisions[code] for r in poly)
        rings_here = exts + holes
        for i, j in sorted({(p[0], q[0]) for p, q in conflicts(rings_here)}):
            what = "crosses or touches itself" if i == j else "meets another ring of the area"
            problems.append(f"{code} {name}: simplified ring {i} {what}")
        if abs(ratio - 1) > args.max_area_error:
            problems.append(
                f"{code} {name}: simplified area {simp_km2:.2f} km2 is {100 * (ratio - 1):+.2f} % "
                f"off the original {orig_km2:.2f} km2 (limit {100 * args.max_area_error:.1f} %)"
            )
        if not inside:
            problems.append(f"{code} {name}: centroid {cen} is outside the simplified area")
        dlat = abs(cen[1] - rs_centroid[0])
        dlon = abs(cen[0] - rs_centroid[1])
        report.append(
            (code, name, len(exts), len(holes), dropped[code], orig_pts, npts, orig_km2, simp_km2, ratio, inside, margin, max(dlat, dlon))
        )
        all_rings.extend(rings_here)
        areas.append(
            {
                "code": code,
                "name": name,
                "bureau": bureau,
                "centroid": cen,
                "polygons": exts,
                "holes": holes,
            }
        )

    # borders between areas: a simplified border must not cross another
    cross = sorted({(p[0], q[0]) for p, q in conflicts(all_rings) if p[0] != q[0]})
    if cross:
        problems.append(f"{len(cross)} pairs of rings of different areas cross after rounding")

    lines = [
        "{",
        f'"source": {json.dumps(f"LA GeoHub LAPD Divisions layer (City of Los Angeles open data), as shipped in {SOURCE_NAME} (sha256 {sha})")},',
        f'"derived_by": "{DERIVED_BY}",',
        f'"tolerance_m": {json.dumps(args.tolerance)},',
        f'"min_part_fraction": {json.dumps(args.min_fraction)},',
        '"format": "coordinates [lon, lat] in degrees (WGS84), 5 decimals; polygons: closed exterior rings, counter-clockwise; '
        'holes: closed interior rings (land inside the outline that is not the area\'s), clockwise; '
        'draw all rings of an area as one path (fill rule evenodd or nonzero); centroid: of the unsimplified division",',
        '"areas": [',
    ]
    for k, a in enumerate(areas):
        head = (
            f'{{"code": {a["code"]}, "name": {json.dumps(a["name"])}, "bureau": {json.dumps(a["bureau"])}, '
            f'"centroid": [{fmt(a["centroid"][0])}, {fmt(a["centroid"][1])}],'
        )
        lines.append(head)
        lines.append(' "polygons": [' + ",\n  ".join(fmt_ring(r) for r in a["polygons"]) + "],")
        lines.append(' "holes": [' + ",\n  ".join(fmt_ring(r) for r in a["holes"]) + "]")
        lines.append("}" + ("," if k + 1 < len(areas) else ""))
    lines.append("]")
    lines.append("}")
    text = "\n".join(lines) + "\n"
    json.loads(text)  # well-formed
    return text, report, problems, refined


def print_report(text, report, refined, out=sys.stderr):
    print(
        f"{'code':>4} {'name':<12} {'parts':>5} {'holes':>5} {'pts in':>6} {'pts out':>7} "
        f"{'km2 in':>8} {'km2 out':>8} {'ratio':>7} {'centroid':>8} {'edge m':>6} {'vs areas.rs':>11}  dropped",
        file=out,
    )
    for code, name, ne, nh, gone, pin, pout, a0, a1, ratio, inside, margin, dc in report:
        g = ", ".join(f"{w} {100 * f:.2f} %" for w, f in gone) or "-"
        print(
            f"{code:>4} {name:<12} {ne:>5} {nh:>5} {pin:>6} {pout:>7} {a0:>8.2f} {a1:>8.2f} {ratio:>7.4f} "
            f"{'inside' if inside else 'OUTSIDE':>8} {margin:>6.0f} {dc:>11.5f}  {g}",
            file=out,
        )
    ratios = [r[9] for r in report]
    print(
        f"total points {sum(r[6] for r in report)} (from {sum(r[5] for r in report)}), "
        f"{len(text.encode())} bytes; area ratio min {min(ratios):.4f} max {max(ratios):.4f}; "
        f"centroids inside {sum(r[10] for r in report)}/{len(report)}; "
        f"max centroid difference to areas.rs {max(r[12] for r in report):.5f} deg; "
        "arcs simplified with a finer tolerance to avoid crossings: "
        + (", ".join(f"{n} at {t:g} m" for t, n in sorted(refined.items(), reverse=True)) or "none"),
        file=out,
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--input", default=str(DEFAULT_INPUT), help="the LAPD Divisions GeoJSON")
    ap.add_argument("--areas-rs", default=str(DEFAULT_AREAS_RS), help="common/data/src/areas.rs")
    ap.add_argument("--output", default=str(DEFAULT_OUTPUT), help="where to write la-areas.json")
    ap.add_argument("--tolerance", type=float, default=80.0, help="Douglas-Peucker tolerance in metres")
    ap.add_argument("--min-fraction", type=float, default=0.01, help="drop parts and holes below this share of the area")
    ap.add_argument("--max-area-error", type=float, default=0.02, help="fail when an area changes by more than this")
    ap.add_argument("--check", action="store_true", help="do not write; exit 1 when --output differs from a fresh derivation")
    ap.add_argument("--quiet", action="store_true", help="no per-area report")
    args = ap.parse_args()
    if args.tolerance == int(args.tolerance):
        args.tolerance = int(args.tolerance)
    try:
        text, report, problems, refined = derive(args)
    except Fail as e:
        sys.exit(f"derive_area_shapes: error: {e}")
    if not args.quiet:
        print_report(text, report, refined)
    if problems:
        sys.exit("derive_area_shapes: error: the simplified shapes fail their checks:\n  " + "\n  ".join(problems))
    out = Path(args.output)
    if args.check:
        current = out.read_bytes() if out.is_file() else b""
        if current != text.encode():
            sys.exit(f"derive_area_shapes: {out} is stale; rerun: python3 {DERIVED_BY}")
        print(f"{out} is up to date", file=sys.stderr)
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(text.encode())
    print(f"wrote {out} ({len(text.encode())} bytes)", file=sys.stderr)


if __name__ == "__main__":
    main()

//! The 21 LAPD geographic areas ("divisions"): code, name, bureau, land area,
//! centroid and neighbouring areas.
//!
//! # Derivation
//!
//! The table is derived from the files in `../shared/data/la-crime/` (the
//! files themselves are not shipped), and the test
//! `table_matches_shared_data` re-derives it whenever they are present:
//!
//! - **code, name**: `AREA` and `AREA NAME` of the crime export (the
//!   `AREA_NAME_crimedata` column of `lapd_areas.csv`).
//! - **centroid**: the polygon centroid of the division in
//!   `lapd_divisions.geojson` (`centroid_lat_polygon`, `centroid_lon_polygon`
//!   of `lapd_areas.csv`), rounded to 5 decimals (about 1 m).
//! - **neighbours**: `adjacent_AREAs` of `lapd_areas.csv`: divisions whose
//!   boundaries come within about 30 m of each other. The relation is
//!   symmetric; Harbor (5) touches only Southeast (18), through the city's
//!   "shoestring" strip.
//! - **km2**: the area of the division's polygon(s) in
//!   `lapd_divisions.geojson` (feature property `PREC` = area code, holes
//!   subtracted, all parts of a multipolygon added), computed on the sphere of
//!   radius 6371.0088 km with the spherical-excess approximation
//!   `A = R^2 / 2 * |sum (lon2 - lon1) (2 + sin lat1 + sin lat2)|`, rounded to
//!   0.01 km^2. It agrees with the GIS layer's own `AREA` attribute (square
//!   feet) to within 0.1 %.
//! - **bureau**: LAPD's organisation of its divisions into four geographic
//!   bureaus (Central, South, Valley, West), as published by the LAPD; it is not
//!   in the shared files.

use serde::{Deserialize, Serialize};

/// One of the four LAPD geographic bureaus, each grouping 4 to 7 areas.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[repr(u8)]
pub enum Bureau {
    /// Central Bureau: Central, Rampart, Hollenbeck, Northeast, Newton.
    Central = 0,
    /// South Bureau: Southwest, Harbor, 77th Street, Southeast.
    South = 1,
    /// Valley Bureau: the seven San Fernando Valley areas.
    Valley = 2,
    /// West Bureau: Hollywood, Wilshire, West LA, Pacific, Olympic.
    West = 3,
}

impl Bureau {
    /// All bureaus in index order.
    pub const ALL: [Bureau; 4] = [Bureau::Central, Bureau::South, Bureau::Valley, Bureau::West];

    /// The bureau's index, 0..4.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The bureau's name, e.g. `"Central"`.
    pub fn name(self) -> &'static str {
        match self {
            Bureau::Central => "Central",
            Bureau::South => "South",
            Bureau::Valley => "Valley",
            Bureau::West => "West",
        }
    }

    /// The areas of this bureau, in code order.
    pub fn areas(self) -> impl Iterator<Item = &'static AreaInfo> {
        AREAS.iter().filter(move |a| a.bureau == self)
    }
}

impl std::fmt::Display for Bureau {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Facts about one LAPD area.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct AreaInfo {
    /// The `AREA` code, 1..=21.
    pub code: u8,
    /// The `AREA NAME` as the crime export spells it, e.g. `"77th Street"`.
    pub name: &'static str,
    /// The bureau the area belongs to.
    pub bureau: Bureau,
    /// Land area of the division polygon in square kilometres.
    pub km2: f32,
    /// Centroid of the division polygon, `(latitude, longitude)` in degrees.
    pub centroid: (f32, f32),
    /// Codes of the areas sharing a boundary with this one, ascending.
    pub neighbours: &'static [u8],
}

impl AreaInfo {
    /// The zero-based index of the area (`code - 1`), e.g. a row of a graph.
    pub fn index(&self) -> usize {
        usize::from(self.code).saturating_sub(1)
    }
}

/// Number of LAPD areas.
pub const AREA_COUNT: usize = 21;

const fn info(
    code: u8,
    name: &'static str,
    bureau: Bureau,
    km2: f32,
    centroid: (f32, f32),
    neighbours: &'static [u8],
) -> AreaInfo {
    AreaInfo {
        code,
        name,
        bureau,
        km2,
        centroid,
        neighbours,
    }
}

/// The 21 LAPD areas; the index is `code - 1`. See the module doc for the
/// derivation.
pub static AREAS: [AreaInfo; AREA_COUNT] = [
    info(
        1,
        "Central",
        Bureau::Central,
        12.71,
        (34.05134, -118.24542),
        &[2, 3, 4, 11, 13],
    ),
    info(
        2,
        "Rampart",
        Bureau::Central,
        14.35,
        (34.06735, -118.2745),
        &[1, 3, 6, 11, 20],
    ),
    info(
        3,
        "Southwest",
        Bureau::South,
        31.91,
        (34.01966, -118.32382),
        &[1, 2, 7, 12, 13, 20],
    ),
    info(
        4,
        "Hollenbeck",
        Bureau::Central,
        40.24,
        (34.06338, -118.19823),
        &[1, 11, 13],
    ),
    info(
        5,
        "Harbor",
        Bureau::South,
        82.97,
        (33.76449, -118.27731),
        &[18],
    ),
    info(
        6,
        "Hollywood",
        Bureau::West,
        34.55,
        (34.10866, -118.34313),
        &[2, 7, 8, 11, 15, 20],
    ),
    info(
        7,
        "Wilshire",
        Bureau::West,
        30.39,
        (34.06053, -118.34979),
        &[3, 6, 8, 20],
    ),
    info(
        8,
        "West LA",
        Bureau::West,
        167.61,
        (34.0816, -118.48785),
        &[6, 7, 9, 10, 14, 15, 21],
    ),
    info(
        9,
        "Van Nuys",
        Bureau::Valley,
        45.51,
        (34.1697, -118.44395),
        &[8, 10, 15, 19],
    ),
    info(
        10,
        "West Valley",
        Bureau::Valley,
        87.02,
        (34.17416, -118.51774),
        &[8, 9, 17, 19, 21],
    ),
    info(
        11,
        "Northeast",
        Bureau::Central,
        75.79,
        (34.11627, -118.24738),
        &[1, 2, 4, 6, 15],
    ),
    info(
        12,
        "77th Street",
        Bureau::South,
        29.36,
        (33.97722, -118.30304),
        &[3, 13, 14, 18],
    ),
    info(
        13,
        "Newton",
        Bureau::Central,
        25.31,
        (34.00883, -118.25706),
        &[1, 3, 4, 12],
    ),
    info(
        14,
        "Pacific",
        Bureau::West,
        66.69,
        (33.97535, -118.4207),
        &[8, 12],
    ),
    info(
        15,
        "N Hollywood",
        Bureau::Valley,
        58.97,
        (34.16497, -118.38115),
        &[6, 8, 9, 11, 16, 19],
    ),
    info(
        16,
        "Foothill",
        Bureau::Valley,
        120.57,
        (34.2524, -118.34588),
        &[15, 19],
    ),
    info(
        17,
        "Devonshire",
        Bureau::Valley,
        125.16,
        (34.26556, -118.53947),
        &[10, 19, 21],
    ),
    info(
        18,
        "Southeast",
        Bureau::South,
        24.27,
        (33.93288, -118.2686),
        &[5, 12],
    ),
    info(
        19,
        "Mission",
        Bureau::Valley,
        65.01,
        (34.27719, -118.44813),
        &[9, 10, 15, 16, 17],
    ),
    info(
        20,
        "Olympic",
        Bureau::West,
        16.21,
        (34.0595, -118.30317),
        &[2, 3, 6, 7],
    ),
    info(
        21,
        "Topanga",
        Bureau::Valley,
        84.48,
        (34.19002, -118.61093),
        &[8, 10, 17],
    ),
];

/// The area with this code (1..=21), or `None`.
pub fn area(code: u8) -> Option<&'static AreaInfo> {
    AREAS.get(usize::from(code).checked_sub(1)?)
}

/// The area whose export name (`"West LA"`) or GIS layer name
/// (`"WEST LOS ANGELES"`) matches `name`, ignoring ASCII case and surrounding
/// spaces.
pub(crate) fn area_by_name(name: &str) -> Option<&'static AreaInfo> {
    let name = name.trim();
    let alias = match name.to_ascii_uppercase().as_str() {
        "WEST LOS ANGELES" => "West LA",
        "NORTH HOLLYWOOD" => "N Hollywood",
        _ => name,
    };
    AREAS.iter().find(|a| a.name.eq_ignore_ascii_case(alias))
}

/// The undirected neighbour graph as zero-based index pairs `(i, j)` with
/// `i < j`, each boundary once (for graph models).
pub fn adjacency() -> Vec<(usize, usize)> {
    let mut edges = Vec::new();
    for a in &AREAS {
        for &n in a.neighbours {
            if n > a.code {
                edges.push((a.index(), usize::from(n) - 1));
            }
        }
    }
    edges
}

/// Total land area of all 21 divisions in square kilometres.
pub fn total_km2() -> f32 {
    AREAS.iter().map(|a| a.km2).sum()
}

/// Great-circle distance in kilometres between two `(lat, lon)` points in
/// degrees (haversine, mean Earth radius).
pub fn distance_km(a: (f32, f32), b: (f32, f32)) -> f32 {
    let (lat1, lon1) = (f64::from(a.0).to_radians(), f64::from(a.1).to_radians());
    let (lat2, lon2) = (f64::from(b.0).to_radians(), f64::from(b.1).to_radians());
    let h = ((lat2 - lat1) / 2.0).sin().powi(2)
        + lat1.cos() * lat2.cos() * ((lon2 - lon1) / 2.0).sin().powi(2);
    (2.0 * EARTH_RADIUS_KM * h.sqrt().min(1.0).asin()) as f32
}

/// Mean Earth radius (IUGG) in kilometres.
pub const EARTH_RADIUS_KM: f64 = 6371.0088;

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn shared_dir() -> Option<PathBuf> {
        crate::test_data::la_crime_dir()
    }

    #[test]
    fn codes_are_indices_and_neighbours_symmetric() {
        for (i, a) in AREAS.iter().enumerate() {
            assert_eq!(usize::from(a.code), i + 1);
            assert_eq!(a.index(), i);
            assert_eq!(area(a.code), Some(a));
            assert!(
                a.neighbours.windows(2).all(|w| w[0] < w[1]),
                "{} sorted",
                a.name
            );
            for &n in a.neighbours {
                assert_ne!(n, a.code);
                let other = area(n).expect("neighbour exists");
                assert!(
                    other.neighbours.contains(&a.code),
                    "{} <-> {}",
                    a.name,
                    other.name
                );
            }
            assert!(a.km2 > 10.0 && a.km2 < 200.0);
            assert!(
                (33.7..34.4).contains(&a.centroid.0) && (-118.7..-118.1).contains(&a.centroid.1)
            );
        }
        assert_eq!(area(0), None);
        assert_eq!(area(22), None);
        let edges = adjacency();
        let degree_sum: usize = AREAS.iter().map(|a| a.neighbours.len()).sum();
        assert_eq!(edges.len() * 2, degree_sum);
        assert!(edges.iter().all(|&(i, j)| i < j && j < AREA_COUNT));
    }

    #[test]
    fn bureaus_partition_the_areas() {
        let sizes: Vec<usize> = Bureau::ALL.iter().map(|b| b.areas().count()).collect();
        assert_eq!(sizes, vec![5, 4, 7, 5]);
        assert_eq!(area(12).map(|a| a.bureau), Some(Bureau::South));
        assert_eq!(
            serde_json::to_string(&Bureau::Valley).unwrap(),
            "\"valley\""
        );
        // the city of Los Angeles covers about 1,300 km^2
        assert!((1200.0..1320.0).contains(&total_km2()), "{}", total_km2());
    }

    #[test]
    fn names_resolve_both_spellings() {
        assert_eq!(area_by_name("West LA").map(|a| a.code), Some(8));
        assert_eq!(area_by_name("WEST LOS ANGELES").map(|a| a.code), Some(8));
        assert_eq!(area_by_name(" north hollywood ").map(|a| a.code), Some(15));
        assert_eq!(area_by_name("77TH STREET").map(|a| a.code), Some(12));
        assert_eq!(area_by_name("Gotham"), None);
    }

    #[test]
    fn distance_is_plausible() {
        let d = distance_km(AREAS[0].centroid, AREAS[4].centroid);
        // downtown LA to San Pedro: about 32 km
        assert!((30.0..35.0).contains(&d), "{d}");
        assert_eq!(distance_km((34.0, -118.0), (34.0, -118.0)), 0.0);
    }

    /// Spherical-excess area of one closed ring of `[lon, lat]` points, km^2.
    fn ring_km2(ring: &[serde_json::Value]) -> f64 {
        let pts: Vec<(f64, f64)> = ring
            .iter()
            .map(|p| (p[0].as_f64().unwrap(), p[1].as_f64().unwrap()))
            .collect();
        let mut s = 0.0;
        for i in 0..pts.len() {
            let (lon1, lat1) = pts[i];
            let (lon2, lat2) = pts[(i + 1) % pts.len()];
            s += (lon2 - lon1).to_radians()
                * (2.0 + lat1.to_radians().sin() + lat2.to_radians().sin());
        }
        (s * EARTH_RADIUS_KM * EARTH_RADIUS_KM / 2.0).abs()
    }

    /// Re-derives the table from `lapd_areas.csv` and `lapd_divisions.geojson`.
    #[test]
    fn table_matches_shared_data() {
        let Some(dir) = shared_dir() else {
            eprintln!("skipped: ../shared/data/la-crime is absent");
            return;
        };
        // centroids, names and neighbours from lapd_areas.csv
        let mut rdr = csv::Reader::from_path(dir.join("lapd_areas.csv")).unwrap();
        let headers = rdr.headers().unwrap().clone();
        let col = |name: &str| headers.iter().position(|h| h == name).unwrap();
        let (c_area, c_name, c_gis) = (
            col("AREA"),
            col("AREA_NAME_crimedata"),
            col("APREC_geojson"),
        );
        let (c_lat, c_lon, c_adj) = (
            col("centroid_lat_polygon"),
            col("centroid_lon_polygon"),
            col("adjacent_AREAs"),
        );
        let mut seen = 0;
        for rec in rdr.records() {
            let rec = rec.unwrap();
            let code: u8 = rec[c_area].parse().unwrap();
            let a = area(code).unwrap();
            assert_eq!(a.name, &rec[c_name]);
            assert_eq!(area_by_name(&rec[c_gis]).map(|x| x.code), Some(code));
            let lat: f32 = rec[c_lat].parse().unwrap();
            let lon: f32 = rec[c_lon].parse().unwrap();
            assert!(
                (a.centroid.0 - lat).abs() < 1e-5 && (a.centroid.1 - lon).abs() < 1e-5,
                "{}",
                a.name
            );
            let mut adj: Vec<u8> = rec[c_adj]
                .split_whitespace()
                .map(|s| s.parse().unwrap())
                .collect();
            adj.sort_unstable();
            assert_eq!(a.neighbours, adj.as_slice(), "{}", a.name);
            seen += 1;
        }
        assert_eq!(seen, AREA_COUNT);

        // km^2 from the division polygons
        let text = std::fs::read_to_string(dir.join("lapd_divisions.geojson")).unwrap();
        let geo: serde_json::Value = serde_json::from_str(&text).unwrap();
        let features = geo["features"].as_array().unwrap();
        assert_eq!(features.len(), AREA_COUNT);
        for f in features {
            let code = f["properties"]["PREC"].as_u64().unwrap() as u8;
            let geom = &f["geometry"];
            let polys: Vec<&serde_json::Value> = match geom["type"].as_str().unwrap() {
                "MultiPolygon" => geom["coordinates"].as_array().unwrap().iter().collect(),
                _ => vec![&geom["coordinates"]],
            };
            let mut km2 = 0.0;
            for poly in polys {
                let rings = poly.as_array().unwrap();
                km2 += ring_km2(rings[0].as_array().unwrap());
                for hole in &rings[1..] {
                    km2 -= ring_km2(hole.as_array().unwrap());
                }
            }
            let a = area(code).unwrap();
            assert!(
                (f64::from(a.km2) - km2).abs() < 0.006,
                "{}: table {} polygon {km2:.3}",
                a.name,
                a.km2
            );
            // the GIS layer's own AREA attribute is in square feet
            let gis_km2 = f["properties"]["AREA"].as_f64().unwrap() * 0.092_903_04 / 1e6;
            assert!((km2 / gis_km2 - 1.0).abs() < 1e-3, "{}", a.name);
        }
    }
}

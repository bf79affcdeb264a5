//! The calibration table of the synthetic generator: statistics of the real
//! LAPD export that make synthetic data LA-like.
//!
//! # Derivation
//!
//! Every number here was computed from the two real samples in
//! `../shared/data/la-crime/` by `simulations/scripts/derive_calibration.py`
//! (which prints this table) and rounded to 4 decimals:
//!
//! - `la_crime_2024_02.csv`, one whole month of the untouched city export
//!   (15,661 rows), for volumes per area, category mixes, hour and minute
//!   profiles, victims, weapons, premises, places and status;
//! - both files pooled, as rates per calendar weekday, for the weekday profiles;
//! - `la_crime_2020_sample.csv` (10,000 rows) for what only it shows: the older
//!   24-hour date layout and rows mixing the two layouts, LAT/LON 0,0, negative
//!   ages, leading zeros in `DR_NO` and the long tail of reporting delays. It
//!   is not used for volumes or mixes, because it over-represents some codes
//!   (331 is 31 % of it) and the central areas.
//!
//! The categories follow [`Category::from_crime_code`]; the script mirrors it.
//! The test `table_matches_real_samples` recomputes the key statistics from
//! the real files with this crate's own loader and checks the table against
//! them, so the table, the script and the loader cannot drift apart silently.
//!
//! The generator's temporal dynamics (drift, seasonality, noise) are design
//! choices, not calibration; they live in [`Dynamics`](super::synth::Dynamics).

use super::areas::AREA_COUNT;
use super::categories::Category;

/// A code with its share and its description in the export.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Coded {
    /// The code (premise, weapon).
    pub code: u16,
    /// Its share within its list.
    pub weight: f32,
    /// The export's description.
    pub desc: &'static str,
}

impl Coded {
    const fn new(code: u16, weight: f32, desc: &'static str) -> Self {
        Coded { code, weight, desc }
    }
}

/// A crime code of a category.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct CrimeCode {
    /// The category the code maps to.
    pub category: Category,
    /// `Crm Cd`.
    pub code: u16,
    /// `Part 1-2`.
    pub part: u8,
    /// Share within the category.
    pub weight: f32,
    /// `Crm Cd Desc`.
    pub desc: &'static str,
}

impl CrimeCode {
    const fn new(category: Category, code: u16, part: u8, weight: f32, desc: &'static str) -> Self {
        CrimeCode {
            category,
            code,
            part,
            weight,
            desc,
        }
    }
}

/// Share of all incidents per area (index = code - 1), February 2024.
pub(crate) const AREA_SHARE: [f32; AREA_COUNT] = [
    0.0734, 0.0482, 0.0583, 0.041, 0.04, 0.0513, 0.052, 0.0456, 0.0421, 0.0414, 0.0437, 0.0558,
    0.0502, 0.0559, 0.0534, 0.0297, 0.0434, 0.048, 0.0366, 0.0507, 0.0392,
];
/// Per area, the share of each crime category (rows sum to 1), February 2024.
pub(crate) const CATEGORY_MIX: [[f32; Category::COUNT]; AREA_COUNT] = [
    [
        0.2591, 0.0452, 0.133, 0.2287, 0.1183, 0.0896, 0.0183, 0.1078,
    ],
    [
        0.3113, 0.0424, 0.1285, 0.1709, 0.1881, 0.0649, 0.0212, 0.0728,
    ],
    [
        0.299, 0.0537, 0.0756, 0.1982, 0.2136, 0.0756, 0.0285, 0.0559,
    ],
    [
        0.2664, 0.0498, 0.1106, 0.1137, 0.2601, 0.1215, 0.0187, 0.0592,
    ],
    [
        0.3046, 0.0287, 0.1085, 0.1451, 0.2249, 0.0973, 0.0175, 0.0734,
    ],
    [
        0.2736, 0.0311, 0.1381, 0.2201, 0.1629, 0.0709, 0.0199, 0.0833,
    ],
    [
        0.1892, 0.0381, 0.1634, 0.2641, 0.1744, 0.0921, 0.0233, 0.0553,
    ],
    [0.1345, 0.021, 0.1807, 0.3361, 0.1499, 0.0966, 0.0322, 0.049],
    [
        0.214, 0.0334, 0.1654, 0.2534, 0.2033, 0.0774, 0.0137, 0.0395,
    ],
    [0.2481, 0.0123, 0.2173, 0.1094, 0.2527, 0.0863, 0.02, 0.0539],
    [
        0.1708, 0.0336, 0.162, 0.2715, 0.1839, 0.0745, 0.0263, 0.0774,
    ],
    [
        0.405, 0.0686, 0.0801, 0.1121, 0.1922, 0.0629, 0.0252, 0.0538,
    ],
    [
        0.3041, 0.0967, 0.1399, 0.1196, 0.2137, 0.0623, 0.0051, 0.0585,
    ],
    [
        0.1703, 0.0217, 0.1874, 0.2434, 0.2309, 0.0846, 0.0149, 0.0469,
    ],
    [
        0.1995, 0.0251, 0.1219, 0.2031, 0.2139, 0.0932, 0.0227, 0.1207,
    ],
    [
        0.2624, 0.0258, 0.0946, 0.1097, 0.2968, 0.0946, 0.0387, 0.0774,
    ],
    [0.2003, 0.0221, 0.1767, 0.2268, 0.19, 0.0795, 0.0191, 0.0854],
    [
        0.3963, 0.0891, 0.0585, 0.1024, 0.2048, 0.0718, 0.0266, 0.0505,
    ],
    [
        0.2862, 0.0471, 0.0785, 0.1972, 0.2391, 0.0646, 0.0262, 0.0611,
    ],
    [
        0.2846, 0.0441, 0.1725, 0.1423, 0.2053, 0.0819, 0.0302, 0.039,
    ],
    [
        0.2378, 0.0195, 0.1515, 0.2769, 0.1726, 0.0619, 0.0114, 0.0684,
    ],
];
/// Per category, the share of incidents by hour of occurrence 0..24, February 2024.
pub(crate) const HOUR_PROFILE: [[f32; 24]; Category::COUNT] = [
    [
        0.0367, 0.0315, 0.0296, 0.0217, 0.015, 0.0116, 0.0148, 0.0283, 0.0377, 0.0414, 0.0446,
        0.0515, 0.049, 0.0481, 0.0434, 0.0569, 0.0567, 0.0495, 0.0476, 0.0586, 0.0589, 0.0606,
        0.0498, 0.0564,
    ],
    [
        0.0538, 0.0215, 0.0415, 0.023, 0.0169, 0.0215, 0.0061, 0.0215, 0.023, 0.0215, 0.0261,
        0.043, 0.0445, 0.0522, 0.0492, 0.0553, 0.063, 0.0691, 0.0568, 0.086, 0.0645, 0.0415,
        0.0492, 0.0492,
    ],
    [
        0.0415, 0.0377, 0.0405, 0.041, 0.0401, 0.0255, 0.0245, 0.0245, 0.0255, 0.0212, 0.0306,
        0.0339, 0.0396, 0.0311, 0.0358, 0.0434, 0.0391, 0.0622, 0.0731, 0.0778, 0.0655, 0.049,
        0.0566, 0.0401,
    ],
    [
        0.0207, 0.0187, 0.0128, 0.0108, 0.0105, 0.0102, 0.0223, 0.0243, 0.0437, 0.0466, 0.0502,
        0.0561, 0.0844, 0.0683, 0.0732, 0.068, 0.0739, 0.0712, 0.0552, 0.0617, 0.045, 0.0282,
        0.024, 0.02,
    ],
    [
        0.032, 0.0265, 0.0259, 0.0217, 0.0268, 0.016, 0.0198, 0.0256, 0.03, 0.0288, 0.0272, 0.0288,
        0.0422, 0.0329, 0.0406, 0.0521, 0.0569, 0.0678, 0.0748, 0.0716, 0.0668, 0.0652, 0.0639,
        0.0562,
    ],
    [
        0.0387, 0.0308, 0.0347, 0.0268, 0.0308, 0.0197, 0.0276, 0.0339, 0.0458, 0.041, 0.0442,
        0.0331, 0.0363, 0.0363, 0.0387, 0.0497, 0.0442, 0.0537, 0.0545, 0.0695, 0.0529, 0.0552,
        0.0655, 0.0363,
    ],
    [
        0.0472, 0.0383, 0.0324, 0.0147, 0.0265, 0.0088, 0.0118, 0.0413, 0.0324, 0.0472, 0.0531,
        0.056, 0.0737, 0.0442, 0.0531, 0.0442, 0.0383, 0.0472, 0.0501, 0.059, 0.0383, 0.0413,
        0.059, 0.0413,
    ],
    [
        0.0305, 0.0219, 0.0229, 0.0105, 0.0105, 0.0086, 0.0448, 0.0533, 0.0524, 0.0495, 0.0495,
        0.039, 0.0562, 0.039, 0.0714, 0.0695, 0.0695, 0.059, 0.0448, 0.0524, 0.0333, 0.0371,
        0.0448, 0.0295,
    ],
];
/// Per category, the relative rate by weekday (0 = Monday; rows sum to 1): incidents per calendar weekday in each file's date range, both files pooled.
pub(crate) const WEEKDAY_PROFILE: [[f32; 7]; Category::COUNT] = [
    [0.1277, 0.1139, 0.14, 0.1333, 0.1567, 0.1638, 0.1647],
    [0.119, 0.128, 0.1314, 0.1425, 0.1802, 0.1558, 0.1432],
    [0.1411, 0.145, 0.1331, 0.1318, 0.1632, 0.1574, 0.1284],
    [0.1254, 0.1422, 0.1374, 0.1366, 0.1694, 0.1624, 0.1267],
    [0.1452, 0.1333, 0.1366, 0.1208, 0.162, 0.155, 0.1471],
    [0.136, 0.1405, 0.1292, 0.1339, 0.1586, 0.1426, 0.1593],
    [0.1595, 0.1222, 0.1461, 0.1406, 0.1384, 0.136, 0.1573],
    [0.1321, 0.1412, 0.137, 0.1549, 0.163, 0.1343, 0.1374],
];
/// Share of `TIME OCC` minutes 0..60 (officers round to :00 and :30), February 2024.
pub(crate) const MINUTE_PROFILE: [f32; 60] = [
    0.36351, 0.01283, 0.00287, 0.00275, 0.00198, 0.02139, 0.00179, 0.00268, 0.00332, 0.00179,
    0.03193, 0.00236, 0.00211, 0.00243, 0.00153, 0.04553, 0.00236, 0.00306, 0.00262, 0.00281,
    0.04451, 0.0023, 0.00262, 0.00198, 0.003, 0.02114, 0.00223, 0.00223, 0.00345, 0.00198, 0.1733,
    0.0016, 0.00134, 0.00185, 0.0016, 0.02062, 0.00306, 0.00287, 0.00338, 0.00179, 0.04285, 0.0023,
    0.00198, 0.00243, 0.00243, 0.0537, 0.00192, 0.00287, 0.00255, 0.00185, 0.0408, 0.00115,
    0.00217, 0.0016, 0.00198, 0.01922, 0.00211, 0.00217, 0.00262, 0.00281,
];
/// Per area, its share of incidents between 20:00 and 04:00 relative to the city's (the area x hour interaction), February 2024.
pub(crate) const NIGHT_FACTOR: [f32; AREA_COUNT] = [
    1.011, 0.947, 0.903, 1.048, 1.022, 1.237, 0.918, 0.83, 0.967, 1.042, 1.011, 1.102, 1.139,
    0.975, 0.881, 0.983, 0.891, 1.088, 1.034, 1.026, 0.928,
];
/// Per area, `(mean lat, mean lon, sd lat, sd lon)` of incident locations, February 2024.
pub(crate) const AREA_PLACE: [(f32, f32, f32, f32); AREA_COUNT] = [
    (34.0488, -118.251, 0.0077, 0.0103),
    (34.0639, -118.2743, 0.0123, 0.0104),
    (34.0216, -118.3152, 0.0092, 0.0275),
    (34.0525, -118.2054, 0.0216, 0.0142),
    (33.7701, -118.2856, 0.0361, 0.0177),
    (34.0993, -118.3277, 0.007, 0.0157),
    (34.0627, -118.3521, 0.0146, 0.0162),
    (34.0521, -118.4377, 0.0172, 0.0369),
    (34.1793, -118.4464, 0.0199, 0.0154),
    (34.1869, -118.5196, 0.0201, 0.025),
    (34.1066, -118.2446, 0.0173, 0.0375),
    (33.9771, -118.2985, 0.0132, 0.0197),
    (34.0109, -118.2602, 0.0168, 0.0128),
    (33.9826, -118.4232, 0.0264, 0.0305),
    (34.1712, -118.3841, 0.0216, 0.0173),
    (34.2476, -118.3847, 0.0229, 0.0397),
    (34.2504, -118.5377, 0.0192, 0.0373),
    (33.9397, -118.268, 0.0157, 0.0168),
    (34.2564, -118.4497, 0.0364, 0.016),
    (34.0597, -118.3002, 0.011, 0.0094),
    (34.1902, -118.6002, 0.0183, 0.0192),
];
/// Per category, the share of `Vict Sex` empty, M, F, X, H (empty: no person victim, e.g. a stolen car), February 2024.
pub(crate) const VICTIM_SEX: [[f32; 5]; Category::COUNT] = [
    [0.0002, 0.4993, 0.4724, 0.0281, 0.0],
    [0.0031, 0.5438, 0.2227, 0.2304, 0.0],
    [0.0, 0.5045, 0.3347, 0.1594, 0.0014],
    [0.0154, 0.3821, 0.3181, 0.284, 0.0003],
    [0.7213, 0.1579, 0.1109, 0.0099, 0.0],
    [0.0, 0.4278, 0.3441, 0.2281, 0.0],
    [0.0, 0.1917, 0.7434, 0.0649, 0.0],
    [0.0, 0.3, 0.3638, 0.3362, 0.0],
];
/// Probability that `Vict Age` is 0 (unknown) given `Vict Sex` empty, M, F, X, H, February 2024.
pub(crate) const AGE_UNKNOWN_BY_SEX: [f32; 5] = [1.0, 0.0929, 0.0114, 0.9019, 0.0];
/// Known victim ages: `(from, to, share)`, February 2024.
pub(crate) const AGE_BINS: [(u8, u8, f32); 7] = [
    (1, 17, 0.0416),
    (18, 24, 0.1332),
    (25, 34, 0.2679),
    (35, 44, 0.2301),
    (45, 54, 0.1481),
    (55, 64, 0.1006),
    (65, 99, 0.0784),
];
/// Probability that `Vict Descent` is X (unknown) when `Vict Sex` is X, February 2024.
pub(crate) const DESCENT_X_GIVEN_SEX_X: f32 = 0.994;
/// `Vict Descent` codes of victims with sex M, F or H (at least 0.1 %), February 2024.
pub(crate) const DESCENT: [(u8, f32); 12] = [
    (b'H', 0.4076),
    (b'W', 0.2491),
    (b'B', 0.1641),
    (b'O', 0.1025),
    (b'A', 0.0318),
    (b'X', 0.0164),
    (b'F', 0.008),
    (b'K', 0.0072),
    (b'C', 0.007),
    (b'J', 0.0019),
    (b'V', 0.0017),
    (b'I', 0.0013),
];
/// Per category, the share of rows with a weapon recorded, February 2024.
pub(crate) const WEAPON_RATE: [f32; Category::COUNT] =
    [0.9968, 0.9969, 0.115, 0.0391, 0.007, 0.116, 0.4602, 0.0686];
/// The 12 most common weapons among rows that record one, February 2024.
pub(crate) const WEAPONS: [Coded; 12] = [
    Coded::new(
        400,
        0.5692,
        "STRONG-ARM (HANDS, FIST, FEET OR BODILY FORCE)",
    ),
    Coded::new(500, 0.1439, "UNKNOWN WEAPON/OTHER WEAPON"),
    Coded::new(511, 0.0829, "VERBAL THREAT"),
    Coded::new(102, 0.0705, "HAND GUN"),
    Coded::new(106, 0.0251, "UNKNOWN FIREARM"),
    Coded::new(200, 0.0234, "KNIFE WITH BLADE 6INCHES OR LESS"),
    Coded::new(207, 0.0216, "OTHER KNIFE"),
    Coded::new(109, 0.0208, "SEMI-AUTOMATIC PISTOL"),
    Coded::new(512, 0.015, "MACE/PEPPER SPRAY"),
    Coded::new(205, 0.0095, "KITCHEN KNIFE"),
    Coded::new(307, 0.0093, "VEHICLE"),
    Coded::new(306, 0.0087, "ROCK/THROWN OBJECT"),
];
/// Per category, the crime codes covering 95 % of its rows (at most 8), with their part and share within the category, February 2024.
pub(crate) const CRIME_CODES: [CrimeCode; N_CRIME_CODES] = [
    CrimeCode::new(
        Category::Violent,
        624,
        2,
        0.3432,
        "BATTERY - SIMPLE ASSAULT",
    ),
    CrimeCode::new(
        Category::Violent,
        230,
        1,
        0.2305,
        "ASSAULT WITH DEADLY WEAPON, AGGRAVATED ASSAULT",
    ),
    CrimeCode::new(
        Category::Violent,
        626,
        2,
        0.1871,
        "INTIMATE PARTNER - SIMPLE ASSAULT",
    ),
    CrimeCode::new(
        Category::Violent,
        930,
        2,
        0.0904,
        "CRIMINAL THREATS - NO WEAPON DISPLAYED",
    ),
    CrimeCode::new(Category::Violent, 761, 1, 0.0657, "BRANDISH WEAPON"),
    CrimeCode::new(
        Category::Violent,
        236,
        1,
        0.0502,
        "INTIMATE PARTNER - AGGRAVATED ASSAULT",
    ),
    CrimeCode::new(Category::Violent, 625, 2, 0.0187, "OTHER ASSAULT"),
    CrimeCode::new(
        Category::Violent,
        753,
        2,
        0.0142,
        "DISCHARGE FIREARMS/SHOTS FIRED",
    ),
    CrimeCode::new(Category::Robbery, 210, 1, 0.871, "ROBBERY"),
    CrimeCode::new(Category::Robbery, 220, 1, 0.129, "ATTEMPTED ROBBERY"),
    CrimeCode::new(Category::Burglary, 310, 1, 0.5362, "BURGLARY"),
    CrimeCode::new(Category::Burglary, 330, 1, 0.4638, "BURGLARY FROM VEHICLE"),
    CrimeCode::new(
        Category::Theft,
        442,
        1,
        0.266,
        "SHOPLIFTING - PETTY THEFT ($950 & UNDER)",
    ),
    CrimeCode::new(
        Category::Theft,
        440,
        1,
        0.2448,
        "THEFT PLAIN - PETTY ($950 & UNDER)",
    ),
    CrimeCode::new(
        Category::Theft,
        341,
        1,
        0.2026,
        "THEFT-GRAND ($950.01 & OVER)EXCPT,GUNS,FOWL,LIVESTK,PROD",
    ),
    CrimeCode::new(Category::Theft, 354, 2, 0.1625, "THEFT OF IDENTITY"),
    CrimeCode::new(
        Category::Theft,
        343,
        1,
        0.0384,
        "SHOPLIFTING-GRAND THEFT ($950.01 & OVER)",
    ),
    CrimeCode::new(Category::Theft, 662, 2, 0.0335, "BUNCO, GRAND THEFT"),
    CrimeCode::new(Category::Theft, 480, 1, 0.0268, "BIKE - STOLEN"),
    CrimeCode::new(Category::Theft, 350, 1, 0.0255, "THEFT, PERSON"),
    CrimeCode::new(Category::Vehicle, 510, 1, 0.5698, "VEHICLE - STOLEN"),
    CrimeCode::new(
        Category::Vehicle,
        420,
        1,
        0.2087,
        "THEFT FROM MOTOR VEHICLE - PETTY ($950 & UNDER)",
    ),
    CrimeCode::new(
        Category::Vehicle,
        331,
        1,
        0.175,
        "THEFT FROM MOTOR VEHICLE - GRAND ($950.01 AND OVER)",
    ),
    CrimeCode::new(
        Category::Vehicle,
        520,
        1,
        0.0465,
        "VEHICLE - ATTEMPT STOLEN",
    ),
    CrimeCode::new(
        Category::Vandalism,
        740,
        2,
        0.7573,
        "VANDALISM - FELONY ($400 & OVER, ALL CHURCH VANDALISMS)",
    ),
    CrimeCode::new(
        Category::Vandalism,
        745,
        2,
        0.2427,
        "VANDALISM - MISDEAMEANOR ($399 OR UNDER)",
    ),
    CrimeCode::new(
        Category::SexOffence,
        956,
        2,
        0.359,
        "LETTERS, LEWD  -  TELEPHONE CALLS, LEWD",
    ),
    CrimeCode::new(
        Category::SexOffence,
        860,
        2,
        0.2161,
        "BATTERY WITH SEXUAL CONTACT",
    ),
    CrimeCode::new(Category::SexOffence, 121, 1, 0.1502, "RAPE, FORCIBLE"),
    CrimeCode::new(Category::SexOffence, 850, 2, 0.0696, "INDECENT EXPOSURE"),
    CrimeCode::new(Category::SexOffence, 762, 2, 0.0586, "LEWD CONDUCT"),
    CrimeCode::new(
        Category::SexOffence,
        810,
        2,
        0.0549,
        "SEX,UNLAWFUL(INC MUTUAL CONSENT, PENETRATION W/ FRGN OBJ",
    ),
    CrimeCode::new(
        Category::SexOffence,
        815,
        1,
        0.0476,
        "SEXUAL PENETRATION W/FOREIGN OBJECT",
    ),
    CrimeCode::new(
        Category::SexOffence,
        813,
        2,
        0.044,
        "CHILD ANNOYING (17YRS & UNDER)",
    ),
    CrimeCode::new(Category::Other, 888, 2, 0.4491, "TRESPASSING"),
    CrimeCode::new(
        Category::Other,
        901,
        2,
        0.1891,
        "VIOLATION OF RESTRAINING ORDER",
    ),
    CrimeCode::new(Category::Other, 946, 2, 0.1449, "OTHER MISCELLANEOUS CRIME"),
    CrimeCode::new(Category::Other, 900, 2, 0.0946, "VIOLATION OF COURT ORDER"),
    CrimeCode::new(Category::Other, 890, 2, 0.0421, "FAILURE TO YIELD"),
    CrimeCode::new(Category::Other, 903, 2, 0.0319, "CONTEMPT OF COURT"),
    CrimeCode::new(Category::Other, 940, 2, 0.0257, "EXTORTION"),
    CrimeCode::new(Category::Other, 886, 2, 0.0226, "DISTURBING THE PEACE"),
];
/// Number of entries in [`CRIME_CODES`].
pub(crate) const N_CRIME_CODES: usize = 42;
/// Per category, the 5 most common premises and their share among those 5, February 2024.
pub(crate) const PREMISES: [[Coded; 5]; Category::COUNT] = [
    [
        Coded::new(101, 0.2766, "STREET"),
        Coded::new(501, 0.2607, "SINGLE FAMILY DWELLING"),
        Coded::new(502, 0.2497, "MULTI-UNIT DWELLING (APARTMENT, DUPLEX, ETC)"),
        Coded::new(102, 0.1318, "SIDEWALK"),
        Coded::new(108, 0.0812, "PARKING LOT"),
    ],
    [
        Coded::new(101, 0.4129, "STREET"),
        Coded::new(102, 0.2786, "SIDEWALK"),
        Coded::new(203, 0.1269, "OTHER BUSINESS"),
        Coded::new(108, 0.1119, "PARKING LOT"),
        Coded::new(402, 0.0697, "MARKET"),
    ],
    [
        Coded::new(501, 0.3244, "SINGLE FAMILY DWELLING"),
        Coded::new(101, 0.2685, "STREET"),
        Coded::new(502, 0.1532, "MULTI-UNIT DWELLING (APARTMENT, DUPLEX, ETC)"),
        Coded::new(108, 0.1435, "PARKING LOT"),
        Coded::new(203, 0.1104, "OTHER BUSINESS"),
    ],
    [
        Coded::new(501, 0.2541, "SINGLE FAMILY DWELLING"),
        Coded::new(502, 0.245, "MULTI-UNIT DWELLING (APARTMENT, DUPLEX, ETC)"),
        Coded::new(203, 0.2246, "OTHER BUSINESS"),
        Coded::new(404, 0.1904, "DEPARTMENT STORE"),
        Coded::new(101, 0.0859, "STREET"),
    ],
    [
        Coded::new(101, 0.7929, "STREET"),
        Coded::new(108, 0.112, "PARKING LOT"),
        Coded::new(104, 0.0411, "DRIVEWAY"),
        Coded::new(707, 0.0311, "GARAGE/CARPORT"),
        Coded::new(501, 0.0228, "SINGLE FAMILY DWELLING"),
    ],
    [
        Coded::new(122, 0.347, "VEHICLE, PASSENGER/TRUCK"),
        Coded::new(101, 0.2157, "STREET"),
        Coded::new(501, 0.1867, "SINGLE FAMILY DWELLING"),
        Coded::new(502, 0.1482, "MULTI-UNIT DWELLING (APARTMENT, DUPLEX, ETC)"),
        Coded::new(203, 0.1024, "OTHER BUSINESS"),
    ],
    [
        Coded::new(501, 0.4115, "SINGLE FAMILY DWELLING"),
        Coded::new(502, 0.2832, "MULTI-UNIT DWELLING (APARTMENT, DUPLEX, ETC)"),
        Coded::new(101, 0.177, "STREET"),
        Coded::new(102, 0.0841, "SIDEWALK"),
        Coded::new(720, 0.0442, "JUNIOR HIGH SCHOOL"),
    ],
    [
        Coded::new(501, 0.431, "SINGLE FAMILY DWELLING"),
        Coded::new(502, 0.2219, "MULTI-UNIT DWELLING (APARTMENT, DUPLEX, ETC)"),
        Coded::new(101, 0.2119, "STREET"),
        Coded::new(203, 0.0711, "OTHER BUSINESS"),
        Coded::new(135, 0.064, "MTA PROPERTY OR PARKING LOT"),
    ],
];
/// Case status `(code, description, share)`, February 2024.
pub(crate) const STATUS: [(&str, &str, f32); 5] = [
    ("IC", "Invest Cont", 0.8063),
    ("AO", "Adult Other", 0.1025),
    ("AA", "Adult Arrest", 0.0827),
    ("JA", "Juv Arrest", 0.0049),
    ("JO", "Juv Other", 0.0036),
];
/// The 24 most common modus operandi codes, February 2024.
pub(crate) const MOCODES: [&str; 24] = [
    "1822", "0344", "0913", "0416", "0329", "1300", "0400", "0325", "1402", "2000", "1609", "2004",
    "1814", "1309", "0334", "1307", "1501", "0446", "0444", "1202", "0342", "0358", "0421", "0216",
];
/// Share of rows with 0..=10 MO codes (10 = 10 or more), February 2024.
pub(crate) const MOCODE_COUNT: [f32; 11] = [
    0.1541, 0.1191, 0.1884, 0.1606, 0.1367, 0.0909, 0.0602, 0.0394, 0.0231, 0.0138, 0.0137,
];
/// Share of rows located at an intersection (`Cross Street` filled), February 2024.
pub(crate) const P_CROSS_STREET: f32 = 0.1411;
/// Share of rows with a second crime code, February 2024.
pub(crate) const P_CRM_CD_2: f32 = 0.0762;
/// Days from occurrence to report: `(from, to, share)`, 2020 sample (the February file is cut a month after the crimes, so it lacks the long tail).
pub(crate) const REPORT_DELAY: [(u16, u16, f32); 8] = [
    (0, 0, 0.4365),
    (1, 1, 0.2535),
    (2, 2, 0.0795),
    (3, 7, 0.1195),
    (8, 30, 0.0631),
    (31, 90, 0.0154),
    (91, 365, 0.01),
    (366, 1100, 0.0223),
];
/// Share of date fields in the older `MM/DD/YYYY 00:00` layout, 2020 sample.
pub(crate) const P_DATE_24H: f32 = 0.4142;
/// Share of rows whose two date fields use different layouts, 2020 sample.
pub(crate) const P_MIXED_DATE_ROW: f32 = 0.118;
/// Among unknown victim ages, the share written negative (`-1`) rather than 0, 2020 sample.
pub(crate) const P_NEGATIVE_AGE: f32 = 0.001;
/// Share of rows with LAT/LON 0,0 (unknown place), 2020 sample.
pub(crate) const P_ZERO_COORDS: f32 = 0.0013;
/// Share of `DR_NO`s with a leading zero, 2020 sample.
pub(crate) const P_LEADING_ZERO_DR_NO: f32 = 0.0001;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calendar::weekday;
    use crate::loader::{load_path, Loaded};
    use crate::schema::Column;

    fn sums_to_one(v: impl IntoIterator<Item = f32>, what: &str) {
        let s: f32 = v.into_iter().sum();
        assert!((s - 1.0).abs() < 2e-3, "{what} sums to {s}");
    }

    #[test]
    fn distributions_are_normalized_and_consistent() {
        sums_to_one(AREA_SHARE, "AREA_SHARE");
        for (a, row) in CATEGORY_MIX.iter().enumerate() {
            sums_to_one(row.iter().copied(), &format!("CATEGORY_MIX[{a}]"));
        }
        for c in 0..Category::COUNT {
            sums_to_one(HOUR_PROFILE[c], "HOUR_PROFILE");
            sums_to_one(WEEKDAY_PROFILE[c], "WEEKDAY_PROFILE");
            sums_to_one(VICTIM_SEX[c], "VICTIM_SEX");
            sums_to_one(PREMISES[c].iter().map(|p| p.weight), "PREMISES");
            let codes = CRIME_CODES.iter().filter(|k| k.category.index() == c);
            sums_to_one(codes.map(|k| k.weight), "CRIME_CODES");
        }
        sums_to_one(MINUTE_PROFILE, "MINUTE_PROFILE");
        sums_to_one(AGE_BINS.iter().map(|b| b.2), "AGE_BINS");
        sums_to_one(DESCENT.iter().map(|d| d.1), "DESCENT");
        sums_to_one(WEAPONS.iter().map(|w| w.weight), "WEAPONS");
        sums_to_one(STATUS.iter().map(|s| s.2), "STATUS");
        sums_to_one(MOCODE_COUNT, "MOCODE_COUNT");
        sums_to_one(REPORT_DELAY.iter().map(|d| d.2), "REPORT_DELAY");
        for k in &CRIME_CODES {
            assert_eq!(Category::from_crime_code(k.code), k.category, "{}", k.code);
            assert!(k.part == 1 || k.part == 2);
        }
    }

    fn real(file: &str) -> Option<Loaded> {
        crate::test_data::la_crime_file(file).map(|p| load_path(&p).unwrap())
    }

    fn close(table: f32, real: f64, what: &str) {
        assert!(
            (f64::from(table) - real).abs() < 1.2e-4,
            "{what}: table {table}, real data {real:.5}"
        );
    }

    /// Recomputes the key statistics from the real files with this crate's
    /// loader and checks the table (rounded to 4 decimals) against them.
    #[test]
    fn table_matches_real_samples() {
        let (Some(feb), Some(s2020)) = (
            real("la_crime_2024_02.csv"),
            real("la_crime_2020_sample.csv"),
        ) else {
            eprintln!("skipped: ../shared/data/la-crime is absent");
            return;
        };
        let n = feb.incidents.len() as f64;
        let mut area = [0f64; AREA_COUNT];
        let mut mix = [[0f64; Category::COUNT]; AREA_COUNT];
        let mut hour = [[0f64; 24]; Category::COUNT];
        let mut per_cat = [0f64; Category::COUNT];
        let mut weapon = [0f64; Category::COUNT];
        let mut sex = [[0f64; 5]; Category::COUNT];
        for i in &feb.incidents {
            let (a, c) = (usize::from(i.area) - 1, i.category.index());
            area[a] += 1.0;
            mix[a][c] += 1.0;
            hour[c][usize::from(i.hour())] += 1.0;
            per_cat[c] += 1.0;
            weapon[c] += f64::from(u8::from(i.weapon_code.is_some()));
            let s = match i.victim_sex {
                None => 0,
                Some(b'M') => 1,
                Some(b'F') => 2,
                Some(b'X') => 3,
                _ => 4,
            };
            sex[c][s] += 1.0;
        }
        for a in 0..AREA_COUNT {
            close(AREA_SHARE[a], area[a] / n, &format!("AREA_SHARE[{a}]"));
            for c in 0..Category::COUNT {
                close(
                    CATEGORY_MIX[a][c],
                    mix[a][c] / area[a],
                    &format!("CATEGORY_MIX[{a}][{c}]"),
                );
            }
        }
        for c in 0..Category::COUNT {
            for h in 0..24 {
                close(
                    HOUR_PROFILE[c][h],
                    hour[c][h] / per_cat[c],
                    &format!("HOUR_PROFILE[{c}][{h}]"),
                );
            }
            close(
                WEAPON_RATE[c],
                weapon[c] / per_cat[c],
                &format!("WEAPON_RATE[{c}]"),
            );
            for s in 0..5 {
                close(
                    VICTIM_SEX[c][s],
                    sex[c][s] / per_cat[c],
                    &format!("VICTIM_SEX[{c}][{s}]"),
                );
            }
        }

        // weekday rates, both files pooled
        let mut rate = [[0f64; 7]; Category::COUNT];
        for l in [&feb, &s2020] {
            let (lo, hi) = (l.report.date_min.unwrap(), l.report.date_max.unwrap());
            let mut days = [0f64; 7];
            for d in lo..=hi {
                days[weekday(d) as usize] += 1.0;
            }
            for i in &l.incidents {
                let wd = weekday(i.date_occurred) as usize;
                rate[i.category.index()][wd] += 1.0 / days[wd];
            }
        }
        for c in 0..Category::COUNT {
            let total: f64 = rate[c].iter().sum();
            for wd in 0..7 {
                close(
                    WEEKDAY_PROFILE[c][wd],
                    rate[c][wd] / total,
                    &format!("WEEKDAY_PROFILE[{c}][{wd}]"),
                );
            }
        }

        // quirks of the 2020 sample
        let r = &s2020.report;
        let rows = r.rows_read as f64;
        close(
            P_ZERO_COORDS,
            r.imputed_in(Column::Lat) as f64 / rows,
            "P_ZERO_COORDS",
        );
        close(
            P_DATE_24H,
            r.date_formats["MM/DD/YYYY HH:MM"] as f64 / (2.0 * rows),
            "P_DATE_24H",
        );
        close(
            P_MIXED_DATE_ROW,
            r.mixed_date_format_rows as f64 / rows,
            "P_MIXED_DATE_ROW",
        );
        for &(lo, hi, share) in &REPORT_DELAY {
            let k = s2020
                .incidents
                .iter()
                .filter(|i| {
                    (i32::from(lo)..=i32::from(hi)).contains(&(i.date_reported - i.date_occurred))
                })
                .count();
            close(share, k as f64 / rows, &format!("REPORT_DELAY {lo}..={hi}"));
        }
    }
}

//! The LAPD "Crime Data from 2020 to Present" export: its 28 columns, and the
//! hand-written, allocation-free parsers for its field formats (dates, times,
//! codes, coordinates), plus civil-date arithmetic on [`DayNumber`]s.
//!
//! Real exports vary, and every parser here accepts what the city has
//! published and what a spreadsheet makes of it when the file is opened and
//! saved again:
//!
//! - dates as `MM/DD/YYYY 12:00:00 AM` (the current export, the canonical
//!   form), `MM/DD/YYYY 00:00` (older downloads; both can appear in one file
//!   and even one row), ISO `YYYY-MM-DDTHH:MM:SS.000` (the Socrata API), and
//!   the spreadsheet forms `M/D/YYYY H:MM` (24-hour clock), `M/D/YYYY` and
//!   `M/D/YYYY h:mm:ss AM|PM` (12-hour clock, `12:00:00 AM` is midnight and
//!   `12:00:00 PM` noon), month, day and hour with or without a leading zero;
//!   the time of a date field is checked and ignored (the export puts the time
//!   of day in `TIME OCC`), and impossible dates or times (month 13, Feb 30,
//!   hour 25, minute 60, `13:00 PM`) are refused;
//! - `TIME OCC` as 4 digits (`0615`) or fewer, `HHMM` with the leading zeros
//!   stripped (`615` = 06:15, `15` = 00:15, `5` = 00:05);
//! - codes with or without leading zeros (`AREA` `05` or `5`, `Rpt Dist No`
//!   `0557` or `557`, `DR_NO` `010304468`), and integral numbers the way a
//!   spreadsheet may write them (`5.0`, `557.00`), counted as repairs;
//! - fields padded with spaces (`LOCATION`).
//!
//! Header names are matched ignoring ASCII case, surrounding whitespace and a
//! UTF-8 byte order mark (`Column::from_name`).

use super::calendar::day_number;
use super::record::DayNumber;

/// One of the export's 28 columns, in the export's order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Column {
    /// `DR_NO`: the report number, `YYAANNNNN` (year, area, sequence).
    DrNo = 0,
    /// `Date Rptd`: the date the crime was reported.
    DateRptd,
    /// `DATE OCC`: the date the crime occurred.
    DateOcc,
    /// `TIME OCC`: the time it occurred, `HHMM` 24-hour.
    TimeOcc,
    /// `AREA`: the LAPD area code, 1..=21.
    Area,
    /// `AREA NAME`.
    AreaName,
    /// `Rpt Dist No`: the reporting district, a 4-digit sub-area code.
    RptDistNo,
    /// `Part 1-2`: UCR part 1 (serious) or 2.
    Part12,
    /// `Crm Cd`: the primary crime code.
    CrmCd,
    /// `Crm Cd Desc`.
    CrmCdDesc,
    /// `Mocodes`: modus operandi codes, space separated.
    Mocodes,
    /// `Vict Age`: 0 or negative when unknown.
    VictAge,
    /// `Vict Sex`: M, F, X (unknown), H, or empty.
    VictSex,
    /// `Vict Descent`: a letter code, or empty.
    VictDescent,
    /// `Premis Cd`: the premise code.
    PremisCd,
    /// `Premis Desc`.
    PremisDesc,
    /// `Weapon Used Cd`: empty when no weapon was recorded.
    WeaponUsedCd,
    /// `Weapon Desc`.
    WeaponDesc,
    /// `Status`: IC, AA, AO, JA, JO, CC.
    Status,
    /// `Status Desc`.
    StatusDesc,
    /// `Crm Cd 1`: the first of up to four crime codes (usually = `Crm Cd`).
    CrmCd1,
    /// `Crm Cd 2`.
    CrmCd2,
    /// `Crm Cd 3`.
    CrmCd3,
    /// `Crm Cd 4`.
    CrmCd4,
    /// `LOCATION`: the street address rounded to the hundred block, space padded.
    Location,
    /// `Cross Street`.
    CrossStreet,
    /// `LAT`: latitude, 0 when unknown.
    Lat,
    /// `LON`: longitude, 0 when unknown.
    Lon,
}

/// Number of columns in the export.
pub(crate) const COLUMN_COUNT: usize = 28;

/// The export's header, in order.
pub(crate) const HEADER: [&str; COLUMN_COUNT] = [
    "DR_NO",
    "Date Rptd",
    "DATE OCC",
    "TIME OCC",
    "AREA",
    "AREA NAME",
    "Rpt Dist No",
    "Part 1-2",
    "Crm Cd",
    "Crm Cd Desc",
    "Mocodes",
    "Vict Age",
    "Vict Sex",
    "Vict Descent",
    "Premis Cd",
    "Premis Desc",
    "Weapon Used Cd",
    "Weapon Desc",
    "Status",
    "Status Desc",
    "Crm Cd 1",
    "Crm Cd 2",
    "Crm Cd 3",
    "Crm Cd 4",
    "LOCATION",
    "Cross Street",
    "LAT",
    "LON",
];

impl Column {
    /// All columns in export order.
    pub const ALL: [Column; COLUMN_COUNT] = [
        Column::DrNo,
        Column::DateRptd,
        Column::DateOcc,
        Column::TimeOcc,
        Column::Area,
        Column::AreaName,
        Column::RptDistNo,
        Column::Part12,
        Column::CrmCd,
        Column::CrmCdDesc,
        Column::Mocodes,
        Column::VictAge,
        Column::VictSex,
        Column::VictDescent,
        Column::PremisCd,
        Column::PremisDesc,
        Column::WeaponUsedCd,
        Column::WeaponDesc,
        Column::Status,
        Column::StatusDesc,
        Column::CrmCd1,
        Column::CrmCd2,
        Column::CrmCd3,
        Column::CrmCd4,
        Column::Location,
        Column::CrossStreet,
        Column::Lat,
        Column::Lon,
    ];

    /// The column's position in the export's header, 0..28.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The header name, e.g. `"DATE OCC"`.
    pub fn name(self) -> &'static str {
        HEADER[self.index()]
    }

    /// The column whose header name is `name`: the export's name ignoring
    /// ASCII case and surrounding whitespace (`" date occ"` is `DATE OCC`),
    /// after a leading UTF-8 byte order mark and, in that case, quotes around
    /// the name are removed. Nothing else is forgiven: `DR NO` is not
    /// `DR_NO`.
    pub(crate) fn from_name(name: &str) -> Option<Column> {
        let mut name = name.trim();
        if let Some(rest) = name.strip_prefix('\u{feff}') {
            // a BOM before a quoted name leaves the quotes in the field
            name = rest.trim();
            if let Some(inner) = name.strip_prefix('"').and_then(|n| n.strip_suffix('"')) {
                name = inner.trim();
            }
        }
        HEADER
            .iter()
            .position(|h| h.eq_ignore_ascii_case(name))
            .and_then(|i| Column::ALL.get(i).copied())
    }

    /// Whether cleaning reads the column, so that a file without it (or with
    /// it twice) cannot be loaded. The others (descriptions, `Mocodes`,
    /// `Status`, `Crm Cd 2`..`4`, `LOCATION`, `Cross Street`) only feed the
    /// report's count of empty fields and may be absent.
    pub fn is_needed(self) -> bool {
        !matches!(
            self,
            Column::CrmCdDesc
                | Column::Mocodes
                | Column::PremisDesc
                | Column::WeaponDesc
                | Column::Status
                | Column::StatusDesc
                | Column::CrmCd2
                | Column::CrmCd3
                | Column::CrmCd4
                | Column::Location
                | Column::CrossStreet
        )
    }

    /// The digits of the column in the city's export when it is a
    /// zero-padded code (`DR_NO` 9, `TIME OCC` 4, `AREA` 2, `Rpt Dist No`
    /// 4); 0 for the others. A shorter value had its leading zeros stripped.
    pub(crate) fn export_width(self) -> usize {
        match self {
            Column::DrNo => 9,
            Column::TimeOcc | Column::RptDistNo => 4,
            Column::Area => 2,
            _ => 0,
        }
    }
}

impl std::fmt::Display for Column {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

// ---------------------------------------------------------------------------
// Field parsers. All take raw bytes, trim ASCII spaces, and return `None` for
// anything they do not accept; none allocates.

/// `bytes` without leading and trailing ASCII whitespace.
pub fn trim(bytes: &[u8]) -> &[u8] {
    bytes.trim_ascii()
}

/// An unsigned decimal integer with optional leading zeros (at most 19
/// digits), e.g. `010304468`, `05`, ` 45 `.
pub(crate) fn parse_uint(bytes: &[u8]) -> Option<u64> {
    digits_u64(trim(bytes))
}

/// [`parse_uint`] of bytes already trimmed.
#[inline]
fn digits_u64(b: &[u8]) -> Option<u64> {
    if b.is_empty() || b.len() > 19 {
        return None;
    }
    let mut v: u64 = 0;
    for &c in b {
        let d = c.wrapping_sub(b'0');
        if d > 9 {
            return None;
        }
        v = v * 10 + u64::from(d);
    }
    Some(v)
}

/// A signed decimal integer, e.g. `-1`, `+36`, `0`.
pub(crate) fn parse_int(bytes: &[u8]) -> Option<i64> {
    let b = trim(bytes);
    let (neg, digits) = match b.first() {
        Some(b'-') => (true, &b[1..]),
        Some(b'+') => (false, &b[1..]),
        _ => (false, b),
    };
    let v = i64::try_from(parse_uint(digits)?).ok()?;
    Some(if neg { -v } else { v })
}

/// An integer written as a number with a decimal point and no fraction, as
/// spreadsheets write numbers: `5.0`, `557.00`, `-1.0`, `5.`. Not `5.5`,
/// `.0`, or exponents (`2.41E+08` has lost digits).
pub(crate) fn parse_integral_float(bytes: &[u8]) -> Option<i64> {
    let b = trim(bytes);
    let dot = memchr::memchr(b'.', b)?;
    let (int, frac) = (&b[..dot], &b[dot + 1..]);
    if !frac.iter().all(|&c| c == b'0') {
        return None;
    }
    parse_int(int)
}

/// How a numeric code was written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NumberForm {
    /// As in the city's export.
    Canonical,
    /// Fewer digits than the export's zero-padded width (`5` for `05`).
    ZerosStripped,
    /// A spreadsheet's integral number, `5.0`.
    IntegralFloat,
}

/// A code (`AREA`, `Rpt Dist No`, `Crm Cd`...): digits with or without
/// leading zeros, or an integral float (`5.0`), with the form it had. `width`
/// is the column's [`Column::export_width`]: fewer digits than that is
/// [`NumberForm::ZerosStripped`]. The export's own forms cost one comparison
/// more than [`parse_uint`].
#[inline]
pub(crate) fn parse_code(bytes: &[u8], width: usize) -> Option<(u64, NumberForm)> {
    let b = trim(bytes);
    if let Some(v) = digits_u64(b) {
        let form = if b.len() < width {
            NumberForm::ZerosStripped
        } else {
            NumberForm::Canonical
        };
        return Some((v, form));
    }
    let v = u64::try_from(parse_integral_float(b)?).ok()?;
    Some((v, NumberForm::IntegralFloat))
}

/// [`parse_int`], or an integral float (`28.0`, `-1.0`), with its form.
pub(crate) fn parse_int_form(bytes: &[u8]) -> Option<(i64, NumberForm)> {
    match parse_int(bytes) {
        Some(v) => Some((v, NumberForm::Canonical)),
        None => Some((parse_integral_float(bytes)?, NumberForm::IntegralFloat)),
    }
}

/// A decimal number without exponent, e.g. `34.0141`, `-118.2978`, `0`, `34`.
/// The result is `mantissa / 10^scale` rounded to `f32` through `f64`, the
/// same rounding [`decimal_f32`] applies (so generated and parsed coordinates
/// agree bit for bit).
pub(crate) fn parse_decimal(bytes: &[u8]) -> Option<f32> {
    let b = trim(bytes);
    let (neg, rest) = match b.first() {
        Some(b'-') => (true, &b[1..]),
        Some(b'+') => (false, &b[1..]),
        _ => (false, b),
    };
    let mut mantissa: i64 = 0;
    let mut scale: u32 = 0;
    let mut digits = 0u32;
    let mut seen_dot = false;
    for &c in rest {
        if c == b'.' {
            if seen_dot {
                return None;
            }
            seen_dot = true;
            continue;
        }
        let d = c.wrapping_sub(b'0');
        if d > 9 {
            return None;
        }
        digits += 1;
        if digits > 18 {
            return None;
        }
        mantissa = mantissa * 10 + i64::from(d);
        if seen_dot {
            scale += 1;
        }
    }
    if digits == 0 {
        return None;
    }
    Some(decimal_f32(if neg { -mantissa } else { mantissa }, scale))
}

/// `mantissa / 10^scale` as `f32` (via a correctly rounded `f64` division).
pub(crate) fn decimal_f32(mantissa: i64, scale: u32) -> f32 {
    const POW10: [f64; 19] = [
        1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
        1e17, 1e18,
    ];
    let p = POW10.get(scale as usize).copied().unwrap_or(1e18);
    (mantissa as f64 / p) as f32
}

/// `TIME OCC` (`HHMM`, 1 to 4 digits: `0615`, `130` = 01:30, `45` = 00:45,
/// `5` = 00:05) as minutes after midnight, 0..1440.
#[cfg(test)]
pub(crate) fn parse_time_occ(bytes: &[u8]) -> Option<u16> {
    parse_time_occ_form(bytes).map(|(m, _)| m)
}

/// [`parse_time_occ`], also accepting an integral float (`615.0`), with the
/// form the time had (fewer than 4 digits: [`NumberForm::ZerosStripped`]).
pub(crate) fn parse_time_occ_form(bytes: &[u8]) -> Option<(u16, NumberForm)> {
    let b = trim(bytes);
    if b.len() > 4 && parse_uint(b).is_some() {
        return None;
    }
    let (v, form) = parse_code(b, Column::TimeOcc.export_width())?;
    let v = u16::try_from(v).ok()?;
    let (h, m) = (v / 100, v % 100);
    (h < 24 && m < 60).then_some((h * 60 + m, form))
}

/// The layouts dates come in. The `Unpadded` ones are the same layouts with
/// the month, day or hour missing its leading zero, as spreadsheets write them
/// (`2/3/2024 0:00`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum DateFormat {
    /// `MM/DD/YYYY 12:00:00 AM` (the current city export; canonical).
    UsAmPm,
    /// `MM/DD/YYYY 00:00` (older downloads).
    Us24h,
    /// `MM/DD/YYYY` without a time.
    UsDateOnly,
    /// `YYYY-MM-DD` or `YYYY-MM-DDTHH:MM:SS[.fff]` (the Socrata API).
    Iso,
    /// `M/D/YYYY h:mm:ss AM`.
    UsAmPmUnpadded,
    /// `M/D/YYYY H:MM`.
    Us24hUnpadded,
    /// `M/D/YYYY`.
    UsDateOnlyUnpadded,
}

impl DateFormat {
    /// All formats, in index order.
    pub const ALL: [DateFormat; 7] = [
        DateFormat::UsAmPm,
        DateFormat::Us24h,
        DateFormat::UsDateOnly,
        DateFormat::Iso,
        DateFormat::UsAmPmUnpadded,
        DateFormat::Us24hUnpadded,
        DateFormat::UsDateOnlyUnpadded,
    ];

    /// A short pattern naming the format, used as a report key.
    pub fn pattern(self) -> &'static str {
        match self {
            DateFormat::UsAmPm => "MM/DD/YYYY hh:mm:ss AM",
            DateFormat::Us24h => "MM/DD/YYYY HH:MM",
            DateFormat::UsDateOnly => "MM/DD/YYYY",
            DateFormat::Iso => "YYYY-MM-DDTHH:MM:SS",
            DateFormat::UsAmPmUnpadded => "M/D/YYYY h:mm:ss AM",
            DateFormat::Us24hUnpadded => "M/D/YYYY H:MM",
            DateFormat::UsDateOnlyUnpadded => "M/D/YYYY",
        }
    }

    /// Whether this is the current city export's form.
    pub fn is_canonical(self) -> bool {
        self == DateFormat::UsAmPm
    }
}

/// Reads 1 or 2 digits from `b` at `*i`; advances `*i`.
fn digits_1_2(b: &[u8], i: &mut usize) -> Option<u32> {
    let mut v = 0u32;
    let start = *i;
    while *i < b.len() && *i - start < 2 && b[*i].is_ascii_digit() {
        v = v * 10 + u32::from(b[*i] - b'0');
        *i += 1;
    }
    (*i > start).then_some(v)
}

/// Reads exactly `n` digits from `b` at `*i`; advances `*i`.
fn digits_n(b: &[u8], i: &mut usize, n: usize) -> Option<u32> {
    let s = b.get(*i..*i + n)?;
    let mut v = 0u32;
    for &c in s {
        let d = c.wrapping_sub(b'0');
        if d > 9 {
            return None;
        }
        v = v * 10 + u32::from(d);
    }
    *i += n;
    Some(v)
}

/// Checks a time of day `H:MM[:SS][ AM|PM]` (the date columns carry
/// midnight; any valid time is accepted and ignored: hours 0..=23 without a
/// suffix, 1..=12 with one, so `12:00:00 AM` is midnight and `12:00:00 PM`
/// noon). Returns whether it had an AM/PM suffix, and whether the hour had
/// two digits.
fn time_suffix(b: &[u8]) -> Option<(bool, bool)> {
    let mut i = 0;
    let h = digits_1_2(b, &mut i)?;
    let hour_padded = i == 2;
    if b.get(i) != Some(&b':') {
        return None;
    }
    i += 1;
    let m = digits_n(b, &mut i, 2)?;
    let mut s = 0;
    if b.get(i) == Some(&b':') {
        i += 1;
        s = digits_n(b, &mut i, 2)?;
        // fractional seconds
        if b.get(i) == Some(&b'.') {
            i += 1;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
        }
    }
    if m > 59 || s > 60 {
        return None;
    }
    let rest = trim(&b[i..]);
    match rest {
        [] => (h < 24).then_some((false, hour_padded)),
        [b'A' | b'a' | b'P' | b'p', b'M' | b'm'] => {
            (1..=12).contains(&h).then_some((true, hour_padded))
        }
        _ => None,
    }
}

/// A date field (`Date Rptd`, `DATE OCC`) in any of the [`DateFormat`]s, as
/// days since 1970-01-01, with the format it had.
pub(crate) fn parse_date(bytes: &[u8]) -> Option<(DayNumber, DateFormat)> {
    let b = trim(bytes);
    let mut i = 0;
    if b.get(4) == Some(&b'-') {
        // ISO: YYYY-MM-DD[THH:MM:SS[.fff]]
        let y = digits_n(b, &mut i, 4)?;
        i += 1;
        let m = digits_n(b, &mut i, 2)?;
        if b.get(i) != Some(&b'-') {
            return None;
        }
        i += 1;
        let d = digits_n(b, &mut i, 2)?;
        match b.get(i) {
            None => {}
            Some(b'T' | b' ') => {
                time_suffix(&b[i + 1..])?;
            }
            Some(_) => return None,
        }
        return Some((day_number(y as i32, m, d)?, DateFormat::Iso));
    }
    let m = digits_1_2(b, &mut i)?;
    let month_padded = i == 2;
    if b.get(i) != Some(&b'/') {
        return None;
    }
    i += 1;
    let day_start = i;
    let d = digits_1_2(b, &mut i)?;
    let padded = month_padded && i - day_start == 2;
    if b.get(i) != Some(&b'/') {
        return None;
    }
    i += 1;
    let y = digits_n(b, &mut i, 4)?;
    let format = match (b.get(i), padded) {
        (None, true) => DateFormat::UsDateOnly,
        (None, false) => DateFormat::UsDateOnlyUnpadded,
        (Some(b' '), _) => match time_suffix(trim(&b[i..]))? {
            (true, true) if padded => DateFormat::UsAmPm,
            (true, _) => DateFormat::UsAmPmUnpadded,
            (false, true) if padded => DateFormat::Us24h,
            (false, _) => DateFormat::Us24hUnpadded,
        },
        (Some(_), _) => return None,
    };
    Some((day_number(y as i32, m, d)?, format))
}

/// A memo of [`parse_date`] for the export's two usual layouts: a file has
/// only a few thousand distinct dates, so most date fields are found in a
/// small direct-mapped table keyed by their `MM/DD/YYYY` bytes instead of
/// being parsed. Results are exactly [`parse_date`]'s.
#[derive(Clone, Debug)]
pub(crate) struct DateCache {
    /// `(MM/DD/YYYY bytes as an integer, day)`; key 0 = empty.
    slots: [(u128, DayNumber); 64],
}

impl Default for DateCache {
    fn default() -> Self {
        DateCache {
            slots: [(0, 0); 64],
        }
    }
}

impl DateCache {
    /// A date field, as [`parse_date`] parses it.
    pub fn parse(&mut self, bytes: &[u8]) -> Option<(DayNumber, DateFormat)> {
        let b = trim(bytes);
        let format = match b.get(10..) {
            Some(b" 12:00:00 AM") => DateFormat::UsAmPm,
            Some(b" 00:00") => DateFormat::Us24h,
            _ => return parse_date(bytes),
        };
        let date = &b[..10];
        if date[2] != b'/' || date[5] != b'/' {
            return parse_date(bytes);
        }
        let mut key_bytes = [0u8; 16];
        key_bytes[..10].copy_from_slice(date);
        let key = u128::from_le_bytes(key_bytes);
        // month and day digits pick the slot
        let slot =
            (usize::from(date[1]) * 7 + usize::from(date[3]) * 3 + usize::from(date[4])) & 63;
        if self.slots[slot].0 == key {
            return Some((self.slots[slot].1, format));
        }
        let (day, parsed_format) = parse_date(bytes)?;
        debug_assert_eq!(parsed_format, format);
        self.slots[slot] = (key, day);
        Some((day, format))
    }
}

/// Parses an ISO date `YYYY-MM-DD` into a day number.
pub fn parse_iso_date(s: &str) -> Option<DayNumber> {
    match parse_date(s.as_bytes())? {
        (day, DateFormat::Iso) => Some(day),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calendar::{civil_from_days, days_from_civil};

    #[test]
    fn header_and_columns_agree() {
        for (i, c) in Column::ALL.iter().enumerate() {
            assert_eq!(c.index(), i);
            assert_eq!(Column::from_name(c.name()), Some(*c));
        }
        assert_eq!(Column::from_name("\u{feff}DR_NO"), Some(Column::DrNo));
        assert_eq!(Column::from_name("\u{feff}\"DR_NO\""), Some(Column::DrNo));
        assert_eq!(Column::from_name("dr_no"), Some(Column::DrNo));
        assert_eq!(Column::from_name("  Date OCC\t"), Some(Column::DateOcc));
        assert_eq!(Column::from_name("rpt dist no"), Some(Column::RptDistNo));
        assert_eq!(Column::from_name("DR NO"), None);
        assert_eq!(Column::from_name("Rpt  Dist No"), None);
        assert_eq!(Column::from_name(""), None);
        assert_eq!(Column::from_name("month"), None);
        assert_eq!(Column::Lon.name(), "LON");
        let needed: Vec<&str> = Column::ALL
            .iter()
            .filter(|c| c.is_needed())
            .map(|c| c.name())
            .collect();
        assert_eq!(needed.len(), 17, "{needed:?}");
        assert!(!Column::Mocodes.is_needed() && Column::AreaName.is_needed());
    }

    #[test]
    fn codes_in_spreadsheet_forms() {
        use NumberForm::*;
        assert_eq!(parse_code(b"05", 2), Some((5, Canonical)));
        assert_eq!(parse_code(b"14", 2), Some((14, Canonical)));
        assert_eq!(parse_code(b"5", 2), Some((5, ZerosStripped)));
        assert_eq!(parse_code(b"0557", 4), Some((557, Canonical)));
        assert_eq!(parse_code(b" 557 ", 4), Some((557, ZerosStripped)));
        assert_eq!(parse_code(b"1458", 4), Some((1458, Canonical)));
        assert_eq!(parse_code(b"5.0", 2), Some((5, IntegralFloat)));
        assert_eq!(parse_code(b"557.00", 4), Some((557, IntegralFloat)));
        assert_eq!(parse_code(b"480.", 0), Some((480, IntegralFloat)));
        assert_eq!(parse_code(b"480", 0), Some((480, Canonical)));
        for bad in [
            "5.5", "5.01", ".0", ".", "", "-5.0", "2.41E+08", "5,0", "5.0.0",
        ] {
            assert_eq!(parse_code(bad.as_bytes(), 2), None, "{bad:?}");
        }
        assert_eq!(parse_int_form(b"-1"), Some((-1, Canonical)));
        assert_eq!(parse_int_form(b"28.0"), Some((28, IntegralFloat)));
        assert_eq!(parse_int_form(b"-1.0"), Some((-1, IntegralFloat)));
        assert_eq!(parse_int_form(b"28.5"), None);
        assert_eq!(parse_integral_float(b"28"), None);
    }

    #[test]
    fn time_occ_forms() {
        use NumberForm::*;
        assert_eq!(parse_time_occ_form(b"0615"), Some((6 * 60 + 15, Canonical)));
        assert_eq!(
            parse_time_occ_form(b"615"),
            Some((6 * 60 + 15, ZerosStripped))
        );
        assert_eq!(parse_time_occ_form(b"15"), Some((15, ZerosStripped)));
        assert_eq!(parse_time_occ_form(b"0015"), Some((15, Canonical)));
        assert_eq!(
            parse_time_occ_form(b"615.0"),
            Some((6 * 60 + 15, IntegralFloat))
        );
        assert_eq!(parse_time_occ_form(b"2359"), Some((1439, Canonical)));
        for bad in ["2400", "0660", "00615", "6:15", "615.5", "99999.0", "-15"] {
            assert_eq!(parse_time_occ_form(bad.as_bytes()), None, "{bad:?}");
        }
    }

    #[test]
    fn integers_with_leading_zeros_and_padding() {
        assert_eq!(parse_uint(b"010304468"), Some(10_304_468));
        assert_eq!(parse_uint(b"05"), Some(5));
        assert_eq!(parse_uint(b" 5 "), Some(5));
        assert_eq!(parse_uint(b""), None);
        assert_eq!(parse_uint(b"5a"), None);
        assert_eq!(parse_uint(b"99999999999999999999"), None);
        assert_eq!(parse_int(b"-1"), Some(-1));
        assert_eq!(parse_int(b"+36"), Some(36));
        assert_eq!(parse_int(b"-"), None);
    }

    #[test]
    fn decimals() {
        assert_eq!(parse_decimal(b"34.0141"), Some(34.0141));
        assert_eq!(parse_decimal(b"-118.2978"), Some(-118.2978));
        assert_eq!(parse_decimal(b"0"), Some(0.0));
        assert_eq!(parse_decimal(b"34"), Some(34.0));
        assert_eq!(parse_decimal(b" -118.3 "), Some(-118.3));
        assert_eq!(parse_decimal(b"1.2.3"), None);
        assert_eq!(parse_decimal(b"."), None);
        assert_eq!(parse_decimal(b"1e5"), None);
        assert_eq!(decimal_f32(340141, 4), 34.0141);
    }

    #[test]
    fn time_occ_short_forms() {
        assert_eq!(parse_time_occ(b"0615"), Some(6 * 60 + 15));
        assert_eq!(parse_time_occ(b"5"), Some(5));
        assert_eq!(parse_time_occ(b"45"), Some(45));
        assert_eq!(parse_time_occ(b"130"), Some(90));
        assert_eq!(parse_time_occ(b"2359"), Some(1439));
        assert_eq!(parse_time_occ(b"0000"), Some(0));
        assert_eq!(parse_time_occ(b"2400"), None);
        assert_eq!(parse_time_occ(b"0075"), None);
        assert_eq!(parse_time_occ(b"12345"), None);
        assert_eq!(parse_time_occ(b""), None);
    }

    #[test]
    fn dates_in_every_format() {
        let d = days_from_civil(2020, 1, 8);
        assert_eq!(
            parse_date(b"01/08/2020 12:00:00 AM"),
            Some((d, DateFormat::UsAmPm))
        );
        assert_eq!(
            parse_date(b"01/08/2020 00:00"),
            Some((d, DateFormat::Us24h))
        );
        assert_eq!(parse_date(b"01/08/2020"), Some((d, DateFormat::UsDateOnly)));
        assert_eq!(
            parse_date(b"1/8/2020"),
            Some((d, DateFormat::UsDateOnlyUnpadded))
        );
        assert_eq!(
            parse_date(b"2020-01-08T00:00:00.000"),
            Some((d, DateFormat::Iso))
        );
        assert_eq!(parse_date(b"2020-01-08"), Some((d, DateFormat::Iso)));
        assert_eq!(
            parse_date(b"02/29/2024 12:00:00 AM").map(|x| x.0),
            Some(days_from_civil(2024, 2, 29))
        );
        assert_eq!(parse_date(b"02/29/2023 12:00:00 AM"), None);
        assert_eq!(parse_date(b"13/01/2020 00:00"), None);
        assert_eq!(parse_date(b"01/08/2020 13:00:00 AM"), None);
        assert_eq!(parse_date(b"01/08/20"), None);
        assert_eq!(parse_date(b"01-08-2020"), None);
        assert_eq!(parse_date(b""), None);
    }

    #[test]
    fn spreadsheet_date_forms() {
        use DateFormat::*;
        let d = days_from_civil(2024, 2, 3);
        for (text, format) in [
            ("2/3/2024 0:00", Us24hUnpadded),
            ("2/3/2024 15:45", Us24hUnpadded),
            ("02/03/2024 0:00", Us24hUnpadded),
            ("2/3/2024 23:59:59", Us24hUnpadded),
            ("2/3/2024", UsDateOnlyUnpadded),
            ("02/3/2024", UsDateOnlyUnpadded),
            ("2/3/2024 12:00:00 AM", UsAmPmUnpadded),
            ("2/3/2024 1:05:00 PM", UsAmPmUnpadded),
            ("02/03/2024 1:05:00 pm", UsAmPmUnpadded),
            ("02/03/2024 12:00:00 AM", UsAmPm),
            ("02/03/2024 12:00:00 PM", UsAmPm),
            ("02/03/2024 11:59:59 PM", UsAmPm),
            ("02/03/2024 01:00:00 AM", UsAmPm),
            ("02/03/2024 00:00", Us24h),
            (" 2/3/2024  0:00 ", Us24hUnpadded),
        ] {
            assert_eq!(parse_date(text.as_bytes()), Some((d, format)), "{text:?}");
        }
        assert!(UsAmPm.is_canonical() && !Us24h.is_canonical() && !UsAmPmUnpadded.is_canonical());
        // impossible dates and times
        for bad in [
            "13/1/2024 0:00",
            "0/1/2024",
            "2/30/2024 0:00",
            "2/29/2023",
            "4/31/2024",
            "2/3/2024 25:00",
            "2/3/2024 24:00",
            "2/3/2024 1:60",
            "2/3/2024 1:5",
            "2/3/2024 0:00:00 AM",
            "2/3/2024 13:00:00 PM",
            "2/3/2024 12:00:61 AM",
            "2/3/24 0:00",
            "2/3/2024 0:00 XM",
            "2/3/2024T0:00",
            "123/3/2024",
        ] {
            assert_eq!(parse_date(bad.as_bytes()), None, "{bad:?}");
        }
    }

    #[test]
    fn date_cache_agrees_with_parse_date() {
        let mut cache = DateCache::default();
        let mut inputs = Vec::new();
        for day in (days_from_civil(2019, 12, 1)..days_from_civil(2021, 3, 1)).step_by(3) {
            let (y, m, d) = civil_from_days(day);
            inputs.push(format!("{m:02}/{d:02}/{y} 12:00:00 AM"));
            inputs.push(format!("{m:02}/{d:02}/{y} 00:00"));
            inputs.push(format!("{m}/{d}/{y} 00:00"));
            inputs.push(format!("{m}/{d}/{y} 0:00"));
            inputs.push(format!("{m}/{d}/{y} 12:00:00 AM"));
            inputs.push(format!("{m}/{d}/{y}"));
            inputs.push(format!("{y}-{m:02}-{d:02}"));
        }
        inputs.extend(
            [
                "02/30/2020 00:00",
                "13/01/2020 12:00:00 AM",
                "",
                "01/08/2020 13:00",
                " 01/08/2020 00:00 ",
            ]
            .map(String::from),
        );
        for _ in 0..2 {
            for s in &inputs {
                assert_eq!(cache.parse(s.as_bytes()), parse_date(s.as_bytes()), "{s:?}");
            }
        }
    }

    #[test]
    fn iso_dates_parse_and_other_formats_do_not() {
        assert_eq!(
            parse_iso_date("2020-03-07"),
            Some(days_from_civil(2020, 3, 7))
        );
        assert_eq!(parse_iso_date("03/07/2020"), None);
    }
}

//! Cleaning: turning the export's fields into [`Incident`]s, and the
//! [`CleaningReport`] that says what was kept, dropped and imputed.
//!
//! Rules, per field (columns not listed are not needed downstream and only
//! checked for binary garbage by the loader):
//!
//! | column | accepted | otherwise |
//! |---|---|---|
//! | `DR_NO` | digits, leading zeros allowed | row dropped: `invalid_dr_no` |
//! | `DATE OCC`, `Date Rptd` | every `DateFormat` | row dropped: `invalid_date_occurred` / `invalid_date_reported` (also an impossible date such as `02/30/2024` or time such as `25:00`); a report dated before the occurrence: `reported_before_occurred` |
//! | `TIME OCC` | `HHMM`, 1-4 digits (`615` = 06:15, `15` = 00:15) | empty: imputed with the median time of the file; malformed: row dropped, `invalid_time_occurred` |
//! | `AREA` | 1..=21, `05` or `5` | recovered from `AREA NAME` when that names an area (imputed), else row dropped: `invalid_area` |
//! | `Crm Cd` | 1..=999 | empty: taken from `Crm Cd 1` (imputed); else row dropped: `invalid_crime_code` |
//! | `Rpt Dist No` | 0..=9999, `0557` or `557` | 0 (unknown) |
//! | `Part 1-2` | 1 or 2 | 0 (unknown) |
//! | `Vict Age` | 1..=120 | `None`: 0 and negative ages mean unknown |
//! | `Vict Sex` | M, F, X, H | `None` (empty or anything else) |
//! | `Vict Descent` | one letter | `None` |
//! | `Premis Cd`, `Weapon Used Cd` | a number | `None`; an empty weapon means no weapon was recorded, which is information, not a gap, so it is never imputed |
//! | `LAT`, `LON` | inside the Los Angeles box | 0,0 (unknown place), empty or outside: imputed with the mean location of the row's reporting district computed from the file's other rows, or the area's centroid when the district has none |
//!
//! Every numeric code (`DR_NO`, `TIME OCC`, `AREA`, `Rpt Dist No`, `Part 1-2`,
//! `Crm Cd`, `Crm Cd 1`, `Vict Age`, `Premis Cd`, `Weapon Used Cd`) may also
//! be an integral float the way a spreadsheet writes numbers (`5.0`).
//!
//! Duplicate `DR_NO`s keep their first row in file order (`duplicate_dr_no`).
//! For every other reason the report keeps the first dropped row's line,
//! column and value ([`CleaningReport::first_dropped`]), so one bad value in a
//! large file is dropped and counted rather than refusing the file, and can
//! still be found.
//!
//! Values that are accepted but are not in the city's current export form
//! are counted as [`Repair`]s (over the rows kept): a re-saved spreadsheet
//! shows up there.
//! Victim age, sex and descent stay `None` rather than being imputed here:
//! filling them needs the training split's median or mode, which the feature
//! pipeline fits on the training window only.

use std::collections::BTreeMap;

use rayon::slice::ParallelSliceMut;
use serde::{Deserialize, Serialize};

use super::areas::{self, AREA_COUNT};
use super::categories::Category;
use super::record::{DayNumber, Incident};
use super::schema::{self, Column, DateFormat, NumberForm, COLUMN_COUNT};

/// Why a row was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum DropReason {
    /// The `DR_NO` was seen in an earlier row.
    DuplicateDrNo = 0,
    /// `DR_NO` empty or not a number.
    InvalidDrNo,
    /// `DATE OCC` empty or not a date.
    InvalidDateOccurred,
    /// `Date Rptd` empty or not a date.
    InvalidDateReported,
    /// `Date Rptd` earlier than `DATE OCC`.
    ReportedBeforeOccurred,
    /// `TIME OCC` not a time of day.
    InvalidTimeOccurred,
    /// `AREA` not 1..=21 and `AREA NAME` no area either.
    InvalidArea,
    /// `Crm Cd` (and `Crm Cd 1`) not a crime code.
    InvalidCrimeCode,
}

impl DropReason {
    /// All reasons in index order.
    pub const ALL: [DropReason; 8] = [
        DropReason::DuplicateDrNo,
        DropReason::InvalidDrNo,
        DropReason::InvalidDateOccurred,
        DropReason::InvalidDateReported,
        DropReason::ReportedBeforeOccurred,
        DropReason::InvalidTimeOccurred,
        DropReason::InvalidArea,
        DropReason::InvalidCrimeCode,
    ];

    /// The report key, e.g. `"duplicate_dr_no"`.
    pub fn key(self) -> &'static str {
        match self {
            DropReason::DuplicateDrNo => "duplicate_dr_no",
            DropReason::InvalidDrNo => "invalid_dr_no",
            DropReason::InvalidDateOccurred => "invalid_date_occurred",
            DropReason::InvalidDateReported => "invalid_date_reported",
            DropReason::ReportedBeforeOccurred => "reported_before_occurred",
            DropReason::InvalidTimeOccurred => "invalid_time_occurred",
            DropReason::InvalidArea => "invalid_area",
            DropReason::InvalidCrimeCode => "invalid_crime_code",
        }
    }
}

/// A form of the input that was accepted but is not the city's current
/// export form, or a part of the file that was set aside: what a file opened
/// and saved again in a spreadsheet typically has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Repair {
    /// The file started with a UTF-8 byte order mark, which was removed
    /// (counted once).
    BomStripped = 0,
    /// Rows (kept) with a date field not in the canonical form
    /// `MM/DD/YYYY hh:mm:ss AM`; the forms are in
    /// [`CleaningReport::date_formats`].
    DatesNonCanonical,
    /// Code fields (kept rows) with their leading zeros stripped, given back
    /// their value: `DR_NO` under 9 digits, `TIME OCC` or `Rpt Dist No` under
    /// 4, `AREA` under 2 (`5` for `05`).
    CodesZeroPadded,
    /// Numeric fields (kept rows) written as integral floats, `5.0` for `5`.
    CodesIntegralFloat,
    /// Rows (all rows read) without some trailing fields of columns the
    /// loader does not read (a spreadsheet leaves out trailing empty cells).
    ShortRows,
}

impl Repair {
    /// All repairs in index order.
    pub const ALL: [Repair; 5] = [
        Repair::BomStripped,
        Repair::DatesNonCanonical,
        Repair::CodesZeroPadded,
        Repair::CodesIntegralFloat,
        Repair::ShortRows,
    ];

    /// The report key, e.g. `"codes_zero_padded"`.
    pub fn key(self) -> &'static str {
        match self {
            Repair::BomStripped => "bom_stripped",
            Repair::DatesNonCanonical => "dates_non_canonical",
            Repair::CodesZeroPadded => "codes_zero_padded",
            Repair::CodesIntegralFloat => "codes_integral_float",
            Repair::ShortRows => "short_rows",
        }
    }
}

/// The first row dropped for a reason: where it is and what it held.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DroppedRow {
    /// The 1-based line the row starts on.
    pub line: u64,
    /// The header name of the column with the bad value, e.g. `"DATE OCC"`.
    pub column: String,
    /// The value, trimmed (at most 60 characters).
    pub value: String,
}

/// What cleaning did to one input. Maps are keyed by the export's column
/// names (`"LAT"`, `"Vict Age"`), by [`DropReason::key`]s, by [`Repair::key`]s,
/// by area code and by [`Category::name`]; zero counts are left out.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CleaningReport {
    /// The file or stream name.
    pub source: String,
    /// Data rows read (the header not counted).
    pub rows_read: u64,
    /// Rows kept as incidents.
    pub rows_kept: u64,
    /// Earliest `DATE OCC` kept (ISO date in JSON).
    #[serde(with = "iso_day_opt")]
    pub date_min: Option<DayNumber>,
    /// Latest `DATE OCC` kept (ISO date in JSON).
    #[serde(with = "iso_day_opt")]
    pub date_max: Option<DayNumber>,
    /// Rows kept per area code.
    pub areas: BTreeMap<u8, u64>,
    /// Rows kept per crime category.
    pub categories: BTreeMap<String, u64>,
    /// Rows dropped, by reason.
    pub dropped: BTreeMap<String, u64>,
    /// Values imputed, by column.
    pub imputed: BTreeMap<String, u64>,
    /// Of the imputed coordinates, rows whose reporting district had no known
    /// location, so the area's centroid was used.
    pub coords_from_area_centroid: u64,
    /// Empty fields, by column (all rows read).
    pub empty: BTreeMap<String, u64>,
    /// Non-empty values that mean "unknown" or are invalid and were set to
    /// unknown, by column (`Vict Age` 0 or negative, `Vict Sex` X, `LAT` 0...),
    /// over all rows read.
    pub unknown: BTreeMap<String, u64>,
    /// Date fields (`Date Rptd` and `DATE OCC`) by layout.
    pub date_formats: BTreeMap<String, u64>,
    /// Rows whose two date fields use different layouts.
    pub mixed_date_format_rows: u64,
    /// Accepted forms that are not the city's export form, by
    /// [`Repair::key`].
    #[serde(default)]
    pub repairs: BTreeMap<String, u64>,
    /// Columns of the file that were not read, as `column 29 "month"`,
    /// `column 30 (blank name)` or, for an export column cleaning does not
    /// need that appears more than once, `columns 11 and 31 "Mocodes"
    /// (duplicated)`.
    #[serde(default)]
    pub columns_ignored: Vec<String>,
    /// Export columns cleaning does not need that the file lacks (their
    /// empty fields are then not counted).
    #[serde(default)]
    pub columns_absent: Vec<String>,
    /// For each [`DropReason`] but `duplicate_dr_no`, the first row dropped
    /// for it.
    #[serde(default)]
    pub first_dropped: BTreeMap<String, DroppedRow>,
}

impl CleaningReport {
    /// Rows dropped for `reason`.
    pub fn dropped_for(&self, reason: DropReason) -> u64 {
        self.dropped.get(reason.key()).copied().unwrap_or(0)
    }

    /// Values imputed in `column`.
    pub fn imputed_in(&self, column: Column) -> u64 {
        self.imputed.get(column.name()).copied().unwrap_or(0)
    }

    /// Empty fields in `column`.
    pub fn empty_in(&self, column: Column) -> u64 {
        self.empty.get(column.name()).copied().unwrap_or(0)
    }

    /// Unknown values in `column`.
    pub fn unknown_in(&self, column: Column) -> u64 {
        self.unknown.get(column.name()).copied().unwrap_or(0)
    }

    /// Total rows dropped.
    pub fn rows_dropped(&self) -> u64 {
        self.dropped.values().sum()
    }

    /// How often `repair` was made.
    pub fn repaired(&self, repair: Repair) -> u64 {
        self.repairs.get(repair.key()).copied().unwrap_or(0)
    }
}

/// Serde for `Option<DayNumber>` as an ISO date string or null.
mod iso_day_opt {
    use super::DayNumber;
    use crate::schema;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<DayNumber>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(d) => s.serialize_str(&crate::calendar::iso_date(*d)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DayNumber>, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        s.map(|s| {
            schema::parse_iso_date(&s)
                .ok_or_else(|| serde::de::Error::custom(format!("not an ISO date: {s:?}")))
        })
        .transpose()
    }
}

/// Latitude/longitude box that contains the City of Los Angeles with a
/// margin; coordinates outside it are treated as unknown.
pub(crate) const LAT_RANGE: (f32, f32) = (33.3, 34.9);
/// See [`LAT_RANGE`].
pub(crate) const LON_RANGE: (f32, f32) = (-119.0, -117.6);

/// `minute_of_day` of a row whose `TIME OCC` was empty, until imputed.
pub(crate) const MISSING_MINUTE: u16 = u16::MAX;

/// Counters of one chunk of rows; merged by addition.
#[derive(Clone, Debug)]
pub(crate) struct Tally {
    pub rows_read: u64,
    pub dropped: [u64; DropReason::ALL.len()],
    pub empty: [u64; COLUMN_COUNT],
    pub unknown: [u64; COLUMN_COUNT],
    pub imputed: [u64; COLUMN_COUNT],
    pub date_formats: [u64; DateFormat::ALL.len()],
    pub mixed_date_format_rows: u64,
    pub repairs: [u64; Repair::ALL.len()],
    /// The first (lowest line) row dropped per reason.
    pub first_dropped: [Option<DroppedRow>; DropReason::ALL.len()],
}

impl Default for Tally {
    fn default() -> Self {
        Tally {
            rows_read: 0,
            dropped: [0; DropReason::ALL.len()],
            empty: [0; COLUMN_COUNT],
            unknown: [0; COLUMN_COUNT],
            imputed: [0; COLUMN_COUNT],
            date_formats: [0; DateFormat::ALL.len()],
            mixed_date_format_rows: 0,
            repairs: [0; Repair::ALL.len()],
            first_dropped: Default::default(),
        }
    }
}

impl Tally {
    /// Adds `other`'s counts to these.
    pub fn merge(&mut self, other: &Tally) {
        self.rows_read += other.rows_read;
        self.mixed_date_format_rows += other.mixed_date_format_rows;
        for (a, b) in self.repairs.iter_mut().zip(&other.repairs) {
            *a += b;
        }
        for (a, b) in self.first_dropped.iter_mut().zip(&other.first_dropped) {
            if let Some(b) = b {
                if a.as_ref().is_none_or(|a| b.line < a.line) {
                    *a = Some(b.clone());
                }
            }
        }
        for (a, b) in self.dropped.iter_mut().zip(&other.dropped) {
            *a += b;
        }
        for (a, b) in self.empty.iter_mut().zip(&other.empty) {
            *a += b;
        }
        for (a, b) in self.unknown.iter_mut().zip(&other.unknown) {
            *a += b;
        }
        for (a, b) in self.imputed.iter_mut().zip(&other.imputed) {
            *a += b;
        }
        for (a, b) in self.date_formats.iter_mut().zip(&other.date_formats) {
            *a += b;
        }
    }

    /// Counts a dropped row; the first one per reason is kept with its
    /// `line`, the offending `column` and its `value`.
    #[cold]
    fn drop_row(
        &mut self,
        reason: DropReason,
        line: u64,
        column: Column,
        value: &[u8],
    ) -> Option<Incident> {
        self.dropped[reason as usize] += 1;
        let first = &mut self.first_dropped[reason as usize];
        if first.is_none() {
            let text = String::from_utf8_lossy(schema::trim(value));
            let value = match text.char_indices().nth(60) {
                Some((end, _)) => format!("{}...", &text[..end]),
                None => text.into_owned(),
            };
            *first = Some(DroppedRow {
                line,
                column: column.name().to_string(),
                value,
            });
        }
        None
    }

    fn unknown(&mut self, c: Column) {
        self.unknown[c.index()] += 1;
    }
}

/// Whether `b` is empty after trimming spaces.
fn blank(b: &[u8]) -> bool {
    b.iter().all(|c| c.is_ascii_whitespace())
}

/// The number forms of one row's fields, added to the tally if it is kept.
#[derive(Default)]
struct RowForms {
    zeros_stripped: u8,
    integral_floats: u8,
}

impl RowForms {
    #[inline(always)]
    fn note(&mut self, form: NumberForm) {
        match form {
            NumberForm::Canonical => {}
            NumberForm::ZerosStripped => self.zeros_stripped += 1,
            NumberForm::IntegralFloat => self.integral_floats += 1,
        }
    }
}

/// A code of `column`: [`schema::parse_code`] with the column's export width.
#[inline(always)]
fn code(b: &[u8], column: Column) -> Option<(u64, NumberForm)> {
    schema::parse_code(b, column.export_width())
}

/// Parses one row's fields (indexed by [`Column`]) into a raw incident:
/// coordinates not yet imputed (NaN when unknown) and `minute_of_day` =
/// [`MISSING_MINUTE`] when `TIME OCC` was empty. Returns `None` for a dropped
/// row (counted in `tally`, with `line`, the row's first line, when it is the
/// first for its reason).
pub(crate) fn parse_row(
    f: &[&[u8]; COLUMN_COUNT],
    line: u64,
    tally: &mut Tally,
    dates: &mut schema::DateCache,
) -> Option<Incident> {
    use Column as C;
    tally.rows_read += 1;
    for (i, field) in f.iter().enumerate() {
        // the common case (a non-space first byte) decides on one byte
        if field.first().is_none_or(|b| b.is_ascii_whitespace()) && blank(field) {
            tally.empty[i] += 1;
        }
    }
    let field = |c: Column| f[c.index()];
    let mut forms = RowForms::default();

    let Some((dr_no, form)) = code(field(C::DrNo), C::DrNo) else {
        return tally.drop_row(DropReason::InvalidDrNo, line, C::DrNo, field(C::DrNo));
    };
    forms.note(form);
    let Some((date_occurred, occ_fmt)) = dates.parse(field(C::DateOcc)) else {
        return tally.drop_row(
            DropReason::InvalidDateOccurred,
            line,
            C::DateOcc,
            field(C::DateOcc),
        );
    };
    let Some((date_reported, rpt_fmt)) = dates.parse(field(C::DateRptd)) else {
        return tally.drop_row(
            DropReason::InvalidDateReported,
            line,
            C::DateRptd,
            field(C::DateRptd),
        );
    };
    if date_reported < date_occurred {
        return tally.drop_row(
            DropReason::ReportedBeforeOccurred,
            line,
            C::DateRptd,
            field(C::DateRptd),
        );
    }
    let minute_of_day = if blank(field(C::TimeOcc)) {
        tally.imputed[C::TimeOcc.index()] += 1;
        MISSING_MINUTE
    } else {
        match schema::parse_time_occ_form(field(C::TimeOcc)) {
            Some((m, form)) => {
                forms.note(form);
                m
            }
            None => {
                return tally.drop_row(
                    DropReason::InvalidTimeOccurred,
                    line,
                    C::TimeOcc,
                    field(C::TimeOcc),
                )
            }
        }
    };
    let area = match code(field(C::Area), C::Area) {
        Some((a @ 1..=21, form)) => {
            forms.note(form);
            a as u8
        }
        _ => {
            let by_name = std::str::from_utf8(field(C::AreaName))
                .ok()
                .and_then(areas::area_by_name);
            match by_name {
                Some(info) => {
                    tally.imputed[C::Area.index()] += 1;
                    info.code
                }
                None => {
                    return tally.drop_row(DropReason::InvalidArea, line, C::Area, field(C::Area))
                }
            }
        }
    };
    let crime_code = match code(field(C::CrmCd), C::CrmCd) {
        Some((c @ 1..=999, form)) => {
            forms.note(form);
            c as u16
        }
        None if blank(field(C::CrmCd)) => match code(field(C::CrmCd1), C::CrmCd1) {
            Some((c @ 1..=999, form)) => {
                forms.note(form);
                tally.imputed[C::CrmCd.index()] += 1;
                c as u16
            }
            _ => {
                return tally.drop_row(
                    DropReason::InvalidCrimeCode,
                    line,
                    C::CrmCd1,
                    field(C::CrmCd1),
                )
            }
        },
        _ => {
            return tally.drop_row(
                DropReason::InvalidCrimeCode,
                line,
                C::CrmCd,
                field(C::CrmCd),
            )
        }
    };

    // the row is kept from here on
    let fmt_occ = occ_fmt as usize;
    tally.date_formats[fmt_occ] += 1;
    tally.date_formats[rpt_fmt as usize] += 1;
    if occ_fmt != rpt_fmt {
        tally.mixed_date_format_rows += 1;
    }
    if !(occ_fmt.is_canonical() && rpt_fmt.is_canonical()) {
        tally.repairs[Repair::DatesNonCanonical as usize] += 1;
    }

    let reporting_district = match code(field(C::RptDistNo), C::RptDistNo) {
        Some((rd @ 0..=9999, form)) => {
            forms.note(form);
            rd as u16
        }
        _ => {
            if !blank(field(C::RptDistNo)) {
                tally.unknown(C::RptDistNo);
            }
            0
        }
    };
    let part = match schema::trim(field(C::Part12)) {
        b"1" => 1,
        b"2" => 2,
        b"" => 0,
        other => match code(other, C::Part12) {
            Some((p @ 1..=2, form)) => {
                forms.note(form);
                p as u8
            }
            _ => {
                tally.unknown(C::Part12);
                0
            }
        },
    };
    let victim_age = match schema::parse_int_form(field(C::VictAge)) {
        Some((a @ 1..=120, form)) => {
            forms.note(form);
            Some(a as u8)
        }
        None if blank(field(C::VictAge)) => None,
        _ => {
            tally.unknown(C::VictAge);
            None
        }
    };
    let victim_sex = match schema::trim(field(C::VictSex)) {
        [] => None,
        [s @ (b'M' | b'F' | b'H')] => Some(*s),
        [b'X'] => {
            tally.unknown(C::VictSex);
            Some(b'X')
        }
        _ => {
            tally.unknown(C::VictSex);
            None
        }
    };
    let victim_descent = match schema::trim(field(C::VictDescent)) {
        [] => None,
        [b'X'] => {
            tally.unknown(C::VictDescent);
            Some(b'X')
        }
        [d] if d.is_ascii_uppercase() => Some(*d),
        _ => {
            tally.unknown(C::VictDescent);
            None
        }
    };
    let premise_code = optional_code(field(C::PremisCd), C::PremisCd, tally, &mut forms);
    let weapon_code = optional_code(field(C::WeaponUsedCd), C::WeaponUsedCd, tally, &mut forms);
    let (lat, lon) = match (
        schema::parse_decimal(field(C::Lat)),
        schema::parse_decimal(field(C::Lon)),
    ) {
        (Some(lat), Some(lon)) if in_la(lat, lon) => (lat, lon),
        (lat, lon) => {
            if lat.is_some() || !blank(field(C::Lat)) {
                tally.unknown(C::Lat);
            }
            if lon.is_some() || !blank(field(C::Lon)) {
                tally.unknown(C::Lon);
            }
            (f32::NAN, f32::NAN)
        }
    };
    tally.repairs[Repair::CodesZeroPadded as usize] += u64::from(forms.zeros_stripped);
    tally.repairs[Repair::CodesIntegralFloat as usize] += u64::from(forms.integral_floats);
    Some(Incident {
        dr_no,
        date_reported,
        date_occurred,
        minute_of_day,
        area,
        reporting_district,
        part,
        crime_code,
        category: Category::from_crime_code(crime_code),
        victim_age,
        victim_sex,
        victim_descent,
        premise_code,
        weapon_code,
        lat,
        lon,
    })
}

fn optional_code(b: &[u8], c: Column, tally: &mut Tally, forms: &mut RowForms) -> Option<u16> {
    match code(b, c) {
        Some((v @ 0..=65535, form)) => {
            forms.note(form);
            Some(v as u16)
        }
        _ => {
            if !blank(b) {
                tally.unknown(c);
            }
            None
        }
    }
}

/// Whether a coordinate pair lies in the Los Angeles box.
pub(crate) fn in_la(lat: f32, lon: f32) -> bool {
    (LAT_RANGE.0..=LAT_RANGE.1).contains(&lat) && (LON_RANGE.0..=LON_RANGE.1).contains(&lon)
}

/// A set of `u64`s with open addressing (the loader's `DR_NO` check: one
/// insert per row, no allocation per insert).
struct U64Set {
    /// `EMPTY` or a value; the capacity is a power of two.
    slots: Vec<u64>,
    /// `u64::MAX` itself, which cannot be a slot marker, is tracked aside.
    has_max: bool,
    /// Values in `slots`.
    len: usize,
    shift: u32,
}

impl U64Set {
    const EMPTY: u64 = u64::MAX;

    fn with_capacity(n: usize) -> Self {
        let cap = (n.max(8) * 2).next_power_of_two();
        U64Set {
            slots: vec![Self::EMPTY; cap],
            has_max: false,
            len: 0,
            shift: 64 - cap.trailing_zeros(),
        }
    }

    /// Doubles the table (kept at most 3/4 full).
    fn grow(&mut self) {
        let old = std::mem::replace(self, U64Set::with_capacity(self.slots.len()));
        self.has_max = old.has_max;
        for v in old.slots.into_iter().filter(|&v| v != Self::EMPTY) {
            self.insert(v);
        }
    }

    /// Inserts `v`; whether it was new.
    fn insert(&mut self, v: u64) -> bool {
        if v == Self::EMPTY {
            return !std::mem::replace(&mut self.has_max, true);
        }
        if (self.len + 1) * 4 > self.slots.len() * 3 {
            self.grow();
        }
        let mask = self.slots.len() - 1;
        // Fibonacci hashing: the top bits of a multiplication
        let mut i = (v.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> self.shift) as usize;
        loop {
            let slot = &mut self.slots[i];
            if *slot == Self::EMPTY {
                *slot = v;
                self.len += 1;
                return true;
            }
            if *slot == v {
                return false;
            }
            i = (i + 1) & mask;
        }
    }
}

/// Finishes cleaning the raw incidents of one input (in file order):
/// removes duplicate `DR_NO`s (first kept), imputes coordinates and missing
/// times, sorts by `(date_occurred, minute_of_day, dr_no)` and fills the
/// report.
pub(crate) fn finish(
    mut rows: Vec<Incident>,
    mut tally: Tally,
    source: &str,
) -> (Vec<Incident>, CleaningReport) {
    // duplicates: the first row of a DR_NO in file order is kept
    let mut seen = U64Set::with_capacity(rows.len());
    let before = rows.len();
    rows.retain(|r| seen.insert(r.dr_no));
    drop(seen);
    tally.dropped[DropReason::DuplicateDrNo as usize] += (before - rows.len()) as u64;

    // one pass: known locations per reporting district, known times, counts
    let mut sums = vec![(0.0f64, 0.0f64, 0u32); 10_000];
    let mut minutes = [0u64; 1440];
    let mut unknown_coords = 0u64;
    let mut missing_minutes = 0u64;
    let mut area_counts = [0u64; AREA_COUNT + 1];
    let mut cat_counts = [0u64; Category::COUNT];
    for r in &rows {
        if r.lat.is_nan() {
            unknown_coords += 1;
        } else if let Some(s) = sums.get_mut(usize::from(r.reporting_district)) {
            s.0 += f64::from(r.lat);
            s.1 += f64::from(r.lon);
            s.2 += 1;
        }
        match minutes.get_mut(usize::from(r.minute_of_day)) {
            Some(m) => *m += 1,
            None => missing_minutes += 1,
        }
        if let Some(c) = area_counts.get_mut(usize::from(r.area)) {
            *c += 1;
        }
        cat_counts[r.category.index()] += 1;
    }
    let median_minute = {
        let total: u64 = minutes.iter().sum();
        let mut acc = 0;
        minutes
            .iter()
            .position(|&m| {
                acc += m;
                acc * 2 >= total
            })
            .unwrap_or(720) as u16
    };
    let mut from_area = 0u64;
    if unknown_coords > 0 || missing_minutes > 0 {
        for r in rows.iter_mut() {
            if r.lat.is_nan() {
                match sums.get(usize::from(r.reporting_district)) {
                    Some(&(la, lo, n)) if n > 0 && r.reporting_district != 0 => {
                        r.lat = (la / f64::from(n)) as f32;
                        r.lon = (lo / f64::from(n)) as f32;
                    }
                    _ => {
                        from_area += 1;
                        let (la, lo) = areas::area(r.area).map_or((0.0, 0.0), |a| a.centroid);
                        r.lat = la;
                        r.lon = lo;
                    }
                }
            }
            if r.minute_of_day == MISSING_MINUTE {
                r.minute_of_day = median_minute;
            }
        }
    }
    tally.imputed[Column::Lat.index()] += unknown_coords;
    tally.imputed[Column::Lon.index()] += unknown_coords;

    rows.par_sort_unstable_by_key(|r| (r.date_occurred, r.minute_of_day, r.dr_no));

    let by_column = |counts: &[u64; COLUMN_COUNT]| -> BTreeMap<String, u64> {
        Column::ALL
            .iter()
            .zip(counts)
            .filter(|(_, n)| **n > 0)
            .map(|(c, n)| (c.name().to_string(), *n))
            .collect()
    };
    let report = CleaningReport {
        source: source.to_string(),
        rows_read: tally.rows_read,
        rows_kept: rows.len() as u64,
        date_min: rows.first().map(|r| r.date_occurred),
        date_max: rows.last().map(|r| r.date_occurred),
        areas: (1..=AREA_COUNT as u8)
            .filter(|&a| area_counts[usize::from(a)] > 0)
            .map(|a| (a, area_counts[usize::from(a)]))
            .collect(),
        categories: Category::ALL
            .iter()
            .filter(|c| cat_counts[c.index()] > 0)
            .map(|c| (c.name().to_string(), cat_counts[c.index()]))
            .collect(),
        dropped: DropReason::ALL
            .iter()
            .filter(|r| tally.dropped[**r as usize] > 0)
            .map(|r| (r.key().to_string(), tally.dropped[*r as usize]))
            .collect(),
        imputed: by_column(&tally.imputed),
        coords_from_area_centroid: from_area,
        empty: by_column(&tally.empty),
        unknown: by_column(&tally.unknown),
        date_formats: DateFormat::ALL
            .iter()
            .filter(|f| tally.date_formats[**f as usize] > 0)
            .map(|f| (f.pattern().to_string(), tally.date_formats[*f as usize]))
            .collect(),
        mixed_date_format_rows: tally.mixed_date_format_rows,
        repairs: Repair::ALL
            .iter()
            .filter(|r| tally.repairs[**r as usize] > 0)
            .map(|r| (r.key().to_string(), tally.repairs[*r as usize]))
            .collect(),
        columns_ignored: Vec::new(),
        columns_absent: Vec::new(),
        first_dropped: DropReason::ALL
            .iter()
            .zip(tally.first_dropped)
            .filter_map(|(r, first)| Some((r.key().to_string(), first?)))
            .collect(),
    };
    (rows, report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(line: &str) -> Vec<String> {
        let mut rdr = csv::ReaderBuilder::new()
            .has_headers(false)
            .from_reader(line.as_bytes());
        rdr.records()
            .next()
            .unwrap()
            .unwrap()
            .iter()
            .map(str::to_string)
            .collect()
    }

    fn parse(line: &str, tally: &mut Tally) -> Option<Incident> {
        let f = fields(line);
        let refs: [&[u8]; COLUMN_COUNT] = std::array::from_fn(|i| f[i].as_bytes());
        parse_row(&refs, 2, tally, &mut schema::DateCache::default())
    }

    const ROW: &str = "010304468,01/08/2020 00:00,01/08/2020 12:00:00 AM,2230,03,Southwest,0377,2,624,BATTERY - SIMPLE ASSAULT,0444 0913,36,F,B,501,SINGLE FAMILY DWELLING,400,\"STRONG-ARM (HANDS, FIST, FEET OR BODILY FORCE)\",AO,Adult Other,624,,,,1100 W  39TH                         PL,,34.0141,-118.2978";

    #[test]
    fn parses_a_real_row_with_mixed_date_formats() {
        let mut t = Tally::default();
        let r = parse(ROW, &mut t).unwrap();
        assert_eq!(r.dr_no, 10_304_468);
        assert_eq!(
            r.date_occurred,
            crate::calendar::days_from_civil(2020, 1, 8)
        );
        assert_eq!(r.date_reported, r.date_occurred);
        assert_eq!(
            (r.minute_of_day, r.area, r.reporting_district, r.part),
            (22 * 60 + 30, 3, 377, 2)
        );
        assert_eq!((r.crime_code, r.category), (624, Category::Violent));
        assert_eq!(
            (r.victim_age, r.victim_sex, r.victim_descent),
            (Some(36), Some(b'F'), Some(b'B'))
        );
        assert_eq!((r.premise_code, r.weapon_code), (Some(501), Some(400)));
        assert_eq!((r.lat, r.lon), (34.0141, -118.2978));
        assert_eq!(t.mixed_date_format_rows, 1);
        assert_eq!(t.date_formats[DateFormat::Us24h as usize], 1);
        assert_eq!(t.date_formats[DateFormat::UsAmPm as usize], 1);
        assert_eq!(t.empty[Column::CrmCd2.index()], 1);
        assert_eq!(t.empty[Column::CrossStreet.index()], 1);
    }

    fn with_all(changes: &[(Column, &str)]) -> String {
        let mut f = fields(ROW);
        for (col, value) in changes {
            f[col.index()] = value.to_string();
        }
        let mut w = csv::Writer::from_writer(Vec::new());
        w.write_record(&f).unwrap();
        String::from_utf8(w.into_inner().unwrap())
            .unwrap()
            .trim_end()
            .to_string()
    }

    fn with(col: Column, value: &str) -> String {
        with_all(&[(col, value)])
    }

    #[test]
    fn unknown_values_become_none_and_are_counted() {
        let mut t = Tally::default();
        assert_eq!(
            parse(&with(Column::VictAge, "0"), &mut t)
                .unwrap()
                .victim_age,
            None
        );
        assert_eq!(
            parse(&with(Column::VictAge, "-1"), &mut t)
                .unwrap()
                .victim_age,
            None
        );
        assert_eq!(
            parse(&with(Column::VictAge, ""), &mut t)
                .unwrap()
                .victim_age,
            None
        );
        assert_eq!(t.unknown[Column::VictAge.index()], 2);
        assert_eq!(t.empty[Column::VictAge.index()], 1);
        assert_eq!(
            parse(&with(Column::VictSex, "X"), &mut t)
                .unwrap()
                .victim_sex,
            Some(b'X')
        );
        assert_eq!(
            parse(&with(Column::VictSex, "H"), &mut t)
                .unwrap()
                .victim_sex,
            Some(b'H')
        );
        assert_eq!(
            parse(&with(Column::VictSex, ""), &mut t)
                .unwrap()
                .victim_sex,
            None
        );
        assert_eq!(
            parse(&with(Column::VictSex, "?"), &mut t)
                .unwrap()
                .victim_sex,
            None
        );
        assert_eq!(t.unknown[Column::VictSex.index()], 2);
        assert_eq!(
            parse(&with(Column::VictDescent, "-"), &mut t)
                .unwrap()
                .victim_descent,
            None
        );
        assert_eq!(
            parse(&with(Column::WeaponUsedCd, ""), &mut t)
                .unwrap()
                .weapon_code,
            None
        );
        assert_eq!(
            t.unknown[Column::WeaponUsedCd.index()],
            0,
            "no weapon is not unknown"
        );
        let r = parse(&with(Column::Lat, "0"), &mut t).unwrap();
        assert!(r.lat.is_nan() && r.lon.is_nan());
        assert_eq!(parse(&with(Column::Part12, "3"), &mut t).unwrap().part, 0);
    }

    #[test]
    fn short_codes_and_padding() {
        let mut t = Tally::default();
        assert_eq!(parse(&with(Column::Area, "3"), &mut t).unwrap().area, 3);
        assert_eq!(
            parse(&with(Column::TimeOcc, "5"), &mut t)
                .unwrap()
                .minute_of_day,
            5
        );
        assert_eq!(
            parse(&with(Column::TimeOcc, "45"), &mut t)
                .unwrap()
                .minute_of_day,
            45
        );
        assert_eq!(
            parse(&with(Column::TimeOcc, "130"), &mut t)
                .unwrap()
                .minute_of_day,
            90
        );
        assert_eq!(
            parse(&with(Column::DrNo, " 0012 "), &mut t).unwrap().dr_no,
            12
        );
        assert_eq!(
            parse(&with(Column::TimeOcc, ""), &mut t)
                .unwrap()
                .minute_of_day,
            MISSING_MINUTE
        );
        assert_eq!(t.imputed[Column::TimeOcc.index()], 1);
    }

    #[test]
    fn unusable_rows_are_dropped_by_reason() {
        let mut t = Tally::default();
        let cases = [
            (Column::DrNo, "", DropReason::InvalidDrNo),
            (Column::DrNo, "12A", DropReason::InvalidDrNo),
            (
                Column::DateOcc,
                "2020/01/08",
                DropReason::InvalidDateOccurred,
            ),
            (
                Column::DateOcc,
                "02/30/2020 00:00",
                DropReason::InvalidDateOccurred,
            ),
            (Column::DateRptd, "", DropReason::InvalidDateReported),
            (
                Column::DateRptd,
                "01/07/2020 00:00",
                DropReason::ReportedBeforeOccurred,
            ),
            (Column::TimeOcc, "2460", DropReason::InvalidTimeOccurred),
            (Column::Area, "22", DropReason::InvalidArea),
            (Column::CrmCd, "x", DropReason::InvalidCrimeCode),
        ];
        for (col, value, reason) in cases {
            // for the area, a name that would otherwise rescue it is removed too
            let row = with_all(&[(col, value), (Column::AreaName, "Gotham")]);
            assert!(
                parse(&row, &mut t).is_none(),
                "{col}={value:?} should be dropped"
            );
            assert!(t.dropped[reason as usize] >= 1, "{reason:?}");
        }
        assert_eq!(t.dropped.iter().sum::<u64>(), cases.len() as u64);
        assert_eq!(
            t.date_formats.iter().sum::<u64>(),
            0,
            "dropped rows are not tallied"
        );
    }

    #[test]
    fn area_recovered_from_name_and_crime_code_from_crm_cd_1() {
        let mut t = Tally::default();
        assert_eq!(parse(&with(Column::Area, ""), &mut t).unwrap().area, 3);
        assert_eq!(t.imputed[Column::Area.index()], 1);
        let r = parse(&with(Column::CrmCd, ""), &mut t).unwrap();
        assert_eq!((r.crime_code, t.imputed[Column::CrmCd.index()]), (624, 1));
    }

    fn incident(dr_no: u64, day: DayNumber, rd: u16, lat: f32, lon: f32) -> Incident {
        Incident {
            dr_no,
            date_reported: day,
            date_occurred: day,
            minute_of_day: 60,
            area: (rd / 100) as u8,
            reporting_district: rd,
            part: 1,
            crime_code: 510,
            category: Category::Vehicle,
            victim_age: None,
            victim_sex: None,
            victim_descent: None,
            premise_code: Some(101),
            weapon_code: None,
            lat,
            lon,
        }
    }

    #[test]
    fn u64_set_inserts_once() {
        let mut s = U64Set::with_capacity(3);
        for v in [5, 0, u64::MAX, 5 + (1 << 40), 7] {
            assert!(s.insert(v));
        }
        for v in [5, 0, u64::MAX, 5 + (1 << 40), 7] {
            assert!(!s.insert(v));
        }
        let mut big = U64Set::with_capacity(1000);
        assert_eq!(
            (0..5000u64)
                .filter(|v| big.insert(v * 1_000_003 % 2000))
                .count(),
            2000
        );
    }

    #[test]
    fn finish_dedups_imputes_and_sorts() {
        let rows = vec![
            incident(5, 10, 377, 34.0, -118.3),
            incident(3, 9, 377, 34.2, -118.1),
            incident(5, 8, 377, 33.0, -117.0), // duplicate of the first: dropped
            incident(7, 9, 377, f32::NAN, f32::NAN),
            incident(8, 9, 1201, f32::NAN, f32::NAN), // district without known rows
        ];
        let tally = Tally {
            rows_read: 5,
            ..Tally::default()
        };
        let (out, report) = finish(rows, tally, "t");
        assert_eq!(
            out.iter().map(|r| r.dr_no).collect::<Vec<_>>(),
            vec![3, 7, 8, 5]
        );
        assert_eq!(report.dropped_for(DropReason::DuplicateDrNo), 1);
        assert!((out[1].lat - 34.1).abs() < 1e-5 && (out[1].lon + 118.2).abs() < 1e-5);
        assert_eq!((out[2].lat, out[2].lon), areas::area(12).unwrap().centroid);
        assert_eq!(report.imputed_in(Column::Lat), 2);
        assert_eq!(report.coords_from_area_centroid, 1);
        assert_eq!((report.rows_read, report.rows_kept), (5, 4));
        assert_eq!(report.date_min, Some(9));
        assert_eq!(report.date_max, Some(10));
        assert_eq!(report.areas.get(&3), Some(&3));
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["date_min"], "1970-01-10");
        assert_eq!(json["areas"]["3"], 3);
        let back: CleaningReport = serde_json::from_value(json).unwrap();
        assert_eq!(back, report);
    }
}

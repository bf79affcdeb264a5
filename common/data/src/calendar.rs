//! The calendar, written once: day numbers (days since 1970-01-01, the
//! proleptic Gregorian calendar, [`DayNumber`]) to and from civil dates,
//! weekdays (0 = Monday) and days of the year, after Howard Hinnant's
//! `days_from_civil` algorithms. The loader, the features, the synthetic
//! generator, the baselines and the binaries all use these.

use super::record::DayNumber;

/// Whether `y` is a leap year (proleptic Gregorian).
pub(crate) fn is_leap_year(y: i32) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

/// Days in month `m` (1..=12) of year `y`; 0 for an invalid month.
pub(crate) fn days_in_month(y: i32, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap_year(y) => 29,
        2 => 28,
        _ => 0,
    }
}

/// The day number of a valid civil date in years 1900..=2199, or `None`.
pub(crate) fn day_number(y: i32, m: u32, d: u32) -> Option<DayNumber> {
    if !(1900..=2199).contains(&y) || d == 0 || d > days_in_month(y, m) {
        return None;
    }
    Some(days_from_civil(y, m, d))
}

/// Days since 1970-01-01 of the proleptic Gregorian date `y-m-d` (no
/// validation; H. Hinnant's algorithm).
pub(crate) fn days_from_civil(y: i32, m: u32, d: u32) -> DayNumber {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400) as u32; // [0, 399]
    let mp = (m + 9) % 12; // March = 0
    let doy = (153 * mp + 2) / 5 + d - 1; // [0, 365]
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy; // [0, 146096]
    era * 146_097 + doe as i32 - 719_468
}

/// The civil date `(year, month, day)` of a day number.
pub fn civil_from_days(z: DayNumber) -> (i32, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097) as u32;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe as i32 + era * 400 + i32::from(m <= 2);
    (y, m, d)
}

/// Day of the week, 0 = Monday .. 6 = Sunday (1970-01-01 was a Thursday).
pub fn weekday(day: DayNumber) -> u32 {
    (day + 3).rem_euclid(7) as u32
}

/// Day of the year, 1..=366.
pub(crate) fn day_of_year(day: DayNumber) -> u32 {
    let (y, _, _) = civil_from_days(day);
    (day - days_from_civil(y, 1, 1) + 1) as u32
}

/// The day as an ISO date, `YYYY-MM-DD`.
pub fn iso_date(day: DayNumber) -> String {
    let (y, m, d) = civil_from_days(day);
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_known_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(weekday(0), 3, "1970-01-01 was a Thursday");
        assert_eq!(weekday(4), 0, "1970-01-05 was a Monday");
        let d = days_from_civil(2024, 2, 29);
        assert_eq!(civil_from_days(d), (2024, 2, 29));
        assert_eq!(weekday(d), 3, "2024-02-29 was a Thursday");
        assert_eq!(day_of_year(d), 60);
        assert_eq!(day_of_year(days_from_civil(2023, 1, 1)), 1);
        assert_eq!(day_of_year(days_from_civil(2023, 12, 31)), 365);
        assert_eq!(day_of_year(days_from_civil(2024, 12, 31)), 366);
        assert_eq!(iso_date(days_from_civil(2020, 3, 7)), "2020-03-07");
        for z in -30_000..80_000 {
            let (y, m, dd) = civil_from_days(z);
            assert_eq!(days_from_civil(y, m, dd), z);
        }
        assert_eq!(day_number(2023, 2, 29), None);
        assert_eq!(day_number(2024, 2, 29), Some(d));
    }
}

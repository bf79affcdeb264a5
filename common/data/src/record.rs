//! A cleaned incident: one row of the LAPD export after parsing, validation and
//! imputation. Everything downstream (features, tasks, partitions) reads these.

use serde::{Deserialize, Serialize};

use super::categories::Category;

/// Days since 1970-01-01 (a civil date without a time zone).
pub type DayNumber = i32;

/// One cleaned incident.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    /// The report number (DR_NO), leading zeros dropped.
    pub dr_no: u64,
    /// Date reported (`Date Rptd`), days since 1970-01-01.
    pub date_reported: DayNumber,
    /// Date the crime occurred (`DATE OCC`), days since 1970-01-01.
    pub date_occurred: DayNumber,
    /// Minutes after midnight the crime occurred (`TIME OCC`), 0..1440.
    pub minute_of_day: u16,
    /// LAPD area code, 1..=21.
    pub area: u8,
    /// Reporting district (`Rpt Dist No`), e.g. 557.
    pub reporting_district: u16,
    /// Part 1 or 2 crime.
    pub part: u8,
    /// The crime code (`Crm Cd`).
    pub crime_code: u16,
    /// The crime category the code maps to.
    pub category: Category,
    /// Victim age in years; `None` when unknown (0 or negative in the export).
    pub victim_age: Option<u8>,
    /// Victim sex code (`M`, `F`, `X`, `H`) or `None` when empty.
    pub victim_sex: Option<u8>,
    /// Victim descent code letter, or `None` when empty.
    pub victim_descent: Option<u8>,
    /// Premise code, or `None` when empty.
    pub premise_code: Option<u16>,
    /// Weapon code; `None` means no weapon was recorded (information, not a gap).
    pub weapon_code: Option<u16>,
    /// Latitude (imputed from the reporting district's centroid when the export had 0,0).
    pub lat: f32,
    /// Longitude (imputed likewise).
    pub lon: f32,
}

impl Incident {
    /// Hour of the day, 0..=23.
    pub fn hour(&self) -> u8 {
        (self.minute_of_day / 60) as u8
    }

    /// Four-hour block of the day, 0..=5 (00-04, 04-08, ... 20-24).
    pub fn block(&self) -> u8 {
        (self.minute_of_day / 240) as u8
    }
}

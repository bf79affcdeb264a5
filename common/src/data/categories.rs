//! Crime categories: the LAPD crime codes (`Crm Cd`) grouped into at most 8
//! classes. (The code-to-category mapping is documented on [`Category::from_crime_code`].)

use serde::{Deserialize, Serialize};

/// A crime category.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum Category {
    /// Assaults, homicide, kidnapping, criminal threats and other crimes against the person.
    Violent = 0,
    /// Robbery (theft by force or fear).
    Robbery = 1,
    /// Burglary of homes, businesses and vehicles' contents by entry.
    Burglary = 2,
    /// Theft, shoplifting, pickpocketing, fraud-like thefts.
    Theft = 3,
    /// Vehicle theft and theft from a vehicle.
    Vehicle = 4,
    /// Vandalism and arson.
    Vandalism = 5,
    /// Sex offences.
    SexOffence = 6,
    /// Everything else.
    Other = 7,
}

impl Category {
    /// All categories in index order.
    pub const ALL: [Category; 8] = [
        Category::Violent,
        Category::Robbery,
        Category::Burglary,
        Category::Theft,
        Category::Vehicle,
        Category::Vandalism,
        Category::SexOffence,
        Category::Other,
    ];

    /// Number of categories.
    pub const COUNT: usize = 8;

    /// The category's index, 0..8.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The snake_case name used in files and feature names.
    pub fn name(self) -> &'static str {
        match self {
            Category::Violent => "violent",
            Category::Robbery => "robbery",
            Category::Burglary => "burglary",
            Category::Theft => "theft",
            Category::Vehicle => "vehicle",
            Category::Vandalism => "vandalism",
            Category::SexOffence => "sex_offence",
            Category::Other => "other",
        }
    }
}

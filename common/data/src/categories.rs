//! Crime categories: the LAPD crime codes (`Crm Cd`) grouped into 8 classes.
//! The code-to-category mapping is documented on [`Category::from_crime_code`].

use serde::{Deserialize, Serialize};

/// A crime category.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum Category {
    /// Homicide, assaults, shootings, kidnapping, criminal threats and other crimes
    /// against the person.
    Violent = 0,
    /// Robbery (theft by force or fear).
    Robbery = 1,
    /// Burglary: unlawful entry into a building, or into a vehicle to take its contents.
    Burglary = 2,
    /// Theft, shoplifting, pickpocketing, identity theft and fraud-like thefts.
    Theft = 3,
    /// Vehicle theft (cars, motorcycles, scooters) and theft from a vehicle.
    Vehicle = 4,
    /// Vandalism and arson.
    Vandalism = 5,
    /// Sex offences: rape, sexual assault, lewd conduct, indecent exposure, pimping.
    SexOffence = 6,
    /// Everything else: court-order violations, trespassing, public order,
    /// extortion, cruelty to animals, child neglect, bomb scares...
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

    /// The category of an LAPD crime code (`Crm Cd`).
    ///
    /// The grouping follows the codes' descriptions in the city's export:
    ///
    /// | category | codes |
    /// |---|---|
    /// | violent | 110, 113 homicide; 230-236, 250, 251 aggravated assault, shots fired at a dwelling or vehicle; 622-627 battery and simple assault; 647 throwing an object at a vehicle; 753 discharging a firearm; 761 brandishing a weapon; 763 stalking; 434-436 false imprisonment, lynching; 910, 920-922 kidnapping, human trafficking (servitude), child stealing; 928, 930 criminal threats |
    /// | robbery | 210, 220 |
    /// | burglary | 310, 320 burglary; 330, 410 burglary from a vehicle (entry to take its contents) |
    /// | theft | 341-354 grand theft, theft from the person, pickpocket, purse snatching, identity theft; 440-453 petty theft, shoplifting, dishonest employee; 470-475 till tap, coin machines; 480, 485 bicycles; 487, 491 boats; 649-670 (except 661) forgery, worthless documents, credit card fraud, counterfeit, bunco, embezzlement; 950, 951 defrauding an innkeeper |
    /// | vehicle | 510, 520, 522 vehicle stolen or attempted; 331, 420, 421 theft from a motor vehicle; 433 driving without the owner's consent |
    /// | vandalism | 740, 745 vandalism; 648 arson; 924 telephone property damage; 926 train wrecking |
    /// | sex offence | 121, 122 rape; 760, 762 lewd acts and conduct; 805-850 pimping, pandering, unlawful sex, crimes against children, child pornography, indecent exposure, registrant out of compliance; 860 battery with sexual contact; 932 peeping tom; 956 lewd letters and calls |
    /// | other | everything else, including any code the table does not know (237 child neglect, 437-439 resisting arrest, reckless driving, false report, 661 computer access, 755, 756 bomb scare, weapons possession, 865-890 public order and trespassing, 900-906 court orders, 931, 933, 940-949, 954) |
    ///
    /// Burglary *from* a vehicle (330, 410: entry to take the contents) counts
    /// as burglary, while theft from an unlocked vehicle (331, 420, 421)
    /// counts as a vehicle crime, as the descriptions distinguish them.
    pub fn from_crime_code(code: u16) -> Category {
        match code {
            110
            | 113
            | 230
            | 231
            | 235
            | 236
            | 250
            | 251
            | 622..=627
            | 647
            | 753
            | 761
            | 763
            | 434..=436
            | 910
            | 920..=922
            | 928
            | 930 => Category::Violent,
            210 | 220 => Category::Robbery,
            310 | 320 | 330 | 410 => Category::Burglary,
            341..=354
            | 440..=453
            | 470..=475
            | 480
            | 485
            | 487
            | 491
            | 649..=660
            | 662..=670
            | 950
            | 951 => Category::Theft,
            510 | 520 | 522 | 331 | 420 | 421 | 433 => Category::Vehicle,
            740 | 745 | 648 | 924 | 926 => Category::Vandalism,
            121 | 122 | 760 | 762 | 805..=850 | 860 | 932 | 956 => Category::SexOffence,
            _ => Category::Other,
        }
    }

    /// The category named `name` (as [`Category::name`] spells it).
    pub fn from_name(name: &str) -> Option<Category> {
        Category::ALL.iter().copied().find(|c| c.name() == name)
    }
}

impl std::fmt::Display for Category {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_seen_in_the_real_samples_map_as_documented() {
        let cases = [
            (110, Category::Violent),
            (230, Category::Violent),
            (624, Category::Violent),
            (626, Category::Violent),
            (761, Category::Violent),
            (930, Category::Violent),
            (210, Category::Robbery),
            (220, Category::Robbery),
            (310, Category::Burglary),
            (330, Category::Burglary),
            (410, Category::Burglary),
            (331, Category::Vehicle),
            (420, Category::Vehicle),
            (510, Category::Vehicle),
            (522, Category::Vehicle),
            (341, Category::Theft),
            (354, Category::Theft),
            (440, Category::Theft),
            (442, Category::Theft),
            (480, Category::Theft),
            (662, Category::Theft),
            (740, Category::Vandalism),
            (745, Category::Vandalism),
            (648, Category::Vandalism),
            (121, Category::SexOffence),
            (860, Category::SexOffence),
            (850, Category::SexOffence),
            (888, Category::Other),
            (901, Category::Other),
            (237, Category::Other),
            (661, Category::Other),
            (999, Category::Other),
        ];
        for (code, cat) in cases {
            assert_eq!(Category::from_crime_code(code), cat, "code {code}");
        }
    }

    #[test]
    fn names_round_trip() {
        for (i, c) in Category::ALL.iter().enumerate() {
            assert_eq!(c.index(), i);
            assert_eq!(Category::from_name(c.name()), Some(*c));
        }
        assert_eq!(Category::ALL.len(), Category::COUNT);
        assert_eq!(Category::from_name("arson"), None);
    }
}

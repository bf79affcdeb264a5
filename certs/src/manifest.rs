//! The manifest: a JSON record of everything the CA issued and revoked.
//!
//! It is the tool's source of truth (serial numbers, identities, validity,
//! revocations); the CRL is regenerated from it on every revocation. Times are
//! RFC 3339 in UTC, serial numbers lowercase hex.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::error::CertsError;

/// Version of the manifest layout written by this build.
pub const MANIFEST_FORMAT: u32 = 1;

/// Everything the CA issued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Layout version ([`MANIFEST_FORMAT`]).
    pub format: u32,
    /// The agency name, the organisation of every certificate.
    pub agency: String,
    /// When the PKI was created.
    #[serde(with = "rfc3339")]
    pub created: OffsetDateTime,
    /// The serial number the next certificate gets.
    pub next_serial: u64,
    /// The agency CA.
    pub ca: CertRecord,
    /// The server certificates, oldest first; the last is the current one.
    pub server: Vec<ServerRecord>,
    /// Every station certificate ever issued, in issue order.
    pub stations: Vec<StationRecord>,
    /// The current revocation list.
    pub crl: CrlRecord,
}

/// What every issued certificate records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertRecord {
    /// Serial number, lowercase hex.
    pub serial: String,
    /// Subject common name.
    pub common_name: String,
    /// Start of validity.
    #[serde(with = "rfc3339")]
    pub not_before: OffsetDateTime,
    /// End of validity.
    #[serde(with = "rfc3339")]
    pub not_after: OffsetDateTime,
    /// Certificate file, relative to the PKI directory.
    pub cert: String,
    /// Private key file, relative to the PKI directory (`None` once removed).
    pub key: Option<String>,
    /// SHA-256 fingerprint of the DER certificate, lowercase hex.
    pub sha256: String,
}

/// A server certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerRecord {
    /// The certificate.
    #[serde(flatten)]
    pub cert: CertRecord,
    /// Its subject alternative names (DNS names and IP addresses).
    pub names: Vec<String>,
}

/// A station (client) certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StationRecord {
    /// The station identity, e.g. `station-07` (the subject common name).
    pub name: String,
    /// The identity URI in the subject alternative name, the one the server trusts.
    pub uri: String,
    /// The certificate.
    #[serde(flatten)]
    pub cert: CertRecord,
    /// Set once revoked.
    pub revoked: Option<Revocation>,
    /// The Ed25519 public key the certificate binds for signing updates
    /// (hex; absent in certificates issued before update signing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_key: Option<String>,
    /// The station's update-signing private key (PKCS#8 PEM), relative to
    /// the PKI directory, until it is retired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_key: Option<String>,
}

/// A revocation entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Revocation {
    /// When the CA processed the revocation.
    #[serde(with = "rfc3339")]
    pub at: OffsetDateTime,
    /// Why.
    pub reason: RevocationReason,
}

/// The revocation list as last issued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrlRecord {
    /// CRL file, relative to the PKI directory.
    pub file: String,
    /// Monotonic CRL number.
    pub number: u64,
    /// Issue time.
    #[serde(with = "rfc3339")]
    pub this_update: OffsetDateTime,
    /// Announced next issue time (informative: the server does not enforce it).
    #[serde(with = "rfc3339")]
    pub next_update: OffsetDateTime,
    /// Serials listed, lowercase hex.
    pub revoked_serials: Vec<String>,
}

/// Why a certificate was revoked (RFC 5280 reason codes that apply to stations).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum RevocationReason {
    /// No reason given.
    Unspecified,
    /// The station's private key leaked or may have.
    KeyCompromise,
    /// The station moved to another agency or unit.
    AffiliationChanged,
    /// Replaced by a newer certificate.
    Superseded,
    /// The station stopped operating.
    CessationOfOperation,
    /// Its permission to take part was withdrawn.
    PrivilegeWithdrawn,
}

impl RevocationReason {
    /// All reasons, in CLI order.
    pub const ALL: [RevocationReason; 6] = [
        RevocationReason::Unspecified,
        RevocationReason::KeyCompromise,
        RevocationReason::AffiliationChanged,
        RevocationReason::Superseded,
        RevocationReason::CessationOfOperation,
        RevocationReason::PrivilegeWithdrawn,
    ];
    const EXPECTED: &'static str = "unspecified, key-compromise, affiliation-changed, superseded, cessation-of-operation, privilege-withdrawn";

    /// The kebab-case spelling used on the command line and in the manifest.
    pub fn as_str(self) -> &'static str {
        match self {
            RevocationReason::Unspecified => "unspecified",
            RevocationReason::KeyCompromise => "key-compromise",
            RevocationReason::AffiliationChanged => "affiliation-changed",
            RevocationReason::Superseded => "superseded",
            RevocationReason::CessationOfOperation => "cessation-of-operation",
            RevocationReason::PrivilegeWithdrawn => "privilege-withdrawn",
        }
    }

    pub(crate) fn to_rcgen(self) -> rcgen::RevocationReason {
        match self {
            RevocationReason::Unspecified => rcgen::RevocationReason::Unspecified,
            RevocationReason::KeyCompromise => rcgen::RevocationReason::KeyCompromise,
            RevocationReason::AffiliationChanged => rcgen::RevocationReason::AffiliationChanged,
            RevocationReason::Superseded => rcgen::RevocationReason::Superseded,
            RevocationReason::CessationOfOperation => rcgen::RevocationReason::CessationOfOperation,
            RevocationReason::PrivilegeWithdrawn => rcgen::RevocationReason::PrivilegeWithdrawn,
        }
    }
}

impl fmt::Display for RevocationReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RevocationReason {
    type Err = CertsError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RevocationReason::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| CertsError::UnknownReason {
                given: s.to_owned(),
                expected: Self::EXPECTED,
            })
    }
}

/// Formats a time as RFC 3339 (UTC, whole seconds).
pub fn format_time(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

/// Serde adapter: `OffsetDateTime` as an RFC 3339 string.
mod rfc3339 {
    use serde::{Deserialize, Deserializer, Serializer};
    use time::format_description::well_known::Rfc3339;
    use time::OffsetDateTime;

    pub fn serialize<S: Serializer>(t: &OffsetDateTime, s: S) -> Result<S::Ok, S::Error> {
        let text = t.format(&Rfc3339).map_err(serde::ser::Error::custom)?;
        s.serialize_str(&text)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<OffsetDateTime, D::Error> {
        let text = String::deserialize(d)?;
        OffsetDateTime::parse(&text, &Rfc3339).map_err(serde::de::Error::custom)
    }
}

/// Lowercase hex of a serial number.
pub fn serial_hex(serial: u64) -> String {
    format!("{serial:02x}")
}

/// The minimal big-endian bytes of a serial number (never empty).
pub(crate) fn serial_bytes(serial: u64) -> Vec<u8> {
    let bytes = serial.to_be_bytes();
    let first = bytes
        .iter()
        .position(|&b| b != 0)
        .unwrap_or(bytes.len() - 1);
    bytes[first..].to_vec()
}

/// Parses a serial written by [`serial_hex`].
pub(crate) fn parse_serial(hex: &str) -> Option<u64> {
    u64::from_str_radix(hex, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_round_trip_through_their_spelling() {
        for r in RevocationReason::ALL {
            assert_eq!(r.as_str().parse::<RevocationReason>().unwrap(), r);
            let json = serde_json::to_string(&r).unwrap();
            assert_eq!(json, format!("\"{}\"", r.as_str()));
        }
        let err = "stolen".parse::<RevocationReason>().unwrap_err();
        assert!(err.to_string().contains("key-compromise"), "{err}");
    }

    #[test]
    fn serials_are_minimal_and_round_trip() {
        assert_eq!(serial_bytes(1), vec![1]);
        assert_eq!(serial_bytes(0x1234), vec![0x12, 0x34]);
        assert_eq!(serial_bytes(0), vec![0]);
        assert_eq!(parse_serial(&serial_hex(0xabc)), Some(0xabc));
    }
}

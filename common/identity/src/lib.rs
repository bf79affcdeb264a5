//! # fedcrime-identity
//!
//! Who a station is, in one place: the [`StationId`] type every crate uses
//! (the round engine's samples and metrics, the transport's verified peers,
//! the certificate tool's names) and the one rule that reads it from a
//! certificate ([`station_from_certificate`]).
//!
//! A station certificate issued by `fedcrime-certs` names the station twice:
//! the subject common name `station-07` and the URI subject alternative name
//! `urn:fedcrime:station:station-07` ([`StationId::uri`]). The URI is
//! authoritative; a common name that disagrees with it makes the certificate
//! unusable as an identity. Identities come from certificates, never from
//! what a station says in a message.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// Prefix of the URI subject alternative name that carries a station identity.
pub const STATION_URI_PREFIX: &str = "urn:fedcrime:station:";

/// A name that is no station identity, or a certificate that carries none.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// A station name breaks the naming rules.
    #[error("invalid station name {name:?}: {reason}")]
    InvalidName {
        /// The name.
        name: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// A certificate names no station, or names it ambiguously.
    #[error("{0}")]
    Certificate(String),
}

/// Shorthand for results of this crate.
pub type Result<T, E = IdentityError> = std::result::Result<T, E>;

/// A station's identity, e.g. `station-07`: 1 to 63 lowercase letters,
/// digits and `-`, starting with a letter, not ending with `-` (it goes into
/// a URI, a file name and log lines).
///
/// Cheap to clone; ordered by name, which is the order samples and
/// aggregation inputs are sorted in.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct StationId(Arc<str>);

impl StationId {
    /// The identity `name`, if it follows the naming rules.
    pub fn new(name: impl Into<String>) -> Result<Self> {
        let name = name.into();
        let bad = |name: String, reason| Err(IdentityError::InvalidName { name, reason });
        if name.is_empty() || name.len() > 63 {
            return bad(name, "must be 1 to 63 characters long");
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return bad(
                name,
                "only lowercase letters a-z, digits and '-' are allowed",
            );
        }
        if !name.as_bytes()[0].is_ascii_lowercase() {
            return bad(name, "must start with a letter");
        }
        if name.ends_with('-') {
            return bad(name, "must not end with '-'");
        }
        Ok(StationId(Arc::from(name)))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The identity URI, `urn:fedcrime:station:<name>`.
    pub fn uri(&self) -> String {
        format!("{STATION_URI_PREFIX}{}", self.0)
    }
}

impl fmt::Display for StationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for StationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl FromStr for StationId {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self> {
        StationId::new(s)
    }
}

impl TryFrom<String> for StationId {
    type Error = IdentityError;

    fn try_from(s: String) -> Result<Self> {
        StationId::new(s)
    }
}

impl From<StationId> for String {
    fn from(id: StationId) -> String {
        id.0.to_string()
    }
}

impl AsRef<str> for StationId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Reads the station identity from a DER certificate (see the crate docs):
/// exactly one `urn:fedcrime:station:<name>` URI with a valid name, and every
/// subject common name equal to it.
pub fn station_from_certificate(der: &[u8]) -> Result<StationId> {
    let refuse = |reason: String| IdentityError::Certificate(reason);
    let cert = parse(der)?;
    let Some(name) = one_uri(&cert, STATION_URI_PREFIX, "station identity URI")? else {
        return Err(refuse(format!(
            "no {STATION_URI_PREFIX}<name> URI in the subject alternative names"
        )));
    };
    let id = StationId::new(name)?;
    for cn in cert.subject().iter_common_name() {
        let cn = cn
            .as_str()
            .map_err(|e| refuse(format!("unreadable common name: {e}")))?;
        if cn != id.as_str() {
            return Err(refuse(format!(
                "common name {cn:?} disagrees with the identity URI {}",
                id.uri()
            )));
        }
    }
    Ok(id)
}

/// Prefix of the URI subject alternative name that binds a station's
/// Ed25519 update-signing public key (64 lowercase hex digits) to its
/// certificate: `urn:fedcrime:update-key:ed25519:<hex>`. The CA's signature
/// over the certificate is what binds the key to the identity.
pub const UPDATE_KEY_URI_PREFIX: &str = "urn:fedcrime:update-key:ed25519:";

/// The URI that binds `public_key` to a certificate ([`UPDATE_KEY_URI_PREFIX`]).
pub fn update_key_uri(public_key: &[u8; 32]) -> String {
    let mut uri = String::with_capacity(UPDATE_KEY_URI_PREFIX.len() + 64);
    uri.push_str(UPDATE_KEY_URI_PREFIX);
    for b in public_key {
        uri.push_str(&format!("{b:02x}"));
    }
    uri
}

/// The Ed25519 update-signing key a DER certificate binds, if any: at most
/// one [`UPDATE_KEY_URI_PREFIX`] URI holding exactly 64 lowercase hex digits.
pub fn update_key_from_certificate(der: &[u8]) -> Result<Option<[u8; 32]>> {
    let cert = parse(der)?;
    let Some(hex) = one_uri(&cert, UPDATE_KEY_URI_PREFIX, "update-signing key URI")? else {
        return Ok(None);
    };
    let bad = || {
        IdentityError::Certificate(format!(
            "update-signing key URI {UPDATE_KEY_URI_PREFIX}{hex} does not hold 64 lowercase hex digits"
        ))
    };
    if hex.len() != 64
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(bad());
    }
    let mut key = [0u8; 32];
    for (i, k) in key.iter_mut().enumerate() {
        *k = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(Some(key))
}

/// A DER certificate, or why it cannot be read.
fn parse(der: &[u8]) -> Result<X509Certificate<'_>> {
    X509Certificate::from_der(der)
        .map(|(_, cert)| cert)
        .map_err(|e| IdentityError::Certificate(format!("unparsable certificate: {e}")))
}

/// What follows `prefix` in the certificate's one URI subject alternative
/// name that starts with it (`None` without one; more than one, `what`, is
/// an error).
fn one_uri<'a>(cert: &'a X509Certificate<'_>, prefix: &str, what: &str) -> Result<Option<&'a str>> {
    let sans = cert.subject_alternative_name().map_err(|e| {
        IdentityError::Certificate(format!("bad subject alternative name extension: {e}"))
    })?;
    let mut found = None;
    for name in sans.iter().flat_map(|s| &s.value.general_names) {
        if let GeneralName::URI(uri) = name {
            if let Some(rest) = uri.strip_prefix(prefix) {
                if found.is_some() {
                    return Err(IdentityError::Certificate(format!("more than one {what}")));
                }
                found = Some(rest);
            }
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn station_ids_follow_the_naming_rules() {
        for ok in ["station-07", "a", "hollywood-2"] {
            assert_eq!(StationId::new(ok).unwrap().as_str(), ok);
        }
        for bad in ["", "Station-1", "7th", "a b", "x-", "../etc"] {
            assert!(StationId::new(bad).is_err(), "{bad:?}");
        }
        let id: StationId = serde_json::from_str("\"station-03\"").unwrap();
        assert_eq!(id.uri(), "urn:fedcrime:station:station-03");
        assert!(serde_json::from_str::<StationId>("\"Station 3\"").is_err());
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"station-03\"");
        // Ordered by name, the order samples and aggregation inputs follow.
        let mut ids = [StationId::new("b").unwrap(), StationId::new("a").unwrap()];
        ids.sort();
        assert_eq!(ids[0].as_str(), "a");
        assert_eq!(format!("{:?}", ids[0]), "\"a\"");
    }

    fn cert_with(cn: Option<&str>, uris: &[&str]) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(cn) = cn {
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, cn);
        }
        params.subject_alt_names = uris
            .iter()
            .map(|u| rcgen::SanType::URI((*u).try_into().unwrap()))
            .collect();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn identity_comes_from_the_uri_san() {
        let der = cert_with(Some("station-07"), &["urn:fedcrime:station:station-07"]);
        assert_eq!(
            station_from_certificate(&der).unwrap().as_str(),
            "station-07"
        );
        let der = cert_with(None, &["https://x.example", "urn:fedcrime:station:rampart"]);
        assert_eq!(station_from_certificate(&der).unwrap().as_str(), "rampart");
    }

    #[test]
    fn ambiguous_or_missing_identities_are_refused() {
        let no_uri = cert_with(Some("station-07"), &[]);
        assert!(station_from_certificate(&no_uri)
            .unwrap_err()
            .to_string()
            .contains("no urn:fedcrime"));
        let two = cert_with(None, &["urn:fedcrime:station:a", "urn:fedcrime:station:b"]);
        assert!(station_from_certificate(&two)
            .unwrap_err()
            .to_string()
            .contains("more than one"));
        let mismatch = cert_with(Some("station-01"), &["urn:fedcrime:station:station-02"]);
        assert!(station_from_certificate(&mismatch)
            .unwrap_err()
            .to_string()
            .contains("disagrees"));
        let key = [0xab; 32];
        let bound = cert_with(None, &["urn:fedcrime:station:a", &update_key_uri(&key)]);
        assert_eq!(update_key_from_certificate(&bound).unwrap(), Some(key));
        assert_eq!(update_key_from_certificate(&no_uri).unwrap(), None);
        let short = cert_with(None, &["urn:fedcrime:update-key:ed25519:abcd"]);
        assert!(update_key_from_certificate(&short)
            .unwrap_err()
            .to_string()
            .contains("64 lowercase hex"));
        let twice = cert_with(None, &[&update_key_uri(&key), &update_key_uri(&[1; 32])]);
        assert!(update_key_from_certificate(&twice)
            .unwrap_err()
            .to_string()
            .contains("more than one"));
        let bad_name = cert_with(None, &["urn:fedcrime:station:Bad_Name"]);
        assert!(station_from_certificate(&bad_name).is_err());
        assert!(station_from_certificate(b"not a certificate").is_err());
    }
}

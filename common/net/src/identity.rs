//! The identity of a connected station: read from the certificate it
//! presented (verified by the TLS layer against the agency CA and the CRL),
//! with the one rule of `fedcrime-identity`, never from what it says.

use rustls_pki_types::CertificateDer;

use fedcrime_identity::{station_from_certificate, update_key_from_certificate, StationId};

use super::error::{NetError, Result};

/// The station identity of an established connection, taken from the peer's
/// certificate. Never trust a name a station sends in a message.
pub fn peer_identity(conn: &quinn::Connection) -> Result<StationId> {
    from_leaf(conn, station_from_certificate)
}

/// The Ed25519 update-signing key the peer's certificate binds, if any
/// (see [`fedcrime_identity::UPDATE_KEY_URI_PREFIX`]).
pub fn peer_update_key(conn: &quinn::Connection) -> Result<Option<[u8; 32]>> {
    from_leaf(conn, update_key_from_certificate)
}

/// `read` of the peer's leaf certificate.
fn from_leaf<T>(
    conn: &quinn::Connection,
    read: impl FnOnce(&[u8]) -> fedcrime_identity::Result<T>,
) -> Result<T> {
    let peer = conn.remote_address();
    let certs = peer_chain(conn)?;
    let leaf = certs.first().ok_or_else(|| NetError::Identity {
        peer,
        reason: "the peer presented an empty certificate chain".to_owned(),
    })?;
    read(leaf).map_err(|e| NetError::Identity {
        peer,
        reason: e.to_string(),
    })
}

/// The certificate chain the peer presented, leaf first.
pub(crate) fn peer_chain(conn: &quinn::Connection) -> Result<Vec<CertificateDer<'static>>> {
    conn.peer_identity()
        .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
        .map(|chain| *chain)
        .ok_or_else(|| NetError::Identity {
            peer: conn.remote_address(),
            reason: "the peer presented no certificate".to_owned(),
        })
}

//! The server endpoint's secret, kept across restarts so that stations
//! learn of a server crash at once.
//!
//! QUIC lets an endpoint end a connection it no longer knows with a
//! *stateless reset*: a packet carrying a token that only the endpoint that
//! issued the connection ID can compute (RFC 9000, section 10.3). quinn
//! derives the token from a reset key and checks, before resetting, that the
//! connection ID is one its own generator could have issued. Both come from
//! random keys by default, so a restarted server neither recognises the
//! stations' old connection IDs nor can prove it issued them, and every
//! station waits for its idle timeout before it reconnects.
//!
//! [`EndpointSecret`] keeps both keys in one file of the run's output
//! folder (owner-only). A server restarted on it
//! answers the first keep-alive of each station's dead connection with a
//! reset, and the station reconnects within a keep-alive interval.

use std::fmt;
use std::io::ErrorKind;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use quinn_proto::HashedConnectionIdGenerator;
use rand::RngCore;
use ring::{digest, hmac};

use super::error::{NetError, Result};

/// Bytes of secret material in the file.
const SECRET_LEN: usize = 64;
/// The smallest interval between two stateless resets the endpoint sends.
/// quinn's default (20 ms) would take 20 s to reset 1,000 stations; a reset
/// is always smaller than the packet that caused it, so a short interval
/// cannot amplify a flood.
const MIN_RESET_INTERVAL: Duration = Duration::from_micros(200);

/// The server endpoint's reset and connection-ID keys (see the module docs).
#[derive(Clone)]
pub struct EndpointSecret {
    bytes: [u8; SECRET_LEN],
}

impl fmt::Debug for EndpointSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EndpointSecret(..)")
    }
}

impl EndpointSecret {
    /// A fresh random secret (not kept anywhere).
    pub fn random() -> Self {
        let mut bytes = [0u8; SECRET_LEN];
        rand::rng().fill_bytes(&mut bytes);
        EndpointSecret { bytes }
    }

    /// Reads the secret kept at `path`; `None` when there is no such file.
    /// A file of the wrong size is an error naming it (it is never replaced
    /// silently).
    pub fn load(path: &Path) -> Result<Option<Self>> {
        match std::fs::read(path) {
            Ok(bytes) => {
                let bytes: [u8; SECRET_LEN] =
                    bytes.as_slice().try_into().map_err(|_| NetError::Pem {
                        what: "endpoint secret",
                        path: path.to_owned(),
                        reason: format!(
                            "holds {} bytes, expected {SECRET_LEN}; delete it to make a new one",
                            bytes.len()
                        ),
                    })?;
                Ok(Some(EndpointSecret { bytes }))
            }
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(source) => Err(NetError::Io {
                what: "endpoint secret",
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// Keeps the secret at `path` (owner-only, written atomically).
    pub fn save(&self, path: &Path) -> Result<()> {
        fedcrime_files::write_atomic_with_mode(path, &self.bytes, 0o600).map_err(|source| {
            NetError::Write {
                what: "endpoint secret",
                source,
            }
        })
    }

    /// The stateless-reset key.
    fn reset_key(&self) -> hmac::Key {
        hmac::Key::new(hmac::HMAC_SHA256, &self.bytes)
    }

    /// The key of the connection-ID generator, derived from the secret.
    fn cid_key(&self) -> u64 {
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(b"fedcrime connection-id key");
        ctx.update(&self.bytes);
        let d = ctx.finish();
        let mut k = [0u8; 8];
        k.copy_from_slice(&d.as_ref()[..8]);
        u64::from_le_bytes(k)
    }

    /// Applies the secret to a quinn endpoint configuration.
    pub(crate) fn apply(&self, config: &mut quinn::EndpointConfig) {
        let key = self.cid_key();
        config
            .reset_key(Arc::new(self.reset_key()))
            .cid_generator(move || Box::new(HashedConnectionIdGenerator::from_key(key)))
            .min_reset_interval(MIN_RESET_INTERVAL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_secret_is_kept_owner_only_and_read_back() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("endpoint.secret");
        assert!(EndpointSecret::load(&path).unwrap().is_none());
        let a = EndpointSecret::random();
        a.save(&path).unwrap();
        let b = EndpointSecret::load(&path).unwrap().unwrap();
        assert_eq!(a.bytes, b.bytes);
        assert_ne!(a.bytes, EndpointSecret::random().bytes);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(&path, b"short").unwrap();
        let err = EndpointSecret::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("endpoint.secret") && err.contains("5 bytes"),
            "{err}"
        );
        // The broken file is left for the operator to look at.
        assert_eq!(std::fs::read(&path).unwrap(), b"short");
    }
}

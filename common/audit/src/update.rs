//! Signed updates: the bytes a station signs for each update it sends.
//!
//! Each station holds an Ed25519 key whose public key its certificate binds
//! (`fedcrime-certs add-station` issues both; the URI subject alternative
//! name `urn:fedcrime:update-key:ed25519:<hex>`). For every update it signs
//! [`update_signing_message`]: a domain-separation prefix, the run, its own
//! identity, the round, the example count it claims, whether the tensors are
//! a delta, and the SHA-256 of the values as the server will decode them
//! (little-endian f32, [`crate::sha256_f32_raw`]). Binding the run, the
//! station and the round means a signature cannot be replayed into another
//! run or round, nor passed off as another station's: the server verifies
//! it with the key of the certificate the *sending* connection presented,
//! so an update signed by station A and sent by station B fails.

use super::keys::{PublicKey, Signature, SigningKey};
use super::SignatureError;

/// The domain-separation prefix of a signed update.
pub const UPDATE_CONTEXT: &[u8] = b"fedcrime update v1\0";

/// What an update signature covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SignedUpdate<'a> {
    /// The federated run (the server's `run_id`).
    pub run_id: &'a str,
    /// The sending station's identity.
    pub station: &'a str,
    /// The round the update answers.
    pub round: u64,
    /// The example count the station claims (its FedAvg weight).
    pub num_examples: u64,
    /// Whether the tensors are `trained - global` rather than the trained
    /// parameters.
    pub delta: bool,
    /// SHA-256 of the values as sent (little-endian f32 after decoding).
    pub values_sha256: [u8; 32],
}

impl SignedUpdate<'_> {
    /// The exact bytes signed: the prefix, then each string as a big-endian
    /// u32 length and its bytes, the round and example count as big-endian
    /// u64, one byte for delta, and the 32-byte hash.
    pub fn message(&self) -> Vec<u8> {
        let mut m = signed_prefix(UPDATE_CONTEXT, self.run_id, self.station, self.round);
        m.extend_from_slice(&self.num_examples.to_be_bytes());
        m.push(u8::from(self.delta));
        m.extend_from_slice(&self.values_sha256);
        m
    }

    /// The station's signature.
    pub fn sign(&self, key: &SigningKey) -> Signature {
        key.sign(&self.message())
    }

    /// Checks `signature` under the key the station's certificate binds.
    pub fn verify(&self, key: &PublicKey, signature: &Signature) -> Result<(), SignatureError> {
        key.verify(&self.message(), signature)
    }
}

/// The domain-separation prefix of a signed masked update.
pub const MASKED_CONTEXT: &[u8] = b"fedcrime masked update v1\0";

/// What a station signs for its masked input under secure aggregation: the
/// run, itself, the round, and the SHA-256 of the protocol message exactly
/// as sent (which holds the masked vector and the example count). The
/// server never sees the station's plaintext update, but can still hold it
/// to the masked vector it sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SignedMaskedUpdate<'a> {
    /// The federated run.
    pub run_id: &'a str,
    /// The sending station's identity.
    pub station: &'a str,
    /// The round.
    pub round: u64,
    /// SHA-256 of the masked-input message's bytes.
    pub body_sha256: [u8; 32],
}

impl SignedMaskedUpdate<'_> {
    /// The exact bytes signed: [`MASKED_CONTEXT`], then each string as a
    /// big-endian u32 length and its bytes, the round (u64 BE) and the hash.
    pub fn message(&self) -> Vec<u8> {
        let mut m = signed_prefix(MASKED_CONTEXT, self.run_id, self.station, self.round);
        m.extend_from_slice(&self.body_sha256);
        m
    }

    /// The station's signature.
    pub fn sign(&self, key: &SigningKey) -> Signature {
        key.sign(&self.message())
    }

    /// Checks `signature` under the key the station's certificate binds.
    pub fn verify(&self, key: &PublicKey, signature: &Signature) -> Result<(), SignatureError> {
        key.verify(&self.message(), signature)
    }
}

/// What every signed message starts with: the context, the run and the
/// station (each a big-endian u32 length and its bytes), and the round
/// (u64 big-endian).
fn signed_prefix(context: &[u8], run_id: &str, station: &str, round: u64) -> Vec<u8> {
    let mut m = Vec::with_capacity(context.len() + 16 + run_id.len() + station.len() + 64);
    m.extend_from_slice(context);
    for s in [run_id, station] {
        m.extend_from_slice(&(s.len() as u32).to_be_bytes());
        m.extend_from_slice(s.as_bytes());
    }
    m.extend_from_slice(&round.to_be_bytes());
    m
}

/// [`SignedUpdate::message`] (kept as a function for the wire docs).
pub fn update_signing_message(update: &SignedUpdate<'_>) -> Vec<u8> {
    update.message()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(station: &str) -> SignedUpdate<'_> {
        SignedUpdate {
            run_id: "run-1",
            station,
            round: 3,
            num_examples: 1200,
            delta: true,
            values_sha256: crate::sha256_f32_raw(&[1.0, -2.5, 3.25]),
        }
    }

    #[test]
    fn signature_binds_station_round_count_and_values() {
        let a = SigningKey::generate().unwrap();
        let b = SigningKey::generate().unwrap();
        let u = update("station-01");
        let sig = u.sign(&a);
        u.verify(&a.public_key(), &sig).unwrap();
        // Signed by A, presented as B's (B's certificate key): refused.
        assert!(u.verify(&b.public_key(), &sig).is_err());
        // Any covered field changed: refused.
        let changed = [
            SignedUpdate {
                station: "station-02",
                ..u
            },
            SignedUpdate { round: 4, ..u },
            SignedUpdate {
                num_examples: 1201,
                ..u
            },
            SignedUpdate { delta: false, ..u },
            SignedUpdate {
                run_id: "run-2",
                ..u
            },
            SignedUpdate {
                values_sha256: crate::sha256_f32_raw(&[1.0, -2.5, 3.5]),
                ..u
            },
        ];
        for c in changed {
            assert!(c.verify(&a.public_key(), &sig).is_err(), "{c:?}");
        }
    }

    #[test]
    fn masked_and_plaintext_signatures_never_stand_for_each_other() {
        let key = SigningKey::generate().unwrap();
        let hash = crate::sha256_hex(b"x");
        let body_sha256: [u8; 32] = crate::hex::decode_array(&hash).unwrap();
        let masked = SignedMaskedUpdate {
            run_id: "run-1",
            station: "station-01",
            round: 3,
            body_sha256,
        };
        let sig = masked.sign(&key);
        masked.verify(&key.public_key(), &sig).unwrap();
        assert!(SignedMaskedUpdate { round: 4, ..masked }
            .verify(&key.public_key(), &sig)
            .is_err());
        // The same hash as a plaintext update's values: another message.
        let plain = SignedUpdate {
            run_id: "run-1",
            station: "station-01",
            round: 3,
            num_examples: 0,
            delta: false,
            values_sha256: body_sha256,
        };
        assert!(plain.verify(&key.public_key(), &sig).is_err());
    }

    #[test]
    fn message_layout_is_fixed() {
        let u = SignedUpdate {
            run_id: "r",
            station: "s",
            round: 1,
            num_examples: 2,
            delta: false,
            values_sha256: [7; 32],
        };
        let m = u.message();
        let mut want = UPDATE_CONTEXT.to_vec();
        want.extend_from_slice(&[0, 0, 0, 1, b'r', 0, 0, 0, 1, b's']);
        want.extend_from_slice(&1u64.to_be_bytes());
        want.extend_from_slice(&2u64.to_be_bytes());
        want.push(0);
        want.extend_from_slice(&[7; 32]);
        assert_eq!(m, want);
    }
}

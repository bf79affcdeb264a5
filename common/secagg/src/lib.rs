//! # fedcrime-secagg
//!
//! Secure aggregation for federated averaging: the server learns the sum of
//! the stations' weighted updates and nothing about any single one, even when
//! stations drop out part-way through a round. The protocol is SecAgg+ (Bell,
//! Bonawitz, Gascón, Lepoint and Raykova, CCS 2020), the sparse-graph
//! refinement of SecAgg (Bonawitz et al., CCS 2017), for an honest-but-curious
//! server.
//!
//! One round, with `n` participating stations numbered by [`Slot`] and a
//! neighbour graph of degree `k` ([`Graph`]: complete for small rounds, a
//! randomly relabelled Harary graph otherwise), threshold `t` ([`threshold`]):
//!
//! 1. **Advertise keys.** Each station draws two X25519 key pairs, `c` for
//!    encrypting shares and `s` for pairwise masks, and sends the public
//!    halves ([`KeyAdvert`]). The server hands each station the keys of its
//!    neighbours that advertised ([`Roster`]).
//! 2. **Share keys.** Each station draws a self-mask seed `b`, Shamir-shares
//!    `b` and its mask secret key `s_sk` (threshold `t`) among those
//!    neighbours, and seals each neighbour's pair of shares with
//!    ChaCha20-Poly1305 under a key derived (HKDF-SHA256) from the `c` key
//!    agreement and bound to round, sender and receiver ([`ShareBundle`]). The
//!    server routes the sealed shares; it cannot open them.
//! 3. **Masked input.** Each station quantizes its weighted update into
//!    `Z_{2^32}` ([`Quantizer`]), adds an expansion of `b` ([`MaskPrg`]:
//!    AES-128 in counter mode or ChaCha20) and, for each neighbour `j` whose
//!    shares it received, `±` an expansion of the pairwise seed agreed with
//!    `j` ([`MaskedInput`]). The server adds the
//!    masked vectors as they arrive and keeps only the running sum.
//! 4. **Unmask.** The server tells each surviving station which of its
//!    neighbours survived and which dropped ([`UnmaskRequest`]); an honest
//!    station answers with the `b` shares of survivors and the `s_sk` shares
//!    of dropouts, never both for one station, once per round
//!    ([`UnmaskResponse`]). The server rebuilds the survivors' self masks and
//!    the dropouts' pairwise masks, removes them, and dequantizes the sum
//!    ([`Aggregate`]).
//!
//! Both sides are sans-IO state machines ([`StationSession`], [`Aggregator`]):
//! they take and return messages and never touch a socket or a clock, so the
//! round engine drives them over QUIC or in memory alike, and tests drive
//! them through every dropout and misbehaviour case.
//!
//! Cryptography comes from libraries: `x25519-dalek` (RFC 7748), `ring`
//! (HKDF-SHA256, ChaCha20-Poly1305, SHA-256, and the AES-128 keystream of the
//! default mask generator), `chacha20` (the other mask generator, RFC 8439's
//! ChaCha20 keystream, with run-time AVX-512/AVX2 dispatch) and `blahaj`
//! (Shamir over GF(2^8)). This crate only composes them; known-answer tests pin each one.

pub mod bench;
mod crypto;
mod graph;
mod quant;
mod server;
mod shamir;
mod station;
#[cfg(test)]
mod tests;

use serde::{Deserialize, Serialize};

pub use crypto::{expand_mask, expand_masks, hkdf_sha256};
pub use graph::{threshold, Graph};
pub use quant::Quantizer;
pub use server::{Aggregate, Aggregator};
pub use station::StationSession;

/// A station's place in one round, `0..n`. The caller maps slots to
/// station identities (certificate names); the protocol binds shares and
/// masks to slots and rounds.
pub type Slot = u32;

/// Length of an X25519 public key, a mask seed and a derived key, bytes.
pub const KEY_LEN: usize = 32;

/// Largest number of neighbours a station may have: Shamir shares over
/// GF(2^8) have 255 distinct non-zero evaluation points.
pub const MAX_NEIGHBOURS: usize = 255;

/// Errors of the protocol, on either side. Each names the round stage and
/// the station (slot) concerned.
#[derive(Debug, thiserror::Error, PartialEq)]
#[non_exhaustive]
pub enum SecAggError {
    /// A setting is out of its range.
    #[error("secure aggregation setting `{field}`: {reason}")]
    Config {
        /// The setting.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A message arrived in the wrong stage, or a step was taken twice.
    #[error("{what} in stage {stage}")]
    Stage {
        /// What was attempted.
        what: &'static str,
        /// The stage the session was in.
        stage: &'static str,
    },
    /// A message belongs to another round (replayed or delayed).
    #[error("{what} of round {got}, expected round {want}")]
    Round {
        /// Which message.
        what: &'static str,
        /// Its round.
        got: u64,
        /// The current round.
        want: u64,
    },
    /// A message names a slot that may not send or receive it.
    #[error("{what}: slot {slot} {reason}")]
    Slot {
        /// Which message.
        what: &'static str,
        /// The slot.
        slot: Slot,
        /// Why it is refused.
        reason: &'static str,
    },
    /// A message is malformed (length, key, duplicate).
    #[error("{what} from slot {slot}: {reason}")]
    Malformed {
        /// Which message.
        what: &'static str,
        /// Its sender.
        slot: Slot,
        /// What is wrong.
        reason: String,
    },
    /// A sealed share failed authentication: tampered with, misrouted,
    /// replayed from another round, or sealed for someone else.
    #[error("sealed share from slot {from} to slot {to} failed authentication")]
    Unauthentic {
        /// Claimed sender.
        from: Slot,
        /// Claimed receiver.
        to: Slot,
    },
    /// The server asked for both the self-mask share and the mask-key share
    /// of one station: with both it could unmask that station's input.
    #[error("unmask request names slot {slot} both as survivor and as dropout")]
    BothShares {
        /// The station named twice.
        slot: Slot,
    },
    /// Too few stations are left to go on safely.
    #[error("{stage}: {alive} stations left where {needed} are needed")]
    TooFew {
        /// The stage.
        stage: &'static str,
        /// Stations left.
        alive: usize,
        /// Stations needed.
        needed: usize,
    },
    /// Shares recovered a secret that does not match what its owner
    /// committed to (a corrupt share).
    #[error("the shares of slot {slot} recover a {what} that does not match its commitment")]
    BadRecovery {
        /// The station whose secret was recovered.
        slot: Slot,
        /// Which secret.
        what: &'static str,
    },
    /// An update is not a finite number everywhere, or has the wrong length.
    #[error("update: {0}")]
    Update(String),
}

/// Result type of this crate.
pub type Result<T, E = SecAggError> = std::result::Result<T, E>;

/// The user-facing settings, one per federation (the server's choice;
/// stations follow it). Defaults: tolerate a third of the round's stations
/// dropping, clip weighted update deltas to ±1, 16-bit quantization.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecAggConfig {
    /// Fraction of a station's neighbours that may drop out while the round
    /// still completes, in `[0, 0.5)`; sets the Shamir threshold
    /// ([`threshold`]).
    pub dropout_tolerance: f64,
    /// Each weighted update delta element is clipped to
    /// `[-clip_range, clip_range]` before quantization.
    pub clip_range: f32,
    /// Bits per quantized element, 1 to 24; the sum of `n` stations must fit
    /// in 32 bits, so `quantization_bits + ceil(log2 n) <= 32`.
    pub quantization_bits: u32,
    /// Neighbours per station. `0` (the default) chooses: the complete graph
    /// up to 100 stations, otherwise `min(n - 1, 2 * ceil(5 * log2 n))`.
    pub neighbours: usize,
    /// The generator that expands mask seeds into masks.
    pub mask_prg: MaskPrg,
}

/// The pseudorandom generator that expands a 32-byte mask seed into a mask,
/// one 32-bit element per four keystream bytes (little-endian). Both are
/// stream ciphers keyed by the seed; they differ in speed by hardware.
///
/// A round at 21 stations and 1M parameters expands 1.85 GB of keystream
/// (every station one mask per neighbour plus its own, the server one per
/// survivor), so the generator sets most of secure aggregation's cost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MaskPrg {
    /// AES-128 in counter mode (the generator of Bonawitz et al. 2017's
    /// implementation), keyed by the seed's first 16 bytes. The stream is
    /// cut into 16 KiB chunks; chunk `c` is the keystream of AES-128-GCM
    /// (ring's, which uses AES-NI/VAES and ARMv8 AES where present) with the
    /// 96-bit nonce `c` (big-endian) over zeros: AES of the counter blocks
    /// `c ‖ 2`, `c ‖ 3`, …, so no counter block repeats within a seed. A
    /// 128-bit key matches the 128-bit security of the X25519 agreements
    /// the seeds come from. About 12 GB/s of keystream per core where VAES
    /// is present (this project's benchmark machine), against 5.3 GB/s for
    /// ChaCha20.
    #[default]
    Aes128Ctr,
    /// ChaCha20 (RFC 8439): the seed as key, a zero nonce, block counter
    /// from 0. Faster than AES on hardware without AES instructions; its
    /// stream ends at 256 GiB (64 Gi elements).
    Chacha20,
}

impl Default for SecAggConfig {
    fn default() -> Self {
        SecAggConfig {
            dropout_tolerance: 1.0 / 3.0,
            clip_range: 1.0,
            quantization_bits: 16,
            neighbours: 0,
            mask_prg: MaskPrg::default(),
        }
    }
}

impl SecAggConfig {
    /// Checks every setting on its own.
    pub fn validate(&self) -> Result<()> {
        let bad = |field, reason: String| Err(SecAggError::Config { field, reason });
        if !(0.0..0.5).contains(&self.dropout_tolerance) {
            return bad(
                "dropout_tolerance",
                format!(
                    "{} is outside [0, 0.5): with half or more of the neighbours allowed to drop, \
                     the server could be shown both kinds of share",
                    self.dropout_tolerance
                ),
            );
        }
        if !(self.clip_range.is_finite() && self.clip_range > 0.0) {
            return bad(
                "clip_range",
                format!("{} must be a positive number", self.clip_range),
            );
        }
        if !(1..=24).contains(&self.quantization_bits) {
            return bad(
                "quantization_bits",
                format!("{} is outside 1..=24", self.quantization_bits),
            );
        }
        if self.neighbours > MAX_NEIGHBOURS {
            return bad(
                "neighbours",
                format!(
                    "{} exceeds {MAX_NEIGHBOURS} (Shamir shares over GF(2^8))",
                    self.neighbours
                ),
            );
        }
        Ok(())
    }
}

/// Everything both sides must agree on for one round. The server makes it
/// and sends it to every participant with the round's instructions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RoundSetup {
    /// The round; every message is bound to it.
    pub round: u64,
    /// Participating stations, slots `0..participants`.
    pub participants: u32,
    /// Elements of the update (the model's parameter count).
    pub vector_len: usize,
    /// The federation's settings.
    pub config: SecAggConfig,
    /// Seed of the neighbour graph's relabelling, fresh per round.
    pub graph_seed: [u8; KEY_LEN],
    /// Examples that count as weight 1: a station with `n_k` examples scales
    /// its update by `min(n_k / weight_scale, 1)`.
    pub weight_scale: f64,
    /// The federation's bound on `||update||` (L2, before weighting): the
    /// server cannot check it on a masked vector, so each station checks
    /// its own and refuses to send a larger one.
    #[serde(default)]
    pub max_update_norm: Option<f64>,
}

impl RoundSetup {
    /// Checks the setup as a whole: settings, sizes, and that the sum of
    /// every participant's quantized input fits in 32 bits.
    pub fn validate(&self) -> Result<()> {
        self.config.validate()?;
        if self.participants < 3 {
            return Err(SecAggError::Config {
                field: "participants",
                reason: format!(
                    "{} stations: secure aggregation needs at least 3 per round (with 2, \
                     each would learn the other's update from the sum)",
                    self.participants
                ),
            });
        }
        if self.vector_len == 0 {
            return Err(SecAggError::Config {
                field: "vector_len",
                reason: "the update is empty".into(),
            });
        }
        if self.vector_len >= u32::MAX as usize {
            return Err(SecAggError::Config {
                field: "vector_len",
                reason: format!(
                    "{} elements: secure aggregation takes models below 2^32 parameters",
                    self.vector_len
                ),
            });
        }
        if self
            .max_update_norm
            .is_some_and(|m| !(m.is_finite() && m > 0.0))
        {
            return Err(SecAggError::Config {
                field: "max_update_norm",
                reason: "must be a positive number".into(),
            });
        }
        if !(self.weight_scale.is_finite() && self.weight_scale > 0.0) {
            return Err(SecAggError::Config {
                field: "weight_scale",
                reason: format!("{} must be a positive number", self.weight_scale),
            });
        }
        let log_n = u32::BITS - (self.participants - 1).leading_zeros();
        if self.config.quantization_bits + log_n > 32 {
            return Err(SecAggError::Config {
                field: "quantization_bits",
                reason: format!(
                    "{} bits for {} stations: the sum needs {} bits, more than 32; lower \
                     quantization_bits to {} or sample fewer stations",
                    self.config.quantization_bits,
                    self.participants,
                    self.config.quantization_bits + log_n,
                    32 - log_n
                ),
            });
        }
        Ok(())
    }

    /// Refuses a message (`what`) of another round than this one.
    pub(crate) fn check_round(&self, what: &'static str, round: u64) -> Result<()> {
        if round != self.round {
            return Err(SecAggError::Round {
                what,
                got: round,
                want: self.round,
            });
        }
        Ok(())
    }

    /// The quantizer of this round.
    pub fn quantizer(&self) -> Quantizer {
        Quantizer::new(self.config.clip_range, self.config.quantization_bits)
    }

    /// Elements of a masked vector: the update plus its weight.
    pub fn masked_len(&self) -> usize {
        self.vector_len + 1
    }
}

/// Stage 1, station to server: the public halves of a station's two fresh
/// X25519 key pairs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyAdvert {
    /// The sender.
    pub slot: Slot,
    /// The round.
    pub round: u64,
    /// Public key for sealing shares.
    pub cipher_pk: [u8; KEY_LEN],
    /// Public key for pairwise masks.
    pub mask_pk: [u8; KEY_LEN],
}

/// Stage 1, server to station: the advertised keys of the station's
/// neighbours (never its own).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Roster {
    /// The round.
    pub round: u64,
    /// One advert per neighbour that advertised, in slot order.
    pub keys: Vec<KeyAdvert>,
}

/// One neighbour's shares, sealed for it alone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedShare {
    /// The station that made the shares.
    pub from: Slot,
    /// The neighbour they are for.
    pub to: Slot,
    /// The round.
    pub round: u64,
    /// ChaCha20-Poly1305 ciphertext and tag of both shares.
    pub ciphertext: Vec<u8>,
}

/// Stage 2, station to server: a station's sealed shares for each
/// neighbour on its roster, and a commitment to its self-mask seed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareBundle {
    /// The sender.
    pub slot: Slot,
    /// The round.
    pub round: u64,
    /// SHA-256 of the self-mask seed (domain-separated, bound to slot and
    /// round): the server checks the seed it recovers against it.
    pub seed_commitment: [u8; KEY_LEN],
    /// One sealed share per neighbour on the sender's roster.
    pub shares: Vec<SealedShare>,
}

/// Stage 3, station to server: the quantized, masked weighted update; its
/// last element is the masked weight.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaskedInput {
    /// The sender.
    pub slot: Slot,
    /// The round.
    pub round: u64,
    /// `RoundSetup::masked_len` elements of `Z_{2^32}` (serialized as
    /// little-endian bytes: 4 per element, where a varint would take 5 for
    /// most of these uniformly random values).
    #[serde(with = "le_words")]
    pub values: Vec<u32>,
}

/// `Vec<u32>` as one byte string of little-endian words.
mod le_words {
    use serde::de::{self, SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u32], s: S) -> Result<S::Ok, S::Error> {
        let bytes: Vec<u8> = v.iter().flat_map(|w| w.to_le_bytes()).collect();
        s.serialize_bytes(&bytes)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u32>, D::Error> {
        struct Words;
        impl<'de> Visitor<'de> for Words {
            type Value = Vec<u32>;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a byte string of little-endian 32-bit words")
            }

            fn visit_bytes<E: de::Error>(self, b: &[u8]) -> Result<Self::Value, E> {
                if !b.len().is_multiple_of(4) {
                    return Err(E::custom(format!(
                        "{} bytes are not whole 32-bit words",
                        b.len()
                    )));
                }
                Ok(b.chunks_exact(4)
                    .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect())
            }

            fn visit_byte_buf<E: de::Error>(self, b: Vec<u8>) -> Result<Self::Value, E> {
                self.visit_bytes(&b)
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut bytes = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
                while let Some(b) = seq.next_element::<u8>()? {
                    bytes.push(b);
                }
                self.visit_bytes(&bytes)
            }
        }
        d.deserialize_bytes(Words)
    }
}

/// Stage 4, server to station: which of the station's neighbours sent a
/// masked input (survivors) and which shared keys but did not (dropouts).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnmaskRequest {
    /// The round.
    pub round: u64,
    /// Neighbours whose self-mask seed shares are asked for.
    pub survivors: Vec<Slot>,
    /// Neighbours whose mask-key shares are asked for.
    pub dropped: Vec<Slot>,
}

/// Stage 4, station to server: the shares asked for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnmaskResponse {
    /// The sender.
    pub slot: Slot,
    /// The round.
    pub round: u64,
    /// `(owner, share)` of each survivor's self-mask seed.
    pub seed_shares: Vec<(Slot, Vec<u8>)>,
    /// `(owner, share)` of each dropout's mask secret key.
    pub key_shares: Vec<(Slot, Vec<u8>)>,
}

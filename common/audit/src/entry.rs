//! The events the server logs, and the SHA-256 helpers that name models and
//! updates in them.
//!
//! An [`Entry`] is stored as compact JSON (no white space) with a `"type"`
//! tag first and then the fields in the order they are declared here, e.g.
//!
//! ```text
//! {"type":"update_accepted","round":3,"station":"77th-street","update_sha256":"9f…","num_examples":1200,"signature":null}
//! ```
//!
//! The leaf of the Merkle tree is the hash of these exact bytes, as stored;
//! a verifier never re-serializes an entry to check it.

use ring::digest::{Context, SHA256};
use serde::{Deserialize, Serialize};

use crate::error::{AuditError, Result};
use crate::hex;

/// One event of a federated training run, as the server logs it.
///
/// Hashes (`*_sha256`) are lowercase hex SHA-256: of a model's parameters
/// with [`sha256_f32`], of an update's bytes as received with
/// [`sha256_hex`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Entry {
    /// The server started (or resumed) a run.
    RunStarted {
        /// The run's identifier.
        run_id: String,
        /// The aggregation strategy (`fedavg`, ...).
        strategy: String,
        /// The run's settings, as the server has them.
        settings: serde_json::Value,
        /// Hash of the initial global model.
        global_sha256: String,
    },
    /// A round was opened: the global model was offered to stations.
    RoundStarted {
        /// The round (1-based).
        round: u64,
        /// The attempt at this round (1 for the first; a round that failed
        /// is retried).
        attempt: u32,
        /// Hash of the global model the round starts from.
        global_sha256: String,
        /// The stations selected.
        stations: Vec<String>,
    },
    /// A station's update was accepted for aggregation.
    UpdateAccepted {
        /// The round.
        round: u64,
        /// The station.
        station: String,
        /// Hash of the update as received.
        update_sha256: String,
        /// Training examples the station reports.
        num_examples: u64,
        /// The station's signature of the update, if it signs them.
        signature: Option<String>,
    },
    /// A station's update was refused.
    UpdateRefused {
        /// The round.
        round: u64,
        /// The station.
        station: String,
        /// Why (norm bound exceeded, wrong round, malformed, ...).
        reason: String,
        /// Hash of the update as received, if one was received.
        update_sha256: Option<String>,
        /// The station's signature of the update, if any.
        signature: Option<String>,
    },
    /// The accepted updates of a round were aggregated into a new global
    /// model.
    Aggregated {
        /// The round.
        round: u64,
        /// Hash of the new global model.
        model_sha256: String,
        /// The stations whose updates went into it.
        stations: Vec<String>,
        /// A remark (e.g. the strategy's clipping or dropouts).
        note: Option<String>,
    },
    /// The server saved a checkpoint of the global model.
    Checkpoint {
        /// The round after which it was saved.
        round: u64,
        /// Hash of the saved model.
        model_sha256: String,
    },
    /// The run ended.
    RunFinished {
        /// How (`completed`, `stopped early: ...`, `failed: ...`).
        outcome: String,
    },
}

impl Entry {
    /// The canonical bytes: compact JSON, `"type"` first, fields in declared
    /// order.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        serde_json::to_vec(self).map_err(|source| AuditError::Serialize {
            what: "an audit entry",
            source,
        })
    }

    /// Parses an entry from its stored bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// The value of the `"type"` tag.
    pub fn kind(&self) -> &'static str {
        match self {
            Entry::RunStarted { .. } => "run_started",
            Entry::RoundStarted { .. } => "round_started",
            Entry::UpdateAccepted { .. } => "update_accepted",
            Entry::UpdateRefused { .. } => "update_refused",
            Entry::Aggregated { .. } => "aggregated",
            Entry::Checkpoint { .. } => "checkpoint",
            Entry::RunFinished { .. } => "run_finished",
        }
    }

    /// The round the entry belongs to, if any.
    pub fn round(&self) -> Option<u64> {
        match self {
            Entry::RoundStarted { round, .. }
            | Entry::UpdateAccepted { round, .. }
            | Entry::UpdateRefused { round, .. }
            | Entry::Aggregated { round, .. }
            | Entry::Checkpoint { round, .. } => Some(*round),
            Entry::RunStarted { .. } | Entry::RunFinished { .. } => None,
        }
    }

    /// The station of an update entry (accepted or refused).
    pub fn station(&self) -> Option<&str> {
        match self {
            Entry::UpdateAccepted { station, .. } | Entry::UpdateRefused { station, .. } => {
                Some(station)
            }
            _ => None,
        }
    }
}

/// The SHA-256 of `bytes`.
pub fn sha256_raw(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&SHA256, bytes).as_ref());
    out
}

/// The lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(ring::digest::digest(&SHA256, bytes).as_ref())
}

/// The lowercase hex SHA-256 of the little-endian bytes of `values` (what a
/// model's parameters weigh in a file, on every platform). The values are
/// converted in chunks of 4 KiB; the vector is not copied.
pub fn sha256_f32(values: &[f32]) -> String {
    hex::encode(&sha256_f32_raw(values))
}

/// [`sha256_f32`] as bytes.
pub fn sha256_f32_raw(values: &[f32]) -> [u8; 32] {
    let mut h = Sha256F32::new();
    h.update(values);
    h.finish()
}

/// [`sha256_f32_raw`] taken piece by piece: the values given to
/// [`update`](Self::update) in order, hashed as one vector (a receiver hashes
/// an update this way as it arrives).
pub struct Sha256F32 {
    ctx: Context,
    buf: Box<[u8; Sha256F32::CHUNK * 4]>,
}

impl std::fmt::Debug for Sha256F32 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sha256F32").finish_non_exhaustive()
    }
}

impl Default for Sha256F32 {
    fn default() -> Self {
        Self::new()
    }
}

impl Sha256F32 {
    /// Values converted to bytes at a time (4 KiB).
    const CHUNK: usize = 1024;

    /// A hash of no values yet.
    pub fn new() -> Self {
        Sha256F32 {
            ctx: Context::new(&SHA256),
            buf: Box::new([0u8; Self::CHUNK * 4]),
        }
    }

    /// Adds `values` (their little-endian bytes) to the hash.
    pub fn update(&mut self, values: &[f32]) {
        for chunk in values.chunks(Self::CHUNK) {
            for (dst, v) in self.buf.chunks_exact_mut(4).zip(chunk) {
                dst.copy_from_slice(&v.to_le_bytes());
            }
            self.ctx.update(&self.buf[..chunk.len() * 4]);
        }
    }

    /// The hash of every value added.
    pub fn finish(self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(self.ctx.finish().as_ref());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_json() {
        let e = Entry::UpdateAccepted {
            round: 3,
            station: "77th-street".into(),
            update_sha256: "ab".into(),
            num_examples: 1200,
            signature: None,
        };
        let bytes = e.to_bytes().unwrap();
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            r#"{"type":"update_accepted","round":3,"station":"77th-street","update_sha256":"ab","num_examples":1200,"signature":null}"#
        );
        assert_eq!(Entry::from_bytes(&bytes).unwrap(), e);
        assert_eq!(e.kind(), "update_accepted");
        assert_eq!(e.round(), Some(3));
        assert_eq!(e.station(), Some("77th-street"));

        let e = Entry::RunStarted {
            run_id: "r1".into(),
            strategy: "fedavg".into(),
            settings: serde_json::json!({"rounds": 10, "lr": 0.05}),
            global_sha256: sha256_hex(b""),
        };
        let bytes = e.to_bytes().unwrap();
        assert!(bytes.starts_with(
            br#"{"type":"run_started","run_id":"r1","strategy":"fedavg","settings":{"#
        ));
        assert_eq!(Entry::from_bytes(&bytes).unwrap(), e);
        assert_eq!(e.round(), None);
    }

    #[test]
    fn every_kind_round_trips() {
        let entries = [
            Entry::RoundStarted {
                round: 1,
                attempt: 2,
                global_sha256: "00".into(),
                stations: vec!["a".into(), "b".into()],
            },
            Entry::UpdateRefused {
                round: 1,
                station: "b".into(),
                reason: "norm 12.5 over bound 10".into(),
                update_sha256: Some("11".into()),
                signature: None,
            },
            Entry::Aggregated {
                round: 1,
                model_sha256: "22".into(),
                stations: vec!["a".into()],
                note: Some("1 dropout".into()),
            },
            Entry::Checkpoint {
                round: 1,
                model_sha256: "22".into(),
            },
            Entry::RunFinished {
                outcome: "completed".into(),
            },
        ];
        for e in entries {
            let bytes = e.to_bytes().unwrap();
            let text = std::str::from_utf8(&bytes).unwrap();
            assert!(
                text.starts_with(&format!("{{\"type\":\"{}\"", e.kind())),
                "{text}"
            );
            assert_eq!(Entry::from_bytes(&bytes).unwrap(), e);
        }
        assert!(Entry::from_bytes(br#"{"type":"nonsense"}"#).is_err());
        assert!(Entry::from_bytes(br#"{"type":"checkpoint","round":1}"#).is_err());
    }

    #[test]
    fn hashes() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(sha256_f32(&[]), sha256_hex(b""));
        // Across several chunks and a partial last one.
        let values: Vec<f32> = (0..2500).map(|i| i as f32 * 0.25 - 7.0).collect();
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(sha256_f32(&values), sha256_hex(&bytes));
        assert_eq!(sha256_f32(&[1.0]), sha256_hex(&[0x00, 0x00, 0x80, 0x3f]));
        // Piece by piece, at cuts inside and across the 1024-value chunks,
        // it is the hash of the whole.
        let whole = sha256_f32_raw(&values);
        for cuts in [vec![], vec![1], vec![1023, 1024, 1025], vec![7, 2048, 2499]] {
            let mut h = Sha256F32::new();
            let mut at = 0;
            for c in cuts.into_iter().chain([values.len()]) {
                h.update(&values[at..c]);
                at = c;
            }
            assert_eq!(h.finish(), whole);
        }
    }
}

//! # fedcrime-audit
//!
//! A tamper-evident audit log of a federated training run, so that a police
//! precinct (a station) can check afterwards what the agency server did with
//! its updates, and that the server did not rewrite history.
//!
//! ## What is logged
//!
//! The server appends an [`Entry`] for each event of a run: the run's start
//! (strategy, settings, hash of the initial model), each round's start (the
//! global model's hash, the stations selected), each station's update,
//! accepted (its hash, example count, the station's signature if any) or
//! refused (and why), each aggregation (the new model's hash, the stations
//! in it), checkpoints, and the end of the run. Models are named by
//! [`sha256_f32`] of their parameters, updates by [`sha256_hex`] of their
//! bytes; no data and no parameters are in the log.
//!
//! ## The tree and the heads
//!
//! The entries are the leaves, in order, of an RFC 6962 / RFC 9162 Merkle
//! tree over SHA-256 ([`merkle`]): leaf hash `SHA-256(0x00 || entry bytes)`,
//! node hash `SHA-256(0x01 || left || right)`, the empty tree's root
//! `SHA-256("")`. The server keeps the tree's [`Frontier`] (O(log n)
//! hashes), so each new root costs O(log n).
//!
//! At the end of each round the server signs a [`SignedTreeHead`] with its
//! Ed25519 audit key ([`keys`]): the round, the tree size, the root and a
//! timestamp. The signature covers the 84 bytes
//!
//! ```text
//! "fedcrime audit tree head v1\0" || tree_size (u64 BE) || timestamp_ms (u64 BE) || round (u64 BE) || root (32 bytes)
//! ```
//!
//! A head commits to every entry before it: changing, dropping, adding or
//! reordering any of them changes the root.
//!
//! ## Files (see [`log`])
//!
//! In the server's log directory:
//!
//! - `entries.bin`: records `u32 LE length || entry JSON`, one after another.
//!   The entry JSON is compact, with a `"type"` tag first and the fields in a
//!   fixed order ([`entry`]); the leaf hash covers these exact bytes.
//! - `heads.jsonl`: one signed head a line:
//!   `{"round":3,"tree_size":17,"root":"<hex>","timestamp_ms":…,"signature":"<hex>"}`.
//! - `log.pub`: the audit public key, lowercase hex and a newline.
//!
//! In a station's state directory, `tree-heads.jsonl` ([`HeadStore`]): the
//! heads the station received during runs, same line format.
//!
//! Hashes, keys and signatures are lowercase hex in every text file.
//!
//! ## How a precinct verifies
//!
//! 1. During the run, the station [`record`](HeadStore::record)s each head
//!    the server sends it. The store checks the signature under the server
//!    key the station trusts, and that heads never shrink nor change root at
//!    the same size.
//! 2. Later it asks for a [`ProofBundle`] for its update of some round
//!    ([`prove`]): the entry, its inclusion proof under the server's latest
//!    head, and consistency proofs from every earlier head's size to it.
//! 3. [`check_proof`] verifies the head's signature, the inclusion of the
//!    entry, and that every head the station stored is a prefix of the
//!    latest one. A log rewritten after the station saw a head fails with
//!    [`AuditError::LogRewritten`], naming the head's round and size.
//!
//! An auditor with the whole directory runs [`verify_log`]: every record
//! parses, every head's signature holds and its root is that of the entries
//! it covers.
//!
//! The log is tamper-evident, not tamper-proof: a server can rewrite its
//! log and re-sign it (the result verifies on its own); what exposes the
//! rewrite is a head someone kept from before.
//!
//! Nothing in this crate panics on bad input: errors ([`AuditError`],
//! [`ProofError`]) name the file and the entry index, byte offset, line or
//! head concerned.

pub mod entry;
pub mod error;
pub mod hex;
pub mod keys;
pub mod log;
pub mod merkle;
pub mod update;

pub use entry::{sha256_f32, sha256_f32_raw, sha256_hex, sha256_raw, Entry, Sha256F32};
pub use error::{AuditError, ProofError, Result, SignatureError};
pub use keys::{PublicKey, Signature, SigningKey};
pub use log::{
    check_proof, prove, prove_index, verify_log, verify_log_strict, AuditLog, CheckReport,
    ConsistencyStep, HeadStore, ProofBundle, SignedTreeHead, VerifyReport,
};
pub use merkle::{Frontier, Hash};
pub use update::{SignedMaskedUpdate, SignedUpdate, MASKED_CONTEXT, UPDATE_CONTEXT};

/// The round-settings extension key under which the server sends its
/// latest signed tree head (one `heads.jsonl` line) with every round, for
/// the stations' [`HeadStore`].
pub const TREE_HEAD_EXTENSION: &str = "fedcrime.audit.tree_head";

/// The round-settings extension key of the consistency proof (a
/// [`ConsistencyStep`] as JSON) from the head the server signed before the
/// one in [`TREE_HEAD_EXTENSION`] to it: a station that kept that earlier
/// head checks at once that the log only grew
/// ([`HeadStore::record_checked`]).
pub const TREE_CONSISTENCY_EXTENSION: &str = "fedcrime.audit.consistency";

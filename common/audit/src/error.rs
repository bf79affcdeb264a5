//! Errors of this crate.
//!
//! Every error names what is wrong and where: the file, the entry index and
//! byte offset in `entries.bin`, the line of a `.jsonl` file, the round and
//! size of a tree head. Nothing in this crate panics on bad input.

use std::io;
use std::path::PathBuf;

use crate::hex;
use crate::merkle::Hash;

/// A Merkle proof that does not verify, or a proof request that cannot be
/// answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProofError {
    /// A leaf index is not inside the tree.
    #[error("leaf index {index} is outside a tree of {tree_size} leaves")]
    IndexOutOfRange {
        /// The leaf index.
        index: u64,
        /// The number of leaves.
        tree_size: u64,
    },
    /// A consistency proof was asked for from a larger tree to a smaller one.
    #[error("cannot prove consistency from size {old_size} to the smaller size {new_size}")]
    SizeOrder {
        /// The earlier tree size.
        old_size: u64,
        /// The later tree size.
        new_size: u64,
    },
    /// The proof has too many or too few hashes for the tree sizes.
    #[error("malformed proof ({len} hashes): {reason}")]
    Malformed {
        /// How many hashes the proof has.
        len: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The proof leads to another root than the expected one.
    #[error(
        "the proof leads to root {} but the expected root is {}",
        hex::encode(computed),
        hex::encode(expected)
    )]
    RootMismatch {
        /// The root the proof leads to.
        computed: Hash,
        /// The root it should have led to.
        expected: Hash,
    },
    /// A consistency proof leads to another root for the earlier tree.
    #[error(
        "the proof leads to root {} for the earlier tree but its root is {}",
        hex::encode(computed),
        hex::encode(expected)
    )]
    OldRootMismatch {
        /// The old root the proof leads to.
        computed: Hash,
        /// The old root it should have led to.
        expected: Hash,
    },
}

/// An Ed25519 signature that does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the Ed25519 signature does not verify under public key {key}")]
pub struct SignatureError {
    /// The public key, as text (lowercase hex).
    pub key: String,
}

/// Everything that can go wrong in this crate outside the pure Merkle proofs.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// An I/O step failed.
    #[error("cannot {what} {}: {source}", path.display())]
    Io {
        /// The step (`read`, `append to`, `fsync`, ...).
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The last record of `entries.bin` is cut short (a crash while it was
    /// written, or a truncated copy).
    #[error(
        "{}: entry {index} at byte offset {offset} is torn: it needs {needed} bytes but the file has {available} left",
        path.display()
    )]
    TornRecord {
        /// The entries file.
        path: PathBuf,
        /// Index of the torn entry.
        index: u64,
        /// Byte offset of its length prefix.
        offset: u64,
        /// Bytes the record needs (prefix included).
        needed: u64,
        /// Bytes left in the file from `offset`.
        available: u64,
    },
    /// A record's bytes are not an [`Entry`](crate::Entry).
    #[error("{}: entry {index} at byte offset {offset} is not a valid entry: {source}", path.display())]
    BadEntry {
        /// The entries file.
        path: PathBuf,
        /// Index of the entry.
        index: u64,
        /// Byte offset of its length prefix.
        offset: u64,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// An entry serializes to more bytes than a record can hold.
    #[error(
        "an entry of {len} bytes does not fit a record (at most {} bytes)",
        u32::MAX
    )]
    EntryTooLarge {
        /// Its serialized length.
        len: usize,
    },
    /// A line of a `.jsonl` file is not a signed tree head.
    #[error("{}: line {line} is not a signed tree head: {reason}", path.display())]
    BadHeadLine {
        /// The file.
        path: PathBuf,
        /// The 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// A signed tree head's signature does not verify.
    #[error("{origin}: the signature of the tree head of round {round} (size {tree_size}) does not verify under key {key}")]
    BadHeadSignature {
        /// Where the head comes from (file and line, or a proof bundle).
        origin: String,
        /// Its round.
        round: u64,
        /// Its tree size.
        tree_size: u64,
        /// The key it was checked with (hex).
        key: String,
    },
    /// Tree heads of one log are not in order of tree size.
    #[error("{}: line {line}: the head of round {round} has size {tree_size}, smaller than the {previous} of the head before it", path.display())]
    HeadOrder {
        /// The heads file.
        path: PathBuf,
        /// The 1-based line number.
        line: usize,
        /// Its round.
        round: u64,
        /// Its tree size.
        tree_size: u64,
        /// The tree size of the head before.
        previous: u64,
    },
    /// A tree head covers more entries than the log holds.
    #[error("{}: line {line}: the head of round {round} signs {tree_size} entries but the log holds {entries}", path.display())]
    HeadBeyondEntries {
        /// The heads file.
        path: PathBuf,
        /// The 1-based line number.
        line: usize,
        /// Its round.
        round: u64,
        /// Its tree size.
        tree_size: u64,
        /// Entries in the log.
        entries: u64,
    },
    /// The first `tree_size` entries do not hash to the root a head signs:
    /// entries were changed, dropped, inserted or reordered.
    #[error(
        "{}: line {line}: the head of round {round} signs root {} for the first {tree_size} entries, but they hash to {}; entries 0..{tree_size} were changed, dropped, added or reordered",
        path.display(), hex::encode(signed), hex::encode(computed)
    )]
    HeadRootMismatch {
        /// The heads file.
        path: PathBuf,
        /// The 1-based line number.
        line: usize,
        /// Its round.
        round: u64,
        /// Its tree size.
        tree_size: u64,
        /// The root it signs.
        signed: Hash,
        /// The root of the entries.
        computed: Hash,
    },
    /// Entries after the last signed head (an error only in strict checks).
    #[error("{count} entries after the last signed head (entries {first_index}..{})", first_index + count)]
    UnsignedEntries {
        /// How many.
        count: u64,
        /// Index of the first one.
        first_index: u64,
    },
    /// Two public keys that must be the same differ.
    #[error("{what}: public key {found} is not the expected {expected}")]
    KeyMismatch {
        /// Which keys were compared.
        what: String,
        /// The expected key (hex).
        expected: String,
        /// The key found (hex).
        found: String,
    },
    /// No key to check a log with: no `log.pub` and none given.
    #[error("{}: no log.pub and no expected public key given; cannot check signatures", dir.display())]
    NoKey {
        /// The log directory.
        dir: PathBuf,
    },
    /// A key (private or public) cannot be read.
    #[error("{origin}: {reason}")]
    BadKey {
        /// Where the key comes from (file name, line).
        origin: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Ed25519 key generation failed (the system random source failed).
    #[error("cannot generate an Ed25519 key: the system random source failed")]
    KeyGeneration,
    /// Text that should be lowercase hex is not.
    #[error("{what}: {reason}")]
    BadText {
        /// What was being read.
        what: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An entry asked for is not in the log.
    #[error("{}: {what}", dir.display())]
    NotFound {
        /// The log directory.
        dir: PathBuf,
        /// What was searched.
        what: String,
    },
    /// An entry asked for is in the log but no signed head covers it yet.
    #[error("{}: entry {index} is not covered by a signed tree head (the last one signs {signed} entries)", dir.display())]
    NotSigned {
        /// The log directory.
        dir: PathBuf,
        /// The entry index.
        index: u64,
        /// Size of the latest signed head (0 without one).
        signed: u64,
    },
    /// A proof bundle is inconsistent in itself.
    #[error("proof bundle: {reason}")]
    BadBundle {
        /// What is wrong with it.
        reason: String,
    },
    /// A Merkle proof failed.
    #[error("{what}: {source}")]
    Proof {
        /// Which proof.
        what: String,
        /// Why it failed.
        #[source]
        source: ProofError,
    },
    /// A head the station stored earlier is not consistent with the head the
    /// server shows now: the server rewrote its log.
    #[error("the log was rewritten: the tree head of round {round} (size {tree_size}, root {}) that was received earlier {reason}", hex::encode(root))]
    LogRewritten {
        /// Round of the earlier head.
        round: u64,
        /// Its tree size.
        tree_size: u64,
        /// Its root.
        root: Hash,
        /// How the new log contradicts it.
        reason: String,
    },
    /// A proof bundle's head is older than a head the station already holds,
    /// so it cannot show consistency with it.
    #[error("the proof's tree head (round {bundle_round}, size {bundle_size}) is older than a head received earlier (round {known_round}, size {known_size}); ask for a fresh proof")]
    StaleBundle {
        /// Round of the bundle's head.
        bundle_round: u64,
        /// Size of the bundle's head.
        bundle_size: u64,
        /// Round of the newer known head.
        known_round: u64,
        /// Size of the newer known head.
        known_size: u64,
    },
    /// An earlier write failed half-way and the file could not be restored;
    /// the log refuses further writes.
    #[error("{}: an earlier write failed and could not be undone; reopen the log", dir.display())]
    Poisoned {
        /// The log directory.
        dir: PathBuf,
    },
    /// JSON serialization failed.
    #[error("cannot serialize {what}: {source}")]
    Serialize {
        /// What was serialized.
        what: &'static str,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
}

/// Shorthand for results of this crate.
pub type Result<T, E = AuditError> = std::result::Result<T, E>;

pub(crate) fn io_err<'a>(
    what: &'static str,
    path: &'a std::path::Path,
) -> impl FnOnce(io::Error) -> AuditError + 'a {
    move |source| AuditError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

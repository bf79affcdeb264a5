//! The append-only audit log on disk, its verifier, proof bundles for
//! stations, and the stations' store of tree heads.
//!
//! # Files of a log directory `DIR`
//!
//! - `DIR/entries.bin`: the entries, one record after another, each
//!   `u32 little-endian length || entry bytes` (the canonical JSON of an
//!   [`Entry`]). Entry `i` is leaf `i` of the Merkle tree; its leaf hash is
//!   `SHA-256(0x00 || entry bytes)`.
//! - `DIR/heads.jsonl`: the signed tree heads, one compact JSON object a line,
//!   `{"round":3,"tree_size":17,"root":"<64 hex>","timestamp_ms":1700000000000,"signature":"<128 hex>"}`,
//!   in order of tree size. The signature is Ed25519 over
//!   [`SignedTreeHead::message`]:
//!   `b"fedcrime audit tree head v1\0" || tree_size (u64 BE) || timestamp_ms (u64 BE) || round (u64 BE) || root (32 bytes)`.
//! - `DIR/log.pub`: the server's audit public key, 64 lowercase hex
//!   characters and a newline.
//!
//! # Durability
//!
//! [`AuditLog::append`] writes each record with one `write` call (no
//! user-space buffer) and returns its index; [`AuditLog::sign_head`] fsyncs
//! `entries.bin`, then appends the head and fsyncs `heads.jsonl`, so a
//! signed head never covers entries that are not on disk. A crash between
//! two heads leaves entries after the last head (reopened and signed by the
//! next head); a crash inside a write leaves a torn last record or line,
//! which reopening reports as an error (it is never silently dropped).
//!
//! One process at a time may write a log directory.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::entry::Entry;
use crate::error::{io_err, AuditError, Result, SignatureError};
use crate::hex;
use crate::keys::{PublicKey, Signature, SigningKey};
use crate::merkle::{self, Frontier, Hash};

/// The entries file of a log directory.
pub const ENTRIES_FILE: &str = "entries.bin";
/// The signed tree heads file of a log directory.
pub const HEADS_FILE: &str = "heads.jsonl";
/// The public key file of a log directory.
pub const PUBLIC_KEY_FILE: &str = "log.pub";
/// The usual name of a station's [`HeadStore`] in its state directory.
pub const HEAD_STORE_FILE: &str = "tree-heads.jsonl";
/// The domain separation prefix of the signed tree head message.
pub const TREE_HEAD_CONTEXT: &[u8] = b"fedcrime audit tree head v1\0";

/// A tree head the server signed: after round `round`, the log held
/// `tree_size` entries whose Merkle root is `root`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedTreeHead {
    /// The round the head closes.
    pub round: u64,
    /// The number of entries it covers (entries `0..tree_size`).
    pub tree_size: u64,
    /// The Merkle root of those entries (lowercase hex in JSON).
    #[serde(with = "hex::serde_array")]
    pub root: Hash,
    /// When it was signed, in milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// Ed25519 signature of [`message`](Self::message) (hex in JSON).
    pub signature: Signature,
}

impl SignedTreeHead {
    /// The bytes a tree head's signature covers:
    /// [`TREE_HEAD_CONTEXT`] `|| tree_size || timestamp_ms || round || root`,
    /// integers as 8 bytes big-endian (84 bytes in all).
    pub fn signed_bytes(round: u64, tree_size: u64, timestamp_ms: u64, root: &Hash) -> Vec<u8> {
        let mut m = Vec::with_capacity(TREE_HEAD_CONTEXT.len() + 24 + 32);
        m.extend_from_slice(TREE_HEAD_CONTEXT);
        m.extend_from_slice(&tree_size.to_be_bytes());
        m.extend_from_slice(&timestamp_ms.to_be_bytes());
        m.extend_from_slice(&round.to_be_bytes());
        m.extend_from_slice(root);
        m
    }

    /// The bytes this head's signature covers.
    pub fn message(&self) -> Vec<u8> {
        Self::signed_bytes(self.round, self.tree_size, self.timestamp_ms, &self.root)
    }

    /// Signs a tree head.
    pub fn sign(
        key: &SigningKey,
        round: u64,
        tree_size: u64,
        root: Hash,
        timestamp_ms: u64,
    ) -> Self {
        let signature = key.sign(&Self::signed_bytes(round, tree_size, timestamp_ms, &root));
        Self {
            round,
            tree_size,
            root,
            timestamp_ms,
            signature,
        }
    }

    /// Checks the signature under `key`.
    pub fn verify(&self, key: &PublicKey) -> Result<(), SignatureError> {
        key.verify(&self.message(), &self.signature)
    }

    /// The head as one line of a `.jsonl` file, newline included.
    pub fn to_json_line(&self) -> Result<String> {
        let mut s = serde_json::to_string(self).map_err(|source| AuditError::Serialize {
            what: "a signed tree head",
            source,
        })?;
        s.push('\n');
        Ok(s)
    }

    fn verify_at(&self, key: &PublicKey, origin: impl FnOnce() -> String) -> Result<()> {
        self.verify(key).map_err(|_| AuditError::BadHeadSignature {
            origin: origin(),
            round: self.round,
            tree_size: self.tree_size,
            key: key.to_text(),
        })
    }
}

// ---------------------------------------------------------------------------
// Reading the files.

/// One record of `entries.bin`.
#[derive(Debug)]
struct Record {
    /// Byte offset of its length prefix.
    offset: u64,
    /// The entry bytes: `data[start..end]`.
    start: usize,
    end: usize,
    entry: Entry,
    leaf: Hash,
}

/// Splits `data` (the bytes of `path`) into records, parsing every entry.
fn read_records(path: &Path, data: &[u8]) -> Result<Vec<Record>> {
    let mut records = Vec::new();
    let mut off = 0usize;
    while off < data.len() {
        let index = records.len() as u64;
        let available = data.len() - off;
        let torn = |needed: u64| AuditError::TornRecord {
            path: path.to_path_buf(),
            index,
            offset: off as u64,
            needed,
            available: available as u64,
        };
        let Some(prefix) = data.get(off..off + 4) else {
            return Err(torn(4));
        };
        let len = u32::from_le_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
        let needed = 4 + u64::from(len);
        if needed > available as u64 {
            return Err(torn(needed));
        }
        // `needed <= available`, so these fit in usize.
        let start = off + 4;
        let end = start + len as usize;
        let bytes = &data[start..end];
        let entry = Entry::from_bytes(bytes).map_err(|source| AuditError::BadEntry {
            path: path.to_path_buf(),
            index,
            offset: off as u64,
            source,
        })?;
        records.push(Record {
            offset: off as u64,
            start,
            end,
            entry,
            leaf: merkle::leaf_hash(bytes),
        });
        off = end;
    }
    Ok(records)
}

/// Parses the lines of a heads file; returns (1-based line, head) pairs.
/// A last line without a newline is torn and refused.
fn parse_heads(path: &Path, data: &[u8]) -> Result<Vec<(usize, SignedTreeHead)>> {
    let mut heads = Vec::new();
    let mut rest = data;
    let mut line_no = 0usize;
    while !rest.is_empty() {
        line_no += 1;
        let bad = |reason: String| AuditError::BadHeadLine {
            path: path.to_path_buf(),
            line: line_no,
            reason,
        };
        let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
            return Err(bad(
                "the last line is cut short (no newline at the end of the file)".into(),
            ));
        };
        let line = &rest[..nl];
        rest = &rest[nl + 1..];
        if line.is_empty() {
            return Err(bad("the line is empty".into()));
        }
        let head: SignedTreeHead = serde_json::from_slice(line).map_err(|e| bad(e.to_string()))?;
        heads.push((line_no, head));
    }
    Ok(heads)
}

/// Checks heads against the leaves: signatures under `key`, non-decreasing
/// sizes, sizes within the log, and each root equal to the root of the first
/// `tree_size` leaves (one pass with a [`Frontier`]).
fn check_heads(
    path: &Path,
    heads: &[(usize, SignedTreeHead)],
    leaves: &[Hash],
    key: &PublicKey,
) -> Result<()> {
    let mut frontier = Frontier::new();
    let mut previous = 0u64;
    for (line, head) in heads {
        let line = *line;
        head.verify_at(key, || format!("{} line {line}", path.display()))?;
        if head.tree_size < previous {
            return Err(AuditError::HeadOrder {
                path: path.to_path_buf(),
                line,
                round: head.round,
                tree_size: head.tree_size,
                previous,
            });
        }
        previous = head.tree_size;
        if head.tree_size > leaves.len() as u64 {
            return Err(AuditError::HeadBeyondEntries {
                path: path.to_path_buf(),
                line,
                round: head.round,
                tree_size: head.tree_size,
                entries: leaves.len() as u64,
            });
        }
        while frontier.size() < head.tree_size {
            // In range: checked just above.
            frontier.push(leaves[frontier.size() as usize]);
        }
        let computed = frontier.root();
        if computed != head.root {
            return Err(AuditError::HeadRootMismatch {
                path: path.to_path_buf(),
                line,
                round: head.round,
                tree_size: head.tree_size,
                signed: head.root,
                computed,
            });
        }
    }
    Ok(())
}

fn read_optional(path: &Path) -> Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(data) => Ok(Some(data)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(AuditError::Io {
            what: "read",
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn read_public_key(path: &Path) -> Result<Option<PublicKey>> {
    let Some(data) = read_optional(path)? else {
        return Ok(None);
    };
    let origin = path.display().to_string();
    let text = std::str::from_utf8(&data).map_err(|e| AuditError::BadKey {
        origin: origin.clone(),
        reason: format!("not UTF-8 text: {e}"),
    })?;
    PublicKey::from_text(text, &origin).map(Some)
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync the directory", dir))
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> Result<()> {
    Ok(())
}

/// A log read from disk and checked against its key.
struct Loaded {
    dir: PathBuf,
    key: PublicKey,
    data: Vec<u8>,
    records: Vec<Record>,
    heads: Vec<SignedTreeHead>,
}

/// Reads and checks a log directory; see [`verify_log`].
fn load_verified(dir: &Path, expected_key: Option<&PublicKey>) -> Result<Loaded> {
    let pub_path = dir.join(PUBLIC_KEY_FILE);
    let file_key = read_public_key(&pub_path)?;
    let key = match (file_key, expected_key) {
        (Some(f), Some(e)) if f != *e => {
            return Err(AuditError::KeyMismatch {
                what: format!("{} against the expected key", pub_path.display()),
                expected: e.to_text(),
                found: f.to_text(),
            })
        }
        (Some(k), _) | (None, Some(&k)) => k,
        (None, None) => {
            return Err(AuditError::NoKey {
                dir: dir.to_path_buf(),
            })
        }
    };
    let entries_path = dir.join(ENTRIES_FILE);
    let data = fs::read(&entries_path).map_err(io_err("read", &entries_path))?;
    let records = read_records(&entries_path, &data)?;
    let heads_path = dir.join(HEADS_FILE);
    let heads_data = read_optional(&heads_path)?.unwrap_or_default();
    let heads = parse_heads(&heads_path, &heads_data)?;
    let leaves: Vec<Hash> = records.iter().map(|r| r.leaf).collect();
    check_heads(&heads_path, &heads, &leaves, &key)?;
    Ok(Loaded {
        dir: dir.to_path_buf(),
        key,
        data,
        records,
        heads: heads.into_iter().map(|(_, h)| h).collect(),
    })
}

// ---------------------------------------------------------------------------
// The writer.

/// The server's audit log: an append-only file of entries, a Merkle tree
/// over them kept as a [`Frontier`] (plus the leaf hashes, for proofs), and
/// signed tree heads.
#[derive(Debug)]
pub struct AuditLog {
    dir: PathBuf,
    key: SigningKey,
    public: PublicKey,
    entries: File,
    heads_file: File,
    frontier: Frontier,
    leaves: Vec<Hash>,
    heads: Vec<SignedTreeHead>,
    /// Byte length of `entries.bin`.
    entries_len: u64,
    /// Byte length of `heads.jsonl`.
    heads_len: u64,
    /// A failed write could not be undone.
    poisoned: bool,
}

impl AuditLog {
    /// Opens the log in `dir`, creating the directory and its files if
    /// needed, to be written with `key`.
    ///
    /// An existing log is read back whole and checked: every record parses
    /// as an [`Entry`], every head is signed by `key` and signs the root of
    /// the entries it covers, `log.pub` (if present) is `key`'s public key.
    /// A torn last record or line (a crash inside a write) is an error
    /// naming the entry and byte offset (or line). Entries after the last
    /// head are kept; the next [`sign_head`](Self::sign_head) covers them.
    pub fn open_or_create(dir: impl AsRef<Path>, key: SigningKey) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(&dir).map_err(io_err("create the directory", &dir))?;
        let public = key.public_key();
        let mut created = false;

        let pub_path = dir.join(PUBLIC_KEY_FILE);
        let has_pub = match read_public_key(&pub_path)? {
            Some(found) if found != public => {
                return Err(AuditError::KeyMismatch {
                    what: format!("{} against the signing key given", pub_path.display()),
                    expected: public.to_text(),
                    found: found.to_text(),
                })
            }
            Some(_) => true,
            None => false,
        };

        let open = |path: &Path, created: &mut bool| -> Result<(File, Vec<u8>)> {
            *created |= !path.exists();
            let mut f = OpenOptions::new()
                .read(true)
                .append(true)
                .create(true)
                .open(path)
                .map_err(io_err("open", path))?;
            let mut data = Vec::new();
            f.read_to_end(&mut data).map_err(io_err("read", path))?;
            Ok((f, data))
        };
        let entries_path = dir.join(ENTRIES_FILE);
        let (entries, data) = open(&entries_path, &mut created)?;
        let records = read_records(&entries_path, &data)?;
        let leaves: Vec<Hash> = records.iter().map(|r| r.leaf).collect();

        let heads_path = dir.join(HEADS_FILE);
        let (heads_file, heads_data) = open(&heads_path, &mut created)?;
        let heads = parse_heads(&heads_path, &heads_data)?;
        check_heads(&heads_path, &heads, &leaves, &public)?;

        // Written only once the existing files are known to be this key's.
        if !has_pub {
            let mut f = File::create(&pub_path).map_err(io_err("create", &pub_path))?;
            f.write_all(format!("{}\n", public.to_text()).as_bytes())
                .and_then(|()| f.sync_all())
                .map_err(io_err("write", &pub_path))?;
            created = true;
        }
        if created {
            sync_dir(&dir)?;
        }
        Ok(Self {
            frontier: Frontier::from_leaves(&leaves),
            entries_len: data.len() as u64,
            heads_len: heads_data.len() as u64,
            heads: heads.into_iter().map(|(_, h)| h).collect(),
            leaves,
            dir,
            key,
            public,
            entries,
            heads_file,
            poisoned: false,
        })
    }

    fn check_poisoned(&self) -> Result<()> {
        if self.poisoned {
            return Err(AuditError::Poisoned {
                dir: self.dir.clone(),
            });
        }
        Ok(())
    }

    /// Appends an entry and returns its index. The record is written (not
    /// yet fsynced: [`sign_head`](Self::sign_head) does that) before this
    /// returns; if the write fails, the file is cut back to its old length.
    pub fn append(&mut self, entry: &Entry) -> Result<u64> {
        self.check_poisoned()?;
        let bytes = entry.to_bytes()?;
        let len = u32::try_from(bytes.len())
            .map_err(|_| AuditError::EntryTooLarge { len: bytes.len() })?;
        let mut record = Vec::with_capacity(4 + bytes.len());
        record.extend_from_slice(&len.to_le_bytes());
        record.extend_from_slice(&bytes);
        let path = self.dir.join(ENTRIES_FILE);
        if let Err(source) = self.entries.write_all(&record) {
            if self.entries.set_len(self.entries_len).is_err() {
                self.poisoned = true;
            }
            return Err(AuditError::Io {
                what: "append to",
                path,
                source,
            });
        }
        self.entries_len += record.len() as u64;
        let leaf = merkle::leaf_hash(&bytes);
        self.frontier.push(leaf);
        self.leaves.push(leaf);
        Ok(self.leaves.len() as u64 - 1)
    }

    /// The consistency proof from the head signed before the latest one to
    /// the latest (what the server sends stations with each new head, so
    /// they check at once that the log only grew); `None` before a second
    /// head.
    pub fn latest_consistency(&self) -> Result<Option<ConsistencyStep>> {
        let [.., before, latest] = self.heads.as_slice() else {
            return Ok(None);
        };
        let leaves = &self.leaves[..latest.tree_size as usize];
        let proof =
            merkle::consistency_proof(before.tree_size, leaves).map_err(|e| AuditError::Proof {
                what: format!(
                    "consistency from size {} to {}",
                    before.tree_size, latest.tree_size
                ),
                source: e,
            })?;
        Ok(Some(ConsistencyStep {
            from_size: before.tree_size,
            from_root: before.root,
            proof,
        }))
    }

    /// Signs the current tree (all entries so far) as the head of `round`,
    /// appends it to `heads.jsonl`, and returns it. Both files are fsynced
    /// (entries first) before this returns.
    pub fn sign_head(&mut self, round: u64, timestamp_ms: u64) -> Result<SignedTreeHead> {
        self.check_poisoned()?;
        let entries_path = self.dir.join(ENTRIES_FILE);
        self.entries
            .sync_data()
            .map_err(io_err("fsync", &entries_path))?;
        let head = SignedTreeHead::sign(
            &self.key,
            round,
            self.frontier.size(),
            self.frontier.root(),
            timestamp_ms,
        );
        let line = head.to_json_line()?;
        let heads_path = self.dir.join(HEADS_FILE);
        if let Err(source) = self
            .heads_file
            .write_all(line.as_bytes())
            .and_then(|()| self.heads_file.sync_data())
        {
            if self.heads_file.set_len(self.heads_len).is_err() {
                self.poisoned = true;
            }
            return Err(AuditError::Io {
                what: "append to",
                path: heads_path,
                source,
            });
        }
        self.heads_len += line.len() as u64;
        self.heads.push(head.clone());
        Ok(head)
    }

    /// The latest signed tree head.
    pub fn head(&self) -> Option<&SignedTreeHead> {
        self.heads.last()
    }

    /// All signed tree heads, oldest first.
    pub fn heads(&self) -> &[SignedTreeHead] {
        &self.heads
    }

    /// The number of entries.
    pub fn len(&self) -> u64 {
        self.frontier.size()
    }

    /// Whether the log has no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The Merkle root of all entries (signed or not).
    pub fn root(&self) -> Hash {
        self.frontier.root()
    }

    /// The leaf hashes of all entries.
    pub fn leaf_hashes(&self) -> &[Hash] {
        &self.leaves
    }

    /// The log directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The log's public key (the content of `log.pub`).
    pub fn public_key(&self) -> PublicKey {
        self.public
    }

    /// A proof bundle for the update entry of `station` in `round`, as
    /// [`prove`] makes it, from this log's state (the entries it wrote, read
    /// back up to its own length, so a concurrent reader's view does not
    /// matter).
    pub fn prove(&self, round: u64, station: &str) -> Result<ProofBundle> {
        let path = self.dir.join(ENTRIES_FILE);
        let mut data = fs::read(&path).map_err(io_err("read", &path))?;
        // Bytes written by this process only (the file cannot have shrunk
        // while it was open unless someone else truncated it).
        data.truncate(usize::try_from(self.entries_len).unwrap_or(usize::MAX));
        let records = read_records(&path, &data)?;
        if records
            .iter()
            .map(|r| r.leaf)
            .ne(self.leaves.iter().copied())
        {
            return Err(AuditError::BadBundle {
                reason: format!("{} changed on disk while the log was open", path.display()),
            });
        }
        let loaded = Loaded {
            dir: self.dir.clone(),
            key: self.public,
            data,
            records,
            heads: self.heads.clone(),
        };
        bundle_for_update(&loaded, round, station)
    }
}

// ---------------------------------------------------------------------------
// Verification of a whole log.

/// What [`verify_log`] found in a log that checks out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// The key the heads were checked with.
    pub public_key: PublicKey,
    /// Entries in `entries.bin`.
    pub entries: u64,
    /// Signed tree heads in `heads.jsonl`.
    pub heads: u64,
    /// The latest head.
    pub last_head: Option<SignedTreeHead>,
    /// Entries after the latest head, not yet signed (a run in progress, or
    /// a crash before the last head).
    pub unsigned_entries: u64,
    /// `run_started` entries.
    pub runs: u64,
    /// Distinct rounds with a `round_started` entry.
    pub rounds: u64,
    /// `round_started` entries (attempts included).
    pub round_attempts: u64,
    /// `aggregated` entries.
    pub aggregations: u64,
    /// `update_accepted` entries.
    pub updates_accepted: u64,
    /// `update_refused` entries.
    pub updates_refused: u64,
    /// `checkpoint` entries.
    pub checkpoints: u64,
}

impl VerifyReport {
    /// An error if entries follow the last signed head.
    pub fn ensure_all_signed(&self) -> Result<()> {
        if self.unsigned_entries > 0 {
            return Err(AuditError::UnsignedEntries {
                count: self.unsigned_entries,
                first_index: self.entries - self.unsigned_entries,
            });
        }
        Ok(())
    }
}

impl std::fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "audit log key {}", self.public_key)?;
        write!(
            f,
            "{} entries, {} signed tree heads",
            self.entries, self.heads
        )?;
        match &self.last_head {
            Some(h) => writeln!(
                f,
                " (latest: round {}, size {}, root {})",
                h.round,
                h.tree_size,
                hex::encode(&h.root)
            )?,
            None => writeln!(f)?,
        }
        writeln!(
            f,
            "{} runs, {} rounds ({} attempts), {} aggregations, {} checkpoints",
            self.runs, self.rounds, self.round_attempts, self.aggregations, self.checkpoints
        )?;
        writeln!(
            f,
            "{} updates accepted, {} refused",
            self.updates_accepted, self.updates_refused
        )?;
        if self.unsigned_entries > 0 {
            writeln!(
                f,
                "{} entries after the last signed head",
                self.unsigned_entries
            )?;
        }
        Ok(())
    }
}

/// Reads and checks the whole log in `dir`.
///
/// Checks that every record of `entries.bin` is whole and parses as an
/// [`Entry`]; that every head of `heads.jsonl` is signed by the log's key
/// (`log.pub`, or `expected_key`; when both are there they must be the
/// same); that heads are in order of tree size; and that each head's root is
/// the root of the first `tree_size` entries. So a changed, dropped, added
/// or reordered entry covered by a head, or an edited head, is an error
/// naming the entry (index, byte offset) or head (line, round, size).
///
/// Entries after the last head are not an error here; the report counts
/// them ([`VerifyReport::unsigned_entries`]); see [`verify_log_strict`]. A
/// missing `heads.jsonl` counts as no heads.
pub fn verify_log(dir: impl AsRef<Path>, expected_key: Option<&PublicKey>) -> Result<VerifyReport> {
    let loaded = load_verified(dir.as_ref(), expected_key)?;
    let mut report = VerifyReport {
        public_key: loaded.key,
        entries: loaded.records.len() as u64,
        heads: loaded.heads.len() as u64,
        last_head: loaded.heads.last().cloned(),
        unsigned_entries: loaded.records.len() as u64
            - loaded.heads.last().map_or(0, |h| h.tree_size),
        runs: 0,
        rounds: 0,
        round_attempts: 0,
        aggregations: 0,
        updates_accepted: 0,
        updates_refused: 0,
        checkpoints: 0,
    };
    let mut rounds = std::collections::BTreeSet::new();
    for r in &loaded.records {
        match &r.entry {
            Entry::RunStarted { .. } => report.runs += 1,
            Entry::RoundStarted { round, .. } => {
                report.round_attempts += 1;
                rounds.insert(*round);
            }
            Entry::UpdateAccepted { .. } => report.updates_accepted += 1,
            Entry::UpdateRefused { .. } => report.updates_refused += 1,
            Entry::Aggregated { .. } => report.aggregations += 1,
            Entry::Checkpoint { .. } => report.checkpoints += 1,
            Entry::RunFinished { .. } => {}
        }
    }
    report.rounds = rounds.len() as u64;
    Ok(report)
}

/// [`verify_log`], and an error if any entry follows the last signed head.
pub fn verify_log_strict(
    dir: impl AsRef<Path>,
    expected_key: Option<&PublicKey>,
) -> Result<VerifyReport> {
    let report = verify_log(dir, expected_key)?;
    report.ensure_all_signed()?;
    Ok(report)
}

// ---------------------------------------------------------------------------
// Proof bundles.

/// A consistency proof from an earlier tree size to the bundle's head.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsistencyStep {
    /// The earlier tree size (that of an earlier head).
    pub from_size: u64,
    /// The root the log has at that size (hex).
    #[serde(with = "hex::serde_array")]
    pub from_root: Hash,
    /// The consistency proof from `from_size` to the head's size (hex).
    #[serde(with = "hex::serde_hashes")]
    pub proof: Vec<Hash>,
}

/// What a station needs to check that the server logged its update, and
/// that the log it saw during the run was not rewritten since.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProofBundle {
    /// The entry (for reading).
    pub entry: Entry,
    /// The entry's exact bytes as logged (what the leaf hash covers).
    pub entry_json: String,
    /// The entry's index (its leaf index).
    pub index: u64,
    /// The latest signed tree head.
    pub head: SignedTreeHead,
    /// The inclusion proof of the entry under `head` (hex).
    #[serde(with = "hex::serde_hashes")]
    pub audit_path: Vec<Hash>,
    /// Consistency proofs from the size of every earlier head to `head`.
    pub consistency: Vec<ConsistencyStep>,
    /// The log's public key (informative: checks use the key the station
    /// already trusts).
    pub public_key: PublicKey,
}

impl ProofBundle {
    /// The bundle as pretty-printed JSON.
    pub fn to_json_pretty(&self) -> Result<String> {
        serde_json::to_string_pretty(self).map_err(|source| AuditError::Serialize {
            what: "a proof bundle",
            source,
        })
    }

    /// Reads a bundle from JSON; `origin` names the source in errors.
    pub fn from_json(text: &str, origin: &str) -> Result<Self> {
        serde_json::from_str(text).map_err(|e| AuditError::BadBundle {
            reason: format!("{origin}: {e}"),
        })
    }
}

/// A proof bundle for the update entry (accepted or refused) of `station`
/// in `round` in the log in `dir`, under the latest signed head.
///
/// The log is checked first as by [`verify_log`] (with the key of
/// `log.pub`). If the station has several update entries in the round (a
/// retried round), the last one is proved. The entry must be covered by
/// the latest head.
pub fn prove(dir: impl AsRef<Path>, round: u64, station: &str) -> Result<ProofBundle> {
    let loaded = load_verified(dir.as_ref(), None)?;
    bundle_for_update(&loaded, round, station)
}

/// A proof bundle for entry `index` of the log in `dir` (any kind of
/// entry), under the latest signed head; the log is checked first.
pub fn prove_index(dir: impl AsRef<Path>, index: u64) -> Result<ProofBundle> {
    let loaded = load_verified(dir.as_ref(), None)?;
    if index >= loaded.records.len() as u64 {
        return Err(AuditError::NotFound {
            dir: loaded.dir.clone(),
            what: format!(
                "no entry {index}: the log holds {} entries",
                loaded.records.len()
            ),
        });
    }
    bundle_for_index(&loaded, index as usize)
}

fn bundle_for_update(loaded: &Loaded, round: u64, station: &str) -> Result<ProofBundle> {
    let found = loaded.records.iter().rposition(|r| {
        matches!(&r.entry,
            Entry::UpdateAccepted { round: r2, station: s, .. }
            | Entry::UpdateRefused { round: r2, station: s, .. }
            if *r2 == round && s == station)
    });
    let Some(index) = found else {
        return Err(AuditError::NotFound {
            dir: loaded.dir.clone(),
            what: format!("no update entry of station {station:?} in round {round}"),
        });
    };
    bundle_for_index(loaded, index)
}

fn bundle_for_index(loaded: &Loaded, index: usize) -> Result<ProofBundle> {
    let signed = loaded.heads.last().map_or(0, |h| h.tree_size);
    let not_signed = || AuditError::NotSigned {
        dir: loaded.dir.clone(),
        index: index as u64,
        signed,
    };
    let Some(head) = loaded.heads.last() else {
        return Err(not_signed());
    };
    if index as u64 >= head.tree_size {
        return Err(not_signed());
    }
    // check_heads made sure tree_size <= records.
    let leaves: Vec<Hash> = loaded.records[..head.tree_size as usize]
        .iter()
        .map(|r| r.leaf)
        .collect();
    let proof_err = |what: String| move |source| AuditError::Proof { what, source };
    let audit_path = merkle::inclusion_proof(index as u64, &leaves)
        .map_err(proof_err(format!("inclusion proof of entry {index}")))?;
    let mut consistency = Vec::new();
    let mut last_size = None;
    for h in &loaded.heads {
        let size = h.tree_size;
        if size == 0 || size >= head.tree_size || last_size == Some(size) {
            continue;
        }
        last_size = Some(size);
        let proof = merkle::consistency_proof(size, &leaves).map_err(proof_err(format!(
            "consistency proof from size {size} to {}",
            head.tree_size
        )))?;
        consistency.push(ConsistencyStep {
            from_size: size,
            from_root: merkle::root(&leaves[..size as usize]),
            proof,
        });
    }
    let record = &loaded.records[index];
    let entry_json = std::str::from_utf8(&loaded.data[record.start..record.end])
        .map_err(|e| AuditError::BadText {
            what: format!("entry {index} at byte offset {}", record.offset),
            reason: format!("not UTF-8: {e}"),
        })?
        .to_string();
    Ok(ProofBundle {
        entry: record.entry.clone(),
        entry_json,
        index: index as u64,
        head: head.clone(),
        audit_path,
        consistency,
        public_key: loaded.key,
    })
}

/// What [`check_proof`] verified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckReport {
    /// The entry's index.
    pub index: u64,
    /// The entry's kind (its `"type"`).
    pub kind: &'static str,
    /// The entry's round, if it has one.
    pub round: Option<u64>,
    /// The entry's station, if it has one.
    pub station: Option<String>,
    /// The round of the head the entry was proved under.
    pub head_round: u64,
    /// That head's tree size.
    pub tree_size: u64,
    /// How many earlier heads were shown consistent with it.
    pub known_heads: usize,
}

impl std::fmt::Display for CheckReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "entry {} ({}", self.index, self.kind)?;
        if let Some(r) = self.round {
            write!(f, ", round {r}")?;
        }
        if let Some(s) = &self.station {
            write!(f, ", station {s}")?;
        }
        write!(
            f,
            ") is in the log signed at round {} (size {}); {} earlier heads are consistent with it",
            self.head_round, self.tree_size, self.known_heads
        )
    }
}

/// Checks a proof bundle as a station does.
///
/// - The bundle's head is signed by `server_key` (the key the station
///   trusts; the bundle's own `public_key` must be the same).
/// - `entry_json` is the entry shown, and its leaf is at `index` in the tree
///   of the head (inclusion proof).
/// - Every head in `known_heads` (those the station stored during the run,
///   see [`HeadStore`]) is signed by `server_key` and is a prefix of the
///   bundle's head: the same root at the same size, or a consistency step of
///   the bundle from its size verifies. Otherwise the log was rewritten
///   ([`AuditError::LogRewritten`], naming the head's round and size).
pub fn check_proof(
    bundle: &ProofBundle,
    server_key: &PublicKey,
    known_heads: &[SignedTreeHead],
) -> Result<CheckReport> {
    if bundle.public_key != *server_key {
        return Err(AuditError::KeyMismatch {
            what: "the proof bundle's key against the server key".into(),
            expected: server_key.to_text(),
            found: bundle.public_key.to_text(),
        });
    }
    let head = &bundle.head;
    head.verify_at(server_key, || "proof bundle head".into())?;
    let entry =
        Entry::from_bytes(bundle.entry_json.as_bytes()).map_err(|e| AuditError::BadBundle {
            reason: format!("entry_json is not an entry: {e}"),
        })?;
    if entry != bundle.entry {
        return Err(AuditError::BadBundle {
            reason: "entry and entry_json are different entries".into(),
        });
    }
    let leaf = merkle::leaf_hash(bundle.entry_json.as_bytes());
    merkle::verify_inclusion(
        &leaf,
        bundle.index,
        head.tree_size,
        &bundle.audit_path,
        &head.root,
    )
    .map_err(|source| AuditError::Proof {
        what: format!(
            "inclusion of entry {} in the tree head of round {} (size {})",
            bundle.index, head.round, head.tree_size
        ),
        source,
    })?;
    for (i, known) in known_heads.iter().enumerate() {
        known.verify_at(server_key, || format!("known tree head {}", i + 1))?;
        let rewritten = |reason: String| AuditError::LogRewritten {
            round: known.round,
            tree_size: known.tree_size,
            root: known.root,
            reason,
        };
        if known.tree_size > head.tree_size {
            return Err(AuditError::StaleBundle {
                bundle_round: head.round,
                bundle_size: head.tree_size,
                known_round: known.round,
                known_size: known.tree_size,
            });
        }
        if known.tree_size == head.tree_size {
            if known.root != head.root {
                return Err(rewritten(format!(
                    "has the size of the proof's head (round {}) but the log now has root {}",
                    head.round,
                    hex::encode(&head.root)
                )));
            }
            continue;
        }
        if known.tree_size == 0 {
            if known.root != merkle::empty_root() {
                return Err(rewritten(
                    "signs an empty tree with a root that is not the empty tree's".into(),
                ));
            }
            continue;
        }
        let Some(step) = bundle
            .consistency
            .iter()
            .find(|s| s.from_size == known.tree_size)
        else {
            return Err(AuditError::BadBundle {
                reason: format!(
                    "no consistency proof from size {} (the head of round {}) to size {}",
                    known.tree_size, known.round, head.tree_size
                ),
            });
        };
        merkle::verify_consistency(
            known.tree_size,
            head.tree_size,
            &known.root,
            &head.root,
            &step.proof,
        )
        .map_err(|e| {
            let now = if step.from_root != known.root {
                format!(
                    " (the log now has root {} at that size)",
                    hex::encode(&step.from_root)
                )
            } else {
                String::new()
            };
            rewritten(format!(
                "is not a prefix of the proof's head (round {}, size {}){now}: {e}",
                head.round, head.tree_size
            ))
        })?;
    }
    Ok(CheckReport {
        index: bundle.index,
        kind: entry.kind(),
        round: entry.round(),
        station: entry.station().map(str::to_string),
        head_round: head.round,
        tree_size: head.tree_size,
        known_heads: known_heads.len(),
    })
}

// ---------------------------------------------------------------------------
// A station's store of the heads it received.

/// The tree heads a station received from the server during a run, kept in
/// an append-only `.jsonl` file (one [`SignedTreeHead`] a line, the format of
/// `heads.jsonl`), so that a later [`ProofBundle`] can be checked against
/// them with [`check_proof`].
///
/// One store holds the heads of one log (one server key); a station that
/// joins several servers' runs keeps one store for each.
#[derive(Debug)]
pub struct HeadStore {
    path: PathBuf,
    file: File,
    len: u64,
    heads: Vec<SignedTreeHead>,
}

impl HeadStore {
    /// Opens the store at `path` (its directory must exist), creating an
    /// empty one if there is none. Its lines are parsed and must be in order
    /// of tree size; a torn last line is an error naming it.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(io_err("open", &path))?;
        let mut data = Vec::new();
        file.read_to_end(&mut data).map_err(io_err("read", &path))?;
        let parsed = parse_heads(&path, &data)?;
        let mut previous = 0u64;
        for (line, head) in &parsed {
            if head.tree_size < previous {
                return Err(AuditError::HeadOrder {
                    path: path.clone(),
                    line: *line,
                    round: head.round,
                    tree_size: head.tree_size,
                    previous,
                });
            }
            previous = head.tree_size;
        }
        Ok(Self {
            path,
            file,
            len: data.len() as u64,
            heads: parsed.into_iter().map(|(_, h)| h).collect(),
        })
    }

    /// Stores a head received from the server, after checking it: its
    /// signature under `server_key`, and against the latest stored head a
    /// tree size no smaller and, at the same size, the same root (anything
    /// else means the server rewrote its log: [`AuditError::LogRewritten`]).
    ///
    /// Returns `false` if the head is the one stored last (received twice),
    /// which is not written again. The line is fsynced before this returns.
    pub fn record(&mut self, head: &SignedTreeHead, server_key: &PublicKey) -> Result<bool> {
        head.verify_at(server_key, || "received tree head".into())?;
        if let Some(last) = self.heads.last() {
            let rewritten = |reason: String| AuditError::LogRewritten {
                round: last.round,
                tree_size: last.tree_size,
                root: last.root,
                reason,
            };
            if head.tree_size < last.tree_size {
                return Err(rewritten(format!(
                    "is larger than the new head of round {} (size {}): the log shrank",
                    head.round, head.tree_size
                )));
            }
            if head.tree_size == last.tree_size && head.root != last.root {
                return Err(rewritten(format!(
                    "has the size of the new head of round {} but the new root is {}",
                    head.round,
                    hex::encode(&head.root)
                )));
            }
            if head == last {
                return Ok(false);
            }
        }
        let line = head.to_json_line()?;
        if let Err(source) = self
            .file
            .write_all(line.as_bytes())
            .and_then(|()| self.file.sync_data())
        {
            // Best effort: cut a partly written line; reopening reports one
            // that stays.
            let _ = self.file.set_len(self.len);
            return Err(AuditError::Io {
                what: "append to",
                path: self.path.clone(),
                source,
            });
        }
        self.len += line.len() as u64;
        self.heads.push(head.clone());
        Ok(true)
    }

    /// [`HeadStore::record`], first checking the server's consistency proof
    /// `step` from the latest stored head to `head` when it starts there
    /// (the head the server signed before this one): a log whose new head
    /// does not extend the tree the station saw is
    /// [`AuditError::LogRewritten`], caught as soon as the head arrives.
    /// Without a step, or one from another size (the station missed
    /// rounds), only [`HeadStore::record`]'s checks apply; `check_proof`
    /// covers the rest later. Returns whether the step was checked, and
    /// whether the head was stored.
    pub fn record_checked(
        &mut self,
        head: &SignedTreeHead,
        server_key: &PublicKey,
        step: Option<&ConsistencyStep>,
    ) -> Result<(bool, bool)> {
        head.verify_at(server_key, || "received tree head".into())?;
        let mut checked = false;
        if let (Some(last), Some(step)) = (self.heads.last(), step) {
            if step.from_size == last.tree_size && last.tree_size < head.tree_size {
                let rewritten = |reason: String| AuditError::LogRewritten {
                    round: last.round,
                    tree_size: last.tree_size,
                    root: last.root,
                    reason,
                };
                if step.from_root != last.root {
                    return Err(rewritten(format!(
                        "is not the root the server now claims at that size ({}), in the \
                         proof sent with round {}'s head",
                        hex::encode(&step.from_root),
                        head.round
                    )));
                }
                merkle::verify_consistency(
                    last.tree_size,
                    head.tree_size,
                    &last.root,
                    &head.root,
                    &step.proof,
                )
                .map_err(|e| {
                    rewritten(format!(
                        "is not a prefix of the tree of round {}'s head (size {}): {e}",
                        head.round, head.tree_size
                    ))
                })?;
                checked = true;
            }
        }
        let stored = self.record(head, server_key)?;
        Ok((checked, stored))
    }

    /// The stored heads, oldest first.
    pub fn heads(&self) -> &[SignedTreeHead] {
        &self.heads
    }

    /// The latest stored head.
    pub fn latest(&self) -> Option<&SignedTreeHead> {
        self.heads.last()
    }

    /// The store's file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::sha256_hex;

    fn key_pem() -> String {
        SigningKey::generate().unwrap().to_pkcs8_pem()
    }

    fn key(pem: &str) -> SigningKey {
        SigningKey::from_pkcs8_pem(pem, "test key").unwrap()
    }

    /// Logs one round: start, one update per station (the last refused when
    /// `refuse_last`), aggregation; then signs the head.
    fn log_round(log: &mut AuditLog, round: u64, stations: &[&str], refuse_last: bool) {
        let names: Vec<String> = stations.iter().map(|s| s.to_string()).collect();
        log.append(&Entry::RoundStarted {
            round,
            attempt: 1,
            global_sha256: sha256_hex(format!("global {round}").as_bytes()),
            stations: names.clone(),
        })
        .unwrap();
        for (i, s) in stations.iter().enumerate() {
            let update_sha256 = sha256_hex(format!("{s} {round}").as_bytes());
            if refuse_last && i + 1 == stations.len() {
                log.append(&Entry::UpdateRefused {
                    round,
                    station: s.to_string(),
                    reason: "norm over bound".into(),
                    update_sha256: Some(update_sha256),
                    signature: None,
                })
                .unwrap();
            } else {
                log.append(&Entry::UpdateAccepted {
                    round,
                    station: s.to_string(),
                    update_sha256,
                    num_examples: 100 + round,
                    signature: None,
                })
                .unwrap();
            }
        }
        log.append(&Entry::Aggregated {
            round,
            model_sha256: sha256_hex(format!("model {round}").as_bytes()),
            stations: names,
            note: None,
        })
        .unwrap();
        log.sign_head(round, 1_700_000_000_000 + round).unwrap();
    }

    /// A log with a run start and `rounds` rounds, every entry signed.
    fn build_log(dir: &Path, pem: &str, rounds: u64, stations: &[&str]) -> AuditLog {
        let mut log = AuditLog::open_or_create(dir, key(pem)).unwrap();
        log.append(&Entry::RunStarted {
            run_id: "run-1".into(),
            strategy: "fedavg".into(),
            settings: serde_json::json!({"rounds": rounds}),
            global_sha256: sha256_hex(b"global 0"),
        })
        .unwrap();
        for round in 1..=rounds {
            log_round(&mut log, round, stations, true);
        }
        log
    }

    /// The byte ranges (prefix included) of the records of entries.bin.
    fn record_ranges(data: &[u8]) -> Vec<std::ops::Range<usize>> {
        read_records(Path::new("x"), data)
            .unwrap()
            .iter()
            .map(|r| r.offset as usize..r.end)
            .collect()
    }

    #[test]
    fn a_log_of_a_few_rounds_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let pem = key_pem();
        let log = build_log(dir.path(), &pem, 3, &["a", "b", "c"]);
        let pk = log.public_key();
        assert_eq!(log.len(), 1 + 3 * 5);
        let head = log.head().unwrap().clone();
        assert_eq!((head.round, head.tree_size), (3, 16));
        assert_eq!(head.root, merkle::root(log.leaf_hashes()));
        drop(log);

        let report = verify_log(dir.path(), None).unwrap();
        assert_eq!(report.entries, 16);
        assert_eq!(report.heads, 3);
        assert_eq!(report.rounds, 3);
        assert_eq!(report.updates_accepted, 6);
        assert_eq!(report.updates_refused, 3);
        assert_eq!(report.aggregations, 3);
        assert_eq!(report.unsigned_entries, 0);
        assert_eq!(report.last_head, Some(head.clone()));
        assert!(report.to_string().contains("6 updates accepted, 3 refused"));
        verify_log_strict(dir.path(), Some(&pk)).unwrap();

        // The heads file holds one compact line per head.
        let heads = fs::read_to_string(dir.path().join(HEADS_FILE)).unwrap();
        let last = heads.lines().last().unwrap();
        assert!(
            last.starts_with(r#"{"round":3,"tree_size":16,"root":""#),
            "{last}"
        );
        assert_eq!(
            fs::read_to_string(dir.path().join(PUBLIC_KEY_FILE)).unwrap(),
            format!("{}\n", pk.to_text())
        );

        // Another expected key is refused, and so is a log without any key.
        let other = SigningKey::generate().unwrap().public_key();
        let e = verify_log(dir.path(), Some(&other)).unwrap_err();
        assert!(matches!(e, AuditError::KeyMismatch { .. }), "{e}");
        fs::remove_file(dir.path().join(PUBLIC_KEY_FILE)).unwrap();
        assert!(matches!(
            verify_log(dir.path(), None).unwrap_err(),
            AuditError::NoKey { .. }
        ));
        verify_log(dir.path(), Some(&pk)).unwrap();
        let e = verify_log(dir.path(), Some(&other)).unwrap_err();
        assert!(matches!(e, AuditError::BadHeadSignature { .. }), "{e}");
    }

    #[test]
    fn reopening_continues_the_tree() {
        let dir = tempfile::tempdir().unwrap();
        let pem = key_pem();
        let log = build_log(dir.path(), &pem, 2, &["a", "b"]);
        let (len, root) = (log.len(), log.root());
        drop(log);
        let mut log = AuditLog::open_or_create(dir.path(), key(&pem)).unwrap();
        assert_eq!((log.len(), log.root()), (len, root));
        assert_eq!(log.heads().len(), 2);
        log_round(&mut log, 3, &["a", "b"], false);
        // An entry after the last head: fine when reopening, reported by
        // verify_log, an error in strict mode.
        log.append(&Entry::RunFinished {
            outcome: "completed".into(),
        })
        .unwrap();
        let leaves = log.leaf_hashes().to_vec();
        drop(log);
        let report = verify_log(dir.path(), None).unwrap();
        assert_eq!((report.entries, report.heads), (14, 3));
        assert_eq!(report.unsigned_entries, 1);
        assert!(report
            .to_string()
            .contains("1 entries after the last signed head"));
        let e = verify_log_strict(dir.path(), None).unwrap_err();
        assert!(
            matches!(
                e,
                AuditError::UnsignedEntries {
                    count: 1,
                    first_index: 13
                }
            ),
            "{e}"
        );
        let mut log = AuditLog::open_or_create(dir.path(), key(&pem)).unwrap();
        assert_eq!(log.leaf_hashes(), &leaves[..]);
        log.sign_head(3, 1).unwrap();
        drop(log);
        verify_log_strict(dir.path(), None).unwrap();

        // Another key cannot open it.
        let e = AuditLog::open_or_create(dir.path(), key(&key_pem())).unwrap_err();
        assert!(matches!(e, AuditError::KeyMismatch { .. }), "{e}");
        // Nor without log.pub (whose absence it does not fill in then).
        let pub_path = dir.path().join(PUBLIC_KEY_FILE);
        fs::remove_file(&pub_path).unwrap();
        let e = AuditLog::open_or_create(dir.path(), key(&key_pem())).unwrap_err();
        assert!(matches!(e, AuditError::BadHeadSignature { .. }), "{e}");
        assert!(!pub_path.exists());
        drop(AuditLog::open_or_create(dir.path(), key(&pem)).unwrap());
        assert!(pub_path.exists());
    }

    #[test]
    fn a_torn_last_record_or_line_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let pem = key_pem();
        drop(build_log(dir.path(), &pem, 1, &["a"]));
        let path = dir.path().join(ENTRIES_FILE);
        let data = fs::read(&path).unwrap();
        let ranges = record_ranges(&data);
        let last = ranges.last().unwrap().clone();
        for cut in [1, 4, last.len() - 2, last.len() - 1] {
            fs::write(&path, &data[..data.len() - cut]).unwrap();
            let e = AuditLog::open_or_create(dir.path(), key(&pem)).unwrap_err();
            match &e {
                AuditError::TornRecord { index, offset, .. } => {
                    assert_eq!(
                        (*index, *offset),
                        (ranges.len() as u64 - 1, last.start as u64)
                    )
                }
                other => panic!("cut {cut}: {other}"),
            }
            assert!(e.to_string().contains("is torn"), "{e}");
            assert!(verify_log(dir.path(), None).is_err());
        }
        fs::write(&path, &data).unwrap();
        let heads = dir.path().join(HEADS_FILE);
        let text = fs::read(&heads).unwrap();
        fs::write(&heads, &text[..text.len() - 1]).unwrap();
        let e = AuditLog::open_or_create(dir.path(), key(&pem)).unwrap_err();
        assert!(matches!(e, AuditError::BadHeadLine { line: 1, .. }), "{e}");
    }

    #[test]
    fn every_flipped_byte_of_entries_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        drop(build_log(dir.path(), &key_pem(), 2, &["a", "b"]));
        let path = dir.path().join(ENTRIES_FILE);
        let data = fs::read(&path).unwrap();
        assert!(data.len() > 500);
        let mut copy = data.clone();
        for pos in 0..data.len() {
            for mask in [0x01u8, 0x80] {
                copy[pos] ^= mask;
                fs::write(&path, &copy).unwrap();
                copy[pos] ^= mask;
                assert!(
                    verify_log(dir.path(), None).is_err(),
                    "byte {pos} ^ {mask:#04x} not detected"
                );
            }
        }
        fs::write(&path, &data).unwrap();
        verify_log(dir.path(), None).unwrap();
    }

    #[test]
    fn dropped_added_and_swapped_entries_are_detected() {
        let dir = tempfile::tempdir().unwrap();
        drop(build_log(dir.path(), &key_pem(), 2, &["a", "b"]));
        let path = dir.path().join(ENTRIES_FILE);
        let data = fs::read(&path).unwrap();
        let ranges = record_ranges(&data);
        let join = |order: &[usize]| -> Vec<u8> {
            order
                .iter()
                .flat_map(|&i| data[ranges[i].clone()].to_vec())
                .collect()
        };
        let n = ranges.len();
        for drop_i in 0..n {
            let order: Vec<usize> = (0..n).filter(|&i| i != drop_i).collect();
            fs::write(&path, join(&order)).unwrap();
            let e = verify_log(dir.path(), None).unwrap_err();
            assert!(
                matches!(
                    e,
                    AuditError::HeadRootMismatch { .. } | AuditError::HeadBeyondEntries { .. }
                ),
                "drop {drop_i}: {e}"
            );
        }
        for i in 0..n - 1 {
            let mut order: Vec<usize> = (0..n).collect();
            order.swap(i, i + 1);
            fs::write(&path, join(&order)).unwrap();
            let e = verify_log(dir.path(), None).unwrap_err();
            assert!(
                matches!(e, AuditError::HeadRootMismatch { .. }),
                "swap {i}: {e}"
            );
            assert!(e.to_string().contains("line "), "{e}");
        }
        // A duplicated entry inside the signed range.
        let mut order: Vec<usize> = (0..n).collect();
        order.insert(2, 1);
        fs::write(&path, join(&order)).unwrap();
        assert!(verify_log(dir.path(), None).is_err());
        fs::write(&path, &data).unwrap();
        verify_log(dir.path(), None).unwrap();
    }

    #[test]
    fn an_edited_head_line_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        drop(build_log(dir.path(), &key_pem(), 3, &["a", "b"]));
        let path = dir.path().join(HEADS_FILE);
        let text = fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let head: SignedTreeHead = serde_json::from_str(line).unwrap();
            let mut edits = Vec::new();
            let mut h = head.clone();
            h.round += 1;
            edits.push(h);
            let mut h = head.clone();
            h.timestamp_ms -= 1;
            edits.push(h);
            let mut h = head.clone();
            h.tree_size -= 1;
            edits.push(h);
            let mut h = head.clone();
            h.root[7] ^= 0x10;
            edits.push(h);
            let mut h = head.clone();
            h.signature.0[40] ^= 0x02;
            edits.push(h);
            for edited in edits {
                let mut new_lines = lines.clone();
                let edited_line = serde_json::to_string(&edited).unwrap();
                new_lines[i] = &edited_line;
                fs::write(&path, new_lines.join("\n") + "\n").unwrap();
                let e = verify_log(dir.path(), None).unwrap_err();
                match &e {
                    AuditError::BadHeadSignature { origin, .. } => {
                        assert!(origin.ends_with(&format!("line {}", i + 1)), "{e}")
                    }
                    other => panic!("line {i}: {other}"),
                }
            }
            // Text that is not a head.
            let mut new_lines = lines.clone();
            let garbled = line.replace("\"root\"", "\"rot\"");
            new_lines[i] = &garbled;
            fs::write(&path, new_lines.join("\n") + "\n").unwrap();
            let e = verify_log(dir.path(), None).unwrap_err();
            assert!(
                matches!(e, AuditError::BadHeadLine { line, .. } if line == i + 1),
                "{e}"
            );
        }
        // Heads out of order.
        let swapped = [lines[1], lines[0], lines[2]].join("\n") + "\n";
        fs::write(&path, swapped).unwrap();
        let e = verify_log(dir.path(), None).unwrap_err();
        assert!(matches!(e, AuditError::HeadOrder { line: 2, .. }), "{e}");
        fs::write(&path, &text).unwrap();
        verify_log(dir.path(), None).unwrap();
    }

    #[test]
    fn prove_and_check_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let station_dir = tempfile::tempdir().unwrap();
        let pem = key_pem();
        let mut log = AuditLog::open_or_create(dir.path(), key(&pem)).unwrap();
        let pk = log.public_key();
        let mut store = HeadStore::open(station_dir.path().join(HEAD_STORE_FILE)).unwrap();
        for round in 1..=4 {
            log_round(&mut log, round, &["a", "b", "c"], round % 2 == 0);
            // Station "a" receives each head.
            assert!(store.record(log.head().unwrap(), &pk).unwrap());
        }
        // Received twice: stored once.
        assert!(!store.record(log.head().unwrap(), &pk).unwrap());
        assert_eq!(store.heads().len(), 4);

        let bundle = prove(dir.path(), 2, "a").unwrap();
        assert_eq!(bundle, log.prove(2, "a").unwrap());
        assert_eq!(bundle.head.round, 4);
        assert_eq!(bundle.consistency.len(), 3);
        assert!(
            matches!(&bundle.entry, Entry::UpdateAccepted { round: 2, station, .. } if station == "a")
        );
        let json = bundle.to_json_pretty().unwrap();
        let back = ProofBundle::from_json(&json, "bundle.json").unwrap();
        assert_eq!(back, bundle);
        // The station checks it against the heads it stored (reopened).
        let store = HeadStore::open(station_dir.path().join(HEAD_STORE_FILE)).unwrap();
        let report = check_proof(&back, &pk, store.heads()).unwrap();
        assert_eq!(
            (report.index, report.round, report.known_heads),
            (bundle.index, Some(2), 4)
        );
        assert_eq!(report.station.as_deref(), Some("a"));
        assert!(report.to_string().contains("station a"));
        // A refused update is proved too.
        let refused = prove(dir.path(), 2, "c").unwrap();
        assert!(matches!(refused.entry, Entry::UpdateRefused { .. }));
        check_proof(&refused, &pk, store.heads()).unwrap();
        // Any entry by index.
        for i in 0..log.len() {
            check_proof(&prove_index(dir.path(), i).unwrap(), &pk, store.heads()).unwrap();
        }
        assert!(matches!(
            prove_index(dir.path(), log.len()).unwrap_err(),
            AuditError::NotFound { .. }
        ));
        assert!(matches!(
            prove(dir.path(), 2, "nobody").unwrap_err(),
            AuditError::NotFound { .. }
        ));

        // Tampered bundles.
        let other = SigningKey::generate().unwrap();
        let e = check_proof(&bundle, &other.public_key(), &[]).unwrap_err();
        assert!(matches!(e, AuditError::KeyMismatch { .. }), "{e}");
        let mut b = bundle.clone();
        b.public_key = other.public_key();
        let e = check_proof(&b, &other.public_key(), &[]).unwrap_err();
        assert!(matches!(e, AuditError::BadHeadSignature { .. }), "{e}");
        let mut b = bundle.clone();
        b.entry_json = b
            .entry_json
            .replace("\"num_examples\":102", "\"num_examples\":999");
        assert!(check_proof(&b, &pk, &[]).is_err());
        b.entry = Entry::from_bytes(b.entry_json.as_bytes()).unwrap();
        let e = check_proof(&b, &pk, &[]).unwrap_err();
        assert!(matches!(e, AuditError::Proof { .. }), "{e}");
        let mut b = bundle.clone();
        b.index += 1;
        assert!(matches!(
            check_proof(&b, &pk, &[]).unwrap_err(),
            AuditError::Proof { .. }
        ));
        let mut b = bundle.clone();
        b.audit_path[0][0] ^= 1;
        assert!(check_proof(&b, &pk, &[]).is_err());
        let mut b = bundle.clone();
        b.consistency[1].proof[0][0] ^= 1;
        let e = check_proof(&b, &pk, store.heads()).unwrap_err();
        assert!(
            matches!(e, AuditError::LogRewritten { round: 2, .. }),
            "{e}"
        );
        let mut b = bundle.clone();
        b.consistency.remove(0);
        let e = check_proof(&b, &pk, store.heads()).unwrap_err();
        assert!(matches!(e, AuditError::BadBundle { .. }), "{e}");

        // An entry not yet covered by a head.
        log_round(&mut log, 5, &["a"], false);
        log.append(&Entry::UpdateAccepted {
            round: 6,
            station: "a".into(),
            update_sha256: sha256_hex(b"a 6"),
            num_examples: 1,
            signature: None,
        })
        .unwrap();
        let e = log.prove(6, "a").unwrap_err();
        assert!(matches!(e, AuditError::NotSigned { .. }), "{e}");
        // The station holds a head newer than an old bundle's.
        let mut store2 = HeadStore::open(station_dir.path().join("b.jsonl")).unwrap();
        store2.record(log.head().unwrap(), &pk).unwrap();
        let e = check_proof(&bundle, &pk, store2.heads()).unwrap_err();
        assert!(matches!(e, AuditError::StaleBundle { .. }), "{e}");
        check_proof(&log.prove(2, "a").unwrap(), &pk, store2.heads()).unwrap();
    }

    #[test]
    fn check_proof_fails_when_the_log_was_rewritten() {
        let pem = key_pem();
        let station_dir = tempfile::tempdir().unwrap();
        let mut store = HeadStore::open(station_dir.path().join(HEAD_STORE_FILE)).unwrap();

        // Log A: the station stores the heads of rounds 1 and 2.
        let dir_a = tempfile::tempdir().unwrap();
        let mut a = AuditLog::open_or_create(dir_a.path(), key(&pem)).unwrap();
        let pk = a.public_key();
        log_round(&mut a, 1, &["a", "b"], false);
        store.record(a.head().unwrap(), &pk).unwrap();
        log_round(&mut a, 2, &["a", "b"], false);
        store.record(a.head().unwrap(), &pk).unwrap();

        // Log B, same key: round 1 rewritten (b's update now refused), then
        // rounds 2 and 3 as before.
        let dir_b = tempfile::tempdir().unwrap();
        let mut b = AuditLog::open_or_create(dir_b.path(), key(&pem)).unwrap();
        log_round(&mut b, 1, &["a", "b"], true);
        log_round(&mut b, 2, &["a", "b"], false);
        log_round(&mut b, 3, &["a", "b"], false);
        assert_eq!(b.heads()[1].tree_size, a.heads()[1].tree_size);
        drop(b);
        // Log B verifies on its own: only the station's heads expose it.
        verify_log_strict(dir_b.path(), Some(&pk)).unwrap();
        let bundle = prove(dir_b.path(), 3, "a").unwrap();
        check_proof(&bundle, &pk, &[]).unwrap();
        let e = check_proof(&bundle, &pk, store.heads()).unwrap_err();
        match &e {
            AuditError::LogRewritten {
                round, tree_size, ..
            } => assert_eq!((*round, *tree_size), (1, 4)),
            other => panic!("{other}"),
        }
        assert!(e.to_string().contains("round 1 (size 4"), "{e}");
        // Against the round 2 head alone (the same size in both logs).
        let e = check_proof(&bundle, &pk, &store.heads()[1..]).unwrap_err();
        assert!(
            matches!(
                e,
                AuditError::LogRewritten {
                    round: 2,
                    tree_size: 8,
                    ..
                }
            ),
            "{e}"
        );
        // A bundle whose head is the rewritten log's round 2 head, same size
        // as the stored one, another root.
        let b2 = {
            let dir_c = tempfile::tempdir().unwrap();
            let mut c = AuditLog::open_or_create(dir_c.path(), key(&pem)).unwrap();
            log_round(&mut c, 1, &["a", "b"], true);
            log_round(&mut c, 2, &["a", "b"], false);
            c.prove(2, "a").unwrap()
        };
        let e = check_proof(&b2, &pk, &store.heads()[1..]).unwrap_err();
        assert!(e.to_string().contains("the log now has root"), "{e}");

        // The station's store refuses the rewritten log's heads as they come.
        let e = store.record(&b2.head, &pk).unwrap_err();
        assert!(
            matches!(
                e,
                AuditError::LogRewritten {
                    round: 2,
                    tree_size: 8,
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn stations_check_each_new_head_against_the_last_they_kept() {
        let pem = key_pem();
        let station_dir = tempfile::tempdir().unwrap();
        let mut store = HeadStore::open(station_dir.path().join(HEAD_STORE_FILE)).unwrap();
        // An honest log: every round's head comes with the proof from the
        // head before, and each checks.
        let dir_a = tempfile::tempdir().unwrap();
        let mut a = AuditLog::open_or_create(dir_a.path(), key(&pem)).unwrap();
        let pk = a.public_key();
        assert_eq!(a.latest_consistency().unwrap(), None);
        log_round(&mut a, 1, &["a", "b"], false);
        assert_eq!(
            store.record_checked(a.head().unwrap(), &pk, None).unwrap(),
            (false, true)
        );
        for round in 2..=4 {
            log_round(&mut a, round, &["a", "b"], false);
            let step = a.latest_consistency().unwrap().unwrap();
            let got = store
                .record_checked(a.head().unwrap(), &pk, Some(&step))
                .unwrap();
            assert_eq!(got, (true, true), "round {round}");
        }
        // A server that rewrites round 1 and keeps growing: its new head
        // and an honest proof of *its* history do not extend what the
        // station kept (size 4 at round 1 ... size 16 at round 4).
        let dir_b = tempfile::tempdir().unwrap();
        let mut b = AuditLog::open_or_create(dir_b.path(), key(&pem)).unwrap();
        for round in 1..=5 {
            log_round(&mut b, round, &["a", "b"], round == 1);
        }
        let step = b.latest_consistency().unwrap().unwrap();
        assert_eq!(step.from_size, store.latest().unwrap().tree_size);
        let e = store
            .record_checked(b.head().unwrap(), &pk, Some(&step))
            .unwrap_err();
        assert!(
            matches!(e, AuditError::LogRewritten { round: 4, .. }),
            "{e}"
        );
        // A forged proof for the right roots fails the Merkle check too.
        let mut forged = step.clone();
        forged.from_root = store.latest().unwrap().root;
        let e = store
            .record_checked(b.head().unwrap(), &pk, Some(&forged))
            .unwrap_err();
        assert!(e.to_string().contains("is not a prefix"), "{e}");
        assert_eq!(
            store.heads().len(),
            4,
            "nothing of the rewritten log was kept"
        );
    }

    #[test]
    fn head_store_checks_what_it_records() {
        let dir = tempfile::tempdir().unwrap();
        let pem = key_pem();
        let mut log = AuditLog::open_or_create(dir.path(), key(&pem)).unwrap();
        let pk = log.public_key();
        log_round(&mut log, 1, &["a"], false);
        let h1 = log.head().unwrap().clone();
        log_round(&mut log, 2, &["a"], false);
        let h2 = log.head().unwrap().clone();
        // A round that added nothing: same size and root, another round.
        let h2b = log.sign_head(3, 5).unwrap();

        let station = tempfile::tempdir().unwrap();
        let path = station.path().join(HEAD_STORE_FILE);
        let mut store = HeadStore::open(&path).unwrap();
        assert!(store.heads().is_empty());
        store.record(&h1, &pk).unwrap();
        store.record(&h2, &pk).unwrap();
        assert!(store.record(&h2b, &pk).unwrap());
        // Smaller than the last one: the log shrank.
        let e = store.record(&h1, &pk).unwrap_err();
        assert!(
            matches!(e, AuditError::LogRewritten { round: 3, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("the log shrank"), "{e}");
        // Same size, another root (a forged head, signed by the same key).
        let forged = SignedTreeHead::sign(&key(&pem), 4, h2.tree_size, h1.root, 9);
        let e = store.record(&forged, &pk).unwrap_err();
        assert!(matches!(e, AuditError::LogRewritten { .. }), "{e}");
        // A bad signature.
        let mut bad = h2.clone();
        bad.round = 9;
        let e = store.record(&bad, &pk).unwrap_err();
        assert!(matches!(e, AuditError::BadHeadSignature { .. }), "{e}");
        let other = SigningKey::generate().unwrap().public_key();
        assert!(store.record(&h2, &other).is_err());
        assert_eq!(store.heads(), &[h1.clone(), h2.clone(), h2b.clone()]);

        // Reopened, it has the same heads; a torn line is reported.
        let store = HeadStore::open(&path).unwrap();
        assert_eq!(store.latest(), Some(&h2b));
        assert_eq!(store.heads().len(), 3);
        let text = fs::read(&path).unwrap();
        fs::write(&path, &text[..text.len() - 5]).unwrap();
        let e = HeadStore::open(&path).unwrap_err();
        assert!(matches!(e, AuditError::BadHeadLine { line: 3, .. }), "{e}");
    }

    #[test]
    fn signed_message_layout() {
        let root = [7u8; 32];
        let m = SignedTreeHead::signed_bytes(3, 17, 1000, &root);
        assert_eq!(m.len(), 28 + 24 + 32);
        assert_eq!(&m[..28], b"fedcrime audit tree head v1\0");
        assert_eq!(&m[28..36], &17u64.to_be_bytes());
        assert_eq!(&m[36..44], &1000u64.to_be_bytes());
        assert_eq!(&m[44..52], &3u64.to_be_bytes());
        assert_eq!(&m[52..], &root);
    }
}

//! Ed25519 keys (RFC 8032) through `ring`.
//!
//! - [`SigningKey`]: a private key, kept as its PKCS#8 v2 document (RFC 5958,
//!   the form `ring` generates) and stored as PEM with the label
//!   `PRIVATE KEY`. PKCS#8 v1 documents without the public key, as
//!   `openssl genpkey -algorithm ed25519` writes them, are read too (and
//!   written back as v2).
//! - [`PublicKey`]: 32 bytes, written as 64 lowercase hex characters (in
//!   `log.pub`, in proof bundles).
//! - [`Signature`]: 64 bytes, written as 128 lowercase hex characters.

use std::fmt;

use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use serde::{Deserialize, Serialize};

use crate::error::{AuditError, Result, SignatureError};
use crate::hex;

/// The PEM label of a PKCS#8 private key.
pub const PEM_LABEL: &str = "PRIVATE KEY";

/// The DER prefix of an Ed25519 PKCS#8 v2 document (`ring`'s template):
/// SEQUENCE, version 1, algorithm id1.3.101.112, OCTET STRING (OCTET STRING
/// seed). Followed by the 32-byte seed, [`V2_MIDDLE`] and the public key.
const V2_PREFIX: [u8; 16] = [
    0x30, 0x51, 0x02, 0x01, 0x01, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];
/// `[1] IMPLICIT BIT STRING` of 33 bytes (no unused bits) holding the public key.
const V2_MIDDLE: [u8; 3] = [0x81, 0x21, 0x00];
/// The DER prefix of an Ed25519 PKCS#8 v1 document (RFC 8410, version 0, no
/// public key), followed by the 32-byte seed.
const V1_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// An Ed25519 private key.
///
/// `Debug` shows the public key only.
pub struct SigningKey {
    pair: Ed25519KeyPair,
    pkcs8: Vec<u8>,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("public_key", &self.public_key())
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A fresh random key (from the operating system's random source).
    pub fn generate() -> Result<Self> {
        let rng = SystemRandom::new();
        let doc = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| AuditError::KeyGeneration)?;
        Self::from_pkcs8_der(doc.as_ref(), "a freshly generated key")
    }

    /// The key of an RFC 8032 32-byte secret (`seed`) and its public key;
    /// refused if they do not belong together.
    pub fn from_seed_and_public_key(seed: &[u8; 32], public: &PublicKey) -> Result<Self> {
        let mut doc = Vec::with_capacity(83);
        doc.extend_from_slice(&V2_PREFIX);
        doc.extend_from_slice(seed);
        doc.extend_from_slice(&V2_MIDDLE);
        doc.extend_from_slice(&public.0);
        Self::from_pkcs8_der(&doc, "a seed and public key")
    }

    /// Reads a DER PKCS#8 document (v2, or v1 without the public key).
    /// `origin` names the source in errors (a file name).
    pub fn from_pkcs8_der(der: &[u8], origin: &str) -> Result<Self> {
        let bad = |reason: String| AuditError::BadKey {
            origin: origin.to_string(),
            reason,
        };
        if der.len() == 48 && der[..16] == V1_PREFIX {
            // v1: derive the public key and keep a v2 document.
            let seed = &der[16..];
            let pair = Ed25519KeyPair::from_seed_unchecked(seed)
                .map_err(|e| bad(format!("not an Ed25519 PKCS#8 v1 key: {e}")))?;
            let mut doc = Vec::with_capacity(83);
            doc.extend_from_slice(&V2_PREFIX);
            doc.extend_from_slice(seed);
            doc.extend_from_slice(&V2_MIDDLE);
            doc.extend_from_slice(pair.public_key().as_ref());
            return Self::from_pkcs8_der(&doc, origin);
        }
        let pair = Ed25519KeyPair::from_pkcs8(der)
            .map_err(|e| bad(format!("not an Ed25519 PKCS#8 key: {e}")))?;
        Ok(Self {
            pair,
            pkcs8: der.to_vec(),
        })
    }

    /// Reads a PEM `PRIVATE KEY` (PKCS#8). `origin` names the source in
    /// errors (a file name); errors give the line.
    pub fn from_pkcs8_pem(text: &str, origin: &str) -> Result<Self> {
        let der = pem_decode(text, PEM_LABEL, origin)?;
        Self::from_pkcs8_der(&der, origin)
    }

    /// The PKCS#8 v2 document as PEM (`-----BEGIN PRIVATE KEY-----`, base64
    /// lines of 64 characters, trailing newline).
    pub fn to_pkcs8_pem(&self) -> String {
        pem_encode(&self.pkcs8, PEM_LABEL)
    }

    /// The PKCS#8 v2 document (DER).
    pub fn pkcs8_der(&self) -> &[u8] {
        &self.pkcs8
    }

    /// The public key.
    pub fn public_key(&self) -> PublicKey {
        let mut k = [0u8; 32];
        k.copy_from_slice(self.pair.public_key().as_ref());
        PublicKey(k)
    }

    /// Signs `msg` (Ed25519 is deterministic: same key and message, same
    /// signature).
    pub fn sign(&self, msg: &[u8]) -> Signature {
        let mut s = [0u8; 64];
        s.copy_from_slice(self.pair.sign(msg).as_ref());
        Signature(s)
    }
}

/// An Ed25519 public key; its text form is 64 lowercase hex characters.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PublicKey(#[serde(with = "hex::serde_array")] pub [u8; 32]);

impl PublicKey {
    /// The text form: 64 lowercase hex characters.
    pub fn to_text(&self) -> String {
        hex::encode(&self.0)
    }

    /// Reads the text form; surrounding white space (a trailing newline) is
    /// ignored. `origin` names the source in errors.
    pub fn from_text(text: &str, origin: &str) -> Result<Self> {
        hex::decode_array::<32>(text.trim())
            .map(PublicKey)
            .map_err(|reason| AuditError::BadKey {
                origin: origin.to_string(),
                reason: format!("not an Ed25519 public key: {reason}"),
            })
    }

    /// Checks that `sig` is this key's signature of `msg`.
    pub fn verify(&self, msg: &[u8], sig: &Signature) -> Result<(), SignatureError> {
        UnparsedPublicKey::new(&ED25519, &self.0)
            .verify(msg, &sig.0)
            .map_err(|_| SignatureError {
                key: self.to_text(),
            })
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_text())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_text())
    }
}

/// An Ed25519 signature; serialized as 128 lowercase hex characters.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature(#[serde(with = "hex::serde_array")] pub [u8; 64]);

impl Signature {
    /// The text form: 128 lowercase hex characters.
    pub fn to_text(&self) -> String {
        hex::encode(&self.0)
    }

    /// Reads the text form. `origin` names the source in errors.
    pub fn from_text(text: &str, origin: &str) -> Result<Self> {
        hex::decode_array::<64>(text.trim())
            .map(Signature)
            .map_err(|reason| AuditError::BadText {
                what: origin.to_string(),
                reason: format!("not an Ed25519 signature: {reason}"),
            })
    }
}

impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_text())
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({})", self.to_text())
    }
}

// ---------------------------------------------------------------------------
// PEM and base64 (RFC 7468 / RFC 4648 standard alphabet with padding).

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn base64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(B64[((n >> shift) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn b64_value(c: u8) -> Option<u32> {
    match c {
        b'A'..=b'Z' => Some(u32::from(c - b'A')),
        b'a'..=b'z' => Some(u32::from(c - b'a') + 26),
        b'0'..=b'9' => Some(u32::from(c - b'0') + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    }
}

/// Why base64 text does not decode: the position of the offending character
/// (if one is to blame) and a message.
type Base64Error = (Option<usize>, String);

/// Decodes base64 with padding.
fn base64_decode(text: &[u8]) -> std::result::Result<Vec<u8>, Base64Error> {
    if !text.len().is_multiple_of(4) {
        return Err((
            None,
            format!("{} base64 characters is not a multiple of 4", text.len()),
        ));
    }
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let quads = text.len() / 4;
    for (q, quad) in text.chunks_exact(4).enumerate() {
        let last = q + 1 == quads;
        let pad = quad.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            let pos = q * 4 + 4 - pad;
            return Err((Some(pos), format!("misplaced '=' at position {pos}")));
        }
        let mut n = 0u32;
        for (i, &c) in quad[..4 - pad].iter().enumerate() {
            let pos = q * 4 + i;
            let v = b64_value(c).ok_or_else(|| {
                (
                    Some(pos),
                    format!("character {:?} is not base64", char::from(c)),
                )
            })?;
            n |= v << (18 - 6 * i);
        }
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..3 - pad]);
    }
    Ok(out)
}

fn pem_encode(der: &[u8], label: &str) -> String {
    let b64 = base64_encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        // base64 output is ASCII.
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The DER bytes of the first `label` block of `text`. Text before the BEGIN
/// line and after the END line is ignored (RFC 7468 explanatory text).
fn pem_decode(text: &str, label: &str, origin: &str) -> Result<Vec<u8>> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let bad = |reason: String| AuditError::BadKey {
        origin: origin.to_string(),
        reason,
    };
    let mut lines = text.lines().enumerate();
    let mut found_begin = false;
    for (_, line) in lines.by_ref() {
        if line.trim() == begin {
            found_begin = true;
            break;
        }
    }
    if !found_begin {
        return Err(bad(format!("no \"{begin}\" line")));
    }
    let mut b64 = Vec::new();
    // (line number, position in `b64` where that line starts)
    let mut starts = Vec::new();
    for (i, line) in lines {
        let line = line.trim();
        if line == end {
            return base64_decode(&b64).map_err(|(pos, e)| {
                // Name the line of the offending character when there is one.
                match pos.and_then(|p| starts.iter().rev().find(|&&(_, s)| s <= p)) {
                    Some(&(ln, s)) => bad(format!(
                        "line {ln}, column {}: {e}",
                        pos.unwrap_or(s) - s + 1
                    )),
                    None => bad(format!("the base64 text is malformed: {e}")),
                }
            });
        }
        if line.starts_with("-----") {
            return Err(bad(format!(
                "line {}: expected base64 or \"{end}\", found {line:?}",
                i + 1
            )));
        }
        starts.push((i + 1, b64.len()));
        b64.extend_from_slice(line.as_bytes());
    }
    Err(bad(format!("no \"{end}\" line")))
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 8032 §7.1, TEST 1.
    const SECRET: &str = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";
    const PUBLIC: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";
    const SIGNATURE: &str = "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b";

    fn rfc8032_key() -> SigningKey {
        let seed = hex::decode_array::<32>(SECRET).unwrap();
        let public = PublicKey::from_text(PUBLIC, "test").unwrap();
        SigningKey::from_seed_and_public_key(&seed, &public).unwrap()
    }

    #[test]
    fn rfc8032_test_1() {
        let key = rfc8032_key();
        assert_eq!(key.public_key().to_text(), PUBLIC);
        let sig = key.sign(b"");
        assert_eq!(sig.to_text(), SIGNATURE);
        key.public_key().verify(b"", &sig).unwrap();
        assert!(key.public_key().verify(b"x", &sig).is_err());
        let parsed = Signature::from_text(SIGNATURE, "test").unwrap();
        assert_eq!(parsed, sig);
    }

    #[test]
    fn seed_and_wrong_public_key_is_refused() {
        let seed = hex::decode_array::<32>(SECRET).unwrap();
        let other = SigningKey::generate().unwrap().public_key();
        assert!(SigningKey::from_seed_and_public_key(&seed, &other).is_err());
    }

    #[test]
    fn pem_round_trip() {
        let key = SigningKey::generate().unwrap();
        let pem = key.to_pkcs8_pem();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        assert!(pem.ends_with("-----END PRIVATE KEY-----\n"));
        let back = SigningKey::from_pkcs8_pem(&pem, "key.pem").unwrap();
        assert_eq!(back.public_key(), key.public_key());
        assert_eq!(back.pkcs8_der(), key.pkcs8_der());
        assert_eq!(back.sign(b"m"), key.sign(b"m"));
        // The RFC key, built from seed + public key, round-trips too.
        let rfc = rfc8032_key();
        let back = SigningKey::from_pkcs8_pem(&rfc.to_pkcs8_pem(), "rfc.pem").unwrap();
        assert_eq!(back.public_key().to_text(), PUBLIC);
    }

    #[test]
    fn reads_openssl_pkcs8_v1() {
        // `openssl genpkey -algorithm ed25519` form of the RFC 8032 key.
        let mut der = V1_PREFIX.to_vec();
        der.extend_from_slice(&hex::decode_array::<32>(SECRET).unwrap());
        let pem = pem_encode(&der, PEM_LABEL);
        let key = SigningKey::from_pkcs8_pem(&pem, "openssl.pem").unwrap();
        assert_eq!(key.public_key().to_text(), PUBLIC);
        assert_eq!(key.sign(b"").to_text(), SIGNATURE);
        // Written back as v2.
        assert_eq!(key.pkcs8_der().len(), 83);
    }

    #[test]
    fn signature_by_one_key_does_not_verify_under_another() {
        let a = SigningKey::generate().unwrap();
        let b = SigningKey::generate().unwrap();
        assert_ne!(a.public_key(), b.public_key());
        let sig = a.sign(b"round 3 update");
        a.public_key().verify(b"round 3 update", &sig).unwrap();
        let err = b.public_key().verify(b"round 3 update", &sig).unwrap_err();
        assert!(err.to_string().contains(&b.public_key().to_text()));
    }

    #[test]
    fn public_key_text_round_trip_and_errors() {
        let k = SigningKey::generate().unwrap().public_key();
        let text = format!("{}\n", k.to_text());
        assert_eq!(PublicKey::from_text(&text, "log.pub").unwrap(), k);
        let err = PublicKey::from_text("abcd", "log.pub")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("log.pub: "), "{err}");
        let upper = k.to_text().to_uppercase();
        assert!(PublicKey::from_text(&upper, "log.pub").is_err());
        let json = serde_json::to_string(&k).unwrap();
        assert_eq!(json, format!("\"{}\"", k.to_text()));
        assert_eq!(serde_json::from_str::<PublicKey>(&json).unwrap(), k);
    }

    #[test]
    fn bad_pem_is_refused_with_a_line() {
        let key = SigningKey::generate().unwrap();
        let pem = key.to_pkcs8_pem();
        let e = SigningKey::from_pkcs8_pem("", "k.pem")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("k.pem") && e.contains("BEGIN PRIVATE KEY"),
            "{e}"
        );
        let cut: String = pem.lines().take(2).collect::<Vec<_>>().join("\n");
        let e = SigningKey::from_pkcs8_pem(&cut, "k.pem")
            .unwrap_err()
            .to_string();
        assert!(e.contains("END PRIVATE KEY"), "{e}");
        let bad = pem.replacen("\nM", "\n*", 1);
        let e = SigningKey::from_pkcs8_pem(&bad, "k.pem")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2"), "{e}");
        // Valid base64 but not a key.
        let junk = pem_encode(b"not a key at all", PEM_LABEL);
        assert!(SigningKey::from_pkcs8_pem(&junk, "k.pem").is_err());
    }

    #[test]
    fn base64_round_trip() {
        for n in 0..40usize {
            let data: Vec<u8> = (0..n as u8).map(|b| b.wrapping_mul(37)).collect();
            let text = base64_encode(&data);
            assert_eq!(base64_decode(text.as_bytes()).unwrap(), data, "{n}");
        }
        assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
        assert!(base64_decode(b"Zm=v").is_err());
        assert!(base64_decode(b"Zm8=Zm8=").is_err());
        assert!(base64_decode(b"Zm8").is_err());
    }
}

//! The primitives, composed from libraries: X25519 agreement, HKDF-SHA256,
//! ChaCha20-Poly1305 sealing, SHA-256 commitments and the mask generators
//! (AES-128 in counter mode, ChaCha20). Every derived key is bound to a
//! purpose label, the round and the slots involved, so no key serves two
//! purposes, rounds or pairs.

use chacha20::cipher::{KeyIvInit, StreamCipher};
use chacha20::ChaCha20;
use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::{digest, hkdf};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use crate::{MaskPrg, SecAggError, Slot, KEY_LEN};

/// Salt of every HKDF extraction in the protocol (a version label).
const SALT: &[u8] = b"fedcrime-secagg/v1";

/// An output length for ring's HKDF.
struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

/// HKDF-SHA256 (RFC 5869): extract with `salt`, expand with the
/// concatenation of `info` into `out` (at most 255 × 32 bytes).
///
/// # Panics
/// Never for `out` up to 8,160 bytes; longer is a programming error.
pub fn hkdf_sha256(salt: &[u8], ikm: &[u8], info: &[&[u8]], out: &mut [u8]) {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(ikm);
    let okm = prk
        .expand(info, Len(out.len()))
        .expect("HKDF output of at most 255 blocks");
    okm.fill(out).expect("HKDF fills the length it was given");
}

/// A fresh X25519 secret from 32 random bytes.
pub(crate) fn secret_from(bytes: [u8; KEY_LEN]) -> StaticSecret {
    StaticSecret::from(bytes)
}

/// The public key of `secret`.
pub(crate) fn public_of(secret: &StaticSecret) -> [u8; KEY_LEN] {
    PublicKey::from(secret).to_bytes()
}

/// X25519 agreement, refusing a non-contributory result (a low-order public
/// key, which would make the shared secret known to anyone).
pub(crate) fn agree(
    secret: &StaticSecret,
    peer: &[u8; KEY_LEN],
) -> Option<Zeroizing<[u8; KEY_LEN]>> {
    let shared = secret.diffie_hellman(&PublicKey::from(*peer));
    shared
        .was_contributory()
        .then(|| Zeroizing::new(shared.to_bytes()))
}

/// Round and slot bytes for binding derived keys and associated data.
fn binding(label: &'static [u8], round: u64, a: Slot, b: Slot) -> [u8; 40] {
    let mut out = [0u8; 40];
    out[..24].copy_from_slice(&pad_label(label));
    out[24..32].copy_from_slice(&round.to_be_bytes());
    out[32..36].copy_from_slice(&a.to_be_bytes());
    out[36..40].copy_from_slice(&b.to_be_bytes());
    out
}

fn pad_label(label: &'static [u8]) -> [u8; 24] {
    let mut out = [0u8; 24];
    let n = label.len().min(24);
    out[..n].copy_from_slice(&label[..n]);
    out
}

/// The key sealing `from`'s shares for `to` in `round`: one key per
/// direction, pair and round, so a single-use nonce suffices.
fn share_key(shared: &[u8; KEY_LEN], round: u64, from: Slot, to: Slot) -> LessSafeKey {
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    hkdf_sha256(
        SALT,
        shared,
        &[&binding(b"share-key", round, from, to)],
        key.as_mut(),
    );
    LessSafeKey::new(
        UnboundKey::new(&aead::CHACHA20_POLY1305, key.as_ref()).expect("a 32-byte key"),
    )
}

/// Seals `plain` from `from` to `to` under the agreed secret.
pub(crate) fn seal_share(
    shared: &[u8; KEY_LEN],
    round: u64,
    from: Slot,
    to: Slot,
    plain: &[u8],
) -> Vec<u8> {
    let key = share_key(shared, round, from, to);
    let mut buf = plain.to_vec();
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key([0u8; aead::NONCE_LEN]),
        Aad::from(binding(b"share-aad", round, from, to)),
        &mut buf,
    )
    .expect("ChaCha20-Poly1305 seals any length under 256 GiB");
    buf
}

/// Opens a share sealed by [`seal_share`] with the same binding.
pub(crate) fn open_share(
    shared: &[u8; KEY_LEN],
    round: u64,
    from: Slot,
    to: Slot,
    sealed: &[u8],
) -> Result<Zeroizing<Vec<u8>>, SecAggError> {
    let key = share_key(shared, round, from, to);
    let mut buf = Zeroizing::new(sealed.to_vec());
    let n = key
        .open_in_place(
            Nonce::assume_unique_for_key([0u8; aead::NONCE_LEN]),
            Aad::from(binding(b"share-aad", round, from, to)),
            buf.as_mut(),
        )
        .map_err(|_| SecAggError::Unauthentic { from, to })?
        .len();
    buf.truncate(n);
    Ok(buf)
}

/// The pairwise mask seed of slots `a` and `b` in `round`, the same from
/// either side.
pub(crate) fn pair_seed(
    shared: &[u8; KEY_LEN],
    round: u64,
    a: Slot,
    b: Slot,
) -> Zeroizing<[u8; KEY_LEN]> {
    let mut seed = Zeroizing::new([0u8; KEY_LEN]);
    hkdf_sha256(
        SALT,
        shared,
        &[&binding(b"pair-mask", round, a.min(b), a.max(b))],
        seed.as_mut(),
    );
    seed
}

/// The commitment to `slot`'s self-mask seed in `round`.
pub(crate) fn seed_commitment(seed: &[u8; KEY_LEN], round: u64, slot: Slot) -> [u8; KEY_LEN] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(&binding(b"seed-commitment", round, slot, slot));
    ctx.update(seed);
    let mut out = [0u8; KEY_LEN];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// Elements per keystream chunk (16 KiB): masks are expanded and added one
/// chunk at a time, so the keystream stays in the core's L1/L2 cache, and
/// [`MaskPrg::Aes128Ctr`] gives each chunk its own nonce.
const CHUNK_WORDS: usize = 4096;

/// One seed's keystream, chunk by chunk (see [`MaskPrg`] for the layout).
enum Keystream {
    /// AES-128 keystream through ring's AES-128-GCM (whose ciphertext of
    /// zeros is the counter-mode keystream; the tag is discarded).
    Aes { key: Box<LessSafeKey>, chunk: u64 },
    /// RFC 8439 ChaCha20.
    ChaCha(ChaCha20),
}

impl Keystream {
    fn new(prg: MaskPrg, seed: &[u8; KEY_LEN]) -> Keystream {
        match prg {
            MaskPrg::Aes128Ctr => Keystream::Aes {
                key: Box::new(LessSafeKey::new(
                    UnboundKey::new(&aead::AES_128_GCM, &seed[..16]).expect("a 16-byte key"),
                )),
                chunk: 0,
            },
            MaskPrg::Chacha20 => Keystream::ChaCha(ChaCha20::new(seed.into(), &[0u8; 12].into())),
        }
    }

    /// Writes the next chunk's keystream over `bytes`: `4 * CHUNK_WORDS`
    /// bytes, fewer only for the last chunk.
    fn next_chunk(&mut self, bytes: &mut [u8]) {
        bytes.fill(0);
        match self {
            Keystream::Aes { key, chunk } => {
                let mut nonce = [0u8; aead::NONCE_LEN];
                nonce[4..].copy_from_slice(&chunk.to_be_bytes());
                // The tag is discarded: only the keystream is wanted.
                let _tag = key
                    .seal_in_place_separate_tag(
                        Nonce::assume_unique_for_key(nonce),
                        Aad::empty(),
                        bytes,
                    )
                    .expect("a 16 KiB chunk is far below GCM's 64 GiB message limit");
                *chunk += 1;
            }
            Keystream::ChaCha(cipher) => cipher.apply_keystream(bytes),
        }
    }
}

/// Adds (`add = true`) or subtracts the expansion of `seed` by `prg` to
/// `out`, element-wise in `Z_{2^32}`; element `i` is keystream bytes
/// `4i..4i + 4`, little-endian (see [`MaskPrg`] for each generator's
/// keystream).
pub fn expand_mask(prg: MaskPrg, seed: &[u8; KEY_LEN], out: &mut [u32], add: bool) {
    expand_masks(prg, &[(seed, add)], out);
}

/// [`expand_mask`] for several seeds at once, in one pass over `out`: each
/// chunk of `out` (16 KiB, so it stays in the core's L1/L2 cache) takes
/// every seed's keystream for that chunk before the next chunk is touched.
/// The result is that of calling [`expand_mask`] once per seed, in any order
/// (addition in `Z_{2^32}` commutes), at a fraction of the memory traffic.
pub fn expand_masks(prg: MaskPrg, masks: &[(&[u8; KEY_LEN], bool)], out: &mut [u32]) {
    let mut streams: Vec<(Keystream, bool)> = masks
        .iter()
        .map(|&(seed, add)| (Keystream::new(prg, seed), add))
        .collect();
    let mut block = Zeroizing::new([0u8; CHUNK_WORDS * 4]);
    for chunk in out.chunks_mut(CHUNK_WORDS) {
        let bytes = &mut block[..chunk.len() * 4];
        for (stream, add) in &mut streams {
            stream.next_chunk(bytes);
            let words = bytes
                .chunks_exact(4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
            if *add {
                for (v, w) in chunk.iter_mut().zip(words) {
                    *v = v.wrapping_add(w);
                }
            } else {
                for (v, w) in chunk.iter_mut().zip(words) {
                    *v = v.wrapping_sub(w);
                }
            }
        }
    }
}

/// A cryptographic random number generator over a [`MaskPrg`] keystream:
/// the stations' stochastic-rounding draws, a million per update, come at
/// the mask generator's speed.
pub(crate) struct KeystreamRng {
    stream: Keystream,
    buf: Zeroizing<[u8; CHUNK_WORDS * 4]>,
    pos: usize,
}

impl KeystreamRng {
    pub(crate) fn new(prg: MaskPrg, seed: &[u8; KEY_LEN]) -> KeystreamRng {
        KeystreamRng {
            stream: Keystream::new(prg, seed),
            buf: Zeroizing::new([0u8; CHUNK_WORDS * 4]),
            pos: CHUNK_WORDS * 4,
        }
    }
}

impl rand::RngCore for KeystreamRng {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        self.fill_bytes(&mut b);
        u32::from_le_bytes(b)
    }

    fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.fill_bytes(&mut b);
        u64::from_le_bytes(b)
    }

    fn fill_bytes(&mut self, mut dst: &mut [u8]) {
        while !dst.is_empty() {
            if self.pos == self.buf.len() {
                self.stream.next_chunk(self.buf.as_mut());
                self.pos = 0;
            }
            let n = dst.len().min(self.buf.len() - self.pos);
            dst[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
            self.pos += n;
            dst = &mut dst[n..];
        }
    }
}

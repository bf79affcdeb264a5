//! The primitives, composed from libraries: X25519 agreement, HKDF-SHA256,
//! ChaCha20-Poly1305 sealing, SHA-256 commitments and the ChaCha20 mask
//! generator. Every derived key is bound to a purpose label, the round and
//! the slots involved, so no key serves two purposes, rounds or pairs.

use chacha20::cipher::{KeyIvInit, StreamCipher};
use chacha20::ChaCha20;
use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::{digest, hkdf};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use crate::{SecAggError, Slot, KEY_LEN};

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

/// Adds (`add = true`) or subtracts the ChaCha20 expansion of `seed` to
/// `out`, element-wise in `Z_{2^32}`. The generator is ChaCha20 with the
/// seed as key, a zero nonce and the block counter from 0 (RFC 8439's block
/// function); each element is the next four keystream bytes, little-endian.
pub fn expand_mask(seed: &[u8; KEY_LEN], out: &mut [u32], add: bool) {
    expand_masks(&[(seed, add)], out);
}

/// [`expand_mask`] for several seeds at once, in one pass over `out`: each
/// chunk of `out` (16 KiB, so it stays in the core's L1/L2 cache) takes
/// every seed's keystream for that chunk before the next chunk is touched.
/// The result is that of calling [`expand_mask`] once per seed, in any order
/// (addition in `Z_{2^32}` commutes), at a fraction of the memory traffic.
///
/// The keystream comes from the `chacha20` crate, which picks its AVX-512,
/// AVX2 or SSE2 code at run time (AVX-512 where the build sets
/// `--cfg chacha20_avx512`, as this workspace's `.cargo/config.toml` does).
pub fn expand_masks(masks: &[(&[u8; KEY_LEN], bool)], out: &mut [u32]) {
    const CHUNK: usize = 4096;
    let mut ciphers: Vec<(ChaCha20, bool)> = masks
        .iter()
        .map(|&(seed, add)| (ChaCha20::new(seed.into(), &[0u8; 12].into()), add))
        .collect();
    let mut block = Zeroizing::new([0u8; CHUNK * 4]);
    for chunk in out.chunks_mut(CHUNK) {
        let bytes = &mut block[..chunk.len() * 4];
        for (cipher, add) in &mut ciphers {
            bytes.fill(0);
            cipher.apply_keystream(bytes);
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

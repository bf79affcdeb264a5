//! Shamir secret sharing of 32-byte secrets over GF(2^8), through `blahaj`.
//!
//! A share is `1 + 32` bytes: the evaluation point, then one field element
//! per secret byte. Shares are dealt at points `1..=count`, in the order of
//! the receiving neighbours.

use rand::Rng;
use rand_chacha_03::rand_core::SeedableRng as _;
use zeroize::Zeroizing;

use crate::KEY_LEN;

/// Bytes of one share of a 32-byte secret.
pub(crate) const SHARE_LEN: usize = 1 + KEY_LEN;

/// `count` shares of `secret`, any `threshold` of which rebuild it.
/// `count` is at most 255 and `threshold` at least 1 (checked by callers).
pub(crate) fn share<R: Rng + ?Sized>(
    secret: &[u8; KEY_LEN],
    threshold: u8,
    count: usize,
    rng: &mut R,
) -> Vec<Zeroizing<Vec<u8>>> {
    // blahaj draws its coefficients through rand 0.8's traits: a ChaCha20
    // generator of that generation, seeded from ours.
    let mut coefficients = rand_chacha_03::ChaCha20Rng::from_seed(rng.random());
    blahaj::Sharks(threshold)
        .dealer_rng(secret, &mut coefficients)
        .take(count)
        .map(|s| Zeroizing::new(Vec::from(&s)))
        .collect()
}

/// Rebuilds a secret from at least `threshold` well-formed shares with
/// distinct points; `None` when there are too few or one is malformed.
pub(crate) fn recover(threshold: u8, shares: &[&[u8]]) -> Option<Zeroizing<[u8; KEY_LEN]>> {
    let parsed = shares
        .iter()
        .map(|s| {
            (s.len() == SHARE_LEN && s[0] != 0)
                .then(|| blahaj::Share::try_from(*s).ok())
                .flatten()
        })
        .collect::<Option<Vec<_>>>()?;
    let secret = Zeroizing::new(blahaj::Sharks(threshold).recover(&parsed).ok()?);
    let mut out = Zeroizing::new([0u8; KEY_LEN]);
    (secret.len() == KEY_LEN).then(|| {
        out.copy_from_slice(&secret);
        out
    })
}

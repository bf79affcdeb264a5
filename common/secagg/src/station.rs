//! The station's side of one round: a sans-IO state machine that answers
//! the server's four requests in order, each at most once, and refuses
//! anything that would let the server unmask its input.

use std::collections::BTreeMap;

use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use x25519_dalek::StaticSecret;
use zeroize::Zeroizing;

use crate::crypto::{
    agree, expand_masks, open_share, pair_seed, public_of, seal_share, secret_from,
    seed_commitment, KeystreamRng,
};
use crate::graph::{threshold, Graph};
use crate::shamir::{self, SHARE_LEN};
use crate::{
    KeyAdvert, MaskedInput, Result, Roster, RoundSetup, SealedShare, SecAggError, ShareBundle,
    Slot, UnmaskRequest, UnmaskResponse, KEY_LEN,
};

/// Plaintext of a sealed share: from, to, round, seed share, key share.
pub(crate) const SHARE_PLAIN_LEN: usize = 4 + 4 + 8 + 2 * SHARE_LEN;

/// Bytes of a sealed share (plaintext and a 16-byte tag).
pub(crate) const SEALED_LEN: usize = SHARE_PLAIN_LEN + 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Fresh,
    Advertised,
    Shared,
    Masked,
    Done,
}

impl Stage {
    fn name(self) -> &'static str {
        match self {
            Stage::Fresh => "fresh",
            Stage::Advertised => "keys advertised",
            Stage::Shared => "keys shared",
            Stage::Masked => "masked input sent",
            Stage::Done => "unmasked",
        }
    }
}

/// Shares a neighbour sent this station: its self-mask seed share and its
/// mask-key share.
struct Held {
    seed: Zeroizing<Vec<u8>>,
    key: Zeroizing<Vec<u8>>,
}

/// One station in one round.
pub struct StationSession {
    setup: RoundSetup,
    slot: Slot,
    graph: Graph,
    threshold: usize,
    stage: Stage,
    rng: ChaCha20Rng,
    cipher_sk: StaticSecret,
    mask_sk: StaticSecret,
    /// The neighbours' adverts from the roster.
    roster: BTreeMap<Slot, KeyAdvert>,
    /// Shares received from neighbours, by their owner.
    held: BTreeMap<Slot, Held>,
    /// The share-sealing agreement with each roster neighbour, computed
    /// once in stage 2 (to seal) and used again in stage 3 (to open).
    cipher_shared: BTreeMap<Slot, Zeroizing<[u8; KEY_LEN]>>,
    self_seed: Zeroizing<[u8; KEY_LEN]>,
}

impl StationSession {
    /// A session for `slot` in the round `setup` describes, with keys from
    /// the operating system's generator.
    pub fn new(setup: RoundSetup, slot: Slot) -> Result<StationSession> {
        let mut seed = [0u8; KEY_LEN];
        rand::rng().fill_bytes(&mut seed);
        Self::with_seed(setup, slot, seed)
    }

    /// A session whose keys, seeds and rounding draw from `seed`
    /// (reproducible tests; use [`Self::new`] otherwise).
    pub fn with_seed(setup: RoundSetup, slot: Slot, seed: [u8; KEY_LEN]) -> Result<StationSession> {
        setup.validate()?;
        if slot >= setup.participants {
            return Err(SecAggError::Slot {
                what: "round setup",
                slot,
                reason: "is not among the round's participants",
            });
        }
        let graph = Graph::new(setup.participants, &setup.config, &setup.graph_seed)?;
        let threshold = threshold(graph.degree(), setup.config.dropout_tolerance);
        let mut rng = ChaCha20Rng::from_seed(seed);
        let cipher_sk = secret_from(rng.random());
        let mask_sk = secret_from(rng.random());
        Ok(StationSession {
            setup,
            slot,
            graph,
            threshold,
            stage: Stage::Fresh,
            rng,
            cipher_sk,
            mask_sk,
            roster: BTreeMap::new(),
            held: BTreeMap::new(),
            cipher_shared: BTreeMap::new(),
            self_seed: Zeroizing::new([0u8; KEY_LEN]),
        })
    }

    /// This station's slot.
    pub fn slot(&self) -> Slot {
        self.slot
    }

    /// The Shamir threshold of the round.
    pub fn threshold(&self) -> usize {
        self.threshold
    }

    fn enter(&mut self, from: Stage, to: Stage, what: &'static str) -> Result<()> {
        if self.stage != from {
            return Err(SecAggError::Stage {
                what,
                stage: self.stage.name(),
            });
        }
        self.stage = to;
        Ok(())
    }

    fn check_round(&self, what: &'static str, round: u64) -> Result<()> {
        self.setup.check_round(what, round)
    }

    /// Stage 1: the public keys to advertise.
    pub fn advertise(&mut self) -> Result<KeyAdvert> {
        self.enter(Stage::Fresh, Stage::Advertised, "advertising keys")?;
        Ok(KeyAdvert {
            slot: self.slot,
            round: self.setup.round,
            cipher_pk: public_of(&self.cipher_sk),
            mask_pk: public_of(&self.mask_sk),
        })
    }

    /// Stage 2: checks the roster (this round, only neighbours, distinct
    /// keys, at least `threshold` of them), then shares the self-mask seed
    /// and the mask key among the roster's stations, sealed for each.
    pub fn share_keys(&mut self, roster: &Roster) -> Result<ShareBundle> {
        self.enter(Stage::Advertised, Stage::Shared, "sharing keys")?;
        self.check_round("roster", roster.round)?;
        let own = (public_of(&self.cipher_sk), public_of(&self.mask_sk));
        let mut seen_keys = std::collections::BTreeSet::new();
        for advert in &roster.keys {
            self.check_round("roster key", advert.round)?;
            if !self.graph.adjacent(self.slot, advert.slot) {
                return Err(SecAggError::Slot {
                    what: "roster",
                    slot: advert.slot,
                    reason: "is not a neighbour of this station",
                });
            }
            let fresh = seen_keys.insert(advert.cipher_pk) & seen_keys.insert(advert.mask_pk);
            if !fresh
                || advert.cipher_pk == advert.mask_pk
                || [own.0, own.1].contains(&advert.cipher_pk)
                || [own.0, own.1].contains(&advert.mask_pk)
            {
                return Err(SecAggError::Malformed {
                    what: "roster key",
                    slot: advert.slot,
                    reason: "a public key appears twice".into(),
                });
            }
            if self.roster.insert(advert.slot, advert.clone()).is_some() {
                return Err(SecAggError::Malformed {
                    what: "roster",
                    slot: advert.slot,
                    reason: "listed twice".into(),
                });
            }
        }
        if self.roster.len() < self.threshold {
            return Err(SecAggError::TooFew {
                stage: "key sharing",
                alive: self.roster.len(),
                needed: self.threshold,
            });
        }
        self.rng.fill_bytes(self.self_seed.as_mut());
        let count = self.roster.len();
        let t = u8::try_from(self.threshold).expect("threshold <= 255 neighbours");
        let seed_shares = shamir::share(&self.self_seed, t, count, &mut self.rng);
        let key_shares = shamir::share(&self.mask_sk.to_bytes(), t, count, &mut self.rng);
        let mut shares = Vec::with_capacity(count);
        for ((advert, seed_share), key_share) in
            self.roster.values().zip(&seed_shares).zip(&key_shares)
        {
            let shared = agree(&self.cipher_sk, &advert.cipher_pk).ok_or_else(|| {
                SecAggError::Malformed {
                    what: "roster key",
                    slot: advert.slot,
                    reason: "a low-order public key (no shared secret)".into(),
                }
            })?;
            let mut plain = Zeroizing::new(Vec::with_capacity(SHARE_PLAIN_LEN));
            plain.extend_from_slice(&self.slot.to_be_bytes());
            plain.extend_from_slice(&advert.slot.to_be_bytes());
            plain.extend_from_slice(&self.setup.round.to_be_bytes());
            plain.extend_from_slice(seed_share);
            plain.extend_from_slice(key_share);
            shares.push(SealedShare {
                from: self.slot,
                to: advert.slot,
                round: self.setup.round,
                ciphertext: seal_share(&shared, self.setup.round, self.slot, advert.slot, &plain),
            });
            self.cipher_shared.insert(advert.slot, shared);
        }
        Ok(ShareBundle {
            slot: self.slot,
            round: self.setup.round,
            seed_commitment: seed_commitment(&self.self_seed, self.setup.round, self.slot),
            shares,
        })
    }

    /// Stage 3: opens the shares routed to this station (each must come
    /// from a station on its roster, for it, in this round, once), then
    /// returns its weighted update `min(examples / weight_scale, 1) *
    /// update`, quantized and masked, with the masked weight last.
    ///
    /// `update` is the station's change to the global model (its new
    /// parameters minus the ones it received).
    pub fn masked_input(
        &mut self,
        inbox: &[SealedShare],
        update: &[f32],
        examples: u64,
    ) -> Result<MaskedInput> {
        self.enter(Stage::Shared, Stage::Masked, "masking the input")?;
        if update.len() != self.setup.vector_len {
            return Err(SecAggError::Update(format!(
                "{} elements where the round has {}",
                update.len(),
                self.setup.vector_len
            )));
        }
        if let Some(i) = update.iter().position(|v| !v.is_finite()) {
            return Err(SecAggError::Update(format!(
                "element {i} is {} (not a finite number)",
                update[i]
            )));
        }
        if let Some(max) = self.setup.max_update_norm {
            let norm = update
                .iter()
                .map(|&v| f64::from(v) * f64::from(v))
                .sum::<f64>()
                .sqrt();
            if norm > max {
                return Err(SecAggError::Update(format!(
                    "its norm {norm:.4} exceeds the federation's bound {max} (max_update_norm)"
                )));
            }
        }
        for sealed in inbox {
            self.check_round("sealed share", sealed.round)?;
            if sealed.to != self.slot {
                return Err(SecAggError::Slot {
                    what: "sealed share",
                    slot: sealed.to,
                    reason: "is not this station (misrouted)",
                });
            }
            let advert = self.roster.get(&sealed.from).ok_or(SecAggError::Slot {
                what: "sealed share",
                slot: sealed.from,
                reason: "is not on this station's roster",
            })?;
            if self.held.contains_key(&sealed.from) {
                return Err(SecAggError::Malformed {
                    what: "sealed share",
                    slot: sealed.from,
                    reason: "sent twice".into(),
                });
            }
            // Every roster key passed the agreement in stage 2.
            let shared = self
                .cipher_shared
                .get(&advert.slot)
                .ok_or(SecAggError::Unauthentic {
                    from: sealed.from,
                    to: self.slot,
                })?;
            let plain = open_share(
                shared,
                self.setup.round,
                sealed.from,
                self.slot,
                &sealed.ciphertext,
            )?;
            let bound = [
                &sealed.from.to_be_bytes()[..],
                &self.slot.to_be_bytes(),
                &self.setup.round.to_be_bytes(),
            ]
            .concat();
            if plain.len() != SHARE_PLAIN_LEN || plain[..16] != bound[..] {
                return Err(SecAggError::Unauthentic {
                    from: sealed.from,
                    to: self.slot,
                });
            }
            self.held.insert(
                sealed.from,
                Held {
                    seed: Zeroizing::new(plain[16..16 + SHARE_LEN].to_vec()),
                    key: Zeroizing::new(plain[16 + SHARE_LEN..].to_vec()),
                },
            );
        }
        if self.held.len() < self.threshold {
            return Err(SecAggError::TooFew {
                stage: "masked input",
                alive: self.held.len(),
                needed: self.threshold,
            });
        }

        let q = self.setup.quantizer();
        let weight = (examples as f64 / self.setup.weight_scale).min(1.0) as f32;
        let mut values = Vec::with_capacity(self.setup.masked_len());
        // The rounding draws: a million per million parameters, so they come
        // from the mask generator's keystream under a fresh key.
        let key = Zeroizing::new(self.rng.random::<[u8; KEY_LEN]>());
        let mut draws = KeystreamRng::new(self.setup.config.mask_prg, &key);
        q.quantize_scaled(update, weight, &mut draws, &mut values);
        let unit = crate::Quantizer::new(1.0, self.setup.config.quantization_bits);
        values.push(unit.quantize(weight, &mut self.rng));

        let mut pair_seeds = Vec::with_capacity(self.held.len());
        for &peer in self.held.keys() {
            let advert = &self.roster[&peer];
            let shared = agree(&self.mask_sk, &advert.mask_pk).ok_or(SecAggError::Malformed {
                what: "roster key",
                slot: peer,
                reason: "a low-order public key (no shared secret)".into(),
            })?;
            let seed = pair_seed(&shared, self.setup.round, self.slot, peer);
            pair_seeds.push((seed, self.slot < peer));
        }
        // The self mask is added; each pairwise mask is added by the lower
        // slot and subtracted by the higher one, so pairs cancel in the sum.
        let masks: Vec<(&[u8; KEY_LEN], bool)> = std::iter::once((&*self.self_seed, true))
            .chain(pair_seeds.iter().map(|(seed, add)| (&**seed, *add)))
            .collect();
        expand_masks(self.setup.config.mask_prg, &masks, &mut values);
        Ok(MaskedInput {
            slot: self.slot,
            round: self.setup.round,
            values,
        })
    }

    /// Stage 4, once per round: the self-mask seed shares of the survivors
    /// and the mask-key shares of the dropouts the server names. Refuses a
    /// station named both ways, a station whose shares this one does not
    /// hold, and a request naming fewer than `threshold` survivors (this
    /// station included).
    pub fn unmask(&mut self, request: &UnmaskRequest) -> Result<UnmaskResponse> {
        self.enter(Stage::Masked, Stage::Done, "answering an unmask request")?;
        self.check_round("unmask request", request.round)?;
        let survivors: std::collections::BTreeSet<Slot> =
            request.survivors.iter().copied().collect();
        if let Some(&both) = request.dropped.iter().find(|s| survivors.contains(s)) {
            return Err(SecAggError::BothShares { slot: both });
        }
        let mut dropped = std::collections::BTreeSet::new();
        for &slot in &request.dropped {
            if !dropped.insert(slot) {
                return Err(SecAggError::Malformed {
                    what: "unmask request",
                    slot,
                    reason: "a dropout listed twice".into(),
                });
            }
        }
        if survivors.len() != request.survivors.len() {
            return Err(SecAggError::Malformed {
                what: "unmask request",
                slot: self.slot,
                reason: "a survivor listed twice".into(),
            });
        }
        if !survivors.contains(&self.slot) {
            return Err(SecAggError::Slot {
                what: "unmask request",
                slot: self.slot,
                reason: "sent a masked input but is not listed as a survivor",
            });
        }
        if survivors.len() < self.threshold {
            return Err(SecAggError::TooFew {
                stage: "unmasking",
                alive: survivors.len(),
                needed: self.threshold,
            });
        }
        let mut seed_shares = Vec::new();
        for &slot in survivors.iter().filter(|&&s| s != self.slot) {
            let held = self.held.get(&slot).ok_or(SecAggError::Slot {
                what: "unmask request",
                slot,
                reason: "is a survivor whose shares this station does not hold",
            })?;
            seed_shares.push((slot, held.seed.to_vec()));
        }
        let mut key_shares = Vec::new();
        for &slot in &dropped {
            let held = self.held.get(&slot).ok_or(SecAggError::Slot {
                what: "unmask request",
                slot,
                reason: "is a dropout whose shares this station does not hold",
            })?;
            key_shares.push((slot, held.key.to_vec()));
        }
        Ok(UnmaskResponse {
            slot: self.slot,
            round: self.setup.round,
            seed_shares,
            key_shares,
        })
    }
}

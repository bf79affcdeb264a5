//! The server's side of one round: a sans-IO state machine that collects
//! each stage's messages, closes the stage when the caller says so (a
//! deadline or everyone answered: the caller's clock, not ours), and in the
//! end removes the masks from the running sum. It never holds a station's
//! unmasked input: masked vectors are added to the sum as they arrive and
//! dropped.

use std::collections::{BTreeMap, BTreeSet};

use crate::crypto::{agree, expand_masks, pair_seed, public_of, secret_from, seed_commitment};
use crate::graph::{threshold, Graph};
use crate::shamir::{self, SHARE_LEN};
use crate::station::SEALED_LEN;
use crate::{
    KeyAdvert, MaskedInput, Result, Roster, RoundSetup, SealedShare, SecAggError, ShareBundle,
    Slot, UnmaskRequest, UnmaskResponse, KEY_LEN,
};
use zeroize::Zeroizing;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Keys,
    Shares,
    Masked,
    Unmask,
    Finished,
}

impl Stage {
    fn name(self) -> &'static str {
        match self {
            Stage::Keys => "key advertisement",
            Stage::Shares => "key sharing",
            Stage::Masked => "masked input",
            Stage::Unmask => "unmasking",
            Stage::Finished => "finished",
        }
    }
}

/// The outcome of a round: the sum of the survivors' weighted updates and
/// of their weights, nothing per station.
#[derive(Clone, Debug, PartialEq)]
pub struct Aggregate {
    /// `Σ w_k u_k` over the survivors, element-wise.
    pub weighted_sum: Vec<f32>,
    /// `Σ w_k` over the survivors.
    pub total_weight: f64,
    /// Stations whose input is in the sum.
    pub survivors: Vec<Slot>,
    /// Stations that shared keys but sent no input (their masks removed).
    pub dropped: Vec<Slot>,
    /// Bound on `|weighted_sum[e] - Σ w_k clip(u_k[e])|` from quantization.
    pub error_bound: f64,
    /// Bound on `|total_weight - Σ w_k|` from quantization.
    pub weight_error_bound: f64,
}

impl Aggregate {
    /// The weighted mean update, `Σ w_k u_k / Σ w_k`.
    pub fn mean(&self) -> Vec<f32> {
        let w = self.total_weight.max(f64::MIN_POSITIVE);
        self.weighted_sum
            .iter()
            .map(|&s| (f64::from(s) / w) as f32)
            .collect()
    }
}

/// The server in one round.
pub struct Aggregator {
    setup: RoundSetup,
    graph: Graph,
    threshold: usize,
    stage: Stage,
    adverts: BTreeMap<Slot, KeyAdvert>,
    /// Stations given a roster, with the slots on it.
    rosters: BTreeMap<Slot, Vec<Slot>>,
    /// Sealed shares by receiver.
    inboxes: BTreeMap<Slot, Vec<SealedShare>>,
    commitments: BTreeMap<Slot, [u8; KEY_LEN]>,
    /// Stations whose shares were routed (U2).
    sharers: BTreeSet<Slot>,
    sum: Vec<u32>,
    /// Stations whose masked input is in `sum` (U3).
    contributed: BTreeSet<Slot>,
    requests: BTreeMap<Slot, UnmaskRequest>,
    responses: BTreeMap<Slot, UnmaskResponse>,
}

impl Aggregator {
    /// A round as `setup` describes it.
    pub fn new(setup: RoundSetup) -> Result<Aggregator> {
        setup.validate()?;
        let graph = Graph::new(setup.participants, &setup.config, &setup.graph_seed)?;
        let threshold = threshold(graph.degree(), setup.config.dropout_tolerance);
        Ok(Aggregator {
            sum: vec![0; setup.masked_len()],
            setup,
            graph,
            threshold,
            stage: Stage::Keys,
            adverts: BTreeMap::new(),
            rosters: BTreeMap::new(),
            inboxes: BTreeMap::new(),
            commitments: BTreeMap::new(),
            sharers: BTreeSet::new(),
            contributed: BTreeSet::new(),
            requests: BTreeMap::new(),
            responses: BTreeMap::new(),
        })
    }

    /// The round's setup.
    pub fn setup(&self) -> &RoundSetup {
        &self.setup
    }

    /// The Shamir threshold.
    pub fn threshold(&self) -> usize {
        self.threshold
    }

    /// The neighbour graph.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// The stage's name, for logs.
    pub fn stage(&self) -> &'static str {
        self.stage.name()
    }

    fn expect(&self, stage: Stage, what: &'static str) -> Result<()> {
        if self.stage != stage {
            return Err(SecAggError::Stage {
                what,
                stage: self.stage.name(),
            });
        }
        Ok(())
    }

    fn check_round(&self, what: &'static str, round: u64) -> Result<()> {
        self.setup.check_round(what, round)
    }

    fn check_slot(&self, what: &'static str, slot: Slot) -> Result<()> {
        if slot >= self.setup.participants {
            return Err(SecAggError::Slot {
                what,
                slot,
                reason: "is not among the round's participants",
            });
        }
        Ok(())
    }

    /// Stage 1: a station's public keys. `sender` is the slot the transport
    /// authenticated; the advert must name it.
    pub fn add_keys(&mut self, sender: Slot, advert: KeyAdvert) -> Result<()> {
        self.expect(Stage::Keys, "key advert")?;
        self.check_slot("key advert", sender)?;
        self.check_round("key advert", advert.round)?;
        if advert.slot != sender {
            return Err(SecAggError::Malformed {
                what: "key advert",
                slot: sender,
                reason: format!("names slot {}", advert.slot),
            });
        }
        if self.adverts.contains_key(&sender) {
            return Err(SecAggError::Malformed {
                what: "key advert",
                slot: sender,
                reason: "sent twice".into(),
            });
        }
        if advert.cipher_pk == advert.mask_pk {
            return Err(SecAggError::Malformed {
                what: "key advert",
                slot: sender,
                reason: "the two public keys are equal".into(),
            });
        }
        self.adverts.insert(sender, advert);
        Ok(())
    }

    fn need(&self, stage: &'static str, alive: usize) -> Result<()> {
        let needed = self.threshold + 1;
        if alive < needed {
            return Err(SecAggError::TooFew {
                stage,
                alive,
                needed,
            });
        }
        Ok(())
    }

    /// Closes stage 1: the roster for each station that advertised and has
    /// at least `threshold` advertised neighbours. Errors (the round is
    /// over) when fewer than `threshold + 1` stations advertised.
    pub fn rosters(&mut self) -> Result<BTreeMap<Slot, Roster>> {
        self.expect(Stage::Keys, "closing key advertisement")?;
        self.need("key advertisement", self.adverts.len())?;
        let mut out = BTreeMap::new();
        for &slot in self.adverts.keys() {
            let keys: Vec<KeyAdvert> = self
                .graph
                .neighbours(slot)
                .iter()
                .filter_map(|n| self.adverts.get(n).cloned())
                .collect();
            if keys.len() >= self.threshold {
                self.rosters
                    .insert(slot, keys.iter().map(|k| k.slot).collect());
                out.insert(
                    slot,
                    Roster {
                        round: self.setup.round,
                        keys,
                    },
                );
            }
        }
        self.need("key advertisement", out.len())?;
        self.stage = Stage::Shares;
        Ok(out)
    }

    /// Stage 2: a station's sealed shares, one for each station on its
    /// roster and no other, each the size a sealed share has.
    pub fn add_shares(&mut self, sender: Slot, bundle: ShareBundle) -> Result<()> {
        self.expect(Stage::Shares, "share bundle")?;
        self.check_round("share bundle", bundle.round)?;
        let roster = self.rosters.get(&sender).ok_or(SecAggError::Slot {
            what: "share bundle",
            slot: sender,
            reason: "was given no roster this round",
        })?;
        if bundle.slot != sender {
            return Err(SecAggError::Malformed {
                what: "share bundle",
                slot: sender,
                reason: format!("names slot {}", bundle.slot),
            });
        }
        if self.sharers.contains(&sender) {
            return Err(SecAggError::Malformed {
                what: "share bundle",
                slot: sender,
                reason: "sent twice".into(),
            });
        }
        let mut to: Vec<Slot> = bundle.shares.iter().map(|s| s.to).collect();
        to.sort_unstable();
        if &to != roster {
            return Err(SecAggError::Malformed {
                what: "share bundle",
                slot: sender,
                reason: format!(
                    "shares for slots {to:?} where its roster holds {roster:?} (one each)"
                ),
            });
        }
        for s in &bundle.shares {
            if s.from != sender || s.round != self.setup.round || s.ciphertext.len() != SEALED_LEN {
                return Err(SecAggError::Malformed {
                    what: "share bundle",
                    slot: sender,
                    reason: format!(
                        "the share for slot {} is not from it, of this round and {SEALED_LEN} bytes",
                        s.to
                    ),
                });
            }
        }
        self.commitments.insert(sender, bundle.seed_commitment);
        self.sharers.insert(sender);
        for s in bundle.shares {
            self.inboxes.entry(s.to).or_default().push(s);
        }
        Ok(())
    }

    /// Closes stage 2: each station that shared gets the shares sealed for
    /// it by the other stations that shared. Errors when fewer than
    /// `threshold + 1` stations shared.
    pub fn route_shares(&mut self) -> Result<BTreeMap<Slot, Vec<SealedShare>>> {
        self.expect(Stage::Shares, "closing key sharing")?;
        self.need("key sharing", self.sharers.len())?;
        let mut inboxes = std::mem::take(&mut self.inboxes);
        let out = self
            .sharers
            .iter()
            .map(|&slot| (slot, inboxes.remove(&slot).unwrap_or_default()))
            .collect();
        self.stage = Stage::Masked;
        Ok(out)
    }

    /// Stage 3: a station's masked input, added to the running sum at once.
    pub fn add_masked(&mut self, sender: Slot, input: MaskedInput) -> Result<()> {
        self.expect(Stage::Masked, "masked input")?;
        self.check_round("masked input", input.round)?;
        if !self.sharers.contains(&sender) {
            return Err(SecAggError::Slot {
                what: "masked input",
                slot: sender,
                reason: "did not share keys this round",
            });
        }
        if input.slot != sender {
            return Err(SecAggError::Malformed {
                what: "masked input",
                slot: sender,
                reason: format!("names slot {}", input.slot),
            });
        }
        if input.values.len() != self.sum.len() {
            return Err(SecAggError::Malformed {
                what: "masked input",
                slot: sender,
                reason: format!(
                    "{} elements where the round has {}",
                    input.values.len(),
                    self.sum.len()
                ),
            });
        }
        if !self.contributed.insert(sender) {
            return Err(SecAggError::Malformed {
                what: "masked input",
                slot: sender,
                reason: "sent twice".into(),
            });
        }
        for (s, v) in self.sum.iter_mut().zip(&input.values) {
            *s = s.wrapping_add(*v);
        }
        Ok(())
    }

    /// Closes stage 3: each station that sent an input is asked for the
    /// self-mask seed shares of its neighbours that did too and the
    /// mask-key shares of those that shared keys but sent nothing.
    pub fn unmask_requests(&mut self) -> Result<BTreeMap<Slot, UnmaskRequest>> {
        self.expect(Stage::Masked, "closing masked input")?;
        self.need("masked input", self.contributed.len())?;
        for &slot in &self.contributed {
            let mut survivors = vec![slot];
            let mut dropped = Vec::new();
            for &n in self.graph.neighbours(slot) {
                if self.contributed.contains(&n) {
                    survivors.push(n);
                } else if self.sharers.contains(&n) {
                    dropped.push(n);
                }
            }
            survivors.sort_unstable();
            self.requests.insert(
                slot,
                UnmaskRequest {
                    round: self.setup.round,
                    survivors,
                    dropped,
                },
            );
        }
        self.stage = Stage::Unmask;
        Ok(self.requests.clone())
    }

    /// Stage 4: a station's shares, checked against what it was asked for.
    pub fn add_unmask(&mut self, sender: Slot, response: UnmaskResponse) -> Result<()> {
        self.expect(Stage::Unmask, "unmask response")?;
        self.check_round("unmask response", response.round)?;
        let request = self.requests.get(&sender).ok_or(SecAggError::Slot {
            what: "unmask response",
            slot: sender,
            reason: "was not asked to unmask",
        })?;
        let asked_seeds: Vec<Slot> = request
            .survivors
            .iter()
            .copied()
            .filter(|&s| s != sender)
            .collect();
        let got_seeds: Vec<Slot> = response.seed_shares.iter().map(|s| s.0).collect();
        let got_keys: Vec<Slot> = response.key_shares.iter().map(|s| s.0).collect();
        let well_formed = response
            .seed_shares
            .iter()
            .chain(&response.key_shares)
            .all(|(_, share)| share.len() == SHARE_LEN);
        if response.slot != sender
            || got_seeds != asked_seeds
            || got_keys != request.dropped
            || !well_formed
        {
            return Err(SecAggError::Malformed {
                what: "unmask response",
                slot: sender,
                reason: "does not answer the request it was sent".into(),
            });
        }
        if self.responses.insert(sender, response).is_some() {
            return Err(SecAggError::Malformed {
                what: "unmask response",
                slot: sender,
                reason: "sent twice".into(),
            });
        }
        Ok(())
    }

    /// Closes stage 4: rebuilds each survivor's self-mask seed and each
    /// dropout's mask key from the responders' shares (at least `threshold`
    /// each, checked against the seed commitment and the advertised key),
    /// removes their masks from the sum and dequantizes it.
    pub fn finish(&mut self) -> Result<Aggregate> {
        self.expect(Stage::Unmask, "finishing")?;
        self.stage = Stage::Finished;
        let t = u8::try_from(self.threshold).expect("threshold <= 255 neighbours");
        let mut seed_shares: BTreeMap<Slot, Vec<&[u8]>> = BTreeMap::new();
        let mut key_shares: BTreeMap<Slot, Vec<&[u8]>> = BTreeMap::new();
        for r in self.responses.values() {
            for (owner, share) in &r.seed_shares {
                seed_shares.entry(*owner).or_default().push(share);
            }
            for (owner, share) in &r.key_shares {
                key_shares.entry(*owner).or_default().push(share);
            }
        }
        // Every mask to take out, expanded in one pass over the sum.
        let mut masks: Vec<(Zeroizing<[u8; KEY_LEN]>, bool)> = Vec::new();
        for &slot in &self.contributed {
            let shares = seed_shares.get(&slot).map_or(&[][..], Vec::as_slice);
            if shares.len() < self.threshold {
                return Err(SecAggError::TooFew {
                    stage: "unmasking (self-mask seed shares)",
                    alive: shares.len(),
                    needed: self.threshold,
                });
            }
            // Exactly `t` shares: interpolation costs O(t^2) per byte, and a
            // corrupt share among them fails the commitment check below.
            let seed =
                shamir::recover(t, &shares[..self.threshold]).ok_or(SecAggError::BadRecovery {
                    slot,
                    what: "self-mask seed",
                })?;
            if seed_commitment(&seed, self.setup.round, slot) != self.commitments[&slot] {
                return Err(SecAggError::BadRecovery {
                    slot,
                    what: "self-mask seed",
                });
            }
            masks.push((seed, false));
        }
        let dropped: Vec<Slot> = self
            .sharers
            .difference(&self.contributed)
            .copied()
            .collect();
        for &slot in &dropped {
            let shares = key_shares.get(&slot).map_or(&[][..], Vec::as_slice);
            if shares.len() < self.threshold {
                return Err(SecAggError::TooFew {
                    stage: "unmasking (mask-key shares)",
                    alive: shares.len(),
                    needed: self.threshold,
                });
            }
            let key =
                shamir::recover(t, &shares[..self.threshold]).ok_or(SecAggError::BadRecovery {
                    slot,
                    what: "mask key",
                })?;
            let secret = secret_from(*key);
            if public_of(&secret) != self.adverts[&slot].mask_pk {
                return Err(SecAggError::BadRecovery {
                    slot,
                    what: "mask key",
                });
            }
            // Every surviving neighbour on the dropout's roster added
            // ±PRG(pair seed) for it; take those masks out.
            for &peer in &self.rosters[&slot] {
                if !self.contributed.contains(&peer) {
                    continue;
                }
                let shared =
                    agree(&secret, &self.adverts[&peer].mask_pk).ok_or(SecAggError::Malformed {
                        what: "key advert",
                        slot: peer,
                        reason: "a low-order public key (no shared secret)".into(),
                    })?;
                let seed = pair_seed(&shared, self.setup.round, peer, slot);
                // The survivor added the mask when its slot is lower.
                masks.push((seed, peer > slot));
            }
        }
        let mut sum = std::mem::take(&mut self.sum);
        let masks: Vec<(&[u8; KEY_LEN], bool)> =
            masks.iter().map(|(seed, add)| (&**seed, *add)).collect();
        expand_masks(self.setup.config.mask_prg, &masks, &mut sum);
        let n = self.contributed.len();
        let q = self.setup.quantizer();
        let unit = crate::Quantizer::new(1.0, self.setup.config.quantization_bits);
        let (values, weight) = sum.split_at(self.setup.vector_len);
        let weighted_sum = values
            .iter()
            .map(|&s| q.dequantize_sum(s, n) as f32)
            .collect();
        Ok(Aggregate {
            weighted_sum,
            total_weight: unit.dequantize_sum(weight[0], n),
            survivors: self.contributed.iter().copied().collect(),
            dropped,
            error_bound: q.sum_error_bound(n),
            weight_error_bound: unit.sum_error_bound(n),
        })
    }
}

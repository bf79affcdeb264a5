//! Known-answer tests of the primitives, and whole rounds driven through
//! every dropout stage and misbehaviour the protocol must survive or refuse.

use std::collections::BTreeMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

use crate::crypto::{agree, public_of, secret_from};
use crate::*;

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn key(s: &str) -> [u8; KEY_LEN] {
    hex(s).try_into().unwrap()
}

/// RFC 7748 section 5.2 (first vector) and section 6.1 (Alice and Bob).
#[test]
fn x25519_known_answers() {
    let scalar = secret_from(key(
        "a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4",
    ));
    let u = key("e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c");
    assert_eq!(
        agree(&scalar, &u).unwrap().to_vec(),
        hex("c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552")
    );
    let alice = secret_from(key(
        "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a",
    ));
    let bob = secret_from(key(
        "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb",
    ));
    let (alice_pk, bob_pk) = (public_of(&alice), public_of(&bob));
    assert_eq!(
        alice_pk.to_vec(),
        hex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
    );
    assert_eq!(
        bob_pk.to_vec(),
        hex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
    );
    let shared = hex("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742");
    assert_eq!(agree(&alice, &bob_pk).unwrap().to_vec(), shared);
    assert_eq!(agree(&bob, &alice_pk).unwrap().to_vec(), shared);
    // A low-order point (the identity) gives no shared secret: refused.
    assert!(agree(&alice, &[0u8; 32]).is_none());
}

/// RFC 5869 test cases 1 and 3.
#[test]
fn hkdf_known_answers() {
    let mut okm = [0u8; 42];
    hkdf_sha256(
        &hex("000102030405060708090a0b0c"),
        &[0x0b; 22],
        &[&hex("f0f1f2f3f4f5f6f7f8f9")],
        &mut okm,
    );
    assert_eq!(
        okm.to_vec(),
        hex("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865")
    );
    hkdf_sha256(&[], &[0x0b; 22], &[], &mut okm);
    assert_eq!(
        okm.to_vec(),
        hex("8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8")
    );
}

/// The ChaCha20 mask generator is RFC 8439's ChaCha20 block function: a
/// zero key, zero nonce and counter 0 give section A.1's first keystream
/// block.
#[test]
fn chacha20_prg_known_answer() {
    let mut words = [0u32; 16];
    expand_mask(MaskPrg::Chacha20, &[0u8; 32], &mut words, true);
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    assert_eq!(
        bytes,
        hex(concat!(
            "76b8e0ada0f13d90405d6ae55386bd28bdd219b8a08ded1aa836efcc8b770dc7",
            "da41597c5157488d7724e03fb8d84a376a43b8f41518a11cc387b669b2ee6586"
        ))
    );
}

/// The AES-128 mask generator's first block is GCM's first keystream block
/// (McGrew and Viega's GCM test case 2: zero key, zero IV, one zero block
/// encrypts to `0388dace…`), and every block, across chunk boundaries, is
/// AES-128 of the counter block `chunk ‖ (2 + block)`, checked against an
/// independent AES implementation (RustCrypto's `aes`).
#[test]
fn aes128_ctr_prg_known_answer_and_layout() {
    use aes::cipher::{BlockEncrypt, KeyInit};
    let mut words = [0u32; 4];
    expand_mask(MaskPrg::Aes128Ctr, &[0u8; 32], &mut words, true);
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    assert_eq!(bytes, hex("0388dace60b6a392f328c2b971b2fe78"));

    let seed: [u8; 32] = std::array::from_fn(|i| i as u8 * 7 + 1);
    let len = 4096 * 2 + 300;
    let mut words = vec![0u32; len];
    expand_mask(MaskPrg::Aes128Ctr, &seed, &mut words, true);
    let cipher = aes::Aes128::new_from_slice(&seed[..16]).unwrap();
    for (i, got) in words.chunks(4).enumerate() {
        let (chunk, block) = ((i * 4 / 4096) as u64, (i * 4 % 4096 / 4) as u32);
        let mut counter = [0u8; 16];
        counter[4..12].copy_from_slice(&chunk.to_be_bytes());
        counter[12..].copy_from_slice(&(2 + block).to_be_bytes());
        let mut b = aes::Block::from(counter);
        cipher.encrypt_block(&mut b);
        let want: Vec<u32> = b
            .chunks(4)
            .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
            .collect();
        assert_eq!(got, &want[..got.len()], "block {i}");
    }
}

/// For either generator, subtracting an expansion restores the input, and
/// the stream goes on past the first chunk without repeating.
#[test]
fn masks_cancel_and_do_not_repeat() {
    for prg in [MaskPrg::Aes128Ctr, MaskPrg::Chacha20] {
        let mut long = vec![7u32; 9000];
        expand_mask(prg, &[9u8; 32], &mut long, true);
        assert_ne!(long[..4096], long[4096..8192], "{prg:?}");
        expand_mask(prg, &[9u8; 32], &mut long, false);
        assert!(long.iter().all(|&v| v == 7), "{prg:?}");
    }
}

/// The stations' rounding draws come from the keystream in order, however
/// they are asked for.
#[test]
fn keystream_rng_reads_the_stream_in_order() {
    use rand::RngCore;
    let key = [4u8; 32];
    let mut stream = vec![0u32; 5000];
    expand_mask(MaskPrg::Aes128Ctr, &key, &mut stream, true);
    let mut rng = crate::crypto::KeystreamRng::new(MaskPrg::Aes128Ctr, &key);
    let mut got = Vec::new();
    let mut small = [0u8; 12];
    rng.fill_bytes(&mut small);
    got.extend(
        small
            .chunks(4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap())),
    );
    got.push(rng.next_u32());
    let mut big = vec![0u8; 4 * 4990];
    rng.fill_bytes(&mut big);
    got.extend(
        big.chunks(4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap())),
    );
    assert_eq!(got, stream[..4994]);
}

/// Bulk quantization is stochastic rounding onto the grid: each value lands
/// on one of the two grid points around its clipped value, and on average
/// on the value itself.
#[test]
fn bulk_quantization_rounds_stochastically_without_bias() {
    let q = Quantizer::new(1.0, 8);
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    let values = [0.3f32, -0.77, 0.0, 1.0, -1.0, 2.5, -9.0];
    let weight = 0.5f32;
    let reps = 20_000;
    let mut sums = vec![0.0f64; values.len()];
    for _ in 0..reps {
        let mut out = Vec::new();
        q.quantize_scaled(&values, weight, &mut rng, &mut out);
        assert_eq!(out.len(), values.len());
        for ((sum, &word), &v) in sums.iter_mut().zip(&out).zip(&values) {
            let back = q.dequantize_sum(word, 1);
            let exact = f64::from(weight * v).clamp(-1.0, 1.0);
            assert!(
                (back - exact).abs() < q.step() + 1e-12,
                "{v}: {back} vs {exact}"
            );
            *sum += back;
        }
    }
    for (sum, &v) in sums.iter().zip(&values) {
        let exact = f64::from(weight * v).clamp(-1.0, 1.0);
        // The mean of 20,000 draws is within 5 standard errors (step / 2 /
        // sqrt(reps) at most) of the value.
        let tolerance = 5.0 * q.step() / 2.0 / f64::from(reps).sqrt();
        assert!(
            (sum / f64::from(reps) - exact).abs() < tolerance,
            "{v}: mean {} vs {exact}",
            sum / f64::from(reps)
        );
    }
}

/// One fused pass over several seeds gives what one pass per seed gives,
/// across chunk boundaries and with a ragged last chunk.
#[test]
fn fused_masks_equal_one_pass_per_seed() {
    let seeds = [[1u8; 32], [2u8; 32], [3u8; 32]];
    let signs = [true, false, true];
    let start: Vec<u32> = (0..10_001u32)
        .map(|i| i.wrapping_mul(2_654_435_761))
        .collect();
    for prg in [MaskPrg::Aes128Ctr, MaskPrg::Chacha20] {
        let mut one_by_one = start.clone();
        for (seed, &add) in seeds.iter().zip(&signs) {
            expand_mask(prg, seed, &mut one_by_one, add);
        }
        let mut fused = start.clone();
        let masks: Vec<(&[u8; 32], bool)> = seeds.iter().zip(signs).collect();
        crate::crypto::expand_masks(prg, &masks, &mut fused);
        assert_eq!(fused, one_by_one, "{prg:?}");
        assert_ne!(fused, start, "{prg:?}");
    }
}

#[test]
fn thresholds_keep_a_majority_and_tolerate_the_dropouts() {
    assert_eq!(threshold(2, 1.0 / 3.0), 2);
    assert_eq!(threshold(9, 1.0 / 3.0), 6);
    assert_eq!(threshold(20, 1.0 / 3.0), 13);
    assert_eq!(threshold(100, 1.0 / 3.0), 66);
    assert_eq!(threshold(100, 0.0), 100);
    assert_eq!(threshold(100, 0.49), 51);
    for k in 2..=255 {
        for d in [0.0, 0.1, 1.0 / 3.0, 0.49] {
            let t = threshold(k, d);
            assert!(2 * t > k && t <= k, "k {k}, δ {d}: t {t}");
        }
    }
}

#[test]
fn sparse_graphs_are_symmetric_regular_and_agree_on_both_sides() {
    let config = SecAggConfig::default();
    let g = Graph::new(1000, &config, &[3u8; 32]).unwrap();
    assert_eq!(g.degree(), 100);
    for a in 0..1000 {
        assert_eq!(g.neighbours(a).len(), 100);
        assert!(!g.neighbours(a).contains(&a));
        for &b in g.neighbours(a) {
            assert!(g.adjacent(b, a), "{a} -> {b} but not back");
        }
    }
    assert_eq!(g, Graph::new(1000, &config, &[3u8; 32]).unwrap());
    assert_ne!(g, Graph::new(1000, &config, &[4u8; 32]).unwrap());
    assert_eq!(Graph::new(21, &config, &[0; 32]).unwrap().degree(), 20);
}

#[test]
fn settings_out_of_range_are_refused_with_their_name() {
    let mut s = setup(0, 21, 10);
    s.config.dropout_tolerance = 0.5;
    assert!(matches!(
        s.validate(),
        Err(SecAggError::Config {
            field: "dropout_tolerance",
            ..
        })
    ));
    let mut s = setup(0, 2, 10);
    assert!(matches!(
        s.validate(),
        Err(SecAggError::Config {
            field: "participants",
            ..
        })
    ));
    s = setup(0, 1000, 10);
    s.config.quantization_bits = 24;
    let err = s.validate().unwrap_err().to_string();
    assert!(
        err.contains("quantization_bits") && err.contains("22"),
        "{err}"
    );
    s.config.quantization_bits = 22;
    s.validate().unwrap();
    let bad: std::result::Result<SecAggConfig, _> = serde_json::from_str(r#"{"clip": 1}"#);
    assert!(bad.is_err());
}

fn setup(round: u64, n: u32, len: usize) -> RoundSetup {
    RoundSetup {
        round,
        participants: n,
        vector_len: len,
        config: SecAggConfig::default(),
        graph_seed: [round as u8; 32],
        weight_scale: 1000.0,
        max_update_norm: None,
    }
}

/// When a station stops answering.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Drop {
    Never,
    /// Advertised keys, then vanished before sharing.
    AfterKeys,
    /// Shared keys, then vanished before sending its input.
    AfterShares,
    /// Sent its input, then vanished before unmasking.
    AfterInput,
}

struct Outcome {
    result: Result<Aggregate>,
    /// `Σ w_k clip(u_k)` over the stations whose input should be in the sum.
    expected: Vec<f64>,
    expected_weight: f64,
}

fn updates(n: u32, len: usize, seed: u64) -> (Vec<Vec<f32>>, Vec<u64>) {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let u = (0..n)
        .map(|_| (0..len).map(|_| rng.random_range(-0.5..0.5)).collect())
        .collect();
    let ex = (0..n).map(|_| rng.random_range(1..=1500)).collect();
    (u, ex)
}

/// One whole round in memory, with each station stopping as `drops` says.
fn round(setup: &RoundSetup, drops: &[Drop], seed: u64) -> Outcome {
    let n = setup.participants;
    let (updates, examples) = updates(n, setup.vector_len, seed);
    let mut stations: Vec<StationSession> = (0..n)
        .map(|s| StationSession::with_seed(setup.clone(), s, [s as u8 ^ seed as u8; 32]).unwrap())
        .collect();
    let mut server = Aggregator::new(setup.clone()).unwrap();
    let mut contributed = Vec::new();
    let result = (|| {
        for st in stations.iter_mut() {
            server.add_keys(st.slot(), st.advertise()?)?;
        }
        let rosters = server.rosters()?;
        for (slot, roster) in &rosters {
            if drops[*slot as usize] == Drop::AfterKeys {
                continue;
            }
            let bundle = stations[*slot as usize].share_keys(roster)?;
            server.add_shares(*slot, bundle)?;
        }
        let inboxes = server.route_shares()?;
        for (slot, inbox) in &inboxes {
            if drops[*slot as usize] == Drop::AfterShares {
                continue;
            }
            let s = *slot as usize;
            let input = stations[s].masked_input(inbox, &updates[s], examples[s])?;
            server.add_masked(*slot, input)?;
            contributed.push(s);
        }
        let requests = server.unmask_requests()?;
        for (slot, request) in &requests {
            if drops[*slot as usize] == Drop::AfterInput {
                continue;
            }
            let response = stations[*slot as usize].unmask(request)?;
            server.add_unmask(*slot, response)?;
        }
        server.finish()
    })();
    let clip = f64::from(setup.config.clip_range);
    let mut expected = vec![0.0; setup.vector_len];
    let mut expected_weight = 0.0;
    for &s in &contributed {
        let w = (examples[s] as f64 / setup.weight_scale).min(1.0);
        expected_weight += w;
        for (e, &u) in expected.iter_mut().zip(&updates[s]) {
            *e += (w * f64::from(u)).clamp(-clip, clip);
        }
    }
    Outcome {
        result,
        expected,
        expected_weight,
    }
}

fn assert_sum(o: &Outcome, survivors: usize) {
    let agg = o.result.as_ref().expect("the round completes");
    assert_eq!(agg.survivors.len(), survivors);
    let worst = agg
        .weighted_sum
        .iter()
        .zip(&o.expected)
        .map(|(&g, &w)| (f64::from(g) - w).abs())
        .fold(0.0, f64::max);
    // Dequantization is exact up to the stated bound (plus f32 rounding of
    // the output).
    assert!(
        worst <= agg.error_bound + 1e-5,
        "sum off by {worst}, bound {}",
        agg.error_bound
    );
    assert!((agg.total_weight - o.expected_weight).abs() <= agg.weight_error_bound + 1e-9);
    // The stated bound is tight enough to matter: n steps of 2 / 65535.
    assert!(agg.error_bound <= survivors as f64 * 2.0 / 65535.0 + 1e-12);
}

#[test]
fn the_unmasked_sum_is_the_plaintext_sum_within_the_quantization_bound() {
    let prgs = [MaskPrg::Aes128Ctr, MaskPrg::Chacha20, MaskPrg::Aes128Ctr];
    for ((n, len), prg) in [(3, 7), (10, 1000), (21, 5000)].into_iter().zip(prgs) {
        let mut s = setup(1, n, len);
        s.config.mask_prg = prg;
        let o = round(&s, &vec![Drop::Never; n as usize], 11);
        assert_sum(&o, n as usize);
        // Mean of the weighted updates: close to the plaintext weighted mean.
        let agg = o.result.as_ref().unwrap();
        let mean = agg.mean();
        for (m, e) in mean.iter().zip(&o.expected) {
            assert!((f64::from(*m) - e / o.expected_weight).abs() < 1e-3);
        }
    }
}

#[test]
fn rounds_survive_up_to_the_tolerated_dropouts_at_every_stage() {
    // 10 stations, complete graph: 9 neighbours, threshold 6, 3 may drop.
    let n = 10u32;
    let mut s = setup(2, n, 300);
    assert_eq!(Aggregator::new(s.clone()).unwrap().threshold(), 6);
    for stage in [Drop::AfterKeys, Drop::AfterShares, Drop::AfterInput] {
        // The dropped stations' pairwise masks are rebuilt with either
        // generator.
        s.config.mask_prg = if stage == Drop::AfterShares {
            MaskPrg::Chacha20
        } else {
            MaskPrg::Aes128Ctr
        };
        for dropped in 1..=3usize {
            let mut drops = vec![Drop::Never; n as usize];
            for d in drops.iter_mut().skip(2).step_by(3).take(dropped) {
                *d = stage;
            }
            let o = round(&s, &drops, 20 + dropped as u64);
            // Stations that sent their input are in the sum even if they
            // vanished before unmasking.
            let in_sum = if stage == Drop::AfterInput {
                n as usize
            } else {
                n as usize - dropped
            };
            assert_sum(&o, in_sum);
            let agg = o.result.as_ref().unwrap();
            let want_dropped = if stage == Drop::AfterShares {
                dropped
            } else {
                0
            };
            assert_eq!(agg.dropped.len(), want_dropped, "{stage:?} x {dropped}");
        }
    }
    // Dropouts at different stages in one round.
    let mut drops = vec![Drop::Never; n as usize];
    drops[1] = Drop::AfterKeys;
    drops[4] = Drop::AfterShares;
    drops[7] = Drop::AfterInput;
    assert_sum(&round(&s, &drops, 5), 8);
}

#[test]
fn more_dropouts_than_tolerated_abort_cleanly_and_the_next_round_proceeds() {
    let n = 10u32;
    for stage in [Drop::AfterKeys, Drop::AfterShares, Drop::AfterInput] {
        let mut drops = vec![Drop::Never; n as usize];
        for d in drops.iter_mut().take(5) {
            *d = stage;
        }
        let o = round(&setup(3, n, 50), &drops, 3);
        assert!(
            matches!(o.result, Err(SecAggError::TooFew { .. })),
            "{stage:?}: {:?}",
            o.result.as_ref().map(|a| a.survivors.len())
        );
        let next = round(&setup(4, n, 50), &vec![Drop::Never; n as usize], 4);
        assert_sum(&next, n as usize);
    }
}

#[test]
fn sparse_rounds_with_dropouts_sum_correctly() {
    // 150 stations: Harary graph of degree 2 * ceil(5 log2 150) = 74.
    let n = 150u32;
    let s = setup(6, n, 64);
    let server = Aggregator::new(s.clone()).unwrap();
    assert_eq!(server.graph().degree(), 74);
    // One in five drops, a third at each stage (a third of a neighbourhood
    // is tolerated; more than that in one neighbourhood aborts the round).
    let mut drops = vec![Drop::Never; n as usize];
    for (i, d) in drops.iter_mut().enumerate() {
        *d = match i % 15 {
            3 => Drop::AfterKeys,
            8 => Drop::AfterShares,
            13 => Drop::AfterInput,
            _ => Drop::Never,
        };
    }
    assert_sum(&round(&s, &drops, 8), 130);
}

/// A full round up to the unmask request, for the misbehaviour tests.
struct Staged {
    stations: Vec<StationSession>,
    server: Aggregator,
    inboxes: BTreeMap<Slot, Vec<SealedShare>>,
    requests: BTreeMap<Slot, UnmaskRequest>,
}

fn staged(n: u32, round: u64) -> Staged {
    let (stations, server, inboxes) = to_masking(&setup(round, n, 20), 1);
    Staged {
        stations,
        server,
        inboxes,
        requests: BTreeMap::new(),
    }
}

/// Stations and server of `s` through key advertisement and sharing, every
/// station answering; station `i` draws from seed `i + seed`.
fn to_masking(
    s: &RoundSetup,
    seed: u8,
) -> (
    Vec<StationSession>,
    Aggregator,
    BTreeMap<Slot, Vec<SealedShare>>,
) {
    let mut stations: Vec<StationSession> = (0..s.participants)
        .map(|i| StationSession::with_seed(s.clone(), i, [i as u8 + seed; 32]).unwrap())
        .collect();
    let mut server = Aggregator::new(s.clone()).unwrap();
    for st in stations.iter_mut() {
        server.add_keys(st.slot(), st.advertise().unwrap()).unwrap();
    }
    for (slot, roster) in server.rosters().unwrap() {
        let b = stations[slot as usize].share_keys(&roster).unwrap();
        server.add_shares(slot, b).unwrap();
    }
    let inboxes = server.route_shares().unwrap();
    (stations, server, inboxes)
}

impl Staged {
    fn mask_all(&mut self) {
        for (slot, inbox) in &self.inboxes {
            let st = &mut self.stations[*slot as usize];
            let input = st.masked_input(inbox, &[0.25; 20], 100).unwrap();
            self.server.add_masked(*slot, input).unwrap();
        }
        self.requests = self.server.unmask_requests().unwrap();
    }
}

#[test]
fn honest_stations_refuse_to_reveal_both_shares_of_one_station() {
    let mut r = staged(6, 9);
    r.mask_all();
    let mut greedy = r.requests[&0].clone();
    greedy.dropped.push(greedy.survivors[1]);
    assert_eq!(
        r.stations[0].unmask(&greedy),
        Err(SecAggError::BothShares {
            slot: greedy.survivors[1]
        })
    );
    // One answer per round: a second, differently worded request for the
    // other kind of share is refused too.
    let honest = r.requests[&1].clone();
    r.stations[1].unmask(&honest).unwrap();
    let mut other_kind = honest.clone();
    let victim = other_kind.survivors.remove(0);
    other_kind.dropped.push(victim);
    assert!(matches!(
        r.stations[1].unmask(&other_kind),
        Err(SecAggError::Stage { .. })
    ));
    // A request naming too few survivors is refused.
    let mut thin = r.requests[&2].clone();
    thin.survivors.retain(|&s| s == 0 || s == 2);
    assert!(thin.survivors.len() < r.stations[2].threshold());
    assert!(matches!(
        r.stations[2].unmask(&thin),
        Err(SecAggError::TooFew { .. })
    ));
}

#[test]
fn replayed_tampered_and_misrouted_shares_are_refused() {
    let old = staged(5, 10);
    // Round 11 with the same stations' slots: shares from round 10 replayed.
    let mut new = staged(5, 11);
    let replayed = old.inboxes[&0].clone();
    assert!(matches!(
        new.stations[0].masked_input(&replayed, &[0.0; 20], 10),
        Err(SecAggError::Round {
            got: 10,
            want: 11,
            ..
        })
    ));
    // Relabelled as round 11: the AEAD binding (and the round's fresh keys)
    // refuse it.
    let mut relabelled = staged(5, 11);
    let mut forged = old.inboxes[&0].clone();
    for s in &mut forged {
        s.round = 11;
    }
    assert!(matches!(
        relabelled.stations[0].masked_input(&forged, &[0.0; 20], 10),
        Err(SecAggError::Unauthentic { to: 0, .. })
    ));
    // A flipped ciphertext bit.
    let mut tampered = new.inboxes[&1].clone();
    tampered[0].ciphertext[5] ^= 1;
    assert!(matches!(
        new.stations[1].masked_input(&tampered, &[0.0; 20], 10),
        Err(SecAggError::Unauthentic { to: 1, .. })
    ));
    // A share sealed for station 2 handed to station 3 (relabelled as its own).
    let mut fresh = staged(5, 12);
    let mut misrouted = fresh.inboxes[&3].clone();
    let stolen = fresh.inboxes[&2]
        .iter()
        .find(|s| s.from == misrouted[0].from)
        .unwrap()
        .clone();
    misrouted[0] = SealedShare { to: 3, ..stolen };
    assert!(matches!(
        fresh.stations[3].masked_input(&misrouted, &[0.0; 20], 10),
        Err(SecAggError::Unauthentic { to: 3, .. })
    ));
    // A share addressed to another station is refused outright.
    let wrong_to = fresh.inboxes[&2].clone();
    assert!(matches!(
        fresh.stations[4].masked_input(&wrong_to, &[0.0; 20], 10),
        Err(SecAggError::Slot { slot: 2, .. })
    ));
}

#[test]
fn the_server_holds_only_masked_vectors_and_their_sum() {
    // Every station's update is zero: any structure in what the server
    // sees would betray the plaintext. Each masked vector looks uniform in
    // Z_{2^32}, and the server's state after one input is that input alone.
    let n = 5u32;
    let len = 20_000;
    let s = setup(13, n, len);
    let (mut stations, mut server, inboxes) = to_masking(&s, 40);
    let zero = vec![0.0f32; len];
    let quantized_zero = s.quantizer().quantize(0.0, &mut rand::rng());
    for (slot, inbox) in &inboxes {
        let input = stations[*slot as usize]
            .masked_input(inbox, &zero, 500)
            .unwrap();
        let same = input.values[..len]
            .iter()
            .filter(|&&v| v.abs_diff(quantized_zero) <= 1)
            .count();
        assert!(same < 10, "{same} of {len} elements unmasked");
        let mean = input.values.iter().map(|&v| f64::from(v)).sum::<f64>() / len as f64;
        assert!(
            (mean / f64::from(u32::MAX) - 0.5).abs() < 0.01,
            "masked values are not uniform: mean {mean}"
        );
        server.add_masked(*slot, input).unwrap();
    }
    for (slot, req) in server.unmask_requests().unwrap() {
        let r = stations[slot as usize].unmask(&req).unwrap();
        server.add_unmask(slot, r).unwrap();
    }
    let agg = server.finish().unwrap();
    assert!(agg
        .weighted_sum
        .iter()
        .all(|v| f64::from(v.abs()) <= agg.error_bound));
    assert!((agg.total_weight - 2.5).abs() <= agg.weight_error_bound);
}

#[test]
fn a_corrupt_share_is_caught_by_the_commitment_not_summed() {
    let mut r = staged(6, 14);
    r.mask_all();
    let mut first = true;
    for (slot, req) in r.requests.clone() {
        let mut resp = r.stations[slot as usize].unmask(&req).unwrap();
        if first {
            resp.seed_shares[0].1[7] ^= 0x40;
            first = false;
        }
        r.server.add_unmask(slot, resp).unwrap();
    }
    assert!(matches!(
        r.server.finish(),
        Err(SecAggError::BadRecovery {
            what: "self-mask seed",
            ..
        })
    ));
}

#[test]
fn malformed_messages_are_refused_by_the_server() {
    let mut r = staged(5, 15);
    // Wrong length, wrong slot, replay of a masked input.
    let bad_len = MaskedInput {
        slot: 0,
        round: 15,
        values: vec![0; 3],
    };
    assert!(matches!(
        r.server.add_masked(0, bad_len),
        Err(SecAggError::Malformed { .. })
    ));
    let st = &mut r.stations[0];
    let input = st.masked_input(&r.inboxes[&0], &[0.1; 20], 3).unwrap();
    assert!(r.server.add_masked(1, input.clone()).is_err());
    r.server.add_masked(0, input.clone()).unwrap();
    assert!(r.server.add_masked(0, input).is_err());
    // Out-of-stage messages.
    assert!(matches!(r.server.rosters(), Err(SecAggError::Stage { .. })));
    // Bad updates at the station.
    let mut s = staged(5, 16);
    assert!(matches!(
        s.stations[0].masked_input(&s.inboxes[&0], &[f32::NAN; 20], 3),
        Err(SecAggError::Update(_))
    ));
    let mut s = staged(5, 17);
    assert!(matches!(
        s.stations[0].masked_input(&s.inboxes[&0], &[0.0; 19], 3),
        Err(SecAggError::Update(_))
    ));
}

#[test]
fn the_benchmark_measures_a_whole_round_and_its_bytes() {
    let r = bench::bench_round(12, 2_000, &SecAggConfig::default(), 0.25).unwrap();
    assert_eq!((r.neighbours, r.threshold, r.dropped), (11, 7, 3));
    assert!(r.round_s > 0.0 && r.server_s > 0.0 && r.plain_server_s > 0.0);
    // Up: the masked update (4 bytes per element and the weight) plus keys,
    // 11 sealed shares and the unmask answer.
    assert!(r.station_up_bytes > 4 * 2_001 && r.station_up_bytes < 4 * 2_001 + 4_000);
    assert!(r.upload_expansion > 1.0 && r.upload_expansion < 1.5);
    assert!(r.max_error < 1e-3, "{}", r.max_error);
    assert!(bench::format_table(&[r]).lines().count() == 3);
}

#[test]
fn stations_refuse_to_send_an_update_over_the_norm_bound() {
    let mut s = setup(18, 4, 4);
    s.max_update_norm = Some(1.0);
    let (mut stations, mut server, inboxes) = to_masking(&s, 9);
    // Norm 1.8: refused by the station itself, never masked or sent.
    let err = stations[0]
        .masked_input(&inboxes[&0], &[0.9; 4], 10)
        .unwrap_err();
    assert!(err.to_string().contains("exceeds"), "{err}");
    // Norm 0.2: sent; the round goes on without the first station.
    for slot in 1..4u32 {
        let input = stations[slot as usize]
            .masked_input(&inboxes[&slot], &[0.1; 4], 10)
            .unwrap();
        server.add_masked(slot, input).unwrap();
    }
    for (slot, req) in server.unmask_requests().unwrap() {
        let r = stations[slot as usize].unmask(&req).unwrap();
        server.add_unmask(slot, r).unwrap();
    }
    let agg = server.finish().unwrap();
    assert_eq!((agg.survivors.len(), agg.dropped.len()), (3, 1));
    let mut bad = s.clone();
    bad.max_update_norm = Some(f64::NAN);
    assert!(bad.validate().is_err());
}

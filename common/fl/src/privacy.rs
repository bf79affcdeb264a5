//! Differential privacy at the server: DP-FedAvg (McMahan et al. 2018) with
//! fixed or adaptive clipping (Andrew et al. 2021), and the accounting of
//! both central and local (DP-SGD at the stations) privacy.
//!
//! ## Central mode
//! Each accepted update's difference from the global model is clipped to L2
//! norm `C` and the clipped differences are averaged with equal weights (not
//! by example counts: each station's influence on the mean is then at most
//! `C / m` for `m` updates, the sensitivity the noise is sized for). Gaussian
//! noise of standard deviation `z·C/m` is added to every coordinate of the
//! mean before the strategy sees it, so FedAvgM, FedAdam and the other server
//! optimizers only post-process a private mean. The unit of privacy is a
//! *station*: the released models are (ε, δ)-DP with respect to adding or
//! removing any one precinct's whole data set.
//!
//! With adaptive clipping, `C` follows a target quantile of the update
//! norms: each round the server counts the updates that were not clipped,
//! adds Gaussian noise of standard deviation `σ_b` to that count (default
//! `m/20`), and sets `C ← C·exp(−η(b̄ − γ))`. The configured
//! `noise_multiplier` `z` is then the whole mechanism's, and the updates get
//! `z_Δ = (z⁻² − (2σ_b)⁻²)^(−1/2)` (Andrew et al., Theorem 1), so the
//! accountant charges `z` per round either way.
//!
//! Each aggregated round is one Poisson-subsampled Gaussian step with
//! sampling rate `q = sampled / connected` for the [`RdpAccountant`]; the
//! round's cumulative ε (at the configured δ) goes into the round's metrics
//! and, with `target_epsilon`, the run stops before a round that would spend
//! more. The stations are sampled uniformly without replacement, which the
//! accountant treats as Poisson sampling at the same rate, the usual
//! approximation (as TF Privacy and Flower do).
//!
//! ## Local mode
//! The stations run DP-SGD (per-sample clipping and noise in their trainer,
//! settings sent with every round) and account their own ε; the server
//! records the largest ε any station reported. Local mode does not need a
//! trusted server and works together with secure aggregation.
//!
//! ## Noise source
//! The server's noise comes from ChaCha20 seeded with 32 bytes of operating
//! system entropy drawn when the engine starts, unless `seed` is set, which
//! makes runs reproducible for studies but the noise predictable to whoever
//! knows the seed: never set it for a deployment.

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use rand_distr::{Distribution, StandardNormal};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::metrics::RoundMetrics;
use fedcrime_privacy::RdpAccountant;
use fedcrime_wire::{RoundSettings, Scalar};

/// The [`RoundSettings::extensions`] key of local DP-SGD's noise multiplier.
pub const DP_SGD_NOISE_EXTENSION: &str = "dp_sgd_noise_multiplier";
/// The [`RoundSettings::extensions`] key of local DP-SGD's per-sample clip.
pub const DP_SGD_CLIP_EXTENSION: &str = "dp_sgd_clip";
/// The [`RoundSettings::extensions`] key of the δ stations account at.
pub const DP_DELTA_EXTENSION: &str = "dp_delta";
/// The fit metric in which a station reports its cumulative local ε.
pub const DP_EPSILON_METRIC: &str = "dp_epsilon";

/// Where the noise is added.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DpMode {
    /// DP-FedAvg at the server (trusted server, private models).
    #[default]
    Central,
    /// DP-SGD at each station (no trust in the server).
    Local,
}

impl std::str::FromStr for DpMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "central" => Ok(DpMode::Central),
            "local" => Ok(DpMode::Local),
            other => Err(format!(
                "unknown DP mode {other:?}: expected central or local"
            )),
        }
    }
}

impl std::fmt::Display for DpMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DpMode::Central => "central",
            DpMode::Local => "local",
        })
    }
}

/// Adaptive clipping's settings (Andrew et al. 2021; defaults as there and
/// in Flower's `DifferentialPrivacyServerSideAdaptiveClipping`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdaptiveClip {
    /// The first round's clipping norm (default 0.1).
    pub initial_clip: f64,
    /// The fraction of updates that should fall under the clip (default 0.5).
    pub target_quantile: f64,
    /// The geometric update's learning rate η (default 0.2).
    pub learning_rate: f64,
    /// Standard deviation of the noise on the count of unclipped updates
    /// (default: the larger of expected updates per round / 20, as Flower,
    /// and the noise multiplier z, so that with the few stations of a city
    /// the count takes at most a quarter of the noise budget: the updates'
    /// multiplier is then at most 1.155·z).
    pub clipped_count_stddev: Option<f64>,
}

impl Default for AdaptiveClip {
    fn default() -> Self {
        AdaptiveClip {
            initial_clip: 0.1,
            target_quantile: 0.5,
            learning_rate: 0.2,
            clipped_count_stddev: None,
        }
    }
}

/// The `[privacy]` section: differential privacy of the federated run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrivacyConfig {
    /// `central` (DP-FedAvg at the server, default) or `local` (DP-SGD at
    /// the stations).
    pub mode: DpMode,
    /// Noise standard deviation over the clipping norm, z (default 1.0).
    pub noise_multiplier: f64,
    /// Fixed clipping norm: of each update's difference from the global
    /// model (central), or of each sample's gradient (local). Central mode
    /// needs this or `adaptive_clip`; local mode defaults to 1.0.
    pub clip: Option<f64>,
    /// Adaptive clipping (central mode): `true` for the defaults or a table.
    #[serde(with = "crate::switch", skip_serializing_if = "Option::is_none")]
    pub adaptive_clip: Option<AdaptiveClip>,
    /// δ of the reported (ε, δ) (default 1e-5).
    pub delta: f64,
    /// Stop training before a round whose ε would exceed this.
    pub target_epsilon: Option<f64>,
    /// Seed of the server's noise, for reproducible studies only (default:
    /// operating-system entropy).
    pub seed: Option<u64>,
}

impl Default for PrivacyConfig {
    fn default() -> Self {
        PrivacyConfig {
            mode: DpMode::Central,
            noise_multiplier: 1.0,
            clip: None,
            adaptive_clip: None,
            delta: 1e-5,
            target_epsilon: None,
            seed: None,
        }
    }
}

impl PrivacyConfig {
    /// Checks every setting, returning the bad field and why.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let z = self.noise_multiplier;
        if !(z.is_finite() && z >= 0.0) {
            return Err((
                "privacy.noise_multiplier",
                format!("must be a finite number >= 0, got {z}"),
            ));
        }
        if let Some(c) = self.clip {
            if !(c.is_finite() && c > 0.0) {
                return Err(("privacy.clip", format!("must be finite and > 0, got {c}")));
            }
        }
        if !(self.delta > 0.0 && self.delta < 1.0) {
            return Err((
                "privacy.delta",
                format!("must be in (0, 1), got {}", self.delta),
            ));
        }
        if let Some(e) = self.target_epsilon {
            if !(e.is_finite() && e > 0.0) {
                return Err((
                    "privacy.target_epsilon",
                    format!("must be finite and > 0, got {e}"),
                ));
            }
        }
        match (self.mode, self.clip, &self.adaptive_clip) {
            (DpMode::Central, Some(_), Some(_)) => {
                return Err((
                    "privacy.adaptive_clip",
                    "set either clip (fixed) or adaptive_clip, not both".into(),
                ))
            }
            (DpMode::Central, None, None) => {
                return Err((
                    "privacy.clip",
                    "central DP needs a clipping norm: clip = <norm> or adaptive_clip = true"
                        .into(),
                ))
            }
            (DpMode::Local, _, Some(_)) => {
                return Err((
                    "privacy.adaptive_clip",
                    "adaptive clipping is for central mode; local DP-SGD clips each sample's \
                     gradient to the fixed `clip`"
                        .into(),
                ))
            }
            _ => {}
        }
        if let Some(a) = &self.adaptive_clip {
            if !(a.initial_clip.is_finite() && a.initial_clip > 0.0) {
                return Err((
                    "privacy.adaptive_clip.initial_clip",
                    format!("must be finite and > 0, got {}", a.initial_clip),
                ));
            }
            if !(a.target_quantile > 0.0 && a.target_quantile < 1.0) {
                return Err((
                    "privacy.adaptive_clip.target_quantile",
                    format!("must be in (0, 1), got {}", a.target_quantile),
                ));
            }
            if !(a.learning_rate.is_finite() && a.learning_rate > 0.0) {
                return Err((
                    "privacy.adaptive_clip.learning_rate",
                    format!("must be finite and > 0, got {}", a.learning_rate),
                ));
            }
            if let Some(s) = a.clipped_count_stddev {
                if !(s.is_finite() && s > 0.0) {
                    return Err((
                        "privacy.adaptive_clip.clipped_count_stddev",
                        format!("must be finite and > 0, got {s}"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The per-sample clip of local DP-SGD (default 1.0).
    pub fn local_clip(&self) -> f64 {
        self.clip.unwrap_or(1.0)
    }

    /// Adds the local DP-SGD settings to a round's settings (local mode).
    pub fn add_to_settings(&self, settings: &mut RoundSettings) {
        if self.mode == DpMode::Local {
            settings.extensions.insert(
                DP_SGD_NOISE_EXTENSION.into(),
                Scalar::Float(self.noise_multiplier),
            );
            settings.extensions.insert(
                DP_SGD_CLIP_EXTENSION.into(),
                Scalar::Float(self.local_clip()),
            );
            settings
                .extensions
                .insert(DP_DELTA_EXTENSION.into(), Scalar::Float(self.delta));
        }
    }
}

/// Local DP-SGD settings a round asks for, read back from its settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LocalDp {
    /// Noise multiplier.
    pub noise_multiplier: f64,
    /// Per-sample gradient clip.
    pub clip: f64,
    /// δ to report ε at.
    pub delta: f64,
}

impl LocalDp {
    /// The settings of a round that asks for DP-SGD, `None` otherwise; an
    /// error names a malformed or out-of-range value.
    pub fn from_settings(settings: &RoundSettings) -> Result<Option<LocalDp>, String> {
        let get = |key: &str| -> Result<Option<f64>, String> {
            match settings.extensions.get(key) {
                None => Ok(None),
                Some(Scalar::Float(v)) => Ok(Some(*v)),
                Some(Scalar::Int(v)) => Ok(Some(*v as f64)),
                Some(other) => Err(format!(
                    "round setting {key} must be a number, got {other:?}"
                )),
            }
        };
        let (Some(z), Some(c)) = (get(DP_SGD_NOISE_EXTENSION)?, get(DP_SGD_CLIP_EXTENSION)?) else {
            return Ok(None);
        };
        let delta = get(DP_DELTA_EXTENSION)?.unwrap_or(1e-5);
        let valid = z.is_finite() && z >= 0.0 && c.is_finite() && c > 0.0;
        let delta_valid = delta > 0.0 && delta < 1.0;
        if !(valid && delta_valid) {
            return Err(format!(
                "round asks for DP-SGD with noise multiplier {z}, clip {c}, delta {delta}: \
                 need noise >= 0, clip > 0, delta in (0, 1)"
            ));
        }
        Ok(Some(LocalDp {
            noise_multiplier: z,
            clip: c,
            delta,
        }))
    }
}

/// What a round's privacy cost and settings were (in [`RoundMetrics`]).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RoundPrivacy {
    /// `central` or `local`.
    pub mode: String,
    /// The noise multiplier charged this round.
    pub noise_multiplier: f64,
    /// The sampling rate charged this round (sampled / connected).
    pub sampling_rate: f64,
    /// The clipping norm used this round (central).
    pub clip: Option<f64>,
    /// The clipping norm the next round uses (adaptive clipping).
    pub next_clip: Option<f64>,
    /// Accepted updates that were clipped (central).
    pub clipped: u32,
    /// Cumulative ε after this round at `delta` (central: the accountant's;
    /// local: the largest a station reported).
    pub epsilon: Option<f64>,
    /// The δ of `epsilon`.
    pub delta: f64,
    /// Whether this round's updates were noised and charged (false when the
    /// round was not aggregated).
    pub charged: bool,
}

/// The server's DP-FedAvg state.
pub(crate) struct CentralDp {
    config: PrivacyConfig,
    clip: f64,
    accountant: RdpAccountant,
    base_seed: [u8; 32],
    unclipped: u32,
    clipped: u32,
    sampling_rate: f64,
    expected_updates: f64,
}

impl std::fmt::Debug for CentralDp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CentralDp")
            .field("clip", &self.clip)
            .field("noise_multiplier", &self.config.noise_multiplier)
            .finish_non_exhaustive()
    }
}

impl CentralDp {
    /// The state of a run, continuing `history` (a resumed run).
    pub(crate) fn new(config: PrivacyConfig, history: &[RoundMetrics]) -> Self {
        let mut accountant = RdpAccountant::default();
        let mut clip = config
            .clip
            .or(config.adaptive_clip.as_ref().map(|a| a.initial_clip))
            .unwrap_or(1.0);
        for p in history.iter().filter_map(|m| m.privacy.as_ref()) {
            if p.charged {
                // Validated when recorded; a hand-edited history that fails
                // here charges nothing rather than stopping the server.
                let _ = accountant.compose(p.sampling_rate, p.noise_multiplier, 1);
            }
            if let Some(next) = p.next_clip.or(p.clip) {
                clip = next;
            }
        }
        let mut base_seed = [0u8; 32];
        match config.seed {
            Some(seed) => base_seed[..8].copy_from_slice(&seed.to_le_bytes()),
            // ThreadRng: ChaCha12 seeded from the operating system.
            None => rand::rng().fill_bytes(&mut base_seed),
        }
        CentralDp {
            config,
            clip,
            accountant,
            base_seed,
            unclipped: 0,
            clipped: 0,
            sampling_rate: 1.0,
            expected_updates: 0.0,
        }
    }

    /// Starts a fit attempt: `sampled` of `connected` stations.
    pub(crate) fn start_attempt(&mut self, sampled: usize, connected: usize) {
        self.unclipped = 0;
        self.clipped = 0;
        self.sampling_rate = if connected == 0 {
            1.0
        } else {
            (sampled as f64 / connected as f64).min(1.0)
        };
        self.expected_updates = sampled as f64;
    }

    /// The cumulative ε now.
    pub(crate) fn epsilon(&self) -> Option<f64> {
        self.accountant
            .epsilon(self.config.delta)
            .ok()
            .map(|s| s.epsilon)
    }

    /// Whether one more round at `sampling_rate` would spend more than
    /// `target_epsilon`, and the ε it would reach.
    pub(crate) fn next_round_exceeds(&self, sampling_rate: f64) -> Option<f64> {
        let target = self.config.target_epsilon?;
        let mut next = self.accountant.clone();
        next.compose(sampling_rate, self.config.noise_multiplier, 1)
            .ok()?;
        let eps = next.epsilon(self.config.delta).ok()?.epsilon;
        (eps > target).then_some(eps)
    }

    /// The record of a round that released nothing.
    pub(crate) fn uncharged_record(&self) -> RoundPrivacy {
        RoundPrivacy {
            mode: DpMode::Central.to_string(),
            noise_multiplier: self.config.noise_multiplier,
            sampling_rate: self.sampling_rate,
            clip: Some(self.clip),
            next_clip: None,
            clipped: self.clipped,
            epsilon: self.epsilon(),
            delta: self.config.delta,
            charged: false,
        }
    }

    /// Clips `update` (trained parameters) so that `‖update − global‖ ≤ C`,
    /// in place; counts whether it was clipped.
    pub(crate) fn clip_update(&mut self, update: &mut [f32], global: &[f32]) {
        let norm = update
            .par_chunks(CHUNK)
            .zip(global.par_chunks(CHUNK))
            .map(|(u, g)| {
                u.iter()
                    .zip(g)
                    .map(|(&u, &g)| {
                        let d = f64::from(u) - f64::from(g);
                        d * d
                    })
                    .sum::<f64>()
            })
            .sum::<f64>()
            .sqrt();
        if norm <= self.clip {
            self.unclipped += 1;
            return;
        }
        self.clipped += 1;
        let factor = self.clip / norm;
        update
            .par_chunks_mut(CHUNK)
            .zip(global.par_chunks(CHUNK))
            .for_each(|(u, g)| {
                for (u, &g) in u.iter_mut().zip(g) {
                    *u = (f64::from(g) + (f64::from(*u) - f64::from(g)) * factor) as f32;
                }
            });
    }

    /// The noise multiplier of the updates: `z`, or with adaptive clipping
    /// what remains after the count query's share. `None` when the count's
    /// noise is too small for `z` (configuration error caught by `validate`).
    fn update_noise_multiplier(&self) -> Option<f64> {
        let z = self.config.noise_multiplier;
        match &self.config.adaptive_clip {
            None => Some(z),
            Some(_) if z == 0.0 => Some(0.0),
            Some(_) => {
                let two_sb = 2.0 * self.count_stddev();
                let rest = z.powi(-2) - two_sb.powi(-2);
                (rest > 0.0).then(|| rest.powf(-0.5))
            }
        }
    }

    fn count_stddev(&self) -> f64 {
        self.config
            .adaptive_clip
            .as_ref()
            .and_then(|a| a.clipped_count_stddev)
            .unwrap_or_else(|| (self.expected_updates / 20.0).max(self.config.noise_multiplier))
    }

    /// Adds the mechanism's noise to the mean of `m` clipped updates, in
    /// place, with a generator seeded by (base seed, round, attempt), and
    /// charges the round; returns the round's record.
    pub(crate) fn noise_and_charge(
        &mut self,
        mean: &mut [f32],
        m: usize,
        round: u64,
        attempt: u32,
    ) -> Result<RoundPrivacy, String> {
        let z_updates = self.update_noise_multiplier().ok_or_else(|| {
            format!(
                "noise multiplier {} is too small for adaptive clipping's count noise \
                 (stddev {}): need z < 2 * clipped_count_stddev",
                self.config.noise_multiplier,
                self.count_stddev()
            )
        })?;
        let sigma = z_updates * self.clip / m.max(1) as f64;
        let mut seed = self.base_seed;
        seed[8..16].copy_from_slice(&round.to_le_bytes());
        seed[16..20].copy_from_slice(&attempt.to_le_bytes());
        if sigma > 0.0 {
            add_gaussian(mean, sigma, seed);
        }
        self.accountant
            .compose(self.sampling_rate, self.config.noise_multiplier, 1)
            .map_err(|e| e.to_string())?;
        let used = self.clip;
        let next_clip = match &self.config.adaptive_clip {
            Some(a) => {
                seed[20] = 1;
                let mut rng = ChaCha20Rng::from_seed(seed);
                let noise: f64 = if self.config.noise_multiplier > 0.0 {
                    StandardNormal.sample(&mut rng)
                } else {
                    0.0
                };
                let b = (f64::from(self.unclipped) + noise * self.count_stddev()) / m.max(1) as f64;
                self.clip *= (-a.learning_rate * (b - a.target_quantile)).exp();
                Some(self.clip)
            }
            None => None,
        };
        Ok(RoundPrivacy {
            mode: DpMode::Central.to_string(),
            noise_multiplier: self.config.noise_multiplier,
            sampling_rate: self.sampling_rate,
            clip: Some(used),
            next_clip,
            clipped: self.clipped,
            epsilon: self.epsilon(),
            delta: self.config.delta,
            charged: true,
        })
    }
}

const CHUNK: usize = 1 << 16;

/// Adds N(0, sigma²) to every value, in parallel, deterministically for a
/// given seed (each chunk draws from its own stream of the generator).
fn add_gaussian(values: &mut [f32], sigma: f64, seed: [u8; 32]) {
    values
        .par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(i, chunk)| {
            let mut rng = ChaCha20Rng::from_seed(seed);
            rng.set_stream(i as u64);
            for v in chunk {
                let n: f64 = StandardNormal.sample(&mut rng);
                *v = (f64::from(*v) + n * sigma) as f32;
            }
        });
}

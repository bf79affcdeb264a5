//! The neighbour graph (who holds whose shares and shares pairwise masks)
//! and the Shamir threshold.
//!
//! Small rounds use the complete graph, as SecAgg does. Larger rounds use
//! SecAgg+'s sparse graph: a Harary graph `H(k, n)` (each node joined to the
//! `k / 2` nearest on either side of a ring) over a random relabelling of the
//! slots, drawn from the round's seed so that the server and every station
//! compute the same graph. Each station then does `O(k)` work instead of
//! `O(n)`, and a corrupt coalition smaller than the threshold in one
//! neighbourhood learns nothing.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

use crate::{Result, SecAggConfig, SecAggError, Slot, KEY_LEN, MAX_NEIGHBOURS};

/// Rounds up to this many stations use the complete graph by default.
const COMPLETE_UP_TO: u32 = 100;

/// The neighbour graph of one round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Graph {
    neighbours: Vec<Vec<Slot>>,
    degree: usize,
}

impl Graph {
    /// The graph of a round with `n` stations under `config`, relabelled by
    /// `seed`. Errors when `n < 3` or the degree would exceed
    /// [`MAX_NEIGHBOURS`].
    pub fn new(n: u32, config: &SecAggConfig, seed: &[u8; KEY_LEN]) -> Result<Graph> {
        if n < 3 {
            return Err(SecAggError::Config {
                field: "participants",
                reason: format!("{n} stations: at least 3 are needed"),
            });
        }
        let complete = n as usize - 1;
        let k = match config.neighbours {
            0 if n <= COMPLETE_UP_TO => complete,
            0 => {
                let log2 = f64::from(n).log2();
                (2 * (5.0 * log2).ceil() as usize).min(complete)
            }
            k => k.min(complete),
        };
        if k > MAX_NEIGHBOURS {
            return Err(SecAggError::Config {
                field: "neighbours",
                reason: format!(
                    "{n} stations on a complete graph need {k} neighbours each, more than \
                     {MAX_NEIGHBOURS}; set `neighbours` to at most {MAX_NEIGHBOURS}"
                ),
            });
        }
        if k < 2 {
            return Err(SecAggError::Config {
                field: "neighbours",
                reason: format!("{k}: each station needs at least 2 neighbours"),
            });
        }
        if k == complete {
            let neighbours = (0..n)
                .map(|i| (0..n).filter(|&j| j != i).collect())
                .collect();
            return Ok(Graph {
                neighbours,
                degree: k,
            });
        }
        // Harary H(k, n) for even k; an odd k rounds up (or down at n - 1).
        let half = k.div_ceil(2);
        let mut order: Vec<Slot> = (0..n).collect();
        order.shuffle(&mut ChaCha20Rng::from_seed(*seed));
        let n_us = n as usize;
        let mut neighbours = vec![Vec::with_capacity(2 * half); n_us];
        for (pos, &slot) in order.iter().enumerate() {
            for d in 1..=half {
                neighbours[slot as usize].push(order[(pos + d) % n_us]);
                neighbours[slot as usize].push(order[(pos + n_us - d) % n_us]);
            }
        }
        for list in &mut neighbours {
            list.sort_unstable();
            list.dedup();
        }
        let degree = neighbours.iter().map(Vec::len).min().unwrap_or(0);
        Ok(Graph { neighbours, degree })
    }

    /// The neighbours of `slot`, sorted (empty for a slot out of range).
    pub fn neighbours(&self, slot: Slot) -> &[Slot] {
        self.neighbours
            .get(slot as usize)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// Whether `a` and `b` are neighbours.
    pub fn adjacent(&self, a: Slot, b: Slot) -> bool {
        self.neighbours(a).binary_search(&b).is_ok()
    }

    /// Neighbours per station.
    pub fn degree(&self) -> usize {
        self.degree
    }

    /// Stations in the graph.
    pub fn len(&self) -> usize {
        self.neighbours.len()
    }

    /// Whether the graph has no stations (never, once built).
    pub fn is_empty(&self) -> bool {
        self.neighbours.is_empty()
    }
}

/// The Shamir threshold for `degree` neighbours tolerating a fraction
/// `dropout_tolerance` of them dropping: the largest `t` with `t <= (1 - δ)
/// k` (so that the survivors can always rebuild), but never at or below
/// `k / 2` (so that a server telling different stations different stories
/// can never collect `t` shares of both kinds for one station: the two sets
/// of responders are disjoint and together at most `k`).
pub fn threshold(degree: usize, dropout_tolerance: f64) -> usize {
    let by_dropouts = ((1.0 - dropout_tolerance) * degree as f64 + 1e-9).floor() as usize;
    by_dropouts.max(degree / 2 + 1).min(degree)
}

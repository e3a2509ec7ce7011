//! Jigsaw permutation sets generated from a seed: O's plain random set, or a set that greedily
//! maximises the minimum Hamming distance (Noroozi & Favaro), with their statistics.

use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use crate::streams::{self, Stream};
use crate::{Error, Result};

/// How a permutation set is chosen.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum PermutationKind {
    /// Uniformly random distinct permutations (O's 3D `permutations3d_100_27.npy`).
    #[default]
    Random,
    /// Greedy maximum of the minimum Hamming distance over a random candidate pool.
    MaxHamming,
}

/// A set of permutations of `0..tiles`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PermutationSet {
    perms: Vec<Vec<usize>>,
}

/// Pairwise Hamming distances of a set.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct HammingStats {
    /// The smallest distance between two permutations.
    pub min: usize,
    /// The mean distance over all pairs.
    pub mean: f64,
}

fn hamming(a: &[usize], b: &[usize]) -> usize {
    a.iter().zip(b).filter(|(x, y)| x != y).count()
}

impl PermutationSet {
    /// `n` distinct permutations of `tiles` items, deterministic by `seed`.
    pub fn generate(n: usize, tiles: usize, kind: PermutationKind, seed: u64) -> Result<Self> {
        let possible = (1..=tiles)
            .try_fold(1usize, |acc, k| acc.checked_mul(k))
            .unwrap_or(usize::MAX);
        if n == 0 || tiles < 2 || n > possible {
            return Err(Error::arg(
                "permutations",
                format!("cannot draw {n} distinct permutations of {tiles} tiles"),
            ));
        }
        let mut rng = streams::rng(seed, Stream::Permutations, 0);
        let draw = |rng: &mut StdRng| {
            let mut p: Vec<usize> = (0..tiles).collect();
            p.shuffle(rng);
            p
        };
        let mut perms: Vec<Vec<usize>> = Vec::with_capacity(n);
        match kind {
            PermutationKind::Random => {
                while perms.len() < n {
                    let p = draw(&mut rng);
                    if !perms.contains(&p) {
                        perms.push(p);
                    }
                }
            }
            PermutationKind::MaxHamming => {
                let pool_size = (50 * n).clamp(n, possible);
                let mut pool: Vec<Vec<usize>> = Vec::with_capacity(pool_size);
                while pool.len() < pool_size {
                    let p = draw(&mut rng);
                    if !pool.contains(&p) {
                        pool.push(p);
                    }
                }
                // Distance of every candidate to the nearest chosen permutation.
                let mut nearest = vec![usize::MAX; pool.len()];
                let mut pick = 0;
                for _ in 0..n {
                    let chosen = pool.swap_remove(pick);
                    nearest.swap_remove(pick);
                    for (d, p) in nearest.iter_mut().zip(&pool) {
                        *d = (*d).min(hamming(p, &chosen));
                    }
                    perms.push(chosen);
                    pick = (0..pool.len())
                        .max_by_key(|&i| (nearest[i], std::cmp::Reverse(i)))
                        .unwrap_or(0);
                }
            }
        }
        Ok(PermutationSet { perms })
    }

    /// The permutations.
    pub fn perms(&self) -> &[Vec<usize>] {
        &self.perms
    }

    /// Number of permutations (the jigsaw's classes).
    pub fn len(&self) -> usize {
        self.perms.len()
    }

    /// Whether the set is empty (never, for a generated set).
    pub fn is_empty(&self) -> bool {
        self.perms.is_empty()
    }

    /// Minimum and mean pairwise Hamming distance.
    pub fn stats(&self) -> HammingStats {
        let (mut min, mut sum, mut pairs) = (usize::MAX, 0usize, 0usize);
        for i in 0..self.perms.len() {
            for j in i + 1..self.perms.len() {
                let d = hamming(&self.perms[i], &self.perms[j]);
                min = min.min(d);
                sum += d;
                pairs += 1;
            }
        }
        HammingStats {
            min: if pairs == 0 { 0 } else { min },
            mean: sum as f64 / pairs.max(1) as f64,
        }
    }
}

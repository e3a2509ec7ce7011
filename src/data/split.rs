//! Dataset splits: seeded train/test, nested label fractions, the original code's fraction
//! and cross-validation splits, seeded K-fold; all deterministic by seed.
//!
//! Cases are indices (into a dataset's case list). Rounding:
//! - [`fraction_size`]: `max(1, round(p * n))` (half away from zero), at most `n`; sizes are
//!   monotone in `p`, so the prefixes of one permutation are nested.
//! - [`original_fraction`]: the original code's `int(n * p * (1 - val))` training and
//!   `int(n * val)` validation cases (truncation), but at least one training case.

use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::streams::{self, Stream};

/// A permutation of `0..n` from stream `purpose` of `seed`.
fn permutation(n: usize, seed: u64, purpose: Stream) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    v.shuffle(&mut streams::rng(seed, purpose, 0));
    v
}

fn check_fraction(p: f64, what: &str) -> Result<()> {
    if p > 0.0 && p <= 1.0 {
        Ok(())
    } else {
        Err(Error::arg(
            what,
            format!("expected a fraction in (0, 1], got {p}"),
        ))
    }
}

/// Training, validation and test cases of one split.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Split {
    /// Training cases.
    pub train: Vec<usize>,
    /// Validation cases (may be empty).
    pub val: Vec<usize>,
    /// Test cases (may be empty).
    pub test: Vec<usize>,
}

/// A seeded train/test split of `0..n`: the test set is the first `round(n * test_frac)` cases
/// of a permutation (at least 1 when `test_frac > 0`, leaving at least one for training).
pub fn train_test(n: usize, test_frac: f64, seed: u64) -> Result<Split> {
    if !(0.0..1.0).contains(&test_frac) {
        return Err(Error::arg(
            "test_frac",
            format!("expected a fraction in [0, 1), got {test_frac}"),
        ));
    }
    if n < 2 && test_frac > 0.0 {
        return Err(Error::arg(
            "n",
            format!("cannot split {n} case(s) into train and test"),
        ));
    }
    let perm = permutation(n, seed, Stream::Split);
    let k = if test_frac > 0.0 {
        ((n as f64 * test_frac).round() as usize).clamp(1, n - 1)
    } else {
        0
    };
    Ok(Split {
        test: perm[..k].to_vec(),
        train: perm[k..].to_vec(),
        val: Vec::new(),
    })
}

/// The number of cases a label fraction `p` of `n` gives: `max(1, round(p * n))`, at most `n`.
pub fn fraction_size(n: usize, p: f64) -> Result<usize> {
    check_fraction(p, "fraction")?;
    if n == 0 {
        return Err(Error::arg("cases", "no cases to take a fraction of"));
    }
    Ok(((n as f64 * p).round() as usize).clamp(1, n))
}

/// Nested subsets of `cases`: for each fraction, the first [`fraction_size`] cases of one
/// seeded permutation, so smaller fractions are prefixes of larger ones.
pub fn nested_fractions(cases: &[usize], fractions: &[f64], seed: u64) -> Result<Vec<Vec<usize>>> {
    let perm = permutation(cases.len(), seed, Stream::Subsets);
    fractions
        .iter()
        .map(|&p| {
            let k = fraction_size(cases.len(), p)?;
            Ok(perm[..k].iter().map(|&i| cases[i]).collect())
        })
        .collect()
}

/// The original code's label-fraction split of an ordered list (no shuffling): training is
/// the first `int(n * p * (1 - val_frac))` cases (at least 1), validation the next
/// `int(n * val_frac)`.
pub fn original_fraction(cases: &[usize], p: f64, val_frac: f64) -> Result<Split> {
    check_fraction(p, "fraction")?;
    if !(0.0..1.0).contains(&val_frac) {
        return Err(Error::arg(
            "val_frac",
            format!("expected a fraction in [0, 1), got {val_frac}"),
        ));
    }
    let n = cases.len();
    if n == 0 {
        return Err(Error::arg("cases", "no cases to split"));
    }
    let n_train = ((n as f64 * p * (1.0 - val_frac)) as usize).clamp(1, n);
    let n_val = ((n as f64 * val_frac) as usize).min(n - n_train);
    Ok(Split {
        train: cases[..n_train].to_vec(),
        val: cases[n_train..n_train + n_val].to_vec(),
        test: Vec::new(),
    })
}

/// The original code's fundus cross-validation: chunk `i` is `cases[i::k]`; repetition `i`
/// tests on chunk `i` and splits the other chunks, concatenated in order, with
/// [`original_fraction`].
pub fn strided_folds(cases: &[usize], k: usize, p: f64, val_frac: f64) -> Result<Vec<Split>> {
    if k < 2 || k > cases.len() {
        return Err(Error::arg(
            "k",
            format!("expected 2..={} folds, got {k}", cases.len()),
        ));
    }
    let chunks: Vec<Vec<usize>> = (0..k)
        .map(|i| cases.iter().skip(i).step_by(k).copied().collect())
        .collect();
    (0..k)
        .map(|i| {
            let rest: Vec<usize> = (0..k)
                .filter(|&j| j != i)
                .flat_map(|j| chunks[j].iter().copied())
                .collect();
            let mut s = original_fraction(&rest, p, val_frac)?;
            s.test = chunks[i].clone();
            Ok(s)
        })
        .collect()
}

/// Seeded K-fold cross-validation of `0..n`: a permutation cut into `k` contiguous folds (the
/// first `n % k` one case larger, as scikit-learn's KFold); fold `i` is the test set.
pub fn kfold(n: usize, k: usize, seed: u64) -> Result<Vec<Split>> {
    if k < 2 || k > n {
        return Err(Error::arg("k", format!("expected 2..={n} folds, got {k}")));
    }
    let perm = permutation(n, seed, Stream::Folds);
    let mut bounds = vec![0];
    for i in 0..k {
        bounds.push(bounds[i] + n / k + usize::from(i < n % k));
    }
    Ok((0..k)
        .map(|i| Split {
            test: perm[bounds[i]..bounds[i + 1]].to_vec(),
            train: perm[..bounds[i]]
                .iter()
                .chain(&perm[bounds[i + 1]..])
                .copied()
                .collect(),
            val: Vec::new(),
        })
        .collect())
}

/// Saves named case lists (e.g. a `BTreeMap<String, Vec<String>>` of ids) as
/// `dir/splits.json`, atomically, and returns the file's path.
pub fn save_splits<T: Serialize>(dir: &Path, splits: &T) -> Result<PathBuf> {
    let path = dir.join("splits.json");
    let text = serde_json::to_string_pretty(splits).map_err(Error::msg)?;
    crate::io::write_atomic(&path, text.as_bytes())?;
    Ok(path)
}

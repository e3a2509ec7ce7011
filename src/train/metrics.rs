//! Evaluation metrics: Dice (hard, from a confusion matrix over pooled voxels, and soft),
//! quadratic weighted kappa, accuracy and the confusion matrix, with scikit-learn's conventions.

use crate::{Error, Result};

/// The Dice of a class that neither the truth nor the prediction contains.
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
pub enum AbsentClass {
    /// 0, what O's route gives (scikit-learn's per-class Jaccard, whose `zero_division`
    /// default is 0, then Dice = 2J / (1 + J)): the paper's metric.
    #[default]
    Zero,
    /// 1: nothing to find and nothing found.
    One,
}

/// A `k × k` confusion matrix: `counts[truth][prediction]`.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Confusion {
    /// The counts, rows by true class.
    pub counts: Vec<Vec<u64>>,
}

impl Confusion {
    /// An empty matrix over `k` classes.
    pub fn new(k: usize) -> Self {
        Confusion {
            counts: vec![vec![0; k]; k],
        }
    }

    /// Classes.
    pub fn classes(&self) -> usize {
        self.counts.len()
    }

    /// Counts pairs of labels; pairs with a label outside `0..k` are ignored (scikit-learn's
    /// `confusion_matrix(labels=...)`, e.g. O's decoded grade −1).
    pub fn add(&mut self, truth: &[i64], pred: &[i64]) -> Result<()> {
        if truth.len() != pred.len() {
            return Err(Error::shape(
                "confusion",
                format!("{} true labels but {} predictions", truth.len(), pred.len()),
            ));
        }
        let k = self.classes() as i64;
        for (&t, &p) in truth.iter().zip(pred) {
            if (0..k).contains(&t) && (0..k).contains(&p) {
                self.counts[t as usize][p as usize] += 1;
            }
        }
        Ok(())
    }

    /// Adds another matrix of the same size.
    pub fn merge(&mut self, other: &Confusion) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            for (x, y) in a.iter_mut().zip(b) {
                *x += y;
            }
        }
    }

    fn total(&self) -> u64 {
        self.counts.iter().flatten().sum()
    }

    /// Hard Dice per class, `2|P∩T| / (|P| + |T|)`, with O's 0 for a class absent from both.
    pub fn dice(&self) -> Vec<f64> {
        self.dice_with(AbsentClass::Zero)
    }

    /// Hard Dice per class, with `absent` deciding a class absent from both.
    pub fn dice_with(&self, absent: AbsentClass) -> Vec<f64> {
        let empty = match absent {
            AbsentClass::Zero => 0.0,
            AbsentClass::One => 1.0,
        };
        (0..self.classes())
            .map(|c| {
                let tp = self.counts[c][c] as f64;
                let truth: u64 = self.counts[c].iter().sum();
                let pred: u64 = self.counts.iter().map(|r| r[c]).sum();
                let denom = (truth + pred) as f64;
                if denom == 0.0 {
                    empty
                } else {
                    2.0 * tp / denom
                }
            })
            .collect()
    }

    /// The share of correct labels.
    pub fn accuracy(&self) -> f64 {
        let correct: u64 = (0..self.classes()).map(|c| self.counts[c][c]).sum();
        correct as f64 / self.total().max(1) as f64
    }

    /// Cohen's kappa with quadratic weights (`sklearn.metrics.cohen_kappa_score(weights="quadratic")`);
    /// NaN where it is undefined, as scikit-learn (no pairs, or truth and prediction each of
    /// one and the same class): never a silent 0.
    pub fn quadratic_kappa(&self) -> f64 {
        let k = self.classes();
        let n = self.total() as f64;
        if n == 0.0 || k < 2 {
            return f64::NAN;
        }
        let rows: Vec<f64> = self
            .counts
            .iter()
            .map(|r| r.iter().sum::<u64>() as f64)
            .collect();
        let cols: Vec<f64> = (0..k)
            .map(|j| self.counts.iter().map(|r| r[j]).sum::<u64>() as f64)
            .collect();
        let (mut observed, mut expected) = (0.0, 0.0);
        for (i, (row, &ri)) in self.counts.iter().zip(&rows).enumerate() {
            for (j, (&count, &cj)) in row.iter().zip(&cols).enumerate() {
                let w = ((i as f64 - j as f64) / (k as f64 - 1.0)).powi(2);
                observed += w * count as f64;
                expected += w * ri * cj / n;
            }
        }
        if expected == 0.0 {
            f64::NAN
        } else {
            1.0 - observed / expected
        }
    }
}

/// Grades scored as O scores them (`sst/utils/metrics.py::score_kappa_kaggle`:
/// `cohen_kappa_score(truth, pred, labels=[0..k-1], weights="quadratic")`): a prediction
/// outside `0..k` (O's undecodable −1, when no cumulative output is above 0.5) is left out of
/// the confusion matrix and so out of the kappa and of the accuracy, and counted here.
#[derive(Clone, Debug, PartialEq)]
pub struct GradeScores {
    /// The confusion matrix of the decodable predictions.
    pub confusion: Confusion,
    /// Quadratic weighted kappa over the decodable predictions (NaN where undefined).
    pub qwk: f64,
    /// The share of decodable predictions that are correct (the undecodable ones excluded, as
    /// from the kappa; `accuracy × scored / (scored + undecodable)` counts them as wrong).
    pub accuracy: f64,
    /// Predictions outside `0..k`, left out of `qwk` and `accuracy`.
    pub undecodable: usize,
    /// Predictions that `qwk` and `accuracy` count.
    pub scored: usize,
}

/// Scores predicted grades `pred` against `truth` (both `0..k`; `pred` may hold −1) the way O
/// does; see [`GradeScores`]. A true grade outside `0..k` is an error.
pub fn grade_scores(truth: &[i64], pred: &[i64], k: usize) -> Result<GradeScores> {
    if let Some(t) = truth.iter().find(|t| !(0..k as i64).contains(t)) {
        return Err(Error::arg(
            "grade",
            format!("true grade {t} is outside 0..{k}"),
        ));
    }
    let mut confusion = Confusion::new(k);
    confusion.add(truth, pred)?;
    let undecodable = pred.iter().filter(|p| !(0..k as i64).contains(p)).count();
    Ok(GradeScores {
        qwk: confusion.quadratic_kappa(),
        accuracy: confusion.accuracy(),
        scored: pred.len() - undecodable,
        undecodable,
        confusion,
    })
}

/// Soft Dice per class from summed statistics: `(2Σ y·p + ε) / (Σ y + Σ p + ε)`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SoftDice {
    inter: Vec<f64>,
    truth: Vec<f64>,
    pred: Vec<f64>,
}

impl SoftDice {
    /// Accumulators for `k` classes.
    pub fn new(k: usize) -> Self {
        SoftDice {
            inter: vec![0.0; k],
            truth: vec![0.0; k],
            pred: vec![0.0; k],
        }
    }

    /// Adds class `c`'s sums of `y·p`, `y` and `p`.
    pub fn add(&mut self, c: usize, inter: f64, truth: f64, pred: f64) {
        self.inter[c] += inter;
        self.truth[c] += truth;
        self.pred[c] += pred;
    }

    /// The per-class soft Dice.
    pub fn dice(&self) -> Vec<f64> {
        let eps = crate::nn::loss::DICE_EPS;
        (0..self.inter.len())
            .map(|c| (2.0 * self.inter[c] + eps) / (self.truth[c] + self.pred[c] + eps))
            .collect()
    }
}

/// The mean of a slice (0 when empty).
pub fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

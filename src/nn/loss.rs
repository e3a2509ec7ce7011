//! Losses: O's and S's Dice losses for segmentation, cross-entropy, binary cross-entropy,
//! and one-hot encoding of label volumes.

use candle_core::{DType, Tensor};

use crate::{Error, Result};

/// Smoothing constant of the Dice losses (O's and S's `1e-5`).
pub const DICE_EPS: f64 = 1e-5;

/// How the Dice loss sums over the batch.
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
pub enum DiceVariant {
    /// O's `weighted_dice_coefficient_loss`: one Dice per class over the whole batch, mean
    /// over classes, negated: `-(1/C) Σ_c (2Σ yp + ε) / (Σ y + Σ p + ε)`.
    #[default]
    Batch,
    /// S's loss: one Dice per sample and class, `1 - mean_{b,c}(...)`.
    PerSample,
}

/// The Dice loss of probabilities `p [N, C, ...]` against one-hot targets `y` of the same shape.
pub fn dice_loss(p: &Tensor, y: &Tensor, variant: DiceVariant) -> Result<Tensor> {
    if p.dims() != y.dims() || p.rank() < 3 {
        return Err(Error::shape(
            "dice_loss",
            format!(
                "expected probabilities and one-hot targets of one shape [N, C, ...], got {:?} and {:?}",
                p.dims(),
                y.dims()
            ),
        ));
    }
    let (n, c) = (p.dims()[0], p.dims()[1]);
    let (p, y) = (p.reshape((n, c, ()))?, y.reshape((n, c, ()))?);
    let inter = (&p * &y)?.sum(2)?;
    let total = (p.sum(2)? + y.sum(2)?)?;
    Ok(match variant {
        DiceVariant::Batch => {
            let dice = ((inter.sum(0)? * 2.0)? + DICE_EPS)?.div(&(total.sum(0)? + DICE_EPS)?)?;
            dice.mean_all()?.neg()?
        }
        DiceVariant::PerSample => {
            let dice = ((inter * 2.0)? + DICE_EPS)?.div(&(total + DICE_EPS)?)?;
            (1.0 - dice.mean_all()?)?
        }
    })
}

/// One-hot encoding of integer labels `[N, ...]` into `[N, classes, ...]` (dtype `dtype`);
/// labels outside `0..classes` are an error.
pub fn one_hot(labels: &Tensor, classes: usize, dtype: DType) -> Result<Tensor> {
    one_hot_of_indices(&class_indices(labels, classes, "labels")?, classes, dtype)
}

/// [`one_hot`] of labels `[N, ...]` (u8 or u32) already known to lie in `0..classes`: device
/// operations only, no value read back to the host (a step on a GPU does not wait for it).
pub fn one_hot_of_indices(labels: &Tensor, classes: usize, dtype: DType) -> Result<Tensor> {
    let l = labels.to_dtype(DType::U32)?;
    let mut shape = l.dims().to_vec();
    shape.insert(1, 1);
    let mut ids_shape = vec![1; shape.len()];
    ids_shape[1] = classes;
    let ids = Tensor::arange(0u32, classes as u32, l.device())?.reshape(ids_shape)?;
    Ok(l.reshape(shape)?.broadcast_eq(&ids)?.to_dtype(dtype)?)
}

/// Mean cross-entropy of logits `[N, K]` against class indices `[N]`.
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    if logits.rank() != 2 || targets.dims() != [logits.dims()[0]] {
        return Err(Error::shape(
            "cross_entropy",
            format!(
                "expected logits [N, K] and targets [N], got {:?} and {:?}",
                logits.dims(),
                targets.dims()
            ),
        ));
    }
    let t = class_indices(targets, logits.dims()[1], "targets")?;
    Ok(candle_nn::loss::cross_entropy(logits, &t)?)
}

/// Class indices as u32, checked: every value a whole number in `0..classes` (a negative,
/// fractional or non-finite label is an error, not class 0).
pub fn class_indices(labels: &Tensor, classes: usize, what: &str) -> Result<Tensor> {
    if labels.elem_count() == 0 {
        return Ok(labels.to_dtype(DType::U32)?);
    }
    let flat = labels.flatten_all()?;
    if !matches!(labels.dtype(), DType::U8 | DType::U32) {
        let f = flat.to_dtype(DType::F64)?;
        // 0·x is 0 for finite values, NaN otherwise.
        let finite = (&f * 0.0)?.sum_all()?.to_scalar::<f64>()?;
        let min = f.min(0)?.to_scalar::<f64>()?;
        let frac = (&f - f.floor()?)?.abs()?.max(0)?.to_scalar::<f64>()?;
        if !finite.is_finite() || min < 0.0 || frac != 0.0 {
            let bad = f
                .to_vec1::<f64>()?
                .into_iter()
                .find(|v| !v.is_finite() || *v < 0.0 || v.fract() != 0.0)
                .unwrap_or(min);
            return Err(Error::arg(
                what,
                format!("label {bad} is not a class index (a whole number in 0..{classes})"),
            ));
        }
        let max = f.max(0)?.to_scalar::<f64>()?;
        if max >= classes as f64 {
            return Err(Error::arg(
                what,
                format!("label {max} is outside 0..{classes}"),
            ));
        }
    }
    let l = labels.to_dtype(DType::U32)?;
    let max = l.flatten_all()?.max(0)?.to_scalar::<u32>()? as usize;
    if max >= classes {
        return Err(Error::arg(
            what,
            format!("label {max} is outside 0..{classes}"),
        ));
    }
    Ok(l)
}

/// Mean binary cross-entropy of logits against targets in `[0, 1]` of the same shape.
pub fn binary_cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    if logits.dims() != targets.dims() {
        return Err(Error::shape(
            "binary_cross_entropy",
            format!(
                "logits {:?} and targets {:?} differ in shape",
                logits.dims(),
                targets.dims()
            ),
        ));
    }
    // log(1 + e^x) - y·x, computed stably as max(x, 0) - x·y + log(1 + e^-|x|).
    let x = logits;
    let loss = ((x.relu()? - (x * targets)?)? + (x.abs()?.neg()?.exp()? + 1.0)?.log()?)?;
    Ok(loss.mean_all()?)
}

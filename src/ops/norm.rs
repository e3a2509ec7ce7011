//! Batch normalisation in training mode: normalise with the batch's own statistics and return
//! them, so that a layer can update its running averages.

use std::sync::{Arc, Mutex};

use candle_core::{DType, Shape, Tensor};

use super::cpu::{self, Real, norm::Dims, norm::Stats};
use super::kernel::{Kernel, apply, apply_no_grad, composed_mode};
use crate::{Error, Result};

/// The statistics of one batch, per channel.
#[derive(Clone, Debug)]
pub struct BatchStats {
    /// Mean `[C]`.
    pub mean: Tensor,
    /// Biased variance `[C]` (what the batch was normalised with).
    pub var: Tensor,
    /// Values per channel the statistics were taken over (`N · spatial`).
    pub count: usize,
}

/// Normalises `x [N, C, ...]` per channel with its batch statistics, then scales by `gamma [C]`
/// and shifts by `beta [C]`. Differentiable in all three.
pub fn batch_norm_train(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
) -> Result<(Tensor, BatchStats)> {
    if x.rank() < 2 {
        return Err(Error::shape(
            "batch_norm",
            format!("expected [N, C, ...], got {:?}", x.dims()),
        ));
    }
    let (n, c) = (x.dims()[0], x.dims()[1]);
    let s = x.dims()[2..].iter().product::<usize>();
    if gamma.dims() != [c] || beta.dims() != [c] {
        return Err(Error::shape(
            "batch_norm",
            format!(
                "x {:?} has {c} channels; gamma {:?} and beta {:?} must be [{c}]",
                x.dims(),
                gamma.dims(),
                beta.dims()
            ),
        ));
    }
    if n * s < 2 {
        return Err(Error::shape(
            "batch_norm",
            format!(
                "training mode needs more than one value per channel, got x {:?}",
                x.dims()
            ),
        ));
    }
    let d = Dims { n, c, s };
    let cpu_kernel =
        x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64) && !composed_mode();
    if !cpu_kernel {
        return composed(x, gamma, beta, eps, d);
    }
    let cell = Arc::new(Mutex::new(Stats::default()));
    let op = Normalize {
        d,
        eps,
        shape: x.shape().clone(),
        stats: cell.clone(),
    };
    let y = apply(op, &[x, gamma, beta])?;
    let st = cell
        .lock()
        .map_err(|_| Error::msg("batch_norm: statistics lock poisoned"))?
        .clone();
    let stats = BatchStats {
        mean: Tensor::from_vec(st.mean, c, x.device())?.to_dtype(x.dtype())?,
        var: Tensor::from_vec(st.var, c, x.device())?.to_dtype(x.dtype())?,
        count: n * s,
    };
    Ok((y, stats))
}

fn channel_view(t: &Tensor, d: Dims) -> candle_core::Result<Tensor> {
    t.reshape((1, d.c, 1))
}

/// The same normalisation from candle ops (other devices and dtypes).
fn composed(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    d: Dims,
) -> Result<(Tensor, BatchStats)> {
    let xs = x.reshape((d.n, d.c, d.s))?;
    let mean = xs.mean_keepdim(2)?.mean_keepdim(0)?;
    let centred = xs.broadcast_sub(&mean)?;
    let var = centred.sqr()?.mean_keepdim(2)?.mean_keepdim(0)?;
    let y = centred
        .broadcast_div(&(&var + eps)?.sqrt()?)?
        .broadcast_mul(&channel_view(gamma, d)?)?
        .broadcast_add(&channel_view(beta, d)?)?
        .reshape(x.shape())?;
    let stats = BatchStats {
        mean: mean.flatten_all()?.detach(),
        var: var.flatten_all()?.detach(),
        count: d.n * d.s,
    };
    Ok((y, stats))
}

/// The forward normalisation; leaves the batch statistics in `stats`.
struct Normalize {
    d: Dims,
    eps: f64,
    shape: Shape,
    stats: Arc<Mutex<Stats>>,
}

/// The three gradients packed into one flat output: `dx`, then `dgamma`, then `dbeta`.
struct NormalizeGrad {
    d: Dims,
    eps: f64,
}

impl Kernel for Normalize {
    const NAME: &'static str = "batch_norm";

    fn out_shape(&self) -> Shape {
        self.shape.clone()
    }

    fn cpu<T: Real>(&self, i: &[&[T]]) -> Vec<T> {
        let st = cpu::norm::stats(i[0], self.d);
        let y = cpu::norm::normalize(i[0], i[1], i[2], &st, self.eps, self.d);
        if let Ok(mut cell) = self.stats.lock() {
            *cell = st;
        }
        y
    }

    fn composed(&self, i: &[&Tensor]) -> candle_core::Result<Tensor> {
        composed(i[0], i[1], i[2], self.eps, self.d)
            .map(|(y, _)| y)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))
    }

    fn backward(
        &self,
        i: &[&Tensor],
        _o: &Tensor,
        g: &Tensor,
    ) -> Option<candle_core::Result<Vec<Option<Tensor>>>> {
        let d = self.d;
        Some((|| {
            let packed = apply_no_grad(NormalizeGrad { d, eps: self.eps }, &[i[0], i[1], g])?;
            let len = d.n * d.c * d.s;
            let dx = packed.narrow(0, 0, len)?.reshape(self.shape.clone())?;
            let dgamma = packed.narrow(0, len, d.c)?;
            let dbeta = packed.narrow(0, len + d.c, d.c)?;
            Ok(vec![Some(dx), Some(dgamma), Some(dbeta)])
        })())
    }
}

impl Kernel for NormalizeGrad {
    const NAME: &'static str = "batch_norm_grad";

    fn out_shape(&self) -> Shape {
        Shape::from(self.d.n * self.d.c * self.d.s + 2 * self.d.c)
    }

    fn cpu<T: Real>(&self, i: &[&[T]]) -> Vec<T> {
        let (mut dx, dg, db) = cpu::norm::backward(i[0], i[1], i[2], self.eps, self.d);
        dx.extend(dg);
        dx.extend(db);
        dx
    }

    fn composed(&self, i: &[&Tensor]) -> candle_core::Result<Tensor> {
        let d = self.d;
        let (x, gamma, g) = (
            i[0].reshape((d.n, d.c, d.s))?,
            i[1],
            i[2].reshape((d.n, d.c, d.s))?,
        );
        let m = (d.n * d.s) as f64;
        let mean = x.mean_keepdim(2)?.mean_keepdim(0)?;
        let centred = x.broadcast_sub(&mean)?;
        let inv = (centred.sqr()?.mean_keepdim(2)?.mean_keepdim(0)? + self.eps)?
            .sqrt()?
            .recip()?;
        let xhat = centred.broadcast_mul(&inv)?;
        let dbeta = g.sum_keepdim(2)?.sum_keepdim(0)?;
        let dgamma = (&g * &xhat)?.sum_keepdim(2)?.sum_keepdim(0)?;
        let k = inv.broadcast_mul(&channel_view(gamma, d)?)?;
        let dx = g
            .broadcast_sub(&(&dbeta / m)?)?
            .sub(&xhat.broadcast_mul(&(&dgamma / m)?)?)?
            .broadcast_mul(&k)?;
        Tensor::cat(
            &[
                dx.flatten_all()?,
                dgamma.flatten_all()?,
                dbeta.flatten_all()?,
            ],
            0,
        )
    }
}

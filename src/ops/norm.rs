//! Batch normalisation in training mode: normalise with the batch's own statistics and return
//! them, so that a layer can update its running averages. Also fused with the bias and ReLU
//! in front of it (a UNet block's conv → ReLU → BN), and a per-channel bias add, all with
//! one-pass gradient kernels.

use std::sync::{Arc, Mutex};

use candle_core::{DType, Shape, Tensor};

use super::cpu::{
    self, Real,
    norm::{Dims, Pre, Stats},
};
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
    normalize_train("batch_norm", x, None, gamma, beta, eps, false)
}

/// `relu(batch_norm_train(x))` in one kernel and one backward kernel (BatchNorm → ReLU, the
/// order of DenseNet); the ReLU passes gradient where its output is positive, as in PyTorch.
/// Differentiable in `x`, `gamma` and `beta`.
pub fn batch_norm_relu_train(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
) -> Result<(Tensor, BatchStats)> {
    normalize_train("batch_norm_relu", x, None, gamma, beta, eps, true)
}

/// Inference `relu(x · scale + shift)` per channel `[C]` in one pass: a BatchNorm on its
/// running averages followed by a ReLU. Not differentiable; for use under
/// [`crate::ops::no_grad`].
pub fn affine_relu(x: &Tensor, scale: &Tensor, shift: &Tensor) -> Result<Tensor> {
    let d = dims("affine_relu", x)?;
    check_channels("affine_relu", x, d, &[scale, shift])?;
    let p = Tensor::cat(&[scale, shift], 0)?;
    Ok(apply(
        AffineRelu {
            d,
            shape: x.shape().clone(),
        },
        &[x, &p],
    )?)
}

/// `batch_norm_train(relu(x + bias))` with `bias [C]` added per channel, in one kernel and
/// one backward kernel (the ReLU passes gradient where `x + bias > 0`, as in PyTorch).
/// Differentiable in `x`, `bias`, `gamma` and `beta`.
pub fn bias_relu_batch_norm_train(
    x: &Tensor,
    bias: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
) -> Result<(Tensor, BatchStats)> {
    normalize_train(
        "bias_relu_batch_norm",
        x,
        Some(bias),
        gamma,
        beta,
        eps,
        false,
    )
}

/// `x [N, C, ...] + bias [C]` per channel, with a kernel for the bias gradient (channel sums).
pub fn bias_add(x: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let d = dims("bias_add", x)?;
    check_channels("bias_add", x, d, &[bias])?;
    Ok(apply(
        BiasAdd {
            d,
            shape: x.shape().clone(),
        },
        &[x, bias],
    )?)
}

/// Inference `relu(x + bias) · scale + shift`, all per channel `[C]`, in one pass: a UNet
/// block's bias, ReLU and BatchNorm on its running averages (`scale = γ/√(var+ε)`,
/// `shift = β − mean·scale`). Not differentiable; for use under [`crate::ops::no_grad`].
pub fn bias_relu_affine(
    x: &Tensor,
    bias: &Tensor,
    scale: &Tensor,
    shift: &Tensor,
) -> Result<Tensor> {
    let d = dims("bias_relu_affine", x)?;
    check_channels("bias_relu_affine", x, d, &[bias, scale, shift])?;
    let p = Tensor::cat(&[bias, scale, shift], 0)?;
    Ok(apply(
        BiasReluAffine {
            d,
            shape: x.shape().clone(),
        },
        &[x, &p],
    )?)
}

fn dims(op: &'static str, x: &Tensor) -> Result<Dims> {
    if x.rank() < 2 {
        return Err(Error::shape(
            op,
            format!("expected [N, C, ...], got {:?}", x.dims()),
        ));
    }
    Ok(Dims {
        n: x.dims()[0],
        c: x.dims()[1],
        s: x.dims()[2..].iter().product::<usize>(),
    })
}

fn check_channels(op: &'static str, x: &Tensor, d: Dims, params: &[&Tensor]) -> Result<()> {
    if params.iter().any(|p| p.dims() != [d.c]) {
        let shapes: Vec<_> = params.iter().map(|p| p.dims().to_vec()).collect();
        return Err(Error::shape(
            op,
            format!(
                "x {:?} has {} channels; the per-channel parameters {shapes:?} must be [{}]",
                x.dims(),
                d.c,
                d.c
            ),
        ));
    }
    Ok(())
}

fn normalize_train(
    op: &'static str,
    x: &Tensor,
    bias: Option<&Tensor>,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    post_relu: bool,
) -> Result<(Tensor, BatchStats)> {
    let d = dims(op, x)?;
    let mut params = vec![gamma, beta];
    params.extend(bias);
    check_channels(op, x, d, &params)?;
    if d.n * d.s < 2 {
        return Err(Error::shape(
            op,
            format!(
                "training mode needs more than one value per channel, got x {:?}",
                x.dims()
            ),
        ));
    }
    let cpu_kernel =
        x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64) && !composed_mode();
    if !cpu_kernel {
        let xin = match bias {
            Some(b) => bias_relu_composed(x, b, d)?,
            None => x.clone(),
        };
        let (y, st) = composed(&xin, gamma, beta, eps, d)?;
        return Ok((if post_relu { super::relu(&y)? } else { y }, st));
    }
    // The parameters travel as one vector [bias?, gamma, beta] (custom ops take ≤ 3 inputs).
    let packed = match bias {
        Some(b) => Tensor::cat(&[b, gamma, beta], 0)?,
        None => Tensor::cat(&[gamma, beta], 0)?,
    };
    let cell = Arc::new(Mutex::new(None));
    let op = Normalize {
        d,
        eps,
        bias: bias.is_some(),
        post_relu,
        shape: x.shape().clone(),
        stats: cell.clone(),
    };
    let y = apply(op, &[x, &packed])?;
    let st = cell
        .lock()
        .map_err(|_| Error::msg("batch_norm: statistics lock poisoned"))?
        .clone()
        .ok_or_else(|| Error::msg("batch_norm: the kernel left no statistics"))?;
    let stats = BatchStats {
        mean: Tensor::from_vec(st.mean, d.c, x.device())?.to_dtype(x.dtype())?,
        var: Tensor::from_vec(st.var, d.c, x.device())?.to_dtype(x.dtype())?,
        count: d.n * d.s,
    };
    Ok((y, stats))
}

fn channel_view(t: &Tensor, d: Dims) -> candle_core::Result<Tensor> {
    t.reshape((1, d.c, 1))
}

/// `relu(x + bias)` per channel from candle ops, in `x`'s shape.
fn bias_relu_composed(x: &Tensor, bias: &Tensor, d: Dims) -> candle_core::Result<Tensor> {
    let u = x
        .reshape((d.n, d.c, d.s))?
        .broadcast_add(&channel_view(bias, d)?)?;
    // PyTorch's ReLU gradient (none at exactly zero), like the CPU kernel.
    u.mul(&u.gt(0.0)?.to_dtype(u.dtype())?)?.reshape(x.shape())
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

/// The parameter vector `[bias?, gamma, beta]` split into its parts.
fn split<T>(p: &[T], bias: bool, c: usize) -> (Option<&[T]>, &[T], &[T]) {
    let o = if bias { c } else { 0 };
    (bias.then(|| &p[..c]), &p[o..o + c], &p[o + c..o + 2 * c])
}

fn pre_of<T>(bias: Option<&[T]>) -> Pre<'_, T> {
    match bias {
        Some(b) => Pre::BiasRelu(b),
        None => Pre::Identity,
    }
}

/// The forward normalisation of `(x, [bias?, gamma, beta])`; leaves the batch statistics in
/// `stats`.
struct Normalize {
    d: Dims,
    eps: f64,
    bias: bool,
    /// A ReLU after the normalisation.
    post_relu: bool,
    shape: Shape,
    stats: Arc<Mutex<Option<Stats>>>,
}

/// The gradients of `(x, [bias?, gamma, beta], dy)` packed into one flat output: `dx`, then
/// the parameter gradients in the parameters' order.
struct NormalizeGrad {
    d: Dims,
    eps: f64,
    bias: bool,
    post_relu: bool,
    /// The statistics of the forward pass (recomputed when absent).
    stats: Option<Stats>,
}

impl Kernel for Normalize {
    const NAME: &'static str = "batch_norm";

    fn describe(&self) -> String {
        format!("{:?} relu {}", self.d, self.post_relu)
    }

    fn out_shape(&self) -> Shape {
        self.shape.clone()
    }

    fn cpu<T: Real>(&self, i: &[&[T]]) -> Vec<T> {
        let (bias, gamma, beta) = split(i[1], self.bias, self.d.c);
        let (y, st) = cpu::norm::forward(
            i[0],
            pre_of(bias),
            gamma,
            beta,
            self.eps,
            self.post_relu,
            self.d,
        );
        if let Ok(mut cell) = self.stats.lock() {
            *cell = Some(st);
        }
        y
    }

    fn composed(&self, i: &[&Tensor]) -> candle_core::Result<Tensor> {
        let d = self.d;
        let c = d.c;
        let o = if self.bias { c } else { 0 };
        let x = if self.bias {
            bias_relu_composed(i[0], &i[1].narrow(0, 0, c)?, d)?
        } else {
            i[0].clone()
        };
        let (gamma, beta) = (i[1].narrow(0, o, c)?, i[1].narrow(0, o + c, c)?);
        let y = composed(&x, &gamma, &beta, self.eps, d)
            .map(|(y, _)| y)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        if self.post_relu { y.relu() } else { Ok(y) }
    }

    fn backward(
        &self,
        i: &[&Tensor],
        _o: &Tensor,
        g: &Tensor,
    ) -> Option<candle_core::Result<Vec<Option<Tensor>>>> {
        let d = self.d;
        let stats = self.stats.lock().ok().and_then(|s| s.clone());
        Some((|| {
            let grad = NormalizeGrad {
                d,
                eps: self.eps,
                bias: self.bias,
                post_relu: self.post_relu,
                stats,
            };
            let packed = apply_no_grad(grad, &[i[0], i[1], g])?;
            let len = d.n * d.c * d.s;
            let dx = packed.narrow(0, 0, len)?.reshape(self.shape.clone())?;
            let dp = packed.narrow(0, len, i[1].dims()[0])?;
            Ok(vec![Some(dx), Some(dp)])
        })())
    }
}

impl Kernel for NormalizeGrad {
    const NAME: &'static str = "batch_norm_grad";

    fn describe(&self) -> String {
        format!("{:?} relu {}", self.d, self.post_relu)
    }

    fn out_shape(&self) -> Shape {
        let params = if self.bias { 3 } else { 2 };
        Shape::from(self.d.n * self.d.c * self.d.s + params * self.d.c)
    }

    fn cpu<T: Real>(&self, i: &[&[T]]) -> Vec<T> {
        let (bias, gamma, beta) = split(i[1], self.bias, self.d.c);
        let pre = pre_of(bias);
        let computed;
        let st = match &self.stats {
            Some(s) => s,
            None => {
                computed = cpu::norm::stats(i[0], pre, self.d);
                &computed
            }
        };
        let (mut dx, db, dg, dbeta) = cpu::norm::backward(
            i[0],
            pre,
            gamma,
            beta,
            i[2],
            st,
            self.eps,
            self.post_relu,
            self.d,
        );
        dx.extend(db);
        dx.extend(dg);
        dx.extend(dbeta);
        dx
    }

    fn composed(&self, i: &[&Tensor]) -> candle_core::Result<Tensor> {
        let d = self.d;
        let c = d.c;
        let o = if self.bias { c } else { 0 };
        let (x, g) = (i[0].reshape((d.n, c, d.s))?, i[2].reshape((d.n, c, d.s))?);
        let gamma = i[1].narrow(0, o, c)?;
        // t = relu(x + bias) and the ReLU's pass-through mask.
        let (t, mask) = if self.bias {
            let u = x.broadcast_add(&channel_view(&i[1].narrow(0, 0, c)?, d)?)?;
            let mask = u.gt(0.0)?.to_dtype(u.dtype())?;
            ((&u * &mask)?, Some(mask))
        } else {
            (x, None)
        };
        let m = (d.n * d.s) as f64;
        let mean = t.mean_keepdim(2)?.mean_keepdim(0)?;
        let centred = t.broadcast_sub(&mean)?;
        let inv = (centred.sqr()?.mean_keepdim(2)?.mean_keepdim(0)? + self.eps)?
            .sqrt()?
            .recip()?;
        let that = centred.broadcast_mul(&inv)?;
        let g = if self.post_relu {
            // The ReLU after the normalisation passes gradient where its output is positive.
            let y = that
                .broadcast_mul(&channel_view(&gamma, d)?)?
                .broadcast_add(&channel_view(&i[1].narrow(0, o + c, c)?, d)?)?;
            (g * y.gt(0.0)?.to_dtype(y.dtype())?)?
        } else {
            g
        };
        let dbeta = g.sum_keepdim(2)?.sum_keepdim(0)?;
        let dgamma = (&g * &that)?.sum_keepdim(2)?.sum_keepdim(0)?;
        let k = inv.broadcast_mul(&channel_view(&gamma, d)?)?;
        let dt = g
            .broadcast_sub(&(&dbeta / m)?)?
            .sub(&that.broadcast_mul(&(&dgamma / m)?)?)?
            .broadcast_mul(&k)?;
        let mut parts = Vec::new();
        match mask {
            Some(mask) => {
                let du = (dt * mask)?;
                parts.push(du.flatten_all()?);
                parts.push(du.sum_keepdim(2)?.sum_keepdim(0)?.flatten_all()?);
            }
            None => parts.push(dt.flatten_all()?),
        }
        parts.push(dgamma.flatten_all()?);
        parts.push(dbeta.flatten_all()?);
        Tensor::cat(&parts, 0)
    }
}

/// `x + bias` per channel.
struct BiasAdd {
    d: Dims,
    shape: Shape,
}

/// The bias gradient: per-channel sums of the output gradient.
struct ChannelSums(Dims);

impl Kernel for BiasAdd {
    const NAME: &'static str = "bias_add";

    fn out_shape(&self) -> Shape {
        self.shape.clone()
    }

    fn cpu<T: Real>(&self, i: &[&[T]]) -> Vec<T> {
        cpu::norm::add_bias(i[0], i[1], self.d)
    }

    fn composed(&self, i: &[&Tensor]) -> candle_core::Result<Tensor> {
        i[0].broadcast_add(&per_channel(i[1], i[0].rank())?)
    }

    fn backward(
        &self,
        i: &[&Tensor],
        _o: &Tensor,
        g: &Tensor,
    ) -> Option<candle_core::Result<Vec<Option<Tensor>>>> {
        let db = if i[1].track_op() {
            match apply_no_grad(ChannelSums(self.d), &[g]) {
                Ok(t) => Some(t),
                Err(e) => return Some(Err(e)),
            }
        } else {
            None
        };
        Some(Ok(vec![Some(g.clone()), db]))
    }
}

impl Kernel for ChannelSums {
    const NAME: &'static str = "channel_sums";

    fn out_shape(&self) -> Shape {
        Shape::from(self.0.c)
    }

    fn cpu<T: Real>(&self, i: &[&[T]]) -> Vec<T> {
        cpu::norm::channel_sums(i[0], self.0)
    }

    fn composed(&self, i: &[&Tensor]) -> candle_core::Result<Tensor> {
        let d = self.0;
        i[0].reshape((d.n, d.c, d.s))?.sum(2)?.sum(0)
    }
}

/// See [`bias_relu_affine`]; inputs `(x, [bias; scale; shift])`.
struct BiasReluAffine {
    d: Dims,
    shape: Shape,
}

impl Kernel for BiasReluAffine {
    const NAME: &'static str = "bias_relu_affine";

    fn out_shape(&self) -> Shape {
        self.shape.clone()
    }

    fn cpu<T: Real>(&self, i: &[&[T]]) -> Vec<T> {
        cpu::norm::bias_relu_affine(i[0], i[1], self.d)
    }

    fn composed(&self, i: &[&Tensor]) -> candle_core::Result<Tensor> {
        let c = self.d.c;
        let param = |k: usize| per_channel(&i[1].narrow(0, k * c, c)?, i[0].rank());
        i[0].broadcast_add(&param(0)?)?
            .relu()?
            .broadcast_mul(&param(1)?)?
            .broadcast_add(&param(2)?)
    }
}

/// See [`affine_relu`]; inputs `(x, [scale; shift])`.
struct AffineRelu {
    d: Dims,
    shape: Shape,
}

impl Kernel for AffineRelu {
    const NAME: &'static str = "affine_relu";

    fn out_shape(&self) -> Shape {
        self.shape.clone()
    }

    fn cpu<T: Real>(&self, i: &[&[T]]) -> Vec<T> {
        cpu::norm::affine_relu(i[0], i[1], self.d)
    }

    fn composed(&self, i: &[&Tensor]) -> candle_core::Result<Tensor> {
        let c = self.d.c;
        let param = |k: usize| per_channel(&i[1].narrow(0, k * c, c)?, i[0].rank());
        i[0].broadcast_mul(&param(0)?)?
            .broadcast_add(&param(1)?)?
            .relu()
    }
}

/// A per-channel `[C]` tensor shaped `[1, C, 1, ...]` to broadcast over a rank-`rank` tensor.
pub(crate) fn per_channel(p: &Tensor, rank: usize) -> candle_core::Result<Tensor> {
    let c = p.elem_count();
    let shape: Vec<usize> = (0..rank).map(|k| if k == 1 { c } else { 1 }).collect();
    p.reshape(shape)
}

//! Batch normalisation for any `[N, C, ...]` input, with running statistics kept as buffers
//! (`running_mean`, `running_var`) next to `weight` and `bias`, as in PyTorch.

use candle_core::{Tensor, Var};
use candle_nn::{Init, VarBuilder};

use crate::Result;
use crate::ops;

/// Options of [`BatchNorm`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BatchNormConfig {
    /// Added to the variance before the square root.
    pub eps: f64,
    /// Weight of the new batch in the running averages (PyTorch's convention; Keras'
    /// `momentum = 0.99` is `0.01` here).
    pub momentum: f64,
}

impl BatchNormConfig {
    /// Keras' defaults, used by the paper's 3D UNet: eps 1e-3, momentum 0.99 (0.01 here).
    pub const KERAS: BatchNormConfig = BatchNormConfig {
        eps: 1e-3,
        momentum: 0.01,
    };
    /// PyTorch's defaults (torchvision's DenseNet): eps 1e-5, momentum 0.1.
    pub const TORCH: BatchNormConfig = BatchNormConfig {
        eps: 1e-5,
        momentum: 0.1,
    };
}

impl Default for BatchNormConfig {
    fn default() -> Self {
        Self::KERAS
    }
}

/// Batch normalisation over the channel axis (axis 1).
#[derive(Clone, Debug)]
pub struct BatchNorm {
    weight: Tensor,
    bias: Tensor,
    running_mean: Var,
    running_var: Var,
    cfg: BatchNormConfig,
}

/// A batch normalisation of `channels` channels.
pub fn batch_norm(channels: usize, cfg: BatchNormConfig, vb: VarBuilder) -> Result<BatchNorm> {
    let weight = vb.get_with_hints(channels, "weight", Init::Const(1.0))?;
    let bias = vb.get_with_hints(channels, "bias", Init::Const(0.0))?;
    let running_mean =
        Var::from_tensor(&vb.get_with_hints(channels, "running_mean", Init::Const(0.0))?)?;
    let running_var =
        Var::from_tensor(&vb.get_with_hints(channels, "running_var", Init::Const(1.0))?)?;
    Ok(BatchNorm {
        weight,
        bias,
        running_mean,
        running_var,
        cfg,
    })
}

impl BatchNorm {
    /// Training mode normalises with the batch's statistics and updates the running averages;
    /// inference mode uses the running averages.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        if train {
            let (y, st) = ops::batch_norm_train(x, &self.weight, &self.bias, self.cfg.eps)?;
            self.update_running(st)?;
            return Ok(y);
        }
        self.eval(x)
    }

    /// `relu(forward_t(x))` (BatchNorm → ReLU, DenseNet's order), fused into one kernel in
    /// training mode and under [`ops::no_grad`].
    pub fn forward_relu_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        if train {
            let (y, st) = ops::batch_norm_relu_train(x, &self.weight, &self.bias, self.cfg.eps)?;
            self.update_running(st)?;
            return Ok(y);
        }
        if ops::grad_disabled() {
            let (scale, shift) = self.eval_affine()?;
            return ops::affine_relu(x, &scale, &shift);
        }
        ops::relu(&self.eval(x)?)
    }

    /// The scale `gamma` `[C]`.
    pub(crate) fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The shift `beta` `[C]`.
    pub(crate) fn bias(&self) -> &Tensor {
        &self.bias
    }

    /// The settings.
    pub(crate) fn config(&self) -> BatchNormConfig {
        self.cfg
    }

    /// The running mean and variance as f64 values.
    pub(crate) fn running(&self) -> Result<(Vec<f64>, Vec<f64>)> {
        let v = |t: &Tensor| -> Result<Vec<f64>> {
            Ok(t.to_dtype(candle_core::DType::F64)?.to_vec1::<f64>()?)
        };
        Ok((
            v(self.running_mean.as_tensor())?,
            v(self.running_var.as_tensor())?,
        ))
    }

    /// `forward_t(relu(x + bias))` with `bias [C]` per channel (a convolution's bias), fused
    /// into one kernel in training mode.
    pub fn forward_bias_relu_t(&self, x: &Tensor, bias: &Tensor, train: bool) -> Result<Tensor> {
        if train {
            let (y, st) =
                ops::bias_relu_batch_norm_train(x, bias, &self.weight, &self.bias, self.cfg.eps)?;
            self.update_running(st)?;
            return Ok(y);
        }
        if ops::grad_disabled() {
            let (scale, shift) = self.eval_affine()?;
            return ops::bias_relu_affine(x, bias, &scale, &shift);
        }
        self.eval(&ops::relu(&ops::bias_add(x, bias)?)?)
    }

    /// Moves the running averages towards the batch statistics `st`.
    pub(crate) fn update_running(&self, st: ops::BatchStats) -> Result<()> {
        let m = self.cfg.momentum;
        let unbiased = st.count as f64 / (st.count as f64 - 1.0);
        let mean = ((self.running_mean.as_tensor() * (1.0 - m))? + (st.mean * m)?)?;
        let var = ((self.running_var.as_tensor() * (1.0 - m))? + (st.var * (m * unbiased))?)?;
        self.running_mean.set(&mean.detach())?;
        self.running_var.set(&var.detach())?;
        Ok(())
    }

    /// Inference mode: the running averages.
    fn eval(&self, x: &Tensor) -> Result<Tensor> {
        let (scale, shift) = self.eval_affine()?;
        Ok(x.broadcast_mul(&ops::per_channel(&scale, x.rank())?)?
            .broadcast_add(&ops::per_channel(&shift, x.rank())?)?)
    }

    /// Inference mode as a per-channel affine map `(scale, shift)`, each `[C]`; detached under
    /// [`ops::no_grad`].
    fn eval_affine(&self) -> Result<(Tensor, Tensor)> {
        let scale = (self.running_var.as_tensor() + self.cfg.eps)?
            .sqrt()?
            .recip()?
            .mul(&self.weight)?;
        let shift = (&self.bias - self.running_mean.as_tensor().mul(&scale)?)?;
        Ok(if ops::grad_disabled() {
            (scale.detach(), shift.detach())
        } else {
            (scale, shift)
        })
    }
}

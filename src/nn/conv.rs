//! Convolution layers with PyTorch parameter names and layouts (`weight`, `bias`).

use candle_core::Tensor;
use candle_nn::{Init, VarBuilder, init::FanInOut, init::NonLinearity, init::NormalOrUniform};

use crate::Result;
use crate::ops::{self, ConvSpec};

/// Keras' `he_normal` (the paper's conv init): normal with std `sqrt(2 / fan_in)`.
pub const HE_NORMAL: Init = Init::Kaiming {
    dist: NormalOrUniform::Normal,
    fan: FanInOut::FanIn,
    non_linearity: NonLinearity::ReLU,
};

/// Keras' `glorot_uniform`: uniform in `±sqrt(6 / (fan_in + fan_out))`.
pub fn glorot_uniform(fan_in: usize, fan_out: usize) -> Init {
    let b = (6.0 / (fan_in + fan_out).max(1) as f64).sqrt();
    Init::Uniform { lo: -b, up: b }
}

/// Options of [`Conv3d`] and [`Conv2d`].
#[derive(Clone, Copy, Debug)]
pub struct ConvConfig {
    /// Zero padding on every side.
    pub padding: usize,
    /// Stride on every axis.
    pub stride: usize,
    /// Whether the layer adds a bias.
    pub bias: bool,
    /// Weight initialisation.
    pub init: Init,
}

impl Default for ConvConfig {
    fn default() -> Self {
        ConvConfig {
            padding: 0,
            stride: 1,
            bias: true,
            init: HE_NORMAL,
        }
    }
}

impl ConvConfig {
    /// "Same" padding for an odd kernel `k`, stride 1.
    pub fn same(k: usize) -> Self {
        ConvConfig {
            padding: k / 2,
            ..Default::default()
        }
    }
}

fn add_bias(y: Tensor, bias: &Option<Tensor>) -> Result<Tensor> {
    match bias {
        Some(b) => ops::bias_add(&y, b),
        None => Ok(y),
    }
}

/// A 3D convolution `[N, C, D, H, W] → [N, O, D', H', W']`.
#[derive(Clone, Debug)]
pub struct Conv3d {
    weight: Tensor,
    bias: Option<Tensor>,
    spec: ConvSpec,
}

/// A `k×k×k` 3D convolution from `c_in` to `c_out` channels.
pub fn conv3d(
    c_in: usize,
    c_out: usize,
    k: usize,
    cfg: ConvConfig,
    vb: VarBuilder,
) -> Result<Conv3d> {
    let weight = vb.get_with_hints((c_out, c_in, k, k, k), "weight", cfg.init)?;
    let bias = cfg
        .bias
        .then(|| vb.get_with_hints(c_out, "bias", Init::Const(0.0)))
        .transpose()?;
    Ok(Conv3d {
        weight,
        bias,
        spec: ConvSpec::uniform(cfg.padding, cfg.stride),
    })
}

impl Conv3d {
    /// The weight `[O, C, k, k, k]`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The bias `[O]`, if the layer has one.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// Applies the convolution.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        add_bias(self.forward_without_bias(x)?, &self.bias)
    }

    /// The convolution without its bias (for a caller that fuses the bias into the next op).
    pub fn forward_without_bias(&self, x: &Tensor) -> Result<Tensor> {
        ops::conv3d(x, &self.weight, self.spec)
    }
}

/// A 2D convolution `[N, C, H, W] → [N, O, H', W']`.
#[derive(Clone, Debug)]
pub struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    padding: usize,
    stride: usize,
}

/// A `k×k` 2D convolution from `c_in` to `c_out` channels.
pub fn conv2d(
    c_in: usize,
    c_out: usize,
    k: usize,
    cfg: ConvConfig,
    vb: VarBuilder,
) -> Result<Conv2d> {
    let weight = vb.get_with_hints((c_out, c_in, k, k), "weight", cfg.init)?;
    let bias = cfg
        .bias
        .then(|| vb.get_with_hints(c_out, "bias", Init::Const(0.0)))
        .transpose()?;
    Ok(Conv2d {
        weight,
        bias,
        padding: cfg.padding,
        stride: cfg.stride,
    })
}

impl Conv2d {
    /// The weight `[O, C, k, k]`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// Applies the convolution.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = ops::conv2d(x, &self.weight, [self.padding; 2], [self.stride; 2])?;
        add_bias(y, &self.bias)
    }
}

/// A 3D transposed convolution (weight `[C, O, k, k, k]` as in PyTorch).
#[derive(Clone, Debug)]
pub struct ConvTranspose3d {
    weight: Tensor,
    bias: Option<Tensor>,
    spec: ConvSpec,
}

/// A `k×k×k` transposed convolution with stride `stride` (the UNet uses k = stride = 2),
/// initialised like Keras' `Conv3DTranspose` (glorot uniform, zero bias).
pub fn conv_transpose3d(
    c_in: usize,
    c_out: usize,
    k: usize,
    stride: usize,
    vb: VarBuilder,
) -> Result<ConvTranspose3d> {
    let k3 = k * k * k;
    let weight = vb.get_with_hints(
        (c_in, c_out, k, k, k),
        "weight",
        glorot_uniform(c_out * k3, c_in * k3),
    )?;
    let bias = Some(vb.get_with_hints(c_out, "bias", Init::Const(0.0))?);
    Ok(ConvTranspose3d {
        weight,
        bias,
        spec: ConvSpec::uniform(0, stride),
    })
}

impl ConvTranspose3d {
    /// Applies the transposed convolution.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        add_bias(
            ops::conv_transpose3d(x, &self.weight, self.spec)?,
            &self.bias,
        )
    }
}

//! The ReLU with PyTorch's (and TensorFlow's) gradient: zero where the input is exactly zero.
//! candle's `relu` passes the gradient there, which matters in this domain: zero-padded
//! patches, air in CT and zero-initialised biases give exact zeros.

use candle_core::Tensor;

use crate::Result;

/// `max(x, 0)`, differentiable with gradient `1` where `x > 0` and `0` elsewhere.
pub fn relu(x: &Tensor) -> Result<Tensor> {
    // The mask is a comparison result, so it carries no gradient of its own.
    Ok(x.mul(&x.gt(0.0)?.to_dtype(x.dtype())?)?)
}

//! Fully connected layers (candle-nn's `Linear`, PyTorch layout `weight [out, in]`),
//! initialised like Keras' `Dense`: glorot uniform weights, zero bias.

use candle_nn::{Init, Linear, VarBuilder};

use super::conv::glorot_uniform;
use crate::Result;

/// A dense layer from `d_in` to `d_out` features.
pub fn linear(d_in: usize, d_out: usize, vb: VarBuilder) -> Result<Linear> {
    let weight = vb.get_with_hints((d_out, d_in), "weight", glorot_uniform(d_in, d_out))?;
    let bias = vb.get_with_hints(d_out, "bias", Init::Const(0.0))?;
    Ok(Linear::new(weight, Some(bias)))
}

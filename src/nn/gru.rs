//! A one-layer GRU with PyTorch's parameter names and gate order (reset, update, new), for
//! CPC's autoregressive context model.

use candle_core::{D, Tensor};
use candle_nn::{Init, VarBuilder};

use crate::{Error, Result};

/// A GRU over `[B, T, input]` sequences returning the last hidden state `[B, hidden]`.
#[derive(Clone, Debug)]
pub struct Gru {
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor,
    b_hh: Tensor,
    hidden: usize,
}

/// A GRU from `input` features to a `hidden`-sized state (PyTorch's uniform init).
pub fn gru(input: usize, hidden: usize, vb: VarBuilder) -> Result<Gru> {
    let b = 1.0 / (hidden as f64).sqrt();
    let init = Init::Uniform { lo: -b, up: b };
    Ok(Gru {
        w_ih: vb.get_with_hints((3 * hidden, input), "weight_ih_l0", init)?,
        w_hh: vb.get_with_hints((3 * hidden, hidden), "weight_hh_l0", init)?,
        b_ih: vb.get_with_hints(3 * hidden, "bias_ih_l0", init)?,
        b_hh: vb.get_with_hints(3 * hidden, "bias_hh_l0", init)?,
        hidden,
    })
}

impl Gru {
    /// The last hidden state after reading `x [B, T, input]` from a zero state.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t, _) = x.dims3().map_err(|_| {
            Error::shape(
                "gru",
                format!("expected [B, T, features], got {:?}", x.dims()),
            )
        })?;
        let h = self.hidden;
        // Input projections for every step at once: [B, T, 3H].
        let xi = x
            .broadcast_matmul(&self.w_ih.t()?)?
            .broadcast_add(&self.b_ih)?;
        let mut state = Tensor::zeros((b, h), x.dtype(), x.device())?;
        for step in 0..t {
            let gi = xi.narrow(1, step, 1)?.squeeze(1)?;
            let gh = state.matmul(&self.w_hh.t()?)?.broadcast_add(&self.b_hh)?;
            let r = candle_nn::ops::sigmoid(
                &(gi.narrow(D::Minus1, 0, h)? + gh.narrow(D::Minus1, 0, h)?)?,
            )?;
            let z = candle_nn::ops::sigmoid(
                &(gi.narrow(D::Minus1, h, h)? + gh.narrow(D::Minus1, h, h)?)?,
            )?;
            let n = (gi.narrow(D::Minus1, 2 * h, h)? + (r * gh.narrow(D::Minus1, 2 * h, h)?)?)?
                .tanh()?;
            state = ((&z * &state)? + ((1.0 - z)? * n)?)?;
        }
        Ok(state)
    }
}

//! Fully connected heads: O's `fully_connected_big` for the pretext tasks (Dense 2048 → BN →
//! dropout → Dense 1024 → BN → dropout → Dense K) and the finetuning classifier (Dense 1024 →
//! BN → dropout → Dense 5), both as an [`MlpHead`].

use candle_core::Tensor;
use candle_nn::{Linear, Module, VarBuilder};

use super::dropout::Dropout;
use super::linear::linear;
use super::norm::{BatchNorm, BatchNormConfig, batch_norm};
use crate::Result;
use crate::streams::{Stream, derive};

/// The shape of an [`MlpHead`].
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MlpHeadConfig {
    /// Widths of the hidden layers (each Dense → ReLU → BN → dropout).
    pub hidden: Vec<usize>,
    /// Dropout rate after each hidden layer.
    pub dropout: f64,
    /// Seed of the dropout masks.
    pub seed: u64,
    /// BatchNorm momentum (weight of a new batch; Keras' 0.99 is 0.01 here).
    #[serde(default = "keras_momentum")]
    pub momentum: f64,
}

fn keras_momentum() -> f64 {
    BatchNormConfig::KERAS.momentum
}

impl MlpHeadConfig {
    /// O's pretext head: hidden 2048 and 1024, dropout 0.5.
    pub fn pretext() -> Self {
        MlpHeadConfig {
            hidden: vec![2048, 1024],
            dropout: 0.5,
            seed: 0,
            momentum: keras_momentum(),
        }
    }

    /// O's finetuning classifier head (`simple_multiclass`): hidden 1024, dropout 0.5.
    pub fn classifier() -> Self {
        MlpHeadConfig {
            hidden: vec![1024],
            dropout: 0.5,
            seed: 0,
            momentum: keras_momentum(),
        }
    }
}

/// Hidden Dense → ReLU → BN → dropout layers, then a linear output (logits).
#[derive(Clone, Debug)]
pub struct MlpHead {
    hidden: Vec<(Linear, BatchNorm, Dropout)>,
    out: Linear,
}

impl MlpHead {
    /// A head from `d_in` features to `d_out` logits (`fc{i}`, `bn{i}`, `out`).
    pub fn new(d_in: usize, d_out: usize, cfg: &MlpHeadConfig, vb: VarBuilder) -> Result<Self> {
        let mut hidden = Vec::new();
        let mut d = d_in;
        for (i, &w) in cfg.hidden.iter().enumerate() {
            hidden.push((
                linear(d, w, vb.pp(format!("fc{i}")))?,
                batch_norm(
                    w,
                    BatchNormConfig {
                        momentum: cfg.momentum,
                        ..BatchNormConfig::KERAS
                    },
                    vb.pp(format!("bn{i}")),
                )?,
                Dropout::new(cfg.dropout, derive(cfg.seed, Stream::Dropout, i as u64))?,
            ));
            d = w;
        }
        Ok(MlpHead {
            hidden,
            out: linear(d, d_out, vb.pp("out"))?,
        })
    }

    /// Logits `[N, d_out]` of features `[N, d_in]`.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut h = x.clone();
        for (fc, bn, drop) in &self.hidden {
            h = drop.forward_t(
                &bn.forward_t(&crate::ops::relu(&fc.forward(&h)?)?, train)?,
                train,
            )?;
        }
        Ok(self.out.forward(&h)?)
    }
}

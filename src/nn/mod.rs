//! Layers and models in candle-nn's style: a config struct plus a constructor taking a
//! `VarBuilder`, PyTorch parameter names and layouts, `forward_t(x, train)` where training and
//! inference differ. Parameters live in a [`ParamStore`], which also saves and loads
//! checkpoints. The losses ([`loss`]) sit beside the layers, as in candle-nn.

pub mod conv;
pub mod densenet;
pub mod dropout;
pub mod gru;
pub mod heads;
pub mod linear;
pub mod loss;
pub mod norm;
pub mod store;
pub mod unet;

pub use conv::{Conv2d, Conv3d, ConvConfig, ConvTranspose3d, conv_transpose3d, conv2d, conv3d};
pub use densenet::{DenseBlock, DenseNet, DenseNetConfig, DenseNetConvention, GlobalPool};
pub use dropout::Dropout;
pub use gru::{Gru, gru};
pub use heads::{MlpHead, MlpHeadConfig};
pub use linear::linear;
pub use norm::{BatchNorm, BatchNormConfig, batch_norm};
pub use store::{LoadOptions, LoadReport, ParamStore};
pub use unet::{ConvBlock, Decoder3d, Encoded, Encoder3d, UNet3d, UNet3dConfig};

/// How a network runs: BatchNorm on batch statistics or on its running averages, dropout on or
/// off. `forward_t(x, train)` is `Mode::train(train)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mode {
    /// BatchNorm normalises with (and updates) batch statistics.
    pub batch_stats: bool,
    /// Dropout masks are drawn.
    pub dropout: bool,
}

impl Mode {
    /// Training: batch statistics and dropout.
    pub const TRAIN: Mode = Mode {
        batch_stats: true,
        dropout: true,
    };
    /// Inference: running averages, no dropout.
    pub const EVAL: Mode = Mode {
        batch_stats: false,
        dropout: false,
    };
    /// A Keras layer with `trainable=False` inside a model that trains (O's frozen encoder
    /// during finetuning's warm-up): running averages, dropout still active.
    pub const FROZEN: Mode = Mode {
        batch_stats: false,
        dropout: true,
    };

    /// [`Mode::TRAIN`] or [`Mode::EVAL`].
    pub fn train(train: bool) -> Mode {
        if train { Mode::TRAIN } else { Mode::EVAL }
    }
}

//! Layers and models in candle-nn's style: a config struct plus a constructor taking a
//! `VarBuilder`, PyTorch parameter names and layouts, `forward_t(x, train)` where training and
//! inference differ. Parameters live in a [`ParamStore`], which also saves and loads
//! checkpoints.

pub mod conv;
pub mod densenet;
pub mod dropout;
pub mod gru;
pub mod heads;
pub mod linear;
pub mod norm;
pub mod store;
pub mod unet;

pub use conv::{Conv2d, Conv3d, ConvConfig, ConvTranspose3d, conv_transpose3d, conv2d, conv3d};
pub use densenet::{DenseBlock, DenseNet, DenseNetConfig, GlobalPool};
pub use dropout::Dropout;
pub use gru::{Gru, gru};
pub use heads::{MlpHead, MlpHeadConfig};
pub use linear::linear;
pub use norm::{BatchNorm, BatchNormConfig, batch_norm};
pub use store::{LoadOptions, LoadReport, ParamStore};
pub use unet::{ConvBlock, Decoder3d, Encoded, Encoder3d, UNet3d, UNet3dConfig};

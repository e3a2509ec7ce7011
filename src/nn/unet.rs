//! The paper's 3D UNet (Taleb et al., O's `unet3d.py`): an encoder of conv blocks with max
//! pooling, a bottleneck, an extra pooling, and a decoder of nearest upsampling plus
//! transposed convolutions with skip connections and a 1×1×1 head.
//!
//! A block is conv → ReLU → BN → dropout → conv → ReLU → BN (Keras puts the activation inside
//! the convolution). With 16 base filters and depth 4 the network has 5,647,891 trainable
//! parameters, as a PyTorch build of the same architecture.

use candle_core::Tensor;
use candle_nn::VarBuilder;

use super::Mode;
use super::conv::{Conv3d, ConvConfig, ConvTranspose3d, conv_transpose3d, conv3d};
use super::dropout::Dropout;
use super::norm::{BatchNorm, BatchNormConfig, batch_norm};
use crate::ops::{self, PoolSpec};
use crate::streams::{Stream, derive};
use crate::{Error, Result};

/// The shape of a [`UNet3d`] and of its [`Encoder3d`]; the default is the paper's.
#[derive(
    Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(default, deny_unknown_fields)]
pub struct UNet3dConfig {
    /// Input channels (1 for CT).
    pub in_channels: usize,
    /// Filters of the first level, doubled at every level (16 in the paper).
    pub filters: usize,
    /// Encoder levels before the bottleneck (4 in the paper).
    pub depth: usize,
    /// Output classes of the segmentation head (background, pancreas, tumour).
    pub classes: usize,
    /// Dropout rate after the first convolution of every block (0.5).
    pub dropout: f64,
    /// BatchNorm epsilon (Keras: 1e-3).
    pub eps: f64,
    /// BatchNorm momentum: the weight of a new batch in the running averages (Keras' 0.99
    /// is 0.01 here).
    pub momentum: f64,
    /// Seed of the dropout masks, set by whoever trains the network (not an option).
    #[serde(skip)]
    pub seed: u64,
}

impl Default for UNet3dConfig {
    fn default() -> Self {
        UNet3dConfig {
            in_channels: 1,
            filters: 16,
            depth: 4,
            classes: 3,
            dropout: 0.5,
            eps: BatchNormConfig::KERAS.eps,
            momentum: BatchNormConfig::KERAS.momentum,
            seed: 0,
        }
    }
}

impl UNet3dConfig {
    /// Channels of level `i` (`filters · 2^i`); level `depth` is the bottleneck.
    pub fn channels(&self, level: usize) -> usize {
        self.filters << level
    }

    /// Channels of the encoder's output (the bottleneck's).
    pub fn feature_channels(&self) -> usize {
        self.channels(self.depth)
    }

    /// Channels of encoder level `level` (`0..=depth`; `depth` is the bottleneck).
    pub fn level_channels(&self, level: usize) -> usize {
        self.channels(level.min(self.depth))
    }

    /// Spatial size of the encoder's output for an input of `size` voxels per axis (pooling
    /// floors odd sizes, as Keras' `valid` pooling does).
    pub fn feature_size(&self, size: usize) -> usize {
        size >> (self.depth + 1)
    }

    /// The smallest input size the encoder accepts (`2^(depth+1)`).
    pub fn min_input(&self) -> usize {
        1 << (self.depth + 1)
    }

    fn bn(&self) -> BatchNormConfig {
        BatchNormConfig {
            eps: self.eps,
            momentum: self.momentum,
        }
    }
}

/// conv → ReLU → BN → dropout → conv → ReLU → BN.
#[derive(Clone, Debug)]
pub struct ConvBlock {
    conv1: Conv3d,
    bn1: BatchNorm,
    drop: Dropout,
    conv2: Conv3d,
    bn2: BatchNorm,
}

impl ConvBlock {
    /// A block from `c_in` to `f` channels; `seed` drives its dropout.
    pub fn new(
        c_in: usize,
        f: usize,
        cfg: &UNet3dConfig,
        seed: u64,
        vb: VarBuilder,
    ) -> Result<Self> {
        let conv = ConvConfig::same(3);
        Ok(ConvBlock {
            conv1: conv3d(c_in, f, 3, conv, vb.pp("conv1"))?,
            bn1: batch_norm(f, cfg.bn(), vb.pp("bn1"))?,
            drop: Dropout::new(cfg.dropout, seed)?,
            conv2: conv3d(f, f, 3, conv, vb.pp("conv2"))?,
            bn2: batch_norm(f, cfg.bn(), vb.pp("bn2"))?,
        })
    }

    /// Applies the block (`train` selects batch statistics and dropout).
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_mode(x, Mode::train(train))
    }

    /// Applies the block in `mode`.
    pub fn forward_mode(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let x = conv_relu_bn(&self.conv1, &self.bn1, x, mode.batch_stats)?;
        let x = self.drop.forward_t(&x, mode.dropout)?;
        conv_relu_bn(&self.conv2, &self.bn2, &x, mode.batch_stats)
    }
}

/// `bn(relu(conv(x)))`, with the convolution's bias, the ReLU and the normalisation fused.
fn conv_relu_bn(conv: &Conv3d, bn: &BatchNorm, x: &Tensor, train: bool) -> Result<Tensor> {
    match conv.bias() {
        Some(b) => bn.forward_bias_relu_t(&conv.forward_without_bias(x)?, b, train),
        None => bn.forward_t(&ops::relu(&conv.forward(x)?)?, train),
    }
}

/// The UNet's encoder: it runs on whole volumes (128³ → 4³ × 256 features in the paper) and on
/// the patches of the pretext tasks (39³ or 32³ → 1³ × 256).
#[derive(Clone, Debug)]
pub struct Encoder3d {
    down: Vec<ConvBlock>,
    bottleneck: ConvBlock,
    cfg: UNet3dConfig,
}

/// What the encoder produces.
#[derive(Clone, Debug)]
pub struct Encoded {
    /// The pooled bottleneck output `[N, F, d, h, w]`.
    pub features: Tensor,
    /// The block outputs before each pooling, shallowest first (the decoder's skips).
    pub skips: Vec<Tensor>,
}

impl Encoder3d {
    /// The encoder of `cfg`, with parameters under `vb` (`down.{i}.*`, `bottleneck.*`).
    pub fn new(cfg: &UNet3dConfig, vb: VarBuilder) -> Result<Self> {
        if cfg.depth == 0 || cfg.filters == 0 || cfg.in_channels == 0 {
            return Err(Error::arg(
                "unet3d",
                format!("depth, filters and in_channels must be positive, got {cfg:?}"),
            ));
        }
        let down = (0..cfg.depth)
            .map(|i| {
                let c_in = if i == 0 {
                    cfg.in_channels
                } else {
                    cfg.channels(i - 1)
                };
                ConvBlock::new(
                    c_in,
                    cfg.channels(i),
                    cfg,
                    derive(cfg.seed, Stream::Dropout, i as u64),
                    vb.pp("down").pp(i),
                )
            })
            .collect::<Result<_>>()?;
        let bottleneck = ConvBlock::new(
            cfg.channels(cfg.depth - 1),
            cfg.feature_channels(),
            cfg,
            derive(cfg.seed, Stream::Dropout, cfg.depth as u64),
            vb.pp("bottleneck"),
        )?;
        Ok(Encoder3d {
            down,
            bottleneck,
            cfg: *cfg,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &UNet3dConfig {
        &self.cfg
    }

    /// Encodes `x [N, C, D, H, W]`, keeping the skips.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Encoded> {
        self.forward_mode(x, Mode::train(train))
    }

    /// Encodes `x` in `mode`, keeping the skips.
    pub fn forward_mode(&self, x: &Tensor, mode: Mode) -> Result<Encoded> {
        let dims = x.dims();
        if dims.len() != 5
            || dims[1] != self.cfg.in_channels
            || dims[2..].iter().any(|&s| s < self.cfg.min_input())
        {
            return Err(Error::shape(
                "unet3d encoder",
                format!(
                    "expected [N, {}, D, H, W] with every spatial size at least {} (depth {}), got {dims:?}",
                    self.cfg.in_channels,
                    self.cfg.min_input(),
                    self.cfg.depth
                ),
            ));
        }
        let mut skips = Vec::with_capacity(self.down.len());
        let mut h = x.clone();
        for block in &self.down {
            let s = block.forward_mode(&h, mode)?;
            h = ops::max_pool3d(&s, PoolSpec::cube(2))?;
            skips.push(s);
        }
        let b = self.bottleneck.forward_mode(&h, mode)?;
        let features = ops::max_pool3d(&b, PoolSpec::cube(2))?;
        Ok(Encoded { features, skips })
    }

    /// The flattened features `[N, F·d·h·w]` (what the pretext heads read).
    pub fn embed(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        Ok(self.forward_t(x, train)?.features.flatten_from(1)?)
    }

    /// The flattened features of each of `levels` (see [`UNet3dConfig::level_channels`]):
    /// level `l < depth` is down block `l`'s output max-pooled onto the bottleneck's output
    /// grid (a window of `2^(depth+1-l)`), level `depth` is [`Encoder3d::embed`]'s.
    pub fn embed_levels(&self, x: &Tensor, levels: &[usize], train: bool) -> Result<Vec<Tensor>> {
        let depth = self.cfg.depth;
        if let Some(&l) = levels.iter().find(|&&l| l > depth) {
            return Err(Error::arg(
                "levels",
                format!("the UNet encoder has levels 0 to {depth}, got {l}"),
            ));
        }
        let enc = self.forward_t(x, train)?;
        levels
            .iter()
            .map(|&l| {
                let pooled = if l == depth {
                    enc.features.clone()
                } else {
                    ops::max_pool3d(&enc.skips[l], PoolSpec::cube(1 << (depth + 1 - l)))?
                };
                Ok(pooled.flatten_from(1)?)
            })
            .collect()
    }
}

/// The UNet's decoder: upsampling, transposed convolutions, skip concatenation, blocks, head.
#[derive(Clone, Debug)]
pub struct Decoder3d {
    up: Vec<ConvTranspose3d>,
    blocks: Vec<ConvBlock>,
    head: Conv3d,
}

impl Decoder3d {
    /// The decoder of `cfg` (`up.{i}.*`, `block.{i}.*`, `head.*`).
    pub fn new(cfg: &UNet3dConfig, vb: VarBuilder) -> Result<Self> {
        let levels: Vec<usize> = (0..cfg.depth).rev().collect();
        let mut up = Vec::new();
        let mut blocks = Vec::new();
        for (j, &l) in levels.iter().enumerate() {
            let c_in = cfg.channels(l + 1);
            let c = cfg.channels(l);
            up.push(conv_transpose3d(c_in, c, 2, 2, vb.pp("up").pp(j))?);
            let seed = derive(cfg.seed, Stream::Dropout, 100 + j as u64);
            blocks.push(ConvBlock::new(2 * c, c, cfg, seed, vb.pp("block").pp(j))?);
        }
        let head = conv3d(
            cfg.filters,
            cfg.classes,
            1,
            ConvConfig::default(),
            vb.pp("head"),
        )?;
        Ok(Decoder3d { up, blocks, head })
    }

    /// Class logits `[N, classes, D, H, W]` from the encoder's output.
    pub fn forward_t(&self, enc: &Encoded, train: bool) -> Result<Tensor> {
        let mut h = ops::upsample_nearest3d(&enc.features, 2)?;
        for ((up, block), skip) in self.up.iter().zip(&self.blocks).zip(enc.skips.iter().rev()) {
            let u = up.forward(&h)?;
            if u.dims()[2..] != skip.dims()[2..] {
                return Err(Error::shape(
                    "unet3d decoder",
                    format!(
                        "upsampled {:?} does not match skip {:?}: the input size must be a multiple of 2^(depth+1)",
                        u.dims(),
                        skip.dims()
                    ),
                ));
            }
            h = block.forward_t(&Tensor::cat(&[&u, skip], 1)?, train)?;
        }
        self.head.forward(&h)
    }
}

/// The whole segmentation network.
#[derive(Clone, Debug)]
pub struct UNet3d {
    /// The encoder (shared with the pretext tasks; parameters under `encoder.`).
    pub encoder: Encoder3d,
    /// The decoder (parameters under `decoder.`).
    pub decoder: Decoder3d,
}

impl UNet3d {
    /// A UNet with parameters under `vb` (`encoder.*`, `decoder.*`).
    pub fn new(cfg: &UNet3dConfig, vb: VarBuilder) -> Result<Self> {
        Ok(UNet3d {
            encoder: Encoder3d::new(cfg, vb.pp("encoder"))?,
            decoder: Decoder3d::new(cfg, vb.pp("decoder"))?,
        })
    }

    /// Class logits `[N, classes, D, H, W]`; `train` applies to the whole network.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let enc = self.encoder.forward_t(x, train)?;
        self.decoder.forward_t(&enc, train)
    }
}

//! DenseNet (Huang et al.), 121 layers by default, in torchvision's layout and parameter names
//! (`features.conv0`, `features.denseblock{i}.denselayer{j}.norm1/conv1/norm2/conv2`,
//! `features.transition{i}.norm/conv`, `features.norm5`), so its weights map 1:1. Width and
//! depth are configurable for a small CPU variant. The BatchNorm constants and the
//! initialisation of the convolutions are torchvision's by default, or those of
//! `keras.applications.DenseNet121` (the authors' model) with
//! [`DenseNetConvention::Keras`].

use candle_core::Tensor;
use candle_nn::{Init, VarBuilder};

use super::conv::{Conv2d, ConvConfig, HE_NORMAL, conv2d, glorot_uniform};
use super::norm::{BatchNorm, BatchNormConfig, batch_norm};
use crate::ops;
use crate::{Error, Result};

/// The shape and the constants of a [`DenseNet`]; the default is torchvision's DenseNet-121.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct DenseNetConfig {
    /// Input channels (3 for RGB).
    pub in_channels: usize,
    /// Channels each dense layer adds (32).
    pub growth: usize,
    /// Dense layers per block (6, 12, 24, 16 for DenseNet-121).
    pub blocks: Vec<usize>,
    /// Channels of the stem convolution (64).
    pub init_features: usize,
    /// Bottleneck width of a dense layer as a multiple of `growth` (4).
    pub bn_size: usize,
    /// Whose BatchNorm constants and initialisation: "torchvision" (PyTorch's BatchNorm eps
    /// 1e-5 and momentum 0.1, He-normal convolutions) or "keras" (O's
    /// `keras.applications.DenseNet121`: eps 1.001e-5, Keras momentum 0.99, i.e. 0.01 as the
    /// weight of the new batch, and Glorot-uniform convolutions).
    pub convention: DenseNetConvention,
}

/// Which framework's constants a [`DenseNet`] follows. The layout, the parameter names and
/// the forward pass are the same for both.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum DenseNetConvention {
    /// torchvision's `densenet121`: BatchNorm eps 1e-5 and momentum 0.1 (PyTorch's defaults),
    /// convolutions drawn by `kaiming_normal_` (normal, std `sqrt(2 / fan_in)`).
    #[default]
    Torchvision,
    /// `keras.applications.DenseNet121` (TF 2.1, O's model): BatchNorm eps 1.001e-5 and
    /// Keras' momentum 0.99 (0.01 here), convolutions drawn by Keras' `glorot_uniform`
    /// (uniform in `±sqrt(6 / (fan_in + fan_out))`, fans `k·k·in` and `k·k·out`). Keras
    /// updates the running variance of these 4-D BatchNorms with the unbiased batch variance,
    /// as PyTorch does (TF's fused kernel applies Bessel's correction).
    Keras,
}

impl DenseNetConvention {
    /// The settings of every BatchNorm of the network.
    pub fn batch_norm(self) -> BatchNormConfig {
        match self {
            DenseNetConvention::Torchvision => BatchNormConfig::TORCH,
            DenseNetConvention::Keras => BatchNormConfig {
                eps: 1.001e-5,
                ..BatchNormConfig::KERAS
            },
        }
    }

    /// The initialisation of a `k×k` convolution from `c_in` to `c_out` channels.
    pub fn conv_init(self, c_in: usize, c_out: usize, k: usize) -> Init {
        match self {
            DenseNetConvention::Torchvision => HE_NORMAL,
            DenseNetConvention::Keras => glorot_uniform(k * k * c_in, k * k * c_out),
        }
    }
}

impl Default for DenseNetConfig {
    fn default() -> Self {
        DenseNetConfig::densenet121()
    }
}

impl DenseNetConfig {
    /// DenseNet-121.
    pub fn densenet121() -> Self {
        DenseNetConfig {
            in_channels: 3,
            growth: 32,
            blocks: vec![6, 12, 24, 16],
            init_features: 64,
            bn_size: 4,
            convention: DenseNetConvention::Torchvision,
        }
    }

    /// A bias-free `k×k` convolution from `c_in` to `c_out` channels, initialised by the
    /// convention.
    fn conv(
        &self,
        (c_in, c_out, k): (usize, usize, usize),
        (padding, stride): (usize, usize),
        vb: VarBuilder,
    ) -> Result<Conv2d> {
        let cfg = ConvConfig {
            padding,
            stride,
            bias: false,
            init: self.convention.conv_init(c_in, c_out, k),
        };
        conv2d(c_in, c_out, k, cfg, vb)
    }

    /// A BatchNorm of `c` channels with the convention's settings.
    fn norm(&self, c: usize, vb: VarBuilder) -> Result<BatchNorm> {
        batch_norm(c, self.convention.batch_norm(), vb)
    }

    /// Channels of the final feature map.
    pub fn feature_channels(&self) -> usize {
        self.level_channels(self.blocks.len().saturating_sub(1))
    }

    /// Channels of the feature map of dense block `level` (see [`DenseNet::level_maps_t`]).
    pub fn level_channels(&self, level: usize) -> usize {
        let mut c = self.init_features;
        for (i, &n) in self.blocks.iter().enumerate().take(level + 1) {
            c += n * self.growth;
            if i + 1 < self.blocks.len() && i < level {
                c /= 2;
            }
        }
        c
    }
}

/// How the final feature map becomes a vector.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum GlobalPool {
    /// Global average (O's finetuning configs).
    Avg,
    /// Global maximum (O's pretraining default).
    Max,
}

#[derive(Clone, Debug)]
struct DenseLayer {
    norm1: BatchNorm,
    conv1: Conv2d,
    norm2: BatchNorm,
    conv2: Conv2d,
}

impl DenseLayer {
    fn new(c_in: usize, cfg: &DenseNetConfig, vb: VarBuilder) -> Result<Self> {
        let width = cfg.bn_size * cfg.growth;
        Ok(DenseLayer {
            norm1: cfg.norm(c_in, vb.pp("norm1"))?,
            conv1: cfg.conv((c_in, width, 1), (0, 1), vb.pp("conv1"))?,
            norm2: cfg.norm(width, vb.pp("norm2"))?,
            conv2: cfg.conv((width, cfg.growth, 3), (1, 1), vb.pp("conv2"))?,
        })
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let h = self.conv1.forward(&self.norm1.forward_relu_t(x, train)?)?;
        self.conv2.forward(&self.norm2.forward_relu_t(&h, train)?)
    }

    /// The layer's parameters in the order of [`ops::dense_block_train`]'s packing.
    fn packed(&self) -> Result<[Tensor; 6]> {
        Ok([
            self.norm1.weight().clone(),
            self.norm1.bias().clone(),
            self.conv1.weight().flatten_all()?,
            self.norm2.weight().clone(),
            self.norm2.bias().clone(),
            self.conv2.weight().flatten_all()?,
        ])
    }
}

/// Dense layers whose outputs are concatenated to their inputs.
#[derive(Clone, Debug)]
pub struct DenseBlock {
    layers: Vec<DenseLayer>,
}

impl DenseBlock {
    /// `n` dense layers on `c_in` input channels (`denselayer{j}`, from 1).
    pub fn new(n: usize, c_in: usize, cfg: &DenseNetConfig, vb: VarBuilder) -> Result<Self> {
        let layers = (0..n)
            .map(|j| {
                DenseLayer::new(
                    c_in + j * cfg.growth,
                    cfg,
                    vb.pp(format!("denselayer{}", j + 1)),
                )
            })
            .collect::<Result<_>>()?;
        Ok(DenseBlock { layers })
    }

    /// The input with every layer's output appended along the channels.
    ///
    /// On the CPU, in training mode and in inference under [`ops::no_grad`], the whole block is
    /// one kernel on one growing buffer ([`ops::dense_block_train`]); otherwise the layers run
    /// one by one ([`DenseBlock::forward_layers_t`]).
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        if self.layers.is_empty()
            || !ops::dense_block_available(x)
            || !(train || ops::grad_disabled())
        {
            return self.forward_layers_t(x, train);
        }
        let first = &self.layers[0];
        let spec = ops::DenseBlockSpec {
            growth: first.conv2.weight().dims()[0],
            width: first.conv1.weight().dims()[0],
            layers: self.layers.len(),
            eps: first.norm1.config().eps,
        };
        let mut parts = Vec::with_capacity(6 * self.layers.len());
        for l in &self.layers {
            parts.extend(l.packed()?);
        }
        let params = Tensor::cat(&parts, 0)?;
        if train {
            let (y, stats) = ops::dense_block_train(x, &params, spec)?;
            for (l, (s1, s2)) in self.layers.iter().zip(stats) {
                l.norm1.update_running(s1)?;
                l.norm2.update_running(s2)?;
            }
            return Ok(y);
        }
        let running = self
            .layers
            .iter()
            .map(|l| {
                let stats = |(mean, var)| ops::cpu::norm::Stats { mean, var };
                Ok((stats(l.norm1.running()?), stats(l.norm2.running()?)))
            })
            .collect::<Result<_>>()?;
        ops::dense_block_eval(x, &params, spec, running)
    }

    /// [`DenseBlock::forward_t`] layer by layer, with a concatenation per layer (any device).
    pub fn forward_layers_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut features = vec![x.clone()];
        for layer in &self.layers {
            let inp = Tensor::cat(&features, 1)?;
            features.push(layer.forward_t(&inp, train)?);
        }
        Ok(Tensor::cat(&features, 1)?)
    }
}

#[derive(Clone, Debug)]
struct Transition {
    norm: BatchNorm,
    conv: Conv2d,
}

/// The DenseNet feature extractor.
#[derive(Clone, Debug)]
pub struct DenseNet {
    conv0: Conv2d,
    norm0: BatchNorm,
    blocks: Vec<DenseBlock>,
    transitions: Vec<Transition>,
    norm5: BatchNorm,
    cfg: DenseNetConfig,
}

impl DenseNet {
    /// A DenseNet with parameters under `vb` (torchvision names below `features.`).
    pub fn new(cfg: &DenseNetConfig, vb: VarBuilder) -> Result<Self> {
        if cfg.blocks.is_empty() || cfg.growth == 0 || cfg.init_features == 0 {
            return Err(Error::arg(
                "densenet",
                format!("expected blocks, growth and init_features, got {cfg:?}"),
            ));
        }
        let f = vb.pp("features");
        let conv0 = cfg.conv(
            (cfg.in_channels, cfg.init_features, 7),
            (3, 2),
            f.pp("conv0"),
        )?;
        let norm0 = cfg.norm(cfg.init_features, f.pp("norm0"))?;
        let mut c = cfg.init_features;
        let mut blocks = Vec::new();
        let mut transitions = Vec::new();
        for (i, &n) in cfg.blocks.iter().enumerate() {
            blocks.push(DenseBlock::new(
                n,
                c,
                cfg,
                f.pp(format!("denseblock{}", i + 1)),
            )?);
            c += n * cfg.growth;
            if i + 1 < cfg.blocks.len() {
                let vb = f.pp(format!("transition{}", i + 1));
                transitions.push(Transition {
                    norm: cfg.norm(c, vb.pp("norm"))?,
                    conv: cfg.conv((c, c / 2, 1), (0, 1), vb.pp("conv"))?,
                });
                c /= 2;
            }
        }
        let norm5 = cfg.norm(c, f.pp("norm5"))?;
        Ok(DenseNet {
            conv0,
            norm0,
            blocks,
            transitions,
            norm5,
            cfg: cfg.clone(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &DenseNetConfig {
        &self.cfg
    }

    /// The final feature map (after `norm5` and ReLU) of `x [N, C, H, W]`.
    pub fn features_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let last = self.blocks.len() - 1;
        let mut maps = self.level_maps_t(x, &[last], train)?;
        Ok(maps.remove(0))
    }

    /// The feature maps of dense blocks `levels` (`0..blocks`): block `l < last` after its
    /// transition's BatchNorm and ReLU (before the 1×1 convolution and pooling), the last
    /// block after `norm5` and ReLU (the final feature map). In the order of `levels`.
    pub fn level_maps_t(&self, x: &Tensor, levels: &[usize], train: bool) -> Result<Vec<Tensor>> {
        let last = self.blocks.len() - 1;
        if let Some(&l) = levels.iter().find(|&&l| l > last) {
            return Err(Error::arg(
                "levels",
                format!("the DenseNet has levels 0 to {last} (one per dense block), got {l}"),
            ));
        }
        if x.rank() != 4
            || x.dims()[1] != self.cfg.in_channels
            || x.dims()[2] < 4
            || x.dims()[3] < 4
        {
            return Err(Error::shape(
                "densenet",
                format!(
                    "expected [N, {}, H, W] with H, W >= 4, got {:?}",
                    self.cfg.in_channels,
                    x.dims()
                ),
            ));
        }
        let deepest = levels.iter().copied().max().unwrap_or(last);
        let mut maps: Vec<Option<Tensor>> = vec![None; levels.len()];
        let keep = |maps: &mut Vec<Option<Tensor>>, l: usize, t: &Tensor| {
            for (slot, _) in maps.iter_mut().zip(levels).filter(|(_, w)| **w == l) {
                *slot = Some(t.clone());
            }
        };
        let h = self.norm0.forward_relu_t(&self.conv0.forward(x)?, train)?;
        let mut h = ops::max_pool2d(&h, [3, 3], [2, 2], [1, 1])?;
        for (i, block) in self.blocks.iter().enumerate().take(deepest + 1) {
            h = block.forward_t(&h, train)?;
            if i == last {
                keep(&mut maps, i, &self.norm5.forward_relu_t(&h, train)?);
            } else if let Some(t) = self.transitions.get(i) {
                let r = t.norm.forward_relu_t(&h, train)?;
                keep(&mut maps, i, &r);
                if i == deepest {
                    break;
                }
                // torchvision pools the 1×1 convolution's output; the convolution acts on each
                // position alone, so pooling its input first is the same map at a quarter of
                // the cost.
                h = if r.dims()[2] >= 2 && r.dims()[3] >= 2 {
                    t.conv
                        .forward(&ops::avg_pool2d(&r, [2, 2], [2, 2], [0, 0])?)?
                } else {
                    t.conv.forward(&r)?
                };
            }
        }
        Ok(maps
            .into_iter()
            .map(|m| m.expect("every level at most the deepest was kept"))
            .collect())
    }

    /// A feature vector `[N, C]` per image.
    pub fn embed(&self, x: &Tensor, pool: GlobalPool, train: bool) -> Result<Tensor> {
        let f = self.features_t(x, train)?;
        match pool {
            GlobalPool::Avg => ops::global_avg_pool(&f),
            GlobalPool::Max => ops::global_max_pool(&f),
        }
    }
}

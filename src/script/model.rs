//! The `model` domain: the paper's networks, checkpoints, losses and an optimiser in scripts,
//! for prototyping training loops in the REPL.

use std::sync::{Arc, Mutex};

use candle_core::{DType, Tensor};
use rhai::{Array, Dynamic, FLOAT, INT, Map};

use super::HostState;
use super::api::Domain;
use super::convert::{RResult, ScriptResult, rt_err};
use super::options;
use crate::nn::loss::{DiceVariant, cross_entropy, dice_loss, one_hot};
use crate::nn::{DenseNet, GlobalPool, LoadOptions, ParamStore, UNet3d, UNet3dConfig};
use crate::pretext::model::DenseOptions;
use crate::streams::{Stream, derive};
use crate::train::optim::{Adam, AdamConfig};

/// A network with its parameters, as scripts hold it.
#[derive(Clone)]
pub struct Model {
    net: Arc<Net>,
    store: ParamStore,
    name: String,
}

#[allow(clippy::large_enum_variant)] // one value per model, behind an Arc
enum Net {
    Unet(UNet3d),
    Dense(DenseNet, GlobalPool),
}

impl Model {
    /// The UNet3D, when the model is one.
    pub(crate) fn unet(&self) -> Option<&UNet3d> {
        match &*self.net {
            Net::Unet(u) => Some(u),
            Net::Dense(..) => None,
        }
    }

    /// A script model of a UNet3D and its parameters.
    pub(crate) fn of_unet(net: UNet3d, store: ParamStore, name: String) -> Model {
        Model {
            net: Arc::new(Net::Unet(net)),
            store,
            name,
        }
    }
}

/// An optimiser over a model's parameters.
#[derive(Clone)]
pub struct Optimizer(Arc<Mutex<Adam>>);

/// The options of `unet3d`: the network and the seed of its initialisation and dropout.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(default)]
struct UNetModelOptions {
    /// The network (the paper's by default).
    #[serde(flatten)]
    net: UNet3dConfig,
    /// Seed of the initialisation and the dropout masks.
    seed: u64,
}

/// The options of `densenet`: the network, its pooling and the seed of its initialisation.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(default)]
struct DenseModelOptions {
    /// The network and its global pooling (() = average).
    #[serde(flatten)]
    backbone: DenseOptions,
    /// Seed of the initialisation.
    seed: u64,
}

/// The options of `adam`: Adam's settings and which parameters it updates.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(default)]
struct AdamOptions {
    /// Adam's settings.
    #[serde(flatten)]
    adam: AdamConfig,
    /// Only parameters whose names start with this (e.g. "head."); "" = all.
    prefix: String,
}

/// Builds the `model` domain.
pub fn domain(state: &Arc<HostState>) -> Domain {
    let mut d = Domain::new(
        "model",
        "The paper's networks (UNet3D, DenseNet), checkpoints (safetensors), losses and Adam, \
         for prototyping training steps.",
    );
    d.custom_type::<Model>("Model");
    d.custom_type::<Optimizer>("Optimizer");
    let s = state.clone();
    d.func(
        "unet3d",
        "unet3d(opts: Map) -> Model",
        "The paper's 3D UNet (options below; the paper's by default).",
        move |m: Map| {
            let o: UNetModelOptions = options::parse("unet3d", &m)?;
            let cfg = UNet3dConfig {
                seed: o.seed,
                ..o.net
            };
            let store = ParamStore::new(derive(o.seed, Stream::Init, 0));
            let net = UNet3d::new(&cfg, store.builder(DType::F32, &s.device())).rt()?;
            Ok(Model {
                net: Arc::new(Net::Unet(net)),
                store,
                name: format!(
                    "UNet3D(filters {}, depth {}, classes {})",
                    cfg.filters, cfg.depth, cfg.classes
                ),
            })
        },
    )
    .options::<UNetModelOptions>();
    let s = state.clone();
    d.func(
        "densenet",
        "densenet(opts: Map) -> Model",
        "A DenseNet (121 by default) with global average or max pooling (options below).",
        move |m: Map| {
            let o: DenseModelOptions = options::parse("densenet", &m)?;
            let cfg = &o.backbone.net;
            let store = ParamStore::new(derive(o.seed, Stream::Init, 0));
            let net = DenseNet::new(cfg, store.builder(DType::F32, &s.device())).rt()?;
            let name = format!("DenseNet(growth {}, blocks {:?})", cfg.growth, cfg.blocks);
            let pool = o.backbone.pool.unwrap_or(GlobalPool::Avg);
            Ok(Model {
                net: Arc::new(Net::Dense(net, pool)),
                store,
                name,
            })
        },
    )
    .options::<DenseModelOptions>();
    d.func(
        "forward",
        "m.forward(x: Tensor, train: bool) -> Tensor",
        "UNet3D: class logits [N, classes, D, H, W]; DenseNet: pooled features [N, C].",
        |m: &mut Model, x: Tensor, train: bool| match &*m.net {
            Net::Unet(u) => u.forward_t(&x, train).rt(),
            Net::Dense(n, p) => n.embed(&x, *p, train).rt(),
        },
    );
    d.func(
        "predict",
        "m.predict(x: Tensor) -> Tensor",
        "forward(x, false) without recording the graph: inference that keeps only live activations.",
        |m: &mut Model, x: Tensor| {
            crate::ops::no_grad(|| match &*m.net {
                Net::Unet(u) => u.forward_t(&x, false),
                Net::Dense(n, p) => n.embed(&x, *p, false),
            })
            .rt()
        },
    );
    d.func(
        "encode",
        "m.encode(x: Tensor, train: bool) -> Tensor",
        "The encoder's flattened features [N, F] (what pretext heads read).",
        |m: &mut Model, x: Tensor, train: bool| match &*m.net {
            Net::Unet(u) => u.encoder.embed(&x, train).rt(),
            Net::Dense(n, p) => n.embed(&x, *p, train).rt(),
        },
    );
    d.getter(
        "params",
        "m.params -> INT",
        "Trainable parameters (5,647,891 for the paper's UNet3D).",
        |m: &mut Model| Ok(m.store.trainable_count("") as INT),
    );
    d.func(
        "names",
        "m.names() -> Array",
        "The names of every parameter and buffer.",
        |m: &mut Model| {
            Ok(m.store
                .all()
                .into_iter()
                .map(|(n, _)| Dynamic::from(n))
                .collect::<Array>())
        },
    );
    d.func(
        "save",
        "m.save(path: String)",
        "Writes every tensor to a safetensors file (atomic).",
        |m: &mut Model, p: &str| m.store.save(p, &serde_json::json!({"model": m.name})).rt(),
    );
    d.func(
        "load",
        "m.load(path: String, opts: Map) -> Map",
        "Loads tensors (options below); returns loaded/missing/unexpected/mismatched.",
        |m: &mut Model, p: &str, o: Map| load(m, p, &o),
    )
    .options::<LoadOptions>();
    d.overload("load", |m: &mut Model, p: &str| load(m, p, &Map::new()));
    d.func(
        "to_string",
        "m.to_string() -> String",
        "A one-line description.",
        |m: &mut Model| {
            Ok(format!(
                "{} with {} parameters",
                m.name,
                m.store.trainable_count("")
            ))
        },
    );
    training(&mut d);
    super::folder::predictions(&mut d, state);
    d
}

fn load(m: &Model, path: &str, o: &Map) -> RResult<Map> {
    let opts: LoadOptions = options::parse("load", o)?;
    let report = m.store.load(path, &opts).rt()?;
    rhai::serde::to_dynamic(&report)?
        .try_cast::<Map>()
        .ok_or_else(|| rt_err("load: report"))
}

fn training(d: &mut Domain) {
    d.func(
        "adam",
        "adam(m: Model, opts: Map) -> Optimizer",
        "Adam over the model's parameters (options below).",
        |m: Model, o: Map| {
            let opts: AdamOptions = options::parse("adam", &o)?;
            let adam = Adam::new(m.store.trainable(&opts.prefix), opts.adam).rt()?;
            Ok(Optimizer(Arc::new(Mutex::new(adam))))
        },
    )
    .options::<AdamOptions>();
    d.func(
        "step",
        "opt.step(loss: Tensor) -> FLOAT",
        "Backpropagates the loss and updates the parameters; returns the loss (errors on NaN).",
        |o: &mut Optimizer, loss: Tensor| {
            let mut adam = o.0.lock().map_err(|_| rt_err("optimizer: poisoned"))?;
            adam.backward_step(&loss).rt().map(|v| v as FLOAT)
        },
    );
    d.func(
        "cross_entropy",
        "cross_entropy(logits: Tensor, targets: Tensor) -> Tensor",
        "Mean cross-entropy of logits [N, K] against class indices [N].",
        |l: Tensor, t: Tensor| cross_entropy(&l, &t).rt(),
    );
    d.func(
        "dice_loss",
        "dice_loss(probs: Tensor, onehot: Tensor) -> Tensor",
        "O's Dice loss (batch-global, mean over classes, negated) of probabilities [N, C, ...].",
        |p: Tensor, y: Tensor| dice_loss(&p, &y, DiceVariant::Batch).rt(),
    );
    d.func(
        "dice_loss",
        "dice_loss(probs: Tensor, onehot: Tensor, variant: String) -> Tensor",
        "The Dice loss, variant \"batch\" (O) or \"per_sample\" (S).",
        |p: Tensor, y: Tensor, v: &str| {
            let variant: DiceVariant = options::enum_arg("dice_loss", "variant", v)?;
            dice_loss(&p, &y, variant).rt()
        },
    );
    d.func(
        "one_hot",
        "one_hot(labels: Tensor, classes: INT) -> Tensor",
        "One-hot f32 encoding [N, classes, ...] of integer labels [N, ...].",
        |l: Tensor, k: INT| one_hot(&l, super::convert::index(k, "classes")?, DType::F32).rt(),
    );
}

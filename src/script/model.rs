//! The `model` domain: the paper's networks, checkpoints, losses and an optimiser in scripts,
//! for prototyping training loops in the REPL.

use std::sync::{Arc, Mutex};

use candle_core::{DType, Tensor};
use rhai::{Array, Dynamic, FLOAT, INT, Map};

use super::HostState;
use super::api::Domain;
use super::convert::{RResult, ScriptResult, rt_err};
use super::opts::Opts;
use crate::nn::{
    DenseNet, DenseNetConfig, GlobalPool, LoadOptions, ParamStore, UNet3d, UNet3dConfig,
};
use crate::train::loss::{DiceVariant, cross_entropy, dice_loss, one_hot};
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

/// An optimiser over a model's parameters.
#[derive(Clone)]
pub struct Optimizer(Arc<Mutex<Adam>>);

/// Reads UNet3D settings from script options (defaults: the paper's).
pub fn unet_config(o: &Opts) -> RResult<UNet3dConfig> {
    let d = UNet3dConfig::default();
    Ok(UNet3dConfig {
        in_channels: o.count("in_channels", d.in_channels)?,
        filters: o.count("filters", d.filters)?,
        depth: o.count("depth", d.depth)?,
        classes: o.count("classes", d.classes)?,
        dropout: o.float("dropout", d.dropout)?,
        eps: o.float("eps", d.eps)?,
        momentum: o.float("momentum", d.momentum)?,
        seed: o.count("seed", 0)? as u64,
    })
}

/// Reads DenseNet settings from script options (defaults: DenseNet-121).
pub fn densenet_config(o: &Opts) -> RResult<DenseNetConfig> {
    let d = DenseNetConfig::densenet121();
    Ok(DenseNetConfig {
        in_channels: o.count("in_channels", d.in_channels)?,
        growth: o.count("growth", d.growth)?,
        blocks: match o.get("blocks") {
            Some(v) => o.counts_of("blocks", v)?,
            None => d.blocks,
        },
        init_features: o.count("init_features", d.init_features)?,
        bn_size: o.count("bn_size", d.bn_size)?,
    })
}

/// Reads `pool: "avg" | "max"`.
pub fn pool(o: &Opts, default: GlobalPool) -> RResult<GlobalPool> {
    match o.string("pool", "")?.as_str() {
        "" => Ok(default),
        "avg" => Ok(GlobalPool::Avg),
        "max" => Ok(GlobalPool::Max),
        other => Err(rt_err(format!(
            "pool: expected \"avg\" or \"max\", got \"{other}\""
        ))),
    }
}

const UNET_KEYS: [&str; 8] = [
    "in_channels",
    "filters",
    "depth",
    "classes",
    "dropout",
    "eps",
    "momentum",
    "seed",
];
const DENSE_KEYS: [&str; 7] = [
    "in_channels",
    "growth",
    "blocks",
    "init_features",
    "bn_size",
    "pool",
    "seed",
];

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
        "The paper's 3D UNet (filters 16, depth 4, 3 classes, dropout 0.5 unless given; also in_channels, seed).",
        move |m: Map| {
            let o = Opts::new("unet3d", &m, &UNET_KEYS)?;
            let cfg = unet_config(&o)?;
            let store = ParamStore::new(cfg.seed);
            let net = UNet3d::new(&cfg, store.builder(DType::F32, &s.device())).rt()?;
            Ok(Model { net: Arc::new(Net::Unet(net)), store, name: format!("UNet3D(filters {}, depth {}, classes {})", cfg.filters, cfg.depth, cfg.classes) })
        },
    );
    let s = state.clone();
    d.func(
        "densenet",
        "densenet(opts: Map) -> Model",
        "A DenseNet (121 unless growth/blocks/init_features/bn_size given) with global avg or max pooling.",
        move |m: Map| {
            let o = Opts::new("densenet", &m, &DENSE_KEYS)?;
            let cfg = densenet_config(&o)?;
            let store = ParamStore::new(o.count("seed", 0)? as u64);
            let net = DenseNet::new(&cfg, store.builder(DType::F32, &s.device())).rt()?;
            let name = format!("DenseNet(growth {}, blocks {:?})", cfg.growth, cfg.blocks);
            Ok(Model { net: Arc::new(Net::Dense(net, pool(&o, GlobalPool::Avg)?)), store, name })
        },
    );
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
        "Loads tensors (opts: prefix, rename [[from, to], ..]); returns loaded/missing/unexpected/mismatched.",
        |m: &mut Model, p: &str, o: Map| load(m, p, &o),
    );
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
    d
}

fn load(m: &Model, path: &str, o: &Map) -> RResult<Map> {
    let opts = Opts::new("load", o, &["prefix", "rename"])?;
    let prefix = opts.string("prefix", "")?;
    let rename = match opts.get("rename") {
        None => Vec::new(),
        Some(v) => v
            .clone()
            .into_typed_array::<Array>()
            .map_err(|_| rt_err("rename: expected [[from, to], ...]"))?
            .into_iter()
            .map(|pair| match pair.as_slice() {
                [a, b] => Ok((a.to_string(), b.to_string())),
                _ => Err(rt_err("rename: each rule is [from, to]")),
            })
            .collect::<RResult<_>>()?,
    };
    let report = m
        .store
        .load(
            path,
            &LoadOptions {
                prefix: (!prefix.is_empty()).then_some(prefix),
                rename,
            },
        )
        .rt()?;
    rhai::serde::to_dynamic(&report)?
        .try_cast::<Map>()
        .ok_or_else(|| rt_err("load: report"))
}

fn training(d: &mut Domain) {
    d.func(
        "adam",
        "adam(m: Model, opts: Map) -> Optimizer",
        "Adam over the model's parameters (opts: lr 1e-3, clip_norm, clip_value, eps 1e-7, prefix).",
        |m: Model, o: Map| {
            let opts = Opts::new("adam", &o, &["lr", "clip_norm", "clip_value", "eps", "prefix"])?;
            let cfg = AdamConfig {
                lr: opts.float("lr", 1e-3)?,
                eps: opts.float("eps", 1e-7)?,
                clip_norm: opts.get("clip_norm").map(|_| opts.float("clip_norm", 1.0)).transpose()?,
                clip_value: opts.get("clip_value").map(|_| opts.float("clip_value", 1.0)).transpose()?,
                ..Default::default()
            };
            let adam = Adam::new(m.store.trainable(&opts.string("prefix", "")?), cfg).rt()?;
            Ok(Optimizer(Arc::new(Mutex::new(adam))))
        },
    );
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
            let variant = match v {
                "batch" => DiceVariant::Batch,
                "per_sample" => DiceVariant::PerSample,
                other => {
                    return Err(rt_err(format!(
                        "dice_loss: variant \"batch\" or \"per_sample\", got \"{other}\""
                    )));
                }
            };
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

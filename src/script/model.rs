//! The `model` domain: the paper's networks, checkpoints, losses and an optimiser in scripts,
//! for prototyping training loops in the REPL.

use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Tensor};
use rhai::{Array, Dynamic, FLOAT, INT, Map};

use super::HostState;
use super::api::Domain;
use super::convert::{RResult, ScriptResult, ints, rt_err};
use super::options;
use crate::nn::loss::{DiceVariant, cross_entropy, dice_loss, one_hot};
use crate::nn::{
    DenseNet, GlobalPool, LoadOptions, MlpHead, MlpHeadConfig, ParamStore, UNet3d, UNet3dConfig,
};
use crate::pretext::model::{BackboneConfig, DenseOptions};
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
    /// A fully connected head and the width of its input.
    Mlp(MlpHead, usize),
}

impl Model {
    /// The UNet3D, when the model is one.
    pub(crate) fn unet(&self) -> Option<&UNet3d> {
        match &*self.net {
            Net::Unet(u) => Some(u),
            Net::Dense(..) | Net::Mlp(..) => None,
        }
    }

    /// What a checkpoint records about the model: its name and, for a UNet3D, the backbone
    /// that `finetune_segmentation(#{ init })` checks against its own.
    fn manifest(&self) -> serde_json::Value {
        match self.unet() {
            Some(u) => serde_json::json!({
                "model": self.name,
                "backbone": BackboneConfig::Unet(*u.encoder.config()),
            }),
            None => serde_json::json!({ "model": self.name }),
        }
    }

    /// The model's output for `x` (see `forward`'s doc).
    fn forward(&self, x: &Tensor, train: bool) -> RResult<Tensor> {
        match &*self.net {
            Net::Unet(u) => u.forward_t(x, train).rt(),
            Net::Dense(n, p) => n.embed(x, *p, train).rt(),
            Net::Mlp(h, d_in) => {
                if x.rank() != 2 || x.dims()[1] != *d_in {
                    return Err(rt_err(format!(
                        "forward: the MLP expects features [N, {d_in}], got {:?}",
                        x.dims()
                    )));
                }
                h.forward_t(x, train).rt()
            }
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

/// The options of `mlp`: the hidden layers' regularisation and the seed.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(default)]
struct MlpOptions {
    /// Dropout after each hidden layer (0 = none).
    dropout: f64,
    /// BatchNorm momentum of the hidden layers: the weight of a new batch (PyTorch's 0.1).
    momentum: f64,
    /// Seed of the initialisation and the dropout masks.
    seed: u64,
}

impl Default for MlpOptions {
    fn default() -> Self {
        MlpOptions {
            dropout: 0.0,
            momentum: 0.1,
            seed: 0,
        }
    }
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
        "The paper's networks (UNet3D, DenseNet), fully connected heads (MLP), checkpoints \
         (safetensors), losses and Adam, for prototyping training steps and writing pretext \
         tasks.",
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
    let s = state.clone();
    d.func(
        "mlp",
        "mlp(d_in: INT, hidden: Array, d_out: INT, opts: Map) -> Model",
        "A fully connected network (a projection or classification head): per hidden width \
         Linear → ReLU → BatchNorm → dropout, then a Linear to d_out (options below; \
         parameters fc{i}.*, bn{i}.*, out.*).",
        move |d_in: INT, hidden: Array, d_out: INT, m: Map| {
            mlp(d_in, &hidden, d_out, &m, &s.device())
        },
    )
    .options::<MlpOptions>();
    let s = state.clone();
    d.overload("mlp", move |d_in: INT, hidden: Array, d_out: INT| {
        mlp(d_in, &hidden, d_out, &Map::new(), &s.device())
    });
    d.func(
        "forward",
        "m.forward(x: Tensor, train: bool) -> Tensor",
        "UNet3D: class logits [N, classes, D, H, W]; DenseNet: pooled features [N, C]; MLP: \
         outputs [N, d_out] of features [N, d_in].",
        |m: &mut Model, x: Tensor, train: bool| m.forward(&x, train),
    );
    d.func(
        "predict",
        "m.predict(x: Tensor) -> Tensor",
        "forward(x, false) without recording the graph: inference that keeps only live activations.",
        |m: &mut Model, x: Tensor| crate::ops::no_grad(|| m.forward(&x, false)),
    );
    d.func(
        "encode",
        "m.encode(x: Tensor, train: bool) -> Tensor",
        "The encoder's flattened features [N, F] (what pretext heads read).",
        |m: &mut Model, x: Tensor, train: bool| match &*m.net {
            Net::Unet(u) => u.encoder.embed(&x, train).rt(),
            Net::Dense(n, p) => n.embed(&x, *p, train).rt(),
            Net::Mlp(..) => Err(rt_err("encode: an MLP has no encoder; use forward")),
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
        "Writes every tensor to a safetensors file (atomic); a UNet3D's records its backbone, \
         which finetune_segmentation(#{ init }) checks.",
        |m: &mut Model, p: &str| m.store.save(p, &m.manifest()).rt(),
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

fn mlp(d_in: INT, hidden: &Array, d_out: INT, o: &Map, dev: &Device) -> RResult<Model> {
    let opts: MlpOptions = options::parse("mlp", o)?;
    let width = |v: INT, what: &str| match usize::try_from(v) {
        Ok(w) if w > 0 => Ok(w),
        _ => Err(rt_err(format!(
            "mlp: argument `{what}`: expected a width ≥ 1, got {v}"
        ))),
    };
    let (d_in, d_out) = (width(d_in, "d_in")?, width(d_out, "d_out")?);
    let hidden = ints(hidden, "mlp: argument `hidden`")?
        .into_iter()
        .map(|w| width(w, "hidden"))
        .collect::<RResult<Vec<_>>>()?;
    if !(0.0..1.0).contains(&opts.dropout) {
        return Err(rt_err(format!(
            "mlp: option `dropout` must be in [0, 1), got {}",
            opts.dropout
        )));
    }
    let cfg = MlpHeadConfig {
        hidden,
        dropout: opts.dropout,
        seed: opts.seed,
        momentum: opts.momentum,
    };
    let store = ParamStore::new(derive(opts.seed, Stream::Init, 0));
    let head = MlpHead::new(d_in, d_out, &cfg, store.builder(DType::F32, dev)).rt()?;
    Ok(Model {
        net: Arc::new(Net::Mlp(head, d_in)),
        store,
        name: format!("MLP({d_in} → {:?} → {d_out})", cfg.hidden),
    })
}

fn load(m: &Model, path: &str, o: &Map) -> RResult<Map> {
    let opts: LoadOptions = options::parse("load", o)?;
    let report = m.store.load(path, &opts).rt()?;
    rhai::serde::to_dynamic(&report)?
        .try_cast::<Map>()
        .ok_or_else(|| rt_err("load: report"))
}

fn adam(models: &[Model], o: &Map) -> RResult<Optimizer> {
    let opts: AdamOptions = options::parse("adam", o)?;
    let vars = models
        .iter()
        .flat_map(|m| m.store.trainable(&opts.prefix))
        .collect();
    let adam = Adam::new(vars, opts.adam).rt()?;
    Ok(Optimizer(Arc::new(Mutex::new(adam))))
}

/// The models of `adam`'s array argument: at least one, each a Model, none twice.
fn models(arr: Array) -> RResult<Vec<Model>> {
    if arr.is_empty() {
        return Err(rt_err(
            "adam: argument `models`: expected a non-empty array of models",
        ));
    }
    let models = arr
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            let ty = script_type(&v);
            v.try_cast::<Model>().ok_or_else(|| {
                rt_err(format!(
                    "adam: argument `models`: element {i} is a {ty}, expected a Model"
                ))
            })
        })
        .collect::<RResult<Vec<_>>>()?;
    for (j, m) in models.iter().enumerate() {
        if let Some(i) = models[..j].iter().position(|o| Arc::ptr_eq(&o.net, &m.net)) {
            return Err(rt_err(format!(
                "adam: argument `models`: elements {i} and {j} are the same model"
            )));
        }
    }
    Ok(models)
}

/// A value's type as scripts name it (`INT`, `map`, `Tensor`), not its Rust path.
fn script_type(v: &Dynamic) -> String {
    match v.type_name() {
        "i64" => "INT".into(),
        "f64" => "FLOAT".into(),
        t => t.rsplit("::").next().unwrap_or(t).into(),
    }
}

fn training(d: &mut Domain) {
    d.func(
        "adam",
        "adam(m: Model, opts: Map) -> Optimizer",
        "Adam over the model's parameters (options below).",
        |m: Model, o: Map| adam(&[m], &o),
    )
    .options::<AdamOptions>();
    d.func(
        "adam",
        "adam(models: Array, opts: Map) -> Optimizer",
        "One Adam over the parameters of several models (e.g. an encoder and its head): one \
         step backpropagates once and updates them all (options as above).",
        |ms: Array, o: Map| adam(&models(ms)?, &o),
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

//! Pretext models: a shared backbone (the UNet's 3D encoder, or a DenseNet for 2D) with the
//! task's head and loss (method.md §2.2): an MLP classifier for rotation, jigsaw and RPL over
//! the concatenated patch features, sigmoid codes and a triplet loss for exemplar, and patch
//! codes, a GRU and per-step predictions for CPC.

use candle_core::{D, DType, Device, Tensor};
use candle_nn::{Linear, Module, VarBuilder};

use super::sampler::{Batch, Sampler};
use super::{CpcLoss, ExemplarOptions, Negatives, Task, TaskConfig, TripletLoss};
use crate::nn::loss::{binary_cross_entropy, cross_entropy};
use crate::nn::{
    DenseNet, DenseNetConfig, Encoder3d, GlobalPool, Gru, MlpHead, MlpHeadConfig, UNet3dConfig,
    gru, linear,
};
use crate::streams::{Stream, derive};
use crate::{Error, Result};

/// The network whose weights pretraining is for.
#[derive(Clone, Debug)]
pub enum Backbone {
    /// The 3D UNet's encoder (features flattened).
    Unet(Encoder3d),
    /// A 2D DenseNet with global pooling.
    Dense(DenseNet, GlobalPool),
}

/// How to build a [`Backbone`].
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackboneConfig {
    /// The UNet3D encoder.
    Unet(UNet3dConfig),
    /// A DenseNet and its pooling (O pretrains with global max pooling).
    Dense(DenseNetConfig, GlobalPool),
}

/// The options of a 2D backbone: the DenseNet and its global pooling.
#[derive(
    Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(default)]
pub struct DenseOptions {
    /// The network (DenseNet-121 by default).
    #[serde(flatten)]
    pub net: DenseNetConfig,
    /// Global pooling of the features; () = the protocol's (O: max for the pretext tasks,
    /// average for grading).
    pub pool: Option<GlobalPool>,
}

impl BackboneConfig {
    /// O's pretext backbone: the paper's UNet3D encoder for volumes, DenseNet-121 with global
    /// max pooling for images (`planar`).
    pub fn paper(planar: bool) -> Self {
        BackboneConfig::of(planar, &UNet3dConfig::default(), &DenseOptions::default())
    }

    /// The backbone for volumes (`unet`) or images (`dense`, max pooling unless given).
    pub fn of(planar: bool, unet: &UNet3dConfig, dense: &DenseOptions) -> Self {
        if planar {
            BackboneConfig::Dense(dense.net.clone(), dense.pool.unwrap_or(GlobalPool::Max))
        } else {
            BackboneConfig::Unet(*unet)
        }
    }
}

impl Backbone {
    /// The backbone of `cfg`, with parameters under `vb`.
    pub fn new(cfg: &BackboneConfig, vb: VarBuilder) -> Result<Self> {
        Ok(match cfg {
            BackboneConfig::Unet(c) => Backbone::Unet(Encoder3d::new(c, vb)?),
            BackboneConfig::Dense(c, pool) => Backbone::Dense(DenseNet::new(c, vb)?, *pool),
        })
    }

    /// Feature vectors `[N, F]` of inputs `[N, C, ...]`.
    pub fn embed(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        match self {
            Backbone::Unet(e) => e.embed(x, train),
            Backbone::Dense(d, pool) => d.embed(x, *pool, train),
        }
    }

    /// Feature vectors `[N, F_l]` of inputs `[N, C, ...]` at each of the encoder's `levels`
    /// (`0..=`[`Backbone::last_level`]; the last one is [`Backbone::embed`]'s): the UNet's
    /// block outputs max-pooled onto the bottleneck's grid and flattened, or the DenseNet's
    /// block outputs globally pooled.
    pub fn embed_levels(&self, x: &Tensor, levels: &[usize], train: bool) -> Result<Vec<Tensor>> {
        if levels == [self.last_level()] {
            return Ok(vec![self.embed(x, train)?]);
        }
        match self {
            Backbone::Unet(e) => e.embed_levels(x, levels, train),
            Backbone::Dense(d, pool) => d
                .level_maps_t(x, levels, train)?
                .iter()
                .map(|f| match pool {
                    GlobalPool::Avg => crate::ops::global_avg_pool(f),
                    GlobalPool::Max => crate::ops::global_max_pool(f),
                })
                .collect(),
        }
    }

    /// The deepest level: the UNet's bottleneck (`depth`) or the DenseNet's last block.
    pub fn last_level(&self) -> usize {
        match self {
            Backbone::Unet(e) => e.config().depth,
            Backbone::Dense(d, _) => d.config().blocks.len() - 1,
        }
    }

    /// The length of a feature vector for inputs of spatial size `dims`.
    pub fn feature_dim(&self, dims: [usize; 3]) -> usize {
        self.level_dim(self.last_level(), dims)
    }

    /// The length of a feature vector of encoder level `level` for inputs of size `dims`.
    pub fn level_dim(&self, level: usize, dims: [usize; 3]) -> usize {
        match self {
            Backbone::Unet(e) => {
                let c = e.config();
                c.level_channels(level) * dims.iter().map(|&s| c.feature_size(s)).product::<usize>()
            }
            Backbone::Dense(d, _) => d.config().level_channels(level),
        }
    }
}

#[derive(Clone, Debug)]
enum Head {
    /// One classifier per encoder level the task reads.
    Classifier(Vec<MlpHead>),
    Exemplar(Vec<Linear>),
    Cpc {
        encode: Linear,
        gru: Gru,
        predict: Vec<Linear>,
    },
}

/// The loss of one batch and how well the task was solved.
#[derive(Clone, Debug)]
pub struct StepOutput {
    /// The scalar loss (differentiable).
    pub loss: Tensor,
    /// Accuracy: correct classes; exemplar: triplets with `d(a,p) < d(a,n)`; CPC: correctly
    /// scored examples.
    pub accuracy: f64,
    /// Exemplar in evaluation mode only: the loss and accuracy of the same batch with the
    /// positive's and the negative's inputs swapped between their heads (see
    /// [`PretextModel::role_swap`]); `None` for the other tasks and in training.
    pub swapped: Option<(f64, f64)>,
}

/// One task of a [`PretextModel`]: its sampler (for the sizes), loss weight and encoder levels.
#[derive(Clone, Copy, Debug)]
pub struct HeadSpec<'a> {
    /// The task's sampler.
    pub sampler: &'a Sampler,
    /// The weight of the task's loss in the joint loss.
    pub weight: f64,
    /// The encoder levels the task's head reads (`[]`: the last level, O's); only the
    /// classification tasks (rotation, jigsaw, RPL) read other levels.
    pub levels: &'a [usize],
}

/// A task's head and loss over the shared backbone's features.
#[derive(Clone, Debug)]
struct TaskHead {
    task: TaskConfig,
    head: Head,
    classes: usize,
    /// Feature rows per batch item.
    per_item: usize,
    weight: f64,
    levels: Vec<usize>,
}

/// A backbone with the heads and losses of one pretext task, or of several trained jointly
/// (one head per task, the weighted sum of their losses).
#[derive(Clone, Debug)]
pub struct PretextModel {
    backbone: Backbone,
    heads: Vec<TaskHead>,
}

fn accuracy(pred: &Tensor, truth: &Tensor) -> Result<f64> {
    Ok(pred
        .eq(truth)?
        .to_dtype(DType::F64)?
        .mean_all()?
        .to_scalar::<f64>()?)
}

/// Whether `task` has a classifier head that may read any encoder level.
pub fn reads_levels(task: Task) -> bool {
    matches!(task, Task::Rotation | Task::Jigsaw | Task::Rpl)
}

impl PretextModel {
    /// The model of `sampler`'s task: backbone under `encoder.`, head under `head.` of `vb`.
    pub fn new(
        sampler: &Sampler,
        backbone: &BackboneConfig,
        head: &MlpHeadConfig,
        vb: VarBuilder,
    ) -> Result<Self> {
        let spec = HeadSpec {
            sampler,
            weight: 1.0,
            levels: &[],
        };
        Self::with_heads(&[spec], backbone, head, vb)
    }

    /// The model of one or several tasks sharing the backbone (under `encoder.`): one task's
    /// head is under `head.`, each of several under `head.<task>.`; a classifier reading
    /// levels other than the last has one head per level under `level<l>.` below that. Heads
    /// after the first draw their dropout masks from streams of their own.
    pub fn with_heads(
        specs: &[HeadSpec],
        backbone: &BackboneConfig,
        head: &MlpHeadConfig,
        vb: VarBuilder,
    ) -> Result<Self> {
        let b = Backbone::new(backbone, vb.pp("encoder"))?;
        let mut classifiers = 0;
        let mut heads = Vec::with_capacity(specs.len());
        for spec in specs {
            let task = spec.sampler.task_config().clone();
            if specs
                .iter()
                .filter(|s| s.sampler.task() == task.task)
                .count()
                > 1
            {
                return Err(Error::arg(
                    "tasks",
                    format!("task {} is listed twice", task.task.name()),
                ));
            }
            let hv = if specs.len() == 1 {
                vb.pp("head")
            } else {
                vb.pp("head").pp(task.task.name())
            };
            heads.push(TaskHead::new(spec, &b, head, hv, &mut classifiers)?);
        }
        Ok(PretextModel { backbone: b, heads })
    }

    /// The (first) task.
    pub fn task(&self) -> Task {
        self.heads[0].task.task
    }

    /// The tasks, in the order of their heads.
    pub fn tasks(&self) -> Vec<Task> {
        self.heads.iter().map(|h| h.task.task).collect()
    }

    /// The backbone.
    pub fn backbone(&self) -> &Backbone {
        &self.backbone
    }

    /// The loss and accuracy of `batch` (moved to `dev`) for the first task; `train` selects
    /// batch statistics and dropout.
    pub fn step(&self, batch: &Batch, dev: &Device, train: bool) -> Result<StepOutput> {
        self.task_step(0, batch, dev, train)
    }

    /// The loss (unweighted) and accuracy of task `t`'s `batch`.
    pub fn task_step(
        &self,
        t: usize,
        batch: &Batch,
        dev: &Device,
        train: bool,
    ) -> Result<StepOutput> {
        let head = self.heads.get(t).ok_or_else(|| {
            Error::arg(
                "task",
                format!("the model has {} heads, got task {t}", self.heads.len()),
            )
        })?;
        head.step(&self.backbone, batch, dev, train)
    }

    /// The joint loss `Σ w_t · L_t` of one batch per task given, `(task, batch)`, with every
    /// task's own output (unweighted loss and accuracy). One task of weight 1 is its loss
    /// alone.
    pub fn joint_step(
        &self,
        batches: &[(usize, &Batch)],
        dev: &Device,
        train: bool,
    ) -> Result<(Tensor, Vec<StepOutput>)> {
        let mut total: Option<Tensor> = None;
        let mut parts = Vec::with_capacity(batches.len());
        for &(t, batch) in batches {
            let out = self.task_step(t, batch, dev, train)?;
            let w = self.heads[t].weight;
            let term = if w == 1.0 {
                out.loss.clone()
            } else {
                (&out.loss * w)?
            };
            total = Some(match total {
                None => term,
                Some(acc) => (acc + term)?,
            });
            parts.push(out);
        }
        let total = total.ok_or_else(|| Error::arg("batches", "a joint step needs a batch"))?;
        Ok((total, parts))
    }

    /// The loss weight of task `t`.
    pub fn weight(&self, t: usize) -> f64 {
        self.heads[t].weight
    }

    /// The exemplar shortcut diagnostic: the loss and accuracy of anchors `a` against
    /// `p_swap` (the negative's input through the positive's head) as the positive and `n_swap`
    /// (the positive's input through the negative's head) as the negative, with the sampled
    /// pairing (no hardest-negative mining). A model that compares the inputs finds the swapped
    /// "positive" far from the anchor: accuracy near 1 − the ordinary accuracy, near 0 once the
    /// task is learnt. Heads that tell the roles apart without looking at the input (O's three
    /// separate heads can: anchor and positive heads agree on a constant code, the negative's
    /// head differs) keep the ordinary low loss and high accuracy under the swap. With one shared
    /// head the swap is exactly the roles reversed, so accuracy is 1 − the ordinary one.
    pub fn role_swap(
        a: &Tensor,
        p_swap: &Tensor,
        n_swap: &Tensor,
        o: &ExemplarOptions,
    ) -> Result<(f64, f64)> {
        let mut plain = o.clone();
        plain.hardest = false;
        plain.negatives = Negatives::Dataset;
        let out = triplet_loss(a, p_swap, Some(n_swap), &plain)?;
        let loss = out.loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        Ok((loss, out.accuracy))
    }
}

impl TaskHead {
    fn new(
        spec: &HeadSpec,
        b: &Backbone,
        head: &MlpHeadConfig,
        hv: VarBuilder,
        classifiers: &mut u64,
    ) -> Result<Self> {
        let sampler = spec.sampler;
        let task = sampler.task_config().clone();
        let last = b.last_level();
        let levels = if spec.levels.is_empty() {
            vec![last]
        } else {
            spec.levels.to_vec()
        };
        if levels != [last] && !reads_levels(task.task) {
            return Err(Error::arg(
                "levels",
                format!(
                    "task {} reads the last encoder level only; levels are for rotation, jigsaw and rpl",
                    task.task.name()
                ),
            ));
        }
        if let Some(&l) = levels.iter().find(|&&l| l > last) {
            return Err(Error::arg(
                "levels",
                format!("the encoder has levels 0 to {last}, got {l}"),
            ));
        }
        if !(spec.weight.is_finite() && spec.weight >= 0.0) {
            return Err(Error::arg(
                "weights",
                format!(
                    "expected a finite weight ≥ 0 for {}, got {}",
                    task.task.name(),
                    spec.weight
                ),
            ));
        }
        let dims = sampler.input_dims();
        let f = b.feature_dim(dims);
        if f == 0 || levels.iter().any(|&l| b.level_dim(l, dims) == 0) {
            return Err(Error::arg(
                "backbone",
                format!("the encoder produces no features for inputs of {dims:?}"),
            ));
        }
        // Feature rows per item: the volume (rotation), centre and query (RPL), every patch.
        let per_item = match task.task {
            Task::Rotation => 1,
            Task::Rpl => 2,
            _ => sampler.views(),
        };
        let head = match task.task {
            Task::Rotation | Task::Jigsaw | Task::Rpl => Head::Classifier(
                levels
                    .iter()
                    .map(|&l| {
                        let vb = if levels == [last] {
                            hv.clone()
                        } else {
                            hv.pp(format!("level{l}"))
                        };
                        let mut cfg = head.clone();
                        if *classifiers > 0 {
                            cfg.seed = derive(head.seed, Stream::Head, *classifiers);
                        }
                        *classifiers += 1;
                        MlpHead::new(per_item * b.level_dim(l, dims), sampler.classes(), &cfg, vb)
                    })
                    .collect::<Result<_>>()?,
            ),
            Task::Exemplar => {
                let n = if task.options.exemplar.shared_head {
                    1
                } else {
                    3
                };
                let code = task.options.exemplar.code;
                Head::Exemplar(
                    (0..n)
                        .map(|i| linear(f, code, hv.pp(format!("code{i}"))))
                        .collect::<Result<_>>()?,
                )
            }
            Task::Cpc => {
                let c = &task.options.cpc;
                Head::Cpc {
                    encode: linear(f, c.code, hv.pp("encode"))?,
                    gru: gru(c.code, c.hidden, hv.pp("gru"))?,
                    predict: (0..2)
                        .map(|k| linear(c.hidden, c.code, hv.pp(format!("predict{k}"))))
                        .collect::<Result<_>>()?,
                }
            }
        };
        Ok(TaskHead {
            task,
            head,
            classes: sampler.classes(),
            per_item,
            weight: spec.weight,
            levels,
        })
    }

    fn step(
        &self,
        backbone: &Backbone,
        batch: &Batch,
        dev: &Device,
        train: bool,
    ) -> Result<StepOutput> {
        let x = batch.x.to_device(dev)?;
        let b = batch.items;
        match &self.head {
            Head::Classifier(mlps) => {
                let y = batch
                    .y
                    .as_ref()
                    .ok_or_else(|| Error::arg("batch", "a classification task needs targets"))?
                    .to_device(dev)?;
                let per_item = self.per_item;
                let feats = backbone.embed_levels(&x, &self.levels, train)?;
                let mut loss: Option<Tensor> = None;
                let mut acc = 0.0;
                for (mlp, f) in mlps.iter().zip(&feats) {
                    let logits = mlp.forward_t(&f.reshape((b, ()))?, train)?;
                    if logits.dims() != [b, self.classes] || f.dims()[0] != b * per_item {
                        return Err(Error::shape(
                            "pretext",
                            format!("batch of {b} items gave features {:?}", f.dims()),
                        ));
                    }
                    let l = cross_entropy(&logits, &y)?;
                    loss = Some(match loss {
                        None => l,
                        Some(s) => (s + l)?,
                    });
                    acc += accuracy(&logits.argmax(D::Minus1)?, &y.to_dtype(DType::U32)?)?;
                }
                let n = mlps.len();
                let loss = loss.ok_or_else(|| Error::arg("levels", "no level to read"))?;
                // The mean over levels; one level is its loss alone.
                let (loss, accuracy) = if n == 1 {
                    (loss, acc)
                } else {
                    ((loss / n as f64)?, acc / n as f64)
                };
                Ok(StepOutput {
                    loss,
                    accuracy,
                    swapped: None,
                })
            }
            Head::Exemplar(heads) => {
                let feats = backbone.embed(&x, train)?;
                self.exemplar(&feats, heads, b, train)
            }
            Head::Cpc {
                encode,
                gru,
                predict,
            } => {
                let feats = backbone.embed(&x, train)?;
                let codes = encode.forward(&feats)?;
                self.cpc(&codes, gru, predict, batch, dev)
            }
        }
    }

    fn exemplar(
        &self,
        feats: &Tensor,
        heads: &[Linear],
        b: usize,
        train: bool,
    ) -> Result<StepOutput> {
        let code = |i: usize, part: usize| -> Result<Tensor> {
            let h = &heads[part.min(heads.len() - 1)];
            Ok(candle_nn::ops::sigmoid(&h.forward(&feats.narrow(
                0,
                i * b,
                b,
            )?)?)?)
        };
        let (a, p) = (code(0, 0)?, code(1, 1)?);
        let sampled = feats.dims()[0] == 3 * b;
        let n = if sampled { Some(code(2, 2)?) } else { None };
        let mut out = triplet_loss(&a, &p, n.as_ref(), &self.task.options.exemplar)?;
        if !train {
            // The shortcut diagnostic: the same heads, the positive's and the negative's inputs
            // exchanged. No random draw, no state change: training is unaffected.
            let (p_swap, n_swap) = if sampled {
                (code(2, 1)?, code(1, 2)?)
            } else {
                // In-batch negatives: item i's negative is item i+1's positive.
                let rolled = Tensor::cat(&[p.narrow(0, 1, b - 1)?, p.narrow(0, 0, 1)?], 0)?;
                (rolled, p.clone())
            };
            out.swapped = Some(PretextModel::role_swap(
                &a,
                &p_swap,
                &n_swap,
                &self.task.options.exemplar,
            )?);
        }
        Ok(out)
    }

    fn cpc(
        &self,
        codes: &Tensor,
        gru: &Gru,
        predict: &[Linear],
        batch: &Batch,
        dev: &Device,
    ) -> Result<StepOutput> {
        let missing = || Error::arg("batch", "a CPC batch needs context, targets and labels");
        let ctx = batch.context.as_ref().ok_or_else(missing)?.to_device(dev)?;
        let tgt = batch.targets.as_ref().ok_or_else(missing)?.to_device(dev)?;
        let y = batch.y.as_ref().ok_or_else(missing)?.to_device(dev)?;
        cpc_loss(
            codes,
            gru,
            predict,
            (&ctx, &tgt, &y),
            self.task.options.cpc.loss,
        )
    }
}

/// The exemplar triplet loss of anchor and positive codes `a`, `p` `[B, code]` and, when the
/// batch sampled them, negative codes `n` (method.md §3.4): `mean max(0, d(a,p) − d(a,n) +
/// margin)` with `d` the mean squared (O) or Euclidean (S) distance, the negative being the
/// sampled one (O), another item's positive (S: item i gets positive i+1), or the nearest of
/// the other positives and the sampled negatives (`hardest`). Also the share of triplets with
/// `d(a,p) < d(a,n)`.
pub fn triplet_loss(
    a: &Tensor,
    p: &Tensor,
    n: Option<&Tensor>,
    o: &ExemplarOptions,
) -> Result<StepOutput> {
    let b = a.dims()[0];
    let dist = |u: &Tensor, v: &Tensor| -> Result<Tensor> {
        let sq = (u - v)?.sqr()?;
        Ok(match o.loss {
            TripletLoss::MeanSquared => sq.mean(D::Minus1)?,
            TripletLoss::Euclidean => (sq.sum(D::Minus1)? + 1e-12)?.sqrt()?,
        })
    };
    let d_ap = dist(a, p)?;
    let d_an = if o.hardest {
        // The nearest other item among the positives (and the sampled negatives).
        let mut pool = vec![p.clone()];
        if let Some(n) = n {
            pool.push(n.clone());
        }
        let pool = Tensor::cat(&pool, 0)?;
        let m = pool.dims()[0];
        let da = a.unsqueeze(1)?.broadcast_sub(&pool.unsqueeze(0)?)?.sqr()?;
        let d = match o.loss {
            TripletLoss::MeanSquared => da.mean(D::Minus1)?,
            TripletLoss::Euclidean => (da.sum(D::Minus1)? + 1e-12)?.sqrt()?,
        };
        // Exclude each anchor's own positive.
        let own: Vec<f32> = (0..b)
            .flat_map(|i| (0..m).map(move |j| if j == i { 1e9 } else { 0.0 }))
            .collect();
        let own = Tensor::from_vec(own, (b, m), d.device())?.to_dtype(d.dtype())?;
        (d + own)?.min(D::Minus1)?
    } else if let (Negatives::Dataset, Some(n)) = (o.negatives, n) {
        dist(a, n)?
    } else {
        if b < 2 {
            return Err(Error::arg(
                "exemplar",
                "in-batch negatives need at least two items per batch",
            ));
        }
        // S: the positive of another item (rolled by one, so no item is its own negative).
        let rolled = Tensor::cat(&[p.narrow(0, 1, b - 1)?, p.narrow(0, 0, 1)?], 0)?;
        dist(a, &rolled)?
    };
    let loss = crate::ops::relu(&((&d_ap - &d_an)? + o.margin)?)?.mean_all()?;
    let acc = d_ap
        .lt(&d_an)?
        .to_dtype(DType::F64)?
        .mean_all()?
        .to_scalar::<f64>()?;
    Ok(StepOutput {
        loss,
        accuracy: acc,
        swapped: None,
    })
}

/// O's CPC loss (method.md §3.5) on patch codes `codes [M, code]`: for each example, the GRU's
/// last state over the context codes `ctx [E, L]` (indices into `codes`) predicts the codes of
/// the targets `tgt [E, K]` with one linear map per step. Binary: the score
/// `mean_k mean_d(pred_k · target_k)` is a logit, with binary cross-entropy against the labels
/// `y [E]`; InfoNCE: over the positive examples, `pred_k · target_kᵀ / code` averaged over k,
/// cross-entropy against the diagonal. Also the share of correctly scored examples.
pub fn cpc_loss(
    codes: &Tensor,
    gru: &Gru,
    predict: &[Linear],
    (ctx, tgt, y): (&Tensor, &Tensor, &Tensor),
    loss_kind: CpcLoss,
) -> Result<StepOutput> {
    let dev = codes.device();
    let (e, l) = ctx.dims2()?;
    let k = tgt.dims()[1];
    let code = codes.dims()[1];
    let context = codes
        .index_select(&ctx.flatten_all()?, 0)?
        .reshape((e, l, code))?;
    let c = gru.forward(&context)?;
    let preds: Vec<Tensor> = predict
        .iter()
        .take(k)
        .map(|p| p.forward(&c))
        .collect::<candle_core::Result<_>>()?;
    let target = |j: usize| -> Result<Tensor> {
        Ok(codes.index_select(&tgt.narrow(1, j, 1)?.flatten_all()?, 0)?)
    };
    match loss_kind {
        CpcLoss::Binary => {
            let mut score: Option<Tensor> = None;
            for (j, p) in preds.iter().enumerate() {
                let s = (p * target(j)?)?.mean(D::Minus1)?;
                score = Some(match score {
                    None => s,
                    Some(t) => (t + s)?,
                });
            }
            let logit = (score.expect("at least one prediction step") / k as f64)?;
            let yf = y.to_dtype(logit.dtype())?;
            let loss = binary_cross_entropy(&logit, &yf)?;
            let acc = accuracy(
                &logit.gt(0.0)?.to_dtype(DType::U32)?,
                &y.to_dtype(DType::U32)?,
            )?;
            Ok(StepOutput {
                loss,
                accuracy: acc,
                swapped: None,
            })
        }
        CpcLoss::InfoNce => {
            let labels: Vec<u32> = y.to_dtype(DType::U32)?.to_vec1()?;
            let pos: Vec<u32> = labels
                .iter()
                .enumerate()
                .filter(|(_, v)| **v == 1)
                .map(|(i, _)| i as u32)
                .collect();
            if pos.len() < 2 {
                return Err(Error::arg(
                    "cpc",
                    "InfoNCE needs at least two positive examples per batch",
                ));
            }
            let pos = Tensor::new(pos.as_slice(), dev)?;
            let mut scores: Option<Tensor> = None;
            for (j, p) in preds.iter().enumerate() {
                let pj = p.index_select(&pos, 0)?;
                let tj = target(j)?.index_select(&pos, 0)?;
                let s = (pj.matmul(&tj.t()?)? / code as f64)?;
                scores = Some(match scores {
                    None => s,
                    Some(t) => (t + s)?,
                });
            }
            let scores = (scores.expect("at least one prediction step") / k as f64)?;
            let n = scores.dims()[0];
            let diag = Tensor::arange(0u32, n as u32, dev)?;
            let loss = cross_entropy(&scores, &diag)?;
            let acc = accuracy(&scores.argmax(D::Minus1)?, &diag)?;
            Ok(StepOutput {
                loss,
                accuracy: acc,
                swapped: None,
            })
        }
    }
}

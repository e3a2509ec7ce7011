//! The pretraining loop: Adam over a pretext model, batches sampled in a background thread
//! while the model trains, a validation split, per-epoch JSONL logs, and checkpoints of the
//! best (lowest validation loss) and the last epoch.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};
use std::time::Instant;

use candle_core::Device;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use super::optim::{Adam, AdamConfig};
use super::resume::{JsonlLog, STATE_FILE, Saved, Snapshot};
use crate::data::{Dataset, Grid};
use crate::error::FileContext;
use crate::nn::dropout::Generators;
use crate::nn::{MlpHeadConfig, ParamStore, UNet3dConfig};
use crate::pretext::model::{BackboneConfig, DenseOptions};
use crate::pretext::model::{HeadSpec, reads_levels};
use crate::pretext::{Batch, PretextModel, Sampler, StepOutput, Task, TaskConfig, TaskOptions};
use crate::streams::{Stream, derive};
use crate::{Error, Result};

/// Settings of [`pretrain`].
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PretrainConfig {
    /// Passes over the training split.
    pub epochs: usize,
    /// Items per batch (O's per-task sizes when `None`).
    pub batch_size: Option<usize>,
    /// Optimiser settings (O: Adam, lr 1e-4 in 3D and 1e-5 in 2D, no clipping).
    pub adam: AdamConfig,
    /// The last share of the items is the validation split (O's `train_val_split = 0.9`).
    pub val_fraction: f64,
    /// At most this many training batches per epoch (all when `None`).
    pub steps_per_epoch: Option<usize>,
    /// Seed of batch order and sampling.
    pub seed: u64,
    /// A budget in optimiser steps instead of epochs: epochs run until this many training
    /// steps are done (the last one cut short), so every task gets the same number of
    /// updates whatever its batch size; `epochs` is then unused.
    #[serde(default)]
    pub steps: Option<usize>,
}

impl Default for PretrainConfig {
    fn default() -> Self {
        PretrainConfig::paper(false)
    }
}

impl PretrainConfig {
    /// O's settings for volumes, or for images (`planar`): 1000 epochs, O's per-task batch
    /// sizes, Adam with lr 1e-4 (3D) or 1e-5 (2D) and no clipping, 10 % validation.
    pub fn paper(planar: bool) -> Self {
        PretrainConfig {
            epochs: 1000,
            batch_size: None,
            adam: AdamConfig::with_lr(if planar { 1e-5 } else { 1e-4 }),
            val_fraction: 0.1,
            steps_per_epoch: None,
            seed: 0,
            steps: None,
        }
    }
}

/// The options of a pretraining run as scripts give them (`pretrain(task, data, ids, #{..})`);
/// the defaults are O's, and [`PretrainOptions::resolve`] turns them into the trainer's
/// configurations.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct PretrainOptions {
    /// Passes over the training items (O: 1000).
    pub epochs: usize,
    /// Items per batch; () = O's per task (3D: rotation 4, jigsaw 8, RPL 32, exemplar 2,
    /// CPC 1; 2D: 32, 32, 32, 16, 6).
    pub batch: Option<usize>,
    /// Adam's learning rate; () = O's 1e-4 for volumes, 1e-5 for images.
    pub lr: Option<f64>,
    /// Clip every gradient tensor to norm 1 and value 1 (S); O does not clip.
    pub clip: bool,
    /// Share of the items (the last ones) that validate every epoch (O: 0.1).
    pub val_fraction: f64,
    /// At most this many training batches per epoch; () = all.
    pub steps_per_epoch: Option<usize>,
    /// A budget of this many training steps for every task whatever its batch size (epochs
    /// then run until it is spent); () = count `epochs`, as O.
    pub steps: Option<usize>,
    /// Seed of initialisation, dropout, batch order and sampling; () = the master seed.
    pub seed: Option<u64>,
    /// Folder for `log.jsonl`, `best.safetensors` and `last.safetensors`; () = none written.
    pub out: Option<PathBuf>,
    /// The 3D backbone (for volumes).
    pub unet: UNet3dConfig,
    /// The 2D backbone (for images).
    pub densenet: DenseOptions,
    /// Widths of the pretext head's hidden layers (O: 2048, 1024).
    pub head: Vec<usize>,
    /// Dropout after each hidden layer of the head (O: 0.5).
    pub head_dropout: f64,
    /// BatchNorm momentum of the head (Keras' 0.99 is 0.01 here).
    pub head_momentum: f64,
    /// The task's settings.
    pub task: TaskOptions,
    /// The experiment's configuration hash: a finished run in `out` with the same hash and
    /// epochs is reused instead of trained again.
    pub config_hash: String,
    /// The name on the progress line; () = the task's name.
    pub label: Option<String>,
    /// Encoder levels the classification heads (rotation, jigsaw, RPL) read, one head per
    /// level and the mean of their losses; [] = the last level (O's). UNet: 0 to `depth`
    /// (`depth` is the bottleneck; a shallower block's output is max-pooled onto the
    /// bottleneck's grid); DenseNet: 0 to blocks − 1 (a block's output after its
    /// BatchNorm-ReLU, globally pooled).
    pub levels: Vec<usize>,
    /// Joint pretraining, `pretrain("multi", ...)`: the tasks, their weights and schedule.
    pub multi: MultiOptions,
}

/// How a joint pretraining draws its batches.
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
pub enum Schedule {
    /// Every step draws one batch of every task and minimises the weighted sum of their
    /// losses.
    #[default]
    Together,
    /// Each step trains one task on its weighted loss, the tasks in turn.
    Alternate,
}

/// The options of joint multi-task pretraining (`pretrain("multi", data, ids, #{ multi })`):
/// one encoder, one head per task, the weighted sum of the task losses.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct MultiOptions {
    /// The tasks that share the encoder (at least two, each once).
    pub tasks: Vec<Task>,
    /// The weight of each task's loss, in the order of `tasks`; [] = 1 for every task.
    pub weights: Vec<f64>,
    /// "together": one batch of every task per step, the weighted sum of their losses;
    /// "alternate": one task per step, in turn.
    pub schedule: Schedule,
    /// Settings of single tasks that replace `task` for them, e.g. #{ jigsaw: #{ jitter: 2 } }.
    pub options: BTreeMap<String, TaskOptions>,
}

impl Default for MultiOptions {
    fn default() -> Self {
        MultiOptions {
            tasks: Task::ALL.to_vec(),
            weights: Vec::new(),
            schedule: Schedule::Together,
            options: BTreeMap::new(),
        }
    }
}

impl MultiOptions {
    /// The tasks with their settings (`options[task]`, else `base`) and weights, checked.
    pub fn tasks(&self, base: &TaskOptions) -> Result<Vec<PlannedTask>> {
        if self.tasks.len() < 2 {
            return Err(Error::arg(
                "multi.tasks",
                format!(
                    "joint pretraining needs at least two tasks, got {:?}",
                    names(&self.tasks)
                ),
            ));
        }
        if let Some(t) = self
            .tasks
            .iter()
            .enumerate()
            .find_map(|(i, t)| self.tasks[..i].contains(t).then_some(t))
        {
            return Err(Error::arg(
                "multi.tasks",
                format!("task {} is listed twice", t.name()),
            ));
        }
        if !self.weights.is_empty() && self.weights.len() != self.tasks.len() {
            return Err(Error::arg(
                "multi.weights",
                format!(
                    "expected one weight per task ({}), got {}",
                    self.tasks.len(),
                    self.weights.len()
                ),
            ));
        }
        if let Some(w) = self.weights.iter().find(|w| !(w.is_finite() && **w >= 0.0)) {
            return Err(Error::arg(
                "multi.weights",
                format!("expected finite weights ≥ 0, got {w}"),
            ));
        }
        if !self.weights.is_empty() && self.weights.iter().all(|w| *w == 0.0) {
            return Err(Error::arg(
                "multi.weights",
                "at least one weight must be above 0",
            ));
        }
        if let Some(k) = self
            .options
            .keys()
            .find(|k| !self.tasks.iter().any(|t| t.name() == k.as_str()))
        {
            return Err(Error::arg(
                "multi.options",
                format!(
                    "`{k}` is not one of the joint tasks {:?}",
                    names(&self.tasks)
                ),
            ));
        }
        Ok(self
            .tasks
            .iter()
            .enumerate()
            .map(|(i, &task)| PlannedTask {
                config: TaskConfig {
                    task,
                    options: self.options.get(task.name()).unwrap_or(base).clone(),
                },
                weight: self.weights.get(i).copied().unwrap_or(1.0),
            })
            .collect())
    }
}

fn names(tasks: &[Task]) -> Vec<&'static str> {
    tasks.iter().map(|t| t.name()).collect()
}

/// One task of a pretraining run and the weight of its loss.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct PlannedTask {
    /// The task and its settings.
    #[serde(flatten)]
    pub config: TaskConfig,
    /// The weight of its loss in the joint loss (1 for a single task).
    pub weight: f64,
}

impl Default for PretrainOptions {
    fn default() -> Self {
        let paper = PretrainConfig::paper(false);
        let head = MlpHeadConfig::pretext();
        PretrainOptions {
            epochs: paper.epochs,
            batch: paper.batch_size,
            lr: None,
            clip: false,
            val_fraction: paper.val_fraction,
            steps_per_epoch: paper.steps_per_epoch,
            steps: None,
            seed: None,
            out: None,
            unet: UNet3dConfig::default(),
            densenet: DenseOptions::default(),
            head: head.hidden,
            head_dropout: head.dropout,
            head_momentum: head.momentum,
            task: TaskOptions::default(),
            config_hash: String::new(),
            label: None,
            levels: Vec::new(),
            multi: MultiOptions::default(),
        }
    }
}

/// The configurations of one pretraining run.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct PretrainPlan {
    /// The tasks whose heads share the encoder, with their settings and weights: one task,
    /// or several for joint pretraining.
    pub tasks: Vec<PlannedTask>,
    /// How a joint pretraining draws its batches (unused with one task).
    pub schedule: Schedule,
    /// The encoder levels the classification heads read ([] = the last).
    pub levels: Vec<usize>,
    /// The backbone.
    pub backbone: BackboneConfig,
    /// The pretext head.
    pub head: MlpHeadConfig,
    /// The training loop.
    pub train: PretrainConfig,
}

impl PretrainOptions {
    /// The configurations for `task` on volumes or images (`planar`); `master_seed` stands in
    /// for an unset `seed`.
    pub fn resolve(&self, task: Task, planar: bool, master_seed: u64) -> Result<PretrainPlan> {
        if self.multi != MultiOptions::default() {
            return Err(Error::arg(
                "multi",
                format!(
                    "the `multi` options are for pretrain(\"multi\", ...), not for task {}",
                    task.name()
                ),
            ));
        }
        let tasks = vec![PlannedTask {
            config: TaskConfig {
                task,
                options: self.task.clone(),
            },
            weight: 1.0,
        }];
        self.plan(tasks, planar, master_seed)
    }

    /// The configurations of `name`: one task, or "multi" for the joint pretraining of the
    /// `multi` options' tasks.
    pub fn resolve_named(
        &self,
        name: &str,
        planar: bool,
        master_seed: u64,
    ) -> Result<PretrainPlan> {
        if name == MULTI {
            self.plan(self.multi.tasks(&self.task)?, planar, master_seed)
        } else {
            let task = Task::parse(name).map_err(|_| {
                Error::arg(
                    "task",
                    format!(
                        "unknown task `{name}`; expected rotation, jigsaw, rpl, exemplar, cpc or multi"
                    ),
                )
            })?;
            self.resolve(task, planar, master_seed)
        }
    }

    fn plan(
        &self,
        tasks: Vec<PlannedTask>,
        planar: bool,
        master_seed: u64,
    ) -> Result<PretrainPlan> {
        let seed = self.seed.unwrap_or(master_seed);
        let paper = PretrainConfig::paper(planar);
        let mut adam = AdamConfig::with_lr(self.lr.unwrap_or(paper.adam.lr));
        if self.clip {
            adam = adam.clipped();
        }
        let train = PretrainConfig {
            epochs: self.epochs,
            batch_size: self.batch,
            adam,
            val_fraction: self.val_fraction,
            steps_per_epoch: self.steps_per_epoch,
            seed,
            steps: self.steps,
        };
        train.validate()?;
        let backbone = match BackboneConfig::of(planar, &self.unet, &self.densenet) {
            BackboneConfig::Unet(u) => BackboneConfig::Unet(UNet3dConfig { seed, ..u }),
            other => other,
        };
        Ok(PretrainPlan {
            tasks,
            schedule: self.multi.schedule,
            levels: self.levels.clone(),
            backbone,
            head: MlpHeadConfig {
                hidden: self.head.clone(),
                dropout: self.head_dropout,
                seed,
                momentum: self.head_momentum,
            },
            train,
        })
    }
}

/// The name of joint pretraining in scripts and results.
pub const MULTI: &str = "multi";

impl PretrainPlan {
    /// The run's name: the task's, or "multi" for joint pretraining.
    pub fn name(&self) -> &'static str {
        match self.tasks.as_slice() {
            [one] => one.config.task.name(),
            _ => MULTI,
        }
    }
}

impl PretrainConfig {
    /// Epochs and training steps of a run over `items` training items in batches of `bs`.
    pub fn budget(&self, items: usize, bs: usize) -> (usize, usize) {
        self.budget_of(batches(&(0..items).collect::<Vec<_>>(), bs.max(1), None).len())
    }

    /// Epochs and training steps of a run whose full epoch has `full` optimiser steps.
    fn budget_of(&self, full: usize) -> (usize, usize) {
        let per_epoch = full.min(self.steps_per_epoch.unwrap_or(usize::MAX)).max(1);
        match self.steps {
            Some(s) => (s.div_ceil(per_epoch), s),
            None => (self.epochs, self.epochs * per_epoch),
        }
    }

    /// Checks the settings that no run could use.
    pub fn validate(&self) -> Result<()> {
        if self.epochs == 0 {
            return Err(Error::arg("epochs", "expected at least 1 epoch"));
        }
        if self.batch_size == Some(0) {
            return Err(Error::arg("batch", "expected a batch of at least 1 item"));
        }
        if self.steps_per_epoch == Some(0) {
            return Err(Error::arg("steps_per_epoch", "expected at least 1 step"));
        }
        if !(0.0..1.0).contains(&self.val_fraction) {
            return Err(Error::arg(
                "val_fraction",
                format!("expected a share in [0, 1), got {}", self.val_fraction),
            ));
        }
        if !(self.adam.lr.is_finite() && self.adam.lr > 0.0) {
            return Err(Error::arg(
                "lr",
                format!("expected a positive learning rate, got {}", self.adam.lr),
            ));
        }
        Ok(())
    }
}

/// One epoch's numbers.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EpochLog {
    /// The epoch, from 1.
    pub epoch: usize,
    /// Mean training loss.
    #[serde(with = "crate::io::float")]
    pub loss: f64,
    /// Mean training accuracy.
    #[serde(with = "crate::io::float")]
    pub accuracy: f64,
    /// Mean validation loss (`NaN` without a validation split; `null` in the JSONL log).
    #[serde(with = "crate::io::float")]
    pub val_loss: f64,
    /// Mean validation accuracy (`NaN`/`null` without a validation split).
    #[serde(with = "crate::io::float")]
    pub val_accuracy: f64,
    /// Exemplar only, with a validation split: the mean validation loss with the positive's and
    /// the negative's inputs swapped between their heads, the shortcut diagnostic
    /// ([`crate::pretext::model::PretextModel::role_swap`]). Absent from the log otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_swap_loss: Option<f64>,
    /// The validation accuracy under the same swap: near 0 when the heads compare the inputs
    /// (1 − `val_accuracy` with a shared head), near `val_accuracy` when they tell the roles
    /// apart without looking at the input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_swap_accuracy: Option<f64>,
    /// Wall time of the epoch, seconds.
    #[serde(with = "crate::io::float")]
    pub seconds: f64,
    /// Joint pretraining: each task's own numbers (its unweighted losses); absent for one
    /// task. The epoch's `loss`/`val_loss` are then the weighted sums, `accuracy` and
    /// `val_accuracy` the means over the tasks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tasks: Option<BTreeMap<String, TaskEpoch>>,
}

/// One task's numbers in an epoch of joint pretraining.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TaskEpoch {
    /// Mean training loss (unweighted).
    #[serde(with = "crate::io::float")]
    pub loss: f64,
    /// Mean training accuracy.
    #[serde(with = "crate::io::float")]
    pub accuracy: f64,
    /// Mean validation loss (`NaN`/`null` without a validation split).
    #[serde(with = "crate::io::float")]
    pub val_loss: f64,
    /// Mean validation accuracy (`NaN`/`null` without a validation split).
    #[serde(with = "crate::io::float")]
    pub val_accuracy: f64,
}

/// What [`pretrain`] did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PretrainReport {
    /// Every epoch.
    pub epochs: Vec<EpochLog>,
    /// The epoch with the lowest validation loss (the last when there is no validation).
    pub best_epoch: usize,
    /// The checkpoint of that epoch.
    pub best_checkpoint: Option<PathBuf>,
    /// The checkpoint of the last epoch.
    pub last_checkpoint: Option<PathBuf>,
}

/// Where [`Pretrainer::run`] writes: `dir/log.jsonl`, `dir/best.safetensors`,
/// `dir/last.safetensors` (the file names are the constants below, shared by the writer and
/// the readers of a run) and the training state ([`super::resume::STATE_FILE`]).
#[derive(Clone, Debug)]
pub struct RunFiles {
    /// The folder.
    pub dir: PathBuf,
    /// Written into every checkpoint's manifest (task, architecture, input size, ...).
    pub manifest: serde_json::Value,
}

impl RunFiles {
    /// The log, one [`EpochLog`] a line ([`read_log`] reads it).
    pub const LOG: &'static str = "log.jsonl";
    /// The checkpoint of the epoch with the lowest validation loss.
    pub const BEST: &'static str = "best.safetensors";
    /// The checkpoint of the last epoch.
    pub const LAST: &'static str = "last.safetensors";
    /// The resolved configuration, written beside the log by the script host's `pretrain`.
    pub const CONFIG: &'static str = "config.json";
}

/// The split of `n` items: the first `1 - val_fraction` train, the rest validate (at least one
/// of each when `n >= 2` and `val_fraction > 0`).
pub fn train_val_split(n: usize, val_fraction: f64) -> (Vec<usize>, Vec<usize>) {
    let mut n_val = (n as f64 * val_fraction).round() as usize;
    if val_fraction > 0.0 && n >= 2 {
        n_val = n_val.clamp(1, n - 1);
    }
    let n_train = n - n_val.min(n);
    ((0..n_train).collect(), (n_train..n).collect())
}

/// `ids` in batches of `size`, shuffled by the stream `order` when given.
pub(crate) fn batches(ids: &[usize], size: usize, order: Option<u64>) -> Vec<Vec<usize>> {
    let mut ids = ids.to_vec();
    if let Some(s) = order {
        ids.shuffle(&mut StdRng::seed_from_u64(s));
    }
    // Batch statistics need two items: a lone last item joins the batch before it.
    let mut out: Vec<Vec<usize>> = ids.chunks(size.max(1)).map(<[usize]>::to_vec).collect();
    if out.len() > 1 && out.last().is_some_and(|b| b.len() < 2) {
        let last = out.pop().expect("checked");
        out.last_mut().expect("checked").extend(last);
    }
    out
}

/// A pretext model with its parameters, samplers and device: what [`Pretrainer::run`] trains.
pub struct Pretrainer {
    /// The model (backbone under `encoder.`, heads under `head.`).
    pub model: PretextModel,
    /// Its parameters.
    pub store: ParamStore,
    /// Each task's sampler, in the order of the model's heads.
    pub samplers: Vec<Sampler>,
    /// How a joint pretraining draws its batches.
    pub schedule: Schedule,
    /// Where the model runs.
    pub device: Device,
    /// The model's dropout generators (their positions are part of a resumable state).
    pub dropouts: Generators,
}

impl Pretrainer {
    /// A fresh model of `task` for items of `channels` × `dims`, initialised from `seed`.
    pub fn new(
        task: &TaskConfig,
        backbone: &BackboneConfig,
        head: &MlpHeadConfig,
        input: (usize, [usize; 3]),
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        let tasks = [PlannedTask {
            config: task.clone(),
            weight: 1.0,
        }];
        Self::build(
            &tasks,
            (&[], Schedule::Together),
            backbone,
            head,
            input,
            seed,
            device,
        )
    }

    /// A fresh model of `plan` (one task or several) for items of `channels` × `dims`,
    /// initialised from the plan's seed.
    pub fn from_plan(
        plan: &PretrainPlan,
        input: (usize, [usize; 3]),
        device: &Device,
    ) -> Result<Self> {
        Self::build(
            &plan.tasks,
            (&plan.levels, plan.schedule),
            &plan.backbone,
            &plan.head,
            input,
            plan.train.seed,
            device,
        )
    }

    fn build(
        tasks: &[PlannedTask],
        (levels, schedule): (&[usize], Schedule),
        backbone: &BackboneConfig,
        head: &MlpHeadConfig,
        (channels, dims): (usize, [usize; 3]),
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        let samplers = tasks
            .iter()
            .map(|t| Sampler::new(&t.config, channels, dims))
            .collect::<Result<Vec<_>>>()?;
        // In a joint run the levels concern the tasks that can read them.
        let joint = tasks.len() > 1;
        let specs: Vec<HeadSpec> = samplers
            .iter()
            .zip(tasks)
            .map(|(sampler, t)| HeadSpec {
                sampler,
                weight: t.weight,
                levels: if joint && !reads_levels(t.config.task) {
                    &[]
                } else {
                    levels
                },
            })
            .collect();
        let store = ParamStore::new(derive(seed, Stream::Init, 0));
        let (model, dropouts) = crate::nn::dropout::collect(|| {
            PretextModel::with_heads(
                &specs,
                backbone,
                head,
                store.builder(candle_core::DType::F32, device),
            )
        });
        Ok(Pretrainer {
            model: model?,
            store,
            samplers,
            schedule,
            device: device.clone(),
            dropouts,
        })
    }

    /// Pretrains on `data`. `on_epoch` sees every finished epoch (with the total, for progress
    /// displays); `files` receives logs and checkpoints.
    pub fn run(
        &self,
        data: &dyn Dataset<Arc<Grid>>,
        cfg: &PretrainConfig,
        files: Option<&RunFiles>,
        on_epoch: &mut dyn FnMut(&EpochLog, usize),
    ) -> Result<PretrainReport> {
        pretrain(self, data, cfg, files, on_epoch)
    }
}

/// One task of a run as the loop sees it: its sampler, batch size and the seed of its streams.
struct TaskRun<'a> {
    sampler: &'a Sampler,
    batch: usize,
    seed: u64,
}

/// One task's batch within a step: the items and the seed it is sampled from.
struct Part {
    task: usize,
    ids: Vec<usize>,
    seed: u64,
}

/// The training steps of epoch `epoch`, each one batch of one or every task. Task `t` shuffles
/// the training items into its own batches; an epoch has as many rounds as the task with the
/// most batches, the others starting their batches over. "together": a round is one step of
/// every task's batch; "alternate": a round is one step per task, in order. One task: its
/// batches, one per step.
fn epoch_steps(tasks: &[TaskRun], ids: &[usize], epoch: u64, schedule: Schedule) -> Vec<Vec<Part>> {
    let plans: Vec<(Vec<Vec<usize>>, u64)> = tasks
        .iter()
        .map(|t| {
            (
                batches(
                    ids,
                    t.batch,
                    Some(derive(t.seed, Stream::EpochOrder, epoch)),
                ),
                derive(t.seed, Stream::EpochBatches, epoch),
            )
        })
        .collect();
    let rounds = plans.iter().map(|p| p.0.len()).max().unwrap_or(0);
    let part = |t: usize, r: usize| {
        let (plan, seed) = &plans[t];
        Part {
            task: t,
            ids: plan[r % plan.len()].clone(),
            seed: derive(*seed, Stream::Batch, r as u64),
        }
    };
    let n = tasks.len();
    match schedule {
        Schedule::Together => (0..rounds)
            .map(|r| (0..n).map(|t| part(t, r)).collect())
            .collect(),
        Schedule::Alternate => (0..rounds)
            .flat_map(|r| (0..n).map(move |t| (t, r)))
            .map(|(t, r)| vec![part(t, r)])
            .collect(),
    }
}

/// The validation steps: every task's batches of the validation items, one task after the
/// other, each sampled from the task's fixed validation stream.
fn validation_steps(tasks: &[TaskRun], ids: &[usize]) -> Vec<Vec<Part>> {
    tasks
        .iter()
        .enumerate()
        .flat_map(|(t, run)| {
            let seed = derive(run.seed, Stream::Validation, 0);
            batches(ids, run.batch, None)
                .into_iter()
                .enumerate()
                .map(move |(i, ids)| {
                    vec![Part {
                        task: t,
                        ids,
                        seed: derive(seed, Stream::Batch, i as u64),
                    }]
                })
        })
        .collect()
}

/// Refuses settings no run could use: a batch or an epoch of no steps, a validation share
/// outside [0, 1) (0: no validation), and the optimiser's invalid settings.
fn check_settings(cfg: &PretrainConfig) -> Result<()> {
    if cfg.batch_size == Some(0) {
        return Err(Error::arg(
            "batch",
            "the batch size must be at least 1, got 0",
        ));
    }
    if cfg.steps_per_epoch == Some(0) {
        return Err(Error::arg(
            "steps_per_epoch",
            "at least one step per epoch is needed, got 0",
        ));
    }
    if cfg.steps == Some(0) {
        return Err(Error::arg("steps", "at least one step is needed, got 0"));
    }
    if !(0.0..1.0).contains(&cfg.val_fraction) {
        return Err(Error::arg(
            "val_fraction",
            format!(
                "expected a share in [0, 1) (0: no validation), got {}",
                cfg.val_fraction
            ),
        ));
    }
    cfg.adam.validate()
}

fn pretrain(
    p: &Pretrainer,
    data: &dyn Dataset<Arc<Grid>>,
    cfg: &PretrainConfig,
    files: Option<&RunFiles>,
    on_epoch: &mut dyn FnMut(&EpochLog, usize),
) -> Result<PretrainReport> {
    let Pretrainer {
        model,
        store,
        samplers,
        schedule,
        device: dev,
        dropouts,
    } = p;
    check_settings(cfg)?;
    // One task draws from the run's seed; the tasks of a joint run from streams of their own.
    let joint = samplers.len() > 1;
    let tasks: Vec<TaskRun> = samplers
        .iter()
        .enumerate()
        .map(|(t, sampler)| TaskRun {
            sampler,
            batch: cfg
                .batch_size
                .unwrap_or_else(|| sampler.task().batch_size(sampler.planar())),
            seed: if joint {
                derive(cfg.seed, Stream::Task, t as u64)
            } else {
                cfg.seed
            },
        })
        .collect();
    let bs = tasks.iter().map(|t| t.batch).max().unwrap_or(1);
    let (train_ids, val_ids) = train_val_split(data.len(), cfg.val_fraction);
    if train_ids.len() < 2 && bs > 1 {
        return Err(Error::arg(
            "data",
            format!(
                "pretraining needs at least 2 training items, got {}",
                train_ids.len()
            ),
        ));
    }
    let mut opt = Adam::new(store.trainable(""), cfg.adam)?;
    let mut report = PretrainReport {
        epochs: Vec::new(),
        best_epoch: 0,
        best_checkpoint: None,
        last_checkpoint: None,
    };
    let mut best = f64::INFINITY;
    let (epochs, mut steps_left) =
        cfg.budget_of(epoch_steps(&tasks, &train_ids, 1, *schedule).len());
    let val_plan = validation_steps(&tasks, &val_ids);
    // What a saved state must match to be resumed: the run's manifest and its settings.
    let run = files.map(|f| serde_json::json!({ "run": f.manifest, "config": cfg }));
    let mut done = 0;
    if let (Some(f), Some(run)) = (files, &run)
        && let Some(saved) = Saved::read(&f.dir.join(STATE_FILE), run)?
    {
        saved.restore_model(store, dropouts)?;
        saved.restore_optimiser(&mut opt)?;
        done = saved.epoch()?;
        let b = saved.bookkeeping();
        best = b["best"].as_f64().unwrap_or(f64::INFINITY);
        report.best_epoch = b["best_epoch"].as_u64().unwrap_or(0) as usize;
        steps_left = b["steps_left"].as_u64().unwrap_or(0) as usize;
        let log = f.dir.join(RunFiles::LOG);
        report.epochs = read_log(&log)?;
        report.epochs.truncate(done);
        if report.epochs.len() < done {
            return Err(Error::file(
                &log,
                format!(
                    "the training state is at epoch {done} but the log has {} epochs; remove the folder to start over",
                    report.epochs.len()
                ),
            ));
        }
        if report.best_epoch > 0 {
            report.best_checkpoint = Some(f.dir.join(RunFiles::BEST));
        }
        report.last_checkpoint = Some(f.dir.join(RunFiles::LAST));
        eprintln!(
            "pretrain: resuming {} at epoch {} of {epochs}",
            f.dir.display(),
            done + 1
        );
    }
    // The log as it was at the saved epoch (a later epoch may have been cut short).
    let mut log = match files {
        Some(f) => Some(JsonlLog::open(&f.dir.join(RunFiles::LOG), done)?),
        None => None,
    };
    for epoch in done + 1..=epochs {
        let start = Instant::now();
        let mut plan = epoch_steps(&tasks, &train_ids, epoch as u64, *schedule);
        if let Some(n) = cfg.steps_per_epoch {
            plan.truncate(n.max(1));
        }
        plan.truncate(steps_left);
        steps_left -= plan.len();
        let trained = run_epoch(model, &tasks, data, &plan, dev, Some(&mut opt), epoch)?;
        let validated = if val_ids.is_empty() {
            None
        } else {
            Some(run_epoch(model, &tasks, data, &val_plan, dev, None, epoch)?)
        };
        let (loss, acc, _) = combine(model, &trained);
        let (val_loss, val_acc, val_swap) = match &validated {
            None => (f64::NAN, f64::NAN, None),
            Some(v) => combine(model, v),
        };
        // A non-finite loss stops the run; the checkpoints of earlier epochs stay as they are.
        let kept = || match &report.best_checkpoint {
            Some(p) => format!(" (the best checkpoint so far, {}, is kept)", p.display()),
            None => String::new(),
        };
        if !loss.is_finite() {
            return Err(Error::NonFinite {
                what: "training loss".into(),
                value: loss,
                at: format!("epoch {epoch}{}", kept()),
            });
        }
        if !val_ids.is_empty() && !val_loss.is_finite() {
            return Err(Error::NonFinite {
                what: "validation loss".into(),
                value: val_loss,
                at: format!("epoch {epoch}{}", kept()),
            });
        }
        if let Some((name, value)) = first_non_finite(store)? {
            return Err(Error::NonFinite {
                what: format!("parameter {name}"),
                value,
                at: format!("the end of epoch {epoch}{}", kept()),
            });
        }
        let entry = EpochLog {
            epoch,
            loss,
            accuracy: acc,
            val_loss,
            val_accuracy: val_acc,
            val_swap_loss: val_swap.map(|s| s.0),
            val_swap_accuracy: val_swap.map(|s| s.1),
            seconds: start.elapsed().as_secs_f64(),
            tasks: joint.then(|| per_task(model, &trained, validated.as_deref())),
        };
        if let Some(l) = log.as_mut() {
            l.write(&entry)?;
        }
        let score = if val_ids.is_empty() { loss } else { val_loss };
        if let Some(f) = files {
            let mut manifest = with_epoch(&f.manifest, &entry);
            if let Some(o) = manifest.as_object_mut() {
                o.insert("final".into(), (epoch == epochs).into());
            }
            if score < best {
                let p = f.dir.join(RunFiles::BEST);
                store.save(&p, &manifest)?;
                report.best_checkpoint = Some(p);
            }
            let p = f.dir.join(RunFiles::LAST);
            store.save(&p, &manifest)?;
            report.last_checkpoint = Some(p);
        }
        if score < best {
            best = score;
            report.best_epoch = epoch;
        }
        if let (Some(f), Some(run)) = (files, &run) {
            let state = f.dir.join(STATE_FILE);
            if epoch == epochs {
                // Finished: the checkpoints say so (`final`), nothing is left to resume.
                match std::fs::remove_file(&state) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(Error::file(&state, e));
                    }
                    _ => {}
                }
            } else {
                Snapshot {
                    run,
                    epoch,
                    store,
                    optimiser: &opt,
                    dropouts,
                    bookkeeping: serde_json::json!({
                        "best": best, "best_epoch": report.best_epoch, "steps_left": steps_left,
                    }),
                }
                .save(&state)?;
            }
        }
        on_epoch(&entry, epochs);
        report.epochs.push(entry);
    }
    Ok(report)
}

/// The first parameter holding a NaN or an infinity, with one such value.
fn first_non_finite(store: &ParamStore) -> Result<Option<(String, f64)>> {
    for (name, v) in store.trainable("") {
        let t = v.as_tensor();
        // 0·x is 0 for finite values and NaN for NaN and ±inf.
        let s = (t * 0.0)?
            .sum_all()?
            .to_dtype(candle_core::DType::F64)?
            .to_scalar::<f64>()?;
        if !s.is_finite() {
            let vals = t
                .flatten_all()?
                .to_dtype(candle_core::DType::F64)?
                .to_vec1::<f64>()?;
            let bad = vals
                .into_iter()
                .find(|x| !x.is_finite())
                .unwrap_or(f64::NAN);
            return Ok(Some((name, bad)));
        }
    }
    Ok(None)
}

/// Locks the pretraining folder `dir` for this process, waiting while another process writes
/// it (`on_wait` is told who, once). Callers then reuse the folder's finished run or start
/// afresh; the lock is released when the value is dropped.
pub fn lock_run_dir(
    dir: &Path,
    on_wait: impl FnMut(Option<&crate::lock::Holder>),
    stop: impl Fn() -> bool,
) -> Result<crate::lock::Lock> {
    crate::lock::Lock::wait(dir, "pretraining folder", on_wait, stop)
}

fn with_epoch(manifest: &serde_json::Value, e: &EpochLog) -> serde_json::Value {
    let mut m = manifest.clone();
    if let Some(o) = m.as_object_mut() {
        o.insert("epoch".into(), e.epoch.into());
        o.insert("val_loss".into(), serde_json::json!(e.val_loss));
        o.insert("loss".into(), serde_json::json!(e.loss));
    }
    m
}

/// One task's sums over an epoch: loss and accuracy weighted by items, the items, and in
/// exemplar evaluation the role-swap loss and accuracy.
#[derive(Clone, Copy, Debug, Default)]
struct TaskSums {
    loss: f64,
    accuracy: f64,
    items: usize,
    swap: Option<(f64, f64)>,
}

impl TaskSums {
    fn add(&mut self, loss: f64, out: &StepOutput, items: usize) {
        let w = items as f64;
        self.loss += loss * w;
        self.accuracy += out.accuracy * w;
        self.items += items;
        if let Some((l, a)) = out.swapped {
            let s = self.swap.get_or_insert((0.0, 0.0));
            s.0 += l * w;
            s.1 += a * w;
        }
    }

    /// Mean loss, mean accuracy and mean role-swap loss and accuracy.
    fn means(&self) -> (f64, f64, Option<(f64, f64)>) {
        let m = self.items.max(1) as f64;
        (
            self.loss / m,
            self.accuracy / m,
            self.swap.map(|(l, a)| (l / m, a / m)),
        )
    }
}

/// The epoch's loss (the weighted sum of the tasks' mean losses), accuracy (their mean) and
/// exemplar role swap; one task's are its own.
fn combine(model: &PretextModel, sums: &[TaskSums]) -> (f64, f64, Option<(f64, f64)>) {
    if let [one] = sums {
        return one.means();
    }
    let (mut loss, mut acc, mut swap) = (0.0, 0.0, None);
    for (t, s) in sums.iter().enumerate() {
        let (l, a, sw) = s.means();
        loss += model.weight(t) * l;
        acc += a / sums.len() as f64;
        swap = swap.or(sw);
    }
    (loss, acc, swap)
}

/// Each task's numbers of a joint epoch, by task name.
fn per_task(
    model: &PretextModel,
    trained: &[TaskSums],
    validated: Option<&[TaskSums]>,
) -> BTreeMap<String, TaskEpoch> {
    model
        .tasks()
        .iter()
        .enumerate()
        .map(|(t, task)| {
            let (loss, accuracy, _) = trained[t].means();
            let (val_loss, val_accuracy, _) =
                validated.map_or((f64::NAN, f64::NAN, None), |v| v[t].means());
            (
                task.name().to_string(),
                TaskEpoch {
                    loss,
                    accuracy,
                    val_loss,
                    val_accuracy,
                },
            )
        })
        .collect()
}

/// Runs the steps of one epoch (training when `opt` is given); batches are sampled in a
/// background thread one step ahead of the model. Returns each task's sums.
fn run_epoch(
    model: &PretextModel,
    tasks: &[TaskRun],
    data: &dyn Dataset<Arc<Grid>>,
    plan: &[Vec<Part>],
    dev: &Device,
    mut opt: Option<&mut Adam>,
    epoch: usize,
) -> Result<Vec<TaskSums>> {
    let train = opt.is_some();
    let mut sums = vec![TaskSums::default(); tasks.len()];
    std::thread::scope(|scope| -> Result<()> {
        let (tx, rx) = mpsc::sync_channel::<Result<Vec<Batch>>>(1);
        scope.spawn(move || {
            for step in plan {
                let batches = step
                    .iter()
                    .map(|p| tasks[p.task].sampler.batch(data, &p.ids, p.seed, train))
                    .collect();
                if tx.send(batches).is_err() {
                    break;
                }
            }
        });
        for (step, batches) in rx.iter().enumerate() {
            crate::stop::check(|| {
                format!(
                    "pretraining epoch {epoch}, step {} (the checkpoints and state of the last finished epoch are kept; a rerun resumes after it)",
                    step + 1
                )
            })?;
            let batches = batches?;
            let parts: Vec<(usize, &Batch)> =
                plan[step].iter().map(|p| p.task).zip(&batches).collect();
            let (total, outs) = if train {
                model.joint_step(&parts, dev, true)?
            } else {
                crate::ops::no_grad(|| model.joint_step(&parts, dev, false))?
            };
            let stepped = match opt.as_deref_mut() {
                Some(o) => Some(
                    o.backward_step(&total)
                        .map_err(|e| at_step(e, epoch, step))?,
                ),
                None => None,
            };
            for ((t, batch), out) in parts.iter().zip(&outs) {
                // One task of weight 1: the optimiser's loss is the task's.
                let loss = match stepped {
                    Some(l) if outs.len() == 1 && model.weight(*t) == 1.0 => l,
                    _ => out
                        .loss
                        .to_dtype(candle_core::DType::F64)?
                        .to_scalar::<f64>()?,
                };
                sums[*t].add(loss, out, batch.items);
            }
        }
        Ok(())
    })?;
    Ok(sums)
}

fn at_step(e: Error, epoch: usize, step: usize) -> Error {
    match e {
        Error::NonFinite { what, value, .. } => Error::NonFinite {
            what,
            value,
            at: format!("epoch {epoch}, step {}", step + 1),
        },
        other => other,
    }
}

/// Reads a pretraining log written by [`pretrain`].
pub fn read_log(path: &Path) -> Result<Vec<EpochLog>> {
    let text = std::fs::read_to_string(path).with_file(path)?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| Error::file(path, format!("line {}: {e}", i + 1)))
        })
        .collect()
}

//! Finetuning on a labelled share of the data (method.md §4.2), then evaluation on held-out
//! items: 3D segmentation with the UNet (O's Dice loss, hard Dice per class) and fundus grading
//! with a DenseNet (O's cumulative 5-bit encoding, quadratic weighted kappa). Both start from a
//! pretext checkpoint's encoder or from scratch, train some warm-up epochs with the encoder
//! frozen (its BatchNorm in inference mode), then everything under a fresh Adam.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{D, DType, Device, Tensor};

use super::metrics::{AbsentClass, Confusion, SoftDice, grade_scores};
use super::optim::{Adam, AdamConfig};
use super::pretrain::batches;
use crate::data::augment::zoom_flips_2d;
use crate::data::grid::{Grid, stack};
use crate::data::{Dataset, GradedImage, LabelledVolume};
use crate::nn::dropout::Generators;
use crate::nn::loss::{
    DiceVariant, binary_cross_entropy, cross_entropy, dice_loss, one_hot_of_indices,
};
use crate::nn::{
    DenseNet, DenseNetConfig, Encoded, GlobalPool, LoadOptions, LoadReport, MlpHead, MlpHeadConfig,
    Mode, ParamStore, UNet3d, UNet3dConfig,
};
use crate::pretext::model::DenseOptions;
use crate::streams::{Stream, derive, rng};
use crate::{Error, Result};

/// Where the encoder's weights come from.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EncoderInit {
    /// Random initialisation (the baseline).
    Random,
    /// The `encoder.` tensors of a pretext checkpoint.
    Checkpoint(PathBuf),
}

/// The warm-up and optimiser schedule shared by both finetuning protocols.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Schedule {
    /// Epochs in all, warm-up included.
    pub epochs: usize,
    /// Leading epochs with the encoder frozen (O: 25 for pancreas, 3 for fundus; 0 for the
    /// random baseline).
    pub warmup_epochs: usize,
    /// Items per batch.
    pub batch_size: usize,
    /// Optimiser settings.
    pub adam: AdamConfig,
    /// A frozen encoder's BatchNorm runs in inference mode (O, Keras `trainable=False`);
    /// `false` keeps updating its statistics (S).
    pub freeze_bn: bool,
    /// A fresh Adam over all weights after the warm-up (O); `false` keeps one optimiser (S).
    pub fresh_optimizer: bool,
    /// At most this many batches per epoch (all when `None`).
    pub steps_per_epoch: Option<usize>,
    /// Seed of initialisation, batch order, dropout and augmentation.
    pub seed: u64,
    /// Where to save the final model (safetensors), if anywhere.
    #[serde(default)]
    pub save: Option<PathBuf>,
    /// A budget in optimiser steps instead of epochs: the run is exactly this many steps
    /// whatever the number of items (passes over the shuffled items repeat as needed), and
    /// the warm-up is `warmup_steps`; `epochs` and `warmup_epochs` are then unused.
    #[serde(default)]
    pub steps: Option<usize>,
    /// Leading steps with the encoder frozen, when `steps` is set.
    #[serde(default)]
    pub warmup_steps: usize,
    /// How the learning rate changes over the run.
    #[serde(default)]
    pub lr_schedule: LrSchedule,
    /// Items scored after every epoch (none: no validation).
    #[serde(default)]
    pub validation: Vec<usize>,
    /// Where the run's state and log go.
    #[serde(default)]
    pub files: FitFiles,
}

/// The files a finetuning run keeps while it trains.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FitFiles {
    /// Where to save the training state at the end of an epoch (a rerun resumes from it), if
    /// anywhere; removed when the run finishes.
    pub state: Option<PathBuf>,
    /// Seconds between two saves of the state (0: every epoch).
    pub state_every: f64,
    /// Where to write one JSON line per epoch, if anywhere.
    pub log: Option<PathBuf>,
}

/// How the learning rate changes over a run of `T` optimiser steps (step `t` from 0).
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
pub enum LrSchedule {
    /// The same rate throughout (O).
    #[default]
    Constant,
    /// Cosine decay to zero: `lr · (1 + cos(π t / T)) / 2`.
    Cosine,
    /// Linear decay to zero: `lr · (1 - t / T)`.
    Linear,
}

impl LrSchedule {
    /// The rate at step `t` of `total`, for base rate `lr`.
    pub fn at(self, lr: f64, t: usize, total: usize) -> f64 {
        let x = t as f64 / total.max(1) as f64;
        match self {
            LrSchedule::Constant => lr,
            LrSchedule::Cosine => lr * 0.5 * (1.0 + (std::f64::consts::PI * x).cos()),
            LrSchedule::Linear => lr * (1.0 - x),
        }
    }
}

impl Schedule {
    /// Optimiser steps in all and of them with the encoder frozen, for `items` training items.
    pub fn budget(&self, items: usize) -> (usize, usize) {
        let per_epoch = self.steps_per_pass(items);
        match self.steps {
            Some(s) => (s, self.warmup_steps.min(s)),
            None => {
                let warmup = self.warmup_epochs.min(self.epochs);
                (self.epochs * per_epoch, warmup * per_epoch)
            }
        }
    }

    /// Passes over the items (epochs) the run makes for `items` training items.
    pub fn passes(&self, items: usize) -> usize {
        self.budget(items).0.div_ceil(self.steps_per_pass(items))
    }

    fn steps_per_pass(&self, items: usize) -> usize {
        batches(
            &(0..items).collect::<Vec<_>>(),
            self.batch_size.max(1),
            None,
        )
        .len()
        .min(self.steps_per_epoch.unwrap_or(usize::MAX))
        .max(1)
    }

    /// Checks the settings that no run could use: no epochs or batch, a warm-up that never
    /// ends (the encoder would stay frozen throughout), a learning rate that is not positive.
    pub fn validate(&self) -> Result<()> {
        if let Some(steps) = self.steps {
            if steps == 0 {
                return Err(Error::arg("steps", "expected at least 1 step"));
            }
            if self.warmup_steps >= steps && self.warmup_steps > 0 {
                return Err(Error::arg(
                    "warmup_steps",
                    format!(
                        "a warm-up of {} steps in {steps} keeps the encoder frozen throughout; \
                         expected fewer warm-up steps than steps",
                        self.warmup_steps
                    ),
                ));
            }
        } else if self.epochs == 0 {
            return Err(Error::arg("epochs", "expected at least 1 epoch"));
        }
        if self.batch_size == 0 {
            return Err(Error::arg("batch", "expected a batch of at least 1 item"));
        }
        if self.steps_per_epoch == Some(0) {
            return Err(Error::arg("steps_per_epoch", "expected at least 1 step"));
        }
        if self.steps.is_none() && self.warmup_epochs >= self.epochs && self.warmup_epochs > 0 {
            return Err(Error::arg(
                "warmup",
                format!(
                    "a warm-up of {} epochs in {} keeps the encoder frozen throughout; \
                     expected fewer warm-up epochs than epochs",
                    self.warmup_epochs, self.epochs
                ),
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

/// The options both finetuning functions share, as scripts give them; () takes the paper's
/// value of the protocol (segmentation or grading).
#[derive(
    Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(default, deny_unknown_fields)]
pub struct FinetuneOptions {
    /// A pretext checkpoint whose `encoder.` tensors initialise the encoder; "" = random
    /// initialisation (the baseline).
    pub init: String,
    /// The training items (indices into the dataset); required.
    pub train: Vec<usize>,
    /// The held-out test items; required, disjoint from `train`.
    pub test: Vec<usize>,
    /// Seed of initialisation, batch order, dropout and augmentation; () = the master seed.
    pub seed: Option<u64>,
    /// Epochs in all, warm-up included; () = O's (pancreas 400, fundus 20).
    pub epochs: Option<usize>,
    /// Leading epochs with the encoder frozen; () = O's (pancreas 25, fundus 3).
    pub warmup: Option<usize>,
    /// Items per batch; () = O's (pancreas 2, fundus 32).
    pub batch: Option<usize>,
    /// Adam's learning rate; () = O's (pancreas 1e-3, fundus 5e-5).
    pub lr: Option<f64>,
    /// Clip each gradient tensor to norm 1 and value 1; () = O's (pancreas yes, fundus no).
    pub clip: Option<bool>,
    /// A frozen encoder's BatchNorm runs in inference mode (O); false keeps updating it (S).
    pub freeze_bn: Option<bool>,
    /// A fresh Adam over all weights after the warm-up (O); false keeps one optimiser (S).
    pub fresh_optimizer: Option<bool>,
    /// At most this many batches per epoch; () = all.
    pub steps_per_epoch: Option<usize>,
    /// The name on the progress line.
    pub label: String,
    /// Where to save the finetuned model (safetensors); () = not saved.
    pub save: Option<PathBuf>,
    /// A budget of this many optimiser steps whatever the number of training items (then
    /// `epochs` and `warmup` are unused); () = count epochs, as O.
    pub steps: Option<usize>,
    /// Leading steps with the encoder frozen when `steps` is set.
    pub warmup_steps: usize,
    /// The learning-rate schedule over the run ("constant" as O, or decay to 0).
    pub lr_schedule: LrSchedule,
    /// Where to save the training state at the end of an epoch (at most every `state_every`
    /// seconds), so that a rerun with the same options resumes there and ends bit-identical;
    /// removed when the run finishes. () = not saved.
    pub state: Option<PathBuf>,
    /// Seconds between two saves of the state (0: every epoch).
    #[schemars(default = "default_state_every")]
    pub state_every: Option<f64>,
    /// Where to write one JSON line per epoch (epoch, loss, learning rate, steps, seconds,
    /// and the validation metrics); () = no log.
    pub log: Option<PathBuf>,
    /// Validation items (indices, disjoint from `train` and `test`) scored after every epoch:
    /// `val_dice_mean` / `val_qwk` and `val_accuracy` in the log and the result's
    /// `validation`. [] = none.
    pub val: Vec<usize>,
}

fn default_state_every() -> f64 {
    DEFAULT_STATE_EVERY
}

/// Seconds between two saves of a finetuning run's state, unless `state_every` says otherwise.
const DEFAULT_STATE_EVERY: f64 = 60.0;

impl FinetuneOptions {
    /// The encoder's initialisation.
    pub fn init(&self) -> EncoderInit {
        if self.init.is_empty() {
            EncoderInit::Random
        } else {
            EncoderInit::Checkpoint(PathBuf::from(&self.init))
        }
    }

    /// The schedule: these options over `paper`, `master_seed` for an unset seed; checks it
    /// and the training and test items (both given, disjoint).
    pub fn schedule(&self, paper: &Schedule, master_seed: u64) -> Result<Schedule> {
        if self.train.is_empty() {
            return Err(Error::arg(
                "train",
                "finetuning needs at least one training item",
            ));
        }
        if self.test.is_empty() {
            return Err(Error::arg(
                "test",
                "evaluation needs at least one test item",
            ));
        }
        let test: std::collections::BTreeSet<usize> = self.test.iter().copied().collect();
        let shared: Vec<usize> = self
            .train
            .iter()
            .copied()
            .filter(|i| test.contains(i))
            .collect();
        if !shared.is_empty() {
            return Err(Error::arg(
                "test",
                format!("items {shared:?} are both training and test items"),
            ));
        }
        let train: std::collections::BTreeSet<usize> = self.train.iter().copied().collect();
        if let Some(i) = self
            .val
            .iter()
            .find(|i| train.contains(i) || test.contains(i))
        {
            return Err(Error::arg(
                "val",
                format!("item {i} is a validation item and also a training or test item"),
            ));
        }
        let mut adam = AdamConfig {
            lr: self.lr.unwrap_or(paper.adam.lr),
            ..paper.adam
        };
        match self.clip {
            Some(true) => adam = adam.clipped(),
            Some(false) => {
                adam.clip_norm = None;
                adam.clip_value = None;
            }
            None => {}
        }
        let s = Schedule {
            epochs: self.epochs.unwrap_or(paper.epochs),
            warmup_epochs: self.warmup.unwrap_or(paper.warmup_epochs),
            batch_size: self.batch.unwrap_or(paper.batch_size),
            adam,
            freeze_bn: self.freeze_bn.unwrap_or(paper.freeze_bn),
            fresh_optimizer: self.fresh_optimizer.unwrap_or(paper.fresh_optimizer),
            steps_per_epoch: self.steps_per_epoch.or(paper.steps_per_epoch),
            seed: self.seed.unwrap_or(master_seed),
            save: self.save.clone(),
            steps: self.steps,
            warmup_steps: self.warmup_steps,
            lr_schedule: self.lr_schedule,
            validation: self.val.clone(),
            files: FitFiles {
                state: self.state.clone(),
                state_every: self.state_every.unwrap_or(DEFAULT_STATE_EVERY),
                log: self.log.clone(),
            },
        };
        s.validate()?;
        Ok(s)
    }
}

/// The options of `finetune_segmentation` as scripts give them.
#[derive(
    Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(default)]
pub struct SegmentationOptions {
    /// Items, initialisation and schedule.
    #[serde(flatten)]
    pub common: FinetuneOptions,
    /// The network (the paper's UNet3D by default).
    pub unet: UNet3dConfig,
    /// The Dice loss: O's batch-global one, or S's per-sample one.
    pub dice: DiceVariant,
    /// The reported Dice of a class absent from both truth and prediction: 0 (O, via
    /// scikit-learn's Jaccard) or 1.
    pub absent_class: AbsentClass,
}

impl SegmentationOptions {
    /// The encoder's initialisation and the configuration, O's where unset.
    pub fn resolve(&self, master_seed: u64) -> Result<(EncoderInit, SegmentationConfig)> {
        let paper = SegmentationConfig::paper();
        Ok((
            self.common.init(),
            SegmentationConfig {
                unet: self.unet,
                schedule: self.common.schedule(&paper.schedule, master_seed)?,
                dice: self.dice,
                absent: self.absent_class,
            },
        ))
    }
}

/// The options of `finetune_grading` as scripts give them.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(default)]
pub struct GradingOptions {
    /// Items, initialisation and schedule.
    #[serde(flatten)]
    pub common: FinetuneOptions,
    /// The backbone (DenseNet-121 with global average pooling by default).
    pub densenet: DenseOptions,
    /// Widths of the head's hidden layers (O: 1024).
    pub head: Vec<usize>,
    /// Dropout after each hidden layer of the head (O: 0.5).
    pub head_dropout: f64,
    /// BatchNorm momentum of the head (Keras' 0.99 is 0.01 here).
    pub head_momentum: f64,
    /// The target encoding: O's cumulative 5-bit sigmoid, or a 5-way softmax (S).
    pub encoding: GradeEncoding,
    /// O's training augmentation (zoom 0.85–1.15, horizontal and vertical flips).
    pub augment: bool,
}

impl Default for GradingOptions {
    fn default() -> Self {
        let paper = ClassificationConfig::paper();
        GradingOptions {
            common: FinetuneOptions::default(),
            densenet: DenseOptions {
                net: paper.densenet,
                pool: None,
            },
            head: paper.head.hidden,
            head_dropout: paper.head.dropout,
            head_momentum: paper.head.momentum,
            encoding: paper.encoding,
            augment: paper.augment,
        }
    }
}

impl GradingOptions {
    /// The encoder's initialisation and the configuration, O's where unset.
    pub fn resolve(&self, master_seed: u64) -> Result<(EncoderInit, ClassificationConfig)> {
        let paper = ClassificationConfig::paper();
        Ok((
            self.common.init(),
            ClassificationConfig {
                densenet: self.densenet.net.clone(),
                pool: self.densenet.pool.unwrap_or(paper.pool),
                head: MlpHeadConfig {
                    hidden: self.head.clone(),
                    dropout: self.head_dropout,
                    seed: 0,
                    momentum: self.head_momentum,
                },
                classes: paper.classes,
                encoding: self.encoding,
                augment: self.augment,
                schedule: self.common.schedule(&paper.schedule, master_seed)?,
            },
        ))
    }
}

/// Settings of [`finetune_segmentation`].
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SegmentationConfig {
    /// The network.
    pub unet: UNet3dConfig,
    /// Epochs, warm-up, batch and optimiser (O: 400 epochs, 25 warm-up, batch 2, Adam 1e-3
    /// clipped per tensor to norm 1 and value 1).
    pub schedule: Schedule,
    /// The Dice loss (O's batch-global one, or S's per-sample one).
    pub dice: DiceVariant,
    /// The reported Dice of a class absent from both truth and prediction (O: 0).
    pub absent: AbsentClass,
}

impl SegmentationConfig {
    /// O's settings (`configs/finetune/*_3d.json`) for a pretrained encoder.
    pub fn paper() -> Self {
        SegmentationConfig {
            unet: UNet3dConfig::default(),
            schedule: Schedule {
                epochs: 400,
                warmup_epochs: 25,
                batch_size: 2,
                adam: AdamConfig::with_lr(1e-3).clipped(),
                freeze_bn: true,
                fresh_optimizer: true,
                steps_per_epoch: None,
                seed: 0,
                save: None,
                steps: None,
                warmup_steps: 0,
                lr_schedule: LrSchedule::Constant,
                validation: Vec::new(),
                files: FitFiles::default(),
            },
            dice: DiceVariant::Batch,
            absent: AbsentClass::Zero,
        }
    }
}

/// Per-epoch training losses and the wall time.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FitLog {
    /// Mean training loss of each epoch.
    pub losses: Vec<f64>,
    /// The validation metrics after each epoch (empty without validation items).
    #[serde(default)]
    pub validation: Vec<BTreeMap<String, f64>>,
    /// Seconds spent training.
    pub train_seconds: f64,
    /// Seconds spent evaluating.
    pub eval_seconds: f64,
}

/// What [`finetune_segmentation`] measured on the test items with the final-epoch model.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SegmentationResult {
    /// Hard Dice per class (background, pancreas, tumour), over all test voxels pooled.
    pub dice: Vec<f64>,
    /// Their mean (what the paper's Fig. 3 plots).
    pub dice_mean: f64,
    /// Soft Dice per class.
    pub soft_dice: Vec<f64>,
    /// What was loaded from the checkpoint (`None` for the baseline).
    pub load: Option<LoadReport>,
    /// Training log.
    pub log: FitLog,
}

/// The encoder settings a checkpoint must share with the model it initialises.
const ENCODER_KEYS: [(&str, &[&str]); 2] = [
    ("unet", &["in_channels", "filters", "depth"]),
    (
        "densenet",
        &[
            "in_channels",
            "growth",
            "blocks",
            "init_features",
            "bn_size",
        ],
    ),
];

/// Refuses a checkpoint whose manifest records an encoder other than `net` (`kind` is "unet"
/// or "densenet"), naming the option that differs. Checkpoints without a recorded backbone
/// are checked by their tensors' shapes alone.
fn check_backbone(path: &std::path::Path, kind: &str, net: &serde_json::Value) -> Result<()> {
    let Ok(manifest) = ParamStore::manifest(path) else {
        return Ok(());
    };
    let recorded = match (&manifest["backbone"], kind) {
        (serde_json::Value::Object(b), "unet") => b.get("unet").cloned(),
        (serde_json::Value::Object(b), _) => b.get("dense").and_then(|d| d.get(0)).cloned(),
        _ => None,
    };
    let Some(recorded) = recorded else {
        return Ok(());
    };
    let keys = ENCODER_KEYS
        .iter()
        .find(|(k, _)| *k == kind)
        .map_or(&[][..], |(_, keys)| *keys);
    for key in keys {
        let (was, is) = (&recorded[key], &net[key]);
        if !was.is_null() && was != is {
            return Err(Error::file(
                path,
                format!(
                    "the checkpoint was pretrained with {kind}.{key} = {was}, this model has \
                     {kind}.{key} = {is}; give the pretraining's value"
                ),
            ));
        }
    }
    Ok(())
}

fn load_encoder(
    store: &ParamStore,
    init: &EncoderInit,
    (kind, net): (&str, serde_json::Value),
) -> Result<Option<LoadReport>> {
    match init {
        EncoderInit::Random => Ok(None),
        EncoderInit::Checkpoint(path) => {
            check_backbone(path, kind, &net)?;
            let r = store.load(
                path,
                &LoadOptions {
                    prefix: Some("encoder.".into()),
                    ..Default::default()
                },
            )?;
            if r.loaded.is_empty() || !r.mismatched.is_empty() || !r.missing.is_empty() {
                return Err(Error::file(
                    path,
                    format!(
                        "the checkpoint's encoder does not fit this model: {} loaded, {} missing, {} with other shapes{}",
                        r.loaded.len(),
                        r.missing.len(),
                        r.mismatched.len(),
                        r.mismatched
                            .first()
                            .map(|(n, a, b)| format!(
                                " (first: {n}, {a:?} here, {b:?} in the file)"
                            ))
                            .unwrap_or_default()
                    ),
                ));
            }
            Ok(Some(r))
        }
    }
}

/// What decides a finetuning run besides its files: the configuration, the encoder's
/// initialisation and the training items.
fn run_identity(
    cfg: &impl serde::Serialize,
    init: &EncoderInit,
    train_ids: &[usize],
) -> Result<serde_json::Value> {
    let mut config = serde_json::to_value(cfg).map_err(Error::msg)?;
    if let Some(s) = config.get_mut("schedule").and_then(|s| s.as_object_mut()) {
        s.remove("files");
    }
    let init = match init {
        EncoderInit::Random => serde_json::Value::Null,
        EncoderInit::Checkpoint(p) => p.display().to_string().into(),
    };
    Ok(serde_json::json!({ "config": config, "init": init, "train": train_ids }))
}

/// An empty test set would report a perfect score (every Dice of nothing is 1): refuse it.
fn require_test_items(test_ids: &[usize]) -> Result<()> {
    if test_ids.is_empty() {
        return Err(Error::arg(
            "test",
            "evaluation needs at least one test item",
        ));
    }
    Ok(())
}

/// The model a run trains: its parameters, dropout generators and description.
struct Trained<'a> {
    store: &'a ParamStore,
    dropouts: &'a Generators,
    /// What the model is (saved with it, so that it can be rebuilt for inference).
    model: serde_json::Value,
    /// Everything else that decides the run (configuration, initialisation): a saved state
    /// is resumed only by the same run.
    run: serde_json::Value,
}

/// One line of a finetuning run's log.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct FitEpoch {
    epoch: usize,
    loss: f64,
    lr: f64,
    steps: usize,
    frozen: bool,
    seconds: f64,
    /// The validation metrics (`val_dice_mean`, `val_qwk`, ...), when validation items are set.
    #[serde(flatten)]
    validation: BTreeMap<String, f64>,
}

/// Scores the validation items `ids` by metric name.
type Validate<'a> = &'a dyn Fn(&[usize]) -> Result<BTreeMap<String, f64>>;

/// Runs the schedule: `loss(batch ids, epoch seed, frozen)` gives a batch's loss.
fn fit(
    trained: &Trained,
    sched: &Schedule,
    train_ids: &[usize],
    mut loss: impl FnMut(&[usize], u64, bool) -> Result<Tensor>,
    validate: Validate<'_>,
    on_epoch: &mut dyn FnMut(usize, f64),
) -> Result<FitLog> {
    let store = trained.store;
    if train_ids.is_empty() {
        return Err(Error::arg(
            "train",
            "finetuning needs at least one labelled item",
        ));
    }
    if sched.batch_size == 0 || sched.steps_per_epoch == Some(0) {
        return Err(Error::arg(
            "batch",
            "finetuning needs at least one item per batch and one step per epoch",
        ));
    }
    let start = Instant::now();
    let (total, warmup) = sched.budget(train_ids.len());
    let mut log = FitLog::default();
    let mut t = 0;
    let mut epoch = 0;
    let mut seconds_before = 0.0;
    let saved = match &sched.files.state {
        Some(path) => super::resume::Saved::read(path, &trained.run)?,
        None => None,
    };
    if let Some(saved) = &saved {
        saved.restore_model(store, trained.dropouts)?;
        let b = saved.bookkeeping();
        epoch = saved.epoch()?;
        t = b["steps"].as_u64().unwrap_or(0) as usize;
        log.losses = serde_json::from_value(b["losses"].clone()).map_err(Error::msg)?;
        log.validation = serde_json::from_value(b["validation"].clone()).map_err(Error::msg)?;
        seconds_before = b["seconds"].as_f64().unwrap_or(0.0);
        eprintln!(
            "finetune: resuming from {} at step {} of {total}",
            sched
                .files
                .state
                .as_deref()
                .unwrap_or(Path::new(""))
                .display(),
            t + 1
        );
    }
    // O: the warm-up optimiser sees only what is not the encoder, and a fresh one takes over
    // everything afterwards. S: one optimiser over everything throughout (the frozen encoder
    // simply has no gradients while frozen).
    let all = || Adam::new(store.trainable(""), sched.adam);
    let mut opt = if warmup > 0 && sched.fresh_optimizer && t <= warmup {
        let rest = store
            .trainable("")
            .into_iter()
            .filter(|(n, _)| !n.starts_with("encoder."))
            .collect();
        Adam::new(rest, sched.adam)?
    } else {
        all()?
    };
    if let Some(saved) = &saved {
        saved.restore_optimiser(&mut opt)?;
    }
    let mut epoch_log = match &sched.files.log {
        Some(path) => Some(super::resume::JsonlLog::open(path, epoch)?),
        None => None,
    };
    let mut last_save = Instant::now();
    while t < total {
        let e = epoch as u64;
        let order = derive(sched.seed, Stream::EpochOrder, e);
        let mut plan = batches(train_ids, sched.batch_size, Some(order));
        if let Some(n) = sched.steps_per_epoch {
            plan.truncate(n.max(1));
        }
        plan.truncate(total - t);
        let epoch_start = Instant::now();
        let mut sum = 0.0;
        for (step, ids) in plan.iter().enumerate() {
            crate::stop::check(|| {
                format!(
                    "finetuning epoch {}, step {}{}",
                    epoch + 1,
                    step + 1,
                    if sched.files.state.is_some() {
                        " (a rerun resumes from the last saved state)"
                    } else {
                        ""
                    }
                )
            })?;
            if t == warmup && warmup > 0 && sched.fresh_optimizer {
                opt = all()?;
            }
            opt.set_lr(sched.lr_schedule.at(sched.adam.lr, t, total));
            let batch_seed = derive(
                derive(sched.seed, Stream::EpochBatches, e),
                Stream::Batch,
                step as u64,
            );
            let l = loss(ids, batch_seed, t < warmup)?;
            sum += opt.backward_step(&l).map_err(|e| match e {
                Error::NonFinite { what, value, .. } => Error::NonFinite {
                    what,
                    value,
                    at: format!("finetuning epoch {}, step {}", epoch + 1, step + 1),
                },
                e => e,
            })?;
            t += 1;
        }
        let mean = sum / plan.len().max(1) as f64;
        log.losses.push(mean);
        epoch += 1;
        let validation = if sched.validation.is_empty() {
            BTreeMap::new()
        } else {
            let v = validate(&sched.validation)?;
            log.validation.push(v.clone());
            v
        };
        if let Some(l) = epoch_log.as_mut() {
            l.write(&FitEpoch {
                epoch,
                loss: mean,
                lr: opt.config().lr,
                steps: t,
                frozen: t <= warmup && warmup > 0,
                seconds: epoch_start.elapsed().as_secs_f64(),
                validation,
            })?;
        }
        if let Some(path) = &sched.files.state
            && t < total
            && last_save.elapsed().as_secs_f64() >= sched.files.state_every
        {
            super::resume::Snapshot {
                run: &trained.run,
                epoch,
                store,
                optimiser: &opt,
                dropouts: trained.dropouts,
                bookkeeping: serde_json::json!({
                    "steps": t, "losses": log.losses, "validation": log.validation,
                    "seconds": seconds_before + start.elapsed().as_secs_f64(),
                }),
            }
            .save(path)?;
            last_save = Instant::now();
        }
        on_epoch(epoch, mean);
    }
    log.train_seconds = seconds_before + start.elapsed().as_secs_f64();
    if let Some(path) = &sched.save {
        let mut manifest =
            serde_json::json!({"finetuned": true, "steps": total, "seed": sched.seed});
        if let (Some(m), serde_json::Value::Object(extra)) =
            (manifest.as_object_mut(), trained.model.clone())
        {
            m.extend(extra);
        }
        store.save(path, &manifest)?;
    }
    if let Some(path) = &sched.files.state {
        // Finished: nothing is left to resume.
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(Error::file(path, e));
            }
            _ => {}
        }
    }
    Ok(log)
}

fn seg_batch(
    src: &dyn Dataset<LabelledVolume>,
    ids: &[usize],
    classes: usize,
    dev: &Device,
) -> Result<(Tensor, Tensor)> {
    let items: Vec<LabelledVolume> = ids.iter().map(|&i| src.get(i)).collect::<Result<_>>()?;
    let grids: Vec<Grid> = items.iter().map(|(g, _)| g.clone()).collect();
    let x = stack(&grids, false, dev)?;
    let [d, h, w] = grids[0].dims;
    let mut labels = Vec::with_capacity(ids.len() * d * h * w);
    for (i, (g, l)) in items.iter().enumerate() {
        if l.len() != g.plane() {
            return Err(Error::shape(
                "labels",
                format!(
                    "item {} has {} labels for {} voxels",
                    ids[i],
                    l.len(),
                    g.plane()
                ),
            ));
        }
        // Checked here, on the host, so that the one-hot on the device needs no read-back.
        if let Some(&bad) = l.iter().find(|&&v| usize::from(v) >= classes) {
            return Err(Error::arg(
                "labels",
                format!("item {} has label {bad}, outside 0..{classes}", ids[i]),
            ));
        }
        labels.extend_from_slice(l);
    }
    let labels = Tensor::from_vec(labels, (ids.len(), d, h, w), dev)?;
    Ok((x, one_hot_of_indices(&labels, classes, DType::F32)?))
}

/// Finetunes a UNet3D on `train_ids` of `src` and evaluates the final-epoch model on
/// `test_ids`. `on_epoch(epoch, loss)` sees every epoch.
pub fn finetune_segmentation(
    init: &EncoderInit,
    cfg: &SegmentationConfig,
    src: &dyn Dataset<LabelledVolume>,
    (train_ids, test_ids): (&[usize], &[usize]),
    dev: &Device,
    on_epoch: &mut dyn FnMut(usize, f64),
) -> Result<SegmentationResult> {
    require_test_items(test_ids)?;
    let unet = UNet3dConfig {
        seed: cfg.schedule.seed,
        ..cfg.unet
    };
    let store = ParamStore::new(derive(cfg.schedule.seed, Stream::Init, 0));
    let (net, dropouts) =
        crate::nn::dropout::collect(|| UNet3d::new(&unet, store.builder(DType::F32, dev)));
    let net = net?;
    let load = load_encoder(
        &store,
        init,
        ("unet", serde_json::to_value(unet).map_err(Error::msg)?),
    )?;
    let freeze_bn = cfg.schedule.freeze_bn;
    let trained = Trained {
        store: &store,
        dropouts: &dropouts,
        // What a finetuned segmentation model is, so that it can be rebuilt for inference.
        model: serde_json::json!({"model": "unet3d", "unet": unet}),
        run: run_identity(cfg, init, train_ids)?,
    };
    // Hard Dice per class over all voxels of `ids` pooled, and soft Dice, in inference mode.
    let evaluate = |ids: &[usize]| -> Result<(Vec<f64>, Vec<f64>)> {
        let mut confusion = Confusion::new(unet.classes);
        let mut soft = SoftDice::new(unet.classes);
        for &i in ids {
            let (x, y) = seg_batch(src, &[i], unet.classes, dev)?;
            let p = crate::ops::no_grad(|| -> Result<Tensor> {
                Ok(candle_nn::ops::softmax(&net.forward_t(&x, false)?, 1)?)
            })?;
            let pred: Vec<i64> = p
                .argmax(1)?
                .flatten_all()?
                .to_dtype(DType::I64)?
                .to_vec1()?;
            let truth: Vec<i64> = y
                .argmax(1)?
                .flatten_all()?
                .to_dtype(DType::I64)?
                .to_vec1()?;
            confusion.add(&truth, &pred)?;
            for c in 0..unet.classes {
                let (pc, yc) = (p.narrow(1, c, 1)?, y.narrow(1, c, 1)?);
                let s = |t: &Tensor| -> Result<f64> {
                    Ok(t.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?)
                };
                soft.add(c, s(&(&pc * &yc)?)?, s(&yc)?, s(&pc)?);
            }
        }
        Ok((confusion.dice_with(cfg.absent), soft.dice()))
    };
    let mut log = fit(
        &trained,
        &cfg.schedule,
        train_ids,
        |ids, _seed, frozen| {
            let (x, y) = seg_batch(src, ids, unet.classes, dev)?;
            let logits = if frozen {
                // O (Keras `trainable=False`): running BatchNorm statistics, dropout still
                // active; S keeps updating the statistics.
                let mode = if freeze_bn { Mode::FROZEN } else { Mode::TRAIN };
                let enc = net.encoder.forward_mode(&x, mode)?;
                let enc = Encoded {
                    features: enc.features.detach(),
                    skips: enc.skips.iter().map(Tensor::detach).collect(),
                };
                net.decoder.forward_t(&enc, true)?
            } else {
                net.forward_t(&x, true)?
            };
            dice_loss(&candle_nn::ops::softmax(&logits, 1)?, &y, cfg.dice)
        },
        &|ids| {
            let (dice, _) = evaluate(ids)?;
            Ok(BTreeMap::from([(
                "val_dice_mean".to_string(),
                super::metrics::mean(&dice),
            )]))
        },
        on_epoch,
    )?;
    let start = Instant::now();
    let (dice, soft_dice) = evaluate(test_ids)?;
    log.eval_seconds = start.elapsed().as_secs_f64();
    Ok(SegmentationResult {
        dice_mean: super::metrics::mean(&dice),
        dice,
        soft_dice,
        load,
        log,
    })
}

/// How grades become targets.
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
pub enum GradeEncoding {
    /// O: grade g sets the first g+1 of 5 bits; binary cross-entropy on 5 sigmoids; the grade
    /// is the number of outputs above 0.5, minus one.
    #[default]
    Cumulative,
    /// Plain 5-way softmax cross-entropy, argmax decoding (S).
    Softmax,
}

/// O's cumulative targets of `grades`, `[grades.len() × k]` row-major: grade g sets the first
/// g+1 of the `k` bits.
pub fn cumulative_bits(grades: &[u8], k: usize) -> Vec<f32> {
    grades
        .iter()
        .flat_map(|&g| (0..k).map(move |b| if b <= g as usize { 1.0 } else { 0.0 }))
        .collect()
}

/// O's decoding of cumulative logits `[N, k]`: the number of sigmoids above 0.5, minus one
/// (-1 when none is; the bits need not be monotone).
pub fn decode_cumulative(logits: &Tensor) -> Result<Vec<i64>> {
    let above = candle_nn::ops::sigmoid(logits)?
        .gt(0.5)?
        .to_dtype(DType::F32)?
        .sum(D::Minus1)?;
    Ok((above - 1.0)?.to_dtype(DType::I64)?.to_vec1()?)
}

/// Settings of [`finetune_classification`].
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ClassificationConfig {
    /// The backbone.
    pub densenet: DenseNetConfig,
    /// The pooling after it (O's finetuning: average).
    pub pool: GlobalPool,
    /// The head (O: Dense 1024 → BN → dropout 0.5 → Dense 5).
    pub head: MlpHeadConfig,
    /// Grades (5).
    pub classes: usize,
    /// The target encoding.
    pub encoding: GradeEncoding,
    /// O's training augmentation: zoom 0.85–1.15 and horizontal/vertical flips.
    pub augment: bool,
    /// Epochs, warm-up, batch and optimiser (O: 20 epochs, 3 warm-up, batch 32, Adam 5e-5).
    pub schedule: Schedule,
}

impl ClassificationConfig {
    /// O's fundus settings for a pretrained DenseNet-121.
    pub fn paper() -> Self {
        ClassificationConfig {
            densenet: DenseNetConfig::densenet121(),
            pool: GlobalPool::Avg,
            head: MlpHeadConfig::classifier(),
            classes: 5,
            encoding: GradeEncoding::Cumulative,
            augment: true,
            schedule: Schedule {
                epochs: 20,
                warmup_epochs: 3,
                batch_size: 32,
                adam: AdamConfig::with_lr(5e-5),
                freeze_bn: true,
                fresh_optimizer: true,
                steps_per_epoch: None,
                seed: 0,
                save: None,
                steps: None,
                warmup_steps: 0,
                lr_schedule: LrSchedule::Constant,
                validation: Vec::new(),
                files: FitFiles::default(),
            },
        }
    }
}

/// What [`finetune_classification`] measured on the test items with the final-epoch model.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ClassificationResult {
    /// Quadratic weighted kappa over grades `0..classes`, of the decodable predictions (O).
    pub qwk: f64,
    /// Share of correctly graded images among the decodable predictions (undecodable ones
    /// excluded, as from the kappa).
    pub accuracy: f64,
    /// Confusion matrix (undecodable predictions are left out, as scikit-learn does with O's
    /// `labels=[0..4]`).
    pub confusion: Confusion,
    /// Test images whose cumulative outputs decode to −1 (none above 0.5): left out of `qwk`,
    /// `accuracy` and `confusion`, as O does. Always 0 with the softmax encoding.
    #[serde(default)]
    pub undecodable: usize,
    /// Test images that `qwk` and `accuracy` count (the test set minus the undecodable ones).
    #[serde(default)]
    pub scored: usize,
    /// What was loaded from the checkpoint.
    pub load: Option<LoadReport>,
    /// Training log.
    pub log: FitLog,
}

/// Finetunes a DenseNet grader on `train_ids` of `src` and evaluates it on `test_ids`.
pub fn finetune_classification(
    init: &EncoderInit,
    cfg: &ClassificationConfig,
    src: &dyn Dataset<GradedImage>,
    (train_ids, test_ids): (&[usize], &[usize]),
    dev: &Device,
    on_epoch: &mut dyn FnMut(usize, f64),
) -> Result<ClassificationResult> {
    require_test_items(test_ids)?;
    let store = ParamStore::new(derive(cfg.schedule.seed, Stream::Init, 0));
    let vb = store.builder(DType::F32, dev);
    let head_cfg = MlpHeadConfig {
        seed: cfg.schedule.seed,
        ..cfg.head.clone()
    };
    let (built, dropouts) = crate::nn::dropout::collect(|| -> Result<_> {
        let net = DenseNet::new(&cfg.densenet, vb.pp("encoder"))?;
        let head = MlpHead::new(
            cfg.densenet.feature_channels(),
            cfg.classes,
            &head_cfg,
            vb.pp("head"),
        )?;
        Ok((net, head))
    });
    let (net, head) = built?;
    let load = load_encoder(
        &store,
        init,
        (
            "densenet",
            serde_json::to_value(&cfg.densenet).map_err(Error::msg)?,
        ),
    )?;
    let k = cfg.classes;
    let batch = |ids: &[usize], seed: Option<u64>| -> Result<(Tensor, Vec<u8>)> {
        let mut grids = Vec::with_capacity(ids.len());
        let mut grades = Vec::with_capacity(ids.len());
        for (j, &i) in ids.iter().enumerate() {
            let (g, y) = src.get(i)?;
            if y as usize >= k {
                return Err(Error::arg(
                    "grade",
                    format!("item {i} has grade {y}, expected 0..{k}"),
                ));
            }
            grids.push(match seed {
                Some(s) if cfg.augment => {
                    zoom_flips_2d(&g, true, &mut rng(s, Stream::Augment, j as u64))
                }
                _ => g,
            });
            grades.push(y);
        }
        Ok((stack(&grids, true, dev)?, grades))
    };
    let freeze_bn = cfg.schedule.freeze_bn;
    let trained = Trained {
        store: &store,
        dropouts: &dropouts,
        model: serde_json::Value::Null,
        run: run_identity(cfg, init, train_ids)?,
    };
    // The scores of the grades predicted for `ids`, in inference mode.
    let evaluate = |ids: &[usize]| -> Result<super::metrics::GradeScores> {
        let (mut truth, mut preds) = (Vec::new(), Vec::new());
        for chunk in ids.chunks(cfg.schedule.batch_size.max(1)) {
            let (x, grades) = batch(chunk, None)?;
            let logits =
                crate::ops::no_grad(|| head.forward_t(&net.embed(&x, cfg.pool, false)?, false))?;
            let pred: Vec<i64> = match cfg.encoding {
                GradeEncoding::Cumulative => decode_cumulative(&logits)?,
                GradeEncoding::Softmax => {
                    logits.argmax(D::Minus1)?.to_dtype(DType::I64)?.to_vec1()?
                }
            };
            truth.extend(grades.iter().map(|&g| g as i64));
            preds.extend(pred);
        }
        grade_scores(&truth, &preds, k)
    };
    let mut log = fit(
        &trained,
        &cfg.schedule,
        train_ids,
        |ids, seed, frozen| {
            let (x, grades) = batch(ids, Some(seed))?;
            let feats = if frozen {
                net.embed(&x, cfg.pool, !freeze_bn)?.detach()
            } else {
                net.embed(&x, cfg.pool, true)?
            };
            let logits = head.forward_t(&feats, true)?;
            match cfg.encoding {
                GradeEncoding::Cumulative => binary_cross_entropy(
                    &logits,
                    &Tensor::from_vec(cumulative_bits(&grades, k), (ids.len(), k), dev)?,
                ),
                GradeEncoding::Softmax => cross_entropy(
                    &logits,
                    &Tensor::from_vec(
                        grades.iter().map(|&g| g as u32).collect::<Vec<_>>(),
                        ids.len(),
                        dev,
                    )?,
                ),
            }
        },
        &|ids| {
            let s = evaluate(ids)?;
            Ok(BTreeMap::from([
                ("val_qwk".to_string(), s.qwk),
                ("val_accuracy".to_string(), s.accuracy),
            ]))
        },
        on_epoch,
    )?;
    let start = Instant::now();
    let scores = evaluate(test_ids)?;
    log.eval_seconds = start.elapsed().as_secs_f64();
    Ok(ClassificationResult {
        qwk: scores.qwk,
        accuracy: scores.accuracy,
        confusion: scores.confusion,
        undecodable: scores.undecodable,
        scored: scores.scored,
        load,
        log,
    })
}

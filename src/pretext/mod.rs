//! The five pretext tasks of Taleb et al. (rotation, jigsaw, relative patch location, exemplar,
//! contrastive predictive coding), in 3D and 2D: samplers that turn volumes or images into
//! batches ([`Sampler`]) and the models and losses that learn from them ([`PretextModel`]).
//! O's constants (the authors' code) are the defaults; S's choices are named options.

pub mod exemplar;
pub mod model;
pub mod patches;
pub mod permutations;
pub mod rotation;
pub mod sampler;

pub use model::{PretextModel, StepOutput};
pub use permutations::{HammingStats, PermutationKind, PermutationSet};
pub use sampler::{Batch, Sampler};

use crate::{Error, Result};

/// A pretext task.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    serde::Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// Predict which of 10 (3D) or 4 (2D) rotations was applied.
    Rotation,
    /// Predict which of 100 permutations shuffled a 3×3(×3) grid of patches.
    Jigsaw,
    /// Predict where a query patch sits relative to the centre patch (26 or 8 classes).
    Rpl,
    /// Triplet embedding: an augmented view near its original, far from another item.
    Exemplar,
    /// Contrastive predictive coding: predict the codes of patches below a context.
    Cpc,
}

impl Task {
    /// Every task, in the paper's order.
    pub const ALL: [Task; 5] = [
        Task::Rotation,
        Task::Jigsaw,
        Task::Rpl,
        Task::Exemplar,
        Task::Cpc,
    ];

    /// The task's name in scripts and results.
    pub fn name(self) -> &'static str {
        match self {
            Task::Rotation => "rotation",
            Task::Jigsaw => "jigsaw",
            Task::Rpl => "rpl",
            Task::Exemplar => "exemplar",
            Task::Cpc => "cpc",
        }
    }

    /// Parses a task name.
    pub fn parse(name: &str) -> Result<Task> {
        Task::ALL
            .into_iter()
            .find(|t| t.name() == name)
            .ok_or_else(|| {
                Error::arg(
                    "task",
                    format!(
                        "unknown task `{name}`; expected rotation, jigsaw, rpl, exemplar or cpc"
                    ),
                )
            })
    }

    /// O's pretraining batch size (3D, 2D), method.md §4.1.
    pub fn batch_size(self, planar: bool) -> usize {
        match (self, planar) {
            (Task::Rotation, false) => 4,
            (Task::Jigsaw, false) => 8,
            (Task::Rpl, false) => 32,
            (Task::Exemplar, false) => 2,
            // O counts CPC batches in examples: 32 examples are one volume.
            (Task::Cpc, false) => 1,
            (Task::Exemplar, true) => 16,
            // 64 examples of 10 per image.
            (Task::Cpc, true) => 6,
            (_, true) => 32,
        }
    }
}

/// Where exemplar negatives come from.
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
pub enum Negatives {
    /// Another item of the dataset, unaugmented (O).
    #[default]
    Dataset,
    /// Another item's positive in the same batch (S).
    Batch,
}

/// The exemplar triplet loss.
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
pub enum TripletLoss {
    /// O: `mean max(0, d(a,p) - d(a,n) + margin)` with `d` the mean squared difference.
    #[default]
    MeanSquared,
    /// S (`nn.TripletMarginLoss`): Euclidean distances.
    Euclidean,
}

/// Exemplar settings.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ExemplarOptions {
    /// Where negatives come from.
    pub negatives: Negatives,
    /// The triplet loss.
    pub loss: TripletLoss,
    /// Hinge margin.
    pub margin: f64,
    /// Use the hardest (nearest) negative in the batch instead of the sampled one.
    pub hardest: bool,
    /// One projection head for anchor, positive and negative (S) instead of three (O).
    pub shared_head: bool,
    /// Size of the sigmoid code.
    pub code: usize,
}

impl Default for ExemplarOptions {
    fn default() -> Self {
        ExemplarOptions {
            negatives: Negatives::Dataset,
            loss: TripletLoss::MeanSquared,
            margin: 1.0,
            hardest: false,
            shared_head: false,
            code: 1024,
        }
    }
}

/// The CPC loss.
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
pub enum CpcLoss {
    /// O: binary cross-entropy of one positive or one negative target set per example.
    #[default]
    Binary,
    /// InfoNCE: each positive example against every other example's targets in the batch.
    InfoNce,
}

/// CPC settings.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct CpcOptions {
    /// The loss.
    pub loss: CpcLoss,
    /// Size of a patch code.
    pub code: usize,
    /// Size of the GRU state.
    pub hidden: usize,
    /// 3D: the random crop of the whole volume, as a fraction of its size (0.95).
    pub volume_crop: f64,
    /// 3D: each patch's random crop, as a fraction of the patch (7/8).
    pub patch_crop_3d: f64,
    /// 2D: each patch's random crop (11/12).
    pub patch_crop_2d: f64,
}

impl Default for CpcOptions {
    fn default() -> Self {
        CpcOptions {
            loss: CpcLoss::Binary,
            code: 1024,
            hidden: 256,
            volume_crop: 0.95,
            patch_crop_3d: 7.0 / 8.0,
            patch_crop_2d: 11.0 / 12.0,
        }
    }
}

/// A pretext task with its settings.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TaskConfig {
    /// The task.
    pub task: Task,
    /// Its settings.
    #[serde(flatten)]
    pub options: TaskOptions,
}

/// The settings of a pretext task (the script's `task` options); the default is O's.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct TaskOptions {
    /// Cells per side of the patch grid; () = O's (jigsaw, RPL: 3; CPC: 4 in 3D, 5 in 2D).
    pub grid: Option<usize>,
    /// How far jigsaw/RPL patches move inside their cell; () = O's 3 in 3D, 8 in 2D.
    pub jitter: Option<usize>,
    /// Jigsaw permutations (O: 100).
    pub permutations: usize,
    /// How the jigsaw permutation set is chosen.
    pub permutation_kind: PermutationKind,
    /// Seed of the jigsaw permutation set.
    pub permutation_seed: u64,
    /// Exemplar settings.
    pub exemplar: ExemplarOptions,
    /// CPC settings.
    pub cpc: CpcOptions,
    /// 2D: O's loader augmentation of training images before the task (zoom 0.85–1.15, plus
    /// horizontal and vertical flips for every task but rotation).
    pub augment_2d: bool,
}

impl Default for TaskOptions {
    fn default() -> Self {
        TaskOptions {
            grid: None,
            jitter: None,
            permutations: 100,
            permutation_kind: PermutationKind::Random,
            permutation_seed: 0,
            exemplar: ExemplarOptions::default(),
            cpc: CpcOptions::default(),
            augment_2d: true,
        }
    }
}

impl TaskConfig {
    /// O's settings of `task`.
    pub fn new(task: Task) -> Self {
        TaskConfig {
            task,
            options: TaskOptions::default(),
        }
    }

    /// Cells per side of the patch grid.
    pub fn per_side(&self, planar: bool) -> usize {
        self.options.grid.unwrap_or(match (self.task, planar) {
            (Task::Cpc, false) => 4,
            (Task::Cpc, true) => 5,
            _ => 3,
        })
    }

    /// Patch jitter of jigsaw and RPL.
    pub fn jitter(&self, planar: bool) -> usize {
        self.options.jitter.unwrap_or(if planar { 8 } else { 3 })
    }
}

//! Training: metrics, the optimiser with per-tensor clipping, the pretraining and
//! finetuning loops, and inference (sliding windows, labels in the original geometry).

pub mod concurrent;
pub mod finetune;
pub mod infer;
pub mod metrics;
pub mod optim;
pub mod pretrain;
pub mod resume;

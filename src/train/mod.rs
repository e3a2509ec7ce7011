//! Training: losses, metrics, the optimiser with per-tensor clipping, and the pretraining and
//! finetuning loops.

pub mod finetune;
pub mod loss;
pub mod metrics;
pub mod optim;
pub mod pretrain;
pub mod sources;

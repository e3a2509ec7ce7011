//! Training: losses, metrics, the optimiser with per-tensor clipping, and the pretraining and
//! finetuning loops.

pub mod loss;
pub mod optim;
pub mod pretrain;

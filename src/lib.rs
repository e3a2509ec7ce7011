//! # pretext
//!
//! Scriptable 3D self-supervised learning for medical imaging: a reproduction and extension of
//! Taleb et al., "3D Self-Supervised Methods for Medical Imaging" (NeurIPS 2020), on
//! [candle](https://github.com/huggingface/candle) with [Rhai](https://rhai.rs) scripts on top.
//!
//! Dependencies point downward: [`script`] → training → pretext tasks, models, [`data`] → ops →
//! candle. Nothing below [`script`] knows Rhai exists, so every capability is usable from Rust
//! and from scripts alike.

pub mod bench;
pub mod data;
pub mod error;
pub mod experiment;
pub mod io;
pub mod lock;
pub mod memory;
pub mod nn;
pub mod ops;
pub mod parity;
pub mod pretext;
pub mod progress;
pub mod script;
pub mod stop;
pub mod streams;
pub mod train;

pub use data::{Image, Volume, VoxelType};
pub use error::{Error, Result};

//! Medical-image data: NIfTI volumes, fundus images, datasets, preprocessing and splits, and
//! the in-memory form the samplers and finetuning loops share: [`Grid`]s, their augmentations
//! and the [`Dataset`] trait.

pub mod aptos;
pub mod augment;
pub mod budget;
pub mod cache;
pub mod dataset;
pub mod decathlon;
pub mod folder;
pub mod geometry;
pub mod grid;
pub mod image2d;
pub(crate) mod nifti1;
pub mod preprocess;
pub mod preview;
pub mod resize;
pub mod sets;
pub mod split;
pub mod synthetic;
pub mod verify;
pub mod volume;

use std::path::PathBuf;

use sha2::{Digest, Sha256};

pub use aptos::{Aptos, AptosEntry};
pub use cache::{FundusSet, PancreasSet};
pub use dataset::{Dataset, GradedImage, LabelledVolume, Subset};
pub use decathlon::{Case, Decathlon};
pub use folder::{Fit, NiftiFolderOptions, NiftiFolderSet, VolumePreprocess};
pub use geometry::{Geometry, IndexMap};
pub use grid::Grid;
pub use image2d::Image;
pub use preprocess::{FundusFilter, FundusPreprocess, PancreasPreprocess};
pub use resize::Interp;
pub use sets::{Folders, FundusOptions, FundusSynthOptions, PancreasOptions};
pub use verify::{Problem, Report, verify};
pub use volume::{Affine, Volume, VoxelType};

/// The environment variable naming the data folder (default `data` in the working directory).
pub const DATA_ENV: &str = "PRETEXT_DATA";

/// The data folder: synthetic datasets and preprocessed caches live below it.
pub fn home() -> PathBuf {
    std::env::var_os(DATA_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("data"))
}

/// A 16-hex-digit SHA-256 digest of `text`, used to name cache folders.
pub fn key(text: &str) -> String {
    let d = Sha256::digest(text.as_bytes());
    d[..8].iter().map(|b| format!("{b:02x}")).collect()
}

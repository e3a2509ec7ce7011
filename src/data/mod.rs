//! Medical-image data: NIfTI volumes, fundus images, datasets, preprocessing and splits.

pub mod image2d;
pub mod volume;

pub use image2d::Image;
pub use volume::{Affine, Volume, VoxelType};

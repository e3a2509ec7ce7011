//! The `volume` and `image` domains: NIfTI volumes and 2D photographs in scripts.

use candle_core::Tensor;
use rhai::{Array, Dynamic, FLOAT, INT};

use super::api::Domain;
use super::convert::{ScriptResult, floats, index, rt_err};
use crate::data::{Image, Volume, VoxelType};

/// Builds the `volume` domain.
pub fn volume_domain() -> Domain {
    let mut d = Domain::new(
        "volume",
        "3D/4D medical volumes: NIfTI-1 (.nii, .nii.gz) reading and writing with spacing and affine, \
         resampling, and random views for augmentation. Voxels are indexed [x, y, z] as \
         nibabel's get_fdata().",
    );
    d.custom_type::<Volume>("Volume");
    d.func(
        "load_nifti",
        "load_nifti(path: String) -> Volume",
        "Reads a NIfTI-1 file of any integer or float dtype, applying scl_slope/scl_inter.",
        |path: &str| Volume::load(path).rt(),
    );
    d.func(
        "save_nifti",
        "v.save_nifti(path: String)",
        "Writes the volume in its own voxel type, keeping spacing and affine (atomic write).",
        |v: &mut Volume, path: &str| v.save(path).rt(),
    );
    d.func(
        "save_nifti",
        "v.save_nifti(path: String, dtype: String)",
        "Writes the volume as u8, i8, u16, i16, u32, i32, u64, i64, f32 or f64.",
        |v: &mut Volume, path: &str, dtype: &str| {
            v.save_as(path, VoxelType::parse(dtype).rt()?).rt()
        },
    );
    d.func(
        "volume",
        "volume(t: Tensor, spacing: Array) -> Volume",
        "A volume from a rank-3/4 tensor [x, y, z(, t)] and the voxel spacing [sx, sy, sz] in mm.",
        |t: Tensor, spacing: Array| {
            let s = floats(&spacing, "spacing")?;
            let s: [f64; 3] = s.try_into().map_err(|s: Vec<f64>| {
                rt_err(format!("spacing: expected 3 numbers, got {}", s.len()))
            })?;
            Volume::from_tensor(&t, s).rt()
        },
    );
    d.func(
        "with_tensor",
        "v.with_tensor(t: Tensor) -> Volume",
        "The same geometry (spacing, affine, header) with other voxels of the same spatial shape.",
        |v: &mut Volume, t: Tensor| v.with_tensor(&t).rt(),
    );
    d.getter(
        "shape",
        "v.shape -> Array",
        "The dimensions [x, y, z(, t)].",
        |v: &mut Volume| {
            Ok(v.shape()
                .iter()
                .map(|&x| Dynamic::from_int(x as INT))
                .collect::<Array>())
        },
    );
    d.getter(
        "spacing",
        "v.spacing -> Array",
        "Voxel size in mm along x, y, z.",
        |v: &mut Volume| {
            Ok(v.spacing()
                .iter()
                .map(|&x| Dynamic::from_float(x as FLOAT))
                .collect::<Array>())
        },
    );
    d.getter(
        "affine",
        "v.affine -> Array",
        "The 4x4 voxel-to-world matrix (sform, else qform, else nibabel's base affine).",
        |v: &mut Volume| {
            Ok(v.affine()
                .iter()
                .map(|row| {
                    Dynamic::from_array(row.iter().map(|&x| Dynamic::from_float(x)).collect())
                })
                .collect::<Array>())
        },
    );
    d.getter(
        "dtype",
        "v.dtype -> String",
        "The voxel type of the source file (f32 for new volumes).",
        |v: &mut Volume| Ok(v.dtype().name().to_string()),
    );
    d.func(
        "tensor",
        "v.tensor() -> Tensor",
        "The voxels as an f32 tensor [x, y, z(, t)].",
        |v: &mut Volume| Ok(v.tensor().clone()),
    );
    d.func(
        "to_string",
        "v.to_string() -> String",
        "Shape, spacing and dtype.",
        |v: &mut Volume| Ok(describe_volume(v)),
    );
    d.overload("to_debug", |v: &mut Volume| Ok(describe_volume(v)));
    super::folder::resampling(&mut d);
    super::augment::register(&mut d);
    d
}

fn describe_volume(v: &Volume) -> String {
    format!(
        "Volume{:?} {} spacing [{}] mm",
        v.shape(),
        v.dtype().name(),
        v.spacing()
            .iter()
            .map(|s| format!("{s:.3}"))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// Builds the `image` domain.
pub fn image_domain() -> Domain {
    let mut d = Domain::new(
        "image",
        "2D images (fundus photographs): PNG/JPEG reading, resizing, tensors in [0, 1].",
    );
    d.custom_type::<Image>("Image");
    d.func(
        "load_image",
        "load_image(path: String) -> Image",
        "Reads a PNG or JPEG file.",
        |path: &str| Image::load(path).rt(),
    );
    d.func(
        "image",
        "image(t: Tensor) -> Image",
        "An image from a tensor [C, H, W] (C = 1 or 3) in [0, 1].",
        |t: Tensor| Image::from_tensor(&t).rt(),
    );
    d.func(
        "resize",
        "img.resize(w: INT, h: INT) -> Image",
        "Resized to exactly w x h (Lanczos3).",
        |img: &mut Image, w: INT, h: INT| img.resize(index(w, "w")?, index(h, "h")?).rt(),
    );
    d.func(
        "tensor",
        "img.tensor() -> Tensor",
        "The pixels as an f32 tensor [C, H, W] in [0, 1].",
        |img: &mut Image| img.tensor().rt(),
    );
    d.func(
        "save_image",
        "img.save_image(path: String)",
        "Writes PNG or JPEG by extension (atomic write).",
        |img: &mut Image, path: &str| img.save(path).rt(),
    );
    d.getter(
        "width",
        "img.width -> INT",
        "Width in pixels.",
        |img: &mut Image| Ok(img.width() as INT),
    );
    d.getter(
        "height",
        "img.height -> INT",
        "Height in pixels.",
        |img: &mut Image| Ok(img.height() as INT),
    );
    d.getter(
        "channels",
        "img.channels -> INT",
        "1 for grey images, 3 for colour.",
        |img: &mut Image| Ok(img.channels() as INT),
    );
    d.func(
        "to_string",
        "img.to_string() -> String",
        "Size and channels.",
        |img: &mut Image| {
            Ok(format!(
                "Image {}x{} ({} channels)",
                img.width(),
                img.height(),
                img.channels()
            ))
        },
    );
    d
}

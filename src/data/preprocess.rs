//! The paper's preprocessing: pancreas CT (method.md §1.1) and fundus photographs (§1.2).
//!
//! Pancreas, as the original code (`read_scan_find_bbox` + `data_generation_pancreas`, then the
//! loader's second normalisation): optional HU clipping; min-max to [0, 1] over the whole
//! volume; bounding box of the voxels `> threshold` (0.05), whose last index the original code
//! uses as an exclusive end (`off_by_one`, kept by default); crop; skimage `resize` (order 1,
//! anti-aliased when shrinking) to the target shape; min-max again. The label gets the same
//! box and the same linear resize followed by `np.rint` (or nearest neighbour as an option).
//!
//! Fundus, as the original code: resized to `size`×`size` with PIL's LANCZOS (Triangle as an
//! option), stored as 8-bit RGB, read as `value / 255`.

use candle_core::{Device, Tensor};
use image::imageops::FilterType;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::resize::{Interp, Resize, min_max, resize3d};
use super::{Image, Volume};
use crate::error::{Error, Result};

/// Pancreas CT preprocessing parameters; the default is the original code's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct PancreasPreprocess {
    /// Target shape [x, y, z] (the paper: 128³).
    pub shape: [usize; 3],
    /// Foreground threshold of the bounding box, on the min-max normalised volume (0.05).
    pub threshold: f64,
    /// Use the last foreground index as an exclusive end, as the original code (true).
    pub off_by_one: bool,
    /// How labels are resized: linear then rounded (the original code), or nearest.
    #[serde(rename = "labels")]
    pub label_interp: Interp,
    /// Clip HU values to [lo, hi] before everything else (off in the original).
    pub clip: Option<(f32, f32)>,
    /// Gaussian anti-aliasing when shrinking, as skimage does by default (true).
    pub anti_alias: bool,
}

impl Default for PancreasPreprocess {
    fn default() -> Self {
        PancreasPreprocess {
            shape: [128, 128, 128],
            threshold: 0.05,
            off_by_one: true,
            label_interp: Interp::Linear,
            clip: None,
            anti_alias: true,
        }
    }
}

/// A crop box: `start` inclusive, `end` exclusive, per axis.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BBox {
    /// First index per axis.
    pub start: [usize; 3],
    /// One past the last index per axis.
    pub end: [usize; 3],
}

impl BBox {
    /// The size of the box.
    pub fn shape(&self) -> [usize; 3] {
        [0, 1, 2].map(|a| self.end[a].saturating_sub(self.start[a]))
    }
}

/// The result of [`PancreasPreprocess::apply_raw`]: C-order voxels of the target shape.
#[derive(Clone, Debug)]
pub struct PreparedRaw {
    /// Image in [0, 1].
    pub image: Vec<f32>,
    /// Label values, when a label was given.
    pub label: Option<Vec<u8>>,
    /// The crop box used.
    pub bbox: BBox,
}

/// The result of [`PancreasPreprocess::apply`].
#[derive(Clone, Debug)]
pub struct Prepared {
    /// Image `[x, y, z]` f32 in [0, 1].
    pub image: Tensor,
    /// Label `[x, y, z]` u8, when a label was given.
    pub label: Option<Tensor>,
    /// The crop box used.
    pub bbox: BBox,
}

impl PancreasPreprocess {
    /// Checks the parameters.
    pub fn validate(&self) -> Result<()> {
        if self.shape.contains(&0) {
            return Err(Error::arg(
                "shape",
                format!("every target size must be positive, got {:?}", self.shape),
            ));
        }
        if !(0.0..1.0).contains(&self.threshold) {
            return Err(Error::arg(
                "threshold",
                format!("expected a value in [0, 1), got {}", self.threshold),
            ));
        }
        if let Some((lo, hi)) = self.clip
            && lo.partial_cmp(&hi) != Some(std::cmp::Ordering::Less)
        {
            return Err(Error::arg(
                "clip",
                format!("expected [lo, hi] with lo < hi, got [{lo}, {hi}]"),
            ));
        }
        Ok(())
    }

    /// A short hash of the parameters (names cache folders).
    pub fn key(&self) -> String {
        super::key(&serde_json::to_string(self).unwrap_or_default())
    }

    /// Preprocesses a 3D volume and optionally its label (same shape).
    pub fn apply(&self, image: &Volume, label: Option<&Volume>) -> Result<Prepared> {
        let shape = spatial3(image.shape(), "image")?;
        if let Some(l) = label
            && l.shape() != image.shape()
        {
            return Err(Error::shape(
                "preprocess",
                format!(
                    "label shape {:?} differs from image shape {:?}",
                    l.shape(),
                    image.shape()
                ),
            ));
        }
        // The voxels are borrowed from the volumes, not copied.
        let raw = image.with_values(|img| match label {
            Some(l) => l.with_values(|lab| self.apply_raw(img, shape, Some(lab)))?,
            None => self.apply_raw(img, shape, None),
        })??;
        let s = (self.shape[0], self.shape[1], self.shape[2]);
        Ok(Prepared {
            image: Tensor::from_vec(raw.image, s, &Device::Cpu)?,
            label: raw
                .label
                .map(|l| Tensor::from_vec(l, s, &Device::Cpu))
                .transpose()?,
            bbox: raw.bbox,
        })
    }

    /// Preprocesses C-order voxels of `shape` (x slowest), with an optional label.
    pub fn apply_raw(
        &self,
        image: &[f32],
        shape: [usize; 3],
        label: Option<&[f32]>,
    ) -> Result<PreparedRaw> {
        self.validate()?;
        let n: usize = shape.iter().product();
        if image.len() != n || label.is_some_and(|l| l.len() != n) {
            return Err(Error::shape(
                "preprocess",
                format!("expected {n} voxels for shape {shape:?}"),
            ));
        }
        let clipped;
        let image = match self.clip {
            Some((lo, hi)) => {
                clipped = image
                    .par_iter()
                    .map(|v| v.clamp(lo, hi))
                    .collect::<Vec<_>>();
                &clipped[..]
            }
            None => image,
        };
        let (lo, hi) = min_max(image);
        if !(lo.is_finite() && hi.is_finite()) || lo == hi {
            return Err(Error::msg(format!(
                "preprocess: cannot min-max normalise a volume whose values span [{lo}, {hi}]"
            )));
        }
        let (lo, range) = (lo as f64, hi as f64 - lo as f64);
        let norm = |v: f32| (v as f64 - lo) / range;
        let bbox = bounding_box(image, shape, |v| norm(v) > self.threshold, self.off_by_one)?;
        let crop_shape = bbox.shape();
        let cropped: Vec<f32> = crop(image, shape, &bbox)
            .into_par_iter()
            .map(|v| norm(v) as f32)
            .collect();
        let img_opts = Resize {
            interp: Interp::Linear,
            anti_alias: self.anti_alias,
            clip: true,
        };
        let resized = resize3d(&cropped, crop_shape, self.shape, img_opts)?;
        drop(cropped);
        let (rlo, rhi) = min_max(&resized);
        if rlo == rhi {
            return Err(Error::msg(
                "preprocess: the resized image is constant; cannot min-max normalise it",
            ));
        }
        let rrange = rhi as f64 - rlo as f64;
        let image = resized
            .par_iter()
            .map(|&v| ((v as f64 - rlo as f64) / rrange) as f32)
            .collect();
        let label = label.map(|l| self.label(l, shape, &bbox)).transpose()?;
        Ok(PreparedRaw { image, label, bbox })
    }

    fn label(&self, label: &[f32], shape: [usize; 3], bbox: &BBox) -> Result<Vec<u8>> {
        let opts = match self.label_interp {
            Interp::Linear => Resize {
                interp: Interp::Linear,
                anti_alias: self.anti_alias,
                clip: true,
            },
            Interp::Nearest => Resize {
                interp: Interp::Nearest,
                anti_alias: false,
                clip: true,
            },
        };
        let resized = resize3d(&crop(label, shape, bbox), bbox.shape(), self.shape, opts)?;
        resized
            .iter()
            .map(|&v| {
                let r = v.round_ties_even();
                if (0.0..=255.0).contains(&r) {
                    Ok(r as u8)
                } else {
                    Err(Error::msg(format!(
                        "preprocess: label value {v} is outside 0..255"
                    )))
                }
            })
            .collect()
    }
}

pub(super) fn spatial3(dims: &[usize], what: &str) -> Result<[usize; 3]> {
    match dims {
        [x, y, z] => Ok([*x, *y, *z]),
        [x, y, z, 1] => Ok([*x, *y, *z]),
        _ => Err(Error::shape(
            "preprocess",
            format!("expected a 3D {what} [x, y, z], got shape {dims:?}"),
        )),
    }
}

/// The box of the voxels where `fg` holds: per axis, the first and last index of a slice
/// with any such voxel; the end is that last index (`off_by_one`) or one past it.
pub fn bounding_box(
    data: &[f32],
    shape: [usize; 3],
    fg: impl Fn(f32) -> bool + Sync,
    off_by_one: bool,
) -> Result<BBox> {
    let [_, ny, nz] = shape;
    let masks = data
        .par_chunks(ny * nz)
        .map(|slab| {
            let mut ys = vec![false; ny];
            let mut zs = vec![false; nz];
            for (y, row) in slab.chunks(nz).enumerate() {
                for (z, &v) in row.iter().enumerate() {
                    if fg(v) {
                        ys[y] = true;
                        zs[z] = true;
                    }
                }
            }
            (ys.iter().any(|&b| b), ys, zs)
        })
        .collect::<Vec<_>>();
    let xs: Vec<bool> = masks.iter().map(|m| m.0).collect();
    let ys: Vec<bool> = (0..ny).map(|i| masks.iter().any(|m| m.1[i])).collect();
    let zs: Vec<bool> = (0..nz).map(|i| masks.iter().any(|m| m.2[i])).collect();
    let per_axis = [xs, ys, zs];
    let mut start = [0; 3];
    let mut end = [0; 3];
    for (a, mask) in per_axis.iter().enumerate() {
        let first = mask.iter().position(|&b| b);
        let last = mask.iter().rposition(|&b| b);
        let (Some(first), Some(last)) = (first, last) else {
            return Err(Error::msg(
                "preprocess: no voxel above the bounding-box threshold",
            ));
        };
        start[a] = first;
        end[a] = if off_by_one { last } else { last + 1 };
        if end[a] <= start[a] {
            return Err(Error::msg(format!(
                "preprocess: the bounding box is empty along axis {a} (foreground only in \
                 slice {first}; the original code's exclusive end drops it: use off_by_one = false)"
            )));
        }
    }
    Ok(BBox { start, end })
}

/// The voxels inside `bbox`, C order.
pub fn crop(data: &[f32], shape: [usize; 3], bbox: &BBox) -> Vec<f32> {
    let [_, ny, nz] = shape;
    let [cx, cy, cz] = bbox.shape();
    let mut out = Vec::with_capacity(cx * cy * cz);
    for x in bbox.start[0]..bbox.end[0] {
        for y in bbox.start[1]..bbox.end[1] {
            let base = (x * ny + y) * nz;
            out.extend_from_slice(&data[base + bbox.start[2]..base + bbox.end[2]]);
        }
    }
    out
}

/// The resampling filter of fundus images.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum FundusFilter {
    /// Lanczos3, as PIL's LANCZOS in the original code.
    Lanczos,
    /// Linear (PIL's BILINEAR, torchvision's default).
    Triangle,
}

/// Fundus preprocessing parameters; the default is the original code's (224, LANCZOS).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct FundusPreprocess {
    /// Output width and height in pixels.
    pub size: usize,
    /// Resampling filter.
    pub filter: FundusFilter,
}

impl Default for FundusPreprocess {
    fn default() -> Self {
        FundusPreprocess {
            size: 224,
            filter: FundusFilter::Lanczos,
        }
    }
}

impl FundusPreprocess {
    /// A short hash of the parameters (names cache folders).
    pub fn key(&self) -> String {
        super::key(&serde_json::to_string(self).unwrap_or_default())
    }

    /// The image resized and converted to 8-bit RGB, channel-first `[3, size, size]`.
    pub fn resize_rgb8(&self, img: &Image) -> Result<Vec<u8>> {
        if self.size == 0 {
            return Err(Error::arg("size", "the fundus image size must be positive"));
        }
        let filter = match self.filter {
            FundusFilter::Lanczos => FilterType::Lanczos3,
            FundusFilter::Triangle => FilterType::Triangle,
        };
        let s = self.size as u32;
        let rgb = img.dynamic().to_rgb8();
        let small = image::imageops::resize(&rgb, s, s, filter);
        let hw = self.size * self.size;
        let mut chw = vec![0u8; 3 * hw];
        for (i, px) in small.pixels().enumerate() {
            for c in 0..3 {
                chw[c * hw + i] = px.0[c];
            }
        }
        Ok(chw)
    }

    /// The preprocessed image: f32 `[3, size, size]` in [0, 1].
    pub fn apply(&self, img: &Image) -> Result<Tensor> {
        let chw = self.resize_rgb8(img)?;
        rgb8_tensor(chw, self.size)
    }
}

/// 8-bit channel-first RGB as an f32 tensor `[3, size, size]` divided by 255.
pub fn rgb8_tensor(chw: Vec<u8>, size: usize) -> Result<Tensor> {
    let v: Vec<f32> = chw.into_iter().map(|b| b as f32 / 255.0).collect();
    Ok(Tensor::from_vec(v, (3, size, size), &Device::Cpu)?)
}

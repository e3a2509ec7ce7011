//! Where preprocessed voxels came from, and the way back to the patient's image.
//!
//! Every step of the generic preprocessing (resampling to a spacing, cropping to the
//! foreground, resizing or centre crop/pad to a shape) maps voxel indices per axis by a scale
//! and an offset, so the whole chain is one [`IndexMap`]: `original = scale · prepared +
//! offset` per axis. It gives the prepared volume's affine (so it overlays the original in any
//! viewer) and samples a prepared-space prediction at every voxel of the original image: the
//! label map comes back in the original shape with the original affine, and voxels the
//! prepared grid does not cover (cropped away) are background.
//!
//! Resizing follows scikit-image's `grid_mode`: output voxel `o` of a resize from `n` to `m`
//! voxels sits at input coordinate `(o + 0.5) n / m - 0.5`, so voxel edges, not centres, line
//! up, and the field of view is kept.

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use super::resize::{Interp, Resize, resize3d, sample_axes};
use super::volume::{Affine, Volume};
use crate::error::{Error, Result};

/// Per axis: original index = `scale` · prepared index + `offset`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct IndexMap {
    /// Original voxels per prepared voxel, per axis.
    pub scale: [f64; 3],
    /// The original index of prepared voxel 0, per axis.
    pub offset: [f64; 3],
}

impl Default for IndexMap {
    fn default() -> Self {
        IndexMap::IDENTITY
    }
}

impl IndexMap {
    /// Prepared and original indices coincide.
    pub const IDENTITY: IndexMap = IndexMap {
        scale: [1.0; 3],
        offset: [0.0; 3],
    };

    /// A resize from `from` to `to` voxels per axis (scikit-image's `grid_mode`).
    pub fn resize(from: [usize; 3], to: [usize; 3]) -> IndexMap {
        let scale = [0, 1, 2].map(|a| from[a] as f64 / to[a] as f64);
        IndexMap {
            scale,
            offset: scale.map(|s| 0.5 * s - 0.5),
        }
    }

    /// A crop (positive `start`) or a padding (negative `start`): prepared voxel `p` is voxel
    /// `p + start` before.
    pub fn shift(start: [isize; 3]) -> IndexMap {
        IndexMap {
            scale: [1.0; 3],
            offset: start.map(|s| s as f64),
        }
    }

    /// This map after `inner`: `inner` takes prepared indices to this map's input.
    pub fn then(&self, inner: &IndexMap) -> IndexMap {
        IndexMap {
            scale: [0, 1, 2].map(|a| self.scale[a] * inner.scale[a]),
            offset: [0, 1, 2].map(|a| self.scale[a] * inner.offset[a] + self.offset[a]),
        }
    }

    /// The prepared grid's voxel-to-world affine, given the original one.
    pub fn affine(&self, original: &Affine) -> Affine {
        let mut out = *original;
        for (r, row) in original.iter().enumerate().take(3) {
            for a in 0..3 {
                out[r][a] = row[a] * self.scale[a];
            }
            out[r][3] = row[3] + (0..3).map(|a| row[a] * self.offset[a]).sum::<f64>();
        }
        out
    }

    /// The prepared coordinate of original index `i` along `axis`.
    pub fn prepared_coord(&self, axis: usize, i: usize) -> f64 {
        (i as f64 - self.offset[axis]) / self.scale[axis]
    }
}

/// The original image of a prepared case: its shape and affine, and how prepared voxel
/// indices map to its own.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Geometry {
    /// The original spatial shape [x, y, z].
    pub shape: [usize; 3],
    /// The original voxel-to-world affine (nibabel's `img.affine`).
    pub affine: Affine,
    /// The prepared shape [x, y, z].
    pub prepared: [usize; 3],
    /// Original index of each prepared index, per axis.
    pub map: IndexMap,
}

impl Geometry {
    /// The prepared volume's voxel-to-world affine.
    pub fn prepared_affine(&self) -> Affine {
        self.map.affine(&self.affine)
    }

    /// Per axis, the prepared coordinate of every original voxel, or `None` where the prepared
    /// grid does not cover it (the voxel's centre lies outside the prepared voxels' extent).
    fn coords(&self) -> [Vec<Option<f64>>; 3] {
        [0, 1, 2].map(|a| {
            let hi = self.prepared[a] as f64 - 0.5;
            (0..self.shape[a])
                .map(|i| {
                    let c = self.map.prepared_coord(a, i);
                    (c >= -0.5 - 1e-9 && c <= hi + 1e-9).then_some(c)
                })
                .collect()
        })
    }

    fn check(&self, len: usize, what: &str) -> Result<usize> {
        let n: usize = self.prepared.iter().product();
        if n == 0 || len != n {
            return Err(Error::shape(
                "to_original",
                format!(
                    "{what}: {len} values do not fill the prepared shape {:?}",
                    self.prepared
                ),
            ));
        }
        crate::memory::check_shape(&self.shape, 4, "a volume in the original geometry")?;
        Ok(n)
    }

    /// A prepared-space volume (C order) sampled at every voxel of the original image
    /// (linear or nearest); voxels the prepared grid does not cover get `fill`.
    pub fn to_original(&self, values: &[f32], interp: Interp, fill: f32) -> Result<Vec<f32>> {
        self.check(values.len(), "values")?;
        let coords = self.coords();
        let mut out = sample_axes(values, self.prepared, &coords, interp)?;
        self.fill_outside(&coords, &mut out, fill);
        Ok(out)
    }

    fn fill_outside<T: Copy + Send + Sync>(
        &self,
        coords: &[Vec<Option<f64>>; 3],
        out: &mut [T],
        fill: T,
    ) {
        use rayon::prelude::*;
        let [_, ny, nz] = self.shape;
        let inside = |a: usize, i: usize| coords[a][i].is_some();
        if (0..3).all(|a| (0..self.shape[a]).all(|i| inside(a, i))) {
            return;
        }
        out.par_chunks_mut(ny * nz)
            .enumerate()
            .for_each(|(x, slab)| {
                for y in 0..ny {
                    for z in 0..nz {
                        if !(inside(0, x) && inside(1, y) && inside(2, z)) {
                            slab[y * nz + z] = fill;
                        }
                    }
                }
            });
    }

    /// Class scores `[classes, prepared...]` (probabilities or logits, C order) as a label map
    /// of the original image: each class's scores are interpolated linearly at every original
    /// voxel and the best class wins (the lowest on ties); voxels the prepared grid does not
    /// cover are 0 (background).
    pub fn labels_to_original(&self, scores: &[f32], classes: usize) -> Result<Vec<u8>> {
        if classes == 0 || classes > 256 {
            return Err(Error::arg(
                "classes",
                format!("expected 1..256 classes, got {classes}"),
            ));
        }
        let n = self.check(scores.len() / classes, "scores")?;
        if scores.len() != n * classes {
            return Err(Error::shape(
                "to_original",
                format!(
                    "{} scores do not fill {classes} classes of {:?}",
                    scores.len(),
                    self.prepared
                ),
            ));
        }
        let coords = self.coords();
        let total: usize = self.shape.iter().product();
        let mut best = vec![f32::NEG_INFINITY; total];
        let mut label = vec![0u8; total];
        for (k, class) in scores.chunks(n).enumerate() {
            let s = sample_axes(class, self.prepared, &coords, Interp::Linear)?;
            for ((b, l), v) in best.iter_mut().zip(label.iter_mut()).zip(s) {
                if v > *b {
                    *b = v;
                    *l = k as u8;
                }
            }
        }
        self.fill_outside(&coords, &mut label, 0u8);
        Ok(label)
    }

    /// A prepared-space label map (C order) as a label map of the original image: one-hot
    /// per class, then as [`Geometry::labels_to_original`].
    pub fn label_map_to_original(&self, labels: &[u8]) -> Result<Vec<u8>> {
        let classes = labels.iter().copied().max().unwrap_or(0) as usize + 1;
        let onehot: Vec<f32> = (0..classes)
            .flat_map(|k| labels.iter().map(move |&l| f32::from(l as usize == k)))
            .collect();
        self.labels_to_original(&onehot, classes)
    }
}

/// The options of `resample` and `resize` of volumes and tensors in scripts.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ResampleOptions {
    /// "linear" for images, "nearest" for label maps.
    pub interp: Interp,
    /// Gaussian anti-aliasing when an axis shrinks (linear only), as scikit-image does.
    pub anti_alias: bool,
}

impl Default for ResampleOptions {
    fn default() -> Self {
        ResampleOptions {
            interp: Interp::Linear,
            anti_alias: true,
        }
    }
}

impl ResampleOptions {
    fn resize(&self) -> Resize {
        Resize {
            interp: self.interp,
            anti_alias: self.anti_alias && self.interp == Interp::Linear,
            clip: true,
        }
    }
}

/// A 3D tensor `[x, y, z]` resized to `shape` (scikit-image's `resize`, see
/// [`super::resize`]), f32 on the tensor's device.
pub fn resize_tensor(t: &Tensor, shape: [usize; 3], opts: &ResampleOptions) -> Result<Tensor> {
    let (x, y, z) = t.dims3().map_err(|_| {
        Error::shape(
            "resize",
            format!("expected a 3D tensor [x, y, z], got {:?}", t.dims()),
        )
    })?;
    crate::memory::check_shape(&shape, 4, "a resized volume")?;
    let data: Vec<f32> = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    let out = resize3d(&data, [x, y, z], shape, opts.resize())?;
    Ok(
        Tensor::from_vec(out, (shape[0], shape[1], shape[2]), &Device::Cpu)?
            .to_device(t.device())?,
    )
}

/// A volume (3D, or 4D with one frame) resized to `shape` voxels over the same field of view:
/// the affine, qform and spacing follow, so it stays aligned with the original.
pub fn resize_volume(v: &Volume, shape: [usize; 3], opts: &ResampleOptions) -> Result<Volume> {
    let from = super::preprocess::spatial3(v.shape(), "volume")?;
    if shape.contains(&0) {
        return Err(Error::arg(
            "shape",
            format!("every size must be positive, got {shape:?}"),
        ));
    }
    let t = v.tensor().reshape((from[0], from[1], from[2]))?;
    let out = resize_tensor(&t, shape, opts)?;
    v.regridded(&out, &IndexMap::resize(from, shape))
}

/// A volume resampled to voxel `spacing` (mm): `round(n · old / new)` voxels per axis over the
/// same field of view (the exact new spacing is `old · n / m`), aligned with the original.
pub fn resample_volume(v: &Volume, spacing: [f64; 3], opts: &ResampleOptions) -> Result<Volume> {
    if let Some(s) = spacing.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
        return Err(Error::arg(
            "spacing",
            format!("every spacing must be a positive number of mm, got {s}"),
        ));
    }
    let from = super::preprocess::spatial3(v.shape(), "volume")?;
    let old = v.spacing();
    let to = [0, 1, 2].map(|a| ((from[a] as f64 * old[a] / spacing[a]).round() as usize).max(1));
    resize_volume(v, to, opts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_compose_and_move_the_affine_with_the_voxels() {
        let m = IndexMap::resize([10, 20, 30], [5, 40, 30]);
        assert_eq!(m.scale, [2.0, 0.5, 1.0]);
        assert_eq!(m.offset, [0.5, -0.25, 0.0]);
        let crop = IndexMap::shift([3, -2, 0]);
        let both = crop.then(&m);
        // prepared 1 -> resized 1 -> 2*1+0.5 = 2.5 -> +3 = 5.5 along x.
        assert_eq!(both.scale[0] * 1.0 + both.offset[0], 5.5);
        let a: Affine = [
            [-2.0, 0.0, 0.0, 10.0],
            [0.0, 3.0, 0.0, -5.0],
            [0.0, 0.0, 1.5, 1.0],
            [0.0, 0.0, 0.0, 1.0],
        ];
        let p = both.affine(&a);
        // World position of prepared voxel (1, 0, 0) = original voxel (5.5, ...).
        let world_x = p[0][0] * 1.0 + p[0][3];
        assert!((world_x - (-2.0 * 5.5 + 10.0)).abs() < 1e-12);
    }

    #[test]
    fn an_identity_geometry_gives_back_the_labels() {
        let g = Geometry {
            shape: [3, 4, 5],
            affine: [
                [1.0, 0.0, 0.0, 0.0],
                [0.0, 1.0, 0.0, 0.0],
                [0.0, 0.0, 1.0, 0.0],
                [0.0, 0.0, 0.0, 1.0],
            ],
            prepared: [3, 4, 5],
            map: IndexMap::IDENTITY,
        };
        let labels: Vec<u8> = (0..60).map(|i| (i % 3) as u8).collect();
        assert_eq!(g.label_map_to_original(&labels).unwrap(), labels);
    }

    #[test]
    fn voxels_outside_a_crop_are_background() {
        // Prepared = original voxels 2..6 along x.
        let g = Geometry {
            shape: [8, 1, 1],
            affine: [
                [1.0, 0.0, 0.0, 0.0],
                [0.0, 1.0, 0.0, 0.0],
                [0.0, 0.0, 1.0, 0.0],
                [0.0, 0.0, 0.0, 1.0],
            ],
            prepared: [4, 1, 1],
            map: IndexMap::shift([2, 0, 0]),
        };
        let out = g.label_map_to_original(&[1, 1, 2, 2]).unwrap();
        assert_eq!(out, vec![0, 0, 1, 1, 2, 2, 0, 0]);
        let v = g
            .to_original(&[1.0, 2.0, 3.0, 4.0], Interp::Linear, -1.0)
            .unwrap();
        assert_eq!(v, vec![-1.0, -1.0, 1.0, 2.0, 3.0, 4.0, -1.0, -1.0]);
    }
}

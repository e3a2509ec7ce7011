//! Inference: sliding-window prediction over volumes of any size (MONAI's
//! `sliding_window_inference`), and segmentation of a case back into its original image's
//! geometry (shape and affine), ready to be saved as NIfTI next to it.
//!
//! The windows, their order, the padding of volumes smaller than a window, the Gaussian
//! importance map and the blending are MONAI 1.6's: windows of `roi` voxels start every
//! `int(roi · (1 - overlap))` voxels (the last one moved back to end at the border), every
//! window's prediction is weighted by the importance map (constant, or a Gaussian of sigma
//! `sigma_scale · roi` per axis, clamped below at 1e-3) and the weighted sum is divided by the
//! summed weights. A volume that fits one window gets exactly one forward pass.

use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::data::resize::Interp;
use crate::data::{Geometry, NiftiFolderSet, Volume};
use crate::nn::UNet3d;
use crate::{Error, Result};

/// How overlapping windows are blended (MONAI's `BlendMode`).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Blend {
    /// Every voxel of a window weighs the same.
    Constant,
    /// A Gaussian centred on the window: its borders weigh less.
    Gaussian,
}

/// The options of sliding-window inference (MONAI's `sliding_window_inference` arguments).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct SlidingWindow {
    /// The window [x, y, z] (the training shape); () = the set's prepared shape, so a
    /// prepared case is one window.
    pub window: Option<[usize; 3]>,
    /// The overlap of neighbouring windows per axis, in [0, 1) (MONAI's default is 0.25).
    pub overlap: f64,
    /// How overlapping windows are blended: "gaussian" or "constant" (MONAI's default).
    pub mode: Blend,
    /// The Gaussian's sigma as a share of the window size per axis (MONAI: 0.125).
    pub sigma_scale: f64,
    /// Windows per forward pass (MONAI's `sw_batch_size`).
    pub batch: usize,
}

impl Default for SlidingWindow {
    fn default() -> Self {
        SlidingWindow {
            window: None,
            overlap: 0.5,
            mode: Blend::Gaussian,
            sigma_scale: 0.125,
            batch: 1,
        }
    }
}

impl SlidingWindow {
    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        if !(0.0..1.0).contains(&self.overlap) {
            return Err(Error::arg(
                "overlap",
                format!("expected a share in [0, 1), got {}", self.overlap),
            ));
        }
        if !(self.sigma_scale.is_finite() && self.sigma_scale > 0.0) {
            return Err(Error::arg(
                "sigma_scale",
                format!("expected a positive number, got {}", self.sigma_scale),
            ));
        }
        if self.batch == 0 {
            return Err(Error::arg("batch", "expected at least 1 window per pass"));
        }
        if let Some(w) = self.window
            && w.contains(&0)
        {
            return Err(Error::arg(
                "window",
                format!("every size must be positive, got {w:?}"),
            ));
        }
        Ok(())
    }
}

/// The start of every window along one axis of `size` voxels (MONAI's `_get_scan_interval`
/// and `dense_patch_slices`); `size >= roi`.
pub fn window_starts(size: usize, roi: usize, overlap: f64) -> Vec<usize> {
    let interval = if roi == size {
        roi
    } else {
        (((roi as f64) * (1.0 - overlap)) as usize).max(1)
    };
    let num = size.div_ceil(interval);
    let count = (0..num)
        .find(|d| d * interval + roi >= size)
        .map_or(1, |d| d + 1);
    (0..count)
        .map(|i| {
            let s = i * interval;
            s - (s + roi).saturating_sub(size)
        })
        .collect()
}

/// MONAI's `compute_importance_map` for a window of `roi` voxels, C order.
pub fn importance_map(roi: [usize; 3], mode: Blend, sigma_scale: f64) -> Vec<f32> {
    let n: usize = roi.iter().product();
    let mut map = match mode {
        Blend::Constant => vec![1f32; n],
        Blend::Gaussian => {
            let g: Vec<Vec<f32>> = (0..3)
                .map(|a| {
                    let sigma = roi[a] as f64 * sigma_scale;
                    let denom = (-2.0 * sigma * sigma) as f32;
                    (0..roi[a])
                        .map(|i| {
                            let x = i as f32 - (roi[a] as f32 - 1.0) / 2.0;
                            (x * x / denom).exp()
                        })
                        .collect()
                })
                .collect();
            let mut m = Vec::with_capacity(n);
            for &a in &g[0] {
                for &b in &g[1] {
                    let ab = a * b;
                    m.extend(g[2].iter().map(|&c| ab * c));
                }
            }
            m
        }
    };
    let lo = map.iter().copied().fold(f32::INFINITY, f32::min).max(1e-3);
    map.iter_mut().for_each(|v| *v = v.max(lo));
    map
}

/// Sliding-window inference of `predictor` over `x` `[N, C, D, H, W]` (any device) with
/// windows of `roi`: `predictor` maps windows `[B, C, roi...]` to `[B, K, roi...]`. Returns
/// the blended prediction `[N, K, D, H, W]`, f32 on the CPU.
pub fn sliding_window(
    x: &Tensor,
    roi: [usize; 3],
    cfg: &SlidingWindow,
    predictor: &mut dyn FnMut(&Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    cfg.validate()?;
    let dims = x.dims();
    if dims.len() != 5 {
        return Err(Error::shape(
            "sliding_window",
            format!("expected an input [N, C, D, H, W], got {dims:?}"),
        ));
    }
    if roi.contains(&0) {
        return Err(Error::arg(
            "window",
            format!("every size must be positive, got {roi:?}"),
        ));
    }
    let n = dims[0];
    let orig = [dims[2], dims[3], dims[4]];
    // Pad to at least one window (zeros, half before, MONAI's `F.pad`).
    let mut x = x.clone();
    let mut pad_before = [0usize; 3];
    for a in 0..3 {
        let diff = roi[a].saturating_sub(orig[a]);
        if diff > 0 {
            pad_before[a] = diff / 2;
            x = x.pad_with_zeros(a + 2, diff / 2, diff - diff / 2)?;
        }
    }
    let size = [0, 1, 2].map(|a| orig[a].max(roi[a]));
    let starts: Vec<Vec<usize>> = (0..3)
        .map(|a| window_starts(size[a], roi[a], cfg.overlap))
        .collect();
    let mut windows = Vec::new();
    for &s0 in &starts[0] {
        for &s1 in &starts[1] {
            for &s2 in &starts[2] {
                windows.push([s0, s1, s2]);
            }
        }
    }
    let weight = importance_map(roi, cfg.mode, cfg.sigma_scale);
    let plane: usize = size.iter().product();
    crate::memory::check(plane.saturating_mul(n), 4, "the sliding-window output")?;
    let mut count = vec![0f32; plane];
    let ones = vec![1f32; weight.len()];
    for w in &windows {
        add_window(&mut count, size, *w, roi, &ones, &weight);
    }
    let per = windows.len();
    let mut out: Vec<f32> = Vec::new();
    let mut classes = 0usize;
    let all: Vec<usize> = (0..n * per).collect();
    for (done, chunk) in all.chunks(cfg.batch).enumerate() {
        crate::stop::check(|| {
            format!(
                "sliding-window inference, window batch {} of {}",
                done + 1,
                all.len().div_ceil(cfg.batch)
            )
        })?;
        let crops = chunk
            .iter()
            .map(|&k| {
                let (b, w) = (k / per, windows[k % per]);
                let mut t = x.narrow(0, b, 1)?;
                for a in 0..3 {
                    t = t.narrow(a + 2, w[a], roi[a])?;
                }
                Ok(t)
            })
            .collect::<Result<Vec<_>>>()?;
        let input = Tensor::cat(&crops, 0)?.contiguous()?;
        let pred = predictor(&input)?;
        let pd = pred.dims().to_vec();
        if pd.len() != 5 || pd[0] != chunk.len() || pd[2..] != roi[..] {
            return Err(Error::shape(
                "sliding_window",
                format!(
                    "the predictor must map windows {:?} to [{}, K, {}, {}, {}], got {pd:?}",
                    input.dims(),
                    chunk.len(),
                    roi[0],
                    roi[1],
                    roi[2]
                ),
            ));
        }
        if out.is_empty() {
            classes = pd[1];
            crate::memory::check(
                plane.saturating_mul(n * classes),
                4,
                "the sliding-window output",
            )?;
            out = vec![0f32; n * classes * plane];
        } else if pd[1] != classes {
            return Err(Error::shape(
                "sliding_window",
                format!("the predictor gave {} channels, then {}", classes, pd[1]),
            ));
        }
        let values: Vec<f32> = pred
            .to_device(&Device::Cpu)?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1()?;
        let win: usize = roi.iter().product();
        for (j, &k) in chunk.iter().enumerate() {
            let (b, w) = (k / per, windows[k % per]);
            for c in 0..classes {
                let src = &values[(j * classes + c) * win..][..win];
                let dst = &mut out[(b * classes + c) * plane..][..plane];
                add_window(dst, size, w, roi, src, &weight);
            }
        }
    }
    for (i, v) in out.iter_mut().enumerate() {
        *v /= count[i % plane];
    }
    let t = Tensor::from_vec(out, (n, classes, size[0], size[1], size[2]), &Device::Cpu)?;
    let mut t = t;
    for a in 0..3 {
        if size[a] != orig[a] {
            t = t.narrow(a + 2, pad_before[a], orig[a])?;
        }
    }
    Ok(t.contiguous()?)
}

/// `dst[window at start] += values · weight` on a C-order grid of `size`.
fn add_window(
    dst: &mut [f32],
    size: [usize; 3],
    start: [usize; 3],
    roi: [usize; 3],
    values: &[f32],
    weight: &[f32],
) {
    for i in 0..roi[0] {
        for j in 0..roi[1] {
            let d = ((start[0] + i) * size[1] + start[1] + j) * size[2] + start[2];
            let s = (i * roi[1] + j) * roi[2];
            let dst = &mut dst[d..d + roi[2]];
            for k in 0..roi[2] {
                dst[k] += values[s + k] * weight[s + k];
            }
        }
    }
}

/// The window a UNet can take: the requested one, else `default`; every size a multiple of
/// `2^depth` and at least the encoder's smallest input.
pub fn unet_window(
    net: &UNet3d,
    window: Option<[usize; 3]>,
    default: Option<[usize; 3]>,
) -> Result<[usize; 3]> {
    let w = window.or(default).ok_or_else(|| {
        Error::arg(
            "window",
            "the cases have no fixed shape (fit: \"none\"); give the window (the training shape)",
        )
    })?;
    let cfg = net.encoder.config();
    let step = 1usize << cfg.depth;
    if w.iter().any(|&s| s % step != 0 || s < cfg.min_input()) {
        return Err(Error::arg(
            "window",
            format!(
                "{w:?} does not fit a UNet of depth {}: every size must be a multiple of {step} and at least {}",
                cfg.depth,
                cfg.min_input()
            ),
        ));
    }
    Ok(w)
}

/// Class probabilities `[K, x, y, z]` (CPU) of a UNet for a prepared image `[x, y, z]`, by
/// sliding windows of `window` (softmax of each window's logits, blended).
pub fn segment_probabilities(
    net: &UNet3d,
    image: &Tensor,
    window: [usize; 3],
    cfg: &SlidingWindow,
    dev: &Device,
) -> Result<Tensor> {
    let (d, h, w) = image.dims3().map_err(|_| {
        Error::shape(
            "segment",
            format!("expected an image [x, y, z], got {:?}", image.dims()),
        )
    })?;
    let x = image.to_dtype(DType::F32)?.reshape((1, 1, d, h, w))?;
    let mut predict = |t: &Tensor| -> Result<Tensor> {
        crate::ops::no_grad(|| -> Result<Tensor> {
            let logits = net.forward_t(&t.to_device(dev)?, false)?;
            Ok(candle_nn::ops::softmax(&logits, 1)?)
        })
    };
    Ok(sliding_window(&x, window, cfg, &mut predict)?.squeeze(0)?)
}

/// A label map of the original image: the UNet's probabilities for the prepared `image`,
/// mapped by `geometry` onto the original grid, stored in `source`'s geometry (its affine,
/// qform and header) as u8.
pub fn segment_prepared(
    net: &UNet3d,
    image: &Tensor,
    geometry: &Geometry,
    source: &Volume,
    window: [usize; 3],
    cfg: &SlidingWindow,
    dev: &Device,
) -> Result<Volume> {
    let p = segment_probabilities(net, image, window, cfg, dev)?;
    let k = p.dims()[0];
    let scores: Vec<f32> = p.flatten_all()?.to_vec1()?;
    let labels = geometry.labels_to_original(&scores, k)?;
    let s = geometry.shape;
    let t = Tensor::from_vec(
        labels.into_iter().map(f32::from).collect::<Vec<_>>(),
        (s[0], s[1], s[2]),
        &Device::Cpu,
    )?;
    source.with_labels(&t)
}

/// Segments case `i` of a NIfTI folder set: a u8 label map with the original image's shape
/// and affine.
pub fn segment_case(
    net: &UNet3d,
    set: &NiftiFolderSet,
    i: usize,
    cfg: &SlidingWindow,
    dev: &Device,
) -> Result<Volume> {
    let window = unet_window(net, cfg.window, set.shape())?;
    let source = Volume::load(set.source(i)?)?;
    segment_prepared(
        net,
        &set.image(i)?,
        &set.geometry(i)?,
        &source,
        window,
        cfg,
        dev,
    )
}

/// Segments any NIfTI file, preprocessed as the set's cases (a new case): a u8 label map with
/// the file's shape and affine.
pub fn segment_file(
    net: &UNet3d,
    set: &NiftiFolderSet,
    path: &Path,
    cfg: &SlidingWindow,
    dev: &Device,
) -> Result<Volume> {
    let window = unet_window(net, cfg.window, set.shape())?;
    let (source, prepared) = set.prepare_file(path)?;
    segment_prepared(
        net,
        &prepared.image,
        &prepared.geometry,
        &source,
        window,
        cfg,
        dev,
    )
}

/// A prepared-space tensor back in case `i`'s original geometry: class scores `[K, x, y, z]`
/// become a u8 label map (argmax after linear interpolation), a u8 label map `[x, y, z]`
/// stays one (per-class interpolation), other values `[x, y, z]` are interpolated linearly
/// (0 where the prepared grid does not reach). The volume has the source's affine and header.
pub fn to_original(set: &NiftiFolderSet, i: usize, t: &Tensor) -> Result<Volume> {
    let g = set.geometry(i)?;
    let source = Volume::load(set.source(i)?)?;
    let s = g.shape;
    let shape = (s[0], s[1], s[2]);
    match (t.rank(), t.dtype()) {
        (4, _) => {
            let k = t.dims()[0];
            let v: Vec<f32> = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
            let l = g.labels_to_original(&v, k)?;
            let l: Vec<f32> = l.into_iter().map(f32::from).collect();
            source.with_labels(&Tensor::from_vec(l, shape, &Device::Cpu)?)
        }
        (3, DType::U8) => {
            let v: Vec<u8> = t.flatten_all()?.to_vec1()?;
            let l: Vec<f32> = g
                .label_map_to_original(&v)?
                .into_iter()
                .map(f32::from)
                .collect();
            source.with_labels(&Tensor::from_vec(l, shape, &Device::Cpu)?)
        }
        (3, _) => {
            let v: Vec<f32> = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
            let o = g.to_original(&v, Interp::Linear, 0.0)?;
            Ok(source
                .with_tensor(&Tensor::from_vec(o, shape, &Device::Cpu)?)?
                .as_float())
        }
        _ => Err(Error::shape(
            "to_original",
            format!(
                "expected scores [K, x, y, z] or a volume [x, y, z] of the prepared shape, got {:?}",
                t.dims()
            ),
        )),
    }
}

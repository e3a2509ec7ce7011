//! `augment_3d`: random views of volumes for contrastive pretext tasks written in scripts
//! (crop-and-resize, flips, brightness and contrast), built on the grid augmentations of
//! [`crate::data::augment`] and the resampling of [`crate::data::resize`].

use candle_core::{DType, Device, Tensor};
use rand::RngExt;
use rand::rngs::StdRng;
use rayon::prelude::*;
use rhai::Map;

use super::api::Domain;
use super::convert::{RResult, ScriptResult, rt_err};
use super::options;
use crate::data::Grid;
use crate::data::augment::brightness_contrast;
use crate::data::resize::{Resize, resize3d};
use crate::streams::{self, Stream};

/// The options of `augment_3d`: the random transforms that make a view, and their seed.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(default)]
pub struct ViewOptions {
    /// The seed; item i of a batch draws from its own stream derived from it, so a view does
    /// not depend on the thread count or on the other items.
    pub seed: u64,
    /// The crop's side as a share of the volume's, drawn per axis from [lo, hi] with
    /// 0 < lo ≤ hi ≤ 1, at a random position, resized back to the volume's shape (linear);
    /// [1, 1] = no crop.
    pub crop: [f64; 2],
    /// Flip each spatial axis with probability 0.5.
    pub flip: bool,
    /// Add a shift drawn from U(-brightness, brightness) (≥ 0; 0 = none).
    pub brightness: f64,
    /// Then scale about the mean by a factor drawn from U(1 - contrast, 1 + contrast)
    /// (in [0, 1); 0 = none).
    pub contrast: f64,
}

impl Default for ViewOptions {
    fn default() -> Self {
        ViewOptions {
            seed: 0,
            crop: [0.6, 1.0],
            flip: true,
            brightness: 0.1,
            contrast: 0.2,
        }
    }
}

impl ViewOptions {
    fn validate(&self) -> RResult<()> {
        let [lo, hi] = self.crop;
        if !(0.0 < lo && lo <= hi && hi <= 1.0) {
            return Err(rt_err(format!(
                "augment_3d: option `crop` must be [lo, hi] with 0 < lo ≤ hi ≤ 1, got [{lo}, {hi}]"
            )));
        }
        if !(self.brightness.is_finite() && self.brightness >= 0.0) {
            return Err(rt_err(format!(
                "augment_3d: option `brightness` must be ≥ 0, got {}",
                self.brightness
            )));
        }
        if !(0.0..1.0).contains(&self.contrast) {
            return Err(rt_err(format!(
                "augment_3d: option `contrast` must be in [0, 1), got {}",
                self.contrast
            )));
        }
        Ok(())
    }

    /// One random view of `g`, drawn from `rng` in a fixed order: crop, flips, intensity.
    fn view(&self, g: &Grid, rng: &mut StdRng) -> crate::Result<Grid> {
        let mut out = crop_resize(g, self.crop, rng)?;
        if self.flip {
            for axis in 0..3 {
                if rng.random_bool(0.5) {
                    out = out.flip(axis);
                }
            }
        }
        let (b, c) = (self.brightness, self.contrast);
        if b == 0.0 && c == 0.0 {
            return Ok(out);
        }
        let shift = if b > 0.0 {
            rng.random_range(-b..b)
        } else {
            0.0
        };
        let factor = if c > 0.0 {
            rng.random_range(1.0 - c..1.0 + c)
        } else {
            1.0
        };
        Ok(brightness_contrast(&out, shift as f32, factor as f32))
    }
}

/// A random block of `g` whose side per axis is a share in `[lo, hi]` of the grid's, resized
/// back to the grid's shape as scikit-image's `resize` (linear) does.
fn crop_resize(g: &Grid, [lo, hi]: [f64; 2], rng: &mut StdRng) -> crate::Result<Grid> {
    let size: [usize; 3] = std::array::from_fn(|a| {
        let share = if lo < hi {
            rng.random_range(lo..=hi)
        } else {
            lo
        };
        ((g.dims[a] as f64 * share).round() as usize).clamp(1, g.dims[a])
    });
    let origin: [isize; 3] =
        std::array::from_fn(|a| rng.random_range(0..=g.dims[a] - size[a]) as isize);
    let block = g.crop(origin, size);
    let plane = size.iter().product::<usize>();
    let mut data = Vec::with_capacity(g.data.len());
    for ch in block.data.chunks(plane) {
        data.extend(resize3d(ch, size, g.dims, Resize::default())?);
    }
    Grid::new(data, g.c, g.dims)
}

/// Random views of a volume `[D, H, W]` or of every item of a batch `[N, C, D, H, W]`, item
/// `i` drawn from stream `i` of the seed, in parallel.
fn augment_3d(x: &Tensor, o: &ViewOptions) -> RResult<Tensor> {
    o.validate()?;
    let dims = x.dims().to_vec();
    let (c, spatial) = match *dims.as_slice() {
        [d, h, w] => (1, [d, h, w]),
        [_, c, d, h, w] => (c, [d, h, w]),
        _ => {
            return Err(rt_err(format!(
                "augment_3d: argument `x`: expected a volume [x, y, z] or a batch [N, C, D, H, W], \
                 got {dims:?}"
            )));
        }
    };
    let values: Vec<f32> = x
        .to_dtype(DType::F32)
        .and_then(|t| t.flatten_all()?.to_vec1())
        .rt()?;
    let each = c * spatial.iter().product::<usize>();
    let views = values
        .par_chunks(each.max(1))
        .enumerate()
        .map(|(i, item)| {
            let g = Grid::new(item.to_vec(), c, spatial)?;
            o.view(&g, &mut streams::rng(o.seed, Stream::Augment, i as u64))
        })
        .collect::<crate::Result<Vec<Grid>>>()
        .rt()?;
    let data: Vec<f32> = views.into_iter().flat_map(|g| g.data).collect();
    Tensor::from_vec(data, dims, &Device::Cpu)
        .and_then(|t| t.to_device(x.device()))
        .rt()
}

/// Registers `augment_3d` in the `volume` domain.
pub fn register(d: &mut Domain) {
    d.func(
        "augment_3d",
        "augment_3d(x: Tensor, opts: Map) -> Tensor",
        "A random view of a volume [x, y, z] or of each item of a batch [N, C, D, H, W] \
         (options below): a crop resized back to the shape, flips, brightness and contrast; \
         seeded, the same at any thread count.",
        |x: Tensor, m: Map| augment_3d(&x, &options::parse("augment_3d", &m)?),
    )
    .options::<ViewOptions>();
}

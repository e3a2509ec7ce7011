//! [`Grid`]: a volume or image as `c` channels over a `[d, h, w]` grid (2D images have
//! `d = 1`), with the spatial operations the samplers need. Samplers work on grids, in Rust,
//! in parallel; tensors are made only for whole batches.

use candle_core::{Device, Tensor};

use crate::{Error, Result};

/// `c` channels of a `[d, h, w]` grid of f32 values, in C order (`[c][d][h][w]`).
#[derive(Clone, Debug, PartialEq)]
pub struct Grid {
    /// The values, `c · d · h · w` of them.
    pub data: Vec<f32>,
    /// Channels.
    pub c: usize,
    /// Spatial size `[d, h, w]`.
    pub dims: [usize; 3],
}

impl Grid {
    /// A grid of zeros.
    pub fn zeros(c: usize, dims: [usize; 3]) -> Self {
        Grid {
            data: vec![0.0; c * dims.iter().product::<usize>()],
            c,
            dims,
        }
    }

    /// A grid from its values; the length must be `c · d · h · w`.
    pub fn new(data: Vec<f32>, c: usize, dims: [usize; 3]) -> Result<Self> {
        if data.len() != c * dims.iter().product::<usize>() {
            return Err(Error::shape(
                "grid",
                format!("{} values do not fill {c} channels of {dims:?}", data.len()),
            ));
        }
        Ok(Grid { data, c, dims })
    }

    /// A single-channel volume from a `[D, H, W]` tensor (e.g. a NIfTI volume's `[x, y, z]`).
    pub fn from_volume(t: &Tensor) -> Result<Self> {
        let (d, h, w) = t.dims3().map_err(|_| {
            Error::shape(
                "grid",
                format!("expected a volume [D, H, W], got {:?}", t.dims()),
            )
        })?;
        Grid::new(
            t.to_dtype(candle_core::DType::F32)?
                .flatten_all()?
                .to_vec1()?,
            1,
            [d, h, w],
        )
    }

    /// An image from a `[C, H, W]` tensor (depth 1).
    pub fn from_image(t: &Tensor) -> Result<Self> {
        let (c, h, w) = t.dims3().map_err(|_| {
            Error::shape(
                "grid",
                format!("expected an image [C, H, W], got {:?}", t.dims()),
            )
        })?;
        Grid::new(
            t.to_dtype(candle_core::DType::F32)?
                .flatten_all()?
                .to_vec1()?,
            c,
            [1, h, w],
        )
    }

    /// Whether this is a 2D image (depth 1).
    pub fn is_2d(&self) -> bool {
        self.dims[0] == 1
    }

    /// Positions per channel.
    pub fn plane(&self) -> usize {
        self.dims.iter().product()
    }

    fn at(&self, c: usize, z: usize, y: usize, x: usize) -> usize {
        ((c * self.dims[0] + z) * self.dims[1] + y) * self.dims[2] + x
    }

    /// The `size` block starting at `origin`; cells outside the grid read as zero.
    pub fn crop(&self, origin: [isize; 3], size: [usize; 3]) -> Grid {
        let mut out = Grid::zeros(self.c, size);
        let [d, h, w] = self.dims.map(|v| v as isize);
        for c in 0..self.c {
            for z in 0..size[0] {
                let sz = origin[0] + z as isize;
                if sz < 0 || sz >= d {
                    continue;
                }
                for y in 0..size[1] {
                    let sy = origin[1] + y as isize;
                    if sy < 0 || sy >= h {
                        continue;
                    }
                    let x0 = origin[2].max(0);
                    let x1 = (origin[2] + size[2] as isize).min(w);
                    if x0 >= x1 {
                        continue;
                    }
                    let src = self.at(c, sz as usize, sy as usize, x0 as usize);
                    let dst = out.at(c, z, y, (x0 - origin[2]) as usize);
                    let n = (x1 - x0) as usize;
                    out.data[dst..dst + n].copy_from_slice(&self.data[src..src + n]);
                }
            }
        }
        out
    }

    /// Reverses spatial axis `axis` (0 = d, 1 = h, 2 = w).
    pub fn flip(&self, axis: usize) -> Grid {
        let [d, h, w] = self.dims;
        let mut out = self.clone();
        for c in 0..self.c {
            for z in 0..d {
                for y in 0..h {
                    for x in 0..w {
                        let (sz, sy, sx) = match axis {
                            0 => (d - 1 - z, y, x),
                            1 => (z, h - 1 - y, x),
                            _ => (z, y, w - 1 - x),
                        };
                        out.data[self.at(c, z, y, x)] = self.data[self.at(c, sz, sy, sx)];
                    }
                }
            }
        }
        out
    }

    /// Permutes the spatial axes: output axis `i` is input axis `perm[i]` (NumPy's `transpose`).
    pub fn transpose(&self, perm: [usize; 3]) -> Grid {
        let dims = perm.map(|p| self.dims[p]);
        let mut out = Grid::zeros(self.c, dims);
        for c in 0..self.c {
            for z in 0..dims[0] {
                for y in 0..dims[1] {
                    for x in 0..dims[2] {
                        let o = [z, y, x];
                        let mut src = [0; 3];
                        for i in 0..3 {
                            src[perm[i]] = o[i];
                        }
                        let v = self.data[self.at(c, src[0], src[1], src[2])];
                        let idx = out.at(c, z, y, x);
                        out.data[idx] = v;
                    }
                }
            }
        }
        out
    }

    /// `np.rot90(v, k, axes=(a, b))`: `k` quarter turns in the plane of axes `a` and `b`.
    pub fn rot90(&self, k: usize, a: usize, b: usize) -> Grid {
        let mut perm = [0, 1, 2];
        perm.swap(a, b);
        match k % 4 {
            0 => self.clone(),
            1 => self.flip(b).transpose(perm),
            2 => self.flip(a).flip(b),
            _ => self.transpose(perm).flip(b),
        }
    }

    /// `self` placed at `origin` inside a zero grid of size `dims` (parts outside are cut).
    pub fn place(&self, dims: [usize; 3], origin: [isize; 3]) -> Grid {
        // Placing at `origin` is cropping at `-origin` with the output's size.
        self.crop(origin.map(|o| -o), dims)
    }

    /// Applies `f` to every value.
    pub fn map(&self, f: impl Fn(f32) -> f32) -> Grid {
        Grid {
            data: self.data.iter().map(|&v| f(v)).collect(),
            ..self.clone()
        }
    }

    /// Rescales the values to [0, 1] (constant grids become 0).
    pub fn min_max(&self) -> Grid {
        let (lo, hi) = self
            .data
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
                (a.min(v), b.max(v))
            });
        let span = hi - lo;
        self.map(|v| if span > 0.0 { (v - lo) / span } else { 0.0 })
    }

    /// The mean value.
    pub fn mean(&self) -> f32 {
        (self.data.iter().map(|&v| v as f64).sum::<f64>() / self.data.len().max(1) as f64) as f32
    }
}

/// Stacks equal-shaped grids into a batch tensor: `[B, C, D, H, W]`, or `[B, C, H, W]` when
/// `planar` (2D images).
pub fn stack(grids: &[Grid], planar: bool, dev: &Device) -> Result<Tensor> {
    let first = grids
        .first()
        .ok_or_else(|| Error::arg("batch", "cannot stack an empty batch"))?;
    if let Some(g) = grids
        .iter()
        .find(|g| g.c != first.c || g.dims != first.dims)
    {
        return Err(Error::shape(
            "batch",
            format!(
                "grids of {} x {:?} and {} x {:?} cannot share a batch",
                first.c, first.dims, g.c, g.dims
            ),
        ));
    }
    let mut data = Vec::with_capacity(grids.len() * first.data.len());
    for g in grids {
        data.extend_from_slice(&g.data);
    }
    let [d, h, w] = first.dims;
    let t = if planar {
        Tensor::from_vec(data, (grids.len(), first.c, h, w), &Device::Cpu)?
    } else {
        Tensor::from_vec(data, (grids.len(), first.c, d, h, w), &Device::Cpu)?
    };
    Ok(t.to_device(dev)?)
}

//! [`Grid`]: a volume or image as `c` channels over a `[d, h, w]` grid (2D images have
//! `d = 1`), the form in which datasets hand items to the samplers and finetuning loops, with
//! the spatial operations the samplers and augmentations need. Samplers work on grids, in Rust,
//! in parallel; tensors are made only for whole batches.

use candle_core::{Device, Tensor};
use rayon::prelude::*;

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
        let all = self.dims.map(|d| 0..d as isize);
        self.crop_within(origin, size, all)
    }

    /// Like [`Grid::crop`], with every cell outside the box `valid` (in this grid's
    /// coordinates) reading as zero too.
    pub fn crop_within(
        &self,
        origin: [isize; 3],
        size: [usize; 3],
        valid: [std::ops::Range<isize>; 3],
    ) -> Grid {
        let mut out = Grid::zeros(self.c, size);
        self.crop_within_into(origin, size, valid, &mut out.data);
        out
    }

    /// [`Grid::crop_within`] into `dst` (`c · size` values, zero on entry).
    pub fn crop_within_into(
        &self,
        origin: [isize; 3],
        size: [usize; 3],
        valid: [std::ops::Range<isize>; 3],
        dst: &mut [f32],
    ) {
        let lo: [isize; 3] = std::array::from_fn(|a| valid[a].start.max(0));
        let hi: [isize; 3] = std::array::from_fn(|a| valid[a].end.min(self.dims[a] as isize));
        let x0 = origin[2].max(lo[2]);
        let x1 = (origin[2] + size[2] as isize).min(hi[2]);
        if x0 >= x1 {
            return;
        }
        let n = (x1 - x0) as usize;
        for c in 0..self.c {
            for z in 0..size[0] {
                let sz = origin[0] + z as isize;
                if sz < lo[0] || sz >= hi[0] {
                    continue;
                }
                for y in 0..size[1] {
                    let sy = origin[1] + y as isize;
                    if sy < lo[1] || sy >= hi[1] {
                        continue;
                    }
                    let src = self.at(c, sz as usize, sy as usize, x0 as usize);
                    let to =
                        ((c * size[0] + z) * size[1] + y) * size[2] + (x0 - origin[2]) as usize;
                    dst[to..to + n].copy_from_slice(&self.data[src..src + n]);
                }
            }
        }
    }

    /// Reverses spatial axis `axis` (0 = d, 1 = h, 2 = w).
    pub fn flip(&self, axis: usize) -> Grid {
        self.orient(Orient::IDENTITY.flip(axis))
    }

    /// Permutes the spatial axes: output axis `i` is input axis `perm[i]` (NumPy's `transpose`).
    pub fn transpose(&self, perm: [usize; 3]) -> Grid {
        self.orient(Orient::IDENTITY.transpose(perm))
    }

    /// `np.rot90(v, k, axes=(a, b))`: `k` quarter turns in the plane of axes `a` and `b`.
    pub fn rot90(&self, k: usize, a: usize, b: usize) -> Grid {
        self.orient(Orient::rot90(k, a, b))
    }

    /// The grid seen through `o` (any composition of flips and axis permutations), in one pass.
    pub fn orient(&self, o: Orient) -> Grid {
        let mut out = Grid::zeros(self.c, self.oriented_dims(o));
        self.orient_into(o, &mut out.data);
        out
    }

    /// The size of the grid seen through `o`.
    pub fn oriented_dims(&self, o: Orient) -> [usize; 3] {
        std::array::from_fn(|k| self.dims[o.src[k]])
    }

    /// [`Grid::orient`] into `dst` (`c · d · h · w` values).
    pub fn orient_into(&self, o: Orient, dst: &mut [f32]) {
        let dims = self.oriented_dims(o);
        let stride_in = [self.dims[1] * self.dims[2], self.dims[2], 1];
        let mut step = [0isize; 3];
        let mut base = 0isize;
        for k in 0..3 {
            let st = stride_in[o.src[k]] as isize;
            if o.rev[k] {
                step[k] = -st;
                base += (dims[k] as isize - 1) * st;
            } else {
                step[k] = st;
            }
        }
        let plane = self.plane();
        for c in 0..self.c {
            let src = &self.data[c * plane..(c + 1) * plane];
            let dst = &mut dst[c * plane..(c + 1) * plane];
            let mut i = 0;
            for z in 0..dims[0] {
                for y in 0..dims[1] {
                    let row = base + z as isize * step[0] + y as isize * step[1];
                    let row_out = &mut dst[i..i + dims[2]];
                    if step[2] == 1 {
                        row_out.copy_from_slice(&src[row as usize..row as usize + dims[2]]);
                    } else {
                        for (x, v) in row_out.iter_mut().enumerate() {
                            *v = src[(row + x as isize * step[2]) as usize];
                        }
                    }
                    i += dims[2];
                }
            }
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

/// A composition of axis flips and permutations: output axis `k` reads input axis `src[k]`,
/// reversed when `rev[k]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Orient {
    src: [usize; 3],
    rev: [bool; 3],
}

impl Orient {
    /// Nothing changed.
    pub const IDENTITY: Orient = Orient {
        src: [0, 1, 2],
        rev: [false; 3],
    };

    /// Then reverse output axis `axis` (`np.flip`).
    pub fn flip(self, axis: usize) -> Orient {
        let mut o = self;
        o.rev[axis] = !o.rev[axis];
        o
    }

    /// Then permute the axes (`np.transpose(_, perm)`).
    pub fn transpose(self, perm: [usize; 3]) -> Orient {
        Orient {
            src: perm.map(|p| self.src[p]),
            rev: perm.map(|p| self.rev[p]),
        }
    }

    /// `np.rot90(_, k, axes=(a, b))`.
    pub fn rot90(k: usize, a: usize, b: usize) -> Orient {
        let mut perm = [0, 1, 2];
        perm.swap(a, b);
        let id = Orient::IDENTITY;
        match k % 4 {
            0 => id,
            1 => id.flip(b).transpose(perm),
            2 => id.flip(a).flip(b),
            _ => id.transpose(perm).flip(b),
        }
    }
}

/// A batch tensor of `items` equal-shaped grids (`c × dims`) written in parallel by
/// `fill(item, values)`, straight into the batch's memory: `[B, C, D, H, W]`, or `[B, C, H, W]`
/// when `planar`.
pub fn assemble(
    items: usize,
    c: usize,
    dims: [usize; 3],
    planar: bool,
    fill: impl Fn(usize, &mut [f32]) -> Result<()> + Sync,
) -> Result<Tensor> {
    let each = c * dims.iter().product::<usize>();
    let mut data = vec![0f32; items * each];
    data.par_chunks_mut(each.max(1))
        .enumerate()
        .try_for_each(|(i, dst)| fill(i, dst))?;
    let [d, h, w] = dims;
    Ok(if planar {
        Tensor::from_vec(data, (items, c, h, w), &Device::Cpu)?
    } else {
        Tensor::from_vec(data, (items, c, d, h, w), &Device::Cpu)?
    })
}

/// Stacks equal-shaped grids into a batch tensor: `[B, C, D, H, W]`, or `[B, C, H, W]` when
/// `planar` (2D images).
pub fn stack<G: std::borrow::Borrow<Grid> + Sync>(
    grids: &[G],
    planar: bool,
    dev: &Device,
) -> Result<Tensor> {
    let grids: Vec<&Grid> = grids.iter().map(|g| g.borrow()).collect();
    let first = *grids
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
    let each = first.data.len();
    let mut data = vec![0f32; grids.len() * each];
    data.par_chunks_mut(each.max(1))
        .zip(grids.par_iter())
        .for_each(|(dst, g)| dst.copy_from_slice(&g.data));
    let [d, h, w] = first.dims;
    let t = if planar {
        Tensor::from_vec(data, (grids.len(), first.c, h, w), &Device::Cpu)?
    } else {
        Tensor::from_vec(data, (grids.len(), first.c, d, h, w), &Device::Cpu)?
    };
    Ok(t.to_device(dev)?)
}

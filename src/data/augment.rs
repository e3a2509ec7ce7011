//! Geometric and intensity augmentations of grids (volumes and images): rotation in a plane,
//! zoom, crop-or-pad, brightness and contrast, and O's 2D loader augmentation that pretraining
//! and fundus finetuning apply before everything else.

use rand::{Rng, RngExt};
use rayon::prelude::*;

use super::grid::Grid;

/// Rotates `g` by `degrees` in the plane of spatial axes `a` and `b` about the centre, with
/// bilinear interpolation and zeros outside (`scipy.ndimage.rotate(reshape=False)`, but order 1
/// instead of scipy's cubic spline).
pub fn rotate_plane(g: &Grid, a: usize, b: usize, degrees: f64) -> Grid {
    let (s, c) = degrees.to_radians().sin_cos();
    let dims = g.dims;
    let other = 3 - a - b;
    let stride = [dims[1] * dims[2], dims[2], 1];
    let centre = [a, b].map(|i| (dims[i] as f64 - 1.0) / 2.0);
    // The interpolation taps of every position of the plane: the same for every slice along
    // the third axis, so they are worked out once.
    let nb = dims[b];
    let table: Vec<Taps> = (0..dims[a] * nb)
        .into_par_iter()
        .map(|i| {
            let (u, v) = (i / nb, i % nb);
            // The source of output (u, v): the inverse rotation.
            let (du, dv) = (u as f64 - centre[0], v as f64 - centre[1]);
            let su = c * du + s * dv + centre[0];
            let sv = -s * du + c * dv + centre[1];
            Taps::bilinear([su, sv], [dims[a], dims[b]], [stride[a], stride[b]])
        })
        .collect();
    let plane = g.plane();
    Grid::par_planes(g.c, dims, |i, slice| {
        let (src, z) = (&g.data[i / dims[0] * plane..][..plane], i % dims[0]);
        for (y, row) in slice.chunks_exact_mut(dims[2]).enumerate() {
            let p = [z, y];
            if other == 2 {
                // The row runs along the third axis: one set of taps for all of it.
                let t = &table[p[a] * nb + p[b]];
                for (x, d) in row.iter_mut().enumerate() {
                    *d = t.apply(src, x);
                }
            } else {
                let taps = &table[p[a] * nb..(p[a] + 1) * nb];
                let shift = p[other] * stride[other];
                for (d, t) in row.iter_mut().zip(taps) {
                    *d = t.apply(src, shift);
                }
            }
        }
    })
}

/// Up to four bilinear taps of one position: offsets in a slice and weights, in the order
/// they are summed.
struct Taps {
    len: usize,
    at: [usize; 4],
    weight: [f64; 4],
}

impl Taps {
    /// The taps of source position `p` in a plane of `size` cells with `stride`s; taps with
    /// zero weight or outside the plane are left out.
    fn bilinear(p: [f64; 2], size: [usize; 2], stride: [usize; 2]) -> Taps {
        let (u0, v0) = (p[0].floor(), p[1].floor());
        let (fu, fv) = (p[0] - u0, p[1] - v0);
        let mut t = Taps {
            len: 0,
            at: [0; 4],
            weight: [0.0; 4],
        };
        for (du, wu) in [(0.0, 1.0 - fu), (1.0, fu)] {
            for (dv, wv) in [(0.0, 1.0 - fv), (1.0, fv)] {
                let (iu, iv) = (u0 + du, v0 + dv);
                if wu * wv == 0.0
                    || iu < 0.0
                    || iv < 0.0
                    || iu >= size[0] as f64
                    || iv >= size[1] as f64
                {
                    continue;
                }
                t.at[t.len] = iu as usize * stride[0] + iv as usize * stride[1];
                t.weight[t.len] = wu * wv;
                t.len += 1;
            }
        }
        t
    }

    /// The interpolated value, reading the slice that starts at `shift` in `src`.
    fn apply(&self, src: &[f32], shift: usize) -> f32 {
        let mut acc = 0.0f64;
        for (&at, &w) in self.at[..self.len].iter().zip(&self.weight) {
            acc += w * src[at + shift] as f64;
        }
        acc as f32
    }
}

/// Resamples `g` by `factors` per axis with linear interpolation, corners aligned
/// (`scipy.ndimage.zoom`, order 1): the output has `round(size · factor)` cells per axis.
pub fn zoom(g: &Grid, factors: [f64; 3]) -> Grid {
    let out_dims: [usize; 3] =
        std::array::from_fn(|i| ((g.dims[i] as f64 * factors[i]).round() as usize).max(1));
    // Per axis and output cell: the two source cells and the weight of the second.
    let coords: [Vec<(usize, usize, f64)>; 3] = std::array::from_fn(|i| {
        let (n_in, n_out) = (g.dims[i], out_dims[i]);
        (0..n_out)
            .map(|o| {
                let x = if n_out > 1 {
                    o as f64 * (n_in - 1) as f64 / (n_out - 1) as f64
                } else {
                    0.0
                };
                let x0 = (x.floor() as usize).min(n_in - 1);
                (x0, (x0 + 1).min(n_in - 1), x - x0 as f64)
            })
            .collect()
    });
    let plane = g.plane();
    Grid::par_planes(g.c, out_dims, |i, slice| {
        let (src, z) = (&g.data[i / out_dims[0] * plane..][..plane], i % out_dims[0]);
        let v =
            |zz: usize, yy: usize, xx: usize| src[(zz * g.dims[1] + yy) * g.dims[2] + xx] as f64;
        let (z0, z1, fz) = coords[0][z];
        for (row, &(y0, y1, fy)) in slice.chunks_exact_mut(out_dims[2]).zip(&coords[1]) {
            for (d, &(x0, x1, fx)) in row.iter_mut().zip(&coords[2]) {
                let c00 = v(z0, y0, x0) * (1.0 - fx) + v(z0, y0, x1) * fx;
                let c01 = v(z0, y1, x0) * (1.0 - fx) + v(z0, y1, x1) * fx;
                let c10 = v(z1, y0, x0) * (1.0 - fx) + v(z1, y0, x1) * fx;
                let c11 = v(z1, y1, x0) * (1.0 - fx) + v(z1, y1, x1) * fx;
                let c0 = c00 * (1.0 - fy) + c01 * fy;
                let c1 = c10 * (1.0 - fy) + c11 * fy;
                *d = (c0 * (1.0 - fz) + c1 * fz) as f32;
            }
        }
    })
}

/// `x += shift`, then `(x - mean)·contrast + mean` (no clipping, as O), in one pass after the
/// mean.
pub fn brightness_contrast(g: &Grid, shift: f32, contrast: f32) -> Grid {
    // The mean of the shifted values, summed in the same order as `Grid::mean` would.
    let sum = g.data.iter().map(|&x| (x + shift) as f64).sum::<f64>();
    let m = (sum / g.data.len().max(1) as f64) as f32;
    g.map(|x| (x + shift - m) * contrast + m)
}

/// Zero-pads `g` (centred) up to `dims` on the axes where it is smaller, then crops a random
/// `dims` block on the axes where it is larger.
pub fn crop_or_pad(g: &Grid, dims: [usize; 3], rng: &mut impl Rng) -> Grid {
    let origin: [isize; 3] = std::array::from_fn(|i| {
        let (have, want) = (g.dims[i] as isize, dims[i] as isize);
        if have <= want {
            -((want - have) / 2)
        } else {
            rng.random_range(0..=(have - want) as i64) as isize
        }
    });
    g.crop(origin, dims)
}

/// O's 2D loader augmentation (`sst/data/image_2d_loader.py`, albumentations): a zoom by
/// U(0.85, 1.15) in the image plane, cropped or zero-padded back to size, then, when `flips`,
/// horizontal and vertical flips with probability 0.5 each. O's rotation task zooms only.
pub fn zoom_flips_2d(g: &Grid, flips: bool, rng: &mut impl Rng) -> Grid {
    let f = rng.random_range(0.85..1.15);
    let mut out = crop_or_pad(&zoom(g, [1.0, f, f]), g.dims, rng);
    if flips {
        if rng.random_bool(0.5) {
            out = out.flip(2);
        }
        if rng.random_bool(0.5) {
            out = out.flip(1);
        }
    }
    out
}

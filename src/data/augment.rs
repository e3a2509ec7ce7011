//! Geometric and intensity augmentations of grids (volumes and images): rotation in a plane,
//! zoom, crop-or-pad, brightness and contrast, and O's 2D loader augmentation that pretraining
//! and fundus finetuning apply before everything else.

use rand::{Rng, RngExt};

use super::grid::Grid;

/// Rotates `g` by `degrees` in the plane of spatial axes `a` and `b` about the centre, with
/// bilinear interpolation and zeros outside (`scipy.ndimage.rotate(reshape=False)`, but order 1
/// instead of scipy's cubic spline).
pub fn rotate_plane(g: &Grid, a: usize, b: usize, degrees: f64) -> Grid {
    let (s, c) = degrees.to_radians().sin_cos();
    let dims = g.dims;
    let ca = (dims[a] as f64 - 1.0) / 2.0;
    let cb = (dims[b] as f64 - 1.0) / 2.0;
    let mut out = Grid::zeros(g.c, dims);
    let other = 3 - a - b;
    for ch in 0..g.c {
        for u in 0..dims[a] {
            for v in 0..dims[b] {
                // The source of output (u, v): the inverse rotation.
                let (du, dv) = (u as f64 - ca, v as f64 - cb);
                let su = c * du + s * dv + ca;
                let sv = -s * du + c * dv + cb;
                let (u0, v0) = (su.floor(), sv.floor());
                let (fu, fv) = (su - u0, sv - v0);
                for w in 0..dims[other] {
                    let mut acc = 0.0f64;
                    for (du, wu) in [(0.0, 1.0 - fu), (1.0, fu)] {
                        for (dv, wv) in [(0.0, 1.0 - fv), (1.0, fv)] {
                            let (iu, iv) = (u0 + du, v0 + dv);
                            if wu * wv == 0.0
                                || iu < 0.0
                                || iv < 0.0
                                || iu >= dims[a] as f64
                                || iv >= dims[b] as f64
                            {
                                continue;
                            }
                            let mut p = [0usize; 3];
                            p[a] = iu as usize;
                            p[b] = iv as usize;
                            p[other] = w;
                            acc += wu * wv * g.data[index(g, ch, p)] as f64;
                        }
                    }
                    let mut q = [0usize; 3];
                    q[a] = u;
                    q[b] = v;
                    q[other] = w;
                    let i = index(&out, ch, q);
                    out.data[i] = acc as f32;
                }
            }
        }
    }
    out
}

fn index(g: &Grid, c: usize, p: [usize; 3]) -> usize {
    ((c * g.dims[0] + p[0]) * g.dims[1] + p[1]) * g.dims[2] + p[2]
}

/// Resamples `g` by `factors` per axis with linear interpolation, corners aligned
/// (`scipy.ndimage.zoom`, order 1): the output has `round(size · factor)` cells per axis.
pub fn zoom(g: &Grid, factors: [f64; 3]) -> Grid {
    let out_dims: [usize; 3] =
        std::array::from_fn(|i| ((g.dims[i] as f64 * factors[i]).round() as usize).max(1));
    let coord = |i: usize, o: usize| -> (usize, usize, f64) {
        let (n_in, n_out) = (g.dims[i], out_dims[i]);
        let x = if n_out > 1 {
            o as f64 * (n_in - 1) as f64 / (n_out - 1) as f64
        } else {
            0.0
        };
        let x0 = (x.floor() as usize).min(n_in - 1);
        (x0, (x0 + 1).min(n_in - 1), x - x0 as f64)
    };
    let mut out = Grid::zeros(g.c, out_dims);
    for ch in 0..g.c {
        for z in 0..out_dims[0] {
            let (z0, z1, fz) = coord(0, z);
            for y in 0..out_dims[1] {
                let (y0, y1, fy) = coord(1, y);
                for x in 0..out_dims[2] {
                    let (x0, x1, fx) = coord(2, x);
                    let v = |zz, yy, xx| g.data[index(g, ch, [zz, yy, xx])] as f64;
                    let c00 = v(z0, y0, x0) * (1.0 - fx) + v(z0, y0, x1) * fx;
                    let c01 = v(z0, y1, x0) * (1.0 - fx) + v(z0, y1, x1) * fx;
                    let c10 = v(z1, y0, x0) * (1.0 - fx) + v(z1, y0, x1) * fx;
                    let c11 = v(z1, y1, x0) * (1.0 - fx) + v(z1, y1, x1) * fx;
                    let c0 = c00 * (1.0 - fy) + c01 * fy;
                    let c1 = c10 * (1.0 - fy) + c11 * fy;
                    let i = index(&out, ch, [z, y, x]);
                    out.data[i] = (c0 * (1.0 - fz) + c1 * fz) as f32;
                }
            }
        }
    }
    out
}

/// `x += shift`, then `(x - mean)·contrast + mean` (no clipping, as O).
pub fn brightness_contrast(g: &Grid, shift: f32, contrast: f32) -> Grid {
    let shifted = g.map(|x| x + shift);
    let m = shifted.mean();
    shifted.map(|x| (x - m) * contrast + m)
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

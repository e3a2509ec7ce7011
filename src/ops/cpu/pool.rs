//! Max and average pooling over `[d, h, w]` planes (2D is the depth-1 case).
//!
//! Max pooling follows PyTorch exactly, ties included: the gradient of a window goes to the
//! first maximal element in scan order (depth, then height, then width), and padding never
//! wins. The backward pass recomputes the winners from the input instead of storing indices.
//! Planes (one per sample and channel) run in parallel.

use rayon::prelude::*;

use super::Real;

/// The geometry of a pooling: `planes` independent `[d, h, w]` planes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolGeom {
    /// Number of planes (`n · c`).
    pub planes: usize,
    /// Plane size `[d, h, w]`.
    pub input: [usize; 3],
    /// Window size per axis.
    pub kernel: [usize; 3],
    /// Stride per axis.
    pub stride: [usize; 3],
    /// Implicit padding per axis (both sides); padded cells never win a max and count as
    /// zeros in an average.
    pub padding: [usize; 3],
}

impl PoolGeom {
    /// The output plane size, or `None` when a window does not fit.
    pub fn output(&self) -> Option<[usize; 3]> {
        let mut out = [0; 3];
        for (i, o) in out.iter_mut().enumerate() {
            let padded = self.input[i] + 2 * self.padding[i];
            if padded < self.kernel[i]
                || self.stride[i] == 0
                || self.padding[i] * 2 > self.kernel[i]
            {
                return None;
            }
            *o = (padded - self.kernel[i]) / self.stride[i] + 1;
        }
        Some(out)
    }

    fn out(&self) -> [usize; 3] {
        self.output().expect("geometry checked by the caller")
    }

    fn in_len(&self) -> usize {
        self.input.iter().product()
    }

    fn out_len(&self) -> usize {
        self.out().iter().product()
    }
}

/// The clipped window `[start, end)` of every output index along one axis.
fn axis_windows(
    n_in: usize,
    k: usize,
    stride: usize,
    pad: usize,
    n_out: usize,
) -> Vec<(usize, usize)> {
    (0..n_out)
        .map(|o| {
            let start = (o * stride) as isize - pad as isize;
            let end = (start + k as isize).min(n_in as isize);
            (start.max(0) as usize, end.max(0) as usize)
        })
        .collect()
}

/// The windows of every axis of `g`'s planes.
fn windows(g: &PoolGeom) -> [Vec<(usize, usize)>; 3] {
    let out = g.out();
    std::array::from_fn(|i| {
        axis_windows(g.input[i], g.kernel[i], g.stride[i], g.padding[i], out[i])
    })
}

/// The output range `lo..hi` along one axis whose input `o·stride + k - pad` lies inside
/// `0..n_in`, for window offset `k`.
fn valid_outputs(n_in: usize, n_out: usize, k: usize, stride: usize, pad: usize) -> (usize, usize) {
    // o·stride + k ≥ pad and o·stride + k - pad ≤ n_in - 1.
    let lo = pad.saturating_sub(k).div_ceil(stride);
    let hi = if n_in + pad > k {
        ((n_in + pad - k - 1) / stride + 1).min(n_out)
    } else {
        0
    };
    (lo.min(hi), hi)
}

/// No input taken yet (an index no plane reaches).
const NONE: u32 = u32::MAX;

/// One window offset of [`max_plane`] for a run of outputs: output `j` sees `vals[j]`, the
/// input at index `base + j·step`, and takes it when it is the first, larger, or the first NaN.
#[inline(always)]
fn update_max<T: Real>(bv: &mut [T], bi: &mut [u32], vals: &[T], base: u32, step: u32) {
    let n = vals.len();
    let (bv, bi) = (&mut bv[..n], &mut bi[..n]);
    for j in 0..n {
        let (v, b, i) = (vals[j], bv[j], bi[j]);
        #[allow(clippy::eq_op)]
        let take = (i == NONE) | (v > b) | ((v != v) & (b == b));
        bv[j] = if take { v } else { b };
        bi[j] = if take { base + j as u32 * step } else { i };
    }
}

/// Max pooling of one plane: each output's value and, where `idx` is given, the flat index of
/// its window's first maximum in scan order (NaN counts as the maximum, like PyTorch).
///
/// The window offsets are the outer loops, in scan order, and one output row is updated per
/// offset: the inner loop runs over contiguous output arrays without branches, which the
/// compiler vectorises (comparisons on pooled activations are unpredictable).
#[inline(always)]
fn max_plane_imp<T: Real>(xp: &[T], g: &PoolGeom, yp: &mut [T], mut idx: Option<&mut [u32]>) {
    let [_, h, w] = g.input;
    let [od, oh, ow] = g.out();
    let [kd, kh, kw] = g.kernel;
    let [sd, sh, sw] = g.stride;
    let [pd, ph, pw] = g.padding;
    let mut bv = vec![T::neg_infinity(); ow];
    let mut bi = vec![NONE; ow];
    let mut vals = vec![T::zero(); ow];
    let xr: Vec<(usize, usize)> = (0..kw).map(|e| valid_outputs(w, ow, e, sw, pw)).collect();
    for zo in 0..od {
        for yo in 0..oh {
            bv.fill(T::neg_infinity());
            bi.fill(NONE);
            for a in 0..kd {
                let z = zo * sd + a;
                if z < pd || z - pd >= g.input[0] {
                    continue;
                }
                for b in 0..kh {
                    let y = yo * sh + b;
                    if y < ph || y - ph >= h {
                        continue;
                    }
                    let row = ((z - pd) * h + y - ph) * w;
                    for (e, &(lo, hi)) in xr.iter().enumerate() {
                        // Input column of output x: x·sw + e - pw (inside for lo ≤ x < hi).
                        let base = row + lo * sw + e - pw;
                        for (j, v) in vals[lo..hi].iter_mut().enumerate() {
                            *v = xp[base + j * sw];
                        }
                        update_max(
                            &mut bv[lo..hi],
                            &mut bi[lo..hi],
                            &vals[lo..hi],
                            base as u32,
                            sw as u32,
                        );
                    }
                }
            }
            let o = (zo * oh + yo) * ow;
            yp[o..o + ow].copy_from_slice(&bv);
            if let Some(ix) = idx.as_deref_mut() {
                ix[o..o + ow].copy_from_slice(&bi);
            }
        }
    }
}

simd_fn! {
    fn max_plane<T: Real>(xp: &[T], g: &PoolGeom, yp: &mut [T], idx: Option<&mut [u32]>) = max_plane_imp;
}

/// Max pooling forward.
pub fn max_forward<T: Real>(x: &[T], g: &PoolGeom) -> Vec<T> {
    let mut y = vec![T::zero(); g.planes * g.out_len()];
    y.par_chunks_mut(g.out_len().max(1))
        .zip(x.par_chunks(g.in_len().max(1)))
        .for_each(|(yp, xp)| max_plane(xp, g, yp, None));
    y
}

/// Max pooling forward that also returns, per output, the index within its plane of the input
/// it took (for [`max_backward_indexed`]).
pub fn max_forward_indexed<T: Real>(x: &[T], g: &PoolGeom) -> (Vec<T>, Vec<u32>) {
    assert!(g.in_len() < u32::MAX as usize, "pooling plane too large");
    let mut y = vec![T::zero(); g.planes * g.out_len()];
    let mut idx = vec![0u32; g.planes * g.out_len()];
    y.par_chunks_mut(g.out_len().max(1))
        .zip(idx.par_chunks_mut(g.out_len().max(1)))
        .zip(x.par_chunks(g.in_len().max(1)))
        .for_each(|((yp, ip), xp)| max_plane(xp, g, yp, Some(ip)));
    (y, idx)
}

/// Max pooling backward: each output gradient goes to its window's first maximum (recomputed
/// from the input).
pub fn max_backward<T: Real>(x: &[T], dy: &[T], g: &PoolGeom) -> Vec<T> {
    let mut dx = vec![T::zero(); g.planes * g.in_len()];
    dx.par_chunks_mut(g.in_len().max(1))
        .zip(
            x.par_chunks(g.in_len().max(1))
                .zip(dy.par_chunks(g.out_len().max(1))),
        )
        .for_each(|(dxp, (xp, dyp))| {
            let mut idx = vec![0u32; dyp.len()];
            let mut scratch = vec![T::zero(); dyp.len()];
            max_plane(xp, g, &mut scratch, Some(&mut idx));
            for (&i, &d) in idx.iter().zip(dyp) {
                dxp[i as usize] += d;
            }
        });
    dx
}

/// Max pooling backward from the indices of [`max_forward_indexed`].
pub fn max_backward_indexed<T: Real>(idx: &[u32], dy: &[T], g: &PoolGeom) -> Vec<T> {
    let mut dx = vec![T::zero(); g.planes * g.in_len()];
    dx.par_chunks_mut(g.in_len().max(1))
        .zip(
            idx.par_chunks(g.out_len().max(1))
                .zip(dy.par_chunks(g.out_len().max(1))),
        )
        .for_each(|(dxp, (ip, dyp))| {
            for (&i, &d) in ip.iter().zip(dyp) {
                dxp[i as usize] += d;
            }
        });
    dx
}

/// Average pooling of one plane.
#[inline(always)]
fn avg_plane_imp<T: Real>(xp: &[T], g: &PoolGeom, win: &[Vec<(usize, usize)>; 3], yp: &mut [T]) {
    let [_, h, w] = g.input;
    let scale = T::one() / T::from(g.kernel.iter().product::<usize>()).expect("window size");
    let mut i = 0;
    for &(z0, z1) in &win[0] {
        for &(y0, y1) in &win[1] {
            for &(x0, x1) in &win[2] {
                let mut s = T::zero();
                for z in z0..z1 {
                    for yy in y0..y1 {
                        let row = (z * h + yy) * w;
                        for &v in &xp[row + x0..row + x1] {
                            s += v;
                        }
                    }
                }
                yp[i] = s * scale;
                i += 1;
            }
        }
    }
}

/// The gradient of [`avg_plane_imp`] for one plane.
#[inline(always)]
fn avg_plane_grad_imp<T: Real>(
    dyp: &[T],
    g: &PoolGeom,
    win: &[Vec<(usize, usize)>; 3],
    dxp: &mut [T],
) {
    let [_, h, w] = g.input;
    let scale = T::one() / T::from(g.kernel.iter().product::<usize>()).expect("window size");
    let mut i = 0;
    for &(z0, z1) in &win[0] {
        for &(y0, y1) in &win[1] {
            for &(x0, x1) in &win[2] {
                let v = dyp[i] * scale;
                for z in z0..z1 {
                    for yy in y0..y1 {
                        let row = (z * h + yy) * w;
                        for d in &mut dxp[row + x0..row + x1] {
                            *d += v;
                        }
                    }
                }
                i += 1;
            }
        }
    }
}

simd_fn! {
    fn avg_plane<T: Real>(xp: &[T], g: &PoolGeom, win: &[Vec<(usize, usize)>; 3], yp: &mut [T]) = avg_plane_imp;
}

simd_fn! {
    fn avg_plane_grad<T: Real>(dyp: &[T], g: &PoolGeom, win: &[Vec<(usize, usize)>; 3], dxp: &mut [T]) = avg_plane_grad_imp;
}

/// Average pooling forward; padded cells count as zeros (PyTorch's `count_include_pad`).
pub fn avg_forward<T: Real>(x: &[T], g: &PoolGeom) -> Vec<T> {
    let win = windows(g);
    let mut y = vec![T::zero(); g.planes * g.out_len()];
    y.par_chunks_mut(g.out_len().max(1))
        .zip(x.par_chunks(g.in_len().max(1)))
        .for_each(|(yp, xp)| avg_plane(xp, g, &win, yp));
    y
}

/// Average pooling backward.
pub fn avg_backward<T: Real>(dy: &[T], g: &PoolGeom) -> Vec<T> {
    let win = windows(g);
    let mut dx = vec![T::zero(); g.planes * g.in_len()];
    dx.par_chunks_mut(g.in_len().max(1))
        .zip(dy.par_chunks(g.out_len().max(1)))
        .for_each(|(dxp, dyp)| avg_plane_grad(dyp, g, &win, dxp));
    dx
}

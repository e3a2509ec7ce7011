//! Nearest-neighbour upsampling by an integer factor and its adjoint.

use rayon::prelude::*;

use super::Real;

/// Repeats every voxel of `planes` `[d, h, w]` planes `f` times along each axis.
pub fn nearest_up<T: Real>(x: &[T], planes: usize, [d, h, w]: [usize; 3], f: usize) -> Vec<T> {
    let (ho, wo) = (h * f, w * f);
    let plane_out = d * f * ho * wo;
    let mut y = vec![T::zero(); planes * plane_out];
    y.par_chunks_mut(plane_out)
        .zip(x.par_chunks(d * h * w))
        .for_each(|(yp, xp)| {
            for z in 0..d {
                for yy in 0..h {
                    let src = &xp[(z * h + yy) * w..(z * h + yy + 1) * w];
                    let first = ((z * f) * ho + yy * f) * wo;
                    for (x, &v) in src.iter().enumerate() {
                        yp[first + x * f..first + (x + 1) * f].fill(v);
                    }
                    for r in 1..f {
                        yp.copy_within(first..first + wo, first + r * wo);
                    }
                    let slab = ho * wo;
                    for r in 1..f {
                        let from = (z * f) * slab + yy * f * wo;
                        yp.copy_within(from..from + f * wo, from + r * slab);
                    }
                }
            }
        });
    y
}

/// Sums every `f³` block of `planes` upsampled planes (the gradient of [`nearest_up`]).
pub fn nearest_up_grad<T: Real>(
    dy: &[T],
    planes: usize,
    [d, h, w]: [usize; 3],
    f: usize,
) -> Vec<T> {
    let (ho, wo) = (h * f, w * f);
    let plane_out = d * f * ho * wo;
    let mut dx = vec![T::zero(); planes * d * h * w];
    dx.par_chunks_mut(d * h * w)
        .zip(dy.par_chunks(plane_out))
        .for_each(|(dxp, dyp)| {
            for zo in 0..d * f {
                for yo in 0..ho {
                    let row = &dyp[(zo * ho + yo) * wo..(zo * ho + yo + 1) * wo];
                    let dst =
                        &mut dxp[((zo / f) * h + yo / f) * w..((zo / f) * h + yo / f + 1) * w];
                    for (x, d) in dst.iter_mut().enumerate() {
                        for &v in &row[x * f..(x + 1) * f] {
                            *d += v;
                        }
                    }
                }
            }
        });
    dx
}

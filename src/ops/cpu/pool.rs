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

    /// The input cells of output cell `(z, y, x)` as clipped ranges per axis.
    fn window(&self, o: [usize; 3]) -> [std::ops::Range<usize>; 3] {
        std::array::from_fn(|i| {
            let start = (o[i] * self.stride[i]) as isize - self.padding[i] as isize;
            let end = (start + self.kernel[i] as isize).min(self.input[i] as isize);
            start.max(0) as usize..end.max(0) as usize
        })
    }

    /// Calls `f(output index, window)` for every output cell of a plane, in order.
    fn for_each_window(&self, mut f: impl FnMut(usize, [std::ops::Range<usize>; 3])) {
        let [od, oh, ow] = self.out();
        let mut i = 0;
        for z in 0..od {
            for y in 0..oh {
                for x in 0..ow {
                    f(i, self.window([z, y, x]));
                    i += 1;
                }
            }
        }
    }

    fn in_len(&self) -> usize {
        self.input.iter().product()
    }

    fn out_len(&self) -> usize {
        self.out().iter().product()
    }
}

/// The flat index of the first maximum of a window (NaN counts as the maximum, like PyTorch).
fn argmax<T: Real>(plane: &[T], g: &PoolGeom, win: &[std::ops::Range<usize>; 3]) -> usize {
    let [_, h, w] = g.input;
    let mut best = usize::MAX;
    let mut best_v = T::neg_infinity();
    for z in win[0].clone() {
        for y in win[1].clone() {
            for x in win[2].clone() {
                let i = (z * h + y) * w + x;
                let v = plane[i];
                if best == usize::MAX || v > best_v || v.is_nan() {
                    best = i;
                    best_v = v;
                    if v.is_nan() {
                        return best;
                    }
                }
            }
        }
    }
    best
}

/// Max pooling forward.
pub fn max_forward<T: Real>(x: &[T], g: &PoolGeom) -> Vec<T> {
    let mut y = vec![T::zero(); g.planes * g.out_len()];
    y.par_chunks_mut(g.out_len())
        .zip(x.par_chunks(g.in_len()))
        .for_each(|(yp, xp)| {
            g.for_each_window(|i, win| yp[i] = xp[argmax(xp, g, &win)]);
        });
    y
}

/// Max pooling backward: each output gradient goes to its window's first maximum.
pub fn max_backward<T: Real>(x: &[T], dy: &[T], g: &PoolGeom) -> Vec<T> {
    let mut dx = vec![T::zero(); g.planes * g.in_len()];
    dx.par_chunks_mut(g.in_len())
        .zip(x.par_chunks(g.in_len()).zip(dy.par_chunks(g.out_len())))
        .for_each(|(dxp, (xp, dyp))| {
            g.for_each_window(|i, win| dxp[argmax(xp, g, &win)] += dyp[i]);
        });
    dx
}

/// Average pooling forward; padded cells count as zeros (PyTorch's `count_include_pad`).
pub fn avg_forward<T: Real>(x: &[T], g: &PoolGeom) -> Vec<T> {
    let [_, h, w] = g.input;
    let scale = T::one() / T::from(g.kernel.iter().product::<usize>()).expect("window size");
    let mut y = vec![T::zero(); g.planes * g.out_len()];
    y.par_chunks_mut(g.out_len())
        .zip(x.par_chunks(g.in_len()))
        .for_each(|(yp, xp)| {
            g.for_each_window(|i, win| {
                let mut s = T::zero();
                for z in win[0].clone() {
                    for yy in win[1].clone() {
                        for v in &xp[(z * h + yy) * w + win[2].start..(z * h + yy) * w + win[2].end]
                        {
                            s += *v;
                        }
                    }
                }
                yp[i] = s * scale;
            });
        });
    y
}

/// Average pooling backward.
pub fn avg_backward<T: Real>(dy: &[T], g: &PoolGeom) -> Vec<T> {
    let [_, h, w] = g.input;
    let scale = T::one() / T::from(g.kernel.iter().product::<usize>()).expect("window size");
    let mut dx = vec![T::zero(); g.planes * g.in_len()];
    dx.par_chunks_mut(g.in_len())
        .zip(dy.par_chunks(g.out_len()))
        .for_each(|(dxp, dyp)| {
            g.for_each_window(|i, win| {
                let v = dyp[i] * scale;
                for z in win[0].clone() {
                    for yy in win[1].clone() {
                        for d in
                            &mut dxp[(z * h + yy) * w + win[2].start..(z * h + yy) * w + win[2].end]
                        {
                            *d += v;
                        }
                    }
                }
            });
        });
    dx
}

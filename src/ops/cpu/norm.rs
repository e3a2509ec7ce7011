//! Batch normalisation in training mode over `[n, c, s]` (`s` = all spatial positions).
//! Statistics are accumulated in f64; channels run in parallel.

use rayon::prelude::*;

use super::Real;

/// Per-channel batch statistics: mean and biased variance.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Mean per channel.
    pub mean: Vec<f64>,
    /// Biased variance per channel.
    pub var: Vec<f64>,
}

/// The `[n, c, s]` layout of a normalised tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dims {
    /// Batch size.
    pub n: usize,
    /// Channels.
    pub c: usize,
    /// Positions per channel and sample.
    pub s: usize,
}

impl Dims {
    fn rows<'a, T>(&self, x: &'a [T], ch: usize) -> impl Iterator<Item = &'a [T]> + use<'a, T> {
        let Dims { n, c, s } = *self;
        (0..n).map(move |b| &x[(b * c + ch) * s..(b * c + ch + 1) * s])
    }

    fn count(&self) -> f64 {
        (self.n * self.s) as f64
    }
}

/// Mean and biased variance per channel (two passes).
pub fn stats<T: Real>(x: &[T], d: Dims) -> Stats {
    let (mean, var) = (0..d.c)
        .into_par_iter()
        .map(|ch| {
            let mean = d.rows(x, ch).flatten().map(|v| v.to64()).sum::<f64>() / d.count();
            let var = d
                .rows(x, ch)
                .flatten()
                .map(|v| (v.to64() - mean).powi(2))
                .sum::<f64>()
                / d.count();
            (mean, var)
        })
        .unzip();
    Stats { mean, var }
}

/// `y = (x - mean) / sqrt(var + eps) · gamma + beta` with the statistics `st`.
pub fn normalize<T: Real>(
    x: &[T],
    gamma: &[T],
    beta: &[T],
    st: &Stats,
    eps: f64,
    d: Dims,
) -> Vec<T> {
    let mut y = vec![T::zero(); x.len()];
    y.par_chunks_mut(d.s)
        .zip(x.par_chunks(d.s))
        .enumerate()
        .for_each(|(row, (yr, xr))| {
            let ch = row % d.c;
            let k = gamma[ch].to64() / (st.var[ch] + eps).sqrt();
            let (scale, shift) = (T::of(k), T::of(beta[ch].to64() - st.mean[ch] * k));
            for (o, &v) in yr.iter_mut().zip(xr) {
                *o = v * scale + shift;
            }
        });
    y
}

/// Gradients of the training-mode normalisation: `dx` (like `x`), `dgamma` and `dbeta`.
pub fn backward<T: Real>(
    x: &[T],
    gamma: &[T],
    dy: &[T],
    eps: f64,
    d: Dims,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let st = stats(x, d);
    let inv: Vec<f64> = st.var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
    let (dgamma, dbeta): (Vec<f64>, Vec<f64>) = (0..d.c)
        .into_par_iter()
        .map(|ch| {
            let (mut dg, mut db) = (0.0, 0.0);
            for (xr, gr) in d.rows(x, ch).zip(d.rows(dy, ch)) {
                for (&xv, &gv) in xr.iter().zip(gr) {
                    db += gv.to64();
                    dg += gv.to64() * (xv.to64() - st.mean[ch]);
                }
            }
            (dg * inv[ch], db)
        })
        .unzip();
    let mut dx = vec![T::zero(); x.len()];
    dx.par_chunks_mut(d.s).enumerate().for_each(|(row, dxr)| {
        let ch = row % d.c;
        // dx = k·(g - dbeta/m - xhat·dgamma/m) with xhat = (x - mean)·inv, as g·a + x·b + c0.
        let k = gamma[ch].to64() * inv[ch];
        let slope = dgamma[ch] / d.count() * inv[ch];
        let a = T::of(k);
        let b = T::of(-k * slope);
        let c0 = T::of(k * (slope * st.mean[ch] - dbeta[ch] / d.count()));
        let xr = &x[row * d.s..(row + 1) * d.s];
        let gr = &dy[row * d.s..(row + 1) * d.s];
        for ((o, &xv), &gv) in dxr.iter_mut().zip(xr).zip(gr) {
            *o = gv * a + xv * b + c0;
        }
    });
    (
        dx,
        dgamma.into_iter().map(T::of).collect(),
        dbeta.into_iter().map(T::of).collect(),
    )
}

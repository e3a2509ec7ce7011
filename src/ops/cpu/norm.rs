//! Batch normalisation in training mode over `[n, c, s]` (`s` = all spatial positions),
//! optionally fused with what precedes it in a UNet block: a per-channel bias and a ReLU,
//! `t = max(x + bias, 0)`, normalised as `(t - mean) / sqrt(var + eps) · gamma + beta`.
//!
//! One task per channel computes its statistics and writes its rows (the rows of one channel
//! usually fit in L2, so the passes after the first are cheap). Sums run in blocks of 16
//! lanes of the element type, each block added to an f64 total.

use rayon::prelude::*;

use super::{Real, SendPtr};

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
    fn row(&self, b: usize, ch: usize) -> std::ops::Range<usize> {
        (b * self.c + ch) * self.s..(b * self.c + ch + 1) * self.s
    }

    fn count(&self) -> f64 {
        (self.n * self.s) as f64
    }
}

/// The input transformation fused in front of the normalisation.
#[derive(Clone, Copy, Debug)]
pub enum Pre<'a, T> {
    /// Normalise `x` itself.
    Identity,
    /// Normalise `max(x + bias[c], 0)`.
    BiasRelu(&'a [T]),
}

impl<T: Real> Pre<'_, T> {
    /// The per-channel map `x ↦ t` of channel `ch`.
    #[inline(always)]
    fn map(&self, ch: usize) -> impl Fn(T) -> T + Copy + use<T> {
        let (relu, b) = match *self {
            Pre::Identity => (false, T::zero()),
            Pre::BiasRelu(bias) => (true, bias[ch]),
        };
        move |v: T| {
            if relu {
                let u = v + b;
                if u > T::zero() { u } else { T::zero() }
            } else {
                v
            }
        }
    }
}

const LANES: usize = 16;
const BLOCK: usize = 1024;

/// `Σ f(x)` over `xs`, summed in lanes of `T` per block of [`BLOCK`] values, in f64 across
/// blocks.
#[inline(always)]
pub(crate) fn sum_of<T: Real>(xs: &[T], f: impl Fn(T) -> T) -> f64 {
    let mut total = 0.0;
    for blk in xs.chunks(BLOCK) {
        let mut acc = [T::zero(); LANES];
        let mut it = blk.chunks_exact(LANES);
        for ch in &mut it {
            for (a, &v) in acc.iter_mut().zip(ch) {
                *a += f(v);
            }
        }
        total += acc.iter().map(|v| v.to64()).sum::<f64>();
        total += it.remainder().iter().map(|&v| f(v).to64()).sum::<f64>();
    }
    total
}

/// `(Σ f(x, y), Σ g(x, y))` over two slices of one length, as [`sum_of`].
#[inline(always)]
pub(crate) fn sum2_of<T: Real>(xs: &[T], ys: &[T], f: impl Fn(T, T) -> (T, T)) -> (f64, f64) {
    let (mut t0, mut t1) = (0.0, 0.0);
    for (bx, by) in xs.chunks(BLOCK).zip(ys.chunks(BLOCK)) {
        let mut a0 = [T::zero(); LANES];
        let mut a1 = [T::zero(); LANES];
        let mut ix = bx.chunks_exact(LANES);
        let mut iy = by.chunks_exact(LANES);
        for (cx, cy) in (&mut ix).zip(&mut iy) {
            for l in 0..LANES {
                let (u, v) = f(cx[l], cy[l]);
                a0[l] += u;
                a1[l] += v;
            }
        }
        t0 += a0.iter().map(|v| v.to64()).sum::<f64>();
        t1 += a1.iter().map(|v| v.to64()).sum::<f64>();
        for (&x, &y) in ix.remainder().iter().zip(iy.remainder()) {
            let (u, v) = f(x, y);
            t0 += u.to64();
            t1 += v.to64();
        }
    }
    (t0, t1)
}

simd_fn! {
    /// Mean and biased variance of channel `ch` of `t = pre(x)` (two passes).
    pub(crate) fn channel_stats<T: Real>(x: &[T], pre: Pre<'_, T>, ch: usize, d: Dims) -> (f64, f64) = channel_stats_imp;
}

#[inline(always)]
fn channel_stats_imp<T: Real>(x: &[T], pre: Pre<'_, T>, ch: usize, d: Dims) -> (f64, f64) {
    let f = pre.map(ch);
    let sum: f64 = (0..d.n).map(|b| sum_of(&x[d.row(b, ch)], f)).sum();
    let mean = sum / d.count();
    let m = T::of(mean);
    let sq: f64 = (0..d.n)
        .map(|b| {
            sum_of(&x[d.row(b, ch)], |v| {
                let c = f(v) - m;
                c * c
            })
        })
        .sum();
    // The correction makes the variance exact although the mean was rounded to T.
    let shift = mean - m.to64();
    (mean, (sq / d.count() - shift * shift).max(0.0))
}

/// Mean and biased variance per channel of `pre(x)`.
pub fn stats<T: Real>(x: &[T], pre: Pre<'_, T>, d: Dims) -> Stats {
    let (mean, var) = (0..d.c)
        .into_par_iter()
        .map(|ch| channel_stats(x, pre, ch, d))
        .unzip();
    Stats { mean, var }
}

/// The per-channel affine map `(scale, shift)` of a normalisation with statistics
/// `(mean, var)`: `y = t · scale + shift`. The forward and backward kernels share it, so a ReLU
/// after the normalisation sees the same values in both.
pub(crate) fn affine<T: Real>(mean: f64, var: f64, eps: f64, gamma: T, beta: T) -> (T, T) {
    let k = gamma.to64() / (var + eps).sqrt();
    (T::of(k), T::of(beta.to64() - mean * k))
}

/// `max(v, 0)` (NaN gives 0, as in the other fused kernels).
#[inline(always)]
pub(crate) fn relu<T: Real>(v: T) -> T {
    if v > T::zero() { v } else { T::zero() }
}

/// `y = (pre(x) - mean) / sqrt(var + eps) · gamma + beta` with the batch statistics, which it
/// also returns; with `post_relu`, `max(y, 0)` (BatchNorm → ReLU, DenseNet's order).
pub fn forward<T: Real>(
    x: &[T],
    pre: Pre<'_, T>,
    gamma: &[T],
    beta: &[T],
    eps: f64,
    post_relu: bool,
    d: Dims,
) -> (Vec<T>, Stats) {
    let mut y: Vec<T> = Vec::with_capacity(x.len());
    let yp = SendPtr(y.as_mut_ptr());
    let (mean, var) = (0..d.c)
        .into_par_iter()
        .map(|ch| {
            let (mean, var) = channel_stats(x, pre, ch, d);
            let (scale, shift) = affine(mean, var, eps, gamma[ch], beta[ch]);
            // SAFETY: the rows of channel ch of y belong to this task alone and lie inside y's
            // capacity.
            unsafe { normalize_rows(x, pre, ch, d, scale, shift, post_relu, yp.get()) };
            (mean, var)
        })
        .unzip();
    // SAFETY: the channel tasks wrote every row of every sample.
    unsafe { y.set_len(x.len()) };
    (y, Stats { mean, var })
}

simd_fn! {
    /// Writes `y = pre(x) · scale + shift` (with `post_relu`, its ReLU) for the rows of
    /// channel `ch`.
    ///
    /// # Safety
    /// `y` addresses a buffer laid out like `x` whose rows of channel `ch` no one else
    /// accesses.
    unsafe fn normalize_rows<T: Real>(
        x: &[T],
        pre: Pre<'_, T>,
        ch: usize,
        d: Dims,
        scale: T,
        shift: T,
        post_relu: bool,
        y: *mut T,
    ) = normalize_rows_imp;
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn normalize_rows_imp<T: Real>(
    x: &[T],
    pre: Pre<'_, T>,
    ch: usize,
    d: Dims,
    scale: T,
    shift: T,
    post_relu: bool,
    y: *mut T,
) {
    let f = pre.map(ch);
    for b in 0..d.n {
        let r = d.row(b, ch);
        // SAFETY: forwarded from normalize_rows' contract.
        let yr = unsafe { std::slice::from_raw_parts_mut(y.add(r.start), d.s) };
        if post_relu {
            for (o, &v) in yr.iter_mut().zip(&x[r]) {
                *o = relu(f(v) * scale + shift);
            }
        } else {
            for (o, &v) in yr.iter_mut().zip(&x[r]) {
                *o = f(v) * scale + shift;
            }
        }
    }
}

/// The gradients of [`forward`]: `dx` (like `x`), `dbias` (empty without a bias), `dgamma`
/// and `dbeta`, from the statistics the forward pass used. `post_relu` is the forward's; the
/// ReLU passes gradient where its output is positive (`beta` recomputes it).
#[allow(clippy::too_many_arguments)]
pub fn backward<T: Real>(
    x: &[T],
    pre: Pre<'_, T>,
    gamma: &[T],
    beta: &[T],
    dy: &[T],
    st: &Stats,
    eps: f64,
    post_relu: bool,
    d: Dims,
) -> (Vec<T>, Vec<T>, Vec<T>, Vec<T>) {
    let mut dx: Vec<T> = Vec::with_capacity(x.len());
    let dxp = SendPtr(dx.as_mut_ptr());
    let per: Vec<(f64, f64, f64)> = (0..d.c)
        .into_par_iter()
        .map(|ch| {
            // SAFETY: the rows of channel ch of dx belong to this task alone and lie inside
            // dx's capacity.
            unsafe {
                backward_channel(
                    x,
                    pre,
                    (gamma[ch], beta[ch]),
                    dy,
                    (st.mean[ch], st.var[ch]),
                    eps,
                    post_relu,
                    d,
                    ch,
                    dxp.get(),
                )
            }
        })
        .collect();
    // SAFETY: the channel tasks wrote every row of every sample.
    unsafe { dx.set_len(x.len()) };
    let dbias = match pre {
        Pre::Identity => Vec::new(),
        Pre::BiasRelu(_) => per.iter().map(|p| T::of(p.0)).collect(),
    };
    (
        dx,
        dbias,
        per.iter().map(|p| T::of(p.1)).collect(),
        per.iter().map(|p| T::of(p.2)).collect(),
    )
}

simd_fn! {
    /// One channel of [`backward`]: writes its rows of `dx` and returns `(dbias, dgamma,
    /// dbeta)`.
    ///
    /// # Safety
    /// `dx` addresses a buffer laid out like `x` whose rows of channel `ch` no one else
    /// accesses.
    unsafe fn backward_channel<T: Real>(
        x: &[T],
        pre: Pre<'_, T>,
        gamma_beta: (T, T),
        dy: &[T],
        stats: (f64, f64),
        eps: f64,
        post_relu: bool,
        d: Dims,
        ch: usize,
        dx: *mut T,
    ) -> (f64, f64, f64) = backward_channel_imp;
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn backward_channel_imp<T: Real>(
    x: &[T],
    pre: Pre<'_, T>,
    (gamma, beta): (T, T),
    dy: &[T],
    (mean, var): (f64, f64),
    eps: f64,
    post_relu: bool,
    d: Dims,
    ch: usize,
    dx: *mut T,
) -> (f64, f64, f64) {
    let m = d.count();
    let f = pre.map(ch);
    let inv = 1.0 / (var + eps).sqrt();
    let (scale, shift) = affine(mean, var, eps, gamma, beta);
    // The gradient reaching the normalisation's output: dy, or dy where the ReLU after
    // it passed the value.
    let gate = move |v: T, g: T| {
        if !post_relu || f(v) * scale + shift > T::zero() {
            g
        } else {
            T::zero()
        }
    };
    let (mut sg, mut sgt) = (0.0, 0.0);
    for b in 0..d.n {
        let r = d.row(b, ch);
        let (a, c) = sum2_of(&x[r.clone()], &dy[r], |v, g| {
            let g = gate(v, g);
            (g, g * f(v))
        });
        sg += a;
        sgt += c;
    }
    let dbeta = sg;
    let dgamma = inv * (sgt - mean * sg);
    // dt = k·(g - dbeta/m - that·dgamma/m) with that = (t - mean)·inv, as g·a + t·b + c0.
    let k = gamma.to64() * inv;
    let slope = dgamma / m * inv;
    let (a, bt) = (T::of(k), T::of(-k * slope));
    let c0 = T::of(k * (slope * mean - dbeta / m));
    let mut dbias = 0.0;
    for b in 0..d.n {
        let r = d.row(b, ch);
        // SAFETY: forwarded from backward_channel's contract.
        let out = unsafe { std::slice::from_raw_parts_mut(dx.add(r.start), d.s) };
        let (xr, gr) = (&x[r.clone()], &dy[r]);
        match pre {
            Pre::Identity => {
                for ((o, &v), &g) in out.iter_mut().zip(xr).zip(gr) {
                    *o = gate(v, g) * a + v * bt + c0;
                }
            }
            Pre::BiasRelu(bias) => {
                let bc = bias[ch];
                for ((o, &v), &g) in out.iter_mut().zip(xr).zip(gr) {
                    let u = v + bc;
                    *o = if u > T::zero() {
                        gate(v, g) * a + u * bt + c0
                    } else {
                        T::zero()
                    };
                }
                dbias += sum_of(out, |v| v);
            }
        }
    }
    (dbias, dgamma, dbeta)
}

/// Per-channel sums of `x [n, c, s]` (the gradient of a bias).
pub fn channel_sums<T: Real>(x: &[T], d: Dims) -> Vec<T> {
    (0..d.c)
        .into_par_iter()
        .map(|ch| T::of((0..d.n).map(|b| sum_of(&x[d.row(b, ch)], |v| v)).sum()))
        .collect()
}

/// `y = x + bias[c]` over `[n, c, s]`.
pub fn add_bias<T: Real>(x: &[T], bias: &[T], d: Dims) -> Vec<T> {
    map_channels(x, d, |ch, v| v + bias[ch])
}

/// `y[b, ch, i] = f(ch, x[b, ch, i])` over `[n, c, s]`, a row (one sample and channel) per task.
fn map_channels<T: Real>(x: &[T], d: Dims, f: impl Fn(usize, T) -> T + Sync) -> Vec<T> {
    let mut y = vec![T::zero(); x.len()];
    y.par_chunks_mut(d.s.max(1))
        .zip(x.par_chunks(d.s.max(1)))
        .enumerate()
        .for_each(|(row, (yr, xr))| {
            let ch = row % d.c;
            for (o, &v) in yr.iter_mut().zip(xr) {
                *o = f(ch, v);
            }
        });
    y
}

/// Inference-mode `y = relu(x + bias[c]) · scale[c] + shift[c]` over `[n, c, s]`, with
/// `p = [bias; scale; shift]` (`3·c` values): a convolution's bias, ReLU and a BatchNorm on its
/// running averages in one pass.
pub fn bias_relu_affine<T: Real>(x: &[T], p: &[T], d: Dims) -> Vec<T> {
    let (bias, rest) = p.split_at(d.c);
    let (scale, shift) = rest.split_at(d.c);
    map_channels(x, d, |ch, v| {
        (v + bias[ch]).max(T::zero()) * scale[ch] + shift[ch]
    })
}

/// Inference-mode `y = relu(x · scale[c] + shift[c])` over `[n, c, s]`, with
/// `p = [scale; shift]` (`2·c` values): a BatchNorm on its running averages and a ReLU.
pub fn affine_relu<T: Real>(x: &[T], p: &[T], d: Dims) -> Vec<T> {
    let (scale, shift) = p.split_at(d.c);
    map_channels(x, d, |ch, v| relu(v * scale[ch] + shift[ch]))
}

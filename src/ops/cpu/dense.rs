//! DenseNet's dense block as one kernel: every layer's BatchNorm → ReLU → 1×1 convolution →
//! BatchNorm → ReLU → 3×3 convolution, its output appended to the block's feature map, and the
//! whole block's backward pass.
//!
//! Layer by layer, the block would concatenate the growing feature map at every layer (copying
//! it), normalise the copy, and keep both for the backward pass; the gradient of every earlier
//! layer's output would then be summed from all later layers' copies. Here the block's output
//! *is* the feature buffer `[n, c_total, h, w]`: the input is copied in once and each layer
//! writes its `growth` channels behind the previous ones. Three things follow:
//!
//! - The batch statistics of a channel are the same for every layer that normalises it (same
//!   values, same batch), so they are computed once, when the channel is written; a layer's
//!   first BatchNorm is then a per-channel affine map with its own `gamma`, `beta`.
//! - The backward pass keeps only the buffer and each layer's bottleneck output (`width`
//!   channels, before its BatchNorm); the normalised, rectified inputs of the convolutions are
//!   recomputed from them (PyTorch's memory-efficient DenseNet does the same).
//! - The gradient of the buffer is one buffer: each layer reads its channels' gradient when
//!   every later layer has added its part, and adds its input gradient to the channels before.
//!
//! Every sum is taken in a fixed order (per channel, or through the convolution kernels'
//! ordered reductions), so results do not depend on the thread count.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::conv::{self, Geom};
use super::norm::{self, Dims, Pre, Stats};
use super::{Real, SendPtr, to_channel_major, to_sample_major};
use crate::ops::timed;

/// The shape of a dense block.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockGeom {
    /// Batch size.
    pub n: usize,
    /// Channels of the block's input.
    pub c0: usize,
    /// Channels each layer adds.
    pub growth: usize,
    /// Channels of each layer's bottleneck (the 1×1 convolution's output).
    pub width: usize,
    /// Number of layers.
    pub layers: usize,
    /// Spatial size `[h, w]`.
    pub hw: [usize; 2],
    /// The BatchNorms' epsilon.
    pub eps: f64,
}

/// Where one layer's parameters start in the block's packed parameter vector: `norm1.weight`,
/// `norm1.bias` (`c_in` each), `conv1.weight` (`width × c_in`), `norm2.weight`, `norm2.bias`
/// (`width` each), `conv2.weight` (`growth × width × 3 × 3`), in this order.
#[derive(Clone, Copy, Debug)]
pub struct LayerParams {
    /// `norm1.weight`.
    pub g1: usize,
    /// `norm1.bias`.
    pub b1: usize,
    /// `conv1.weight`.
    pub w1: usize,
    /// `norm2.weight`.
    pub g2: usize,
    /// `norm2.bias`.
    pub b2: usize,
    /// `conv2.weight`.
    pub w2: usize,
    /// One past the layer's last parameter.
    pub end: usize,
}

impl BlockGeom {
    /// Positions per channel and sample.
    pub fn s(&self) -> usize {
        self.hw[0] * self.hw[1]
    }

    /// Positions per channel over the batch (a row of the channel-major buffer).
    fn m(&self) -> usize {
        self.n * self.s()
    }

    /// Input channels of layer `j`.
    pub fn c_in(&self, j: usize) -> usize {
        self.c0 + j * self.growth
    }

    /// Channels of the block's output.
    pub fn c_total(&self) -> usize {
        self.c_in(self.layers)
    }

    /// The parameter offsets of layer `j`.
    pub fn layer(&self, j: usize) -> LayerParams {
        let start: usize = (0..j).map(|i| self.layer_len(i)).sum();
        let c = self.c_in(j);
        let g1 = start;
        let b1 = g1 + c;
        let w1 = b1 + c;
        let g2 = w1 + self.width * c;
        let b2 = g2 + self.width;
        let w2 = b2 + self.width;
        LayerParams {
            g1,
            b1,
            w1,
            g2,
            b2,
            w2,
            end: w2 + self.growth * self.width * 9,
        }
    }

    fn layer_len(&self, j: usize) -> usize {
        let c = self.c_in(j);
        2 * c + self.width * c + 2 * self.width + self.growth * self.width * 9
    }

    /// Length of the packed parameter vector.
    pub fn param_len(&self) -> usize {
        (0..self.layers).map(|j| self.layer_len(j)).sum()
    }

    /// `c` channel-major rows of the whole batch (one "sample" of `n·h·w` positions).
    fn rows(&self, c: usize) -> Dims {
        Dims {
            n: 1,
            c,
            s: self.m(),
        }
    }

    /// Layer `j`'s 1×1 convolution on channel-major rows: one GEMM over batch × positions.
    fn bottleneck(&self, j: usize) -> Geom {
        Geom {
            n: 1,
            c: self.c_in(j),
            o: self.width,
            input: [1, 1, self.m()],
            kernel: [1, 1, 1],
            padding: [0; 3],
            stride: [1; 3],
        }
    }

    /// A layer's 3×3 convolution (padding 1) on channel-major rows: the batch is the depth
    /// axis of one volume, which a kernel one deep never mixes.
    fn conv3(&self) -> Geom {
        Geom {
            n: 1,
            c: self.width,
            o: self.growth,
            input: [self.n, self.hw[0], self.hw[1]],
            kernel: [1, 3, 3],
            padding: [0, 1, 1],
            stride: [1; 3],
        }
    }
}

/// Which statistics the BatchNorms use.
#[derive(Clone, Debug)]
pub enum BlockNorm {
    /// The batch's own (training).
    Batch,
    /// Running averages (inference): per layer, `norm1`'s (`c_in` channels) and `norm2`'s.
    Running {
        /// `norm1` of each layer.
        bn1: Vec<Stats>,
        /// `norm2` of each layer.
        bn2: Vec<Stats>,
    },
}

/// What the forward pass leaves for the backward pass and the running averages.
#[derive(Debug)]
pub struct BlockState<T> {
    /// Batch statistics of every channel of the output (empty with running averages).
    pub chan: Stats,
    /// Batch statistics of each layer's bottleneck output (`norm2`'s input).
    pub mid: Vec<Stats>,
    /// The output, channel-major `[c_total, n, h, w]` (empty unless kept).
    buf: Vec<T>,
    /// Each layer's bottleneck output, channel-major `[width, n, h, w]` (empty unless kept).
    h: Vec<Vec<T>>,
}

/// Per-channel `(scale, shift)` of a normalisation with `mean`, `var` and parameters `gamma`,
/// `beta` (as many channels as `mean`).
fn affines<T: Real>(
    mean: &[f64],
    var: &[f64],
    eps: f64,
    gamma: &[T],
    beta: &[T],
) -> (Vec<T>, Vec<T>) {
    (0..mean.len())
        .map(|c| norm::affine(mean[c], var[c], eps, gamma[c], beta[c]))
        .unzip()
}

/// `relu(src[c] · scale[c] + shift[c])` for the first `scale.len()` rows of `m` values of
/// `src`, as a new buffer of those rows.
fn affine_relu_rows<T: Real>(src: &[T], m: usize, scale: &[T], shift: &[T]) -> Vec<T> {
    let c = scale.len();
    let mut dst: Vec<T> = Vec::with_capacity(c * m);
    dst.spare_capacity_mut()[..c * m]
        .par_chunks_mut(ROW_CHUNK)
        .enumerate()
        .for_each(|(k, out)| affine_relu_chunk(src, m, k * ROW_CHUNK, scale, shift, out));
    // SAFETY: the chunks cover all c·m values, each written above.
    unsafe { dst.set_len(c * m) };
    dst
}

simd_fn! {
    /// Values `start..start + out.len()` of [`affine_relu_rows`].
    fn affine_relu_chunk<T: Real>(
        src: &[T],
        m: usize,
        start: usize,
        scale: &[T],
        shift: &[T],
        out: &mut [MaybeUninit<T>],
    ) = affine_relu_chunk_imp;
}

#[inline(always)]
fn affine_relu_chunk_imp<T: Real>(
    src: &[T],
    m: usize,
    start: usize,
    scale: &[T],
    shift: &[T],
    out: &mut [MaybeUninit<T>],
) {
    let mut i = 0;
    while i < out.len() {
        let (ch, off) = ((start + i) / m, (start + i) % m);
        let len = (m - off).min(out.len() - i);
        let (a, sh) = (scale[ch], shift[ch]);
        let xs = &src[ch * m + off..ch * m + off + len];
        for (o, &v) in out[i..i + len].iter_mut().zip(xs) {
            o.write(norm::relu(v * a + sh));
        }
        i += len;
    }
}

/// Values per task of the elementwise passes.
const ROW_CHUNK: usize = 16_384;

/// The forward pass: the block's output `[n, c_total, h, w]` from its input `x [n, c0, h, w]`
/// and the packed parameters `p` (see [`LayerParams`]). `keep` keeps what the backward pass
/// needs.
///
/// Inside, the feature map is channel-major (`[c, n, h, w]`): a channel of the whole batch is
/// one row, the 1×1 convolutions are single GEMMs over batch × positions, and the 3×3
/// convolutions see one volume of depth `n`.
pub fn forward<T: Real>(
    x: &[T],
    p: &[T],
    g: &BlockGeom,
    bn: &BlockNorm,
    keep: bool,
) -> (Vec<T>, BlockState<T>) {
    let (m, ct) = (g.m(), g.c_total());
    let mut buf = vec![T::zero(); ct * m];
    to_channel_major(x, g.n, g.c0, g.s(), &mut buf[..g.c0 * m]);
    let batch = matches!(bn, BlockNorm::Batch);
    let mut chan = Stats::default();
    if batch {
        chan = norm::stats(&buf[..g.c0 * m], Pre::Identity, g.rows(g.c0));
    }
    let mut mids = Vec::with_capacity(g.layers);
    let mut hs = Vec::new();
    for j in 0..g.layers {
        let (lp, c_in) = (g.layer(j), g.c_in(j));
        let (sc1, sh1) = match bn {
            BlockNorm::Batch => affines(
                &chan.mean[..c_in],
                &chan.var[..c_in],
                g.eps,
                &p[lp.g1..lp.b1],
                &p[lp.b1..lp.w1],
            ),
            BlockNorm::Running { bn1, .. } => affines(
                &bn1[j].mean,
                &bn1[j].var,
                g.eps,
                &p[lp.g1..lp.b1],
                &p[lp.b1..lp.w1],
            ),
        };
        let t1 = timed(
            || "dense.bnrelu1".into(),
            || affine_relu_rows(&buf, m, &sc1, &sh1),
        );
        let h = timed(
            || format!("dense.conv1 {}->{} {:?}", c_in, g.width, g.hw),
            || conv::forward(&t1, &p[lp.w1..lp.g2], &g.bottleneck(j)),
        );
        drop(t1);
        let mid = match bn {
            BlockNorm::Batch => norm::stats(&h, Pre::Identity, g.rows(g.width)),
            BlockNorm::Running { bn2, .. } => bn2[j].clone(),
        };
        let (sc2, sh2) = affines(
            &mid.mean,
            &mid.var,
            g.eps,
            &p[lp.g2..lp.b2],
            &p[lp.b2..lp.w2],
        );
        let t2 = timed(
            || "dense.bnrelu2".into(),
            || affine_relu_rows(&h, m, &sc2, &sh2),
        );
        let out = timed(
            || format!("dense.conv2 {}->{} {:?}", g.width, g.growth, g.hw),
            || conv::forward(&t2, &p[lp.w2..lp.end], &g.conv3()),
        );
        drop(t2);
        if batch {
            let st = norm::stats(&out, Pre::Identity, g.rows(g.growth));
            chan.mean.extend(st.mean);
            chan.var.extend(st.var);
        }
        buf[c_in * m..(c_in + g.growth) * m].copy_from_slice(&out);
        mids.push(mid);
        if keep {
            hs.push(h);
        }
    }
    let y = to_sample_major(&buf, g.n, ct, g.s());
    let state = BlockState {
        chan,
        mid: mids,
        buf: if keep { buf } else { Vec::new() },
        h: hs,
    };
    (y, state)
}

/// The backward pass of a training-mode forward: from the parameters `p`, the output gradient
/// `dy [n, c_total, h, w]` and the forward's `state` (kept), the input gradient
/// `[n, c0, h, w]` and the packed parameter gradient.
pub fn backward<T: Real>(
    p: &[T],
    dy: &[T],
    g: &BlockGeom,
    state: &BlockState<T>,
) -> (Vec<T>, Vec<T>) {
    assert_eq!(
        state.h.len(),
        g.layers,
        "dense block backward without kept activations"
    );
    let (m, ct) = (g.m(), g.c_total());
    let count = m as f64;
    let buf = &state.buf;
    let mut dbuf = vec![T::zero(); ct * m];
    to_channel_major(dy, g.n, ct, g.s(), &mut dbuf);
    let mut dp = vec![T::zero(); p.len()];
    for j in (0..g.layers).rev() {
        let (lp, c_in) = (g.layer(j), g.c_in(j));
        let h = &state.h[j];
        let mid = &state.mid[j];
        let (sc2, sh2) = affines(
            &mid.mean,
            &mid.var,
            g.eps,
            &p[lp.g2..lp.b2],
            &p[lp.b2..lp.w2],
        );
        let t2 = affine_relu_rows(h, m, &sc2, &sh2);
        let (head, tail) = dbuf.split_at_mut(c_in * m);
        let dout = &tail[..g.growth * m];
        let dw2 = timed(
            || format!("dense.conv2.dw {:?}", g.hw),
            || conv::weight_grad(&t2, dout, &g.conv3()),
        );
        dp[lp.w2..lp.end].copy_from_slice(&dw2);
        drop(t2);
        let dt2 = timed(
            || format!("dense.conv2.dx {:?}", g.hw),
            || conv::input_grad(dout, &p[lp.w2..lp.end], &g.conv3()),
        );
        // norm2 → ReLU backward into dh.
        let mut dh: Vec<T> = vec![T::zero(); g.width * m];
        let dhp = SendPtr(dh.as_mut_ptr());
        let sums: Vec<(f64, f64)> = (0..g.width)
            .into_par_iter()
            .map(|ch| {
                // SAFETY: row ch of dh belongs to this task alone.
                unsafe {
                    bn_relu_backward(
                        &h[ch * m..(ch + 1) * m],
                        &dt2[ch * m..(ch + 1) * m],
                        dhp.get().add(ch * m),
                        false,
                        (mid.mean[ch], mid.var[ch]),
                        g.eps,
                        (p[lp.g2 + ch], p[lp.b2 + ch]),
                        count,
                    )
                }
            })
            .collect();
        for (ch, (dg, db)) in sums.into_iter().enumerate() {
            dp[lp.g2 + ch] = T::of(dg);
            dp[lp.b2 + ch] = T::of(db);
        }
        drop(dt2);
        // conv1 backward.
        let (sc1, sh1) = affines(
            &state.chan.mean[..c_in],
            &state.chan.var[..c_in],
            g.eps,
            &p[lp.g1..lp.b1],
            &p[lp.b1..lp.w1],
        );
        let t1 = affine_relu_rows(buf, m, &sc1, &sh1);
        let dw1 = timed(
            || format!("dense.conv1.dw {:?}", g.hw),
            || conv::weight_grad(&t1, &dh, &g.bottleneck(j)),
        );
        dp[lp.w1..lp.g2].copy_from_slice(&dw1);
        drop(t1);
        let dt1 = timed(
            || format!("dense.conv1.dx {:?}", g.hw),
            || conv::input_grad(&dh, &p[lp.w1..lp.g2], &g.bottleneck(j)),
        );
        drop(dh);
        // norm1 → ReLU backward, added to the gradient of the channels before this layer's.
        let hp = SendPtr(head.as_mut_ptr());
        let sums: Vec<(f64, f64)> = (0..c_in)
            .into_par_iter()
            .map(|ch| {
                // SAFETY: row ch of the gradient belongs to this task alone.
                unsafe {
                    bn_relu_backward(
                        &buf[ch * m..(ch + 1) * m],
                        &dt1[ch * m..(ch + 1) * m],
                        hp.get().add(ch * m),
                        true,
                        (state.chan.mean[ch], state.chan.var[ch]),
                        g.eps,
                        (p[lp.g1 + ch], p[lp.b1 + ch]),
                        count,
                    )
                }
            })
            .collect();
        for (ch, (dg, db)) in sums.into_iter().enumerate() {
            dp[lp.g1 + ch] = T::of(dg);
            dp[lp.b1 + ch] = T::of(db);
        }
    }
    (to_sample_major(&dbuf, g.n, g.c0, g.s()), dp)
}

simd_fn! {
    /// One channel's BatchNorm → ReLU backward: from the normalised input row `x` and the
    /// gradient `g` of the ReLU's output, writes (or with `add`, adds) `dL/dx` to the row at
    /// `out` and returns `(dgamma, dbeta)`, for `relu((x - mean) / sqrt(var + eps) · gamma +
    /// beta)` with batch statistics over `count` values.
    ///
    /// # Safety
    /// `out` addresses `x.len()` values that no one else accesses.
    unsafe fn bn_relu_backward<T: Real>(
        x: &[T],
        g: &[T],
        out: *mut T,
        add: bool,
        stats: (f64, f64),
        eps: f64,
        gamma_beta: (T, T),
        count: f64,
    ) -> (f64, f64) = bn_relu_backward_imp;
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn bn_relu_backward_imp<T: Real>(
    x: &[T],
    g: &[T],
    out: *mut T,
    add: bool,
    (mean, var): (f64, f64),
    eps: f64,
    (gamma, beta): (T, T),
    count: f64,
) -> (f64, f64) {
    let inv = 1.0 / (var + eps).sqrt();
    let (scale, shift) = norm::affine(mean, var, eps, gamma, beta);
    let mt = T::of(mean);
    let gate = move |v: T, g: T| {
        if v * scale + shift > T::zero() {
            g
        } else {
            T::zero()
        }
    };
    let (sg, sgc) = norm::sum2_of(x, g, |v, gv| {
        let gv = gate(v, gv);
        (gv, gv * (v - mt))
    });
    let dbeta = sg;
    let dgamma = inv * (sgc - (mean - mt.to64()) * sg);
    let k = gamma.to64() * inv;
    let slope = dgamma / count * inv;
    let (a, bt) = (T::of(k), T::of(-k * slope));
    let c0 = T::of(k * (slope * mean - dbeta / count));
    // SAFETY: forwarded from bn_relu_backward's contract.
    let out = unsafe { std::slice::from_raw_parts_mut(out, x.len()) };
    if add {
        for ((o, &v), &gv) in out.iter_mut().zip(x).zip(g) {
            *o += gate(v, gv) * a + v * bt + c0;
        }
    } else {
        for ((o, &v), &gv) in out.iter_mut().zip(x).zip(g) {
            *o = gate(v, gv) * a + v * bt + c0;
        }
    }
    (dgamma, dbeta)
}

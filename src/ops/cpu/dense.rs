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

use rayon::prelude::*;

use super::conv::{self, Geom};
use super::norm::{self, Dims, Pre, Stats};
use super::{Real, SendPtr};
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

    fn dims(&self, c: usize) -> Dims {
        Dims {
            n: self.n,
            c,
            s: self.s(),
        }
    }

    /// Layer `j`'s 1×1 convolution.
    fn bottleneck(&self, j: usize) -> Geom {
        Geom {
            n: self.n,
            c: self.c_in(j),
            o: self.width,
            input: [1, self.hw[0], self.hw[1]],
            kernel: [1, 1, 1],
            padding: [0; 3],
            stride: [1; 3],
        }
    }

    /// A layer's 3×3 convolution (padding 1).
    fn conv3(&self) -> Geom {
        Geom {
            n: self.n,
            c: self.width,
            o: self.growth,
            input: [1, self.hw[0], self.hw[1]],
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
    /// Each layer's bottleneck output `[n, width, h, w]` (empty unless kept).
    pub h: Vec<Vec<T>>,
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

/// `relu(src[:, c] · scale[c] + shift[c])` for the first `c` channels of `src [n, src_c, s]`,
/// as a new `[n, c, s]`.
fn affine_relu_rows<T: Real>(
    src: &[T],
    src_c: usize,
    c: usize,
    s: usize,
    scale: &[T],
    shift: &[T],
) -> Vec<T> {
    let n = src.len() / (src_c * s).max(1);
    let mut dst: Vec<T> = Vec::with_capacity(n * c * s);
    dst.spare_capacity_mut()[..n * c * s]
        .par_chunks_mut(s.max(1))
        .enumerate()
        .for_each(|(r, out)| {
            let (b, ch) = (r / c, r % c);
            let xs = &src[(b * src_c + ch) * s..(b * src_c + ch + 1) * s];
            let (a, sh) = (scale[ch], shift[ch]);
            for (o, &v) in out.iter_mut().zip(xs) {
                o.write(norm::relu(v * a + sh));
            }
        });
    // SAFETY: every row of the n·c rows was written above.
    unsafe { dst.set_len(n * c * s) };
    dst
}

/// Channels `c1..c1 + c` of `src [n, src_c, s]` as a new `[n, c, s]`.
fn gather<T: Real>(src: &[T], src_c: usize, c1: usize, c: usize, s: usize) -> Vec<T> {
    let n = src.len() / (src_c * s).max(1);
    let mut dst = Vec::with_capacity(n * c * s);
    for b in 0..n {
        dst.extend_from_slice(&src[(b * src_c + c1) * s..(b * src_c + c1 + c) * s]);
    }
    dst
}

/// Batch statistics of every channel of `x [n, c, s]`.
fn stats_of<T: Real>(x: &[T], d: Dims) -> Stats {
    norm::stats(x, Pre::Identity, d)
}

/// The forward pass: the block's output `[n, c_total, h, w]` from its input `x [n, c0, h, w]`
/// and the packed parameters `p` (see [`LayerParams`]). `keep` keeps what the backward pass
/// needs.
pub fn forward<T: Real>(
    x: &[T],
    p: &[T],
    g: &BlockGeom,
    bn: &BlockNorm,
    keep: bool,
) -> (Vec<T>, BlockState<T>) {
    let (s, ct) = (g.s(), g.c_total());
    let mut buf = vec![T::zero(); g.n * ct * s];
    buf.par_chunks_mut(ct * s)
        .zip(x.par_chunks(g.c0 * s))
        .for_each(|(dst, src)| dst[..g.c0 * s].copy_from_slice(src));
    let batch = matches!(bn, BlockNorm::Batch);
    let mut chan = Stats::default();
    if batch {
        chan = stats_of(x, g.dims(g.c0));
    }
    let mut state = BlockState {
        chan: Stats::default(),
        mid: Vec::new(),
        h: Vec::new(),
    };
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
        let t1 = timed(|| "dense.bnrelu1".into(), || affine_relu_rows(&buf, ct, c_in, s, &sc1, &sh1));
        let h = timed(|| format!("dense.conv1 {}->{} {:?}", c_in, g.width, g.hw), || conv::forward(&t1, &p[lp.w1..lp.g2], &g.bottleneck(j)));
        drop(t1);
        let mid = match bn {
            BlockNorm::Batch => stats_of(&h, g.dims(g.width)),
            BlockNorm::Running { bn2, .. } => bn2[j].clone(),
        };
        let (sc2, sh2) = affines(
            &mid.mean,
            &mid.var,
            g.eps,
            &p[lp.g2..lp.b2],
            &p[lp.b2..lp.w2],
        );
        let t2 = timed(|| "dense.bnrelu2".into(), || affine_relu_rows(&h, g.width, g.width, s, &sc2, &sh2));
        let out = timed(|| format!("dense.conv2 {}->{} {:?}", g.width, g.growth, g.hw), || conv::forward(&t2, &p[lp.w2..lp.end], &g.conv3()));
        drop(t2);
        if batch {
            let st = stats_of(&out, g.dims(g.growth));
            chan.mean.extend(st.mean);
            chan.var.extend(st.var);
        }
        buf.par_chunks_mut(ct * s)
            .zip(out.par_chunks(g.growth * s))
            .for_each(|(dst, src)| dst[c_in * s..(c_in + g.growth) * s].copy_from_slice(src));
        state.mid.push(mid);
        if keep {
            state.h.push(h);
        }
    }
    state.chan = chan;
    (buf, state)
}

/// The backward pass of a training-mode forward: from the output `buf`, the parameters `p`,
/// the output gradient `dy` and the forward's `state` (kept), the input gradient
/// `[n, c0, h, w]` and the packed parameter gradient.
pub fn backward<T: Real>(
    buf: &[T],
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
    let (s, ct, n) = (g.s(), g.c_total(), g.n);
    let m = (n * s) as f64;
    let mut dbuf = dy.to_vec();
    let mut dp = vec![T::zero(); p.len()];
    for j in (0..g.layers).rev() {
        let (lp, c_in) = (g.layer(j), g.c_in(j));
        let dout = gather(&dbuf, ct, c_in, g.growth, s);
        let h = &state.h[j];
        let mid = &state.mid[j];
        let (sc2, sh2) = affines(
            &mid.mean,
            &mid.var,
            g.eps,
            &p[lp.g2..lp.b2],
            &p[lp.b2..lp.w2],
        );
        let t2 = affine_relu_rows(h, g.width, g.width, s, &sc2, &sh2);
        let dw2 = timed(|| format!("dense.conv2.dw {:?}", g.hw), || conv::weight_grad(&t2, &dout, &g.conv3()));
        dp[lp.w2..lp.end].copy_from_slice(&dw2);
        drop(t2);
        let dt2 = timed(|| format!("dense.conv2.dx {:?}", g.hw), || conv::input_grad(&dout, &p[lp.w2..lp.end], &g.conv3()));
        drop(dout);
        // norm2 → ReLU backward into dh.
        let mut dh: Vec<T> = vec![T::zero(); n * g.width * s];
        let dhp = SendPtr(dh.as_mut_ptr());
        let sums: Vec<(f64, f64)> = (0..g.width)
            .into_par_iter()
            .map(|ch| {
                let side = Side {
                    x: h,
                    xc: g.width,
                    g: &dt2,
                    gc: g.width,
                    gch: ch,
                    out: dhp,
                    add: false,
                };
                side.bn_relu_backward(
                    ch,
                    n,
                    s,
                    (mid.mean[ch], mid.var[ch]),
                    g.eps,
                    (p[lp.g2 + ch], p[lp.b2 + ch]),
                    m,
                )
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
        let t1 = affine_relu_rows(buf, ct, c_in, s, &sc1, &sh1);
        let dw1 = timed(|| format!("dense.conv1.dw {:?}", g.hw), || conv::weight_grad(&t1, &dh, &g.bottleneck(j)));
        dp[lp.w1..lp.g2].copy_from_slice(&dw1);
        drop(t1);
        let dt1 = timed(|| format!("dense.conv1.dx {:?}", g.hw), || conv::input_grad(&dh, &p[lp.w1..lp.g2], &g.bottleneck(j)));
        drop(dh);
        // norm1 → ReLU backward, added to the buffer's gradient.
        let dbp = SendPtr(dbuf.as_mut_ptr());
        let sums: Vec<(f64, f64)> = (0..c_in)
            .into_par_iter()
            .map(|ch| {
                let side = Side {
                    x: buf,
                    xc: ct,
                    g: &dt1,
                    gc: c_in,
                    gch: ch,
                    out: dbp,
                    add: true,
                };
                side.bn_relu_backward(
                    ch,
                    n,
                    s,
                    (state.chan.mean[ch], state.chan.var[ch]),
                    g.eps,
                    (p[lp.g1 + ch], p[lp.b1 + ch]),
                    m,
                )
            })
            .collect();
        for (ch, (dg, db)) in sums.into_iter().enumerate() {
            dp[lp.g1 + ch] = T::of(dg);
            dp[lp.b1 + ch] = T::of(db);
        }
    }
    (gather(&dbuf, ct, 0, g.c0, s), dp)
}

/// The operands of one channel's BatchNorm → ReLU backward: the normalised input `x` with
/// `xc` channels (the output gradient is written to channel `ch` of `out`, laid out like
/// `x`), and the gradient `g` of the ReLU's output with `gc` channels, at channel `gch`.
struct Side<'a, T> {
    x: &'a [T],
    xc: usize,
    g: &'a [T],
    gc: usize,
    gch: usize,
    out: SendPtr<T>,
    /// Add to `out` instead of overwriting it.
    add: bool,
}

impl<T: Real> Side<'_, T> {
    /// Writes (or adds) `dL/dx` of channel `ch` and returns `(dgamma, dbeta)`, for
    /// `relu((x - mean) / sqrt(var + eps) · gamma + beta)` with batch statistics over `m`
    /// values.
    #[allow(clippy::too_many_arguments)]
    fn bn_relu_backward(
        &self,
        ch: usize,
        n: usize,
        s: usize,
        (mean, var): (f64, f64),
        eps: f64,
        (gamma, beta): (T, T),
        m: f64,
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
        let (mut sg, mut sgc) = (0.0, 0.0);
        for b in 0..n {
            let xr = &self.x[(b * self.xc + ch) * s..(b * self.xc + ch + 1) * s];
            let gr = &self.g[(b * self.gc + self.gch) * s..(b * self.gc + self.gch + 1) * s];
            let (u, v) = norm::sum2_of(xr, gr, |v, gv| {
                let gv = gate(v, gv);
                (gv, gv * (v - mt))
            });
            sg += u;
            sgc += v;
        }
        let dbeta = sg;
        let dgamma = inv * (sgc - (mean - mt.to64()) * sg);
        let k = gamma.to64() * inv;
        let slope = dgamma / m * inv;
        let (a, bt) = (T::of(k), T::of(-k * slope));
        let c0 = T::of(k * (slope * mean - dbeta / m));
        for b in 0..n {
            let xr = &self.x[(b * self.xc + ch) * s..(b * self.xc + ch + 1) * s];
            let gr = &self.g[(b * self.gc + self.gch) * s..(b * self.gc + self.gch + 1) * s];
            // SAFETY: row (b, ch) of `out` belongs to this channel's task alone.
            let out = unsafe {
                std::slice::from_raw_parts_mut(self.out.get().add((b * self.xc + ch) * s), s)
            };
            if self.add {
                for ((o, &v), &gv) in out.iter_mut().zip(xr).zip(gr) {
                    *o += gate(v, gv) * a + v * bt + c0;
                }
            } else {
                for ((o, &v), &gv) in out.iter_mut().zip(xr).zip(gr) {
                    *o = gate(v, gv) * a + v * bt + c0;
                }
            }
        }
        (dgamma, dbeta)
    }
}

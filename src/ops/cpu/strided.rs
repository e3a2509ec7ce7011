//! Direct f32 AVX-512 kernels for strided 2D convolutions with few input channels: DenseNet's
//! 7×7 stride-2 stem (3 channels in). Forward and weight gradient; the stem's input needs no
//! gradient (other strided convolutions keep the im2col route for theirs).
//!
//! im2col would copy every input value into about `kh·kw / (sh·sw)` columns (12 for the stem)
//! before a GEMM with only `c·kh·kw = 147` rows; here the taps are read in place. The input is
//! zero-padded once in the phase-split layout of [`super::conv::pad`] (each padded row stored as
//! its `sw` column phases), so the 16 outputs of a vector read 16 consecutive values for every
//! tap.
//!
//! - Forward: a register tile is [`RO`] output channels × up to [`V`] vectors of one output
//!   row; per (input channel, tap) it costs up to `V` loads, `RO` broadcasts of pre-packed
//!   weights and `RO·V` FMAs.
//! - Weight gradient: a task owns [`RW`] output channels and all their taps; for each sample it
//!   runs through the (input channel, kernel row) pairs with a register tile of `RW × kw`
//!   16-lane partial sums kept in memory between samples, and reduces the lanes at the end.
//!   The positions are summed in one fixed order, so results do not depend on the thread count.

use rayon::prelude::*;

use super::SendPtr;
use super::conv::{Geom, pad};

/// Output channels per forward register tile.
const RO: usize = 8;
/// Vectors (of 16 outputs of one row) per forward register tile.
const V: usize = 3;
/// Output channels per weight-gradient task.
const RW: usize = 3;
/// Widest kernel the weight-gradient tile holds.
const KW_MAX: usize = 7;
/// Fewer output positions (all samples) than this are left to im2col + GEMM.
const MIN_POSITIONS: usize = 256;

fn cpu_ok() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512vl")
}

/// Whether this module computes the forward pass and weight gradient of `g`: a 2D convolution
/// (depth 1) with a stride above 1 and at most 16 input channels, on this CPU.
pub(crate) fn supports(g: &Geom) -> bool {
    let Some([od, oh, ow]) = g.output() else {
        return false;
    };
    g.input[0] == 1
        && g.kernel[0] == 1
        && g.padding[0] == 0
        && g.stride[0] == 1
        && od == 1
        && (g.stride[1] > 1 || g.stride[2] > 1)
        && g.kernel[2] <= KW_MAX
        && (1..=16).contains(&g.c)
        && g.o > 0
        && g.n * oh * ow >= MIN_POSITIONS
        && cpu_ok()
}

/// Lane masks of `nv` vectors covering `nx` outputs.
fn lane_masks(nx: usize) -> [u16; V] {
    std::array::from_fn(|v| {
        let lanes = nx.saturating_sub(16 * v).min(16);
        ((1u32 << lanes) - 1) as u16
    })
}

/// The forward convolution `y [n, o, oh, ow]`. The caller checks [`supports`].
pub(crate) fn forward(x: &[f32], w: &[f32], g: &Geom) -> Vec<f32> {
    debug_assert!(supports(g));
    let [_, oh, ow] = g.out();
    let [_, kh, kw] = g.kernel;
    let taps = kh * kw;
    let xp = pad(x, g.n * g.c, g);
    let lp = g.phased_len();
    let blocks = g.o.div_ceil(RO);
    // Weights packed as [block][c][tap][RO], zero past `o`.
    let mut packed = vec![0f32; blocks * g.c * taps * RO];
    for o in 0..g.o {
        for c in 0..g.c {
            for t in 0..taps {
                packed[(((o / RO) * g.c + c) * taps + t) * RO + o % RO] =
                    w[(o * g.c + c) * taps + t];
            }
        }
    }
    let p = oh * ow;
    let mut y = vec![0f32; g.n * g.o * p];
    let yp = SendPtr(y.as_mut_ptr());
    // Items: (sample, run of output rows, channel block), about 64 or more of them.
    let rows_per = (g.n * oh * blocks / 64).clamp(1, oh);
    let items: Vec<(usize, usize, usize)> = (0..g.n)
        .flat_map(|n| {
            (0..oh)
                .step_by(rows_per)
                .flat_map(move |r| (0..blocks).map(move |b| (n, r, b)))
        })
        .collect();
    let geo = Tile {
        c: g.c,
        lp,
        prow: g.stride[2] * g.phased_width(),
        wq: g.phased_width(),
        kh,
        kw,
        sh: g.stride[1],
        sw: g.stride[2],
    };
    items.into_par_iter().for_each(|(n, r0, blk)| {
        let xs = &xp[n * g.c * lp..(n + 1) * g.c * lp];
        let wk = &packed[blk * g.c * taps * RO..(blk + 1) * g.c * taps * RO];
        let ro = RO.min(g.o - blk * RO);
        for yo in r0..oh.min(r0 + rows_per) {
            for x0 in (0..ow).step_by(16 * V) {
                let nx = (ow - x0).min(16 * V);
                // SAFETY: the tile writes outputs x0..x0+nx of row yo of channels
                // blk·RO..blk·RO+ro of sample n, which no other tile writes; the reads stay
                // inside the sample's padded planes (see `Tile::forward`).
                unsafe {
                    let out = yp.get().add((n * g.o + blk * RO) * p + yo * ow + x0);
                    imp::forward(&geo, xs, wk, yo, x0, nx, out, p, ro);
                }
            }
        }
    });
    y
}

/// The weight gradient `dw [o, c, kh, kw]` from `x [n, c, h, w]` and `dy [n, o, oh, ow]`. The
/// caller checks [`supports`].
pub(crate) fn weight_grad(x: &[f32], dy: &[f32], g: &Geom) -> Vec<f32> {
    debug_assert!(supports(g));
    let [_, oh, ow] = g.out();
    let [_, kh, kw] = g.kernel;
    let xp = pad(x, g.n * g.c, g);
    let lp = g.phased_len();
    let p = oh * ow;
    let geo = Tile {
        c: g.c,
        lp,
        prow: g.stride[2] * g.phased_width(),
        wq: g.phased_width(),
        kh,
        kw,
        sh: g.stride[1],
        sw: g.stride[2],
    };
    let blocks = g.o.div_ceil(RW);
    let parts: Vec<Vec<f32>> = (0..blocks)
        .into_par_iter()
        .map(|blk| {
            let o0 = blk * RW;
            let ro = RW.min(g.o - o0);
            // 16-lane partial sums per (c, ky, i, kx), summed over the samples in order.
            let mut acc = vec![0f32; g.c * kh * RW * KW_MAX * 16];
            for n in 0..g.n {
                let xs = &xp[n * g.c * lp..(n + 1) * g.c * lp];
                // Rows of channels beyond `o` repeat channel o0; their sums are dropped.
                let dys: [&[f32]; RW] = std::array::from_fn(|i| {
                    let o = if i < ro { o0 + i } else { o0 };
                    &dy[(n * g.o + o) * p..(n * g.o + o + 1) * p]
                });
                for c in 0..g.c {
                    for ky in 0..kh {
                        let a = &mut acc[(c * kh + ky) * RW * KW_MAX * 16..][..RW * KW_MAX * 16];
                        // SAFETY: reads stay inside the sample's padded planes and dy rows
                        // (masked at the end of each output row).
                        unsafe { imp::weight_grad(&geo, xs, dys, c, ky, oh, ow, a) };
                    }
                }
            }
            // Reduce the lanes: dw[o0 + i][c][ky][kx].
            let mut dw = vec![0f32; ro * g.c * kh * kw];
            for c in 0..g.c {
                for ky in 0..kh {
                    for i in 0..ro {
                        for kx in 0..kw {
                            let lanes =
                                &acc[((((c * kh + ky) * RW + i) * KW_MAX) + kx) * 16..][..16];
                            dw[((i * g.c + c) * kh + ky) * kw + kx] = lanes.iter().sum();
                        }
                    }
                }
            }
            dw
        })
        .collect();
    parts.concat()
}

/// The geometry a tile needs: input channels, padded plane length, padded row length (all
/// phases), values per phase, kernel, stride.
struct Tile {
    c: usize,
    lp: usize,
    prow: usize,
    wq: usize,
    kh: usize,
    kw: usize,
    sh: usize,
    sw: usize,
}

mod imp {
    use std::arch::x86_64::*;

    use super::{KW_MAX, RO, RW, Tile, V, lane_masks};

    /// One forward tile: outputs `x0..x0 + nx` (`nx ≤ 16·V`) of output row `yo`, `RO` output
    /// channels (the first `ro` stored, channel stride `p`).
    ///
    /// # Safety
    /// AVX-512F/VL; `xs` is one sample's padded input `[c][lp]` (layout of `conv::pad`), `wk`
    /// the packed weights `[c][kh·kw][RO]` of one channel block, `out` the first output of the
    /// tile in channel `blk·RO`, with `ro` channels writable.
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn forward(
        t: &Tile,
        xs: &[f32],
        wk: &[f32],
        yo: usize,
        x0: usize,
        nx: usize,
        out: *mut f32,
        p: usize,
        ro: usize,
    ) {
        // SAFETY: forwarded.
        unsafe {
            match nx.div_ceil(16) {
                1 => tile::<1>(t, xs, wk, yo, x0, nx, out, p, ro),
                2 => tile::<2>(t, xs, wk, yo, x0, nx, out, p, ro),
                _ => tile::<V>(t, xs, wk, yo, x0, nx, out, p, ro),
            }
        }
    }

    #[target_feature(enable = "avx512f,avx512vl")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile<const NV: usize>(
        t: &Tile,
        xs: &[f32],
        wk: &[f32],
        yo: usize,
        x0: usize,
        nx: usize,
        out: *mut f32,
        p: usize,
        ro: usize,
    ) {
        let m = lane_masks(nx);
        let mut acc = [[_mm512_setzero_ps(); NV]; RO];
        let x = xs.as_ptr();
        let w = wk.as_ptr();
        for c in 0..t.c {
            for ky in 0..t.kh {
                let row = x.wrapping_add(c * t.lp + (yo * t.sh + ky) * t.prow);
                for kx in 0..t.kw {
                    // Output x reads padded column x·sw + kx: phase kx % sw, index x + kx / sw.
                    let base = row.wrapping_add((kx % t.sw) * t.wq + kx / t.sw + x0);
                    let mut xv = [_mm512_setzero_ps(); NV];
                    for v in 0..NV {
                        // SAFETY: valid lanes read inside the phase row (x + kx/sw < wq).
                        xv[v] = unsafe { _mm512_maskz_loadu_ps(m[v], base.wrapping_add(16 * v)) };
                    }
                    let wt = w.wrapping_add(((c * t.kh + ky) * t.kw + kx) * RO);
                    for (i, a) in acc.iter_mut().enumerate() {
                        // SAFETY: inside this block's packed weights.
                        let wv = _mm512_set1_ps(unsafe { *wt.add(i) });
                        for v in 0..NV {
                            a[v] = _mm512_fmadd_ps(wv, xv[v], a[v]);
                        }
                    }
                }
            }
        }
        for (i, a) in acc.iter().enumerate().take(ro) {
            for v in 0..NV {
                // SAFETY: the masked lanes are the tile's outputs, writable by the contract.
                unsafe { _mm512_mask_storeu_ps(out.wrapping_add(i * p + 16 * v), m[v], a[v]) };
            }
        }
    }

    /// Adds to the partial sums `acc [RW][KW_MAX][16]` of input channel `c`, kernel row `ky`
    /// the products of one sample's output gradient rows `dys` (one per tile channel) with
    /// the input at every tap of the row, over all output positions.
    ///
    /// # Safety
    /// AVX-512F/VL; `xs` is the sample's padded input (layout of `conv::pad`), each `dys[i]`
    /// holds `oh·ow` values, `t.kw ≤ KW_MAX`.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512vl")]
    pub(super) unsafe fn weight_grad(
        t: &Tile,
        xs: &[f32],
        dys: [&[f32]; RW],
        c: usize,
        ky: usize,
        oh: usize,
        ow: usize,
        acc: &mut [f32],
    ) {
        // a[kx][i]: the partial sums of tap kx of tile channel i.
        let mut a = [[_mm512_setzero_ps(); RW]; KW_MAX];
        for (kx, ak) in a.iter_mut().enumerate().take(t.kw) {
            for (i, v) in ak.iter_mut().enumerate() {
                // SAFETY: acc holds RW·KW_MAX·16 values.
                *v = unsafe { _mm512_loadu_ps(acc.as_ptr().add((i * KW_MAX + kx) * 16)) };
            }
        }
        let x = xs.as_ptr();
        for yo in 0..oh {
            let row = x.wrapping_add(c * t.lp + (yo * t.sh + ky) * t.prow);
            for x0 in (0..ow).step_by(16) {
                let m: u16 = if ow - x0 >= 16 {
                    u16::MAX
                } else {
                    ((1u32 << (ow - x0)) - 1) as u16
                };
                let mut d = [_mm512_setzero_ps(); RW];
                for (di, dy) in d.iter_mut().zip(&dys) {
                    // SAFETY: masked to the row's outputs.
                    *di = unsafe { _mm512_maskz_loadu_ps(m, dy.as_ptr().add(yo * ow + x0)) };
                }
                for (kx, ak) in a.iter_mut().enumerate().take(t.kw) {
                    let base = row.wrapping_add((kx % t.sw) * t.wq + kx / t.sw + x0);
                    // SAFETY: valid lanes read inside the phase row.
                    let xv = unsafe { _mm512_maskz_loadu_ps(m, base) };
                    for (v, di) in ak.iter_mut().zip(&d) {
                        *v = _mm512_fmadd_ps(*di, xv, *v);
                    }
                }
            }
        }
        for (kx, ak) in a.iter().enumerate().take(t.kw) {
            for (i, v) in ak.iter().enumerate() {
                // SAFETY: as above.
                unsafe { _mm512_storeu_ps(acc.as_mut_ptr().add((i * KW_MAX + kx) * 16), *v) };
            }
        }
    }
}

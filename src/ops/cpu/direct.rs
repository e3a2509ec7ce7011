//! Direct f32 convolution with AVX-512 for "same" convolutions: stride 1 and padding
//! `(k - 1) / 2` on every axis with odd kernels (the UNet's 3×3×3, padding 1). Forward and
//! weight gradient; the input gradient of such a convolution is itself one (flipped kernel,
//! see [`super::conv::input_grad`]), so it runs here too.
//!
//! The tensors stay in NCDHW and nothing is padded or copied. A *vector* is 16 consecutive
//! positions of the flattened `[d, h, w]` volume of one sample. Because the input and output
//! volumes have the same size, tap `(a, b, e)` of a whole vector reads 16 consecutive input
//! values at one constant offset; a lane mask per (vector, tap) drops the reads that fall into
//! the zero padding or past the end of the volume (masked lanes are never touched, so the
//! reads cannot fault).
//!
//! - Forward: a register tile is [`RO`] output channels × up to [`V`] vectors (20 zmm
//!   accumulators); per (tap, input channel) it costs `V` masked loads, `RO` broadcasts of
//!   pre-packed weights and `RO·V` FMAs. Tiles write straight into the output.
//! - Weight gradient: a register tile is [`RW`] output channels × [`J`] (input channel, tap)
//!   pairs; each accumulator is a 16-lane partial dot product over positions, reduced once per
//!   chunk of positions. Each task owns disjoint weight-gradient entries and sums the
//!   positions in a fixed order, so the result does not depend on the thread count.
//!
//! The module exists on x86-64 only, and the CPU features are detected at run time; without
//! them, or for other geometries and element types, the callers use the generic im2col + GEMM
//! path.

use std::sync::{Arc, Mutex};

use rayon::prelude::*;

use super::SendPtr;
use super::conv::Geom;

/// Output channels per forward register tile.
const RO: usize = 4;
/// Vectors (of 16 positions) per forward register tile.
const V: usize = 5;
/// Output channels per weight-gradient register tile.
const RW: usize = 4;
/// Taps per weight-gradient register tile: 2 kernel rows `(c, a, b)` × 3 taps along x.
const J: usize = 6;
/// Vectors per chunk of the weight-gradient reduction (4096 positions).
const CHUNK: usize = 256;
/// Below this many positions (all samples), im2col + GEMM is faster.
const MIN_POSITIONS: usize = 512;
/// Below this many vectors (all samples), the weight-gradient reductions are too short for
/// the partial-sum layout to pay off.
const MIN_WGRAD_VECTORS: usize = 64;

/// Whether this CPU has the instructions the kernels use.
pub(super) fn cpu_ok() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512vl")
}

/// Whether `g` is a "same" convolution this module computes on this CPU, on enough positions
/// to amortise packing the weights (smaller volumes have more to gain from one GEMM).
pub(crate) fn supports(g: &Geom) -> bool {
    let same = (0..3).all(|i| g.kernel[i] % 2 == 1 && 2 * g.padding[i] + 1 == g.kernel[i]);
    same && g.stride == [1, 1, 1]
        && g.kernel != [1, 1, 1]
        && g.c > 0
        && g.o > 0
        && g.n * volume(g) >= MIN_POSITIONS
        && cpu_ok()
}

/// Whether the weight gradient of `g` goes through this module (kernels 3 wide).
pub(crate) fn supports_weight_grad(g: &Geom) -> bool {
    supports(g) && g.kernel[2] == 3 && g.n * vectors(g) >= MIN_WGRAD_VECTORS
}

fn volume(g: &Geom) -> usize {
    g.input.iter().product()
}

fn vectors(g: &Geom) -> usize {
    volume(g).div_ceil(16)
}

fn taps(g: &Geom) -> usize {
    g.kernel.iter().product()
}

/// The lane masks of one volume geometry: `bits[v * width + t]` has bit `l` set when position
/// `16v + l` exists and its tap-`t` input lies inside the volume. Columns `taps..taps + 3` are
/// zeros (for unused tile slots); rows go up to a multiple of [`V`]. `offsets[t]` is the flat
/// offset of tap `t`'s input relative to the output position.
struct Masks {
    width: usize,
    bits: Vec<u16>,
    offsets: Vec<isize>,
    /// The centre tap, whose mask is the set of existing positions.
    centre: usize,
}

type MaskKey = ([usize; 3], [usize; 3]);

/// Mask tables are cached per (volume, kernel): a UNet step uses a handful of geometries,
/// each many times.
static MASKS: Mutex<Vec<(MaskKey, Arc<Masks>)>> = Mutex::new(Vec::new());

fn masks(g: &Geom) -> Arc<Masks> {
    let key = (g.input, g.kernel);
    let mut cache = MASKS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, m)) = cache.iter().find(|(k, _)| *k == key) {
        return m.clone();
    }
    let m = Arc::new(build_masks(g));
    if cache.len() >= 16 {
        cache.remove(0);
    }
    cache.push((key, m.clone()));
    m
}

fn build_masks(g: &Geom) -> Masks {
    let [d, h, w] = g.input;
    let [kd, kh, kw] = g.kernel;
    let [pd, ph, pw] = g.padding;
    let taps = taps(g);
    let width = taps + 3;
    let rows = vectors(g).div_ceil(V) * V;
    let len = volume(g);
    let mut bits = vec![0u16; rows * width];
    bits.par_chunks_mut(width)
        .take(vectors(g))
        .enumerate()
        .for_each(|(v, row)| {
            // Per axis offset, the lanes whose coordinate plus the offset stays inside.
            let mut mz = vec![0u16; kd];
            let mut my = vec![0u16; kh];
            let mut mx = vec![0u16; kw];
            let inside = |c: usize, k: usize, pad: usize, n: usize| c + k >= pad && c + k - pad < n;
            let mark = |m: &mut [u16], c: usize, pad: usize, n: usize, lane: usize| {
                for (k, bits) in m.iter_mut().enumerate() {
                    if inside(c, k, pad, n) {
                        *bits |= 1 << lane;
                    }
                }
            };
            for l in 0..16.min(len.saturating_sub(16 * v)) {
                let p = 16 * v + l;
                mark(&mut mz, p / (h * w), pd, d, l);
                mark(&mut my, p / w % h, ph, h, l);
                mark(&mut mx, p % w, pw, w, l);
            }
            let mut t = 0;
            for &bz in &mz {
                for &by in &my {
                    for &bx in &mx {
                        row[t] = bz & by & bx;
                        t += 1;
                    }
                }
            }
        });
    let mut offsets = Vec::with_capacity(taps);
    for a in 0..kd {
        for b in 0..kh {
            for e in 0..kw {
                let dz = a as isize - pd as isize;
                let dy = b as isize - ph as isize;
                let dx = e as isize - pw as isize;
                offsets.push((dz * h as isize + dy) * w as isize + dx);
            }
        }
    }
    Masks {
        width,
        bits,
        offsets,
        centre: (pd * kh + ph) * kw + pw,
    }
}

/// The forward convolution `y [n, o, d, h, w]` of `x [n, c, d, h, w]` with `w [o, c, k…]`.
/// The caller checks [`supports`].
pub(crate) fn forward(x: &[f32], w: &[f32], g: &Geom) -> Vec<f32> {
    debug_assert!(supports(g));
    let (len, taps, nvec) = (volume(g), taps(g), vectors(g));
    let masks = masks(g);
    let blocks = g.o.div_ceil(RO);
    // Weights packed as [block][tap][c][RO], zero for channels past `o`.
    let mut packed = vec![0f32; blocks * taps * g.c * RO];
    for o in 0..g.o {
        let (blk, i) = (o / RO, o % RO);
        for c in 0..g.c {
            for t in 0..taps {
                packed[((blk * taps + t) * g.c + c) * RO + i] = w[(o * g.c + c) * taps + t];
            }
        }
    }
    let tiles = nvec.div_ceil(V);
    // Work items: (sample, run of tiles, run of channel blocks), at least ~32 of them.
    let tiles_per_item = 8.min(tiles);
    let runs = tiles.div_ceil(tiles_per_item);
    let block_runs = (32usize.div_ceil(g.n * runs)).clamp(1, blocks);
    let blocks_per_item = blocks.div_ceil(block_runs);
    let mut y: Vec<f32> = Vec::with_capacity(g.n * g.o * len);
    let yp = SendPtr(y.as_mut_ptr());
    let items: Vec<(usize, usize, usize)> = (0..g.n)
        .flat_map(|n| (0..runs).flat_map(move |r| (0..block_runs).map(move |b| (n, r, b))))
        .collect();
    items.into_par_iter().for_each(|(n, run, brun)| {
        let xs = &x[n * g.c * len..(n + 1) * g.c * len];
        let b0 = brun * blocks_per_item;
        let b1 = blocks.min(b0 + blocks_per_item);
        let t0 = run * tiles_per_item;
        let t1 = tiles.min(t0 + tiles_per_item);
        for blk in b0..b1 {
            let wk = &packed[blk * taps * g.c * RO..(blk + 1) * taps * g.c * RO];
            let ro = RO.min(g.o - blk * RO);
            for tile in t0..t1 {
                let v0 = tile * V;
                let nv = V.min(nvec - v0);
                // SAFETY: the tile writes positions 16·v0.. of output channels
                // blk·RO..blk·RO+ro of sample n, which no other tile writes; every read and
                // write is masked to positions inside the volume.
                unsafe {
                    let out = yp.get().add((n * g.o + blk * RO) * len);
                    imp::forward_tile(nv, xs, wk, g.c, len, v0, &masks, out, ro);
                }
            }
        }
    });
    // SAFETY: the tiles above wrote every position of every output channel of every sample
    // (the masked stores cover each volume exactly once).
    unsafe { y.set_len(g.n * g.o * len) };
    y
}

/// The sums of one weight-gradient task: channel block, first row pair, one tile per pair.
type WeightGradPart = (usize, usize, Vec<[[f32; J]; RW]>);

/// The weight gradient `dw [o, c, k…]` from `x [n, c, …]` and `dy [n, o, …]`. The caller checks
/// [`supports_weight_grad`].
pub(crate) fn weight_grad(x: &[f32], dy: &[f32], g: &Geom) -> Vec<f32> {
    debug_assert!(supports_weight_grad(g));
    let (len, taps, nvec) = (volume(g), taps(g), vectors(g));
    let masks = masks(g);
    // Kernel rows (c, a, b), each with 3 taps along x; a register tile takes 2 of them.
    let kab = g.kernel[0] * g.kernel[1];
    let krows = g.c * kab;
    let groups = krows.div_ceil(2);
    let blocks = g.o.div_ceil(RW);
    // Tasks: (channel block, run of row pairs), at least ~32 of them.
    let group_runs = (32usize.div_ceil(blocks)).clamp(1, groups);
    let groups_per_task = groups.div_ceil(group_runs);
    let tasks: Vec<(usize, usize)> = (0..blocks)
        .flat_map(|b| (0..group_runs).map(move |r| (b, r)))
        .collect();
    let parts: Vec<WeightGradPart> = tasks
        .into_par_iter()
        .map(|(blk, run)| {
            let g0 = (run * groups_per_task).min(groups);
            let g1 = groups.min(g0 + groups_per_task);
            let mut acc = vec![[[0f32; J]; RW]; g1 - g0];
            // Rows past `o` read channel `blk·RW` again; their sums are dropped below.
            let rows: [usize; RW] = std::array::from_fn(|i| {
                let o = blk * RW + i;
                if o < g.o { o } else { blk * RW }
            });
            for n in 0..g.n {
                let xs = &x[n * g.c * len..(n + 1) * g.c * len];
                let ds = &dy[n * g.o * len..(n + 1) * g.o * len];
                for v0 in (0..nvec).step_by(CHUNK) {
                    let v1 = nvec.min(v0 + CHUNK);
                    for (gi, out) in (g0..g1).zip(acc.iter_mut()) {
                        let sel =
                            [2 * gi, 2 * gi + 1].map(|r| (r < krows).then(|| (r / kab, r % kab)));
                        // SAFETY: every read is masked to positions inside the volume of
                        // one sample of x and dy; the kernel is 3 wide (supports_weight_grad).
                        unsafe {
                            imp::weight_grad_tile(xs, ds, len, rows, sel, v0..v1, &masks, out);
                        }
                    }
                }
            }
            (blk, g0, acc)
        })
        .collect();
    // Tile slot (i, 3k + e) of row pair gi is dw[o][(2·gi + k)·3 + e].
    let mut dw = vec![0f32; g.o * g.c * taps];
    for (blk, g0, acc) in parts {
        for (gi, tile) in (g0..).zip(&acc) {
            for (i, slots) in tile.iter().enumerate() {
                let o = blk * RW + i;
                if o >= g.o {
                    continue;
                }
                for (j, &s) in slots.iter().enumerate() {
                    let r = 2 * gi + j / 3;
                    if r < krows {
                        dw[o * g.c * taps + r * 3 + j % 3] = s;
                    }
                }
            }
        }
    }
    dw
}

mod imp {
    use std::arch::x86_64::*;
    use std::ops::Range;

    use super::{J, Masks, RO, RW, V};

    /// One forward tile with `nv ≤ V` vectors starting at vector `v0`: `RO` output channels,
    /// of which the first `ro` are stored to `out` (channel stride `len`).
    ///
    /// # Safety
    /// The CPU must support AVX-512F and VL. `xs` is one sample `[c, len]`, `wk` the packed weights
    /// `[taps][c][RO]` of one channel block, `out` points at that block's first output channel
    /// of the sample, with `ro` channels of `len` values writable.
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn forward_tile(
        nv: usize,
        xs: &[f32],
        wk: &[f32],
        c: usize,
        len: usize,
        v0: usize,
        masks: &Masks,
        out: *mut f32,
        ro: usize,
    ) {
        // SAFETY: forwarded from the caller's contract.
        unsafe {
            match nv {
                1 => tile::<1>(xs, wk, c, len, v0, masks, out, ro),
                2 => tile::<2>(xs, wk, c, len, v0, masks, out, ro),
                3 => tile::<3>(xs, wk, c, len, v0, masks, out, ro),
                4 => tile::<4>(xs, wk, c, len, v0, masks, out, ro),
                _ => tile::<V>(xs, wk, c, len, v0, masks, out, ro),
            }
        }
    }

    #[target_feature(enable = "avx512f,avx512vl")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile<const NV: usize>(
        xs: &[f32],
        wk: &[f32],
        c: usize,
        len: usize,
        v0: usize,
        masks: &Masks,
        out: *mut f32,
        ro: usize,
    ) {
        let taps = masks.offsets.len();
        debug_assert_eq!(wk.len(), taps * c * RO);
        let rows = &masks.bits[v0 * masks.width..(v0 + NV) * masks.width];
        let mut acc = [[_mm512_setzero_ps(); NV]; RO];
        let x = xs.as_ptr();
        let base = 16 * v0;
        for t in 0..taps {
            let mut m = [0 as __mmask16; NV];
            for v in 0..NV {
                m[v] = rows[v * masks.width + t];
            }
            let xt = x.wrapping_offset(masks.offsets[t]).wrapping_add(base);
            let wt = wk[t * c * RO..(t + 1) * c * RO].as_ptr();
            for ci in 0..c {
                let xc = xt.wrapping_add(ci * len);
                let mut xv = [_mm512_setzero_ps(); NV];
                for v in 0..NV {
                    // SAFETY: the mask keeps only lanes whose input position lies inside
                    // channel ci of the sample; masked lanes are not accessed.
                    xv[v] = unsafe { _mm512_maskz_loadu_ps(m[v], xc.wrapping_add(16 * v)) };
                }
                for (i, a) in acc.iter_mut().enumerate() {
                    // SAFETY: ci·RO + i < c·RO, inside this tap's weights.
                    let wv = _mm512_set1_ps(unsafe { *wt.add(ci * RO + i) });
                    for v in 0..NV {
                        a[v] = _mm512_fmadd_ps(wv, xv[v], a[v]);
                    }
                }
            }
        }
        for (i, a) in acc.iter().enumerate().take(ro) {
            for v in 0..NV {
                let keep = rows[v * masks.width + masks.centre];
                let dst = out.wrapping_add(i * len + base + 16 * v);
                // SAFETY: the centre mask keeps exactly the positions inside the volume, which
                // the caller made writable.
                unsafe { _mm512_mask_storeu_ps(dst, keep, a[v]) };
            }
        }
    }

    /// Adds to `out[i][k·3 + e]` the dot products over vectors `vs` of output channel
    /// `rows[i]` of `ds` with input channel `taps_of[k].0` of `xs` shifted by the taps
    /// `(a, b, e)`, `e` in 0..3, of kernel row `taps_of[k].1 = a·kh + b` (`None`: an unused slot
    /// that reads nothing).
    ///
    /// # Safety
    /// The CPU must support AVX-512F and VL; `xs` and `ds` are one sample of the input and
    /// output gradient, `[c, len]` and `[o, len]`, with every `rows[i] < o` and channel `< c`;
    /// the kernel is 3 wide.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512vl")]
    pub(super) unsafe fn weight_grad_tile(
        xs: &[f32],
        ds: &[f32],
        len: usize,
        rows: [usize; RW],
        taps_of: [Option<(usize, usize)>; 2],
        vs: Range<usize>,
        masks: &Masks,
        out: &mut [[f32; J]; RW],
    ) {
        let taps = masks.offsets.len();
        let mut xp = [xs.as_ptr(); 2];
        let mut col = [taps; 2];
        for k in 0..2 {
            if let Some((ch, ab)) = taps_of[k] {
                xp[k] = xs
                    .as_ptr()
                    .wrapping_add(ch * len)
                    .wrapping_offset(masks.offsets[ab * 3]);
                col[k] = ab * 3;
            }
        }
        let dp: [*const f32; RW] = [
            ds[rows[0] * len..].as_ptr(),
            ds[rows[1] * len..].as_ptr(),
            ds[rows[2] * len..].as_ptr(),
            ds[rows[3] * len..].as_ptr(),
        ];
        let bits = &masks.bits[vs.start * masks.width..vs.end * masks.width];
        let mut acc = [[_mm512_setzero_ps(); J]; RW];
        for (row, v) in bits.chunks_exact(masks.width).zip(vs) {
            let keep = row[masks.centre];
            let p = 16 * v;
            let mut d = [_mm512_setzero_ps(); RW];
            for i in 0..RW {
                // SAFETY: the centre mask keeps the positions inside the volume.
                d[i] = unsafe { _mm512_maskz_loadu_ps(keep, dp[i].wrapping_add(p)) };
            }
            for k in 0..2 {
                for e in 0..3 {
                    // SAFETY: the tap mask keeps lanes whose input lies inside the channel;
                    // the zero columns read nothing.
                    let xv = unsafe {
                        _mm512_maskz_loadu_ps(row[col[k] + e], xp[k].wrapping_add(p + e))
                    };
                    for i in 0..RW {
                        acc[i][3 * k + e] = _mm512_fmadd_ps(d[i], xv, acc[i][3 * k + e]);
                    }
                }
            }
        }
        for i in 0..RW {
            for j in 0..J {
                out[i][j] += _mm512_reduce_add_ps(acc[i][j]);
            }
        }
    }
}

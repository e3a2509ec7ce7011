//! 3D convolution (2D is the depth-1 case): forward, input gradient and weight gradient.
//!
//! The route is a tiled im2col + GEMM. The input of each sample is zero-padded once; a tile
//! is a run of output rows (a row is one `(z, y)` pair with all `x`), its column matrix
//! `[C·kd·kh·kw, rows·Wo]` is assembled from contiguous row segments of the padded input and
//! stays cache-resident, and one GEMM per tile writes straight into the output. Tiles run in
//! parallel (rayon); each worker keeps its own column buffer. 1×1×1 convolutions skip im2col.

use rayon::prelude::*;

use super::{Real, SendPtr, matmul, ordered_sum, to_channel_major, to_sample_major};

/// Elements of a column tile (per worker); about 256 KiB of f32, which stays in L2.
const TILE_ELEMS: usize = 65_536;

/// Columns (positions) per task of the 1×1×1 convolutions' GEMMs.
const POINTWISE_COLS: usize = 1024;

/// Positions per item of the 1×1×1 weight gradient's ordered sum.
const POINTWISE_WGRAD_COLS: usize = 4096;

/// The geometry of one convolution: `x [n, c, d, h, w]`, `w [o, c, kd, kh, kw]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Geom {
    /// Batch size.
    pub n: usize,
    /// Input channels.
    pub c: usize,
    /// Output channels.
    pub o: usize,
    /// Input spatial size `[d, h, w]`.
    pub input: [usize; 3],
    /// Kernel size per axis.
    pub kernel: [usize; 3],
    /// Zero padding per axis (both sides).
    pub padding: [usize; 3],
    /// Stride per axis.
    pub stride: [usize; 3],
}

impl Geom {
    /// The padded input size.
    pub fn padded(&self) -> [usize; 3] {
        std::array::from_fn(|i| self.input[i] + 2 * self.padding[i])
    }

    /// The output size, or `None` when the kernel is larger than the padded input.
    pub fn output(&self) -> Option<[usize; 3]> {
        let p = self.padded();
        let mut out = [0; 3];
        for i in 0..3 {
            if p[i] < self.kernel[i] || self.stride[i] == 0 {
                return None;
            }
            out[i] = (p[i] - self.kernel[i]) / self.stride[i] + 1;
        }
        Some(out)
    }

    pub(crate) fn out(&self) -> [usize; 3] {
        self.output().expect("geometry checked by the caller")
    }

    /// Taps per input channel (`kd·kh·kw`).
    pub fn taps(&self) -> usize {
        self.kernel.iter().product()
    }

    /// Rows of the column matrix (`c·kd·kh·kw`).
    fn k(&self) -> usize {
        self.c * self.taps()
    }

    fn in_len(&self) -> usize {
        self.input.iter().product()
    }

    pub(crate) fn out_len(&self) -> usize {
        self.out().iter().product()
    }

    fn padded_len(&self) -> usize {
        self.padded().iter().product()
    }

    /// Values per phase of a padded row (see [`pad`]).
    pub(crate) fn phased_width(&self) -> usize {
        self.padded()[2].div_ceil(self.stride[2])
    }

    /// Values per padded plane in the layout of [`pad`].
    pub(crate) fn phased_len(&self) -> usize {
        let [dp, hp, _] = self.padded();
        dp * hp * self.stride[2] * self.phased_width()
    }

    fn is_pointwise(&self) -> bool {
        self.kernel == [1, 1, 1] && self.padding == [0, 0, 0] && self.stride == [1, 1, 1]
    }

    /// Output rows (`(z, y)` pairs) per tile.
    fn rows_per_tile(&self) -> usize {
        (TILE_ELEMS / (self.k() * self.out()[2]).max(1)).max(1)
    }
}

/// Zero-pads every `[d, h, w]` plane of `x` (`planes` of them) into the layout im2col reads:
/// each padded row of `wp` values is stored as its `sw` phases (the columns `≡ 0, 1, … mod sw`),
/// `wq = ⌈wp / sw⌉` values each, so that a tap of a strided convolution reads a contiguous run.
/// With stride 1 this is the plain padded volume.
pub(crate) fn pad<T: Real>(x: &[T], planes: usize, g: &Geom) -> Vec<T> {
    let [d, h, w] = g.input;
    let [_, hp, _] = g.padded();
    let lp = g.phased_len();
    let (sw, wq) = (g.stride[2], g.phased_width());
    let row = sw * wq;
    let [pd, ph, pw] = g.padding;
    let mut out = vec![T::zero(); planes * lp];
    out.par_chunks_mut(lp)
        .zip(x.par_chunks(g.in_len()))
        .for_each(|(dst, src)| {
            for z in 0..d {
                for y in 0..h {
                    let s = (z * h + y) * w;
                    let t = ((z + pd) * hp + y + ph) * row;
                    if sw == 1 {
                        dst[t + pw..t + pw + w].copy_from_slice(&src[s..s + w]);
                    } else {
                        // Phase f holds the padded columns f, f + sw, …: input columns
                        // x0, x0 + sw, … from the first x0 with (x0 + pw) % sw == f.
                        for f in 0..sw {
                            let x0 = (f + sw - pw % sw) % sw;
                            let from = src[s..s + w].iter().skip(x0).step_by(sw);
                            let to = &mut dst[t + f * wq + (x0 + pw) / sw..t + (f + 1) * wq];
                            for (d, &v) in to.iter_mut().zip(from) {
                                *d = v;
                            }
                        }
                    }
                }
            }
        });
    out
}

/// Fills `col [k, rows·wo]` for output rows `r0..r0+rows` of one padded sample `xp` (in the
/// layout of [`pad`]).
fn im2col<T: Real>(xp: &[T], g: &Geom, r0: usize, rows: usize, col: &mut [T]) {
    let [kd, kh, kw] = g.kernel;
    let [sd, sh, sw] = g.stride;
    let [_, hp, _] = g.padded();
    let [_, ho, wo] = g.out();
    let lp = g.phased_len();
    let wq = g.phased_width();
    let prow = sw * wq;
    let t = rows * wo;
    let mut dst = col.chunks_exact_mut(t);
    for c in 0..g.c {
        for a in 0..kd {
            for b in 0..kh {
                for e in 0..kw {
                    let row = dst.next().expect("col has k rows");
                    let phase = (e % sw) * wq + e / sw;
                    for r in 0..rows {
                        let (z, y) = ((r0 + r) / ho, (r0 + r) % ho);
                        let src = c * lp + ((z * sd + a) * hp + y * sh + b) * prow + phase;
                        row[r * wo..(r + 1) * wo].copy_from_slice(&xp[src..src + wo]);
                    }
                }
            }
        }
    }
}

/// Adds `col [k, rows·wo]` back into the padded sample `dxp [c, lp]` (the adjoint of
/// [`im2col`]).
fn col2im<T: Real>(col: &[T], g: &Geom, r0: usize, rows: usize, dxp: &mut [T]) {
    let [kd, kh, kw] = g.kernel;
    let [sd, sh, sw] = g.stride;
    let [_, hp, wp] = g.padded();
    let [_, ho, wo] = g.out();
    let lp = g.padded_len();
    let t = rows * wo;
    let mut src_rows = col.chunks_exact(t);
    for c in 0..g.c {
        for a in 0..kd {
            for b in 0..kh {
                for e in 0..kw {
                    let row = src_rows.next().expect("col has k rows");
                    for r in 0..rows {
                        let (z, y) = ((r0 + r) / ho, (r0 + r) % ho);
                        let dst = c * lp + ((z * sd + a) * hp + y * sh + b) * wp + e;
                        for (x, &v) in row[r * wo..(r + 1) * wo].iter().enumerate() {
                            dxp[dst + x * sw] += v;
                        }
                    }
                }
            }
        }
    }
}

/// Output positions (all samples together) below which a convolution runs as one GEMM over
/// batch × positions ([`small`]) instead of per-sample tiles: the deep layers of a UNet
/// (4³ and 2³ with 128–256 channels), whose per-sample tiles are narrower than a register block.
const SMALL_POSITIONS: usize = 512;

/// Rows of the output per task of the small path when it splits the rows; fixed, so the results
/// do not depend on the thread count.
const SMALL_ROWS: usize = 32;

/// Input channels per task of the small path's input gradient.
const SMALL_CHANNELS: usize = 4;

/// Column blocks of the small path's GEMMs that take every output row at once.
const SMALL_COLUMN_BLOCKS: usize = 2;

/// Whether cutting an `m × n` product of depth `k` into the blocks `before` (row counts ×
/// columns) or into the blocks `after` gives every entry the same sums. `gemm` computes an entry
/// as one chain of fused multiply-adds over each block of the depth, and cuts the depth by `k`
/// alone (blocks of 512 when both sides of the block are at most 64, cache-sized ones
/// otherwise); but it takes other routines for thin or tiny products (matrix–vector for one
/// row or column, depth ≤ 2, and dot-product kernels for at most 16 × 16 entries when both
/// operands run along the depth). So both cuts must stay on its general path and on the same
/// side of the 64 line (or have one depth block).
fn same_sums(before: &[(usize, usize)], after: &[(usize, usize)], k: usize) -> bool {
    let general = |&(m, n): &(usize, usize)| m > 1 && n > 1 && k > 2 && m * n > 16 * 16;
    let short = |&(m, n): &(usize, usize)| m <= 64 && n <= 64;
    let all = || before.iter().chain(after);
    all().all(general) && (k <= 512 || all().all(short) || !all().any(short))
}

/// The sizes of the blocks that cut `len` into runs of `size`.
fn blocks(len: usize, size: usize) -> impl Iterator<Item = usize> {
    (0..len)
        .step_by(size.max(1))
        .map(move |s| size.min(len - s))
}

/// Whether `g` takes the [`small`] path.
fn is_small(g: &Geom) -> bool {
    !g.is_pointwise() && g.n * g.out_len() < SMALL_POSITIONS
}

/// Convolutions on small volumes as single GEMMs over batch × positions: the columns of every
/// sample side by side (`[k, n·p]`), and the tasks split the output rows or columns, so each
/// result is one dot product computed by one task (no partial sums to combine).
mod small {
    use super::*;
    use std::mem::MaybeUninit;
    use std::ops::Range;

    /// The column matrix `[k, n·p]` of all samples, its rows filled in parallel.
    pub(super) fn columns<T: Real>(x: &[T], g: &Geom) -> Vec<T> {
        let (taps, p) = (g.taps(), g.out_len());
        let np = g.n * p;
        let xp = pad(x, g.n * g.c, g);
        let lp = g.phased_len();
        let [_, kh, kw] = g.kernel;
        let [sd, sh, sw] = g.stride;
        let [_, hp, _] = g.padded();
        let [od, oh, ow] = g.out();
        let (wq, prow) = (g.phased_width(), sw * g.phased_width());
        let len = g.k() * np;
        let mut col: Vec<T> = Vec::with_capacity(len);
        let rows = match ow {
            2 => gather_rows::<T, 2>,
            4 => gather_rows::<T, 4>,
            8 => gather_rows::<T, 8>,
            _ => gather_rows::<T, 0>,
        };
        let steps = [sd * hp * prow, sh * prow];
        col.spare_capacity_mut()[..len]
            .par_chunks_mut(np)
            .enumerate()
            .for_each(|(r, row)| {
                let (c, t) = (r / taps, r % taps);
                let (a, b, e) = (t / (kh * kw), (t / kw) % kh, t % kw);
                let first = (a * hp + b) * prow + (e % sw) * wq + e / sw;
                for (n, dst) in row.chunks_exact_mut(p).enumerate() {
                    let plane = &xp[(n * g.c + c) * lp..][..lp];
                    rows(dst, &plane[first..], [od, oh, ow], steps);
                }
            });
        // SAFETY: the rows above wrote all `len` values (every one of the k rows, every
        // sample's p positions).
        unsafe { col.set_len(len) };
        col
    }

    /// Writes the `od × oh` output rows of `ow` values that one tap of one channel reads,
    /// starting at `src` and `steps` apart along z and y. `N` is `ow` when it is a small
    /// constant (fixed-size moves instead of a `memcpy` call per row), or 0.
    fn gather_rows<T: Real, const N: usize>(
        dst: &mut [MaybeUninit<T>],
        src: &[T],
        [od, oh, ow]: [usize; 3],
        [zstep, ystep]: [usize; 2],
    ) {
        let w = if N == 0 { ow } else { N };
        for z in 0..od {
            for y in 0..oh {
                let from = &src[z * zstep + y * ystep..][..w];
                let to = &mut dst[(z * oh + y) * w..][..w];
                for (d, &v) in to.iter_mut().zip(from) {
                    d.write(v);
                }
            }
        }
    }

    /// `[n, ch, p]` as `[ch, n·p]`.
    fn channel_major<T: Real>(v: &[T], n: usize, ch: usize, p: usize) -> Vec<T> {
        let mut out = vec![T::zero(); v.len()];
        to_channel_major(v, n, ch, p, &mut out);
        out
    }

    pub(super) fn forward<T: Real>(x: &[T], w: &[T], g: &Geom) -> Vec<T> {
        let (k, p) = (g.k(), g.out_len());
        let np = g.n * p;
        let col = columns(x, g);
        // y as [o, n·p], then back to [n, o, p].
        let yt = Product {
            m: g.o,
            n: np,
            k,
            lhs: (w, (k, 1)),
            rhs: (&col, (np, 1)),
        }
        .compute();
        to_sample_major(&yt, g.n, g.o, p)
    }

    pub(super) fn weight_grad<T: Real>(x: &[T], dy: &[T], g: &Geom) -> Vec<T> {
        let (k, p) = (g.k(), g.out_len());
        let np = g.n * p;
        let col = columns(x, g);
        let dyt = channel_major(dy, g.n, g.o, p);
        // dw [o, k] = dy [o, n·p] × colᵀ.
        Product {
            m: g.o,
            n: k,
            k: np,
            lhs: (&dyt, (np, 1)),
            rhs: (&col, (1, np)),
        }
        .compute()
    }

    /// A product `dst [m, n] = lhs [m, k] × rhs [k, n]`, each operand with its (row, column)
    /// strides, into a new row-major `dst`.
    pub(super) struct Product<'a, T> {
        pub m: usize,
        pub n: usize,
        pub k: usize,
        pub lhs: (&'a [T], (usize, usize)),
        pub rhs: (&'a [T], (usize, usize)),
    }

    impl<T: Real> Product<'_, T> {
        /// By blocks of columns with every row at once (each task packs the left operand
        /// once) where that gives the same sums as blocks of rows, else by rows.
        pub fn compute(&self) -> Vec<T> {
            if self.columns_keep_sums() {
                self.by_columns()
            } else {
                self.by_rows()
            }
        }

        fn column_block(&self) -> usize {
            self.n.div_ceil(SMALL_COLUMN_BLOCKS)
        }

        pub fn columns_keep_sums(&self) -> bool {
            let rows: Vec<_> = blocks(self.m, SMALL_ROWS).map(|m| (m, self.n)).collect();
            let cols: Vec<_> = blocks(self.n, self.column_block())
                .map(|n| (self.m, n))
                .collect();
            same_sums(&rows, &cols, self.k)
        }

        /// Tasks of [`SMALL_ROWS`] rows.
        pub fn by_rows(&self) -> Vec<T> {
            let (n, k) = (self.n, self.k);
            self.check();
            let ((lhs, (lhs_rs, lhs_cs)), (rhs, rhs_s)) = (self.lhs, self.rhs);
            let mut dst = vec![T::zero(); self.m * n];
            dst.par_chunks_mut(SMALL_ROWS * n)
                .enumerate()
                .for_each(|(blk, d)| {
                    // SAFETY: d is rows blk·SMALL_ROWS.. of dst [m, n]; the same rows of lhs
                    // and all of rhs lie inside their slices (checked).
                    unsafe {
                        matmul(
                            (d.len() / n, n, k),
                            d.as_mut_ptr(),
                            (n, 1),
                            false,
                            lhs.as_ptr().add(blk * SMALL_ROWS * lhs_rs),
                            (lhs_rs, lhs_cs),
                            rhs.as_ptr(),
                            rhs_s,
                        );
                    }
                });
            dst
        }

        /// [`SMALL_COLUMN_BLOCKS`] tasks of columns, every row at once.
        pub fn by_columns(&self) -> Vec<T> {
            let (m, n, k) = (self.m, self.n, self.k);
            self.check();
            let ((lhs, lhs_s), (rhs, (rhs_rs, rhs_cs))) = (self.lhs, self.rhs);
            let cols = self.column_block();
            let mut dst = vec![T::zero(); m * n];
            let dp = SendPtr(dst.as_mut_ptr());
            (0..n.div_ceil(cols)).into_par_iter().for_each(|b| {
                let j = b * cols;
                // SAFETY: the task writes columns j..j+t of dst [m, n], which no other task
                // writes; lhs and columns j.. of rhs lie inside their slices (checked).
                unsafe {
                    matmul(
                        (m, cols.min(n - j), k),
                        dp.get().add(j),
                        (n, 1),
                        false,
                        lhs.as_ptr(),
                        lhs_s,
                        rhs.as_ptr().add(j * rhs_cs),
                        (rhs_rs, rhs_cs),
                    );
                }
            });
            dst
        }

        /// Panics unless both operands hold every entry their strides address.
        fn check(&self) {
            let last = |(rs, cs): (usize, usize), rows: usize, cols: usize| {
                (rows.max(1) - 1) * rs + (cols.max(1) - 1) * cs
            };
            assert!(last(self.lhs.1, self.m, self.k) < self.lhs.0.len().max(1));
            assert!(last(self.rhs.1, self.k, self.n) < self.rhs.0.len().max(1));
        }
    }

    pub(super) fn input_grad<T: Real>(dy: &[T], w: &[T], g: &Geom) -> Vec<T> {
        let (k, p, taps) = (g.k(), g.out_len(), g.taps());
        let np = g.n * p;
        let dyt = channel_major(dy, g.n, g.o, p);
        let [d, h, wd] = g.input;
        let [_, kh, kw] = g.kernel;
        let [sd, sh, sw] = g.stride;
        let [pd, ph, pw] = g.padding;
        let [od, oh, ow] = g.out();
        let in_len = g.in_len();
        // dx as [c, n, in_len]: each task owns a group of channels.
        let mut dxt = vec![T::zero(); g.c * g.n * in_len];
        dxt.par_chunks_mut(SMALL_CHANNELS * g.n * in_len)
            .enumerate()
            .for_each(|(grp, dst)| {
                let c0 = grp * SMALL_CHANNELS;
                let cs = dst.len() / (g.n * in_len);
                let rows = cs * taps;
                // The columns' gradient for these channels: [rows, n·p] = wᵀ[rows, o] × dy.
                let mut cg = vec![T::zero(); rows * np];
                // SAFETY: cg is [rows, n·p]; w read as its transpose from column c0·taps;
                // dyt is [o, n·p].
                unsafe {
                    matmul(
                        (rows, np, g.o),
                        cg.as_mut_ptr(),
                        (np, 1),
                        false,
                        w.as_ptr().add(c0 * taps),
                        (1, k),
                        dyt.as_ptr(),
                        (np, 1),
                    );
                }
                // col2im, unpadded: output (z, y, x) of tap (a, b, e) reads input
                // (z·sd + a - pd, ...); each input cell gets its taps' terms in tap order.
                for ci in 0..cs {
                    for b in 0..g.n {
                        let plane = &mut dst[(ci * g.n + b) * in_len..][..in_len];
                        for t in 0..taps {
                            let (a, bb, e) = (t / (kh * kw), (t / kw) % kh, t % kw);
                            let src = &cg[(ci * taps + t) * np + b * p..][..p];
                            let zs = valid(od, sd, a, pd, d);
                            let ys = valid(oh, sh, bb, ph, h);
                            let xs = valid(ow, sw, e, pw, wd);
                            for z in zs {
                                let iz = z * sd + a - pd;
                                for y in ys.clone() {
                                    let iy = y * sh + bb - ph;
                                    let from = &src[(z * oh + y) * ow..][..ow];
                                    let to = &mut plane[(iz * h + iy) * wd..][..wd];
                                    if sw == 1 {
                                        let ix0 = xs.start + e - pw;
                                        for (acc, &v) in to[ix0..ix0 + xs.len()]
                                            .iter_mut()
                                            .zip(&from[xs.clone()])
                                        {
                                            *acc += v;
                                        }
                                    } else {
                                        for x in xs.clone() {
                                            to[x * sw + e - pw] += from[x];
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            });
        to_sample_major(&dxt, g.n, g.c, in_len)
    }

    /// The outputs `o` in `0..out` whose input `o·stride + tap − pad` lies in `0..len`.
    fn valid(out: usize, stride: usize, tap: usize, pad: usize, len: usize) -> Range<usize> {
        let lo = pad.saturating_sub(tap).div_ceil(stride);
        let hi = (len + pad).saturating_sub(tap).div_ceil(stride).min(out);
        lo..hi.max(lo)
    }
}

/// The tiles of the output rows: `(sample, first row, rows)`.
fn tiles(g: &Geom) -> Vec<(usize, usize, usize)> {
    let [d, h, _] = g.out();
    let rows = d * h;
    let per = g.rows_per_tile();
    (0..g.n)
        .flat_map(|n| {
            (0..rows)
                .step_by(per)
                .map(move |r| (n, r, per.min(rows - r)))
        })
        .collect()
}

/// `y [n, o, D, H, W] = conv(x [n, c, d, h, w], w [o, c, kd, kh, kw])`, without bias.
pub fn forward<T: Real>(x: &[T], w: &[T], g: &Geom) -> Vec<T> {
    if let Some(y) = T::direct_conv(x, w, g) {
        return y;
    }
    if is_small(g) {
        return small::forward(x, w, g);
    }
    let (k, p) = (g.k(), g.out_len());
    let mut y = vec![T::zero(); g.n * g.o * p];
    let yp = SendPtr(y.as_mut_ptr());
    if g.is_pointwise() {
        // y[n] = w [o, c] × x[n] [c, p], in column blocks.
        let blocks: Vec<(usize, usize)> = (0..g.n)
            .flat_map(|n| (0..p).step_by(POINTWISE_COLS).map(move |j| (n, j)))
            .collect();
        blocks.into_par_iter().for_each(|(n, j)| {
            let cols = POINTWISE_COLS.min(p - j);
            // SAFETY: each block writes its own columns of sample n.
            unsafe {
                matmul(
                    (g.o, cols, g.c),
                    yp.get().add(n * g.o * p + j),
                    (p, 1),
                    false,
                    w.as_ptr(),
                    (g.c, 1),
                    x.as_ptr().add(n * g.c * p + j),
                    (p, 1),
                );
            }
        });
        return y;
    }
    let xp = pad(x, g.n * g.c, g);
    let (lp, wo) = (g.phased_len(), g.out()[2]);
    let per = g.rows_per_tile();
    tiles(g).into_par_iter().for_each_init(
        || vec![T::zero(); k * per * wo],
        |col, (n, r0, rows)| {
            let t = rows * wo;
            im2col(
                &xp[n * g.c * lp..(n + 1) * g.c * lp],
                g,
                r0,
                rows,
                &mut col[..k * t],
            );
            // SAFETY: the tile writes output columns r0·wo.. of sample n, disjoint per tile.
            unsafe {
                matmul(
                    (g.o, t, k),
                    yp.get().add(n * g.o * p + r0 * wo),
                    (p, 1),
                    false,
                    w.as_ptr(),
                    (k, 1),
                    col.as_ptr(),
                    (t, 1),
                );
            }
        },
    );
    y
}

/// `dL/dw [o, c, kd, kh, kw]` from the input `x` and the output gradient `dy`.
pub fn weight_grad<T: Real>(x: &[T], dy: &[T], g: &Geom) -> Vec<T> {
    if let Some(dw) = T::direct_conv_weight_grad(x, dy, g) {
        return dw;
    }
    if is_small(g) {
        return small::weight_grad(x, dy, g);
    }
    let (k, p) = (g.k(), g.out_len());
    if g.is_pointwise() {
        // Items: runs of positions of one sample (a fixed cut, so the sum's order does not
        // depend on the thread count).
        let runs: Vec<(usize, usize)> = (0..g.n)
            .flat_map(|n| (0..p).step_by(POINTWISE_WGRAD_COLS).map(move |j| (n, j)))
            .collect();
        return ordered_sum(
            &runs,
            g.o * g.c,
            || (),
            |_, acc: &mut [T], &(n, j)| {
                let cols = POINTWISE_WGRAD_COLS.min(p - j);
                // SAFETY: acc is [o, c]; dy[n] is [o, p]; x[n] is [c, p] read as its transpose;
                // the run covers columns j..j+cols of both.
                unsafe {
                    matmul(
                        (g.o, g.c, cols),
                        acc.as_mut_ptr(),
                        (g.c, 1),
                        true,
                        dy.as_ptr().add(n * g.o * p + j),
                        (p, 1),
                        x.as_ptr().add(n * g.c * p + j),
                        (1, p),
                    );
                }
            },
        );
    }
    let xp = pad(x, g.n * g.c, g);
    let (lp, wo) = (g.phased_len(), g.out()[2]);
    let per = g.rows_per_tile();
    ordered_sum(
        &tiles(g),
        g.o * k,
        || vec![T::zero(); k * per * wo],
        |col, acc: &mut [T], &(n, r0, rows)| {
            let t = rows * wo;
            im2col(
                &xp[n * g.c * lp..(n + 1) * g.c * lp],
                g,
                r0,
                rows,
                &mut col[..k * t],
            );
            // SAFETY: acc is this group's [o, k]; dy tile [o, t]; col read as [t, k].
            unsafe {
                matmul(
                    (g.o, k, t),
                    acc.as_mut_ptr(),
                    (k, 1),
                    true,
                    dy.as_ptr().add(n * g.o * p + r0 * wo),
                    (p, 1),
                    col.as_ptr(),
                    (1, t),
                );
            }
        },
    )
}

/// `dL/dx [n, c, d, h, w]` from the output gradient `dy` and the weights `w`.
///
/// Stride 1 (with padding below the kernel size) is itself a forward convolution of `dy` with
/// the flipped, channel-swapped kernel; other strides scatter columns back (col2im).
pub fn input_grad<T: Real>(dy: &[T], w: &[T], g: &Geom) -> Vec<T> {
    if is_small(g) {
        return small::input_grad(dy, w, g);
    }
    let (k, p) = (g.k(), g.out_len());
    if g.is_pointwise() {
        let mut dx = vec![T::zero(); g.n * g.c * p];
        let dxp = SendPtr(dx.as_mut_ptr());
        let blocks: Vec<(usize, usize)> = (0..g.n)
            .flat_map(|n| (0..p).step_by(POINTWISE_COLS).map(move |j| (n, j)))
            .collect();
        blocks.into_par_iter().for_each(|(n, j)| {
            let cols = POINTWISE_COLS.min(p - j);
            // SAFETY: each block writes its own columns of sample n; w read as [c, o].
            unsafe {
                matmul(
                    (g.c, cols, g.o),
                    dxp.get().add(n * g.c * p + j),
                    (p, 1),
                    false,
                    w.as_ptr(),
                    (1, g.c),
                    dy.as_ptr().add(n * g.o * p + j),
                    (p, 1),
                );
            }
        });
        return dx;
    }
    let flippable = g.stride == [1, 1, 1] && (0..3).all(|i| g.padding[i] < g.kernel[i]);
    if flippable {
        let taps = g.taps();
        let mut wt = vec![T::zero(); w.len()];
        for o in 0..g.o {
            for c in 0..g.c {
                for t in 0..taps {
                    wt[(c * g.o + o) * taps + (taps - 1 - t)] = w[(o * g.c + c) * taps + t];
                }
            }
        }
        let flipped = Geom {
            n: g.n,
            c: g.o,
            o: g.c,
            input: g.out(),
            kernel: g.kernel,
            padding: std::array::from_fn(|i| g.kernel[i] - 1 - g.padding[i]),
            stride: [1, 1, 1],
        };
        return forward(dy, &wt, &flipped);
    }
    let (lp, wo) = (g.padded_len(), g.out()[2]);
    let [d, h, wd] = g.input;
    let [pd, ph, pw] = g.padding;
    let [_, hp, wp] = g.padded();
    let [od, oh, _] = g.out();
    let per = g.rows_per_tile();
    let mut dx = vec![T::zero(); g.n * g.c * g.in_len()];
    dx.par_chunks_mut(g.c * g.in_len())
        .enumerate()
        .for_each(|(n, dxn)| {
            let mut dxp = vec![T::zero(); g.c * lp];
            let mut col = vec![T::zero(); k * per * wo];
            let rows_total = od * oh;
            for r0 in (0..rows_total).step_by(per) {
                let rows = per.min(rows_total - r0);
                let t = rows * wo;
                // SAFETY: col is [k, t]; w read as [k, o]; dy tile [o, t].
                unsafe {
                    matmul(
                        (k, t, g.o),
                        col.as_mut_ptr(),
                        (t, 1),
                        false,
                        w.as_ptr(),
                        (1, k),
                        dy.as_ptr().add(n * g.o * p + r0 * wo),
                        (p, 1),
                    );
                }
                col2im(&col[..k * t], g, r0, rows, &mut dxp);
            }
            for c in 0..g.c {
                for z in 0..d {
                    for y in 0..h {
                        let s = c * lp + ((z + pd) * hp + y + ph) * wp + pw;
                        let t = (c * d + z) * h * wd + y * wd;
                        dxn[t..t + wd].copy_from_slice(&dxp[s..s + wd]);
                    }
                }
            }
        });
    dx
}

#[cfg(test)]
mod tests {
    use super::small::Product;
    use super::*;

    fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(6364136223846793005) | 1;
        (0..len)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
            })
            .collect()
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    /// The small path's products: as the forward (`rhs` row-major `[k, n]`) and as the weight
    /// gradient (`rhs` stored `[n, k]`, read as its transpose).
    /// Left and right operand values and the right operand's strides.
    type Operands = (Vec<f32>, Vec<f32>, (usize, usize));

    fn products(m: usize, n: usize, k: usize) -> [Operands; 2] {
        [(n, 1), (1, k)].map(|rhs_s| (values(m * k, 1), values(k * n, 2), rhs_s))
    }

    #[test]
    fn a_product_cut_into_columns_has_the_bits_of_row_blocks_wherever_it_is_taken() {
        let shapes = [
            (128, 128, 3456),
            (128, 3456, 128),
            (256, 16, 6912),
            (256, 6912, 16),
            (97, 392, 576),
            (70, 300, 600),
            (33, 65, 700),
            (300, 66, 2700),
            (128, 1152, 16),
            (4, 144, 128),
            (65, 128, 1728),
            (4, 72, 128),
            (8, 40, 128),
        ];
        let mut by_columns = 0;
        for (m, n, k) in shapes {
            for (lhs, rhs, rhs_s) in products(m, n, k) {
                let p = Product {
                    m,
                    n,
                    k,
                    lhs: (&lhs, (k, 1)),
                    rhs: (&rhs, rhs_s),
                };
                if p.columns_keep_sums() {
                    assert_eq!(
                        bits(&p.by_rows()),
                        bits(&p.by_columns()),
                        "{m}x{n}, depth {k}"
                    );
                    by_columns += 1;
                }
            }
        }
        assert!(
            by_columns >= 10,
            "only {by_columns} products take the column cut"
        );
    }

    #[test]
    fn thin_tiny_and_differently_blocked_products_keep_the_row_cut() {
        let keeps = |m, n, k| {
            let (lhs, rhs) = (values(m * k, 1), values(k * n, 2));
            Product {
                m,
                n,
                k,
                lhs: (&lhs, (k, 1)),
                rhs: (&rhs, (1, k)),
            }
            .columns_keep_sums()
        };
        // A last row block of one row (gemm's matrix–vector routine).
        assert!(!keeps(65, 128, 1728));
        // Row blocks of at most 16 × 16 entries (its dot-product kernels).
        assert!(!keeps(4, 36, 128));
        // Depth over 512 with 64-or-less blocks on one side only (other depth blocks).
        assert!(!keeps(256, 16, 3456));
        assert!(!same_sums(&[(32, 16)], &[(256, 8)], 3456));
        assert!(same_sums(&[(32, 16)], &[(256, 8)], 300));
        // Depth of at most 2.
        assert!(!same_sums(&[(32, 100)], &[(64, 50)], 2));
    }
}

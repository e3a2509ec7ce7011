//! [`Grid`]: a volume or image as `c` channels over a `[d, h, w]` grid (2D images have
//! `d = 1`), the form in which datasets hand items to the samplers and finetuning loops, with
//! the spatial operations the samplers and augmentations need. Samplers work on grids, in Rust,
//! in parallel; tensors are made only for whole batches.

use std::mem::MaybeUninit;

use candle_core::{Device, Tensor};
use rayon::prelude::*;

use crate::{Error, Result};

/// `c` channels of a `[d, h, w]` grid of f32 values, in C order (`[c][d][h][w]`).
#[derive(Clone, Debug, PartialEq)]
pub struct Grid {
    /// The values, `c · d · h · w` of them.
    pub data: Vec<f32>,
    /// Channels.
    pub c: usize,
    /// Spatial size `[d, h, w]`.
    pub dims: [usize; 3],
}

impl Grid {
    /// A grid of zeros.
    pub fn zeros(c: usize, dims: [usize; 3]) -> Self {
        Grid {
            data: vec![0.0; c * dims.iter().product::<usize>()],
            c,
            dims,
        }
    }

    /// A grid from its values; the length must be `c · d · h · w`.
    pub fn new(data: Vec<f32>, c: usize, dims: [usize; 3]) -> Result<Self> {
        if data.len() != c * dims.iter().product::<usize>() {
            return Err(Error::shape(
                "grid",
                format!("{} values do not fill {c} channels of {dims:?}", data.len()),
            ));
        }
        Ok(Grid { data, c, dims })
    }

    /// A single-channel volume from a `[D, H, W]` tensor (e.g. a NIfTI volume's `[x, y, z]`).
    pub fn from_volume(t: &Tensor) -> Result<Self> {
        let (d, h, w) = t.dims3().map_err(|_| {
            Error::shape(
                "grid",
                format!("expected a volume [D, H, W], got {:?}", t.dims()),
            )
        })?;
        Grid::new(
            t.to_dtype(candle_core::DType::F32)?
                .flatten_all()?
                .to_vec1()?,
            1,
            [d, h, w],
        )
    }

    /// An image from a `[C, H, W]` tensor (depth 1).
    pub fn from_image(t: &Tensor) -> Result<Self> {
        let (c, h, w) = t.dims3().map_err(|_| {
            Error::shape(
                "grid",
                format!("expected an image [C, H, W], got {:?}", t.dims()),
            )
        })?;
        Grid::new(
            t.to_dtype(candle_core::DType::F32)?
                .flatten_all()?
                .to_vec1()?,
            c,
            [1, h, w],
        )
    }

    /// Whether this is a 2D image (depth 1).
    pub fn is_2d(&self) -> bool {
        self.dims[0] == 1
    }

    /// Positions per channel.
    pub fn plane(&self) -> usize {
        self.dims.iter().product()
    }

    fn at(&self, c: usize, z: usize, y: usize, x: usize) -> usize {
        ((c * self.dims[0] + z) * self.dims[1] + y) * self.dims[2] + x
    }

    /// The `size` block starting at `origin`; cells outside the grid read as zero.
    pub fn crop(&self, origin: [isize; 3], size: [usize; 3]) -> Grid {
        let all = self.dims.map(|d| 0..d as isize);
        self.crop_within(origin, size, all)
    }

    /// Like [`Grid::crop`], with every cell outside the box `valid` (in this grid's
    /// coordinates) reading as zero too.
    pub fn crop_within(
        &self,
        origin: [isize; 3],
        size: [usize; 3],
        valid: [std::ops::Range<isize>; 3],
    ) -> Grid {
        let mut out = Grid::zeros(self.c, size);
        self.crop_within_into(origin, size, valid, &mut out.data);
        out
    }

    /// [`Grid::crop_within`] into `dst` (`c · size` values).
    pub fn crop_within_into(
        &self,
        origin: [isize; 3],
        size: [usize; 3],
        valid: [std::ops::Range<isize>; 3],
        dst: &mut [f32],
    ) {
        let block = Block {
            origin,
            size,
            valid,
            reverse_depth: false,
        };
        // SAFETY: `MaybeUninit<f32>` has `f32`'s layout, and `write_block` only writes
        // initialised values, so `dst` stays initialised.
        let dst = unsafe { &mut *(dst as *mut [f32] as *mut [MaybeUninit<f32>]) };
        self.write_block(&block, dst, size, [0; 3]);
    }

    /// Writes every value of `dst`, a `c × dims` grid: `block` of this grid at position `at`,
    /// zero elsewhere. One row copy per source row.
    fn write_block(
        &self,
        block: &Block,
        dst: &mut [MaybeUninit<f32>],
        dims: [usize; 3],
        at: [usize; 3],
    ) {
        let Block {
            origin,
            size,
            valid,
            reverse_depth,
        } = block;
        if dst.is_empty() {
            return;
        }
        let lo: [isize; 3] = std::array::from_fn(|a| valid[a].start.max(0));
        let hi: [isize; 3] = std::array::from_fn(|a| valid[a].end.min(self.dims[a] as isize));
        let x0 = origin[2].max(lo[2]);
        let n = ((origin[2] + size[2] as isize).min(hi[2]) - x0).max(0) as usize;
        let x_at = at[2] + (x0 - origin[2]).max(0) as usize;
        // The source plane that output plane `z` of the block reads, if any.
        let source_z = |z: usize| -> Option<usize> {
            let z = z.checked_sub(at[0])?;
            if z >= size[0] || n == 0 {
                return None;
            }
            let dz = if *reverse_depth { size[0] - 1 - z } else { z };
            let sz = origin[0] + dz as isize;
            (lo[0]..hi[0]).contains(&sz).then_some(sz as usize)
        };
        // The source row that output row `y` of the block reads, if any.
        let source_y = |y: usize| -> Option<usize> {
            let y = y.checked_sub(at[1])?;
            let sy = origin[1] + y as isize;
            (y < size[1] && (lo[1]..hi[1]).contains(&sy)).then_some(sy as usize)
        };
        let zero = MaybeUninit::new(0.0);
        let plane = dims[1] * dims[2];
        // Where rows have zeros at their ends (a few values each), the whole plane is zeroed
        // first and its rows copied over it: one fill per plane rather than two tiny ones per
        // row. Otherwise rows are whole copies.
        let padded = x_at > 0 || x_at + n < dims[2];
        for (c, channel) in dst.chunks_exact_mut(dims[0] * plane).enumerate() {
            for (z, out) in channel.chunks_exact_mut(plane).enumerate() {
                let sz = source_z(z);
                if sz.is_none() || padded {
                    out.fill(zero);
                }
                let Some(sz) = sz else {
                    continue;
                };
                for (y, row) in out.chunks_exact_mut(dims[2]).enumerate() {
                    let Some(sy) = source_y(y) else {
                        if !padded {
                            row.fill(zero);
                        }
                        continue;
                    };
                    let from = self.at(c, sz, sy, x0 as usize);
                    for (d, &v) in row[x_at..x_at + n]
                        .iter_mut()
                        .zip(&self.data[from..from + n])
                    {
                        d.write(v);
                    }
                }
            }
        }
    }

    /// Writes each `(origin, out)` of `crops`: the `size` block at `origin` (inside this grid),
    /// reading this grid's rows in order, each into the crops that cross it.
    fn write_crops(&self, crops: &mut [([usize; 3], &mut [MaybeUninit<f32>])], size: [usize; 3]) {
        let span = |a: usize| {
            let lo = crops.iter().map(|(o, _)| o[a]).min().unwrap_or(0);
            let hi = crops.iter().map(|(o, _)| o[a] + size[a]).max().unwrap_or(0);
            lo..hi
        };
        let (zs, ys) = (span(0), span(1));
        for c in 0..self.c {
            for z in zs.clone() {
                for y in ys.clone() {
                    for (o, out) in crops.iter_mut() {
                        let (Some(dz), Some(dy)) = (z.checked_sub(o[0]), y.checked_sub(o[1]))
                        else {
                            continue;
                        };
                        if dz >= size[0] || dy >= size[1] {
                            continue;
                        }
                        let to = ((c * size[0] + dz) * size[1] + dy) * size[2];
                        let from = self.at(c, z, y, o[2]);
                        let (src, dst) = (&self.data[from..from + size[2]], &mut out[to..]);
                        assert!(dst.len() >= src.len());
                        // SAFETY: `dst` has room for `src` (asserted), and the two cannot overlap
                        // (`dst` is the batch's memory, `src` the grid's); `MaybeUninit<f32>` has
                        // `f32`'s layout. One `memcpy` per row beats an inlined loop with a
                        // scalar tail on rows of a few dozen values.
                        unsafe {
                            std::ptr::copy_nonoverlapping(
                                src.as_ptr(),
                                dst.as_mut_ptr().cast::<f32>(),
                                src.len(),
                            )
                        };
                    }
                }
            }
        }
    }

    /// Reverses spatial axis `axis` (0 = d, 1 = h, 2 = w).
    pub fn flip(&self, axis: usize) -> Grid {
        self.orient(Orient::IDENTITY.flip(axis))
    }

    /// Permutes the spatial axes: output axis `i` is input axis `perm[i]` (NumPy's `transpose`).
    pub fn transpose(&self, perm: [usize; 3]) -> Grid {
        self.orient(Orient::IDENTITY.transpose(perm))
    }

    /// `np.rot90(v, k, axes=(a, b))`: `k` quarter turns in the plane of axes `a` and `b`.
    pub fn rot90(&self, k: usize, a: usize, b: usize) -> Grid {
        self.orient(Orient::rot90(k, a, b))
    }

    /// The grid seen through `o` (any composition of flips and axis permutations), in one pass.
    pub fn orient(&self, o: Orient) -> Grid {
        let dims = self.oriented_dims(o);
        let len = self.data.len();
        let data = filled(len, len, |_, dst| {
            self.orient_uninit(o, dst);
            Ok(())
        })
        .expect("orienting cannot fail");
        Grid {
            data,
            c: self.c,
            dims,
        }
    }

    /// A grid whose values `fill(plane, values)` writes, one spatial plane (`h · w` values; the
    /// planes of every channel in order) at a time, in parallel; each plane is zero on entry.
    pub fn par_planes(c: usize, dims: [usize; 3], fill: impl Fn(usize, &mut [f32]) + Sync) -> Grid {
        let len = c * dims.iter().product::<usize>();
        let data = filled(len, dims[1] * dims[2], |i, dst| {
            fill(i, zeroed(dst));
            Ok(())
        })
        .expect("filling planes cannot fail");
        Grid { data, c, dims }
    }

    /// The size of the grid seen through `o`.
    pub fn oriented_dims(&self, o: Orient) -> [usize; 3] {
        std::array::from_fn(|k| self.dims[o.src[k]])
    }

    /// [`Grid::orient`] into `dst` (`c · d · h · w` values).
    pub fn orient_into(&self, o: Orient, dst: &mut [f32]) {
        // SAFETY: `MaybeUninit<f32>` has `f32`'s layout, and `orient_uninit` only writes
        // initialised values, so `dst` stays initialised.
        let dst = unsafe { &mut *(dst as *mut [f32] as *mut [MaybeUninit<f32>]) };
        self.orient_uninit(o, dst);
    }

    /// [`Grid::orient`] into `dst`, writing every one of its `c · d · h · w` values, in
    /// parallel over slabs of output planes.
    fn orient_uninit(&self, o: Orient, dst: &mut [MaybeUninit<f32>]) {
        const SLAB: usize = 64;
        let dims = self.oriented_dims(o);
        let (base, step) = self.walk(o);
        let plane = self.plane();
        let rows = dims[1] * dims[2];
        for (src, dst) in self
            .data
            .chunks_exact(plane)
            .zip(dst.chunks_exact_mut(plane))
        {
            dst.par_chunks_mut(SLAB * rows)
                .enumerate()
                .for_each(|(s, out)| {
                    let base = base + (s * SLAB) as isize * step[0];
                    let dims = [out.len() / rows, dims[1], dims[2]];
                    if step[2].abs() == 1 {
                        copy_rows(src, base, step, dims, out);
                    } else {
                        copy_tiles(src, base, step, dims, out);
                    }
                });
        }
    }

    /// Where output `(0, 0, 0)` of `o` reads in one channel, and how far the read moves per
    /// step along each output axis.
    fn walk(&self, o: Orient) -> (isize, [isize; 3]) {
        let dims = self.oriented_dims(o);
        let stride_in = [self.dims[1] * self.dims[2], self.dims[2], 1];
        let mut step = [0isize; 3];
        let mut base = 0isize;
        for k in 0..3 {
            let st = stride_in[o.src[k]] as isize;
            if o.rev[k] {
                step[k] = -st;
                base += (dims[k] as isize - 1) * st;
            } else {
                step[k] = st;
            }
        }
        (base, step)
    }

    /// `self` placed at `origin` inside a zero grid of size `dims` (parts outside are cut).
    pub fn place(&self, dims: [usize; 3], origin: [isize; 3]) -> Grid {
        // Placing at `origin` is cropping at `-origin` with the output's size.
        self.crop(origin.map(|o| -o), dims)
    }

    /// Applies `f` to every value.
    pub fn map(&self, f: impl Fn(f32) -> f32) -> Grid {
        Grid {
            data: self.data.iter().map(|&v| f(v)).collect(),
            ..self.clone()
        }
    }

    /// Rescales the values to [0, 1] (constant grids become 0).
    pub fn min_max(&self) -> Grid {
        let mut out = self.clone();
        self.min_max_into(&mut out.data);
        out
    }

    /// [`Grid::min_max`] into `dst` (as many values as this grid).
    pub fn min_max_into(&self, dst: &mut [f32]) {
        let (lo, hi) = self
            .data
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
                (a.min(v), b.max(v))
            });
        let span = hi - lo;
        for (d, &v) in dst.iter_mut().zip(&self.data) {
            *d = if span > 0.0 { (v - lo) / span } else { 0.0 };
        }
    }

    /// The mean value.
    pub fn mean(&self) -> f32 {
        (self.data.iter().map(|&v| v as f64).sum::<f64>() / self.data.len().max(1) as f64) as f32
    }
}

/// Output rows that read a source row forwards or backwards (`step[2]` is ±1).
fn copy_rows(
    src: &[f32],
    base: isize,
    step: [isize; 3],
    dims: [usize; 3],
    dst: &mut [MaybeUninit<f32>],
) {
    for (r, out) in dst.chunks_exact_mut(dims[2]).enumerate() {
        let (z, y) = (r / dims[1], r % dims[1]);
        read_run(
            src,
            base + z as isize * step[0] + y as isize * step[1],
            step[2],
            out,
        );
    }
}

/// Output rows that read across source rows (a transpose). The output is walked in square
/// tiles of the plane spanned by its rows and the output axis `k` that reads along source
/// rows; each tile is read as runs along source rows into a small buffer and written as runs
/// along output rows, so both sides touch whole cache lines. (Reading the output's row order
/// directly would touch one source line per value, and with power-of-two sizes all those
/// lines fall into the same cache set.)
fn copy_tiles(
    src: &[f32],
    base: isize,
    step: [isize; 3],
    dims: [usize; 3],
    dst: &mut [MaybeUninit<f32>],
) {
    #[cfg(target_arch = "x86_64")]
    {
        let k = if step[0].abs() == 1 { 0 } else { 1 };
        if dims[k].is_multiple_of(16)
            && dims[2].is_multiple_of(16)
            && std::arch::is_x86_feature_detected!("avx512f")
        {
            // SAFETY: the CPU has AVX-512F.
            unsafe { avx512::copy_tiles(src, base, step, dims, dst) };
            return;
        }
    }
    copy_tiles_buffered(src, base, step, dims, dst);
}

/// [`copy_tiles`] on any CPU and size, through a buffer in memory.
fn copy_tiles_buffered(
    src: &[f32],
    base: isize,
    step: [isize; 3],
    dims: [usize; 3],
    dst: &mut [MaybeUninit<f32>],
) {
    const TILE: usize = 64;
    const NEIGHBOURS: usize = 8;
    let k = if step[0].abs() == 1 { 0 } else { 1 };
    let m = 1 - k;
    let out_stride = [dims[1] * dims[2], dims[2]];
    // `tile[x]`: the run along axis `k` that output column `x` of the tile reads.
    let mut tile = [[MaybeUninit::new(0f32); TILE]; TILE];
    // Tiles at neighbouring positions along `m` read and write neighbouring rows, so they are
    // done one after another while those memory pages are open.
    for mb in (0..dims[m]).step_by(NEIGHBOURS) {
        for kb in (0..dims[k]).step_by(TILE) {
            let kn = TILE.min(dims[k] - kb);
            for xb in (0..dims[2]).step_by(TILE) {
                let xn = TILE.min(dims[2] - xb);
                for im in mb..(mb + NEIGHBOURS).min(dims[m]) {
                    let first = base + im as isize * step[m] + kb as isize * step[k];
                    for (x, run) in tile[..xn].iter_mut().enumerate() {
                        let s = first + (xb + x) as isize * step[2];
                        read_run(src, s, step[k], &mut run[..kn]);
                    }
                    for ik in 0..kn {
                        let o = im * out_stride[m] + (kb + ik) * out_stride[k] + xb;
                        for (d, run) in dst[o..o + xn].iter_mut().zip(&tile) {
                            *d = run[ik];
                        }
                    }
                }
            }
        }
    }
}

/// [`copy_tiles`] in 16 × 16 tiles transposed in AVX-512 registers: each tile reads 16 whole
/// cache lines (runs along source rows) and writes 16 (runs along output rows), so nothing has
/// to stay in cache between tiles.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;
    use std::mem::MaybeUninit;

    const T: usize = 16;

    /// [`super::copy_tiles`] where the output axis that reads along source rows and the output
    /// rows have multiples of 16 values.
    #[target_feature(enable = "avx512f")]
    pub(super) fn copy_tiles(
        src: &[f32],
        base: isize,
        step: [isize; 3],
        dims: [usize; 3],
        dst: &mut [MaybeUninit<f32>],
    ) {
        let k = if step[0].abs() == 1 { 0 } else { 1 };
        let m = 1 - k;
        let out_stride = [dims[1] * dims[2], dims[2]];
        // Runs read backwards are loaded forwards; their tile's columns then land in reverse.
        let back = if step[k] == 1 { 0 } else { T as isize - 1 };
        let mut rows = [_mm512_setzero_ps(); T];
        for im in 0..dims[m] {
            for kb in (0..dims[k]).step_by(T) {
                for xb in (0..dims[2]).step_by(T) {
                    let first = base
                        + im as isize * step[m]
                        + kb as isize * step[k]
                        + xb as isize * step[2]
                        - back;
                    // Row `x`: the run that output column `xb + x` reads, in memory order.
                    for (x, row) in rows.iter_mut().enumerate() {
                        *row = load(src, first + x as isize * step[2]);
                    }
                    for (j, col) in transpose(rows).into_iter().enumerate() {
                        let ik = if back == 0 { j } else { T - 1 - j };
                        let at = im * out_stride[m] + (kb + ik) * out_stride[k] + xb;
                        store(dst, at, col);
                    }
                }
            }
        }
    }

    /// The 16 values of `src` from `at` (panics outside `src`).
    #[target_feature(enable = "avx512f")]
    fn load(src: &[f32], at: isize) -> __m512 {
        let v = &src[at as usize..at as usize + T];
        // SAFETY: `v` holds 16 values.
        unsafe { _mm512_loadu_ps(v.as_ptr()) }
    }

    /// Writes `v` to the 16 values of `dst` from `at` (panics outside `dst`).
    #[target_feature(enable = "avx512f")]
    fn store(dst: &mut [MaybeUninit<f32>], at: usize, v: __m512) {
        let d = &mut dst[at..at + T];
        // SAFETY: `d` holds 16 values, and `MaybeUninit<f32>` has `f32`'s layout.
        unsafe { _mm512_storeu_ps(d.as_mut_ptr().cast(), v) }
    }

    /// Column `j` of the 16 × 16 matrix whose rows are `r`, for each `j`.
    #[target_feature(enable = "avx512f")]
    fn transpose(r: [__m512; T]) -> [__m512; T] {
        let (pd, ps) = (_mm512_castps_pd, _mm512_castpd_ps);
        // Per 128-bit lane `l`: rows 2i and 2i + 1 interleaved, columns 4l, 4l + 1 (`t[2i]`)
        // and 4l + 2, 4l + 3 (`t[2i + 1]`).
        let mut t = r;
        for i in 0..T / 2 {
            t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
            t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
        }
        // `u[4g + c]`, lane `l`: rows 4g..4g + 4 of column 4l + c.
        let mut u = t;
        for g in 0..4 {
            let (a0, a1, b0, b1) = (t[4 * g], t[4 * g + 1], t[4 * g + 2], t[4 * g + 3]);
            u[4 * g] = ps(_mm512_unpacklo_pd(pd(a0), pd(b0)));
            u[4 * g + 1] = ps(_mm512_unpackhi_pd(pd(a0), pd(b0)));
            u[4 * g + 2] = ps(_mm512_unpacklo_pd(pd(a1), pd(b1)));
            u[4 * g + 3] = ps(_mm512_unpackhi_pd(pd(a1), pd(b1)));
        }
        // Lanes of `v[2c]`: rows 0..4 of columns c and 8 + c, rows 4..8 of the same (`v[2c + 1]`:
        // columns 4 + c and 12 + c); `w` likewise for rows 8..16.
        let (mut v, mut w) = (u, u);
        for c in 0..4 {
            v[2 * c] = _mm512_shuffle_f32x4::<0x88>(u[c], u[4 + c]);
            v[2 * c + 1] = _mm512_shuffle_f32x4::<0xdd>(u[c], u[4 + c]);
            w[2 * c] = _mm512_shuffle_f32x4::<0x88>(u[8 + c], u[12 + c]);
            w[2 * c + 1] = _mm512_shuffle_f32x4::<0xdd>(u[8 + c], u[12 + c]);
        }
        let mut out = r;
        for c in 0..4 {
            out[c] = _mm512_shuffle_f32x4::<0x88>(v[2 * c], w[2 * c]);
            out[8 + c] = _mm512_shuffle_f32x4::<0xdd>(v[2 * c], w[2 * c]);
            out[4 + c] = _mm512_shuffle_f32x4::<0x88>(v[2 * c + 1], w[2 * c + 1]);
            out[12 + c] = _mm512_shuffle_f32x4::<0xdd>(v[2 * c + 1], w[2 * c + 1]);
        }
        out
    }
}

/// Writes `out.len()` values of `src` starting at `first`, `dir` apart (±1 in practice).
fn read_run(src: &[f32], first: isize, dir: isize, out: &mut [MaybeUninit<f32>]) {
    let n = out.len();
    let f = first as usize;
    match dir {
        1 => {
            for (d, &v) in out.iter_mut().zip(&src[f..f + n]) {
                d.write(v);
            }
        }
        -1 => {
            // In fixed-size chunks, which compile to vector loads and lane reversals.
            const W: usize = 16;
            let run = &src[f + 1 - n..=f];
            let mut outs = out.chunks_exact_mut(W);
            let mut ins = run.rchunks_exact(W);
            for (d, s) in (&mut outs).zip(&mut ins) {
                for (d, &v) in d.iter_mut().zip(s.iter().rev()) {
                    d.write(v);
                }
            }
            for (d, &v) in outs
                .into_remainder()
                .iter_mut()
                .zip(ins.remainder().iter().rev())
            {
                d.write(v);
            }
        }
        _ => {
            for (i, d) in out.iter_mut().enumerate() {
                d.write(src[(first + i as isize * dir) as usize]);
            }
        }
    }
}

/// A block of a grid to copy: the `size` cells from `origin`, with cells outside the box
/// `valid` (or the grid) reading as zero, and the depth axis reversed when `reverse_depth`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Block {
    /// The first cell (may lie outside the grid).
    pub origin: [isize; 3],
    /// Cells per axis.
    pub size: [usize; 3],
    /// The box of cells that read as themselves, in the grid's coordinates.
    pub valid: [std::ops::Range<isize>; 3],
    /// Whether the block's depth axis runs backwards.
    pub reverse_depth: bool,
}

/// A composition of axis flips and permutations: output axis `k` reads input axis `src[k]`,
/// reversed when `rev[k]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Orient {
    src: [usize; 3],
    rev: [bool; 3],
}

impl Orient {
    /// Nothing changed.
    pub const IDENTITY: Orient = Orient {
        src: [0, 1, 2],
        rev: [false; 3],
    };

    /// Then reverse output axis `axis` (`np.flip`).
    pub fn flip(self, axis: usize) -> Orient {
        let mut o = self;
        o.rev[axis] = !o.rev[axis];
        o
    }

    /// Then permute the axes (`np.transpose(_, perm)`).
    pub fn transpose(self, perm: [usize; 3]) -> Orient {
        Orient {
            src: perm.map(|p| self.src[p]),
            rev: perm.map(|p| self.rev[p]),
        }
    }

    /// Then `next` (`self` first, as a chain of [`Orient::flip`] and [`Orient::transpose`]
    /// calls would be).
    pub fn then(self, next: Orient) -> Orient {
        Orient {
            src: next.src.map(|k| self.src[k]),
            rev: std::array::from_fn(|k| self.rev[next.src[k]] ^ next.rev[k]),
        }
    }

    /// `np.rot90(_, k, axes=(a, b))`.
    pub fn rot90(k: usize, a: usize, b: usize) -> Orient {
        let mut perm = [0, 1, 2];
        perm.swap(a, b);
        let id = Orient::IDENTITY;
        match k % 4 {
            0 => id,
            1 => id.flip(b).transpose(perm),
            2 => id.flip(a).flip(b),
            _ => id.transpose(perm).flip(b),
        }
    }
}

/// A batch tensor of `items` equal-shaped grids (`c × dims`) written in parallel by
/// `fill(item, values)`, straight into the batch's memory: `[B, C, D, H, W]`, or `[B, C, H, W]`
/// when `planar`.
pub fn assemble(
    items: usize,
    c: usize,
    dims: [usize; 3],
    planar: bool,
    fill: impl Fn(usize, &mut [f32]) -> Result<()> + Sync,
) -> Result<Tensor> {
    let each = c * dims.iter().product::<usize>();
    let data = filled(items * each, each, |i, dst| fill(i, zeroed(dst)))?;
    batch_tensor(data, items, c, dims, planar, &Device::Cpu)
}

/// A vector of `len` values written chunk by chunk in parallel by `fill(chunk, values)`, which
/// must initialise every value of its chunk.
///
/// The memory is not zeroed first: the heap keeps freed memory (see
/// `ops::configure_allocator`), so `vec![0.0; len]` would clear a whole batch on one
/// thread before anything is written, which costs as much as writing the batch.
fn filled(
    len: usize,
    chunk: usize,
    fill: impl Fn(usize, &mut [MaybeUninit<f32>]) -> Result<()> + Sync,
) -> Result<Vec<f32>> {
    let mut data: Vec<f32> = Vec::with_capacity(len);
    data.spare_capacity_mut()[..len]
        .par_chunks_mut(chunk.max(1))
        .enumerate()
        .try_for_each(|(i, dst)| fill(i, dst))?;
    // SAFETY: every chunk of the first `len` values was initialised by `fill` above.
    unsafe { data.set_len(len) };
    Ok(data)
}

/// Sets every value of `dst` to zero and hands it back as initialised values.
fn zeroed(dst: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    for v in dst.iter_mut() {
        v.write(0.0);
    }
    // SAFETY: every value was just initialised, and `MaybeUninit<f32>` has `f32`'s layout.
    unsafe { &mut *(dst as *mut [MaybeUninit<f32>] as *mut [f32]) }
}

/// `data` as `[B, C, D, H, W]`, or `[B, C, H, W]` when `planar`, on `dev`.
fn batch_tensor(
    data: Vec<f32>,
    items: usize,
    c: usize,
    [d, h, w]: [usize; 3],
    planar: bool,
    dev: &Device,
) -> Result<Tensor> {
    let t = if planar {
        Tensor::from_vec(data, (items, c, h, w), &Device::Cpu)?
    } else {
        Tensor::from_vec(data, (items, c, d, h, w), &Device::Cpu)?
    };
    Ok(t.to_device(dev)?)
}

/// A batch tensor of blocks of grids, each placed at `at` in a zero `c × dims` grid and written
/// straight into the batch's memory in parallel: `[B, C, D, H, W]`, or `[B, C, H, W]` when
/// `planar`.
pub fn assemble_blocks(
    items: &[(&Grid, Block)],
    c: usize,
    dims: [usize; 3],
    at: [usize; 3],
    planar: bool,
) -> Result<Tensor> {
    if let Some((g, _)) = items.iter().find(|(g, _)| g.c != c) {
        return Err(Error::shape(
            "batch",
            format!("a grid of {} channels in a batch of {c}", g.c),
        ));
    }
    let each = c * dims.iter().product::<usize>();
    let data = filled(items.len() * each, each, |i, dst| {
        let (g, block) = &items[i];
        g.write_block(block, dst, dims, at);
        Ok(())
    })?;
    batch_tensor(data, items.len(), c, dims, planar, &Device::Cpu)
}

/// Crops of one grid for [`assemble_crops`]: the grid and, per crop, its slot in the batch and
/// its origin.
pub type CropGroup<'a> = (&'a Grid, Vec<(usize, [usize; 3])>);

/// A batch tensor of `slots` crops of `c × size`, each wholly inside its grid, taken as
/// `groups` lists them; every slot is filled once. Each group is copied by one thread, which
/// reads its grid's rows in order, each into the crops that cross it. `[B, C, D, H, W]`, or
/// `[B, C, H, W]` when `planar`.
pub fn assemble_crops(
    groups: &[CropGroup],
    slots: usize,
    c: usize,
    size: [usize; 3],
    planar: bool,
) -> Result<Tensor> {
    let each = c * size.iter().product::<usize>();
    let len = slots * each;
    let mut data: Vec<f32> = Vec::with_capacity(len);
    let mut outs: Vec<Option<&mut [MaybeUninit<f32>]>> = data.spare_capacity_mut()[..len]
        .chunks_exact_mut(each.max(1))
        .map(Some)
        .collect();
    let mut work = Vec::with_capacity(groups.len());
    for (g, crops) in groups {
        let mut group = Vec::with_capacity(crops.len());
        for &(slot, origin) in crops {
            if g.c != c || (0..3).any(|a| origin[a] + size[a] > g.dims[a]) {
                return Err(Error::shape(
                    "batch",
                    format!(
                        "a {c} x {size:?} crop at {origin:?} of a {} x {:?} grid",
                        g.c, g.dims
                    ),
                ));
            }
            let out = outs.get_mut(slot).and_then(Option::take).ok_or_else(|| {
                Error::arg("batch", format!("slot {slot} is missing or filled twice"))
            })?;
            group.push((origin, out));
        }
        work.push((*g, group));
    }
    if each > 0 && outs.iter().any(Option::is_some) {
        return Err(Error::arg("batch", "some slots are not filled"));
    }
    work.into_par_iter()
        .for_each(|(g, mut crops)| g.write_crops(&mut crops, size));
    // SAFETY: every slot's values were written by `write_crops` above (each slot was handed to
    // exactly one crop, and no slot was left over).
    unsafe { data.set_len(len) };
    batch_tensor(data, slots, c, size, planar, &Device::Cpu)
}

/// A batch tensor of equal-shaped grids, each seen through its orientation, written straight
/// into the batch's memory in parallel: `[B, C, D, H, W]`, or `[B, C, H, W]` when `planar`.
pub fn assemble_oriented(items: &[(&Grid, Orient)], planar: bool) -> Result<Tensor> {
    let (first, o) = *items
        .first()
        .ok_or_else(|| Error::arg("batch", "cannot stack an empty batch"))?;
    let dims = first.oriented_dims(o);
    if let Some((g, o)) = items
        .iter()
        .find(|(g, o)| g.c != first.c || g.oriented_dims(*o) != dims)
    {
        return Err(Error::shape(
            "batch",
            format!(
                "grids of {} x {dims:?} and {} x {:?} cannot share a batch",
                first.c,
                g.c,
                g.oriented_dims(*o)
            ),
        ));
    }
    let each = first.data.len();
    let data = filled(items.len() * each, each, |i, dst| {
        let (g, o) = items[i];
        g.orient_uninit(o, dst);
        Ok(())
    })?;
    batch_tensor(data, items.len(), first.c, dims, planar, &Device::Cpu)
}

/// Stacks equal-shaped grids into a batch tensor: `[B, C, D, H, W]`, or `[B, C, H, W]` when
/// `planar` (2D images).
pub fn stack<G: std::borrow::Borrow<Grid> + Sync>(
    grids: &[G],
    planar: bool,
    dev: &Device,
) -> Result<Tensor> {
    let grids: Vec<&Grid> = grids.iter().map(|g| g.borrow()).collect();
    let first = *grids
        .first()
        .ok_or_else(|| Error::arg("batch", "cannot stack an empty batch"))?;
    if let Some(g) = grids
        .iter()
        .find(|g| g.c != first.c || g.dims != first.dims)
    {
        return Err(Error::shape(
            "batch",
            format!(
                "grids of {} x {:?} and {} x {:?} cannot share a batch",
                first.c, first.dims, g.c, g.dims
            ),
        ));
    }
    let each = first.data.len();
    let data = filled(grids.len() * each, each, |i, dst| {
        for (d, &v) in dst.iter_mut().zip(&grids[i].data) {
            d.write(v);
        }
        Ok(())
    })?;
    batch_tensor(data, grids.len(), first.c, first.dims, planar, dev)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `g` seen through `o`, value by value from the definition.
    fn oriented_by_definition(g: &Grid, o: Orient) -> Vec<f32> {
        let dims = g.oriented_dims(o);
        let mut out = Vec::with_capacity(g.data.len());
        for c in 0..g.c {
            for i in 0..dims[0] {
                for j in 0..dims[1] {
                    for k in 0..dims[2] {
                        let mut at = [0; 3];
                        for (a, v) in [i, j, k].into_iter().enumerate() {
                            at[o.src[a]] = if o.rev[a] { dims[a] - 1 - v } else { v };
                        }
                        out.push(g.data[g.at(c, at[0], at[1], at[2])]);
                    }
                }
            }
        }
        out
    }

    #[test]
    fn every_orientation_matches_its_definition_at_tiled_and_odd_sizes() {
        let perms = [
            [0, 1, 2],
            [0, 2, 1],
            [1, 0, 2],
            [1, 2, 0],
            [2, 0, 1],
            [2, 1, 0],
        ];
        // Multiples of 16 take the register transposes where the CPU has them; the rest (and
        // slabs of planes that are not) the buffered tiles.
        for dims in [
            [32, 32, 32],
            [16, 48, 32],
            [80, 80, 80],
            [1, 32, 32],
            [7, 9, 11],
        ] {
            let n = 2 * dims.iter().product::<usize>();
            let g = Grid::new((0..n).map(|v| v as f32).collect(), 2, dims).unwrap();
            for perm in perms {
                for flips in 0..8 {
                    let mut o = Orient::IDENTITY.transpose(perm);
                    for a in (0..3).filter(|a| flips >> a & 1 == 1) {
                        o = o.flip(a);
                    }
                    assert_eq!(
                        g.orient(o).data,
                        oriented_by_definition(&g, o),
                        "{dims:?} {o:?}"
                    );
                }
            }
        }
    }
}

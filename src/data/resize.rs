//! 3D resampling with the maths of scikit-image's `resize` (and scipy's Gaussian filter).
//!
//! `skimage.transform.resize(x, shape, order, preserve_range=True)` is, for float input:
//! 1. if any axis shrinks and anti-aliasing is on: `scipy.ndimage.gaussian_filter` with
//!    `sigma = max(0, (in/out - 1) / 2)` per axis, truncated at `int(4 sigma + 0.5)`, mode
//!    `mirror` (numpy's `reflect`: `d c b | a b c d | c b a`);
//! 2. `scipy.ndimage.zoom(order, mode='mirror', grid_mode=True)`: output index `o` samples the
//!    input at `(o + 0.5) * in/out - 0.5`, coordinates outside the volume are mirrored;
//!    order 1 is linear interpolation, order 0 takes `floor(c + 0.5)`;
//! 3. the result is clipped to the input's min and max.
//!
//! Both steps are linear and separable, so each axis becomes one sparse 1D operator (Gaussian
//! composed with interpolation, built in f64) applied to the f32 voxels, axis by axis in the
//! order that shrinks the data fastest, in parallel with rayon.

use rayon::prelude::*;

use crate::error::{Error, Result};

/// How output voxels are interpolated from the input.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    serde::Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Interp {
    /// Nearest neighbour (skimage `order=0`).
    Nearest,
    /// Linear interpolation (skimage `order=1`).
    Linear,
}

/// Options of [`resize3d`], mirroring skimage's `resize` arguments.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Resize {
    /// The interpolation order.
    pub interp: Interp,
    /// Gaussian anti-aliasing before shrinking (skimage's default for float input).
    pub anti_alias: bool,
    /// Clip the output to the input's value range (skimage's `clip=True`).
    pub clip: bool,
}

impl Default for Resize {
    fn default() -> Self {
        Resize {
            interp: Interp::Linear,
            anti_alias: true,
            clip: true,
        }
    }
}

/// A sparse 1D linear operator: `out[i] = sum(w * in[idx])` over row `i`'s taps.
#[derive(Debug)]
struct Taps {
    start: Vec<usize>,
    idx: Vec<usize>,
    w: Vec<f32>,
}

impl Taps {
    fn rows(&self) -> usize {
        self.start.len() - 1
    }

    fn row(&self, i: usize) -> (&[usize], &[f32]) {
        let (a, b) = (self.start[i], self.start[i + 1]);
        (&self.idx[a..b], &self.w[a..b])
    }

    /// Builds the operator from dense rows of length `n_in` (zeros dropped).
    fn from_rows(rows: impl Iterator<Item = Vec<f64>>) -> Taps {
        let mut t = Taps {
            start: vec![0],
            idx: Vec::new(),
            w: Vec::new(),
        };
        for row in rows {
            for (j, &v) in row.iter().enumerate() {
                if v != 0.0 {
                    t.idx.push(j);
                    t.w.push(v as f32);
                }
            }
            t.start.push(t.idx.len());
        }
        t
    }
}

/// scipy's whole-sample mirror of an index into `0..n` (`d c b | a b c d | c b a`).
fn mirror(i: i64, n: usize) -> usize {
    if n <= 1 {
        return 0;
    }
    let period = 2 * (n as i64 - 1);
    let m = i.rem_euclid(period);
    (if m >= n as i64 { period - m } else { m }) as usize
}

/// scipy's mirror of a continuous coordinate (`map_coordinate` with `NI_EXTEND_MIRROR`).
fn mirror_coord(c: f64, n: usize) -> f64 {
    if n <= 1 {
        return 0.0;
    }
    let sz2 = (2 * n - 2) as f64;
    if c < 0.0 {
        let c = sz2 * (-c / sz2).trunc() + c;
        if c <= 1.0 - n as f64 { c + sz2 } else { -c }
    } else if c > (n - 1) as f64 {
        let c = c - sz2 * (c / sz2).trunc();
        if c >= n as f64 { sz2 - c } else { c }
    } else {
        c
    }
}

/// The dense rows of scipy's `gaussian_filter1d(sigma, truncate=4, mode='mirror')` on `n`
/// samples; `None` when sigma is too small to filter (scipy skips sigma <= 1e-15).
fn gaussian_rows(n: usize, sigma: f64) -> Option<Vec<Vec<f64>>> {
    if sigma <= 1e-15 {
        return None;
    }
    let radius = (4.0 * sigma + 0.5) as i64;
    let mut kernel: Vec<f64> = (-radius..=radius)
        .map(|x| (-0.5 / (sigma * sigma) * (x * x) as f64).exp())
        .collect();
    let sum: f64 = kernel.iter().sum();
    kernel.iter_mut().for_each(|k| *k /= sum);
    Some(
        (0..n)
            .map(|i| {
                let mut row = vec![0.0; n];
                for (t, k) in (-radius..=radius).zip(&kernel) {
                    row[mirror(i as i64 + t, n)] += k;
                }
                row
            })
            .collect(),
    )
}

/// The taps of one axis: interpolation from `n_in` to `n_out` samples, after the Gaussian
/// pre-filter when `sigma` is given.
fn axis_taps(n_in: usize, n_out: usize, interp: Interp, sigma: Option<f64>) -> Taps {
    let zoom = n_in as f64 / n_out as f64;
    let gauss = sigma.and_then(|s| gaussian_rows(n_in, s));
    let rows = (0..n_out).map(|o| {
        let c = mirror_coord((o as f64 + 0.5) * zoom - 0.5, n_in);
        let points: Vec<(usize, f64)> = match interp {
            Interp::Nearest => vec![(mirror((c + 0.5).floor() as i64, n_in), 1.0)],
            Interp::Linear => {
                let s = c.floor();
                let f = c - s;
                vec![
                    (mirror(s as i64, n_in), 1.0 - f),
                    (mirror(s as i64 + 1, n_in), f),
                ]
            }
        };
        let mut row = vec![0.0; n_in];
        for (j, w) in points {
            match &gauss {
                Some(g) => row.iter_mut().zip(&g[j]).for_each(|(r, g)| *r += w * g),
                None => row[j] += w,
            }
        }
        row
    });
    Taps::from_rows(rows)
}

/// Applies `taps` along `axis` of a C-order volume of shape `dims`.
fn apply_axis(data: &[f32], dims: [usize; 3], axis: usize, taps: &Taps) -> Vec<f32> {
    let n = dims[axis];
    let m = taps.rows();
    let outer: usize = dims[..axis].iter().product();
    let inner: usize = dims[axis + 1..].iter().product();
    let mut out = vec![0f32; outer * m * inner];
    let row = |o: usize, i: usize, dst: &mut [f32]| {
        let (idx, w) = taps.row(i);
        for (&j, &wj) in idx.iter().zip(w) {
            let src = &data[(o * n + j) * inner..][..inner];
            dst.iter_mut().zip(src).for_each(|(d, s)| *d += wj * s);
        }
    };
    if inner >= 256 {
        out.par_chunks_mut(inner)
            .enumerate()
            .for_each(|(r, dst)| row(r / m, r % m, dst));
    } else {
        out.par_chunks_mut(m * inner)
            .enumerate()
            .for_each(|(o, dst)| {
                for (i, d) in dst.chunks_mut(inner).enumerate() {
                    row(o, i, d);
                }
            });
    }
    out
}

fn check_shapes(len: usize, shape: [usize; 3], out: [usize; 3]) -> Result<()> {
    if shape.iter().product::<usize>() != len {
        return Err(Error::shape(
            "resize",
            format!("{len} voxels do not make a volume of shape {shape:?}"),
        ));
    }
    if shape.contains(&0) || out.contains(&0) {
        return Err(Error::shape(
            "resize",
            format!("shapes must be positive, got {shape:?} -> {out:?}"),
        ));
    }
    Ok(())
}

/// Resizes a C-order volume of `shape` to `out` as `skimage.transform.resize` does with
/// `preserve_range=True` and `mode='reflect'` (see the module doc).
pub fn resize3d(
    data: &[f32],
    shape: [usize; 3],
    out: [usize; 3],
    opts: Resize,
) -> Result<Vec<f32>> {
    check_shapes(data.len(), shape, out)?;
    let shrinks = (0..3).any(|a| out[a] < shape[a]);
    let mut axes: Vec<usize> = (0..3).filter(|&a| out[a] != shape[a]).collect();
    // An axis that keeps its size has sigma 0 and samples at the input points: the identity.
    axes.sort_by(|&a, &b| {
        let (ra, rb) = (
            out[a] as f64 / shape[a] as f64,
            out[b] as f64 / shape[b] as f64,
        );
        ra.total_cmp(&rb)
    });
    let mut dims = shape;
    let mut cur: Option<Vec<f32>> = None;
    for a in axes {
        let sigma = (opts.anti_alias && shrinks)
            .then(|| ((shape[a] as f64 / out[a] as f64) - 1.0).max(0.0) / 2.0);
        let taps = axis_taps(shape[a], out[a], opts.interp, sigma);
        let next = apply_axis(cur.as_deref().unwrap_or(data), dims, a, &taps);
        dims[a] = out[a];
        cur = Some(next);
    }
    let mut result = cur.unwrap_or_else(|| data.to_vec());
    if opts.clip {
        let (lo, hi) = min_max(data);
        result.par_iter_mut().for_each(|v| *v = v.clamp(lo, hi));
    }
    Ok(result)
}

/// The taps of one axis that sample `n_in` input samples at `coords` (one per output sample):
/// linear interpolation or nearest neighbour (half up), coordinates clamped to the input;
/// `None` gives an output of 0.
fn coord_taps(n_in: usize, coords: &[Option<f64>], interp: Interp) -> Taps {
    let mut t = Taps {
        start: vec![0],
        idx: Vec::new(),
        w: Vec::new(),
    };
    let last = n_in.saturating_sub(1) as f64;
    for c in coords {
        if let Some(c) = c {
            let c = c.clamp(0.0, last);
            match interp {
                Interp::Nearest => {
                    t.idx.push(((c + 0.5).floor() as usize).min(n_in - 1));
                    t.w.push(1.0);
                }
                Interp::Linear => {
                    let i0 = c.floor() as usize;
                    let f = c - i0 as f64;
                    t.idx.push(i0);
                    t.w.push((1.0 - f) as f32);
                    if f > 0.0 && i0 + 1 < n_in {
                        t.idx.push(i0 + 1);
                        t.w.push(f as f32);
                    }
                }
            }
        }
        t.start.push(t.idx.len());
    }
    t
}

/// Samples a C-order volume of `shape` separably: along axis `a`, output sample `o` reads the
/// input at coordinate `coords[a][o]` (linear or nearest, clamped to the volume); an output
/// voxel with a `None` coordinate along any axis is 0. The output has `coords[a].len()`
/// samples per axis.
pub fn sample_axes(
    data: &[f32],
    shape: [usize; 3],
    coords: &[Vec<Option<f64>>; 3],
    interp: Interp,
) -> Result<Vec<f32>> {
    let out = [0, 1, 2].map(|a| coords[a].len());
    check_shapes(data.len(), shape, out)?;
    let mut dims = shape;
    let mut cur: Option<Vec<f32>> = None;
    // The most shrinking axis first, as in `resize3d`.
    let mut axes = [0, 1, 2];
    axes.sort_by(|&a, &b| {
        (out[a] as f64 / shape[a] as f64).total_cmp(&(out[b] as f64 / shape[b] as f64))
    });
    for a in axes {
        let taps = coord_taps(shape[a], &coords[a], interp);
        let next = apply_axis(cur.as_deref().unwrap_or(data), dims, a, &taps);
        dims[a] = out[a];
        cur = Some(next);
    }
    Ok(cur.unwrap_or_else(|| data.to_vec()))
}

/// scipy's `gaussian_filter(x, sigma, mode='mirror', truncate=4)` on a C-order volume.
pub fn gaussian3d(data: &[f32], shape: [usize; 3], sigma: [f64; 3]) -> Result<Vec<f32>> {
    check_shapes(data.len(), shape, shape)?;
    let mut cur: Option<Vec<f32>> = None;
    for (a, &s) in sigma.iter().enumerate() {
        if let Some(rows) = gaussian_rows(shape[a], s) {
            let taps = Taps::from_rows(rows.into_iter());
            cur = Some(apply_axis(cur.as_deref().unwrap_or(data), shape, a, &taps));
        }
    }
    Ok(cur.unwrap_or_else(|| data.to_vec()))
}

/// The smallest and largest value (NaNs ignored), in parallel.
pub fn min_max(data: &[f32]) -> (f32, f32) {
    data.par_chunks(1 << 16)
        .map(|c| {
            c.iter()
                .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
                    (lo.min(v), hi.max(v))
                })
        })
        .reduce(
            || (f32::INFINITY, f32::NEG_INFINITY),
            |a, b| (a.0.min(b.0), a.1.max(b.1)),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirror_reflects_about_the_edge_samples_periodically() {
        let got: Vec<usize> = (-5..9).map(|i| mirror(i, 4)).collect();
        assert_eq!(got, vec![1, 2, 3, 2, 1, 0, 1, 2, 3, 2, 1, 0, 1, 2]);
        assert_eq!(mirror_coord(-0.25, 4), 0.25);
        // scipy leaves (n - 1, n) to the index mirror: 3.5 interpolates samples 3 and 4 -> 2.
        assert_eq!(mirror_coord(3.5, 4), 3.5);
        assert_eq!(mirror_coord(4.5, 4), 1.5);
    }

    #[test]
    fn every_operator_row_sums_to_one() {
        for (n_in, n_out) in [(20, 8), (5, 9), (7, 1), (100, 128)] {
            for interp in [Interp::Nearest, Interp::Linear] {
                let t = axis_taps(n_in, n_out, interp, Some(1.3));
                for i in 0..t.rows() {
                    let s: f32 = t.row(i).1.iter().sum();
                    assert!((s - 1.0).abs() < 1e-5, "{n_in}->{n_out} row {i}: {s}");
                }
            }
        }
    }
}

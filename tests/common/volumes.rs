//! Small structured volumes and images for pretext tests: a few Gaussian blobs of random
//! size and brightness on a gentle gradient along every axis, so orientation and position are
//! visible.

use pretext::data::Grid;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// A `size³` single-channel volume in [0, 1], deterministic by `seed`.
pub fn volume(size: usize, seed: u64) -> Grid {
    blobs(1, [size; 3], seed)
}

/// A `channels × size × size` image in [0, 1], deterministic by `seed`.
pub fn image(channels: usize, size: usize, seed: u64) -> Grid {
    blobs(channels, [1, size, size], seed)
}

fn blobs(c: usize, dims: [usize; 3], seed: u64) -> Grid {
    let mut rng = StdRng::seed_from_u64(seed);
    let n = 4;
    let centres: Vec<([f64; 3], f64, f64)> = (0..n)
        .map(|_| {
            let p = dims.map(|d| rng.random_range(0.0..d as f64));
            (
                p,
                rng.random_range(0.08..0.25) * dims[2] as f64,
                rng.random_range(0.3..1.0),
            )
        })
        .collect();
    let mut g = Grid::zeros(c, dims);
    let [d, h, w] = dims;
    for ch in 0..c {
        for z in 0..d {
            for y in 0..h {
                for x in 0..w {
                    let mut v = 0.3 * (x as f64 / w as f64)
                        + 0.2 * (y as f64 / h as f64)
                        + 0.1 * (z as f64 / d as f64)
                        + 0.05 * ch as f64;
                    for (p, r, a) in &centres {
                        let q = [z as f64, y as f64, x as f64];
                        let d2: f64 = (0..3).map(|i| (q[i] - p[i]).powi(2)).sum();
                        v += a * (-d2 / (2.0 * r * r)).exp();
                    }
                    g.data[((ch * d + z) * h + y) * w + x] = v as f32;
                }
            }
        }
    }
    g.min_max()
}

//! Smooth random fields for textures and intensity variation.

use rand::RngExt;
use rand::rngs::StdRng;

/// Value noise: random values in [-1, 1] on a lattice of `cell`-sized cells, interpolated with
/// smoothstep weights. A 2D field is a 3D one with a single z layer.
pub(crate) struct ValueNoise {
    n: [usize; 3],
    lo: [f32; 3],
    cell: f32,
    v: Vec<f32>,
}

impl ValueNoise {
    /// A field covering the box `lo..hi` (any point outside is clamped to it).
    pub(crate) fn new(rng: &mut StdRng, lo: [f32; 3], hi: [f32; 3], cell: f32) -> ValueNoise {
        let n = [0, 1, 2].map(|a| (((hi[a] - lo[a]) / cell).ceil().max(0.0) as usize) + 2);
        let v = (0..n[0] * n[1] * n[2])
            .map(|_| rng.random_range(-1.0f32..1.0))
            .collect();
        ValueNoise { n, lo, cell, v }
    }

    /// The field at `p`.
    pub(crate) fn at(&self, p: [f32; 3]) -> f32 {
        let mut i0 = [0usize; 3];
        let mut w = [0f32; 3];
        for a in 0..3 {
            let t = ((p[a] - self.lo[a]) / self.cell).clamp(0.0, (self.n[a] - 1) as f32);
            let f = t.floor().min((self.n[a].saturating_sub(2)) as f32);
            i0[a] = f as usize;
            let u = (t - f).clamp(0.0, 1.0);
            w[a] = u * u * (3.0 - 2.0 * u);
        }
        let idx = |x: usize, y: usize, z: usize| {
            let x = (i0[0] + x).min(self.n[0] - 1);
            let y = (i0[1] + y).min(self.n[1] - 1);
            let z = (i0[2] + z).min(self.n[2] - 1);
            self.v[(x * self.n[1] + y) * self.n[2] + z]
        };
        let lerp = |a: f32, b: f32, t: f32| a + (b - a) * t;
        let mut acc = [[0f32; 2]; 2];
        for (x, row) in acc.iter_mut().enumerate() {
            for (y, v) in row.iter_mut().enumerate() {
                *v = lerp(idx(x, y, 0), idx(x, y, 1), w[2]);
            }
        }
        lerp(
            lerp(acc[0][0], acc[0][1], w[1]),
            lerp(acc[1][0], acc[1][1], w[1]),
            w[0],
        )
    }
}

//! Exemplar augmentations: O's `augment_exemplar_3d` and the 2D albumentations pipeline.

use rand::{Rng, RngExt};

use crate::data::Grid;
use crate::data::augment::{brightness_contrast, crop_or_pad, rotate_plane, zoom};

/// O's 3D exemplar augmentation: random flips; per plane, with probability 0.5, a quarter-turn
/// rotation or an arbitrary-angle one; with probability 0.5 brightness ±0.125 and contrast
/// ×U(0.5, 1.5) about the mean; with probability 0.15 a per-axis zoom U(0.8, 1.2), zero-padded
/// (centred) and randomly cropped back to size.
pub fn augment_3d(v: &Grid, rng: &mut impl Rng) -> Grid {
    let mut g = v.clone();
    for axis in 0..3 {
        if rng.random_bool(0.5) {
            g = g.flip(axis);
        }
    }
    for (a, b) in [(0, 1), (1, 2), (0, 2)] {
        if rng.random_bool(0.5) {
            g = if rng.random_bool(0.5) && g.dims[a] == g.dims[b] {
                g.rot90(rng.random_range(0..4), a, b)
            } else {
                rotate_plane(&g, a, b, rng.random_range(0.0..360.0))
            };
        }
    }
    if rng.random_bool(0.5) {
        g = brightness_contrast(
            &g,
            rng.random_range(-0.125..0.125),
            rng.random_range(0.5..1.5),
        );
    }
    if rng.random_bool(0.15) {
        let factors = [0; 3].map(|_| rng.random_range(0.8..1.2));
        g = crop_or_pad(&zoom(&g, factors), v.dims, rng);
    }
    g
}

/// The 2D exemplar augmentation (O's albumentations): a random quarter turn, vertical and
/// horizontal flips with probability 0.5, brightness and contrast ±0.2.
pub fn augment_2d(img: &Grid, rng: &mut impl Rng) -> Grid {
    let mut g = if img.dims[1] == img.dims[2] {
        img.rot90(rng.random_range(0..4), 1, 2)
    } else {
        img.clone()
    };
    if rng.random_bool(0.5) {
        g = g.flip(1);
    }
    if rng.random_bool(0.5) {
        g = g.flip(2);
    }
    // albumentations: x·α + β·max_value, α = 1 + U(±0.2), β = U(±0.2), clipped to [0, 1].
    let (alpha, beta) = (
        1.0 + rng.random_range(-0.2..0.2),
        rng.random_range(-0.2..0.2),
    );
    g.map(|x| (x * alpha + beta).clamp(0.0, 1.0))
}

//! Exemplar augmentations: O's `augment_exemplar_3d` and the 2D albumentations pipeline.

use rand::{Rng, RngExt};

use std::borrow::Cow;

use crate::data::Grid;
use crate::data::augment::{brightness_contrast, crop_or_pad, rotate_plane, zoom};
use crate::data::grid::Orient;

/// O's 3D exemplar augmentation: random flips; per plane, with probability 0.5, a quarter-turn
/// rotation or an arbitrary-angle one; with probability 0.5 brightness ±0.125 and contrast
/// ×U(0.5, 1.5) about the mean; with probability 0.15 a per-axis zoom U(0.8, 1.2), zero-padded
/// (centred) and randomly cropped back to size.
pub fn augment_3d(v: &Grid, rng: &mut impl Rng) -> Grid {
    let mut g = Pending::new(v);
    for axis in 0..3 {
        if rng.random_bool(0.5) {
            g.o = g.o.flip(axis);
        }
    }
    for (a, b) in [(0, 1), (1, 2), (0, 2)] {
        if rng.random_bool(0.5) {
            let dims = g.dims();
            if rng.random_bool(0.5) && dims[a] == dims[b] {
                g.o = g.o.then(Orient::rot90(rng.random_range(0..4), a, b));
            } else {
                let r = rotate_plane(g.settle(), a, b, rng.random_range(0.0..360.0));
                g = Pending::owned(r);
            }
        }
    }
    if rng.random_bool(0.5) {
        let (shift, contrast) = (rng.random_range(-0.125..0.125), rng.random_range(0.5..1.5));
        g = Pending::owned(brightness_contrast(g.settle(), shift, contrast));
    }
    if rng.random_bool(0.15) {
        let factors = [0; 3].map(|_| rng.random_range(0.8..1.2));
        let z = zoom(g.settle(), factors);
        g = Pending::owned(crop_or_pad(&z, v.dims, rng));
    }
    g.into_grid()
}

/// A grid seen through an orientation not applied yet: flips and quarter turns only move
/// values, so a run of them is applied in one pass when a step needs the values.
struct Pending<'a> {
    grid: Cow<'a, Grid>,
    o: Orient,
}

impl<'a> Pending<'a> {
    fn new(g: &'a Grid) -> Self {
        Pending {
            grid: Cow::Borrowed(g),
            o: Orient::IDENTITY,
        }
    }

    fn owned(g: Grid) -> Self {
        Pending {
            grid: Cow::Owned(g),
            o: Orient::IDENTITY,
        }
    }

    fn dims(&self) -> [usize; 3] {
        self.grid.oriented_dims(self.o)
    }

    /// The values, with the orientation applied.
    fn settle(&mut self) -> &Grid {
        if self.o != Orient::IDENTITY {
            self.grid = Cow::Owned(self.grid.orient(self.o));
            self.o = Orient::IDENTITY;
        }
        &self.grid
    }

    fn into_grid(mut self) -> Grid {
        self.settle();
        self.grid.into_owned()
    }
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

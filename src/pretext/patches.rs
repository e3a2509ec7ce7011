//! The regular patch grid of the jigsaw and RPL tasks: `n` cells per side, patches `jitter`
//! voxels smaller than a cell, placed at a random offset in training and centred otherwise
//! (O's `crop_patches_3d`: 128³ → 3³ cells of 42, patches of 39, offsets 0..=3, centre 1).

use rand::{Rng, RngExt};

use crate::data::Grid;
use crate::{Error, Result};

/// The geometry of a patch grid for one volume or image size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PatchGrid {
    /// Cells per side.
    pub per_side: usize,
    /// Cell size per axis (depth 1 for images).
    pub cell: [usize; 3],
    /// Patch size per axis.
    pub patch: [usize; 3],
    /// How far a patch may move inside its cell.
    pub jitter: usize,
}

impl PatchGrid {
    /// The grid for grids of `dims` (images: `d = 1`, which stays 1).
    pub fn new(dims: [usize; 3], per_side: usize, jitter: usize) -> Result<Self> {
        let planar = dims[0] == 1;
        let mut cell = [1; 3];
        let mut patch = [1; 3];
        for i in (if planar { 1 } else { 0 })..3 {
            cell[i] = dims[i] / per_side.max(1);
            if per_side == 0 || cell[i] <= jitter {
                return Err(Error::arg(
                    "patch grid",
                    format!(
                        "{per_side} cells per side with jitter {jitter} do not fit size {dims:?}"
                    ),
                ));
            }
            patch[i] = cell[i] - jitter;
        }
        Ok(PatchGrid {
            per_side,
            cell,
            patch,
            jitter,
        })
    }

    /// Patches in the grid (`n³`, or `n²` for images).
    pub fn count(&self, planar: bool) -> usize {
        if planar {
            self.per_side.pow(2)
        } else {
            self.per_side.pow(3)
        }
    }

    /// Patch number `index` (axis 0 outermost) of `g`, at a random offset when `train`, else
    /// at the centre offset.
    pub fn patch(&self, g: &Grid, index: usize, train: bool, rng: &mut impl Rng) -> Grid {
        g.crop(self.origin(g.is_2d(), index, train, rng), self.patch)
    }

    /// Where patch number `index` starts: its cell plus a random offset when `train`, else
    /// the centre offset (images keep depth 0).
    pub fn origin(
        &self,
        planar: bool,
        index: usize,
        train: bool,
        rng: &mut impl Rng,
    ) -> [isize; 3] {
        let n = self.per_side;
        let cell = if planar {
            [0, index / n, index % n]
        } else {
            [index / (n * n), (index / n) % n, index % n]
        };
        std::array::from_fn(|a| {
            if planar && a == 0 {
                return 0;
            }
            let off = if train {
                rng.random_range(0..=self.jitter)
            } else {
                self.jitter / 2
            };
            (cell[a] * self.cell[a] + off) as isize
        })
    }

    /// Every patch of `g` in order (axis 0 outermost), each at a random offset when `train`,
    /// else at the centre offset `jitter / 2`.
    pub fn patches(&self, g: &Grid, train: bool, rng: &mut impl Rng) -> Vec<Grid> {
        (0..self.count(g.is_2d()))
            .map(|i| self.patch(g, i, train, rng))
            .collect()
    }
}

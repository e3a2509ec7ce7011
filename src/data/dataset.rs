//! [`Dataset`]: items by index, as the samplers and the finetuning loops read them. One trait,
//! generic over the item (as burn's `Dataset<I>`), so that one set serves several purposes:
//! the prepared sets give bare grids for pretraining ([`Dataset<Arc<Grid>>`]), volumes with
//! voxel labels ([`Dataset<LabelledVolume>`]) or images with a grade
//! ([`Dataset<GradedImage>`]) for finetuning.

use std::sync::Arc;

use candle_core::{DType, Tensor};

use super::{FundusSet, Grid, NiftiFolderSet, PancreasSet};
use crate::{Error, Result};

/// Items `0..len()` of one type, read by index (values in [0, 1]).
pub trait Dataset<I>: Send + Sync {
    /// Number of items.
    fn len(&self) -> usize;
    /// Whether there are none.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Item `i`.
    fn get(&self, i: usize) -> Result<I>;
}

/// A volume (one channel) and its labels, one per voxel in the volume's order.
pub type LabelledVolume = (Grid, Vec<u8>);

/// An image (`[C, 1, H, W]` as a grid) and its grade.
pub type GradedImage = (Grid, u8);

fn outside(i: usize, n: usize) -> Error {
    Error::arg("item", format!("index {i} is outside 0..{n}"))
}

/// A prepared case's image tensor and label map as a [`LabelledVolume`].
fn labelled_volume(image: &Tensor, label: &Tensor) -> Result<LabelledVolume> {
    let image = Grid::from_volume(image)?;
    Ok((image, label.to_dtype(DType::U8)?.flatten_all()?.to_vec1()?))
}

/// Items held in memory, for each item type: each `get` clones one (cheap for `Arc`s).
macro_rules! in_memory {
    ($($item:ty),*) => {$(
        impl Dataset<$item> for Vec<$item> {
            fn len(&self) -> usize {
                self.as_slice().len()
            }

            fn get(&self, i: usize) -> Result<$item> {
                self.as_slice()
                    .get(i)
                    .cloned()
                    .ok_or_else(|| outside(i, self.as_slice().len()))
            }
        }
    )*};
}

in_memory!(Arc<Grid>, LabelledVolume, GradedImage);

/// Grids held by value, read as shared grids: each `get` copies one (hold `Arc<Grid>`s to
/// avoid that).
impl Dataset<Arc<Grid>> for Vec<Grid> {
    fn len(&self) -> usize {
        self.as_slice().len()
    }

    fn get(&self, i: usize) -> Result<Arc<Grid>> {
        self.as_slice()
            .get(i)
            .cloned()
            .map(Arc::new)
            .ok_or_else(|| outside(i, self.as_slice().len()))
    }
}

impl Dataset<Arc<Grid>> for PancreasSet {
    fn len(&self) -> usize {
        PancreasSet::len(self)
    }

    fn get(&self, i: usize) -> Result<Arc<Grid>> {
        Ok(Arc::new(Grid::from_volume(&self.image(i)?)?))
    }
}

impl Dataset<LabelledVolume> for PancreasSet {
    fn len(&self) -> usize {
        PancreasSet::len(self)
    }

    fn get(&self, i: usize) -> Result<LabelledVolume> {
        let label = self.label(i)?.ok_or_else(|| {
            Error::arg(
                "case",
                format!("case {} ({}) has no label", i, self.id(i).unwrap_or("?")),
            )
        })?;
        labelled_volume(&self.image(i)?, &label)
    }
}

impl Dataset<Arc<Grid>> for NiftiFolderSet {
    fn len(&self) -> usize {
        NiftiFolderSet::len(self)
    }

    fn get(&self, i: usize) -> Result<Arc<Grid>> {
        Ok(Arc::new(Grid::from_volume(&self.image(i)?)?))
    }
}

impl Dataset<LabelledVolume> for NiftiFolderSet {
    fn len(&self) -> usize {
        NiftiFolderSet::len(self)
    }

    fn get(&self, i: usize) -> Result<LabelledVolume> {
        let label = self.label(i)?.ok_or_else(|| {
            Error::arg(
                "case",
                format!(
                    "case {} ({}) has no label map; finetune on set.labelled",
                    i,
                    self.id(i).unwrap_or("?")
                ),
            )
        })?;
        labelled_volume(&self.image(i)?, &label)
    }
}

impl Dataset<Arc<Grid>> for FundusSet {
    fn len(&self) -> usize {
        FundusSet::len(self)
    }

    fn get(&self, i: usize) -> Result<Arc<Grid>> {
        Ok(Arc::new(Grid::from_image(&self.image(i)?)?))
    }
}

impl Dataset<GradedImage> for FundusSet {
    fn len(&self) -> usize {
        FundusSet::len(self)
    }

    fn get(&self, i: usize) -> Result<GradedImage> {
        Ok((Grid::from_image(&self.image(i)?)?, self.grade(i)?))
    }
}

/// The items `ids` of a dataset, renumbered from 0.
pub struct Subset<'a, I> {
    src: &'a dyn Dataset<I>,
    ids: Vec<usize>,
}

impl<'a, I> Subset<'a, I> {
    /// The items `ids` of `src` (each must exist).
    pub fn new(src: &'a dyn Dataset<I>, ids: Vec<usize>) -> Result<Self> {
        if let Some(&i) = ids.iter().find(|&&i| i >= src.len()) {
            return Err(Error::arg(
                "ids",
                format!("item {i} is outside 0..{}", src.len()),
            ));
        }
        Ok(Subset { src, ids })
    }
}

impl<I> Dataset<I> for Subset<'_, I> {
    fn len(&self) -> usize {
        self.ids.len()
    }

    fn get(&self, i: usize) -> Result<I> {
        let id = *self.ids.get(i).ok_or_else(|| outside(i, self.ids.len()))?;
        self.src.get(id)
    }
}

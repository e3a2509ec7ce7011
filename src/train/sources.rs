//! The prepared datasets as the samplers and finetuning loops see them: pancreas volumes, NIfTI
//! folder volumes and fundus photographs as [`Grid`]s, with labels or grades, and subsets of them.

use std::sync::Arc;

use candle_core::DType;

use super::finetune::{GradeSource, SegSource};
use crate::data::{FundusSet, NiftiFolderSet, PancreasSet};
use crate::pretext::{Grid, Source};
use crate::{Error, Result};

impl Source for PancreasSet {
    fn len(&self) -> usize {
        PancreasSet::len(self)
    }

    fn get(&self, i: usize) -> Result<Arc<Grid>> {
        Ok(Arc::new(Grid::from_volume(&self.image(i)?)?))
    }
}

impl Source for FundusSet {
    fn len(&self) -> usize {
        FundusSet::len(self)
    }

    fn get(&self, i: usize) -> Result<Arc<Grid>> {
        Ok(Arc::new(Grid::from_image(&self.image(i)?)?))
    }
}

impl SegSource for PancreasSet {
    fn len(&self) -> usize {
        PancreasSet::len(self)
    }

    fn get(&self, i: usize) -> Result<(Grid, Vec<u8>)> {
        let label = self.label(i)?.ok_or_else(|| {
            Error::arg(
                "case",
                format!("case {} ({}) has no label", i, self.id(i).unwrap_or("?")),
            )
        })?;
        let image = Grid::from_volume(&self.image(i)?)?;
        Ok((image, label.to_dtype(DType::U8)?.flatten_all()?.to_vec1()?))
    }
}

impl Source for NiftiFolderSet {
    fn len(&self) -> usize {
        NiftiFolderSet::len(self)
    }

    fn get(&self, i: usize) -> Result<Arc<Grid>> {
        Ok(Arc::new(Grid::from_volume(&self.image(i)?)?))
    }
}

impl SegSource for NiftiFolderSet {
    fn len(&self) -> usize {
        NiftiFolderSet::len(self)
    }

    fn get(&self, i: usize) -> Result<(Grid, Vec<u8>)> {
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
        let image = Grid::from_volume(&self.image(i)?)?;
        Ok((image, label.to_dtype(DType::U8)?.flatten_all()?.to_vec1()?))
    }
}

impl GradeSource for FundusSet {
    fn len(&self) -> usize {
        FundusSet::len(self)
    }

    fn get(&self, i: usize) -> Result<(Grid, u8)> {
        Ok((Grid::from_image(&self.image(i)?)?, self.grade(i)?))
    }
}

/// The items `ids` of a source, renumbered from 0.
pub struct Subset<'a> {
    src: &'a dyn Source,
    ids: Vec<usize>,
}

impl<'a> Subset<'a> {
    /// The items `ids` of `src` (each must exist).
    pub fn new(src: &'a dyn Source, ids: Vec<usize>) -> Result<Self> {
        if let Some(&i) = ids.iter().find(|&&i| i >= src.len()) {
            return Err(Error::arg(
                "ids",
                format!("item {i} is outside 0..{}", src.len()),
            ));
        }
        Ok(Subset { src, ids })
    }
}

impl Source for Subset<'_> {
    fn len(&self) -> usize {
        self.ids.len()
    }

    fn get(&self, i: usize) -> Result<Arc<Grid>> {
        let id = *self.ids.get(i).ok_or_else(|| {
            Error::arg(
                "item",
                format!("index {i} is outside 0..{}", self.ids.len()),
            )
        })?;
        self.src.get(id)
    }
}

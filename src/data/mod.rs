//! Medical-image data: NIfTI volumes, fundus images, datasets, preprocessing and splits.

//! Rotation prediction: 10 classes in 3D (the identity and 90°/180°/270° about each axis, O's
//! exact flip/transpose table), 4 in 2D (`np.rot90` by 0–3 quarter turns).

use crate::data::grid::{Grid, Orient};
use crate::{Error, Result};

/// Classes of the 3D task.
pub const CLASSES_3D: usize = 10;
/// Classes of the 2D task.
pub const CLASSES_2D: usize = 4;

/// The flips and transposes of O's transform `r` (`rotate_batch_3d`), composed into one
/// orientation that is then applied in a single pass.
pub fn orientation_3d(r: usize) -> Result<Orient> {
    let id = Orient::IDENTITY;
    Ok(match r {
        0 => id,
        1 => id.flip(1).transpose([1, 0, 2]),
        2 => id.flip(0).flip(1),
        3 => id.transpose([1, 0, 2]).flip(1),
        4 => id.flip(1).transpose([0, 2, 1]),
        5 => id.flip(1).flip(2),
        6 => id.transpose([0, 2, 1]).flip(1),
        7 => id.flip(0).transpose([2, 1, 0]),
        8 => id.flip(0).flip(2),
        9 => id.transpose([2, 1, 0]).flip(0),
        _ => {
            return Err(Error::arg(
                "rotation",
                format!("class {r} is outside 0..{CLASSES_3D}"),
            ));
        }
    })
}

/// `np.rot90(image, k)`: `k` quarter turns in the height/width plane.
pub fn orientation_2d(k: usize) -> Result<Orient> {
    if k >= CLASSES_2D {
        return Err(Error::arg(
            "rotation",
            format!("class {k} is outside 0..{CLASSES_2D}"),
        ));
    }
    Ok(Orient::rot90(k, 1, 2))
}

/// O's transform `r` of a cubic volume.
pub fn rotate_3d(v: &Grid, r: usize) -> Result<Grid> {
    let [d, h, w] = v.dims;
    if d != h || h != w {
        return Err(Error::shape(
            "rotation",
            format!("3D rotation needs cubic volumes, got {:?}", v.dims),
        ));
    }
    Ok(v.orient(orientation_3d(r)?))
}

/// `np.rot90(image, k)` of a square image.
pub fn rotate_2d(img: &Grid, k: usize) -> Result<Grid> {
    if img.dims[1] != img.dims[2] {
        return Err(Error::shape(
            "rotation",
            format!("2D rotation needs square images, got {:?}", img.dims),
        ));
    }
    Ok(img.orient(orientation_2d(k)?))
}

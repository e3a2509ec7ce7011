//! Contact sheets of a dataset, for a person to judge it (`pretext data preview`).
//!
//! Decathlon: one row per case, the axial slice with the most voxels of the highest label (the
//! tumour when there is one; the middle slice without labels) shown twice, plain and with the labels overlaid (1 green,
//! 2 red), in an abdominal window (-160..240 HU), anterior up and patient right on the left.
//! APTOS: one row per grade 0..4, a few photographs each.

use std::path::Path;

use image::{Rgb, RgbImage, imageops};

use super::{Aptos, Decathlon, Image, Volume};
use crate::error::{Error, Result};

/// The abdominal CT window used by previews, in HU.
pub const WINDOW: (f32, f32) = (-160.0, 240.0);

/// An axial slice `z` of a C-order [x][y][z] volume as RGB (column = x, row = y), grey in
/// `window`, with `label` (same layout) overlaid when given.
pub fn axial_slice(
    hu: &[f32],
    label: Option<&[u8]>,
    shape: [usize; 3],
    z: usize,
    window: (f32, f32),
) -> RgbImage {
    let [nx, ny, nz] = shape;
    RgbImage::from_fn(nx as u32, ny as u32, |x, y| {
        let i = (x as usize * ny + y as usize) * nz + z;
        let g = ((hu[i] - window.0) / (window.1 - window.0)).clamp(0.0, 1.0) * 255.0;
        let tint = match label.map(|l| l[i]) {
            Some(1) => Some([40.0, 220.0, 60.0]),
            Some(2) => Some([240.0, 40.0, 40.0]),
            _ => None,
        };
        let px = match tint {
            Some(t) => t.map(|c| 0.55 * g + 0.45 * c),
            None => [g; 3],
        };
        Rgb(px.map(|v| v.round() as u8))
    })
}

/// The z index with the most voxels of the highest label present (the tumour when there is
/// one), else the middle slice.
pub fn best_slice(label: Option<&[u8]>, shape: [usize; 3]) -> usize {
    let nz = shape[2];
    let Some(l) = label else { return nz / 2 };
    let top = l.iter().copied().max().unwrap_or(0);
    if top == 0 {
        return nz / 2;
    }
    let mut count = vec![0usize; nz];
    for (i, &v) in l.iter().enumerate() {
        if v == top {
            count[i % nz] += 1;
        }
    }
    (0..nz).max_by_key(|&z| count[z]).unwrap_or(nz / 2)
}

fn volume_data(v: &Volume) -> Result<(Vec<f32>, [usize; 3])> {
    let s = v.spatial_shape();
    if v.shape().len() != 3 {
        return Err(Error::shape(
            "preview",
            format!("expected a 3D volume, got {:?}", v.shape()),
        ));
    }
    Ok((v.to_vec()?, s))
}

/// A sheet of the first `n` labelled cases, each slice scaled to `px` pixels wide.
pub fn decathlon_sheet(ds: &Decathlon, n: usize, px: u32) -> Result<RgbImage> {
    let cases: Vec<_> = ds
        .labelled()
        .iter()
        .chain(ds.unlabelled())
        .take(n)
        .collect();
    if cases.is_empty() {
        return Err(Error::file(ds.root(), "no cases to preview"));
    }
    let mut rows = Vec::new();
    for c in cases {
        let (hu, shape) = volume_data(&Volume::load(&c.image)?)?;
        let label = match &c.label {
            Some(p) => {
                let (l, ls) = volume_data(&Volume::load(p)?)?;
                if ls != shape {
                    return Err(Error::file(p, "label shape differs from its image's"));
                }
                Some(
                    l.iter()
                        .map(|&v| v.clamp(0.0, 255.0) as u8)
                        .collect::<Vec<u8>>(),
                )
            }
            None => None,
        };
        let z = best_slice(label.as_deref(), shape);
        let h = (px as f64 * shape[1] as f64 / shape[0] as f64)
            .round()
            .max(1.0) as u32;
        let plain = axial_slice(&hu, None, shape, z, WINDOW);
        let over = axial_slice(&hu, label.as_deref(), shape, z, WINDOW);
        rows.push(
            [plain, over].map(|im| imageops::resize(&im, px, h, imageops::FilterType::Triangle)),
        );
    }
    let h: u32 = rows.iter().map(|r| r[0].height() + 2).sum();
    let mut sheet = RgbImage::from_pixel(2 * px + 2, h, Rgb([0, 0, 0]));
    let mut y = 0;
    for r in &rows {
        imageops::replace(&mut sheet, &r[0], 0, y as i64);
        imageops::replace(&mut sheet, &r[1], px as i64 + 2, y as i64);
        y += r[0].height() + 2;
    }
    Ok(sheet)
}

/// A sheet with one row per grade 0..4 holding up to `per_grade` photographs of `px` pixels.
pub fn aptos_sheet(ds: &Aptos, per_grade: usize, px: u32) -> Result<RgbImage> {
    let mut sheet = RgbImage::from_pixel(per_grade as u32 * (px + 2), 5 * (px + 2), Rgb([0, 0, 0]));
    for g in 0..5u8 {
        for (k, e) in ds
            .entries()
            .iter()
            .filter(|e| e.grade == g)
            .take(per_grade)
            .enumerate()
        {
            let img = Image::load(&e.image)?.dynamic().to_rgb8();
            let t = imageops::resize(&img, px, px, imageops::FilterType::Triangle);
            imageops::replace(
                &mut sheet,
                &t,
                (k as u32 * (px + 2)) as i64,
                (g as u32 * (px + 2)) as i64,
            );
        }
    }
    Ok(sheet)
}

/// Writes a contact sheet of the dataset in `dir` (Decathlon or APTOS) to the PNG `out`:
/// `n` cases (Decathlon) or `n` photographs per grade (APTOS), `px` pixels per picture.
pub fn preview(dir: &Path, out: &Path, n: usize, px: u32) -> Result<()> {
    let sheet = if dir.join("train.csv").is_file() {
        aptos_sheet(&Aptos::open(dir)?, n, px)?
    } else {
        decathlon_sheet(&Decathlon::open(dir)?, n, px)?
    };
    Image::from_dynamic(image::DynamicImage::ImageRgb8(sheet)).save(out)
}

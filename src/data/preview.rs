//! Contact sheets of a dataset, for a person to judge it (`pretext data preview`).
//!
//! Decathlon: one row per case, the axial slice with the most voxels of the highest label (the
//! tumour when there is one; the middle slice without labels) shown twice, plain and with the labels overlaid (1 green,
//! 2 red), in an abdominal window (-160..240 HU), anterior up and patient right on the left.
//! APTOS: one row per grade 0..4, a few photographs each.
//!
//! Predictions (`pretext data preview DIR --pred PRED`): one row per case that has a predicted
//! label map `PRED/<id>.nii.gz`, the image, the truth and the prediction side by side, and the
//! Dice of every label.

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
        let tint = label.and_then(|l| colour(l[i]));
        let px = match tint {
            Some(t) => t.map(|c| 0.55 * g + 0.45 * c),
            None => [g; 3],
        };
        Rgb(px.map(|v| v.round() as u8))
    })
}

/// The overlay colour of a label: 1 green, 2 red, 3 blue, 4 yellow, 5 magenta, 6 cyan, higher
/// orange; none for 0.
pub fn colour(label: u8) -> Option<[f32; 3]> {
    Some(match label {
        0 => return None,
        1 => [40.0, 220.0, 60.0],
        2 => [240.0, 40.0, 40.0],
        3 => [50.0, 110.0, 250.0],
        4 => [245.0, 225.0, 40.0],
        5 => [230.0, 60.0, 230.0],
        6 => [40.0, 220.0, 230.0],
        _ => [250.0, 150.0, 30.0],
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

/// What [`prediction_sheet`] compares.
#[derive(Clone, Debug)]
pub struct PredictionSheet {
    /// A Decathlon folder, or a folder of NIfTI images.
    pub images: std::path::PathBuf,
    /// The folder of predicted label maps, `<id>.nii.gz` (or `.nii`) per case.
    pub pred: std::path::PathBuf,
    /// The folder of true label maps for a folder of images (a Decathlon folder has its own).
    pub labels: Option<std::path::PathBuf>,
    /// Which files of a folder of images are images.
    pub glob: String,
    /// The grey window; `None`: the abdominal CT window for a Decathlon folder, else the
    /// 0.5 and 99.5 percentiles of each case.
    pub window: Option<(f32, f32)>,
    /// Cases at most.
    pub n: usize,
    /// Pixels per picture.
    pub px: u32,
}

/// One case of a prediction sheet: its id and the Dice of each label present in truth or
/// prediction (`None` without a truth).
#[derive(Clone, Debug)]
pub struct CaseScore {
    /// The case id.
    pub id: String,
    /// `(label, Dice)` for every label > 0 found in the truth or the prediction.
    pub dice: Vec<(u8, f64)>,
}

fn labels_of(path: &Path, shape: [usize; 3], what: &str) -> Result<Vec<u8>> {
    let (l, ls) = volume_data(&Volume::load(path)?)?;
    if ls != shape {
        return Err(Error::file(
            path,
            format!(
                "{what} shape {ls:?} differs from the image's {shape:?}: label maps must be in \
                 the image's geometry"
            ),
        ));
    }
    Ok(l.iter()
        .map(|&v| v.clamp(0.0, 255.0).round() as u8)
        .collect())
}

fn find_nifti(dir: &Path, id: &str) -> Option<std::path::PathBuf> {
    [format!("{id}.nii.gz"), format!("{id}.nii")]
        .into_iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
}

/// A sheet with one row per case that has a prediction: image, truth (when known) and
/// prediction overlays on the axial slice with the most voxels of the truth's (else the
/// prediction's) highest label, and the Dice per label.
pub fn prediction_sheet(o: &PredictionSheet) -> Result<(RgbImage, Vec<CaseScore>)> {
    let decathlon = o.images.join("dataset.json").is_file() || o.images.join("imagesTr").is_dir();
    let cases: Vec<(String, std::path::PathBuf, Option<std::path::PathBuf>)> = if decathlon {
        let ds = Decathlon::open(&o.images)?;
        ds.cases()
            .map(|c| (c.id.clone(), c.image.clone(), c.label.clone()))
            .collect()
    } else {
        super::folder::glob_files(&o.images, &o.glob, &[])?
            .into_iter()
            .filter(|(_, rel)| rel.ends_with(".nii.gz") || rel.ends_with(".nii"))
            .map(|(p, rel)| {
                let id = super::folder::folder_case_id(rel.rsplit('/').next().unwrap_or(&rel), "");
                let truth = o.labels.as_ref().and_then(|d| find_nifti(d, &id));
                (id, p, truth)
            })
            .collect()
    };
    let mut rows = Vec::new();
    let mut scores = Vec::new();
    for (id, image, truth) in cases {
        if rows.len() >= o.n {
            break;
        }
        let Some(pred_path) = find_nifti(&o.pred, &id) else {
            continue;
        };
        let (data, shape) = volume_data(&Volume::load(&image)?)?;
        let pred = labels_of(&pred_path, shape, "prediction")?;
        let truth = truth.map(|p| labels_of(&p, shape, "label")).transpose()?;
        let window = match o.window {
            Some(w) => w,
            None if decathlon => WINDOW,
            None => (
                super::folder::percentile(&data, 0.5) as f32,
                super::folder::percentile(&data, 99.5) as f32,
            ),
        };
        let window = if window.1 > window.0 {
            window
        } else {
            (window.0, window.0 + 1.0)
        };
        let z = best_slice(Some(truth.as_deref().unwrap_or(&pred)), shape);
        let h = (o.px as f64 * shape[1] as f64 / shape[0] as f64)
            .round()
            .max(1.0) as u32;
        let mut panels = vec![axial_slice(&data, None, shape, z, window)];
        if let Some(t) = &truth {
            panels.push(axial_slice(&data, Some(t), shape, z, window));
        }
        panels.push(axial_slice(&data, Some(&pred), shape, z, window));
        rows.push(
            panels
                .into_iter()
                .map(|im| imageops::resize(&im, o.px, h, imageops::FilterType::Nearest))
                .collect::<Vec<_>>(),
        );
        let dice = match &truth {
            None => Vec::new(),
            Some(t) => {
                let top = t.iter().chain(&pred).copied().max().unwrap_or(0);
                (1..=top)
                    .filter_map(|l| {
                        let (mut i, mut a, mut b) = (0usize, 0usize, 0usize);
                        for (x, y) in t.iter().zip(&pred) {
                            let (p, q) = (*x == l, *y == l);
                            i += usize::from(p && q);
                            a += usize::from(p);
                            b += usize::from(q);
                        }
                        (a + b > 0).then(|| (l, 2.0 * i as f64 / (a + b) as f64))
                    })
                    .collect()
            }
        };
        scores.push(CaseScore { id, dice });
    }
    if rows.is_empty() {
        return Err(Error::file(
            &o.pred,
            "no predicted label map here matches a case (expected <id>.nii.gz)",
        ));
    }
    let cols = rows.iter().map(Vec::len).max().unwrap_or(1) as u32;
    let h: u32 = rows.iter().map(|r| r[0].height() + 2).sum();
    let mut sheet = RgbImage::from_pixel(cols * o.px + 2 * (cols - 1), h, Rgb([0, 0, 0]));
    let mut y = 0;
    for r in &rows {
        for (k, p) in r.iter().enumerate() {
            let x = if r.len() < cols as usize && k + 1 == r.len() {
                (cols - 1) * (o.px + 2)
            } else {
                k as u32 * (o.px + 2)
            };
            imageops::replace(&mut sheet, p, x as i64, y as i64);
        }
        y += r[0].height() + 2;
    }
    Ok((sheet, scores))
}

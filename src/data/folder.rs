//! Any folder of NIfTI volumes as a prepared dataset (`nifti_folder(#{..})` in scripts): the
//! images a glob selects under a root folder, of any modality, with optional label maps from a
//! second folder, each case preprocessed once into the cache (as the pancreas and fundus sets)
//! by [`VolumePreprocess`]: intensity window or percentile normalisation to [0, 1], resampling
//! to a voxel spacing, an optional crop to the foreground, and a resize or centre crop/pad to a
//! shape. Every case keeps its [`Geometry`], so a prediction made on the prepared volume goes
//! back onto the original image (its shape, its affine).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::cache::{Item, cache_dir, load, prepare};
use super::geometry::{Geometry, IndexMap};
use super::preprocess::{bounding_box, crop, spatial3};
use super::resize::{Interp, Resize, resize3d};
use super::volume::{Affine, Volume};
use crate::error::{Error, FileContext, Result};

/// How a case reaches the target shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Fit {
    /// Linear interpolation to the shape (anti-aliased when shrinking; the aspect ratio
    /// changes when the shapes' ratios differ).
    Resize,
    /// Centred crop or zero padding to the shape: the voxel size is kept.
    CropPad,
    /// Keep each case's own size (cases may then differ; batches need equal shapes).
    None,
}

/// The preprocessing of a generic volume; every step is optional and the order is fixed:
/// normalise, resample, crop to the foreground, fit to the shape.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct VolumePreprocess {
    /// Resample every case to this voxel spacing [x, y, z] in mm (linear for images; labels
    /// per label mask, then the largest); () = keep each case's voxel grid.
    pub spacing: Option<[f64; 3]>,
    /// Intensity window [lo, hi] in the file's units (e.g. CT HU [-200, 300]): values are
    /// clipped to it and scaled to [0, 1]; () = the `percentiles` of each case.
    pub window: Option<[f64; 2]>,
    /// When no window is given: the percentiles [lo, hi] of each case's voxels that are
    /// clipped and scaled to [0, 1] (numpy's linear percentile; [0, 100] = min-max).
    pub percentiles: [f64; 2],
    /// Crop each case to the box of its voxels above `threshold` after normalisation (e.g.
    /// the head of an MRI, the body of a CT with a window).
    pub crop_foreground: bool,
    /// The foreground threshold of `crop_foreground`, on the normalised [0, 1] image.
    pub threshold: f64,
    /// The target shape [x, y, z] (cubes for the rotation task; for the UNet multiples of
    /// 2^depth and at least 2^(depth+1)).
    pub shape: [usize; 3],
    /// How a case reaches `shape`: "resize", "crop_pad" (centred, zeros outside) or "none"
    /// (each case keeps its own size).
    pub fit: Fit,
    /// Gaussian anti-aliasing when shrinking an image, as scikit-image does.
    pub anti_alias: bool,
}

impl Default for VolumePreprocess {
    fn default() -> Self {
        VolumePreprocess {
            spacing: None,
            window: None,
            percentiles: [0.5, 99.5],
            crop_foreground: false,
            threshold: 0.05,
            shape: [128, 128, 128],
            fit: Fit::Resize,
            anti_alias: true,
        }
    }
}

/// A case after [`VolumePreprocess::apply`].
#[derive(Clone, Debug)]
pub struct PreparedVolume {
    /// The image, f32 `[x, y, z]` in [0, 1].
    pub image: Tensor,
    /// The label map, u8 `[x, y, z]`, when a label was given.
    pub label: Option<Tensor>,
    /// The original image's shape and affine and how prepared voxels map onto it.
    pub geometry: Geometry,
}

/// numpy's `percentile(values, q)` (linear interpolation between order statistics).
pub fn percentile(values: &[f32], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    let rank = (q / 100.0).clamp(0.0, 1.0) * (v.len() - 1) as f64;
    let lo = rank.floor() as usize;
    let frac = rank - lo as f64;
    let (_, a, right) = v.select_nth_unstable_by(lo, f32::total_cmp);
    let a = *a as f64;
    if frac == 0.0 || right.is_empty() {
        return a;
    }
    let b = right.iter().copied().fold(f32::INFINITY, f32::min) as f64;
    a + frac * (b - a)
}

impl VolumePreprocess {
    /// Checks the parameters.
    pub fn validate(&self) -> Result<()> {
        if let Some(s) = self.spacing
            && s.iter().any(|v| !(v.is_finite() && *v > 0.0))
        {
            return Err(Error::arg(
                "spacing",
                format!("every spacing must be a positive number of mm, got {s:?}"),
            ));
        }
        if let Some([lo, hi]) = self.window
            && !(lo.is_finite() && hi.is_finite() && lo < hi)
        {
            return Err(Error::arg(
                "window",
                format!("expected [lo, hi] with lo < hi, got [{lo}, {hi}]"),
            ));
        }
        let [plo, phi] = self.percentiles;
        if !(0.0..=100.0).contains(&plo) || !(0.0..=100.0).contains(&phi) || plo >= phi {
            return Err(Error::arg(
                "percentiles",
                format!("expected [lo, hi] with 0 <= lo < hi <= 100, got [{plo}, {phi}]"),
            ));
        }
        if !(0.0..1.0).contains(&self.threshold) {
            return Err(Error::arg(
                "threshold",
                format!("expected a value in [0, 1), got {}", self.threshold),
            ));
        }
        if self.fit != Fit::None && self.shape.contains(&0) {
            return Err(Error::arg(
                "shape",
                format!("every target size must be positive, got {:?}", self.shape),
            ));
        }
        Ok(())
    }

    /// The fixed shape of every prepared case, or `None` with `fit: "none"`.
    pub fn fixed_shape(&self) -> Option<[usize; 3]> {
        (self.fit != Fit::None).then_some(self.shape)
    }

    /// Preprocesses a volume (3D, or 4D with one frame) and optionally its label map.
    pub fn apply(&self, image: &Volume, label: Option<&Volume>) -> Result<PreparedVolume> {
        let shape = spatial3(image.shape(), "image")?;
        if let Some(l) = label
            && spatial3(l.shape(), "label")? != shape
        {
            return Err(Error::shape(
                "preprocess",
                format!(
                    "label shape {:?} differs from image shape {:?}",
                    l.shape(),
                    image.shape()
                ),
            ));
        }
        let data = image.to_vec()?;
        if let Some(msg) = super::verify::image_problem(&data, &shape) {
            return Err(Error::msg(msg));
        }
        let lab = label.map(Volume::to_vec).transpose()?;
        let (img, lab, prepared, map) =
            self.apply_raw(&data, shape, image.spacing(), lab.as_deref())?;
        let dims = (prepared[0], prepared[1], prepared[2]);
        Ok(PreparedVolume {
            image: Tensor::from_vec(img, dims, &Device::Cpu)?,
            label: lab
                .map(|l| Tensor::from_vec(l, dims, &Device::Cpu))
                .transpose()?,
            geometry: Geometry {
                shape,
                affine: *image.affine(),
                prepared,
                map,
            },
        })
    }

    /// Preprocesses C-order voxels of `shape` with voxel `spacing` (mm) and an optional label
    /// map: the image in [0, 1], the labels, the prepared shape and the index map back.
    #[allow(clippy::type_complexity)]
    pub fn apply_raw(
        &self,
        image: &[f32],
        shape: [usize; 3],
        spacing: [f64; 3],
        label: Option<&[f32]>,
    ) -> Result<(Vec<f32>, Option<Vec<u8>>, [usize; 3], IndexMap)> {
        self.validate()?;
        let n: usize = shape.iter().product();
        if n == 0 || image.len() != n || label.is_some_and(|l| l.len() != n) {
            return Err(Error::shape(
                "preprocess",
                format!("expected {n} voxels for shape {shape:?}"),
            ));
        }
        if let Some(v) = label.and_then(|l| {
            l.iter()
                .find(|v| !(v.fract() == 0.0 && (0.0..=255.0).contains(*v)))
        }) {
            return Err(Error::msg(format!(
                "preprocess: label value {v} is not a whole number in 0..255"
            )));
        }
        // 1. Intensities to [0, 1].
        let (lo, hi) = match self.window {
            Some([lo, hi]) => (lo, hi),
            None => (
                percentile(image, self.percentiles[0]),
                percentile(image, self.percentiles[1]),
            ),
        };
        if !(lo.is_finite() && hi.is_finite()) || hi <= lo {
            return Err(Error::msg(format!(
                "preprocess: the intensities to scale span [{lo}, {hi}]: the image is constant \
                 there (give a `window`, or wider `percentiles`)"
            )));
        }
        let mut img: Vec<f32> = image
            .par_iter()
            .map(|&v| ((v as f64 - lo) / (hi - lo)).clamp(0.0, 1.0) as f32)
            .collect();
        let mut lab: Option<Vec<f32>> = label.map(<[f32]>::to_vec);
        let mut cur = shape;
        let mut map = IndexMap::IDENTITY;
        let image_resize = Resize {
            interp: Interp::Linear,
            anti_alias: self.anti_alias,
            clip: true,
        };
        let resize_to = |img: &mut Vec<f32>,
                         lab: &mut Option<Vec<f32>>,
                         cur: &mut [usize; 3],
                         map: &mut IndexMap,
                         to: [usize; 3]|
         -> Result<()> {
            if to == *cur {
                return Ok(());
            }
            crate::memory::check_shape(&to, 4, "a resampled volume")?;
            *img = resize3d(img, *cur, to, image_resize)?;
            if let Some(l) = lab.as_mut() {
                *l = resize_labels(l, *cur, to)?;
            }
            *map = map.then(&IndexMap::resize(*cur, to));
            *cur = to;
            Ok(())
        };
        // 2. Resampling to a spacing.
        if let Some(target) = self.spacing {
            let to = [0, 1, 2]
                .map(|a| ((cur[a] as f64 * spacing[a] / target[a]).round() as usize).max(1));
            resize_to(&mut img, &mut lab, &mut cur, &mut map, to)?;
        }
        // 3. The foreground box.
        if self.crop_foreground {
            let t = self.threshold as f32;
            let bbox = bounding_box(&img, cur, |v| v > t, false).map_err(|_| {
                Error::msg(format!(
                    "preprocess: no voxel above the foreground threshold {} after \
                     normalisation; lower `threshold` or leave `crop_foreground` off",
                    self.threshold
                ))
            })?;
            img = crop(&img, cur, &bbox);
            lab = lab.map(|l| crop(&l, cur, &bbox));
            map = map.then(&IndexMap::shift(bbox.start.map(|s| s as isize)));
            cur = bbox.shape();
        }
        // 4. The target shape.
        match self.fit {
            Fit::None => {}
            Fit::Resize => resize_to(&mut img, &mut lab, &mut cur, &mut map, self.shape)?,
            Fit::CropPad => {
                let start: [isize; 3] =
                    [0, 1, 2].map(|a| (cur[a] as isize - self.shape[a] as isize).div_euclid(2));
                img = crop_pad(&img, cur, start, self.shape, 0.0);
                lab = lab.map(|l| crop_pad(&l, cur, start, self.shape, 0.0));
                map = map.then(&IndexMap::shift(start));
                cur = self.shape;
            }
        }
        let lab = lab.map(|l| l.into_iter().map(|v| v as u8).collect());
        Ok((img, lab, cur, map))
    }
}

/// A label map resized as nnU-Net resizes segmentations: each label's mask linearly (no
/// anti-aliasing), then the label of the largest value at every voxel (the smallest label on
/// ties). Small structures keep their shape better than with nearest neighbours.
pub fn resize_labels(labels: &[f32], shape: [usize; 3], to: [usize; 3]) -> Result<Vec<f32>> {
    let values: std::collections::BTreeSet<i64> = labels.iter().map(|&v| v as i64).collect();
    let opts = Resize {
        interp: Interp::Linear,
        anti_alias: false,
        clip: true,
    };
    let n: usize = to.iter().product();
    let mut best = vec![f32::NEG_INFINITY; n];
    let mut out = vec![0f32; n];
    for v in values {
        let mask: Vec<f32> = labels
            .par_iter()
            .map(|&l| f32::from(l as i64 == v))
            .collect();
        let r = resize3d(&mask, shape, to, opts)?;
        for ((b, o), x) in best.iter_mut().zip(out.iter_mut()).zip(r) {
            if x > *b {
                *b = x;
                *o = v as f32;
            }
        }
    }
    Ok(out)
}

/// The `out` block whose voxel 0 is voxel `start` of a C-order volume of `shape` (a negative
/// start pads); voxels outside the volume are `fill`.
pub fn crop_pad(
    data: &[f32],
    shape: [usize; 3],
    start: [isize; 3],
    out: [usize; 3],
    fill: f32,
) -> Vec<f32> {
    let [_, ny, nz] = shape;
    let [ox, oy, oz] = out;
    let mut v = vec![fill; ox * oy * oz];
    let range = |a: usize| {
        let lo = (-start[a]).max(0) as usize;
        let hi = ((shape[a] as isize - start[a]).min(out[a] as isize)).max(0) as usize;
        lo..hi.max(lo)
    };
    let (rx, ry, rz) = (range(0), range(1), range(2));
    v.par_chunks_mut(oy * oz).enumerate().for_each(|(x, slab)| {
        if !rx.contains(&x) {
            return;
        }
        let sx = (x as isize + start[0]) as usize;
        for y in ry.clone() {
            let sy = (y as isize + start[1]) as usize;
            let src = (sx * ny + sy) * nz;
            for z in rz.clone() {
                slab[y * oz + z] = data[src + (z as isize + start[2]) as usize];
            }
        }
    });
    v
}

/// The options of a NIfTI folder set (`nifti_folder(#{..})` in scripts).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default)]
pub struct NiftiFolderOptions {
    /// The folder holding the images (required).
    pub root: String,
    /// Which files under `root` are images: a glob relative to it (`*`, `?`, `[a-z]`, `**`
    /// for any depth of folders); only `.nii` and `.nii.gz` files count.
    pub glob: String,
    /// The folder of label maps ("" = none): a case's label is the file of the same relative
    /// path there, else `<id>.nii.gz` or `<id>.nii`; cases without one are unlabelled.
    pub labels: String,
    /// A suffix of image names that label names lack, left out of case ids, e.g. "_0000"
    /// (nnU-Net: imagesTr/case_0000.nii.gz with labelsTr/case.nii.gz).
    pub suffix: String,
    /// Label values must lie in 0..classes; () = any whole number in 0..255.
    pub classes: Option<usize>,
    /// The data folder holding the cache; "" = `PRETEXT_DATA` or `data/`.
    pub data: String,
    /// The cache folder; "" = `<data>/cache`.
    pub cache: String,
    /// The preprocessing of every case.
    #[serde(flatten)]
    pub preprocess: VolumePreprocess,
}

impl Default for NiftiFolderOptions {
    fn default() -> Self {
        NiftiFolderOptions {
            root: String::new(),
            glob: "*.nii*".into(),
            labels: String::new(),
            suffix: String::new(),
            classes: None,
            data: String::new(),
            cache: String::new(),
            preprocess: VolumePreprocess::default(),
        }
    }
}

impl NiftiFolderOptions {
    /// Lists, prepares (on first use) and opens the set.
    pub fn open(&self) -> Result<NiftiFolderSet> {
        NiftiFolderSet::open(self)
    }
}

/// Whether `name` matches one glob component (`*`, `?`, `[abc]`, `[a-z]`, `[!a]`).
pub fn glob_match(pattern: &str, name: &str) -> bool {
    fn class(p: &[char], c: char) -> Option<(bool, usize)> {
        // p starts after '['; returns (matched, length of the class incl. ']').
        let mut i = 0;
        let negate = matches!(p.first(), Some('!') | Some('^'));
        if negate {
            i += 1;
        }
        let mut hit = false;
        let mut first = true;
        while i < p.len() {
            if p[i] == ']' && !first {
                return Some((hit != negate, i + 1));
            }
            first = false;
            if i + 2 < p.len() && p[i + 1] == '-' && p[i + 2] != ']' {
                hit |= p[i] <= c && c <= p[i + 2];
                i += 3;
            } else {
                hit |= p[i] == c;
                i += 1;
            }
        }
        None
    }
    fn go(p: &[char], n: &[char]) -> bool {
        match p.first() {
            None => n.is_empty(),
            Some('*') => (0..=n.len()).any(|k| go(&p[1..], &n[k..])),
            Some('?') => !n.is_empty() && go(&p[1..], &n[1..]),
            Some('[') => match (n.first(), class(&p[1..], *n.first().unwrap_or(&'\0'))) {
                (Some(_), Some((true, len))) => go(&p[1 + len..], &n[1..]),
                (Some(_), Some((false, _))) => false,
                (None, _) => false,
                // An unclosed '[' is a literal.
                (Some(&c), None) => c == '[' && go(&p[1..], &n[1..]),
            },
            Some(&c) => n.first() == Some(&c) && go(&p[1..], &n[1..]),
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    go(&p, &n)
}

fn is_nifti_name(name: &str) -> bool {
    name.ends_with(".nii.gz") || name.ends_with(".nii")
}

/// The files under `root` whose relative paths match `pattern` (components separated by `/`;
/// `**` is any number of folders), sorted, with their relative paths. Hidden entries are
/// skipped unless the pattern component names them; paths under `skip` are left out.
pub fn glob_files(root: &Path, pattern: &str, skip: &[PathBuf]) -> Result<Vec<(PathBuf, String)>> {
    let comps: Vec<&str> = pattern
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    if comps.is_empty() || pattern.starts_with('/') || comps.contains(&"..") {
        return Err(Error::arg(
            "glob",
            format!("`{pattern}` must be a relative pattern inside the root (no `..`)"),
        ));
    }
    fn walk(
        dir: &Path,
        rel: &str,
        comps: &[&str],
        skip: &[PathBuf],
        depth: usize,
        out: &mut Vec<(PathBuf, String)>,
    ) -> Result<()> {
        let Some((&first, rest)) = comps.split_first() else {
            return Ok(());
        };
        if depth > 32 {
            return Ok(());
        }
        let mut entries: Vec<(String, PathBuf)> = std::fs::read_dir(dir)
            .with_file(dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| Some((e.file_name().to_str()?.to_string(), e.path())))
            .collect();
        entries.sort();
        let join = |name: &str| {
            if rel.is_empty() {
                name.to_string()
            } else {
                format!("{rel}/{name}")
            }
        };
        if first == "**" {
            walk(dir, rel, rest, skip, depth + 1, out)?;
            for (name, path) in &entries {
                if !name.starts_with('.') && path.is_dir() && !skipped(path, skip) {
                    walk(path, &join(name), comps, skip, depth + 1, out)?;
                }
            }
            return Ok(());
        }
        for (name, path) in &entries {
            if (name.starts_with('.') && !first.starts_with('.'))
                || !glob_match(first, name)
                || skipped(path, skip)
            {
                continue;
            }
            if rest.is_empty() {
                if path.is_file() {
                    out.push((path.clone(), join(name)));
                }
            } else if path.is_dir() {
                walk(path, &join(name), rest, skip, depth + 1, out)?;
            }
        }
        Ok(())
    }
    fn skipped(path: &Path, skip: &[PathBuf]) -> bool {
        let p = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
        skip.iter().any(|s| p.starts_with(s))
    }
    let mut out = Vec::new();
    walk(root, "", &comps, skip, 0, &mut out)?;
    out.sort_by(|a, b| a.1.cmp(&b.1));
    out.dedup_by(|a, b| a.1 == b.1);
    Ok(out)
}

/// A prepared folder of NIfTI volumes: the cases a glob selects, labelled where a label map
/// exists, each preprocessed once into the cache and read case by case.
#[derive(Clone, Debug)]
pub struct NiftiFolderSet {
    dir: PathBuf,
    root: PathBuf,
    ids: Vec<String>,
    images: Vec<PathBuf>,
    labels: Vec<Option<PathBuf>>,
    labelled: Vec<usize>,
    unlabelled: Vec<usize>,
    params: VolumePreprocess,
}

const GEOMETRY_LEN: usize = 3 + 16 + 3 + 3 + 3;

fn pack(g: &Geometry) -> Vec<f64> {
    let mut v = Vec::with_capacity(GEOMETRY_LEN);
    v.extend(g.shape.map(|s| s as f64));
    v.extend(g.affine.iter().flatten());
    v.extend(g.prepared.map(|s| s as f64));
    v.extend(g.map.scale);
    v.extend(g.map.offset);
    v
}

fn unpack(v: &[f64]) -> Option<Geometry> {
    if v.len() != GEOMETRY_LEN {
        return None;
    }
    let mut affine: Affine = [[0.0; 4]; 4];
    for (r, row) in affine.iter_mut().enumerate() {
        row.copy_from_slice(&v[3 + 4 * r..7 + 4 * r]);
    }
    let arr = |i: usize| [v[i], v[i + 1], v[i + 2]];
    Some(Geometry {
        shape: arr(0).map(|s| s as usize),
        affine,
        prepared: arr(19).map(|s| s as usize),
        map: IndexMap {
            scale: arr(22),
            offset: arr(25),
        },
    })
}

/// The case id of an image file: its name without `.nii(.gz)` and without `suffix`.
pub fn folder_case_id(name: &str, suffix: &str) -> String {
    let stem = name
        .strip_suffix(".nii.gz")
        .or_else(|| name.strip_suffix(".nii"))
        .unwrap_or(name);
    stem.strip_suffix(suffix)
        .filter(|s| !suffix.is_empty() && !s.is_empty())
        .unwrap_or(stem)
        .to_string()
}

impl NiftiFolderSet {
    /// Lists the images and labels, prepares the cases not yet in the cache (in parallel;
    /// the checks of `pretext data verify` first) and opens the set.
    pub fn open(o: &NiftiFolderOptions) -> Result<NiftiFolderSet> {
        o.preprocess.validate()?;
        if o.root.is_empty() {
            return Err(Error::arg(
                "root",
                "the folder of images is required (`root: \"/data/my_images\"`)",
            ));
        }
        let root = PathBuf::from(&o.root);
        if !root.is_dir() {
            return Err(Error::file(&root, "no such folder"));
        }
        if o.classes == Some(0) || o.classes.is_some_and(|c| c > 256) {
            return Err(Error::arg("classes", "expected 1..256 classes"));
        }
        let home = if o.data.is_empty() {
            super::home()
        } else {
            PathBuf::from(&o.data)
        };
        let cache = if o.cache.is_empty() {
            home.join("cache")
        } else {
            PathBuf::from(&o.cache)
        };
        let labels_dir = (!o.labels.is_empty()).then(|| PathBuf::from(&o.labels));
        if let Some(l) = &labels_dir
            && !l.is_dir()
        {
            return Err(Error::file(l, "no such labels folder"));
        }
        let canon = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
        let skip: Vec<PathBuf> = labels_dir
            .iter()
            .map(|p| canon(p))
            .chain([canon(&cache)])
            .collect();
        let files: Vec<(PathBuf, String)> = glob_files(&root, &o.glob, &skip)?
            .into_iter()
            .filter(|(_, rel)| is_nifti_name(rel))
            .collect();
        if files.is_empty() {
            return Err(Error::file(
                &root,
                format!(
                    "no .nii or .nii.gz file matches `{}` in this folder (for files in \
                     subfolders use `**/*.nii.gz`)",
                    o.glob
                ),
            ));
        }
        let mut seen: BTreeMap<String, String> = BTreeMap::new();
        let mut items = Vec::new();
        let mut label_paths = Vec::new();
        for (path, rel) in &files {
            let name = rel.rsplit('/').next().unwrap_or(rel);
            let id = folder_case_id(name, &o.suffix);
            if let Some(other) = seen.insert(id.clone(), rel.clone()) {
                return Err(Error::file(
                    path,
                    format!(
                        "case id `{id}` is also the id of {other}; ids (file names) must be unique"
                    ),
                ));
            }
            let label = labels_dir.as_ref().and_then(|dir| {
                let by_rel = crate::io::confined(dir, Path::new(rel)).ok();
                [
                    by_rel,
                    Some(dir.join(format!("{id}.nii.gz"))),
                    Some(dir.join(format!("{id}.nii"))),
                ]
                .into_iter()
                .flatten()
                .find(|p| p.is_file())
            });
            items.push(Item {
                id,
                sources: std::iter::once(path.clone()).chain(label.clone()).collect(),
            });
            label_paths.push(label);
        }
        if let Some(dir) = &labels_dir
            && label_paths.iter().all(Option::is_none)
        {
            return Err(Error::file(
                dir,
                format!(
                    "no label map here matches an image (expected e.g. {}.nii.gz, or the \
                     image's own file name{})",
                    items[0].id,
                    if o.suffix.is_empty() {
                        "; see the `suffix` option"
                    } else {
                        ""
                    }
                ),
            ));
        }
        let params = serde_json::json!({
            "preprocess": o.preprocess,
            "labels": labels_dir.as_ref().map(|p| canon(p).display().to_string()),
            "suffix": o.suffix,
            "classes": o.classes,
            "version": 1,
        });
        let dir = cache_dir(&cache, "nifti", &params, &root);
        let allowed: Option<std::collections::BTreeSet<i64>> =
            o.classes.map(|c| (0..c as i64).collect());
        let pre = &o.preprocess;
        // A case holds its image and label (f32), the copies `VolumePreprocess::apply` works
        // on, and the resampled, cropped and resized intermediates (each at most the image's
        // size, unless `spacing` is finer than the file's).
        let footprint = |it: &Item| {
            let image = super::budget::volume_bytes(&it.sources[0]);
            let label = it
                .sources
                .get(1)
                .map_or(0, |p| super::budget::volume_bytes(p));
            4 * image + 2 * label
        };
        prepare(
            &dir,
            "nifti",
            params.clone(),
            &root,
            &items,
            footprint,
            |it| {
                let image = Volume::load(&it.sources[0])?;
                let label = it.sources.get(1).map(Volume::load).transpose()?;
                if let Some(l) = &label {
                    let found = l
                        .with_values(|v| {
                            super::verify::label_problem(v, l.shape(), allowed.as_ref())
                        })?
                        .map_err(|(_, msg)| Error::file(&it.sources[1], msg))?;
                    if let Some(v) = found.iter().find(|&&v| !(0..=255).contains(&v)) {
                        return Err(Error::file(
                            &it.sources[1],
                            format!("label value {v} is outside 0..255"),
                        ));
                    }
                }
                let out = pre
                    .apply(&image, label.as_ref())
                    .map_err(|e| Error::file(&it.sources[0], e))?;
                let mut t = HashMap::from([
                    ("image".to_string(), out.image),
                    (
                        "geometry".to_string(),
                        Tensor::from_vec(pack(&out.geometry), GEOMETRY_LEN, &Device::Cpu)?,
                    ),
                ]);
                if let Some(l) = out.label {
                    t.insert("label".into(), l);
                }
                Ok(t)
            },
        )?;
        let labelled = (0..items.len())
            .filter(|&i| label_paths[i].is_some())
            .collect();
        let unlabelled = (0..items.len())
            .filter(|&i| label_paths[i].is_none())
            .collect();
        Ok(NiftiFolderSet {
            dir,
            root,
            ids: items.into_iter().map(|it| it.id).collect(),
            images: files.into_iter().map(|(p, _)| p).collect(),
            labels: label_paths,
            labelled,
            unlabelled,
            params: o.preprocess.clone(),
        })
    }

    /// The number of cases.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The indices of the cases with a label map.
    pub fn labelled(&self) -> &[usize] {
        &self.labelled
    }

    /// The indices of the cases without one.
    pub fn unlabelled(&self) -> &[usize] {
        &self.unlabelled
    }

    /// The folder of images.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The cache folder.
    pub fn cache_dir(&self) -> &Path {
        &self.dir
    }

    /// The preprocessing of every case.
    pub fn preprocess(&self) -> &VolumePreprocess {
        &self.params
    }

    /// The shape every case is prepared to, or `None` with `fit: "none"`.
    pub fn shape(&self) -> Option<[usize; 3]> {
        self.params.fixed_shape()
    }

    fn check(&self, i: usize) -> Result<()> {
        if i < self.len() {
            Ok(())
        } else {
            Err(Error::arg(
                "i",
                format!(
                    "case index {i} out of range: the set has {} cases",
                    self.len()
                ),
            ))
        }
    }

    /// The id of case `i` (its file name without `.nii(.gz)` and the suffix).
    pub fn id(&self, i: usize) -> Result<&str> {
        self.check(i).map(|_| self.ids[i].as_str())
    }

    /// The image file of case `i`.
    pub fn source(&self, i: usize) -> Result<&Path> {
        self.check(i).map(|_| self.images[i].as_path())
    }

    /// The label file of case `i`, if it has one.
    pub fn label_source(&self, i: usize) -> Result<Option<&Path>> {
        self.check(i).map(|_| self.labels[i].as_deref())
    }

    fn file(&self, i: usize) -> Result<PathBuf> {
        self.check(i)?;
        Ok(self.dir.join(format!("{}.safetensors", self.ids[i])))
    }

    /// The prepared image of case `i`: f32 `[x, y, z]` in [0, 1], on the CPU.
    pub fn image(&self, i: usize) -> Result<Tensor> {
        let f = self.file(i)?;
        load(&f, "image")?.ok_or_else(|| Error::file(&f, "no `image` tensor in the cache file"))
    }

    /// The prepared label map of case `i` (u8 `[x, y, z]`), or `None` for an unlabelled case.
    pub fn label(&self, i: usize) -> Result<Option<Tensor>> {
        let f = self.file(i)?;
        if self.labels[i].is_none() {
            return Ok(None);
        }
        load(&f, "label")?
            .ok_or_else(|| Error::file(&f, "no `label` tensor in the cache file"))
            .map(Some)
    }

    /// Where case `i`'s prepared voxels lie in its original image.
    pub fn geometry(&self, i: usize) -> Result<Geometry> {
        let f = self.file(i)?;
        let t = load(&f, "geometry")?
            .ok_or_else(|| Error::file(&f, "no `geometry` tensor; delete the cache folder"))?;
        let v: Vec<f64> = t.to_dtype(DType::F64)?.to_vec1()?;
        unpack(&v).ok_or_else(|| Error::file(&f, "a malformed `geometry` tensor"))
    }

    /// The prepared image of case `i` as a volume whose affine places it on the original
    /// image (for viewers; the header of the original, as f32).
    pub fn volume(&self, i: usize) -> Result<Volume> {
        let source = Volume::load(self.source(i)?)?;
        let g = self.geometry(i)?;
        let v = source.regridded(&self.image(i)?, &g.map)?;
        Ok(v.as_float())
    }

    /// Any NIfTI file preprocessed as this set's cases (for new cases): the source volume
    /// and its prepared image and geometry.
    pub fn prepare_file(&self, path: &Path) -> Result<(Volume, PreparedVolume)> {
        let v = Volume::load(path)?;
        let p = self
            .params
            .apply(&v, None)
            .map_err(|e| Error::file(path, e))?;
        Ok((v, p))
    }
}

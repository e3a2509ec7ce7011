//! Medical Segmentation Decathlon folders: `dataset.json`, `imagesTr/`, `labelsTr/`, `imagesTs/`.
//!
//! `dataset.json` lists the labelled cases (`training: [{image, label}]`) and the unlabelled
//! ones (`test: [path]`, optional, as are `numTraining`/`numTest`). A folder without
//! `dataset.json` is read by listing `imagesTr/` (labels under the same name in `labelsTr/`)
//! and `imagesTs/`. Hidden files (macOS `._*` copies in the MSD archives) are ignored.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::Volume;
use super::verify::{CaseReport, Problem, Report};
use crate::error::{Error, FileContext, Result};

/// One case: an image and, for labelled cases, its label file.
#[derive(Clone, Debug, PartialEq)]
pub struct Case {
    /// The file name without `.nii.gz`/`.nii`.
    pub id: String,
    /// The image file.
    pub image: PathBuf,
    /// The label file (labelled cases only).
    pub label: Option<PathBuf>,
}

/// An opened Decathlon folder.
#[derive(Clone, Debug)]
pub struct Decathlon {
    root: PathBuf,
    name: String,
    labels: Option<BTreeMap<u32, String>>,
    modality: BTreeMap<String, String>,
    labelled: Vec<Case>,
    unlabelled: Vec<Case>,
    counts: (Option<usize>, Option<usize>),
    listed: bool,
}

#[derive(Deserialize)]
struct DatasetJson {
    name: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    modality: Option<BTreeMap<String, String>>,
    #[serde(rename = "numTraining")]
    num_training: Option<usize>,
    #[serde(rename = "numTest")]
    num_test: Option<usize>,
    training: Vec<TrainingEntry>,
    #[serde(default)]
    test: Vec<TestEntry>,
}

#[derive(Deserialize)]
struct TrainingEntry {
    image: String,
    label: String,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum TestEntry {
    Path(String),
    Map { image: String },
}

/// The case id of a NIfTI file name (`pancreas_001.nii.gz` -> `pancreas_001`).
pub fn case_id(path: &Path) -> String {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    name.strip_suffix(".nii.gz")
        .or_else(|| name.strip_suffix(".nii"))
        .unwrap_or(name)
        .to_string()
}

fn is_nifti(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    !name.starts_with('.') && (name.ends_with(".nii.gz") || name.ends_with(".nii"))
}

fn list_nifti(dir: &Path) -> Result<Vec<PathBuf>> {
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_file(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| is_nifti(p))
        .collect();
    v.sort();
    Ok(v)
}

impl Decathlon {
    /// Opens a folder: reads `dataset.json`, or lists `imagesTr/`, `imagesTs/` without it.
    pub fn open(root: impl AsRef<Path>) -> Result<Decathlon> {
        let root = root.as_ref().to_path_buf();
        if !root.is_dir() {
            return Err(Error::file(&root, "no such dataset folder"));
        }
        let json = root.join("dataset.json");
        if json.is_file() {
            Self::from_json(root, &json)
        } else if root.join("imagesTr").is_dir() {
            Self::from_listing(root)
        } else {
            Err(Error::file(
                &root,
                "not a Decathlon folder: expected dataset.json or imagesTr/",
            ))
        }
    }

    fn from_json(root: PathBuf, json: &Path) -> Result<Decathlon> {
        let text = std::fs::read_to_string(json).with_file(json)?;
        Self::from_json_text(root, json, &text)
    }

    /// Reads `text` as the `dataset.json` of the folder `root` (no file is read; errors name
    /// `root/dataset.json`).
    pub fn parse(root: impl AsRef<Path>, text: &str) -> Result<Decathlon> {
        let root = root.as_ref().to_path_buf();
        let json = root.join("dataset.json");
        Self::from_json_text(root, &json, text)
    }

    fn from_json_text(root: PathBuf, json: &Path, text: &str) -> Result<Decathlon> {
        let d: DatasetJson = serde_json::from_str(text).map_err(|e| {
            Error::file(
                json,
                format!(
                    "not a Decathlon dataset.json ({e}); expected an object with `training`: \
                     [{{\"image\": ..., \"label\": ...}}] and optionally `test`, `labels`"
                ),
            )
        })?;
        let labels = d
            .labels
            .map(|m| {
                m.into_iter()
                    .map(|(k, v)| {
                        k.trim().parse::<u32>().map(|k| (k, v)).map_err(|_| {
                            Error::file(
                                json,
                                format!("label key `{k}` is not a non-negative integer"),
                            )
                        })
                    })
                    .collect::<Result<BTreeMap<_, _>>>()
            })
            .transpose()?;
        // Paths are relative to the dataset folder and stay inside it; ids are plain names.
        let resolve = |p: &str| -> Result<PathBuf> {
            crate::io::confined(&root, Path::new(p))
                .map_err(|m| Error::file(json, format!("{m} (in dataset.json)")))
        };
        let case = |image: PathBuf, label: Option<PathBuf>| -> Result<Case> {
            let id = case_id(&image);
            crate::io::plain_name(&id, "case id").map_err(|m| Error::file(json, m))?;
            Ok(Case { id, image, label })
        };
        let labelled = d
            .training
            .iter()
            .map(|t| case(resolve(&t.image)?, Some(resolve(&t.label)?)))
            .collect::<Result<Vec<_>>>()?;
        let unlabelled = d
            .test
            .iter()
            .map(|t| {
                let p = match t {
                    TestEntry::Path(p) => p,
                    TestEntry::Map { image } => image,
                };
                case(resolve(p)?, None)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Decathlon {
            name: d.name.unwrap_or_else(|| folder_name(&root)),
            root,
            labels,
            modality: d.modality.unwrap_or_default(),
            labelled,
            unlabelled,
            counts: (d.num_training, d.num_test),
            listed: true,
        })
    }

    fn from_listing(root: PathBuf) -> Result<Decathlon> {
        let labelled = list_nifti(&root.join("imagesTr"))?
            .into_iter()
            .map(|image| {
                let label = root
                    .join("labelsTr")
                    .join(image.file_name().unwrap_or_default());
                Case {
                    id: case_id(&image),
                    image,
                    label: Some(label),
                }
            })
            .collect();
        let unlabelled = list_nifti(&root.join("imagesTs"))?
            .into_iter()
            .map(|image| Case {
                id: case_id(&image),
                image,
                label: None,
            })
            .collect();
        Ok(Decathlon {
            name: folder_name(&root),
            root,
            labels: None,
            modality: BTreeMap::new(),
            labelled,
            unlabelled,
            counts: (None, None),
            listed: false,
        })
    }

    /// The dataset folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The dataset's name (`dataset.json` `name`, else the folder name).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Label values and names from `dataset.json` (`None` without it).
    pub fn labels(&self) -> Option<&BTreeMap<u32, String>> {
        self.labels.as_ref()
    }

    /// Channel names by index (`{"0": "CT"}`).
    pub fn modality(&self) -> &BTreeMap<String, String> {
        &self.modality
    }

    /// The labelled cases (`training`).
    pub fn labelled(&self) -> &[Case] {
        &self.labelled
    }

    /// The unlabelled cases (`test`, i.e. `imagesTs/`).
    pub fn unlabelled(&self) -> &[Case] {
        &self.unlabelled
    }

    /// Every case: labelled first, then unlabelled.
    pub fn cases(&self) -> impl Iterator<Item = &Case> {
        self.labelled.iter().chain(&self.unlabelled)
    }
}

fn folder_name(root: &Path) -> String {
    root.canonicalize()
        .ok()
        .as_deref()
        .unwrap_or(root)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("dataset")
        .to_string()
}

/// Verifies a Decathlon folder: every listed file exists and reads; each label has its
/// image's shape and holds only integer values listed in `dataset.json`'s `labels`.
pub fn verify(root: impl AsRef<Path>) -> Result<Report> {
    let ds = Decathlon::open(root)?;
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    let json = ds.root.join("dataset.json");
    if !ds.listed {
        warnings.push(Problem::new(
            &json,
            "missing; cases were found by listing imagesTr/ and imagesTs/",
        ));
    }
    let (nt, ns) = ds.counts;
    for (what, want, got) in [
        ("numTraining", nt, ds.labelled.len()),
        ("numTest", ns, ds.unlabelled.len()),
    ] {
        if let Some(w) = want.filter(|&w| w != got) {
            warnings.push(Problem::new(
                &json,
                format!("{what} is {w} but {got} cases are listed"),
            ));
        }
    }
    let mut seen = HashSet::new();
    for c in ds.cases() {
        if !seen.insert(c.id.as_str()) {
            problems.push(Problem::new(
                &c.image,
                format!("case id `{}` appears more than once", c.id),
            ));
        }
    }
    if ds.listed {
        let listed: HashSet<&Path> = ds
            .cases()
            .flat_map(|c| std::iter::once(c.image.as_path()).chain(c.label.as_deref()))
            .collect();
        for sub in ["imagesTr", "labelsTr", "imagesTs"] {
            for f in list_nifti(&ds.root.join(sub))? {
                if !listed.contains(f.as_path()) {
                    warnings.push(Problem::new(&f, "not listed in dataset.json"));
                }
            }
        }
    }
    let allowed: Option<BTreeSet<i64>> = ds
        .labels
        .as_ref()
        .map(|m| m.keys().map(|&k| k as i64).collect());
    // Cases run in parallel within the memory budget: one volume of a case is in memory at a
    // time, so a case takes its larger volume's f32 voxels.
    let results: Vec<(CaseReport, Vec<Problem>, Vec<Problem>)> = super::budget::map_cases(
        &ds.cases().collect::<Vec<_>>(),
        |c| {
            let label = c.label.as_deref().map_or(0, super::budget::volume_bytes);
            super::budget::volume_bytes(&c.image).max(label)
        },
        |c| verify_case(c, allowed.as_ref()),
    );
    let mut cases = Vec::new();
    for (c, p, w) in results {
        cases.push(c);
        problems.extend(p);
        warnings.extend(w);
    }
    Ok(Report {
        layout: "decathlon".into(),
        root: ds.root.clone(),
        name: ds.name.clone(),
        cases,
        problems,
        warnings,
    })
}

fn verify_case(
    c: &Case,
    allowed: Option<&BTreeSet<i64>>,
) -> (CaseReport, Vec<Problem>, Vec<Problem>) {
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    let mut report = CaseReport {
        id: c.id.clone(),
        file: c.image.clone(),
        labelled: c.label.is_some(),
        shape: Vec::new(),
        dtype: String::new(),
        spacing: None,
        labels: None,
    };
    // The image is dropped before the label is read: only its shape and spacing are kept.
    let image = match Volume::load(&c.image) {
        Ok(v) => {
            report.shape = v.shape().to_vec();
            report.dtype = v.dtype().name().to_string();
            report.spacing = Some(v.spacing());
            if !(3..=4).contains(&v.shape().len()) {
                problems.push(Problem::new(
                    &c.image,
                    format!("expected a 3D (or 4D) volume, got shape {:?}", v.shape()),
                ));
            }
            match v.with_values(|values| super::verify::image_problem(values, v.shape())) {
                Ok(Some(msg)) => problems.push(Problem::new(&c.image, msg)),
                Ok(None) => {}
                Err(e) => problems.push(Problem::from_error(&c.image, e)),
            }
            Some((v.shape().to_vec(), v.spacing()))
        }
        Err(e) => {
            problems.push(Problem::from_error(&c.image, e));
            None
        }
    };
    let Some(label_path) = &c.label else {
        return (report, problems, warnings);
    };
    let label = match Volume::load(label_path) {
        Ok(l) => l,
        Err(e) => {
            problems.push(Problem::from_error(label_path, e));
            return (report, problems, warnings);
        }
    };
    if let Some((shape, a)) = &image {
        let want = &shape[..shape.len().min(3)];
        if label.shape() != want {
            problems.push(Problem::new(
                label_path,
                format!(
                    "label shape {:?} differs from its image's {:?} ({})",
                    label.shape(),
                    want,
                    c.image.display()
                ),
            ));
        }
        let (a, b) = (*a, label.spacing());
        if (0..3).any(|i| (a[i] - b[i]).abs() > 1e-3 * a[i].abs().max(1e-6)) {
            warnings.push(Problem::new(
                label_path,
                format!("label spacing {b:?} differs from its image's {a:?}"),
            ));
        }
    }
    match label.with_values(|values| super::verify::label_problem(values, label.shape(), allowed)) {
        Ok(Ok(found)) => report.labels = Some(found.into_iter().collect()),
        Ok(Err((found, msg))) => {
            report.labels = found.map(|f| f.into_iter().collect());
            problems.push(Problem::new(label_path, msg));
        }
        Err(e) => problems.push(Problem::from_error(label_path, e)),
    }
    (report, problems, warnings)
}

//! Dataset verification reports (`pretext data verify DIR`).

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::Serialize;

use crate::error::{Error, Result};

/// One problem or warning, naming the file it is about.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Problem {
    /// The file concerned.
    pub file: PathBuf,
    /// What is wrong and what was expected.
    pub msg: String,
}

impl Problem {
    /// A problem with `file`.
    pub fn new(file: impl AsRef<Path>, msg: impl fmt::Display) -> Problem {
        Problem {
            file: file.as_ref().to_path_buf(),
            msg: msg.to_string(),
        }
    }

    /// A problem from a library error about `file` (without repeating the path).
    pub fn from_error(file: impl AsRef<Path>, e: Error) -> Problem {
        let file = file.as_ref();
        match e {
            Error::File { path, msg } if path == file => Problem::new(file, msg),
            other => Problem::new(file, other),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.file.display(), self.msg)
    }
}

/// What verification found out about one case (one image with its label, if any).
#[derive(Clone, Debug, Serialize)]
pub struct CaseReport {
    /// The case id (file name without extension, or APTOS `id_code`).
    pub id: String,
    /// The image file.
    pub file: PathBuf,
    /// Whether the case has a label (label file or grade).
    pub labelled: bool,
    /// The image shape ([x, y, z(, t)] for volumes, [height, width, channels] for photos);
    /// empty when the image could not be read.
    pub shape: Vec<usize>,
    /// The on-disk voxel type (`i16`, `u8`, ...).
    pub dtype: String,
    /// Voxel spacing in mm (volumes only).
    pub spacing: Option<[f64; 3]>,
    /// The distinct label values (segmentation) or the grade (classification).
    pub labels: Option<Vec<i64>>,
}

/// The result of verifying a dataset folder.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// `decathlon` or `aptos`.
    pub layout: String,
    /// The folder verified.
    pub root: PathBuf,
    /// The dataset's name (dataset.json `name`, or the folder name).
    pub name: String,
    /// Every case, in dataset order.
    pub cases: Vec<CaseReport>,
    /// Problems that make the dataset unusable as is.
    pub problems: Vec<Problem>,
    /// Oddities worth knowing about that do not stop its use.
    pub warnings: Vec<Problem>,
}

impl Report {
    /// Whether no problem was found.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }

    /// The number of labelled cases.
    pub fn labelled(&self) -> usize {
        self.cases.iter().filter(|c| c.labelled).count()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} dataset `{}` at {}: {} labelled, {} unlabelled cases",
            self.layout,
            self.name,
            self.root.display(),
            self.labelled(),
            self.cases.len() - self.labelled()
        )?;
        for c in &self.cases {
            let rel = c.file.strip_prefix(&self.root).unwrap_or(&c.file);
            write!(
                f,
                "  {:<16} {:<34} {:?} {}",
                c.id,
                rel.display(),
                c.shape,
                c.dtype
            )?;
            if let Some(s) = c.spacing {
                write!(f, "  spacing [{:.3}, {:.3}, {:.3}] mm", s[0], s[1], s[2])?;
            }
            if let Some(l) = &c.labels {
                let v: Vec<String> = l.iter().map(|v| v.to_string()).collect();
                let what = if self.layout == "aptos" {
                    "grade"
                } else {
                    "labels"
                };
                write!(f, "  {what} {{{}}}", v.join(", "))?;
            }
            writeln!(f)?;
        }
        for w in &self.warnings {
            writeln!(f, "warning: {w}")?;
        }
        for p in &self.problems {
            writeln!(f, "problem: {p}")?;
        }
        write!(
            f,
            "{} cases, {} problem{}, {} warning{}",
            self.cases.len(),
            self.problems.len(),
            if self.problems.len() == 1 { "" } else { "s" },
            self.warnings.len(),
            if self.warnings.len() == 1 { "" } else { "s" }
        )
    }
}

/// Verifies a dataset folder: a Decathlon folder (`dataset.json` or `imagesTr/`) or an APTOS
/// folder (`train.csv`). Errors only when the folder is neither; everything else is a problem
/// in the report.
pub fn verify(dir: impl AsRef<Path>) -> Result<Report> {
    let dir = dir.as_ref();
    if !dir.is_dir() {
        return Err(Error::file(dir, "no such folder"));
    }
    if dir.join("train.csv").is_file() {
        super::aptos::verify(dir)
    } else if dir.join("dataset.json").is_file() || dir.join("imagesTr").is_dir() {
        super::decathlon::verify(dir)
    } else {
        Err(Error::file(
            dir,
            "not a dataset folder: expected dataset.json or imagesTr/ (Decathlon) or train.csv \
             (APTOS)",
        ))
    }
}

/// The `[x, y, ...]` index of flat (C-order) position `i` in `shape`.
fn voxel(i: usize, shape: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    let mut rest = i;
    for (d, &n) in shape.iter().enumerate().rev() {
        idx[d] = rest % n.max(1);
        rest /= n.max(1);
    }
    idx
}

/// What is wrong with an image's values, if anything: NaN or infinite voxels (how many, and
/// the first). Verification and preparation share this check.
pub fn image_problem(values: &[f32], shape: &[usize]) -> Option<String> {
    let first = values.par_iter().position_first(|v| !v.is_finite())?;
    let n = values.par_iter().filter(|v| !v.is_finite()).count();
    Some(format!(
        "{n} of {} image values are NaN or infinite (the first, {}, at voxel {:?})",
        values.len(),
        values[first],
        voxel(first, shape)
    ))
}

/// The distinct values of a label volume; or, when a value is not a whole number or (with
/// `allowed`) not an allowed label, the values found so far and a message naming the first
/// bad voxel. Verification and preparation share this check.
#[allow(clippy::type_complexity)]
pub fn label_problem(
    values: &[f32],
    shape: &[usize],
    allowed: Option<&BTreeSet<i64>>,
) -> std::result::Result<BTreeSet<i64>, (Option<BTreeSet<i64>>, String)> {
    let bad = values
        .par_iter()
        .position_first(|v| !v.is_finite() || v.fract() != 0.0);
    if let Some(i) = bad {
        return Err((
            None,
            format!(
                "label values must be integers, found {} at voxel {:?}",
                values[i],
                voxel(i, shape)
            ),
        ));
    }
    let found = values
        .par_chunks(1 << 16)
        .map(|c| {
            let mut s = BTreeSet::new();
            let mut last = f32::NAN;
            for &v in c {
                if v != last {
                    s.insert(v as i64);
                    last = v;
                }
            }
            s
        })
        .reduce(BTreeSet::new, |mut a, b| {
            a.extend(b);
            a
        });
    if let Some(allowed) = allowed {
        let bad: Vec<String> = found
            .iter()
            .filter(|v| !allowed.contains(v))
            .map(|v| v.to_string())
            .collect();
        if !bad.is_empty() {
            let first = values
                .par_iter()
                .position_first(|v| !allowed.contains(&(*v as i64)))
                .unwrap_or(0);
            let ok: Vec<String> = allowed.iter().map(|v| v.to_string()).collect();
            return Err((
                Some(found),
                format!(
                    "label value(s) {} out of range (first at voxel {:?}): the allowed labels \
                     are {}",
                    bad.join(", "),
                    voxel(first, shape),
                    ok.join(", ")
                ),
            ));
        }
    }
    Ok(found)
}

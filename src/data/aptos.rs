//! The APTOS 2019 blindness-detection layout: `train.csv` (`id_code,diagnosis`) and
//! `train_images/<id_code>.png` (`.jpg`/`.jpeg` are accepted too). Grades are 0–4.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::Image;
use super::verify::{CaseReport, Problem, Report};
use crate::error::{Error, Result};

/// One labelled photograph.
#[derive(Clone, Debug, PartialEq)]
pub struct AptosEntry {
    /// `id_code` from train.csv.
    pub id: String,
    /// `diagnosis`: diabetic-retinopathy grade 0–4.
    pub grade: u8,
    /// The image file.
    pub image: PathBuf,
}

/// An opened APTOS folder.
#[derive(Clone, Debug)]
pub struct Aptos {
    root: PathBuf,
    entries: Vec<AptosEntry>,
}

/// Reads train.csv and finds each image; returns the good entries and the problems.
fn scan(root: &Path) -> Result<(Vec<AptosEntry>, Vec<Problem>)> {
    if !root.is_dir() {
        return Err(Error::file(root, "no such dataset folder"));
    }
    let csv_path = root.join("train.csv");
    if !csv_path.is_file() {
        return Err(Error::file(
            &csv_path,
            "no such file; an APTOS folder has train.csv (id_code,diagnosis) and train_images/",
        ));
    }
    let file = std::fs::File::open(&csv_path).map_err(|e| Error::file(&csv_path, e))?;
    let (rows, mut problems) = parse_csv(&csv_path, file)?;
    let images = root.join("train_images");
    let mut entries = Vec::new();
    for CsvRow { line, id, grade } in rows {
        let found = ["png", "jpg", "jpeg"]
            .iter()
            .map(|ext| images.join(format!("{id}.{ext}")))
            .find(|p| p.is_file());
        match found {
            Some(image) => entries.push(AptosEntry { id, grade, image }),
            None => problems.push(Problem::new(
                images.join(format!("{id}.png")),
                format!("no such file (listed in train.csv line {line})"),
            )),
        }
    }
    if entries.is_empty() && problems.is_empty() {
        problems.push(Problem::new(&csv_path, "no rows"));
    }
    Ok((entries, problems))
}

/// One good row of `train.csv`.
#[derive(Clone, Debug, PartialEq)]
pub struct CsvRow {
    /// The line number (the header is line 1).
    pub line: u64,
    /// `id_code`, checked to be a plain name.
    pub id: String,
    /// `diagnosis`, 0..4.
    pub grade: u8,
}

/// Reads the rows of an APTOS `train.csv` (`csv_path` names it in messages): the good rows,
/// and a problem for each bad one (a grade outside 0..4, an empty, repeated or path-like id).
/// An error when the header lacks `id_code` or `diagnosis`.
pub fn parse_csv(csv_path: &Path, data: impl std::io::Read) -> Result<(Vec<CsvRow>, Vec<Problem>)> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(data);
    let headers = reader
        .headers()
        .map_err(|e| Error::file(csv_path, format!("unreadable header: {e}")))?
        .clone();
    let col = |name: &str| {
        headers.iter().position(|h| h == name).ok_or_else(|| {
            Error::file(
                csv_path,
                format!(
                    "no `{name}` column; expected the header id_code,diagnosis, got {}",
                    headers.iter().collect::<Vec<_>>().join(",")
                ),
            )
        })
    };
    let (id_col, grade_col) = (col("id_code")?, col("diagnosis")?);
    let mut rows = Vec::new();
    let mut problems = Vec::new();
    let mut seen: HashMap<String, u64> = HashMap::new();
    for (i, rec) in reader.records().enumerate() {
        let line = i as u64 + 2;
        let rec = match rec {
            Ok(r) => r,
            Err(e) => {
                problems.push(Problem::new(csv_path, format!("line {line}: {e}")));
                continue;
            }
        };
        let id = rec.get(id_col).unwrap_or("").to_string();
        let grade_text = rec.get(grade_col).unwrap_or("");
        if id.is_empty() {
            problems.push(Problem::new(
                csv_path,
                format!("line {line}: empty id_code"),
            ));
            continue;
        }
        let Some(grade) = grade_text.parse::<u8>().ok().filter(|g| *g <= 4) else {
            problems.push(Problem::new(
                csv_path,
                format!("line {line}: diagnosis `{grade_text}` of `{id}` is not a grade 0..4"),
            ));
            continue;
        };
        if let Err(msg) = crate::io::plain_name(&id, "id_code") {
            problems.push(Problem::new(csv_path, format!("line {line}: {msg}")));
            continue;
        }
        if let Some(first) = seen.insert(id.clone(), line) {
            problems.push(Problem::new(
                csv_path,
                format!("line {line}: id_code `{id}` already on line {first}"),
            ));
            continue;
        }
        rows.push(CsvRow { line, id, grade });
    }
    Ok((rows, problems))
}

impl Aptos {
    /// Opens a folder; any bad row or missing image is an error naming the file (and line).
    pub fn open(root: impl AsRef<Path>) -> Result<Aptos> {
        let root = root.as_ref().to_path_buf();
        let (entries, problems) = scan(&root)?;
        if let Some(first) = problems.first() {
            let more = match problems.len() {
                1 => String::new(),
                n => format!(" (and {} more problems; run `pretext data verify`)", n - 1),
            };
            return Err(Error::file(&first.file, format!("{}{more}", first.msg)));
        }
        Ok(Aptos { root, entries })
    }

    /// The dataset folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The photographs in train.csv order.
    pub fn entries(&self) -> &[AptosEntry] {
        &self.entries
    }

    /// The number of photographs.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// How many photographs have each grade 0..4.
    pub fn grade_counts(&self) -> [usize; 5] {
        let mut c = [0; 5];
        for e in &self.entries {
            c[e.grade as usize] += 1;
        }
        c
    }
}

/// Verifies an APTOS folder: train.csv rows, one readable image per row.
pub fn verify(root: impl AsRef<Path>) -> Result<Report> {
    let root = root.as_ref();
    let (entries, mut problems) = scan(root)?;
    let results: Vec<(CaseReport, Option<Problem>)> = super::budget::map_cases(
        &entries,
        |e| super::budget::image_bytes(&e.image),
        |e| {
            let mut c = CaseReport {
                id: e.id.clone(),
                file: e.image.clone(),
                labelled: true,
                shape: Vec::new(),
                dtype: String::new(),
                spacing: None,
                labels: Some(vec![e.grade as i64]),
            };
            match Image::load(&e.image) {
                Ok(img) => {
                    c.shape = vec![img.height(), img.width(), img.channels()];
                    c.dtype = "u8".into();
                    (c, None)
                }
                Err(err) => (c, Some(Problem::from_error(&e.image, err))),
            }
        },
    );
    let mut cases = Vec::new();
    for (c, p) in results {
        cases.push(c);
        problems.extend(p);
    }
    let name = root
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("aptos")
        .to_string();
    Ok(Report {
        layout: "aptos".into(),
        root: root.to_path_buf(),
        name,
        cases,
        problems,
        warnings: Vec::new(),
    })
}

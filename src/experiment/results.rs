//! Sweep results: one JSON line per finished cell, appended and synced as soon as the cell is
//! done, so a killed sweep loses nothing and a rerun skips what is there. Shard files merge
//! into one; rows export to CSV.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::FileContext;
use crate::{Error, Result};

/// One finished cell of a sweep.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ResultRow {
    /// `baseline` or a pretext task.
    pub task: String,
    /// The share of the labelled training data used.
    pub fraction: f64,
    /// Labelled items that share was.
    pub n_train: usize,
    /// The repetition's seed.
    pub seed: u64,
    /// Metrics on the test items (`dice_mean`, `dice`, `qwk`, ...).
    pub metrics: BTreeMap<String, serde_json::Value>,
    /// Seconds spent (`pretrain`, `finetune`, `eval`).
    pub timings: BTreeMap<String, f64>,
    /// Hash of everything that defines the cell's computation but the cell itself.
    pub config_hash: String,
    /// The pretext version that produced the row.
    pub version: String,
    /// Anything else worth keeping (split files, checkpoint path, ...).
    #[serde(default)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl ResultRow {
    /// The cell's identity: task, fraction, seed and configuration.
    pub fn key(&self) -> String {
        cell_key(&self.task, self.fraction, self.seed, &self.config_hash)
    }

    /// A metric as a number.
    pub fn metric(&self, name: &str) -> Option<f64> {
        self.metrics.get(name).and_then(serde_json::Value::as_f64)
    }
}

/// The identity of a cell.
pub fn cell_key(task: &str, fraction: f64, seed: u64, config_hash: &str) -> String {
    format!("{task}|{fraction:.6}|{seed}|{config_hash}")
}

/// A stable 16-hex-digit hash of a configuration's canonical JSON (sorted keys; the same
/// digest as the data cache's keys).
pub fn config_hash(config: &serde_json::Value) -> String {
    crate::data::key(&canonical(config).to_string())
}

/// The value with every object's keys sorted.
fn canonical(v: &serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Object(m) => {
            let sorted: BTreeMap<&String, serde_json::Value> =
                m.iter().map(|(k, v)| (k, canonical(v))).collect();
            serde_json::to_value(sorted).unwrap_or(serde_json::Value::Null)
        }
        serde_json::Value::Array(a) => serde_json::Value::Array(a.iter().map(canonical).collect()),
        other => other.clone(),
    }
}

/// An append-only JSONL file of result rows.
#[derive(Debug)]
pub struct ResultsFile {
    path: PathBuf,
    rows: Vec<ResultRow>,
}

impl ResultsFile {
    /// Opens (or creates) `path` and reads its rows. A last line cut short by a kill is
    /// dropped (and reported on stderr); any other unreadable line is an error naming it.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_file(dir)?;
        }
        let text = if path.exists() {
            std::fs::read_to_string(&path).with_file(&path)?
        } else {
            String::new()
        };
        let mut rows = Vec::new();
        let mut valid_len = 0;
        let lines: Vec<&str> = text.split_inclusive('\n').collect();
        for (i, line) in lines.iter().enumerate() {
            if line.trim().is_empty() {
                valid_len += line.len();
                continue;
            }
            match serde_json::from_str::<ResultRow>(line) {
                Ok(r) => {
                    rows.push(r);
                    valid_len += line.len();
                }
                Err(_) if i + 1 == lines.len() && !line.ends_with('\n') => {
                    eprintln!(
                        "{}: dropping an incomplete last line (an interrupted write)",
                        path.display()
                    );
                }
                Err(e) => {
                    return Err(Error::file(
                        &path,
                        format!("line {}: not a result row: {e}", i + 1),
                    ));
                }
            }
        }
        if valid_len < text.len() {
            std::fs::write(&path, &text[..valid_len]).with_file(&path)?;
        }
        Ok(ResultsFile { path, rows })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The rows read or appended so far.
    pub fn rows(&self) -> &[ResultRow] {
        &self.rows
    }

    /// Whether a cell is already there.
    pub fn has(&self, key: &str) -> bool {
        self.rows.iter().any(|r| r.key() == key)
    }

    /// Appends a row and syncs it to disk before returning.
    pub fn append(&mut self, row: ResultRow) -> Result<()> {
        let line = serde_json::to_string(&row).map_err(Error::msg)? + "\n";
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .with_file(&self.path)?;
        f.write_all(line.as_bytes()).with_file(&self.path)?;
        f.sync_data().with_file(&self.path)?;
        self.rows.push(row);
        Ok(())
    }
}

/// Rows of several files (shards) without duplicate cells, in a stable order (task, fraction,
/// seed). Two different rows for one cell are an error naming both files.
pub fn merge(paths: &[PathBuf]) -> Result<Vec<ResultRow>> {
    let mut by_key: BTreeMap<String, (ResultRow, PathBuf)> = BTreeMap::new();
    for p in paths {
        if !p.exists() {
            return Err(Error::file(p, "no such results file"));
        }
        for r in ResultsFile::open(p)?.rows {
            match by_key.get(&r.key()) {
                Some((old, from)) if !same_cell_result(old, &r) => {
                    return Err(Error::file(
                        p,
                        format!(
                            "cell {} differs from the one in {}",
                            r.key(),
                            from.display()
                        ),
                    ));
                }
                Some(_) => {}
                None => {
                    by_key.insert(r.key(), (r, p.clone()));
                }
            }
        }
    }
    let mut rows: Vec<ResultRow> = by_key.into_values().map(|(r, _)| r).collect();
    sort_rows(&mut rows);
    Ok(rows)
}

fn same_cell_result(a: &ResultRow, b: &ResultRow) -> bool {
    a.metrics == b.metrics && a.n_train == b.n_train
}

/// Sorts rows by task, fraction and seed.
pub fn sort_rows(rows: &mut [ResultRow]) {
    rows.sort_by(|a, b| {
        (a.task.as_str(), a.seed)
            .cmp(&(b.task.as_str(), b.seed))
            .then(a.fraction.total_cmp(&b.fraction))
            .then(a.config_hash.cmp(&b.config_hash))
    });
}

/// Writes rows as JSONL (atomically).
pub fn write_jsonl(path: &Path, rows: &[ResultRow]) -> Result<()> {
    let mut text = String::new();
    for r in rows {
        text.push_str(&serde_json::to_string(r).map_err(Error::msg)?);
        text.push('\n');
    }
    crate::io::write_atomic(path, text.as_bytes())
}

/// Writes rows as CSV: task, fraction, n_train, seed, every scalar metric, every timing,
/// config_hash (atomically).
pub fn write_csv(path: &Path, rows: &[ResultRow]) -> Result<()> {
    let mut metrics: Vec<String> = rows
        .iter()
        .flat_map(|r| {
            r.metrics
                .iter()
                .filter(|(_, v)| v.is_number())
                .map(|(k, _)| k.clone())
        })
        .collect();
    metrics.sort();
    metrics.dedup();
    let mut timings: Vec<String> = rows
        .iter()
        .flat_map(|r| r.timings.keys().cloned())
        .collect();
    timings.sort();
    timings.dedup();
    let mut out = String::from("task,fraction,n_train,seed");
    for m in &metrics {
        out.push_str(&format!(",{m}"));
    }
    for t in &timings {
        out.push_str(&format!(",{t}_s"));
    }
    out.push_str(",config_hash\n");
    for r in rows {
        out.push_str(&format!(
            "{},{},{},{}",
            r.task, r.fraction, r.n_train, r.seed
        ));
        for m in &metrics {
            out.push(',');
            if let Some(v) = r.metric(m) {
                out.push_str(&v.to_string());
            }
        }
        for t in &timings {
            out.push(',');
            if let Some(v) = r.timings.get(t) {
                out.push_str(&format!("{v:.3}"));
            }
        }
        out.push_str(&format!(",{}\n", r.config_hash));
    }
    crate::io::write_atomic(path, out.as_bytes())
}

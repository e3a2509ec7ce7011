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
    #[serde(with = "crate::io::float")]
    pub fraction: f64,
    /// Labelled items that share was.
    pub n_train: usize,
    /// The repetition's seed.
    pub seed: u64,
    /// Metrics on the test items (`dice_mean`, `dice`, `qwk`, ...).
    pub metrics: BTreeMap<String, serde_json::Value>,
    /// Seconds spent (`pretrain`, `finetune`, `eval`); a non-finite value is stored as `null`
    /// and read back as NaN.
    #[serde(with = "crate::io::float_map")]
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

/// An append-only JSONL file of result rows, open for writing.
///
/// A results file has one writer at a time: [`ResultsFile::open`] takes an exclusive lock
/// (`<file>.lock`, see [`crate::lock`]) that is held until the value is dropped, and a second
/// writer gets an error naming the holder. Readers ([`read_rows`], [`merge`]) take no lock and
/// never write.
#[derive(Debug)]
pub struct ResultsFile {
    path: PathBuf,
    rows: Vec<ResultRow>,
    _lock: crate::lock::Lock,
}

/// The configuration a results file's rows were computed with, recorded beside it as
/// `config.json` by [`ResultsFile::open_with`].
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RecordedConfig {
    /// [`config_hash`] of `config`.
    pub config_hash: String,
    /// The configuration.
    pub config: serde_json::Value,
}

/// The `config.json` beside a results file.
pub fn config_path(results: &Path) -> PathBuf {
    results.with_file_name("config.json")
}

/// Reads the `config.json` beside a results file, if there is one.
pub fn recorded_config(results: &Path) -> Result<Option<RecordedConfig>> {
    let p = config_path(results);
    if !p.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&p).with_file(&p)?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| Error::file(&p, format!("not a recorded configuration: {e}")))
}

/// The keys (dotted paths) whose values differ between two configurations, with both values.
pub fn config_differences(a: &serde_json::Value, b: &serde_json::Value) -> Vec<String> {
    fn walk(prefix: &str, a: &serde_json::Value, b: &serde_json::Value, out: &mut Vec<String>) {
        use serde_json::Value::Object;
        match (a, b) {
            (Object(x), Object(y)) => {
                let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
                for k in keys {
                    let p = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    let null = serde_json::Value::Null;
                    match (x.get(k), y.get(k)) {
                        (Some(u), Some(v)) => walk(&p, u, v, out),
                        (u, v) => out.push(format!(
                            "{p}: {} vs {}",
                            u.unwrap_or(&null),
                            v.unwrap_or(&null)
                        )),
                    }
                }
            }
            _ if a != b => out.push(format!(
                "{}: {a} vs {b}",
                if prefix.is_empty() { "(value)" } else { prefix }
            )),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk("", a, b, &mut out);
    out
}

/// The rows of a results file, read without writing or locking: a last line without its
/// newline (being appended now, or cut short by a kill) is left out; any other unreadable
/// line is an error naming it.
pub fn read_rows(path: &Path) -> Result<Vec<ResultRow>> {
    if !path.exists() {
        return Err(Error::file(path, "no such results file"));
    }
    let text = std::fs::read_to_string(path).with_file(path)?;
    Ok(parse_rows(path, &text)?.0)
}

/// The rows of `text`, and the text a writer should leave (without an incomplete last line,
/// with a final newline) when that differs from `text`.
fn parse_rows(path: &Path, text: &str) -> Result<(Vec<ResultRow>, Option<String>)> {
    let mut rows = Vec::new();
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let mut repaired = None;
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<ResultRow>(line) {
            Ok(r) => {
                rows.push(r);
                if !line.ends_with('\n') {
                    repaired = Some(format!("{text}\n"));
                }
            }
            // The last line without its newline: being written now, or cut short by a kill.
            Err(_) if i + 1 == lines.len() && !line.ends_with('\n') => {
                repaired = Some(text[..text.len() - line.len()].to_string());
            }
            Err(e) => {
                return Err(Error::file(
                    path,
                    format!("line {}: not a result row: {e}", i + 1),
                ));
            }
        }
    }
    Ok((rows, repaired))
}

impl ResultsFile {
    /// Opens (or creates) `path` for writing and reads its rows. Takes the file's lock (an
    /// error naming the holder if another process writes it). A last line cut short by a kill
    /// is removed (atomically, and reported on stderr); any other unreadable line is an error
    /// naming it.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_file(dir)?;
        }
        let lock = crate::lock::Lock::acquire(&path, "results file")?;
        let text = if path.exists() {
            std::fs::read_to_string(&path).with_file(&path)?
        } else {
            String::new()
        };
        let (rows, repaired) = parse_rows(&path, &text)?;
        if let Some(fixed) = repaired {
            if fixed.len() < text.len() {
                eprintln!(
                    "{}: removing an incomplete last line (an interrupted write)",
                    path.display()
                );
            }
            crate::io::write_atomic(&path, fixed.as_bytes())?;
        }
        Ok(ResultsFile {
            path,
            rows,
            _lock: lock,
        })
    }

    /// [`ResultsFile::open`] for rows of `config`: the first time, `config` is recorded as
    /// `config.json` beside the file (shared by the shard files of one folder); afterwards a
    /// different configuration, in `config.json` or in the rows already there, is an error
    /// naming both hashes and the keys that differ, unless `allow_mixed`.
    pub fn open_with(
        path: impl AsRef<Path>,
        config: &serde_json::Value,
        allow_mixed: bool,
    ) -> Result<Self> {
        let f = Self::open(path)?;
        let hash = config_hash(config);
        let mine = RecordedConfig {
            config_hash: hash.clone(),
            config: canonical(config),
        };
        let cfg_path = config_path(&f.path);
        let text = serde_json::to_string_pretty(&mine).map_err(Error::msg)? + "\n";
        crate::io::create_atomic(&cfg_path, text.as_bytes())?;
        let recorded = recorded_config(&f.path)?;
        if allow_mixed {
            return Ok(f);
        }
        if let Some(r) = recorded.as_ref().filter(|r| r.config_hash != hash) {
            let diff = config_differences(&r.config, &mine.config);
            return Err(Error::file(
                &f.path,
                format!(
                    "this folder holds results of configuration {} ({}); this run's is {hash}; \
                     differing keys: {}. Use another `out` folder, or allow mixing explicitly \
                     (`pretext run --allow-mixed`)",
                    r.config_hash,
                    cfg_path.display(),
                    if diff.is_empty() {
                        "none recorded".to_string()
                    } else {
                        diff.join(", ")
                    }
                ),
            ));
        }
        if let Some(other) = f.rows.iter().find(|r| r.config_hash != hash) {
            return Err(Error::file(
                &f.path,
                format!(
                    "holds rows of configuration {} (e.g. {} {} seed {}); this run's is {hash}. \
                     Use another `out` folder, or allow mixing explicitly \
                     (`pretext run --allow-mixed`)",
                    other.config_hash, other.task, other.fraction, other.seed
                ),
            ));
        }
        Ok(f)
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
/// seed). Two different rows for one cell are an error naming both files; so are rows of
/// different configurations (see [`merge_with`]).
pub fn merge(paths: &[PathBuf]) -> Result<Vec<ResultRow>> {
    merge_with(paths, false)
}

/// [`merge`]; with `allow_mixed`, rows of different configuration hashes are kept side by
/// side instead of being an error. Reads without writing or locking.
pub fn merge_with(paths: &[PathBuf], allow_mixed: bool) -> Result<Vec<ResultRow>> {
    let mut by_key: BTreeMap<String, (ResultRow, PathBuf)> = BTreeMap::new();
    let mut first_hash: Option<(String, PathBuf)> = None;
    for p in paths {
        for r in read_rows(p)? {
            match &first_hash {
                None => first_hash = Some((r.config_hash.clone(), p.clone())),
                Some((h, from)) if *h != r.config_hash && !allow_mixed => {
                    return Err(mixed_error(h, from, &r.config_hash, p));
                }
                Some(_) => {}
            }
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

fn mixed_error(h1: &str, f1: &Path, h2: &str, f2: &Path) -> Error {
    let config_of = |f: &Path, h: &str| {
        recorded_config(f)
            .ok()
            .flatten()
            .filter(|r| r.config_hash == h)
            .map(|r| r.config)
    };
    let diff = match (config_of(f1, h1), config_of(f2, h2)) {
        (Some(a), Some(b)) => format!(
            "; differing keys: {}",
            config_differences(&a, &b).join(", ")
        ),
        _ => String::new(),
    };
    Error::file(
        f2,
        format!(
            "rows of configuration {h2} cannot be merged with those of configuration {h1} \
             (from {}){diff}; pass --allow-mixed to keep both",
            f1.display()
        ),
    )
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
/// config_hash (atomically; fields quoted where needed).
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
    let mut w = csv::Writer::from_writer(Vec::new());
    let mut header: Vec<String> = ["task", "fraction", "n_train", "seed"]
        .map(String::from)
        .to_vec();
    header.extend(metrics.iter().cloned());
    header.extend(timings.iter().map(|t| format!("{t}_s")));
    header.push("config_hash".into());
    w.write_record(&header).with_file(path)?;
    for r in rows {
        let mut rec = vec![
            r.task.clone(),
            r.fraction.to_string(),
            r.n_train.to_string(),
            r.seed.to_string(),
        ];
        rec.extend(
            metrics
                .iter()
                .map(|m| r.metric(m).map(|v| v.to_string()).unwrap_or_default()),
        );
        rec.extend(timings.iter().map(|t| {
            r.timings
                .get(t)
                .filter(|v| v.is_finite())
                .map(|v| format!("{v:.3}"))
                .unwrap_or_default()
        }));
        rec.push(r.config_hash.clone());
        w.write_record(&rec).with_file(path)?;
    }
    let bytes = w.into_inner().map_err(|e| Error::file(path, e))?;
    crate::io::write_atomic(path, &bytes)
}

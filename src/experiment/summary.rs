//! A run folder at a glance: `pretext report DIR` (and `run_report(dir)` in scripts) writes
//! `DIR/report.md` and `DIR/report.html` — the same content, the HTML rendered from the
//! Markdown and viewable offline (it shows the figures from the folder itself): the
//! configuration, every figure, the statistics table, per-cell and per-pretraining timings,
//! and whatever failed or did not finish.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::results::{ResultRow, merge_with};
use crate::error::FileContext;
use crate::train::pretrain::{RunFiles, read_log};
use crate::{Error, Result};

/// The two files a report is written to.
#[derive(Clone, Debug, PartialEq)]
pub struct RunReport {
    /// `report.md`.
    pub markdown: PathBuf,
    /// `report.html`.
    pub html: PathBuf,
}

/// Writes `dir/report.md` and `dir/report.html` (atomically) from what the folder holds.
pub fn write(dir: &Path) -> Result<RunReport> {
    if !dir.is_dir() {
        return Err(Error::file(
            dir,
            "not a folder (expected a run's output folder)",
        ));
    }
    let md = markdown(dir)?;
    let title = format!("Run report: {}", dir.display());
    let report = RunReport {
        markdown: dir.join("report.md"),
        html: dir.join("report.html"),
    };
    crate::io::write_atomic(&report.markdown, md.as_bytes())?;
    crate::io::write_atomic(&report.html, html(&md, &title).as_bytes())?;
    Ok(report)
}

/// The report's Markdown.
fn markdown(dir: &Path) -> Result<String> {
    let rows = result_rows(dir)?;
    let mut s = String::new();
    let _ = writeln!(s, "# Run report: {}\n", dir.display());
    let hashes: std::collections::BTreeSet<&str> =
        rows.iter().map(|r| r.config_hash.as_str()).collect();
    let _ = writeln!(
        s,
        "{} result rows; configuration hash {}; pretext {}.\n",
        rows.len(),
        if hashes.is_empty() {
            "none".to_string()
        } else {
            hashes.into_iter().collect::<Vec<_>>().join(", ")
        },
        env!("CARGO_PKG_VERSION")
    );
    configuration(&mut s, dir)?;
    figures(&mut s, dir)?;
    statistics(&mut s, dir)?;
    let pretrainings = pretrainings(dir)?;
    timings(&mut s, &pretrainings, &rows);
    failures(&mut s, dir, &rows, &pretrainings)?;
    Ok(s)
}

/// Every results file of the folder (the merged one and any shard's), rows of every
/// configuration.
fn result_rows(dir: &Path) -> Result<Vec<ResultRow>> {
    let mut files = Vec::new();
    for e in sorted_entries(dir)? {
        let name = file_name(&e);
        if name == "results.jsonl"
            || (name.starts_with("results.shard-") && name.ends_with(".jsonl"))
        {
            files.push(e);
        }
    }
    if files.is_empty() {
        return Ok(Vec::new());
    }
    let mut rows = merge_with(&files, true)?;
    super::results::sort_rows(&mut rows);
    Ok(rows)
}

fn configuration(s: &mut String, dir: &Path) -> Result<()> {
    s.push_str("## Configuration\n\n");
    let path = dir.join("config.json");
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let _ = writeln!(
                s,
                "From `config.json`:\n\n```json\n{}\n```\n",
                text.trim_end()
            );
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            s.push_str("No `config.json` in the folder.\n\n");
        }
        Err(e) => return Err(Error::file(&path, e)),
    }
    Ok(())
}

fn figures(s: &mut String, dir: &Path) -> Result<()> {
    s.push_str("## Figures\n\n");
    let pngs: Vec<String> = sorted_entries(dir)?
        .iter()
        .map(|p| file_name(p))
        .filter(|n| n.ends_with(".png"))
        .collect();
    if pngs.is_empty() {
        s.push_str("No figures in the folder.\n\n");
    }
    for name in pngs {
        let stem = name.trim_end_matches(".png");
        let _ = writeln!(s, "### {stem}\n\n![{stem}]({name})\n");
    }
    Ok(())
}

fn statistics(s: &mut String, dir: &Path) -> Result<()> {
    s.push_str("## Statistics\n\n");
    let path = dir.join("stats.md");
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            s.push_str("From `stats.md`:\n\n");
            for line in text.lines() {
                // Its headings one level down, under this section.
                if line.starts_with('#') {
                    let _ = writeln!(s, "##{line}");
                } else {
                    let _ = writeln!(s, "{line}");
                }
            }
            s.push('\n');
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            s.push_str("No `stats.md` in the folder (it needs the baseline and another arm).\n\n");
        }
        Err(e) => return Err(Error::file(&path, e)),
    }
    Ok(())
}

fn timings(s: &mut String, pretrainings: &[Pretraining], rows: &[ResultRow]) {
    s.push_str("## Timings\n\n");
    if !pretrainings.is_empty() {
        s.push_str("Pretraining (from each folder's `log.jsonl`):\n\n");
        s.push_str("| pretraining | epochs | seconds |\n|---|---:|---:|\n");
        let mut total = 0.0;
        for p in pretrainings {
            total += p.seconds;
            let _ = writeln!(s, "| {} | {} | {:.1} |", p.name, p.epochs, p.seconds);
        }
        let _ = writeln!(s, "| all | | {total:.1} |\n");
    }
    if rows.is_empty() {
        s.push_str("No result rows.\n\n");
        return;
    }
    let mut per_task: BTreeMap<&str, (usize, f64, f64)> = BTreeMap::new();
    for r in rows {
        let e = per_task.entry(&r.task).or_default();
        e.0 += 1;
        e.1 += seconds(r, "finetune");
        e.2 += seconds(r, "eval");
    }
    s.push_str(
        "Finetuning and evaluation per arm (a sweep runs cells side by side, `cells_at_once()` \
         at a time, so its wall time is less than the sum of these seconds):\n\n",
    );
    s.push_str("| arm | cells | finetune s | eval s | s per cell |\n|---|---:|---:|---:|---:|\n");
    for (task, (n, f, e)) in &per_task {
        let _ = writeln!(
            s,
            "| {task} | {n} | {f:.1} | {e:.1} | {:.2} |",
            (f + e) / *n as f64
        );
    }
    s.push_str("\nEvery cell:\n\n");
    s.push_str("| arm | fraction | seed | training items | finetune s | eval s |\n");
    s.push_str("|---|---:|---:|---:|---:|---:|\n");
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {:.2} | {:.2} |",
            r.task,
            r.fraction,
            r.seed,
            r.n_train,
            seconds(r, "finetune"),
            seconds(r, "eval")
        );
    }
    s.push('\n');
}

fn failures(
    s: &mut String,
    dir: &Path,
    rows: &[ResultRow],
    pretrainings: &[Pretraining],
) -> Result<()> {
    s.push_str("## Failures and unfinished work\n\n");
    let mut items = Vec::new();
    for r in rows {
        let undefined: Vec<&str> = r
            .metrics
            .iter()
            .filter(|(_, v)| !v.as_f64().is_some_and(f64::is_finite) && !v.is_array())
            .map(|(k, _)| k.as_str())
            .collect();
        if !undefined.is_empty() {
            items.push(format!(
                "{} {} seed {}: undefined {}",
                r.task,
                r.fraction,
                r.seed,
                undefined.join(", ")
            ));
        }
    }
    for p in pretrainings {
        if !p.finished {
            items.push(format!(
                "pretraining {} stopped after epoch {}{}",
                p.name,
                p.epochs,
                if p.resumable {
                    " (a rerun resumes it)"
                } else {
                    ""
                }
            ));
        }
    }
    let cells = dir.join("cells");
    if cells.is_dir() {
        for e in sorted_entries(&cells)? {
            let name = file_name(&e);
            if let Some(cell) = name.strip_suffix(".state.safetensors") {
                items.push(format!(
                    "cell {cell} stopped midway (a rerun resumes it from its state)"
                ));
            }
        }
    }
    if items.is_empty() {
        s.push_str("None: every result is defined and every pretraining finished.\n");
    }
    for i in items {
        let _ = writeln!(s, "- {i}");
    }
    Ok(())
}

fn seconds(r: &ResultRow, key: &str) -> f64 {
    r.timings.get(key).copied().unwrap_or(f64::NAN)
}

/// A pretraining folder under `dir/pretrain`.
struct Pretraining {
    name: String,
    epochs: usize,
    seconds: f64,
    finished: bool,
    resumable: bool,
}

fn pretrainings(dir: &Path) -> Result<Vec<Pretraining>> {
    let root = dir.join("pretrain");
    if !root.is_dir() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for d in sorted_entries(&root)? {
        let log = d.join(RunFiles::LOG);
        if !log.is_file() {
            continue;
        }
        let epochs = read_log(&log)?;
        let finished = crate::nn::ParamStore::manifest(d.join(RunFiles::LAST))
            .ok()
            .and_then(|m| m.get("final").and_then(serde_json::Value::as_bool))
            .unwrap_or(false);
        out.push(Pretraining {
            name: file_name(&d),
            epochs: epochs.len(),
            seconds: epochs.iter().map(|e| e.seconds).sum(),
            finished,
            resumable: d.join(crate::train::resume::STATE_FILE).is_file(),
        });
    }
    Ok(out)
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v = std::fs::read_dir(dir)
        .with_file(dir)?
        .map(|e| e.map(|e| e.path()).with_file(dir))
        .collect::<Result<Vec<_>>>()?;
    v.sort();
    Ok(v)
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The Markdown as one HTML page.
fn html(md: &str, title: &str) -> String {
    use pulldown_cmark::{Options, Parser, html::push_html};
    let mut body = String::new();
    push_html(&mut body, Parser::new_ext(md, Options::ENABLE_TABLES));
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{}</title>\n\
         <style>\nbody {{ font-family: sans-serif; max-width: 70em; margin: 2em auto; padding: 0 1em; }}\n\
         table {{ border-collapse: collapse; margin: 1em 0; }}\n\
         th, td {{ border: 1px solid #bbb; padding: 0.2em 0.6em; }}\n\
         td {{ text-align: right; }}\nimg {{ max-width: 100%; }}\n\
         pre {{ background: #f4f4f4; padding: 0.8em; overflow-x: auto; }}\n</style>\n</head>\n\
         <body>\n{body}</body>\n</html>\n",
        escape(title)
    )
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

//! The `host` domain: script arguments, seed, device, progress bars, JSON and CSV files.

use std::io::IsTerminal;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rhai::{Array, Dynamic, INT, Map};

use super::HostState;
use super::api::Domain;
use super::convert::{RResult, ScriptResult, device_name, index, parse_device, rt_err};
use crate::error::{Error, FileContext};

/// Builds the `host` domain.
pub fn domain(state: &Arc<HostState>) -> Domain {
    let mut d = Domain::new(
        "host",
        "The run's arguments (`--set key=value`), seed and device; progress bars; JSON and CSV files.",
    );
    let s = state.clone();
    d.func(
        "arg",
        "arg(key: String, default: Any) -> Any",
        "The value given with `--set key=value` (int, float, bool, string or array), else `default`.",
        move |key: &str, default: Dynamic| Ok(s.args.get(key).cloned().unwrap_or(default)),
    );
    let s = state.clone();
    d.func(
        "args",
        "args() -> Map",
        "Every `--set` value, by key.",
        move || Ok(s.args.clone()),
    );
    let s = state.clone();
    d.func(
        "seed",
        "seed() -> INT",
        "The run's master seed (`--seed N`, default 0).",
        move || Ok(s.seed as INT),
    );
    let s = state.clone();
    d.func(
        "device",
        "device() -> String",
        "The device new tensors and models go to: cpu or cuda.",
        move || Ok(device_name(&s.device())),
    );
    let s = state.clone();
    d.func(
        "device",
        "device(name: String) -> String",
        "Selects cpu, cuda or cuda:N for what follows; says plainly when CUDA is unavailable.",
        move |name: &str| {
            let dev = parse_device(name).rt()?;
            s.set_device(dev.clone());
            Ok(device_name(&dev))
        },
    );
    d.func(
        "exists",
        "exists(path: String) -> bool",
        "Whether a file or folder exists.",
        |p: &str| Ok(Path::new(p).exists()),
    );
    d.func(
        "read_json",
        "read_json(path: String) -> Any",
        "Reads a JSON file into maps, arrays and numbers.",
        |p: &str| {
            let text = std::fs::read_to_string(p).with_file(p).rt()?;
            let v: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| Error::file(p, format!("invalid JSON: {e}")))
                .rt()?;
            rhai::serde::to_dynamic(v)
        },
    );
    d.func(
        "write_json",
        "write_json(path: String, value: Any)",
        "Writes a value as pretty JSON (atomic write).",
        |p: &str, v: Dynamic| {
            let json: serde_json::Value = rhai::serde::from_dynamic(&v)?;
            let text = serde_json::to_string_pretty(&json).rt()?;
            crate::io::write_atomic(Path::new(p), text.as_bytes()).rt()
        },
    );
    d.func(
        "write_csv",
        "write_csv(path: String, rows: Array)",
        "Writes an array of maps as CSV; the columns are the first row's keys.",
        |p: &str, rows: Array| write_csv(p, &rows, None),
    );
    d.func(
        "write_csv",
        "write_csv(path: String, rows: Array, columns: Array)",
        "Writes an array of maps as CSV with the given columns, in order.",
        |p: &str, rows: Array, cols: Array| write_csv(p, &rows, Some(&cols)),
    );
    progress(&mut d);
    d
}

fn write_csv(path: &str, rows: &Array, columns: Option<&Array>) -> RResult<()> {
    let maps: Vec<Map> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| {
            r.clone().try_cast::<Map>().ok_or_else(|| {
                rt_err(format!(
                    "write_csv: row {i} is a {}, expected a map",
                    r.type_name()
                ))
            })
        })
        .collect::<RResult<_>>()?;
    let cols: Vec<String> = match columns {
        Some(c) => c.iter().map(|v| v.to_string()).collect(),
        None => maps
            .first()
            .map(|m| m.keys().map(|k| k.to_string()).collect())
            .unwrap_or_default(),
    };
    let mut out = cols
        .iter()
        .map(|c| csv_field(c))
        .collect::<Vec<_>>()
        .join(",");
    out.push('\n');
    for m in &maps {
        let line: Vec<String> = cols
            .iter()
            .map(|c| {
                m.get(c.as_str())
                    .map(|v| csv_field(&v.to_string()))
                    .unwrap_or_default()
            })
            .collect();
        out.push_str(&line.join(","));
        out.push('\n');
    }
    crate::io::write_atomic(Path::new(path), out.as_bytes()).rt()
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// A progress display for scripts' own loops: a bar on a terminal, plain lines otherwise.
#[derive(Clone)]
pub struct Progress(Arc<Mutex<ProgressInner>>);

struct ProgressInner {
    bar: Option<indicatif::ProgressBar>,
    label: String,
    total: u64,
    done: u64,
    last_line: Instant,
    started: Instant,
}

impl Progress {
    /// A progress display counting to `total`.
    pub fn new(total: u64, label: &str) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = indicatif::ProgressBar::new(total);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{prefix} [{bar:30}] {pos}/{len} {per_sec} ETA {eta} {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            b.set_prefix(label.to_string());
            b
        });
        Progress(Arc::new(Mutex::new(ProgressInner {
            bar,
            label: label.to_string(),
            total,
            done: 0,
            last_line: Instant::now(),
            started: Instant::now(),
        })))
    }

    /// Advances by `n` steps.
    pub fn inc(&self, n: u64) {
        let mut p = self.0.lock().unwrap_or_else(|e| e.into_inner());
        p.done = (p.done + n).min(p.total.max(p.done + n));
        if let Some(b) = &p.bar {
            b.inc(n);
        } else if p.last_line.elapsed() >= Duration::from_secs(2) || p.done >= p.total {
            eprintln!(
                "{}: {}/{} ({:.1}s)",
                p.label,
                p.done,
                p.total,
                p.started.elapsed().as_secs_f64()
            );
            p.last_line = Instant::now();
        }
    }

    /// Shows a message beside the bar (or on its own line without a terminal).
    pub fn message(&self, msg: &str) {
        let p = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match &p.bar {
            Some(b) => b.set_message(msg.to_string()),
            None => eprintln!("{}: {msg}", p.label),
        }
    }

    /// Ends the display.
    pub fn finish(&self) {
        let p = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(b) = &p.bar {
            b.finish();
        }
    }
}

fn progress(d: &mut Domain) {
    d.custom_type::<Progress>("Progress");
    d.func(
        "progress",
        "progress(total: INT, label: String) -> Progress",
        "A progress bar for a loop of `total` steps (plain lines when not on a terminal).",
        |total: INT, label: &str| Ok(Progress::new(index(total, "total")? as u64, label)),
    );
    d.func(
        "tick",
        "p.tick()",
        "Advances the progress by one step.",
        |p: &mut Progress| {
            p.inc(1);
            Ok(())
        },
    );
    d.func(
        "inc",
        "p.inc(n: INT)",
        "Advances the progress by n steps.",
        |p: &mut Progress, n: INT| {
            p.inc(index(n, "n")? as u64);
            Ok(())
        },
    );
    d.func(
        "message",
        "p.message(text: String)",
        "Shows a message beside the bar.",
        |p: &mut Progress, m: &str| {
            p.message(m);
            Ok(())
        },
    );
    d.func(
        "finish",
        "p.finish()",
        "Ends the progress display.",
        |p: &mut Progress| {
            p.finish();
            Ok(())
        },
    );
}

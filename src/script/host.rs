//! The `host` domain: script arguments, seed, device, progress bars, JSON and CSV files.

use std::path::Path;
use std::sync::Arc;

use rhai::{Array, Dynamic, INT, Map};

use super::HostState;
use super::api::{ApiDocs, Domain, OptionsCheck};
use super::convert::{RResult, ScriptResult, device_name, index, parse_device, rt_err};
use super::options;
use crate::error::{Error, FileContext};
pub use crate::progress::Progress;

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
        "write_jsonl",
        "write_jsonl(path: String, rows: Array)",
        "Writes values as JSON Lines, one compact line each, e.g. a training log (atomic write).",
        |p: &str, rows: Array| write_jsonl(p, rows),
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

fn write_jsonl(path: &str, rows: Array) -> RResult<()> {
    let mut out = String::new();
    for (i, r) in rows.into_iter().enumerate() {
        let json: serde_json::Value = rhai::serde::from_dynamic(&r)
            .map_err(|e| rt_err(format!("write_jsonl: row {i}: {e}")))?;
        out.push_str(&json.to_string());
        out.push('\n');
    }
    crate::io::write_atomic(Path::new(path), out.as_bytes()).rt()
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

/// Builds the `options` domain: checks of option maps and of `--set` keys. It reads the
/// documentation of the other domains (their options checks), so it is built after them.
pub fn options_domain(state: &Arc<HostState>, docs: &ApiDocs) -> Domain {
    let mut d = Domain::new(
        "options",
        "Checks of options maps against the function that reads them, and of `--set` keys \
         against a profile, with suggestions for typos.",
    );
    let checks: Vec<(&'static str, OptionsCheck)> = docs
        .names()
        .into_iter()
        .filter_map(|n| docs.options_check(n).map(|c| (n, c)))
        .collect();
    d.func(
        "check_options",
        "check_options(function: String, opts: Map)",
        "Checks opts as `function` reads its options (unknown keys, types), without running it.",
        move |f: &str, m: Map| {
            let check = checks
                .iter()
                .find(|(n, _)| *n == f)
                .map(|(_, c)| *c)
                .ok_or_else(|| {
                    let names: Vec<&str> = checks.iter().map(|(n, _)| *n).collect();
                    options::unknown_key("check_options", "", f, &names)
                })?;
            check(f, &m)
        },
    );
    let s = state.clone();
    d.func(
        "check_args",
        "check_args(valid: Array)",
        "Refuses a `--set` key whose first part is not in `valid`, suggesting the closest.",
        move |valid: Array| {
            let valid: Vec<String> = valid.iter().map(|v| v.to_string()).collect();
            let valid: Vec<&str> = valid.iter().map(String::as_str).collect();
            for key in s.args.keys() {
                let first = key.split('.').next().unwrap_or_default();
                if !valid.contains(&first) {
                    return Err(options::unknown_key(
                        &format!("--set {key}"),
                        "",
                        first,
                        &valid,
                    ));
                }
            }
            Ok(())
        },
    );
    let s = state.clone();
    d.func(
        "with_args",
        "with_args(p: Map) -> Map",
        "`p` with the `--set` values whose first key part is a key of `p` put in place, at any \
         depth (`--set pretrain.task.jitter=2`); nested maps are created as needed.",
        move |p: Map| with_args(p, &s.args),
    );
    d.func(
        "suggest",
        "suggest(word: String, candidates: Array) -> String",
        "The candidate closest to `word` when it is a likely typo, else \"\".",
        |w: &str, c: Array| {
            let c: Vec<String> = c.iter().map(|v| v.to_string()).collect();
            Ok(options::suggestion(w, c.iter().map(String::as_str))
                .unwrap_or_default()
                .to_string())
        },
    );
    d
}

/// `p` with the `--set` values whose first key part is a key of `p`, at any depth.
fn with_args(mut p: Map, args: &Map) -> RResult<Map> {
    let mut keys: Vec<&str> = args.keys().map(|k| k.as_str()).collect();
    keys.sort_unstable();
    for key in keys {
        let parts: Vec<&str> = key.split('.').collect();
        if p.contains_key(parts[0]) {
            set_path(&mut p, &parts, args[key].clone(), key)?;
        }
    }
    Ok(p)
}

fn set_path(map: &mut Map, parts: &[&str], value: Dynamic, full: &str) -> RResult<()> {
    let Some((first, rest)) = parts.split_first() else {
        return Ok(());
    };
    if rest.is_empty() {
        map.insert((*first).into(), value);
        return Ok(());
    }
    let entry = map
        .entry((*first).into())
        .or_insert_with(|| Dynamic::from_map(Map::new()));
    let mut inner = entry.clone().try_cast::<Map>().ok_or_else(|| {
        rt_err(format!(
            "--set {full}: `{first}` is {}, not a map",
            entry.type_name()
        ))
    })?;
    set_path(&mut inner, rest, value, full)?;
    *entry = Dynamic::from_map(inner);
    Ok(())
}

//! The `experiment` domain: sweep cells and shards, the results store, CSV export, figures and
//! the statistics report.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rhai::{Array, Dynamic, INT, Map};

use super::HostState;
use super::api::Domain;
use super::convert::{RResult, ScriptResult, rt_err};
use super::options;
use crate::experiment::plot::{
    CurvePlot, DEFAULT_SIZE, DeltaPlot, PaperFigure, data_efficiency, delta_figure, pretext_curves,
};
use crate::experiment::report::{Analysis, Estimate, analyse};
use crate::experiment::results::{ResultRow, cell_key, write_csv};
use crate::experiment::{ResultsFile, cells, config_hash};
use crate::train::pretrain::{EpochLog, read_log};

/// An open results file.
#[derive(Clone)]
pub struct Results(Arc<Mutex<ResultsFile>>);

fn to_json(v: &Dynamic) -> RResult<serde_json::Value> {
    rhai::serde::from_dynamic(v)
}

fn from_json<T: serde::Serialize>(v: &T) -> RResult<Dynamic> {
    rhai::serde::to_dynamic(v)
}

fn rows_of(v: &Dynamic) -> RResult<Vec<ResultRow>> {
    if let Some(r) = v.clone().try_cast::<Results>() {
        return Ok(r
            .0
            .lock()
            .map_err(|_| rt_err("results: poisoned"))?
            .rows()
            .to_vec());
    }
    let arr = v
        .clone()
        .into_array()
        .map_err(|t| rt_err(format!("expected Results or an array of rows, got {t}")))?;
    arr.iter()
        .enumerate()
        .map(|(i, r)| row(r).map_err(|e| rt_err(format!("row {i}: {e}"))))
        .collect()
}

fn row(v: &Dynamic) -> RResult<ResultRow> {
    let mut m = v
        .clone()
        .try_cast::<Map>()
        .ok_or_else(|| rt_err(format!("a result row is a map, got {}", v.type_name())))?;
    if !m.contains_key("version") {
        m.insert("version".into(), env!("CARGO_PKG_VERSION").into());
    }
    rhai::serde::from_dynamic(&Dynamic::from_map(m))
}

fn cell_of(m: &Map) -> RResult<(String, f64, u64)> {
    let get = |k: &str| {
        m.get(k)
            .ok_or_else(|| rt_err(format!("cell: missing key `{k}`")))
    };
    let task = get("task")?.to_string();
    let fraction = super::convert::number(get("fraction")?, "fraction")?;
    let seed = get("seed")?
        .as_int()
        .map_err(|_| rt_err("cell: seed must be an integer"))?;
    Ok((task, fraction, super::convert::seed(seed, "cell: seed")?))
}

/// The options of `results(path, opts)`.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
struct ResultsOptions {
    /// The configuration the rows belong to (required); recorded as config.json.
    config: serde_json::Value,
    /// Accept rows of another configuration in the same folder; () = `--allow-mixed`.
    allow_mixed: Option<bool>,
}

/// Builds the `experiment` domain.
pub fn domain(state: &Arc<HostState>) -> Domain {
    let mut d = Domain::new(
        "experiment",
        "Sweeps: cells and shards (--shard i/n), the append-only results file (resume after a kill), \
         CSV export, merging, the figures (PNG at 300 dpi + SVG, with their plotted values as CSV) \
         and the pre-registered statistics (stats_report).",
    );
    d.custom_type::<Results>("Results");
    d.func(
        "results",
        "results(path: String) -> Results",
        "Opens (or creates) a JSONL results file for appending, under its lock (another process writing it is an error naming it); an interrupted last line is removed.",
        |p: &str| Ok(Results(Arc::new(Mutex::new(ResultsFile::open(p).rt()?)))),
    );
    let s = state.clone();
    d.func(
        "results",
        "results(path: String, opts: Map) -> Results",
        "results(path) for rows of opts.config: recorded as config.json beside the file the first time; rows of another configuration are an error naming both hashes unless opts.allow_mixed (default: --allow-mixed).",
        move |p: &str, o: Map| {
            let o: ResultsOptions = options::parse("results", &o)?;
            if o.config.is_null() {
                return Err(rt_err("results: option `config` is required with options"));
            }
            let allow = o.allow_mixed.unwrap_or(s.allow_mixed);
            Ok(Results(Arc::new(Mutex::new(
                ResultsFile::open_with(p, &o.config, allow).rt()?,
            ))))
        },
    )
    .options::<ResultsOptions>();
    d.func(
        "read_results",
        "read_results(path: String) -> Array",
        "The rows of a results file, read without locking or writing (a last line being written is left out).",
        |p: &str| {
            crate::experiment::read_rows(Path::new(p))
                .rt()?
                .iter()
                .map(from_json)
                .collect::<RResult<Array>>()
        },
    );
    d.func(
        "has",
        "res.has(cell: Map, config_hash: String) -> bool",
        "Whether the cell #{task, fraction, seed} with this configuration is already in the file.",
        |r: &mut Results, c: Map, h: &str| {
            let (task, fraction, seed) = cell_of(&c)?;
            Ok(r.0
                .lock()
                .map_err(|_| rt_err("results: poisoned"))?
                .has(&cell_key(&task, fraction, seed, h)))
        },
    );
    d.func(
        "append",
        "res.append(row: Map)",
        "Appends a row #{task, fraction, n_train, seed, metrics, timings, config_hash, extra} and syncs it.",
        |r: &mut Results, m: Map| {
            let row = row(&Dynamic::from_map(m))?;
            r.0.lock().map_err(|_| rt_err("results: poisoned"))?.append(row).rt()
        },
    );
    d.func(
        "rows",
        "res.rows() -> Array",
        "Every row, as maps.",
        |r: &mut Results| {
            let rows =
                r.0.lock()
                    .map_err(|_| rt_err("results: poisoned"))?
                    .rows()
                    .to_vec();
            rows.iter().map(from_json).collect::<RResult<Array>>()
        },
    );
    d.func(
        "len",
        "res.len() -> INT",
        "The number of rows.",
        |r: &mut Results| {
            Ok(r.0
                .lock()
                .map_err(|_| rt_err("results: poisoned"))?
                .rows()
                .len() as INT)
        },
    );
    d.func(
        "config_hash",
        "config_hash(config: Any) -> String",
        "A stable 16-hex-digit hash of a configuration (key order does not matter).",
        |v: Dynamic| Ok(config_hash(&to_json(&v)?)),
    );
    let s = state.clone();
    d.func(
        "sweep_cells",
        "sweep_cells(tasks: Array, fractions: Array, seeds: Array) -> Array",
        "The cells #{task, fraction, seed} of this job's shard, grouped by seed and task.",
        move |t: Array, f: Array, sd: Array| {
            let tasks: Vec<String> = t.iter().map(|v| v.to_string()).collect();
            let fractions = super::convert::floats(&f, "fractions")?;
            let seeds = super::convert::ints(&sd, "seeds")?
                .into_iter()
                .map(|v| v.max(0) as u64)
                .collect::<Vec<_>>();
            cells(&tasks, &fractions, &seeds, s.shard)
                .iter()
                .map(from_json)
                .collect::<RResult<Array>>()
        },
    );
    let s = state.clone();
    d.func(
        "shard",
        "shard() -> String",
        "This job's shard, \"i/n\" (\"0/1\" without --shard).",
        move || Ok(format!("{}/{}", s.shard.index, s.shard.count)),
    );
    let s = state.clone();
    d.func(
        "gathering",
        "gathering() -> INT",
        "N in the run that gathers the result files of the N shards `run --jobs N` ran, else 0.",
        move || Ok(s.gather as INT),
    );
    d.func(
        "absorb",
        "res.absorb(path: String) -> INT",
        "Appends the rows of another results file (e.g. a shard's) that this one does not have yet; returns how many. The other file is only read.",
        |r: &mut Results, p: &str| {
            let rows = crate::experiment::read_rows(Path::new(p)).rt()?;
            let mut f = r.0.lock().map_err(|_| rt_err("results: poisoned"))?;
            let mut added = 0;
            for row in rows {
                if !f.has(&row.key()) {
                    f.append(row).rt()?;
                    added += 1;
                }
            }
            Ok(added as INT)
        },
    );
    let s = state.clone();
    d.func(
        "shard_suffix",
        "shard_suffix() -> String",
        "\"\" without --shard, else \".shard-I-of-N\" (for per-shard result files).",
        move || {
            Ok(if s.shard.count > 1 {
                format!(".shard-{}-of-{}", s.shard.index, s.shard.count)
            } else {
                String::new()
            })
        },
    );
    d.func(
        "write_results_csv",
        "write_results_csv(rows: Array|Results, path: String)",
        "Writes rows as CSV: task, fraction, n_train, seed, scalar metrics, timings, config_hash.",
        |rows: Dynamic, p: &str| write_csv(Path::new(p), &rows_of(&rows)?).rt(),
    );
    let s = state.clone();
    d.func(
        "merge_results",
        "merge_results(paths: Array, out: String) -> INT",
        "Merges result files (shards) into one, without duplicate cells; returns the row count.",
        move |paths: Array, out: &str| {
            let paths: Vec<PathBuf> = paths.iter().map(|p| PathBuf::from(p.to_string())).collect();
            let rows = crate::experiment::merge_with(&paths, s.allow_mixed).rt()?;
            let _lock = crate::lock::Lock::acquire(Path::new(out), "results file").rt()?;
            crate::experiment::results::write_jsonl(Path::new(out), &rows).rt()?;
            Ok(rows.len() as INT)
        },
    );
    plots(&mut d);
    d
}

/// The options of `plot_curves`.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
struct CurveOptions {
    /// The metric to plot (a key of the rows' metrics).
    metric: String,
    /// The files to write, without extension (.png, .svg and .data.csv are added); required.
    out: String,
    /// The title; () = the metric.
    title: Option<String>,
    /// The y axis label; () = the metric.
    y_label: Option<String>,
    /// The paper's values of this figure, drawn in a labelled panel of their own beside the measured one.
    paper: Option<PaperFigure>,
    /// Width in pixels; the figure is 6.5 in wide, so 1950 is 300 dpi (fonts scale with it).
    width: u32,
    /// Height in pixels.
    height: u32,
}

/// The options of `plot_delta`.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
struct DeltaOptions {
    /// The metric (a key of the rows' metrics); required.
    metric: String,
    /// The files to write, without extension (.png, .svg and .data.csv are added); required.
    out: String,
    /// The arm every other arm is compared with (paired by seed).
    baseline: String,
    /// The title; () = "Difference from <baseline>: <metric>".
    title: Option<String>,
    /// The metric's name on the y axis (drawn as "Δ <y_label> (arm − baseline)"); () = the metric.
    y_label: Option<String>,
    /// Width in pixels; the figure is 6.5 in wide, so 1950 is 300 dpi (fonts scale with it).
    width: u32,
    /// Height in pixels.
    height: u32,
}

impl Default for DeltaOptions {
    fn default() -> Self {
        DeltaOptions {
            metric: String::new(),
            out: String::new(),
            baseline: "baseline".into(),
            title: None,
            y_label: None,
            width: DEFAULT_SIZE.0,
            height: DEFAULT_SIZE.1,
        }
    }
}

/// The options of `stats_report`.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
struct StatsOptions {
    /// The metric to analyse (a key of the rows' metrics); required.
    metric: String,
    /// Where to write: a folder (an existing one, or a path ending in "/") gets stats.json, stats.csv and stats.md; anything else is a stem to which .json, .csv and .md are appended; required.
    out: String,
    /// The arm every other arm is compared with, paired within a repetition (the same seed).
    baseline: String,
    /// Confidence level of every interval, in (0, 1).
    level: f64,
    /// Percentile-bootstrap resamples per arm and fraction (0 leaves the bootstrap interval out).
    resamples: u32,
    /// Seed of the bootstrap, the same for every cell (reports are bit-identical on reruns).
    seed: u64,
}

impl Default for StatsOptions {
    fn default() -> Self {
        let a = Analysis::new("");
        StatsOptions {
            metric: String::new(),
            out: String::new(),
            baseline: a.baseline,
            level: a.level,
            resamples: a.resamples as u32,
            seed: a.seed,
        }
    }
}

/// The key numbers of an estimate, for scripts (undefined ones as ()).
fn estimate_json(e: &Estimate) -> serde_json::Value {
    serde_json::json!({
        "n": e.n,
        "mean": e.mean,
        "lo": e.ci.map(|b| b.lo),
        "hi": e.ci.map(|b| b.hi),
        "p": e.p,
        "excluded": e.excluded,
    })
}

fn merge_json(mut a: serde_json::Value, b: serde_json::Value) -> serde_json::Value {
    if let (Some(x), serde_json::Value::Object(y)) = (a.as_object_mut(), b) {
        x.extend(y);
    }
    a
}

impl Default for CurveOptions {
    fn default() -> Self {
        CurveOptions {
            metric: "dice_mean".into(),
            out: String::new(),
            title: None,
            y_label: None,
            paper: None,
            width: DEFAULT_SIZE.0,
            height: DEFAULT_SIZE.1,
        }
    }
}

/// The options of `plot_pretext`.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
struct PretextPlotOptions {
    /// The files to write, without extension; required.
    out: String,
    /// The title.
    title: String,
}

impl Default for PretextPlotOptions {
    fn default() -> Self {
        PretextPlotOptions {
            out: String::new(),
            title: "Pretext training".into(),
        }
    }
}

fn required_out(out: &str, what: &str) -> RResult<()> {
    if out.is_empty() {
        return Err(rt_err(format!("{what}: option `out` is required")));
    }
    Ok(())
}

fn required_metric(metric: &str, what: &str) -> RResult<()> {
    if metric.is_empty() {
        return Err(rt_err(format!("{what}: option `metric` is required")));
    }
    Ok(())
}

fn paths(files: &[PathBuf]) -> Array {
    files
        .iter()
        .map(|p| Dynamic::from(p.display().to_string()))
        .collect()
}

fn plots(d: &mut Domain) {
    d.func(
        "plot_curves",
        "plot_curves(rows: Array|Results, opts: Map) -> Array",
        "The data-efficiency figure (options below): per arm the mean over seeds at each fraction (evenly spaced), a 95 % t band where n ≥ 3, a marker per arm, the legend outside the data, the paper's values in a panel of their own; writes .png (300 dpi at the default size), .svg and .data.csv (the plotted values) and returns their paths.",
        |rows: Dynamic, o: Map| {
            let opts: CurveOptions = options::parse("plot_curves", &o)?;
            required_out(&opts.out, "plot_curves")?;
            let cfg = CurvePlot {
                title: opts.title.clone().unwrap_or_else(|| opts.metric.clone()),
                y_label: opts.y_label.clone().unwrap_or_else(|| opts.metric.clone()),
                metric: opts.metric.clone(),
                paper: opts.paper,
                size: (opts.width, opts.height),
            };
            let files = data_efficiency(&rows_of(&rows)?, &cfg, Path::new(&opts.out)).rt()?;
            Ok(paths(&files))
        },
    )
    .options::<CurveOptions>();
    d.func(
        "plot_delta",
        "plot_delta(rows: Array|Results, opts: Map) -> Array",
        "The difference-from-baseline figure: per fraction and arm the mean of arm − baseline paired by seed, 95 % t error bars where there are ≥ 3 pairs, a zero line (options below); writes .png, .svg and .data.csv (the plotted values) and returns their paths.",
        |rows: Dynamic, o: Map| {
            let opts: DeltaOptions = options::parse("plot_delta", &o)?;
            required_metric(&opts.metric, "plot_delta")?;
            required_out(&opts.out, "plot_delta")?;
            let cfg = DeltaPlot {
                title: opts.title.clone().unwrap_or_else(|| {
                    format!("Difference from {}: {}", opts.baseline, opts.metric)
                }),
                y_label: opts.y_label.clone().unwrap_or_else(|| opts.metric.clone()),
                metric: opts.metric.clone(),
                baseline: opts.baseline.clone(),
                size: (opts.width, opts.height),
            };
            let files = delta_figure(&rows_of(&rows)?, &cfg, Path::new(&opts.out)).rt()?;
            Ok(paths(&files))
        },
    )
    .options::<DeltaOptions>();
    d.func(
        "run_report",
        "run_report(dir: String) -> Map",
        "Summarises a run folder in report.md and report.html (the configuration, figures, statistics table, timings per pretraining, arm and cell, and what failed or did not finish; the same as `pretext report DIR`); returns #{markdown, html}.",
        |dir: &str| {
            let r = crate::experiment::summary::write(std::path::Path::new(dir)).rt()?;
            let mut m = Map::new();
            m.insert("markdown".into(), r.markdown.display().to_string().into());
            m.insert("html".into(), r.html.display().to_string().into());
            Ok(m)
        },
    );
    d.func(
        "stats_report",
        "stats_report(rows: Array|Results, opts: Map) -> Map",
        "The pre-registered analysis of one metric (options below): per arm and fraction the mean with t and bootstrap 95 % CIs and the undefined (NaN) values left out; arm − baseline paired by seed with t CI, exact sign-flip p and Holm's p across the pretext tasks per fraction; the primary contrast (mean over the pretext tasks of task − baseline at the smallest fraction); per task Δ(smallest) − Δ(largest) with Holm. Writes stats.json, stats.csv and stats.md; returns #{metric, summary (the primary contrast in one line), files, repetitions, undefined, primary, deltas, secondary} (undefined numbers as ()).",
        |rows: Dynamic, o: Map| {
            let opts: StatsOptions = options::parse("stats_report", &o)?;
            required_metric(&opts.metric, "stats_report")?;
            required_out(&opts.out, "stats_report")?;
            let a = Analysis {
                metric: opts.metric.clone(),
                baseline: opts.baseline.clone(),
                level: opts.level,
                resamples: opts.resamples as usize,
                seed: opts.seed,
            };
            let report = analyse(&rows_of(&rows)?, &a).rt()?;
            let files = report.write(Path::new(&opts.out)).rt()?;
            let p = &report.primary;
            let summary = serde_json::json!({
                "metric": report.analysis.metric,
                "summary": report.primary_line(),
                "files": files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>(),
                "repetitions": report.repetitions.len(),
                "undefined": report.undefined,
                "primary": merge_json(
                    serde_json::json!({ "fraction": p.fraction, "tasks": p.tasks, "p_floor": p.contrast.p_floor }),
                    estimate_json(&p.contrast),
                ),
                "deltas": report.deltas.iter().map(|d| merge_json(
                    serde_json::json!({ "task": d.task, "fraction": d.fraction, "p_holm": d.p_holm }),
                    estimate_json(&d.delta),
                )).collect::<Vec<_>>(),
                "secondary": report.secondary.iter().map(|c| merge_json(
                    serde_json::json!({ "task": c.task, "p_holm": c.p_holm }),
                    estimate_json(&c.contrast),
                )).collect::<Vec<_>>(),
            });
            from_json(&summary)
        },
    )
    .options::<StatsOptions>();
    d.func(
        "plot_pretext",
        "plot_pretext(logs: Map, opts: Map) -> Array",
        "Pretext loss and accuracy per epoch for #{name: log} (logs from pretrain() or read_pretrain_log; options below).",
        |logs: Map, o: Map| {
            let opts: PretextPlotOptions = options::parse("plot_pretext", &o)?;
            required_out(&opts.out, "plot_pretext")?;
            let series: Vec<(String, Vec<EpochLog>)> = logs
                .iter()
                .map(|(k, v)| Ok((k.to_string(), rhai::serde::from_dynamic::<Vec<EpochLog>>(v)?)))
                .collect::<RResult<_>>()?;
            let files = pretext_curves(&series, &opts.title, Path::new(&opts.out)).rt()?;
            Ok(files.iter().map(|p| Dynamic::from(p.display().to_string())).collect::<Array>())
        },
    )
    .options::<PretextPlotOptions>();
    d.func(
        "read_pretrain_log",
        "read_pretrain_log(path: String) -> Array",
        "The per-epoch rows #{epoch, loss, accuracy, val_loss, val_accuracy, seconds} of a pretraining log.",
        |p: &str| from_json(&read_log(Path::new(p)).rt()?).and_then(|d| d.into_array().map_err(rt_err)),
    );
}

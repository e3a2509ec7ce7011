//! The pre-registered analysis of a data-efficiency sweep, for one metric (issue 13):
//!
//! 1. per arm and label fraction: the number of defined values, the mean with its Student-t and
//!    percentile-bootstrap intervals, and the number of undefined (NaN) values, which are left
//!    out of every statistic and reported;
//! 2. per arm and fraction: the differences arm − baseline paired within a repetition (the same
//!    `seed`), their mean with a t interval, the exact sign-flip p-value and Holm's adjustment
//!    across the pretext tasks within the fraction (arms that are not pretext tasks, such as
//!    `baseline_long`, form a family of their own);
//! 3. the primary contrast: per repetition, the mean over the pretext tasks of (task −
//!    baseline) at the smallest fraction; its mean, t interval and sign-flip p (unadjusted: it
//!    is the single confirmatory test);
//! 4. the secondary "helps most when labels are scarce" contrast per pretext task: per
//!    repetition Δ(smallest fraction) − Δ(largest fraction), with Holm across the tasks.
//!
//! A repetition enters a paired statistic only when every value it needs is defined; the
//! repetitions left out are listed. [`Report`] serialises to `stats.json`, and renders as CSV
//! ([`Report::to_csv`]) and markdown tables ([`Report::to_markdown`]). The bootstrap draws from
//! a fixed seed, so a report is bit-identical on reruns.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::results::ResultRow;
use super::stats;
use crate::{Error, Result};

/// The five pretext tasks, in the paper's order: the arms of the primary and secondary
/// contrasts and of the Holm family of the differences from the baseline.
pub const PRETEXT_TASKS: [&str; 5] = ["rotation", "jigsaw", "rpl", "exemplar", "cpc"];

/// The order arms are listed and drawn in; others follow alphabetically.
pub const ARM_ORDER: [&str; 7] = [
    "baseline",
    "baseline_long",
    "rotation",
    "jigsaw",
    "rpl",
    "exemplar",
    "cpc",
];

/// What to analyse and how.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Analysis {
    /// The metric (a key of the rows' metrics).
    pub metric: String,
    /// The arm every other arm is compared with.
    pub baseline: String,
    /// Confidence level of every interval, in (0, 1).
    pub level: f64,
    /// Bootstrap resamples per cell; 0 leaves the bootstrap interval out.
    pub resamples: usize,
    /// Seed of the bootstrap (the same for every cell).
    pub seed: u64,
}

impl Analysis {
    /// The pre-registered settings for `metric`: baseline `baseline`, 95 % intervals, 10 000
    /// bootstrap resamples from seed 0.
    pub fn new(metric: &str) -> Self {
        Analysis {
            metric: metric.into(),
            baseline: "baseline".into(),
            level: 0.95,
            resamples: 10_000,
            seed: 0,
        }
    }
}

/// A two-sided interval.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct Bounds {
    /// Lower bound.
    pub lo: f64,
    /// Upper bound.
    pub hi: f64,
}

/// One repetition's value; `None` when undefined.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct SeedValue {
    /// The repetition (the rows' `seed`).
    pub seed: u64,
    /// The value.
    pub value: Option<f64>,
}

/// The statistics of one arm at one fraction (over repetitions).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct CellSummary {
    /// The arm.
    pub task: String,
    /// The share of labelled training data.
    pub fraction: f64,
    /// Defined values.
    pub n: usize,
    /// Undefined (NaN or missing) values, left out of the statistics.
    pub undefined: usize,
    /// Every repetition's value, undefined ones as `null`.
    pub values: Vec<SeedValue>,
    /// Mean of the defined values (`null` if none).
    pub mean: Option<f64>,
    /// Student-t interval of the mean (needs n ≥ 2).
    pub ci_t: Option<Bounds>,
    /// Percentile-bootstrap interval of the mean (needs n ≥ 2).
    pub ci_bootstrap: Option<Bounds>,
}

/// A mean over repetitions of a paired quantity, with its t interval and sign-flip p.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Estimate {
    /// Repetitions that entered.
    pub n: usize,
    /// Their values.
    pub values: Vec<SeedValue>,
    /// Repetitions left out because a value they need is missing or undefined.
    pub excluded: Vec<u64>,
    /// Mean of the values.
    pub mean: Option<f64>,
    /// Student-t interval of the mean (needs n ≥ 2).
    pub ci: Option<Bounds>,
    /// Two-sided sign-flip p-value of the mean (exact up to 20 repetitions).
    pub p: Option<f64>,
    /// The smallest p the exact test can give with n repetitions: 2 / 2^n.
    pub p_floor: Option<f64>,
}

/// An arm against the baseline at one fraction.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct DeltaSummary {
    /// The arm.
    pub task: String,
    /// The share of labelled training data.
    pub fraction: f64,
    /// The Holm family: `pretext` (the five tasks) or `other`.
    pub family: String,
    /// arm − baseline per repetition.
    #[serde(flatten)]
    pub delta: Estimate,
    /// Holm-adjusted p within the family at this fraction.
    pub p_holm: Option<f64>,
}

/// The primary contrast.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Primary {
    /// The smallest fraction of the rows.
    pub fraction: Option<f64>,
    /// The pretext tasks averaged (those with rows at that fraction).
    pub tasks: Vec<String>,
    /// Per repetition: mean over the tasks of (task − baseline).
    #[serde(flatten)]
    pub contrast: Estimate,
}

/// The secondary contrast of one pretext task.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Scarcity {
    /// The pretext task.
    pub task: String,
    /// The smallest fraction.
    pub smallest: f64,
    /// The largest fraction.
    pub largest: f64,
    /// Per repetition: Δ(smallest) − Δ(largest), Δ = task − baseline.
    #[serde(flatten)]
    pub contrast: Estimate,
    /// Holm-adjusted p across the tasks.
    pub p_holm: Option<f64>,
}

/// The whole analysis of one metric.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Report {
    /// The settings.
    #[serde(flatten)]
    pub analysis: Analysis,
    /// The arms, baseline first.
    pub arms: Vec<String>,
    /// The fractions, ascending.
    pub fractions: Vec<f64>,
    /// The repetitions (seeds) seen.
    pub repetitions: Vec<u64>,
    /// Undefined values over all cells.
    pub undefined: usize,
    /// Per arm and fraction.
    pub cells: Vec<CellSummary>,
    /// Per non-baseline arm and fraction.
    pub deltas: Vec<DeltaSummary>,
    /// The primary contrast.
    pub primary: Primary,
    /// The secondary contrast, per pretext task.
    pub secondary: Vec<Scarcity>,
}

/// A fraction as an exact key (millionths).
fn fkey(f: f64) -> i64 {
    (f * 1e6).round() as i64
}

fn unkey(k: i64) -> f64 {
    k as f64 / 1e6
}

/// A fraction as a percentage label: 0.05 → "5 %", 0.125 → "12.5 %".
pub fn percent(f: f64) -> String {
    let p = (f * 100.0 * 1e6).round() / 1e6;
    format!("{p} %")
}

/// Arms sorted by [`ARM_ORDER`], then by name.
pub fn ordered_arms<'a>(arms: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut v: Vec<String> = arms.into_iter().map(String::from).collect();
    v.sort_by_key(|t| {
        (
            ARM_ORDER
                .iter()
                .position(|o| o == t)
                .unwrap_or(ARM_ORDER.len()),
            t.clone(),
        )
    });
    v.dedup();
    v
}

/// The metric's values: per (arm, fraction key), per seed; NaN where undefined.
type Values = BTreeMap<(String, i64), BTreeMap<u64, f64>>;

/// Reads `metric` from the rows. A row without the metric or with `null` counts as undefined;
/// an error if no row has it as a number, if a value is not a number, or if one cell
/// (arm, fraction, seed) has two rows.
fn collect(rows: &[ResultRow], metric: &str) -> Result<Values> {
    let mut out: Values = BTreeMap::new();
    let mut any = false;
    for r in rows {
        let v = match r.metrics.get(metric) {
            None | Some(serde_json::Value::Null) => f64::NAN,
            Some(serde_json::Value::Number(n)) => {
                any = true;
                n.as_f64().unwrap_or(f64::NAN)
            }
            Some(other) => {
                return Err(Error::arg(
                    "metric",
                    format!(
                        "`{metric}` of {} {} seed {} is not a number: {other}",
                        r.task,
                        percent(r.fraction),
                        r.seed
                    ),
                ));
            }
        };
        let cell = out.entry((r.task.clone(), fkey(r.fraction))).or_default();
        if cell.insert(r.seed, v).is_some() {
            return Err(Error::arg(
                "rows",
                format!(
                    "two rows for {} {} seed {} (configurations mixed?); the analysis pairs \
                     repetitions by seed and needs one row per cell: keep one configuration's rows",
                    r.task,
                    percent(r.fraction),
                    r.seed
                ),
            ));
        }
    }
    if !any {
        return Err(Error::arg(
            "metric",
            format!("no result row has the metric `{metric}`"),
        ));
    }
    Ok(out)
}

fn bounds(i: Option<stats::Interval>) -> Option<Bounds> {
    i.map(|i| Bounds { lo: i.lo, hi: i.hi })
}

fn summarise_cell(
    task: &str,
    fraction: f64,
    by_seed: &BTreeMap<u64, f64>,
    a: &Analysis,
) -> CellSummary {
    let finite: Vec<f64> = by_seed
        .values()
        .copied()
        .filter(|v| v.is_finite())
        .collect();
    let t = stats::mean_ci_t(&finite, a.level);
    let boot = (a.resamples > 0)
        .then(|| stats::mean_ci_bootstrap(&finite, a.level, a.resamples, a.seed))
        .flatten();
    CellSummary {
        task: task.into(),
        fraction,
        n: finite.len(),
        undefined: by_seed.len() - finite.len(),
        values: by_seed
            .iter()
            .map(|(&seed, &v)| SeedValue {
                seed,
                value: v.is_finite().then_some(v),
            })
            .collect(),
        mean: t
            .map(|i| i.mean)
            .or_else(|| (finite.len() == 1).then(|| finite[0])),
        ci_t: bounds(t),
        ci_bootstrap: bounds(boot),
    }
}

/// The estimate of per-repetition values (`None`: the repetition is left out).
fn estimate(per_seed: BTreeMap<u64, Option<f64>>, level: f64) -> Estimate {
    let values: Vec<SeedValue> = per_seed
        .iter()
        .filter_map(|(&seed, v)| {
            v.map(|v| SeedValue {
                seed,
                value: Some(v),
            })
        })
        .collect();
    let excluded: Vec<u64> = per_seed
        .iter()
        .filter(|(_, v)| v.is_none())
        .map(|(&s, _)| s)
        .collect();
    let x: Vec<f64> = values.iter().filter_map(|v| v.value).collect();
    let t = stats::mean_ci_t(&x, level);
    let n = x.len();
    Estimate {
        n,
        values,
        excluded,
        mean: t.map(|i| i.mean).or_else(|| (n == 1).then(|| x[0])),
        ci: bounds(t),
        p: (n > 0)
            .then(|| stats::sign_flip_p(&x))
            .filter(|p| p.is_finite()),
        p_floor: (n > 0).then(|| 2f64.powi(1 - n.min(1000) as i32).min(1.0)),
    }
}

/// `f(seed)` for every seed any of `cells` has; `f` returns `None` when a value is missing.
fn per_seed(
    cells: &[Option<&BTreeMap<u64, f64>>],
    f: impl Fn(&[f64]) -> f64,
) -> BTreeMap<u64, Option<f64>> {
    let seeds: BTreeSet<u64> = cells
        .iter()
        .flatten()
        .flat_map(|c| c.keys().copied())
        .collect();
    seeds
        .into_iter()
        .map(|s| {
            let vals: Option<Vec<f64>> = cells
                .iter()
                .map(|c| c.and_then(|c| c.get(&s)).copied().filter(|v| v.is_finite()))
                .collect();
            (s, vals.map(|v| f(&v)).filter(|v| v.is_finite()))
        })
        .collect()
}

/// Holm's adjustment of the `p` of `items` (NaN for `None`), written back by `set`.
fn adjust<T>(
    items: &mut [&mut T],
    p: impl Fn(&T) -> Option<f64>,
    set: impl Fn(&mut T, Option<f64>),
) {
    let raw: Vec<f64> = items.iter().map(|i| p(i).unwrap_or(f64::NAN)).collect();
    for (item, q) in items.iter_mut().zip(stats::holm(&raw)) {
        set(item, q.is_finite().then_some(q));
    }
}

/// The statistics of every arm at every fraction (1. above), without the baseline
/// comparisons: what the data-efficiency figure draws.
pub fn summarise_cells(rows: &[ResultRow], a: &Analysis) -> Result<Vec<CellSummary>> {
    check(a)?;
    let values = collect(rows, &a.metric)?;
    Ok(cells_of(&values, a))
}

fn cells_of(values: &Values, a: &Analysis) -> Vec<CellSummary> {
    let arms = ordered_arms(values.keys().map(|(t, _)| t.as_str()));
    let mut out = Vec::new();
    for arm in &arms {
        for ((t, f), by_seed) in values {
            if t == arm {
                out.push(summarise_cell(t, unkey(*f), by_seed, a));
            }
        }
    }
    out
}

fn check(a: &Analysis) -> Result<()> {
    if !(a.level > 0.0 && a.level < 1.0) {
        return Err(Error::arg(
            "level",
            format!("must be in (0, 1), got {}", a.level),
        ));
    }
    if a.metric.is_empty() {
        return Err(Error::arg("metric", "is required"));
    }
    Ok(())
}

/// The whole pre-registered analysis of `rows` (see the module documentation). An error if no
/// row has the metric, no row of the baseline arm has it, a value is not a number, or a cell
/// has two rows.
pub fn analyse(rows: &[ResultRow], a: &Analysis) -> Result<Report> {
    check(a)?;
    let values = collect(rows, &a.metric)?;
    let base_arm = a.baseline.as_str();
    if !values
        .iter()
        .any(|((t, _), v)| t == base_arm && v.values().any(|x| x.is_finite()))
    {
        return Err(Error::arg(
            "baseline",
            format!(
                "no row of the baseline arm `{base_arm}` has a value of `{}`",
                a.metric
            ),
        ));
    }
    let mut arms = vec![a.baseline.clone()];
    arms.extend(
        ordered_arms(values.keys().map(|(t, _)| t.as_str()))
            .into_iter()
            .filter(|t| *t != a.baseline),
    );
    let fkeys: BTreeSet<i64> = values.keys().map(|(_, f)| *f).collect();
    let repetitions: BTreeSet<u64> = values.values().flat_map(|v| v.keys().copied()).collect();
    let get = |t: &str, f: i64| values.get(&(t.to_string(), f));
    let is_pretext = |t: &str| PRETEXT_TASKS.contains(&t) && t != base_arm;

    let mut cells = Vec::new();
    for arm in &arms {
        for &f in &fkeys {
            if let Some(v) = get(arm, f) {
                cells.push(summarise_cell(arm, unkey(f), v, a));
            }
        }
    }

    let mut deltas = Vec::new();
    for &f in &fkeys {
        let start = deltas.len();
        for arm in arms.iter().skip(1) {
            let Some(arm_values) = get(arm, f) else {
                continue;
            };
            let base = get(base_arm, f);
            let d = per_seed(&[Some(arm_values), base], |v| v[0] - v[1]);
            deltas.push(DeltaSummary {
                task: arm.clone(),
                fraction: unkey(f),
                family: if is_pretext(arm) { "pretext" } else { "other" }.into(),
                delta: estimate(d, a.level),
                p_holm: None,
            });
        }
        for family in ["pretext", "other"] {
            let mut members: Vec<&mut DeltaSummary> = deltas[start..]
                .iter_mut()
                .filter(|d| d.family == family)
                .collect();
            adjust(&mut members, |d| d.delta.p, |d, q| d.p_holm = q);
        }
    }

    let smallest = fkeys.first().copied();
    let largest = fkeys.last().copied();
    let primary = match smallest {
        Some(f) => {
            let tasks: Vec<String> = arms
                .iter()
                .filter(|t| is_pretext(t) && get(t, f).is_some())
                .cloned()
                .collect();
            let mut cols = vec![get(base_arm, f)];
            cols.extend(tasks.iter().map(|t| get(t, f)));
            let contrast = if tasks.is_empty() {
                Estimate::default()
            } else {
                let k = tasks.len() as f64;
                estimate(
                    per_seed(&cols, |v| v[1..].iter().map(|x| x - v[0]).sum::<f64>() / k),
                    a.level,
                )
            };
            Primary {
                fraction: Some(unkey(f)),
                tasks,
                contrast,
            }
        }
        None => Primary {
            fraction: None,
            tasks: vec![],
            contrast: Estimate::default(),
        },
    };

    let mut secondary = Vec::new();
    if let (Some(s), Some(l)) = (smallest, largest)
        && s != l
    {
        for t in arms.iter().filter(|t| is_pretext(t)) {
            if get(t, s).is_none() || get(t, l).is_none() {
                continue;
            }
            let cols = [get(t, s), get(base_arm, s), get(t, l), get(base_arm, l)];
            secondary.push(Scarcity {
                task: t.clone(),
                smallest: unkey(s),
                largest: unkey(l),
                contrast: estimate(per_seed(&cols, |v| (v[0] - v[1]) - (v[2] - v[3])), a.level),
                p_holm: None,
            });
        }
        let mut all: Vec<&mut Scarcity> = secondary.iter_mut().collect();
        adjust(&mut all, |s| s.contrast.p, |s, q| s.p_holm = q);
    }

    Ok(Report {
        analysis: a.clone(),
        undefined: cells.iter().map(|c| c.undefined).sum(),
        arms,
        fractions: fkeys.iter().map(|&f| unkey(f)).collect(),
        repetitions: repetitions.into_iter().collect(),
        cells,
        deltas,
        primary,
        secondary,
    })
}

fn num(v: Option<f64>) -> String {
    v.map(|x| x.to_string()).unwrap_or_default()
}

fn fixed(v: Option<f64>) -> String {
    match v {
        Some(x) => format!("{x:.3}"),
        None => "—".into(),
    }
}

fn signed(v: Option<f64>) -> String {
    match v {
        Some(x) => format!("{x:+.3}"),
        None => "—".into(),
    }
}

fn interval(b: Option<Bounds>, sign: bool) -> String {
    match b {
        Some(b) if sign => format!("[{:+.3}, {:+.3}]", b.lo, b.hi),
        Some(b) => format!("[{:.3}, {:.3}]", b.lo, b.hi),
        None => "—".into(),
    }
}

fn pval(p: Option<f64>) -> String {
    match p {
        Some(p) if p < 0.001 => format!("{p:.1e}"),
        Some(p) => format!("{p:.3}"),
        None => "—".into(),
    }
}

fn seeds(s: &[u64]) -> String {
    s.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")
}

/// "seed 1" or "seeds 1, 2".
fn seed_list(s: &[u64]) -> String {
    format!("seed{} {}", if s.len() == 1 { "" } else { "s" }, seeds(s))
}

impl Report {
    /// The statistics of `task` at `fraction`.
    pub fn cell(&self, task: &str, fraction: f64) -> Option<&CellSummary> {
        self.cells
            .iter()
            .find(|c| c.task == task && fkey(c.fraction) == fkey(fraction))
    }

    /// The comparison of `task` with the baseline at `fraction`.
    pub fn delta(&self, task: &str, fraction: f64) -> Option<&DeltaSummary> {
        self.deltas
            .iter()
            .find(|d| d.task == task && fkey(d.fraction) == fkey(fraction))
    }

    /// The secondary contrast of `task`.
    pub fn scarcity(&self, task: &str) -> Option<&Scarcity> {
        self.secondary.iter().find(|s| s.task == task)
    }

    /// The primary contrast in one line, e.g. "pretext tasks − baseline at 5 %: mean Δ +0.041,
    /// 95 % CI [-0.012, +0.094], sign-flip p 0.250, n = 3".
    pub fn primary_line(&self) -> String {
        let p = &self.primary;
        match p.fraction {
            Some(f) if !p.tasks.is_empty() => format!(
                "pretext tasks − {} at {}: mean Δ {}, {} % CI {}, sign-flip p {}, n = {}",
                self.analysis.baseline,
                percent(f),
                signed(p.contrast.mean),
                (self.analysis.level * 1e4).round() / 1e2,
                interval(p.contrast.ci, true),
                pval(p.contrast.p),
                p.contrast.n
            ),
            _ => "primary contrast not defined: no pretext task at the smallest fraction".into(),
        }
    }

    /// One row per arm × fraction: the cell's statistics and its comparison with the
    /// baseline (empty for the baseline itself), full precision, undefined as empty fields.
    pub fn to_csv(&self) -> Result<Vec<u8>> {
        let mut w = csv::Writer::from_writer(Vec::new());
        let header = [
            "metric",
            "task",
            "fraction",
            "n",
            "undefined",
            "mean",
            "t_lo",
            "t_hi",
            "boot_lo",
            "boot_hi",
            "n_pairs",
            "delta",
            "delta_lo",
            "delta_hi",
            "p",
            "p_holm",
            "family",
        ];
        w.write_record(header).map_err(Error::msg)?;
        for c in &self.cells {
            let d = self.delta(&c.task, c.fraction);
            let rec = [
                self.analysis.metric.clone(),
                c.task.clone(),
                c.fraction.to_string(),
                c.n.to_string(),
                c.undefined.to_string(),
                num(c.mean),
                num(c.ci_t.map(|b| b.lo)),
                num(c.ci_t.map(|b| b.hi)),
                num(c.ci_bootstrap.map(|b| b.lo)),
                num(c.ci_bootstrap.map(|b| b.hi)),
                d.map(|d| d.delta.n.to_string()).unwrap_or_default(),
                num(d.and_then(|d| d.delta.mean)),
                num(d.and_then(|d| d.delta.ci.map(|b| b.lo))),
                num(d.and_then(|d| d.delta.ci.map(|b| b.hi))),
                num(d.and_then(|d| d.delta.p)),
                num(d.and_then(|d| d.p_holm)),
                d.map(|d| d.family.clone()).unwrap_or_default(),
            ];
            w.write_record(&rec).map_err(Error::msg)?;
        }
        w.into_inner().map_err(Error::msg)
    }

    /// Markdown tables: the primary contrast, mean ± CI per cell, Δ vs baseline with p and
    /// Holm's p, and the secondary contrast.
    pub fn to_markdown(&self) -> String {
        let a = &self.analysis;
        let lvl = format!("{} %", (a.level * 1e4).round() / 1e2);
        let mut s = String::new();
        let _ = writeln!(s, "# Statistics of `{}`\n", a.metric);
        let _ = writeln!(
            s,
            "Arms compared with `{}`, paired within a repetition (the same seed); repetitions: {} \
             ({}). Intervals are {lvl}: Student t, and percentile bootstrap ({} resamples, \
             seed {}). p-values: two-sided sign-flip permutation test of the mean paired \
             difference (exact: all 2^n sign assignments). Undefined (NaN) values are left out \
             and counted ({} in all).\n",
            a.baseline,
            self.repetitions.len(),
            seed_list(&self.repetitions),
            a.resamples,
            a.seed,
            self.undefined
        );

        let p = &self.primary;
        let _ = writeln!(s, "## Primary contrast\n");
        match p.fraction {
            Some(f) if !p.tasks.is_empty() => {
                let _ = writeln!(
                    s,
                    "Per repetition, the mean over the pretext tasks ({}) of (task − {}) at {}; \
                     the single confirmatory test (p unadjusted).\n",
                    p.tasks.join(", "),
                    a.baseline,
                    percent(f)
                );
                let _ = writeln!(s, "| contrast | n | mean Δ | {lvl} CI (t) | p |");
                let _ = writeln!(s, "|---|---:|---:|---|---:|");
                let _ = writeln!(
                    s,
                    "| pretext tasks − {} at {} | {} | {} | {} | {} |\n",
                    a.baseline,
                    percent(f),
                    p.contrast.n,
                    signed(p.contrast.mean),
                    interval(p.contrast.ci, true),
                    pval(p.contrast.p)
                );
                if let Some(floor) = p.contrast.p_floor {
                    let _ = writeln!(
                        s,
                        "With {} repetition{} the exact test cannot give a p below {}.",
                        p.contrast.n,
                        if p.contrast.n == 1 { "" } else { "s" },
                        pval(Some(floor))
                    );
                }
                if !p.contrast.excluded.is_empty() {
                    let _ = writeln!(
                        s,
                        "Left out (a value missing or undefined): {}.",
                        seed_list(&p.contrast.excluded)
                    );
                }
                s.push('\n');
            }
            _ => {
                let _ = writeln!(
                    s,
                    "Not defined: no pretext task has rows at the smallest fraction.\n"
                );
            }
        }

        let _ = writeln!(s, "## Mean and {lvl} CI per arm and fraction\n");
        let _ = writeln!(
            s,
            "| arm | labels | n | undefined | mean | {lvl} CI (t) | {lvl} CI (bootstrap) |"
        );
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---|---|");
        for c in &self.cells {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} |",
                c.task,
                percent(c.fraction),
                c.n,
                c.undefined,
                fixed(c.mean),
                interval(c.ci_t, false),
                interval(c.ci_bootstrap, false)
            );
        }
        s.push('\n');

        let _ = writeln!(s, "## Difference from `{}`\n", a.baseline);
        let _ = writeln!(
            s,
            "Δ = arm − {} per repetition; Holm's correction across the pretext tasks within each \
             fraction{}.\n",
            a.baseline,
            if self.deltas.iter().any(|d| d.family == "other") {
                "; the other arms form a family of their own"
            } else {
                ""
            }
        );
        let _ = writeln!(
            s,
            "| arm | labels | pairs | mean Δ | {lvl} CI (t) | p | p (Holm) |"
        );
        let _ = writeln!(s, "|---|---:|---:|---:|---|---:|---:|");
        for d in &self.deltas {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} |",
                d.task,
                percent(d.fraction),
                d.delta.n,
                signed(d.delta.mean),
                interval(d.delta.ci, true),
                pval(d.delta.p),
                pval(d.p_holm)
            );
        }
        let unpaired: Vec<String> = self
            .deltas
            .iter()
            .filter(|d| !d.delta.excluded.is_empty())
            .map(|d| {
                format!(
                    "{} {} ({})",
                    d.task,
                    percent(d.fraction),
                    seed_list(&d.delta.excluded)
                )
            })
            .collect();
        if !unpaired.is_empty() {
            let _ = writeln!(
                s,
                "\nUnpaired repetitions left out (a value of the arm or the baseline missing or \
                 undefined): {}.",
                unpaired.join("; ")
            );
        }
        s.push('\n');

        let _ = writeln!(
            s,
            "## Secondary: does pretraining help most when labels are scarce?\n"
        );
        match self.secondary.first() {
            Some(first) => {
                let (lo, hi) = (percent(first.smallest), percent(first.largest));
                let _ = writeln!(
                    s,
                    "Per repetition Δ({lo}) − Δ({hi}), Δ = task − {}; Holm's correction across \
                     the tasks.\n",
                    a.baseline
                );
                let _ = writeln!(
                    s,
                    "| task | n | Δ({lo}) − Δ({hi}) | {lvl} CI (t) | p | p (Holm) |"
                );
                let _ = writeln!(s, "|---|---:|---:|---|---:|---:|");
                for c in &self.secondary {
                    let _ = writeln!(
                        s,
                        "| {} | {} | {} | {} | {} | {} |",
                        c.task,
                        c.contrast.n,
                        signed(c.contrast.mean),
                        interval(c.contrast.ci, true),
                        pval(c.contrast.p),
                        pval(c.p_holm)
                    );
                }
                let left: Vec<String> = self
                    .secondary
                    .iter()
                    .filter(|c| !c.contrast.excluded.is_empty())
                    .map(|c| format!("{} ({})", c.task, seed_list(&c.contrast.excluded)))
                    .collect();
                if !left.is_empty() {
                    let _ = writeln!(
                        s,
                        "\nLeft out (a value at either fraction missing or undefined): {}.",
                        left.join("; ")
                    );
                }
            }
            None => {
                let _ = writeln!(
                    s,
                    "Not defined: it needs two fractions and a pretext task at both."
                );
            }
        }
        s
    }

    /// `stats.json`, `stats.csv` and `stats.md` at `out` (see [`report_paths`]), each written
    /// atomically; returns the paths.
    pub fn write(&self, out: &Path) -> Result<Vec<PathBuf>> {
        let [json, csv, md] = report_paths(out);
        let text = serde_json::to_string_pretty(self).map_err(Error::msg)? + "\n";
        crate::io::write_atomic(&json, text.as_bytes())?;
        crate::io::write_atomic(&csv, &self.to_csv()?)?;
        crate::io::write_atomic(&md, self.to_markdown().as_bytes())?;
        Ok(vec![json, csv, md])
    }
}

/// The JSON, CSV and markdown files of a report at `out`: a folder (an existing one, or a
/// path ending in `/`) gets `stats.json`, `stats.csv`, `stats.md`; anything else is a stem to
/// which `.json`, `.csv`, `.md` are appended.
pub fn report_paths(out: &Path) -> [PathBuf; 3] {
    let text = out.as_os_str().to_string_lossy();
    let stem = if out.is_dir() || text.ends_with('/') || text.ends_with(std::path::MAIN_SEPARATOR) {
        out.join("stats")
    } else {
        out.to_path_buf()
    };
    [".json", ".csv", ".md"].map(|ext| with_suffix(&stem, ext))
}

/// `stem` with `suffix` appended to its file name (`a/b.v2` + `.png` = `a/b.v2.png`).
pub fn with_suffix(stem: &Path, suffix: &str) -> PathBuf {
    let mut s = stem.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

//! The pre-registered analysis of a sweep (`experiment::report`, `stats_report`): every number
//! checked against values computed by hand on a small synthetic row set whose values are
//! sixteenths (so the paired differences are exact), undefined (NaN) cells counted and left
//! out, unpaired repetitions skipped, Holm families, the files written, and reruns bit-identical.

mod common;

use std::collections::BTreeMap;

use pretext::experiment::ResultRow;
use pretext::experiment::report::{Analysis, analyse, report_paths};
use pretext::experiment::stats;
use pretext::script::{Host, HostConfig};

/// t quantiles at 0.975 (SciPy, tests/fixtures/stats/stats.json).
const T1: f64 = 12.706204736174694;
const T2: f64 = 4.302652729749462;

fn row(task: &str, fraction: f64, seed: u64, sixteenths: Option<f64>) -> ResultRow {
    let v = sixteenths.map_or(serde_json::Value::Null, |x| serde_json::json!(x / 16.0));
    ResultRow {
        task: task.into(),
        fraction,
        n_train: 1,
        seed,
        metrics: BTreeMap::from([
            ("dice_pancreas".to_string(), v),
            ("dice_mean".to_string(), serde_json::json!(0.5)),
        ]),
        timings: BTreeMap::new(),
        config_hash: "abc".into(),
        version: "test".into(),
        extra: BTreeMap::new(),
    }
}

/// Seeds 0-2 at 10 % and 100 %: baseline, rotation, jigsaw (undefined at 10 % seed 1),
/// baseline_long, and a rotation row at 100 % seed 3 without a baseline partner.
fn rows() -> Vec<ResultRow> {
    let table: [(&str, f64, [Option<f64>; 3]); 8] = [
        ("baseline", 0.1, [Some(4.0), Some(5.0), Some(6.0)]),
        ("rotation", 0.1, [Some(6.0), Some(8.0), Some(9.0)]),
        ("jigsaw", 0.1, [Some(4.0), None, Some(7.0)]),
        ("baseline_long", 0.1, [Some(5.0), Some(6.0), Some(7.0)]),
        ("baseline", 1.0, [Some(10.0), Some(11.0), Some(12.0)]),
        ("rotation", 1.0, [Some(10.0), Some(12.0), Some(12.0)]),
        ("jigsaw", 1.0, [Some(11.0), Some(12.0), Some(13.0)]),
        ("baseline_long", 1.0, [Some(10.0), Some(11.0), Some(12.0)]),
    ];
    let mut out = Vec::new();
    for (task, f, values) in table {
        for (seed, v) in values.into_iter().enumerate() {
            out.push(row(task, f, seed as u64, v));
        }
    }
    out.push(row("rotation", 1.0, 3, Some(14.0)));
    out
}

fn close(a: Option<f64>, b: f64) -> bool {
    a.is_some_and(|a| (a - b).abs() < 1e-12)
}

#[track_caller]
fn assert_close(a: Option<f64>, b: f64) {
    assert!(close(a, b), "{a:?} vs {b}");
}

#[test]
fn the_analysis_matches_hand_computed_values() {
    let r = analyse(&rows(), &Analysis::new("dice_pancreas")).unwrap();
    assert_eq!(r.arms, ["baseline", "baseline_long", "rotation", "jigsaw"]);
    assert_eq!(r.fractions, [0.1, 1.0]);
    assert_eq!(r.repetitions, [0, 1, 2, 3]);
    assert_eq!(r.undefined, 1);

    // 1. Cells: baseline at 10 % is 4, 5, 6 sixteenths: mean 5/16, sd 1/16.
    let c = r.cell("baseline", 0.1).unwrap();
    assert_eq!((c.n, c.undefined), (3, 0));
    assert_close(c.mean, 5.0 / 16.0);
    let half = T2 * (1.0 / 16.0) / 3f64.sqrt();
    let t = c.ci_t.unwrap();
    assert_close(Some(t.lo), 5.0 / 16.0 - half);
    assert_close(Some(t.hi), 5.0 / 16.0 + half);
    // The bootstrap interval is stats::mean_ci_bootstrap's with the pre-registered settings.
    let b = stats::mean_ci_bootstrap(&[0.25, 0.3125, 0.375], 0.95, 10_000, 0).unwrap();
    let cb = c.ci_bootstrap.unwrap();
    assert_eq!((cb.lo, cb.hi), (b.lo, b.hi));
    assert!(cb.lo >= 0.25 && cb.hi <= 0.375 && cb.lo < cb.hi);
    // The undefined jigsaw value is counted and left out: n 2, mean of 4 and 7.
    let j = r.cell("jigsaw", 0.1).unwrap();
    assert_eq!((j.n, j.undefined), (2, 1));
    assert_close(j.mean, 5.5 / 16.0);
    assert_eq!(j.values[1].value, None);
    // sd 3/16/√2, so the standard error is 1.5/16.
    assert_close(Some(j.ci_t.unwrap().hi), 5.5 / 16.0 + T1 * 1.5 / 16.0);
    // The unpaired rotation row counts in its cell.
    let rot = r.cell("rotation", 1.0).unwrap();
    assert_eq!(rot.n, 4);
    assert_close(rot.mean, 12.0 / 16.0);

    // 2. Paired differences. rotation at 10 %: 2, 3, 3 sixteenths; sd sqrt(1/3)/16, so the
    // standard error is 1/48; all positive, so p = 2/8.
    let d = r.delta("rotation", 0.1).unwrap();
    assert_eq!((d.delta.n, d.family.as_str()), (3, "pretext"));
    assert_close(d.delta.mean, 8.0 / 48.0);
    let ci = d.delta.ci.unwrap();
    assert_close(Some(ci.lo), 8.0 / 48.0 - T2 / 48.0);
    assert_close(Some(ci.hi), 8.0 / 48.0 + T2 / 48.0);
    assert_eq!(d.delta.p, Some(0.25));
    // jigsaw at 10 %: seed 1 is undefined, so only seeds 0 and 2 pair: 0 and 1 sixteenth.
    let d = r.delta("jigsaw", 0.1).unwrap();
    assert_eq!((d.delta.n, d.delta.excluded.as_slice()), (2, &[1u64][..]));
    assert_close(d.delta.mean, 1.0 / 32.0);
    assert_close(Some(d.delta.ci.unwrap().hi), 1.0 / 32.0 + T1 / 32.0);
    assert_eq!(d.delta.p, Some(1.0));
    // Holm across the pretext tasks at 10 %: 0.25 and 1 become 0.5 and 1.
    assert_eq!(r.delta("rotation", 0.1).unwrap().p_holm, Some(0.5));
    assert_eq!(r.delta("jigsaw", 0.1).unwrap().p_holm, Some(1.0));
    // baseline_long is summarised like a task but in a family of its own: +1/16 each time,
    // a degenerate interval, p 2/8 unadjusted.
    let d = r.delta("baseline_long", 0.1).unwrap();
    assert_eq!(d.family, "other");
    assert_close(d.delta.mean, 1.0 / 16.0);
    assert_eq!(d.delta.ci.map(|b| (b.lo, b.hi)), Some((0.0625, 0.0625)));
    assert_eq!((d.delta.p, d.p_holm), (Some(0.25), Some(0.25)));
    // At 100 %, the rotation row of seed 3 has no baseline partner and is skipped.
    let d = r.delta("rotation", 1.0).unwrap();
    assert_eq!((d.delta.n, d.delta.excluded.as_slice()), (3, &[3u64][..]));
    assert_close(d.delta.mean, 1.0 / 48.0);
    assert_eq!(d.delta.p, Some(1.0));
    let d = r.delta("jigsaw", 1.0).unwrap();
    assert_close(d.delta.mean, 1.0 / 16.0);
    assert_eq!((d.delta.p, d.p_holm), (Some(0.25), Some(0.5)));
    assert_eq!(r.delta("rotation", 1.0).unwrap().p_holm, Some(1.0));
    let d = r.delta("baseline_long", 1.0).unwrap();
    assert_eq!((d.delta.mean, d.delta.p), (Some(0.0), Some(1.0)));
    assert!(r.delta("baseline", 0.1).is_none());

    // 3. Primary: per repetition the mean over rotation and jigsaw of (task − baseline) at
    // 10 %: seed 0 (2 + 0)/2, seed 1 left out (jigsaw undefined), seed 2 (3 + 1)/2.
    let p = &r.primary;
    assert_eq!(p.fraction, Some(0.1));
    assert_eq!(p.tasks, ["rotation", "jigsaw"]);
    assert_eq!(
        (p.contrast.n, p.contrast.excluded.as_slice()),
        (2, &[1u64][..])
    );
    let per_seed: Vec<(u64, Option<f64>)> = p
        .contrast
        .values
        .iter()
        .map(|v| (v.seed, v.value))
        .collect();
    assert_eq!(per_seed, [(0, Some(1.0 / 16.0)), (2, Some(2.0 / 16.0))]);
    assert_close(p.contrast.mean, 1.5 / 16.0);
    let ci = p.contrast.ci.unwrap();
    assert_close(Some(ci.lo), 1.5 / 16.0 - T1 / 32.0);
    assert_close(Some(ci.hi), 1.5 / 16.0 + T1 / 32.0);
    assert_eq!((p.contrast.p, p.contrast.p_floor), (Some(0.5), Some(0.5)));

    // 4. Secondary, Δ(10 %) − Δ(100 %): rotation 2, 2, 3 sixteenths (seed 3 left out), jigsaw
    // −1 and 0 (seed 1 left out); Holm 0.25 → 0.5 and 1.
    let s = r.scarcity("rotation").unwrap();
    assert_eq!((s.smallest, s.largest), (0.1, 1.0));
    assert_eq!(
        (s.contrast.n, s.contrast.excluded.as_slice()),
        (3, &[3u64][..])
    );
    assert_close(s.contrast.mean, 7.0 / 48.0);
    assert_eq!((s.contrast.p, s.p_holm), (Some(0.25), Some(0.5)));
    let s = r.scarcity("jigsaw").unwrap();
    assert_eq!(
        (s.contrast.n, s.contrast.excluded.as_slice()),
        (2, &[1u64][..])
    );
    assert_close(s.contrast.mean, -1.0 / 32.0);
    assert_eq!((s.contrast.p, s.p_holm), (Some(1.0), Some(1.0)));
    // Arms other than the five tasks are left out of both contrasts.
    assert!(r.scarcity("baseline_long").is_none());
}

#[test]
fn reports_are_written_as_json_csv_and_markdown_and_are_bit_identical_on_reruns() {
    let dir = tempfile::tempdir().unwrap();
    let r = analyse(&rows(), &Analysis::new("dice_pancreas")).unwrap();
    let files = r.write(dir.path()).unwrap();
    assert_eq!(files, report_paths(dir.path()));
    assert!(files[0].ends_with("stats.json") && files[2].ends_with("stats.md"));
    let first: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
    let again = analyse(&rows(), &Analysis::new("dice_pancreas")).unwrap();
    again.write(dir.path()).unwrap();
    for (f, bytes) in files.iter().zip(&first) {
        assert_eq!(&std::fs::read(f).unwrap(), bytes, "{}", f.display());
    }
    // A stem gets the extensions appended.
    let stem = dir.path().join("sub/stats_v2.dice");
    let named = r.write(&stem).unwrap();
    assert!(named[1].ends_with("stats_v2.dice.csv"), "{:?}", named[1]);

    // JSON: everything, undefined values as null.
    let json: serde_json::Value = serde_json::from_slice(&first[0]).unwrap();
    assert_eq!(json["metric"], "dice_pancreas");
    assert_eq!(json["resamples"], 10_000);
    assert_eq!(json["primary"]["p"], 0.5);
    assert_eq!(json["primary"]["excluded"], serde_json::json!([1]));
    let jigsaw = json["cells"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["task"] == "jigsaw" && c["fraction"] == 0.1)
        .unwrap();
    assert_eq!(jigsaw["undefined"], 1);
    assert_eq!(jigsaw["values"][1]["value"], serde_json::Value::Null);

    // CSV: one row per arm × fraction, the numbers at full precision.
    let csv = String::from_utf8(first[1].clone()).unwrap();
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let col = |n: &str| header.iter().position(|h| *h == n).unwrap();
    let body: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(body.len(), 8);
    let rot = body
        .iter()
        .find(|c| c[col("task")] == "rotation" && c[col("fraction")] == "0.1")
        .unwrap();
    assert_eq!(rot[col("n")], "3");
    assert_eq!(rot[col("n_pairs")], "3");
    let delta: f64 = rot[col("delta")].parse().unwrap();
    assert_close(Some(delta), 8.0 / 48.0);
    assert_eq!((rot[col("p")], rot[col("p_holm")]), ("0.25", "0.5"));
    let base = body.iter().find(|c| c[col("task")] == "baseline").unwrap();
    assert_eq!((base[col("delta")], base[col("p")]), ("", ""));
    let jig = body
        .iter()
        .find(|c| c[col("task")] == "jigsaw" && c[col("fraction")] == "0.1")
        .unwrap();
    assert_eq!((jig[col("n")], jig[col("undefined")]), ("2", "1"));

    // Markdown: the primary contrast first, then the cells, the differences, the secondary.
    let md = String::from_utf8(first[2].clone()).unwrap();
    let at = |s: &str| md.find(s).unwrap_or_else(|| panic!("{s} not in\n{md}"));
    assert!(at("## Primary contrast") < at("## Mean and 95 % CI"));
    assert!(at("## Mean and 95 % CI") < at("## Difference from `baseline`"));
    assert!(at("## Difference from `baseline`") < at("## Secondary"));
    at("| pretext tasks − baseline at 10 % | 2 | +0.094 |");
    at("| jigsaw | 10 % | 2 | 1 | 0.344 |");
    at("| rotation | 10 % | 3 | +0.167 | [+0.077, +0.256] | 0.250 | 0.500 |");
    at("| rotation | 3 | +0.146 |");
    at("cannot give a p below 0.500");
    at("jigsaw 10 % (seed 1)");
    at("rotation 100 % (seed 3)");
}

#[test]
fn bad_input_is_an_error_naming_the_problem() {
    let err = |rows: &[ResultRow], a: Analysis| analyse(rows, &a).unwrap_err().to_string();
    let e = err(&rows(), Analysis::new("qwk"));
    assert!(e.contains("no result row has the metric `qwk`"), "{e}");
    let e = err(
        &rows(),
        Analysis {
            baseline: "random".into(),
            ..Analysis::new("dice_pancreas")
        },
    );
    assert!(e.contains("baseline arm `random`"), "{e}");
    let mut dup = rows();
    dup.push(row("rotation", 0.1, 0, Some(1.0)));
    let e = err(&dup, Analysis::new("dice_pancreas"));
    assert!(e.contains("two rows for rotation 10 % seed 0"), "{e}");
    let e = err(
        &rows(),
        Analysis {
            level: 1.0,
            ..Analysis::new("dice_pancreas")
        },
    );
    assert!(e.contains("level"), "{e}");
    let mut odd = rows();
    odd[0]
        .metrics
        .insert("dice_pancreas".into(), serde_json::json!([0.1, 0.2]));
    let e = err(&odd, Analysis::new("dice_pancreas"));
    assert!(e.contains("is not a number"), "{e}");
}

#[test]
fn stats_report_runs_from_scripts_with_typed_options() {
    let dir = tempfile::tempdir().unwrap();
    let rows_json = serde_json::to_string(&rows()).unwrap();
    let out = dir.path().join("fig3/stats");
    let code = format!(
        r#"let rows = parse_json({rows_json:?});
           stats_report(rows, #{{ metric: "dice_pancreas", out: {out:?}, resamples: 2000, seed: 5 }})"#,
        out = out.display().to_string()
    );
    let host = Host::new(HostConfig::default());
    let v = host.eval(&code, "<test>").unwrap_or_else(|e| panic!("{e}"));
    let m: serde_json::Value = rhai::serde::from_dynamic(&v).unwrap();
    assert_eq!(m["metric"], "dice_pancreas");
    assert_eq!(m["primary"]["n"], 2);
    assert_eq!(m["primary"]["p"], 0.5);
    assert_eq!(m["primary"]["excluded"], serde_json::json!([1]));
    assert_eq!(m["undefined"], 1);
    assert_eq!(m["repetitions"], 4);
    assert!(
        m["summary"]
            .as_str()
            .unwrap()
            .starts_with("pretext tasks − baseline at 10 %: mean Δ +0.094"),
        "{}",
        m["summary"]
    );
    let sec = m["secondary"].as_array().unwrap();
    assert_eq!(sec[0]["task"], "rotation");
    assert_eq!(sec[0]["p_holm"], 0.5);
    assert_eq!(m["files"].as_array().unwrap().len(), 3);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.with_extension("json")).unwrap())
            .unwrap();
    assert_eq!(
        (json["resamples"].clone(), json["seed"].clone()),
        (2000.into(), 5.into())
    );
    // Typed options: unknown keys and missing required ones are errors.
    for (opts, want) in [
        (
            r#"#{ metric: "dice_pancreas", out: "x", resample: 10 }"#,
            "resamples",
        ),
        (r#"#{ out: "x" }"#, "option `metric` is required"),
        (
            r#"#{ metric: "dice_pancreas" }"#,
            "option `out` is required",
        ),
        (
            r#"#{ metric: "dice_pancreas", out: "x", level: "high" }"#,
            "level",
        ),
    ] {
        let e = common::eval_err(&format!("stats_report([], {opts})"));
        assert!(e.contains(want), "{opts}: {e}");
    }
}

#[test]
fn the_main_job_writes_curves_differences_and_statistics_for_each_figure() {
    let dir = tempfile::tempdir().unwrap();
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/paper_figures.rhai");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_pretext"))
        .arg("run")
        .arg(&script)
        .args(["--set", "profile=test"])
        .current_dir(dir.path())
        .env("PRETEXT_DATA", dir.path().join("data"))
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{}\n{}",
        common::stdout(&o),
        common::stderr(&o)
    );
    assert!(
        common::stdout(&o)
            .contains("primary contrast (dice_pancreas): pretext tasks − baseline at 50 %")
    );
    let fig3 = dir.path().join("runs/test/fig3");
    let fig4 = dir.path().join("runs/test/fig4");
    let mut want = vec![];
    for stem in [
        "fig3",
        "fig3_dice_pancreas",
        "fig3_dice_tumour",
        "fig3_dice_foreground",
        "fig3_delta_dice_pancreas",
    ] {
        for ext in ["png", "svg", "data.csv"] {
            want.push(fig3.join(format!("{stem}.{ext}")));
        }
    }
    for stem in ["fig4", "fig4_delta_qwk"] {
        for ext in ["png", "svg", "data.csv"] {
            want.push(fig4.join(format!("{stem}.{ext}")));
        }
    }
    for d in [&fig3, &fig4] {
        // The pretext curves of every pretraining folder layout (per seed; per fold for
        // the grading sweep).
        for f in ["stats.json", "stats.csv", "stats.md", "pretext_curves.png"] {
            want.push(d.join(f));
        }
    }
    for f in &want {
        assert!(f.is_file(), "{}", f.display());
    }
    // The statistics are those of the primary metric of the rows in the results file.
    let rows = pretext::experiment::read_rows(&fig3.join("results.jsonl")).unwrap();
    let again = analyse(&rows, &Analysis::new("dice_pancreas")).unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fig3.join("stats.json")).unwrap()).unwrap();
    assert_eq!(json, serde_json::to_value(&again).unwrap());
    let d = again.delta("rotation", 1.0).unwrap();
    let value = |t: &str| {
        rows.iter()
            .find(|r| r.task == t && r.fraction == 1.0)
            .and_then(|r| r.metric("dice_pancreas"))
            .unwrap()
    };
    assert_close(d.delta.mean, value("rotation") - value("baseline"));
    let md = std::fs::read_to_string(fig4.join("stats.md")).unwrap();
    assert!(md.starts_with("# Statistics of `qwk`"), "{md}");
}

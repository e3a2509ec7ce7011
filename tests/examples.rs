//! Every bundled example runs to the end under its `test` profile (or small settings), and what
//! it writes is checked: the quickstart's numbers against a recomputation, the figures' rows
//! (cells, metrics, CSV), the pretraining demo's summary against its logs and checkpoints.

mod common;
use std::path::Path;
use std::process::Command;

use pretext::experiment::ResultsFile;
use pretext::nn::ParamStore;
use pretext::train::pretrain::read_log;

fn run_example(name: &str, args: &[&str], cwd: &Path) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name);
    let o = Command::new(env!("CARGO_BIN_EXE_pretext"))
        .arg("run")
        .arg(&script)
        .args(args)
        .current_dir(cwd)
        .env("PRETEXT_DATA", cwd.join("data"))
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{name}: {}\n{}",
        common::stdout(&o),
        common::stderr(&o)
    );
    common::stdout(&o)
}

#[test]
fn quickstart_runs() {
    let dir = tempfile::tempdir().unwrap();
    run_example("quickstart.rhai", &[], dir.path());
    let summary: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("runs/quickstart/summary.json")).unwrap(),
    )
    .unwrap();
    // A 32³ phantom: the foreground is the sphere of radius 32/3 around the centre (the
    // noise, 10 HU, never crosses the -500 HU threshold), at about 40 HU.
    let n = 32;
    let c = (n as f64 - 1.0) / 2.0;
    let mut sphere = 0usize;
    for x in 0..n {
        for y in 0..n {
            for z in 0..n {
                let d: f64 = [x, y, z].map(|k| (k as f64 - c).powi(2)).iter().sum();
                sphere += (d.sqrt() < n as f64 / 3.0) as usize;
            }
        }
    }
    assert_eq!(summary["shape"], serde_json::json!([32, 32, 32]));
    assert_eq!(
        summary["foreground_voxels"].as_f64().unwrap(),
        sphere as f64
    );
    let ml = sphere as f64 * (0.8f32 as f64).powi(2) * 2.5 / 1000.0;
    assert!((summary["foreground_ml"].as_f64().unwrap() - ml).abs() < 1e-9);
    assert!((summary["mean_inside_hu"].as_f64().unwrap() - 40.0).abs() < 1.0);
    let e = summary["round_trip_max_error"].as_f64().unwrap();
    assert!(e > 0.0 && e <= 0.5, "{e}");
}

/// The rows of a figure's sweep: one per (task, fraction) of the test profile (baseline and
/// rotation at 50 % and 100 %, seed 0), with `metrics` in range, and the CSV beside them.
fn check_rows(dir: &Path, metrics: &[(&str, f64, f64)]) {
    let rows = ResultsFile::open(dir.join("results.jsonl"))
        .unwrap()
        .rows()
        .to_vec();
    let mut cells: Vec<(String, String)> = rows
        .iter()
        .map(|r| (r.task.clone(), format!("{}", r.fraction)))
        .collect();
    cells.sort();
    let want: Vec<(String, String)> = [
        ("baseline", "0.5"),
        ("baseline", "1"),
        ("rotation", "0.5"),
        ("rotation", "1"),
    ]
    .map(|(t, f)| (t.to_string(), f.to_string()))
    .to_vec();
    assert_eq!(cells, want, "{}", dir.display());
    for r in &rows {
        for (m, lo, hi) in metrics {
            let v = r
                .metric(m)
                .unwrap_or_else(|| panic!("{}: {} has no {m}", dir.display(), r.key()));
            assert!((*lo..=*hi).contains(&v), "{}: {m} = {v}", r.key());
        }
        if r.task != "baseline" {
            let ckpt = r.extra["checkpoint"].as_str().unwrap();
            assert!(ckpt.ends_with("best.safetensors"), "{ckpt}");
        }
    }
    let csv = std::fs::read_to_string(dir.join("results.csv")).unwrap();
    assert_eq!(csv.lines().count(), rows.len() + 1);
    for (m, _, _) in metrics {
        assert!(
            csv.lines().next().unwrap().split(',').any(|h| h == *m),
            "{m}"
        );
    }
}

#[test]
fn both_figures_run_under_the_test_profile() {
    let dir = tempfile::tempdir().unwrap();
    run_example("paper_figures.rhai", &["--set", "profile=test"], dir.path());
    for f in [
        "runs/test/fig3/fig3.png",
        "runs/test/fig3/fig3.svg",
        "runs/test/fig4/fig4.png",
        "runs/test/fig4/results.csv",
    ] {
        assert!(dir.path().join(f).is_file(), "{f}");
    }
    let dice = [
        ("dice_mean", 0.0, 1.0),
        ("dice_background", 0.0, 1.0),
        ("dice_pancreas", 0.0, 1.0),
        ("dice_tumour", 0.0, 1.0),
    ];
    check_rows(&dir.path().join("runs/test/fig3"), &dice);
    check_rows(
        &dir.path().join("runs/test/fig4"),
        &[("qwk", -1.0, 1.0), ("accuracy", 0.0, 1.0)],
    );
    check_report(&dir.path().join("runs/test/fig3"));
    check_report(&dir.path().join("runs/test/fig4"));
}

/// The run's report.html, parsed: its sections, every figure of the folder shown from a file
/// that exists, the statistics table, one timing row per result row (arm, fraction, seed as
/// in the results), and no failure.
fn check_report(dir: &Path) {
    let html = std::fs::read_to_string(dir.join("report.html")).unwrap();
    let dom = tl::parse(&html, tl::ParserOptions::default()).unwrap();
    let parser = dom.parser();
    let texts = |selector: &str| -> Vec<String> {
        dom.query_selector(selector)
            .unwrap()
            .map(|h| h.get(parser).unwrap().inner_text(parser).trim().to_string())
            .collect()
    };
    assert_eq!(
        texts("h2"),
        [
            "Configuration",
            "Figures",
            "Statistics",
            "Timings",
            "Failures and unfinished work"
        ],
        "{}",
        dir.display()
    );
    let srcs: Vec<String> = dom
        .query_selector("img")
        .unwrap()
        .map(|h| {
            let tag = h.get(parser).unwrap().as_tag().unwrap();
            tag.attributes()
                .get("src")
                .flatten()
                .unwrap()
                .as_utf8_str()
                .into_owned()
        })
        .collect();
    let mut pngs: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".png"))
        .collect();
    pngs.sort();
    assert!(!pngs.is_empty());
    assert_eq!(srcs, pngs, "every figure, each from a file of the folder");
    // The tables: statistics (from stats.md), pretraining, per arm, every cell.
    let tables: Vec<Vec<Vec<String>>> = dom
        .query_selector("table")
        .unwrap()
        .map(|t| {
            let table = t.get(parser).unwrap();
            let inner = table.inner_html(parser);
            let sub = tl::parse(&inner, tl::ParserOptions::default()).unwrap();
            let p = sub.parser();
            sub.query_selector("tr")
                .unwrap()
                .map(|tr| {
                    let row = tr.get(p).unwrap().inner_html(p);
                    let cells = tl::parse(&row, tl::ParserOptions::default()).unwrap();
                    let q = cells.parser();
                    cells
                        .query_selector("td, th")
                        .unwrap()
                        .map(|c| c.get(q).unwrap().inner_text(q).trim().to_string())
                        .collect()
                })
                .collect()
        })
        .collect();
    let every_cell = tables
        .iter()
        .find(|t| t[0].contains(&"training items".to_string()))
        .expect("a table of every cell");
    let mut rows = ResultsFile::open(dir.join("results.jsonl"))
        .unwrap()
        .rows()
        .to_vec();
    pretext::experiment::results::sort_rows(&mut rows);
    assert_eq!(
        every_cell.len(),
        rows.len() + 1,
        "a header and one row per cell"
    );
    for (cells, r) in every_cell[1..].iter().zip(&rows) {
        assert_eq!(cells[0], r.task);
        assert_eq!(cells[1].parse::<f64>().unwrap(), r.fraction);
        assert_eq!(cells[2], r.seed.to_string());
        assert_eq!(cells[3], r.n_train.to_string());
    }
    let stats = html
        .split("<h2>Statistics</h2>")
        .nth(1)
        .unwrap()
        .split("<h2>")
        .next()
        .unwrap();
    assert!(
        stats.contains("<table>") && stats.contains("baseline"),
        "{stats}"
    );
    // Failures: exactly the rows with an undefined metric (the test profile's tiny runs may
    // give an undefined kappa); every pretraining finished, no cell left a state behind.
    let failures = html.split("Failures and unfinished work").nth(1).unwrap();
    let undefined: Vec<&pretext::experiment::ResultRow> = rows
        .iter()
        .filter(|r| {
            r.metrics
                .values()
                .any(|v| v.as_f64().is_none_or(|x| !x.is_finite()) && !v.is_array())
        })
        .collect();
    if undefined.is_empty() {
        assert!(
            failures.contains("None: every result is defined"),
            "{failures}"
        );
    }
    for r in undefined {
        assert!(
            failures.contains(&format!(
                "{} {} seed {}: undefined",
                r.task, r.fraction, r.seed
            )),
            "{failures}"
        );
    }
    assert!(!failures.contains("stopped"), "{failures}");
}

#[test]
fn each_figure_example_runs_on_its_own() {
    let dir = tempfile::tempdir().unwrap();
    run_example("fig3_pancreas.rhai", &["--set", "profile=test"], dir.path());
    run_example("fig4_fundus.rhai", &["--set", "profile=test"], dir.path());
    assert!(dir.path().join("runs/test/fig4/fig4.svg").is_file());
    check_rows(
        &dir.path().join("runs/test/fig3"),
        &[("dice_mean", 0.0, 1.0)],
    );
    check_rows(
        &dir.path().join("runs/test/fig4"),
        &[("qwk", -1.0, 1.0), ("accuracy", 0.0, 1.0)],
    );
}

#[test]
fn the_pretraining_demo_runs_every_task() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_example("pretrain_demo.rhai", &["--set", "profile=test"], dir.path());
    for task in ["rotation", "jigsaw", "rpl", "exemplar", "cpc"] {
        assert!(out.contains(&format!("{task}: accuracy by epoch")), "{out}");
        // pre::summary: one line per task with the kept checkpoint.
        assert!(
            out.contains(&format!("runs/pretrain_demo/{task}/best.safetensors")),
            "{out}"
        );
    }
    assert!(dir.path().join("runs/pretrain_demo/curves.png").is_file());
    // The summary agrees with each task's log and checkpoints: first and last training
    // accuracy, and the best epoch is the one of the lowest validation loss.
    let demo = dir.path().join("runs/pretrain_demo");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(demo.join("summary.json")).unwrap()).unwrap();
    for task in ["rotation", "jigsaw", "rpl", "exemplar", "cpc"] {
        let log = read_log(&demo.join(task).join("log.jsonl")).unwrap();
        let s = &summary[task];
        let num = |k: &str| {
            s[k].as_f64()
                .unwrap_or_else(|| panic!("{task}: {k} in {s}"))
        };
        assert_eq!(num("first"), log[0].accuracy, "{task}");
        assert_eq!(num("last"), log.last().unwrap().accuracy, "{task}");
        let best = log
            .iter()
            .min_by(|a, b| a.val_loss.total_cmp(&b.val_loss))
            .unwrap();
        assert_eq!(num("best_epoch") as usize, best.epoch, "{task}");
        let ckpt = dir.path().join(s["checkpoint"].as_str().unwrap());
        assert_eq!(
            ParamStore::manifest(&ckpt).unwrap()["epoch"],
            best.epoch,
            "{task}"
        );
        let printed: Vec<f64> = log
            .iter()
            .map(|e| (e.accuracy * 100.0).round() / 100.0)
            .collect();
        assert!(
            out.contains(&format!("{task}: accuracy by epoch {printed:?}")),
            "{task}: {printed:?} in {out}"
        );
    }
}

#[test]
fn the_own_data_example_pretrains_finetunes_and_writes_predictions_in_each_cases_geometry() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_example(
        "own_data.rhai",
        &[
            "--set",
            "size=16",
            "--set",
            "filters=2",
            "--set",
            "epochs=2",
            "--set",
            "finetune_epochs=2",
        ],
        dir.path(),
    );
    assert!(
        out.contains("rotation: loss") && out.contains("Dice on the original grid"),
        "{out}"
    );
    let runs = dir.path().join("runs/own_data");
    let splits: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(runs.join("splits.json")).unwrap()).unwrap();
    let test = splits["test"].as_array().unwrap();
    assert!(!test.is_empty());
    for id in test {
        let id = id.as_str().unwrap();
        let pred = pretext::Volume::load(runs.join(format!("predictions/{id}.nii.gz"))).unwrap();
        let src =
            pretext::Volume::load(runs.join(format!("demo_data/imagesTr/{id}.nii.gz"))).unwrap();
        assert_eq!(pred.shape(), src.shape(), "{id}");
        assert_eq!(pred.affine(), src.affine(), "{id}");
        assert_eq!(pred.dtype(), pretext::VoxelType::U8);
    }
    let new: Vec<_> = std::fs::read_dir(runs.join("new")).unwrap().collect();
    assert_eq!(new.len(), 3, "a label map per new case");
    assert!(runs.join("summary.json").is_file() && runs.join("segmentation.safetensors").is_file());
}

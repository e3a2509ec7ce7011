//! Sweeps through the CLI: a tiny sweep (2 tasks × 2 fractions × 1 seed) writes its rows and
//! figure; a sweep killed midway completes on a rerun without duplicate rows; shards merged
//! with `pretext merge` equal the unsharded results.

mod common;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pretext::experiment::{ResultsFile, merge};

fn pretext_in(data: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_pretext"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("PRETEXT_DATA", data)
        .output()
        .unwrap()
}

fn fig3(out: &Path, extra: &[&str]) -> Vec<String> {
    let mut v = vec![
        "run".to_string(),
        "examples/fig3_pancreas.rhai".into(),
        "--set".into(),
        "profile=test".into(),
        "--set".into(),
        format!("out={}", out.display()),
    ];
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn keys(path: &Path) -> Vec<String> {
    let mut k: Vec<String> = ResultsFile::open(path)
        .unwrap()
        .rows()
        .iter()
        .map(|r| r.key())
        .collect();
    k.sort();
    k
}

#[test]
fn a_tiny_sweep_writes_rows_a_csv_and_the_figure() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("fig3");
    let args = fig3(&out, &[]);
    let o = pretext_in(
        dir.path(),
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert!(o.status.success(), "{}", common::stderr(&o));
    let rows = ResultsFile::open(out.join("results.jsonl"))
        .unwrap()
        .rows()
        .to_vec();
    assert_eq!(rows.len(), 4);
    // The training cases of the split this run saved; a fraction trains on its nested share.
    let splits: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("splits/seed0/splits.json")).unwrap(),
    )
    .unwrap();
    let n_train = splits["train"].as_array().unwrap().len();
    let n_test = splits["test"].as_array().unwrap().len();
    assert_eq!(n_train + n_test, 6, "the test profile's 6 labelled cases");
    for task in ["baseline", "rotation"] {
        for f in [0.5, 1.0] {
            let r = rows
                .iter()
                .find(|r| r.task == task && r.fraction == f)
                .unwrap_or_else(|| panic!("{task} {f}"));
            assert_eq!(
                r.n_train,
                pretext::data::split::fraction_size(n_train, f).unwrap(),
                "{task} {f}"
            );
            // dice_mean is the mean of the three classes' Dice (background included).
            let d = r.metric("dice_mean").unwrap();
            let classes: Vec<f64> = ["dice_background", "dice_pancreas", "dice_tumour"]
                .iter()
                .map(|k| r.metric(k).unwrap_or_else(|| panic!("{task} {f}: no {k}")))
                .collect();
            assert!(
                classes.iter().all(|c| (0.0..=1.0).contains(c)),
                "{classes:?}"
            );
            assert!(
                (d - classes.iter().sum::<f64>() / 3.0).abs() < 1e-9,
                "{task} {f}: dice_mean {d} vs {classes:?}"
            );
            assert!(r.metric("soft_dice_mean").is_some());
        }
    }
    // The CSV holds the same numbers as the JSONL rows.
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    for line in lines {
        let cells: Vec<&str> = line.split(',').collect();
        let fraction: f64 = cells[col("fraction")].parse().unwrap();
        let r = rows
            .iter()
            .find(|r| r.task == cells[col("task")] && r.fraction == fraction)
            .unwrap();
        for m in ["dice_mean", "dice_pancreas", "dice_tumour"] {
            let v: f64 = cells[col(m)].parse().unwrap();
            assert!((v - r.metric(m).unwrap()).abs() < 1e-9, "{line}: {m}");
        }
        assert_eq!(cells[col("n_train")], r.n_train.to_string());
    }
    // The figure: both tasks in the SVG's legend (the plotted values are checked in
    // tests/experiment_results.rs).
    let svg = std::fs::read_to_string(out.join("fig3.svg")).unwrap();
    for task in ["baseline", "rotation"] {
        assert!(svg.lines().any(|l| l.trim() == task), "{task} not in the legend");
    }
    assert!(out.join("splits/seed0/splits.json").is_file());
    assert!(
        out.join("pretrain/rotation-seed0/best.safetensors")
            .is_file()
    );
}

#[test]
fn a_sweep_killed_midway_completes_on_rerun_without_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("fig3");
    let args = fig3(
        &out,
        &[
            "--set",
            "finetune.epochs=25",
            "--set",
            "finetune.baseline_epochs=25",
        ],
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let results = out.join("results.jsonl");
    let mut child = Command::new(env!("CARGO_BIN_EXE_pretext"))
        .args(&args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("PRETEXT_DATA", dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while std::fs::read_to_string(&results).map_or(0, |t| t.lines().count()) < 1 {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no row after 2 minutes"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the sweep ended before it could be killed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let before = keys(&results);
    assert!(
        !before.is_empty() && before.len() < 4,
        "killed with {} rows",
        before.len()
    );
    let o = pretext_in(dir.path(), &args);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let said = format!(
        "4 cells in this shard, {} done, {} to run",
        before.len(),
        4 - before.len()
    );
    assert!(common::stdout(&o).contains(&said), "{}", common::stdout(&o));
    let after = keys(&results);
    assert_eq!(after.len(), 4, "{after:?}");
    let mut dedup = after.clone();
    dedup.dedup();
    assert_eq!(dedup, after, "no duplicate rows");
    assert!(before.iter().all(|k| after.contains(k)));
}

#[test]
fn merged_shards_equal_the_unsharded_sweep() {
    let dir = tempfile::tempdir().unwrap();
    let whole = dir.path().join("whole");
    let sharded = dir.path().join("sharded");
    let run = |out: &Path, extra: &[&str]| {
        let a = fig3(out, extra);
        let o = pretext_in(
            dir.path(),
            &a.iter().map(String::as_str).collect::<Vec<_>>(),
        );
        assert!(o.status.success(), "{}", common::stderr(&o));
    };
    run(&whole, &[]);
    run(&sharded, &["--shard", "0/2"]);
    run(&sharded, &["--shard", "1/2"]);
    let s0 = sharded.join("results.shard-0-of-2.jsonl");
    let s1 = sharded.join("results.shard-1-of-2.jsonl");
    assert_eq!(keys(&s0).len() + keys(&s1).len(), 4);
    let merged = sharded.join("results.jsonl");
    let o = pretext_in(
        dir.path(),
        &[
            "merge",
            s0.to_str().unwrap(),
            s1.to_str().unwrap(),
            "-o",
            merged.to_str().unwrap(),
            "--csv",
            sharded.join("r.csv").to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", common::stderr(&o));
    let a = merge(&[merged]).unwrap();
    let b = merge(&[whole.join("results.jsonl")]).unwrap();
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.key(), y.key());
        assert_eq!(x.metrics, y.metrics, "{}", x.key());
    }
    let o = pretext_in(
        dir.path(),
        &["run", "examples/fig3_pancreas.rhai", "--shard", "2/2"],
    );
    assert_eq!(o.status.code(), Some(2), "a bad shard is a usage error");
    assert!(common::stderr(&o).contains("shard"));
}

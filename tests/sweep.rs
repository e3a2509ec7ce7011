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
        assert!(
            svg.lines().any(|l| l.trim() == task),
            "{task} not in the legend"
        );
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
    // `run --jobs 2` runs the two shards at once, gathers them and draws the figure: the
    // same rows, bit for bit, as the single run (which used the default thread count).
    let jobs = dir.path().join("jobs");
    run(&jobs, &["--jobs", "2"]);
    let c = merge(&[jobs.join("results.jsonl")]).unwrap();
    assert_eq!(c.len(), b.len());
    for (x, y) in c.iter().zip(&b) {
        assert_eq!((x.key(), &x.metrics), (y.key(), &y.metrics));
    }
    assert!(jobs.join("fig3.png").is_file());
}

fn spawn_in(data: &Path, args: &[String]) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_pretext"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("PRETEXT_DATA", data)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits until `path` has at least one line (and `child` still runs).
fn wait_for_a_line(path: &Path, child: &mut std::process::Child) {
    let start = Instant::now();
    while std::fs::read_to_string(path).map_or(0, |t| t.lines().count()) < 1 {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "nothing in {}",
            path.display()
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the first run ended too early"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn two_identical_sweeps_at_once_one_refuses_and_a_rerun_completes() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("fig3");
    let args = fig3(
        &out,
        &[
            "--set",
            "finetune.epochs=200",
            "--set",
            "finetune.baseline_epochs=200",
        ],
    );
    let mut first = spawn_in(dir.path(), &args);
    wait_for_a_line(&out.join("results.jsonl"), &mut first);
    let second = pretext_in(
        dir.path(),
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let first = first.wait_with_output().unwrap();
    assert!(first.status.success(), "{}", common::stderr(&first));
    let e = common::stderr(&second);
    assert_eq!(second.status.code(), Some(1), "the second run refuses: {e}");
    assert!(
        e.contains("being written by pid") && e.contains("since") && e.contains("host"),
        "{e}"
    );
    let k = keys(&out.join("results.jsonl"));
    assert_eq!(k.len(), 4);
    let o = pretext_in(
        dir.path(),
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert!(o.status.success(), "{}", common::stderr(&o));
    assert!(common::stdout(&o).contains("4 cells in this shard, 4 done, 0 to run"));
    let mut after = keys(&out.join("results.jsonl"));
    assert_eq!(after, k, "no row lost or added");
    after.dedup();
    assert_eq!(after.len(), 4, "no duplicates");
    let log = pretext::train::pretrain::read_log(&out.join("pretrain/rotation-seed0/log.jsonl"));
    assert_eq!(log.unwrap().len(), 2, "one pretraining log, intact");
}

#[test]
fn three_shards_at_once_into_one_folder_merge_to_every_cell_once() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("fig3");
    let shards: Vec<_> = (0..3)
        .map(|i| {
            spawn_in(
                dir.path(),
                &fig3(
                    &out,
                    &["--set", "seeds=[0,1,2]", "--shard", &format!("{i}/3")],
                ),
            )
        })
        .collect();
    for s in shards {
        let o = s.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", common::stderr(&o));
    }
    let files: Vec<String> = (0..3)
        .map(|i| {
            out.join(format!("results.shard-{i}-of-3.jsonl"))
                .display()
                .to_string()
        })
        .collect();
    let merged = out.join("results.jsonl");
    let mut args: Vec<&str> = vec!["merge"];
    args.extend(files.iter().map(String::as_str));
    args.extend(["-o", merged.to_str().unwrap()]);
    let o = pretext_in(dir.path(), &args);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let mut k = keys(&merged);
    assert_eq!(k.len(), 12, "{k:?}");
    k.dedup();
    assert_eq!(k.len(), 12);
    for t in ["baseline", "rotation"] {
        for s in 0..3 {
            for f in ["0.500000", "1.000000"] {
                assert!(
                    k.iter().any(|c| c.starts_with(&format!("{t}|{f}|{s}|"))),
                    "{t} {f} {s}"
                );
            }
        }
    }
}

#[test]
fn a_second_pretraining_into_the_same_folder_waits_and_reuses_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("pre/rotation-seed0");
    let code = format!(
        "let data = pancreas(#{{ root: \"\", shape: [16, 16, 16], synthetic: #{{ labelled: 6, \
         unlabelled: 2, shape: [24, 24, 16], seed: 7 }} }}); \
         let r = pretrain(\"rotation\", data, data.labelled + data.unlabelled, #{{ epochs: 400, \
         steps_per_epoch: 2, batch: 2, lr: 1e-3, val_fraction: 0.2, head: [16], \
         unet: #{{ filters: 2, depth: 2 }}, out: \"{}\", config_hash: \"h1\" }}); \
         print(`cached=${{r.cached}} best=${{r.best}}`);",
        run.display()
    );
    let o = pretext_in(
        dir.path(),
        &[
            "eval",
            "pancreas(#{ root: \"\", shape: [16, 16, 16], synthetic: #{ labelled: 6, unlabelled: 2, shape: [24, 24, 16], seed: 7 } }).len()",
        ],
    );
    assert!(o.status.success(), "{}", common::stderr(&o));
    let args = vec!["eval".to_string(), code];
    let mut first = spawn_in(dir.path(), &args);
    wait_for_a_line(&run.join("log.jsonl"), &mut first);
    let second = pretext_in(dir.path(), &["eval", &args[1]]);
    let first = first.wait_with_output().unwrap();
    assert!(first.status.success(), "{}", common::stderr(&first));
    assert!(second.status.success(), "{}", common::stderr(&second));
    assert!(common::stdout(&first).contains("cached=false"));
    assert!(
        common::stdout(&second).contains("cached=true"),
        "the second reuses the first's checkpoint: {}",
        common::stdout(&second)
    );
    assert!(
        common::stderr(&second).contains("waiting"),
        "{}",
        common::stderr(&second)
    );
    let log = pretext::train::pretrain::read_log(&run.join("log.jsonl")).unwrap();
    assert_eq!(log.len(), 400);
    assert!(log.iter().enumerate().all(|(i, e)| e.epoch == i + 1));
}

#[test]
fn a_lock_left_by_a_killed_run_is_taken_over() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("fig3");
    std::fs::create_dir_all(&out).unwrap();
    let mut c = Command::new("true").spawn().unwrap();
    let dead = c.id();
    c.wait().unwrap();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let record = serde_json::json!({
        "pid": dead, "host": host.trim(), "since": "2026-01-01T00:00:00Z", "command": "pretext run (killed)"
    });
    std::fs::write(out.join("results.jsonl.lock"), record.to_string()).unwrap();
    let o = pretext_in(
        dir.path(),
        &fig3(&out, &[])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert!(o.status.success(), "{}", common::stderr(&o));
    let e = common::stderr(&o);
    assert!(
        e.contains("stale lock") && e.contains(&format!("pid {dead}")),
        "{e}"
    );
    assert_eq!(keys(&out.join("results.jsonl")).len(), 4);
    assert!(
        !out.join("results.jsonl.lock").exists(),
        "released at the end"
    );
}

#[test]
fn a_finetuning_stage_without_its_pretraining_names_the_stage_that_writes_it_and_two_stages_equal_one_run()
 {
    let dir = tempfile::tempdir().unwrap();
    let staged = dir.path().join("staged");
    let run = |out: &Path, extra: &[&str]| {
        let args = fig3(out, extra);
        pretext_in(
            dir.path(),
            &args.iter().map(String::as_str).collect::<Vec<_>>(),
        )
    };
    let o = run(&staged, &["--set", "stage=\"finetune\""]);
    assert_eq!(o.status.code(), Some(1));
    let e = common::stderr(&o);
    assert!(
        e.contains("best.safetensors is missing")
            && e.contains("--set stage=pretrain")
            && e.contains("rotation"),
        "{e}"
    );
    let o = run(&staged, &["--set", "stage=\"pretrain\""]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    assert!(
        staged
            .join("pretrain/rotation-seed0/best.safetensors")
            .is_file()
    );
    // The refused finetuning stage checked every checkpoint before its first cell: it ran
    // none, not even the baseline's.
    let ran = ResultsFile::open(staged.join("results.jsonl"))
        .unwrap()
        .rows()
        .len();
    assert_eq!(ran, 0);
    let o = run(&staged, &["--set", "stage=\"finetune\""]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let whole = dir.path().join("whole");
    let o = run(&whole, &[]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let rows = |p: &Path| {
        let mut v: Vec<String> = ResultsFile::open(p.join("results.jsonl"))
            .unwrap()
            .rows()
            .iter()
            .map(|r| format!("{} {:?}", r.key(), r.metric("dice_mean")))
            .collect();
        v.sort();
        v
    };
    assert_eq!(rows(&staged).len(), 4);
    assert_eq!(rows(&staged), rows(&whole));
}

#[test]
fn calibration_runs_only_baselines_on_a_validation_split_of_the_training_cases() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("fig3");
    let run = |extra: &[&str]| {
        let args = fig3(&out, extra);
        pretext_in(
            dir.path(),
            &args.iter().map(String::as_str).collect::<Vec<_>>(),
        )
    };
    let o = run(&["--set", "calibrate=true"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        common::stderr(&o).contains("baseline arms only"),
        "{}",
        common::stderr(&o)
    );
    let o = run(&["--set", "calibrate=true", "--set", "tasks=[\"baseline\"]"]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let cal = dir.path().join("fig3-calibration");
    assert!(!out.exists(), "the protocol's folder is not touched");
    let splits: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(cal.join("splits/seed0/splits.json")).unwrap(),
    )
    .unwrap();
    let o = run(&[]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let protocol: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("splits/seed0/splits.json")).unwrap(),
    )
    .unwrap();
    let ids = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap().to_string())
            .collect()
    };
    // Validation and training cases are the protocol's training cases; no test case is used.
    let mut used = ids(&splits["train"]);
    used.extend(ids(&splits["test"]));
    used.sort();
    let mut train = ids(&protocol["train"]);
    train.sort();
    assert_eq!(used, train);
    assert!(!splits["test"].as_array().unwrap().is_empty());
}

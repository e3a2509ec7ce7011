//! Nothing lost, nothing mixed: results files under concurrent readers, NaN in logs and rows,
//! configurations that must not mix, training that goes non-finite, datasets that must not be
//! replaced or escaped from, preparation that checks what `verify` checks, and requests that
//! used to panic or abort (issue 15). Concurrent sweeps are in tests/sweep.rs.

mod common;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{DType, Device, Tensor};
use pretext::data::Grid;
use pretext::data::synthetic::pancreas::{self, PhantomConfig};
use pretext::data::{Decathlon, FundusPreprocess, FundusSet, PancreasPreprocess, PancreasSet};
use pretext::data::{Volume, VoxelType};
use pretext::experiment::results::write_csv;
use pretext::experiment::{ResultRow, ResultsFile, Shard, cells, merge};
use pretext::nn::loss::{DiceVariant, cross_entropy, one_hot};
use pretext::nn::{MlpHeadConfig, UNet3dConfig};
use pretext::pretext::model::BackboneConfig;
use pretext::pretext::{Task, TaskConfig};
use pretext::train::finetune::{EncoderInit, Schedule, SegmentationConfig, finetune_segmentation};
use pretext::train::optim::AdamConfig;
use pretext::train::pretrain::{PretrainConfig, Pretrainer, RunFiles, read_log};

fn pretext_env(args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pretext"));
    c.args(args).current_dir(env!("CARGO_MANIFEST_DIR"));
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn row(task: &str, fraction: f64, seed: u64, hash: &str) -> ResultRow {
    ResultRow {
        task: task.into(),
        fraction,
        n_train: 4,
        seed,
        metrics: BTreeMap::from([("dice_mean".to_string(), serde_json::json!(0.5))]),
        timings: BTreeMap::from([("finetune".to_string(), 1.5)]),
        config_hash: hash.into(),
        version: "test".into(),
        extra: BTreeMap::new(),
    }
}

fn line(r: &ResultRow) -> String {
    serde_json::to_string(r).unwrap() + "\n"
}

/// A pid of this host that is certainly not running any more.
fn dead_pid() -> u32 {
    let mut c = Command::new("true").spawn().unwrap();
    let pid = c.id();
    c.wait().unwrap();
    pid
}

/// This host's name as temporary and lock names record it.
fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string()
}

// ---- 1. Readers never write -------------------------------------------------------------

#[test]
fn merging_an_input_with_a_partial_last_line_leaves_the_input_as_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("results.shard-0-of-2.jsonl");
    let text = format!(
        "{}{}{{\"task\":\"rotation\",\"fra",
        line(&row("baseline", 0.5, 0, "h")),
        line(&row("baseline", 1.0, 0, "h"))
    );
    std::fs::write(&input, &text).unwrap();
    let out = dir.path().join("merged.jsonl");
    let o = common::pretext(
        &[
            "merge",
            input.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ],
        None,
    );
    assert!(o.status.success(), "{}", common::stderr(&o));
    assert_eq!(
        std::fs::read_to_string(&input).unwrap(),
        text,
        "the input is unchanged"
    );
    assert_eq!(std::fs::read_to_string(&out).unwrap().lines().count(), 2);
}

#[test]
fn readers_during_slow_appends_lose_no_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("results.jsonl");
    std::fs::write(&path, "").unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let (path, done) = (path.clone(), done.clone());
        std::thread::spawn(move || {
            // A writer whose lines reach the file in two parts (as a large write may).
            for i in 0..60 {
                let l = line(&row("rotation", 0.01 * (i + 1) as f64, 0, "h"));
                let (a, b) = l.split_at(l.len() / 2);
                let mut f = std::fs::OpenOptions::new()
                    .append(true)
                    .open(&path)
                    .unwrap();
                f.write_all(a.as_bytes()).unwrap();
                f.flush().unwrap();
                std::thread::sleep(std::time::Duration::from_millis(3));
                f.write_all(b.as_bytes()).unwrap();
            }
            done.store(true, Ordering::SeqCst);
        })
    };
    let mut reads = 0;
    while !done.load(Ordering::SeqCst) {
        // Readers: the library's merge, as `pretext merge` and figures use it.
        let _ = merge(std::slice::from_ref(&path));
        reads += 1;
    }
    writer.join().unwrap();
    let rows = merge(std::slice::from_ref(&path)).expect("the file is intact");
    assert_eq!(rows.len(), 60, "rows lost to {reads} concurrent reads");
}

// ---- 3. NaN in logs and rows -----------------------------------------------------------------

#[test]
fn a_row_with_a_nan_timing_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.jsonl");
    {
        let mut f = ResultsFile::open(&path).unwrap();
        let mut r = row("baseline", 0.5, 0, "h");
        r.timings.insert("eval".into(), f64::NAN);
        r.metrics.insert("qwk".into(), serde_json::json!(f64::NAN));
        f.append(r).unwrap();
    }
    let f = ResultsFile::open(&path).expect("a row with NaN is readable");
    assert_eq!(f.rows().len(), 1);
    assert!(f.rows()[0].timings["eval"].is_nan());
    assert_eq!(f.rows()[0].timings["finetune"], 1.5);
    assert!(f.rows()[0].metric("qwk").is_none());
}

fn unet() -> BackboneConfig {
    BackboneConfig::Unet(UNet3dConfig {
        filters: 2,
        depth: 2,
        dropout: 0.0,
        ..Default::default()
    })
}

fn head() -> MlpHeadConfig {
    MlpHeadConfig {
        hidden: vec![8],
        dropout: 0.0,
        seed: 0,
        momentum: 0.1,
    }
}

fn volumes(n: u64) -> Vec<Grid> {
    (0..n).map(|s| common::volumes::volume(12, s)).collect()
}

fn pretrain_cfg(epochs: usize, lr: f64, val_fraction: f64) -> PretrainConfig {
    PretrainConfig {
        epochs,
        batch_size: Some(2),
        adam: AdamConfig::with_lr(lr),
        val_fraction,
        steps_per_epoch: Some(2),
        seed: 1,
        steps: None,
    }
}

fn files(dir: &Path) -> RunFiles {
    RunFiles {
        dir: dir.to_path_buf(),
        manifest: serde_json::json!({"task": "rotation"}),
    }
}

fn pretrainer() -> Pretrainer {
    Pretrainer::new(
        &TaskConfig::new(Task::Rotation),
        &unet(),
        &head(),
        (1, [12, 12, 12]),
        3,
        &Device::Cpu,
    )
    .unwrap()
}

#[test]
fn pretraining_without_validation_writes_a_log_that_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let data = volumes(6);
    let r = pretrainer()
        .run(
            &data,
            &pretrain_cfg(2, 1e-3, 0.0),
            Some(&files(dir.path())),
            &mut |_, _| {},
        )
        .unwrap();
    assert!(r.epochs.iter().all(|e| e.val_loss.is_nan()));
    let log = read_log(&dir.path().join("log.jsonl")).expect("log.jsonl is readable");
    assert_eq!(log.len(), 2);
    assert!(log[0].val_loss.is_nan() && log[0].loss.is_finite());
}

#[test]
fn a_sweep_with_val_fraction_zero_completes_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o");
    let args = [
        "run",
        "examples/fig3_pancreas.rhai",
        "--set",
        "profile=test",
        "--set",
        &format!("out={}", out.display()),
        "--set",
        "pretrain.val_fraction=0.0",
    ];
    let data = dir.path().join("data");
    let o = pretext_env(&args, &[("PRETEXT_DATA", &data)]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let o = pretext_env(&args, &[("PRETEXT_DATA", &data)]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    assert!(common::stdout(&o).contains("4 cells in this shard, 4 done, 0 to run"));
}

// ---- 4. Configurations do not mix; no cell twice -------------------------------------------

#[test]
fn a_rerun_with_another_configuration_is_refused_naming_both_hashes_and_keys() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o");
    let data = dir.path().join("data");
    let outs = format!("out={}", out.display());
    let base = [
        "run",
        "examples/fig3_pancreas.rhai",
        "--set",
        "profile=test",
        "--set",
        outs.as_str(),
    ];
    let o = pretext_env(&base, &[("PRETEXT_DATA", &data)]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let first: Vec<String> = std::fs::read_to_string(out.join("results.jsonl"))
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    let hash1 = serde_json::from_str::<ResultRow>(&first[0])
        .unwrap()
        .config_hash;
    let mut other = base.to_vec();
    other.extend(["--set", "finetune.epochs=3"]);
    let o = pretext_env(&other, &[("PRETEXT_DATA", &data)]);
    assert_eq!(o.status.code(), Some(1), "{}", common::stderr(&o));
    let e = common::stderr(&o);
    assert!(e.contains(&hash1) && e.contains("finetune.epochs"), "{e}");
    assert_eq!(
        std::fs::read_to_string(out.join("results.jsonl"))
            .unwrap()
            .lines()
            .count(),
        4,
        "nothing was added"
    );
    assert!(out.join("config.json").is_file());
    other.push("--allow-mixed");
    let o = pretext_env(&other, &[("PRETEXT_DATA", &data)]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    assert_eq!(
        std::fs::read_to_string(out.join("results.jsonl"))
            .unwrap()
            .lines()
            .count(),
        8
    );
}

#[test]
fn merge_refuses_rows_of_different_configurations_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.jsonl"), dir.path().join("b.jsonl"));
    std::fs::write(&a, line(&row("baseline", 0.5, 0, "aaaa"))).unwrap();
    std::fs::write(&b, line(&row("baseline", 1.0, 0, "bbbb"))).unwrap();
    let out = dir.path().join("m.jsonl");
    let args = [
        "merge",
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ];
    let o = common::pretext(&args, None);
    assert_eq!(o.status.code(), Some(1));
    let e = common::stderr(&o);
    assert!(
        e.contains("aaaa") && e.contains("bbbb") && e.contains("--allow-mixed"),
        "{e}"
    );
    assert!(!out.exists());
    let mut allowed = args.to_vec();
    allowed.push("--allow-mixed");
    let o = common::pretext(&allowed, None);
    assert!(o.status.success(), "{}", common::stderr(&o));
    assert_eq!(std::fs::read_to_string(&out).unwrap().lines().count(), 2);
}

#[test]
fn duplicate_seeds_and_tasks_give_each_cell_once() {
    let tasks: Vec<String> = ["baseline", "rotation", "baseline"]
        .map(String::from)
        .to_vec();
    let c = cells(&tasks, &[0.5, 1.0, 0.5], &[0, 0, 1], Shard::ALL);
    assert_eq!(c.len(), 2 * 2 * 2);
    for (i, a) in c.iter().enumerate() {
        assert!(c[i + 1..].iter().all(|b| b != a), "{a:?} twice");
    }
}

// ---- 6. Non-finite training stops with an error, keeping the good checkpoint ------------------

#[test]
fn a_nan_learning_rate_is_an_error_and_leaves_no_nan_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let data = volumes(6);
    for lr in [f64::NAN, f64::INFINITY] {
        // One step per epoch: the step that makes the parameters NaN ends epoch 1.
        let mut cfg = pretrain_cfg(2, lr, 0.2);
        cfg.steps_per_epoch = Some(1);
        let r = pretrainer().run(&data, &cfg, Some(&files(dir.path())), &mut |_, _| {});
        assert!(
            !dir.path().join("best.safetensors").exists(),
            "lr {lr}: a checkpoint was saved"
        );
        let e = r
            .expect_err("a non-finite learning rate is an error")
            .to_string();
        assert!(e.contains("lr") || e.contains("learning rate"), "{e}");
    }
}

#[test]
fn a_model_that_turns_nan_stops_pretraining_and_keeps_the_last_good_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let p = pretrainer();
    // After epoch 1 every head parameter turns NaN.
    let store = p.store.clone();
    let mut blow_up = move |e: &pretext::train::pretrain::EpochLog, _| {
        if e.epoch == 1 {
            for (_, w) in store.trainable("head.") {
                w.set(&(w.as_tensor() * f64::NAN).unwrap()).unwrap();
            }
        }
    };
    let r = p.run(
        &volumes(10),
        &pretrain_cfg(3, 1e-3, 0.2),
        Some(&files(dir.path())),
        &mut blow_up,
    );
    let e = r.expect_err("a non-finite loss is an error").to_string();
    assert!(e.contains("non-finite") && e.contains("epoch 2"), "{e}");
    let best = dir.path().join("best.safetensors");
    let m = pretext::nn::ParamStore::manifest(&best).unwrap();
    assert_eq!(m["epoch"], 1);
    for (name, t) in candle_core::safetensors::load(&best, &Device::Cpu).unwrap() {
        let v = t
            .flatten_all()
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        assert!(
            v.iter().all(|x| x.is_finite()),
            "{name} holds non-finite values"
        );
    }
}

// ---- 7. data synth does not replace a dataset ---------------------------------------------

#[test]
fn data_synth_refuses_a_non_empty_folder_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("aptos");
    std::fs::create_dir_all(&real).unwrap();
    std::fs::write(real.join("train.csv"), "id_code,diagnosis\nreal_1,3\n").unwrap();
    let args = [
        "data",
        "synth",
        "fundus",
        "--out",
        real.to_str().unwrap(),
        "--n",
        "5",
        "--size",
        "32",
    ];
    let o = common::pretext(&args, None);
    assert_eq!(o.status.code(), Some(1), "{}", common::stderr(&o));
    assert!(
        common::stderr(&o).contains("--force"),
        "{}",
        common::stderr(&o)
    );
    assert_eq!(
        std::fs::read_to_string(real.join("train.csv")).unwrap(),
        "id_code,diagnosis\nreal_1,3\n"
    );
    let mut forced = args.to_vec();
    forced.push("--force");
    let o = common::pretext(&forced, None);
    assert!(o.status.success(), "{}", common::stderr(&o));
    assert!(pretext::data::verify(&real).unwrap().is_ok());
    assert_eq!(pretext::data::verify(&real).unwrap().cases.len(), 5);
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(left.len(), 1, "only the dataset is left: {left:?}");
    // A new folder is fine.
    let new = dir.path().join("new");
    let o = common::pretext(
        &[
            "data",
            "synth",
            "fundus",
            "--out",
            new.to_str().unwrap(),
            "--n",
            "5",
            "--size",
            "32",
        ],
        None,
    );
    assert!(o.status.success(), "{}", common::stderr(&o));
}

#[test]
fn temporary_folders_of_killed_generations_are_removed_on_the_next_run() {
    let dir = tempfile::tempdir().unwrap();
    let synthetic = dir.path().join("synthetic");
    let stale = synthetic.join(format!(".pancreas-0123.tmp-{}-{}-0", host(), dead_pid()));
    std::fs::create_dir_all(stale.join("imagesTr")).unwrap();
    let live = synthetic.join(format!(
        ".pancreas-0123.tmp-{}-{}-0",
        host(),
        std::process::id()
    ));
    std::fs::create_dir_all(&live).unwrap();
    let o = pretext_env(
        &[
            "eval",
            "pancreas(#{ root: \"\", shape: [16, 16, 16], synthetic: #{ labelled: 2, \
             unlabelled: 0, shape: [16, 16, 16], seed: 1 } }).len()",
        ],
        &[("PRETEXT_DATA", dir.path())],
    );
    assert!(o.status.success(), "{}", common::stderr(&o));
    assert!(!stale.exists(), "the dead process's folder is removed");
    assert!(live.exists(), "a running process's folder is kept");
}

// ---- 8. Ids are names, not paths ---------------------------------------------------------------

#[test]
fn an_id_code_with_a_path_is_refused_and_nothing_is_written_outside_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("a/b/aptos");
    std::fs::create_dir_all(root.join("train_images")).unwrap();
    // The image the traversing id points to exists, so only the id check can stop it.
    let target = root.join("train_images/../../../x");
    std::fs::create_dir_all(&target).unwrap();
    let img = image::RgbImage::from_fn(40, 40, |x, y| image::Rgb([x as u8 * 5, y as u8 * 5, 90]));
    img.save(target.join("y.png")).unwrap();
    img.save(root.join("train_images/ok.png")).unwrap();
    std::fs::write(
        root.join("train.csv"),
        "id_code,diagnosis\nok,1\n../../../x/y,2\n",
    )
    .unwrap();
    let cache = dir.path().join("a/b/c/cache");
    // Where the id leads from inside the cache (cache/fundus-KEY/../../../x), made to exist.
    std::fs::create_dir_all(dir.path().join("a/b/x")).unwrap();
    let params = FundusPreprocess {
        size: 16,
        ..Default::default()
    };
    let e = FundusSet::open(&root, &params, &cache)
        .unwrap_err()
        .to_string();
    assert!(e.contains("id_code") && e.contains(".."), "{e}");
    let outside: Vec<PathBuf> = walk(dir.path())
        .into_iter()
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    assert!(outside.is_empty(), "cache files written: {outside:?}");
}

fn walk(d: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(d).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn dataset_json_paths_stay_inside_the_dataset() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("ds");
    std::fs::create_dir_all(&root).unwrap();
    for bad in ["../elsewhere/case_000.nii.gz", "/etc/case_000.nii.gz"] {
        let json = serde_json::json!({
            "training": [{"image": bad, "label": "./labelsTr/case_000.nii.gz"}],
        });
        std::fs::write(root.join("dataset.json"), json.to_string()).unwrap();
        let e = Decathlon::open(&root).unwrap_err().to_string();
        assert!(e.contains("dataset.json") && e.contains(bad), "{e}");
    }
}

// ---- 9. Preparation checks what verify checks ----------------------------------------------

/// A small Decathlon folder whose case 0 is changed by `edit(image, label)`.
fn dataset_with(edit: impl Fn(&mut Vec<f32>, &mut Vec<f32>)) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("ds");
    let cfg = PhantomConfig {
        labelled: 2,
        unlabelled: 0,
        shape: [24, 24, 16],
        seed: 3,
        tumour_share: 1.0,
    };
    pancreas::write(&cfg, &root, None).unwrap();
    let ip = root.join("imagesTr/case_000.nii.gz");
    let lp = root.join("labelsTr/case_000.nii.gz");
    let (img, lab) = (Volume::load(&ip).unwrap(), Volume::load(&lp).unwrap());
    let (mut i, mut l) = (img.to_vec().unwrap(), lab.to_vec().unwrap());
    edit(&mut i, &mut l);
    let t = |v: Vec<f32>| Tensor::from_vec(v, (24, 24, 16), &Device::Cpu).unwrap();
    img.with_tensor(&t(i))
        .unwrap()
        .save_as(&ip, VoxelType::F32)
        .unwrap();
    lab.with_tensor(&t(l))
        .unwrap()
        .save_as(&lp, VoxelType::F32)
        .unwrap();
    (dir, root)
}

fn prepare_err(root: &Path, cache: &Path) -> String {
    let params = PancreasPreprocess {
        shape: [8, 8, 8],
        ..Default::default()
    };
    PancreasSet::open(root, &params, cache)
        .unwrap_err()
        .to_string()
}

#[test]
fn preparation_refuses_labels_and_images_that_verify_flags() {
    type Edit = fn(&mut Vec<f32>, &mut Vec<f32>);
    let cases: [(&str, Edit, &str, &str); 3] = [
        ("label 7", |_, l| l[1000] = 7.0, "labelsTr/case_000", "7"),
        (
            "label 0.5",
            |_, l| l[1000] = 0.5,
            "labelsTr/case_000",
            "integers",
        ),
        (
            "NaN image",
            |i, _| i.iter_mut().for_each(|v| *v = f32::NAN),
            "imagesTr/case_000",
            "NaN",
        ),
    ];
    for (what, edit, file, word) in cases {
        let (dir, root) = dataset_with(edit);
        let report = pretext::data::verify(&root).unwrap();
        assert!(
            report
                .problems
                .iter()
                .any(|p| p.file.to_string_lossy().contains(file) && p.msg.contains(word)),
            "{what}: verify reports {:?}",
            report.problems
        );
        let e = prepare_err(&root, &dir.path().join("cache"));
        assert!(e.contains(file) && e.contains(word), "{what}: {e}");
    }
}

// ---- 12. No panics, no aborts -------------------------------------------------------------------

#[test]
fn printing_to_a_closed_stdout_ends_quietly() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pretext"))
        .args(["eval", "for i in 0..10000000 { print(i) }"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert_eq!(first, "0\n");
    // The reader is gone (as `| head -1` leaves it).
    let o = child.wait_with_output().unwrap();
    let e = common::stderr(&o);
    assert_eq!(o.status.code(), Some(0), "{e}");
    assert!(!e.contains("panicked"), "{e}");
}

#[test]
fn huge_requests_are_errors_naming_the_request() {
    for (code, word) in [
        ("arange(0.0, 1e30, 1.0)", "arange"),
        ("ones([4611686018427387904, 4])", "4611686018427387904"),
        ("zeros([100000, 100000, 100])", "allocation limit"),
        ("unet3d(#{ filters: 100000 })", "allocation limit"),
        (
            "image(zeros([3, 8, 8])).resize(100000, 100000)",
            "allocation limit",
        ),
    ] {
        let o = common::pretext(&["eval", code], None);
        let e = common::stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{code}: {e}");
        assert!(e.contains(word) && !e.contains("panicked"), "{code}: {e}");
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("big");
    let o = common::pretext(
        &[
            "data",
            "synth",
            "pancreas",
            "--out",
            out.to_str().unwrap(),
            "--shape",
            "100000,100000,100000",
        ],
        None,
    );
    assert_eq!(o.status.code(), Some(1), "{}", common::stderr(&o));
    assert!(common::stderr(&o).contains("allocation limit"));
}

#[test]
fn the_allocation_limit_is_configurable() {
    let limit = [("PRETEXT_MAX_ALLOC", Path::new("1M"))];
    let o = pretext_env(&["eval", "zeros([1000, 1000]).sum().to_float()"], &limit);
    assert_eq!(o.status.code(), Some(1));
    let e = common::stderr(&o);
    assert!(
        e.contains("zeros") && e.contains("PRETEXT_MAX_ALLOC") && e.contains("1.0 MiB"),
        "{e}"
    );
    let o = pretext_env(&["eval", "zeros([100, 100]).sum().to_float()"], &limit);
    assert!(o.status.success(), "{}", common::stderr(&o));
}

// ---- 14. Smaller silent results ----------------------------------------------------------------

#[test]
fn negative_and_fractional_labels_are_errors_not_class_zero() {
    let dev = Device::Cpu;
    for bad in [[-1f32, 0.0], [0.5, 1.0], [f32::NAN, 1.0]] {
        let l = Tensor::new(&bad, &dev).unwrap();
        let e = one_hot(&l, 3, DType::F32).unwrap_err().to_string();
        assert!(e.contains("label"), "{bad:?}: {e}");
        let logits = Tensor::zeros((2, 3), DType::F32, &dev).unwrap();
        let e = cross_entropy(&logits, &l).unwrap_err().to_string();
        assert!(e.contains("label"), "{bad:?}: {e}");
        let as_i64 = Tensor::new(&[-1i64, 0], &dev).unwrap();
        assert!(one_hot(&as_i64, 3, DType::F32).is_err());
    }
    let ok = Tensor::new(&[2f32, 0.0], &dev).unwrap();
    let h = one_hot(&ok, 3, DType::F32)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    assert_eq!(h, vec![vec![0.0, 0.0, 1.0], vec![1.0, 0.0, 0.0]]);
}

#[test]
fn a_batch_of_zero_is_an_error() {
    let data: Vec<(Grid, Vec<u8>)> = (0..4)
        .map(|s| {
            let v = common::volumes::volume(8, s);
            let l = v.data.iter().map(|&x| u8::from(x > 0.6)).collect();
            (v, l)
        })
        .collect();
    let cfg = SegmentationConfig {
        unet: UNet3dConfig {
            filters: 2,
            depth: 2,
            dropout: 0.0,
            ..Default::default()
        },
        schedule: Schedule {
            epochs: 1,
            warmup_epochs: 0,
            batch_size: 0,
            adam: AdamConfig::with_lr(1e-3),
            freeze_bn: true,
            fresh_optimizer: true,
            steps_per_epoch: None,
            seed: 0,
            save: None,
            steps: None,
            warmup_steps: 0,
            lr_schedule: Default::default(),
            validation: Vec::new(),
            files: Default::default(),
        },
        dice: DiceVariant::Batch,
        absent: Default::default(),
    };
    let e = finetune_segmentation(
        &EncoderInit::Random,
        &cfg,
        &data,
        (&[0, 1], &[2, 3]),
        &Device::Cpu,
        &mut |_, _| {},
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("batch"), "{e}");
    // A label outside the classes is found on the host, naming the item.
    let mut bad = data.clone();
    bad[1].1[5] = 3;
    let mut ok = cfg.clone();
    ok.schedule.batch_size = 2;
    let e = finetune_segmentation(
        &EncoderInit::Random,
        &ok,
        &bad,
        (&[0, 1], &[2, 3]),
        &Device::Cpu,
        &mut |_, _| {},
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("item 1 has label 3, outside 0..3"), "{e}");
    let mut pc = pretrain_cfg(1, 1e-3, 0.2);
    pc.batch_size = Some(0);
    let e = pretrainer()
        .run(&volumes(6), &pc, None, &mut |_, _| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("batch"), "{e}");
}

#[test]
fn results_csv_quotes_fields() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("r.csv");
    write_csv(&p, &[row("my,task \"x\"", 0.5, 0, "h")]).unwrap();
    let mut r = csv::Reader::from_path(&p).unwrap();
    let recs: Vec<csv::StringRecord> = r.records().map(Result::unwrap).collect();
    assert_eq!(recs.len(), 1);
    assert_eq!(&recs[0][0], "my,task \"x\"");
    assert_eq!(recs[0].len(), r.headers().unwrap().len());
}

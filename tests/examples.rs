//! Every bundled example runs to the end under its `test` profile (or small settings).

mod common;
use std::path::Path;
use std::process::Command;

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
    assert!(dir.path().join("runs/quickstart/summary.json").is_file());
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
}

#[test]
fn each_figure_example_runs_on_its_own() {
    let dir = tempfile::tempdir().unwrap();
    run_example("fig3_pancreas.rhai", &["--set", "profile=test"], dir.path());
    run_example("fig4_fundus.rhai", &["--set", "profile=test"], dir.path());
    assert!(dir.path().join("runs/test/fig4/fig4.svg").is_file());
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
}

#[test]
fn the_own_data_example_pretrains_finetunes_and_writes_predictions_in_each_cases_geometry() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_example(
        "own_data.rhai",
        &[
            "--set", "size=16", "--set", "filters=2", "--set", "epochs=2", "--set",
            "finetune_epochs=2",
        ],
        dir.path(),
    );
    assert!(out.contains("rotation: loss") && out.contains("Dice on the original grid"), "{out}");
    let runs = dir.path().join("runs/own_data");
    let splits: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(runs.join("splits.json")).unwrap()).unwrap();
    let test = splits["test"].as_array().unwrap();
    assert!(!test.is_empty());
    for id in test {
        let id = id.as_str().unwrap();
        let pred = pretext::Volume::load(runs.join(format!("predictions/{id}.nii.gz"))).unwrap();
        let src = pretext::Volume::load(runs.join(format!("demo_data/imagesTr/{id}.nii.gz"))).unwrap();
        assert_eq!(pred.shape(), src.shape(), "{id}");
        assert_eq!(pred.affine(), src.affine(), "{id}");
        assert_eq!(pred.dtype(), pretext::VoxelType::U8);
    }
    let new: Vec<_> = std::fs::read_dir(runs.join("new")).unwrap().collect();
    assert_eq!(new.len(), 3, "a label map per new case");
    assert!(runs.join("summary.json").is_file() && runs.join("segmentation.safetensors").is_file());
}

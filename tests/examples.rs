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

//! examples/beyond.rhai on the test profile: the baseline, the best single task, the joint
//! "multi" arm and the script-only contrastive arm (given to the sweep as a checkpoint) each
//! get their rows; the multi pretraining logs every task; the comparison with the single task
//! is written; a rerun finds every cell done.

mod common;
use std::path::Path;

use pretext::experiment::ResultsFile;

fn beyond(data: &Path, out: &Path) -> std::process::Output {
    let out = format!("out={}", out.display());
    std::process::Command::new(env!("CARGO_BIN_EXE_pretext"))
        .args([
            "run",
            "examples/beyond.rhai",
            "--set",
            "profile=test",
            "--set",
            out.as_str(),
            // The test profile's 16³ volumes and UNet of depth 2 fit the whole-volume tasks.
            "--set",
            "multi.tasks=[\"rotation\",\"exemplar\"]",
            "--set",
            "multi.weights=[1.0,0.5]",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("PRETEXT_DATA", data)
        .output()
        .unwrap()
}

#[test]
fn the_beyond_example_compares_four_arms_and_resumes_with_nothing_left() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("beyond");
    let o = beyond(dir.path(), &out);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let rows = ResultsFile::open(out.join("results.jsonl"))
        .unwrap()
        .rows()
        .to_vec();
    for arm in ["baseline", "exemplar", "multi", "contrastive"] {
        for f in [0.5, 1.0] {
            let r = rows
                .iter()
                .find(|r| r.task == arm && r.fraction == f)
                .unwrap_or_else(|| panic!("no row for {arm} at {f}"));
            assert!(r.metric("dice_pancreas").unwrap().is_finite(), "{arm} {f}");
        }
    }
    assert_eq!(rows.len(), 8);
    // The contrastive arm finetunes from the script task's checkpoint.
    let contrastive = rows.iter().find(|r| r.task == "contrastive").unwrap();
    let ckpt = contrastive.extra["checkpoint"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        ckpt.contains("script-pretrain/contrastive-") && Path::new(&ckpt).exists(),
        "{ckpt}"
    );
    // The joint pretraining (once per repetition in the test profile) logged both tasks, with
    // the weighted validation loss.
    let log =
        pretext::train::pretrain::read_log(&out.join("pretrain/multi-seed0/log.jsonl")).unwrap();
    let last = log.last().unwrap();
    let tasks = last.tasks.as_ref().unwrap();
    let weighted = tasks["rotation"].val_loss + 0.5 * tasks["exemplar"].val_loss;
    assert!((last.val_loss - weighted).abs() <= 1e-9 * weighted.abs());
    for f in [
        "stats.md",
        "stats_vs_exemplar.md",
        "beyond.png",
        "report.html",
        "pretext_curves_multi-seed0.png",
    ] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    let vs = std::fs::read_to_string(out.join("stats_vs_exemplar.md")).unwrap();
    assert!(vs.contains("multi") && vs.contains("contrastive"), "{vs}");
    // A rerun finds every cell (and the contrastive checkpoint) done.
    let again = beyond(dir.path(), &out);
    assert!(again.status.success(), "{}", common::stderr(&again));
    let said = common::stdout(&again);
    assert!(said.contains("8 done, 0 to run"), "{said}");
    assert!(
        !said.contains("contrastive: "),
        "the script task ran again: {said}"
    );
}

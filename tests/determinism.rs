//! Same seed, same result, bit for bit, at any thread count: every pretext task (five 3D, five
//! 2D) pretrained, and one finetuning cell of each kind, alone and beside another cell
//! (`finetune_many`), run three times through the CLI (twice at 2 threads, once at 1, each
//! generating its own synthetic data) give identical checkpoints, metrics and logs (timings
//! aside).

mod common;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs `tests/fixtures/determinism.rhai` into `root/out` with its own data folder.
fn run(root: &Path, threads: &str) -> PathBuf {
    let out = root.join("out");
    let o = Command::new(env!("CARGO_BIN_EXE_pretext"))
        .args(["run", "tests/fixtures/determinism.rhai", "--set"])
        .arg(format!("out={}", out.display()))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("PRETEXT_DATA", root.join("data"))
        .env("RAYON_NUM_THREADS", threads)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", common::stderr(&o));
    out
}

/// `bytes` with every mention of the run's own folder (the parent of `dir`, which holds its
/// output and its data, and differs between the runs) replaced by `<run>`: pretraining
/// folders' config.json and the rows name their paths.
fn without_root(bytes: Vec<u8>, dir: &Path) -> Vec<u8> {
    let root = dir.parent().unwrap().display().to_string();
    let root = root.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i..].starts_with(root) {
            out.extend_from_slice(b"<run>");
            i += root.len();
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

/// Every file under `dir` by relative path, with the run's folder named `<run>` and the
/// per-epoch `seconds` removed from logs.
fn contents(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let rel = p.strip_prefix(dir).unwrap().display().to_string();
            let mut bytes = without_root(std::fs::read(&p).unwrap(), dir);
            if rel.ends_with("log.jsonl") {
                let text = String::from_utf8(bytes).unwrap();
                let lines: Vec<String> = text
                    .lines()
                    .map(|l| {
                        let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
                        v.as_object_mut().unwrap().remove("seconds");
                        v.to_string()
                    })
                    .collect();
                bytes = lines.join("\n").into_bytes();
            }
            files.insert(rel, bytes);
        }
    }
    files
}

#[test]
fn every_task_and_finetuning_cell_is_bit_identical_at_one_and_two_threads() {
    let dir = tempfile::tempdir().unwrap();
    let runs: Vec<BTreeMap<String, Vec<u8>>> = [("a", "2"), ("b", "2"), ("c", "1")]
        .iter()
        .map(|(name, threads)| contents(&run(&dir.path().join(name), threads)))
        .collect();
    let checkpoints = runs[0]
        .keys()
        .filter(|k| k.ends_with(".safetensors"))
        .count();
    // Best and last of ten pretrainings and of the two run by pretrain_many, the two
    // finetuned models, and the four of the finetune_many calls.
    assert_eq!(checkpoints, 30, "{:?}", runs[0].keys().collect::<Vec<_>>());
    // A pretraining or a cell run beside another (two at once at 2 threads) is the same run
    // alone.
    for run in &runs {
        for task in ["rotation", "cpc"] {
            for file in [
                "best.safetensors",
                "last.safetensors",
                "log.jsonl",
                "config.json",
            ] {
                let (alone, beside) = (
                    format!("ct-{task}/{file}"),
                    format!("many-ct-{task}/{file}"),
                );
                assert!(run[&alone] == run[&beside], "{beside} differs from {alone}");
            }
        }
        assert!(run["seg.safetensors"] == run["seg-many-0.safetensors"]);
        assert!(run["grade.safetensors"] == run["grade-many-0.safetensors"]);
        assert!(run["seg.safetensors"] != run["seg-many-1.safetensors"]);
        let m: serde_json::Value = serde_json::from_slice(&run["metrics.json"]).unwrap();
        for key in ["dice", "soft", "losses", "qwk", "accuracy", "glosses"] {
            assert_eq!(m[key], m["many"][key], "{key}");
        }
    }
    for (i, other) in runs.iter().enumerate().skip(1) {
        assert_eq!(
            runs[0].keys().collect::<Vec<_>>(),
            other.keys().collect::<Vec<_>>(),
            "run {i} wrote other files"
        );
        for (name, bytes) in &runs[0] {
            assert!(
                &other[name] == bytes,
                "{name} differs between run 0 (2 threads) and run {i} ({} threads)",
                if i == 2 { 1 } else { 2 }
            );
        }
    }
}

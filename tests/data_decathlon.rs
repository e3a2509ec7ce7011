//! Decathlon folders: reading dataset.json (or a listing), and `verify` naming every bad file.

mod common;

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use common::{pretext, stderr, stdout};
use pretext::data::synthetic::pancreas::{self, PhantomConfig};
use pretext::data::{Decathlon, verify};
use pretext::{Volume, VoxelType};

/// A small synthetic Decathlon folder: 3 labelled cases and 1 unlabelled.
fn dataset() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let cfg = PhantomConfig {
        labelled: 3,
        unlabelled: 1,
        shape: [24, 24, 12],
        seed: 9,
        tumour_share: 1.0,
    };
    pancreas::write(&cfg, dir.path(), None).unwrap();
    dir
}

fn label(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("labelsTr/case_{i:03}.nii.gz"))
}

/// The problems of a verification, as (file, message).
fn problems(dir: &Path) -> Vec<(PathBuf, String)> {
    let r = verify(dir).unwrap();
    r.problems.into_iter().map(|p| (p.file, p.msg)).collect()
}

fn write_label(path: &Path, values: Vec<f32>, shape: (usize, usize, usize), dtype: VoxelType) {
    let t = Tensor::from_vec(values, shape, &Device::Cpu).unwrap();
    Volume::from_tensor(&t, [1.0; 3])
        .unwrap()
        .save_as(path, dtype)
        .unwrap();
}

#[test]
fn dataset_json_lists_labelled_and_unlabelled_cases() {
    let dir = dataset();
    let ds = Decathlon::open(dir.path()).unwrap();
    assert_eq!(ds.name(), "SyntheticPancreas");
    let ids: Vec<&str> = ds.cases().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, ["case_000", "case_001", "case_002", "case_003"]);
    assert_eq!(
        ds.labelled()[1].label.as_deref(),
        Some(label(dir.path(), 1).as_path())
    );
    assert_eq!(
        ds.unlabelled()[0].image,
        dir.path().join("imagesTs/case_003.nii.gz")
    );
    assert!(ds.unlabelled()[0].label.is_none());
}

#[test]
fn missing_test_entries_and_counts_are_tolerated() {
    let dir = dataset();
    let json = dir.path().join("dataset.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let obj = v.as_object_mut().unwrap();
    for k in ["test", "numTest", "numTraining", "name", "modality"] {
        obj.remove(k);
    }
    std::fs::write(&json, v.to_string()).unwrap();
    let ds = Decathlon::open(dir.path()).unwrap();
    assert_eq!((ds.labelled().len(), ds.unlabelled().len()), (3, 0));
    let r = verify(dir.path()).unwrap();
    assert!(r.is_ok(), "{r}");
    assert!(
        r.warnings
            .iter()
            .any(|w| w.file.ends_with("imagesTs/case_003.nii.gz") && w.msg.contains("not listed")),
        "{r}"
    );
}

#[test]
fn without_dataset_json_the_cases_are_found_by_listing() {
    let dir = dataset();
    std::fs::remove_file(dir.path().join("dataset.json")).unwrap();
    std::fs::write(dir.path().join("imagesTr/._case_000.nii.gz"), b"macOS junk").unwrap();
    let ds = Decathlon::open(dir.path()).unwrap();
    assert_eq!((ds.labelled().len(), ds.unlabelled().len()), (3, 1));
    let r = verify(dir.path()).unwrap();
    assert!(r.is_ok(), "{r}");
    assert!(r.warnings[0].msg.contains("listing"), "{r}");
}

#[test]
fn a_clean_folder_verifies_with_shapes_dtypes_spacing_and_label_values() {
    let dir = dataset();
    let r = verify(dir.path()).unwrap();
    assert!(r.is_ok(), "{r}");
    assert_eq!(r.cases.len(), 4);
    let c = &r.cases[0];
    assert_eq!(
        (c.shape.clone(), c.dtype.as_str()),
        (vec![24, 24, 12], "i16")
    );
    assert!((c.spacing.unwrap()[0] - 17.5).abs() < 1e-6);
    let labels = c.labels.clone().unwrap();
    assert!(
        labels.starts_with(&[0, 1]) && labels.iter().all(|&l| l <= 2),
        "{labels:?}"
    );
    assert!(r.cases[3].labels.is_none() && !r.cases[3].labelled);
}

#[test]
fn a_truncated_label_file_is_the_only_file_named() {
    let dir = dataset();
    let bad = label(dir.path(), 1);
    let bytes = std::fs::read(&bad).unwrap();
    std::fs::write(&bad, &bytes[..bytes.len() / 2]).unwrap();
    let p = problems(dir.path());
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0].0, bad);
}

#[test]
fn out_of_range_non_integer_and_misshapen_labels_are_named() {
    let dir = dataset();
    let n = 24 * 24 * 12;
    let mut three = vec![0f32; n];
    three[100] = 3.0;
    write_label(&label(dir.path(), 0), three, (24, 24, 12), VoxelType::U8);
    let mut half = vec![0f32; n];
    half[24 * 12 + 5] = 0.5;
    write_label(&label(dir.path(), 1), half, (24, 24, 12), VoxelType::F32);
    write_label(
        &label(dir.path(), 2),
        vec![0.0; 24 * 24 * 11],
        (24, 24, 11),
        VoxelType::U8,
    );
    let p = problems(dir.path());
    assert_eq!(p.len(), 3, "{p:?}");
    let msg = |i: usize| {
        p.iter()
            .find(|(f, _)| *f == label(dir.path(), i))
            .map(|(_, m)| m.clone())
            .unwrap_or_else(|| panic!("case {i} not named: {p:?}"))
    };
    assert!(
        msg(0).contains("out of range") && msg(0).contains('3'),
        "{}",
        msg(0)
    );
    assert!(
        msg(1).contains("integers") && msg(1).contains("[1, 0, 5]"),
        "{}",
        msg(1)
    );
    assert!(
        msg(2).contains("[24, 24, 11]") && msg(2).contains("[24, 24, 12]"),
        "{}",
        msg(2)
    );
}

#[test]
fn missing_images_and_labels_are_named() {
    let dir = dataset();
    std::fs::remove_file(dir.path().join("imagesTs/case_003.nii.gz")).unwrap();
    std::fs::remove_file(label(dir.path(), 2)).unwrap();
    let p = problems(dir.path());
    let files: Vec<&Path> = p.iter().map(|(f, _)| f.as_path()).collect();
    assert_eq!(files.len(), 2, "{p:?}");
    assert!(files.contains(&dir.path().join("imagesTs/case_003.nii.gz").as_path()));
    assert!(files.contains(&label(dir.path(), 2).as_path()));
    assert!(p.iter().all(|(_, m)| m.contains("no such file")), "{p:?}");
}

#[test]
fn a_broken_dataset_json_is_an_error_naming_it() {
    let dir = dataset();
    let json = dir.path().join("dataset.json");
    std::fs::write(&json, "{\"training\": [{\"image\": 3}]}").unwrap();
    let e = Decathlon::open(dir.path()).unwrap_err().to_string();
    assert!(e.contains("dataset.json") && e.contains("training"), "{e}");
    std::fs::write(&json, "{\"training\": [], \"labels\": {\"x\": \"bg\"}}").unwrap();
    let e = Decathlon::open(dir.path()).unwrap_err().to_string();
    assert!(e.contains("dataset.json") && e.contains("`x`"), "{e}");
    let e = Decathlon::open(dir.path().join("nowhere"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("nowhere"), "{e}");
}

#[test]
fn cli_synth_then_verify_reports_eight_valid_cases_and_then_names_the_corrupted_label() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("D");
    let ds = d.to_str().unwrap();
    let o = pretext(
        &["data", "synth", "pancreas", "--out", ds, "--n", "8"],
        None,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = pretext(&["data", "verify", ds], None);
    let out = stdout(&o);
    assert!(o.status.success(), "{out}{}", stderr(&o));
    assert!(
        out.contains("8 labelled, 0 unlabelled") && out.contains("8 cases, 0 problems"),
        "{out}"
    );
    assert!(
        out.contains("[128, 128, 64] i16") && out.contains("labels {0, 1"),
        "{out}"
    );

    let bad = d.join("labelsTr/case_005.nii.gz");
    std::fs::write(&bad, b"not a nifti file at all").unwrap();
    let o = pretext(&["data", "verify", ds], None);
    assert_eq!(o.status.code(), Some(1));
    let out = stdout(&o);
    let problems: Vec<&str> = out.lines().filter(|l| l.starts_with("problem:")).collect();
    assert_eq!(problems.len(), 1, "{out}");
    assert!(problems[0].contains(bad.to_str().unwrap()), "{out}");
    let o = pretext(&["data", "verify", "--json", ds], None);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["problems"][0]["file"], bad.to_str().unwrap());
}

#[test]
fn cli_verify_of_a_folder_that_is_no_dataset_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let o = pretext(&["data", "verify", dir.path().to_str().unwrap()], None);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("not a dataset folder"),
        "{}",
        stderr(&o)
    );
}

//! The `data` script domain: sets (synthetic default and a given root), generators,
//! verification, preprocessing and splits from Rhai.

mod common;

use common::{eval_err, eval_f64, eval_show};

/// A script prefix opening small synthetic sets under a fresh data folder.
fn sets(dir: &std::path::Path) -> String {
    let d = dir.display();
    format!(
        "let p = pancreas(#{{ shape: [16, 16, 8], data: \"{d}\", \
           synthetic: #{{ labelled: 4, unlabelled: 2, shape: [40, 40, 20], seed: 3 }} }}); \
         let f = fundus(#{{ size: 24, data: \"{d}\", synthetic: #{{ n: 10, size: 64 }} }});"
    )
}

#[test]
fn the_synthetic_default_gives_prepared_pancreas_and_fundus_sets() {
    let dir = tempfile::tempdir().unwrap();
    let s = sets(dir.path());
    assert_eq!(eval_f64(&format!("{s} p.len()")), 6.0);
    assert_eq!(
        eval_show(&format!("{s} [p.labelled.len(), p.unlabelled.len()]")),
        "[4, 2]"
    );
    assert_eq!(eval_show(&format!("{s} p.image(5).shape")), "[16, 16, 8]");
    assert_eq!(eval_f64(&format!("{s} p.image(0).max().to_float()")), 1.0);
    assert_eq!(eval_show(&format!("{s} p.label(0).dtype")), "u8");
    assert_eq!(eval_show(&format!("{s} type_of(p.label(4))")), "()");
    assert_eq!(eval_show(&format!("{s} p.id(4)")), "case_004");
    assert_eq!(eval_show(&format!("{s} p.shape")), "[16, 16, 8]");
    assert_eq!(eval_f64(&format!("{s} f.len()")), 10.0);
    assert_eq!(eval_show(&format!("{s} f.image(0).shape")), "[3, 24, 24]");
    assert_eq!(eval_f64(&format!("{s} f.grades.len()")), 10.0);
    assert_eq!(
        eval_f64(&format!("{s} f.grade(0)")),
        eval_f64(&format!("{s} f.grades[0]"))
    );
    assert!(eval_show(&format!("{s} p.to_string()")).contains("4 labelled + 2 unlabelled"));
    assert!(dir.path().join("synthetic").is_dir() && dir.path().join("cache").is_dir());
}

#[test]
fn generators_write_folders_that_verify_and_open_by_root() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let code = format!(
        "let out = synth_pancreas(#{{ out: \"{d}/p\", labelled: 2, unlabelled: 1, shape: [24, 24, 12] }}); \
         let r = verify_dataset(out); \
         let set = pancreas(#{{ root: out, shape: [8, 8, 8], cache: \"{d}/c\" }}); \
         synth_fundus(#{{ out: \"{d}/f\", counts: [1, 1, 1, 1, 1], size: 48 }}); \
         let rf = verify_dataset(\"{d}/f\"); \
         [r.cases.len(), r.problems.len(), set.len(), rf.cases.len(), rf.problems.len()]"
    );
    assert_eq!(eval_show(&code), "[3, 0, 3, 5, 0]");
}

#[test]
fn preprocessing_functions_work_on_volumes_and_images() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let code = format!(
        "let out = synth_pancreas(#{{ out: \"{d}/p\", labelled: 1, unlabelled: 0, shape: [32, 32, 16] }}); \
         let v = load_nifti(out + \"/imagesTr/case_000.nii.gz\"); \
         let l = load_nifti(out + \"/labelsTr/case_000.nii.gz\"); \
         let r = preprocess_ct(v, l, #{{ shape: [8, 6, 4], labels: \"nearest\", clip: [-200, 300] }}); \
         let t = preprocess_ct(v, #{{ shape: [4, 5, 6] }}); \
         let img = image(rand([3, 20, 30], 1)); \
         let fu = preprocess_fundus(img, #{{ size: 12, filter: \"triangle\" }}); \
         [r.image.shape, r.label.shape, r.bbox.len(), t.shape, fu.shape, \
          r.image.min().to_float(), r.image.max().to_float(), l.tensor().max().to_float(), \
          r.label.max().to_float(), \
          t.min().to_float(), t.max().to_float()]"
    );
    // Non-cubic targets, so that a permuted axis shows; images normalised to [0, 1], labels
    // in 0..3 (the synthetic case has a pancreas and a tumour; at 8×6×4 the tumour is gone).
    assert_eq!(
        eval_show(&code),
        "[[8, 6, 4], [8, 6, 4], 6, [4, 5, 6], [3, 12, 12], 0.0, 1.0, 2.0, 1.0, 0.0, 1.0]"
    );
}

#[test]
fn split_functions_are_seeded_and_nested() {
    assert_eq!(
        eval_show("let s = split_train_test(10, 0.3, 1); [s.train.len(), s.test.len()]"),
        "[7, 3]"
    );
    assert_eq!(
        eval_show(
            "let a = nested_fractions([10, 11, 12, 13, 14, 15, 16, 17, 18, 19], [0.1, 0.5, 1.0], 4); [a[0].len(), a[1].len(), a[2].len(), a[0][0] == a[1][0]]"
        ),
        "[1, 5, 10, true]"
    );
    assert_eq!(
        eval_show(
            "let s = original_fraction({ let a = []; for i in 0..100 { a.push(i) } a }, 0.5, 0.05); [s.train.len(), s.val.len()]"
        ),
        "[47, 5]"
    );
    assert_eq!(
        eval_show(
            "let f = strided_folds({ let a = []; for i in 0..23 { a.push(i) } a }, 5, 1.0, 0.05); f[1].test"
        ),
        "[1, 6, 11, 16, 21]"
    );
    assert_eq!(eval_f64("kfold(10, 5, 0)[4].test.len()"), 2.0);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run");
    let p = path.display();
    eval_show(&format!(
        "save_splits(\"{p}\", #{{ train: [\"a\", \"b\"], test: [3] }})"
    ));
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path.join("splits.json")).unwrap()).unwrap();
    assert_eq!(v["train"][1], "b");
    assert_eq!(v["test"][0], 3);
}

#[test]
fn bad_options_are_errors_naming_the_option() {
    let e = eval_err("pancreas(#{ shapes: [1, 2, 3] })");
    assert!(
        e.contains("unknown option `shapes`") && e.contains("shape"),
        "{e}"
    );
    let e = eval_err("pancreas(#{ root: \"/nonexistent/ds\", shape: [2, 2] })");
    assert!(e.contains("`shape`") && e.contains("[INT; 3]"), "{e}");
    let e = eval_err("pancreas(#{ root: \"/nonexistent/ds\" })");
    assert!(e.contains("/nonexistent/ds"), "{e}");
    let e = eval_err("pancreas(#{ labels: \"cubic\" })");
    assert!(e.contains("`labels`") && e.contains("cubic"), "{e}");
    let e = eval_err("fundus(#{ synthetic: #{ n: 10, sizes: 3 } })");
    assert!(e.contains("unknown option `synthetic.sizes`"), "{e}");
    let e = eval_err("synth_pancreas(#{ labelled: 2 })");
    assert!(e.contains("`out`"), "{e}");
    let e = eval_err("split_train_test(10, 1.5, 0)");
    assert!(e.contains("test_frac"), "{e}");
}

//! Typed options: every options map deserialises into the config of the layer that reads it;
//! unknown keys (at any depth, and in `--set`) are errors with a suggestion; values of the
//! wrong type name their key; cross-field checks live on the configs; the reference lists
//! every option with its type, default and meaning.

mod common;
use common::{eval_err, eval_show, pretext, stderr};
use pretext::script::option_docs;
use pretext::train::finetune::{FinetuneOptions, GradingOptions, SegmentationOptions};
use pretext::train::pretrain::PretrainOptions;

#[test]
fn an_unknown_option_names_the_valid_keys_and_the_closest() {
    let e = eval_err("pretrain(\"rotation\", [zeros([8, 8, 8])], [0], #{ epoch: 3 })");
    assert!(
        e.contains("unknown option `epoch`")
            && e.contains("did you mean `epochs`?")
            && e.contains("val_fraction"),
        "{e}"
    );
}

#[test]
fn an_unknown_nested_option_is_named_with_its_path() {
    let e = eval_err("pretrain(\"rotation\", [zeros([8, 8, 8])], [0], #{ unet: #{ filtres: 2 } })");
    assert!(
        e.contains("unknown option `unet.filtres`") && e.contains("did you mean `unet.filters`?"),
        "{e}"
    );
    let e = eval_err(
        "pretext_batch(\"exemplar\", [zeros([8, 8, 8])], #{ exemplar: #{ negativs: \"batch\" } })",
    );
    assert!(e.contains("`exemplar.negatives`"), "{e}");
}

#[test]
fn a_value_of_the_wrong_type_names_its_key_and_the_expected_type() {
    let e = eval_err("unet3d(#{ filters: 2.5 })");
    assert!(e.contains("option `filters` must be an INT"), "{e}");
    let e = eval_err("pancreas(#{ clip: [0, \"a\"] })");
    assert!(e.contains("option `clip[1]` must be a FLOAT"), "{e}");
    let e = eval_err("finetune_grading(fundus(#{}), #{ encoding: \"one_hot\" })");
    assert!(
        e.contains("`encoding`") && e.contains("\"cumulative\" | \"softmax\""),
        "{e}"
    );
}

#[test]
fn the_unet_seed_is_not_an_option_of_training_functions() {
    // It used to be accepted and then silently replaced by the run's seed.
    let e = eval_err("pretrain(\"rotation\", [zeros([8, 8, 8])], [0], #{ unet: #{ seed: 4 } })");
    assert!(e.contains("unknown option `unet.seed`"), "{e}");
}

#[test]
fn negative_seeds_are_errors_everywhere() {
    for code in [
        "unet3d(#{ seed: -1 })",
        "rand([2], -3)",
        "split_train_test(10, 0.2, -1)",
        "permutations(10, 9, \"random\", -2)",
    ] {
        let e = eval_err(code);
        assert!(e.contains("seed") && e.contains('-'), "{code}: {e}");
    }
}

#[test]
fn a_warm_up_as_long_as_the_run_is_refused() {
    let o = SegmentationOptions {
        common: FinetuneOptions {
            train: vec![0, 1],
            test: vec![2],
            epochs: Some(3),
            ..Default::default()
        },
        ..Default::default()
    };
    // The paper's warm-up (25 epochs) with 3 epochs would keep the encoder frozen throughout.
    let e = o.resolve(0).unwrap_err().to_string();
    assert!(e.contains("warm-up of 25 epochs in 3"), "{e}");
    let ok = SegmentationOptions {
        common: FinetuneOptions {
            warmup: Some(2),
            ..o.common.clone()
        },
        ..o
    };
    assert_eq!(ok.resolve(0).unwrap().1.schedule.warmup_epochs, 2);
}

#[test]
fn training_and_test_items_must_be_given_and_disjoint() {
    let base = FinetuneOptions {
        train: vec![0, 1, 2],
        test: vec![2, 3],
        ..Default::default()
    };
    let g = |common: FinetuneOptions| {
        GradingOptions {
            common,
            ..Default::default()
        }
        .resolve(0)
        .map(|_| ())
        .unwrap_err()
        .to_string()
    };
    assert!(g(base.clone()).contains("items [2] are both"), "overlap");
    let empty_test = FinetuneOptions {
        test: vec![],
        ..base.clone()
    };
    assert!(g(empty_test).contains("at least one test item"));
    let empty_train = FinetuneOptions {
        train: vec![],
        ..base
    };
    assert!(g(empty_train).contains("at least one training item"));
}

#[test]
fn unset_options_take_the_papers_values_for_the_data_kind() {
    use pretext::pretext::Task;
    let o = PretrainOptions::default();
    let volumes = o.resolve(Task::Rotation, false, 7).unwrap();
    let images = o.resolve(Task::Rotation, true, 7).unwrap();
    assert_eq!(volumes.train.adam.lr, 1e-4);
    assert_eq!(images.train.adam.lr, 1e-5);
    assert_eq!(volumes.train.epochs, 1000);
    assert_eq!(volumes.head.hidden, vec![2048, 1024]);
    assert_eq!(
        volumes.train.seed, 7,
        "the master seed stands in for an unset seed"
    );
    let seg = SegmentationOptions {
        common: FinetuneOptions {
            train: vec![0],
            test: vec![1],
            ..Default::default()
        },
        ..Default::default()
    };
    let (_, cfg) = seg.resolve(0).unwrap();
    assert_eq!(
        (
            cfg.schedule.epochs,
            cfg.schedule.warmup_epochs,
            cfg.schedule.adam.clip_norm
        ),
        (400, 25, Some(1.0))
    );
    let (_, cfg) = GradingOptions {
        common: seg.common,
        ..Default::default()
    }
    .resolve(0)
    .unwrap();
    assert_eq!(
        (
            cfg.schedule.epochs,
            cfg.schedule.adam.lr,
            cfg.schedule.adam.clip_norm
        ),
        (20, 5e-5, None)
    );
}

#[test]
fn every_option_has_a_type_and_a_meaning_in_the_reference() {
    for (name, rows) in [
        ("pretrain", option_docs::<PretrainOptions>()),
        (
            "finetune_segmentation",
            option_docs::<SegmentationOptions>(),
        ),
        ("finetune_grading", option_docs::<GradingOptions>()),
    ] {
        assert!(rows.len() > 15, "{name}: {} rows", rows.len());
        for r in &rows {
            assert!(!r.doc.is_empty() && !r.ty.is_empty(), "{name}: {r:?}");
        }
    }
    let pre = option_docs::<PretrainOptions>();
    let epochs = pre.iter().find(|r| r.key == "epochs").unwrap();
    assert_eq!(
        (epochs.ty.as_str(), epochs.default.as_str()),
        ("INT", "1000")
    );
    assert!(pre.iter().any(|r| r.key == "task.exemplar.negatives"));
    let md =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/scripting.md")).unwrap();
    assert!(md.contains("### Options of `finetune_segmentation`"));
    assert!(md.contains("| `warmup` | INT or () | `()` |"), "warmup row");
}

fn fig3(args: &[&str]) -> String {
    let mut v = vec![
        "run",
        "examples/fig3_pancreas.rhai",
        "--set",
        "profile=test",
    ];
    v.extend(args);
    let o = pretext(&v, None);
    assert!(!o.status.success(), "{args:?} ran");
    stderr(&o)
}

#[test]
fn set_keys_that_match_nothing_fail_before_any_cell_runs() {
    let e = fig3(&["--set", "sedes=[1]"]);
    assert!(
        e.contains("unknown option `sedes`") && e.contains("did you mean `seeds`?"),
        "{e}"
    );
    let e = fig3(&["--set", "Data.root=/x"]);
    assert!(e.contains("did you mean `data`?"), "{e}");
    let e = fig3(&["--set", "data_root=/x"]);
    assert!(e.contains("unknown option `data_root`"), "{e}");
    // Keys inside a section are checked against the function that reads it, at any depth.
    let e = fig3(&["--set", "pretrain.task.jiter=2"]);
    assert!(
        e.contains("`task.jiter`") && e.contains("did you mean `task.jitter`?"),
        "{e}"
    );
    let e = fig3(&["--set", "finetune.warmpu=2"]);
    assert!(e.contains("did you mean `warmup`?"), "{e}");
    // A task typo is caught before the baseline's cells run.
    let e = fig3(&["--set", "tasks=[\"baseline\", \"rotaton\"]"]);
    assert!(
        e.contains("unknown task \"rotaton\"") && e.contains("did you mean \"rotation\"?"),
        "{e}"
    );
    assert!(!e.contains("finetune"), "no cell ran: {e}");
}

#[test]
fn a_pretraining_folder_records_its_configuration_and_finetuning_names_a_backbone_that_differs() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("rot");
    let data = tempfile::tempdir().unwrap();
    let script = format!(
        r#"
        let d = pancreas(#{{ data: "{data}", shape: [16, 16, 16],
                             synthetic: #{{ labelled: 6, unlabelled: 2, shape: [24, 24, 16], seed: 7 }} }});
        let r = pretrain("rotation", d, [0, 1, 2, 3], #{{ epochs: 1, batch: 2, head: [8],
                         unet: #{{ filters: 2, depth: 2 }}, out: "{out}" }});
        finetune_segmentation(d, #{{ init: r.best, train: [0, 1], test: [2], epochs: 1, warmup: 0,
                                    unet: #{{ filters: 4, depth: 2 }} }})
        "#,
        data = data.path().display(),
        out = out.display()
    );
    let e = eval_err(&script);
    assert!(
        e.contains("pretrained with unet.filters = 2") && e.contains("unet.filters = 4"),
        "{e}"
    );
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["options"]["unet"]["filters"], 2);
    assert_eq!(config["resolved"]["train"]["epochs"], 1);
    assert_eq!(config["resolved"]["tasks"][0]["task"], "rotation");
}

#[test]
fn the_densenet_convention_is_an_option_and_the_paper_fundus_profile_follows_keras() {
    let show = |expr: &str| eval_show(&format!("import \"profiles\" as p; {expr}"));
    assert_eq!(show("p::fundus(\"paper\").densenet.convention"), "keras");
    // The quick and test profiles keep torchvision's constants (the default).
    for profile in ["quick", "test"] {
        let has = show(&format!(
            "\"convention\" in p::fundus(\"{profile}\").densenet"
        ));
        assert_eq!(has, "false", "{profile}");
    }
    let e = eval_err(
        "densenet(#{ growth: 2, blocks: [1], init_features: 2, bn_size: 1, convention: \"tf\" })",
    );
    assert!(
        e.contains("`convention`") && e.contains("\"torchvision\" | \"keras\""),
        "{e}"
    );
    let rows = option_docs::<GradingOptions>();
    let row = rows
        .iter()
        .find(|r| r.key == "densenet.convention")
        .unwrap();
    assert_eq!(row.default, "\"torchvision\"");
}

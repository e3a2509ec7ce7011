//! Joint multi-task pretraining and pretext heads on intermediate encoder levels: the joint
//! loss is the weighted sum of what the single-task models compute with the same weights, a
//! multi-level head's loss is the mean of the single-level heads' losses, joint runs train and
//! log every task, and bad settings are refused with the option's name.

mod common;
use candle_core::{DType, Device};
use common::volumes::{image, volume};
use common::{eval_err, eval_show};
use pretext::data::Grid;
use pretext::nn::{
    DenseNetConfig, GlobalPool, LoadOptions, MlpHeadConfig, ParamStore, UNet3dConfig,
};
use pretext::pretext::model::{BackboneConfig, HeadSpec};
use pretext::pretext::{Batch, PretextModel, Sampler, Task, TaskConfig};
use pretext::train::pretrain::{PretrainOptions, Pretrainer, RunFiles, read_log};

fn unet() -> BackboneConfig {
    BackboneConfig::Unet(UNet3dConfig {
        filters: 4,
        depth: 1,
        dropout: 0.0,
        momentum: 0.1,
        ..Default::default()
    })
}

fn head() -> MlpHeadConfig {
    MlpHeadConfig {
        hidden: vec![16],
        dropout: 0.0,
        seed: 0,
        momentum: 0.1,
    }
}

fn sampler(task: Task, g: &Grid) -> Sampler {
    let mut cfg = TaskConfig::new(task);
    cfg.options.jitter = Some(1);
    cfg.options.exemplar.code = 8;
    cfg.options.cpc.code = 8;
    cfg.options.cpc.hidden = 8;
    Sampler::new(&cfg, g.c, g.dims).unwrap()
}

/// The model of `specs` with its store, initialised from seed 5.
fn model(specs: &[HeadSpec], backbone: &BackboneConfig) -> (PretextModel, ParamStore) {
    let store = ParamStore::new(5);
    let m = PretextModel::with_heads(
        specs,
        backbone,
        &head(),
        store.builder(DType::F32, &Device::Cpu),
    )
    .unwrap();
    (m, store)
}

/// A single-task model holding the weights `store` saved, its head's names renamed.
fn single_from(
    store: &ParamStore,
    spec: HeadSpec,
    backbone: &BackboneConfig,
    rename: &[(&str, &str)],
) -> PretextModel {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("joint.safetensors");
    store.save(&path, &serde_json::json!({})).unwrap();
    let (single, s) = model(&[spec], backbone);
    let report = s
        .load(
            &path,
            &LoadOptions {
                prefix: None,
                rename: rename
                    .iter()
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .collect(),
            },
        )
        .unwrap();
    assert!(report.missing.is_empty(), "{:?}", report.missing);
    single
}

fn loss(out: &candle_core::Tensor) -> f64 {
    out.to_dtype(DType::F64)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

fn batch(s: &Sampler, data: &[Grid], seed: u64) -> Batch {
    s.batch(&data.to_vec(), &[0, 1, 2, 3], seed, true).unwrap()
}

#[test]
fn the_joint_loss_is_the_weighted_sum_of_the_single_task_losses_on_one_batch() {
    let data: Vec<Grid> = (0..4).map(|s| volume(24, s)).collect();
    let tasks = [Task::Rotation, Task::Rpl, Task::Exemplar, Task::Cpc];
    let weights = [0.3, 1.7, 0.5, 2.0];
    let samplers: Vec<Sampler> = tasks.iter().map(|&t| sampler(t, &data[0])).collect();
    let specs: Vec<HeadSpec> = samplers
        .iter()
        .zip(weights)
        .map(|(sampler, weight)| HeadSpec {
            sampler,
            weight,
            levels: &[],
        })
        .collect();
    let (joint, store) = model(&specs, &unet());
    let batches: Vec<Batch> = samplers
        .iter()
        .enumerate()
        .map(|(i, s)| batch(s, &data, 10 + i as u64))
        .collect();
    let parts: Vec<(usize, &Batch)> = batches.iter().enumerate().collect();
    let (total, outs) = joint.joint_step(&parts, &Device::Cpu, false).unwrap();
    let mut expected = 0.0;
    for (t, task) in tasks.iter().enumerate() {
        let prefix = format!("head.{}.", task.name());
        let single = single_from(
            &store,
            HeadSpec {
                sampler: &samplers[t],
                weight: 1.0,
                levels: &[],
            },
            &unet(),
            &[(prefix.as_str(), "head.")],
        );
        let alone = single.step(&batches[t], &Device::Cpu, false).unwrap();
        let l = loss(&alone.loss);
        assert!(
            (loss(&outs[t].loss) - l).abs() <= 1e-6 * l.abs().max(1.0),
            "{}: joint head {} vs single-task model {l}",
            task.name(),
            loss(&outs[t].loss)
        );
        assert_eq!(outs[t].accuracy, alone.accuracy, "{}", task.name());
        expected += weights[t] * l;
    }
    let total = loss(&total);
    assert!(
        (total - expected).abs() <= 1e-6 * expected.abs(),
        "joint loss {total} vs weighted sum {expected}"
    );
}

#[test]
fn a_head_on_several_levels_takes_the_mean_of_the_single_level_losses() {
    let data: Vec<Grid> = (0..4).map(|s| volume(16, s)).collect();
    let s = sampler(Task::Rotation, &data[0]);
    let spec = |levels: &'static [usize]| HeadSpec {
        sampler: &s,
        weight: 1.0,
        levels,
    };
    let (both, store) = model(&[spec(&[0, 1])], &unet());
    let names: Vec<String> = store
        .trainable("head.")
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert!(
        names.iter().any(|n| n.starts_with("head.level0.")),
        "{names:?}"
    );
    assert!(
        names.iter().any(|n| n.starts_with("head.level1.")),
        "{names:?}"
    );
    let b = batch(&s, &data, 3);
    let out = both.step(&b, &Device::Cpu, false).unwrap();
    // Level 0 alone keeps its level name; level 1 is the last level, O's, named `head.`.
    let shallow = single_from(&store, spec(&[0]), &unet(), &[]);
    let deep = single_from(&store, spec(&[]), &unet(), &[("head.level1.", "head.")]);
    let l0 = loss(&shallow.step(&b, &Device::Cpu, false).unwrap().loss);
    let l2 = loss(&deep.step(&b, &Device::Cpu, false).unwrap().loss);
    let l = loss(&out.loss);
    assert!(
        (l - (l0 + l2) / 2.0).abs() <= 1e-6 * l,
        "two-level loss {l} vs levels {l0}, {l2}"
    );
    assert!((l0 - l2).abs() > 1e-4, "the levels read different features");
}

#[test]
fn a_densenet_head_reads_an_earlier_dense_block() {
    let data: Vec<Grid> = (0..4).map(|s| image(3, 32, s)).collect();
    let s = sampler(Task::Rotation, &data[0]);
    let backbone = BackboneConfig::Dense(
        DenseNetConfig {
            growth: 4,
            blocks: vec![2, 2],
            init_features: 8,
            bn_size: 2,
            ..Default::default()
        },
        GlobalPool::Max,
    );
    let (m, store) = model(
        &[HeadSpec {
            sampler: &s,
            weight: 1.0,
            levels: &[0, 1],
        }],
        &backbone,
    );
    // Block 0 ends with 8 + 2·4 = 16 channels, block 1 (after the transition halves them)
    // with 8 + 2·4 = 16: the first hidden layer reads 16 features at either level.
    let fc = store
        .trainable("head.level0.fc0")
        .into_iter()
        .find(|(n, _)| n.ends_with("weight"))
        .unwrap();
    assert_eq!(fc.1.as_tensor().dims(), [16, 16]);
    let out = m.step(&batch(&s, &data, 1), &Device::Cpu, true).unwrap();
    assert!(loss(&out.loss).is_finite());
}

#[test]
fn joint_pretraining_trains_every_head_and_logs_each_task() {
    let data: Vec<Grid> = (0..10).map(|s| volume(24, s)).collect();
    let mut o = PretrainOptions {
        epochs: 3,
        batch: Some(4),
        lr: Some(3e-3),
        val_fraction: 0.2,
        unet: UNet3dConfig {
            filters: 4,
            depth: 1,
            dropout: 0.0,
            momentum: 0.1,
            ..Default::default()
        },
        head: vec![16],
        ..Default::default()
    };
    o.task.jitter = Some(1);
    o.multi.tasks = vec![Task::Rotation, Task::Rpl, Task::Jigsaw];
    o.multi.weights = vec![1.0, 0.5, 0.25];
    let plan = o.resolve_named("multi", false, 0).unwrap();
    assert_eq!(plan.name(), "multi");
    let p = Pretrainer::from_plan(&plan, (1, [24; 3]), &Device::Cpu).unwrap();
    let before: Vec<(String, Vec<f32>)> = values(&p.store);
    let dir = tempfile::tempdir().unwrap();
    let files = RunFiles {
        dir: dir.path().to_path_buf(),
        manifest: serde_json::json!({"task": "multi"}),
    };
    let report = p
        .run(&data, &plan.train, Some(&files), &mut |_, _| {})
        .unwrap();
    let log = read_log(&dir.path().join(RunFiles::LOG)).unwrap();
    assert_eq!(log.len(), 3);
    for e in &log {
        let tasks = e.tasks.as_ref().expect("per-task numbers");
        assert_eq!(
            tasks.keys().map(String::as_str).collect::<Vec<_>>(),
            ["jigsaw", "rotation", "rpl"]
        );
        let weighted = tasks["rotation"].val_loss
            + 0.5 * tasks["rpl"].val_loss
            + 0.25 * tasks["jigsaw"].val_loss;
        assert!((e.val_loss - weighted).abs() <= 1e-9 * weighted, "{e:?}");
        let mean_acc = tasks.values().map(|t| t.val_accuracy).sum::<f64>() / 3.0;
        assert!((e.val_accuracy - mean_acc).abs() < 1e-12);
    }
    assert_eq!(report.epochs, log);
    // Every head and the shared encoder moved.
    for ((name, a), (_, b)) in before.iter().zip(values(&p.store)) {
        assert!(a != &b, "{name} did not move");
    }
    // The checkpoint initialises a segmentation UNet's encoder.
    let best = report.best_checkpoint.unwrap();
    let seg = ParamStore::new(0);
    let _net = pretext::nn::UNet3d::new(&o.unet, seg.builder(DType::F32, &Device::Cpu)).unwrap();
    let r = seg
        .load(
            &best,
            &LoadOptions {
                prefix: Some("encoder.".into()),
                ..Default::default()
            },
        )
        .unwrap();
    assert!(!r.loaded.is_empty() && r.missing.is_empty() && r.mismatched.is_empty());
}

fn values(store: &ParamStore) -> Vec<(String, Vec<f32>)> {
    store
        .trainable("")
        .into_iter()
        .map(|(n, v)| {
            let t = v
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            (n, t)
        })
        .collect()
}

#[test]
fn the_alternate_schedule_takes_one_task_per_step() {
    let data: Vec<Grid> = (0..10).map(|s| volume(16, s)).collect();
    let mut o = PretrainOptions {
        epochs: 1,
        batch: Some(4),
        val_fraction: 0.2,
        steps: Some(5),
        unet: UNet3dConfig {
            filters: 4,
            depth: 2,
            dropout: 0.0,
            ..Default::default()
        },
        head: vec![8],
        ..Default::default()
    };
    o.multi.tasks = vec![Task::Rotation, Task::Exemplar];
    let together = o.resolve_named("multi", false, 0).unwrap();
    o.multi.schedule = pretext::train::pretrain::Schedule::Alternate;
    let alternate = o.resolve_named("multi", false, 0).unwrap();
    // 8 training items in batches of 4: 2 rounds an epoch. Together, a round is one step, so
    // 5 steps take 3 epochs; alternating, a round is two steps, so 5 steps take 2 epochs.
    for (plan, epochs) in [(together, 3), (alternate, 2)] {
        let p = Pretrainer::from_plan(&plan, (1, [16; 3]), &Device::Cpu).unwrap();
        let r = p.run(&data, &plan.train, None, &mut |_, _| {}).unwrap();
        assert_eq!(r.epochs.len(), epochs, "{:?}", plan.schedule);
    }
}

#[test]
fn bad_joint_and_level_settings_name_the_option() {
    let data = "let d = pancreas(#{ root: \"\", shape: [16, 16, 16], synthetic: #{ labelled: 3, unlabelled: 1, shape: [16, 16, 16], seed: 1 } });";
    let cases = [
        (
            "pretrain(\"multi\", d, [0, 1, 2], #{ multi: #{ tasks: [\"rotation\"] } })",
            "at least two tasks",
        ),
        (
            "pretrain(\"multi\", d, [0, 1, 2], #{ multi: #{ tasks: [\"rotation\", \"rotation\"] } })",
            "listed twice",
        ),
        (
            "pretrain(\"multi\", d, [0, 1, 2], #{ multi: #{ tasks: [\"rotation\", \"rpl\"], weights: [1.0] } })",
            "one weight per task",
        ),
        (
            "pretrain(\"multi\", d, [0, 1, 2], #{ multi: #{ tasks: [\"rotation\", \"rpl\"], options: #{ cpc: #{} } } })",
            "`cpc` is not one of the joint tasks",
        ),
        (
            "pretrain(\"rotation\", d, [0, 1, 2], #{ multi: #{ tasks: [\"rotation\", \"rpl\"] } })",
            "not for task rotation",
        ),
        (
            "pretrain(\"exemplar\", d, [0, 1, 2], #{ levels: [0], unet: #{ filters: 2, depth: 1 } })",
            "levels are for rotation, jigsaw and rpl",
        ),
        (
            "pretrain(\"rotation\", d, [0, 1, 2], #{ levels: [5], unet: #{ filters: 2, depth: 1 } })",
            "levels 0 to 1, got 5",
        ),
        (
            "pretrain(\"mutli\", d, [0, 1, 2], #{})",
            "rotation, jigsaw, rpl, exemplar, cpc or multi",
        ),
    ];
    for (call, want) in cases {
        let e = eval_err(&format!("{data} {call}"));
        assert!(e.contains(want), "{call}: {e}");
    }
}

#[test]
fn a_script_pretrains_the_multi_arm_and_names_it_in_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("multi");
    let shown = eval_show(&format!(
        "let d = pancreas(#{{ root: \"\", shape: [16, 16, 16], synthetic: #{{ labelled: 4, unlabelled: 2, shape: [16, 16, 16], seed: 1 }} }});
         let r = pretrain(\"multi\", d, [0, 1, 2, 3, 4, 5], #{{ epochs: 1, steps_per_epoch: 1, batch: 2, head: [8],
             unet: #{{ filters: 2, depth: 1 }}, multi: #{{ tasks: [\"rotation\", \"cpc\"], schedule: \"alternate\" }},
             out: \"{}\" }});
         r.epochs[0].tasks.keys()",
        out.display()
    ));
    assert!(
        shown.contains("rotation") && shown.contains("cpc"),
        "{shown}"
    );
    let m = ParamStore::manifest(out.join("best.safetensors")).unwrap();
    assert_eq!(m["task"], "multi");
    assert_eq!(m["schedule"], "alternate");
    assert_eq!(m["task_config"][1]["task"], "cpc");
}

#[test]
fn joint_pretraining_runs_on_images_with_a_densenet() {
    let data: Vec<Grid> = (0..10).map(|s| image(3, 32, s)).collect();
    let mut o = PretrainOptions {
        epochs: 2,
        batch: Some(4),
        val_fraction: 0.2,
        densenet: pretext::pretext::model::DenseOptions {
            net: DenseNetConfig {
                growth: 4,
                blocks: vec![2, 2],
                init_features: 8,
                bn_size: 2,
                ..Default::default()
            },
            pool: None,
        },
        head: vec![8],
        levels: vec![0, 1],
        ..Default::default()
    };
    o.multi.tasks = vec![Task::Rotation, Task::Exemplar];
    let plan = o.resolve_named("multi", true, 0).unwrap();
    let p = Pretrainer::from_plan(&plan, (3, [1, 32, 32]), &Device::Cpu).unwrap();
    let names: Vec<String> = p
        .store
        .trainable("head.")
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    // Rotation reads both dense blocks; exemplar reads the last only.
    assert!(
        names.iter().any(|n| n.starts_with("head.rotation.level0.")),
        "{names:?}"
    );
    assert!(
        names.iter().any(|n| n.starts_with("head.rotation.level1.")),
        "{names:?}"
    );
    assert!(
        names.iter().any(|n| n.starts_with("head.exemplar.code0.")),
        "{names:?}"
    );
    let r = p.run(&data, &plan.train, None, &mut |_, _| {}).unwrap();
    let tasks = r.epochs[1].tasks.as_ref().unwrap();
    assert!(tasks["rotation"].loss.is_finite() && tasks["exemplar"].loss.is_finite());
}

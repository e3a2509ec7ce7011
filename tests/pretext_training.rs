//! A tiny pretraining run per task on structured synthetic volumes (and images): the loss falls
//! and the pretext accuracy ends clearly above chance; logs and checkpoints are written.

mod common;
use candle_core::Device;
use common::volumes::{image, volume};
use pretext::nn::{DenseNetConfig, GlobalPool, MlpHeadConfig, ParamStore, UNet3dConfig};
use pretext::pretext::model::BackboneConfig;
use pretext::pretext::{Grid, Task, TaskConfig};
use pretext::train::optim::AdamConfig;
use pretext::train::pretrain::{EpochLog, PretrainConfig, Pretrainer, RunFiles, read_log};

fn unet() -> BackboneConfig {
    BackboneConfig::Unet(UNet3dConfig {
        filters: 4,
        depth: 2,
        dropout: 0.0,
        ..Default::default()
    })
}

fn head() -> MlpHeadConfig {
    MlpHeadConfig {
        hidden: vec![32],
        dropout: 0.0,
        seed: 0,
        momentum: 0.1,
    }
}

fn run(
    cfg: TaskConfig,
    data: Vec<Grid>,
    backbone: BackboneConfig,
    epochs: usize,
    bs: usize,
    files: Option<&RunFiles>,
) -> Vec<EpochLog> {
    let g = &data[0];
    let p = Pretrainer::new(&cfg, &backbone, &head(), (g.c, g.dims), 3, &Device::Cpu).unwrap();
    let pc = PretrainConfig {
        epochs,
        batch_size: Some(bs),
        adam: AdamConfig::with_lr(3e-3),
        val_fraction: 0.15,
        steps_per_epoch: None,
        seed: 1,
    };
    p.run(&data, &pc, files, &mut |_, _| {}).unwrap().epochs
}

/// The loss must fall and the mean training accuracy of the last three epochs reach `floor`
/// (chosen clearly above the task's chance level).
fn check(task: &str, log: &[EpochLog], chance: f64, floor: f64) {
    let (first, last) = (&log[0], log.last().unwrap());
    let tail: f64 = log.iter().rev().take(3).map(|e| e.accuracy).sum::<f64>() / 3.0;
    eprintln!(
        "{task}: loss {:.3} -> {:.3}, accuracy {:.2} -> {:.2} (last 3 {tail:.2}), chance {chance:.2}",
        first.loss, last.loss, first.accuracy, last.accuracy
    );
    assert!(
        last.loss < first.loss,
        "{task}: loss did not fall ({} -> {})",
        first.loss,
        last.loss
    );
    assert!(
        floor > chance && tail >= floor,
        "{task}: accuracy {tail} below {floor} (chance {chance})"
    );
}

#[test]
fn rotation_pretraining_learns_and_writes_logs_and_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let files = RunFiles {
        dir: dir.path().to_path_buf(),
        manifest: serde_json::json!({"task": "rotation"}),
    };
    let data = (0..40).map(|s| volume(16, s)).collect();
    let log = run(
        TaskConfig::new(Task::Rotation),
        data,
        unet(),
        20,
        4,
        Some(&files),
    );
    check("rotation", &log, 0.1, 0.25);
    let read = read_log(&dir.path().join("log.jsonl")).unwrap();
    assert_eq!(read.len(), log.len());
    for (a, b) in read.iter().zip(&log) {
        assert_eq!(a.epoch, b.epoch);
        assert!(
            (a.loss - b.loss).abs() <= 1e-12 * b.loss.abs()
                && (a.val_loss - b.val_loss).abs() <= 1e-12 * b.val_loss.abs()
        );
    }
    for f in ["best.safetensors", "last.safetensors"] {
        assert_eq!(
            ParamStore::manifest(dir.path().join(f)).unwrap()["task"],
            "rotation",
            "{f}"
        );
    }
}

#[test]
fn jigsaw_pretraining_learns() {
    let mut cfg = TaskConfig::new(Task::Jigsaw);
    cfg.options.permutations = 8;
    let data = (0..20).map(|s| volume(33, s)).collect();
    check(
        "jigsaw",
        &run(cfg, data, unet(), 10, 4, None),
        1.0 / 8.0,
        0.5,
    );
}

#[test]
fn rpl_pretraining_learns() {
    let data = (0..64).map(|s| volume(33, s)).collect();
    check(
        "rpl",
        &run(TaskConfig::new(Task::Rpl), data, unet(), 80, 8, None),
        1.0 / 26.0,
        0.1,
    );
}

#[test]
fn exemplar_pretraining_learns() {
    let data = (0..16).map(|s| volume(16, s)).collect();
    check(
        "exemplar",
        &run(TaskConfig::new(Task::Exemplar), data, unet(), 10, 4, None),
        0.5,
        0.8,
    );
}

#[test]
fn cpc_pretraining_learns() {
    let data = (0..8).map(|s| volume(32, s)).collect();
    check(
        "cpc",
        &run(TaskConfig::new(Task::Cpc), data, unet(), 16, 1, None),
        0.5,
        0.62,
    );
}

#[test]
fn rotation_pretraining_on_2d_images_with_a_small_densenet_learns() {
    let dense = BackboneConfig::Dense(
        DenseNetConfig {
            in_channels: 3,
            growth: 4,
            blocks: vec![2, 2],
            init_features: 8,
            bn_size: 2,
        },
        GlobalPool::Max,
    );
    let data = (0..20).map(|s| image(3, 32, s)).collect();
    check(
        "rotation 2d",
        &run(TaskConfig::new(Task::Rotation), data, dense, 40, 8, None),
        0.25,
        0.45,
    );
}

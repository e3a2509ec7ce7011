//! Finetuning: segmentation and grading learn on structured synthetic data, a pretext
//! checkpoint's encoder is loaded and stays frozen (BatchNorm statistics included) during the
//! warm-up, and a NaN loss stops the run with an error that says where.

mod common;
use candle_core::Device;
use common::volumes::{image, volume};
use pretext::data::Grid;
use pretext::nn::loss::DiceVariant;
use pretext::nn::{
    DenseNetConfig, GlobalPool, LoadOptions, MlpHeadConfig, ParamStore, UNet3dConfig,
};
use pretext::pretext::model::BackboneConfig;
use pretext::pretext::{Task, TaskConfig};
use pretext::train::finetune::{
    ClassificationConfig, EncoderInit, GradeEncoding, Schedule, SegmentationConfig,
    finetune_classification, finetune_segmentation,
};
use pretext::train::optim::AdamConfig;
use pretext::train::pretrain::{PretrainConfig, Pretrainer, RunFiles};

/// A small UNet; BatchNorm momentum 0.1 because Keras' 0.01 leaves the running statistics
/// that evaluation uses unconverged after this few steps (pancreas Dice 0.03–0.44 over six
/// seeds at 0.01, 0.55–0.82 at 0.1).
fn small_unet() -> UNet3dConfig {
    UNet3dConfig {
        filters: 4,
        depth: 2,
        dropout: 0.0,
        momentum: 0.1,
        ..Default::default()
    }
}

fn schedule(epochs: usize, warmup: usize, bs: usize, lr: f64) -> Schedule {
    Schedule {
        epochs,
        warmup_epochs: warmup,
        batch_size: bs,
        adam: AdamConfig::with_lr(lr).clipped(),
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
    }
}

/// Volumes whose labels are their bright regions (1) and brightest cores (2).
fn labelled(n: usize, size: usize) -> Vec<(Grid, Vec<u8>)> {
    (0..n as u64)
        .map(|s| {
            let v = volume(size, 100 + s);
            let l = v
                .data
                .iter()
                .map(|&x| {
                    if x > 0.8 {
                        2
                    } else if x > 0.55 {
                        1
                    } else {
                        0
                    }
                })
                .collect();
            (v, l)
        })
        .collect()
}

#[test]
fn segmentation_finetuning_learns_the_labels() {
    let data = labelled(10, 16);
    let cfg = SegmentationConfig {
        unet: small_unet(),
        schedule: schedule(25, 0, 2, 1e-2),
        dice: DiceVariant::Batch,
        absent: Default::default(),
    };
    let train: Vec<usize> = (0..8).collect();
    let r = finetune_segmentation(
        &EncoderInit::Random,
        &cfg,
        &data,
        (&train, &[8, 9]),
        &Device::Cpu,
        &mut |_, _| {},
    )
    .unwrap();
    eprintln!(
        "dice {:?} mean {:.3}, loss {:.3} -> {:.3}",
        r.dice,
        r.dice_mean,
        r.log.losses[0],
        r.log.losses.last().unwrap()
    );
    assert_eq!(r.dice.len(), 3);
    assert!(r.log.losses.last().unwrap() < &r.log.losses[0]);
    assert!(r.dice[1] > 0.5 && r.dice_mean > 0.6, "{:?}", r.dice);
    assert!(r.load.is_none());
}

#[test]
fn a_pretext_encoder_is_loaded_and_stays_frozen_during_the_warm_up() {
    let dir = tempfile::tempdir().unwrap();
    let pre = Pretrainer::new(
        &TaskConfig::new(Task::Rotation),
        &BackboneConfig::Unet(small_unet()),
        &MlpHeadConfig {
            hidden: vec![16],
            dropout: 0.0,
            seed: 0,
            momentum: 0.1,
        },
        (1, [16; 3]),
        5,
        &Device::Cpu,
    )
    .unwrap();
    let vols: Vec<Grid> = (0..8).map(|s| volume(16, s)).collect();
    let files = RunFiles {
        dir: dir.path().to_path_buf(),
        manifest: serde_json::json!({}),
    };
    let pc = PretrainConfig {
        epochs: 1,
        batch_size: Some(4),
        ..Default::default()
    };
    let report = pre.run(&vols, &pc, Some(&files), &mut |_, _| {}).unwrap();
    let ckpt = report.last_checkpoint.unwrap();

    let data = labelled(4, 16);
    let saved = dir.path().join("finetuned.safetensors");
    // Every epoch is a warm-up epoch: nothing of the encoder may change.
    let mut sched = schedule(3, 3, 2, 1e-2);
    sched.save = Some(saved.clone());
    let cfg = SegmentationConfig {
        unet: small_unet(),
        schedule: sched,
        dice: DiceVariant::PerSample,
        absent: Default::default(),
    };
    let r = finetune_segmentation(
        &EncoderInit::Checkpoint(ckpt.clone()),
        &cfg,
        &data,
        (&[0, 1, 2], &[3]),
        &Device::Cpu,
        &mut |_, _| {},
    )
    .unwrap();
    let load = r.load.unwrap();
    assert!(load.is_complete() && !load.loaded.is_empty(), "{load:?}");
    assert!(load.loaded.iter().all(|n| n.starts_with("encoder.")));

    let after = ParamStore::new(0);
    pretext::nn::UNet3d::new(
        &small_unet(),
        after.builder(candle_core::DType::F32, &Device::Cpu),
    )
    .unwrap();
    after.load(&saved, &LoadOptions::default()).unwrap();
    let before = ParamStore::new(0);
    pretext::nn::UNet3d::new(
        &small_unet(),
        before.builder(candle_core::DType::F32, &Device::Cpu),
    )
    .unwrap();
    before
        .load(
            &ckpt,
            &LoadOptions {
                prefix: Some("encoder.".into()),
                ..Default::default()
            },
        )
        .unwrap();
    for (name, var) in before
        .all()
        .into_iter()
        .filter(|(n, _)| n.starts_with("encoder."))
    {
        let a = after.get(&name).unwrap();
        let diff = (a.as_tensor() - var.as_tensor())
            .unwrap()
            .abs()
            .unwrap()
            .sum_all() // not max_all, which skips NaN
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(diff, 0.0, "{name} changed during the frozen warm-up");
    }
    let moved = before
        .all()
        .into_iter()
        .filter(|(n, _)| n.starts_with("decoder.") && n.ends_with("weight"))
        .any(|(n, v)| {
            let d = (after.get(&n).unwrap().as_tensor() - v.as_tensor())
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap();
            d.to_scalar::<f32>().unwrap() > 0.0
        });
    assert!(moved, "the decoder trains during the warm-up");
}

#[test]
fn grading_finetuning_learns_grades_and_reports_kappa() {
    // The grade is the brightness of the image.
    let data: Vec<(Grid, u8)> = (0..60u64)
        .map(|s| {
            let grade = (s % 5) as u8;
            let img = image(3, 32, 200 + s).map(|x| 0.5 * x + 0.1 * grade as f32);
            (img, grade)
        })
        .collect();
    let dense = DenseNetConfig {
        in_channels: 3,
        growth: 4,
        blocks: vec![2, 2],
        init_features: 8,
        bn_size: 2,
        ..Default::default()
    };
    for encoding in [GradeEncoding::Cumulative, GradeEncoding::Softmax] {
        let cfg = ClassificationConfig {
            densenet: dense.clone(),
            pool: GlobalPool::Avg,
            head: MlpHeadConfig {
                hidden: vec![32],
                dropout: 0.0,
                seed: 0,
                momentum: 0.1,
            },
            classes: 5,
            encoding,
            augment: true,
            schedule: schedule(30, 2, 8, 1e-2),
        };
        let train: Vec<usize> = (0..45).collect();
        let test: Vec<usize> = (45..60).collect();
        let r = finetune_classification(
            &EncoderInit::Random,
            &cfg,
            &data,
            (&train, &test),
            &Device::Cpu,
            &mut |_, _| {},
        )
        .unwrap();
        eprintln!(
            "{encoding:?}: qwk {:.3} accuracy {:.3} confusion {:?}",
            r.qwk, r.accuracy, r.confusion.counts
        );
        assert!(r.qwk > 0.5, "{encoding:?}: kappa {}", r.qwk);
        // The confusion matrix counts the test items by their true grade (rows): three of each
        // grade, all of them when every prediction decodes (softmax); a cumulative prediction
        // may decode to -1 and is left out, as scikit-learn does.
        let truth_counts: Vec<u64> = (0..5)
            .map(|g| test.iter().filter(|&&i| data[i].1 == g).count() as u64)
            .collect();
        assert_eq!(truth_counts, vec![3; 5]);
        let rows: Vec<u64> = r.confusion.counts.iter().map(|r| r.iter().sum()).collect();
        let counted: u64 = rows.iter().sum();
        match encoding {
            GradeEncoding::Softmax => assert_eq!(rows, truth_counts, "{encoding:?}"),
            GradeEncoding::Cumulative => {
                assert!(
                    rows.iter().zip(&truth_counts).all(|(a, b)| a <= b),
                    "{rows:?}"
                );
                assert!(counted >= 12, "{encoding:?}: only {counted} of 15 decoded");
            }
        }
        // Accuracy and kappa are those of the matrix, and the grader beats chance (0.2).
        let correct: u64 = (0..5).map(|g| r.confusion.counts[g][g]).sum();
        assert_eq!(r.accuracy, correct as f64 / counted as f64);
        assert_eq!(r.qwk, r.confusion.quadratic_kappa());
        assert!(r.accuracy > 0.5, "{encoding:?}: accuracy {}", r.accuracy);
    }
}

#[test]
fn a_nan_loss_stops_finetuning_and_says_where() {
    let mut data = labelled(3, 16);
    data[0].0.data[5] = f32::NAN;
    let cfg = SegmentationConfig {
        unet: small_unet(),
        schedule: schedule(2, 0, 1, 1e-3),
        dice: DiceVariant::Batch,
        absent: Default::default(),
    };
    let e = finetune_segmentation(
        &EncoderInit::Random,
        &cfg,
        &data,
        (&[0], &[1]),
        &Device::Cpu,
        &mut |_, _| {},
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("non-finite") && e.contains("epoch 1, step 1"),
        "{e}"
    );
    let bad = EncoderInit::Checkpoint("/nonexistent/ckpt.safetensors".into());
    let e = finetune_segmentation(
        &bad,
        &cfg,
        &data,
        (&[0], &[1]),
        &Device::Cpu,
        &mut |_, _| {},
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("/nonexistent/ckpt.safetensors"), "{e}");
}

#[test]
fn a_step_budget_gives_every_fraction_the_same_number_of_steps_and_the_lr_decays() {
    use pretext::train::finetune::LrSchedule;
    let data = labelled(10, 16);
    let mut sched = schedule(1, 0, 2, 1e-2);
    sched.steps = Some(7);
    sched.warmup_steps = 3;
    sched.lr_schedule = LrSchedule::Cosine;
    // 1 item: 7 passes of one step; 8 items: 2 passes (4 + 3 steps).
    assert_eq!(sched.budget(1), (7, 3));
    assert_eq!(sched.passes(1), 7);
    assert_eq!(sched.budget(8), (7, 3));
    assert_eq!(sched.passes(8), 2);
    for (n, passes) in [(1usize, 7usize), (8, 2)] {
        let cfg = SegmentationConfig {
            unet: small_unet(),
            schedule: sched.clone(),
            dice: DiceVariant::Batch,
            absent: Default::default(),
        };
        let train: Vec<usize> = (0..n).collect();
        let r = finetune_segmentation(
            &EncoderInit::Random,
            &cfg,
            &data,
            (&train, &[8, 9]),
            &Device::Cpu,
            &mut |_, _| {},
        )
        .unwrap();
        assert_eq!(r.log.losses.len(), passes, "{n} items");
    }
    // In epochs, the warm-up counts epochs as before.
    let e = schedule(4, 1, 2, 1e-2);
    assert_eq!(e.budget(8), (16, 4));
    assert_eq!(LrSchedule::Cosine.at(1.0, 0, 10), 1.0);
    assert!((LrSchedule::Cosine.at(1.0, 5, 10) - 0.5).abs() < 1e-12);
    assert!((LrSchedule::Linear.at(2.0, 9, 10) - 0.2).abs() < 1e-12);
    let mut bad = sched.clone();
    bad.warmup_steps = 7;
    assert!(
        bad.validate()
            .unwrap_err()
            .to_string()
            .contains("warm-up of 7 steps in 7")
    );
}

#[test]
fn validation_items_are_scored_every_epoch_without_changing_the_training() {
    let data = labelled(12, 16);
    let cfg = |validation: Vec<usize>| SegmentationConfig {
        unet: small_unet(),
        schedule: Schedule {
            validation,
            ..schedule(6, 0, 2, 1e-2)
        },
        dice: DiceVariant::Batch,
        absent: Default::default(),
    };
    let train: Vec<usize> = (0..8).collect();
    let run = |c: &SegmentationConfig| {
        finetune_segmentation(
            &EncoderInit::Random,
            c,
            &data,
            (&train, &[10, 11]),
            &Device::Cpu,
            &mut |_, _| {},
        )
        .unwrap()
    };
    let plain = run(&cfg(Vec::new()));
    let validated = run(&cfg(vec![8, 9]));
    assert!(plain.log.validation.is_empty());
    assert_eq!(validated.log.validation.len(), 6);
    // Scoring in inference mode draws no dropout mask and updates no statistic.
    assert_eq!(plain.log.losses, validated.log.losses);
    assert_eq!(plain.dice, validated.dice);
    // The last epoch's validation score is the Dice of the final model on items 8 and 9,
    // the same computation as the test score on items 10 and 11.
    let on_val = finetune_segmentation(
        &EncoderInit::Random,
        &cfg(Vec::new()),
        &data,
        (&train, &[8, 9]),
        &Device::Cpu,
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(
        validated.log.validation[5]["val_dice_mean"],
        on_val.dice_mean
    );
    assert!(validated.log.validation[0]["val_dice_mean"] != on_val.dice_mean);
}

#[test]
fn a_validation_item_that_is_also_a_training_or_test_item_is_refused() {
    let paper = SegmentationConfig::paper().schedule;
    for val in [vec![1], vec![2]] {
        let o = pretext::train::finetune::FinetuneOptions {
            train: vec![0, 1],
            test: vec![2],
            val,
            ..Default::default()
        };
        let e = o.schedule(&paper, 0).unwrap_err().to_string();
        assert!(
            e.contains("`val`") && e.contains("also a training or test item"),
            "{e}"
        );
    }
    let ok = pretext::train::finetune::FinetuneOptions {
        train: vec![0, 1],
        test: vec![2],
        val: vec![3],
        ..Default::default()
    };
    assert_eq!(ok.schedule(&paper, 0).unwrap().validation, vec![3]);
}

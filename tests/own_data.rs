//! Your own data end to end on real MRI: a folder made from the MNI152 T1 template (crops of it
//! at different positions and contrasts, as different "subjects") with grey/white-matter labels
//! from its tissue maps goes through `nifti_folder`, a short rotation pretraining whose loss
//! falls, finetuning from that checkpoint, and `segment` back onto each case's own grid.
//! Also: the whole path is bit-identical at one and two threads.
//!
//! The MNI files come from scripts/fetch-sample-data.sh; without them the MNI test says so and
//! passes.

mod common;
use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{Device, Tensor};
use pretext::data::IndexMap;
use pretext::script::{Host, HostConfig};
use pretext::{Volume, VoxelType};

const MNI: &str = "mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz";

fn sample(kind: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("PRETEXT_SAMPLES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("data/samples"));
    let p = dir.join(MNI.replace("{}", kind));
    if p.is_file() {
        Some(p)
    } else {
        eprintln!(
            "skipped: {} is absent; run scripts/fetch-sample-data.sh to test on real MRI",
            p.display()
        );
        None
    }
}

/// The `size` block of `v` starting at `start`, as a volume on the same world grid.
fn crop(v: &Volume, values: &[f32], start: [usize; 3], size: [usize; 3]) -> Volume {
    let s = v.spatial_shape();
    let mut out = Vec::with_capacity(size.iter().product());
    for x in start[0]..start[0] + size[0] {
        for y in start[1]..start[1] + size[1] {
            let b = (x * s[1] + y) * s[2];
            out.extend_from_slice(&values[b + start[2]..b + start[2] + size[2]]);
        }
    }
    let t = Tensor::from_vec(out, (size[0], size[1], size[2]), &Device::Cpu).unwrap();
    v.regridded(&t, &IndexMap::shift(start.map(|s| s as isize)))
        .unwrap()
}

/// Writes `n` cases: crops of the T1 at different positions with different contrasts (gamma),
/// and their labels (1 grey matter, 2 white matter: tissue probability >= 50 %).
fn mni_folder(dir: &Path, n: usize) -> Option<()> {
    let t1 = Volume::load(sample("t1")?).unwrap();
    let gm = Volume::load(sample("gm")?).unwrap().to_vec().unwrap();
    let wm = Volume::load(sample("wm")?).unwrap().to_vec().unwrap();
    let values = t1.to_vec().unwrap();
    let label: Vec<f32> = gm
        .iter()
        .zip(&wm)
        .map(|(&g, &w)| {
            if w >= 128.0 && w >= g {
                2.0
            } else if g >= 128.0 {
                1.0
            } else {
                0.0
            }
        })
        .collect();
    let lab_vol = t1
        .with_labels(
            &Tensor::zeros(t1.tensor().dims(), candle_core::DType::F32, &Device::Cpu).unwrap(),
        )
        .unwrap();
    std::fs::create_dir_all(dir.join("images")).unwrap();
    std::fs::create_dir_all(dir.join("labels")).unwrap();
    let size = [150, 180, 150];
    for k in 0..n {
        let start = [(k * 7) % 40, (k * 11) % 45, (k * 5) % 35];
        let gamma = 0.75 + 0.5 * (k as f32 / n.max(2) as f32);
        let scaled: Vec<f32> = values
            .iter()
            .map(|&v| (255.0 * (v / 255.0).powf(gamma)).round())
            .collect();
        crop(&t1, &scaled, start, size)
            .save_as(dir.join(format!("images/mni_{k:02}.nii.gz")), VoxelType::U8)
            .unwrap();
        crop(&lab_vol, &label, start, size)
            .save_as(dir.join(format!("labels/mni_{k:02}.nii.gz")), VoxelType::U8)
            .unwrap();
    }
    Some(())
}

fn floats(v: &rhai::Dynamic) -> Vec<f64> {
    v.clone()
        .into_array()
        .unwrap()
        .iter()
        .map(|x| x.as_float().unwrap())
        .collect()
}

#[test]
fn mni152_pretrains_with_falling_loss_finetunes_and_segments_in_each_cases_geometry() {
    let dir = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let Some(()) = mni_folder(dir.path(), 12) else {
        return;
    };
    eprintln!(
        "12 MNI cases written in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let code = format!(
        r#"
        let t0 = timestamp();
        let s = nifti_folder(#{{ root: "{d}/images", labels: "{d}/labels", cache: "{d}/cache",
                                 percentiles: [0.5, 99.5], crop_foreground: true,
                                 shape: [32, 32, 32], classes: 3 }});
        let prep = t0.elapsed;
        let unet = #{{ filters: 4, depth: 2, dropout: 0.0, momentum: 0.1 }};
        let t1 = timestamp();
        let r = pretrain("rotation", s, s.labelled, #{{
            epochs: 30, batch: 4, lr: 1e-3, val_fraction: 0.17, unet: unet,
            head: [32], head_dropout: 0.0, head_momentum: 0.1, seed: 1, out: "{d}/rotation" }});
        let pre = t1.elapsed;
        let t2 = timestamp();
        let f = finetune_segmentation(s, #{{ init: r.best, train: s.labelled.extract(0, 9),
            test: s.labelled.extract(9), unet: unet, epochs: 16, warmup: 3, batch: 2, lr: 3e-3,
            seed: 1, save: "{d}/seg.safetensors" }});
        let fine = t2.elapsed;
        let m = load_unet3d("{d}/seg.safetensors");
        let t3 = timestamp();
        let p = m.segment(s, 10, #{{}});
        let seg = t3.elapsed;
        p.save_nifti("{d}/pred_10.nii.gz");
        #{{ losses: r.epochs.map(|e| e.loss), accuracy: r.epochs.map(|e| e.accuracy),
           ft: f.losses, dice: f.dice, loaded: f.load.loaded.len(), missing: f.load.missing.len(),
           shape: p.shape, seconds: [prep, pre, fine, seg] }}"#,
        d = dir.path().display()
    );
    let host = Host::new(HostConfig::default());
    let out = host
        .eval(&code, "<mni>")
        .unwrap_or_else(|e| panic!("{e}"))
        .cast::<rhai::Map>();
    let losses = floats(&out["losses"]);
    let acc = floats(&out["accuracy"]);
    let ft = floats(&out["ft"]);
    let dice = floats(&out["dice"]);
    let secs = floats(&out["seconds"]);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (first, last) = (mean(&losses[..5]), mean(&losses[losses.len() - 5..]));
    eprintln!(
        "rotation on MNI152: loss {first:.3} (epochs 1-5) -> {last:.3} (epochs 26-30), accuracy \
         {:.2} -> {:.2}; finetuning loss {:.3} -> {:.3}, test Dice {dice:?}; seconds: prepare \
         {:.1}, pretrain {:.1}, finetune {:.1}, segment {:.2}",
        mean(&acc[..5]),
        mean(&acc[acc.len() - 5..]),
        ft[0],
        ft[ft.len() - 1],
        secs[0],
        secs[1],
        secs[2],
        secs[3]
    );
    assert!(
        last < 0.75 * first,
        "the rotation loss must fall: {losses:?}"
    );
    assert!(out["loaded"].as_int().unwrap() > 0 && out["missing"].as_int().unwrap() == 0);
    assert!(
        ft[ft.len() - 1] < ft[0],
        "finetuning loss must fall: {ft:?}"
    );
    assert!(
        dice[1] > 0.5 && dice[2] > 0.5,
        "grey and white matter are found: {dice:?}"
    );
    // The prediction lies on the case's own grid: its shape and affine, aligned with the truth.
    let src = Volume::load(dir.path().join("images/mni_10.nii.gz")).unwrap();
    let pred = Volume::load(dir.path().join("pred_10.nii.gz")).unwrap();
    assert_eq!(pred.shape(), src.shape());
    for (a, b) in pred
        .affine()
        .iter()
        .flatten()
        .zip(src.affine().iter().flatten())
    {
        assert!((a - b).abs() < 1e-5);
    }
    let truth = Volume::load(dir.path().join("labels/mni_10.nii.gz"))
        .unwrap()
        .to_vec()
        .unwrap();
    let p = pred.to_vec().unwrap();
    for l in [1.0, 2.0] {
        let i = p
            .iter()
            .zip(&truth)
            .filter(|(a, b)| **a == l && **b == l)
            .count();
        let n = p.iter().filter(|a| **a == l).count() + truth.iter().filter(|b| **b == l).count();
        let d = 2.0 * i as f64 / n as f64;
        eprintln!("case mni_10 in its own 150x180x150 grid: label {l} Dice {d:.3}");
        assert!(d > 0.5, "label {l}: {d}");
    }
}

/// A tiny synthetic folder through `nifti_folder`, rotation pretraining, finetuning and
/// `segment`, run by the CLI at `threads`: every file it writes.
fn run_tiny(root: &Path, threads: &str) -> Vec<(String, Vec<u8>)> {
    let script = root.join("tiny.rhai");
    std::fs::write(
        &script,
        r#"let d = arg("d", "");
           let s = nifti_folder(#{ root: d + "/imagesTr", labels: d + "/labelsTr", cache: d + "/cache",
                                   window: [-200, 300], spacing: [6.0, 6.0, 6.0], shape: [16, 16, 16] });
           let u = #{ filters: 2, depth: 2, dropout: 0.0, momentum: 0.1 };
           let r = pretrain("rotation", s, s.labelled, #{ epochs: 2, batch: 2,
               unet: u, head: [8], seed: 4, out: d + "/out/rot" });
           finetune_segmentation(s, #{ init: r.best, train: [0, 1, 2], test: [3], unet: u,
               epochs: 2, warmup: 1, seed: 4, save: d + "/out/seg.safetensors" });
           let m = load_unet3d(d + "/out/seg.safetensors");
           m.segment(s, 3, #{ window: [16, 16, 16], overlap: 0.5 }).save_nifti(d + "/out/pred.nii.gz");
           m.segment(s, d + "/imagesTr/" + s.id(0) + ".nii.gz", #{ window: [8, 16, 16] }).save_nifti(d + "/out/pred0.nii.gz");
        "#,
    )
    .unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_pretext"))
        .args(["run", &script.display().to_string(), "--set"])
        .arg(format!("d={}", root.display()))
        .env("RAYON_NUM_THREADS", threads)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", common::stderr(&o));
    let mut files = Vec::new();
    for name in [
        "rot/best.safetensors",
        "rot/last.safetensors",
        "seg.safetensors",
        "pred.nii.gz",
        "pred0.nii.gz",
    ] {
        files.push((
            name.to_string(),
            std::fs::read(root.join("out").join(name)).unwrap(),
        ));
    }
    files
}

#[test]
fn the_own_data_path_is_bit_identical_at_one_and_two_threads() {
    let dir = tempfile::tempdir().unwrap();
    let mut runs = Vec::new();
    for (name, threads) in [("a", "2"), ("b", "1")] {
        let root = dir.path().join(name);
        let o = common::pretext(
            &[
                "data",
                "synth",
                "pancreas",
                "--out",
                &root.display().to_string(),
                "--n",
                "4",
                "--shape",
                "48,48,32",
            ],
            None,
        );
        assert!(o.status.success(), "{}", common::stderr(&o));
        runs.push(run_tiny(&root, threads));
    }
    for ((name, a), (_, b)) in runs[0].iter().zip(&runs[1]) {
        assert!(a == b, "{name} differs between 2 threads and 1");
    }
}

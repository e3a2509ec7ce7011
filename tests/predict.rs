//! Predictions usable outside pretext: sliding-window inference as MONAI's (fixtures by
//! scripts/make_sliding_window_fixtures.py), label maps back in the original image's geometry
//! checked against nibabel's view of an oblique synthetic CT (scripts/make_geometry_fixtures.py),
//! `segment` from scripts, and overlay sheets of prediction against truth.

mod common;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use pretext::data::{NiftiFolderOptions, NiftiFolderSet, VolumePreprocess};
use pretext::nn::{ParamStore, UNet3d, UNet3dConfig};
use pretext::train::infer::{
    Blend, SlidingWindow, importance_map, sliding_window, to_original, window_starts,
};
use pretext::{Volume, VoxelType};
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn expected() -> Value {
    let p = fixtures().join("geometry/expected.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn values(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    values(a)
        .iter()
        .zip(values(b))
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// The fixture's predictor: out0 = x (1 + 0.1 d) + 0.05 h, out1 = x² - 0.02 w, with d, h, w
/// the indices inside the window.
fn position_predictor(x: &Tensor) -> pretext::Result<Tensor> {
    let d = x.dims().to_vec();
    let (b, [nd, nh, nw]) = (d[0], [d[2], d[3], d[4]]);
    let v = values(x);
    let mut out = vec![0f32; b * 2 * nd * nh * nw];
    let plane = nd * nh * nw;
    for i in 0..b {
        for z in 0..nd {
            for y in 0..nh {
                for w in 0..nw {
                    let k = (z * nh + y) * nw + w;
                    let xv = v[i * plane + k];
                    out[(i * 2) * plane + k] = xv * (1.0 + 0.1 * z as f32) + 0.05 * y as f32;
                    out[(i * 2 + 1) * plane + k] = xv * xv - 0.02 * w as f32;
                }
            }
        }
    }
    Ok(Tensor::from_vec(out, (b, 2, nd, nh, nw), &Device::Cpu)?)
}

#[test]
fn windows_and_weights_are_monais() {
    // _get_scan_interval + dense_patch_slices: the last window ends at the border.
    assert_eq!(window_starts(20, 8, 0.5), vec![0, 4, 8, 12]);
    assert_eq!(window_starts(17, 6, 0.25), vec![0, 4, 8, 11]);
    assert_eq!(window_starts(12, 12, 0.5), vec![0]);
    assert_eq!(window_starts(13, 5, 0.25), vec![0, 3, 6, 8]);
    let g = importance_map([5, 5, 5], Blend::Gaussian, 0.125);
    assert_eq!(g[62], 1.0, "the centre weighs 1");
    assert!(g.iter().all(|&w| w >= 1e-3), "clamped below at 1e-3");
    assert!(
        importance_map([3, 4, 2], Blend::Constant, 0.125)
            .iter()
            .all(|&w| w == 1.0)
    );
}

#[test]
fn sliding_window_matches_monai() {
    let f = candle_core::safetensors::load(
        fixtures().join("infer/sliding_window.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let names: Vec<&str> = f.keys().filter_map(|k| k.strip_suffix(".cfg")).collect();
    assert_eq!(names.len(), 4, "{names:?}");
    for name in names {
        let get = |k: &str| f[&format!("{name}.{k}")].clone();
        let c: Vec<f64> = get("cfg").to_vec1().unwrap();
        let cfg = SlidingWindow {
            window: None,
            overlap: c[3],
            mode: if c[4] == 1.0 {
                Blend::Gaussian
            } else {
                Blend::Constant
            },
            sigma_scale: c[5],
            batch: c[6] as usize,
        };
        let roi = [c[0] as usize, c[1] as usize, c[2] as usize];
        let mut calls = 0;
        let mut p = |x: &Tensor| {
            calls += 1;
            position_predictor(x)
        };
        let got = sliding_window(&get("x"), roi, &cfg, &mut p).unwrap();
        let d = max_diff(&got, &get("y"));
        eprintln!("{name}: {calls} forward passes, max |pretext - MONAI| = {d:.2e}");
        assert!(d < 2e-5, "{name}: {d}");
    }
}

fn tiny_unet() -> UNet3d {
    let cfg = UNet3dConfig {
        filters: 2,
        depth: 2,
        dropout: 0.0,
        momentum: 0.1,
        ..Default::default()
    };
    let store = ParamStore::new(5);
    UNet3d::new(&cfg, store.builder(DType::F32, &Device::Cpu)).unwrap()
}

fn softmax_of(net: &UNet3d) -> impl FnMut(&Tensor) -> pretext::Result<Tensor> + '_ {
    move |x: &Tensor| {
        pretext::ops::no_grad(|| -> pretext::Result<Tensor> {
            Ok(candle_nn::ops::softmax(&net.forward_t(x, false)?, 1)?)
        })
    }
}

fn blobs(dims: [usize; 3], seed: u64) -> Tensor {
    let g = common::volumes::volume(dims[0].max(dims[1]).max(dims[2]), seed);
    let n = dims[0].max(dims[1]).max(dims[2]);
    let t = Tensor::from_vec(g.data, (1, 1, n, n, n), &Device::Cpu).unwrap();
    t.narrow(2, 0, dims[0])
        .unwrap()
        .narrow(3, 0, dims[1])
        .unwrap()
        .narrow(4, 0, dims[2])
        .unwrap()
        .contiguous()
        .unwrap()
}

#[test]
fn sliding_window_equals_a_direct_forward_when_the_volume_fits_one_window() {
    let net = tiny_unet();
    let x = blobs([16, 16, 16], 1);
    let direct = softmax_of(&net)(&x).unwrap();
    for mode in [Blend::Gaussian, Blend::Constant] {
        let cfg = SlidingWindow {
            mode,
            ..Default::default()
        };
        let mut calls = 0;
        let mut f = softmax_of(&net);
        let mut p = |t: &Tensor| {
            calls += 1;
            f(t)
        };
        let sw = sliding_window(&x, [16, 16, 16], &cfg, &mut p).unwrap();
        assert_eq!(calls, 1);
        let d = max_diff(&sw, &direct);
        assert!(d <= 1e-6, "{mode:?}: {d}");
    }
}

#[test]
fn sliding_window_covers_a_volume_larger_than_its_window() {
    let net = tiny_unet();
    // Windows that tile the volume exactly (no overlap) give each block's own forward pass.
    let x = blobs([32, 16, 48], 2);
    let cfg = SlidingWindow {
        overlap: 0.0,
        mode: Blend::Constant,
        batch: 2,
        ..Default::default()
    };
    let sw = sliding_window(&x, [16, 16, 16], &cfg, &mut softmax_of(&net)).unwrap();
    assert_eq!(sw.dims(), [1, 3, 32, 16, 48]);
    for i in 0..2 {
        for k in 0..3 {
            let block = x
                .narrow(2, 16 * i, 16)
                .unwrap()
                .narrow(4, 16 * k, 16)
                .unwrap();
            let direct = softmax_of(&net)(&block.contiguous().unwrap()).unwrap();
            let got = sw
                .narrow(2, 16 * i, 16)
                .unwrap()
                .narrow(4, 16 * k, 16)
                .unwrap();
            assert!(
                max_diff(&got.contiguous().unwrap(), &direct) <= 1e-6,
                "block {i} {k}"
            );
        }
    }
    // Overlapping Gaussian windows on an odd-sized volume: probabilities everywhere.
    let x = blobs([37, 16, 25], 3);
    let sw = sliding_window(
        &x,
        [16, 16, 16],
        &SlidingWindow::default(),
        &mut softmax_of(&net),
    )
    .unwrap();
    assert_eq!(sw.dims(), [1, 3, 37, 16, 25]);
    let sums = values(&sw.sum(1).unwrap());
    assert!(
        sums.iter().all(|s| (s - 1.0).abs() < 1e-5),
        "blended probabilities sum to 1"
    );
}

fn geometry_set(cache: &Path) -> NiftiFolderSet {
    let g = fixtures().join("geometry");
    NiftiFolderSet::open(&NiftiFolderOptions {
        root: g.join("images").display().to_string(),
        labels: g.join("labels").display().to_string(),
        cache: cache.display().to_string(),
        preprocess: VolumePreprocess {
            spacing: Some([1.6, 1.6, 2.5]),
            window: Some([-200.0, 300.0]),
            crop_foreground: true,
            shape: [24, 24, 16],
            ..Default::default()
        },
        ..Default::default()
    })
    .unwrap()
}

fn affine_of(v: &Value) -> [[f64; 4]; 4] {
    let mut a = [[0.0; 4]; 4];
    for (r, row) in v.as_array().unwrap().iter().enumerate() {
        for (c, x) in row.as_array().unwrap().iter().enumerate() {
            a[r][c] = x.as_f64().unwrap();
        }
    }
    a
}

/// Per label: voxel count and world centroid (mm), from voxels [x][y][z] and an affine.
fn centroids(
    labels: &[f32],
    shape: [usize; 3],
    a: &[[f64; 4]; 4],
) -> HashMap<u32, (usize, [f64; 3])> {
    let mut acc: HashMap<u32, (usize, [f64; 3])> = HashMap::new();
    for x in 0..shape[0] {
        for y in 0..shape[1] {
            for z in 0..shape[2] {
                let l = labels[(x * shape[1] + y) * shape[2] + z] as u32;
                if l == 0 {
                    continue;
                }
                let e = acc.entry(l).or_insert((0, [0.0; 3]));
                e.0 += 1;
                for (k, i) in [x, y, z].iter().enumerate() {
                    e.1[k] += *i as f64;
                }
            }
        }
    }
    acc.into_iter()
        .map(|(l, (n, s))| {
            let idx = s.map(|v| v / n as f64);
            let w = [0, 1, 2].map(|r| (0..3).map(|c| a[r][c] * idx[c]).sum::<f64>() + a[r][3]);
            (l, (n, w))
        })
        .collect()
}

fn dice(a: &[f32], b: &[f32], label: f32) -> f64 {
    let (mut i, mut na, mut nb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        let (p, q) = (*x == label, *y == label);
        i += f64::from(u8::from(p && q));
        na += f64::from(u8::from(p));
        nb += f64::from(u8::from(q));
    }
    2.0 * i / (na + nb)
}

/// Checks a label map written for the fixture case against nibabel's view of the source:
/// shape, affine, qform code, u8, and each label's place. Returns the Dice per label.
fn check_against_nibabel(path: &Path) -> Vec<f64> {
    let exp = expected();
    let pred = Volume::load(path).unwrap();
    let shape: Vec<usize> = exp["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    assert_eq!(pred.shape(), &shape[..], "shape equals the source's");
    let want = affine_of(&exp["affine"]);
    for (r, (got, want)) in pred.affine().iter().zip(&want).enumerate() {
        for (c, (a, b)) in got.iter().zip(want).enumerate() {
            assert!(
                (a - b).abs() < 1e-5,
                "affine[{r}][{c}]: {a} vs nibabel's {b}"
            );
        }
    }
    assert_eq!(
        pred.header().qform_code,
        exp["qform_code"].as_i64().unwrap() as i16
    );
    assert_eq!(
        pred.header().sform_code,
        exp["sform_code"].as_i64().unwrap() as i16
    );
    assert_eq!(pred.dtype(), VoxelType::U8);
    let truth = Volume::load(fixtures().join("geometry/labels/ct_001.nii.gz")).unwrap();
    let (p, t) = (pred.to_vec().unwrap(), truth.to_vec().unwrap());
    let s = [shape[0], shape[1], shape[2]];
    let got = centroids(&p, s, pred.affine());
    let mut dices = Vec::new();
    for (label, info) in exp["labels"].as_object().unwrap() {
        let l: u32 = label.parse().unwrap();
        let w: Vec<f64> = info["world"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let (_, c) = got.get(&l).unwrap_or_else(|| panic!("label {l} missing"));
        let dist = (0..3).map(|k| (c[k] - w[k]).powi(2)).sum::<f64>().sqrt();
        let d = dice(&p, &t, l as f32);
        eprintln!("label {l}: centroid {dist:.2} mm from nibabel's truth centroid, Dice {d:.3}");
        assert!(
            dist < 2.0,
            "label {l} is {dist:.2} mm away from where nibabel puts it"
        );
        dices.push(d);
    }
    dices
}

#[test]
fn labels_come_back_in_the_original_geometry_as_nibabel_sees_it() {
    let dir = tempfile::tempdir().unwrap();
    let set = geometry_set(&dir.path().join("cache"));
    let g = set.geometry(0).unwrap();
    assert_eq!(g.prepared, [24, 24, 16]);
    // The prepared truth, as a perfect model would predict it, mapped back and saved.
    let label = set.label(0).unwrap().unwrap();
    let back = to_original(&set, 0, &label).unwrap();
    let out = dir.path().join("ct_001.nii.gz");
    back.save(&out).unwrap();
    let dices = check_against_nibabel(&out);
    assert!(dices[0] > 0.85 && dices[1] > 0.6, "{dices:?}");
    if let Some(keep) = std::env::var_os("PRETEXT_KEEP") {
        std::fs::copy(&out, Path::new(&keep).join("ct_001_to_original.nii.gz")).unwrap();
    }
    // Class scores come back the same way (one-hot scores = the label map).
    let onehot = pretext::nn::loss::one_hot(&label.unsqueeze(0).unwrap(), 3, DType::F32)
        .unwrap()
        .squeeze(0)
        .unwrap();
    let via_scores = to_original(&set, 0, &onehot).unwrap();
    assert_eq!(via_scores.to_vec().unwrap(), back.to_vec().unwrap());
    // The prepared image's own affine places its voxels on the original: the prepared label's
    // centroid lands where the truth's is.
    let prepared = set.volume(0).unwrap();
    let c = centroids(&values(&label), [24, 24, 16], prepared.affine());
    let exp = expected();
    for (l, info) in exp["labels"].as_object().unwrap() {
        let w: Vec<f64> = info["world"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let got = c[&l.parse::<u32>().unwrap()].1;
        let dist = (0..3).map(|k| (got[k] - w[k]).powi(2)).sum::<f64>().sqrt();
        assert!(dist < 2.0, "prepared label {l}: {dist:.2} mm");
    }
}

#[test]
fn segment_writes_label_maps_in_the_source_geometry() {
    let dir = tempfile::tempdir().unwrap();
    let g = fixtures().join("geometry");
    let code = format!(
        r#"let s = nifti_folder(#{{ root: "{images}", labels: "{labels}", cache: "{cache}",
              window: [-200, 300], spacing: [1.6, 1.6, 2.5], crop_foreground: true, shape: [24, 24, 16] }});
           let m = unet3d(#{{ filters: 2, depth: 2, dropout: 0.0, seed: 3 }});
           let a = m.segment(s, 0, #{{}});
           a.save_nifti("{out}/a.nii.gz");
           let b = m.segment(s, s.source(0));
           b.save_nifti("{out}/b.nii.gz");
           let c = m.segment(s, 0, #{{ window: [16, 16, 16], overlap: 0.5 }});
           let p = m.sliding_window(s.image(0), #{{}});
           [a.dtype, p.shape, c.shape]"#,
        images = g.join("images").display(),
        labels = g.join("labels").display(),
        cache = dir.path().join("cache").display(),
        out = dir.path().display(),
    );
    let host = pretext::script::Host::new(Default::default());
    let v = host.eval(&code, "<test>").unwrap_or_else(|e| panic!("{e}"));
    let shown = format!("{v:?}");
    assert!(
        shown.contains("u8") && shown.contains("[3, 24, 24, 16]") && shown.contains("[40, 36, 18]"),
        "{shown}"
    );
    // A file preprocessed on the fly gives what the cached case gives.
    let (a, b) = (
        Volume::load(dir.path().join("a.nii.gz")).unwrap(),
        Volume::load(dir.path().join("b.nii.gz")).unwrap(),
    );
    assert_eq!(a.to_vec().unwrap(), b.to_vec().unwrap());
    // Shape, affine, qform of the source: what nibabel reads from it.
    let exp = expected();
    let want = affine_of(&exp["affine"]);
    assert_eq!(a.shape(), [40, 36, 18]);
    for (got, want) in a.affine().iter().zip(&want) {
        for (x, y) in got.iter().zip(want) {
            assert!((x - y).abs() < 1e-5, "{x} vs nibabel's {y}");
        }
    }
    assert_eq!(a.dtype(), VoxelType::U8);
    // A window that does not fit the UNet is refused with the reason.
    let err = common::eval_err(&format!(
        r#"let s = nifti_folder(#{{ root: "{}", cache: "{}", shape: [24, 24, 16] }});
           unet3d(#{{ filters: 2, depth: 2 }}).segment(s, 0, #{{ window: [10, 16, 16] }})"#,
        g.join("images").display(),
        dir.path().join("cache2").display()
    ));
    assert!(err.contains("multiple of 4"), "{err}");
}

#[test]
fn preview_draws_predictions_against_the_truth() {
    let dir = tempfile::tempdir().unwrap();
    let g = fixtures().join("geometry");
    let pred = dir.path().join("pred");
    std::fs::create_dir_all(&pred).unwrap();
    std::fs::copy(g.join("labels/ct_001.nii.gz"), pred.join("ct_001.nii.gz")).unwrap();
    let out = dir.path().join("sheet.png");
    let o = common::pretext(
        &[
            "data",
            "preview",
            &g.join("images").display().to_string(),
            "--labels",
            &g.join("labels").display().to_string(),
            "--pred",
            &pred.display().to_string(),
            "--out",
            &out.display().to_string(),
        ],
        None,
    );
    assert!(o.status.success(), "{}", common::stderr(&o));
    let text = common::stdout(&o);
    assert!(
        text.contains("ct_001") && text.contains("dice 1.000"),
        "{text}"
    );
    let img = image::open(&out).unwrap();
    assert_eq!(img.width(), 3 * 160 + 4, "image | truth | prediction");
    // A prediction of another shape is refused, naming the file.
    Volume::from_tensor(
        &Tensor::zeros((4, 4, 4), DType::F32, &Device::Cpu).unwrap(),
        [1.0; 3],
    )
    .unwrap()
    .save(pred.join("ct_001.nii.gz"))
    .unwrap();
    let o = common::pretext(
        &[
            "data",
            "preview",
            &g.join("images").display().to_string(),
            "--pred",
            &pred.display().to_string(),
            "--out",
            &out.display().to_string(),
        ],
        None,
    );
    assert!(!o.status.success());
    let err = common::stderr(&o);
    assert!(
        err.contains("ct_001.nii.gz") && err.contains("shape"),
        "{err}"
    );
}

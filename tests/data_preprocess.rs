//! Preprocessing against scikit-image: `resize` and the paper's pancreas pipeline; fundus
//! resizing against PIL.
//!
//! Fixtures: `python scripts/make_preprocess_fixtures.py` (skimage 0.26, nibabel, Pillow).
//! Tolerances: skimage works in float64, pretext in f32 with f64-built weights; on values in
//! [0, 1] the measured difference is ≤ 3e-7 (a few f32 ulps), so 1e-6 (resize) and 2e-6 (the
//! pipeline, which normalises twice) leave room for other CPUs while any real deviation (a
//! wrong sigma, a shifted grid, another border mode) shows as ≥ 1e-3.

mod common;
use common::torch::max_abs_diff;
use std::path::{Path, PathBuf};

use pretext::data::preprocess::{FundusFilter, FundusPreprocess, PancreasPreprocess};
use pretext::data::resize::{Interp, Resize, resize3d};
use pretext::{Image, Volume};
use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/preprocess")
        .join(name)
}

fn cases() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("cases.json")).unwrap()).unwrap()
}

fn load(name: &str) -> (Vec<f32>, [usize; 3]) {
    let v = Volume::load(fixture(name)).unwrap();
    (v.to_vec().unwrap(), v.spatial_shape())
}

fn shape_of(v: &Value) -> [usize; 3] {
    let s: Vec<usize> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect();
    [s[0], s[1], s[2]]
}

#[test]
fn resize_matches_skimage_for_down_up_mixed_and_nearest_cases() {
    let c = cases();
    let list = c["resize"].as_array().unwrap();
    assert_eq!(list.len(), 7);
    for case in list {
        let name = case["name"].as_str().unwrap();
        let (input, shape) = load(case["input"].as_str().unwrap());
        let (want, out_shape) = load(case["output"].as_str().unwrap());
        assert_eq!(out_shape, shape_of(&case["shape"]), "{name}");
        let opts = Resize {
            interp: if case["order"] == 0 {
                Interp::Nearest
            } else {
                Interp::Linear
            },
            anti_alias: case["anti_aliasing"].as_bool().unwrap_or(true),
            clip: true,
        };
        let got = resize3d(&input, shape, out_shape, opts).unwrap();
        let d = max_abs_diff(&got, &want);
        assert!(d < 1e-6, "{name}: max |pretext - skimage| = {d}");
    }
}

#[test]
fn anti_aliasing_changes_the_result_when_shrinking() {
    let (input, shape) = load("in_a.nii.gz");
    let (no_aa, _) = load("resize_down_no_aa.nii.gz");
    let got = resize3d(&input, shape, [8, 9, 7], Resize::default()).unwrap();
    assert!(
        max_abs_diff(&got, &no_aa) > 1e-2,
        "the Gaussian pre-filter had no effect"
    );
}

#[test]
fn the_pancreas_pipeline_matches_the_original_code_in_every_variant() {
    let c = cases();
    let p = &c["pipeline"];
    let image = Volume::load(fixture(p["image"].as_str().unwrap())).unwrap();
    let label = Volume::load(fixture(p["label"].as_str().unwrap())).unwrap();
    for v in p["variants"].as_array().unwrap() {
        let name = v["name"].as_str().unwrap();
        let params = PancreasPreprocess {
            shape: shape_of(&p["shape"]),
            threshold: p["threshold"].as_f64().unwrap(),
            off_by_one: v["off_by_one"].as_bool().unwrap(),
            label_interp: if v["label_interp"] == "nearest" {
                Interp::Nearest
            } else {
                Interp::Linear
            },
            clip: v["clip"]
                .as_array()
                .map(|c| (c[0].as_f64().unwrap() as f32, c[1].as_f64().unwrap() as f32)),
            anti_alias: true,
        };
        let out = params.apply(&image, Some(&label)).unwrap();
        let bb: Vec<usize> = v["bbox"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as usize)
            .collect();
        let got_bb = out.bbox;
        assert_eq!(
            [
                got_bb.start[0],
                got_bb.end[0],
                got_bb.start[1],
                got_bb.end[1],
                got_bb.start[2],
                got_bb.end[2]
            ]
            .to_vec(),
            bb,
            "{name}: bounding box"
        );
        let (want, _) = load(v["image"].as_str().unwrap());
        let img = out.image.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let d = max_abs_diff(&img, &want);
        assert!(d < 2e-6, "{name}: image max diff {d}");
        let (lo, hi) = img
            .iter()
            .fold((1f32, 0f32), |a, &x| (a.0.min(x), a.1.max(x)));
        assert!(lo == 0.0 && hi == 1.0, "{name}: range [{lo}, {hi}]");

        // Labels: equal to np.rint of skimage's float output, except where that output lies
        // within 1e-4 of a rounding boundary (f32 vs f64 may round either way there).
        let (want_lab, _) = load(v["label"].as_str().unwrap());
        let (float_lab, _) = load(v["label_float"].as_str().unwrap());
        let lab = out
            .label
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<u8>()
            .unwrap();
        let mut checked = 0;
        for i in 0..lab.len() {
            if (float_lab[i].fract() - 0.5).abs() > 1e-4 {
                assert_eq!(lab[i] as f32, want_lab[i], "{name}: label voxel {i}");
                checked += 1;
            }
        }
        assert!(
            checked > lab.len() * 9 / 10,
            "{name}: too few labels checked"
        );
        assert!(lab.contains(&2), "{name}: the tumour survived resizing");
    }
}

#[test]
fn a_constant_volume_is_refused_with_a_clear_message() {
    let t = candle_core::Tensor::zeros(
        (6, 6, 6),
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let v = Volume::from_tensor(&t, [1.0; 3]).unwrap();
    let e = PancreasPreprocess::default()
        .apply(&v, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("min-max"), "{e}");
}

#[test]
fn a_label_of_another_shape_is_refused() {
    let dev = candle_core::Device::Cpu;
    let t = candle_core::Tensor::arange(0f32, 216.0, &dev)
        .unwrap()
        .reshape((6, 6, 6))
        .unwrap();
    let l = candle_core::Tensor::zeros((6, 6, 5), candle_core::DType::F32, &dev).unwrap();
    let v = Volume::from_tensor(&t, [1.0; 3]).unwrap();
    let lv = Volume::from_tensor(&l, [1.0; 3]).unwrap();
    let e = PancreasPreprocess::default()
        .apply(&v, Some(&lv))
        .unwrap_err()
        .to_string();
    assert!(e.contains("[6, 6, 5]") && e.contains("[6, 6, 6]"), "{e}");
}

#[test]
fn bad_parameters_are_refused_naming_the_parameter() {
    let dev = candle_core::Device::Cpu;
    let t = candle_core::Tensor::arange(0f32, 216.0, &dev)
        .unwrap()
        .reshape((6, 6, 6))
        .unwrap();
    let v = Volume::from_tensor(&t, [1.0; 3]).unwrap();
    for (p, name) in [
        (
            PancreasPreprocess {
                shape: [0, 4, 4],
                ..Default::default()
            },
            "shape",
        ),
        (
            PancreasPreprocess {
                clip: Some((100.0, -100.0)),
                ..Default::default()
            },
            "clip",
        ),
        (
            PancreasPreprocess {
                threshold: 1.5,
                ..Default::default()
            },
            "threshold",
        ),
    ] {
        let e = p.apply(&v, None).unwrap_err().to_string();
        assert!(e.contains(name), "{e}");
    }
}

#[test]
fn fundus_resizing_is_close_to_pil_for_lanczos_and_bilinear() {
    let c: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("../fundus/cases.json")).unwrap())
            .unwrap();
    let src = Image::load(fixture(&format!(
        "../fundus/{}",
        c["input"].as_str().unwrap()
    )))
    .unwrap();
    for case in c["cases"].as_array().unwrap() {
        let filter = match case["filter"].as_str().unwrap() {
            "lanczos" => FundusFilter::Lanczos,
            _ => FundusFilter::Triangle,
        };
        let size = case["size"].as_u64().unwrap() as usize;
        let p = FundusPreprocess { size, filter };
        let got = p.apply(&src).unwrap();
        assert_eq!(got.dims(), &[3, size, size]);
        let want = Image::load(fixture(&format!(
            "../fundus/{}",
            case["output"].as_str().unwrap()
        )))
        .unwrap()
        .tensor()
        .unwrap();
        let diff = (got - want).unwrap().abs().unwrap();
        let mean = diff.mean_all().unwrap().to_scalar::<f32>().unwrap() * 255.0;
        let max = diff.max_all().unwrap().to_scalar::<f32>().unwrap() * 255.0;
        // PIL and the image crate use the same kernels with different fixed-point rounding:
        // measured mean 0.07-0.14, max 1-8 (at sharp edges) in 1/255.
        assert!(
            mean < 0.5 && max < 12.0,
            "{filter:?}: mean {mean}, max {max} (in 1/255)"
        );
    }
}

//! Real sample files (scripts/fetch-sample-data.sh puts them in data/samples/): NIfTI files
//! read as nibabel reads them, the MNI152 template through the readers and the paper's
//! preprocessing as the original code does it, and a real fundus photograph.
//!
//! Expected values: `python scripts/make_real_fixtures.py` (nibabel, scikit-image, Pillow).
//! In CI (`CI=true`, as `.ci/run` sets it after fetching the files) a missing sample file is a
//! failure; elsewhere each missing file is skipped with a message naming it, and the other
//! files are still tested.

use std::path::{Path, PathBuf};

use pretext::data::{
    Decathlon, FundusPreprocess, Image, Interp, PancreasPreprocess, PancreasSet, verify,
};
use pretext::{Volume, VoxelType};
use serde_json::Value;

const MNI: &str = "mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz";

fn samples() -> PathBuf {
    std::env::var_os("PRETEXT_SAMPLES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("data/samples"))
}

/// Whether this is a CI run (`CI=true` or `CI=1`), where every sample file must be present.
fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// The sample file `name`: in CI a missing file fails the test; elsewhere it is `None`, with
/// a message naming the file.
fn sample(name: &str) -> Option<PathBuf> {
    sample_in(&samples(), name, in_ci())
}

fn sample_in(dir: &Path, name: &str, ci: bool) -> Option<PathBuf> {
    let p = dir.join(name);
    if p.is_file() {
        return Some(p);
    }
    assert!(
        !ci,
        "{} is absent and CI is set: scripts/fetch-sample-data.sh must fetch every sample file",
        p.display()
    );
    eprintln!(
        "SKIPPED (sample file absent): {}; run scripts/fetch-sample-data.sh to test it",
        p.display()
    );
    None
}

#[test]
fn a_missing_sample_file_fails_in_ci_and_is_skipped_by_name_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("here.nii"), b"x").unwrap();
    assert_eq!(
        sample_in(dir.path(), "here.nii", true),
        Some(dir.path().join("here.nii"))
    );
    assert_eq!(sample_in(dir.path(), "absent.nii", false), None);
    let e = std::panic::catch_unwind(|| sample_in(dir.path(), "absent.nii", true))
        .expect_err("a missing file passed in CI");
    let msg = e.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("absent.nii") && msg.contains("CI"), "{msg}");
}

fn expected() -> Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/real/expected.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn usizes(v: &Value) -> Vec<usize> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect()
}

fn close(a: f64, b: f64, rel: f64) -> bool {
    (a - b).abs() <= rel * (1.0 + b.abs())
}

fn numpy_short(d: &str) -> &str {
    match d {
        "uint8" => "u8",
        "int16" => "i16",
        "float32" => "f32",
        other => other,
    }
}

#[test]
fn real_nifti_files_read_as_nibabel_reads_them() {
    let exp = expected();
    for case in exp["nifti"].as_array().unwrap() {
        let name = case["file"].as_str().unwrap();
        // Each file on its own: a missing one skips only itself.
        let Some(path) = sample(name) else { continue };
        if case["nifti2"].as_bool().unwrap() {
            let e = Volume::load(&path).unwrap_err().to_string();
            assert!(e.contains(name) && e.contains("NIfTI-2"), "{e}");
            continue;
        }
        let v = Volume::load(&path).unwrap();
        let shape = usizes(&case["shape"]);
        assert_eq!(v.shape(), &shape[..], "{name}");
        assert_eq!(
            v.dtype().name(),
            numpy_short(case["dtype"].as_str().unwrap()),
            "{name}"
        );
        for (i, z) in case["zooms"].as_array().unwrap().iter().enumerate() {
            assert!(
                close(v.spacing()[i], z.as_f64().unwrap(), 1e-6),
                "{name}: zoom {i}"
            );
        }
        for (r, row) in case["affine"].as_array().unwrap().iter().enumerate() {
            for (c, x) in row.as_array().unwrap().iter().enumerate() {
                let (a, b) = (v.affine()[r][c], x.as_f64().unwrap());
                assert!(
                    close(a, b, 1e-5),
                    "{name}: affine[{r}][{c}] {a} vs nibabel {b}"
                );
            }
        }
        let data = v.to_vec().unwrap();
        let sum: f64 = data.iter().map(|&x| x as f64).sum();
        let want = case["sum"].as_f64().unwrap();
        assert!(
            close(sum, want, 1e-5),
            "{name}: sum {sum} vs nibabel {want}"
        );
        let strides: Vec<usize> = (0..shape.len())
            .map(|i| shape[i + 1..].iter().product())
            .collect();
        for vox in case["voxels"].as_array().unwrap() {
            let idx = usizes(&vox["index"]);
            let flat: usize = idx.iter().zip(&strides).map(|(i, s)| i * s).sum();
            let want = vox["value"].as_f64().unwrap();
            assert!(
                close(data[flat] as f64, want, 1e-5),
                "{name}{idx:?}: {} vs {want}",
                data[flat]
            );
        }
    }
}

/// The MNI152 T1 and a 3-class label from its GM/WM maps (1: GM >= 128, 2: WM >= 128).
fn mni() -> Option<(Volume, Volume)> {
    // Every missing file is named before giving up.
    let [t1, gm, wm] = ["t1", "gm", "wm"].map(|k| sample(&MNI.replace("{}", k)));
    let (t1, gm, wm) = (
        Volume::load(t1?).unwrap(),
        Volume::load(gm?).unwrap(),
        Volume::load(wm?).unwrap(),
    );
    let g = gm
        .tensor()
        .ge(128f64)
        .unwrap()
        .to_dtype(candle_core::DType::F32)
        .unwrap();
    let w = wm
        .tensor()
        .ge(128f64)
        .unwrap()
        .to_dtype(candle_core::DType::F32)
        .unwrap();
    // 2 where WM, else 1 where GM, else 0.
    let label = (&w * 2.0).unwrap().maximum(&g).unwrap();
    Some((t1.clone(), t1.with_tensor(&label).unwrap()))
}

#[test]
fn the_mni152_template_is_preprocessed_as_the_original_code_does() {
    let Some((t1, label)) = mni() else { return };
    let exp = &expected()["mni_pipeline"];
    let counts: Vec<usize> = (0..3)
        .map(|c| {
            label
                .to_vec()
                .unwrap()
                .iter()
                .filter(|&&v| v == c as f32)
                .count()
        })
        .collect();
    assert_eq!(
        counts,
        usizes(&exp["label_counts_full"]),
        "label derivation"
    );
    let s = usizes(&exp["shape"]);
    let p = PancreasPreprocess {
        shape: [s[0], s[1], s[2]],
        label_interp: Interp::Linear,
        ..Default::default()
    };
    let out = p.apply(&t1, Some(&label)).unwrap();
    let b = out.bbox;
    let got_bb: Vec<usize> = (0..3).flat_map(|a| [b.start[a], b.end[a]]).collect();
    assert_eq!(got_bb, usizes(&exp["bbox"]));
    let img = out.image.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let sum: f64 = img.iter().map(|&v| v as f64).sum();
    assert!(
        close(sum, exp["image_sum"].as_f64().unwrap(), 1e-6),
        "image sum {sum}"
    );
    for vox in exp["image_voxels"].as_array().unwrap() {
        let i = usizes(&vox["index"]);
        let flat = (i[0] * s[1] + i[1]) * s[2] + i[2];
        let want = vox["value"].as_f64().unwrap();
        assert!(
            (img[flat] as f64 - want).abs() < 2e-6,
            "{i:?}: {} vs {want}",
            img[flat]
        );
    }
    let lab = out
        .label
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<u8>()
        .unwrap();
    let want = usizes(&exp["label_counts"]);
    for (c, &w) in want.iter().enumerate() {
        let n = lab.iter().filter(|&&v| v == c as u8).count();
        // Voxels whose interpolated label is within float error of x.5 may round either way.
        assert!(n.abs_diff(w) <= lab.len() / 2000, "class {c}: {n} vs {}", w);
    }
}

#[test]
fn the_mni152_template_as_a_decathlon_folder_verifies_and_prepares() {
    let Some((t1, label)) = mni() else { return };
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("mni");
    t1.save(root.join("imagesTr/mni152.nii.gz")).unwrap();
    label
        .save_as(root.join("labelsTr/mni152.nii.gz"), VoxelType::U8)
        .unwrap();
    t1.save(root.join("imagesTs/mni152_copy.nii.gz")).unwrap();
    let r = verify(&root).unwrap();
    assert!(r.is_ok(), "{r}");
    assert_eq!(r.cases[0].shape, vec![197, 233, 189]);
    assert_eq!(r.cases[0].labels.as_deref(), Some(&[0, 1, 2][..]));
    let ds = Decathlon::open(&root).unwrap();
    let p = PancreasPreprocess {
        shape: [32, 32, 32],
        ..Default::default()
    };
    let set = PancreasSet::prepare(&ds, &p, &dir.path().join("cache")).unwrap();
    assert_eq!((set.labelled(), set.unlabelled()), (&[0][..], &[1][..]));
    let direct = p.apply(&t1, None).unwrap().image;
    let d = (set.image(1).unwrap() - direct).unwrap().abs().unwrap();
    // sum_all, not max_all (which skips NaN).
    assert_eq!(d.sum_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
}

#[test]
fn the_real_fundus_photograph_decodes_and_resizes_as_pillow_does() {
    let Some(path) = sample("retina.jpg") else {
        return;
    };
    let exp = &expected()["retina"];
    let img = Image::load(&path).unwrap();
    assert_eq!(vec![img.width(), img.height()], usizes(&exp["size"]));
    let t = img.tensor().unwrap();
    let mean = t.mean((1, 2)).unwrap().to_vec1::<f32>().unwrap();
    for c in 0..3 {
        let want = exp["mean"][c].as_f64().unwrap() / 255.0;
        // JPEG decoders may differ by a unit here and there; the means agree much closer.
        assert!(
            (mean[c] as f64 - want).abs() < 0.5 / 255.0,
            "channel {c}: {} vs {want}",
            mean[c]
        );
    }
    let small = FundusPreprocess::default().apply(&img).unwrap();
    assert_eq!(small.dims(), &[3, 224, 224]);
    let blocks = small
        .reshape((3, 8, 28, 8, 28))
        .unwrap()
        .mean((2, 4))
        .unwrap()
        .to_vec3::<f32>()
        .unwrap();
    let want = exp["resized_224_block_means"].as_array().unwrap();
    let mut worst = 0f64;
    for (by, row) in want.iter().enumerate() {
        for (bx, px) in row.as_array().unwrap().iter().enumerate() {
            for c in 0..3 {
                let w = px[c].as_f64().unwrap() / 255.0;
                worst = worst.max((blocks[c][by][bx] as f64 - w).abs());
            }
        }
    }
    assert!(
        worst < 1.0 / 255.0,
        "8x8 block means differ from Pillow's by {}",
        worst * 255.0
    );
}

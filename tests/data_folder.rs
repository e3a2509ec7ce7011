//! Any folder of NIfTI volumes as a prepared dataset: listing by glob, labels from a second
//! folder, the preprocessing options, the cache, errors that name files, and 3D resample /
//! resize of volumes and tensors that keep the alignment.

mod common;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use pretext::data::folder::{crop_pad, glob_match, percentile};
use pretext::data::geometry::{ResampleOptions, resample_volume, resize_volume};
use pretext::data::{Fit, NiftiFolderOptions, NiftiFolderSet, VolumePreprocess};
use pretext::{Volume, VoxelType};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/geometry")
}

/// A `shape` volume whose value is `x + 10 y + 100 z` (so every voxel says where it is).
fn ramp(shape: [usize; 3], spacing: [f64; 3]) -> Volume {
    let v: Vec<f32> = (0..shape[0])
        .flat_map(|x| {
            (0..shape[1])
                .flat_map(move |y| (0..shape[2]).map(move |z| (x + 10 * y + 100 * z) as f32))
        })
        .collect();
    let t = Tensor::from_vec(v, (shape[0], shape[1], shape[2]), &Device::Cpu).unwrap();
    Volume::from_tensor(&t, spacing).unwrap()
}

/// A label map of `shape`: 1 in the box `lo..hi`, 0 elsewhere.
fn box_label(shape: [usize; 3], lo: [usize; 3], hi: [usize; 3]) -> Volume {
    let mut v = vec![0f32; shape.iter().product()];
    for x in lo[0]..hi[0] {
        for y in lo[1]..hi[1] {
            for z in lo[2]..hi[2] {
                v[(x * shape[1] + y) * shape[2] + z] = 1.0;
            }
        }
    }
    let t = Tensor::from_vec(v, (shape[0], shape[1], shape[2]), &Device::Cpu).unwrap();
    Volume::from_tensor(&t, [1.0; 3]).unwrap()
}

fn opts(root: &Path, cache: &Path) -> NiftiFolderOptions {
    NiftiFolderOptions {
        root: root.display().to_string(),
        cache: cache.display().to_string(),
        preprocess: VolumePreprocess {
            shape: [8, 8, 8],
            ..Default::default()
        },
        ..Default::default()
    }
}

#[test]
fn glob_components_match_as_shells_do() {
    assert!(glob_match("*.nii*", "a.nii.gz"));
    assert!(glob_match("*.nii*", "a.nii"));
    assert!(!glob_match("*.nii*", "a.txt"));
    assert!(glob_match("case_[0-9][0-9]?.nii.gz", "case_017.nii.gz"));
    assert!(!glob_match("case_[!0-9]*", "case_0"));
    assert!(glob_match("sub-*", "sub-01"));
    assert!(glob_match("[ab]", "b") && !glob_match("[ab]", "c"));
}

#[test]
fn percentiles_are_numpys_linear_ones() {
    let v: Vec<f32> = [5.0, 1.0, 4.0, 2.0, 3.0].to_vec();
    assert_eq!(percentile(&v, 0.0), 1.0);
    assert_eq!(percentile(&v, 100.0), 5.0);
    assert_eq!(percentile(&v, 50.0), 3.0);
    // np.percentile([1, 2, 3, 4, 5], 10) = 1.4
    assert!((percentile(&v, 10.0) - 1.4).abs() < 1e-12);
    // The fixture CT: numpy's 0.5 and 99.5 percentiles of its HU values.
    let exp: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("expected.json")).unwrap())
            .unwrap();
    let ct = Volume::load(fixtures().join("images/ct_001.nii.gz")).unwrap();
    let data = ct.to_vec().unwrap();
    for (k, q) in [0.5, 99.5].iter().enumerate() {
        let want = exp["percentiles"][k].as_f64().unwrap();
        let got = percentile(&data, *q);
        assert!((got - want).abs() < 1e-6, "{q}: {got} vs numpy {want}");
    }
}

#[test]
fn a_folder_opens_by_glob_with_labels_ids_and_unlabelled_cases() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("images");
    let labels = dir.path().join("labels");
    std::fs::create_dir_all(root.join("sub-02/anat")).unwrap();
    std::fs::create_dir_all(&labels).unwrap();
    // nnU-Net style names: images carry "_0000", labels do not.
    for (i, rel) in ["a_0000.nii.gz", "b_0000.nii", "sub-02/anat/c_0000.nii.gz"]
        .iter()
        .enumerate()
    {
        ramp([12, 10, 6 + i], [1.0, 1.0, 2.0])
            .save_as(root.join(rel), VoxelType::I16)
            .unwrap();
    }
    std::fs::write(root.join("notes.txt"), "not an image").unwrap();
    std::fs::write(root.join(".hidden.nii.gz"), "not an image").unwrap();
    box_label([12, 10, 6], [2, 2, 1], [8, 7, 4])
        .save_as(labels.join("a.nii.gz"), VoxelType::U8)
        .unwrap();
    box_label([12, 10, 8], [2, 2, 1], [8, 7, 4])
        .save_as(labels.join("c.nii.gz"), VoxelType::U8)
        .unwrap();
    let cache = dir.path().join("cache");
    let mut o = opts(&root, &cache);
    o.glob = "**/*_0000.nii*".into();
    o.labels = labels.display().to_string();
    o.suffix = "_0000".into();
    let set = NiftiFolderSet::open(&o).unwrap();
    let ids: Vec<&str> = (0..set.len()).map(|i| set.id(i).unwrap()).collect();
    assert_eq!(ids, ["a", "b", "c"]);
    assert_eq!(set.labelled(), [0, 2]);
    assert_eq!(set.unlabelled(), [1]);
    assert_eq!(set.image(2).unwrap().dims(), [8, 8, 8]);
    assert!(set.label(1).unwrap().is_none());
    let l = set.label(0).unwrap().unwrap();
    let v: Vec<u8> = l.flatten_all().unwrap().to_vec1().unwrap();
    assert!(v.iter().all(|&x| x <= 1) && v.contains(&1));
    // The cache: a second open prepares nothing (the files are not rewritten).
    let f = set.cache_dir().join("a.safetensors");
    let before = std::fs::metadata(&f).unwrap().modified().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let again = NiftiFolderSet::open(&o).unwrap();
    assert_eq!(again.cache_dir(), set.cache_dir());
    assert_eq!(std::fs::metadata(&f).unwrap().modified().unwrap(), before);
    // Other preprocessing, another cache folder.
    o.preprocess.shape = [4, 4, 4];
    let other = NiftiFolderSet::open(&o).unwrap();
    assert_ne!(other.cache_dir(), set.cache_dir());
    // The default glob sees the top folder only.
    let top = NiftiFolderSet::open(&opts(&root, &cache)).unwrap();
    assert_eq!(top.len(), 2);
}

#[test]
fn problems_name_the_file_and_the_way_out() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("images");
    let labels = dir.path().join("labels");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::create_dir_all(&labels).unwrap();
    let cache = dir.path().join("cache");
    let err = NiftiFolderSet::open(&opts(&root, &cache))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no .nii or .nii.gz file matches") && err.contains("**/*.nii.gz"),
        "{err}"
    );
    ramp([6, 6, 6], [1.0; 3])
        .save(root.join("x.nii.gz"))
        .unwrap();
    let mut o = opts(&root, &cache);
    o.labels = labels.display().to_string();
    let err = NiftiFolderSet::open(&o).unwrap_err().to_string();
    assert!(
        err.contains("no label map here matches") && err.contains("x.nii.gz"),
        "{err}"
    );
    // A label of another shape: the error names the image and says what differs.
    box_label([6, 6, 5], [1, 1, 1], [3, 3, 3])
        .save(labels.join("x.nii.gz"))
        .unwrap();
    let err = NiftiFolderSet::open(&o).unwrap_err().to_string();
    assert!(
        err.contains("x.nii.gz") && err.contains("differs from image shape"),
        "{err}"
    );
    // A label value outside `classes`.
    box_label([6, 6, 6], [1, 1, 1], [3, 3, 3])
        .save(labels.join("x.nii.gz"))
        .unwrap();
    o.classes = Some(1);
    let err = NiftiFolderSet::open(&o).unwrap_err().to_string();
    assert!(err.contains("labels") && err.contains("x.nii.gz"), "{err}");
    // Bad options are refused before any file is read.
    o.classes = None;
    o.preprocess.window = Some([10.0, -10.0]);
    let err = NiftiFolderSet::open(&o).unwrap_err().to_string();
    assert!(err.contains("window"), "{err}");
}

#[test]
fn preprocessing_normalises_resamples_crops_and_fits() {
    // A 20 x 16 x 10 volume of 1 mm x 1 mm x 2 mm: zeros with a bright block.
    let shape = [20, 16, 10];
    let mut v = vec![0f32; 20 * 16 * 10];
    for x in 4..14 {
        for y in 3..11 {
            for z in 2..8 {
                v[(x * 16 + y) * 10 + z] = 100.0 + x as f32;
            }
        }
    }
    let p = VolumePreprocess {
        spacing: Some([2.0, 2.0, 2.0]),
        window: Some([0.0, 200.0]),
        crop_foreground: true,
        threshold: 0.1,
        shape: [8, 8, 8],
        fit: Fit::CropPad,
        ..Default::default()
    };
    let (img, _, prepared, map) = p.apply_raw(&v, shape, [1.0, 1.0, 2.0], None).unwrap();
    assert_eq!(prepared, [8, 8, 8]);
    assert!(img.iter().all(|&x| (0.0..=1.0).contains(&x)));
    // Resampled to 10 x 8 x 10, the block is x 2..7, y 1..6 (after the anti-aliasing blur,
    // a little wider), cropped, then centred in 8^3 with zeros around.
    assert_eq!(map.scale, [2.0, 2.0, 1.0]);
    assert!(img[0] == 0.0, "the padding is zero");
    let max = img.iter().copied().fold(0f32, f32::max);
    assert!(max > 0.5 && max <= 0.57, "{max}");
    // Fit "none" keeps the resampled and cropped size.
    let p = VolumePreprocess {
        fit: Fit::None,
        window: None,
        crop_foreground: false,
        percentiles: [0.0, 100.0],
        ..p
    };
    let (img, _, prepared, _) = p.apply_raw(&v, shape, [1.0, 1.0, 2.0], None).unwrap();
    assert_eq!(prepared, [10, 8, 10]);
    let max = img.iter().copied().fold(0f32, f32::max);
    assert!(
        max > 0.8 && max <= 1.0,
        "min-max scaling, then a blurred resample: {max}"
    );
    // crop_pad is a plain crop or padding.
    let c = crop_pad(&[1.0, 2.0, 3.0, 4.0], [4, 1, 1], [-1, 0, 0], [3, 1, 1], 9.0);
    assert_eq!(c, vec![9.0, 1.0, 2.0]);
    let c = crop_pad(&[1.0, 2.0, 3.0, 4.0], [4, 1, 1], [1, 0, 0], [2, 1, 1], 9.0);
    assert_eq!(c, vec![2.0, 3.0]);
}

/// The world position of the field of view's corner (voxel index -0.5 on every axis).
fn corner(v: &Volume) -> [f64; 3] {
    let a = v.affine();
    [0, 1, 2].map(|r| (0..3).map(|c| a[r][c] * -0.5).sum::<f64>() + a[r][3])
}

#[test]
fn resample_and_resize_keep_the_field_of_view_and_the_alignment() {
    let ct = Volume::load(fixtures().join("images/ct_001.nii.gz")).unwrap();
    let r = resample_volume(&ct, [1.6, 1.8, 5.0], &ResampleOptions::default()).unwrap();
    assert_eq!(r.shape(), [20, 18, 9]);
    let sp = r.spacing();
    assert!((sp[0] - 1.6).abs() < 1e-5 && (sp[1] - 1.8).abs() < 1e-5 && (sp[2] - 5.0).abs() < 1e-5);
    let (a, b) = (corner(&ct), corner(&r));
    for k in 0..3 {
        assert!((a[k] - b[k]).abs() < 1e-4, "corner {a:?} vs {b:?}");
    }
    // Saved and read back, the qform moved with the sform.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("r.nii.gz");
    r.save_as(&p, VoxelType::F32).unwrap();
    let back = Volume::load(&p).unwrap();
    for (a, b) in back
        .affine()
        .iter()
        .flatten()
        .zip(r.affine().iter().flatten())
    {
        assert!(
            (a - b).abs() < 1e-4,
            "the sform is written as f32: {a} vs {b}"
        );
    }
    let h = back.header();
    assert_eq!(h.qform_code, 1);
    for (k, q) in [h.quatern_x, h.quatern_y, h.quatern_z].iter().enumerate() {
        assert!(
            (*q as f64 - r.affine()[k][3]).abs() < 1e-3,
            "qoffset {k}: {q}"
        );
    }
    // Nearest keeps label values; resize to a shape keeps the field of view too.
    let lab = Volume::load(fixtures().join("labels/ct_001.nii.gz")).unwrap();
    let nearest = ResampleOptions {
        interp: pretext::data::Interp::Nearest,
        anti_alias: true,
    };
    let l = resize_volume(&lab, [20, 18, 36], &nearest).unwrap();
    let vals: std::collections::BTreeSet<u32> =
        l.to_vec().unwrap().iter().map(|&x| x as u32).collect();
    assert_eq!(vals.into_iter().collect::<Vec<_>>(), vec![0, 1, 2]);
    let (a, b) = (corner(&lab), corner(&l));
    for k in 0..3 {
        assert!((a[k] - b[k]).abs() < 1e-4, "corner {a:?} vs {b:?}");
    }
}

#[test]
fn script_functions_open_resample_and_describe_a_folder() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("images");
    std::fs::create_dir_all(&root).unwrap();
    for n in ["p", "q"] {
        ramp([10, 12, 8], [1.0, 1.0, 1.5])
            .save(root.join(format!("{n}.nii.gz")))
            .unwrap();
    }
    let code = format!(
        r#"let s = nifti_folder(#{{ root: "{}", cache: "{}", shape: [8, 8, 8], percentiles: [0, 100] }});
           let v = load_nifti(s.source(1));
           let r = resample(v, [2.0, 2.0, 3.0]);
           let t = resize(v.tensor(), [5, 6, 4], #{{ interp: "nearest" }});
           [s.len(), s.shape[0], s.unlabelled.len(), r.shape[0], r.shape[2], t.shape[1], s.image(0).max().to_float(), s.id(1)]"#,
        root.display(),
        dir.path().join("cache").display()
    );
    let host = pretext::script::Host::new(Default::default());
    let v = host.eval(&code, "<test>").unwrap_or_else(|e| panic!("{e}"));
    let a = v.into_array().unwrap();
    let ints: Vec<i64> = a[..6].iter().map(|x| x.as_int().unwrap()).collect();
    assert_eq!(ints, vec![2, 8, 2, 5, 4, 6]);
    let max = a[6].as_float().unwrap();
    assert!(max > 0.9 && max <= 1.0, "{max}");
    assert_eq!(a[7].clone().into_string().unwrap(), "q");
    let err = common::eval_err(r#"nifti_folder(#{ root: "x", shpae: [8, 8, 8] })"#);
    assert!(err.contains("did you mean `shape`"), "{err}");
}

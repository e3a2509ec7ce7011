//! NIfTI reading and writing: round trips for every dtype, parity with nibabel, bad files.

use std::path::Path;

use candle_core::{Device, Tensor};
use pretext::{Volume, VoxelType};
use serde_json::Value;

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/nifti")
        .join(name)
}

fn ramp(shape: (usize, usize, usize), lo: f32, step: f32) -> Tensor {
    let n = shape.0 * shape.1 * shape.2;
    let v: Vec<f32> = (0..n).map(|i| lo + step * i as f32).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

#[test]
fn every_dtype_round_trips_with_spacing_and_affine() {
    let dir = tempfile::tempdir().unwrap();
    for dtype in VoxelType::ALL {
        let (lo, step) = match dtype {
            VoxelType::U8 | VoxelType::U16 | VoxelType::U32 | VoxelType::U64 => (0.0, 1.0),
            VoxelType::I8 => (-60.0, 1.0),
            VoxelType::F32 | VoxelType::F64 => (-3.25, 0.125),
            _ => (-1000.0, 17.0),
        };
        let t = ramp((5, 4, 6), lo, step);
        let vol = Volume::from_tensor(&t, [0.7, 0.9, 2.5]).unwrap();
        for ext in ["nii", "nii.gz"] {
            let path = dir.path().join(format!("v_{}.{ext}", dtype.name()));
            vol.save_as(&path, dtype).unwrap();
            let back = Volume::load(&path).unwrap();
            assert_eq!(back.dtype(), dtype, "{}", path.display());
            assert_eq!(back.shape(), &[5, 4, 6]);
            for (a, b) in back.spacing().iter().zip([0.7, 0.9, 2.5]) {
                assert!((a - b).abs() < 1e-6, "spacing {a} vs {b}");
            }
            assert_eq!(back.affine()[0][0] as f32, 0.7f32);
            assert_eq!(back.affine()[2][2] as f32, 2.5f32);
            assert_eq!(
                back.to_vec().unwrap(),
                t.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                "{dtype:?}"
            );
        }
    }
}

#[test]
fn saving_keeps_an_oblique_affine_and_the_header() {
    let src = Volume::load(fixture("ct_i16_scaled.nii.gz")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("copy.nii.gz");
    src.save_as(&path, VoxelType::F32).unwrap();
    let back = Volume::load(&path).unwrap();
    assert_eq!(back.affine(), src.affine());
    assert_eq!(back.to_vec().unwrap(), src.to_vec().unwrap());
}

#[test]
fn a_scaled_integer_file_saved_in_its_own_type_keeps_nibabels_values_and_its_scaling() {
    // ct_i16_scaled.nii.gz: int16 with scl_slope 0.5, scl_inter -10 (written by nibabel).
    // Before, saving wrote slope 1 / inter 0 and rounded the scaled values (errors up to 0.5).
    let src = Volume::load(fixture("ct_i16_scaled.nii.gz")).unwrap();
    assert_eq!(src.scaling(), Some((0.5, -10.0)));
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("expected.json")).unwrap()).unwrap();
    let case = expected["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["file"] == "ct_i16_scaled.nii.gz")
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    for name in ["copy.nii.gz", "copy.nii"] {
        let path = dir.path().join(name);
        src.save(&path).unwrap();
        let back = Volume::load(&path).unwrap();
        assert_eq!(back.dtype(), VoxelType::I16);
        assert_eq!(back.scaling(), Some((0.5, -10.0)), "{name}");
        assert_eq!(back.to_vec().unwrap(), src.to_vec().unwrap(), "{name}");
        // The values nibabel reads from the source, at the positions the fixture lists.
        let sum: f64 = back.to_vec().unwrap().iter().map(|&v| v as f64).sum();
        assert_eq!(sum, case["sum"].as_f64().unwrap(), "{name}: sum");
        let t = back.tensor();
        for probe in case["voxels"].as_array().unwrap() {
            let idx: Vec<usize> = probe["index"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as usize)
                .collect();
            let got = t
                .get(idx[0])
                .unwrap()
                .get(idx[1])
                .unwrap()
                .get(idx[2])
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert_eq!(got as f64, probe["value"].as_f64().unwrap(), "{name} {idx:?}");
        }
    }
}

#[test]
fn files_written_by_nibabel_read_as_nibabel_reads_them() {
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("expected.json")).unwrap()).unwrap();
    for case in expected["cases"].as_array().unwrap() {
        let file = case["file"].as_str().unwrap();
        let vol = Volume::load(fixture(file)).unwrap();
        let shape: Vec<usize> = case["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(vol.shape(), &shape[..], "{file}: shape");
        assert_eq!(
            vol.dtype().name(),
            short(case["dtype"].as_str().unwrap()),
            "{file}: dtype"
        );
        for (i, z) in case["zooms"].as_array().unwrap().iter().enumerate() {
            assert!(
                (vol.spacing()[i] - z.as_f64().unwrap()).abs() < 1e-6,
                "{file}: zoom {i}"
            );
        }
        for (r, row) in case["affine"].as_array().unwrap().iter().enumerate() {
            for (c, v) in row.as_array().unwrap().iter().enumerate() {
                let (a, b) = (vol.affine()[r][c], v.as_f64().unwrap());
                assert!(
                    (a - b).abs() < 1e-5 * (1.0 + b.abs()),
                    "{file}: affine[{r}][{c}] {a} vs nibabel {b}"
                );
            }
        }
        let data = vol.to_vec().unwrap();
        let sum: f64 = data.iter().map(|&v| v as f64).sum();
        let want = case["sum"].as_f64().unwrap();
        assert!(
            (sum - want).abs() < 1e-4 * (1.0 + want.abs()),
            "{file}: sum {sum} vs nibabel {want}"
        );
        let strides: Vec<usize> = (0..shape.len())
            .map(|i| shape[i + 1..].iter().product())
            .collect();
        for vox in case["voxels"].as_array().unwrap() {
            let idx: Vec<usize> = vox["index"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as usize)
                .collect();
            let flat: usize = idx.iter().zip(&strides).map(|(i, s)| i * s).sum();
            let want = vox["value"].as_f64().unwrap();
            assert!(
                (data[flat] as f64 - want).abs() < 1e-5 * (1.0 + want.abs()),
                "{file}{idx:?}: {} vs nibabel {want}",
                data[flat]
            );
        }
    }
}

fn short(numpy: &str) -> &str {
    match numpy {
        "int16" => "i16",
        "uint8" => "u8",
        "float64" => "f64",
        "float32" => "f32",
        other => other,
    }
}

fn err_of(path: &Path) -> String {
    Volume::load(path)
        .expect_err("malformed file must not load")
        .to_string()
}

#[test]
fn a_truncated_gzip_file_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(fixture("ct_i16_scaled.nii.gz")).unwrap();
    let path = dir.path().join("truncated.nii.gz");
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let e = err_of(&path);
    assert!(e.contains("truncated.nii.gz"), "{e}");
}

#[test]
fn a_file_with_a_wrong_magic_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = std::fs::read(fixture("qform_u8.nii")).unwrap();
    bytes[344..348].copy_from_slice(b"xyz\0");
    let path = dir.path().join("badmagic.nii");
    std::fs::write(&path, &bytes).unwrap();
    let e = err_of(&path);
    assert!(e.contains("badmagic.nii"), "{e}");
}

#[test]
fn header_dims_larger_than_the_data_are_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = std::fs::read(fixture("qform_u8.nii")).unwrap();
    bytes[42..44].copy_from_slice(&50u16.to_le_bytes()); // dim[1]: 5 -> 50
    let path = dir.path().join("bigdims.nii");
    std::fs::write(&path, &bytes).unwrap();
    let e = err_of(&path);
    assert!(e.contains("bigdims.nii"), "{e}");
}

#[test]
fn a_missing_file_is_an_error_naming_the_file() {
    let e = err_of(Path::new("/nonexistent/scan.nii.gz"));
    assert!(
        e.contains("/nonexistent/scan.nii.gz") && e.contains("no such file"),
        "{e}"
    );
}

#[test]
fn values_that_do_not_fit_the_target_type_are_refused() {
    let t = ramp((2, 2, 2), 250.0, 1.0);
    let vol = Volume::from_tensor(&t, [1.0, 1.0, 1.0]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("overflow.nii");
    let e = vol.save_as(&path, VoxelType::U8).unwrap_err().to_string();
    assert!(e.contains("overflow.nii") && e.contains("u8"), "{e}");
    assert!(!path.exists(), "nothing is written on error");
}

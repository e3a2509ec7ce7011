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
            assert_eq!(
                got as f64,
                probe["value"].as_f64().unwrap(),
                "{name} {idx:?}"
            );
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

// === Crafted headers (issue 15, item 10) ===

/// A single-file NIfTI-1 (`n+1`) of `dims` with `datatype`/`bitpix`, in either byte order,
/// the voxels `data` (already in the file's byte order) at `vox_offset` (zeros in between),
/// identity sform, spacing 1.
struct Nii {
    little: bool,
    dims: Vec<i16>,
    datatype: i16,
    bitpix: i16,
    vox_offset: f32,
    slope: f32,
    inter: f32,
}

impl Nii {
    fn u8(dims: &[i16]) -> Nii {
        Nii {
            little: true,
            dims: dims.to_vec(),
            datatype: 2,
            bitpix: 8,
            vox_offset: 352.0,
            slope: 1.0,
            inter: 0.0,
        }
    }

    fn i16(dims: &[i16]) -> Nii {
        Nii {
            datatype: 4,
            bitpix: 16,
            ..Nii::u8(dims)
        }
    }

    fn bytes(&self, data: &[u8]) -> Vec<u8> {
        let mut h = vec![0u8; 348];
        let le = self.little;
        let put16 = |h: &mut Vec<u8>, at: usize, v: i16| {
            let b = if le { v.to_le_bytes() } else { v.to_be_bytes() };
            h[at..at + 2].copy_from_slice(&b);
        };
        let put32 = |h: &mut Vec<u8>, at: usize, v: [u8; 4]| h[at..at + 4].copy_from_slice(&v);
        let i32b = |v: i32| if le { v.to_le_bytes() } else { v.to_be_bytes() };
        let f32b = |v: f32| if le { v.to_le_bytes() } else { v.to_be_bytes() };
        put32(&mut h, 0, i32b(348));
        put16(&mut h, 40, self.dims.len() as i16);
        for (i, d) in self.dims.iter().enumerate() {
            put16(&mut h, 42 + 2 * i, *d);
        }
        for i in self.dims.len() + 1..8 {
            put16(&mut h, 40 + 2 * i, 1);
        }
        put16(&mut h, 70, self.datatype);
        put16(&mut h, 72, self.bitpix);
        for i in 0..8 {
            put32(&mut h, 76 + 4 * i, f32b(1.0));
        }
        put32(&mut h, 108, f32b(self.vox_offset));
        put32(&mut h, 112, f32b(self.slope));
        put32(&mut h, 116, f32b(self.inter));
        put16(&mut h, 254, 2); // sform_code
        for (r, at) in [280, 296, 312].into_iter().enumerate() {
            put32(&mut h, at + 4 * r, f32b(1.0));
        }
        h[344..348].copy_from_slice(b"n+1\0");
        h.extend_from_slice(&[0, 0, 0, 0]); // extension flag 0: no extensions
        let start = if self.vox_offset.is_finite() && self.vox_offset < 1e6 {
            (self.vox_offset as usize).max(352)
        } else {
            352
        };
        h.resize(start, 0);
        h.extend_from_slice(data);
        h
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// Writes `bytes` as `name` in `dir` and loads it.
fn load_bytes(dir: &Path, name: &str, bytes: &[u8]) -> pretext::error::Result<Volume> {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    Volume::load(&path)
}

/// 2×3×4 u8 voxels 1..=24 in file (F) order, and the C-order values the tensor must hold.
fn ramp_u8() -> (Vec<u8>, Vec<f32>) {
    let file: Vec<u8> = (1..=24).collect();
    let mut c = vec![0f32; 24];
    for x in 0..2 {
        for y in 0..3 {
            for z in 0..4 {
                c[(x * 3 + y) * 4 + z] = file[x + 2 * y + 6 * z] as f32;
            }
        }
    }
    (file, c)
}

#[test]
fn vox_offset_is_honoured_without_extensions() {
    // nibabel reads such a file (vox_offset 480, extension flag 0) from byte 480; the nifti
    // crate read it from byte 352 (the padding as voxels).
    let dir = tempfile::tempdir().unwrap();
    let (file, want) = ramp_u8();
    for offset in [352.0, 480.0, 1000.5] {
        let bytes = Nii {
            vox_offset: offset,
            ..Nii::u8(&[2, 3, 4])
        }
        .bytes(&file);
        for (name, b) in [("v.nii", bytes.clone()), ("v.nii.gz", gzip(&bytes))] {
            let v = load_bytes(dir.path(), name, &b).unwrap();
            assert_eq!(v.shape(), &[2, 3, 4], "{name} at {offset}");
            assert_eq!(v.to_vec().unwrap(), want, "{name} at {offset}");
        }
    }
    // The real file of the issue: nibabel's qform_u8.nii with 128 bytes of padding.
    let src = std::fs::read(fixture("qform_u8.nii")).unwrap();
    let mut padded = src[..352].to_vec();
    padded[108..112].copy_from_slice(&480f32.to_le_bytes());
    padded.extend_from_slice(&[0u8; 128]);
    padded.extend_from_slice(&src[352..]);
    let a = Volume::load(fixture("qform_u8.nii")).unwrap();
    let b = load_bytes(dir.path(), "padded.nii", &padded).unwrap();
    assert_eq!(b.to_vec().unwrap(), a.to_vec().unwrap());
    assert_eq!(b.affine(), a.affine());
}

#[test]
fn vox_offset_inside_the_header_or_past_the_end_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let (file, _) = ramp_u8();
    for off in [100.0, -16.0, f32::NAN, f32::INFINITY] {
        let b = Nii {
            vox_offset: off,
            ..Nii::u8(&[2, 3, 4])
        }
        .bytes(&file);
        let e = load_bytes(dir.path(), "low.nii", &b)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("low.nii") && e.contains("vox_offset") && e.contains("352"),
            "{e}"
        );
    }
    let mut b = Nii::u8(&[2, 3, 4]).bytes(&file);
    b[108..112].copy_from_slice(&4000f32.to_le_bytes());
    for (name, bytes) in [("far.nii", b.clone()), ("far.nii.gz", gzip(&b))] {
        let e = load_bytes(dir.path(), name, &bytes)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(name) && e.contains("4000") && e.contains("[2, 3, 4]"),
            "{e}"
        );
    }
}

#[test]
fn a_slope_of_zero_nan_or_infinity_means_no_scaling_as_in_nibabel() {
    let dir = tempfile::tempdir().unwrap();
    let (file, want) = ramp_u8();
    for slope in [0.0, f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        for inter in [0.0, 5.0, f32::NAN] {
            let b = Nii {
                slope,
                inter,
                ..Nii::u8(&[2, 3, 4])
            }
            .bytes(&file);
            let v = load_bytes(dir.path(), "s.nii", &b).unwrap();
            assert_eq!(v.to_vec().unwrap(), want, "slope {slope} inter {inter}");
            assert_eq!(v.scaling(), None);
        }
    }
    // A valid slope scales (in f64, as nibabel's get_fdata), with the intercept.
    let b = Nii {
        slope: 0.5,
        inter: -3.0,
        ..Nii::u8(&[2, 3, 4])
    }
    .bytes(&file);
    let v = load_bytes(dir.path(), "s.nii", &b).unwrap();
    let scaled: Vec<f32> = want.iter().map(|x| x * 0.5 - 3.0).collect();
    assert_eq!(v.to_vec().unwrap(), scaled);
}

#[test]
fn a_valid_slope_with_a_non_finite_intercept_is_refused_as_in_nibabel() {
    let dir = tempfile::tempdir().unwrap();
    let (file, _) = ramp_u8();
    for inter in [f32::NAN, f32::INFINITY] {
        let b = Nii {
            slope: 2.0,
            inter,
            ..Nii::u8(&[2, 3, 4])
        }
        .bytes(&file);
        let e = load_bytes(dir.path(), "i.nii", &b).unwrap_err().to_string();
        assert!(e.contains("i.nii") && e.contains("scl_inter"), "{e}");
    }
}

#[test]
fn bad_dims_name_the_field_and_its_value_in_either_byte_order() {
    let dir = tempfile::tempdir().unwrap();
    for little in [true, false] {
        let with = |dims: &[i16]| Nii {
            little,
            ..Nii::u8(dims)
        };
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                with(&[2, -3, 4]).bytes(&[0; 24]),
                "dim[2] (the size of dimension 2 of 3) is -3",
            ),
            (
                with(&[2, 3, 0]).bytes(&[0; 24]),
                "dim[3] (the size of dimension 3 of 3) is 0",
            ),
            (
                with(&[-7, 3, 4]).bytes(&[0; 24]),
                "dim[1] (the size of dimension 1 of 3) is -7",
            ),
            (
                {
                    let mut b = with(&[2, 3, 4]).bytes(&[0; 24]);
                    b[40..42].copy_from_slice(&[0, 0]); // dim[0] = 0 in either byte order
                    b
                },
                "dim[0] (the number of dimensions) is 0, expected 1..7",
            ),
            (
                {
                    let mut b = with(&[2, 3, 4]).bytes(&[0; 24]);
                    let v = if little {
                        9i16.to_le_bytes()
                    } else {
                        9i16.to_be_bytes()
                    };
                    b[40..42].copy_from_slice(&v);
                    b
                },
                "dim[0] (the number of dimensions) is 9, expected 1..7",
            ),
            (
                {
                    let mut b = with(&[2, 3, 4]).bytes(&[0; 24]);
                    let v = if little {
                        (-1i16).to_le_bytes()
                    } else {
                        (-1i16).to_be_bytes()
                    };
                    b[40..42].copy_from_slice(&v);
                    b
                },
                "dim[0] (the number of dimensions) is -1, expected 1..7",
            ),
        ];
        for (bytes, want) in cases {
            let e = load_bytes(dir.path(), "d.nii", &bytes)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("d.nii") && e.contains(want),
                "little {little}: {e}"
            );
        }
        // The same header in big-endian order reads as the little-endian one.
        let (file, want) = ramp_u8();
        let v = load_bytes(dir.path(), "ok.nii", &with(&[2, 3, 4]).bytes(&file)).unwrap();
        assert_eq!(v.to_vec().unwrap(), want, "little {little}");
    }
}

#[test]
fn bitpix_that_disagrees_with_datatype_is_ignored_as_in_nibabel() {
    // The fuzzed panic ("Inconsistent raw data size" inside the nifti crate): the crate sized
    // the data by bitpix and decoded it by datatype.
    let dir = tempfile::tempdir().unwrap();
    let values: Vec<i16> = (0..24).map(|i| i * 100 - 1000).collect();
    let le: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    for bitpix in [8, 0, -16, 64] {
        let b = Nii {
            bitpix,
            ..Nii::i16(&[2, 3, 4])
        }
        .bytes(&le);
        for (name, bytes) in [("b.nii", b.clone()), ("b.nii.gz", gzip(&b))] {
            let v = load_bytes(dir.path(), name, &bytes).unwrap();
            assert_eq!(v.dtype(), VoxelType::I16);
            let sum: f32 = v.to_vec().unwrap().iter().sum();
            assert_eq!(
                sum,
                values.iter().map(|&v| v as f32).sum::<f32>(),
                "bitpix {bitpix}"
            );
        }
    }
}

#[test]
fn unsupported_datatypes_name_the_type() {
    let dir = tempfile::tempdir().unwrap();
    for (code, name) in [
        (0, "unknown (0)"),
        (32, "complex64 (32)"),
        (128, "RGB24"),
        (7, "7"),
    ] {
        let b = Nii {
            datatype: code,
            ..Nii::u8(&[2, 3, 4])
        }
        .bytes(&[0; 200]);
        let e = load_bytes(dir.path(), "t.nii", &b).unwrap_err().to_string();
        assert!(e.contains("t.nii") && e.contains(name), "{e}");
    }
}

#[test]
fn io_failures_are_described_in_words_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let no_debug = |e: &str| {
        for debug in ["IsADirectory", "UnexpectedEof", "Kind(", "Os {", "code:"] {
            assert!(!e.contains(debug), "Rust debug form in: {e}");
        }
    };
    // A folder where a file is expected.
    let folder = dir.path().join("scan.nii.gz");
    std::fs::create_dir(&folder).unwrap();
    let e = Volume::load(&folder).unwrap_err().to_string();
    no_debug(&e);
    assert!(
        e.contains("scan.nii.gz") && e.contains("a folder, expected a NIfTI-1 file"),
        "{e}"
    );
    // Empty, cut inside the header, cut inside the voxels; plain and gzip.
    let (file, _) = ramp_u8();
    let full = Nii::u8(&[2, 3, 4]).bytes(&file);
    let cases: [(&str, Vec<u8>, &str); 6] = [
        ("empty.nii", vec![], "an empty file"),
        (
            "head.nii",
            full[..200].to_vec(),
            "ends after 200 bytes, inside the 348-byte header",
        ),
        (
            "voxels.nii",
            full[..360].to_vec(),
            "the file has 360 bytes, but the header's dims",
        ),
        (
            "head.nii.gz",
            gzip(&full[..200]),
            "ends after 200 bytes, inside the 348-byte header",
        ),
        (
            "voxels.nii.gz",
            gzip(&full[..360]),
            "ends after 8 bytes of voxels",
        ),
        (
            "cut.nii.gz",
            gzip(&full)[..30].to_vec(),
            "truncated .gz file",
        ),
    ];
    for (name, bytes, want) in cases {
        let e = load_bytes(dir.path(), name, &bytes)
            .unwrap_err()
            .to_string();
        no_debug(&e);
        assert!(e.contains(name) && e.contains(want), "{name}: {e}");
    }
    // A NIfTI-2 header says so.
    let mut two = full.clone();
    two[..4].copy_from_slice(&540i32.to_le_bytes());
    let e = load_bytes(dir.path(), "two.nii", &two)
        .unwrap_err()
        .to_string();
    assert!(e.contains("NIfTI-2"), "{e}");
}

#[test]
fn a_volume_of_several_read_blocks_reads_in_nibabels_index_order() {
    // 100×120×200 u16 is 4.8 MB of voxels: more than one block of the streaming reader.
    let dir = tempfile::tempdir().unwrap();
    let (nx, ny, nz) = (100usize, 120usize, 200usize);
    let data: Vec<u8> = (0..nx * ny * nz)
        .flat_map(|i| ((i % 65521) as u16).to_le_bytes())
        .collect();
    let b = Nii {
        datatype: 512,
        bitpix: 16,
        ..Nii::u8(&[nx as i16, ny as i16, nz as i16])
    }
    .bytes(&data);
    for (name, bytes) in [("m.nii", b.clone()), ("m.nii.gz", gzip(&b))] {
        let v = load_bytes(dir.path(), name, &bytes).unwrap();
        assert_eq!(v.shape(), &[nx, ny, nz]);
        let values = v.to_vec().unwrap();
        // Voxel [x, y, z] holds file element x + nx y + nx ny z.
        for (x, y, z) in [
            (0, 0, 0),
            (99, 0, 0),
            (1, 2, 3),
            (99, 119, 199),
            (10, 40, 150),
        ] {
            let got = values[(x * ny + y) * nz + z];
            let want = ((x + nx * y + nx * ny * z) % 65521) as f32;
            assert_eq!(got, want, "{name} [{x}, {y}, {z}]");
        }
    }
}

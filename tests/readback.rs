//! Files pretext writes, as independent readers see them: `scripts/make_readback_fixtures.py`
//! ran `tests/fixtures/readback/write.rhai` and recorded what nibabel reads from its NIfTI
//! files and the `safetensors` package from its checkpoint. The tests check that report against
//! what the script meant to write, and that pretext still writes those very files (a SHA-256
//! of each file's data); after a deliberate change of a writer, rerun the fixture script.

mod common;

use std::io::Read;
use std::path::Path;

use serde_json::Value;
use sha2::{Digest, Sha256};

fn report() -> Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/readback/expected.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// Voxel [x, y, z] of the script's 5×4×3 volume.
fn intended(x: usize, y: usize, z: usize) -> f64 {
    0.5 * (12 * x + 3 * y + z) as f64 - 7.25
}

#[test]
fn nibabel_reads_pretexts_nifti_files_as_written() {
    let r = report();
    let cases = [
        ("f32.nii.gz", "float32", [0.8, 0.9, 2.5], 0),
        ("i16.nii", "int16", [1.0, 1.5, 2.0], 1),
        ("u8.nii.gz", "uint8", [1.0, 1.0, 1.0], 2),
    ];
    for (name, dtype, zooms, kind) in cases {
        let c = &r["nifti"][name];
        assert_eq!(c["shape"], serde_json::json!([5, 4, 3]), "{name}");
        assert_eq!(c["dtype"], dtype, "{name}");
        for (i, z) in zooms.iter().enumerate() {
            let got = c["zooms"][i].as_f64().unwrap();
            assert_eq!(got, *z as f32 as f64, "{name}: zoom {i}");
            // The affine nibabel builds: the zooms on the diagonal, origin 0 (sform code 2).
            for j in 0..4 {
                let want = if i == j { got } else { 0.0 };
                assert_eq!(c["affine"][i][j].as_f64().unwrap(), want, "{name}: affine");
            }
        }
        assert_eq!(c["sform_code"], 2, "{name}");
        assert_eq!(
            (c["slope"].as_f64(), c["inter"].as_f64()),
            (Some(1.0), Some(0.0))
        );
        let voxels: Vec<f64> = c["voxels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(voxels.len(), 60);
        for x in 0..5 {
            for y in 0..4 {
                for z in 0..3 {
                    let want = match kind {
                        0 => intended(x, y, z),
                        1 => (10.0 * intended(x, y, z)).round(),
                        _ => (12 * x + 3 * y + z) as f64,
                    };
                    let got = voxels[(x * 4 + y) * 3 + z];
                    assert_eq!(got, want, "{name}: nibabel's voxel [{x}, {y}, {z}]");
                }
            }
        }
    }
}

#[test]
fn the_safetensors_package_reads_pretexts_checkpoint_as_written() {
    let r = &report()["checkpoint"];
    let manifest: Value = serde_json::from_str(r["metadata"]["pretext"].as_str().unwrap()).unwrap();
    assert_eq!(manifest["model"], "UNet3D(filters 2, depth 2, classes 3)");
    // The same names and shapes as the model pretext builds, every tensor f32.
    let store = pretext::nn::ParamStore::new(0);
    let cfg = pretext::nn::UNet3dConfig {
        filters: 2,
        depth: 2,
        ..Default::default()
    };
    pretext::nn::UNet3d::new(
        &cfg,
        store.builder(candle_core::DType::F32, &candle_core::Device::Cpu),
    )
    .unwrap();
    let tensors = r["tensors"].as_object().unwrap();
    let ours = store.all();
    assert_eq!(tensors.len(), ours.len());
    for (name, var) in &ours {
        let t = &tensors[name.as_str()];
        assert_eq!(t["dtype"], "float32", "{name}");
        let shape: Vec<usize> = t["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(shape, var.dims(), "{name}");
        // BatchNorm starts at weight 1, bias 0, mean 0, variance 1 (sums = channel counts).
        let sum = t["sum"].as_f64().unwrap();
        let c = var.dims()[0] as f64;
        if name.contains(".bn") {
            let want = if name.ends_with("weight") || name.ends_with("running_var") {
                c
            } else {
                0.0
            };
            assert_eq!(sum, want, "{name}");
        } else if name.ends_with("weight") {
            assert!(sum != 0.0, "{name}: initialised weights");
        }
    }
}

/// SHA-256 of a file's data (decompressed for .gz), as the fixture script computes it.
fn data_sha256(path: &Path) -> String {
    let raw = std::fs::read(path).unwrap();
    let data = if path.extension().is_some_and(|e| e == "gz") {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .unwrap();
        out
    } else {
        raw
    };
    Sha256::digest(&data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn pretext_still_writes_the_files_the_independent_readers_read() {
    let dir = tempfile::tempdir().unwrap();
    let o = common::pretext(
        &[
            "run",
            "tests/fixtures/readback/write.rhai",
            "--set",
            &format!("out={}", dir.path().display()),
        ],
        None,
    );
    assert!(o.status.success(), "{}", common::stderr(&o));
    let r = report();
    for name in ["f32.nii.gz", "i16.nii", "u8.nii.gz"] {
        assert_eq!(
            data_sha256(&dir.path().join(name)),
            r["nifti"][name]["sha256"].as_str().unwrap(),
            "{name} differs from the file nibabel read; if the writer changed on purpose, \
             rerun scripts/make_readback_fixtures.py"
        );
    }
    assert_eq!(
        data_sha256(&dir.path().join("unet.safetensors")),
        r["checkpoint"]["sha256"].as_str().unwrap(),
        "the checkpoint differs from the one the safetensors package read"
    );
}

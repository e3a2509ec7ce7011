//! The readers of user files against the fuzz targets' inputs (issue 15 item 11), in the
//! ordinary `cargo test` (the fuzz crate itself is never built here; see fuzz/README.md):
//!
//! - every seed in `fuzz/seeds/<target>/` (valid files written by independent tools) is read,
//!   from its path and from its bytes, with the same result;
//! - every file in `tests/fixtures/fuzz/<target>/` (an input that once crashed a reader) is
//!   refused with an error that names the file, never a panic;
//! - every truncation of every seed, and (for `.nii` files, CSV, JSON and safetensors) every
//!   seed with one byte replaced by 0x00, 0xFF or itself xor 0x80, is read or refused with an
//!   error naming the file, never a panic: a small deterministic fuzz run of each target.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use pretext::nn::{LoadOptions, LoadReport, ParamStore};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The files of a folder, sorted; none when it does not exist.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.retain(|p| p.is_file());
    files.sort();
    files
}

fn seeds(target: &str) -> Vec<PathBuf> {
    let seeds = files(&root().join("fuzz/seeds").join(target));
    assert!(!seeds.is_empty(), "no seeds in fuzz/seeds/{target}");
    seeds
}

fn crashes(target: &str) -> Vec<PathBuf> {
    files(&root().join("tests/fixtures/fuzz").join(target))
}

fn name(f: &Path) -> String {
    f.file_name().unwrap().to_string_lossy().into_owned()
}

/// Runs `read` (`Ok(summary)` or `Err(message)`), turning a panic into a failure message.
fn outcome<T>(
    what: &str,
    read: impl FnOnce() -> Result<T, String>,
) -> Result<Result<T, String>, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(read))
        .map_err(|_| format!("{what}: panicked"))
}

/// The bytes derived from one seed: every truncation, and with `mutate` every one-byte
/// replacement (0x00, 0xFF, xor 0x80).
fn variants(bytes: &[u8], mutate: bool) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = (0..bytes.len())
        .map(|n| (format!("cut to {n} bytes"), bytes[..n].to_vec()))
        .collect();
    if mutate {
        for i in 0..bytes.len() {
            for v in [0x00, 0xFF, bytes[i] ^ 0x80] {
                if v != bytes[i] {
                    let mut b = bytes.to_vec();
                    b[i] = v;
                    out.push((format!("byte {i} set to {v:#04x}"), b));
                }
            }
        }
    }
    out
}

/// The checks of one target. `from_path` and `from_bytes` return a summary of what was read
/// (compared between the two for the seeds) or the error message; `error_name(file)` is what
/// an error about `file` must contain; `mutate(file)` whether the seed gets one-byte
/// replacements besides truncations.
fn check_target<T: PartialEq + std::fmt::Debug>(
    target: &str,
    from_path: impl Fn(&Path) -> Result<T, String>,
    from_bytes: impl Fn(&[u8], &str) -> Result<T, String>,
    error_name: impl Fn(&Path) -> String,
    mutate: impl Fn(&Path) -> bool,
) {
    let mut bad = Vec::new();
    for seed in seeds(target) {
        let bytes = std::fs::read(&seed).unwrap();
        let shown = format!("seed {}", seed.display());
        match (
            outcome(&shown, || from_path(&seed)),
            outcome(&shown, || from_bytes(&bytes, "seed.bin")),
        ) {
            (Ok(Ok(a)), Ok(Ok(b))) if a == b => {}
            (Ok(Ok(a)), Ok(Ok(b))) => bad.push(format!("{shown}: path gives {a:?}, bytes {b:?}")),
            (a, b) => bad.push(format!(
                "{shown}: not read: from its path {a:?}, from bytes {b:?}"
            )),
        }
        for (how, b) in variants(&bytes, mutate(&seed)) {
            let shown = format!("{shown} {how}");
            match outcome(&shown, || from_bytes(&b, "mutant.bin")) {
                Ok(Ok(_)) => {}
                Ok(Err(msg)) if msg.contains("mutant.bin") => {}
                Ok(Err(msg)) => bad.push(format!("{shown}: error does not name the file: {msg}")),
                Err(e) => bad.push(e),
            }
        }
    }
    for f in crashes(target) {
        let shown = format!("crash {}", f.display());
        match outcome(&shown, || from_path(&f)) {
            Ok(Err(msg)) if msg.contains(&error_name(&f)) => {}
            Ok(Err(msg)) => bad.push(format!("{shown}: error does not name it: {msg}")),
            Ok(Ok(v)) => bad.push(format!("{shown}: accepted ({v:?}), expected an error")),
            Err(e) => bad.push(e),
        }
    }
    let shown: Vec<&String> = bad.iter().take(20).collect();
    assert!(
        bad.is_empty(),
        "{target}: {} failures, the first:\n{shown:#?}",
        bad.len()
    );
}

/// A volume as shape, spacing and the bits of its values.
type VolumeSummary = (Vec<usize>, Vec<u32>);

fn volume_summary(v: pretext::Result<pretext::Volume>) -> Result<VolumeSummary, String> {
    let v = v.map_err(|e| e.to_string())?;
    let values = v.to_vec().map_err(|e| e.to_string())?;
    assert_eq!(values.len(), v.shape().iter().product::<usize>());
    Ok((
        v.shape().to_vec(),
        values.iter().map(|x| x.to_bits()).collect(),
    ))
}

#[test]
fn nifti_reader() {
    assert!(
        !crashes("nifti").is_empty(),
        "the bitpix crashes of issue 15 are kept"
    );
    check_target(
        "nifti",
        |p| volume_summary(pretext::Volume::load(p)),
        |b, n| volume_summary(pretext::Volume::from_bytes(b, n)),
        name,
        // A mutated gzip stream is refused by its checksum; mutate the plain files.
        |p| p.extension().is_some_and(|e| e == "nii"),
    );
}

#[test]
fn image_reader() {
    assert!(!crashes("image").is_empty(), "the zune-jpeg crash is kept");
    let summary =
        |img: pretext::Result<pretext::Image>| -> Result<(usize, usize, Vec<u32>), String> {
            let img = img.map_err(|e| e.to_string())?;
            let t = img.tensor().map_err(|e| e.to_string())?;
            let values: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
            Ok((
                img.width(),
                img.height(),
                values.iter().map(|x| x.to_bits()).collect(),
            ))
        };
    check_target(
        "image",
        |p| summary(pretext::Image::load(p)),
        |b, n| summary(pretext::Image::from_bytes(b, n)),
        name,
        // Compressed data: truncations reach every decoder path a byte flip would.
        |_| false,
    );
}

/// A dataset as its case ids, image and label paths relative to the folder.
fn dataset_summary(
    d: pretext::Result<pretext::data::Decathlon>,
    root: &Path,
) -> Result<Vec<String>, String> {
    let d = d.map_err(|e| e.to_string())?;
    let rel = |p: &Path| {
        assert!(
            p.starts_with(root),
            "{} outside the dataset {}",
            p.display(),
            root.display()
        );
        p.strip_prefix(root).unwrap().display().to_string()
    };
    Ok(d.cases()
        .map(|c| {
            format!(
                "{} {} {:?}",
                c.id,
                rel(&c.image),
                c.label.as_deref().map(rel)
            )
        })
        .collect())
}

#[test]
fn dataset_json_reader() {
    let tmp = tempfile::tempdir().unwrap();
    let bytes_root = tmp.path().join("bytes");
    check_target(
        "dataset_json",
        |f| {
            // The file as the dataset.json of a folder named after it.
            let dir = tmp.path().join(name(f));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::copy(f, dir.join("dataset.json")).unwrap();
            dataset_summary(pretext::data::Decathlon::open(&dir), &dir)
        },
        |b, n| {
            let dir = bytes_root.join(n);
            match std::str::from_utf8(b) {
                Ok(text) => dataset_summary(pretext::data::Decathlon::parse(&dir, text), &dir),
                // The fuzz target skips non-UTF-8 input too; the file reader refuses it.
                Err(_) => Err(format!("{n}: not UTF-8")),
            }
        },
        |f| format!("{}/dataset.json", name(f)),
        |_| true,
    );
}

#[test]
fn aptos_csv_reader() {
    check_target(
        "aptos_csv",
        |f| {
            let file = std::fs::File::open(f).unwrap();
            match pretext::data::aptos::parse_csv(f, file) {
                Err(e) => Err(e.to_string()),
                // A crash input must at least give a problem naming the file.
                Ok((_, problems)) if !problems.is_empty() => Err(problems[0].to_string()),
                Ok((rows, _)) => Ok(rows),
            }
        },
        |b, n| {
            let (rows, problems) =
                pretext::data::aptos::parse_csv(Path::new(n), b).map_err(|e| e.to_string())?;
            for r in &rows {
                assert!(
                    r.grade <= 4 && !r.id.is_empty() && !r.id.contains(['/', '\\']),
                    "{r:?}"
                );
            }
            for p in &problems {
                assert!(p.to_string().contains(n), "problem does not name {n}: {p}");
            }
            if !problems.is_empty() && n == "seed.bin" {
                return Err(format!("{n}: {problems:?}"));
            }
            Ok(rows)
        },
        name,
        |_| true,
    );
}

/// The parameter store of the fuzz target: two encoder tensors, a running statistic, a head.
fn small_store() -> ParamStore {
    let store = ParamStore::new(0);
    let vb = store.builder(DType::F32, &Device::Cpu);
    for (n, shape) in [
        ("encoder.conv.weight", vec![2, 1, 3, 3]),
        ("encoder.conv.bias", vec![2]),
        ("encoder.bn.running_mean", vec![2]),
        ("head.weight", vec![3, 4]),
    ] {
        vb.get_with_hints(shape, n, candle_nn::Init::Const(0.5))
            .unwrap();
    }
    store
}

/// What a checkpoint gives: the load report of the whole file, the one of the encoder with
/// DDP's `module.` stripped, and the manifest.
type CheckpointSummary = (LoadReport, LoadReport, Option<serde_json::Value>);

fn checkpoint_summary(
    load: impl Fn(&ParamStore, &LoadOptions) -> pretext::Result<LoadReport>,
    manifest: pretext::Result<serde_json::Value>,
    name: &str,
) -> Result<CheckpointSummary, String> {
    let ddp = LoadOptions {
        prefix: Some("encoder.".into()),
        rename: vec![("module.".into(), String::new())],
    };
    let whole = load(&small_store(), &LoadOptions::default()).map_err(|e| e.to_string())?;
    let encoder = load(&small_store(), &ddp).map_err(|e| e.to_string())?;
    let manifest = match manifest {
        Ok(m) => Some(m),
        Err(e) if e.to_string().contains(name) => None,
        Err(e) => return Err(format!("manifest error does not name {name}: {e}")),
    };
    Ok((whole, encoder, manifest))
}

#[test]
fn checkpoint_reader() {
    check_target(
        "checkpoint",
        |f| checkpoint_summary(|s, o| s.load(f, o), ParamStore::manifest(f), &name(f)),
        |b, n| {
            checkpoint_summary(
                |s, o| s.load_bytes(b, n, o),
                ParamStore::manifest_bytes(b, n),
                n,
            )
        },
        name,
        |_| true,
    );
}

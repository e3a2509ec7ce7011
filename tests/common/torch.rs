//! PyTorch fixtures (written by `scripts/make_fixtures.py`) and comparisons against them.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor, Var};

/// The tensors of `tests/fixtures/torch/<name>.safetensors`.
pub struct Fixture {
    name: String,
    tensors: HashMap<String, Tensor>,
}

impl Fixture {
    /// Loads a fixture by name.
    pub fn load(name: &str) -> Fixture {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/torch")
            .join(format!("{name}.safetensors"));
        let tensors = candle_core::safetensors::load(&path, &Device::Cpu)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        Fixture {
            name: name.into(),
            tensors,
        }
    }

    /// The tensor `key`.
    pub fn get(&self, key: &str) -> Tensor {
        self.tensors
            .get(key)
            .unwrap_or_else(|| panic!("fixture {} has no tensor {key}", self.name))
            .clone()
    }

    /// Whether the fixture has a tensor `key`.
    pub fn has(&self, key: &str) -> bool {
        self.tensors.contains_key(key)
    }

    /// The tensor `key` as a trainable variable of dtype `dtype`.
    pub fn var(&self, key: &str, dtype: DType) -> Var {
        Var::from_tensor(&self.get(key).to_dtype(dtype).unwrap()).unwrap()
    }

    /// Every key starting with `prefix`, without the prefix.
    pub fn keys_with(&self, prefix: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .tensors
            .keys()
            .filter_map(|k| k.strip_prefix(prefix).map(str::to_string))
            .collect();
        v.sort();
        v
    }
}

/// `max |a - b| / max |b|`: the error relative to the reference's scale.
pub fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let a = a.to_dtype(DType::F64).unwrap().flatten_all().unwrap();
    let b = b.to_dtype(DType::F64).unwrap().flatten_all().unwrap();
    let diff = (&a - &b)
        .unwrap()
        .abs()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    let scale = b.abs().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap();
    diff / scale.max(1e-30)
}

/// Asserts `rel_err(a, b) <= tol`, naming `what`.
pub fn assert_close(a: &Tensor, b: &Tensor, tol: f64, what: &str) {
    let e = rel_err(a, b);
    assert!(e <= tol, "{what}: relative error {e:.3e} > {tol:e}");
}

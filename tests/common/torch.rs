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

/// The multi-index of flat position `i` in a tensor of shape `dims`.
pub fn position(dims: &[usize], mut i: usize) -> Vec<usize> {
    let mut pos = vec![0; dims.len()];
    for (p, &d) in pos.iter_mut().zip(dims).rev() {
        *p = i % d.max(1);
        i /= d.max(1);
    }
    pos
}

/// `max |a - b| / max |b|` over the elements, or an error naming the first element that is NaN
/// or infinite on either side (with its position) or the shapes when they differ. Every element
/// is visited: unlike a reduction with `max`, a NaN anywhere cannot be skipped.
pub fn try_rel_err(a: &Tensor, b: &Tensor) -> Result<f64, String> {
    if a.dims() != b.dims() {
        return Err(format!("shapes differ: {:?} vs {:?}", a.dims(), b.dims()));
    }
    let flat = |t: &Tensor| -> Vec<f64> {
        t.to_dtype(DType::F64)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap()
    };
    let (av, bv) = (flat(a), flat(b));
    let (mut diff, mut scale) = (0f64, 0f64);
    for (i, (&x, &y)) in av.iter().zip(&bv).enumerate() {
        for (v, side) in [(x, "result"), (y, "reference")] {
            if !v.is_finite() {
                return Err(format!(
                    "{v} in the {side} at {:?} (flat index {i}; result {x}, reference {y})",
                    position(a.dims(), i)
                ));
            }
        }
        diff = diff.max((x - y).abs());
        scale = scale.max(y.abs());
    }
    Ok(diff / scale.max(1e-30))
}

/// `max |a - b| / max |b|`: the error relative to the reference's scale. Panics when the shapes
/// differ or either side holds a NaN or an infinity (naming its position).
pub fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    try_rel_err(a, b).unwrap_or_else(|e| panic!("{e}"))
}

/// Asserts `rel_err(a, b) <= tol`, naming `what`; a NaN or infinity on either side fails.
pub fn assert_close(a: &Tensor, b: &Tensor, tol: f64, what: &str) {
    match try_rel_err(a, b) {
        Ok(e) => assert!(e <= tol, "{what}: relative error {e:.3e} > {tol:e}"),
        Err(e) => panic!("{what}: {e}"),
    }
}

/// `max |a - b|` over two slices, or an error naming the first index where either side is NaN
/// or infinite (a `fold` with `f32::max` would drop it).
pub fn try_max_abs_diff(a: &[f32], b: &[f32]) -> Result<f32, String> {
    if a.len() != b.len() {
        return Err(format!("lengths differ: {} vs {}", a.len(), b.len()));
    }
    let mut worst = 0f32;
    for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
        if !x.is_finite() || !y.is_finite() {
            return Err(format!(
                "non-finite value at index {i}: result {x}, reference {y}"
            ));
        }
        worst = worst.max((x - y).abs());
    }
    Ok(worst)
}

/// [`try_max_abs_diff`], panicking on a non-finite value.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    try_max_abs_diff(a, b).unwrap_or_else(|e| panic!("{e}"))
}

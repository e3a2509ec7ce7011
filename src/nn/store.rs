//! Parameters: a [`ParamStore`] backs candle's `VarBuilder`, initialises every parameter from
//! its own seeded generator (candle's CPU generator cannot be seeded), and saves and loads
//! safetensors checkpoints with a JSON manifest in the file's metadata.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::{Init, VarBuilder, init::FanInOut, init::NormalOrUniform};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, Normal, Uniform};

use crate::error::{Error, FileContext, Result};

/// Name endings of non-trainable buffers (BatchNorm running statistics).
const BUFFERS: [&str; 2] = ["running_mean", "running_var"];

/// The metadata key holding a checkpoint's JSON manifest.
pub(crate) const MANIFEST_KEY: &str = "pretext";

/// Named parameters and buffers of one or more models, created on first use.
#[derive(Clone)]
pub struct ParamStore {
    inner: Arc<Inner>,
}

struct Inner {
    vars: Mutex<BTreeMap<String, Var>>,
    rng: Mutex<StdRng>,
}

/// What [`ParamStore::load`] did, tensor by tensor.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LoadReport {
    /// Tensors copied from the file (every list is sorted by name).
    pub loaded: Vec<String>,
    /// Tensors of the store (within the selection) the file lacks; they keep their values.
    pub missing: Vec<String>,
    /// Tensors of the file (within the selection) the store does not have.
    pub unexpected: Vec<String>,
    /// Tensors present in both with different shapes: `(name, in the store, in the file)`.
    pub mismatched: Vec<(String, Vec<usize>, Vec<usize>)>,
}

impl LoadReport {
    /// Whether every selected tensor of the store was loaded and nothing was left over.
    pub fn is_complete(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.mismatched.is_empty()
    }
}

/// Which tensors [`ParamStore::load`] copies and how file names map to store names.
#[derive(
    Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(default, deny_unknown_fields)]
pub struct LoadOptions {
    /// Only names (after renaming) starting with this prefix take part, e.g. `"encoder."`.
    pub prefix: Option<String>,
    /// Prefix rewrites applied to file names, in order: `("module.", "")` strips DDP's prefix.
    pub rename: Vec<(String, String)>,
}

impl ParamStore {
    /// An empty store whose parameters will be initialised from `seed`.
    pub fn new(seed: u64) -> Self {
        ParamStore {
            inner: Arc::new(Inner {
                vars: Mutex::new(BTreeMap::new()),
                rng: Mutex::new(StdRng::seed_from_u64(seed)),
            }),
        }
    }

    /// A `VarBuilder` that creates (or returns existing) parameters in this store.
    pub fn builder(&self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self.clone()), dtype, device.clone())
    }

    fn vars(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Var>> {
        self.inner.vars.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every tensor (parameters and buffers), by name.
    pub fn all(&self) -> Vec<(String, Var)> {
        self.vars()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// The trainable parameters (everything but BatchNorm running statistics) under `prefix`.
    pub fn trainable(&self, prefix: &str) -> Vec<(String, Var)> {
        self.vars()
            .iter()
            .filter(|(k, _)| k.starts_with(prefix) && !is_buffer(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// The number of trainable scalars under `prefix`.
    pub fn trainable_count(&self, prefix: &str) -> usize {
        self.trainable(prefix)
            .iter()
            .map(|(_, v)| v.elem_count())
            .sum()
    }

    /// The tensor called `name`.
    pub fn get(&self, name: &str) -> Option<Var> {
        self.vars().get(name).cloned()
    }

    /// Writes every tensor to a safetensors file (atomically: temporary file, then rename),
    /// with `manifest` (architecture, task, seed, ...) as JSON in the file's metadata.
    pub fn save(&self, path: impl AsRef<Path>, manifest: &serde_json::Value) -> Result<()> {
        let path = path.as_ref();
        let tensors: Vec<(String, Tensor)> = self
            .all()
            .into_iter()
            .map(|(k, v)| Ok((k, v.as_tensor().to_device(&Device::Cpu)?)))
            .collect::<Result<_>>()?;
        let meta = HashMap::from([(MANIFEST_KEY.to_string(), manifest.to_string())]);
        let bytes = safetensors::serialize(tensors, Some(meta)).with_file(path)?;
        crate::io::write_atomic(path, &bytes)
    }

    /// Copies the tensors of a safetensors file into the existing tensors of this store.
    pub fn load(&self, path: impl AsRef<Path>, opts: &LoadOptions) -> Result<LoadReport> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).with_file(path)?;
        self.load_bytes(&bytes, path, opts)
    }

    /// [`ParamStore::load`] from the bytes of a safetensors file; `name` names it in errors.
    pub fn load_bytes(
        &self,
        bytes: &[u8],
        name: impl AsRef<Path>,
        opts: &LoadOptions,
    ) -> Result<LoadReport> {
        let path = name.as_ref();
        let file = safetensors::SafeTensors::deserialize(bytes).map_err(|e| {
            Error::file(path, format!("not a readable safetensors checkpoint: {e}"))
        })?;
        let selected = |name: &str| opts.prefix.as_deref().is_none_or(|p| name.starts_with(p));
        let mut report = LoadReport::default();
        let vars = self.vars();
        let mut seen = Vec::new();
        for (file_name, view) in file.tensors() {
            let name = rename(&file_name, &opts.rename);
            if !selected(&name) {
                continue;
            }
            seen.push(name.clone());
            let Some(var) = vars.get(&name) else {
                report.unexpected.push(name);
                continue;
            };
            if var.dims() != view.shape() {
                report
                    .mismatched
                    .push((name, var.dims().to_vec(), view.shape().to_vec()));
                continue;
            }
            let t = candle_core::safetensors::Load::load(&view, var.device())
                .map_err(|e| Error::file(path, format!("tensor {file_name}: {e}")))?;
            var.set(&t.to_dtype(var.dtype())?)?;
            report.loaded.push(name);
        }
        report.loaded.sort();
        report.unexpected.sort();
        report.mismatched.sort();
        report.missing = vars
            .keys()
            .filter(|k| selected(k) && !seen.contains(k))
            .cloned()
            .collect();
        Ok(report)
    }

    /// The manifest stored in a checkpoint by [`ParamStore::save`].
    pub fn manifest(path: impl AsRef<Path>) -> Result<serde_json::Value> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).with_file(path)?;
        Self::manifest_bytes(&bytes, path)
    }

    /// [`ParamStore::manifest`] from the bytes of a safetensors file; `name` names it in
    /// errors.
    pub fn manifest_bytes(bytes: &[u8], name: impl AsRef<Path>) -> Result<serde_json::Value> {
        let path = name.as_ref();
        let (_, meta) = safetensors::SafeTensors::read_metadata(bytes).map_err(|e| {
            Error::file(path, format!("not a readable safetensors checkpoint: {e}"))
        })?;
        let text = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get(MANIFEST_KEY))
            .ok_or_else(|| Error::file(path, "the checkpoint has no pretext manifest"))?;
        serde_json::from_str(text).map_err(|e| Error::file(path, format!("invalid manifest: {e}")))
    }

    fn create(&self, shape: &Shape, init: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        // Initial values are drawn as f64; the store as a whole must fit too.
        let n = crate::memory::check_shape(shape.dims(), 8, "parameter")?;
        let total: usize = self.vars().values().map(|v| v.elem_count()).sum();
        crate::memory::check(
            total.saturating_add(n),
            dtype.size_in_bytes(),
            "model parameters",
        )?;
        let mut rng = self.inner.rng.lock().unwrap_or_else(|e| e.into_inner());
        let values: Vec<f64> = match init {
            Init::Const(v) => vec![v; n],
            Init::Randn { mean, stdev } => sample(&mut rng, n, Normal::new(mean, stdev))?,
            Init::Uniform { lo, up } => sample(&mut rng, n, Uniform::new(lo, up))?,
            Init::Kaiming {
                dist,
                fan,
                non_linearity,
            } => {
                let fan = match fan {
                    FanInOut::FanIn => fan_in(shape),
                    FanInOut::FanOut => fan_out(shape),
                };
                let std = non_linearity.gain() / (fan.max(1) as f64).sqrt();
                match dist {
                    NormalOrUniform::Normal => sample(&mut rng, n, Normal::new(0.0, std))?,
                    NormalOrUniform::Uniform => {
                        let b = 3f64.sqrt() * std;
                        sample(&mut rng, n, Uniform::new(-b, b))?
                    }
                }
            }
        };
        Ok(Tensor::from_vec(values, shape.clone(), dev)?.to_dtype(dtype)?)
    }
}

fn sample<D: Distribution<f64>, E: std::fmt::Display>(
    rng: &mut StdRng,
    n: usize,
    dist: std::result::Result<D, E>,
) -> Result<Vec<f64>> {
    let dist = dist.map_err(|e| Error::msg(format!("parameter initialisation: {e}")))?;
    Ok((0..n).map(|_| dist.sample(rng)).collect())
}

/// `fan_in` of a weight `[out, in, k...]` (PyTorch's convention).
fn fan_in(s: &Shape) -> usize {
    s.dims().iter().skip(1).product()
}

/// `fan_out` of a weight `[out, in, k...]`.
fn fan_out(s: &Shape) -> usize {
    let d = s.dims();
    d.first().copied().unwrap_or(1) * d.iter().skip(2).product::<usize>()
}

fn is_buffer(name: &str) -> bool {
    BUFFERS.iter().any(|b| name.ends_with(b))
}

fn rename(name: &str, rules: &[(String, String)]) -> String {
    let mut n = name.to_string();
    for (from, to) in rules {
        if let Some(rest) = n.strip_prefix(from.as_str()) {
            n = format!("{to}{rest}");
        }
    }
    n
}

impl candle_nn::var_builder::SimpleBackend for ParamStore {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        if let Some(v) = self.get(name) {
            if v.shape() != &s {
                candle_core::bail!(
                    "parameter {name}: exists with shape {:?}, requested {s:?}",
                    v.dims()
                );
            }
            return Ok(v.as_tensor().clone());
        }
        let t = self
            .create(&s, h, dtype, dev)
            .map_err(|e| candle_core::Error::Msg(format!("parameter {name}: {e}")))?;
        let var = Var::from_tensor(&t)?;
        self.vars().insert(name.to_string(), var.clone());
        Ok(var.as_tensor().clone())
    }

    fn get_unchecked(
        &self,
        name: &str,
        _dtype: DType,
        _dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.get(name)
            .map(|v| v.as_tensor().clone())
            .ok_or_else(|| candle_core::Error::Msg(format!("parameter {name} does not exist")))
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.vars().contains_key(name)
    }
}

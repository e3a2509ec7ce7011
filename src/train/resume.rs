//! A run's training state, written atomically at the end of every epoch, so that an
//! interrupted run (killed, Ctrl-C, a Slurm time limit) continues at the next epoch and ends
//! bit-identical to an uninterrupted one: every tensor of the model (BatchNorm statistics
//! included), Adam's moments and step count, each dropout generator's position, and the loop's
//! own bookkeeping. Random streams need nothing more: batches and their order are drawn from
//! streams named by (seed, epoch, step).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use super::optim::Adam;
use crate::error::FileContext;
use crate::nn::ParamStore;
use crate::nn::dropout::Generators;
use crate::{Error, Result};

/// The file name of a pretraining folder's state.
pub const STATE_FILE: &str = "state.safetensors";

const PARAM: &str = "param.";
const FIRST_MOMENT: &str = "adam.m.";
const SECOND_MOMENT: &str = "adam.v.";

/// What a run saves after an epoch.
pub struct Snapshot<'a> {
    /// Identifies the run (its configuration); a state saved by another run is not resumed.
    pub run: &'a serde_json::Value,
    /// The epochs finished.
    pub epoch: usize,
    /// The model's tensors.
    pub store: &'a ParamStore,
    /// The optimiser.
    pub optimiser: &'a Adam,
    /// The model's dropout generators.
    pub dropouts: &'a Generators,
    /// The loop's bookkeeping (best score, steps left, ...), given back on resume.
    pub bookkeeping: serde_json::Value,
}

impl Snapshot<'_> {
    /// Writes the snapshot to `path` atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut tensors: Vec<(String, Tensor)> = Vec::new();
        for (name, var) in self.store.all() {
            tensors.push((
                format!("{PARAM}{name}"),
                var.as_tensor().to_device(&Device::Cpu)?,
            ));
        }
        for (name, m, v) in self.optimiser.moments() {
            tensors.push((format!("{FIRST_MOMENT}{name}"), m.to_device(&Device::Cpu)?));
            tensors.push((format!("{SECOND_MOMENT}{name}"), v.to_device(&Device::Cpu)?));
        }
        let positions: Vec<String> = self
            .dropouts
            .positions()
            .iter()
            .map(u128::to_string)
            .collect();
        let manifest = serde_json::json!({
            "state_of": self.run, "epoch": self.epoch, "adam_steps": self.optimiser.steps(),
            "dropout_positions": positions, "bookkeeping": self.bookkeeping,
        });
        let meta = HashMap::from([(
            crate::nn::store::MANIFEST_KEY.to_string(),
            manifest.to_string(),
        )]);
        let bytes = safetensors::serialize(tensors, Some(meta)).with_file(path)?;
        crate::io::write_atomic(path, &bytes)
    }
}

/// A state read back from disk, to be restored into a freshly built run.
pub struct Saved {
    path: PathBuf,
    tensors: HashMap<String, Tensor>,
    manifest: serde_json::Value,
}

impl Saved {
    /// The state at `path` when it exists and was saved by the run `run`; `None` otherwise
    /// (no file, or another configuration's state, which the new run overwrites).
    pub fn read(path: &Path, run: &serde_json::Value) -> Result<Option<Saved>> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::file(path, e)),
        };
        let unreadable = |e: &dyn std::fmt::Display| {
            Error::file(
                path,
                format!("not a readable training state ({e}); remove it to start the run over"),
            )
        };
        let manifest = ParamStore::manifest_bytes(&bytes, path).map_err(|e| unreadable(&e))?;
        if &manifest["state_of"] != run {
            return Ok(None);
        }
        let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
            .map_err(|e| unreadable(&e))?;
        Ok(Some(Saved {
            path: path.to_path_buf(),
            tensors,
            manifest,
        }))
    }

    /// The epochs the saved run had finished.
    pub fn epoch(&self) -> Result<usize> {
        self.field("epoch")?
            .as_u64()
            .map(|e| e as usize)
            .ok_or_else(|| self.bad("epoch"))
    }

    /// The loop's bookkeeping saved with the state.
    pub fn bookkeeping(&self) -> &serde_json::Value {
        &self.manifest["bookkeeping"]
    }

    /// Copies the saved tensors into `store` and moves `dropouts` to their saved positions.
    pub fn restore_model(&self, store: &ParamStore, dropouts: &Generators) -> Result<()> {
        for (name, var) in store.all() {
            let t = self.tensor(&format!("{PARAM}{name}"))?;
            if t.dims() != var.dims() {
                return Err(Error::file(
                    &self.path,
                    format!(
                        "{name} has shape {:?} in the state, {:?} in the model",
                        t.dims(),
                        var.dims()
                    ),
                ));
            }
            var.set(&t.to_dtype(var.dtype())?.to_device(var.device())?)?;
        }
        let positions = self
            .field("dropout_positions")?
            .as_array()
            .ok_or_else(|| self.bad("dropout_positions"))?
            .iter()
            .map(|p| p.as_str().and_then(|s| s.parse::<u128>().ok()))
            .collect::<Option<Vec<u128>>>()
            .ok_or_else(|| self.bad("dropout_positions"))?;
        dropouts
            .set_positions(&positions)
            .map_err(|e| Error::file(&self.path, e))
    }

    /// Gives `opt` the saved moments and step count.
    pub fn restore_optimiser(&self, opt: &mut Adam) -> Result<()> {
        let steps = self
            .field("adam_steps")?
            .as_i64()
            .and_then(|s| i32::try_from(s).ok())
            .ok_or_else(|| self.bad("adam_steps"))?;
        opt.restore(steps, |name| {
            let m = self.tensors.get(&format!("{FIRST_MOMENT}{name}"))?;
            let v = self.tensors.get(&format!("{SECOND_MOMENT}{name}"))?;
            Some((m.clone(), v.clone()))
        })
        .map_err(|e| Error::file(&self.path, e))
    }

    fn field(&self, key: &str) -> Result<&serde_json::Value> {
        self.manifest
            .get(key)
            .ok_or_else(|| Error::file(&self.path, format!("the training state has no `{key}`")))
    }

    fn tensor(&self, name: &str) -> Result<&Tensor> {
        self.tensors.get(name).ok_or_else(|| {
            Error::file(
                &self.path,
                format!("the training state has no tensor {name}"),
            )
        })
    }

    fn bad(&self, key: &str) -> Error {
        Error::file(
            &self.path,
            format!("the training state's `{key}` is malformed"),
        )
    }
}

/// A run's JSONL log (one line per epoch), reopened for appending with only the lines of the
/// epochs the run has done: a resumed run drops the lines of an epoch that was cut short, a
/// new one (`epochs` 0) starts empty.
pub struct JsonlLog {
    file: std::fs::File,
    path: PathBuf,
}

impl JsonlLog {
    /// Opens `path` (creating its folder), keeping its first `epochs` lines.
    pub fn open(path: &Path, epochs: usize) -> Result<JsonlLog> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_file(dir)?;
        }
        let kept: String = match std::fs::read_to_string(path) {
            Ok(text) if epochs > 0 => text
                .lines()
                .take(epochs)
                .map(|l| format!("{l}\n"))
                .collect(),
            _ => String::new(),
        };
        crate::io::write_atomic(path, kept.as_bytes())?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .with_file(path)?;
        Ok(JsonlLog {
            file,
            path: path.to_path_buf(),
        })
    }

    /// Appends `entry` as one line, flushed.
    pub fn write(&mut self, entry: &impl serde::Serialize) -> Result<()> {
        use std::io::Write;
        let line = serde_json::to_string(entry).map_err(Error::msg)?;
        writeln!(self.file, "{line}").with_file(&self.path)?;
        self.file.flush().with_file(&self.path)
    }
}

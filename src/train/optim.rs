//! Adam with Keras' per-tensor gradient clipping (the paper's `clipnorm=1, clipvalue=1`).

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

use crate::{Error, Result};

/// Settings of [`Adam`].
#[derive(
    Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(default, deny_unknown_fields)]
pub struct AdamConfig {
    /// Learning rate.
    pub lr: f64,
    /// Decay of the first-moment average.
    pub beta1: f64,
    /// Decay of the second-moment average.
    pub beta2: f64,
    /// Added to the denominator (Keras' 1e-7).
    pub eps: f64,
    /// Rescale each gradient tensor to at most this L2 norm (Keras `clipnorm`).
    pub clip_norm: Option<f64>,
    /// Then clamp each gradient element to `±clip_value` (Keras `clipvalue`).
    pub clip_value: Option<f64>,
}

impl Default for AdamConfig {
    fn default() -> Self {
        AdamConfig {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-7,
            clip_norm: None,
            clip_value: None,
        }
    }
}

impl AdamConfig {
    /// Adam with learning rate `lr` and the other settings at their defaults.
    pub fn with_lr(lr: f64) -> Self {
        AdamConfig {
            lr,
            ..Default::default()
        }
    }

    /// Checks the settings: a finite learning rate ≥ 0, decays in [0, 1), a positive `eps`,
    /// positive clipping bounds.
    pub fn validate(&self) -> Result<()> {
        if !(self.lr.is_finite() && self.lr >= 0.0) {
            return Err(Error::arg(
                "lr",
                format!(
                    "the learning rate must be a finite number ≥ 0, got {}",
                    self.lr
                ),
            ));
        }
        for (name, b) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&b) {
                return Err(Error::arg(
                    name,
                    format!("expected a value in [0, 1), got {b}"),
                ));
            }
        }
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return Err(Error::arg(
                "eps",
                format!("expected a small positive number, got {}", self.eps),
            ));
        }
        for (name, c) in [
            ("clip_norm", self.clip_norm),
            ("clip_value", self.clip_value),
        ] {
            if let Some(c) = c
                && !(c.is_finite() && c > 0.0)
            {
                return Err(Error::arg(
                    name,
                    format!("expected a positive bound, got {c}"),
                ));
            }
        }
        Ok(())
    }

    /// The same with per-tensor clipping to norm 1 and value 1 (O's finetuning).
    pub fn clipped(self) -> Self {
        AdamConfig {
            clip_norm: Some(1.0),
            clip_value: Some(1.0),
            ..self
        }
    }
}

struct Slot {
    name: String,
    var: Var,
    m: Tensor,
    v: Tensor,
}

/// Adam over a fixed set of named parameters, in Keras' form: the bias corrections go into the
/// step size, `θ -= lr·sqrt(1-β2^t)/(1-β1^t) · m / (sqrt(v) + ε)`.
pub struct Adam {
    cfg: AdamConfig,
    slots: Vec<Slot>,
    t: i32,
}

impl Adam {
    /// An optimiser for `vars` (name, variable), with zeroed moments.
    pub fn new(vars: Vec<(String, Var)>, cfg: AdamConfig) -> Result<Self> {
        cfg.validate()?;
        let slots = vars
            .into_iter()
            .map(|(name, var)| {
                let m = var.zeros_like()?;
                let v = var.zeros_like()?;
                Ok(Slot { name, var, m, v })
            })
            .collect::<Result<_>>()?;
        Ok(Adam { cfg, slots, t: 0 })
    }

    /// The settings.
    pub fn config(&self) -> &AdamConfig {
        &self.cfg
    }

    /// Changes the learning rate (for schedules).
    pub fn set_lr(&mut self, lr: f64) {
        self.cfg.lr = lr;
    }

    /// Steps taken so far.
    pub fn steps(&self) -> i32 {
        self.t
    }

    /// Each parameter's name with its first and second moment.
    pub fn moments(&self) -> impl Iterator<Item = (&str, &Tensor, &Tensor)> {
        self.slots.iter().map(|s| (s.name.as_str(), &s.m, &s.v))
    }

    /// Continues from a saved state: `steps` taken, and the moments of every parameter this
    /// optimiser updates (by name; `moment(name)` gives the first and second). A parameter
    /// missing from the state or of another shape is an error naming it.
    pub fn restore(
        &mut self,
        steps: i32,
        mut moment: impl FnMut(&str) -> Option<(Tensor, Tensor)>,
    ) -> Result<()> {
        for s in &mut self.slots {
            let (m, v) = moment(&s.name).ok_or_else(|| {
                Error::arg(
                    "optimiser state",
                    format!("no moments saved for parameter {}", s.name),
                )
            })?;
            if m.dims() != s.var.dims() || v.dims() != s.var.dims() {
                return Err(Error::arg(
                    "optimiser state",
                    format!(
                        "the moments of {} have shape {:?}, the parameter {:?}",
                        s.name,
                        m.dims(),
                        s.var.dims()
                    ),
                ));
            }
            let dev = s.var.device();
            s.m = m.to_dtype(s.var.dtype())?.to_device(dev)?;
            s.v = v.to_dtype(s.var.dtype())?.to_device(dev)?;
        }
        self.t = steps;
        Ok(())
    }

    /// Backpropagates `loss` and applies one update; a non-finite loss or gradient is an error
    /// that names it, and leaves the parameters untouched.
    pub fn backward_step(&mut self, loss: &Tensor) -> Result<f64> {
        let value = loss.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
        if !value.is_finite() {
            return Err(Error::NonFinite {
                what: "loss".into(),
                value,
                at: format!("optimiser step {}", self.t + 1),
            });
        }
        let grads = loss.backward()?;
        self.step(&grads)?;
        Ok(value)
    }

    /// Applies one update from `grads`; parameters without a gradient are left alone.
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        let cfg = self.cfg;
        let with_grad: Vec<(usize, &Tensor)> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| grads.get(s.var.as_tensor()).map(|g| (i, g)))
            .collect();
        // Every gradient's squared norm in one transfer to the host (one device sync per
        // step, not one per parameter).
        let sums = with_grad
            .iter()
            .map(|(_, g)| g.sqr()?.sum_all()?.to_dtype(candle_core::DType::F64))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let norms: Vec<f64> = if sums.is_empty() {
            Vec::new()
        } else {
            Tensor::stack(&sums, 0)?.to_vec1::<f64>()?
        };
        let mut updates = Vec::with_capacity(with_grad.len());
        for ((i, g), sq) in with_grad.into_iter().zip(norms) {
            let s = &self.slots[i];
            let mut g = g.clone();
            let norm = sq.sqrt();
            if !norm.is_finite() {
                return Err(Error::NonFinite {
                    what: format!("gradient norm of {}", s.name),
                    value: norm,
                    at: format!("optimiser step {}", self.t + 1),
                });
            }
            if let Some(c) = cfg.clip_norm
                && norm > c
            {
                g = (g * (c / norm))?;
            }
            if let Some(c) = cfg.clip_value {
                g = g.clamp(-c, c)?;
            }
            updates.push((i, g));
        }
        let t = self.t + 1;
        let step = cfg.lr * (1.0 - cfg.beta2.powi(t)).sqrt() / (1.0 - cfg.beta1.powi(t));
        if !step.is_finite() {
            return Err(Error::NonFinite {
                what: format!("step size (learning rate {})", cfg.lr),
                value: step,
                at: format!("optimiser step {t}"),
            });
        }
        self.t = t;
        for (i, g) in updates {
            let s = &mut self.slots[i];
            s.m = ((&s.m * cfg.beta1)? + (&g * (1.0 - cfg.beta1))?)?;
            s.v = ((&s.v * cfg.beta2)? + (g.sqr()? * (1.0 - cfg.beta2))?)?;
            let delta = (&s.m / (s.v.sqrt()? + cfg.eps)?)?;
            s.var.set(&(s.var.as_tensor() - (delta * step)?)?)?;
        }
        Ok(())
    }
}

//! Dropout with its own seeded generator, so runs are reproducible (candle's CPU generator
//! cannot be seeded).

use std::sync::{Arc, Mutex};

use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::{Error, Result};

/// Zeroes each element with probability `p` in training and scales the rest by `1/(1-p)`.
/// Clones share the generator.
#[derive(Clone, Debug)]
pub struct Dropout {
    p: f64,
    rng: Arc<Mutex<StdRng>>,
}

impl Dropout {
    /// Dropout with rate `p` in `[0, 1)`, drawing masks from a generator seeded with `seed`.
    pub fn new(p: f64, seed: u64) -> Result<Self> {
        if !(0.0..1.0).contains(&p) {
            return Err(Error::arg(
                "dropout",
                format!("expected a rate in [0, 1), got {p}"),
            ));
        }
        Ok(Dropout {
            p,
            rng: Arc::new(Mutex::new(StdRng::seed_from_u64(seed))),
        })
    }

    /// Applies dropout in training mode; the identity otherwise.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        if !train || self.p == 0.0 {
            return Ok(x.clone());
        }
        let keep = 1.0 - self.p;
        let scale = (1.0 / keep) as f32;
        let threshold = (keep * u32::MAX as f64) as u32;
        let mask: Vec<f32> = {
            let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
            (0..x.elem_count())
                .map(|_| {
                    if rng.random::<u32>() < threshold {
                        scale
                    } else {
                        0.0
                    }
                })
                .collect()
        };
        let mask = Tensor::from_vec(mask, x.shape(), &Device::Cpu)?
            .to_dtype(x.dtype())?
            .to_device(x.device())?;
        Ok((x * mask)?)
    }
}

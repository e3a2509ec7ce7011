//! Dropout with its own seeded generator, so runs are reproducible (candle's CPU generator
//! cannot be seeded), and resumable: [`collect`] gathers the generators of a model as it is
//! built, so that a training run can save their positions and restore them.

use std::cell::RefCell;
use std::sync::{Arc, Mutex};

use candle_core::{Device, Tensor};
use chacha20::ChaCha12Rng;
use rand::{RngExt, SeedableRng};

use crate::{Error, Result};

type Generator = Arc<Mutex<ChaCha12Rng>>;

thread_local! {
    /// The generators of the dropout layers built inside [`collect`] on this thread.
    static COLLECTING: RefCell<Option<Vec<Generator>>> = const { RefCell::new(None) };
}

/// Zeroes each element with probability `p` in training and scales the rest by `1/(1-p)`.
/// Clones share the generator (rand's `StdRng` algorithm, ChaCha12, from the same seed).
#[derive(Clone, Debug)]
pub struct Dropout {
    p: f64,
    rng: Generator,
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
        let rng = Arc::new(Mutex::new(ChaCha12Rng::seed_from_u64(seed)));
        COLLECTING.with(|c| {
            if let Some(v) = c.borrow_mut().as_mut() {
                v.push(rng.clone());
            }
        });
        Ok(Dropout { p, rng })
    }

    /// Applies dropout in training mode; the identity otherwise.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        if !train || self.p == 0.0 {
            return Ok(x.clone());
        }
        let keep = 1.0 - self.p;
        let scale = (1.0 / keep) as f32;
        let threshold = (keep * u32::MAX as f64) as u32;
        // One bulk draw: the same words, in the same order, as one `random::<u32>()` per
        // element, at a fraction of the cost.
        let mut words = vec![0u32; x.elem_count()];
        lock(&self.rng).fill(&mut words[..]);
        let mask: Vec<f32> = words
            .iter()
            .map(|&w| if w < threshold { scale } else { 0.0 })
            .collect();
        let mask = Tensor::from_vec(mask, x.shape(), &Device::Cpu)?
            .to_dtype(x.dtype())?
            .to_device(x.device())?;
        Ok((x * mask)?)
    }
}

fn lock(g: &Generator) -> std::sync::MutexGuard<'_, ChaCha12Rng> {
    g.lock().unwrap_or_else(|e| e.into_inner())
}

/// The dropout generators of one model, in the order its layers were built.
#[derive(Clone, Debug, Default)]
pub struct Generators(Vec<Generator>);

impl Generators {
    /// Each generator's position in its stream (32-bit words drawn so far).
    pub fn positions(&self) -> Vec<u128> {
        self.0.iter().map(|g| lock(g).get_word_pos()).collect()
    }

    /// Moves each generator to a position [`Generators::positions`] gave; the model must have
    /// been built the same way (as many dropout layers).
    pub fn set_positions(&self, positions: &[u128]) -> Result<()> {
        if positions.len() != self.0.len() {
            return Err(Error::arg(
                "dropout positions",
                format!(
                    "the saved state has {} dropout generators, this model {}",
                    positions.len(),
                    self.0.len()
                ),
            ));
        }
        for (g, &p) in self.0.iter().zip(positions) {
            lock(g).set_word_pos(p);
        }
        Ok(())
    }
}

/// Runs `build` (which constructs a model) and returns what it built with the generators of
/// every dropout layer it created on this thread.
pub fn collect<R>(build: impl FnOnce() -> R) -> (R, Generators) {
    let outer = COLLECTING.with(|c| c.replace(Some(Vec::new())));
    let built = build();
    let mine = COLLECTING.with(|c| c.replace(outer)).unwrap_or_default();
    // A collection around this one sees these generators too.
    COLLECTING.with(|c| {
        if let Some(v) = c.borrow_mut().as_mut() {
            v.extend(mine.iter().cloned());
        }
    });
    (built, Generators(mine))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;

    #[test]
    fn the_generator_draws_what_rands_std_rng_draws_from_the_same_seed() {
        let mut a = StdRng::seed_from_u64(42);
        let mut b = ChaCha12Rng::seed_from_u64(42);
        for _ in 0..1000 {
            assert_eq!(a.random::<u32>(), b.random::<u32>());
        }
    }

    #[test]
    fn a_bulk_draw_gives_the_words_and_position_of_one_draw_per_element() {
        for n in [1, 3, 16, 37, 1001] {
            let mut one = ChaCha12Rng::seed_from_u64(9);
            let mut bulk = ChaCha12Rng::seed_from_u64(9);
            // Start both mid-block.
            let _: u32 = one.random();
            let _: u32 = bulk.random();
            let each: Vec<u32> = (0..n).map(|_| one.random::<u32>()).collect();
            let mut words = vec![0u32; n];
            bulk.fill(&mut words[..]);
            assert_eq!(words, each, "{n} words");
            assert_eq!(bulk.get_word_pos(), one.get_word_pos(), "{n} words");
        }
    }

    #[test]
    fn a_restored_position_continues_the_same_masks() {
        let x = Tensor::ones((3, 37), candle_core::DType::F32, &Device::Cpu).unwrap();
        let (d, gens) = collect(|| Dropout::new(0.5, 7).unwrap());
        d.forward_t(&x, true).unwrap();
        let at = gens.positions();
        let next = d.forward_t(&x, true).unwrap().to_vec2::<f32>().unwrap();
        let (d2, gens2) = collect(|| Dropout::new(0.5, 7).unwrap());
        gens2.set_positions(&at).unwrap();
        assert_eq!(
            d2.forward_t(&x, true).unwrap().to_vec2::<f32>().unwrap(),
            next
        );
        assert!(gens2.set_positions(&[]).is_err());
    }
}

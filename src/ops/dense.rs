//! DenseNet's dense block as one custom op on the CPU (see [`super::cpu::dense`]): the block's
//! feature map is one buffer that each layer appends to, instead of a concatenation per layer.
//! Other devices (and [`super::with_composed`]) run the layers one by one from ordinary ops,
//! which is also the independent check of this op.

use std::any::Any;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Shape, Tensor};

use super::BatchStats;
use super::cpu::{
    self, Real,
    dense::{BlockGeom, BlockNorm, BlockState},
    norm::Stats,
};
use super::kernel::{Kernel, apply, apply_no_grad, composed_mode, grad_disabled};
use crate::{Error, Result};

/// The shape of a dense block's layers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DenseBlockSpec {
    /// Channels each layer adds.
    pub growth: usize,
    /// Channels of each layer's bottleneck (`bn_size · growth`).
    pub width: usize,
    /// Number of layers.
    pub layers: usize,
    /// The BatchNorms' epsilon.
    pub eps: f64,
}

/// Whether [`dense_block_train`] and [`dense_block_eval`] run for `x` here: a CPU tensor of
/// f32 or f64, outside [`super::with_composed`].
pub fn dense_block_available(x: &Tensor) -> bool {
    x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64) && !composed_mode()
}

fn geometry(x: &Tensor, params: &Tensor, spec: DenseBlockSpec) -> Result<BlockGeom> {
    let (n, c0, h, w) = x.dims4().map_err(|_| {
        Error::shape(
            "dense_block",
            format!("expected x [N, C, H, W], got {:?}", x.dims()),
        )
    })?;
    let g = BlockGeom {
        n,
        c0,
        growth: spec.growth,
        width: spec.width,
        layers: spec.layers,
        hw: [h, w],
        eps: spec.eps,
    };
    if params.dims() != [g.param_len()] {
        return Err(Error::shape(
            "dense_block",
            format!(
                "expected {} packed parameters for {spec:?} on {:?}, got {:?}",
                g.param_len(),
                x.dims(),
                params.dims()
            ),
        ));
    }
    Ok(g)
}

/// One training-mode pass of a dense block over `x [N, C, H, W]`: the block's output
/// `[N, C + layers·growth, H, W]` and, per layer, the batch statistics of its `norm1` and
/// `norm2` (for the running averages). `params` packs each layer's `norm1.weight`,
/// `norm1.bias`, `conv1.weight`, `norm2.weight`, `norm2.bias`, `conv2.weight` (flattened, in
/// this order, layer after layer). Differentiable in `x` and `params`. CPU only (see
/// [`dense_block_available`]).
pub fn dense_block_train(
    x: &Tensor,
    params: &Tensor,
    spec: DenseBlockSpec,
) -> Result<(Tensor, Vec<(BatchStats, BatchStats)>)> {
    let g = geometry(x, params, spec)?;
    let stats = Arc::new(Mutex::new(None));
    let op = Block {
        g,
        norm: BlockNorm::Batch,
        state: Arc::new(Mutex::new(None)),
        stats: stats.clone(),
    };
    let y = apply(op, &[x, params])?;
    let (chan, mid) = stats
        .lock()
        .map_err(|_| Error::msg("dense_block: statistics lock poisoned"))?
        .take()
        .ok_or_else(|| Error::msg("dense_block: the kernel left no statistics"))?;
    let count = g.n * g.s();
    let to = |m: &[f64], v: &[f64]| -> Result<BatchStats> {
        Ok(BatchStats {
            mean: Tensor::new(m, x.device())?.to_dtype(x.dtype())?,
            var: Tensor::new(v, x.device())?.to_dtype(x.dtype())?,
            count,
        })
    };
    let per_layer = (0..g.layers)
        .map(|j| {
            let c = g.c_in(j);
            Ok((
                to(&chan.mean[..c], &chan.var[..c])?,
                to(&mid[j].mean, &mid[j].var)?,
            ))
        })
        .collect::<Result<_>>()?;
    Ok((y, per_layer))
}

/// A dense block in inference mode, each BatchNorm on its running averages: per layer
/// `(norm1, norm2)` as `(mean, var)` pairs. Not differentiable; for use under
/// [`crate::ops::no_grad`]. CPU only.
pub fn dense_block_eval(
    x: &Tensor,
    params: &Tensor,
    spec: DenseBlockSpec,
    running: Vec<(Stats, Stats)>,
) -> Result<Tensor> {
    let g = geometry(x, params, spec)?;
    if running.len() != g.layers {
        return Err(Error::shape(
            "dense_block",
            format!(
                "{} layers but {} running statistics",
                g.layers,
                running.len()
            ),
        ));
    }
    let (bn1, bn2) = running.into_iter().unzip();
    let op = Block {
        g,
        norm: BlockNorm::Running { bn1, bn2 },
        state: Arc::new(Mutex::new(None)),
        stats: Arc::new(Mutex::new(None)),
    };
    Ok(apply(op, &[&x.detach(), &params.detach()])?)
}

type Shared<T> = Arc<Mutex<Option<T>>>;

/// The forward pass; inputs `(x, params)`.
struct Block {
    g: BlockGeom,
    norm: BlockNorm,
    /// What the backward pass needs (a `BlockState<T>`), when gradients are recorded.
    state: Shared<Box<dyn Any + Send>>,
    /// The batch statistics: every output channel's, every bottleneck's.
    stats: Shared<(Stats, Vec<Stats>)>,
}

/// The backward pass; inputs `(output, params, output gradient)`, output `[dx, dparams]`
/// flattened.
struct BlockGrad {
    g: BlockGeom,
    state: Shared<Box<dyn Any + Send>>,
}

impl Kernel for Block {
    const NAME: &'static str = "dense_block";

    fn describe(&self) -> String {
        format!("{:?}", self.g)
    }

    fn out_shape(&self) -> Shape {
        let g = &self.g;
        Shape::from((g.n, g.c_total(), g.hw[0], g.hw[1]))
    }

    fn cpu<T: Real>(&self, i: &[&[T]]) -> Vec<T> {
        let keep = matches!(self.norm, BlockNorm::Batch) && !grad_disabled();
        let (y, st) = cpu::dense::forward(i[0], i[1], &self.g, &self.norm, keep);
        if let Ok(mut cell) = self.stats.lock() {
            *cell = Some((st.chan.clone(), st.mid.clone()));
        }
        if keep && let Ok(mut cell) = self.state.lock() {
            *cell = Some(Box::new(st));
        }
        y
    }

    fn composed(&self, _i: &[&Tensor]) -> candle_core::Result<Tensor> {
        candle_core::bail!("dense_block: CPU only (other devices run the layers one by one)")
    }

    fn backward(
        &self,
        i: &[&Tensor],
        out: &Tensor,
        grad: &Tensor,
    ) -> Option<candle_core::Result<Vec<Option<Tensor>>>> {
        let g = self.g;
        Some((|| {
            let packed = apply_no_grad(
                BlockGrad {
                    g,
                    state: self.state.clone(),
                },
                &[out, i[1], grad],
            )?;
            let nx = g.n * g.c0 * g.s();
            let dx = packed.narrow(0, 0, nx)?.reshape(i[0].shape())?;
            let dp = packed.narrow(0, nx, g.param_len())?;
            Ok(vec![Some(dx), Some(dp)])
        })())
    }
}

impl Kernel for BlockGrad {
    const NAME: &'static str = "dense_block_grad";

    fn describe(&self) -> String {
        format!("{:?}", self.g)
    }

    fn out_shape(&self) -> Shape {
        let g = &self.g;
        Shape::from(g.n * g.c0 * g.s() + g.param_len())
    }

    fn cpu<T: Real>(&self, i: &[&[T]]) -> Vec<T> {
        let cell = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let st = cell
            .as_ref()
            .and_then(|b| b.downcast_ref::<BlockState<T>>())
            .expect("dense_block: backward without the forward pass's state");
        let (mut dx, dp) = cpu::dense::backward(i[1], i[2], &self.g, st);
        dx.extend(dp);
        dx
    }

    fn composed(&self, _i: &[&Tensor]) -> candle_core::Result<Tensor> {
        candle_core::bail!("dense_block_grad: CPU only")
    }
}

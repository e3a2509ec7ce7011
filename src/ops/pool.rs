//! Pooling: max and average in 3D and 2D (windows, strides and padding of any size), and
//! global pooling. Max pooling matches PyTorch on ties: the gradient goes to the first maximum.

use std::sync::{Arc, Mutex};

use candle_core::{Shape, Tensor};

use super::cpu::{self, Real, pool::PoolGeom};
use super::kernel::{Kernel, apply, apply_no_grad, grad_disabled};
use crate::{Error, Result};

/// Window, stride and padding of a pooling, per axis `[d, h, w]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolSpec {
    /// Window size.
    pub kernel: [usize; 3],
    /// Step between windows.
    pub stride: [usize; 3],
    /// Implicit padding on both sides (at most half the window).
    pub padding: [usize; 3],
}

impl PoolSpec {
    /// A `k×k×k` window with stride `k` and no padding (the UNet's 2×2×2 pooling).
    pub fn cube(k: usize) -> Self {
        PoolSpec {
            kernel: [k; 3],
            stride: [k; 3],
            padding: [0; 3],
        }
    }

    /// A 2D window `[kh, kw]` with stride and padding (depth 1).
    pub fn planar(kernel: [usize; 2], stride: [usize; 2], padding: [usize; 2]) -> Self {
        PoolSpec {
            kernel: [1, kernel[0], kernel[1]],
            stride: [1, stride[0], stride[1]],
            padding: [0, padding[0], padding[1]],
        }
    }
}

/// 3D max pooling of `x [N, C, D, H, W]`.
pub fn max_pool3d(x: &Tensor, spec: PoolSpec) -> Result<Tensor> {
    let (g, shape) = geometry("max_pool3d", x, spec)?;
    Ok(apply(
        MaxPool {
            g,
            out: shape,
            indices: Arc::new(Mutex::new(None)),
        },
        &[x],
    )?)
}

/// 3D average pooling of `x [N, C, D, H, W]` (padding counts as zeros).
pub fn avg_pool3d(x: &Tensor, spec: PoolSpec) -> Result<Tensor> {
    let (g, shape) = geometry("avg_pool3d", x, spec)?;
    Ok(apply(AvgPool(g, shape), &[x])?)
}

/// 2D max pooling of `x [N, C, H, W]`.
pub fn max_pool2d(
    x: &Tensor,
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
) -> Result<Tensor> {
    check_rank("max_pool2d", x, 4)?;
    Ok(max_pool3d(&x.unsqueeze(2)?, PoolSpec::planar(kernel, stride, padding))?.squeeze(2)?)
}

/// 2D average pooling of `x [N, C, H, W]`.
pub fn avg_pool2d(
    x: &Tensor,
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
) -> Result<Tensor> {
    check_rank("avg_pool2d", x, 4)?;
    Ok(avg_pool3d(&x.unsqueeze(2)?, PoolSpec::planar(kernel, stride, padding))?.squeeze(2)?)
}

/// Global average over every spatial axis: `[N, C, ...]` → `[N, C]`.
pub fn global_avg_pool(x: &Tensor) -> Result<Tensor> {
    if x.rank() < 3 {
        return Err(Error::shape(
            "global_avg_pool",
            format!("expected [N, C, ...], got {:?}", x.dims()),
        ));
    }
    Ok(x.flatten_from(2)?.mean(2)?)
}

/// Global maximum over every spatial axis: `[N, C, ...]` → `[N, C]`; the gradient goes to
/// the first maximum of each channel.
pub fn global_max_pool(x: &Tensor) -> Result<Tensor> {
    if x.rank() < 3 {
        return Err(Error::shape(
            "global_max_pool",
            format!("expected [N, C, ...], got {:?}", x.dims()),
        ));
    }
    let (n, c) = (x.dims()[0], x.dims()[1]);
    let flat = x.reshape((n, c, 1, 1, x.dims()[2..].iter().product::<usize>()))?;
    let spec = PoolSpec {
        kernel: [1, 1, flat.dims()[4]],
        stride: [1; 3],
        padding: [0; 3],
    };
    Ok(max_pool3d(&flat, spec)?.reshape((n, c))?)
}

fn check_rank(op: &'static str, x: &Tensor, rank: usize) -> Result<()> {
    if x.rank() != rank {
        return Err(Error::shape(
            op,
            format!("expected a rank-{rank} tensor, got {:?}", x.dims()),
        ));
    }
    Ok(())
}

fn geometry(op: &'static str, x: &Tensor, spec: PoolSpec) -> Result<(PoolGeom, [usize; 5])> {
    let (n, c, d, h, w) = x
        .dims5()
        .map_err(|_| Error::shape(op, format!("expected [N, C, D, H, W], got {:?}", x.dims())))?;
    let g = PoolGeom {
        planes: n * c,
        input: [d, h, w],
        kernel: spec.kernel,
        stride: spec.stride,
        padding: spec.padding,
    };
    let out = g.output().ok_or_else(|| {
        Error::shape(
            op,
            format!(
                "window {:?} (stride {:?}, padding {:?}) does not fit input {:?}; padding may be at most half the window",
                spec.kernel, spec.stride, spec.padding, x.dims()
            ),
        )
    })?;
    Ok((g, [n, c, out[0], out[1], out[2]]))
}

/// Max pooling; on the CPU with gradients recorded, it keeps the index of each output's input
/// for the backward pass (as PyTorch does).
struct MaxPool {
    g: PoolGeom,
    out: [usize; 5],
    indices: Arc<Mutex<Option<Vec<u32>>>>,
}
/// Inputs `(x, dy)`; uses the forward pass's indices where it kept them.
struct MaxPoolGrad(PoolGeom, [usize; 5], Arc<Mutex<Option<Vec<u32>>>>);
struct AvgPool(PoolGeom, [usize; 5]);
struct AvgPoolGrad(PoolGeom, [usize; 5]);

fn in_shape(g: &PoolGeom, out: &[usize; 5]) -> Shape {
    Shape::from((out[0], out[1], g.input[0], g.input[1], g.input[2]))
}

impl Kernel for MaxPool {
    const NAME: &'static str = "max_pool3d";

    fn describe(&self) -> String {
        format!("{:?} k{:?}", self.out, self.g.kernel)
    }

    fn out_shape(&self) -> Shape {
        Shape::from(self.out.to_vec())
    }

    fn cpu<T: Real>(&self, i: &[&[T]]) -> Vec<T> {
        if grad_disabled() {
            return cpu::pool::max_forward(i[0], &self.g);
        }
        let (y, idx) = cpu::pool::max_forward_indexed(i[0], &self.g);
        if let Ok(mut cell) = self.indices.lock() {
            *cell = Some(idx);
        }
        y
    }

    fn composed(&self, i: &[&Tensor]) -> candle_core::Result<Tensor> {
        composed::max_forward(i[0], &self.g)
    }

    fn backward(
        &self,
        i: &[&Tensor],
        _o: &Tensor,
        g: &Tensor,
    ) -> Option<candle_core::Result<Vec<Option<Tensor>>>> {
        Some(
            apply_no_grad(
                MaxPoolGrad(self.g, self.out, self.indices.clone()),
                &[i[0], g],
            )
            .map(|t| vec![Some(t)]),
        )
    }
}

impl Kernel for MaxPoolGrad {
    const NAME: &'static str = "max_pool3d_grad";

    fn out_shape(&self) -> Shape {
        in_shape(&self.0, &self.1)
    }

    fn cpu<T: Real>(&self, i: &[&[T]]) -> Vec<T> {
        let cell = self.2.lock().unwrap_or_else(|e| e.into_inner());
        match cell.as_ref() {
            Some(idx) => cpu::pool::max_backward_indexed(idx, i[1], &self.0),
            None => cpu::pool::max_backward(i[0], i[1], &self.0),
        }
    }

    fn composed(&self, i: &[&Tensor]) -> candle_core::Result<Tensor> {
        composed::max_backward(i[0], i[1], &self.0)
    }
}

impl Kernel for AvgPool {
    const NAME: &'static str = "avg_pool3d";

    fn out_shape(&self) -> Shape {
        Shape::from(self.1.to_vec())
    }

    fn cpu<T: Real>(&self, i: &[&[T]]) -> Vec<T> {
        cpu::pool::avg_forward(i[0], &self.0)
    }

    fn composed(&self, i: &[&Tensor]) -> candle_core::Result<Tensor> {
        composed::avg_forward(i[0], &self.0)
    }

    fn backward(
        &self,
        _i: &[&Tensor],
        _o: &Tensor,
        g: &Tensor,
    ) -> Option<candle_core::Result<Vec<Option<Tensor>>>> {
        Some(apply_no_grad(AvgPoolGrad(self.0, self.1), &[g]).map(|t| vec![Some(t)]))
    }
}

impl Kernel for AvgPoolGrad {
    const NAME: &'static str = "avg_pool3d_grad";

    fn out_shape(&self) -> Shape {
        in_shape(&self.0, &self.1)
    }

    fn cpu<T: Real>(&self, i: &[&[T]]) -> Vec<T> {
        cpu::pool::avg_backward(i[0], &self.0)
    }

    fn composed(&self, i: &[&Tensor]) -> candle_core::Result<Tensor> {
        composed::avg_backward(i[0], &self.0)
    }
}

/// Pooling from candle ops: one strided view of the (padded) input per window offset.
mod composed {
    use super::*;

    fn out(g: &PoolGeom) -> [usize; 3] {
        g.output().expect("checked when the geometry was built")
    }

    /// The window offsets in scan order (depth, height, width).
    fn offsets(g: &PoolGeom) -> Vec<[usize; 3]> {
        let [a, b, c] = g.kernel;
        (0..a)
            .flat_map(|i| (0..b).flat_map(move |j| (0..c).map(move |k| [i, j, k])))
            .collect()
    }

    fn indices(
        off: usize,
        step: usize,
        count: usize,
        dev: &candle_core::Device,
    ) -> candle_core::Result<Tensor> {
        let v: Vec<u32> = (0..count).map(|i| (off + i * step) as u32).collect();
        Tensor::new(v.as_slice(), dev)
    }

    /// `x` padded with `value` on the spatial axes.
    fn pad(x: &Tensor, g: &PoolGeom, value: f64) -> candle_core::Result<Tensor> {
        let mut t = x.clone();
        for i in 0..3 {
            let p = g.padding[i];
            if p > 0 {
                let mut dims = t.dims().to_vec();
                dims[2 + i] = p;
                let side = (Tensor::ones(dims, t.dtype(), t.device())? * value)?;
                t = Tensor::cat(&[&side, &t, &side], 2 + i)?;
            }
        }
        Ok(t)
    }

    /// The cells `off + i·stride` of every spatial axis.
    fn view(xp: &Tensor, g: &PoolGeom, off: [usize; 3]) -> candle_core::Result<Tensor> {
        let o = out(g);
        let mut t = xp.clone();
        for i in 0..3 {
            t = t.index_select(&indices(off[i], g.stride[i], o[i], t.device())?, 2 + i)?;
        }
        Ok(t)
    }

    /// Adds `src` into a zero tensor of the padded input's shape at the cells of [`view`].
    fn embed(src: &Tensor, g: &PoolGeom, off: [usize; 3]) -> candle_core::Result<Tensor> {
        let mut t = src.clone();
        for i in 0..3 {
            let mut dims = t.dims().to_vec();
            dims[2 + i] = g.input[i] + 2 * g.padding[i];
            let idx = indices(off[i], g.stride[i], src.dims()[2 + i], t.device())?;
            t = Tensor::zeros(dims, t.dtype(), t.device())?.index_add(&idx, &t, 2 + i)?;
        }
        Ok(t)
    }

    fn crop(t: &Tensor, g: &PoolGeom) -> candle_core::Result<Tensor> {
        let mut t = t.clone();
        for i in 0..3 {
            t = t.narrow(2 + i, g.padding[i], g.input[i])?;
        }
        t.contiguous()
    }

    pub(super) fn max_forward(x: &Tensor, g: &PoolGeom) -> candle_core::Result<Tensor> {
        let xp = pad(x, g, f64::NEG_INFINITY)?;
        let mut y: Option<Tensor> = None;
        for off in offsets(g) {
            let v = view(&xp, g, off)?;
            y = Some(match y {
                None => v,
                Some(m) => m.maximum(&v)?,
            });
        }
        Ok(y.expect("a window has at least one cell"))
    }

    pub(super) fn max_backward(
        x: &Tensor,
        dy: &Tensor,
        g: &PoolGeom,
    ) -> candle_core::Result<Tensor> {
        let xp = pad(x, g, f64::NEG_INFINITY)?;
        let y = max_forward(x, g)?;
        let mut taken = y.zeros_like()?;
        let mut dx: Option<Tensor> = None;
        for off in offsets(g) {
            let hit = view(&xp, g, off)?.eq(&y)?.to_dtype(y.dtype())?;
            let first = (&hit * (1.0 - &taken)?)?;
            taken = (taken + &first)?;
            let part = embed(&(first * dy)?, g, off)?;
            dx = Some(match dx {
                None => part,
                Some(t) => (t + part)?,
            });
        }
        crop(&dx.expect("a window has at least one cell"), g)
    }

    pub(super) fn avg_forward(x: &Tensor, g: &PoolGeom) -> candle_core::Result<Tensor> {
        let xp = pad(x, g, 0.0)?;
        let cells = g.kernel.iter().product::<usize>() as f64;
        let mut s: Option<Tensor> = None;
        for off in offsets(g) {
            let v = view(&xp, g, off)?;
            s = Some(match s {
                None => v,
                Some(t) => (t + v)?,
            });
        }
        s.expect("a window has at least one cell") / cells
    }

    pub(super) fn avg_backward(dy: &Tensor, g: &PoolGeom) -> candle_core::Result<Tensor> {
        let cells = g.kernel.iter().product::<usize>() as f64;
        let share = (dy / cells)?;
        let mut dx: Option<Tensor> = None;
        for off in offsets(g) {
            let part = embed(&share, g, off)?;
            dx = Some(match dx {
                None => part,
                Some(t) => (t + part)?,
            });
        }
        crop(&dx.expect("a window has at least one cell"), g)
    }
}

//! Convolution in 3D (and 2D as its depth-1 case): forward, input gradient and weight gradient
//! as custom ops whose backward pass uses only forward-style kernels.

use candle_core::{D, Shape, Tensor};

use super::cpu::{self, Real, conv::Geom};
use super::kernel::{Kernel, apply, apply_no_grad};
use crate::{Error, Result};

/// Padding and stride of a 3D convolution, per axis `[d, h, w]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvSpec {
    /// Zero padding on both sides of each axis.
    pub padding: [usize; 3],
    /// Step between output positions along each axis.
    pub stride: [usize; 3],
}

impl Default for ConvSpec {
    fn default() -> Self {
        ConvSpec {
            padding: [0; 3],
            stride: [1; 3],
        }
    }
}

impl ConvSpec {
    /// The same padding and stride on every axis.
    pub fn uniform(padding: usize, stride: usize) -> Self {
        ConvSpec {
            padding: [padding; 3],
            stride: [stride; 3],
        }
    }
}

/// 3D convolution without bias: `x [N, C, D, H, W]`, `w [O, C, kd, kh, kw]` → `[N, O, D', H', W']`.
pub fn conv3d(x: &Tensor, w: &Tensor, spec: ConvSpec) -> Result<Tensor> {
    let g = geometry(x, w, spec)?;
    Ok(apply(ConvForward(g), &[x, w])?)
}

/// 2D convolution without bias: `x [N, C, H, W]`, `w [O, C, kh, kw]`, padding and stride `[h, w]`.
pub fn conv2d(x: &Tensor, w: &Tensor, padding: [usize; 2], stride: [usize; 2]) -> Result<Tensor> {
    if x.rank() != 4 || w.rank() != 4 {
        return Err(Error::shape(
            "conv2d",
            format!(
                "expected x [N,C,H,W] and w [O,C,kh,kw], got {:?} and {:?}",
                x.dims(),
                w.dims()
            ),
        ));
    }
    let spec = ConvSpec {
        padding: [0, padding[0], padding[1]],
        stride: [1, stride[0], stride[1]],
    };
    Ok(conv3d(&x.unsqueeze(2)?, &w.unsqueeze(2)?, spec)?.squeeze(2)?)
}

fn geometry(x: &Tensor, w: &Tensor, spec: ConvSpec) -> Result<Geom> {
    let (Ok((n, c, d, h, wd)), Ok((o, cw, kd, kh, kw))) = (x.dims5(), w.dims5()) else {
        return Err(Error::shape(
            "conv3d",
            format!(
                "expected x [N,C,D,H,W] and w [O,C,kd,kh,kw], got {:?} and {:?}",
                x.dims(),
                w.dims()
            ),
        ));
    };
    if c != cw {
        return Err(Error::shape(
            "conv3d",
            format!(
                "input has {c} channels but the kernel expects {cw} (x {:?}, w {:?})",
                x.dims(),
                w.dims()
            ),
        ));
    }
    let g = Geom {
        n,
        c,
        o,
        input: [d, h, wd],
        kernel: [kd, kh, kw],
        padding: spec.padding,
        stride: spec.stride,
    };
    if g.output().is_none() {
        return Err(Error::shape(
            "conv3d",
            format!(
                "kernel {:?} with padding {:?} and stride {:?} does not fit input {:?}",
                g.kernel, g.padding, g.stride, g.input
            ),
        ));
    }
    Ok(g)
}

fn describe(g: &Geom) -> String {
    format!(
        "n{} {}->{} in{:?} k{:?} p{:?} s{:?}",
        g.n, g.c, g.o, g.input, g.kernel, g.padding, g.stride
    )
}

fn out_dims(g: &Geom) -> [usize; 3] {
    g.output().expect("checked when the geometry was built")
}

/// Forward convolution.
struct ConvForward(Geom);
/// Input gradient from (output gradient, weights).
struct ConvInputGrad(Geom);
/// Weight gradient from (input, output gradient).
struct ConvWeightGrad(Geom);

impl Kernel for ConvForward {
    fn describe(&self) -> String {
        describe(&self.0)
    }

    const NAME: &'static str = "conv3d";

    fn out_shape(&self) -> Shape {
        let g = &self.0;
        let [d, h, w] = out_dims(g);
        Shape::from((g.n, g.o, d, h, w))
    }

    fn cpu<T: Real>(&self, i: &[&[T]]) -> Vec<T> {
        cpu::conv::forward(i[0], i[1], &self.0)
    }

    #[cfg(feature = "cuda")]
    fn cuda(
        &self,
        i: &[(&candle_core::CudaStorage, &candle_core::Layout)],
    ) -> Option<candle_core::Result<(candle_core::CudaStorage, Shape)>> {
        Some(super::cudnn::run(
            super::cudnn::Pass::Forward,
            &self.0,
            i[0],
            i[1],
        ))
    }

    fn composed(&self, i: &[&Tensor]) -> candle_core::Result<Tensor> {
        composed::forward(i[0], i[1], &self.0)
    }

    fn backward(
        &self,
        i: &[&Tensor],
        _out: &Tensor,
        grad: &Tensor,
    ) -> Option<candle_core::Result<Vec<Option<Tensor>>>> {
        let (x, w) = (i[0], i[1]);
        Some((|| {
            // The input gradient is skipped for data that needs none (the first layer).
            let gx = if x.track_op() {
                Some(apply_no_grad(ConvInputGrad(self.0), &[grad, w])?)
            } else {
                None
            };
            let gw = if w.track_op() {
                Some(apply_no_grad(ConvWeightGrad(self.0), &[x, grad])?)
            } else {
                None
            };
            Ok(vec![gx, gw])
        })())
    }
}

impl Kernel for ConvInputGrad {
    fn describe(&self) -> String {
        describe(&self.0)
    }

    const NAME: &'static str = "conv3d_input_grad";

    fn out_shape(&self) -> Shape {
        let g = &self.0;
        let [d, h, w] = g.input;
        Shape::from((g.n, g.c, d, h, w))
    }

    fn cpu<T: Real>(&self, i: &[&[T]]) -> Vec<T> {
        cpu::conv::input_grad(i[0], i[1], &self.0)
    }

    #[cfg(feature = "cuda")]
    fn cuda(
        &self,
        i: &[(&candle_core::CudaStorage, &candle_core::Layout)],
    ) -> Option<candle_core::Result<(candle_core::CudaStorage, Shape)>> {
        Some(super::cudnn::run(
            super::cudnn::Pass::InputGrad,
            &self.0,
            i[0],
            i[1],
        ))
    }

    fn composed(&self, i: &[&Tensor]) -> candle_core::Result<Tensor> {
        composed::input_grad(i[0], i[1], &self.0)
    }
}

impl Kernel for ConvWeightGrad {
    fn describe(&self) -> String {
        describe(&self.0)
    }

    const NAME: &'static str = "conv3d_weight_grad";

    fn out_shape(&self) -> Shape {
        let g = &self.0;
        let [a, b, c] = g.kernel;
        Shape::from((g.o, g.c, a, b, c))
    }

    fn cpu<T: Real>(&self, i: &[&[T]]) -> Vec<T> {
        cpu::conv::weight_grad(i[0], i[1], &self.0)
    }

    #[cfg(feature = "cuda")]
    fn cuda(
        &self,
        i: &[(&candle_core::CudaStorage, &candle_core::Layout)],
    ) -> Option<candle_core::Result<(candle_core::CudaStorage, Shape)>> {
        Some(super::cudnn::run(
            super::cudnn::Pass::WeightGrad,
            &self.0,
            i[0],
            i[1],
        ))
    }

    fn composed(&self, i: &[&Tensor]) -> candle_core::Result<Tensor> {
        composed::weight_grad(i[0], i[1], &self.0)
    }
}

/// The same three computations from candle ops (2D convolutions over depth slices), for
/// devices without a kernel of ours. Needs equal height and width strides.
pub(crate) mod composed {
    use super::*;

    fn check_hw_stride(g: &Geom) -> candle_core::Result<usize> {
        if g.stride[1] != g.stride[2] {
            candle_core::bail!(
                "conv3d on this device needs equal height and width strides, got {:?}",
                g.stride
            );
        }
        Ok(g.stride[1])
    }

    /// `x` zero-padded on the three spatial axes by `lo` before and `hi` after.
    pub(super) fn pad3(x: &Tensor, lo: [usize; 3], hi: [usize; 3]) -> candle_core::Result<Tensor> {
        let mut t = x.clone();
        for i in 0..3 {
            if lo[i] + hi[i] > 0 {
                t = t.pad_with_zeros(2 + i, lo[i], hi[i])?;
            }
        }
        Ok(t)
    }

    /// Depth slices `a, a+s, ..` (`count` of them) of a padded `[N, C, D, H, W]` tensor.
    fn depth_slices(xp: &Tensor, a: usize, s: usize, count: usize) -> candle_core::Result<Tensor> {
        if s == 1 {
            return xp.narrow(2, a, count);
        }
        let idx: Vec<u32> = (0..count).map(|z| (a + z * s) as u32).collect();
        let idx = Tensor::new(idx.as_slice(), xp.device())?;
        xp.index_select(&idx, 2)
    }

    pub(crate) fn forward(x: &Tensor, w: &Tensor, g: &Geom) -> candle_core::Result<Tensor> {
        let s = check_hw_stride(g)?;
        let [od, oh, ow] = out_dims(g);
        let xp = pad3(x, g.padding, g.padding)?;
        let [_, hp, wp] = g.padded();
        let mut acc: Option<Tensor> = None;
        for a in 0..g.kernel[0] {
            let xa = depth_slices(&xp, a, g.stride[0], od)?
                .permute((0, 2, 1, 3, 4))?
                .reshape((g.n * od, g.c, hp, wp))?;
            let wa = w.narrow(2, a, 1)?.squeeze(2)?.contiguous()?;
            let y = xa.conv2d(&wa, 0, s, 1, 1)?;
            acc = Some(match acc {
                None => y,
                Some(t) => (t + y)?,
            });
        }
        let y = acc.expect("kernel depth is at least 1");
        y.reshape((g.n, od, g.o, oh, ow))?
            .permute((0, 2, 1, 3, 4))?
            .contiguous()
    }

    pub(crate) fn input_grad(dy: &Tensor, w: &Tensor, g: &Geom) -> candle_core::Result<Tensor> {
        // Insert stride-1 zeros between gradient entries, then convolve with the flipped,
        // channel-swapped kernel; the far side gets the rows the forward stride skipped.
        let [od, oh, ow] = out_dims(g);
        let mut up = dy.clone();
        for (i, &n_out) in [od, oh, ow].iter().enumerate() {
            let s = g.stride[i];
            if s > 1 {
                let mut dims = up.dims().to_vec();
                dims[2 + i] = (n_out - 1) * s + 1;
                let idx: Vec<u32> = (0..n_out).map(|j| (j * s) as u32).collect();
                let idx = Tensor::new(idx.as_slice(), up.device())?;
                up = Tensor::zeros(dims, up.dtype(), up.device())?.index_add(&idx, &up, 2 + i)?;
            }
        }
        let lo: [usize; 3] = std::array::from_fn(|i| g.kernel[i] - 1);
        let hi: [usize; 3] = std::array::from_fn(|i| {
            g.kernel[i] - 1 + (g.input[i] + 2 * g.padding[i] - g.kernel[i]) % g.stride[i]
        });
        let up = pad3(&up, lo, hi)?;
        let wt = w.flip(&[2, 3, 4])?.transpose(0, 1)?.contiguous()?;
        let full_in: [usize; 3] = std::array::from_fn(|i| up.dims()[2 + i]);
        let flipped = Geom {
            n: g.n,
            c: g.o,
            o: g.c,
            input: full_in,
            kernel: g.kernel,
            padding: [0; 3],
            stride: [1; 3],
        };
        let full = forward(&up, &wt, &flipped)?;
        // `full` is the gradient of the padded input; drop the padding.
        let mut t = full;
        for i in 0..3 {
            t = t.narrow(2 + i, g.padding[i], g.input[i])?;
        }
        t.contiguous()
    }

    pub(crate) fn weight_grad(x: &Tensor, dy: &Tensor, g: &Geom) -> candle_core::Result<Tensor> {
        let s = check_hw_stride(g)?;
        let [od, oh, ow] = out_dims(g);
        let [kd, kh, kw] = g.kernel;
        let xp = pad3(x, g.padding, g.padding)?;
        let [_, hp, wp] = g.padded();
        // dy as a kernel: [O, N·D', H', W'].
        let gk = dy
            .permute((1, 0, 2, 3, 4))?
            .reshape((g.o, g.n * od, oh, ow))?
            .contiguous()?;
        let mut taps = Vec::with_capacity(kd);
        for a in 0..kd {
            let xa = depth_slices(&xp, a, g.stride[0], od)?
                .permute((1, 0, 2, 3, 4))?
                .reshape((g.c, g.n * od, hp, wp))?
                .contiguous()?;
            // [C, O, ., .] with the kernel dilated by the stride.
            let r = xa.conv2d(&gk, 0, 1, s, 1)?;
            let r = r.narrow(D::Minus2, 0, kh)?.narrow(D::Minus1, 0, kw)?;
            taps.push(r.transpose(0, 1)?);
        }
        Tensor::stack(&taps, 2)?.contiguous()
    }
}

/// The forward convolution of `g`, not recorded for backpropagation.
pub(super) fn forward_no_grad(x: &Tensor, w: &Tensor, g: Geom) -> candle_core::Result<Tensor> {
    apply_no_grad(ConvForward(g), &[x, w])
}

/// The weight gradient of `g` from the convolution's input `x` and output gradient `dy`.
pub(super) fn weight_grad_no_grad(x: &Tensor, dy: &Tensor, g: Geom) -> candle_core::Result<Tensor> {
    apply_no_grad(ConvWeightGrad(g), &[x, dy])
}

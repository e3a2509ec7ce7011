//! Changing resolution: transposed convolution (the UNet decoder's 2×2×2 stride-2 up-convolution,
//! or any kernel/stride) and nearest-neighbour upsampling by an integer factor.

use candle_core::{Shape, Tensor};

use super::conv::ConvSpec;
use super::cpu::{self, Real, conv::Geom};
use super::kernel::{Kernel, apply, apply_no_grad};
use crate::{Error, Result};

/// 3D transposed convolution without bias: `x [N, C, D, H, W]`, `w [C, O, kd, kh, kw]`
/// (PyTorch's layout) → `[N, O, (D-1)·s - 2p + k, ..]`. It is the adjoint of a convolution,
/// computed by the convolution's own input-gradient kernel.
pub fn conv_transpose3d(x: &Tensor, w: &Tensor, spec: ConvSpec) -> Result<Tensor> {
    let (Ok((n, c, d, h, wd)), Ok((cw, o, kd, kh, kw))) = (x.dims5(), w.dims5()) else {
        return Err(Error::shape(
            "conv_transpose3d",
            format!(
                "expected x [N,C,D,H,W] and w [C,O,kd,kh,kw], got {:?} and {:?}",
                x.dims(),
                w.dims()
            ),
        ));
    };
    if c != cw {
        return Err(Error::shape(
            "conv_transpose3d",
            format!(
                "input has {c} channels but the kernel expects {cw} (x {:?}, w {:?})",
                x.dims(),
                w.dims()
            ),
        ));
    }
    let kernel = [kd, kh, kw];
    let input = [d, h, wd];
    let mut full = [0; 3];
    for i in 0..3 {
        let size =
            ((input[i] - 1) * spec.stride[i] + kernel[i]) as isize - 2 * spec.padding[i] as isize;
        if input[i] == 0 || size <= 0 {
            return Err(Error::shape(
                "conv_transpose3d",
                format!(
                    "kernel {kernel:?}, stride {:?} and padding {:?} give an empty output for input {input:?}",
                    spec.stride, spec.padding
                ),
            ));
        }
        full[i] = size as usize;
    }
    // The convolution whose input gradient this is: it maps [N, O, full] to [N, C, input].
    let g = Geom {
        n,
        c: o,
        o: c,
        input: full,
        kernel,
        padding: spec.padding,
        stride: spec.stride,
    };
    debug_assert_eq!(g.output(), Some(input));
    Ok(apply(ConvTranspose(g), &[x, w])?)
}

/// Nearest-neighbour upsampling of `x [N, C, D, H, W]` by `factor` on every spatial axis.
pub fn upsample_nearest3d(x: &Tensor, factor: usize) -> Result<Tensor> {
    let (n, c, d, h, w) = x.dims5().map_err(|_| {
        Error::shape(
            "upsample_nearest3d",
            format!("expected [N, C, D, H, W], got {:?}", x.dims()),
        )
    })?;
    if factor == 0 {
        return Err(Error::arg(
            "factor",
            "expected a positive upsampling factor",
        ));
    }
    Ok(apply(
        Upsample {
            planes: n * c,
            input: [d, h, w],
            factor,
            n,
            c,
        },
        &[x],
    )?)
}

struct ConvTranspose(Geom);

impl Kernel for ConvTranspose {
    const NAME: &'static str = "conv_transpose3d";

    fn out_shape(&self) -> Shape {
        let g = &self.0;
        Shape::from((g.n, g.c, g.input[0], g.input[1], g.input[2]))
    }

    fn cpu<T: Real>(&self, i: &[&[T]]) -> Vec<T> {
        cpu::conv::input_grad(i[0], i[1], &self.0)
    }

    /// A transposed convolution is the input gradient of the convolution it undoes.
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
        super::conv::composed::input_grad(i[0], i[1], &self.0)
    }

    fn backward(
        &self,
        i: &[&Tensor],
        _o: &Tensor,
        grad: &Tensor,
    ) -> Option<candle_core::Result<Vec<Option<Tensor>>>> {
        let (x, w) = (i[0], i[1]);
        Some((|| {
            let gx = if x.track_op() {
                Some(super::conv::forward_no_grad(grad, w, self.0)?)
            } else {
                None
            };
            let gw = if w.track_op() {
                Some(super::conv::weight_grad_no_grad(grad, x, self.0)?)
            } else {
                None
            };
            Ok(vec![gx, gw])
        })())
    }
}

struct Upsample {
    planes: usize,
    input: [usize; 3],
    factor: usize,
    n: usize,
    c: usize,
}

impl Upsample {
    fn out(&self) -> [usize; 3] {
        self.input.map(|s| s * self.factor)
    }
}

impl Kernel for Upsample {
    const NAME: &'static str = "upsample_nearest3d";

    fn out_shape(&self) -> Shape {
        let [d, h, w] = self.out();
        Shape::from((self.n, self.c, d, h, w))
    }

    fn cpu<T: Real>(&self, i: &[&[T]]) -> Vec<T> {
        cpu::resample::nearest_up(i[0], self.planes, self.input, self.factor)
    }

    fn composed(&self, i: &[&Tensor]) -> candle_core::Result<Tensor> {
        let [d, h, w] = self.input;
        let f = self.factor;
        let x = i[0].reshape(vec![self.n, self.c, d, 1, h, 1, w, 1])?;
        let x = x.broadcast_as(vec![self.n, self.c, d, f, h, f, w, f])?;
        x.reshape((self.n, self.c, d * f, h * f, w * f))
    }

    fn backward(
        &self,
        _i: &[&Tensor],
        _o: &Tensor,
        g: &Tensor,
    ) -> Option<candle_core::Result<Vec<Option<Tensor>>>> {
        let down = UpsampleGrad {
            planes: self.planes,
            input: self.input,
            factor: self.factor,
            n: self.n,
            c: self.c,
        };
        Some(apply_no_grad(down, &[g]).map(|t| vec![Some(t)]))
    }
}

/// The adjoint of [`Upsample`]: sums each `factor³` block.
struct UpsampleGrad {
    planes: usize,
    input: [usize; 3],
    factor: usize,
    n: usize,
    c: usize,
}

impl Kernel for UpsampleGrad {
    const NAME: &'static str = "upsample_nearest3d_grad";

    fn out_shape(&self) -> Shape {
        let [d, h, w] = self.input;
        Shape::from((self.n, self.c, d, h, w))
    }

    fn cpu<T: Real>(&self, i: &[&[T]]) -> Vec<T> {
        cpu::resample::nearest_up_grad(i[0], self.planes, self.input, self.factor)
    }

    fn composed(&self, i: &[&Tensor]) -> candle_core::Result<Tensor> {
        let [d, h, w] = self.input;
        let f = self.factor;
        i[0].reshape(vec![self.n, self.c, d, f, h, f, w, f])?
            .sum(7)?
            .sum(5)?
            .sum(3)
    }
}

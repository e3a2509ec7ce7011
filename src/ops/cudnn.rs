//! cuDNN's own N-d convolution (forward, backward-data, backward-filter) for the conv kernels
//! on CUDA, as PyTorch calls it: the algorithm chosen once per geometry by cuDNN's heuristics
//! (falling back to the pass's other algorithms when the pick cannot run) and cached, one
//! workspace per thread that only grows, and the (host-side, cheap) descriptors built per call.
//!
//! Math mode: strict FP32 (`CUDNN_FMA_MATH`) by default, so the GPU agrees with the CPU
//! kernels to f32 rounding; `PRETEXT_TF32=1` allows TF32 tensor cores (PyTorch's default for
//! cuDNN convolutions).

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::cudnn::{
    ConvBackwardData, ConvBackwardFilter, ConvDescriptor, ConvForward, Cudnn, CudnnDataType,
    FilterDescriptor, TensorDescriptor, sys,
};
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, DeviceRepr};
use candle_core::cuda_backend::{CudaDType, DeviceId};
use candle_core::{CudaDevice, CudaStorage, DType, Layout, Shape, WithDType};

use super::cpu::conv::Geom;

/// Which of the three convolutions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Pass {
    /// `y = conv(x, w)`; inputs `(x, w)`.
    Forward,
    /// `dx` from `(dy, w)`.
    InputGrad,
    /// `dw` from `(x, dy)`.
    WeightGrad,
}

/// The algorithm cuDNN picked for one geometry and pass.
#[derive(Clone, Copy, Debug)]
enum Algo {
    Forward(sys::cudnnConvolutionFwdAlgo_t),
    InputGrad(sys::cudnnConvolutionBwdDataAlgo_t),
    WeightGrad(sys::cudnnConvolutionBwdFilterAlgo_t),
}

/// A cached choice: the algorithm and its workspace size in bytes.
type Choice = (Algo, usize);

thread_local! {
    static HANDLES: RefCell<HashMap<DeviceId, Arc<Cudnn>>> = RefCell::new(HashMap::new());
    static CHOICES: RefCell<HashMap<(DeviceId, Geom, Pass, DType), Choice>> =
        RefCell::new(HashMap::new());
    static WORKSPACE: RefCell<HashMap<DeviceId, CudaSlice<u8>>> = RefCell::new(HashMap::new());
}

fn handle(dev: &CudaDevice) -> candle_core::Result<Arc<Cudnn>> {
    HANDLES.with(|h| {
        if let Some(c) = h.borrow().get(&dev.id()) {
            return Ok(c.clone());
        }
        let c = Cudnn::new(dev.cuda_stream())?;
        h.borrow_mut().insert(dev.id(), c.clone());
        Ok(c)
    })
}

fn remember(key: (DeviceId, Geom, Pass, DType), choice: Choice) {
    CHOICES.with(|c| c.borrow_mut().insert(key, choice));
}

/// Every forward algorithm, in cuDNN's order: the candidates after the heuristic's pick.
const FORWARD_ALGOS: [sys::cudnnConvolutionFwdAlgo_t; 8] = {
    use sys::cudnnConvolutionFwdAlgo_t::*;
    [
        CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM,
        CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM,
        CUDNN_CONVOLUTION_FWD_ALGO_GEMM,
        CUDNN_CONVOLUTION_FWD_ALGO_DIRECT,
        CUDNN_CONVOLUTION_FWD_ALGO_FFT,
        CUDNN_CONVOLUTION_FWD_ALGO_FFT_TILING,
        CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD,
        CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD_NONFUSED,
    ]
};

/// Every backward-data algorithm, in cuDNN's order.
const INPUT_GRAD_ALGOS: [sys::cudnnConvolutionBwdDataAlgo_t; 6] = {
    use sys::cudnnConvolutionBwdDataAlgo_t::*;
    [
        CUDNN_CONVOLUTION_BWD_DATA_ALGO_0,
        CUDNN_CONVOLUTION_BWD_DATA_ALGO_1,
        CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT,
        CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT_TILING,
        CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD,
        CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD_NONFUSED,
    ]
};

/// Every backward-filter algorithm, in cuDNN's order.
const WEIGHT_GRAD_ALGOS: [sys::cudnnConvolutionBwdFilterAlgo_t; 7] = {
    use sys::cudnnConvolutionBwdFilterAlgo_t::*;
    [
        CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0,
        CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1,
        CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT,
        CUDNN_CONVOLUTION_BWD_FILTER_ALGO_3,
        CUDNN_CONVOLUTION_BWD_FILTER_ALGO_WINOGRAD,
        CUDNN_CONVOLUTION_BWD_FILTER_ALGO_WINOGRAD_NONFUSED,
        CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT_TILING,
    ]
};

/// The most workspace one convolution may take (`PRETEXT_CUDNN_WORKSPACE_MIB`, default 4096
/// MiB); an algorithm that needs more gives way to the next candidate.
fn workspace_budget() -> usize {
    std::env::var("PRETEXT_CUDNN_WORKSPACE_MIB")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(4096)
        << 20
}

/// Runs pass `$variant` of `$op` with `$launch(algo, workspace)`: the cached algorithm of `$key`
/// if there is one, else cuDNN's heuristic pick and then every other algorithm of the pass in
/// order until one runs (see [`super::fallback`]); the one that ran is remembered.
macro_rules! run_with_fallback {
    ($op:ident, $variant:path, $all:expr, $cached:expr, $key:expr, $dev:expr, $launch:expr) => {
        match $cached {
            Some(($variant(a), size)) => with_workspace($dev, size, |ws| $launch(a, ws))?,
            _ => {
                let candidates = super::fallback::in_order($op.pick_algorithm().ok(), &$all);
                let (a, size, ()) = super::fallback::first_working(
                    &candidates,
                    workspace_budget(),
                    |a| $op.get_workspace_size(a),
                    |a, size| with_workspace($dev, size, |ws| $launch(a, ws)),
                )
                .map_err(|e| candle_core::Error::Msg(format!("conv3d on CUDA: {e}")))?;
                remember($key, ($variant(a), size));
            }
        }
    };
}

fn tf32_allowed() -> bool {
    std::env::var("PRETEXT_TF32").is_ok_and(|v| v == "1")
}

/// Runs one pass of `g` on two contiguous CUDA inputs (see [`Pass`] for their order).
pub(crate) fn run(
    pass: Pass,
    g: &Geom,
    a: (&CudaStorage, &Layout),
    b: (&CudaStorage, &Layout),
) -> candle_core::Result<(CudaStorage, Shape)> {
    match a.0.dtype() {
        DType::F32 => run_typed::<f32>(pass, g, a, b),
        DType::F64 => run_typed::<f64>(pass, g, a, b),
        other => candle_core::bail!("conv3d on CUDA: expected f32 or f64, got {other:?}"),
    }
}

fn dims_i32(d: &[usize]) -> Vec<i32> {
    d.iter().map(|&v| v as i32).collect()
}

/// Fully packed strides of an NCDHW tensor.
fn packed_strides(d: &[i32]) -> Vec<i32> {
    let mut s = vec![1; d.len()];
    for i in (0..d.len() - 1).rev() {
        s[i] = s[i + 1] * d[i + 1];
    }
    s
}

fn run_typed<T>(
    pass: Pass,
    g: &Geom,
    a: (&CudaStorage, &Layout),
    b: (&CudaStorage, &Layout),
) -> candle_core::Result<(CudaStorage, Shape)>
where
    T: CudnnDataType + CudaDType + DeviceRepr + WithDType,
{
    let dev = a.0.device().clone();
    let cudnn = handle(&dev)?;
    let out = g.output().expect("checked when the geometry was built");
    let x_dims = dims_i32(&[g.n, g.c, g.input[0], g.input[1], g.input[2]]);
    let y_dims = dims_i32(&[g.n, g.o, out[0], out[1], out[2]]);
    let w_dims = dims_i32(&[g.o, g.c, g.kernel[0], g.kernel[1], g.kernel[2]]);
    let tensor = |d: &[i32]| -> candle_core::Result<TensorDescriptor<T>> {
        Ok(cudnn.create_nd_tensor::<T>(d, &packed_strides(d))?)
    };
    let x = tensor(&x_dims)?;
    let y = tensor(&y_dims)?;
    let w: FilterDescriptor<T> =
        cudnn.create_nd_filter::<T>(sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW, &w_dims)?;
    let mut conv: ConvDescriptor<T> = cudnn.create_convnd::<T>(
        &dims_i32(&g.padding),
        &dims_i32(&g.stride),
        &[1, 1, 1],
        sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
    )?;
    let math = if tf32_allowed() {
        sys::cudnnMathType_t::CUDNN_DEFAULT_MATH
    } else {
        sys::cudnnMathType_t::CUDNN_FMA_MATH
    };
    conv.set_math_type(math)?;

    let (va, vb) = (view::<T>(a.0, a.1)?, view::<T>(b.0, b.1)?);
    let (out_dims, out_len) = match pass {
        Pass::Forward => (&y_dims, y_dims.iter().product::<i32>()),
        Pass::InputGrad => (&x_dims, x_dims.iter().product::<i32>()),
        Pass::WeightGrad => (&w_dims, w_dims.iter().product::<i32>()),
    };
    // SAFETY: every element is written by cuDNN (beta = 0) before it is read.
    let mut dst = unsafe { dev.alloc::<T>(out_len as usize)? };
    let key = (dev.id(), *g, pass, T::DTYPE);
    let cached = CHOICES.with(|c| c.borrow().get(&key).copied());
    let one_zero = (T::from_f64(1.0), T::from_f64(0.0));
    match pass {
        Pass::Forward => {
            let op = ConvForward {
                conv: &conv,
                x: &x,
                w: &w,
                y: &y,
            };
            // SAFETY: descriptors and buffers were built from the same geometry and dtype.
            run_with_fallback!(
                op,
                Algo::Forward,
                FORWARD_ALGOS,
                cached,
                key,
                &dev,
                |a, ws| unsafe { op.launch(a, ws, one_zero, &va, &vb, &mut dst) }
            );
        }
        Pass::InputGrad => {
            let op = ConvBackwardData {
                conv: &conv,
                dx: &x,
                w: &w,
                dy: &y,
            };
            // SAFETY: as above; `va` is dy and `vb` the filter.
            run_with_fallback!(
                op,
                Algo::InputGrad,
                INPUT_GRAD_ALGOS,
                cached,
                key,
                &dev,
                |a, ws| unsafe { op.launch(a, ws, one_zero, &mut dst, &vb, &va) }
            );
        }
        Pass::WeightGrad => {
            let op = ConvBackwardFilter {
                conv: &conv,
                x: &x,
                dw: &w,
                dy: &y,
            };
            // SAFETY: as above; `va` is x and `vb` dy.
            run_with_fallback!(
                op,
                Algo::WeightGrad,
                WEIGHT_GRAD_ALGOS,
                cached,
                key,
                &dev,
                |a, ws| unsafe { op.launch(a, ws, one_zero, &va, &mut dst, &vb) }
            );
        }
    }
    let shape: Vec<usize> = out_dims.iter().map(|&d| d as usize).collect();
    Ok((CudaStorage::wrap_cuda_slice(dst, dev), Shape::from(shape)))
}

/// The elements of a contiguous input.
fn view<'a, T: CudaDType>(s: &'a CudaStorage, l: &Layout) -> candle_core::Result<CudaView<'a, T>> {
    let (start, end) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("conv3d on CUDA: non-contiguous input".into()))?;
    Ok(s.as_cuda_slice::<T>()?.slice(start..end))
}

/// Runs `f` with this thread's workspace for `dev`, grown to at least `bytes` (never shrunk,
/// so steady-state training allocates no workspace).
fn with_workspace<R>(
    dev: &CudaDevice,
    bytes: usize,
    f: impl FnOnce(
        Option<&mut CudaSlice<u8>>,
    ) -> Result<R, candle_core::cuda_backend::cudarc::cudnn::CudnnError>,
) -> candle_core::Result<R> {
    if bytes == 0 {
        return Ok(f(None)?);
    }
    WORKSPACE.with(|w| {
        let mut w = w.borrow_mut();
        let too_small = w.get(&dev.id()).is_none_or(|s| s.len() < bytes);
        if too_small {
            // SAFETY: a workspace is scratch memory; cuDNN never reads what it did not write.
            let fresh = unsafe { dev.alloc::<u8>(bytes)? };
            w.insert(dev.id(), fresh);
        }
        let ws = w.get_mut(&dev.id()).expect("inserted above");
        Ok(f(Some(ws))?)
    })
}

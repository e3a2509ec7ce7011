//! Moving between CUDA storages and tensors inside custom ops, so that a composed
//! implementation can run on the GPU.

use candle_core::backend::BackendStorage;
use candle_core::op::BackpropOp;
use candle_core::{CudaStorage, Layout, Shape, Storage, Tensor};

/// A tensor (not tracked) viewing the contiguous input `s` with layout `l`.
pub(crate) fn cuda_tensor(s: &CudaStorage, l: &Layout) -> candle_core::Result<Tensor> {
    let (start, end) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("custom op: non-contiguous CUDA input".into()))?;
    let whole = s.try_clone(l)?;
    let len = whole_len(&whole, end);
    let t = Tensor::from_storage(
        Storage::Cuda(whole),
        Shape::from(len),
        BackpropOp::none(),
        false,
    );
    t.narrow(0, start, end - start)?.reshape(l.shape())
}

fn whole_len(s: &CudaStorage, at_least: usize) -> usize {
    s.as_cuda_slice::<f32>()
        .map(|v| v.len())
        .or_else(|_| s.as_cuda_slice::<f64>().map(|v| v.len()))
        .unwrap_or(at_least)
}

/// The CUDA storage of a (made contiguous) result tensor.
pub(crate) fn into_cuda(t: &Tensor) -> candle_core::Result<(CudaStorage, Shape)> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cuda(s) => {
            let out = s.try_clone(layout)?;
            if layout.start_offset() != 0 {
                candle_core::bail!("custom op: CUDA result with a non-zero offset");
            }
            Ok((out, layout.shape().clone()))
        }
        _ => candle_core::bail!("custom op: expected a CUDA result"),
    }
}

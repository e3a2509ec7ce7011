//! Tensor operations candle lacks, or whose gradients candle gets wrong: 3D (and 2D)
//! convolution, transposed convolution, max/average/global pooling, nearest upsampling and
//! training-mode batch normalisation.
//!
//! Each op is a candle custom op with a fast CPU kernel (in `ops::cpu`) and a composed
//! implementation from candle ops for other devices; on CUDA the convolutions call cuDNN's own
//! 3D convolution instead. Backward passes use only forward-style kernels (no
//! transposed-convolution loops), and max pooling sends gradients to the first maximum of a
//! window, as PyTorch does.

pub mod activation;
pub mod conv;
pub(crate) mod cpu;
#[cfg(feature = "cuda")]
mod cudnn;
pub mod dense;
#[cfg(feature = "cuda")]
mod device;
// Used by the cuDNN path; built (and tested) without it too.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
mod fallback;
mod kernel;
pub(crate) use kernel::{grad_disabled, timed};
pub use kernel::{no_grad, profile_report, with_composed};
pub(crate) use norm::per_channel;
pub mod norm;
pub mod pool;
pub mod resample;

pub use activation::relu;
pub use conv::{ConvSpec, conv2d, conv3d};
pub use cpu::{
    configure_allocator, configure_threads, direct_kernel_calls, direct_kernels_available,
};
pub use dense::{DenseBlockSpec, dense_block_available, dense_block_eval, dense_block_train};
pub use norm::{
    BatchStats, affine_relu, batch_norm_relu_train, batch_norm_train, bias_add, bias_relu_affine,
    bias_relu_batch_norm_train,
};
pub use pool::{
    PoolSpec, avg_pool2d, avg_pool3d, global_avg_pool, global_max_pool, max_pool2d, max_pool3d,
};
pub use resample::{conv_transpose3d, upsample_nearest3d};

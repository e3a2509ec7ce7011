//! The bridge between CPU kernels and candle: a [`Kernel`] is a computation with a CPU
//! implementation on slices and a *composed* implementation from candle tensor ops, which
//! serves every other device (CUDA) and doubles as an independent check of the CPU kernel.
//! [`apply`] runs a kernel as a candle custom op, with the kernel's own backward pass.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor};

use std::cell::Cell;

use super::cpu::Real;

thread_local! {
    static COMPOSED: Cell<bool> = const { Cell::new(false) };
    static NO_GRAD: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` without recording this module's ops for backpropagation, on the calling thread
/// (PyTorch's `no_grad`): inference then keeps only the activations still in use instead of
/// the whole graph. Results are not differentiable.
pub fn no_grad<R>(f: impl FnOnce() -> R) -> R {
    let before = NO_GRAD.with(|c| c.replace(true));
    let r = f();
    NO_GRAD.with(|c| c.set(before));
    r
}

/// Whether [`no_grad`] is in effect on this thread.
pub(crate) fn grad_disabled() -> bool {
    NO_GRAD.with(Cell::get)
}

/// Runs `f` with every op of this module computed by its composed implementation (candle ops,
/// as on GPUs) instead of the CPU kernels, on the calling thread. For cross-checks.
pub fn with_composed<R>(f: impl FnOnce() -> R) -> R {
    let before = COMPOSED.with(|c| c.replace(true));
    let r = f();
    COMPOSED.with(|c| c.set(before));
    r
}

/// A tensor computation with a fast CPU path and a composed any-device path.
pub(crate) trait Kernel: Send + Sync + Sized + 'static {
    /// The op's name in errors and profiles.
    const NAME: &'static str;

    /// The output shape.
    fn out_shape(&self) -> Shape;

    /// The CPU kernel on contiguous inputs.
    fn cpu<T: Real>(&self, inputs: &[&[T]]) -> Vec<T>;

    /// The geometry in a few words, for [`profile_report`] (empty: the name alone).
    fn describe(&self) -> String {
        String::new()
    }

    /// The same computation from candle tensor ops (used on non-CPU devices).
    fn composed(&self, inputs: &[&Tensor]) -> candle_core::Result<Tensor>;

    /// A native CUDA implementation on contiguous inputs, where there is one (cuDNN for the
    /// convolutions); `None` runs [`Kernel::composed`] on the GPU instead.
    #[cfg(feature = "cuda")]
    fn cuda(
        &self,
        _inputs: &[(&candle_core::CudaStorage, &Layout)],
    ) -> Option<candle_core::Result<(candle_core::CudaStorage, Shape)>> {
        None
    }

    /// Gradients with respect to the inputs; `None` when the op is not differentiable.
    fn backward(
        &self,
        _inputs: &[&Tensor],
        _output: &Tensor,
        _grad: &Tensor,
    ) -> Option<candle_core::Result<Vec<Option<Tensor>>>> {
        None
    }
}

/// Runs `kernel` on `inputs` (made contiguous first) as a custom op; differentiable when the
/// kernel defines [`Kernel::backward`].
pub(crate) fn apply<K: Kernel>(kernel: K, inputs: &[&Tensor]) -> candle_core::Result<Tensor> {
    let no_grad = grad_disabled();
    let xs: Vec<Tensor> = inputs
        .iter()
        .map(|&t| if no_grad { t.detach() } else { t.clone() }.contiguous())
        .collect::<candle_core::Result<_>>()?;
    let dtype = xs[0].dtype();
    if let Some(t) = xs.iter().find(|t| t.dtype() != dtype) {
        candle_core::bail!("{}: mixed dtypes {dtype:?} and {:?}", K::NAME, t.dtype());
    }
    let op = Op(kernel);
    match xs.as_slice() {
        [a] => a.apply_op1(op),
        [a, b] => a.apply_op2(b, op),
        [a, b, c] => a.apply_op3(b, c, op),
        _ => candle_core::bail!("{}: unsupported arity {}", K::NAME, xs.len()),
    }
}

/// Runs `kernel` without recording it for backpropagation.
pub(crate) fn apply_no_grad<K: Kernel>(
    kernel: K,
    inputs: &[&Tensor],
) -> candle_core::Result<Tensor> {
    let xs: Vec<Tensor> = inputs
        .iter()
        .map(|t| t.detach().contiguous())
        .collect::<candle_core::Result<_>>()?;
    apply(kernel, &xs.iter().collect::<Vec<_>>())
}

struct Op<K>(K);

fn slice<'a, T: Real + candle_core::WithDType>(
    s: &'a CpuStorage,
    l: &Layout,
    name: &str,
) -> candle_core::Result<&'a [T]> {
    let (a, b) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg(format!("{name}: non-contiguous input")))?;
    Ok(&s.as_slice::<T>()?[a..b])
}

/// Whether [`with_composed`] is in effect on this thread.
pub(crate) fn composed_mode() -> bool {
    COMPOSED.with(Cell::get)
}

fn cpu_tensor(s: &CpuStorage, l: &Layout) -> candle_core::Result<Tensor> {
    let (start, end) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("custom op: non-contiguous input".into()))?;
    let dev = candle_core::Device::Cpu;
    match s {
        CpuStorage::F32(v) => Tensor::from_slice(&v[start..end], l.shape(), &dev),
        CpuStorage::F64(v) => Tensor::from_slice(&v[start..end], l.shape(), &dev),
        other => candle_core::bail!("custom op: expected f32 or f64, got {:?}", other.dtype()),
    }
}

fn run_composed<K: Kernel>(
    k: &K,
    inputs: &[(&CpuStorage, &Layout)],
) -> candle_core::Result<(CpuStorage, Shape)> {
    let xs = inputs
        .iter()
        .map(|(s, l)| cpu_tensor(s, l))
        .collect::<candle_core::Result<Vec<_>>>()?;
    let y = k.composed(&xs.iter().collect::<Vec<_>>())?.contiguous()?;
    let (storage, layout) = y.storage_and_layout();
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("custom op: non-contiguous result".into()))?;
    let out = match &*storage {
        candle_core::Storage::Cpu(CpuStorage::F32(v)) => CpuStorage::F32(v[start..end].to_vec()),
        candle_core::Storage::Cpu(CpuStorage::F64(v)) => CpuStorage::F64(v[start..end].to_vec()),
        _ => candle_core::bail!("{}: composed result is not an f32/f64 CPU tensor", K::NAME),
    };
    Ok((out, layout.shape().clone()))
}

/// Per-kernel time, kept when `PRETEXT_OP_PROFILE` is set: (calls, wall seconds, CPU
/// seconds of the process) per kernel name and geometry.
type Profile = std::collections::BTreeMap<String, (usize, f64, f64)>;

/// User + system CPU time of the process, seconds (Linux; 0 elsewhere).
fn cpu_seconds() -> f64 {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: rusage is a plain C struct of integers, for which all zero bytes are valid.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: getrusage writes the struct it is given.
        if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } == 0 {
            let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 * 1e-6;
            return t(ru.ru_utime) + t(ru.ru_stime);
        }
    }
    0.0
}
static PROFILE: std::sync::Mutex<Profile> = std::sync::Mutex::new(Profile::new());

fn profiling() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("PRETEXT_OP_PROFILE").is_some())
}

/// Runs `f`, adding its wall time to the profile under `key` when profiling (for the parts of
/// a kernel).
pub(crate) fn timed<R>(key: impl FnOnce() -> String, f: impl FnOnce() -> R) -> R {
    if !profiling() {
        return f();
    }
    let (start, cpu) = (std::time::Instant::now(), cpu_seconds());
    let r = f();
    let mut p = PROFILE.lock().unwrap_or_else(|e| e.into_inner());
    let e = p.entry(format!("  {}", key())).or_default();
    e.0 += 1;
    e.1 += start.elapsed().as_secs_f64();
    e.2 += cpu_seconds() - cpu;
    r
}

/// The CPU kernels' wall time per name and geometry since the last call, as text lines
/// `total ms, calls, name geometry`, largest first, when `PRETEXT_OP_PROFILE` is set (empty
/// otherwise). Clears the record.
pub fn profile_report() -> String {
    let mut p = PROFILE.lock().unwrap_or_else(|e| e.into_inner());
    let mut rows: Vec<_> = std::mem::take(&mut *p).into_iter().collect();
    rows.sort_by(|a, b| b.1.1.total_cmp(&a.1.1));
    let total: f64 = rows.iter().map(|r| r.1.1).sum();
    let mut s = format!(
        "{:>10.1} ms in kernels (wall ms, CPU ms, calls, kernel; indented: parts)\n",
        total * 1e3
    );
    for (k, (n, t, c)) in rows {
        s.push_str(&format!("{:>10.2} {:>10.2} {n:>6} {k}\n", t * 1e3, c * 1e3));
    }
    s
}

fn run_cpu<K: Kernel>(
    k: &K,
    inputs: &[(&CpuStorage, &Layout)],
) -> candle_core::Result<(CpuStorage, Shape)> {
    if composed_mode() {
        return run_composed(k, inputs);
    }
    if profiling() {
        let (start, cpu) = (std::time::Instant::now(), cpu_seconds());
        let r = run_cpu_timed(k, inputs);
        let key = format!("{} {}", K::NAME, k.describe());
        let mut p = PROFILE.lock().unwrap_or_else(|e| e.into_inner());
        let e = p.entry(key).or_default();
        e.0 += 1;
        e.1 += start.elapsed().as_secs_f64();
        e.2 += cpu_seconds() - cpu;
        return r;
    }
    run_cpu_timed(k, inputs)
}

fn run_cpu_timed<K: Kernel>(
    k: &K,
    inputs: &[(&CpuStorage, &Layout)],
) -> candle_core::Result<(CpuStorage, Shape)> {
    let shape = k.out_shape();
    let dtype = inputs[0].0.dtype();
    let out = match dtype {
        DType::F32 => {
            let xs = inputs
                .iter()
                .map(|(s, l)| slice::<f32>(s, l, K::NAME))
                .collect::<candle_core::Result<Vec<_>>>()?;
            CpuStorage::F32(k.cpu(&xs))
        }
        DType::F64 => {
            let xs = inputs
                .iter()
                .map(|(s, l)| slice::<f64>(s, l, K::NAME))
                .collect::<candle_core::Result<Vec<_>>>()?;
            CpuStorage::F64(k.cpu(&xs))
        }
        other => candle_core::bail!("{}: expected f32 or f64 tensors, got {other:?}", K::NAME),
    };
    Ok((out, shape))
}

/// A kernel on CUDA inputs: its native implementation, else its composed one.
#[cfg(feature = "cuda")]
fn run_cuda<K: Kernel>(
    k: &K,
    inputs: &[(&candle_core::CudaStorage, &Layout)],
) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
    if !composed_mode() {
        if let Some(native) = k.cuda(inputs) {
            return native;
        }
    }
    let xs = inputs
        .iter()
        .map(|(s, l)| super::device::cuda_tensor(s, l))
        .collect::<candle_core::Result<Vec<_>>>()?;
    super::device::into_cuda(&k.composed(&xs.iter().collect::<Vec<_>>())?)
}

fn unsupported(op: &'static str) -> candle_core::Error {
    candle_core::Error::BackwardNotSupported { op }
}

impl<K: Kernel> CustomOp1 for Op<K> {
    fn name(&self) -> &'static str {
        K::NAME
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        run_cpu(&self.0, &[(s, l)])
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        run_cuda(&self.0, &[(s, l)])
    }

    fn bwd(&self, a: &Tensor, res: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let grads = self
            .0
            .backward(&[a], res, g)
            .ok_or_else(|| unsupported(K::NAME))??;
        Ok(grads.into_iter().next().flatten())
    }
}

impl<K: Kernel> CustomOp2 for Op<K> {
    fn name(&self) -> &'static str {
        K::NAME
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        run_cpu(&self.0, &[(s1, l1), (s2, l2)])
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        run_cuda(&self.0, &[(s1, l1), (s2, l2)])
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        res: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let grads = self
            .0
            .backward(&[a, b], res, g)
            .ok_or_else(|| unsupported(K::NAME))??;
        let mut it = grads.into_iter();
        Ok((it.next().flatten(), it.next().flatten()))
    }
}

impl<K: Kernel> CustomOp3 for Op<K> {
    fn name(&self) -> &'static str {
        K::NAME
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        run_cpu(&self.0, &[(s1, l1), (s2, l2), (s3, l3)])
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        run_cuda(&self.0, &[(s1, l1), (s2, l2), (s3, l3)])
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        c: &Tensor,
        res: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grads = self
            .0
            .backward(&[a, b, c], res, g)
            .ok_or_else(|| unsupported(K::NAME))??;
        let mut it = grads.into_iter();
        Ok((
            it.next().flatten(),
            it.next().flatten(),
            it.next().flatten(),
        ))
    }
}

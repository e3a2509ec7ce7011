//! CPU kernels on contiguous slices, generic over the element type (`f32`, `f64`).
//!
//! Nothing here knows about candle tensors: the custom ops in [`crate::ops`] unwrap storages,
//! call these kernels and wrap the results.

/// Defines `fn $name<T: Real>(args) -> R` that runs `$imp` (an `#[inline(always)]` generic
/// function) compiled for AVX-512 where the CPU has it, and as compiled for the baseline (SSE2)
/// elsewhere. Only the vector width changes: no fused multiply-adds are introduced and the
/// kernels' sums keep their explicit lane order, so both give bit-identical results.
macro_rules! simd_fn {
    ($(#[$m:meta])* $vis:vis fn $name:ident<$T:ident: Real>($($a:ident: $t:ty),* $(,)?) $(-> $r:ty)? = $imp:ident;) => {
        $(#[$m])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name<$T: Real>($($a: $t),*) $(-> $r)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn fast<$T: Real>($($a: $t),*) $(-> $r)? {
                    $imp($($a),*)
                }
                if $crate::ops::cpu::simd_ok() {
                    // SAFETY: the CPU has the features `fast` is compiled for.
                    return unsafe { fast::<$T>($($a),*) };
                }
            }
            $imp($($a),*)
        }
    };
    ($(#[$m:meta])* $vis:vis unsafe fn $name:ident<$T:ident: Real>($($a:ident: $t:ty),* $(,)?) $(-> $r:ty)? = $imp:ident;) => {
        $(#[$m])*
        #[allow(clippy::too_many_arguments)]
        $vis unsafe fn $name<$T: Real>($($a: $t),*) $(-> $r)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn fast<$T: Real>($($a: $t),*) $(-> $r)? {
                    $imp($($a),*)
                }
                if $crate::ops::cpu::simd_ok() {
                    // SAFETY: the CPU has the features `fast` is compiled for; the caller
                    // upholds `$name`'s contract.
                    return unsafe { fast::<$T>($($a),*) };
                }
            }
            $imp($($a),*)
        }
    };
}

pub mod conv;
pub mod dense;
#[cfg(target_arch = "x86_64")]
mod direct;
pub mod norm;
pub mod pool;
pub mod resample;
#[cfg(target_arch = "x86_64")]
mod strided;

use std::cell::Cell;

use conv::Geom;
use rayon::prelude::*;

thread_local! {
    /// Convolutions the direct kernels computed on this thread: [forward, weight gradient].
    static DIRECT_CALLS: Cell<[usize; 2]> = const { Cell::new([0, 0]) };
}

/// How many convolutions the direct AVX-512 kernels (the "same" convolutions' and the strided
/// 2D ones' with few input channels) have computed for calls made on the calling thread:
/// `[forward, weight gradient]` (a "same" convolution's input gradient is a forward
/// convolution and counts as one). Tests read it before and after an op to know that
/// the fast path, not im2col + GEMM, was taken.
pub fn direct_kernel_calls() -> [usize; 2] {
    DIRECT_CALLS.with(Cell::get)
}

/// Whether this CPU has the instructions the direct convolution kernels need (x86-64 with
/// AVX-512F and AVX-512VL); without them every convolution takes im2col + GEMM.
pub fn direct_kernels_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        direct::cpu_ok()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg(target_arch = "x86_64")]
fn count_direct(which: usize) {
    DIRECT_CALLS.with(|c| {
        let mut v = c.get();
        v[which] += 1;
        c.set(v);
    });
}

/// Whether this CPU runs the AVX-512 versions of [`simd_fn`] functions (checked once).
pub(crate) fn simd_ok() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *OK.get_or_init(|| {
            std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512vl")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512dq")
                && std::arch::is_x86_feature_detected!("avx2")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Turns candle's own thread pool for elementwise ops off (`CANDLE_NUM_THREADS=1`) unless the
/// environment already sets `CANDLE_NUM_THREADS`; returns the value in effect.
///
/// candle 0.11 runs elementwise ops on large tensors (among them the gradient sums of every
/// backward pass) on a second pool of threads beside rayon's, whose workers spin for tens of
/// thousands of iterations after each op. Between an elementwise op and the next kernel of
/// ours (on rayon), two idle spinners and two busy threads then share two cores: on the 2-core
/// development machine that made the quick DenseNet step 3–4× and the 32³ UNet step 2× slower
/// (CPU time per step 2×) whenever other work ran, and slower even on an idle machine. With
/// the pool off, candle's elementwise ops run on the calling thread.
///
/// # Safety
/// It may change the process environment: call it before any other thread exists (at the start
/// of `main`), since reading the environment while it changes is undefined behaviour.
pub unsafe fn configure_threads() -> String {
    match std::env::var("CANDLE_NUM_THREADS") {
        Ok(v) => v,
        Err(_) => {
            // SAFETY: the caller guarantees no other thread runs yet.
            unsafe { std::env::set_var("CANDLE_NUM_THREADS", "1") };
            "1".into()
        }
    }
}

/// Makes glibc's allocator keep freed memory in the process: no `mmap` for large blocks, no
/// trimming of the heap, one arena.
///
/// A training step allocates and frees hundreds of tensors of several MiB. With glibc's
/// defaults each of them is mapped fresh and unmapped again, so every step pays a page fault
/// per 4 KiB written and, with more than one thread, TLB shoot-down interrupts on every unmap
/// (expensive in a VM): on the 2-core development machine that was ~10 % of a 32³ UNet step
/// in the kernel and a third of a 64³ step. Reusing the heap costs no more peak memory there.
/// `main` calls this at start-up for every command but `data` (whose few whole volumes, freed
/// by one thread while the other reads, are better returned to the system); other platforms
/// keep their defaults.
pub fn configure_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes allocator parameters; glibc serialises it with
        // allocations. A rejected setting leaves the default in place, which is harmless.
        unsafe {
            libc::mallopt(libc::M_MMAP_MAX, 0);
            libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
}

/// An element type the kernels work on: `f32` (training) and `f64` (reference comparisons).
pub trait Real:
    num_traits::Float + std::ops::AddAssign + Default + Send + Sync + std::fmt::Debug + 'static
{
    /// The value as f64.
    fn to64(self) -> f64;
    /// The nearest value to `v`.
    fn of(v: f64) -> Self;

    /// The forward convolution `g` by a kernel specialised for this type and CPU, when one
    /// fits (f32 "same" convolutions with AVX-512); `None` leaves it to im2col + GEMM.
    fn direct_conv(_x: &[Self], _w: &[Self], _g: &Geom) -> Option<Vec<Self>> {
        None
    }

    /// The weight gradient of `g`, as [`Real::direct_conv`].
    fn direct_conv_weight_grad(_x: &[Self], _dy: &[Self], _g: &Geom) -> Option<Vec<Self>> {
        None
    }
}

impl Real for f32 {
    fn to64(self) -> f64 {
        self as f64
    }
    fn of(v: f64) -> Self {
        v as f32
    }

    fn direct_conv(x: &[f32], w: &[f32], g: &Geom) -> Option<Vec<f32>> {
        #[cfg(target_arch = "x86_64")]
        if direct::supports(g) {
            count_direct(0);
            return Some(direct::forward(x, w, g));
        }
        #[cfg(target_arch = "x86_64")]
        if strided::supports(g) {
            count_direct(0);
            return Some(strided::forward(x, w, g));
        }
        let _ = (x, w, g);
        None
    }

    fn direct_conv_weight_grad(x: &[f32], dy: &[f32], g: &Geom) -> Option<Vec<f32>> {
        #[cfg(target_arch = "x86_64")]
        if direct::supports_weight_grad(g) {
            count_direct(1);
            return Some(direct::weight_grad(x, dy, g));
        }
        #[cfg(target_arch = "x86_64")]
        if strided::supports(g) {
            count_direct(1);
            return Some(strided::weight_grad(x, dy, g));
        }
        let _ = (x, dy, g);
        None
    }
}

impl Real for f64 {
    fn to64(self) -> f64 {
        self
    }
    fn of(v: f64) -> Self {
        v
    }
}

/// `x [n, c, s]` (sample-major) as channel-major `[c, n, s]`, into `dst` (`c·n·s` values).
pub(crate) fn to_channel_major<T: Real>(x: &[T], n: usize, c: usize, s: usize, dst: &mut [T]) {
    dst.par_chunks_mut(n * s).enumerate().for_each(|(ch, row)| {
        for b in 0..n {
            row[b * s..(b + 1) * s].copy_from_slice(&x[(b * c + ch) * s..(b * c + ch + 1) * s]);
        }
    });
}

/// The first `c` channel-major rows `[c, n, s]` of `src` as sample-major `[n, c, s]`.
pub(crate) fn to_sample_major<T: Real>(src: &[T], n: usize, c: usize, s: usize) -> Vec<T> {
    let mut y = vec![T::zero(); n * c * s];
    y.par_chunks_mut(c * s).enumerate().for_each(|(b, sample)| {
        for ch in 0..c {
            sample[ch * s..(ch + 1) * s]
                .copy_from_slice(&src[(ch * n + b) * s..(ch * n + b + 1) * s]);
        }
    });
    y
}

/// Dense matrix product `dst = (accumulate ? dst : 0) + lhs × rhs` through the `gemm` crate,
/// single-threaded (callers parallelise over tiles). Strides are in elements; `*_rs` is the
/// step between rows, `*_cs` between columns.
///
/// # Safety
/// The pointers must address matrices of the given shapes and strides: `dst` m×n, `lhs` m×k,
/// `rhs` k×n, with `dst` not overlapping the others.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn matmul<T: Real>(
    (m, n, k): (usize, usize, usize),
    dst: *mut T,
    (dst_rs, dst_cs): (usize, usize),
    accumulate: bool,
    lhs: *const T,
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: *const T,
    (rhs_rs, rhs_cs): (usize, usize),
) {
    // SAFETY: forwarded from the caller's contract.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            dst_cs as isize,
            dst_rs as isize,
            accumulate,
            lhs,
            lhs_cs as isize,
            lhs_rs as isize,
            rhs,
            rhs_cs as isize,
            rhs_rs as isize,
            if accumulate { T::one() } else { T::zero() },
            T::one(),
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// Elements of the partial sums [`ordered_sum`] may hold at once (16 MiB of f32).
const PARTIAL_ELEMS: usize = 1 << 22;

/// The sum over `items` of what `add` accumulates into a zeroed `[len]` buffer, computed in
/// parallel but in an order fixed by the items alone, so the result is bit-identical at any
/// thread count and under any scheduling (rayon's `fold`/`reduce` group by work stealing).
/// Items are cut into contiguous groups (at most 16, fewer when `len` is large); each group
/// accumulates in item order with its own `scratch`, and the groups' sums are added in order.
pub(crate) fn ordered_sum<T: Real, I: Sync, S>(
    items: &[I],
    len: usize,
    scratch: impl Fn() -> S + Sync,
    add: impl Fn(&mut S, &mut [T], &I) + Sync,
) -> Vec<T> {
    let groups = (PARTIAL_ELEMS / len.max(1))
        .clamp(1, 16)
        .min(items.len().max(1));
    let per = items.len().div_ceil(groups).max(1);
    let mut parts: Vec<Vec<T>> = items
        .par_chunks(per)
        .map(|chunk| {
            let mut s = scratch();
            let mut acc = vec![T::zero(); len];
            for item in chunk {
                add(&mut s, &mut acc, item);
            }
            acc
        })
        .collect();
    let mut total = if parts.is_empty() {
        vec![T::zero(); len]
    } else {
        parts.remove(0)
    };
    for part in parts {
        total.iter_mut().zip(part).for_each(|(u, v)| *u += v);
    }
    total
}

/// A raw pointer that may cross threads; each task writes a disjoint region.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr<T>(pub *mut T);

impl<T> SendPtr<T> {
    /// The pointer (a method, so that closures capture the whole `Send` wrapper).
    pub(crate) fn get(&self) -> *mut T {
        self.0
    }
}
// SAFETY: used only where tasks write disjoint regions of one buffer.
unsafe impl<T> Send for SendPtr<T> {}
// SAFETY: as above.
unsafe impl<T> Sync for SendPtr<T> {}

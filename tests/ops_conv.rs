//! Convolutions (3D, 2D, transposed) against PyTorch: outputs and both gradients, through the
//! CPU kernels and through the composed implementation that other devices use.

mod common;
use candle_core::{DType, Tensor};
use common::torch::{Fixture, assert_close};
use pretext::ops::{self, ConvSpec};

const TOL: f64 = 1e-4;

fn with_bias(y: &Tensor, b: &Tensor) -> Tensor {
    let shape: Vec<usize> = (0..y.rank())
        .map(|i| if i == 1 { b.dims()[0] } else { 1 })
        .collect();
    y.broadcast_add(&b.reshape(shape).unwrap()).unwrap()
}

/// Runs `conv(x, w) (+ b)` with loss sum(y·g) and checks y, dx, dw (and db).
fn check(name: &str, conv: impl Fn(&Tensor, &Tensor) -> Tensor) {
    let f = Fixture::load(name);
    for composed in [false, true] {
        let run = || {
            let x = f.var("x", DType::F32);
            let w = f.var("w", DType::F32);
            let has_bias = f.has("b");
            let b = f.var(if has_bias { "b" } else { "w" }, DType::F32);
            let mut y = conv(x.as_tensor(), w.as_tensor());
            if has_bias {
                y = with_bias(&y, b.as_tensor());
            }
            let path = if composed { "composed" } else { "kernel" };
            assert_close(&y, &f.get("y"), TOL, &format!("{name} {path} y"));
            let grads = (&y * &f.get("g"))
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            assert_close(
                grads.get(x.as_tensor()).unwrap(),
                &f.get("dx"),
                TOL,
                &format!("{name} {path} dx"),
            );
            assert_close(
                grads.get(w.as_tensor()).unwrap(),
                &f.get("dw"),
                TOL,
                &format!("{name} {path} dw"),
            );
            if has_bias {
                assert_close(
                    grads.get(b.as_tensor()).unwrap(),
                    &f.get("db"),
                    TOL,
                    &format!("{name} {path} db"),
                );
            }
        };
        if composed {
            ops::with_composed(run);
        } else {
            run();
        }
    }
}

#[test]
fn conv3d_3x3x3_matches_pytorch() {
    check("conv3d_k3", |x, w| {
        ops::conv3d(x, w, ConvSpec::uniform(1, 1)).unwrap()
    });
}

#[test]
fn conv3d_stride_2_on_odd_sizes_matches_pytorch() {
    check("conv3d_k3_s2_odd", |x, w| {
        ops::conv3d(x, w, ConvSpec::uniform(1, 2)).unwrap()
    });
}

#[test]
fn conv3d_1x1x1_matches_pytorch() {
    check("conv3d_k1", |x, w| {
        ops::conv3d(x, w, ConvSpec::uniform(0, 1)).unwrap()
    });
}

#[test]
fn conv3d_without_padding_matches_pytorch() {
    check("conv3d_k3_p0", |x, w| {
        ops::conv3d(x, w, ConvSpec::uniform(0, 1)).unwrap()
    });
}

#[test]
fn conv2d_7x7_stride_2_matches_pytorch() {
    check("conv2d_k7_s2", |x, w| {
        ops::conv2d(x, w, [3, 3], [2, 2]).unwrap()
    });
}

#[test]
fn conv2d_3x3_matches_pytorch() {
    check("conv2d_k3", |x, w| {
        ops::conv2d(x, w, [1, 1], [1, 1]).unwrap()
    });
}

#[test]
fn conv_transpose3d_2x2x2_stride_2_matches_pytorch() {
    check("conv_transpose3d", |x, w| {
        ops::conv_transpose3d(x, w, ConvSpec::uniform(0, 2)).unwrap()
    });
}

#[test]
fn conv3d_gives_the_same_gradients_with_one_and_two_threads() {
    let f = Fixture::load("conv3d_k3");
    let grads_with = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let x = f.var("x", DType::F32);
            let w = f.var("w", DType::F32);
            let y = ops::conv3d(x.as_tensor(), w.as_tensor(), ConvSpec::uniform(1, 1)).unwrap();
            let g = (&y * &f.get("g"))
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            (
                g.get(x.as_tensor()).unwrap().clone(),
                g.get(w.as_tensor()).unwrap().clone(),
            )
        })
    };
    let (dx1, dw1) = grads_with(1);
    let (dx2, dw2) = grads_with(2);
    assert_close(&dx1, &f.get("dx"), TOL, "1 thread dx");
    assert_close(&dw1, &f.get("dw"), TOL, "1 thread dw");
    assert_close(&dx2, &dx1, 1e-6, "2 threads dx");
    assert_close(&dw2, &dw1, 1e-6, "2 threads dw");
}

#[test]
fn conv3d_rejects_mismatched_channels_with_both_shapes_named() {
    let x = Tensor::zeros((1, 3, 4, 4, 4), DType::F32, &candle_core::Device::Cpu).unwrap();
    let w = Tensor::zeros((2, 4, 3, 3, 3), DType::F32, &candle_core::Device::Cpu).unwrap();
    let e = ops::conv3d(&x, &w, ConvSpec::uniform(1, 1))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("3 channels") && e.contains("[2, 4, 3, 3, 3]"),
        "{e}"
    );
    let small = Tensor::zeros((1, 4, 2, 2, 2), DType::F32, &candle_core::Device::Cpu).unwrap();
    let e = ops::conv3d(&small, &w, ConvSpec::uniform(0, 1))
        .unwrap_err()
        .to_string();
    assert!(e.contains("does not fit"), "{e}");
}

/// Deterministic values in [-scale, scale).
fn uniform(shape: &[usize], scale: f64, seed: u64) -> Tensor {
    use rand::{RngExt, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n)
        .map(|_| (rng.random::<f64>() * 2.0 - 1.0) * scale)
        .collect();
    Tensor::from_vec(v, shape, &candle_core::Device::Cpu).unwrap()
}

/// y, dx and dw of conv3d with loss sum(y·g), computed in `dtype` (f64 takes the generic
/// im2col + GEMM path; f32 takes the direct kernels where the CPU and geometry allow).
fn conv3d_grads(
    x: &Tensor,
    w: &Tensor,
    g: &Tensor,
    spec: ConvSpec,
    dtype: DType,
) -> (Tensor, Tensor, Tensor) {
    let x = candle_core::Var::from_tensor(&x.to_dtype(dtype).unwrap()).unwrap();
    let w = candle_core::Var::from_tensor(&w.to_dtype(dtype).unwrap()).unwrap();
    let y = ops::conv3d(x.as_tensor(), w.as_tensor(), spec).unwrap();
    let grads = (&y * g.to_dtype(dtype).unwrap())
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    (
        y,
        grads.get(x.as_tensor()).unwrap().clone(),
        grads.get(w.as_tensor()).unwrap().clone(),
    )
}

/// Checks the f32 convolution and both gradients against the f64 ones on random data.
fn check_f32_against_f64(x_dims: [usize; 5], o: usize, kernel: [usize; 3], padding: [usize; 3]) {
    let [n, c, d, h, wd] = x_dims;
    let spec = ConvSpec {
        padding,
        stride: [1; 3],
    };
    let x = uniform(&x_dims, 1.0, 1);
    let w = uniform(&[o, c, kernel[0], kernel[1], kernel[2]], 0.3, 2);
    let out: Vec<usize> = (0..3)
        .map(|i| [d, h, wd][i] + 2 * padding[i] + 1 - kernel[i])
        .collect();
    let g = uniform(&[n, o, out[0], out[1], out[2]], 1.0, 3);
    let (y64, dx64, dw64) = conv3d_grads(&x, &w, &g, spec, DType::F64);
    let (y32, dx32, dw32) = conv3d_grads(&x, &w, &g, spec, DType::F32);
    let what = format!("x {x_dims:?} -> {o} channels, kernel {kernel:?}, padding {padding:?}");
    assert_close(&y32, &y64, 1e-5, &format!("{what}: y"));
    assert_close(&dx32, &dx64, 1e-5, &format!("{what}: dx"));
    assert_close(&dw32, &dw64, 1e-5, &format!("{what}: dw"));
}

#[test]
fn f32_same_convolutions_match_f64_on_odd_sizes_and_channel_counts() {
    // Channel counts that leave partial register tiles, volumes that end mid-vector, rows
    // shorter than a vector, and a first layer with one input channel.
    check_f32_against_f64([2, 5, 9, 10, 11], 6, [3; 3], [1; 3]);
    check_f32_against_f64([2, 1, 12, 12, 12], 16, [3; 3], [1; 3]);
    check_f32_against_f64([3, 3, 4, 20, 6], 5, [3; 3], [1; 3]);
    check_f32_against_f64([1, 16, 16, 16, 16], 16, [3; 3], [1; 3]);
    // Other odd kernels with "same" padding.
    check_f32_against_f64([2, 4, 7, 9, 10], 3, [5, 3, 3], [2, 1, 1]);
    check_f32_against_f64([2, 2, 6, 8, 12], 4, [1, 3, 5], [0, 1, 2]);
}

#[test]
fn f32_same_convolution_gives_identical_results_with_one_and_two_threads() {
    let (x, w) = (
        uniform(&[2, 6, 10, 12, 14], 1.0, 4),
        uniform(&[8, 6, 3, 3, 3], 0.3, 5),
    );
    let g = uniform(&[2, 8, 10, 12, 14], 1.0, 6);
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| conv3d_grads(&x, &w, &g, ConvSpec::uniform(1, 1), DType::F32))
    };
    let (y1, dx1, dw1) = run(1);
    let (y2, dx2, dw2) = run(2);
    assert_close(&y2, &y1, 0.0, "y");
    assert_close(&dx2, &dx1, 0.0, "dx");
    assert_close(&dw2, &dw1, 0.0, "dw");
}

/// The `[forward, weight gradient]` calls of the direct AVX-512 kernels made by `f` on this
/// thread.
fn direct_calls_during(f: impl FnOnce()) -> [usize; 2] {
    let before = pretext::ops::direct_kernel_calls();
    f();
    let after = pretext::ops::direct_kernel_calls();
    [after[0] - before[0], after[1] - before[1]]
}

/// PyTorch fixtures above the direct kernels' threshold (>= 512 positions, >= 64 vectors for
/// the weight gradient): on the kernel path every pass of a "same" f32 convolution (output,
/// input gradient, weight gradient) must go through the AVX-512 kernels where the CPU has them;
/// on the composed path none may.
fn check_direct(name: &str) {
    let spec = ConvSpec::uniform(1, 1);
    let kernel = direct_calls_during(|| check(name, |x, w| ops::conv3d(x, w, spec).unwrap()));
    if pretext::ops::direct_kernels_available() {
        // check() runs the kernel path once: forward + input gradient, weight gradient.
        assert_eq!(kernel, [2, 1], "{name}: the direct kernels were not taken");
    } else {
        eprintln!("note: {name}: this CPU has no AVX-512; the direct kernels were not exercised");
        assert_eq!(kernel, [0, 0]);
    }
    let f = Fixture::load(name);
    let composed = direct_calls_during(|| {
        ops::with_composed(|| {
            let y = ops::conv3d(&f.get("x"), &f.get("w"), spec).unwrap();
            assert_close(&y, &f.get("y"), TOL, &format!("{name} composed y"));
        })
    });
    assert_eq!(
        composed,
        [0, 0],
        "{name}: the composed path ran a CPU kernel"
    );
}

#[test]
fn conv3d_on_the_direct_kernels_with_one_input_channel_matches_pytorch() {
    check_direct("conv3d_direct_c1_o16");
}

#[test]
fn conv3d_on_the_direct_kernels_with_17_input_channels_and_two_samples_matches_pytorch() {
    check_direct("conv3d_direct_c17_o5");
}

#[test]
fn the_existing_small_fixtures_stay_below_the_direct_kernels_threshold() {
    // What the fixtures above add: conv3d_k3 (2 × 6·7·5 = 420 positions) takes im2col + GEMM.
    let calls = direct_calls_during(|| {
        check("conv3d_k3", |x, w| {
            ops::conv3d(x, w, ConvSpec::uniform(1, 1)).unwrap()
        })
    });
    assert_eq!(calls, [0, 0]);
}

/// y, dx and dw of conv2d with loss sum(y·g), computed in `dtype`, with the
/// `[forward, weight gradient]` calls of the direct kernels they made.
fn conv2d_grads(
    x: &Tensor,
    w: &Tensor,
    g: &Tensor,
    (padding, stride): ([usize; 2], [usize; 2]),
    dtype: DType,
) -> ((Tensor, Tensor, Tensor), [usize; 2]) {
    let mut out = None;
    let calls = direct_calls_during(|| {
        let x = candle_core::Var::from_tensor(&x.to_dtype(dtype).unwrap()).unwrap();
        let w = candle_core::Var::from_tensor(&w.to_dtype(dtype).unwrap()).unwrap();
        let y = ops::conv2d(x.as_tensor(), w.as_tensor(), padding, stride).unwrap();
        let grads = (&y * g.to_dtype(dtype).unwrap())
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        out = Some((
            y,
            grads.get(x.as_tensor()).unwrap().clone(),
            grads.get(w.as_tensor()).unwrap().clone(),
        ));
    });
    (out.unwrap(), calls)
}

/// Checks a strided f32 2D convolution and both gradients against f64 (im2col + GEMM) on
/// random data; the output and weight gradient must come from the strided AVX-512 kernels
/// where the CPU has them. Returns the f32 results.
fn check_strided_2d(
    [n, c, h, wd]: [usize; 4],
    o: usize,
    k: [usize; 2],
    padding: [usize; 2],
    stride: [usize; 2],
) -> (Tensor, Tensor, Tensor) {
    let x = uniform(&[n, c, h, wd], 1.0, 7);
    let w = uniform(&[o, c, k[0], k[1]], 0.3, 8);
    let oh = (h + 2 * padding[0] - k[0]) / stride[0] + 1;
    let ow = (wd + 2 * padding[1] - k[1]) / stride[1] + 1;
    let g = uniform(&[n, o, oh, ow], 1.0, 9);
    let what = format!("x [{n}, {c}, {h}, {wd}] -> {o}, kernel {k:?}, stride {stride:?}");
    let ((y64, dx64, dw64), _) = conv2d_grads(&x, &w, &g, (padding, stride), DType::F64);
    let ((y32, dx32, dw32), calls) = conv2d_grads(&x, &w, &g, (padding, stride), DType::F32);
    if pretext::ops::direct_kernels_available() {
        assert_eq!(calls, [1, 1], "{what}: the strided kernels were not taken");
    }
    assert_close(&y32, &y64, 1e-5, &format!("{what}: y"));
    assert_close(&dx32, &dx64, 1e-5, &format!("{what}: dx"));
    assert_close(&dw32, &dw64, 1e-5, &format!("{what}: dw"));
    (y32, dx32, dw32)
}

#[test]
fn f32_strided_2d_convolutions_match_f64_on_odd_sizes_and_channel_counts() {
    // DenseNet's stem (7×7, stride 2, 3 channels) with output channels that leave partial
    // register tiles (10: 8 + 2 forward, 3 + 3 + 3 + 1 weight gradient), rows that end
    // mid-vector and rows of more than one tile (57 outputs).
    check_strided_2d([2, 3, 37, 113], 10, [7, 7], [3, 3], [2, 2]);
    check_strided_2d([1, 3, 40, 40], 64, [7, 7], [3, 3], [2, 2]);
    // Other kernels, strides per axis, no padding, 16 input channels.
    check_strided_2d([3, 16, 21, 30], 5, [3, 3], [1, 1], [2, 2]);
    check_strided_2d([2, 2, 30, 27], 4, [5, 3], [0, 1], [1, 2]);
    check_strided_2d([2, 4, 31, 24], 3, [3, 1], [1, 0], [3, 1]);
    check_strided_2d([1, 1, 64, 70], 1, [2, 2], [0, 0], [2, 2]);
}

#[test]
fn f32_strided_2d_convolution_gives_identical_results_with_one_and_two_threads() {
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| check_strided_2d([4, 3, 48, 50], 16, [7, 7], [3, 3], [2, 2]))
    };
    let (y1, dx1, dw1) = run(1);
    let (y2, dx2, dw2) = run(2);
    assert_close(&y2, &y1, 0.0, "y");
    assert_close(&dx2, &dx1, 0.0, "dx");
    assert_close(&dw2, &dw1, 0.0, "dw");
}

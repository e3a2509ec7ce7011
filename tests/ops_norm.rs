//! Batch normalisation against PyTorch's BatchNorm3d: training mode (output, the three
//! gradients and the batch statistics) and inference mode on running statistics (the layer, and
//! the fused bias + ReLU + BatchNorm inference kernel), through the kernel and the composed
//! implementation.

mod common;
use candle_core::DType;
use common::torch::{Fixture, assert_close};
use pretext::ops;

#[test]
fn batch_norm_train_matches_pytorch() {
    let f = Fixture::load("batch_norm3d");
    for composed in [false, true] {
        let run = || {
            let x = f.var("x", DType::F32);
            let gamma = f.var("weight", DType::F32);
            let beta = f.var("bias", DType::F32);
            let (y, stats) =
                ops::batch_norm_train(x.as_tensor(), gamma.as_tensor(), beta.as_tensor(), 1e-3)
                    .unwrap();
            let path = if composed { "composed" } else { "kernel" };
            assert_close(&y, &f.get("y"), 1e-5, &format!("{path} y"));
            let grads = (&y * &f.get("g"))
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            assert_close(
                grads.get(x.as_tensor()).unwrap(),
                &f.get("dx"),
                1e-4,
                &format!("{path} dx"),
            );
            assert_close(
                grads.get(gamma.as_tensor()).unwrap(),
                &f.get("dweight"),
                1e-4,
                &format!("{path} dgamma"),
            );
            assert_close(
                grads.get(beta.as_tensor()).unwrap(),
                &f.get("dbias"),
                1e-4,
                &format!("{path} dbeta"),
            );
            // PyTorch's running statistics after one step with momentum 0.01 (unbiased variance).
            let m = stats.count as f64;
            let mean = (stats.mean.clone() * 0.01).unwrap();
            let var = ((stats.var.clone() * (0.01 * m / (m - 1.0))).unwrap() + 0.99).unwrap();
            assert_close(
                &mean,
                &f.get("running_mean"),
                1e-5,
                &format!("{path} running mean"),
            );
            assert_close(
                &var,
                &f.get("running_var"),
                1e-5,
                &format!("{path} running var"),
            );
        };
        if composed {
            ops::with_composed(run);
        } else {
            run();
        }
    }
}

#[test]
fn batch_norm_rejects_mismatched_parameters() {
    let dev = candle_core::Device::Cpu;
    let x = candle_core::Tensor::zeros((2, 3, 4), DType::F32, &dev).unwrap();
    let g = candle_core::Tensor::ones(4, DType::F32, &dev).unwrap();
    let e = ops::batch_norm_train(&x, &g, &g, 1e-3)
        .unwrap_err()
        .to_string();
    assert!(e.contains("3 channels") && e.contains("[4]"), "{e}");
}

/// Deterministic values in [lo, hi).
fn uniform(shape: &[usize], lo: f64, hi: f64, seed: u64) -> candle_core::Tensor {
    use rand::{RngExt, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n)
        .map(|_| lo + rng.random::<f64>() * (hi - lo))
        .collect();
    candle_core::Tensor::from_vec(v, shape, &candle_core::Device::Cpu).unwrap()
}

/// y, the statistics and the gradients of x, bias, gamma, beta for loss sum(y·g), where
/// `fused` computes y (and the statistics) from (x, bias, gamma, beta).
fn fused_case(
    dtype: DType,
    fused: impl Fn(
        &candle_core::Tensor,
        &candle_core::Tensor,
        &candle_core::Tensor,
        &candle_core::Tensor,
    ) -> (candle_core::Tensor, ops::BatchStats),
) -> Vec<candle_core::Tensor> {
    // Half of the pre-activations are negative, so the ReLU makes many tied zeros.
    let x = candle_core::Var::from_tensor(
        &uniform(&[3, 5, 4, 7, 6], -2.0, 2.0, 1)
            .to_dtype(dtype)
            .unwrap(),
    )
    .unwrap();
    let var = |t: candle_core::Tensor| {
        candle_core::Var::from_tensor(&t.to_dtype(dtype).unwrap()).unwrap()
    };
    let b = var(uniform(&[5], -0.5, 0.5, 2));
    let gamma = var(uniform(&[5], 0.5, 1.5, 3));
    let beta = var(uniform(&[5], -1.0, 1.0, 4));
    let g = uniform(&[3, 5, 4, 7, 6], -1.0, 1.0, 5)
        .to_dtype(dtype)
        .unwrap();
    let (y, st) = fused(
        x.as_tensor(),
        b.as_tensor(),
        gamma.as_tensor(),
        beta.as_tensor(),
    );
    let grads = (&y * &g).unwrap().sum_all().unwrap().backward().unwrap();
    let mut out = vec![y, st.mean, st.var];
    for v in [&x, &b, &gamma, &beta] {
        out.push(grads.get(v.as_tensor()).unwrap().clone());
    }
    out
}

#[test]
fn fused_bias_relu_batch_norm_equals_the_separate_ops() {
    const NAMES: [&str; 7] = ["y", "mean", "var", "dx", "dbias", "dgamma", "dbeta"];
    // Reference: bias add, ReLU and the composed batch norm (PyTorch-checked above), in f64.
    let reference = ops::with_composed(|| {
        fused_case(DType::F64, |x, b, g, beta| {
            let shape = [1, 5, 1, 1, 1];
            let t = x
                .broadcast_add(&b.reshape(&shape).unwrap())
                .unwrap()
                .relu()
                .unwrap();
            ops::batch_norm_train(&t, g, beta, 1e-3).unwrap()
        })
    });
    let fused = |x: &_, b: &_, g: &_, beta: &_| {
        ops::bias_relu_batch_norm_train(x, b, g, beta, 1e-3).unwrap()
    };
    for dtype in [DType::F64, DType::F32] {
        for composed in [false, true] {
            let got = if composed {
                ops::with_composed(|| fused_case(dtype, fused))
            } else {
                fused_case(dtype, fused)
            };
            let tol = if dtype == DType::F64 { 1e-12 } else { 1e-5 };
            for ((a, r), name) in got.iter().zip(&reference).zip(NAMES) {
                assert_close(
                    a,
                    r,
                    tol,
                    &format!(
                        "{dtype:?} {} {name}",
                        if composed { "composed" } else { "kernel" }
                    ),
                );
            }
        }
    }
}

#[test]
fn fused_batch_norm_gives_identical_results_with_one_and_two_threads() {
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            fused_case(DType::F32, |x, b, g, beta| {
                ops::bias_relu_batch_norm_train(x, b, g, beta, 1e-3).unwrap()
            })
        })
    };
    for (a, b) in run(1).iter().zip(&run(2)) {
        assert_close(a, b, 0.0, "1 vs 2 threads");
    }
}

#[test]
fn bias_add_and_its_gradient_equal_broadcasting() {
    for composed in [false, true] {
        let run = || {
            let x = candle_core::Var::from_tensor(&uniform(&[2, 3, 5, 4], -1.0, 1.0, 6)).unwrap();
            let b = candle_core::Var::from_tensor(&uniform(&[3], -1.0, 1.0, 7)).unwrap();
            let g = uniform(&[2, 3, 5, 4], -1.0, 1.0, 8);
            let y = ops::bias_add(x.as_tensor(), b.as_tensor()).unwrap();
            let want = x
                .as_tensor()
                .broadcast_add(&b.as_tensor().reshape((1, 3, 1, 1)).unwrap())
                .unwrap();
            assert_close(&y, &want, 1e-15, "y");
            let grads = (&y * &g).unwrap().sum_all().unwrap().backward().unwrap();
            assert_close(grads.get(x.as_tensor()).unwrap(), &g, 0.0, "dx");
            let db = g
                .sum_keepdim(0)
                .unwrap()
                .sum_keepdim(2)
                .unwrap()
                .sum_keepdim(3)
                .unwrap();
            assert_close(
                grads.get(b.as_tensor()).unwrap(),
                &db.flatten_all().unwrap(),
                1e-14,
                "dbias",
            );
        };
        if composed {
            ops::with_composed(run);
        } else {
            run();
        }
    }
}

#[test]
fn inference_bias_relu_affine_equals_the_separate_ops_on_kernel_and_composed_paths() {
    for dtype in [DType::F32, DType::F64] {
        let x = uniform(&[2, 3, 5, 4, 3], -1.0, 1.0, 11)
            .to_dtype(dtype)
            .unwrap();
        let p = |seed| uniform(&[3], -0.5, 1.5, seed).to_dtype(dtype).unwrap();
        let (bias, scale, shift) = (p(12), p(13), p(14));
        let c = |t: &candle_core::Tensor| t.reshape((1, 3, 1, 1, 1)).unwrap();
        let want = x
            .broadcast_add(&c(&bias))
            .unwrap()
            .relu()
            .unwrap()
            .broadcast_mul(&c(&scale))
            .unwrap()
            .broadcast_add(&c(&shift))
            .unwrap();
        let kernel = ops::bias_relu_affine(&x, &bias, &scale, &shift).unwrap();
        let composed =
            ops::with_composed(|| ops::bias_relu_affine(&x, &bias, &scale, &shift)).unwrap();
        assert_close(&kernel, &want, 1e-7, &format!("{dtype:?} kernel"));
        assert_close(&composed, &want, 1e-7, &format!("{dtype:?} composed"));
    }
    let x = uniform(&[1, 3, 2, 2, 2], 0.0, 1.0, 1);
    let e = ops::bias_relu_affine(&x, &uniform(&[2], 0.0, 1.0, 2), &x, &x)
        .unwrap_err()
        .to_string();
    assert!(e.contains("3 channels"), "{e}");
}

/// An `nn::BatchNorm` (Keras eps 1e-3) of `channels` channels holding the fixture's weight,
/// bias and running statistics.
fn layer_from(f: &Fixture, channels: usize) -> pretext::nn::BatchNorm {
    use pretext::nn::{BatchNormConfig, ParamStore, batch_norm};
    let store = ParamStore::new(0);
    let vb = store.builder(DType::F32, &candle_core::Device::Cpu);
    let bn = batch_norm(channels, BatchNormConfig::KERAS, vb.pp("bn")).unwrap();
    for name in ["weight", "bias", "running_mean", "running_var"] {
        store
            .get(&format!("bn.{name}"))
            .unwrap()
            .set(&f.get(name))
            .unwrap();
    }
    bn
}

/// Runs `f` on the kernel path, the composed path, and both again under `ops::no_grad`.
fn on_every_path(f: impl Fn(&str)) {
    f("kernel");
    ops::with_composed(|| f("composed"));
    ops::no_grad(|| f("kernel, no_grad"));
    ops::with_composed(|| ops::no_grad(|| f("composed, no_grad")));
}

#[test]
fn inference_batch_norm_on_the_running_statistics_matches_pytorch() {
    // x_eval/y_eval: PyTorch's eval-mode output after the one training step of the fixture.
    let f = Fixture::load("batch_norm3d");
    let bn = layer_from(&f, 4);
    on_every_path(|path| {
        let y = bn.forward_t(&f.get("x_eval"), false).unwrap();
        assert_close(&y, &f.get("y_eval"), 1e-5, &format!("{path} y_eval"));
    });
    // Random running statistics far from (0, 1), so the affine map is not near the identity.
    let f = Fixture::load("batch_norm3d_eval");
    let bn = layer_from(&f, 5);
    on_every_path(|path| {
        let y = bn.forward_t(&f.get("x"), false).unwrap();
        assert_close(&y, &f.get("y"), 1e-5, &format!("{path} y"));
    });
    // Inference mode leaves the running statistics alone.
    let store_check = bn.forward_t(&f.get("x"), false).unwrap();
    assert_close(&store_check, &f.get("y"), 1e-5, "second call");
}

#[test]
fn fused_bias_relu_batch_norm_inference_matches_pytorch() {
    // y_bias_relu = bn.eval()(relu(x + conv_bias)): the block tail of the UNet at inference.
    let f = Fixture::load("batch_norm3d_eval");
    let bn = layer_from(&f, 5);
    let (x, b, want) = (f.get("x"), f.get("conv_bias"), f.get("y_bias_relu"));
    on_every_path(|path| {
        let y = bn.forward_bias_relu_t(&x, &b, false).unwrap();
        assert_close(&y, &want, 1e-5, &format!("{path} layer"));
    });
    // The kernel itself, with scale = γ/√(var+ε) and shift = β − mean·scale from the fixture.
    let eps = 1e-3;
    let scale = ((f.get("running_var") + eps).unwrap().sqrt().unwrap())
        .recip()
        .unwrap()
        .mul(&f.get("weight"))
        .unwrap();
    let shift = (f.get("bias") - f.get("running_mean").mul(&scale).unwrap()).unwrap();
    on_every_path(|path| {
        let y = ops::bias_relu_affine(&x, &b, &scale, &shift).unwrap();
        assert_close(&y, &want, 1e-5, &format!("{path} bias_relu_affine"));
    });
}

//! Training-mode batch normalisation against PyTorch's BatchNorm3d: output, the three
//! gradients and the batch statistics, through the kernel and the composed implementation.

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

//! Pooling and upsampling against PyTorch, including windows full of ties (after ReLU), odd
//! sizes and overlapping padded windows, through the kernels and the composed implementation.

mod common;
use candle_core::{DType, Tensor};
use common::torch::{Fixture, assert_close};
use pretext::ops::{self, PoolSpec};

const TOL: f64 = 1e-5;

/// Checks `y = op(x)` and `dx` of loss sum(y·g) with keys `y`/`dx` (or suffixed ones).
fn check(name: &str, suffix: &str, op: impl Fn(&Tensor) -> Tensor) {
    let f = Fixture::load(name);
    for composed in [false, true] {
        let run = || {
            let x = f.var("x", DType::F32);
            let y = op(x.as_tensor());
            let path = if composed { "composed" } else { "kernel" };
            assert_close(
                &y,
                &f.get(&format!("y{suffix}")),
                TOL,
                &format!("{name} {path} y"),
            );
            let grads = (&y * &f.get("g"))
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let dx = grads.get(x.as_tensor()).unwrap();
            assert_close(
                dx,
                &f.get(&format!("dx{suffix}")),
                TOL,
                &format!("{name} {path} dx"),
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
fn max_pool3d_sends_tied_gradients_to_the_first_maximum_like_pytorch() {
    check("max_pool3d_ties", "", |x| {
        ops::max_pool3d(x, PoolSpec::cube(2)).unwrap()
    });
}

#[test]
fn avg_pool3d_on_odd_sizes_matches_pytorch() {
    check("avg_pool3d", "", |x| {
        ops::avg_pool3d(x, PoolSpec::cube(2)).unwrap()
    });
}

#[test]
fn max_pool2d_3x3_stride_2_padding_1_matches_pytorch() {
    check("max_pool2d_k3_s2_p1", "", |x| {
        ops::max_pool2d(x, [3, 3], [2, 2], [1, 1]).unwrap()
    });
}

#[test]
fn avg_pool2d_matches_pytorch() {
    check("avg_pool2d", "", |x| {
        ops::avg_pool2d(x, [2, 2], [2, 2], [0, 0]).unwrap()
    });
}

#[test]
fn nearest_upsampling_matches_pytorch() {
    check("upsample_nearest3d", "", |x| {
        ops::upsample_nearest3d(x, 2).unwrap()
    });
}

#[test]
fn global_max_pool_matches_pytorch_on_an_all_tied_channel() {
    check("global_pool3d", "_max", |x| {
        ops::global_max_pool(x).unwrap()
    });
}

#[test]
fn global_avg_pool_matches_pytorch() {
    let f = Fixture::load("global_pool3d");
    let y = ops::global_avg_pool(&f.get("x")).unwrap();
    assert_close(&y, &f.get("y_avg"), TOL, "global avg");
}

#[test]
fn pooling_rejects_windows_that_do_not_fit() {
    let x = Tensor::zeros((1, 1, 1, 3, 3), DType::F32, &candle_core::Device::Cpu).unwrap();
    let e = ops::max_pool3d(&x, PoolSpec::cube(2))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("does not fit") && e.contains("[1, 1, 1, 3, 3]"),
        "{e}"
    );
    let e = ops::max_pool2d(&x, [2, 2], [2, 2], [0, 0])
        .unwrap_err()
        .to_string();
    assert!(e.contains("rank-4"), "{e}");
}

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

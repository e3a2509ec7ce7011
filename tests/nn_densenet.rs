//! DenseNet: torchvision's parameter names and shapes (1:1 weight mapping), DenseNet-121's
//! parameter count, one dense block's forward and backward against torchvision in f64, and a
//! whole reduced torchvision DenseNet (growth 8, blocks 2-2-2-2) in eval and train mode.

mod common;
use candle_core::{DType, Device, Tensor};
use common::torch::{Fixture, assert_close};
use pretext::nn::{DenseBlock, DenseNet, DenseNetConfig, GlobalPool, ParamStore};

#[test]
fn densenet121_names_shapes_and_count_match_torchvision() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/torch/densenet121_features.json"
    );
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let store = ParamStore::new(0);
    DenseNet::new(
        &DenseNetConfig::densenet121(),
        store.builder(DType::F32, &Device::Cpu),
    )
    .unwrap();
    let tensors = reference["tensors"].as_object().unwrap();
    let ours = store.all();
    assert_eq!(ours.len(), tensors.len());
    for (name, var) in &ours {
        let shape: Vec<usize> = tensors
            .get(name)
            .unwrap_or_else(|| panic!("torchvision has no {name}"))
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(var.dims(), shape.as_slice(), "{name}");
    }
    assert_eq!(
        store.trainable_count("") as u64,
        reference["trainable"].as_u64().unwrap()
    );
    assert_eq!(DenseNetConfig::densenet121().feature_channels(), 1024);
}

#[test]
fn dense_block_forward_and_backward_equal_torchvision_in_f64() {
    let f = Fixture::load("dense_block_f64");
    let cfg = DenseNetConfig {
        in_channels: 3,
        growth: 4,
        blocks: vec![2],
        init_features: 3,
        bn_size: 2,
    };
    let store = ParamStore::new(0);
    let block = DenseBlock::new(2, 3, &cfg, store.builder(DType::F64, &Device::Cpu)).unwrap();
    for name in f.keys_with("param.") {
        store
            .get(&name)
            .unwrap_or_else(|| panic!("no {name}"))
            .set(&f.get(&format!("param.{name}")))
            .unwrap();
    }
    let x = f.var("x", DType::F64);
    let y = block.forward_t(x.as_tensor(), true).unwrap();
    assert_close(&y, &f.get("y"), 1e-10, "output");
    let grads = (&y * &f.get("g"))
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    assert_close(
        grads.get(x.as_tensor()).unwrap(),
        &f.get("dx"),
        1e-9,
        "input gradient",
    );
    for (name, var) in store.trainable("") {
        assert_close(
            grads.get(var.as_tensor()).unwrap(),
            &f.get(&format!("grad.{name}")),
            1e-9,
            &name,
        );
    }
}

#[test]
fn a_small_densenet_embeds_images_and_rejects_wrong_channels() {
    let cfg = DenseNetConfig {
        in_channels: 3,
        growth: 4,
        blocks: vec![2, 2],
        init_features: 8,
        bn_size: 2,
    };
    let store = ParamStore::new(0);
    let net = DenseNet::new(&cfg, store.builder(DType::F32, &Device::Cpu)).unwrap();
    let x = Tensor::rand(0f32, 1f32, (2, 3, 32, 32), &Device::Cpu).unwrap();
    // The embeddings are the spatial mean and maximum of the feature map, per image and
    // channel; in eval mode an image's embedding does not depend on the rest of the batch.
    let feats = net.features_t(&x, false).unwrap();
    assert_eq!(feats.dims(), [2, cfg.feature_channels(), 4, 4]);
    let flat = feats.flatten_from(2).unwrap();
    for (pool, want) in [
        (GlobalPool::Avg, flat.mean(2).unwrap()),
        (GlobalPool::Max, flat.max(2).unwrap()),
    ] {
        let e = net.embed(&x, pool, false).unwrap();
        assert_eq!(e.dims(), [2, cfg.feature_channels()]);
        assert_close(&e, &want, 1e-6, &format!("{pool:?}"));
        let alone = net.embed(&x.narrow(0, 1, 1).unwrap(), pool, false).unwrap();
        assert_close(
            &alone,
            &e.narrow(0, 1, 1).unwrap(),
            1e-6,
            "batch independence",
        );
    }
    let grey = Tensor::zeros((1, 1, 32, 32), DType::F32, &Device::Cpu).unwrap();
    let e = net
        .embed(&grey, GlobalPool::Avg, false)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("[N, 3, H, W]") && e.contains("[1, 1, 32, 32]"),
        "{e}"
    );
}

/// The reduced DenseNet of `densenet_small_f64` (torchvision's class, torch's initialisation,
/// random BatchNorm statistics) in `dtype`.
fn small_densenet(f: &Fixture, dtype: DType) -> (ParamStore, DenseNet) {
    let cfg = DenseNetConfig {
        in_channels: 3,
        growth: 8,
        blocks: vec![2, 2, 2, 2],
        init_features: 16,
        bn_size: 2,
    };
    let store = ParamStore::new(0);
    let net = DenseNet::new(&cfg, store.builder(dtype, &Device::Cpu)).unwrap();
    let all = store.all();
    assert_eq!(all.len(), f.keys_with("param.").len());
    for (name, var) in &all {
        let t = f.get(&format!("param.{name}")).to_dtype(dtype).unwrap();
        var.set(&t).unwrap();
    }
    (store, net)
}

#[test]
fn a_whole_reduced_torchvision_densenet_matches_in_eval_mode() {
    let f = Fixture::load("densenet_small_f64");
    for (dtype, tol) in [(DType::F32, 1e-4), (DType::F64, 1e-10)] {
        let (_, net) = small_densenet(&f, dtype);
        let x = f.get("x").to_dtype(dtype).unwrap();
        let what = format!("{dtype:?}");
        let feats = net.features_t(&x, false).unwrap();
        assert_close(
            &feats,
            &f.get("features_eval"),
            tol,
            &format!("{what} features"),
        );
        for (pool, key) in [(GlobalPool::Avg, "avg_eval"), (GlobalPool::Max, "max_eval")] {
            let e = net.embed(&x, pool, false).unwrap();
            assert_close(&e, &f.get(key), tol, &format!("{what} {key}"));
            let e = pretext::ops::no_grad(|| net.embed(&x, pool, false)).unwrap();
            assert_close(&e, &f.get(key), tol, &format!("{what} {key} under no_grad"));
        }
    }
}

#[test]
fn a_whole_reduced_torchvision_densenet_matches_in_train_mode_with_gradients() {
    let f = Fixture::load("densenet_small_f64");
    let (store, net) = small_densenet(&f, DType::F64);
    let x = f.get("x").to_dtype(DType::F64).unwrap();
    let feats = net.features_t(&x, true).unwrap();
    assert_close(&feats, &f.get("features_train"), 1e-10, "features");
    let pooled = pretext::ops::global_avg_pool(&feats).unwrap();
    let grads = (&pooled * &f.get("g"))
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let trainable = store.trainable("");
    assert_eq!(trainable.len(), f.keys_with("grad.").len());
    for (name, var) in &trainable {
        assert_close(
            grads.get(var.as_tensor()).unwrap(),
            &f.get(&format!("grad.{name}")),
            1e-8,
            name,
        );
    }
    // The running statistics after the one training-mode pass (momentum 0.1, unbiased).
    let after = f.keys_with("after.");
    assert_eq!(after.len(), 2 * 21); // norm0, 16 in the blocks, 3 transitions, norm5
    for name in after {
        assert_close(
            store.get(&name).unwrap().as_tensor(),
            &f.get(&format!("after.{name}")),
            1e-10,
            &name,
        );
    }
}

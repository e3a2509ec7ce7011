//! DenseNet: torchvision's parameter names and shapes (1:1 weight mapping), DenseNet-121's
//! parameter count, and one dense block's forward and backward against torchvision in f64.

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
    for pool in [GlobalPool::Avg, GlobalPool::Max] {
        assert_eq!(
            net.embed(&x, pool, true).unwrap().dims(),
            [2, cfg.feature_channels()]
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

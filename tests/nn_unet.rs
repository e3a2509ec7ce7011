//! The paper's 3D UNet: parameter count, a whole-model forward and backward against PyTorch in
//! f64 (ties in the pooling included), the encoder on pretext patch sizes, and encoder transfer.

mod common;
use candle_core::{DType, Device, Tensor};
use common::torch::{Fixture, assert_close};
use pretext::nn::loss::{DiceVariant, dice_loss, one_hot};
use pretext::nn::{Encoder3d, LoadOptions, ParamStore, UNet3d, UNet3dConfig};

#[test]
fn unet3d_with_16_filters_has_the_papers_5647891_parameters() {
    let store = ParamStore::new(0);
    UNet3d::new(
        &UNet3dConfig::default(),
        store.builder(DType::F32, &Device::Cpu),
    )
    .unwrap();
    assert_eq!(store.trainable_count(""), 5_647_891);
    let encoder_only = ParamStore::new(0);
    Encoder3d::new(
        &UNet3dConfig::default(),
        encoder_only.builder(DType::F32, &Device::Cpu),
    )
    .unwrap();
    assert_eq!(
        encoder_only.trainable_count(""),
        store.trainable_count("encoder.")
    );
}

fn tiny() -> UNet3dConfig {
    UNet3dConfig {
        filters: 2,
        depth: 2,
        dropout: 0.0,
        ..Default::default()
    }
}

#[test]
fn tiny_unet3d_forward_and_backward_equal_pytorch_in_f64() {
    let f = Fixture::load("unet3d_tiny_f64");
    let store = ParamStore::new(0);
    let net = UNet3d::new(&tiny(), store.builder(DType::F64, &Device::Cpu)).unwrap();
    for name in f.keys_with("init.") {
        let var = store
            .get(&name)
            .unwrap_or_else(|| panic!("the model has no {name}"));
        var.set(&f.get(&format!("init.{name}"))).unwrap();
    }
    assert_eq!(
        f.keys_with("init.").len(),
        store.all().len(),
        "same tensors on both sides"
    );

    let logits = net.forward_t(&f.get("x"), true).unwrap();
    let probs = candle_nn::ops::softmax(&logits, 1).unwrap();
    assert_close(&probs, &f.get("probs"), 1e-8, "probabilities");
    let target = one_hot(&f.get("labels"), 3, DType::F64).unwrap();
    let loss = dice_loss(&probs, &target, DiceVariant::Batch).unwrap();
    assert_close(&loss.reshape(1).unwrap(), &f.get("loss"), 1e-10, "loss");

    let grads = loss.backward().unwrap();
    let mut checked = 0;
    for (name, var) in store.trainable("") {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        assert_close(
            g,
            &f.get(&format!("grad.{name}")),
            1e-8,
            &format!("gradient of {name}"),
        );
        checked += 1;
    }
    assert_eq!(checked, f.keys_with("grad.").len());
    for name in f
        .keys_with("param.")
        .iter()
        .filter(|n| n.contains("running"))
    {
        let v = store.get(name).unwrap();
        assert_close(v.as_tensor(), &f.get(&format!("param.{name}")), 1e-10, name);
    }
}

#[test]
fn encoder_runs_on_jigsaw_and_cpc_patch_sizes() {
    let store = ParamStore::new(0);
    let enc = Encoder3d::new(
        &UNet3dConfig::default(),
        store.builder(DType::F32, &Device::Cpu),
    )
    .unwrap();
    for size in [39, 32] {
        let x = Tensor::zeros((1, 1, size, size, size), DType::F32, &Device::Cpu).unwrap();
        assert_eq!(
            enc.embed(&x, false).unwrap().dims(),
            [1, 256],
            "patch {size}"
        );
    }
    let small = Tensor::zeros((1, 1, 16, 16, 16), DType::F32, &Device::Cpu).unwrap();
    let e = enc.embed(&small, false).unwrap_err().to_string();
    assert!(e.contains("at least 32"), "{e}");

    // Values, not only shapes, on a narrower encoder of the same depth: on random patches the
    // f32 features (direct AVX-512 kernels where available, odd sizes at 39) equal the f64
    // ones (im2col + GEMM), in eval mode an item's features do not depend on the rest of the
    // batch, and embed is the flattened pooled bottleneck.
    let cfg = UNet3dConfig {
        filters: 4,
        ..UNet3dConfig::default()
    };
    for size in [39, 32] {
        let x = Tensor::rand(0f32, 1f32, (2, 1, size, size, size), &Device::Cpu).unwrap();
        let store = ParamStore::new(5);
        let enc32 = Encoder3d::new(&cfg, store.builder(DType::F32, &Device::Cpu)).unwrap();
        let store64 = ParamStore::new(5);
        let enc64 = Encoder3d::new(&cfg, store64.builder(DType::F64, &Device::Cpu)).unwrap();
        for (name, var) in store.all() {
            let t = var.as_tensor().to_dtype(DType::F64).unwrap();
            store64.get(&name).unwrap().set(&t).unwrap();
        }
        let e32 = enc32.embed(&x, false).unwrap();
        assert_eq!(e32.dims(), [2, 64], "patch {size}");
        let e64 = enc64
            .embed(&x.to_dtype(DType::F64).unwrap(), false)
            .unwrap();
        assert_close(&e32, &e64, 1e-4, &format!("patch {size}: f32 vs f64"));
        let alone = enc32.embed(&x.narrow(0, 1, 1).unwrap(), false).unwrap();
        assert_close(
            &alone,
            &e32.narrow(0, 1, 1).unwrap(),
            1e-6,
            &format!("patch {size}: batch independence"),
        );
        let features = enc32.forward_t(&x, false).unwrap().features;
        assert_eq!(features.dims(), [2, 64, 1, 1, 1]);
        assert_close(&features.flatten_from(1).unwrap(), &e32, 0.0, "flattened");
        // The two items differ, and so do their features.
        let d = (e32.get(0).unwrap() - e32.get(1).unwrap())
            .unwrap()
            .abs()
            .unwrap();
        assert!(d.sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.0);
    }
}

#[test]
fn a_pretext_encoder_checkpoint_transfers_into_the_segmentation_model() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pretext.safetensors");
    let cfg = tiny();
    let pre = ParamStore::new(1);
    Encoder3d::new(&cfg, pre.builder(DType::F32, &Device::Cpu).pp("encoder")).unwrap();
    pretext::nn::linear(16, 10, pre.builder(DType::F32, &Device::Cpu).pp("head")).unwrap();
    pre.save(&path, &serde_json::json!({"task": "rotation"}))
        .unwrap();

    let seg = ParamStore::new(2);
    UNet3d::new(&cfg, seg.builder(DType::F32, &Device::Cpu)).unwrap();
    let report = seg
        .load(
            &path,
            &LoadOptions {
                prefix: Some("encoder.".into()),
                ..Default::default()
            },
        )
        .unwrap();
    assert!(report.is_complete(), "{report:?}");
    assert_eq!(report.loaded.len(), pre.all().len() - 2);
    for (name, var) in pre
        .all()
        .into_iter()
        .filter(|(n, _)| n.starts_with("encoder."))
    {
        assert_close(
            seg.get(&name).unwrap().as_tensor(),
            var.as_tensor(),
            0.0,
            &name,
        );
    }
    let everything = seg.load(&path, &LoadOptions::default()).unwrap();
    assert_eq!(
        everything.unexpected,
        vec!["head.bias".to_string(), "head.weight".to_string()]
    );
    assert!(
        everything.missing.iter().all(|n| n.starts_with("decoder."))
            && !everything.missing.is_empty()
    );
    assert_eq!(ParamStore::manifest(&path).unwrap()["task"], "rotation");
}

#[test]
fn loading_reports_shape_mismatches_and_rejects_corrupt_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wide.safetensors");
    let wide = ParamStore::new(0);
    Encoder3d::new(
        &UNet3dConfig {
            filters: 4,
            ..tiny()
        },
        wide.builder(DType::F32, &Device::Cpu),
    )
    .unwrap();
    wide.save(&path, &serde_json::json!({})).unwrap();
    let narrow = ParamStore::new(0);
    Encoder3d::new(&tiny(), narrow.builder(DType::F32, &Device::Cpu)).unwrap();
    let r = narrow.load(&path, &LoadOptions::default()).unwrap();
    assert!(r.loaded.is_empty() && !r.mismatched.is_empty(), "{r:?}");
    let (name, ours, theirs) = &r.mismatched[0];
    assert!(name.ends_with("weight") || name.ends_with("bias") || name.contains("running"));
    assert_ne!(ours, theirs);

    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let e = narrow
        .load(&path, &LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("wide.safetensors") && e.contains("safetensors"),
        "{e}"
    );
    let e = narrow
        .load(
            dir.path().join("missing.safetensors"),
            &LoadOptions::default(),
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing.safetensors"), "{e}");
}

#[test]
fn inference_under_no_grad_gives_the_same_logits_and_records_no_graph() {
    let store = ParamStore::new(3);
    let net = UNet3d::new(&tiny(), store.builder(DType::F32, &Device::Cpu)).unwrap();
    let x = Tensor::rand(0f32, 1.0, (1, 1, 16, 16, 16), &Device::Cpu).unwrap();
    let tracked = net.forward_t(&x, false).unwrap();
    assert!(
        tracked.track_op(),
        "an ordinary eval forward stays differentiable"
    );
    let free = pretext::ops::no_grad(|| net.forward_t(&x, false)).unwrap();
    assert!(!free.track_op(), "no_grad must not record the graph");
    let values = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(values(&tracked), values(&free));
}

/// A tiny UNet (2 filters, depth 2) holding the weights of `scripts/unet_reference.py`'s
/// independent reference (written from method.md §2.1 only, torch's own initialisation).
fn from_independent_reference(f: &Fixture, dtype: DType) -> (ParamStore, UNet3d) {
    let store = ParamStore::new(0);
    let net = UNet3d::new(&tiny(), store.builder(dtype, &Device::Cpu)).unwrap();
    assert_eq!(f.keys_with("param.").len(), store.all().len());
    for name in f.keys_with("param.") {
        let var = store
            .get(&name)
            .unwrap_or_else(|| panic!("the model has no {name}"));
        var.set(&f.get(&format!("param.{name}")).to_dtype(dtype).unwrap())
            .unwrap();
    }
    (store, net)
}

#[test]
fn unet3d_matches_an_independent_reference_from_the_method_in_eval_mode() {
    let f = Fixture::load("unet_reference");
    for (dtype, tol) in [(DType::F64, 1e-6), (DType::F32, 1e-4)] {
        let (_, net) = from_independent_reference(&f, dtype);
        let x = f.get("x").to_dtype(dtype).unwrap();
        let enc = net.encoder.forward_t(&x, false).unwrap();
        assert_close(
            &enc.features,
            &f.get("encoded_eval"),
            tol,
            &format!("{dtype:?} encoder output (after the extra pooling)"),
        );
        let logits = net.forward_t(&x, false).unwrap();
        assert_close(
            &logits,
            &f.get("logits_eval"),
            tol,
            &format!("{dtype:?} logits"),
        );
        let logits = pretext::ops::no_grad(|| net.forward_t(&x, false)).unwrap();
        assert_close(
            &logits,
            &f.get("logits_eval"),
            tol,
            &format!("{dtype:?} logits under no_grad"),
        );
    }
}

#[test]
fn unet3d_matches_an_independent_reference_from_the_method_in_train_mode() {
    let f = Fixture::load("unet_reference");
    let (store, net) = from_independent_reference(&f, DType::F64);
    let logits = net
        .forward_t(&f.get("x").to_dtype(DType::F64).unwrap(), true)
        .unwrap();
    // The reference's outputs are stored in f32.
    assert_close(&logits, &f.get("logits_train"), 1e-6, "logits");
    let loss = logits.sqr().unwrap().mean_all().unwrap();
    assert_close(
        &loss.reshape(1).unwrap(),
        &f.get("loss_train"),
        1e-10,
        "loss",
    );
    let grads = loss.backward().unwrap();
    let trainable = store.trainable("");
    assert_eq!(trainable.len(), f.keys_with("grad.").len());
    for (name, var) in &trainable {
        assert_close(
            grads.get(var.as_tensor()).unwrap(),
            &f.get(&format!("grad.{name}")),
            1e-8,
            &format!("gradient of {name}"),
        );
    }
    for name in f.keys_with("after.") {
        assert_close(
            store.get(&name).unwrap().as_tensor(),
            &f.get(&format!("after.{name}")),
            1e-10,
            &format!("{name} after one training pass"),
        );
    }
}

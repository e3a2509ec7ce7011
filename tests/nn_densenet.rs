//! DenseNet: torchvision's parameter names and shapes (1:1 weight mapping), DenseNet-121's
//! parameter count, one dense block's forward and backward against torchvision in f64, and a
//! whole reduced torchvision DenseNet (growth 8, blocks 2-2-2-2) in eval and train mode. Under
//! Keras' constants (`convention: Keras`, O's `keras.applications.DenseNet121`): a BatchNorm
//! over several steps against a NumPy transcription of Keras' fused update, a dense block and a
//! reduced DenseNet against torchvision's with Keras' epsilon and momentum, and the
//! Glorot-uniform initialisation against its definition.

mod common;
use candle_core::{DType, Device, Tensor};
use common::torch::{Fixture, assert_close};
use pretext::nn::{
    DenseBlock, DenseNet, DenseNetConfig, DenseNetConvention, GlobalPool, ParamStore, batch_norm,
};

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
        ..Default::default()
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
        ..Default::default()
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
        ..Default::default()
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

/// Sets every tensor of `store` from the fixture's `prefix`-named tensors, in `dtype`; the store
/// and the fixture must hold the same names.
fn load_into(store: &ParamStore, f: &Fixture, prefix: &str, dtype: DType) {
    let all = store.all();
    assert_eq!(all.len(), f.keys_with(prefix).len(), "{prefix}");
    for (name, var) in &all {
        let t = f.get(&format!("{prefix}{name}")).to_dtype(dtype).unwrap();
        var.set(&t).unwrap();
    }
}

fn keras(cfg: DenseNetConfig) -> DenseNetConfig {
    DenseNetConfig {
        convention: DenseNetConvention::Keras,
        ..cfg
    }
}

#[test]
fn a_batch_norm_with_keras_densenet_constants_follows_keras_update_over_several_steps() {
    let f = Fixture::load("densenet_keras_f64");
    let cfg = DenseNetConvention::Keras.batch_norm();
    assert_eq!((cfg.eps, cfg.momentum), (1.001e-5, 0.01));
    let relu = |t: &Tensor| t.relu().unwrap();
    // forward_t and DenseNet's fused forward_relu_t, on the kernels and on candle's ops.
    for (fused_relu, composed) in [(false, false), (true, false), (false, true), (true, true)] {
        let what = format!("relu {fused_relu}, composed {composed}");
        let store = ParamStore::new(0);
        let bn = batch_norm(5, cfg, store.builder(DType::F64, &Device::Cpu).pp("bn")).unwrap();
        store
            .get("bn.weight")
            .unwrap()
            .set(&f.get("bn.gamma"))
            .unwrap();
        store
            .get("bn.bias")
            .unwrap()
            .set(&f.get("bn.beta"))
            .unwrap();
        let run = |x: &Tensor, train: bool| {
            let go = || {
                if fused_relu {
                    bn.forward_relu_t(x, train)
                } else {
                    bn.forward_t(x, train)
                }
            };
            if composed {
                pretext::ops::with_composed(go).unwrap()
            } else {
                go().unwrap()
            }
        };
        for k in 0..4 {
            let y = run(&f.get(&format!("bn.x{k}")), true);
            let want = f.get(&format!("bn.y{k}"));
            let want = if fused_relu { relu(&want) } else { want };
            assert_close(&y, &want, 1e-10, &format!("{what}: output of step {k}"));
            for (buf, key) in [("running_mean", "mean"), ("running_var", "var")] {
                assert_close(
                    store.get(&format!("bn.{buf}")).unwrap().as_tensor(),
                    &f.get(&format!("bn.{key}{k}")),
                    1e-12,
                    &format!("{what}: {buf} after step {k}"),
                );
            }
        }
        let want = f.get("bn.y_eval");
        let want = if fused_relu { relu(&want) } else { want };
        let x = f.get("bn.x0");
        assert_close(&run(&x, false), &want, 1e-10, &format!("{what}: eval"));
        let y = pretext::ops::no_grad(|| run(&x, false));
        assert_close(&y, &want, 1e-10, &format!("{what}: eval under no_grad"));
    }
}

#[test]
fn a_dense_block_with_keras_constants_matches_torchvision_with_keras_batch_norms_in_f64() {
    let f = Fixture::load("densenet_keras_f64");
    let cfg = keras(DenseNetConfig {
        in_channels: 5,
        growth: 3,
        blocks: vec![3],
        init_features: 5,
        bn_size: 2,
        ..Default::default()
    });
    // The fused block kernel and the layers one by one.
    for layered in [false, true] {
        let what = if layered { "layer by layer" } else { "fused" };
        let store = ParamStore::new(0);
        let block = DenseBlock::new(3, 5, &cfg, store.builder(DType::F64, &Device::Cpu)).unwrap();
        load_into(&store, &f, "block.param.", DType::F64);
        let forward = |x: &Tensor, train: bool| {
            if layered {
                block.forward_layers_t(x, train).unwrap()
            } else {
                block.forward_t(x, train).unwrap()
            }
        };
        let x = f.var("block.x0", DType::F64);
        let y = forward(x.as_tensor(), true);
        assert_close(&y, &f.get("block.y"), 1e-10, &format!("{what}: output"));
        let grads = (&y * &f.get("block.g"))
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        assert_close(
            grads.get(x.as_tensor()).unwrap(),
            &f.get("block.dx"),
            1e-9,
            &format!("{what}: input gradient"),
        );
        for (name, var) in store.trainable("") {
            assert_close(
                grads.get(var.as_tensor()).unwrap(),
                &f.get(&format!("block.grad.{name}")),
                1e-9,
                &format!("{what}: {name}"),
            );
        }
        // Two more training steps, then the running statistics (momentum 0.01, unbiased).
        for k in 1..3 {
            forward(&f.get(&format!("block.x{k}")), true);
        }
        let after = f.keys_with("block.after.");
        assert_eq!(after.len(), 2 * 6);
        for name in after {
            assert_close(
                store.get(&name).unwrap().as_tensor(),
                &f.get(&format!("block.after.{name}")),
                1e-10,
                &format!("{what}: {name}"),
            );
        }
        let x0 = f.get("block.x0");
        let y = pretext::ops::no_grad(|| forward(&x0, false));
        assert_close(&y, &f.get("block.y_eval"), 1e-10, &format!("{what}: eval"));
    }
}

#[test]
fn a_reduced_densenet_with_keras_constants_matches_torchvision_with_keras_batch_norms() {
    let f = Fixture::load("densenet_keras_f64");
    let cfg = keras(DenseNetConfig {
        in_channels: 3,
        growth: 4,
        blocks: vec![2, 2],
        init_features: 8,
        bn_size: 2,
        ..Default::default()
    });
    let store = ParamStore::new(0);
    let net = DenseNet::new(&cfg, store.builder(DType::F64, &Device::Cpu)).unwrap();
    load_into(&store, &f, "net.param.", DType::F64);
    let x = f.get("net.x");
    let eval = net.features_t(&x, false).unwrap();
    assert_close(&eval, &f.get("net.features_eval"), 1e-10, "eval features");
    let eval = pretext::ops::no_grad(|| net.features_t(&x, false)).unwrap();
    assert_close(
        &eval,
        &f.get("net.features_eval"),
        1e-10,
        "eval under no_grad",
    );
    let train = net.features_t(&x, true).unwrap();
    assert_close(
        &train,
        &f.get("net.features_train"),
        1e-10,
        "train features",
    );
    // Every BatchNorm (norm0, 8 in the blocks, 1 transition, norm5) moved by Keras' rule.
    let after = f.keys_with("net.after.");
    assert_eq!(after.len(), 2 * 11);
    for name in after {
        assert_close(
            store.get(&name).unwrap().as_tensor(),
            &f.get(&format!("net.after.{name}")),
            1e-10,
            &name,
        );
    }
}

/// One convolution weight of a network: its fans as Keras counts them (`k·k·in`, `k·k·out`),
/// the mean of its squared values, its largest magnitude and its size.
struct ConvWeight {
    name: String,
    fan_in: f64,
    fan_out: f64,
    mean_sq: f64,
    max: f64,
    n: f64,
}

/// Every convolution weight of a DenseNet built with `cfg`.
fn conv_weights(cfg: &DenseNetConfig) -> Vec<ConvWeight> {
    let store = ParamStore::new(5);
    DenseNet::new(cfg, store.builder(DType::F32, &Device::Cpu)).unwrap();
    store
        .trainable("")
        .into_iter()
        .filter(|(_, v)| v.rank() == 4)
        .map(|(name, v)| {
            let &[o, c, kh, kw] = v.dims() else {
                unreachable!()
            };
            let w: Vec<f64> = v
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap()
                .to_vec1()
                .unwrap();
            let n = w.len() as f64;
            let rf = (kh * kw) as f64;
            ConvWeight {
                name,
                fan_in: rf * c as f64,
                fan_out: rf * o as f64,
                mean_sq: w.iter().map(|x| x * x).sum::<f64>() / n,
                max: w.iter().fold(0f64, |m, x| m.max(x.abs())),
                n,
            }
        })
        .collect()
}

#[test]
fn keras_convention_draws_glorot_uniform_convolutions_and_he_normal_stays_the_default() {
    assert_eq!(
        DenseNetConfig::default().convention,
        DenseNetConvention::Torchvision
    );
    // Keras' glorot_uniform: U(±limit), limit = sqrt(6 / (fan_in + fan_out)), variance
    // limit²/3; the mean of n squares has standard deviation limit²·sqrt(4 / (45 n)).
    let convs = conv_weights(&keras(DenseNetConfig::densenet121()));
    assert_eq!(convs.len(), 1 + 2 * 58 + 3); // conv0, two per dense layer, transitions
    for w in &convs {
        let limit = (6.0 / (w.fan_in + w.fan_out)).sqrt();
        // f32 weights: a draw within rounding of the bound rounds to the bound's f32 value.
        let bound = limit as f32 as f64;
        assert!(w.max <= bound, "{}: |w| {} > {bound}", w.name, w.max);
        assert!(
            w.max > 0.9 * limit,
            "{}: |w| ≤ {}, limit {limit}",
            w.name,
            w.max
        );
        let sd = limit * limit * (4.0 / (45.0 * w.n)).sqrt();
        let z = (w.mean_sq - limit * limit / 3.0) / sd;
        assert!(z.abs() < 5.0, "{}: variance {}, z {z}", w.name, w.mean_sq);
    }
    // torchvision's kaiming_normal_ (the default): N(0, 2 / fan_in); the mean of n squares has
    // standard deviation (2 / fan_in)·sqrt(2 / n). Every layer has draws beyond Glorot's bound.
    let convs = conv_weights(&DenseNetConfig::densenet121());
    for w in &convs {
        let var = 2.0 / w.fan_in;
        let z = (w.mean_sq - var) / (var * (2.0 / w.n).sqrt());
        assert!(z.abs() < 5.0, "{}: variance {}, z {z}", w.name, w.mean_sq);
        let limit = (6.0 / (w.fan_in + w.fan_out)).sqrt();
        assert!(
            w.max > limit,
            "{}: |w| ≤ {} within Glorot's {limit}",
            w.name,
            w.max
        );
    }
}

//! Losses, the optimiser, the MLP head and the grade decoding against independent references
//! (`scripts/make_reference_fixtures.py`): PyTorch for the losses, the CPC head and the MLP
//! head; a NumPy transcription of Keras' Adam (cross-checked there against `torch.optim.Adam`);
//! scikit-learn for the confusion matrix and kappa of the decoded grades.

mod common;

use candle_core::{DType, Device, Tensor, Var};
use common::torch::{Fixture, assert_close};
use pretext::nn::loss::{DiceVariant, binary_cross_entropy, cross_entropy, dice_loss, one_hot};
use pretext::nn::{MlpHead, MlpHeadConfig, ParamStore, gru, linear};
use pretext::pretext::model::{cpc_loss, triplet_loss};
use pretext::pretext::{CpcLoss, ExemplarOptions, Negatives, TripletLoss};
use pretext::train::finetune::{cumulative_bits, decode_cumulative};
use pretext::train::metrics::Confusion;
use pretext::train::optim::{Adam, AdamConfig};

fn scalar(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()[0]
}

fn close(a: f64, b: f64, tol: f64, what: &str) {
    assert!(
        (a - b).abs() <= tol * b.abs().max(1.0),
        "{what}: {a} vs {b}"
    );
}

#[test]
fn adam_with_per_tensor_clipping_follows_keras_over_five_steps() {
    let f = Fixture::load("adam_keras_f64");
    let lr = scalar(&f.get("lr"));
    let configs = [
        ("plain", None, None),
        ("paper", Some(1.0), Some(1.0)),
        ("norm2_value03", Some(2.0), Some(0.3)),
    ];
    for (key, clip_norm, clip_value) in configs {
        let vars: Vec<Var> = (0..3)
            .map(|i| f.var(&format!("param{i}"), DType::F64))
            .collect();
        let cfg = AdamConfig {
            clip_norm,
            clip_value,
            ..AdamConfig::with_lr(lr)
        };
        let mut adam = Adam::new(
            vars.iter()
                .enumerate()
                .map(|(i, v)| (format!("p{i}"), v.clone()))
                .collect(),
            cfg,
        )
        .unwrap();
        for t in 0..5 {
            // loss = Σ sum(p_i · G_i,t): the gradient of p_i is exactly G_i,t; parameter 2 has
            // none at step 2 (index) and must be left alone there.
            let mut loss = Tensor::zeros((), DType::F64, &Device::Cpu).unwrap();
            for (i, v) in vars.iter().enumerate() {
                let g = format!("grad{i}_step{t}");
                if f.has(&g) {
                    loss =
                        (loss + (v.as_tensor() * f.get(&g)).unwrap().sum_all().unwrap()).unwrap();
                }
            }
            adam.step(&loss.backward().unwrap()).unwrap();
            for (i, v) in vars.iter().enumerate() {
                assert_close(
                    v.as_tensor(),
                    &f.get(&format!("{key}.param{i}_after{t}")),
                    1e-12,
                    &format!("{key}: parameter {i} after step {}", t + 1),
                );
            }
        }
        assert_eq!(adam.steps(), 5);
    }
}

#[test]
fn cross_entropy_matches_pytorch_with_extreme_logits() {
    let f = Fixture::load("losses");
    let logits = f.var("ce_logits", DType::F32);
    let loss = cross_entropy(logits.as_tensor(), &f.get("ce_targets")).unwrap();
    assert_close(
        &loss.reshape(1).unwrap(),
        &f.get("ce"),
        1e-6,
        "cross-entropy",
    );
    let g = loss.backward().unwrap();
    assert_close(
        g.get(logits.as_tensor()).unwrap(),
        &f.get("ce_dlogits"),
        1e-5,
        "d cross-entropy / d logits",
    );
}

#[test]
fn binary_cross_entropy_matches_pytorch_with_extreme_logits() {
    let f = Fixture::load("losses");
    let logits = f.var("bce_logits", DType::F32);
    let loss = binary_cross_entropy(logits.as_tensor(), &f.get("bce_targets")).unwrap();
    assert_close(&loss.reshape(1).unwrap(), &f.get("bce"), 1e-6, "BCE");
    let g = loss.backward().unwrap();
    assert_close(
        g.get(logits.as_tensor()).unwrap(),
        &f.get("bce_dlogits"),
        1e-5,
        "d BCE / d logits",
    );
}

#[test]
fn both_dice_losses_and_their_gradients_match_pytorch() {
    let f = Fixture::load("losses");
    let y = one_hot(&f.get("dice_labels"), 3, DType::F32).unwrap();
    for (variant, key) in [
        (DiceVariant::PerSample, "dice_per_sample"),
        (DiceVariant::Batch, "dice_batch"),
    ] {
        let p = f.var("dice_p", DType::F32);
        let loss = dice_loss(p.as_tensor(), &y, variant).unwrap();
        assert_close(&loss.reshape(1).unwrap(), &f.get(key), 1e-6, key);
        let g = loss.backward().unwrap();
        assert_close(
            g.get(p.as_tensor()).unwrap(),
            &f.get(&format!("{key}_dp")),
            1e-5,
            &format!("{key} gradient"),
        );
    }
}

#[test]
fn exemplar_triplet_losses_match_the_references() {
    let f = Fixture::load("exemplar_loss");
    let opts = |loss, negatives, hardest, margin| ExemplarOptions {
        loss,
        negatives,
        hardest,
        margin,
        code: 6,
        ..Default::default()
    };
    let cases = [
        (
            "ms_dataset",
            opts(TripletLoss::MeanSquared, Negatives::Dataset, false, 1.0),
            true,
            1e-6,
        ),
        // S's in-batch negatives; also when the batch sampled negatives, they are not used.
        (
            "euclidean_batch",
            opts(TripletLoss::Euclidean, Negatives::Batch, false, 1.0),
            false,
            // torch's pairwise_distance adds 1e-6 to every difference.
            2e-5,
        ),
        (
            "euclidean_batch",
            opts(TripletLoss::Euclidean, Negatives::Batch, false, 1.0),
            true,
            2e-5,
        ),
        (
            "ms_hardest_dataset",
            opts(TripletLoss::MeanSquared, Negatives::Dataset, true, 1.0),
            true,
            1e-6,
        ),
        (
            "euclidean_hardest_batch_m05",
            opts(TripletLoss::Euclidean, Negatives::Batch, true, 0.5),
            false,
            1e-5,
        ),
    ];
    for (key, o, with_negatives, tol) in cases {
        let (a, p, n) = (
            f.var("a", DType::F32),
            f.var("p", DType::F32),
            f.var("n", DType::F32),
        );
        let out = triplet_loss(
            a.as_tensor(),
            p.as_tensor(),
            with_negatives.then_some(n.as_tensor()),
            &o,
        )
        .unwrap();
        let what = format!("{key} (negatives sampled: {with_negatives})");
        assert_close(
            &out.loss.reshape(1).unwrap(),
            &f.get(&format!("{key}.loss")),
            tol,
            &what,
        );
        close(
            out.accuracy,
            scalar(&f.get(&format!("{key}.accuracy"))),
            1e-12,
            &what,
        );
        let g = out.loss.backward().unwrap();
        for (v, d) in [(&a, "da"), (&p, "dp"), (&n, "dn")] {
            let want = f.get(&format!("{key}.{d}"));
            match g.get(v.as_tensor()) {
                Some(got) => assert_close(got, &want, 10.0 * tol, &format!("{what} {d}")),
                None => assert_eq!(
                    scalar(&want.abs().unwrap().sum_all().unwrap()),
                    0.0,
                    "{what}: no {d} but PyTorch has one"
                ),
            }
        }
    }
}

#[test]
fn cpc_head_and_both_losses_match_pytorch() {
    let f = Fixture::load("cpc_loss");
    for (kind, key) in [(CpcLoss::Binary, "binary"), (CpcLoss::InfoNce, "infonce")] {
        let store = ParamStore::new(0);
        let vb = store.builder(DType::F32, &Device::Cpu);
        let g = gru(6, 5, vb.clone()).unwrap();
        let predict: Vec<_> = (0..2)
            .map(|k| linear(5, 6, vb.pp(format!("predict{k}"))).unwrap())
            .collect();
        let names = store.trainable("");
        assert_eq!(names.len(), 8);
        for (name, var) in &names {
            var.set(&f.get(&format!("param.{name}"))).unwrap();
        }
        let codes = f.var("codes", DType::F32);
        let out = cpc_loss(
            codes.as_tensor(),
            &g,
            &predict,
            (&f.get("context"), &f.get("targets"), &f.get("y")),
            kind,
        )
        .unwrap();
        assert_close(
            &out.loss.reshape(1).unwrap(),
            &f.get(&format!("{key}.loss")),
            1e-5,
            key,
        );
        close(
            out.accuracy,
            scalar(&f.get(&format!("{key}.accuracy"))),
            1e-12,
            key,
        );
        let grads = out.loss.backward().unwrap();
        assert_close(
            grads.get(codes.as_tensor()).unwrap(),
            &f.get(&format!("{key}.dcodes")),
            1e-4,
            &format!("{key} d codes"),
        );
        for (name, var) in &names {
            assert_close(
                grads.get(var.as_tensor()).unwrap(),
                &f.get(&format!("{key}.grad.{name}")),
                1e-4,
                &format!("{key} d {name}"),
            );
        }
    }
}

#[test]
fn mlp_head_matches_pytorch_in_train_and_eval_mode() {
    let f = Fixture::load("mlp_head");
    let store = ParamStore::new(0);
    let cfg = MlpHeadConfig {
        hidden: vec![6, 5],
        dropout: 0.0,
        seed: 0,
        momentum: 0.01,
    };
    let head = MlpHead::new(7, 4, &cfg, store.builder(DType::F32, &Device::Cpu)).unwrap();
    let all = store.all();
    assert_eq!(all.len(), f.keys_with("init.").len());
    for (name, var) in &all {
        var.set(&f.get(&format!("init.{name}"))).unwrap();
    }
    let x = f.var("x", DType::F32);
    let y = head.forward_t(x.as_tensor(), true).unwrap();
    assert_close(&y, &f.get("y_train"), 1e-5, "train-mode logits");
    let grads = (&y * f.get("g"))
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    assert_close(grads.get(x.as_tensor()).unwrap(), &f.get("dx"), 1e-4, "dx");
    let trainable = store.trainable("");
    assert_eq!(trainable.len(), f.keys_with("grad.").len());
    for (name, var) in &trainable {
        assert_close(
            grads.get(var.as_tensor()).unwrap(),
            &f.get(&format!("grad.{name}")),
            1e-4,
            &format!("d {name}"),
        );
    }
    for name in f.keys_with("after.") {
        assert_close(
            store.get(&name).unwrap().as_tensor(),
            &f.get(&format!("after.{name}")),
            1e-5,
            &name,
        );
    }
    let y = head.forward_t(&f.get("x_eval"), false).unwrap();
    assert_close(&y, &f.get("y_eval"), 1e-5, "eval-mode logits");
    let y = pretext::ops::no_grad(|| head.forward_t(&f.get("x_eval"), false)).unwrap();
    assert_close(&y, &f.get("y_eval"), 1e-5, "eval-mode logits under no_grad");
}

#[test]
fn cumulative_grades_encode_and_decode_like_o_and_score_like_scikit_learn() {
    let f = Fixture::load("cumulative_grades");
    let truth: Vec<i64> = f.get("truth").to_vec1().unwrap();
    let grades: Vec<u8> = truth.iter().map(|&g| g as u8).collect();
    let bits =
        Tensor::from_vec(cumulative_bits(&grades, 5), (grades.len(), 5), &Device::Cpu).unwrap();
    assert_close(&bits, &f.get("bits"), 0.0, "cumulative bits");
    let decoded = decode_cumulative(&f.get("logits")).unwrap();
    let want: Vec<i64> = f.get("decoded").to_vec1().unwrap();
    assert_eq!(decoded, want);
    assert!(decoded.contains(&-1) && decoded.contains(&4));
    let mut c = Confusion::new(5);
    c.add(&truth, &decoded).unwrap();
    let cm: Vec<Vec<i64>> = f.get("confusion").to_vec2().unwrap();
    let ours: Vec<Vec<i64>> = c
        .counts
        .iter()
        .map(|r| r.iter().map(|&v| v as i64).collect())
        .collect();
    assert_eq!(ours, cm);
    close(c.quadratic_kappa(), scalar(&f.get("kappa")), 1e-12, "kappa");
    close(
        c.accuracy(),
        scalar(&f.get("accuracy_decodable")),
        1e-12,
        "accuracy",
    );
}

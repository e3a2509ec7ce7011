//! A pretext task written in Rhai alone: stdlib/contrastive.rhai (SimCLR's NT-Xent) and the
//! general primitives it is built from (mlp, adam over several models, l2_normalize,
//! augment_3d, write_jsonl).

mod common;

use std::path::Path;

use common::torch::Fixture;
use common::{eval_err, eval_f64, eval_show, pretext};
use pretext::script::{Host, HostConfig};

/// A Rhai literal of a matrix of f32 values that reads back exactly.
fn literal(rows: &[Vec<f32>]) -> String {
    let rows: Vec<String> = rows
        .iter()
        .map(|r| {
            let v: Vec<String> = r.iter().map(|x| format!("{x:?}")).collect();
            format!("[{}]", v.join(", "))
        })
        .collect();
    format!("[{}]", rows.join(", "))
}

#[test]
fn the_nt_xent_loss_matches_pytorch_at_every_temperature() {
    let f = Fixture::load("ntxent");
    let z = literal(&f.get("z").to_vec2::<f32>().unwrap());
    let temperatures = f.get("temperatures").to_vec1::<f64>().unwrap();
    let losses = f.get("losses").to_vec1::<f64>().unwrap();
    for (t, want) in temperatures.iter().zip(losses) {
        let got = eval_f64(&format!(
            "import \"contrastive\" as c; c::nt_xent(tensor({z}), {t}).to_float()"
        ));
        let rel = (got - want).abs() / want.abs();
        assert!(
            rel <= 1e-5,
            "τ = {t}: {got} vs PyTorch {want} (rel {rel:e})"
        );
    }
}

#[test]
fn l2_normalize_gives_unit_vectors_along_a_dimension_and_leaves_zeros_alone() {
    let err = eval_f64(
        "let x = tensor([[3, 4], [0, 0], [1, 0]]); \
         let r = 1.0 / 10.0.sqrt(); \
         let rows = tensor([[0.6, 0.8], [0, 0], [1, 0]]); \
         let cols = tensor([[3 * r, 1], [0, 0], [r, 0]]); \
         (x.l2_normalize(1) - rows).abs().max().to_float() \
             + (x.l2_normalize(-2) - cols).abs().max().to_float()",
    );
    assert!(err < 1e-6, "{err}");
    let e = eval_err("zeros([2, 3]).l2_normalize(2)");
    assert!(e.contains("dimension 2 out of range"), "{e}");
}

#[test]
fn an_mlp_maps_features_to_outputs_and_its_parameters_train_and_save() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("head.safetensors");
    let shown = eval_show(&format!(
        "let h = mlp(4, [8], 3, #{{ seed: 1 }}); \
         let x = randn([5, 4], 2); \
         let shape = h.forward(x, true).shape; \
         h.save(\"{p}\"); \
         let other = mlp(4, [8], 3, #{{ seed: 2 }}); \
         let before = (other.predict(x) - h.predict(x)).abs().max().to_float() > 0; \
         let r = other.load(\"{p}\"); \
         [shape, h.params, h.names(), before, r.loaded.len(), \
          (other.predict(x) - h.predict(x)).abs().max().to_float()]",
        p = p.display()
    ));
    // 4·8 + 8 (fc0), 8 + 8 (bn0 weight and bias), 8·3 + 3 (out).
    assert_eq!(
        shown,
        "[[5, 3], 83, [\"bn0.bias\", \"bn0.running_mean\", \"bn0.running_var\", \"bn0.weight\", \
         \"fc0.bias\", \"fc0.weight\", \"out.bias\", \"out.weight\"], true, 8, 0.0]"
    );
    assert_eq!(
        eval_show("mlp(6, [], 2).forward(zeros([3, 6]), false).shape"),
        "[3, 2]"
    );
    let e = eval_err("mlp(4, [8], 3).forward(zeros([2, 5]), true)");
    assert!(e.contains("expects features [N, 4], got [2, 5]"), "{e}");
    let e = eval_err("mlp(4, [8], 3).encode(zeros([2, 4]), true)");
    assert!(e.contains("an MLP has no encoder"), "{e}");
    let e = eval_err("mlp(4, [0], 3)");
    assert!(
        e.contains("argument `hidden`: expected a width ≥ 1, got 0"),
        "{e}"
    );
    let e = eval_err("mlp(4, [8], 3, #{ dropout: 1.0 })");
    assert!(e.contains("option `dropout` must be in [0, 1)"), "{e}");
}

#[test]
fn one_adam_over_two_models_updates_both_with_one_step() {
    // Whether each model's output moved after one step of an optimiser over [a, b] and of one
    // over [a] alone.
    let code = |models: &str| {
        format!(
            "let a = mlp(4, [8], 6, #{{ seed: 1 }}); let b = mlp(6, [], 2, #{{ seed: 2 }}); \
             let x = randn([5, 4], 3); let y = randn([5, 6], 4); \
             let a0 = a.predict(x); let b0 = b.predict(y); \
             let opt = adam({models}, #{{ lr: 0.1 }}); \
             opt.step(b.forward(a.forward(x, true), true).pow(2).mean()); \
             [(a.predict(x) - a0).abs().max().to_float() > 0, \
              (b.predict(y) - b0).abs().max().to_float() > 0]"
        )
    };
    assert_eq!(eval_show(&code("[a, b]")), "[true, true]");
    assert_eq!(eval_show(&code("[a]")), "[true, false]");
    assert_eq!(eval_show(&code("a")), "[true, false]");
}

#[test]
fn augment_3d_is_seeded_and_the_same_at_any_thread_count() {
    let code = "let x = rand([3, 1, 6, 7, 5], 1); \
                let v = augment_3d(x, #{ seed: 4 }); \
                [v.shape, v.flatten().to_array()]";
    let run = |threads: &str| {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_pretext"))
            .args(["eval", code])
            .env("RAYON_NUM_THREADS", threads)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    };
    let one = run("1");
    assert!(one.starts_with("[[3, 1, 6, 7, 5], "), "{one}");
    assert_eq!(one, run("3"));
    let same = eval_f64(
        "let x = rand([2, 1, 8, 8, 8], 1); \
         let a = augment_3d(x, #{ seed: 4 }); let b = augment_3d(x, #{ seed: 4 }); \
         let c = augment_3d(x, #{ seed: 5 }); \
         (a - b).abs().sum().to_float() + if (a - c).abs().sum().to_float() > 0 { 1000 } else { 0 }",
    );
    assert_eq!(
        same, 1000.0,
        "same seed: same view; another seed: another view"
    );
    // Item 0 of a batch is the view of the volume alone: each item has its own stream.
    let d = eval_f64(
        "let x = rand([2, 1, 8, 8, 8], 1); \
         let a = augment_3d(x, #{ seed: 4 })[0][0]; let b = augment_3d(x[0][0], #{ seed: 4 }); \
         (a - b).abs().sum().to_float()",
    );
    assert_eq!(d, 0.0);
}

#[test]
fn augment_3d_without_transforms_is_the_identity_and_checks_its_options() {
    let d = eval_f64(
        "let x = rand([6, 7, 5], 1); \
         let v = augment_3d(x, #{ crop: [1, 1], flip: false, brightness: 0, contrast: 0 }); \
         (v - x).abs().sum().to_float()",
    );
    assert_eq!(d, 0.0);
    // Flips alone move the voxels but keep their values.
    let shown = eval_show(
        "let x = rand([6, 7, 5], 1); \
         let f = augment_3d(x, #{ seed: 1, crop: [1, 1], brightness: 0, contrast: 0 }); \
         [(f.sum() - x.sum()).abs().to_float() < 1e-3, (f - x).abs().max().to_float() > 0, f.shape]",
    );
    assert_eq!(shown, "[true, true, [6, 7, 5]]");
    let e = eval_err("augment_3d(zeros([4, 4, 4]), #{ crop: [0, 1] })");
    assert!(
        e.contains("option `crop` must be [lo, hi] with 0 < lo ≤ hi ≤ 1"),
        "{e}"
    );
    let e = eval_err("augment_3d(zeros([4, 4, 4]), #{ contrast: 1.5 })");
    assert!(e.contains("option `contrast` must be in [0, 1)"), "{e}");
    let e = eval_err("augment_3d(zeros([4, 4, 4]), #{ flips: true })");
    assert!(e.contains("did you mean `flip`?"), "{e}");
    let e = eval_err("augment_3d(zeros([2, 4, 4, 4]), #{})");
    assert!(
        e.contains("argument `x`: expected a volume [x, y, z] or a batch"),
        "{e}"
    );
}

#[test]
fn write_jsonl_writes_one_compact_line_per_value() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("sub/log.jsonl");
    eval_show(&format!(
        "write_jsonl(\"{}\", [#{{ step: 1, loss: 0.5 }}, #{{ step: 2, loss: 0.25 }}])",
        p.display()
    ));
    assert_eq!(
        std::fs::read_to_string(&p).unwrap(),
        "{\"loss\":0.5,\"step\":1}\n{\"loss\":0.25,\"step\":2}\n"
    );
}

/// A script prefix opening a tiny synthetic pancreas set in `dir` and listing its cases.
fn tiny_set(dir: &Path) -> String {
    format!(
        "import \"contrastive\" as contrastive; \
         let ct = pancreas(#{{ root: \"\", data: \"{}\", shape: [16, 16, 16], \
             synthetic: #{{ labelled: 6, unlabelled: 6, shape: [24, 24, 16], seed: 7 }} }}); \
         let ids = []; for i in 0..ct.len() {{ ids.push(i); }} \
         let unet = #{{ filters: 4, depth: 1, dropout: 0.0, momentum: 0.1 }};",
        dir.join("data").display()
    )
}

/// The options of the short pretraining the tests run, writing into `out`.
fn short_run(out: &Path) -> String {
    format!(
        "#{{ unet: unet, steps: 100, batch: 4, proj: [32], dim: 16, seed: 1, out: \"{}\", \
             views: #{{ crop: [0.8, 1.0], brightness: 0.05, contrast: 0.1 }} }}",
        out.display()
    )
}

fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len() as f64
}

#[test]
fn a_short_pretraining_makes_the_loss_fall_and_its_checkpoint_initialises_finetuning() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let host = Host::new(HostConfig::default());
    let code = format!(
        "{} let r = contrastive::pretrain(ct, ids, {}); \
         let lab = ct.labelled; \
         let f = finetune_segmentation(ct, #{{ init: r.checkpoint, unet: unet, steps: 2, \
             batch: 2, train: [lab[0], lab[1], lab[2]], test: [lab[3]], seed: 1 }}); \
         #{{ losses: r.losses, steps: r.steps, checkpoint: r.checkpoint, \
            loaded: f.load.loaded.len(), dice: f.dice.len() }}",
        tiny_set(dir.path()),
        short_run(&out)
    );
    let r = host
        .eval(&code, "<test>")
        .unwrap_or_else(|e| panic!("{e}"))
        .cast::<rhai::Map>();
    let losses: Vec<f64> = r["losses"]
        .clone()
        .into_array()
        .unwrap()
        .iter()
        .map(|v| v.as_float().unwrap())
        .collect();
    assert_eq!(losses.len(), 100);
    assert_eq!(r["steps"].as_int().unwrap(), 100);
    let (first, last) = (mean(&losses[..10]), mean(&losses[90..]));
    assert!(
        last < first - 0.2,
        "the loss should fall: first 10 steps {first:.3}, last 10 {last:.3}"
    );
    let checkpoint = r["checkpoint"].clone().into_string().unwrap();
    assert_eq!(Path::new(&checkpoint), out.join("last.safetensors"));
    // Every encoder tensor of the UNet is loaded (4 per convolution, BatchNorm included).
    assert!(r["loaded"].as_int().unwrap() > 10, "{r:?}");
    assert_eq!(r["dice"].as_int().unwrap(), 3);
    // One log line per step, with the losses returned.
    let log = std::fs::read_to_string(out.join("log.jsonl")).unwrap();
    let rows: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 100);
    assert_eq!(rows[99]["step"], 100);
    assert_eq!(rows[0]["loss"].as_f64().unwrap(), losses[0]);
    // The checkpoint records its backbone: a UNet of other filters is refused by name.
    let e = eval_err(&format!(
        "{} finetune_segmentation(ct, #{{ init: \"{checkpoint}\", \
             unet: unet + #{{ filters: 2 }}, steps: 1, batch: 2, train: [0, 1], test: [2] }})",
        tiny_set(dir.path())
    ));
    assert!(e.contains("pretrained with unet.filters = 4"), "{e}");
}

#[test]
fn the_same_seed_gives_bit_identical_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let run = |name: &str| {
        let out = dir.path().join(name);
        let code = format!(
            "{} contrastive::pretrain(ct, ids, {} + #{{ steps: 6 }}).losses",
            tiny_set(dir.path()),
            short_run(&out)
        );
        let losses = eval_show(&code);
        (losses, std::fs::read(out.join("last.safetensors")).unwrap())
    };
    let (a, b) = (run("a"), run("b"));
    assert_eq!(a.0, b.0);
    assert!(a.1 == b.1, "the checkpoints differ");
}

#[test]
fn bad_arguments_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let set = tiny_set(dir.path());
    let err = |opts: &str| {
        eval_err(&format!(
            "{set} contrastive::pretrain(ct, ids, #{{ unet: unet, steps: 1 }} + {opts})"
        ))
    };
    let e = err("#{ temperature: 0 }");
    assert!(
        e.contains("option `temperature` must be a number > 0, got 0"),
        "{e}"
    );
    let e = err("#{ temprature: 0.5 }");
    assert!(
        e.contains("unknown option `temprature`; did you mean `temperature`?"),
        "{e}"
    );
    let e = err("#{ batch: 1 }");
    assert!(e.contains("option `batch` must be ≥ 2"), "{e}");
    let e = err("#{ batch: 13 }");
    assert!(e.contains("12 items cannot fill a batch of 13"), "{e}");
    let e = err("#{ unet: #{ filtres: 4 } }");
    assert!(e.contains("did you mean `filters`?"), "{e}");
    let e = err("#{ views: #{ crop: [0.5, 2] } }");
    assert!(e.contains("option `crop` must be [lo, hi]"), "{e}");
    let e = eval_err("import \"contrastive\" as c; c::nt_xent(zeros([3, 4]), 0.5)");
    assert!(
        e.contains("expected projections [2N, D], got [3, 4]"),
        "{e}"
    );
    let e = eval_err("adam([mlp(2, [], 2), #{}], #{})");
    assert!(
        e.contains("adam: argument `models`: element 1 is a map, expected a Model"),
        "{e}"
    );
    let e = eval_err("let m = mlp(2, [], 2); adam([m, m], #{})");
    assert!(e.contains("elements 0 and 1 are the same model"), "{e}");
    let e = eval_err("adam([], #{})");
    assert!(e.contains("expected a non-empty array of models"), "{e}");
}

#[test]
fn the_module_passes_check() {
    let o = pretext(&["check", "stdlib/contrastive.rhai"], None);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

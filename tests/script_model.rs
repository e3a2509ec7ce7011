//! The model domain from Rhai: building models, forward passes and inference.

mod common;

use common::{eval_f64, eval_show};

#[test]
fn predict_equals_an_eval_forward_of_the_same_unet() {
    let d = eval_f64(
        r#"
        let m = unet3d(#{ filters: 2, depth: 2, dropout: 0.0, seed: 1 });
        let x = rand([1, 1, 16, 16, 16], 7);
        let a = m.forward(x, false);
        let b = m.predict(x);
        (a - b).abs().sum().to_float()
        "#,
    );
    // A sum, not a max: a NaN anywhere makes it NaN and fails.
    assert_eq!(d, 0.0);
}

#[test]
fn predict_gives_class_logits_per_voxel() {
    // A non-cubic input, so that a permuted or cropped axis shows.
    let shown = eval_show(
        r#"
        let m = unet3d(#{ filters: 2, depth: 2, classes: 3, seed: 1 });
        let y = m.predict(rand([2, 1, 16, 8, 24], 3));
        let p = y.softmax(1);
        [y.shape, m.encode(zeros([2, 1, 16, 8, 24]), false).shape,
         (p.sum(1) - 1.0).abs().max().to_float() < 1e-5, (y.sum(1) - 1.0).abs().max().to_float() > 1e-3]
        "#,
    );
    // Logits [N, classes, D, H, W] (not probabilities); the encoder's flattened features are
    // 8 channels × (16/8 · 8/8 · 24/8) after the extra pooling.
    assert_eq!(shown, "[[2, 3, 16, 8, 24], [2, 48], true, true]");
}

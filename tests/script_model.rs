//! The model domain from Rhai: building models, forward passes and inference.

mod common;

use common::eval_f64;

#[test]
fn predict_equals_an_eval_forward_of_the_same_unet() {
    let d = eval_f64(
        r#"
        let m = unet3d(#{ filters: 2, depth: 2, dropout: 0.0, seed: 1 });
        let x = rand([1, 1, 16, 16, 16], 7);
        let a = m.forward(x, false);
        let b = m.predict(x);
        (a - b).abs().max().to_float()
        "#,
    );
    assert_eq!(d, 0.0);
}

#[test]
fn predict_gives_class_logits_per_voxel() {
    let n = eval_f64(
        r#"
        let m = unet3d(#{ filters: 2, depth: 2, classes: 3, seed: 1 });
        let y = m.predict(zeros([2, 1, 16, 16, 16]));
        let s = y.shape;
        s[0] * 1000 + s[1] * 100 + s[2]
        "#,
    );
    assert_eq!(n, 2316.0);
}

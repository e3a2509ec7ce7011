//! 2D images: PNG/JPEG reading, resizing, tensors, bad files.

mod common;
use common::{eval_err, eval_f64};
use pretext::Image;

#[test]
fn a_png_round_trips_through_a_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("grad.png");
    let code = format!(
        "let t = arange(0, 1, 0.25).reshape([1, 1, 4]) * ones([3, 2, 4]); image(t).save_image(\"{p}\"); \
         let back = load_image(\"{p}\"); let d = (back.tensor() - t).abs(); \
         d.max().to_float() + 0.0 * d.sum().to_float()",
        p = path.display()
    );
    // `+ 0 · sum`: a NaN anywhere (which max skips) makes the result NaN and fails.
    assert!(eval_f64(&code) < 1.0 / 255.0 + 1e-6);
    let img = Image::load(&path).unwrap();
    assert_eq!((img.width(), img.height(), img.channels()), (4, 2, 3));
}

#[test]
fn resize_gives_the_requested_size_and_keeps_a_constant_image_constant() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flat.png");
    let code = format!(
        "image(full([3, 30, 40], 0.6)).save_image(\"{p}\"); let r = load_image(\"{p}\").resize(224, 224); \
         let t = r.tensor(); if t.shape != [3, 224, 224] {{ throw `shape ${{t.shape}}`; }} \
         let d = (t - 153.0 / 255.0).abs(); d.max().to_float() + 0.0 * d.sum().to_float()",
        p = path.display()
    );
    assert!(eval_f64(&code) < 1.5 / 255.0);
}

#[test]
fn an_unreadable_png_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.png");
    let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
    bytes.extend_from_slice(&[0u8; 40]);
    std::fs::write(&path, &bytes).unwrap();
    let e = Image::load(&path).unwrap_err().to_string();
    assert!(e.contains("broken.png"), "{e}");
    let e = eval_err(&format!("load_image(\"{}\")", path.display()));
    assert!(e.contains("broken.png"), "{e}");
}

#[test]
fn a_tensor_of_the_wrong_shape_is_refused() {
    assert!(eval_err("image(zeros([2, 4, 4]))").contains("[C, H, W]"));
}

//! The `tensor` script domain against values worked out by hand.

mod common;
use common::{eval_err, eval_f64, eval_show};

fn close(a: f64, b: f64) {
    assert!((a - b).abs() < 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
}

#[test]
fn creation_functions_fill_as_documented() {
    close(eval_f64("zeros([2, 3]).sum().to_float()"), 0.0);
    close(eval_f64("ones([2, 3, 4]).sum().to_float()"), 24.0);
    close(eval_f64("full([5], 2.5).sum().to_float()"), 12.5);
    close(eval_f64("full([5], 2).sum().to_float()"), 10.0);
    close(eval_f64("arange(5).sum().to_float()"), 10.0);
    close(eval_f64("arange(2, 5).sum().to_float()"), 9.0);
    close(eval_f64("arange(0, 1, 0.25).sum().to_float()"), 1.5);
    close(
        eval_f64("tensor([[1, 2], [3, 4.5]]).sum().to_float()"),
        10.5,
    );
    close(eval_f64("tensor(3.5).to_float()"), 3.5);
}

#[test]
fn random_tensors_are_reproducible_by_seed_and_plausible() {
    close(
        eval_f64("(rand([100], 7) - rand([100], 7)).abs().sum().to_float()"),
        0.0,
    );
    assert!(eval_f64("(rand([100], 7) - rand([100], 8)).abs().sum().to_float()") > 1.0);
    let m = eval_f64("rand([20000], 1).mean().to_float()");
    assert!((m - 0.5).abs() < 0.02, "uniform mean {m}");
    let s = eval_f64("let x = randn([20000], 2); (x * x).mean().to_float()");
    assert!((s - 1.0).abs() < 0.05, "normal variance {s}");
    assert!(eval_f64("rand([1000], 3).min().to_float()") >= 0.0);
    assert!(eval_f64("rand([1000], 3).max().to_float()") < 1.0);
}

#[test]
fn properties_report_shape_rank_dtype_and_device() {
    assert_eq!(eval_show("zeros([2, 3, 4]).shape"), "[2, 3, 4]");
    close(eval_f64("zeros([2, 3, 4]).rank"), 3.0);
    assert_eq!(eval_show("zeros([2]).dtype"), "f32");
    assert_eq!(eval_show("zeros([2]).to_dtype(\"f64\").dtype"), "f64");
    assert_eq!(eval_show("zeros([2]).device"), "cpu");
    close(eval_f64("zeros([2, 3]).numel()"), 6.0);
}

#[test]
fn arithmetic_works_with_tensors_ints_and_floats_on_either_side() {
    // a = [[1, 2], [3, 4]]
    let a = "let a = tensor([[1, 2], [3, 4]]);";
    close(eval_f64(&format!("{a} (a + a).sum().to_float()")), 20.0);
    close(eval_f64(&format!("{a} (a + 1).sum().to_float()")), 14.0);
    close(eval_f64(&format!("{a} (1.5 + a).sum().to_float()")), 16.0);
    close(eval_f64(&format!("{a} (a - 1).sum().to_float()")), 6.0);
    close(eval_f64(&format!("{a} (10 - a).sum().to_float()")), 30.0);
    close(eval_f64(&format!("{a} (a * a).sum().to_float()")), 30.0);
    close(eval_f64(&format!("{a} (2 * a).sum().to_float()")), 20.0);
    close(eval_f64(&format!("{a} (a / 2).sum().to_float()")), 5.0);
    close(
        eval_f64(&format!("{a} (12.0 / a).sum().to_float()")),
        12.0 + 6.0 + 4.0 + 3.0,
    );
    close(eval_f64(&format!("{a} (-a).sum().to_float()")), -10.0);
    // broadcasting a row: [[1,2],[3,4]] + [10, 20] = [[11,22],[13,24]]
    close(eval_f64(&format!("{a} (a + tensor([10, 20]))[1][1]")), 24.0);
    // matmul: [[1,2],[3,4]] x [[1],[1]] = [[3],[7]]
    close(
        eval_f64(&format!("{a} a.matmul(tensor([[1], [1]]))[1][0]")),
        7.0,
    );
}

#[test]
fn elementwise_functions_match_their_definitions() {
    close(
        eval_f64("tensor([0, 1]).exp().sum().to_float()"),
        1.0 + std::f64::consts::E,
    );
    close(
        eval_f64("tensor([1, 100]).log().sum().to_float()"),
        100f64.ln(),
    );
    close(eval_f64("tensor([4, 9]).sqrt().sum().to_float()"), 5.0);
    close(eval_f64("tensor([-2, 3]).abs().sum().to_float()"), 5.0);
    close(eval_f64("tensor([-2, 3]).relu().sum().to_float()"), 3.0);
    close(eval_f64("tensor([0]).sigmoid().to_float()"), 0.5);
    close(
        eval_f64("tensor([2]).sigmoid().to_float()"),
        1.0 / (1.0 + (-2f64).exp()),
    );
    // softmax([0, ln 3]) = [0.25, 0.75]
    close(
        eval_f64(&format!("tensor([[0, {}]]).softmax(1)[0][1]", 3f64.ln())),
        0.75,
    );
    close(
        eval_f64("randn([3, 5], 1).softmax(-1).sum(1).sum().to_float()"),
        3.0,
    );
    close(eval_f64("tensor([1, 2, 3]).pow(2).sum().to_float()"), 14.0);
    close(
        eval_f64("tensor([-1, 0.5, 2]).clamp(0, 1).sum().to_float()"),
        1.5,
    );
}

#[test]
fn reductions_work_over_everything_and_per_dimension() {
    let a = "let a = tensor([[1, 5, 3], [4, 2, 6]]);";
    close(eval_f64(&format!("{a} a.sum().to_float()")), 21.0);
    close(eval_f64(&format!("{a} a.mean().to_float()")), 3.5);
    close(eval_f64(&format!("{a} a.max().to_float()")), 6.0);
    close(eval_f64(&format!("{a} a.min().to_float()")), 1.0);
    close(eval_f64(&format!("{a} a.argmax().to_float()")), 5.0);
    assert_eq!(
        eval_show(&format!("{a} a.sum(0).to_array()")),
        "[5.0, 7.0, 9.0]"
    );
    assert_eq!(
        eval_show(&format!("{a} a.mean(1).to_array()")),
        "[3.0, 4.0]"
    );
    assert_eq!(
        eval_show(&format!("{a} a.max(0).to_array()")),
        "[4.0, 5.0, 6.0]"
    );
    assert_eq!(eval_show(&format!("{a} a.min(1).to_array()")), "[1.0, 2.0]");
    assert_eq!(eval_show(&format!("{a} a.argmax(1).to_array()")), "[1, 2]");
    assert_eq!(
        eval_show(&format!("{a} a.sum(-1).to_array()")),
        "[9.0, 12.0]"
    );
}

#[test]
fn shape_functions_rearrange_elements_correctly() {
    let a = "let a = arange(6).reshape([2, 3]);"; // [[0,1,2],[3,4,5]]
    assert_eq!(
        eval_show(&format!("{a} a.reshape([3, -1]).shape")),
        "[3, 2]"
    );
    assert_eq!(
        eval_show(&format!("{a} a.transpose(0, 1).to_array()")),
        "[[0.0, 3.0], [1.0, 4.0], [2.0, 5.0]]"
    );
    assert_eq!(
        eval_show(&format!("{a} a.unsqueeze(0).permute([2, 0, 1]).shape")),
        "[3, 1, 2]"
    );
    assert_eq!(
        eval_show(&format!("{a} a.narrow(1, 1, 2).to_array()")),
        "[[1.0, 2.0], [4.0, 5.0]]"
    );
    assert_eq!(eval_show(&format!("{a} cat([a, a], 0).shape")), "[4, 3]");
    assert_eq!(
        eval_show(&format!("{a} cat([a, a], 1)[1].to_array()")),
        "[3.0, 4.0, 5.0, 3.0, 4.0, 5.0]"
    );
    assert_eq!(
        eval_show(&format!("{a} stack([a, a], 0).shape")),
        "[2, 2, 3]"
    );
    assert_eq!(eval_show(&format!("{a} a.unsqueeze(1).shape")), "[2, 1, 3]");
    assert_eq!(
        eval_show(&format!("{a} a.unsqueeze(1).squeeze(1).shape")),
        "[2, 3]"
    );
    assert_eq!(eval_show(&format!("{a} a.flatten().shape")), "[6]");
}

#[test]
fn comparisons_give_masks_of_ones_and_zeros() {
    let a = "let a = tensor([1, 2, 3, 4]);";
    assert_eq!(
        eval_show(&format!("{a} (a > 2).to_array()")),
        "[0.0, 0.0, 1.0, 1.0]"
    );
    assert_eq!(
        eval_show(&format!("{a} (a >= 2).to_array()")),
        "[0.0, 1.0, 1.0, 1.0]"
    );
    assert_eq!(
        eval_show(&format!("{a} (a < 2).to_array()")),
        "[1.0, 0.0, 0.0, 0.0]"
    );
    assert_eq!(
        eval_show(&format!("{a} a.le(2.0).to_array()")),
        "[1.0, 1.0, 0.0, 0.0]"
    );
    assert_eq!(
        eval_show(&format!("{a} a.eq(3).to_array()")),
        "[0.0, 0.0, 1.0, 0.0]"
    );
    assert_eq!(eval_show(&format!("{a} a.ne(a).sum().to_float()")), "0.0");
    assert_eq!(
        eval_show(&format!("{a} a.gt(tensor([0, 5, 0, 5])).to_array()")),
        "[1.0, 0.0, 1.0, 0.0]"
    );
}

#[test]
fn indexing_returns_sub_tensors_and_numbers() {
    let a = "let a = arange(6).reshape([2, 3]);";
    assert_eq!(
        eval_show(&format!("{a} a[1].to_array()")),
        "[3.0, 4.0, 5.0]"
    );
    close(eval_f64(&format!("{a} a[1][2]")), 5.0);
    close(eval_f64(&format!("{a} a[-1][-3]")), 3.0);
    assert_eq!(
        eval_show("tensor([[1, 2], [3, 4]]).to_array()"),
        "[[1.0, 2.0], [3.0, 4.0]]"
    );
}

#[test]
fn printing_shows_shape_dtype_device_and_a_few_values() {
    assert_eq!(
        eval_show("tensor([1, 2.5])"),
        "Tensor[2] f32 cpu [1.0000, 2.5000]"
    );
    let big = eval_show("arange(100)");
    assert!(
        big.starts_with("Tensor[100] f32 cpu [0.0000, 1.0000, 2.0000, ..., 97.0000"),
        "{big}"
    );
    assert_eq!(eval_show("`${zeros([1])}`"), "Tensor[1] f32 cpu [0.0000]");
}

#[test]
fn bad_arguments_give_clear_errors() {
    assert!(eval_err("zeros([2, -1])").contains("non-negative"));
    assert!(eval_err("zeros([2, 3]).reshape([4, 4])").contains("cannot view shape"));
    assert!(eval_err("zeros([2, 3]).sum(5)").contains("dimension 5 out of range"));
    assert!(eval_err("zeros([2, 3])[2]").contains("index 2 out of range"));
    assert!(eval_err("zeros([2, 3]).to_float()").contains("one-element"));
    assert!(eval_err("tensor([[1, 2], [3]])").contains("ragged"));
    assert!(eval_err("zeros([2, 3]) + zeros([4])").contains("shape"));
    assert!(eval_err("cat([], 0)").contains("non-empty"));
    assert!(eval_err("zeros([2]).to_dtype(\"f8\")").contains("unknown dtype"));
}

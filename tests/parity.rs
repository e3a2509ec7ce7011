//! `pretext bench parity` on the CPU: every op and model through the composed implementation
//! (what GPUs run) equals the CPU kernels, outputs and gradients. Also the comparison helpers
//! themselves (`parity::compare` and the tests' `common::torch`): a NaN, an infinity or a
//! missing gradient anywhere must fail, with its position.

mod common;

use candle_core::{Device, Tensor};
use common::torch::{assert_close, max_abs_diff, try_max_abs_diff, try_rel_err};
use pretext::parity::compare;

#[test]
fn the_composed_paths_equal_the_cpu_kernels_for_every_op_and_model() {
    let mut reported = Vec::new();
    let checks =
        pretext::parity::parity(&Device::Cpu, None, &mut |c| reported.push(c.name.clone()));
    assert!(checks.len() >= 18);
    assert_eq!(
        reported,
        checks.iter().map(|c| c.name.clone()).collect::<Vec<_>>(),
        "every case reported as it finished, in order"
    );
    for c in &checks {
        assert!(
            c.ok,
            "{}: {:.3e} > {:e} ({})",
            c.name, c.rel_err, c.tol, c.worst
        );
    }
}

/// A [2, 3, 4] tensor of distinct values with `v` at flat index `at`.
fn with_value(at: Option<usize>, v: f32) -> Tensor {
    let mut data: Vec<f32> = (0..24).map(|i| (i as f32 * 0.37).sin()).collect();
    if let Some(i) = at {
        data[i] = v;
    }
    Tensor::from_vec(data, (2, 3, 4), &Device::Cpu).unwrap()
}

fn named(v: Vec<(&str, Option<Tensor>)>) -> Vec<(String, Option<Tensor>)> {
    v.into_iter().map(|(n, t)| (n.to_string(), t)).collect()
}

#[test]
fn parity_compare_fails_on_one_nan_or_infinity_on_either_side_and_names_its_position() {
    let clean = with_value(None, 0.0);
    let reference = named(vec![
        ("output", Some(clean.clone())),
        ("gradient of input 0", Some(clean.clone())),
    ]);
    let (e, _) = compare(&reference, &reference).unwrap();
    assert_eq!(e, 0.0);
    // Flat index 17 of [2, 3, 4] is [1, 1, 1]; index 23 (the last) is [1, 2, 3].
    for (at, pos) in [(17, "[1, 1, 1]"), (23, "[1, 2, 3]"), (0, "[0, 0, 0]")] {
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            for slot in 0..2 {
                let mut candidate = reference.clone();
                candidate[slot].1 = Some(with_value(Some(at), bad));
                let (e, worst) = compare(&candidate, &reference).unwrap();
                assert!(e.is_infinite(), "{bad} at {at} in slot {slot}: {e}");
                assert!(
                    worst.contains(pos) && worst.contains("candidate"),
                    "{bad} at {at}: {worst}"
                );
                assert!(worst.starts_with(&candidate[slot].0), "{worst}");
                // The same value in the reference fails too.
                let (e, worst) = compare(&reference, &candidate).unwrap();
                assert!(e.is_infinite() && worst.contains("reference") && worst.contains(pos));
                // And on both sides at once (NaN == NaN must not count as agreement).
                let (e, _) = compare(&candidate, &candidate).unwrap();
                assert!(e.is_infinite(), "{bad} on both sides compared equal");
            }
        }
    }
}

#[test]
fn parity_compare_fails_on_a_missing_gradient_even_when_both_paths_miss_it() {
    let t = with_value(None, 0.0);
    let full = named(vec![
        ("loss", Some(t.clone())),
        ("gradient of w", Some(t.clone())),
    ]);
    let missing = named(vec![("loss", Some(t.clone())), ("gradient of w", None)]);
    for (a, b, side) in [
        (&missing, &missing, "both"),
        (&missing, &full, "candidate"),
        (&full, &missing, "reference"),
    ] {
        let (e, worst) = compare(a, b).unwrap();
        assert!(e.is_infinite(), "{side}: {e}");
        assert!(
            worst.contains("gradient of w") && worst.contains(side),
            "{side}: {worst}"
        );
    }
    // Fewer tensors, other names or other shapes fail too.
    let (e, _) = compare(&full[..1], &full).unwrap();
    assert!(e.is_infinite());
    let renamed = named(vec![
        ("loss", Some(t.clone())),
        ("gradient of v", Some(t.clone())),
    ]);
    assert!(compare(&renamed, &full).unwrap().0.is_infinite());
    let reshaped = named(vec![
        ("loss", Some(t.clone())),
        ("gradient of w", Some(t.reshape((6, 4)).unwrap())),
    ]);
    assert!(compare(&reshaped, &full).unwrap().0.is_infinite());
}

#[test]
fn parity_compare_measures_the_relative_error_of_the_worst_tensor() {
    let t = with_value(None, 0.0);
    let reference = named(vec![
        ("output", Some(t.clone())),
        ("other", Some(t.clone())),
    ]);
    let candidate = named(vec![
        ("output", Some(t.clone())),
        ("other", Some((&t * 1.01).unwrap())),
    ]);
    let (e, worst) = compare(&candidate, &reference).unwrap();
    assert!((e - 0.01).abs() < 1e-6, "{e}");
    assert_eq!(worst, "other");
}

#[test]
fn torch_comparison_helpers_fail_on_one_nan_or_infinity_with_its_position() {
    let clean = with_value(None, 0.0);
    assert_eq!(try_rel_err(&clean, &clean), Ok(0.0));
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        for at in [0, 17, 23] {
            let dirty = with_value(Some(at), bad);
            let pos = format!("{:?}", common::torch::position(&[2, 3, 4], at));
            for (a, b, side) in [(&dirty, &clean, "result"), (&clean, &dirty, "reference")] {
                let e = try_rel_err(a, b).unwrap_err();
                assert!(e.contains(&pos) && e.contains(side), "{bad} at {at}: {e}");
                let panic = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    assert_close(a, b, 1e9, "case")
                }))
                .expect_err("assert_close passed a non-finite value");
                let msg = panic.downcast_ref::<String>().cloned().unwrap_or_default();
                assert!(msg.contains("case") && msg.contains(&pos), "{msg}");
            }
            assert!(try_rel_err(&dirty, &dirty).is_err());
            // The slice helper (preprocessing fixtures).
            let (d, c) = (
                dirty.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                clean.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            );
            for (a, b) in [(&d, &c), (&c, &d), (&d, &d)] {
                let e = try_max_abs_diff(a, b).unwrap_err();
                assert!(e.contains(&format!("index {at}")), "{e}");
            }
        }
    }
    assert_eq!(max_abs_diff(&[1.0, 2.0], &[1.5, 2.0]), 0.5);
    assert!(try_rel_err(&clean, &clean.reshape((6, 4)).unwrap()).is_err());
}

#[test]
fn a_parity_case_that_errs_or_panics_is_recorded_and_the_next_case_still_runs() {
    use pretext::parity::{ParityCase, run_cases};
    let ok = |name: &str| {
        ParityCase::new(name, 1e-6, |dev: &Device| {
            let t = Tensor::new(&[1f32, 2.0, 3.0], dev)?;
            Ok(vec![("output".to_string(), Some((t * 2.0)?))])
        })
    };
    let cases = vec![
        ok("first"),
        ParityCase::new("errs", 1e-6, |_: &Device| {
            Err(pretext::Error::msg("no kernel for this device"))
        }),
        ParityCase::new("panics", 1e-6, |_: &Device| -> pretext::Result<_> {
            panic!("driver gone")
        }),
        ok("last"),
    ];
    let mut seen = Vec::new();
    let checks = run_cases(cases, &Device::Cpu, &mut |c| seen.push(c.name.clone()));
    assert_eq!(seen, ["first", "errs", "panics", "last"]);
    assert!(checks[0].ok && checks[3].ok);
    assert!(!checks[1].ok && !checks[2].ok);
    assert!(checks[1].error.as_deref().unwrap().contains("no kernel"));
    assert!(
        checks[2]
            .error
            .as_deref()
            .unwrap()
            .contains("panicked: driver gone")
    );
    assert!(checks[1].rel_err.is_infinite());
}

#[test]
fn bench_parity_filters_cases_by_name_and_refuses_a_filter_that_matches_none() {
    let o = common::pretext(&["bench", "parity", "--filter", "conv3d"], None);
    let out = common::stdout(&o);
    assert!(o.status.success(), "{}", common::stderr(&o));
    assert!(
        out.lines().count() >= 1 && out.lines().all(|l| l.contains("conv3d")),
        "{out}"
    );
    let o = common::pretext(&["bench", "parity", "--filter", "no-such-case"], None);
    assert!(!o.status.success());
    assert!(
        common::stderr(&o).contains("no parity case matches"),
        "{}",
        common::stderr(&o)
    );
}

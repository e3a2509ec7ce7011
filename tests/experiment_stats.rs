//! The report statistics against SciPy and statsmodels (tests/fixtures/stats/stats.json, written
//! by scripts/make_stats_fixtures.py): Student-t quantiles, CDF and intervals, percentile
//! bootstrap intervals, exact sign-flip p-values and Holm adjustments, plus the edge cases.

use pretext::experiment::stats::*;
use serde_json::Value;

fn fixture() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/stats/stats.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn cases<'a>(f: &'a Value, key: &str) -> &'a [Value] {
    let cases = f[key].as_array().unwrap();
    assert!(!cases.is_empty(), "{key}");
    cases
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap()
}

/// Numbers, with JSON null read as NaN.
fn nums(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap_or(f64::NAN))
        .collect()
}

fn assert_close(actual: f64, expected: f64, tolerance: f64, what: &str) {
    assert!(
        (actual - expected).abs() <= tolerance,
        "{what}: {actual} vs {expected} (tolerance {tolerance})"
    );
}

#[test]
fn t_quantiles_match_scipy_to_1e_10_relative() {
    let f = fixture();
    for c in cases(&f, "t_quantiles") {
        let (df, level, expected) = (num(&c["df"]), num(&c["level"]), num(&c["q"]));
        let q = t_quantile((1.0 + level) / 2.0, df).unwrap();
        assert_close(
            q,
            expected,
            1e-10 * expected,
            &format!("df {df}, level {level}"),
        );
    }
}

#[test]
fn t_cdf_matches_scipy() {
    let f = fixture();
    for c in cases(&f, "t_cdf") {
        let (t, df) = (num(&c["t"]), num(&c["df"]));
        assert_close(
            t_cdf(t, df),
            num(&c["p"]),
            1e-12,
            &format!("t {t}, df {df}"),
        );
    }
}

#[test]
fn t_interval_matches_scipy() {
    let f = fixture();
    for c in cases(&f, "t_intervals") {
        let values = nums(&c["values"]);
        let ci = mean_ci_t(&values, num(&c["level"])).unwrap();
        let what = format!("{values:?} at {}", c["level"]);
        assert_eq!(ci.n, values.len());
        assert_close(ci.mean, num(&c["mean"]), 1e-12, &what);
        assert_close(ci.lo, num(&c["lo"]), 1e-9, &what);
        assert_close(ci.hi, num(&c["hi"]), 1e-9, &what);
    }
}

#[test]
fn bootstrap_interval_is_close_to_scipy_and_reproducible() {
    // SciPy draws other resamples, so the bounds agree only to Monte Carlo error: 2% of the
    // data's range at 10000 resamples.
    let f = fixture();
    for (i, c) in cases(&f, "bootstrap").iter().enumerate() {
        let values = nums(&c["values"]);
        let (level, resamples) = (num(&c["level"]), c["resamples"].as_u64().unwrap() as usize);
        let ci = mean_ci_bootstrap(&values, level, resamples, i as u64).unwrap();
        let range = values.iter().cloned().fold(f64::MIN, f64::max)
            - values.iter().cloned().fold(f64::MAX, f64::min);
        let what = format!("{values:?} at {level}");
        assert_close(ci.lo, num(&c["lo"]), 0.02 * range, &what);
        assert_close(ci.hi, num(&c["hi"]), 0.02 * range, &what);
        assert!(ci.lo <= ci.mean && ci.mean <= ci.hi, "{what}");
        assert_eq!(
            mean_ci_bootstrap(&values, level, resamples, i as u64),
            Some(ci)
        );
    }
}

#[test]
fn intervals_of_equal_values_are_degenerate() {
    let ci = mean_ci_bootstrap(&[0.7; 5], 0.95, 1000, 1).unwrap();
    assert_eq!((ci.mean, ci.lo, ci.hi, ci.n), (0.7, 0.7, 0.7, 5));
    let ci = mean_ci_t(&[0.1; 7], 0.99).unwrap();
    assert_eq!((ci.mean, ci.lo, ci.hi, ci.n), (0.1, 0.1, 0.1, 7));
}

#[test]
fn sign_flip_p_value_is_exact() {
    let f = fixture();
    for c in cases(&f, "sign_flip") {
        let diffs = paired_differences(&nums(&c["a"]), &nums(&c["b"])).unwrap();
        assert_close(
            sign_flip_p(&diffs),
            num(&c["p"]),
            1e-9,
            &format!("{diffs:?}"),
        );
    }
}

#[test]
fn sign_flip_p_value_above_twenty_pairs_is_a_close_monte_carlo_estimate() {
    // 100000 draws: the standard error is below 0.0016.
    let f = fixture();
    let c = &f["sign_flip_monte_carlo"];
    let diffs = paired_differences(&nums(&c["a"]), &nums(&c["b"])).unwrap();
    assert!(diffs.len() > EXACT_SIGN_FLIP_MAX);
    assert_close(sign_flip_p(&diffs), num(&c["p"]), 0.01, "21 pairs");
}

#[test]
fn holm_matches_statsmodels() {
    // The adjustment reproduces statsmodels bit for bit; the tolerance covers serde_json, which
    // without its float_roundtrip feature can read a 17-digit number one ulp off.
    let f = fixture();
    for c in cases(&f, "holm") {
        let (p, expected) = (nums(&c["p"]), nums(&c["adjusted"]));
        let adjusted = holm(&p);
        assert_eq!(adjusted.len(), expected.len());
        for (a, e) in adjusted.iter().zip(&expected) {
            if e.is_nan() {
                assert!(a.is_nan(), "{p:?}: {a} for NaN");
            } else {
                assert_close(*a, *e, 1e-12, &format!("{p:?}"));
            }
        }
    }
}

#[test]
fn compare_gives_the_paired_t_interval_and_sign_flip_p() {
    let f = fixture();
    let c = &cases(&f, "sign_flip")[5];
    let (arm, baseline) = (nums(&c["a"]), nums(&c["b"]));
    let diffs = paired_differences(&arm, &baseline).unwrap();
    let comparison = compare(&arm, &baseline, 0.95).unwrap();
    assert_eq!(comparison.delta, mean_ci_t(&diffs, 0.95).unwrap());
    assert_eq!(comparison.p, sign_flip_p(&diffs));
    assert_close(comparison.p, num(&c["p"]), 1e-9, "compare");
    assert_eq!(compare(&arm, &baseline[1..], 0.95), None);
}

#[test]
fn too_few_values_a_bad_level_or_non_finite_values_give_none_or_nan() {
    for values in [
        &[][..],
        &[1.0][..],
        &[1.0, f64::NAN][..],
        &[1.0, f64::INFINITY][..],
    ] {
        assert_eq!(mean_ci_t(values, 0.95), None, "{values:?}");
        assert_eq!(mean_ci_bootstrap(values, 0.95, 100, 0), None, "{values:?}");
    }
    for level in [0.0, 1.0, -0.5, f64::NAN] {
        assert_eq!(mean_ci_t(&[1.0, 2.0], level), None, "{level}");
        assert_eq!(
            mean_ci_bootstrap(&[1.0, 2.0], level, 100, 0),
            None,
            "{level}"
        );
    }
    assert_eq!(mean_ci_bootstrap(&[1.0, 2.0], 0.95, 0, 0), None);
    assert_eq!(mean_ci_t(&[f64::MAX, -f64::MAX, f64::MAX], 0.95), None);
    assert_eq!(paired_differences(&[1.0], &[1.0, 2.0]), None);
    assert!(sign_flip_p(&[]).is_nan());
    assert!(sign_flip_p(&[0.5, f64::NAN]).is_nan());
    assert!(sign_flip_p(&[f64::INFINITY, 1.0]).is_nan());
    assert!(sign_flip_p(&[f64::MAX, f64::MAX]).is_nan());
    assert_eq!(sign_flip_p(&[0.5]), 1.0);
    assert_eq!(compare(&[1.0, f64::NAN], &[0.0, 0.0], 0.95), None);
    assert_eq!(t_quantile(0.0, 3.0), None);
    assert_eq!(t_quantile(0.9, 0.0), None);
    assert!(t_cdf(f64::NAN, 3.0).is_nan());
    assert_eq!(
        (t_cdf(f64::INFINITY, 2.0), t_cdf(f64::NEG_INFINITY, 2.0)),
        (1.0, 0.0)
    );
}

#[test]
fn the_interval_round_trips_through_json() {
    let ci = mean_ci_t(&[0.5, 0.75, 1.0], 0.9).unwrap();
    let json = serde_json::to_string(&ci).unwrap();
    assert_eq!(serde_json::from_str::<Interval>(&json).unwrap(), ci);
}

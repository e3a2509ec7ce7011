//! Statistics for the experiment reports: the mean with a Student-t or percentile-bootstrap
//! confidence interval, the exact sign-flip permutation test of paired differences, and Holm's
//! step-down adjustment of a family of p-values.
//!
//! Everything is plain `f64` arithmetic on `std`, reproducible bit for bit: the bootstrap and
//! the Monte Carlo sign-flip test draw from a SplitMix64 stream implemented here, not from
//! `rand`. The references are SciPy (`scipy.stats.t`, `bootstrap`, `permutation_test`) and
//! statsmodels (`multipletests(method="holm")`); `scripts/make_stats_fixtures.py` writes them.
//!
//! Bad input never panics: the intervals are `None` for fewer than two values, a non-finite
//! value, a confidence level outside (0, 1) or an overflowing result; a p-value is NaN for no
//! or non-finite differences; Holm leaves NaN (and anything outside [0, 1]) out of the family.

/// A sample mean with a two-sided confidence interval.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Interval {
    /// The sample mean.
    pub mean: f64,
    /// Lower bound.
    pub lo: f64,
    /// Upper bound.
    pub hi: f64,
    /// Number of values.
    pub n: usize,
}

/// An arm against a baseline, paired by seed (or by test item).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Comparison {
    /// Mean of the differences arm − baseline, with its Student-t interval.
    pub delta: Interval,
    /// Two-sided sign-flip permutation p-value of the mean difference ([`sign_flip_p`]).
    pub p: f64,
}

/// Largest number of pairs whose 2^n sign flips [`sign_flip_p`] enumerates.
pub const EXACT_SIGN_FLIP_MAX: usize = 20;

/// Sign flips drawn by [`sign_flip_p`] above [`EXACT_SIGN_FLIP_MAX`] pairs.
pub const MONTE_CARLO_DRAWS: usize = 100_000;

/// Seed of the Monte Carlo sign flips, fixed so that p-values are reproducible.
const MONTE_CARLO_SEED: u64 = 0x5EED_F11B;

/// Relative tolerance under which a permuted statistic ties the observed one: SciPy's
/// `100 * eps` in `permutation_test`.
const TIE_TOLERANCE: f64 = 100.0 * f64::EPSILON;

/// Mean and two-sided Student-t confidence interval at `level` (e.g. 0.95), with n − 1 degrees
/// of freedom, as `scipy.stats.t.interval(level, n - 1, loc=mean, scale=sem)`.
///
/// `None` for fewer than two values, a non-finite value, `level` outside (0, 1) or overflow.
/// Equal values give the degenerate interval `lo == hi == mean`.
pub fn mean_ci_t(values: &[f64], level: f64) -> Option<Interval> {
    if !usable(values, level) {
        return None;
    }
    let n = values.len();
    let mean = mean(values);
    let ss: f64 = values.iter().map(|x| (x - mean) * (x - mean)).sum();
    let sem = (ss / (n - 1) as f64 / n as f64).sqrt();
    let half = t_upper_quantile((1.0 - level) / 2.0, (n - 1) as f64) * sem;
    finite(Interval {
        mean,
        lo: mean - half,
        hi: mean + half,
        n,
    })
}

/// Percentile-bootstrap confidence interval of the mean at `level`, from `resamples` resamples
/// drawn with SplitMix64 seeded by `seed` (the same seed gives the same interval).
///
/// The bounds are the (1 − level)/2 and (1 + level)/2 quantiles of the sorted resampled means
/// with linear interpolation, the rule of `scipy.stats.bootstrap(method="percentile")`. The
/// resamples are not SciPy's, so the bounds agree with SciPy's only to Monte Carlo error
/// (within 2% of the data's range at 10000 resamples for the fixture's samples).
///
/// `None` for fewer than two values, no resamples, a non-finite value, `level` outside (0, 1)
/// or overflow. Equal values give the degenerate interval `lo == hi == mean`.
pub fn mean_ci_bootstrap(
    values: &[f64],
    level: f64,
    resamples: usize,
    seed: u64,
) -> Option<Interval> {
    if !usable(values, level) || resamples == 0 {
        return None;
    }
    let mut rng = SplitMix64(seed);
    let mut means: Vec<f64> = (0..resamples)
        .map(|_| resample_mean(values, &mut rng))
        .collect();
    means.sort_by(f64::total_cmp);
    let alpha = (1.0 - level) / 2.0;
    finite(Interval {
        mean: mean(values),
        lo: quantile_sorted(&means, alpha)?,
        hi: quantile_sorted(&means, 1.0 - alpha)?,
        n: values.len(),
    })
}

/// Elementwise `a − b`; `None` when the lengths differ. Non-finite values pass through (and
/// make [`mean_ci_t`] `None` and [`sign_flip_p`] NaN downstream).
pub fn paired_differences(a: &[f64], b: &[f64]) -> Option<Vec<f64>> {
    (a.len() == b.len()).then(|| a.iter().zip(b).map(|(x, y)| x - y).collect())
}

/// Two-sided sign-flip permutation p-value of the mean of paired differences: the share of the
/// 2^n sign assignments whose |mean| reaches the observed |mean|, ties within SciPy's relative
/// `100 * eps`.
///
/// Equals `scipy.stats.permutation_test((d,), np.mean, permutation_type="samples",
/// alternative="two-sided", n_resamples=np.inf).pvalue`, which SciPy defines as
/// `min(1, 2 * min(P(T <= t), P(T >= t)))`: the sign-flip null distribution is symmetric, so
/// that is the |mean| count above. A zero mean gives 1, as does a single pair (SciPy needs two).
///
/// Up to [`EXACT_SIGN_FLIP_MAX`] pairs the enumeration is exact; above, [`MONTE_CARLO_DRAWS`]
/// random sign assignments from a fixed seed give `(1 + hits) / (1 + draws)`, SciPy's
/// estimate for random permutations. NaN for no differences, a non-finite one or overflow.
pub fn sign_flip_p(diffs: &[f64]) -> f64 {
    let observed: f64 = diffs.iter().sum();
    if diffs.is_empty() || !observed.is_finite() {
        return f64::NAN;
    }
    let threshold = observed.abs() * (1.0 - TIE_TOLERANCE);
    if diffs.len() <= EXACT_SIGN_FLIP_MAX {
        let total = 1u32 << diffs.len();
        let hits = (0..total)
            .filter(|&signs| flipped_sum(diffs, u64::from(signs)).abs() >= threshold)
            .count();
        hits as f64 / f64::from(total)
    } else {
        let mut rng = SplitMix64(MONTE_CARLO_SEED);
        let hits = (0..MONTE_CARLO_DRAWS)
            .filter(|_| random_flipped_sum(diffs, &mut rng).abs() >= threshold)
            .count();
        (1 + hits) as f64 / (1 + MONTE_CARLO_DRAWS) as f64
    }
}

/// Holm–Bonferroni step-down adjusted p-values, monotone in the raw p-values and capped at 1,
/// as `statsmodels.stats.multitest.multipletests(p, method="holm")[1]`.
///
/// Entries outside [0, 1] (NaN included) stay NaN in the output and are left out of the family:
/// the others are adjusted as if those were not there.
pub fn holm(p_values: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..p_values.len())
        .filter(|&i| (0.0..=1.0).contains(&p_values[i]))
        .collect();
    order.sort_by(|&i, &j| p_values[i].total_cmp(&p_values[j]));
    let family = order.len();
    let mut adjusted = vec![f64::NAN; p_values.len()];
    let mut running = 0.0_f64;
    for (rank, &i) in order.iter().enumerate() {
        running = running.max(p_values[i] * (family - rank) as f64);
        adjusted[i] = running.min(1.0);
    }
    adjusted
}

/// The paired comparison of `arm` against `baseline`: the mean difference with its Student-t
/// interval at `level` and the sign-flip p-value. `None` when the lengths differ or
/// [`mean_ci_t`] of the differences is `None`.
pub fn compare(arm: &[f64], baseline: &[f64], level: f64) -> Option<Comparison> {
    let diffs = paired_differences(arm, baseline)?;
    Some(Comparison {
        delta: mean_ci_t(&diffs, level)?,
        p: sign_flip_p(&diffs),
    })
}

/// Cumulative distribution function of Student's t with `df` degrees of freedom, from the
/// regularized incomplete beta function. NaN for a NaN argument or `df` not positive and finite.
pub fn t_cdf(t: f64, df: f64) -> f64 {
    if t.is_nan() || !(df > 0.0 && df.is_finite()) {
        f64::NAN
    } else if t > 0.0 {
        1.0 - t_upper_tail(t, df)
    } else {
        t_upper_tail(-t, df)
    }
}

/// Quantile of Student's t with `df` degrees of freedom (`scipy.stats.t.ppf(p, df)`), to about
/// 1e-13 relative for `df` up to 100 (1e-12 at 1000). `None` unless 0 < p < 1 and `df` is
/// positive and finite.
pub fn t_quantile(p: f64, df: f64) -> Option<f64> {
    if !(p > 0.0 && p < 1.0 && df > 0.0 && df.is_finite()) {
        return None;
    }
    Some(if p < 0.5 {
        -t_upper_quantile(p, df)
    } else {
        t_upper_quantile(1.0 - p, df)
    })
}

/// At least two values, all finite, and a level in (0, 1).
fn usable(values: &[f64], level: f64) -> bool {
    values.len() >= 2 && values.iter().all(|x| x.is_finite()) && level > 0.0 && level < 1.0
}

/// `Some(interval)` when its mean and bounds are finite.
fn finite(interval: Interval) -> Option<Interval> {
    [interval.mean, interval.lo, interval.hi]
        .iter()
        .all(|x| x.is_finite())
        .then_some(interval)
}

/// Mean as the first value plus the mean offset from it: exact for equal values. NaN if empty.
fn mean(values: &[f64]) -> f64 {
    let first = values.first().copied().unwrap_or(0.0);
    first + values.iter().map(|x| x - first).sum::<f64>() / values.len() as f64
}

/// Mean of one resample with replacement, offset from the first value like [`mean`]
/// (`below(n) < n`, so the index is in range).
fn resample_mean(values: &[f64], rng: &mut SplitMix64) -> f64 {
    let first = values.first().copied().unwrap_or(0.0);
    let offsets: f64 = (0..values.len())
        .map(|_| values[rng.below(values.len())] - first)
        .sum();
    first + offsets / values.len() as f64
}

/// Quantile `p` of sorted values with linear interpolation, positioned as SciPy's
/// `quantile(method="linear")`: `j + g = p·n + 1 − p` (1-based). `None` if empty.
fn quantile_sorted(sorted: &[f64], p: f64) -> Option<f64> {
    let last = sorted.len().checked_sub(1)?;
    let position = p * sorted.len() as f64 + (1.0 - p);
    let upper = position.floor();
    let fraction = position - upper;
    let below = *sorted.get(((upper - 1.0).max(0.0) as usize).min(last))?;
    let above = *sorted.get((upper.max(0.0) as usize).min(last))?;
    Some(below + fraction * (above - below))
}

/// Sum of the differences with those whose bit is set in `signs` negated.
fn flipped_sum(diffs: &[f64], signs: u64) -> f64 {
    diffs
        .iter()
        .enumerate()
        .map(|(i, &d)| if signs >> i & 1 == 1 { -d } else { d })
        .sum()
}

/// Sum of the differences with random signs, 64 per draw from the stream.
fn random_flipped_sum(diffs: &[f64], rng: &mut SplitMix64) -> f64 {
    diffs
        .chunks(64)
        .map(|chunk| flipped_sum(chunk, rng.next_u64()))
        .sum()
}

/// P(T > t) for t ≥ 0: half the regularized incomplete beta I_x(df/2, 1/2), x = df/(df + t²).
fn t_upper_tail(t: f64, df: f64) -> f64 {
    let t2 = t * t;
    if t2.is_infinite() {
        return 0.0;
    }
    let x = df / (df + t2);
    let y = t2 / (df + t2);
    0.5 * beta_regularized(df / 2.0, 0.5, x, y)
}

/// The t ≥ 0 with P(T > t) = `tail`, for 0 < tail ≤ 1/2: a doubling bracket, then bisection
/// down to adjacent floating-point numbers.
fn t_upper_quantile(tail: f64, df: f64) -> f64 {
    let (mut lo, mut hi) = (0.0_f64, 1.0_f64);
    while hi.is_finite() && t_upper_tail(hi, df) > tail {
        lo = hi;
        hi *= 2.0;
    }
    loop {
        let mid = lo + (hi - lo) / 2.0;
        if mid <= lo || mid >= hi {
            return mid;
        }
        if t_upper_tail(mid, df) > tail {
            lo = mid;
        } else {
            hi = mid;
        }
    }
}

/// Regularized incomplete beta I_x(a, b) for a, b > 0, given x and y = 1 − x separately (so
/// neither loses digits to cancellation); Numerical Recipes' `betai`.
fn beta_regularized(a: f64, b: f64, x: f64, y: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if y <= 0.0 {
        return 1.0;
    }
    let front = (ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * y.ln()).exp();
    if x < (a + 1.0) / (a + b + 2.0) {
        front * beta_continued_fraction(a, b, x) / a
    } else {
        1.0 - front * beta_continued_fraction(b, a, y) / b
    }
}

/// The continued fraction of the incomplete beta function by the modified Lentz method
/// (Numerical Recipes' `betacf`), to double precision.
fn beta_continued_fraction(a: f64, b: f64, x: f64) -> f64 {
    const TINY: f64 = 1e-300;
    const MAX_ITERATIONS: u32 = 10_000;
    let nonzero = |v: f64| if v.abs() < TINY { TINY } else { v };
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let mut c = 1.0;
    let mut d = 1.0 / nonzero(1.0 - qab * x / qap);
    let mut h = d;
    for m in 1..=MAX_ITERATIONS {
        let m = f64::from(m);
        let m2 = 2.0 * m;
        let even = m * (b - m) * x / ((qam + m2) * (a + m2));
        d = 1.0 / nonzero(1.0 + even * d);
        c = nonzero(1.0 + even / c);
        h *= d * c;
        let odd = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
        d = 1.0 / nonzero(1.0 + odd * d);
        c = nonzero(1.0 + odd / c);
        let step = d * c;
        h *= step;
        if (step - 1.0).abs() <= f64::EPSILON {
            break;
        }
    }
    h
}

/// ln Γ(x) for x > 0: Lanczos (g = 7, 9 terms, about 1e-15 relative), reflected below 1/2.
fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    const COEFFICIENTS: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let z = x - 1.0;
    let series = COEFFICIENTS
        .iter()
        .enumerate()
        .skip(1)
        .fold(COEFFICIENTS[0], |sum, (i, c)| sum + c / (z + i as f64));
    let t = z + G + 0.5;
    0.5 * (2.0 * std::f64::consts::PI).ln() + (z + 0.5) * t.ln() - t + series.ln()
}

/// SplitMix64 (Steele, Lea and Flood 2014): a small, fixed, well-mixed 64-bit stream.
struct SplitMix64(u64);

impl SplitMix64 {
    /// The next 64 random bits.
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in 0..n for n ≥ 1, without bias (Lemire's multiply and reject).
    fn below(&mut self, n: usize) -> usize {
        let n = n as u64;
        let threshold = n.wrapping_neg() % n;
        loop {
            let wide = u128::from(self.next_u64()) * u128::from(n);
            if wide as u64 >= threshold {
                return (wide >> 64) as usize;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_stream_is_the_reference_one() {
        let mut rng = SplitMix64(0);
        assert_eq!(rng.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(rng.next_u64(), 0x6E78_9E6A_A1B9_65F4);
    }

    #[test]
    fn ln_gamma_matches_factorials_and_half_integers() {
        for (n, factorial) in [(1, 1.0), (2, 1.0), (5, 24.0), (11, 3_628_800.0)] {
            assert!(
                (ln_gamma(f64::from(n)) - f64::ln(factorial)).abs() < 1e-13,
                "{n}"
            );
        }
        let sqrt_pi_ln = 0.5 * std::f64::consts::PI.ln();
        assert!((ln_gamma(0.5) - sqrt_pi_ln).abs() < 1e-14);
        assert!((ln_gamma(0.25) - 1.288_022_524_698_077_2).abs() < 1e-13);
    }

    #[test]
    fn t_with_one_degree_of_freedom_is_cauchy() {
        for p in [0.6, 0.9, 0.975, 0.995] {
            let cauchy = (std::f64::consts::PI * (p - 0.5)).tan();
            let q = t_quantile(p, 1.0).unwrap();
            assert!((q - cauchy).abs() <= 1e-12 * cauchy, "{p}: {q} vs {cauchy}");
            assert!((t_cdf(q, 1.0) - p).abs() < 1e-14);
        }
        assert_eq!(t_quantile(0.5, 3.0), Some(0.0));
        assert_eq!(t_quantile(0.1, 3.0), t_quantile(0.9, 3.0).map(|q| -q));
    }

    #[test]
    fn holm_is_monotone_capped_and_skips_invalid_entries() {
        let p = [0.04, 0.001, f64::NAN, 0.03, 0.5, 1.5, 0.04];
        let adjusted = holm(&p);
        assert_eq!(adjusted[1], 0.001 * 5.0);
        assert!(adjusted[2].is_nan() && adjusted[5].is_nan());
        assert_eq!(adjusted[0], adjusted[6]);
        let by_p = [1, 3, 0, 6, 4];
        assert!(by_p.windows(2).all(|w| adjusted[w[0]] <= adjusted[w[1]]));
        assert!(by_p.iter().all(|&i| (p[i]..=1.0).contains(&adjusted[i])));
        assert!(holm(&[]).is_empty());
    }

    #[test]
    fn sign_flips_above_twenty_pairs_are_drawn_reproducibly() {
        let diffs: Vec<f64> = (0..24).map(|i| f64::from(i % 5) - 1.5).collect();
        let p = sign_flip_p(&diffs);
        assert_eq!(p, sign_flip_p(&diffs));
        assert!(p > 0.0 && p <= 1.0);
        assert_eq!(sign_flip_p(&[0.0; 25]), 1.0);
    }
}

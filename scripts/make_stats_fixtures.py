#!/usr/bin/env python3
"""Writes tests/fixtures/stats/stats.json: the references for pretext::experiment::stats.

Student-t quantiles and CDF values, t confidence intervals of the mean (scipy.stats.t),
percentile-bootstrap intervals of the mean (scipy.stats.bootstrap, seeded, 10000 resamples),
exact two-sided sign-flip p-values of paired differences (scipy.stats.permutation_test with
permutation_type='samples', n_resamples=inf) and Holm adjusted p-values
(statsmodels.stats.multitest.multipletests, method='holm').

    python scripts/make_stats_fixtures.py      # needs numpy, scipy, statsmodels

For example in a virtual environment outside the repository:

    python3 -m venv /tmp/venv-stats && /tmp/venv-stats/bin/pip install numpy scipy statsmodels
    /tmp/venv-stats/bin/python scripts/make_stats_fixtures.py

JSON has no NaN: a NaN p-value is written as null.
"""
import itertools
import json
import math
import os
import sys
from fractions import Fraction

try:
    import numpy as np
    import scipy
    import statsmodels
    from scipy import stats
    from statsmodels.stats.multitest import multipletests
except ImportError as e:
    sys.exit(f"make_stats_fixtures.py needs numpy, scipy and statsmodels ({e}); "
             "pip install numpy scipy statsmodels")

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "stats")

# Samples for the intervals: sizes 2, 3, 5, 8, 12, with ties, zeros and negative values.
SAMPLES = [
    [0.71, 0.74],
    [0.0, -0.25, 0.5],
    [0.812, 0.797, 0.797, 0.845, 0.781],
    [-1.5, 0.0, 2.25, 0.0, 3.0, -0.75, 1.0, 1.0],
    [0.62, 0.655, 0.601, 0.7, 0.688, 0.62, 0.59, 0.643, 0.671, 0.612, 0.66, 0.634],
]
LEVELS = [0.9, 0.95, 0.99]
BOOTSTRAP_LEVELS = [0.9, 0.95]
BOOTSTRAP_RESAMPLES = 10000


def t_quantiles():
    return [dict(df=df, level=level, q=float(stats.t.ppf((1 + level) / 2, df)))
            for df in range(1, 101) for level in LEVELS]


def t_cdf():
    points = [(0.0, 1), (0.3, 1), (-2.5, 1), (1.0, 2), (-0.7, 3), (2.0, 4), (12.0, 5),
              (-3.1, 9), (1.7, 30), (0.05, 100), (-4.0, 100), (0.6, 2.5)]
    return [dict(t=t, df=df, p=float(stats.t.cdf(t, df))) for t, df in points]


def t_intervals():
    out = []
    for x in SAMPLES:
        a = np.asarray(x)
        for level in LEVELS:
            lo, hi = stats.t.interval(level, len(a) - 1, loc=a.mean(), scale=stats.sem(a))
            out.append(dict(values=x, level=level, mean=float(a.mean()),
                            lo=float(lo), hi=float(hi)))
    return out


def bootstrap_intervals():
    out = []
    for i, x in enumerate(SAMPLES):
        for level in BOOTSTRAP_LEVELS:
            res = stats.bootstrap((np.asarray(x),), np.mean, confidence_level=level,
                                  n_resamples=BOOTSTRAP_RESAMPLES, method="percentile",
                                  rng=np.random.default_rng(100 + i))
            ci = res.confidence_interval
            out.append(dict(values=x, level=level, resamples=BOOTSTRAP_RESAMPLES,
                            lo=float(ci.low), hi=float(ci.high)))
    return out


# Paired (a, b) of sizes 1..12: exact ties (integers, dyadic fractions), zeros, all-equal
# pairs, and Dice-like three-decimal scores.
def paired_cases():
    rng = np.random.default_rng(7)

    def scores(n, shift):
        b = np.round(rng.uniform(0.6, 0.85, n), 3)
        a = np.round(b + rng.normal(shift, 0.02, n), 3)
        return a.tolist(), b.tolist()

    return [
        ([0.8], [0.7]),
        ([0.8, 0.6], [0.7, 0.6]),
        ([2.0, 0.0, 3.0], [1.0, 1.0, 2.0]),
        ([0.5, 0.75, 0.25, 1.0], [0.25, 0.25, 0.5, 0.25]),
        ([0.7, 0.7, 0.7, 0.7, 0.7], [0.7, 0.7, 0.7, 0.7, 0.7]),
        ([0.81, 0.77, 0.85, 0.79, 0.83, 0.80], [0.78, 0.75, 0.84, 0.80, 0.79, 0.76]),
        ([2.0] * 7, [1.0] * 7),
        ([3.0, 0.0, 2.0, 1.0, 4.0, -1.0, 2.0, 2.0], [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]),
        scores(9, 0.01),
        ([0.5, 0.5, 0.25, 0.75, 0.5, 0.0, 0.125, 0.5, 0.5, 0.375],
         [0.25, 0.5, 0.5, 0.25, 0.5, 0.25, 0.125, 0.25, 0.25, 0.375]),
        scores(11, 0.0),
        scores(12, 0.015),
        ([1.0, 2.0, 1.0, 0.0, 1.0, 2.0, 1.0, 1.0, 0.0, 2.0, 1.0, 1.0],
         [0.0, 1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 2.0, 0.0, 1.0, 2.0, 0.0]),
    ]


def sign_flip_reference(d):
    """SciPy's two-sided definition, written out: 2 * min(P(T <= t + g), P(T >= t - g)) over
    all 2^n sign flips T of the mean t, with g = 100 eps |t|, clipped to 1."""
    d = np.asarray(d)
    null = np.array([np.mean(d * s) for s in itertools.product([1.0, -1.0], repeat=len(d))])
    t = np.mean(d)
    g = abs(100 * np.finfo(float).eps * t)
    less = np.count_nonzero(null <= t + g) / len(null)
    greater = np.count_nonzero(null >= t - g) / len(null)
    return min(1.0, 2 * min(less, greater))


def assert_no_near_ties(d):
    """Each sign flip's |sum| is, in exact arithmetic, either equal to the observed |sum| (to
    1e-15 relative) or farther than 1e-12 relative: any summation order and any tie tolerance
    in between gives the same p-value."""
    exact = [Fraction(x) for x in d]
    observed = abs(sum(exact))
    for signs in itertools.product([1, -1], repeat=len(d)):
        gap = abs(abs(sum(s * x for s, x in zip(signs, exact))) - observed)
        assert gap <= observed * Fraction(1, 10**15) or gap > observed * Fraction(1, 10**12), d


def sign_flip_cases():
    out = []
    for a, b in paired_cases():
        d = np.asarray(a) - np.asarray(b)
        assert_no_near_ties(d.tolist())
        reference = sign_flip_reference(d)
        if len(d) >= 2:  # SciPy needs two observations; for one, both flips give |t|: p = 1
            res = stats.permutation_test((d,), np.mean, permutation_type="samples",
                                         alternative="two-sided", n_resamples=np.inf)
            assert res.pvalue == reference, (d, res.pvalue, reference)
        out.append(dict(a=a, b=b, p=float(reference)))
    return out


def sign_flip_monte_carlo():
    """21 pairs: above the exact limit of 20, the Rust side draws 100000 sign flips."""
    rng = np.random.default_rng(21)
    b = np.round(rng.uniform(0.6, 0.85, 21), 3)
    a = np.round(b + rng.normal(0.004, 0.02, 21), 3)
    d = a - b
    res = stats.permutation_test((d,), np.mean, permutation_type="samples",
                                 alternative="two-sided", n_resamples=np.inf, batch=1 << 16)
    return dict(a=a.tolist(), b=b.tolist(), p=float(res.pvalue))


def holm_reference(p):
    """statsmodels' Holm on the non-NaN p-values; NaN stays NaN and is not in the family."""
    p = np.asarray(p, dtype=float)
    out = np.full(len(p), np.nan)
    keep = ~np.isnan(p)
    if keep.any():
        out[keep] = multipletests(p[keep], method="holm")[1]
    return out


def holm_families():
    rng = np.random.default_rng(3)
    families = [
        [0.01, 0.04, 0.03, 0.005],
        [0.02, 0.02, 0.02, 0.5, 0.01],
        [0.9, 0.95, 0.999, 0.3],
        [0.12, 0.26, 0.33, 0.999],
        [0.03],
        [],
        [0.01, math.nan, 0.04, 0.2],
        [0.0, 1.0, 0.5, 0.0],
        [0.2, 0.2, 0.2, 0.2],
        np.round(rng.uniform(0, 0.04, 20), 4).tolist(),
    ]
    nan_to_none = lambda v: [None if math.isnan(x) else float(x) for x in v]
    return [dict(p=nan_to_none(p), adjusted=nan_to_none(holm_reference(p))) for p in families]


def main():
    out = dict(
        versions=dict(python=sys.version.split()[0], numpy=np.__version__,
                      scipy=scipy.__version__, statsmodels=statsmodels.__version__),
        t_quantiles=t_quantiles(),
        t_cdf=t_cdf(),
        t_intervals=t_intervals(),
        bootstrap=bootstrap_intervals(),
        sign_flip=sign_flip_cases(),
        sign_flip_monte_carlo=sign_flip_monte_carlo(),
        holm=holm_families(),
    )
    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, "stats.json")
    with open(path, "w") as f:
        json.dump(out, f, allow_nan=False)
    print("wrote", path, os.path.getsize(path), "bytes")


if __name__ == "__main__":
    main()

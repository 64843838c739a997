"""kdcore's own statistics (no scipy at import) against scipy on many values: Student's t
distribution, the regularised incomplete beta function, the Wilcoxon signed-rank test (exact,
with ties and zeros, and the normal approximation), the paired t-test with its confidence
interval, and Spearman's ρ with its p-value."""

import itertools
import math
import random
import subprocess
import sys
import warnings

import pytest

from kdcore.results import statistics as S

scipy_stats = pytest.importorskip("scipy.stats")
scipy_special = pytest.importorskip("scipy.special")

DEGREES = [1, 2, 3, 4, 5, 7, 9, 10, 14, 19, 24, 29, 49, 99, 1000, 2.5]


def test_statistics_import_no_scipy():
    probe = "import sys, kdcore.results.statistics, kdcore.results.report; print('scipy' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_regularized_beta_equals_scipy():
    for a in (0.5, 1.0, 2.5, 7.0, 40.0, 500.0):
        for b in (0.5, 1.0, 3.0, 20.0):
            for x in (0.0, 1e-6, 0.01, 0.2, 0.5, 0.77, 0.99, 1 - 1e-9, 1.0):
                assert S.regularized_beta(a, b, x) == pytest.approx(float(scipy_special.betainc(a, b, x)), rel=1e-10, abs=1e-14)


def test_t_distribution_equals_scipy():
    for df in DEGREES:
        for t in (-80.0, -12.0, -3.5, -2.0, -1.0, -0.2, 0.0, 0.1, 0.7, 1.5, 2.3, 4.0, 9.0, 40.0, 1e4):
            assert S.t_sf(t, df) == pytest.approx(float(scipy_stats.t.sf(t, df)), rel=1e-9, abs=1e-300)
            assert S.t_cdf(t, df) == pytest.approx(float(scipy_stats.t.cdf(t, df)), rel=1e-9, abs=1e-300)
        for q in (0.0005, 0.01, 0.025, 0.1, 0.5, 0.6, 0.9, 0.95, 0.975, 0.99, 0.9995):
            assert S.t_ppf(q, df) == pytest.approx(float(scipy_stats.t.ppf(q, df)), rel=1e-9, abs=1e-12)


def _differences(rng: random.Random, n: int, ties: bool) -> list[float]:
    decimals = 1 if ties else 6
    return [round(rng.gauss(0.3, 1.0), decimals) for _ in range(n)]


def test_wilcoxon_exact_without_ties_equals_scipy_exact():
    rng = random.Random(1)
    checked = 0
    for _ in range(160):
        d = _differences(rng, rng.randint(1, S.WILCOXON_EXACT_MAX), ties=False)
        if 0.0 in d or len({abs(x) for x in d}) < len(d):
            continue
        mine = S.wilcoxon_signed_rank(d)
        reference = scipy_stats.wilcoxon(d, method="exact")
        assert mine.method == "exact" and mine.n == len(d)
        assert mine.p_value == pytest.approx(float(reference.pvalue), rel=1e-12)
        assert min(mine.statistic, mine.n * (mine.n + 1) / 2 - mine.statistic) == pytest.approx(float(reference.statistic))
        checked += 1
    assert checked > 130


def _sign_flip_p(differences: list[float]) -> float:
    """Two-sided p of W⁺ by listing all 2ⁿ sign patterns of the non-zero differences (average
    ranks for tied magnitudes): the exact conditional null distribution, computed directly."""
    nonzero = [d for d in differences if d != 0]
    magnitudes = [abs(d) for d in nonzero]
    ranks = [sum(1 for m in magnitudes if m < x) + (sum(1 for m in magnitudes if m == x) + 1) / 2 for x in magnitudes]
    observed = sum(r for r, d in zip(ranks, nonzero) if d > 0)
    every = [sum(r for r, positive in zip(ranks, signs) if positive)
             for signs in itertools.product((False, True), repeat=len(nonzero))]
    low = sum(1 for w in every if w <= observed + 1e-9) / len(every)
    high = sum(1 for w in every if w >= observed - 1e-9) / len(every)
    return min(1.0, 2 * min(low, high))


def test_wilcoxon_exact_with_ties_and_zeros_equals_the_full_sign_flip_distribution():
    """With tied magnitudes and zeros the dynamic programme is the exact conditional
    distribution: checked against every sign pattern listed, and on a few cases against
    scipy's permutation method (which lists them too)."""
    rng = random.Random(2)
    for trial in range(120):
        d = _differences(rng, rng.randint(2, 10), ties=True)
        d[0] = 0.0
        mine = S.wilcoxon_signed_rank(d)
        if mine.n == 0:
            assert mine.p_value is None
            continue
        assert mine.method == "exact" and mine.n == sum(1 for x in d if x != 0)
        assert mine.p_value == pytest.approx(_sign_flip_p(d), rel=1e-12)
        if trial < 8:
            reference = scipy_stats.wilcoxon(d, method=scipy_stats.PermutationMethod(n_resamples=math.inf))
            assert mine.p_value == pytest.approx(float(reference.pvalue), rel=1e-12)


def test_wilcoxon_normal_approximation_above_25_equals_scipy_approx():
    rng = random.Random(3)
    for _ in range(100):
        d = _differences(rng, rng.randint(26, 80), ties=rng.random() < 0.5)
        mine = S.wilcoxon_signed_rank(d)
        if mine.n <= S.WILCOXON_EXACT_MAX:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reference = scipy_stats.wilcoxon(d, method="approx")
        assert mine.method == "normal approximation"
        assert mine.p_value == pytest.approx(float(reference.pvalue), rel=1e-9)


def test_wilcoxon_hand_values():
    # n = 5, all positive: W+ = 15, P(W+ = 15) = 1/32, two-sided 1/16
    assert S.wilcoxon_signed_rank([1, 2, 3, 4, 5]).p_value == pytest.approx(1 / 16)
    assert S.wilcoxon_signed_rank([0.0, 0.0]).p_value is None
    # floats equal but for their last bits count as ties (and as zeros)
    assert S.wilcoxon_signed_rank([0.1 + 0.2 - 0.3, 1.0]).n == 1


def test_paired_difference_equals_scipy_ttest_rel():
    rng = random.Random(4)
    for trial in range(80):
        n = rng.randint(2, 30)
        seeds = list(range(n))
        base = {s: rng.uniform(60, 80) for s in seeds}
        other = {s: base[s] + rng.gauss(0.5, 1.0) for s in seeds}
        if trial % 5 == 0:  # unpaired runs on both sides
            base["extra-b"] = 70.0
            other[99] = 71.0
        result = S.paired_difference(base, other, "mse", "ce")
        x = [base[s] for s in seeds]
        y = [other[s] for s in seeds]
        reference = scipy_stats.ttest_rel(y, x)
        interval = reference.confidence_interval(0.95)
        assert result.n_pairs == n and result.seeds == seeds
        assert result.mean == pytest.approx(sum(b - a for a, b in zip(x, y)) / n, rel=1e-12)
        assert result.p_value == pytest.approx(float(reference.pvalue), rel=1e-8)
        assert result.ci95[0] == pytest.approx(float(interval.low), rel=1e-9)
        assert result.ci95[1] == pytest.approx(float(interval.high), rel=1e-9)
        assert result.t == pytest.approx(float(reference.statistic), rel=1e-9)
        diffs = [b - a for a, b in zip(x, y)]
        assert (result.wins, result.ties, result.losses) == (sum(d > 0 for d in diffs), 0, sum(d < 0 for d in diffs))
        if trial % 5 == 0:
            assert result.unpaired == {"ce": ["extra-b"], "mse": [99]}


def test_paired_difference_degenerate_cases():
    one = S.paired_difference({0: 1.0}, {0: 3.0})
    assert (one.mean, one.ci95, one.p_value, one.std) == (2.0, None, None, None)
    same = S.paired_difference({0: 1.0, 1: 2.0}, {0: 1.0, 1: 2.0})
    assert same.p_value is None and (same.wins, same.ties, same.losses) == (0, 2, 0)
    shifted = S.paired_difference({0: 1.0, 1: 2.0}, {0: 2.0, 1: 3.0})
    assert shifted.p_value == 0.0 and shifted.ci95 == (1.0, 1.0)
    none = S.paired_difference({0: 1.0}, {1: 2.0})
    assert none.n_pairs == 0 and none.mean is None and none.unpaired == {"baseline": [0], "other": [1]}


def test_spearman_and_its_p_value_equal_scipy():
    rng = random.Random(5)
    for _ in range(100):
        n = rng.randint(3, 40)
        xs = [round(rng.gauss(0, 1), 1) for _ in range(n)]
        ys = [x * rng.uniform(-1, 1) + round(rng.gauss(0, 1), 1) for x in xs]
        reference = scipy_stats.spearmanr(xs, ys)
        rho = S.spearman(xs, ys)
        if math.isnan(float(reference.statistic)):
            continue
        assert rho == pytest.approx(float(reference.statistic), rel=1e-10, abs=1e-12)
        assert S.spearman_p_value(rho, n) == pytest.approx(float(reference.pvalue), rel=1e-7, abs=1e-12)

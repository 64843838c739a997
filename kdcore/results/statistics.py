"""Statistics of finished runs, written out so that every number a report shows can be checked
by hand, and without scipy: Student's t distribution (through the regularised incomplete beta
function), the exact distribution of the Wilcoxon signed-rank statistic (by dynamic
programming, also with tied ranks) and Spearman's rank correlation. ``tests/test_statistics.py``
checks them against scipy."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

PAIRED_T_TEST = "paired t-test"
WILCOXON = "Wilcoxon signed-rank"
WILCOXON_EXACT_MAX = 25
"""Up to this many non-zero differences the Wilcoxon p-value is exact; above, the normal
approximation (with the tie correction of the variance, no continuity correction)."""
TIE_DECIMALS = 9
"""Differences are compared (zero, tied) after rounding to this many decimals, so that
accuracies that differ only in the last bits of a float count as equal."""


# --- Student's t distribution ------------------------------------------------------------------

def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, epsilon = 1e-300, 1e-16
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 10_000):
        m2 = 2 * m
        numerator = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + numerator * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + numerator / c
        c = c if abs(c) > tiny else tiny
        result *= d * c
        numerator = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + numerator * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + numerator / c
        c = c if abs(c) > tiny else tiny
        step = d * c
        result *= step
        if abs(step - 1.0) < epsilon:
            break
    return result


def regularized_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b), the regularised incomplete beta function."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(b, a, 1.0 - x) / b


def t_sf(t: float, df: float) -> float:
    """P(T > t) for Student's t with ``df`` degrees of freedom."""
    if math.isinf(t):
        return 0.0 if t > 0 else 1.0
    tail = 0.5 * regularized_beta(df / 2.0, 0.5, df / (df + t * t))
    return tail if t > 0 else 1.0 - tail


def t_cdf(t: float, df: float) -> float:
    """P(T ≤ t)."""
    return t_sf(-t, df)


def t_pdf(t: float, df: float) -> float:
    log_density = (math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
                   - (df + 1) / 2 * math.log1p(t * t / df))
    return math.exp(log_density)


def t_ppf(q: float, df: float) -> float:
    """The q-quantile of Student's t: Newton's method on the CDF, kept inside a bracket that
    bisection shrinks whenever a step would leave it (to double precision)."""
    if not 0.0 < q < 1.0:
        raise ValueError(f"quantile level {q} outside (0, 1)")
    if q == 0.5:
        return 0.0
    if q < 0.5:
        return -t_ppf(1.0 - q, df)
    low, high = 0.0, 1.0
    while t_cdf(high, df) < q:
        low, high = high, high * 2.0
    x = 0.5 * (low + high)
    for _ in range(200):
        error = t_cdf(x, df) - q
        if error == 0.0:
            return x
        if error < 0:
            low = x
        else:
            high = x
        density = t_pdf(x, df)
        step = x - error / density if density > 0 else None
        following = step if step is not None and low < step < high else 0.5 * (low + high)
        if abs(following - x) <= 1e-15 * max(1.0, abs(x)):
            return following
        x = following
    return x


def normal_sf(z: float) -> float:
    """P(Z > z) for a standard normal Z."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


# --- Wilcoxon signed-rank ----------------------------------------------------------------------

def ranks(values: list[float]) -> list[float]:
    """Ranks from 1, ties sharing their average rank."""
    order = sorted(range(len(values)), key=values.__getitem__)
    result = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for position in range(start, end + 1):
            result[order[position]] = (start + end) / 2 + 1
        start = end + 1
    return result


_ranks = ranks


@dataclass(frozen=True)
class SignedRank:
    statistic: float
    """W⁺, the sum of the ranks of the positive differences."""
    p_value: float | None
    method: str
    """``exact`` or ``normal approximation``; ``none`` without a non-zero difference."""
    n: int
    """Non-zero differences (zeros are dropped, Wilcoxon's convention)."""


def wilcoxon_signed_rank(differences: list[float]) -> SignedRank:
    """Two-sided Wilcoxon signed-rank test of ``differences`` against zero. Zeros are dropped;
    tied magnitudes get their average rank. Exact for up to :data:`WILCOXON_EXACT_MAX`
    non-zero differences: the null distribution of W⁺ over all 2ⁿ sign patterns, counted by
    dynamic programming over the doubled (integer) ranks, so ties are exact too."""
    rounded = [round(d, TIE_DECIMALS) for d in differences]
    nonzero = [d for d in rounded if d != 0.0]
    n = len(nonzero)
    if n == 0:
        return SignedRank(0.0, None, "none", 0)
    magnitude_ranks = ranks([abs(d) for d in nonzero])
    w_plus = sum(r for r, d in zip(magnitude_ranks, nonzero) if d > 0)
    total = n * (n + 1) / 2
    if n <= WILCOXON_EXACT_MAX:
        doubled = [round(2 * r) for r in magnitude_ranks]
        counts = [0] * (sum(doubled) + 1)
        counts[0] = 1
        for rank in doubled:  # each rank is in W⁺ or not
            for s in range(len(counts) - 1, rank - 1, -1):
                counts[s] += counts[s - rank]
        observed = round(2 * min(w_plus, total - w_plus))
        lower_tail = sum(counts[: observed + 1]) / 2 ** n
        return SignedRank(w_plus, min(1.0, 2 * lower_tail), "exact", n)
    mean = total / 2
    tie_sizes: dict[float, int] = {}
    for r in magnitude_ranks:
        tie_sizes[r] = tie_sizes.get(r, 0) + 1
    variance = n * (n + 1) * (2 * n + 1) / 24 - sum(t ** 3 - t for t in tie_sizes.values()) / 48
    z = (w_plus - mean) / math.sqrt(variance)
    return SignedRank(w_plus, min(1.0, 2 * normal_sf(abs(z))), "normal approximation", n)


# --- paired differences ------------------------------------------------------------------------

@dataclass
class PairedDifference:
    """``other − baseline`` over the seeds both have: the paired t-test's mean, 95% confidence
    interval and p-value, the Wilcoxon signed-rank p-value, wins/ties/losses. Seeds with only
    one side are listed as unpaired and take no part."""

    value: str
    baseline: str
    seeds: list = field(default_factory=list)
    differences: list[float] = field(default_factory=list)
    unpaired: dict[str, list] = field(default_factory=dict)

    @property
    def n_pairs(self) -> int:
        return len(self.differences)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.differences) if self.differences else None

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.differences) if self.n_pairs > 1 else None

    @property
    def t(self) -> float | None:
        if self.n_pairs < 2:
            return None
        if self.std == 0:
            return None if self.mean == 0 else math.copysign(math.inf, self.mean)
        return self.mean / (self.std / math.sqrt(self.n_pairs))

    @property
    def df(self) -> int | None:
        return self.n_pairs - 1 if self.n_pairs > 1 else None

    @property
    def ci95(self) -> tuple[float, float] | None:
        if self.n_pairs < 2:
            return None
        half = t_ppf(0.975, self.n_pairs - 1) * self.std / math.sqrt(self.n_pairs)
        return self.mean - half, self.mean + half

    @property
    def p_value(self) -> float | None:
        """Two-sided p-value of the paired t-test (``None`` with fewer than two pairs or with
        every difference zero)."""
        t = self.t
        return None if t is None else min(1.0, 2 * t_sf(abs(t), self.df))

    @property
    def wilcoxon(self) -> SignedRank:
        return wilcoxon_signed_rank(self.differences)

    def _signs(self) -> list[int]:
        rounded = [round(d, TIE_DECIMALS) for d in self.differences]
        return [(d > 0) - (d < 0) for d in rounded]

    @property
    def wins(self) -> int:
        return self._signs().count(1)

    @property
    def ties(self) -> int:
        return self._signs().count(0)

    @property
    def losses(self) -> int:
        return self._signs().count(-1)

    def as_dict(self) -> dict:
        wilcoxon = self.wilcoxon
        ci = self.ci95
        return {
            "value": self.value, "baseline": self.baseline,
            "mean": self.mean, "std": self.std, "ci95": list(ci) if ci else None,
            "t": None if self.t is None or math.isinf(self.t) else self.t, "df": self.df,
            "p_value": self.p_value, "test": PAIRED_T_TEST,
            "wilcoxon_p": wilcoxon.p_value, "wilcoxon_statistic": wilcoxon.statistic,
            "wilcoxon_method": wilcoxon.method,
            "wins": self.wins, "ties": self.ties, "losses": self.losses, "n_pairs": self.n_pairs,
            "seeds": list(self.seeds), "differences": list(self.differences),
            "unpaired": {k: list(v) for k, v in self.unpaired.items()},
        }


def paired_difference(baseline: dict, other: dict, value: str = "other", baseline_name: str = "baseline") -> PairedDifference:
    """``other[seed] − baseline[seed]`` for the seeds in both (dicts seed → value)."""
    common = [seed for seed in other if seed in baseline]
    common.sort(key=_seed_order)
    result = PairedDifference(value, baseline_name, common, [other[s] - baseline[s] for s in common])
    result.unpaired = {
        baseline_name: sorted((s for s in baseline if s not in other), key=_seed_order),
        value: sorted((s for s in other if s not in baseline), key=_seed_order),
    }
    return result


def _seed_order(seed) -> tuple:
    return (0, seed, "") if isinstance(seed, (int, float)) else (1, 0, str(seed))


# --- rank correlation --------------------------------------------------------------------------

def spearman(xs: list[float], ys: list[float]) -> float:
    """Pearson correlation of the ranks (ties get their average rank)."""
    if len(xs) < 2:
        return float("nan")
    rx, ry = ranks(xs), ranks(ys)
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    covariance = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    spread = math.sqrt(sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))
    return covariance / spread if spread else float("nan")


def spearman_p_value(rho: float, n: int) -> float | None:
    """Two-sided p-value of Spearman's ρ from the t distribution with n − 2 degrees of freedom
    (as scipy's ``spearmanr``)."""
    if n < 3 or math.isnan(rho):
        return None
    if abs(rho) >= 1.0:
        return 0.0
    t = rho * math.sqrt((n - 2) / ((1.0 + rho) * (1.0 - rho)))
    return min(1.0, 2 * t_sf(abs(t), n - 2))


def mean_std(values: list[float]) -> tuple[float, float | None, int]:
    """Mean, sample standard deviation (``None`` for one value: there is none) and count."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None, len(values)


def format_p(p: float | None) -> str:
    if p is None:
        return "–"
    if p >= 0.01:
        return f"{p:.2f}"
    if p >= 0.001:
        return f"{p:.3f}"
    return f"{p:.0e}"

"""Statistics: medians with 95% confidence intervals, and A/B comparisons.

Method (stated in every report header): the point estimate is the median of all values
(every worker process's values pooled); its confidence interval is a percentile
bootstrap (scipy.stats.bootstrap, 2000 resamples, fixed seed so reports are
reproducible).  A comparison is the ratio of medians new/base with a two-sample
percentile bootstrap CI, and a Mann-Whitney U test (scipy.stats.mannwhitneyu,
two-sided): significant when p < alpha AND the ratio's CI excludes 1.  Mann-Whitney needs
no normality, which timings rarely have (one slow process skews them).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

CONFIDENCE = 0.95
RESAMPLES = 2000
SEED = 20261125
METHOD = "median, 95% boot CI, MWU p<.05"


@dataclass(frozen=True)
class Estimate:
    median: float
    lo: float
    hi: float
    n: int


@dataclass(frozen=True)
class Change:
    """new vs base: ratio of medians (new/base) with its CI, and the test."""

    base: Estimate
    new: Estimate
    ratio: float
    lo: float
    hi: float
    p: float
    significant: bool

    @property
    def percent(self) -> float:
        return (self.ratio - 1) * 100


def _bootstrap(data: tuple, statistic) -> tuple[float, float]:
    if all(np.ptp(d) == 0 for d in data) or min(len(d) for d in data) < 2:
        v = float(statistic(*data, axis=-1))
        return v, v
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # degenerate resamples on tiny n are expected
        res = sps.bootstrap(data, statistic, confidence_level=CONFIDENCE, n_resamples=RESAMPLES,
                            method="percentile", random_state=np.random.default_rng(SEED), vectorized=True)
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def estimate(values: np.ndarray) -> Estimate:
    """Median and its 95% percentile-bootstrap CI."""
    lo, hi = _bootstrap((values,), lambda x, axis: np.median(x, axis=axis))
    return Estimate(float(np.median(values)), lo, hi, len(values))


def _ratio(a, b, axis):
    return np.median(b, axis=axis) / np.median(a, axis=axis)


def compare(base: np.ndarray, new: np.ndarray, alpha: float = 0.05) -> Change:
    """Ratio new/base of medians, its CI, and the Mann-Whitney U verdict."""
    lo, hi = _bootstrap((base, new), _ratio)
    if np.ptp(np.concatenate([base, new])) == 0:
        p = 1.0
    else:
        p = float(sps.mannwhitneyu(base, new, alternative="two-sided").pvalue)
    ratio = float(np.median(new) / np.median(base))
    return Change(estimate(base), estimate(new), ratio, lo, hi, p, p < alpha and not lo <= 1.0 <= hi)


def geomean(ratios: list[float]) -> float:
    """Geometric mean of ratios (the right mean for ratios: symmetric in up and down)."""
    return float(sps.gmean(ratios)) if ratios else float("nan")

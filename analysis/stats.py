"""Statistics over the hierarchy a dmtbench result has: files (`bench run` invocations)
contain worker processes (pyperf runs) contain values.

Values inside one process are not independent replicates (they share its mapping, CPU
state and moment), so every estimate and test works on per-process medians, and, when a
side has several files, on per-file summaries (Kalibera & Jones, "Rigorous Benchmarking in
Reasonable Time", 2013: the invocation is the unit of replication).

- Estimate of one side: the median of its per-process medians.
- 95% CI: a cluster (hierarchical) percentile bootstrap: resample files, then processes
  within each file, then values within each process; the statistic is recomputed each
  time (RESAMPLES, fixed seed: reports are reproducible).
- Test: a t-test on the log of the per-file summaries (Welch; Student's pooled variance
  when one side has a single file, whose own spread is then unknown), so the variation
  between invocations is in the test.  One file a side cannot show that variation (on
  this project's shared VM same-commit files differ by 10-50% where their processes agree
  within a file), so it gets no verdict unless the caller declares the processes to be
  the replicates (per_process: a quiet, dedicated machine): then Mann-Whitney U (two-
  sided, exact) on the per-process medians; no normality needed, one slow process
  cannot dominate it.
- Family: Holm's step-down adjustment across the rows of one comparison; a verdict needs
  the adjusted p < alpha.  When even perfectly separated data could not reach that, the
  row says "too few runs for a verdict (need N)".
- Direction: every ratio is a speedup, > 1 = better: new/base for rates (GB/s, M/s),
  base/new for latencies (ns).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

CONFIDENCE = 0.95
RESAMPLES = 2000
SEED = 20261125
METHOD_RUNS = "per-process medians, cluster-boot CI, MWU, Holm"
METHOD_FILES = "file medians, 3-level boot CI, t on logs, Holm"
METHOD_ONE = "process medians, cluster-boot CI; 1 file: no test"

# A side: files -> processes -> values, each process an array in the reported unit.
Side = list[list[np.ndarray]]


@dataclass(frozen=True)
class Estimate:
    median: float
    lo: float
    hi: float
    n: int             # processes
    rsd: float = 0.0   # relative std dev of the replicates: file medians, or process medians (one file)


@dataclass(frozen=True)
class Change:
    """new vs base: speedup (> 1 = better) with its CI, the raw test p and the Holm p."""

    base: Estimate
    new: Estimate
    speedup: float
    lo: float
    hi: float
    p: float
    p_adj: float = float("nan")
    verdict: str = "same"        # better | worse | same | too few
    change: float = 0.0          # raw change of the value, new/base - 1

    @property
    def percent(self) -> float:
        return self.change * 100


def run_medians(side: Side) -> np.ndarray:
    return np.array([np.median(r) for f in side for r in f])


def file_medians(side: Side) -> np.ndarray:
    return np.array([np.median([np.median(r) for r in f]) for f in side])


def point(side: Side) -> float:
    """The median of every per-process median on the side."""
    return float(np.median(run_medians(side)))


def _boot_side(side: Side, rng: np.random.Generator, n: int) -> np.ndarray:
    """n hierarchical bootstrap replicates of point(side)."""
    runs = [r for f in side for r in f]
    width = max(len(r) for r in runs)
    vals = np.full((len(runs), width), np.nan)
    for i, r in enumerate(runs):
        vals[i, :len(r)] = r
    counts = np.array([len(r) for r in runs])
    # Level 3: values within each process -> n x processes resampled process medians.
    pick = (rng.random((n, len(runs), width)) * counts[None, :, None]).astype(int)
    mask = np.arange(width)[None, None, :] < counts[None, :, None]
    boot_runs = np.where(mask, vals[np.arange(len(runs))[None, :, None], pick], np.nan)
    run_meds = np.nanmedian(boot_runs, axis=2) if width > 1 else boot_runs[:, :, 0]
    # Levels 1 and 2: files, then processes within each chosen file.
    starts = np.cumsum([0] + [len(f) for f in side])
    nfile = len(side)
    files = rng.integers(0, nfile, (n, nfile)) if nfile > 1 else np.zeros((n, 1), dtype=int)
    most = max(len(f) for f in side)
    sizes = np.diff(starts)[files]                                  # n x nfile
    within = (rng.random((n, nfile, most)) * sizes[:, :, None]).astype(int)
    idx = starts[files][:, :, None] + within                        # n x nfile x most
    keep = np.arange(most)[None, None, :] < sizes[:, :, None]
    chosen = np.where(keep, run_meds[np.arange(n)[:, None, None], idx], np.nan)
    return np.nanmedian(chosen.reshape(n, -1), axis=1)


def _rng() -> np.random.Generator:
    return np.random.default_rng(SEED)


def _interval(reps: np.ndarray) -> tuple[float, float]:
    alpha = (1 - CONFIDENCE) / 2
    return float(np.quantile(reps, alpha)), float(np.quantile(reps, 1 - alpha))


def estimate_side(side: Side) -> Estimate:
    """Median of process medians with its hierarchical bootstrap CI."""
    meds = run_medians(side)
    m = point(side)
    if len(meds) < 2 or np.ptp(meds) == 0 and all(np.ptp(r) == 0 for f in side for r in f):
        return Estimate(m, m, m, len(meds), 0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # all-NaN slices cannot occur; nanmedian warns anyway
        lo, hi = _interval(_boot_side(side, _rng(), RESAMPLES))
    top = file_medians(side) if len(side) > 1 else meds  # the spread of the replicates
    rsd = float(np.std(top, ddof=1) / np.mean(top)) if len(top) > 1 else 0.0
    return Estimate(m, lo, hi, len(meds), rsd)


def estimate(runs: tuple | list) -> Estimate:
    """Estimate for one file's processes (a Series' runs)."""
    return estimate_side([list(runs)])


def speedup(base: float, new: float, higher_is_better: bool) -> float:
    """new relative to base as a speedup: > 1 = better."""
    return new / base if higher_is_better else base / new


def min_runs(alpha: float, family: int) -> int:
    """Processes per side that MWU needs before perfectly separated data can reach a
    Holm-adjusted p < alpha in a family of `family` rows (the first Holm step)."""
    n = 2
    while 2 / math.comb(2 * n, n) >= alpha / max(family, 1):
        n += 1
    return n


def p_value(base: Side, new: Side, per_process: bool = False) -> float:
    """The two-sided test at the level the data has (see the module docstring); NaN for
    one file a side unless per_process."""
    if len(base) == 1 and len(new) == 1:
        if not per_process:
            return float("nan")
        a, b = run_medians(base), run_medians(new)
        if np.ptp(np.concatenate([a, b])) == 0:
            return 1.0
        return float(sps.mannwhitneyu(a, b, alternative="two-sided", method="exact").pvalue)
    a, b = np.log(file_medians(base)), np.log(file_medians(new))
    if np.ptp(np.concatenate([a, b])) == 0:
        return 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = sps.ttest_ind(a, b, equal_var=min(len(a), len(b)) < 2).pvalue
    return float(p) if np.isfinite(p) else 1.0


def enough(base: Side, new: Side, alpha: float, family: int, per_process: bool = False) -> str | None:
    """None when a verdict is possible, else why not ('need N')."""
    if len(base) == 1 and len(new) == 1:
        if not per_process:
            return "need 2 files a side, or --per-process"
        n1, n2 = len(base[0]), len(new[0])
        if 2 / math.comb(n1 + n2, n1) < alpha / max(family, 1):
            return None
        return f"need {min_runs(alpha, family)} processes per side, have {n1} and {n2}"
    return None


def holm(ps: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error control, any dependence)."""
    order = sorted(range(len(ps)), key=lambda i: ps[i])
    out, running = [1.0] * len(ps), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(ps) - rank) * ps[i]))
        out[i] = running
    return out


def compare_sides(base: Side, new: Side, higher_is_better: bool, with_ci: bool = True,
                  per_process: bool = False) -> Change:
    """One row, before the family adjustment: speedup, its CI (optional: it costs a
    bootstrap) and the raw p."""
    b, n = point(base), point(new)
    if with_ci:
        eb, en = estimate_side(base), estimate_side(new)
        rng = _rng()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rb, rn = _boot_side(base, rng, RESAMPLES), _boot_side(new, rng, RESAMPLES)
        lo, hi = _interval(speedup(rb, rn, higher_is_better))
    else:
        eb, en = Estimate(b, b, b, len(run_medians(base))), Estimate(n, n, n, len(run_medians(new)))
        lo = hi = float("nan")
    p = p_value(base, new, per_process)
    return Change(eb, en, speedup(b, n, higher_is_better), lo, hi, p, change=n / b - 1)


def decide(changes: list[Change], alpha: float, short: list[str | None]) -> list[Change]:
    """Holm across the rows; a row with too few replicates gets no verdict."""
    adj = holm([1.0 if math.isnan(c.p) else c.p for c in changes])
    out = []
    for c, p, why in zip(changes, adj, short):
        verdict = "too few" if why else ("same" if p >= alpha else ("better" if c.speedup > 1 else "worse"))
        out.append(Change(c.base, c.new, c.speedup, c.lo, c.hi, c.p, p, verdict, c.change))
    return out


def paired_speedups(ref: dict[int, float], other: dict[int, float], higher_is_better: bool) -> np.ndarray:
    """Per-round speedups of `other` over `ref` (round -> process median): processes of
    one interleaved round ran seconds apart, so drift cancels in the ratio."""
    common = sorted(set(ref) & set(other))
    return np.array([speedup(ref[k], other[k], higher_is_better) for k in common])


def paired_estimate(ratios: np.ndarray) -> Estimate:
    """Median of per-round ratios with a percentile bootstrap over rounds."""
    m = float(np.median(ratios))
    if len(ratios) < 2 or np.ptp(ratios) == 0:
        return Estimate(m, m, m, len(ratios))
    reps = np.median(ratios[_rng().integers(0, len(ratios), (RESAMPLES, len(ratios)))], axis=1)
    lo, hi = _interval(reps)
    return Estimate(m, lo, hi, len(ratios))


def geomean(ratios: list[float]) -> float:
    """Geometric mean of ratios (the right mean for ratios: symmetric in up and down)."""
    return float(sps.gmean(ratios)) if ratios else float("nan")


# track's gate: the newest file against a short history (docs/statistics.md).
PRIOR_RSD = 0.02   # between-run spread assumed before any history is seen (2%)
PRIOR_DF = 4       # ... worth this many files of evidence
MEDIAN_SE = 1.2533  # se(median) / se(mean) for normal data: sqrt(pi / 2)


@dataclass(frozen=True)
class Prediction:
    """Where the newest file's log summary was expected, and how surprising it is."""

    center: float   # mean log summary of the history files
    sd: float       # sd of the prediction (log units = relative)
    df: int         # degrees of freedom of that sd
    z: float        # (newest - center) / sd
    p: float        # two-sided, Student t with df
    between: float  # the history's between-file sd (log), 0 with one file
    floor: float    # the within-file floor that applied (log)

    def half_width(self, alpha: float) -> float:
        """Relative half-width of the two-sided (1 - alpha) prediction interval."""
        return math.expm1(float(sps.t.ppf(1 - alpha / 2, self.df)) * self.sd)


def within_se(process_medians: np.ndarray) -> float:
    """Standard error of one file's summary (a median of process medians, in logs) from
    the spread between its processes: a floor under the between-file spread, which
    contains it.  The spread is robust (1.4826 MAD), as the median it describes is: one
    disturbed process among eight barely moves a file's summary, so it must not widen
    the floor either.  0 for a file with one process."""
    logs = np.log(np.asarray(process_medians, dtype=float))
    if len(logs) < 2:
        return 0.0
    rsd = 1.4826 * float(np.median(np.abs(logs - np.median(logs))))
    return MEDIAN_SE * rsd / math.sqrt(len(logs))


def predict(history: list[np.ndarray], newest: np.ndarray, prior_rsd: float = PRIOR_RSD,
            prior_df: int = PRIOR_DF) -> Prediction:
    """The newest file's summary against a prediction interval from `history` (one array
    of process medians per file, oldest first).  The files are the replicates: their
    log summaries give a between-file variance, pooled with a prior (prior_df pseudo-
    files at prior_rsd, which is also a minimum: near-identical files are not a hair
    trigger), floored by the spread between processes inside the files (all H + 1 of
    them, pooled).
    Predictive sd = sqrt(var * (1 + 1/H)), Student t with prior_df + H - 1 degrees of
    freedom."""
    logs = np.log([np.median(h) for h in history])
    h = len(logs)
    between = float(np.std(logs, ddof=1)) if h > 1 else 0.0
    prior = math.log1p(prior_rsd)
    pooled = (prior_df * prior ** 2 + (h - 1) * between ** 2) / (prior_df + h - 1)
    # The within-file floor pools every file, the newest included: its own four or eight
    # processes are too few to set its spread alone, and one wide file widens the floor.
    floor = float(np.sqrt(np.mean([within_se(x) ** 2 for x in [*history, newest]])))
    # The prior is also a minimum: identical files (or a long run of them) never make the
    # interval narrower than a run-to-run spread of prior_rsd.
    var = max(pooled, prior ** 2, floor ** 2)
    sd = math.sqrt(var * (1 + 1 / h))
    center = float(np.mean(logs))
    z = (math.log(float(np.median(newest))) - center) / sd
    df = prior_df + h - 1
    return Prediction(center, sd, df, z, float(2 * sps.t.sf(abs(z), df)), between, floor)

"""analysis.stats: the process is the unit, Holm across rows, speedups > 1 = better."""
import numpy as np
import pytest

from scipy import stats as sps

from analysis import stats


def test_holm_matches_the_hand_computation():
    # sorted: .005*4=.02, .01*3=.03, .03*2=.06, .04*1=.04 -> monotone: .06
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([0.5]) == [0.5] and stats.holm([0.9, 0.9]) == [1.0, 1.0]


def test_speedup_is_direction_aware():
    assert stats.speedup(2.0, 1.0, higher_is_better=True) == 0.5    # GB/s halved: worse
    assert stats.speedup(2.0, 1.0, higher_is_better=False) == 2.0   # ns halved: better


def test_too_few_processes_is_exact():
    # Holm's first step over 9 rows needs p < .05/9; MWU's smallest p is 2/C(2n, n).
    assert stats.min_runs(0.05, 9) == 6 and stats.min_runs(0.05, 1) == 4
    four, eight = [[np.ones(1)] * 4], [[np.ones(1)] * 8]
    assert "need 6 processes per side, have 4 and 4" in stats.enough(four, four, 0.05, 9, per_process=True)
    assert stats.enough(eight, eight, 0.05, 9, per_process=True) is None
    # One file a side cannot show how much runs differ: no verdict without --per-process.
    assert stats.enough(eight, eight, 0.05, 9) == "need 2 files a side, or --per-process"
    assert stats.enough(eight, [*eight, *eight], 0.05, 9) is None


def _side(process_means, values_per_process, spread, rng):
    return [[m + spread * rng.standard_normal(values_per_process) for m in process_means]]


def test_ci_comes_from_processes_not_from_values():
    """Eight processes whose means scatter by +-5% with 200 tight values each: the CI must
    reflect the 5% between processes, however many values each process took."""
    rng = np.random.default_rng(1)
    means = 100 * (1 + 0.05 * rng.standard_normal(8))
    side = _side(means, 200, 0.01, rng)
    e = stats.estimate_side(side)
    assert e.n == 8 and (e.hi - e.lo) / e.median > 0.03
    pooled = np.concatenate(side[0])  # what the first version did: every value independent
    naive = np.quantile([np.median(rng.choice(pooled, pooled.size)) for _ in range(500)], [0.025, 0.975])
    assert (naive[1] - naive[0]) < (e.hi - e.lo) / 3


def test_process_level_test_is_not_fooled_by_many_values():
    """Same process distribution on both sides, many values per process: no verdict."""
    rng = np.random.default_rng(2)
    flagged = 0
    for _ in range(40):
        a = _side(100 * (1 + 0.05 * rng.standard_normal(8)), 50, 0.2, rng)
        b = _side(100 * (1 + 0.05 * rng.standard_normal(8)), 50, 0.2, rng)
        flagged += stats.p_value(a, b) < 0.05
    assert flagged <= 6  # about 2 expected at alpha .05


def test_several_files_use_the_file_level():
    rng = np.random.default_rng(3)
    files = [_side([100 * f] * 8, 1, 0.1, rng)[0] for f in (0.95, 1.0, 1.05)]
    shifted = [[r * 1.3 for r in f] for f in files]
    assert stats.p_value(files, shifted) < 0.01
    assert stats.p_value(files, files) == 1.0
    change = stats.compare_sides(files, shifted, higher_is_better=True)
    assert change.speedup == pytest.approx(1.3) and change.lo <= 1.3 <= change.hi


def test_decide_gives_verdicts_only_after_holm():
    base = stats.Estimate(1, 1, 1, 8)
    rows = [stats.Change(base, base, s, s, s, p) for s, p in ((1.2, 0.001), (0.8, 0.02), (1.1, 0.9))]
    out = stats.decide(rows, 0.05, [None, None, None])
    assert [c.p_adj for c in out] == pytest.approx([0.003, 0.04, 0.9])  # 3 x .001, 2 x .02, 1 x .9
    assert [c.verdict for c in out] == ["better", "worse", "same"]
    assert stats.decide(rows, 0.03, [None, None, None])[1].verdict == "same"
    assert stats.decide(rows, 0.05, ["need 6", None, None])[0].verdict == "too few"


def test_paired_speedups_cancel_a_slow_round():
    ref = {1: 10.0, 2: 20.0, 3: 10.0}      # round 2 was slow for everyone
    other = {1: 20.0, 2: 40.0, 3: 20.0}
    ratios = stats.paired_speedups(ref, other, higher_is_better=True)
    assert list(ratios) == [2.0, 2.0, 2.0]
    e = stats.paired_estimate(ratios)
    assert e.median == e.lo == e.hi == 2.0


def test_prediction_without_prior_or_floor_is_the_textbook_interval():
    """prior_df=0 and processes that agree exactly: the newest value against the mean of
    H file summaries with sd s*sqrt(1+1/H) and H-1 degrees of freedom (hand formula)."""
    summaries = [10.0, 10.4, 9.8, 10.1]
    hist = [np.full(4, v) for v in summaries]
    p = stats.predict(hist, np.full(4, 11.0), prior_df=0)
    y = np.log(summaries)
    t = (np.log(11.0) - y.mean()) / (y.std(ddof=1) * np.sqrt(1 + 1 / 4))
    assert p.df == 3 and abs(p.z - t) < 1e-12
    assert abs(p.p - 2 * sps.t.sf(abs(t), 3)) < 1e-12


def test_prediction_prior_and_process_floor():
    """Identical files give no zero-width interval (the prior), and a wide spread between
    the processes inside the files widens it (the floor), never the reverse."""
    same = [np.array([10.0, 10.0, 10.0, 10.0])] * 3
    tight = stats.predict(same, np.full(4, 10.35))
    assert tight.between == 0 and tight.p > 0.05 and tight.df == stats.PRIOR_DF + 2
    assert abs(tight.sd - np.log1p(stats.PRIOR_RSD) * np.sqrt(4 / 3)) < 1e-12
    noisy = [np.array([8.0, 9.0, 11.0, 12.0]) * k for k in (1.0, 1.0, 1.0)]
    wide = stats.predict(noisy, np.array([8.0, 9.0, 11.0, 12.0]) * 1.35)
    assert wide.floor > np.log1p(stats.PRIOR_RSD) and wide.sd > tight.sd
    # One wild process among eight moves a median little: it must not widen the floor much.
    calm = np.array([10.0, 10.1, 9.9, 10.05, 9.95, 10.02, 9.98, 10.0])
    assert stats.within_se(np.append(calm[:-1], 3.0)) < 2 * stats.within_se(calm)
    assert stats.within_se(np.array([5.0])) == 0.0

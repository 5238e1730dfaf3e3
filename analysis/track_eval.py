"""Measure the error rates of `compare` and `track` on a series of same-commit runs:

    python -m analysis.track_eval results/<machine>/ [--shifts 5,10,25] [--sides 1,3] [--windows 3,5,10]

Nothing changed between the runs, so every verdict on a pair of them is a false positive.
compare, k files per side: every pair of disjoint groups of k files (a fixed-seed sample
of at most SAMPLE) is compared; the family-wise false-positive rate is the share of
comparisons with any verdict.  Detection: the same comparisons with one benchmark of the
new side made S % worse (its real values scaled), counting how often exactly that row
says "worse".  track, for each history length W: every run after the first W is tracked
as if it were the newest, against the W runs before it; detection plants S % in the
newest run's benchmarks, one at a time, and is also given over the trials whose history
agrees within AGREE % (the goal's condition).
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import random
from pathlib import Path

import numpy as np

from analysis import compare, stats, track
from analysis.load import Run

SAMPLE = 100
SEED = 20261125


def worsen(run: Run, name: str, percent: float) -> Run:
    """The run with one benchmark's real values made `percent` worse."""
    s = run.series[name]
    factor = 1 / (1 + percent / 100) if s.higher_is_better else 1 + percent / 100
    return dataclasses.replace(run, series={**run.series, name: s.scaled(factor)})


def _splits(runs: list[Run], k: int) -> list[tuple[list[Run], list[Run]]]:
    """Disjoint (base, new) groups of k files each; a fixed-seed sample when many."""
    groups = list(itertools.combinations(range(len(runs)), k))
    pairs = [(a, b) for a in groups for b in groups if a < b and not set(a) & set(b)]
    if len(pairs) > SAMPLE:
        pairs = random.Random(SEED).sample(pairs, SAMPLE)
    return [([runs[i] for i in a], [runs[i] for i in b]) for a, b in pairs]


def _row_p(base: list[Run], new: list[Run], name: str, per_process: bool) -> float:
    side = [[list(r.series[name].runs) for r in runs if name in r.series] for runs in (base, new)]
    return stats.p_value(side[0], side[1], per_process)


def eval_compare(runs: list[Run], k: int, shifts: list[float], alpha: float, per_process: bool = False) -> dict:
    """False positives and detection for compare with k files per side.  A planted row
    changes only its own p, so the family is re-adjusted without recomputing the rest."""
    splits = _splits(runs, k)
    out = {"files_per_side": k, "comparisons": len(splits), "with_verdict": 0, "rows": 0, "rows_flagged": 0,
           "too_few": 0, "detected": {s: 0 for s in shifts}, "planted": {s: 0 for s in shifts}}
    for base, new in splits:
        c = compare.compare_runs(base, new, alpha, with_ci=False, per_process=per_process)
        flagged = [r for r in c.rows if r.verdict in ("better", "worse")]
        out["with_verdict"] += bool(flagged)
        out["rows"] += len(c.rows)
        out["rows_flagged"] += len(flagged)
        short = [r.short for r in c.rows]
        out["too_few"] += any(short)
        raw = [r.change for r in c.rows]
        for shift in shifts:
            for i, row in enumerate(c.rows):
                planted = [worsen(r, row.name, shift) if row.name in r.series else r for r in new]
                p = _row_p(base, planted, row.name, per_process)
                changed = dataclasses.replace(raw[i], p=p, speedup=raw[i].speedup / (1 + shift / 100))
                decided = stats.decide([*raw[:i], changed, *raw[i + 1:]], alpha, short)
                out["planted"][shift] += 1
                out["detected"][shift] += decided[i].verdict == "worse"
    return out


AGREE = 5.0  # percent: a history "agrees" when its file summaries lie within this of each other


def agrees(runs: list[Run], name: str, within: float = AGREE) -> bool:
    """True when the file summaries of `name` in runs differ by at most `within` % (max/min)."""
    meds = [float(np.median(r.series[name].run_medians)) for r in runs if name in r.series]
    return len(meds) > 1 and max(meds) / min(meds) - 1 <= within / 100


def eval_track(runs: list[Run], window: int, shifts: list[float], threshold: float, alpha: float) -> dict:
    """False positives and detection for track over the series.  Each trial is one run
    tracked as the newest against exactly `window` runs before it (the first trial is
    run window+1).  Same-commit: a trial is flagged when any benchmark moved (family-
    wise).  Planted: S % worse on one benchmark at a time; detection is also counted
    over the trials whose history of that benchmark agrees within AGREE %."""
    out = {"window": window, "checks": 0, "runs_checked": 0, "runs_flagged": 0, "false_positives": 0,
           "detected": {s: 0 for s in shifts}, "planted": {s: 0 for s in shifts},
           "detected_agree": {s: 0 for s in shifts}, "planted_agree": {s: 0 for s in shifts}}
    for k in range(window + 1, len(runs) + 1):
        prefix = runs[k - 1 - window:k]
        result = track.track_runs(prefix, window, threshold, alpha, with_history=False)
        out["runs_checked"] += 1
        out["checks"] += len(result.movements)
        moved = [m for m in result.movements if m.verdict != "steady"]
        out["false_positives"] += len(moved)
        out["runs_flagged"] += bool(moved)
        for shift in shifts:
            for name in prefix[-1].series:
                res = track.track_runs([*prefix[:-1], worsen(prefix[-1], name, shift)], window, threshold, alpha,
                                       with_history=False)
                hit = any(m.name == name and m.verdict == "regressed" for m in res.movements)
                out["planted"][shift] += 1
                out["detected"][shift] += hit
                if agrees(prefix[:-1], name):
                    out["planted_agree"][shift] += 1
                    out["detected_agree"][shift] += hit
    return out


def evaluate(runs: list[Run], window: int, plant: float, threshold: float, alpha: float) -> dict:
    """track's figures for one planted shift (kept for callers of the first version)."""
    r = eval_track(runs, window, [plant], threshold, alpha)
    return {"clean_checks": r["checks"], "false_positives": r["false_positives"],
            "planted": r["planted"][plant], "detected": r["detected"][plant]}


def _rate(hit: int, total: int) -> str:
    return f"{hit}/{total} ({hit / total * 100:.0f}%)" if total else "0/0"


def report(runs: list[Run], sides: list[int], shifts: list[float], windows: list[int], threshold: float,
           alpha: float, track_alpha: float = track.ALPHA) -> list[str]:
    """The evaluation as printable lines."""
    lines = [f"{len(runs)} runs of {len(runs[-1].series)} benchmarks, alpha {alpha:g} (Holm)"]
    for k, per_process in [(k, pp) for k in sides for pp in ((False, True) if k == 1 else (False,))]:
        if 2 * k > len(runs):
            lines.append(f"compare {k} vs {k} files: needs {2 * k} runs, have {len(runs)}")
            continue
        r = eval_compare(runs, k, shifts, alpha, per_process)
        lines.append(f"compare {k} vs {k} files{' --per-process' if per_process else ''}: "
                     f"{r['comparisons']} same-commit comparisons, "
                     f"{_rate(r['with_verdict'], r['comparisons'])} with any verdict "
                     f"({r['rows_flagged']} of {r['rows']} rows); {r['too_few']} too few for a verdict")
        for s in shifts:
            lines.append(f"  planted {s:g}% worse on one benchmark: detected {_rate(r['detected'][s], r['planted'][s])}")
    for w in windows:
        if len(runs) <= w:
            lines.append(f"track, history of {w}: needs {w + 1} runs, have {len(runs)}")
            continue
        t = eval_track(runs, w, shifts, threshold, track_alpha)
        lines.append(f"track, history of {w} (alpha {track_alpha:g}, Holm): {_rate(t['runs_flagged'], t['runs_checked'])} "
                     f"same-commit runs with any flag ({t['false_positives']} of {t['checks']} benchmark checks)")
        for s in shifts:
            lines.append(f"  planted {s:g}% worse: detected {_rate(t['detected'][s], t['planted'][s])}; "
                         f"where the history agrees within {AGREE:g}%: "
                         f"{_rate(t['detected_agree'][s], t['planted_agree'][s])}")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis.track_eval", description=__doc__.splitlines()[0])
    p.add_argument("dir", type=Path, help="a directory of same-commit runs (e.g. results/examples/series)")
    p.add_argument("--shifts", default="5,10,25", help="planted shifts in percent (default 5,10,25)")
    p.add_argument("--sides", default="1,2,3", help="files per side for compare (default 1,2,3; 1 also with --per-process)")
    p.add_argument("--windows", default="3,5,10", help="track's history lengths to evaluate (default 3,5,10)")
    p.add_argument("--threshold", type=float, default=track.THRESHOLD)
    p.add_argument("--alpha", type=float, default=0.05, help="compare's family-wise level (default 0.05)")
    p.add_argument("--track-alpha", type=float, default=track.ALPHA, help=f"track's level (default {track.ALPHA})")
    args = p.parse_args(argv)
    try:
        runs = track.history(args.dir, allow_emulated=False)
    except track.TooFewRuns as exc:
        print(exc)
        return 0
    shifts = [float(s) for s in args.shifts.split(",")]
    for line in report(runs, [int(k) for k in args.sides.split(",") if k], shifts,
                       [int(w) for w in args.windows.split(",") if w], args.threshold, args.alpha, args.track_alpha):
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

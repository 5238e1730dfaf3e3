"""Measure the error rates of `compare` and `track` on a series of same-commit runs:

    python -m analysis.track_eval results/<machine>/ [--shifts 5,10,25] [--sides 1,3]

Nothing changed between the runs, so every verdict on a pair of them is a false positive.
compare, k files per side: every pair of disjoint groups of k files (a fixed-seed sample
of at most SAMPLE) is compared; the family-wise false-positive rate is the share of
comparisons with any verdict.  Detection: the same comparisons with one benchmark of the
new side made S % worse (its real values scaled), counting how often exactly that row
says "worse".  track: every run after the first WINDOW is tracked as if it were the
newest; detection plants S % in the newest run's benchmarks, one at a time.
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import random
from pathlib import Path

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


def eval_track(runs: list[Run], window: int, shifts: list[float], threshold: float, alpha: float) -> dict:
    """False positives and detection for track over the series."""
    out = {"checks": 0, "runs_checked": 0, "runs_flagged": 0, "false_positives": 0,
           "detected": {s: 0 for s in shifts}, "planted": {s: 0 for s in shifts}}
    for k in range(window + 1, len(runs) + 1):
        prefix = runs[:k]
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
                out["planted"][shift] += 1
                out["detected"][shift] += any(m.name == name and m.verdict == "regressed" for m in res.movements)
    return out


def evaluate(runs: list[Run], window: int, plant: float, threshold: float, alpha: float) -> dict:
    """track's figures for one planted shift (kept for callers of the first version)."""
    r = eval_track(runs, window, [plant], threshold, alpha)
    return {"clean_checks": r["checks"], "false_positives": r["false_positives"],
            "planted": r["planted"][plant], "detected": r["detected"][plant]}


def _rate(hit: int, total: int) -> str:
    return f"{hit}/{total} ({hit / total * 100:.0f}%)" if total else "0/0"


def report(runs: list[Run], sides: list[int], shifts: list[float], window: int, threshold: float,
           alpha: float) -> list[str]:
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
    if len(runs) > window:
        t = eval_track(runs, window, shifts, threshold, track.ALPHA)
        lines.append(f"track (window {window}, alpha {track.ALPHA:g}): {_rate(t['runs_flagged'], t['runs_checked'])} clean runs with any flag "
                     f"({t['false_positives']} of {t['checks']} benchmark checks)")
        for s in shifts:
            lines.append(f"  planted {s:g}% worse in the newest run: detected {_rate(t['detected'][s], t['planted'][s])}")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis.track_eval", description=__doc__.splitlines()[0])
    p.add_argument("dir", type=Path, help="a directory of same-commit runs (e.g. results/examples/series)")
    p.add_argument("--shifts", default="5,10,25", help="planted shifts in percent (default 5,10,25)")
    p.add_argument("--sides", default="1,2,3", help="files per side for compare (default 1,2,3; 1 also with --per-process)")
    p.add_argument("--window", type=int, default=track.WINDOW)
    p.add_argument("--threshold", type=float, default=track.THRESHOLD)
    p.add_argument("--alpha", type=float, default=0.05, help="compare's family-wise level (track uses its own)")
    args = p.parse_args(argv)
    runs = track.history(args.dir, allow_emulated=False)
    shifts = [float(s) for s in args.shifts.split(",")]
    for line in report(runs, [int(k) for k in args.sides.split(",")], shifts, args.window, args.threshold,
                       args.alpha):
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Measure `track`'s error rates on a series of real runs:

    python -m analysis.track_eval results/<machine>/ [--plant 5] [--window 5]

False positives: every run after the first WINDOW is tracked as if it were the newest
against the runs before it; every flag is a false positive (nothing changed).  Detection:
the same, with each benchmark of the newest run in turn made PLANT % worse (its real
values scaled), counting how often exactly that benchmark is flagged.
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from analysis import track
from analysis.load import Run


def worsen(run: Run, name: str, percent: float) -> Run:
    """The run with one benchmark's real values made `percent` worse."""
    s = run.series[name]
    factor = 1 / (1 + percent / 100) if s.higher_is_better else 1 + percent / 100
    series = {**run.series, name: dataclasses.replace(s, values=s.values * factor)}
    return dataclasses.replace(run, series=series)


def evaluate(runs: list[Run], window: int, plant: float, threshold: float, alpha: float) -> dict:
    fp = clean = hits = planted = 0
    for k in range(window + 1, len(runs) + 1):
        prefix = runs[:k]
        result = track.track_runs(prefix, window, threshold, alpha)
        clean += len(result.movements)
        fp += len(result.regressions)
        for name in prefix[-1].series:
            res = track.track_runs([*prefix[:-1], worsen(prefix[-1], name, plant)], window, threshold, alpha)
            planted += 1
            hits += any(m.name == name for m in res.regressions)
    return {"clean_checks": clean, "false_positives": fp, "planted": planted, "detected": hits}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis.track_eval", description=__doc__.splitlines()[0])
    p.add_argument("dir", type=Path)
    p.add_argument("--plant", type=float, default=5.0, help="planted regression in percent (default 5)")
    p.add_argument("--window", type=int, default=track.WINDOW)
    p.add_argument("--threshold", type=float, default=track.THRESHOLD)
    p.add_argument("--alpha", type=float, default=track.ALPHA)
    args = p.parse_args(argv)
    runs = track.history(args.dir, allow_emulated=False)
    r = evaluate(runs, args.window, args.plant, args.threshold, args.alpha)
    print(f"{len(runs)} runs, window {args.window}, threshold {args.threshold}%, alpha {args.alpha}")
    print(f"false positives: {r['false_positives']} of {r['clean_checks']} benchmark checks on clean runs")
    print(f"planted {args.plant:g}% regressions detected: {r['detected']} of {r['planted']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

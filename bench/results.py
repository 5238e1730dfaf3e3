"""Where results go and how they are finalised: results/<machine>/<stamp>-<label>.json."""
from __future__ import annotations

import os
import re
import statistics
import time
from pathlib import Path

import pyperf

from bench import units


def default_path(root: Path, machine: str, label: str) -> Path:
    """results/<machine>/<UTC stamp>-<label>.json."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", label).strip("-") or "run"
    return root / machine / f"{stamp}-{safe}.json"


def partial_path(final: Path) -> Path:
    """Where pyperf appends benchmarks while a run is in progress."""
    return final.with_name(f".{final.name}.partial")


def finalise(partial: Path, final: Path, complete: bool) -> Path | None:
    """Move what was measured into place atomically.  An incomplete run is kept too, as
    <name>-partial.json, so nothing measured is lost.  None when nothing was measured."""
    if not partial.exists():
        return None
    dest = final if complete else final.with_name(final.stem + "-partial.json")
    os.replace(partial, dest)
    return dest


def value_of(bench: pyperf.Benchmark) -> tuple[float, float, str]:
    """(median, relative std dev, unit) of a benchmark in its reported unit."""
    meta = bench.get_metadata()
    unit = meta.get("report_unit", "ns")
    vals = [units.convert(unit, v) for v in bench.get_values()]
    mean = statistics.fmean(vals)
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return statistics.median(vals), (sd / mean if mean else 0.0), unit


def summary(path: Path) -> str:
    """The end-of-run table: one line per benchmark in its reported unit."""
    suite = pyperf.BenchmarkSuite.load(str(path))
    rows = []
    for bench in suite.get_benchmarks():
        median, rsd, unit = value_of(bench)
        extra = ""
        if bench.get_metadata().get("workload") == "wc-burst":
            burst = int(bench.get_metadata()["units_per_loop"])
            extra = f"  ({median * 1e9 / burst / 1e6:.1f} M bursts/s)"
        rows.append((bench.get_name(), f"{median:10.3f} {unit:<4}", f"+-{rsd * 100:5.2f}%", extra))
    width = max((len(r[0]) for r in rows), default=10)
    lines = [f"{'benchmark':<{width}}  {'median':>15}  {'rsd':>7}"]
    lines += [f"{n:<{width}}  {v}  {s}{e}" for n, v, s, e in rows]
    return "\n".join(lines)

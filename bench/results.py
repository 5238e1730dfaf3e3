"""Where results go and how they are kept: results/<machine>/<stamp>-<label>.json.

While a run is in progress everything measured so far lives in a hidden partial file,
`.<name>.partial`, rewritten by atomic replace after every worker process: a kill or a
full disk mid-write leaves the previous version whole.  The partial file is created
exclusively before the first worker starts, so two runs with the same stamp and label
never share (or delete) each other's files.  At the end it is renamed into place, or
kept as `<name>-partial.json` when the run was interrupted or a case failed.
"""
from __future__ import annotations

import os
import re
import statistics
import time
from pathlib import Path

import pyperf

from bench import units
from bench.errors import UserError


def _safe(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", label).strip("-") or "run"


def default_path(root: Path, machine: str, label: str) -> Path:
    """results/<machine>/<UTC stamp>-<label>.json (not yet unique: see reserve())."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    return root / machine / f"{stamp}-{_safe(label)}.json"


def partial_path(final: Path) -> Path:
    """Where a run keeps what it measured while in progress."""
    return final.with_name(f".{final.name}.partial")


def kept_path(final: Path) -> Path:
    """Where an interrupted or partly failed run's results end up."""
    return final.with_name(final.stem + "-partial.json")


def _taken(final: Path) -> bool:
    return any(p.exists() for p in (final, partial_path(final), kept_path(final)))


def reserve(final: Path, exact: bool) -> Path:
    """Claim `final` for this run by creating its partial file exclusively.

    exact (the user's -o): that name or an error; otherwise the first free name among
    final, final-2, final-3...  Returns the claimed final path."""
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create {final.parent}: {exc.strerror}; pass a writable --results-dir or -o") from None
    candidates = [final] if exact else [final.with_name(f"{final.stem}{'' if n == 1 else f'-{n}'}.json")
                                         for n in range(1, 100)]
    for cand in candidates:
        if not exact and _taken(cand):
            continue
        try:
            os.close(os.open(partial_path(cand), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
            return cand
        except FileExistsError:
            continue
        except OSError as exc:
            raise UserError(f"cannot write in {cand.parent}: {exc.strerror}; pass a writable --results-dir or -o") from None
    raise UserError(f"{partial_path(final)} exists: another run is writing it, or a killed run left its data "
                    "there; pick another -o or --label")


def write_atomic(path: Path, suite: pyperf.BenchmarkSuite) -> None:
    """Replace `path` with `suite` in one step: write a temporary file, flush it to disk,
    rename it over `path`.  OSError (disk full, ...) leaves `path` as it was."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fp:
            suite.dump(fp, compact=True)
            fp.flush()
            os.fsync(fp.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def finalise(partial: Path, final: Path, complete: bool) -> Path | None:
    """Move what was measured into place atomically.  An incomplete run is kept too, as
    <name>-partial.json, so nothing measured is lost.  None when nothing was measured."""
    if not partial.exists():
        return None
    if partial.stat().st_size == 0:  # reserved, but no worker finished
        partial.unlink()
        return None
    dest = final if complete else kept_path(final)
    os.replace(partial, dest)
    return dest


def run_medians(bench: pyperf.Benchmark) -> list[float]:
    """One median per worker process (pyperf run) in the reported unit; calibration
    runs (no values) are skipped.  The process is the unit of replication."""
    unit = bench.get_metadata().get("report_unit", "ns")
    return [statistics.median(units.convert(unit, v) for v in run.values)
            for run in bench.get_runs() if run.values]


def value_of(bench: pyperf.Benchmark) -> tuple[float, float, str]:
    """(median of the per-process medians, their relative std dev, unit)."""
    unit = bench.get_metadata().get("report_unit", "ns")
    meds = run_medians(bench)
    mean = statistics.fmean(meds)
    sd = statistics.stdev(meds) if len(meds) > 1 else 0.0
    return statistics.median(meds), (sd / mean if mean else 0.0), unit


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
        rows.append((bench.get_name(), f"{median:10.3f} {unit:<4}", f"+-{rsd * 100:5.2f}%",
                     f"{len(run_medians(bench)):>4}", extra))
    width = max((len(r[0]) for r in rows), default=10)
    lines = [f"{'benchmark':<{width}}  {'median':>15}  {'run sd':>7}  runs"]
    lines += [f"{n:<{width}}  {v}  {s}  {k}{e}" for n, v, s, k, e in rows]
    return "\n".join(lines)

"""L1: the lab's `--fast` timings, in one process per backing, inside the emulated KVM host.

Why not `bench run`: under TCG a Python process in the emulated host takes about 3 s to
start and import the suite, and pyperf spends two or more processes on every case
(calibration, then values), so the lab's 54 cases per kernel took 8 minutes.  Here every
case of one backing is timed in this one process (each case still in its own VM:
calibrate loops to MIN_TIME, then VALUES values), and the result is a plain pyperf suite
with the runner's metadata.  It holds ONE run per benchmark: `replication` says so, and
no statistic may treat it as more than one process.  Emulated timings prove plumbing.
"""
from __future__ import annotations

from pathlib import Path

import pyperf

from bench import metadata, plan
from bench import results as bench_results
from bench.errors import UserError
from bench.runner import open_timer, stage2_of, timer_metadata
from bench.targets import open_target

MIN_TIME = 0.002   # seconds of guest time per value: CNTVCT resolution is 16 ns under QEMU
VALUES = 3
REPLICATION = "one process, in-process values (guestkit lab --fast under emulation)"


class _Args:  # what stage2_of reads from bench run's options
    stage2 = None


def calibrate(fn, min_time: float = MIN_TIME) -> tuple[int, float]:
    """(loops, seconds) with loops a power of two whose call takes at least min_time."""
    loops = 1
    while True:
        took = fn(loops)
        if took >= min_time or loops >= 1 << 40:
            return loops, took
        loops *= 2 if took <= 0 else max(2, min(1024, 1 << int(min_time / took).bit_length()))


def run_backing(spec: str, attrs: list[str], workloads: list[str], size: str, label: str,
                results: Path) -> tuple[Path | None, list[str]]:
    """Time every case of one target; (result file or None, failed cases with reasons)."""
    target = open_target(spec)
    cases = plan.build(attrs, workloads, [], [size], target.max_size())
    stage2, fwb = stage2_of(_Args(), target), bool(getattr(target, "fwb", False))
    benches, failed = [], []
    for case in cases:
        try:
            benches.append(_bench(case, target, stage2, fwb))
        except (UserError, OSError) as exc:
            failed.append(f"{case.name}: {exc}")
    if not benches:
        return None, failed
    suite = pyperf.BenchmarkSuite(benches)
    dest = bench_results.default_path(results, metadata.machine_name(), label if not failed else f"{label}-partial")
    dest.parent.mkdir(parents=True, exist_ok=True)
    suite.dump(str(dest), replace=True)
    return dest, failed


def _bench(case, target, stage2: str, fwb: bool) -> pyperf.Benchmark:
    fn = open_timer(case, target)
    try:
        meta = {**metadata.system(), **timer_metadata(case, target, stage2, fwb, fn, probe_ok=False),
                "name": case.name, "replication": REPLICATION}
        loops, warm = calibrate(fn)
        per = loops * case.units_per_loop
        values = [fn(loops) / per for _ in range(VALUES)]
    finally:
        fn.close()
    run = pyperf.Run(values, warmups=[(loops, warm / per)], collect_metadata=False,
                     metadata={**meta, "loops": loops, "inner_loops": case.units_per_loop})
    return pyperf.Benchmark([run])

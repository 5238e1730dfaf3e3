"""L1: the lab's `--fast` timings of every backing of one host, interleaved, in one process inside the emulated KVM host.

Why not `bench run`: under TCG a Python process in the emulated host takes about 3 s to
start and import the suite, and pyperf spends two or more processes on every case
(calibration, then values), so the lab's 54 cases per kernel took 8 minutes.  Here every
case of every backing is timed in this one process, each case in its own VM: ROUNDS
rounds each take one value of every case, backing after backing and attribute after
attribute (round 1 calibrates loops to MIN_TIME; vfio's and sysfs's VMs are made afresh
in each of their turns, see exclusive() for why), so a drift
of the emulated host (another QEMU on the machine) hits every stage-2 setting alike:
sysfs (Device), vfio (Normal-NC from 6.9) and kmod-normal (Normal WB on 6.17+ with FWB)
are compared in one boot.  The result is one pyperf suite with the runner's metadata,
names `<workload>[<params>]{<target>}@<attr>` (bench.plan), one pyperf run per round with
its `round`, so `bench report FILE --ref-target sysfs` pairs the rounds.  All the runs come
from ONE process: `replication` says so, and no statistic may treat a round as a process.
Emulated timings prove plumbing.
"""
from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from pathlib import Path

import pyperf

from bench import metadata, plan
from bench import results as bench_results
from bench.errors import UserError
from bench.plan import Case
from bench.runner import open_timer, stage2_of, timer_metadata
from bench.targets import Target, open_target
from bench.targets.kvm import KvmTarget
from bench.targets.pci import PciTarget

MIN_TIME = 0.002   # seconds of guest time per value: CNTVCT resolution is 16 ns under QEMU
ROUNDS = 3         # values per case, one per round
EXCLUSIVE = ("vfio", "sysfs")  # kvm backings whose host mappings of the BAR exclude each other
REPLICATION = "one process, one value per interleaved round (guestkit lab --fast under emulation)"


class _Args:  # what stage2_of reads from bench run's options
    stage2 = None


@dataclass(frozen=True)
class FastResult:
    """What one interleaved fast run gave: its file (None when nothing was timed), the
    failed cases and targets with reasons, and the cases timed."""

    file: Path | None
    failed: list[str]
    cases: int


@dataclass
class _Live:
    """One case while the run is on: its timer (open during its target's turn), its
    calibration and metadata (round 1) and its values by round."""

    case: Case
    fn: object = None          # the open timer, during its target's turn of a round
    meta: dict = field(default_factory=dict)
    loops: int = 1
    warm: float = 0.0
    ok: bool = True            # False after a failure: no further rounds
    values: list[tuple[int, float, str]] = field(default_factory=list)  # (round, value, date)

    @property
    def per(self) -> int:
        return self.loops * self.case.units_per_loop

    def bench(self) -> pyperf.Benchmark:
        """One pyperf run per round (the first carries the calibration as its warmup)."""
        runs = [pyperf.Run([value], warmups=[(self.loops, self.warm / self.per)] if i == 0 else None,
                           collect_metadata=False,
                           metadata={**self.meta, "loops": self.loops, "inner_loops": self.case.units_per_loop,
                                     "round": r, "schedule": "interleaved", "date": date})
                for i, (r, value, date) in enumerate(self.values)]
        return pyperf.Benchmark(runs)


def calibrate(fn, min_time: float = MIN_TIME) -> tuple[int, float]:
    """(loops, seconds) with loops a power of two whose call takes at least min_time."""
    loops = 1
    while True:
        took = fn(loops)
        if took >= min_time or loops >= 1 << 40:
            return loops, took
        loops *= 2 if took <= 0 else max(2, min(1024, 1 << int(min_time / took).bit_length()))


def plan_all(workloads: dict[str, list[str]], attrs: list[str], size: str,
             failed: list[str]) -> tuple[dict[str, Target], list[Case]]:
    """Each target spec (-> its workloads) opened and planned; the cases of all of them
    merged as bench run merges several --target (bench.plan.merge_targets).  A target
    that cannot be had is appended to `failed` and the others go on."""
    targets: dict[str, Target] = {}
    per_target = []
    for spec, names in workloads.items():
        try:
            target = open_target(spec)
            stage2 = stage2_of(_Args(), target)
            per_target.append(plan.build(attrs, names, [], [size], target.max_size(), stage2=stage2,
                                         fwb=bool(getattr(target, "fwb", False)), target=target.spec))
        except (UserError, OSError) as exc:
            failed.append(f"{spec}: {exc}")
            continue
        targets[target.spec] = target
    # Tagged even when only one target could be had: the file is the backings of one host.
    return targets, plan.merge_targets(per_target, tag=True)


def run_backings(workloads: dict[str, list[str]], attrs: list[str], size: str, label: str,
                 results: Path) -> FastResult:
    """Time every case of every target (spec -> workloads) interleaved round-robin, in
    this process; its pyperf file lands in results/ (`-partial` when a case failed)."""
    failed: list[str] = []
    targets, cases = plan_all(workloads, attrs, size, failed)
    live = {case.name: _Live(case) for case in cases}
    try:
        for r in range(1, ROUNDS + 1):
            for spec, target in targets.items():
                group = [one for one in live.values() if one.case.target == spec and one.ok]
                _one_round(r, group, target, failed, keep=not exclusive(target))
    finally:
        for one in live.values():
            _close(one)
    benches = [one.bench() for one in live.values() if one.values]
    if not benches:
        return FastResult(None, failed, 0)
    dest = bench_results.default_path(results, metadata.machine_name(), label if not failed else f"{label}-partial")
    dest.parent.mkdir(parents=True, exist_ok=True)
    pyperf.BenchmarkSuite(benches).dump(str(dest), replace=True)
    return FastResult(dest, failed, len(benches))


def exclusive(target: Target) -> bool:
    """Whether the target's BAR mapping excludes another's: while vfio-pci has the BAR
    mapped it holds the region busy, so the kernel refuses a sysfs resourceN mmap of it
    (EINVAL), and its request revokes sysfs mappings made before (CONFIG_IO_STRICT_DEVMEM).
    Such a target's VMs are open only during its turn of a round; the others (RAM, the
    dmattr module's mappings) stay open from round 1 to the end."""
    return getattr(target, "backing", None) in EXCLUSIVE or isinstance(target, PciTarget)


def _one_round(r: int, group: list[_Live], target: Target, failed: list[str], keep: bool) -> None:
    """Round r of one target's cases: each timer opened where it is not (a VM each; round 1
    calibrates and keeps the metadata), then one value each; closed again at the end of
    the turn unless `keep`.  One turn keeps the vfio device open for all its cases."""
    try:
        for one in group:
            if one.fn is None:
                _open(one, target, r, failed)
        for one in (x for x in group if x.fn is not None):
            try:
                date = datetime.datetime.now().isoformat(" ")  # as pyperf dates a run: the order shows
                one.values.append((r, one.fn(one.loops) / one.per, date))
            except (UserError, OSError) as exc:
                _fail(one, f"round {r}: {exc}", failed)
    finally:
        for one in group if not keep else ():
            _close(one)


def _open(one: _Live, target: Target, r: int, failed: list[str]) -> None:
    """The case's timer opened (its VM made); calibrated with its metadata in round 1."""
    try:
        one.fn = open_timer(one.case, target) if r == 1 else _reopen(one.case, target)
        if r == 1:
            stage2, fwb = stage2_of(_Args(), target), bool(getattr(target, "fwb", False))
            one.meta = {**metadata.system(), **timer_metadata(one.case, target, stage2, fwb, one.fn, probe_ok=False),
                        "name": one.case.name, "replication": REPLICATION}
            one.loops, one.warm = calibrate(one.fn)
    except (UserError, OSError) as exc:
        _fail(one, f"round {r}: {exc}" if r > 1 else str(exc), failed)


def _reopen(case: Case, target: Target):
    """The timer of a case round 1 described: a kvm target's skips the metadata (the
    stage-2 read and the VM of the classifying probe), the costly part of a reopen."""
    if isinstance(target, KvmTarget):
        return target.timer(case, describe=False)
    return open_timer(case, target)


def _fail(one: _Live, why: str, failed: list[str]) -> None:
    """The case gets no further rounds; what it measured so far is kept."""
    failed.append(f"{one.case.name}: {why}")
    one.ok = False
    _close(one)


def _close(one: _Live) -> None:
    if one.fn is not None:
        one.fn.close()
        one.fn = None

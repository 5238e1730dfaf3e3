"""`python -m bench run`: one pyperf Runner over the plan; each case is a bench_time_func.

Several --target options make one run over all of them: each target plans its own cases
(its attributes, sizes, stage 2), bench.plan.merge_targets tags their names with the
target and the rounds interleave every case of every target, so drift hits each alike.

Workers are `python -m bench run --worker ...` processes spawned one at a time by
bench.rounds (round-robin across cases when interleaving); our options are forwarded by
_forward() so each worker rebuilds the same plan and runs exactly the case asked for
(--worker-task N).  The manager merges the workers' runs and keeps them (bench.results).
"""
from __future__ import annotations

import argparse
import ctypes
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pyperf

from bench import kernels, memtypes, metadata, plan, probe, results, rounds
from bench.errors import UserError
from bench.plan import Case
from bench.targets import Mapping, Target, open_target
from bench.targets.ram import RamTarget

# The worker process is the unit of replication (values inside one process are not
# independent), so the budget goes to processes: 8 processes x 1 value (after 1 warmup)
# take about as long as 4 x 3 did (~45 s for the default matrix on this project's 2-vCPU
# VM) and give the per-process tests twice the replicates.
PROCESSES, VALUES = 8, 1
_LISTS = ("target", "attr", "workload", "param", "size")
_SCALARS = ("stage2", "machine", "results_dir", "label", "round", "schedule")


def _forward(cmd: list[str], args) -> None:
    """Append our options to a worker's command line (pyperf add_cmdline_args hook)."""
    for name in _LISTS:
        for value in getattr(args, name):
            cmd.extend([f"--{name}", value])
    for name in _SCALARS:
        value = getattr(args, name)
        if value is not None:
            cmd.extend([f"--{name.replace('_', '-')}", str(value)])
    for flag in ("fwb", "allow_reads", "allow_writes", "allow_cacheable_bar", "infer"):
        if getattr(args, flag):
            cmd.append(f"--{flag.replace('_', '-')}")


def make_runner() -> pyperf.Runner:
    """The pyperf Runner with dmtbench's options added to its parser."""
    runner = pyperf.Runner(processes=PROCESSES, values=VALUES, program_args=("-m", "bench", "run"),
                           add_cmdline_args=_forward)
    p = runner.argparser
    p.prog = "python -m bench run"
    p.add_argument("--target", action="append", default=[],
                   help="ram (default), ram:thp, pci:<BDF>/<bar>, kmod, kmod:pci:<BDF>/<bar>, kvm:...; repeatable: "
                        "one interleaved run over every target, names <workload>[<params>]{<target>}@<attr>")
    p.add_argument("--attr", action="append", default=[], help="memory attribute (repeatable; default: all the target offers)")
    p.add_argument("--workload", action="append", default=[], help="workload name (repeatable; default: all)")
    p.add_argument("--param", action="append", default=[], help="KEY=V1[,V2] parameter values (repeatable)")
    p.add_argument("--size", action="append", default=[], help="bytes of mapping for sized workloads, e.g. 64MiB (repeatable: a sweep)")
    p.add_argument("--stage2", default=None, help="stage-2 attribute the hypervisor gives (declared), or 'none' on bare metal")
    p.add_argument("--fwb", action="store_true", help="the host uses FEAT_S2FWB")
    p.add_argument("--allow-reads", action="store_true", help="allow reading a BAR that is not known scratch memory")
    p.add_argument("--allow-writes", action="store_true", help="allow writing a BAR that is not known scratch memory")
    p.add_argument("--allow-cacheable-bar", action="store_true",
                   help="allow a cacheable (Normal WB) host mapping of a PCIe BAR (kmod normal, kvm:kmod-normal): "
                        "safe only where the device memory is coherent with the CPU caches (Grace Hopper's C2C)")
    p.add_argument("--infer", action="store_true",
                   help="in a guest, probe each mapping with an unaligned load to record its class (a pre-6.9 "
                        "KVM host kills the VM for it on a BAR mapped Normal-NC); on bare metal always done")
    p.add_argument("--label", default=None, help="label in the result file name")
    p.add_argument("--repeat", type=int, default=1, metavar="N",
                   help="N invocations in a row, each its own manager and worker processes: files "
                        "<stamp>-<label>-1.json ... -N.json, zero-padded to N's digits (compare needs 3 files a side for a verdict)")
    p.add_argument("--machine", default=None, help="results/<machine>/ directory name (default: host name)")
    p.add_argument("--results-dir", default=None, help="results root (default: ./results)")
    p.add_argument("--interleave", dest="interleave", action="store_true", default=None,
                   help="run processes round-robin across cases (the default when there is more than one case)")
    p.add_argument("--no-interleave", dest="interleave", action="store_false",
                   help="run all processes of one case before the next (pyperf's order)")
    p.add_argument("--round", default=None, help=argparse.SUPPRESS)     # worker: which round it is
    p.add_argument("--schedule", default=None, help=argparse.SUPPRESS)  # worker: interleaved|sequential
    return runner


def stage2_of(args, target: Target) -> str:
    """The declared stage 2, the target's own knowledge, 'none' on bare metal, else 'unknown'."""
    if args.stage2:
        return args.stage2 if args.stage2 in ("none", "unknown") else memtypes.canonical(args.stage2)
    if target.own_stage2():  # a target that runs its own VM (kvm) knows its stage 2 anywhere
        return target.own_stage2()
    if metadata.system()["virt"] == "host" or metadata.emulated():
        return "none"  # bare metal, or TCG: an emulated machine has no hypervisor stage 2
    return target.stage2_hint() or "unknown"


def effective_of(attr: str, stage2: str, fwb: bool) -> str:
    if stage2 == "none":
        return attr
    if stage2 == "unknown":
        return "unknown"
    return memtypes.combine(attr, stage2, fwb).effective


def case_metadata(case: Case, target: Target, stage2: str, fwb: bool) -> dict:
    """Per-benchmark metadata (DESIGN.md 'Results')."""
    k = case.kernel
    return {
        "attr": case.attr, "target": target.spec, "workload": k.name, "kind": k.kind,
        "params": ",".join(f"{a}={b}" for a, b in case.params) or "none", "size": case.size,
        "report_unit": k.unit, "per_loop": "bytes" if k.unit == "GB/s" else "accesses",
        "units_per_loop": case.units_per_loop, "stage2": stage2, "fwb": "true" if fwb else "false",
        "effective": effective_of(case.attr, stage2, fwb), "tags": [k.name],
    }


class CaseTimer:
    """The time function pyperf calls: opens the mapping once, then times `loops` calls."""

    def __init__(self, case: Case, target: Target) -> None:
        self.case = case
        self.mapping: Mapping = target.open(case.attr, case.size)
        self.ram: Mapping | None = None
        if case.kernel.flags & kernels.NEEDS_SRC:
            self.ram = open_target("ram").open("normal", case.size)
        self.args = case.args(self.mapping.ptr, self.ram.ptr if self.ram else 0)
        self._ref = ctypes.byref(self.args)
        if case.kernel.flags & kernels.NEEDS_INIT:
            self._check(kernels.lib().dmt_init(case.kernel.index, self._ref))

    def _check(self, rc: int) -> int:
        if rc < 0:
            raise UserError(f"{self.case.name}: the kernel ran, but {kernels.failure(rc)}")
        return rc

    def __call__(self, loops: int) -> float:
        return self._check(kernels.timed(lambda: kernels.lib().dmt_run(self.case.kernel.index, self._ref, loops))) * 1e-9

    def close(self) -> None:
        """Unmap what the timer opened (a pyperf worker just exits; in-process users close)."""
        for m in (self.mapping, self.ram):
            if m is not None:
                m.close()

    def __enter__(self) -> "CaseTimer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


NOT_PROBED = "not probed"


def may_probe(args) -> bool:
    """Whether `run` may make its unaligned test access.  On bare metal it is harmless.  In
    a guest it can kill the VM: a host before Linux 6.9 maps a BAR Device at stage 2, and
    KVM cannot handle the stage-2 alignment fault a Normal-NC mapping then takes.  So in a
    guest only with --infer (`bench probe` is the command that means to do it)."""
    return bool(args.infer) or metadata.system()["virt"] == "host"


def inferred_class(mapping: Mapping, target: Target, probe_ok: bool) -> str:
    """Device or normal, as the unaligned-load probe sees it (RAM: known, no probe; a target
    with its own VM answers from there; NOT_PROBED where probing was not allowed)."""
    if isinstance(target, RamTarget):
        return "normal"
    known = target.classify(mapping)
    if known:
        return known
    return probe.infer_mapping(mapping) if probe_ok else NOT_PROBED


def _warn_disagreements(cases: list[Case], target: Target, stage2: str, fwb: bool, probe_ok: bool) -> None:
    """Say so when the declared stage 2 predicts another class than the probes see."""
    if stage2 in ("none", "unknown") or isinstance(target, RamTarget) or not probe_ok:
        return
    for attr in dict.fromkeys(c.attr for c in cases):
        mapping = target.open(attr, 4096)
        try:
            seen = inferred_class(mapping, target, probe_ok)
        finally:
            mapping.close()
        predicted = memtypes.combine(attr, stage2, fwb)
        if seen != "unknown" and (seen == "device") != predicted.device:
            print(f"warning: --stage2 {stage2} predicts {predicted.effective} for {attr}, but the probes see {seen} memory")


def open_timer(case: Case, target: Target):
    """The time function for one case: the target's own (kvm: inside its VM), else the
    kernel called here on the target's mapping."""
    return target.timer(case) or CaseTimer(case, target)


def timer_metadata(case: Case, target: Target, stage2: str, fwb: bool, fn, probe_ok: bool) -> dict:
    """case_metadata plus what the open timer knows: how the mapping was realised, its
    inferred class, and a target timer's own facts (kvm: its stage 2), which win."""
    meta = case_metadata(case, target, stage2, fwb)
    meta["realised"] = fn.mapping.realised
    meta["effective_inferred"] = inferred_class(fn.mapping, target, probe_ok)
    meta.update(getattr(fn, "metadata", {}))
    return meta


def _never(loops: int) -> float:  # placeholder for cases another worker runs
    raise AssertionError("pyperf called a case outside this worker's task")


@dataclass(frozen=True)
class RunTarget:
    """One --target of the run: the open target and the stage 2 its cases run under."""

    target: Target
    stage2: str


def open_targets(args) -> dict[str, RunTarget]:
    """Each --target (default ram), by its canonical spec (what Case.target holds)."""
    out: dict[str, RunTarget] = {}
    for spec in args.target or ["ram"]:
        target = open_target(spec, args.allow_reads, args.allow_writes,
                             allow_cacheable_bar=args.allow_cacheable_bar)
        if target.spec in out:
            raise UserError(f"--target {spec} is given twice (as {target.spec}): name each target once")
        out[target.spec] = RunTarget(target, stage2_of(args, target))
    return out


def run_label(sides: dict[str, RunTarget], cases: list[Case]) -> str:
    """The default result-file label: target spec(s) and attributes."""
    return f"{'+'.join(sides)}-{'+'.join(dict.fromkeys(c.attr for c in cases))}"


def _worker(runner: pyperf.Runner, cases: list[Case], sides: dict[str, RunTarget], fwb: bool) -> int:
    args = runner.args
    task = args.worker_task or 0
    for i, case in enumerate(cases):
        target, stage2 = sides[case.target].target, sides[case.target].stage2  # the case's own target
        fn = open_timer(case, target) if i == task else _never
        meta = case_metadata(case, target, stage2, fwb)
        if i == task:
            meta = timer_metadata(case, target, stage2, fwb, fn, may_probe(args))
            # Per-run metadata: report --ref pairs the runs of one round across attributes.
            meta["round"] = int(args.round or 1)
            meta["schedule"] = args.schedule or "sequential"
        runner.bench_time_func(case.name, fn, inner_loops=case.units_per_loop, metadata=meta)
    return 0


def _preflight(cases: list[Case], sides: dict[str, RunTarget]) -> None:
    """Check permissions, then open each (target, attr, size) once in this process, so that
    refusals and size errors surface as one line before any worker is spawned."""
    for case in cases:
        sides[case.target].target.check_access(case.attr, case.kernel.reads, case.kernel.writes)
    for spec, attr, size in dict.fromkeys((c.target, c.attr, c.size) for c in cases):
        sides[spec].target.open(attr, size).close()


class _Interrupt:
    """Ctrl-C, and only Ctrl-C, interrupts a run.  The flag tells a worker that died of
    the same SIGINT (exit 1, seen first by the manager) from a case that failed."""

    def __init__(self) -> None:
        self.seen = False
        signal.signal(signal.SIGINT, self._handler)

    def _handler(self, signum, frame) -> None:
        self.seen = True
        raise KeyboardInterrupt


class _Keeper:
    """The run's result file: claimed at the start, rewritten atomically after every
    worker process, renamed into place at the end."""

    def __init__(self, args, sides: dict[str, RunTarget], cases: list[Case]) -> None:
        if args.output:
            self.final = results.reserve(Path(args.output), exact=True)
        else:
            root = Path(args.results_dir or os.environ.get("DMTBENCH_RESULTS", "results"))
            label = args.label or run_label(sides, cases)
            self.final = results.reserve(
                results.default_path(root, args.machine or metadata.machine_name(), label), exact=False)
        self.partial = results.partial_path(self.final)

    def save(self, drivers: list[rounds.CaseDriver]) -> None:
        benches = [d.bench for d in drivers if d.bench is not None and d.manager.nprocess]
        if not benches:
            return
        try:
            results.write_atomic(self.partial, pyperf.BenchmarkSuite(benches))
        except OSError as exc:
            dest = self.finish(complete=False)
            kept = f"what was measured before is in {dest}" if dest else "nothing was kept"
            raise UserError(f"cannot write {self.partial} ({exc.strerror}); {kept}", code=1) from None

    def finish(self, complete: bool) -> Path | None:
        return results.finalise(self.partial, self.final, complete)


def _steps(runner: pyperf.Runner, cases: list[Case], interleave: bool, keeper: _Keeper,
           interrupt: _Interrupt) -> dict[int, str]:
    """Every worker process of the run, in schedule order, each kept as soon as it ends;
    returns the failed cases (index -> why).  A failed case gets no further rounds."""
    nrounds = runner.args.processes
    drivers = [rounds.CaseDriver(runner, i) for i in range(len(cases))]
    failed: dict[int, str] = {}
    for step in rounds.schedule(len(cases), nrounds, interleave):
        i, case = step.index, cases[step.index]
        if interleave and i == 0:
            print(f"round {step.round}/{nrounds} ", end="", flush=True)
        elif not interleave and step.round == 1:
            print(f"[{i + 1}/{len(cases)}] {case.name} ...", end=" ", flush=True)
        if i in failed:  # no further rounds for a failed case
            if interleave:
                print("-", end="\n" if i == len(cases) - 1 else "", flush=True)
            continue
        try:
            drivers[i].one_process(step.round)
        except rounds.CaseFailed as exc:
            if interrupt.seen:
                raise KeyboardInterrupt from None
            failed[i] = str(exc)
        keeper.save(drivers)
        if interleave:
            print("F" if i in failed else ".", end="\n" if i == len(cases) - 1 else "", flush=True)
        elif i in failed:
            print(f"FAILED ({failed[i]})", flush=True)
        elif step.round == nrounds:
            median, rsd, unit = results.value_of(drivers[i].bench)
            print(f"{median:.3f} {unit} +-{rsd * 100:.2f}%", flush=True)
    for i, why in failed.items():
        print(f"FAILED {cases[i].name}: {why}")
    return failed


def _manager(runner: pyperf.Runner, cases: list[Case], sides: dict[str, RunTarget], fwb: bool) -> int:
    args = runner.args
    if args.affinity is None and len(os.sched_getaffinity(0)) > 1:
        # Pin workers to one CPU (the last: CPU 0 takes most interrupts).  Unpinned, a
        # worker's CPU decides cache-resident results: doorbell rates split 2.0 vs 3.4
        # G/s between processes on this project's VM; pinned, 0.7% spread.
        args.affinity = str(max(os.sched_getaffinity(0)))
    _preflight(cases, sides)
    for spec, side in sides.items():
        _warn_disagreements([c for c in cases if c.target == spec], side.target, side.stage2, fwb,
                            may_probe(runner.args))
    # Interleave by default: run sequentially, a case's processes share a few seconds of
    # the machine's state (on this project's VM write-bw's 8 processes split 18 vs 7 GB/s
    # at one point in time), so they are pseudo-replicates; interleaved, they sample the
    # whole run, and slow drift hits every case alike.
    interleave = args.interleave if args.interleave is not None else len(cases) > 1
    args.schedule = "interleaved" if interleave else "sequential"
    keeper = _Keeper(args, sides, cases)
    t0 = time.monotonic()
    try:
        failed = _steps(runner, cases, interleave, keeper, _Interrupt())
    except KeyboardInterrupt:
        dest = keeper.finish(complete=False)
        raise UserError(f"interrupted; finished cases are in {dest}" if dest else "interrupted before any case finished",
                        code=130) from None
    dest = keeper.finish(complete=not failed)
    print(f"\n{len(cases) - len(failed)} of {len(cases)} cases, {args.processes} processes each"
          f"{' (interleaved)' if interleave else ''}, in {time.monotonic() - t0:.1f} s")
    if dest:
        print(results.summary(dest))
        print(f"\nwrote {dest}")
    if failed:
        names = ", ".join(cases[i].name for i in failed)
        where = f"what was measured is in {dest}" if dest else "nothing was measured"
        raise UserError(f"{len(failed)} case(s) failed ({names}); {where}", code=1)
    return 0


def _refuse_existing_output(runner: pyperf.Runner, argv: list[str]) -> None:
    """pyperf refuses an existing -o file with a line on stdout and exit 1: say it our way."""
    known, _ = runner.argparser.parse_known_args(argv)
    if known.output and not known.worker and os.path.exists(known.output):
        raise UserError(f"{known.output} exists: results are never overwritten; pick another -o")


def repeat_paths(first: Path, n: int) -> list[Path]:
    """The files of `--repeat n`: `<stem>-1.json` ... `-n.json`, numbered with n's digits
    (`-01` ... `-40`) so that a listing, a glob or a shell's sort gives the run order."""
    return [first.with_name(f"{first.stem}-{i:0{len(str(n))}d}.json") for i in range(1, n + 1)]


def _repeat(args, argv: list[str], sides: dict[str, RunTarget], cases: list[Case]) -> int:
    """`--repeat N`: N separate `bench run` invocations, one after another, sharing one
    stamp.  The invocation is the unit of replication (docs/statistics.md), so each is a
    fresh manager process with its own worker tree, exactly as N commands typed in a row."""
    if args.repeat < 1:
        raise UserError(f"--repeat {args.repeat}: give a number of invocations >= 1")
    if args.output:
        raise UserError("--repeat writes <stamp>-<label>-1.json ... itself: drop -o (use --label or --results-dir)")
    root = Path(args.results_dir or os.environ.get("DMTBENCH_RESULTS", "results"))
    label = args.label or run_label(sides, cases)
    first = results.default_path(root, args.machine or metadata.machine_name(), label)
    paths = repeat_paths(first, args.repeat)
    taken = [p for p in paths if p.exists()]
    if taken:
        raise UserError(f"{taken[0]} exists: results are never overwritten; wait a second or pick another --label")
    for i, path in enumerate(paths, 1):
        print(f"=== invocation {i}/{args.repeat}: {path.name}", flush=True)
        # Last option wins in argparse: the child is a plain single run writing `path`.
        rc = subprocess.run([sys.executable, "-m", "bench", "run", *argv, "--repeat", "1", "-o", str(path)]).returncode
        if rc != 0:
            done = ", ".join(p.name for p in paths[:i - 1]) or "none"
            raise UserError(f"invocation {i} of {args.repeat} failed (exit {rc}); complete before it: {done}", code=rc)
    print(f"\n{args.repeat} invocations: " + " ".join(str(p) for p in paths))
    return 0


def main(argv: list[str]) -> int:
    """Entry point for `python -m bench run`."""
    runner = make_runner()
    _refuse_existing_output(runner, argv)
    args = runner.parse_args(argv)
    # pyperf gives workers a clean environment: ours (the width cap, a library, a fake
    # sysfs tree) must reach them, or a worker would plan other cases than its manager.
    args.inherit_environ = sorted({*(args.inherit_environ or ()), *(k for k in os.environ if k.startswith(("DMT_", "DMTBENCH_")))})
    sides = open_targets(args)
    args.target = [side.target.spec for side in sides.values()]  # what the workers open
    cases, skipped = plan_cases(args, sides)
    runner.metadata.update(metadata.system())
    if args.worker:
        return _worker(runner, cases, sides, args.fwb)
    if args.repeat != 1:
        return _repeat(args, argv, sides, cases)
    for reason in skipped:
        print(f"skipped: {reason}")
    return _manager(runner, cases, sides, args.fwb)


def plan_cases(args, sides: dict[str, RunTarget]) -> tuple[list[Case], list[str]]:
    """Every case of every target (bench.plan.merge_targets) and the skipped ones' reasons.
    --attr applies to every target; without it each target runs all it offers."""
    given = [memtypes.canonical(a) for a in args.attr]
    per_target, skipped = [], []
    for spec, side in sides.items():
        attrs = given or side.target.attrs()
        if not attrs:
            raise UserError(f"target {spec} offers no attribute here: see 'python -m bench targets'")
        for attr in attrs:
            side.target.require(attr)
        # The effective type (stage 1 with the stage 2) decides what a workload may do: zero's
        # DC ZVA faults on any Device type, so it is refused or left out with the reason.
        why: list[str] = []
        per_target.append(plan.build(attrs, args.workload, args.param, args.size, side.target.max_size(),
                                     stage2=side.stage2, fwb=args.fwb, skipped=why, target=spec))
        skipped += [f"{spec}: {w}" if len(sides) > 1 else w for w in why]
        if len(sides) == 1:
            args.attr = attrs  # workers plan the same attributes (not re-discovered)
    return plan.merge_targets(per_target), skipped

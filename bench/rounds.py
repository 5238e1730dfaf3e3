"""Spawn each case's pyperf workers one process at a time, so cases can take turns.

pyperf's manager runs all the processes of one benchmark before the next one starts; a
slow drift of the machine (another tenant, thermal state) then lands on whichever cases
ran at that moment.  Interleaving runs round r of every case before round r+1 of any:
case 1 process 1, case 2 process 1, ..., case 1 process 2, ...  Each worker is still a
real pyperf worker (`python -m bench run --worker --worker-task N ...`, calibrated by
pyperf's own logic) and its run is merged into one pyperf Benchmark per case, so the
result stays a plain pyperf BenchmarkSuite.  A run over several --target has one case
list for all of them (each case carries its target, bench.plan.merge_targets puts the
targets of one case next to each other), so the rounds go round-robin across targets
and attributes alike, and a worker opens the target of its own case.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import pyperf
from pyperf._manager import Manager  # pyperf's worker spawner and calibration state machine


class CaseFailed(Exception):
    """One case could not produce a run (worker crash, timeout, calibration failure)."""


class _QuietManager(Manager):
    def display_run(self, bench, run) -> None:  # our progress line replaces pyperf's dots
        pass


@dataclass(frozen=True)
class Step:
    """One worker process to run: case `index` (its pyperf worker task), round `round`."""

    index: int
    round: int


def schedule(ncases: int, rounds: int, interleave: bool) -> list[Step]:
    """Round-major (interleaved) or case-major (pyperf's order) list of steps."""
    if interleave:
        return [Step(i, r) for r in range(1, rounds + 1) for i in range(ncases)]
    return [Step(i, r) for i in range(ncases) for r in range(1, rounds + 1)]


class CaseDriver:
    """One case's pyperf manager state (calibrated loops and warmups), advanced one value
    run at a time."""

    def __init__(self, runner: pyperf.Runner, index: int) -> None:
        self.runner, self.index = runner, index
        self.manager = _QuietManager(runner)
        # Each case calibrates for itself: give it its own copy of the options pyperf
        # mutates (loops, warmups), as pyperf's create_bench() does for one benchmark.
        self.manager.args = self.args = copy.copy(runner.args)
        if self.args.warmups is None:
            self.args.warmups = 1

    @property
    def bench(self) -> pyperf.Benchmark | None:
        """Every run so far (calibration runs included, as pyperf keeps them)."""
        return self.manager.bench

    def one_process(self, round_no: int) -> None:
        """Spawn workers until one more value run exists (the first round also calibrates).
        CaseFailed when a worker fails; KeyboardInterrupt passes through."""
        self.runner._worker_task = self.index  # worker_cmd() passes it as --worker-task
        self.args.round = round_no             # forwarded to the worker: run metadata 'round'
        start = self.manager.nprocess
        try:
            while self.manager.nprocess == start:
                _, run = self.manager.create_worker_bench()
                self.manager.handle_calibration(run)
                self.manager.choose_next_run()
        except SystemExit as exc:
            # pyperf exits 124 on a worker timeout and 1 when calibration does not settle.
            why = "worker timed out (pyperf --timeout)" if exc.code == 124 else f"pyperf gave up (exit {exc.code})"
            raise CaseFailed(why) from None
        except (RuntimeError, ValueError, OSError) as exc:
            raise CaseFailed(str(exc)) from None

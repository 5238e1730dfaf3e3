"""`python -m bench selfcheck`: fidelity of our RAM kernels against independent tools.

Bandwidth: likwid-bench (Debian package `likwid`) runs as a child of this process on the
same CPU and size, interleaved with our kernel, reps times; ratios of the medians.
Latency: an lmbench-style chase (bench/reference/chase_ref.c, no shared code).
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from bench import kbuild, kernels, plan
from bench.errors import UserError
from bench.runner import CaseTimer
from bench.targets import open_target
from bench.units import format_size, parse_size


@dataclass(frozen=True)
class Pair:
    """Our workload and the likwid-bench test that does the same thing."""

    label: str
    workload: str
    params: tuple[str, ...]
    likwid: str
    streams: int  # likwid counts every stream in MByte/s; we count bytes copied once


# x86_64: the widest vector width we run -> likwid-bench's ISA suffix for the same width.
_X86_ISA = {64: "avx512", 32: "avx", 16: "sse"}


def bench_width(arch: str) -> int:
    """The width selfcheck compares at: the widest this CPU has (as `bench run` picks),
    except on arm64, where likwid-bench's NEON kernels move one Q register (16 B) per
    access, so our 16-byte width is the one that does the same thing."""
    return 16 if arch == "arm64" else min(kernels.widest_width(), 64)


def pairs(arch: str, width: int) -> list[Pair]:
    """Our workloads next to the likwid-bench tests that do the same accesses."""
    if arch == "x86_64" and width in _X86_ISA:
        isa, w = _X86_ISA[width], f"width={width}"
        return [
            Pair("load", "read-bw", (w,), f"load_{isa}", 1),
            Pair("NT store", "write-bw", (w, "mode=nt"), f"store_mem_{isa}", 1),
            Pair("NT copy", "copy-to", (w, "mode=nt"), f"copy_mem_{isa}", 2),
        ]
    if arch == "arm64":
        # load_neon / store_neon: LDR/STR Q; copy_nt: LDNP/STNP of X pairs (our nt width 8).
        return [
            Pair("load", "read-bw", ("width=16",), "load_neon", 1),
            Pair("store", "write-bw", ("width=16", "mode=plain"), "store_neon", 1),
            Pair("NT copy", "copy-to", ("width=8", "mode=nt"), "copy_nt", 2),
        ]
    return []


def likwid_tests() -> set[str]:
    """The tests this likwid-bench build has (`likwid-bench -a`)."""
    out = subprocess.run(["likwid-bench", "-a"], capture_output=True, text=True, check=False).stdout
    return {line.split(" - ")[0].strip() for line in out.splitlines() if " - " in line}


def ours_gbs(workload: str, params: tuple[str, ...], size: int, min_time: float) -> float:
    """One timed value of our kernel, like a pyperf value: loops calibrated to min_time."""
    case = plan.build(["normal"], [workload], list(params), [str(size)])[0]
    with CaseTimer(case, open_target("ram")) as timer:
        loops = 1
        while (t := timer(loops)) < min_time:
            loops *= 2
    return case.units_per_loop * loops / t / 1e9


def likwid_gbs(test: str, size: int, streams: int, iters: int) -> float:
    """likwid-bench payload bandwidth in GB/s (size per stream = size)."""
    out = subprocess.run(["likwid-bench", "-t", test, "-i", str(iters), "-W", f"N:{size * streams}B:1"],
                         capture_output=True, text=True, check=False)
    m = re.search(r"MByte/s:\s+([\d.]+)", out.stdout)
    if not m:
        raise UserError(f"likwid-bench -t {test} printed no MByte/s: {out.stderr.strip()[:200]}")
    return float(m.group(1)) / 1e3 / streams


def chase_ns(size: int, min_time: float) -> float:
    """read-lat's ns per load after one full cycle (the steady state, as the reference)."""
    case = plan.build(["normal"], ["read-lat"], [], [str(size)])[0]
    with CaseTimer(case, open_target("ram")) as timer:
        timer(size // 64)  # one full cycle: what init left in the caches no longer counts
        loops = 1 << 20
        while (t := timer(loops)) < min_time:
            loops *= 2
    return t / loops * 1e9


# What the read-lat vs reference investigation found (issue 11, README "Fidelity").
CHASE_FINDING = (
    "chase finding (1 GiB, CPU-time clock, full-cycle warm-up, 5 interleaved reps on a shared 2-vCPU VM, "
    "medians): reference shuffle drand48 276 ns vs splitmix64 300 ns; read-lat's own chain in the reference "
    "program 296 ns; read-lat itself 320 ns; malloc vs sequentially prefaulted mmap 275 vs 298 ns. No factor "
    "moved the result beyond the 10-20% run-to-run spread there: the shuffle is not the cause, and a 3% "
    "verdict needs a quiet machine. Both sides now warm one full cycle; the reference uses splitmix64.")


def spread(values: list[float]) -> float:
    """max/min - 1: how far apart repeated measurements of one side are."""
    return max(values) / min(values) - 1


def reference_chase(size: int, seconds: float) -> float:
    src = Path(__file__).with_name("reference") / "chase_ref.c"
    exe = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dmtbench" / "chase_ref"
    if not exe.exists() or exe.stat().st_mtime < src.stat().st_mtime:
        exe.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([*kbuild.find_cc(), "-O2", str(src), "-o", str(exe)], check=True)
    out = subprocess.run([str(exe), str(size), "64", str(seconds)], capture_output=True, text=True, check=True)
    return float(out.stdout.split()[0])


def overhead(min_time: float = 0.1) -> str:
    """What the harness adds to one pyperf value: the ctypes call (outside the kernel's
    own clock) and the fence+clock bracket inside it, against a min_time value."""
    reps = 20000
    with CaseTimer(plan.build(["normal"], ["doorbell"], [], [])[0], open_target("ram")) as timer:
        t0 = time.perf_counter_ns()
        inside = sum(timer(1) for _ in range(reps)) * 1e9
        call_ns = (time.perf_counter_ns() - t0 - inside) / reps
    bracket_ns = kernels.lib().dmt_timer_overhead(reps) / reps / 2
    value_ns = min_time * 1e9
    return (f"overhead: ctypes call {call_ns:.0f} ns per value ({call_ns / value_ns * 100:.5f}% of a "
            f"{min_time * 1e3:.0f} ms value, and outside the timed region); fence+clock bracket inside it "
            f"{bracket_ns:.0f} ns ({bracket_ns / value_ns * 100:.5f}%)")


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench selfcheck", description=__doc__.splitlines()[0])
    p.add_argument("--size", default="256MiB", help="bandwidth working set per stream (default 256MiB)")
    p.add_argument("--chase-size", default="1GiB", help="pointer-chase working set (default 1GiB)")
    p.add_argument("--reps", type=int, default=5, help="interleaved repetitions of each side")
    args = p.parse_args(argv)
    size, chase_size = parse_size(args.size), parse_size(args.chase_size)
    os.sched_setaffinity(0, {0})  # likwid-bench pins itself to hwthread 0 (-W N:...:1): share it
    arch = kernels.arch()
    width = bench_width(arch)
    t0 = time.monotonic()
    print(f"selfcheck on {arch} ({' '.join(kernels.features())}), {args.reps} interleaved reps, medians")
    print(f"{'case':<10} {'size':>7} {'dmtbench':>12} {'reference':>12} {'ratio':>7}")
    if shutil.which("likwid-bench") is None:
        print("likwid-bench not available (Debian: apt-get install likwid); bandwidth pairs skipped")
    elif not pairs(arch, width):
        print(f"no likwid-bench pairing for {arch} at width {width}; bandwidth pairs skipped")
    else:
        have = likwid_tests()
        for pair in pairs(arch, width):
            if pair.likwid not in have:
                print(f"{pair.label:<10} likwid-bench has no {pair.likwid} here; skipped")
                continue
            ours, ref = [], []
            for _ in range(args.reps):
                ours.append(ours_gbs(pair.workload, pair.params, size, 0.2))
                ref.append(likwid_gbs(pair.likwid, size, pair.streams, max(2, int(8e9 // size))))
            o, r = statistics.median(ours), statistics.median(ref)
            print(f"{pair.label:<10} {format_size(size):>7} {o:8.2f} GB/s {r:7.2f} GB/s {o / r:6.3f}x  "
                  f"({pair.workload} {' '.join(pair.params)} vs {pair.likwid})")
    ours, ref = [], []
    for _ in range(max(1, args.reps // 2)):
        ours.append(chase_ns(chase_size, 1.0))
        ref.append(reference_chase(chase_size, 1.0))
    o, r = statistics.median(ours), statistics.median(ref)
    print(f"{'chase':<10} {format_size(chase_size):>7} {o:10.2f} ns {r:9.2f} ns {o / r:6.3f}x  (chase_ref.c; within 3% is the goal)")
    print(f"chase spread (max/min - 1): dmtbench {spread(ours):.1%}, reference {spread(ref):.1%}; "
          "a ratio is resolved only to about the larger of the two")
    print(CHASE_FINDING)
    print(overhead())
    print(f"selfcheck took {time.monotonic() - t0:.0f} s")
    return 0

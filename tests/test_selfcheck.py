"""`bench selfcheck`: pairs at the width the CPU reports, a pair that cannot run is a
failure, and the reference chase and read-lat time the same thing (issue 19).

Expectations come from what this CPU reports (bench_width, pairs()), so the file holds on
AVX2-only and AVX-512 machines alike (tests/test_any_cpu.py reruns it one width narrower)."""
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from bench import kbuild, kernels, selfcheck
from conftest import REPO, assert_one_line_error, run_cli

SMALL = ("--reps", "1", "--size", "16MiB", "--chase-size", "16MiB")
HAVE_LIKWID = shutil.which("likwid-bench") is not None


def _path_without_likwid(tmp_path: Path) -> str:
    """A PATH with every program of the real one except likwid's (a machine without the
    package), as symlinks to the real files."""
    farm = tmp_path / "bin"
    farm.mkdir()
    for d in os.environ["PATH"].split(os.pathsep):
        if not os.path.isdir(d):
            continue
        for name in os.listdir(d):
            if not name.startswith("likwid") and not (farm / name).exists():
                (farm / name).symlink_to(Path(d) / name)
    return str(farm)


def test_without_likwid_selfcheck_says_so_and_fails(tmp_path):
    proc = run_cli("selfcheck", *SMALL, env={"PATH": _path_without_likwid(tmp_path)})
    line = assert_one_line_error(proc, 1, "bandwidth pair(s) not run", "likwid-bench is not installed",
                                 "apt-get install likwid")
    assert "Traceback" not in line
    # Everything it could measure is still printed: the chase row and the overhead line.
    assert re.search(r"^chase .* ns .*x", proc.stdout, re.M) and "overhead:" in proc.stdout


def test_a_likwid_without_the_test_is_named(tmp_path):
    """A likwid-bench that lacks a test (an older build): the pair is named, exit 1."""
    fake = tmp_path / "bin"
    fake.mkdir()
    tool = fake / "likwid-bench"
    tool.write_text("#!/bin/sh\necho 'copy - Double-precision vector copy, only scalar operations'\n")
    tool.chmod(0o755)
    proc = run_cli("selfcheck", *SMALL, env={"PATH": f"{fake}{os.pathsep}{os.environ['PATH']}"})
    want = [p.likwid for p in selfcheck.pairs(kernels.arch(), selfcheck.bench_width(kernels.arch()))]
    line = assert_one_line_error(proc, 1, f"{len(want)} bandwidth pair(s) not run")
    assert all(f"no {name}" in line for name in want)


@pytest.mark.skipif(not HAVE_LIKWID, reason="likwid-bench not installed (python -m guestkit deps brings it)")
def test_selfcheck_runs_every_pair_at_the_cpus_width():
    proc = run_cli("selfcheck", *SMALL)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    width = selfcheck.bench_width(kernels.arch())
    assert f"width {width}" in proc.stdout.splitlines()[0]
    for pair in selfcheck.pairs(kernels.arch(), width):
        row = next(line for line in proc.stdout.splitlines() if line.startswith(f"{pair.label:<10} "))
        assert f"vs {pair.likwid};" in row and re.search(r" \d+\.\d{3}x ", row), row
    assert "ratios " in proc.stdout and "load average" in proc.stdout


def test_paired_alternates_the_order_and_takes_the_median_ratio():
    calls = []
    ours = iter([10.0, 11.0, 12.0])
    ref = iter([10.0, 10.0, 10.0])
    p = selfcheck.paired(3, lambda: calls.append("o") or next(ours), lambda: calls.append("r") or next(ref))
    assert calls == ["o", "r", "r", "o", "o", "r"]
    assert p.ratios == [1.0, 1.1, 1.2] and p.ratio == 1.1


def test_reference_chase_and_read_lat_agree_on_a_cache_resident_chain(tmp_path):
    """Both time dependent loads of a random cycle the same way (clock, warm-up, ns per
    load): on a 64 KiB chain (no DRAM or TLB noise) the best of five agree within 25%.
    The DRAM-sized comparison is selfcheck's own chase row (docs/fidelity.md)."""
    exe = tmp_path / "chase_ref"
    subprocess.run([*kbuild.find_cc(), "-O2", str(REPO / "bench" / "reference" / "chase_ref.c"), "-o", str(exe)],
                   check=True)
    size = 64 << 10
    ours = min(selfcheck.chase_ns(size, 0.2) for _ in range(5))
    ref = min(float(subprocess.run([str(exe), str(size), "64", "0.2"], capture_output=True, text=True,
                                   check=True).stdout.split()[0]) for _ in range(5))
    assert 0.8 < ours / ref < 1.25, (ours, ref)


def _cycle_length(words: list[int], base: int) -> int:
    """Steps from slot 0 back to slot 0 following words (slot addresses: base + 64 k)."""
    k, steps = 0, 0
    while True:
        k = (words[k] - base) // 64
        steps += 1
        if k == 0 or steps > len(words):
            return steps


def test_both_chains_share_one_buffer_and_each_stays_one_full_cycle():
    """selfcheck's chase: read-lat and chase_ref each build their own chain in the same
    memfd pages (read-lat's pointers at offset 0 of each 64-byte slot, chase_ref's at
    REF_OFFSET), and after both have built and walked, each is still a single cycle over
    every slot: neither side overwrote the other's chain."""
    import ctypes

    size = 1 << 20
    n = size // 64
    with selfcheck.SharedBuffer(size) as buf, \
            selfcheck.Slices("read-lat", (), size, 0.01, buf.target()) as ours, \
            selfcheck.ReferenceChase(size, 0.01, buf) as ref:
        assert ours.timer.mapping.ptr == buf.mapping.ptr  # read-lat runs in the shared buffer
        assert ref() > 0 and ours() > 0 and ref() > 0
        raw = (ctypes.c_uint64 * (size // 8)).from_address(buf.mapping.ptr)
        mine = [raw[k * 8] for k in range(n)]
        theirs = [raw[k * 8 + selfcheck.REF_OFFSET // 8] for k in range(n)]
    assert _cycle_length(mine, buf.mapping.ptr) == n
    # chase_ref's pointers are its own process's addresses: its slot 0 is the lowest target.
    assert all(v % 64 == min(theirs) % 64 for v in theirs)
    assert _cycle_length(theirs, min(theirs)) == n and len(set(theirs)) == n


def test_the_reference_refuses_an_offset_outside_its_slot(tmp_path):
    exe = selfcheck.reference_exe()
    fd = os.memfd_create("t", 0)
    try:
        os.ftruncate(fd, 1 << 16)
        proc = subprocess.run([str(exe), str(1 << 16), "64", "-", str(fd), "60"], input="0.01\n",
                              capture_output=True, text=True, pass_fds=(fd,))
    finally:
        os.close(fd)
    assert proc.returncode == 2 and proc.stdout == ""

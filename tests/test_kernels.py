"""The kernel registry read from C, and each kernel doing what it claims on real RAM."""
import ctypes
import shutil
import subprocess
from pathlib import Path

import pytest

from bench import kbuild, kernels, plan
from bench.runner import CaseTimer
from bench.targets import open_target
from conftest import assert_one_line_error, run_cli

EXPECTED = {"read-bw", "write-bw", "copy-to", "copy-from", "read-lat", "mmio-read", "wc-burst", "doorbell", "zero"}


def test_registry_comes_from_c_table():
    reg = kernels.registry()
    assert set(reg) == EXPECTED
    assert [k.index for k in reg.values()] == list(range(len(reg)))
    for k in reg.values():
        assert k.unit in ("GB/s", "ns", "M/s") and k.kind in ("bandwidth", "latency", "rate")
        assert k.per_loop in (kernels.PER_SIZE, kernels.PER_BURST, kernels.PER_ACCESS)
        for p in k.params:
            assert p.default in p.values


def test_parse_params():
    (w, m) = kernels.parse_params("width=8|*64;mode=*plain|nt")
    assert (w.values, w.default, m.values, m.default) == (("8", "64"), "64", ("plain", "nt"), "plain")
    assert kernels.parse_params("") == ()


def _timer(workload, params=(), size="64KiB"):
    case = plan.build(["normal"], [workload], list(params), [size])[0]
    return case, CaseTimer(case, open_target("ram"))


def _bytes(timer, n):
    return ctypes.string_at(timer.mapping.ptr, n)


@pytest.mark.parametrize("width", ["8", "16", "32", "64"])
@pytest.mark.parametrize("mode", ["plain", "nt"])
def test_write_bw_writes_pattern(width, mode):
    if not kernels.width_supported(int(width)):
        pytest.skip("CPU lacks this width")
    case, t = _timer("write-bw", [f"width={width}", f"mode={mode}"])
    assert t(2) > 0
    assert _bytes(t, case.size) == b"\x5a" * case.size


@pytest.mark.parametrize("width", ["8", "16", "32", "64"])
@pytest.mark.parametrize("mode", ["plain", "nt"])
def test_copy_to_keeps_every_byte_in_place(width, mode):
    if not kernels.width_supported(int(width)):
        pytest.skip("CPU lacks this width")
    case, t = _timer("copy-to", [f"width={width}", f"mode={mode}"])
    src = bytes(range(256)) * (case.size // 256)  # position-dependent: a swapped pair shows
    ctypes.memmove(t.ram.ptr, src, case.size)
    t(1)
    assert _bytes(t, case.size) == src


@pytest.mark.parametrize("width", ["8", "widest"])
def test_copy_to_and_from(width):
    width = str(kernels.widest_width()) if width == "widest" else width  # what this CPU has
    case, t = _timer("copy-to", [f"width={width}"])
    ctypes.memset(t.ram.ptr, 0x33, case.size)
    t(1)
    assert _bytes(t, case.size) == b"\x33" * case.size
    case, t = _timer("copy-from", [f"width={width}"])
    ctypes.memset(t.mapping.ptr, 0x44, case.size)
    t(1)
    assert ctypes.string_at(t.ram.ptr, case.size) == b"\x44" * case.size


def test_zero_zeroes():
    case, t = _timer("zero")
    ctypes.memset(t.mapping.ptr, 0x77, case.size)
    t(1)
    assert _bytes(t, case.size) == bytes(case.size)


def test_chase_is_one_cycle_over_every_slot():
    case, t = _timer("read-lat", size="64KiB")
    base, n = t.mapping.ptr, case.size // 64
    seen, p = set(), base
    for _ in range(n):
        seen.add(p)
        p = ctypes.c_void_p.from_address(p).value
    assert p == base and len(seen) == n and all((a - base) % 64 == 0 for a in seen)


def test_wc_burst_walks_ring_and_doorbell_writes_word():
    case, t = _timer("wc-burst", ["burst=256"], size="4KiB")
    t(16)  # 16 bursts x 256 B cover the 4 KiB ring exactly once
    assert _bytes(t, 4096) == b"\x5a" * 4096
    assert t.args.cursor == 0
    case, t = _timer("doorbell", ["width=4"])
    t(7)
    assert ctypes.c_uint32.from_address(t.mapping.ptr).value == 6  # last value stored: loop index


def test_timed_values_scale_with_loops():
    _, t = _timer("read-bw", size="1MiB")
    t(10)
    small, big = min(t(10) for _ in range(5)), min(t(100) for _ in range(5))
    assert 5 < big / small < 20


def test_bad_args_are_refused_by_c():
    lib = kernels.lib()
    k = kernels.registry()["read-bw"]
    assert lib.dmt_supported(k.index, ctypes.byref(kernels.Args(buf=0x1000, size=100, width=64))) == -22
    assert lib.dmt_supported(k.index, ctypes.byref(kernels.Args(buf=0x1000, size=4096, width=24))) == -22
    assert lib.dmt_run(99, ctypes.byref(kernels.Args()), 1) < 0


def test_fallback_build_into_other_dir(tmp_path):
    out = kbuild.build(tmp_path / kbuild.LIB_NAME)
    so = ctypes.CDLL(str(out))
    so.dmt_src_hash.restype = ctypes.c_char_p
    assert so.dmt_src_hash().decode() == kbuild.source_hash()
    assert so.dmt_kernel_count() == len(EXPECTED)


def test_missing_compiler_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CC", raising=False)
    with pytest.raises(kbuild.BuildError, match="no C compiler"):
        kbuild.build(tmp_path / "x.so")


@pytest.mark.skipif(shutil.which("aarch64-linux-gnu-gcc") is None, reason="needs gcc-aarch64-linux-gnu")
def test_arm64_cross_build_uses_the_intended_instructions(tmp_path):
    out = kbuild.build(tmp_path / kbuild.LIB_NAME, cc="aarch64-linux-gnu-gcc")
    dis = subprocess.run(["aarch64-linux-gnu-objdump", "-d", str(out)], capture_output=True, text=True).stdout
    for insn in ("ld1\t{v", "st1\t{v", "stnp\tq", "ldp\tq", "dc\tzva", "dsb\tst"):
        assert insn in dis, insn


def test_generic_fallback_compiles(tmp_path):
    # The portable path, forced on this host.
    src = kbuild.source_dir()
    cc = kbuild.find_cc()
    out = tmp_path / "g.so"
    proc = subprocess.run([*cc, *kbuild.CFLAGS, "-DDMT_FORCE_GENERIC", f"-I{src / 'include'}",
                           *map(str, kbuild.sources()), "-o", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    so = ctypes.CDLL(str(out))
    so.dmt_arch.restype = ctypes.c_char_p
    assert so.dmt_arch() == b"generic" and so.dmt_kernel_count() == len(EXPECTED)


def test_mmio_read_on_l1_is_the_load_latency():
    # mmio-read's chain has an AND and an ADD besides the load; dmt_run subtracts them
    # (timed alone), so on L1-resident RAM it must read as a pure chase does.  Before
    # that, it read 1.4x read-lat here (about 2 cycles more per read).
    _, m = _timer("mmio-read", ["width=8"], size="4KiB")
    _, r = _timer("read-lat", size="4KiB")
    n = 1 << 20
    ms, rs = [], []
    for _ in range(60):  # interleaved; the minimum of each is its least disturbed value
        ms.append(m(n))
        rs.append(r(n))
        if len(ms) >= 5 and 0.8 < min(ms) / min(rs) < 1.2:
            break  # a loaded machine only adds time: the old 2 cycles never go away
    assert 0.8 < min(ms) / min(rs) < 1.2, (min(ms) / n * 1e9, min(rs) / n * 1e9)


# selfcheck: the likwid-bench pairing follows the CPU (an AVX2-only EPYC asked for width 64).
@pytest.mark.parametrize("width,isa", [(64, "avx512"), (32, "avx"), (16, "sse")])
def test_selfcheck_pairs_the_width_with_the_same_isa(width, isa):
    from bench import selfcheck
    got = selfcheck.pairs("x86_64", width)
    assert [(p.workload, p.likwid) for p in got] == [
        ("read-bw", f"load_{isa}"), ("write-bw", f"store_mem_{isa}"), ("copy-to", f"copy_mem_{isa}")]
    assert all(f"width={width}" in p.params for p in got)
    # every pair is a case this CPU can plan at that width, or the CPU lacks the width
    if kernels.width_supported(width):
        for p in got:
            plan.build(["normal"], [p.workload], list(p.params), ["1MiB"])


def test_selfcheck_arm64_pairs_match_neon_access_sizes():
    from bench import selfcheck
    got = {p.likwid: p.params for p in selfcheck.pairs("arm64", selfcheck.bench_width("arm64"))}
    assert got == {"load_neon": ("width=16",), "store_neon": ("width=16", "mode=plain"),
                   "copy_nt": ("width=8", "mode=nt")}  # LDR/STR Q; LDNP/STNP X pairs


def test_selfcheck_uses_the_widest_width_here():
    from bench import selfcheck
    assert selfcheck.bench_width(kernels.arch()) == kernels.widest_width()


@pytest.mark.skipif(shutil.which("likwid-bench") is None, reason="needs likwid-bench (Debian: likwid)")
def test_likwid_has_the_tests_we_pair_with_here():
    from bench import selfcheck
    width = selfcheck.bench_width(kernels.arch())
    assert {p.likwid for p in selfcheck.pairs(kernels.arch(), width)} <= selfcheck.likwid_tests()


def test_selfcheck_chase_sides_run_and_agree_on_l2_sized_chains():
    # Both chases at 256 KiB (L2-resident: no DRAM, little noise) after a full cycle.
    from bench import selfcheck
    ours = min(selfcheck.chase_ns(256 << 10, 0.05) for _ in range(3))
    ref = min(selfcheck.reference_chase(256 << 10, 0.05) for _ in range(3))
    assert 0.5 < ours / ref < 2, (ours, ref)
    assert "drand48" in selfcheck.CHASE_FINDING and selfcheck.spread([1.0, 1.5]) == 0.5
    assert "drand48(" not in (Path(selfcheck.__file__).with_name("reference") / "chase_ref.c").read_text()


def test_width_cap_makes_this_cpu_a_narrower_one(tmp_path):
    # $DMT_MAX_WIDTH=16: defaults, plans and the C library's own check all stop at 16 bytes.
    env = {"DMT_MAX_WIDTH": "16"}
    listed = run_cli("list", env=env)
    assert "width=8|16|32|64 (default 16)" in listed.stdout.splitlines()[0], listed.stdout
    proc = run_cli("run", "--workload", "read-bw", "--param", "width=32", "--size", "1MiB",
                   "--results-dir", str(tmp_path), env=env)
    assert_one_line_error(proc, 2, "read-bw[32B,1MiB]", "DMT_MAX_WIDTH=16")
    assert_one_line_error(run_cli("list", env={"DMT_MAX_WIDTH": "24"}), 2, "DMT_MAX_WIDTH=24")


def test_an_unmeasurable_region_is_retimed_a_few_times_then_fails():
    import errno

    seq = iter([-errno.ERANGE, 250])
    assert kernels.timed(lambda: next(seq)) == 250  # noise at a few loops: the next timing counts
    calls = []
    assert kernels.timed(lambda: calls.append(1) or -errno.ERANGE) == -errno.ERANGE
    assert len(calls) == kernels.UNMEASURABLE_TRIES  # a real overrun keeps failing
    assert kernels.timed(lambda: calls.append(2) or -errno.EINVAL) == -errno.EINVAL and calls[-1] == 2
    assert "calibrated overhead" in kernels.failure(-errno.ERANGE)

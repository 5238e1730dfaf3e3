"""The CLI as a user runs it: a real short run on RAM, pyperf reading it back, and every
bad input ending in one line and exit 2."""
import json
import subprocess
import sys

import pyperf
import pytest

from bench import kernels
from conftest import QUICK, assert_one_line_error, run_cli

# The default width follows the CPU (and $DMT_MAX_WIDTH): what the library reports here.
W = kernels.widest_width()


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("res")
    proc = run_cli("run", "--workload", "read-bw", "--workload", "read-lat", "--workload", "doorbell",
                   "--workload", "wc-burst", "--size", "1MiB", "--results-dir", str(root), "--machine", "testbox",
                   "--label", "quick", *QUICK)
    assert proc.returncode == 0, proc.stderr
    files = list((root / "testbox").glob("*-quick.json"))
    assert len(files) == 1 and not list(root.rglob("*.partial"))
    return proc, files[0]


def test_run_writes_pyperf_suite_with_metadata(quick_run):
    proc, path = quick_run
    suite = pyperf.BenchmarkSuite.load(str(path))
    names = suite.get_benchmark_names()
    assert names == [f"read-bw[{W}B,1MiB]@normal", "read-lat[64B,1MiB]@normal", "doorbell[8B]@normal",
                     "wc-burst[64B,1MiB]@normal"]
    for bench in suite.get_benchmarks():
        meta = bench.get_metadata()
        for key in ("attr", "realised", "target", "workload", "params", "report_unit", "units_per_loop",
                    "stage2", "fwb", "effective", "emulated", "machine_id", "kernel_release", "virt",
                    "hypervisor", "dmtbench_version", "dmtbench_commit", "cpu_model_name"):
            assert key in meta, key
        assert meta["attr"] == "normal" and meta["target"] == "ram" and meta["emulated"] == "false"
        assert meta["stage2"] in ("none", "normal") and meta["effective"] == "normal"
    read = suite.get_benchmark(f"read-bw[{W}B,1MiB]@normal")
    assert read.get_metadata()["inner_loops"] == 1 << 20  # pyperf stores seconds per byte
    assert read.get_metadata()["report_unit"] == "GB/s"
    # A 1 MiB read sweep on any machine this runs on: between 0.5 and 2000 GB/s.
    assert 0.5 < 1 / read.median() / 1e9 < 2000
    assert f"read-bw[{W}B,1MiB]@normal" in proc.stdout and "GB/s" in proc.stdout and "4 of 4 cases" in proc.stdout


def test_pyperf_stats_and_compare_to_read_it(quick_run):
    _, path = quick_run
    stats = subprocess.run([sys.executable, "-m", "pyperf", "stats", str(path)], capture_output=True, text=True)
    assert stats.returncode == 0 and "read-lat[64B,1MiB]@normal" in stats.stdout
    cmp = subprocess.run([sys.executable, "-m", "pyperf", "compare_to", str(path), str(path)],
                         capture_output=True, text=True)
    assert cmp.returncode == 0, cmp.stderr


def test_worker_options_survive_respawn(results_dir):
    # Param sweep + explicit attr + size: workers must rebuild the same plan from argv.
    proc = run_cli("run", "--attr", "normal-wb", "--workload", "write-bw", "--param", "mode=plain,nt",
                   "--param", "width=8,16", "--size", "256KiB", "--results-dir", str(results_dir), *QUICK)
    assert proc.returncode == 0, proc.stderr
    (path,) = results_dir.rglob("*.json")
    names = pyperf.BenchmarkSuite.load(str(path)).get_benchmark_names()
    assert names == [f"write-bw[{w}B,{m},256KiB]@normal" for w in (8, 16) for m in ("plain", "nt")]


def test_list_targets_combine():
    out = run_cli("list")
    assert out.returncode == 0 and "read-lat" in out.stdout and "burst=8|16|32|64|128|256" in out.stdout
    out = run_cli("targets")
    assert out.returncode == 0 and "normal         available" in out.stdout and "normal-nc      not available" in out.stdout
    out = run_cli("combine", "normal-nc", "device-ngnre", "--json")
    assert json.loads(out.stdout)["effective"] == "device-ngnre"
    out = run_cli("combine", "device-ngnre", "normal", "--fwb")
    assert "-> normal (Normal)" in out.stdout and "FWB MemAttr 6" in out.stdout


@pytest.mark.parametrize("args,needles", [
    (["run", "--attr", "normal-nc"], ["cannot give normal-nc", "guest", "kmod"]),
    (["run", "--attr", "device-nGnRx"], ["unknown memory attribute", "device-ngnre"]),
    (["run", "--workload", "nope"], ["unknown workload", "bench list"]),
    (["run", "--target", "floppy"], ["unknown target"]),
    (["run", "--size", "lots"], ["bad size"]),
    (["run", "--workload", "read-bw", "--size", "100"], ["multiples of 256"]),
    (["run", "--param", "width=24", "--workload", "read-bw"], ["width=24 is not allowed"]),
    (["run", "--param", "flavour=x"], ["no selected workload"]),
    (["run", "--param", "width"], ["bad --param"]),
    (["combine", "normal", "as-s1"], ["needs FEAT_S2FWB"]),
    (["combine", "bogus", "normal"], ["unknown memory attribute"]),
    (["frobnicate"], ["unknown command"]),
])
def test_bad_input_is_one_line_exit_2(args, needles, results_dir):
    proc = run_cli(*args, "--results-dir", str(results_dir)) if args[0] == "run" else run_cli(*args)
    assert_one_line_error(proc, 2, *needles)
    assert not results_dir.exists()


def test_ctrl_c_keeps_finished_cases(results_dir):
    import os
    import signal

    from conftest import REPO

    proc = subprocess.Popen([sys.executable, "-m", "bench", "run", "--workload", "mmio-read", "--workload", "doorbell",
                             "--results-dir", str(results_dir), "-p", "3", "-n", "2", "-w", "0", "--min-time", "0.5"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    seen = ""
    while "round 2/3" not in seen:  # interleaved: round 1 of both cases is finished
        seen += proc.stdout.read(1)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does: the whole process group
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted; finished cases are in" in err
    (path,) = results_dir.rglob("*-partial.json")
    suite = pyperf.BenchmarkSuite.load(str(path))
    assert suite.get_benchmark_names() == ["mmio-read[8B]@normal", "doorbell[8B]@normal"]
    assert all(len([r for r in b.get_runs() if r.values]) >= 1 for b in suite.get_benchmarks())

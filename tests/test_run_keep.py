"""What a run keeps: unwritable outputs, failing workers, interleaving, durable partial
files, collisions and a full disk; all with real `bench run` processes."""
import json
import os
import resource
import signal
import subprocess
import sys

import pyperf
import pytest

from bench import results
from conftest import QUICK, REPO, assert_one_line_error, run_cli

TWO = ("--workload", "mmio-read", "--workload", "doorbell")


@pytest.mark.parametrize("where", [["-o", "/proc/forbidden/x.json"], ["--results-dir", "/etc/hostname/sub"]])
def test_unwritable_output_is_one_line_before_measuring(where):
    proc = run_cli("run", *TWO, *where, *QUICK)
    line = assert_one_line_error(proc, 2, "cannot")
    assert "-o" in line or "--results-dir" in line
    assert "[" not in proc.stdout and "round" not in proc.stdout  # nothing was measured


def test_existing_output_is_refused(tmp_path):
    out = tmp_path / "x.json"
    out.write_text("mine")
    assert_one_line_error(run_cli("run", *TWO, "-o", str(out), *QUICK), 2, "exists")
    assert out.read_text() == "mine"


def test_worker_timeout_fails_that_case_and_the_run_goes_on(results_dir):
    # A read-lat worker on 4 GiB spends about 4 s building its 64M-slot chain (measured on
    # this 2-core VM, unloaded); a doorbell worker is done in well under 1 s.
    proc = run_cli("run", "--workload", "read-lat", "--workload", "doorbell", "--size", "4GiB", "--timeout", "2",
                   "--results-dir", str(results_dir), "-p", "2", "-n", "1", "-w", "0", "--min-time", "0.005")
    line = assert_one_line_error(proc, 1, "1 case(s) failed", "read-lat[64B,4GiB]@normal")
    assert "interrupted" not in line and "worker timed out" in proc.stdout
    (path,) = results_dir.rglob("*-partial.json")
    suite = pyperf.BenchmarkSuite.load(str(path))
    assert suite.get_benchmark_names() == ["doorbell[8B]@normal"]  # measured after the failure
    assert len([r for r in suite.get_benchmark("doorbell[8B]@normal").get_runs() if r.values]) == 2


def test_interleaved_rounds_are_recorded_and_pyperf_reads_them(tmp_path):
    out = tmp_path / "r.json"
    proc = run_cli("run", *TWO, "-o", str(out), "-p", "3", "-n", "1", "-w", "0", "--min-time", "0.005")
    assert proc.returncode == 0, proc.stderr
    assert "round 3/3" in proc.stdout and "(interleaved)" in proc.stdout
    data = json.loads(out.read_text())
    for bench in data["benchmarks"]:
        value_runs = [r for r in bench["runs"] if r.get("values")]
        assert [r["metadata"]["round"] for r in value_runs] == [1, 2, 3]
    # Round-robin: round 2 of mmio-read started after round 1 of doorbell ended.
    suite = pyperf.BenchmarkSuite.load(str(out))
    starts = {b.get_name(): [r.get_metadata()["date"] for r in b.get_runs() if r.values] for b in suite.get_benchmarks()}
    assert starts["mmio-read[8B]@normal"][1] > starts["doorbell[8B]@normal"][0]
    assert suite.get_metadata()["schedule"] == "interleaved"
    for cmd in (["stats", str(out)], ["compare_to", str(out), str(out)]):
        done = subprocess.run([sys.executable, "-m", "pyperf", *cmd], capture_output=True, text=True)
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr


def test_no_interleave_runs_case_by_case(results_dir):
    proc = run_cli("run", *TWO, "--no-interleave", "--results-dir", str(results_dir), "-p", "2", *QUICK[2:])
    assert proc.returncode == 0, proc.stderr
    assert "[2/2] doorbell[8B]@normal" in proc.stdout and "round" not in proc.stdout


def test_partial_file_is_whole_after_a_kill(results_dir):
    """SIGKILL the manager mid-run: the hidden partial file holds every finished process."""
    proc = subprocess.Popen([sys.executable, "-m", "bench", "run", *TWO, "--results-dir", str(results_dir),
                             "-p", "4", "-n", "2", "-w", "0", "--min-time", "0.3"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    seen = ""
    while "round 3/4" not in seen:
        seen += proc.stdout.read(1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    (partial,) = results_dir.rglob(".*.partial")
    suite = pyperf.BenchmarkSuite.load(str(partial))
    for bench in suite.get_benchmarks():
        assert len([r for r in bench.get_runs() if r.values]) >= 2
    assert not list(results_dir.rglob("*.tmp"))


def test_same_stamp_and_label_never_share_files(tmp_path):
    final = results.default_path(tmp_path, "box", "same")
    first = results.reserve(final, exact=False)
    second = results.reserve(final, exact=False)
    assert first != second and results.partial_path(first).exists() and results.partial_path(second).exists()
    results.partial_path(second).write_text("theirs")
    assert results.finalise(results.partial_path(first), first, complete=False) is None  # nothing measured
    assert results.partial_path(second).read_text() == "theirs"
    with pytest.raises(Exception, match="another run is writing it, or a killed run left its data"):
        results.reserve(second, exact=True)


def _small_files(limit: int):
    def set_limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return set_limit


def test_full_disk_is_one_line_and_keeps_what_was_written(results_dir):
    """A file-size limit makes writes fail with EFBIG the way a full disk fails with
    ENOSPC: the run stops with one line and the last whole partial file is kept."""
    proc = subprocess.run([sys.executable, "-m", "bench", "run", *TWO, "--results-dir", str(results_dir),
                           "-p", "8", "-n", "1", "-w", "0", "--min-time", "0.005"],
                          cwd=REPO, capture_output=True, text=True, timeout=300, preexec_fn=_small_files(4500),
                          env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})  # the limit is for results only
    line = assert_one_line_error(proc, 1, "cannot write", "File too large")
    (kept,) = results_dir.rglob("*-partial.json")
    assert str(kept) in line
    suite = pyperf.BenchmarkSuite.load(str(kept))
    assert suite.get_benchmark_names() and not list(results_dir.rglob("*.tmp"))

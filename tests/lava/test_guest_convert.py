"""guestkit.lava.guest_convert: real KTAP (`bench probe --ktap`) and real pyperf files of this
repo into lava-test-case calls, through a stub lava-test-case on PATH that records its argv."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyperf
import pytest
from conftest import REPO, run_cli
from lavafix import lava_ready  # noqa: F401  (a fixture)

from bench.results import value_of
from guestkit.lava import guest_convert as gc

EXAMPLES = sorted((REPO / "results" / "examples").rglob("*.json"))
BAD_IN_NAMES = (" ", "=", ">", "/")


@pytest.fixture
def stub_path(tmp_path: Path) -> tuple[dict, Path]:
    """An environment whose PATH starts with a lava-test-case that appends its argv (as JSON) to a file."""
    bin_dir, record = tmp_path / "bin", tmp_path / "calls.jsonl"
    bin_dir.mkdir()
    stub = bin_dir / "lava-test-case"
    # A shell script like LAVA's own (the converter sources it in a subshell per case):
    # one line per call, the arguments separated by tabs.
    stub.write_text(f'#!/bin/sh\nfor a in "$@"; do printf "%s\\t" "$a"; done >> {record}\necho >> {record}\nexit 0\n')
    stub.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONPATH": str(REPO)}
    return env, record


def convert(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "guestkit.lava.guest_convert", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=120, check=False)


def calls(record: Path) -> list[list[str]]:
    return [line.rstrip("\t").split("\t") for line in record.read_text().splitlines()] if record.exists() else []


def test_ktap_of_a_real_probe_run(tmp_path, stub_path):
    env, record = stub_path
    proc = run_cli("probe", "--ktap")
    assert proc.returncode == 0, proc.stderr
    ktap = tmp_path / "ram.ktap"
    ktap.write_text(proc.stdout)
    done = convert(env, "ktap", "--prefix-stem", str(ktap))
    assert done.returncode == 0, done.stderr
    got = calls(record)
    tests = [line for line in proc.stdout.splitlines() if line.startswith(("ok ", "not ok "))]
    assert len(got) == len(tests) > 0
    for argv, line in zip(got, tests):
        name = line.split(" # ")[0].split(None, 2 if line.startswith("ok") else 3)[-1]
        assert argv[0] == f"ram.{name}"
        want = "skip" if "# SKIP" in line else "fail" if line.startswith("not ok") else "pass"
        assert argv[1:] == ["--result", want]
        assert not any(c in argv[0] for c in BAD_IN_NAMES)


def test_ktap_directives():
    text = """KTAP version 1
1..4
ok 1 normal.load8 # ok
not ok 2 normal-nc.dc-zva # expected ok, got SIGBUS
ok 3 device-gre.ldxr # SKIP no exclusives
ok 4 device-ngnre.dc-zva # XFAIL expected SIGBUS, got ok
# totals: pass:1 fail:1 xfail:1 xpass:0 skip:1 error:0"""
    assert [(c.name, c.result) for c in gc.ktap_cases(text, "kvm.")] == [
        ("kvm.normal.load8", "pass"), ("kvm.normal-nc.dc-zva", "fail"), ("kvm.device-gre.ldxr", "skip"),
        ("kvm.device-ngnre.dc-zva", "pass")]


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_pyperf_cases_agree_with_bench(path):
    """Median, unit and spread as bench.results.value_of computes them, for every benchmark."""
    cases = {c.name: c for c in gc.pyperf_cases(json.loads(path.read_text()))}
    benches = pyperf.BenchmarkSuite.load(str(path)).get_benchmarks()
    assert len(cases) == 2 * len(benches)
    for bench in benches:
        median, rsd, unit = value_of(bench)
        case = cases[gc.sanitise(bench.get_name())]
        assert case.measurement == pytest.approx(median, rel=1e-9)
        assert case.units == gc.unit_name(unit) and "/" not in case.units
        spread = cases[gc.sanitise(bench.get_name()) + ".rsd"]
        assert spread.measurement == pytest.approx(rsd * 100, rel=1e-9, abs=1e-12) and spread.units == "percent"


def test_pyperf_through_the_stub(stub_path):
    env, record = stub_path
    path = EXAMPLES[0]
    done = convert(env, "pyperf", str(path))
    assert done.returncode == 0, done.stderr
    got = calls(record)
    names = [b.get_name() for b in pyperf.BenchmarkSuite.load(str(path)).get_benchmarks()]
    assert [a[0] for a in got[::2]] == [gc.sanitise(n) for n in names]
    for argv in got:
        assert argv[1:3] == ["--result", "pass"] and argv[3] == "--measurement" and argv[5] == "--units"
        float(argv[4])
        assert not any(c in argv[0] + argv[6] for c in BAD_IN_NAMES)


def test_sanitise():
    assert gc.sanitise("write-bw[64B, plain]@normal-nc") == "write-bw[64B,_plain]@normal-nc"
    assert gc.sanitise("a=b>c/d e") == "a_b_c_d_e"
    assert len(gc.sanitise("x" * 300)) == gc.MAX_NAME
    assert gc.unit_name("GB/s") == "GB_per_s" and gc.unit_name("M/s") == "M_per_s"


def test_without_lava_test_case_the_calls_are_printed(tmp_path):
    env = {**os.environ, "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}
    done = convert(env, "pyperf", str(EXAMPLES[0]))
    assert done.returncode == 0 and done.stdout.startswith("lava-test-case ")


def test_bad_input_is_one_line(tmp_path, stub_path):
    env, _ = stub_path
    missing = convert(env, "ktap", str(tmp_path / "nope.ktap"))
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "no such file" in missing.stderr
    junk = tmp_path / "junk.json"
    junk.write_text("[1, 2]")
    bad = convert(env, "pyperf", str(junk))
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and "Traceback" not in bad.stderr


LAVA_SCRIPTS = Path("/usr/lib/python3/dist-packages/lava_dispatcher/lava_test_shell")


@pytest.mark.usefixtures("lava_ready")
def test_with_lavas_own_lava_test_case(tmp_path):
    """The dispatcher's real lava-test-case (deps --lava) prints the signals LAVA parses."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("lava-test-case", "lava-common-functions"):
        (bin_dir / name).write_text("#!/bin/sh\n" + (LAVA_SCRIPTS / name).read_text())
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONPATH": str(REPO),
           "LAVA_RESULT_DIR": str(tmp_path / "lava-results")}
    done = convert(env, "pyperf", str(EXAMPLES[0]))
    assert done.returncode == 0, done.stderr
    signals = [line for line in done.stdout.splitlines() if line.startswith("<LAVA_SIGNAL_TESTCASE ")]
    cases = gc.pyperf_cases(json.loads(EXAMPLES[0].read_text()))
    assert len(signals) == len(cases)
    for line, case in zip(signals, cases):
        fields = dict(f.split("=", 1) for f in line.strip("<>").split()[1:])
        assert fields["TEST_CASE_ID"] == case.name and fields["RESULT"] == "pass"
        assert fields["UNITS"] == case.units and float(fields["MEASUREMENT"]) == pytest.approx(case.measurement, rel=1e-5)
        assert (tmp_path / "lava-results" / "results" / case.name / "result").read_text().strip() == "pass"


def test_nested_ktap_per_attribute():
    """l1_steps' KTAP nests each attribute's probes; --cases attr keeps one case per attribute."""
    from guestkit.lava import l1_steps

    data = l1_steps.probe_target("ram", [], [])
    text = l1_steps.ktap_of("ram", data)
    attrs = list(dict.fromkeys(o["attr"] for o in data["outcomes"]))
    top = gc.ktap_cases(text, "ram.", top_level=True)
    assert [c.name for c in top] == [f"ram.{a}" for a in attrs]
    every = gc.ktap_cases(text, "ram.")
    assert len(every) == len(data["outcomes"])  # the probes; the attribute lines summarise them
    assert [c.name for c in every] == [f"ram.{o['attr']}.{o['probe']}" for o in data["outcomes"]]
    for attr_case in top:
        probes = [c for c in every if c.name.startswith(attr_case.name + ".")]
        want = "fail" if any(c.result == "fail" for c in probes) else (
            "skip" if all(c.result == "skip" for c in probes) else "pass")
        assert attr_case.result == want

"""LAVA jobs that boot: kind kvmhost (b) through lava-run on the 6.12 host, its outcomes checked
against bench.kvmpolicy; kind emulated (a) through TuxRun with a `bench run --fast`, every
measurement a LAVA case with its unit; the results collected byte for byte and read by
`bench compare`."""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
from conftest import REPO, run_cli
from lavafix import lava_ready  # noqa: F401  (a fixture)

from guestkit.lab import l0_table as table
from guestkit.lava import guest_convert as gc
from guestkit.lava import l0_collect, l0_run

pytestmark = [pytest.mark.guest, pytest.mark.usefixtures("lava_ready")]
PROBES = ("load8", "load8-unaligned", "store8-unaligned")
SENT = re.compile(r"^dmtbench: sent (\S+) (\d+) bytes sha256 ([0-9a-f]{64})$")


def lava_results(log: Path) -> list[dict]:
    """The test cases LAVA recorded for our definitions."""
    entries = l0_run.log_entries(log.read_text(errors="replace"))
    return [e["msg"] for e in entries if e.get("lvl") == "results" and isinstance(e.get("msg"), dict)
            and str(e["msg"].get("definition", "")).endswith(("dmtbench-probe", "dmtbench-run"))]


def assert_byte_identical(log: Path, results: Path) -> list[Path]:
    """Every file the guest sent is in results/ with the guest's size and sha256."""
    lines, _ = l0_collect.console_lines(log)
    sent = [m.groups() for m in map(SENT.match, lines) if m]
    assert sent, "the guest sent no files"
    paths = []
    for rel, size, digest in sent:
        data = (results / rel).read_bytes()
        assert len(data) == int(size) and hashlib.sha256(data).hexdigest() == digest, rel
        paths.append(results / rel)
    return paths


def test_kvmhost_on_612_through_lava_run(tmp_path):
    job = tmp_path / "job"
    made = run_cli("lava", "job", "--kind", "kvmhost", "--kernel", "6.12", *(a for p in PROBES for a in ("--probe", p)),
                   "-o", str(job), module="guestkit", timeout=900)
    assert made.returncode == 0, made.stderr
    results = tmp_path / "results"
    proc = run_cli("lava", "run", str(job), "-r", str(results), module="guestkit", timeout=1500)
    assert proc.returncode == 0, proc.stderr
    (probe_file,) = assert_byte_identical(job / "job.log", results)
    data = json.loads(probe_file.read_text())
    assert data["host_kernel"].startswith("6.12.") and data["kvm"] and not any(
        "error" in b for b in data["backings"].values())
    checked = 0
    for o in data["outcomes"]:
        want = table.predicted(data["host_kernel"], o["backing"], o["attr"], o["probe"], data["fwb"], data["dic"])
        if want is not None:
            assert o["result"] == want, (o, want)
            checked += 1
    assert checked == len(data["outcomes"]) == 6 * 7 * len(PROBES)  # six backings x seven stage-1 attributes
    cases = lava_results(job / "job.log")
    assert len(cases) == len(data["outcomes"])
    assert all(c["result"] == "pass" for c in cases)


def test_emulated_with_fast_run_through_tuxrun(tmp_path):
    job = tmp_path / "job"
    made = run_cli("lava", "job", "--kind", "emulated", "--fast", "--probe", "load8", "-o", str(job), module="guestkit",
                   timeout=900)
    assert made.returncode == 0, made.stderr
    results = tmp_path / "results"
    stray = REPO / "output"  # TuxRun's lava-run writes output/ in its working directory
    had = stray.exists()
    proc = run_cli("lava", "run", "--tuxrun", str(job), "-r", str(results), module="guestkit", timeout=1500)
    assert proc.returncode == 0, proc.stderr
    assert had or not stray.exists(), "lava run --tuxrun left output/ in the user's directory"
    files = assert_byte_identical(job / "log.yaml", results)
    (run_file,) = [p for p in files if not p.name.endswith("-probes.json")]
    suite = json.loads(run_file.read_text())
    cases = {c["case"]: c for c in lava_results(job / "log.yaml") if c["definition"].endswith("dmtbench-run")}
    summaries = gc.benchmark_summaries(suite)
    assert summaries
    for name, median, _rsd, unit in summaries:  # every measurement is a case with its unit
        case = cases[gc.sanitise(name)]
        assert case["result"] == "pass" and case["units"] == gc.unit_name(unit)
        assert float(case["measurement"]) == pytest.approx(median, rel=1e-5)
        assert cases[gc.sanitise(name) + ".rsd"]["units"] == "percent"
    compare = run_cli("compare", str(run_file), str(run_file), "--format", "json")
    assert compare.returncode == 0, compare.stderr
    assert len(json.loads(compare.stdout)["comparisons"][0]["rows"]) == len(summaries)

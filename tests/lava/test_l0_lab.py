"""`guestkit lab --lava`: a host kernel as a LAVA job gives the lab's outcomes and verdicts;
`--lava-server URL --dry-run` writes jobs the dispatcher accepts and submits nothing."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_cli
from lavafix import lava_ready  # noqa: F401  (a fixture)

SERVER = "https://lava.example.org/RPC2"  # a reserved example domain: nothing is contacted in a dry run
PROBES = ("load8-unaligned", "store8-unaligned")


@pytest.mark.usefixtures("lava_ready")
def test_dry_run_writes_a_job_lava_accepts(tmp_path):
    proc = run_cli("lab", "--lava-server", SERVER, "--dry-run", "--host-kernel", "6.12", "--probes-only",
                   "-o", str(tmp_path), module="guestkit", timeout=900)
    assert proc.returncode == 0, proc.stderr
    (job,) = tmp_path.glob("lava-jobs/6.12.*/job.yaml")
    assert f"lavacli --uri {SERVER} jobs submit {job}" in proc.stderr
    valid = run_cli("lava", "run", "--validate", str(job.parent), module="guestkit", timeout=120)
    assert valid.returncode == 0, valid.stderr


def test_lava_runs_the_payload_guest_only(tmp_path):
    proc = run_cli("lab", "--lava", "--guest", "linux", "--host-kernel", "6.12", "-o", str(tmp_path),
                   module="guestkit", timeout=300)
    assert proc.returncode == 2 and "drop --guest linux" in proc.stderr and "Traceback" not in proc.stderr


def outcomes(stdout: str) -> dict[tuple, str]:
    data = json.loads(stdout)
    return {(o["host_kernel"], o["backing"], o["attr"], o["probe"]): o["result"] for o in data["outcomes"]}


@pytest.mark.guest
@pytest.mark.usefixtures("lava_ready")
def test_the_same_outcomes_as_the_lab(tmp_path):
    probes = [a for p in PROBES for a in ("--probe", p)]
    common = ("--host-kernel", "6.12", "--probes-only", *probes, "--json")
    lab = run_cli("lab", *common, "-o", str(tmp_path / "lab"), module="guestkit", timeout=1200)
    lava = run_cli("lab", "--lava", *common, "-o", str(tmp_path / "lava"), module="guestkit", timeout=1200)
    assert lab.returncode == 0, lab.stderr
    assert lava.returncode == 0, lava.stderr
    got, want = outcomes(lava.stdout), outcomes(lab.stdout)
    assert got == want and len(got) == 6 * 7 * len(PROBES)
    assert json.loads(lava.stdout)["mismatches"] == []


def test_lab_lava_without_the_dispatcher(tmp_path):
    import os
    import subprocess
    import sys

    # Everything on PATH but lava-run: QEMU and apt are there, the dispatcher is not.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for d in os.environ["PATH"].split(":"):
        for tool in Path(d).glob("*") if Path(d).is_dir() else []:
            if tool.name != "lava-run" and not (bin_dir / tool.name).exists():
                (bin_dir / tool.name).symlink_to(tool)
    proc = subprocess.run([sys.executable, "-m", "guestkit", "lab", "--lava", "--host-kernel", "6.12",
                           "--probes-only", "-o", str(tmp_path)], env={**os.environ, "PATH": str(bin_dir)},
                          capture_output=True, text=True, timeout=300, check=False)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert proc.returncode == 2 and len(lines) == 1 and "guestkit deps --lava" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr

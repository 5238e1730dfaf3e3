"""Shared helpers: run the real CLI as a user would, in a subprocess."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def run_cli(*args: str, cwd: Path | None = None, module: str = "bench", timeout: float = 300,
            env: dict | None = None) -> subprocess.CompletedProcess:
    """python -m <module> ARGS, capturing output."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd or REPO, capture_output=True,
                          text=True, timeout=timeout, env=full_env)


def assert_one_line_error(proc: subprocess.CompletedProcess, code: int, *needles: str) -> str:
    """The contract for bad input: exit code, one 'error:' line on stderr, no traceback."""
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


# pyperf settings for short real runs in tests: one worker, few loops.
QUICK = ("-p", "1", "-n", "2", "-w", "0", "--min-time", "0.005")


@pytest.fixture
def results_dir(tmp_path: Path) -> Path:
    return tmp_path / "results"


@pytest.fixture(scope="session")
def guest_ready():
    """`python -m guestkit deps` (idempotent): the README's test command sets up the guest
    path itself on a fresh machine."""
    proc = run_cli("deps", module="guestkit", timeout=1200)
    assert proc.returncode == 0, proc.stderr

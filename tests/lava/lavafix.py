"""The LAVA tests' fixture: the dispatcher and TuxRun, installed the way CI does (import it)."""
from __future__ import annotations

import pytest
from conftest import run_cli


@pytest.fixture(scope="session")
def lava_ready():
    """`python -m guestkit deps --lava` (idempotent): lava-run, TuxRun and the guest parts."""
    proc = run_cli("deps", "--lava", module="guestkit", timeout=1800)
    assert proc.returncode == 0, proc.stderr

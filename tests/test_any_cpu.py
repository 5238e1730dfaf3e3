"""The suite on a narrower CPU than this one: the tests whose expectations follow the CPU
(default widths, planned cases, likwid pairs) rerun with $DMT_MAX_WIDTH one step below the
widest width here, so an AVX-512 CI machine also proves them on an AVX2-only one."""
import os
import subprocess
import sys

import pytest

from bench import kernels
from conftest import REPO

CPU_DEPENDENT = ["tests/test_cli.py", "tests/test_kernels.py", "tests/test_run_keep.py", "tests/test_selfcheck.py"]


@pytest.mark.skipif(os.environ.get("DMT_MAX_WIDTH") is not None, reason="already running under a width cap")
def test_cpu_dependent_tests_pass_one_width_narrower():
    widest = kernels.widest_width()
    if widest <= 8:
        pytest.skip("nothing narrower than 8-byte accesses")
    env = {**os.environ, "DMT_MAX_WIDTH": str(widest // 2)}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not guest",
                           *CPU_DEPENDENT], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:]

"""Suite-level metadata every result carries: machine, CPU, kernel, virtualisation, tool."""
from __future__ import annotations

import os
import platform
import re
import socket
import subprocess
from functools import cache
from pathlib import Path

from bench import __version__, kernels

EMULATED_FLAG = "dmtbench.emulated=1"  # guestkit puts this on a TCG guest's kernel command line


def _read(path: str) -> str:
    try:
        return Path(path).read_text(errors="replace").strip().strip("\0")
    except OSError:
        return ""


def machine_name() -> str:
    """The results/<machine>/ directory name: the host name, made path-safe."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname()) or "unknown"


def hypervisor() -> str:
    """The hypervisor we run under, or 'none' on bare metal."""
    name = _read("/sys/hypervisor/type")
    if name:
        return name
    dt = _read("/proc/device-tree/compatible")
    if "linux,dummy-virt" in dt:
        return "qemu-virt"
    cpuinfo = _read("/proc/cpuinfo")
    if re.search(r"^flags\s*:.*\bhypervisor\b", cpuinfo, re.M):
        vendor = _read("/sys/class/dmi/id/sys_vendor") or _read("/sys/class/dmi/id/product_name")
        return vendor or "unknown"
    return "none"


def emulated() -> bool:
    """True in a guest whose CPU is emulated (TCG): timings then prove plumbing only."""
    if os.environ.get("DMTBENCH_EMULATED") in ("1", "true"):
        return True
    return EMULATED_FLAG in _read("/proc/cmdline").split()


def cpu_midr() -> str:
    """MIDR_EL1 on arm64 (implementer, part, revision), else ''."""
    return _read("/sys/devices/system/cpu/cpu0/regs/identification/midr_el1")


def git_commit() -> str:
    """The commit of the source tree we run from ($DMTBENCH_COMMIT where guestkit copied
    the tree into a guest), or 'unknown' outside a checkout."""
    if os.environ.get("DMTBENCH_COMMIT"):
        return os.environ["DMTBENCH_COMMIT"]
    top = Path(__file__).resolve().parent.parent
    if not (top / ".git").exists():
        return "unknown"
    try:
        out = subprocess.run(["git", "-C", str(top), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() or "unknown"


@cache
def system() -> dict[str, str | int]:
    """Metadata for the whole suite (pyperf adds hostname, CPU model, Python...)."""
    hyp = hypervisor()
    meta: dict[str, str | int] = {
        "machine": machine_name(),
        "machine_id": _read("/etc/machine-id") or "unknown",
        "kernel_release": platform.release(),
        "arch": platform.machine(),
        "kernels_arch": kernels.arch(),
        "cpu_features": " ".join(kernels.features()) or "none",
        "virt": "host" if hyp == "none" else "guest",
        "hypervisor": hyp,
        "emulated": "true" if emulated() else "false",
        "dmtbench_version": __version__,
        "dmtbench_commit": git_commit(),
    }
    midr = cpu_midr()
    if midr:
        meta["cpu_midr"] = midr
    return meta

"""`python -m bench probe`: single accesses whose outcome depends on the memory type.

Each probe runs in a forked child that reports a fault as (signal, si_code) through a
pipe (c_kernels/probes.c), so a SIGBUS never takes the run down.  From the unaligned
probes we infer whether a mapping behaves as Device or Normal memory (arm64 only: x86
does not fault on unaligned UC accesses).
"""
from __future__ import annotations

import ctypes
import os
import select
import signal
import struct
import time
from dataclasses import asdict, dataclass
from functools import cache

from bench import kernels, memtypes
from bench.targets import Mapping

P_WRITES, P_UNALIGNED = 1, 2
SI_CODES = {
    signal.SIGBUS: {1: "BUS_ADRALN", 2: "BUS_ADRERR", 3: "BUS_OBJERR"},
    signal.SIGSEGV: {1: "SEGV_MAPERR", 2: "SEGV_ACCERR"},
    signal.SIGILL: {1: "ILL_ILLOPC", 2: "ILL_ILLOPN", 3: "ILL_ILLADR", 4: "ILL_ILLTRP"},
}
HANG_SECONDS = 5.0


class _Desc(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("doc", ctypes.c_char_p), ("flags", ctypes.c_uint32),
                ("fn", ctypes.c_void_p)]


@dataclass(frozen=True)
class Probe:
    index: int
    name: str
    doc: str
    writes: bool
    unaligned: bool


@dataclass(frozen=True)
class Outcome:
    """What one probe did on one mapping, and whether that fits the expected type."""

    attr: str
    probe: str
    result: str            # ok | SIGBUS | SIGSEGV | SIGILL | skip | hang | exit N
    code: str = ""         # si_code name (BUS_ADRALN...) or why skipped
    expected: str = ""     # 'ok' or 'SIGBUS' where the architecture fixes it, else ''

    @property
    def agrees(self) -> bool | None:
        if not self.expected or self.result == "skip":
            return None
        return self.result == self.expected

    def to_dict(self) -> dict:
        return {**asdict(self), "agrees": self.agrees}


@cache
def probes() -> list[Probe]:
    """Every probe the library declares."""
    lib = kernels.lib()
    lib.dmt_probe_at.restype = ctypes.POINTER(_Desc)
    lib.dmt_probe_child.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
    out = []
    for i in range(lib.dmt_probe_count()):
        d = lib.dmt_probe_at(i).contents
        out.append(Probe(i, d.name.decode(), d.doc.decode(), bool(d.flags & P_WRITES), bool(d.flags & P_UNALIGNED)))
    return out


def run_one(probe: Probe, ptr: int) -> tuple[str, str]:
    """Fork, run the probe in the child, return (result, code)."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: only the probe, then _exit (no Python cleanup, no atexit)
        os.close(rfd)
        rc = kernels.lib().dmt_probe_child(probe.index, ptr, wfd)
        os._exit(0 if rc == 0 else 4)
    os.close(wfd)
    try:
        status = _wait(pid)
        data = os.read(rfd, 8) if select.select([rfd], [], [], 0)[0] else b""
    finally:
        os.close(rfd)
    if status is None:
        return "hang", f"no completion in {HANG_SECONDS:.0f} s (child killed)"
    if len(data) == 8:
        sig, code = struct.unpack("ii", data)
        return signal.Signals(sig).name, SI_CODES.get(sig, {}).get(code, str(code))
    if os.WIFSIGNALED(status):
        return signal.Signals(os.WTERMSIG(status)).name, ""
    code = os.WEXITSTATUS(status)
    return ("ok", "") if code == 0 else ("skip", "not on this CPU") if code == 4 else (f"exit {code}", "")


def _wait(pid: int) -> int | None:
    deadline = time.monotonic() + HANG_SECONDS
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(0.002)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return None


def expectation(probe: Probe, effective: str | None) -> str:
    """The architecturally fixed outcome, or '' where the architecture allows either."""
    if probe.name in ("ldp", "stp", "dc-zva", "exclusive", "atomic") or effective in (None, "unknown"):
        return ""
    if not probe.unaligned:
        return "ok"
    if kernels.arch() != "arm64":
        return "ok"  # x86 completes unaligned accesses to any memory type
    return "SIGBUS" if memtypes.get(effective).device else "ok"


def probe_mapping(mapping: Mapping, selected: list[Probe], effective: str | None) -> list[Outcome]:
    """Run each probe on the mapping; stores only where the mapping is writable."""
    out = []
    for p in selected:
        if p.writes and not mapping.writable:
            out.append(Outcome(mapping.attr, p.name, "skip", "writes not allowed (--allow-writes)"))
            continue
        result, code = run_one(p, mapping.ptr)
        out.append(Outcome(mapping.attr, p.name, result, code, expectation(p, effective)))
    return out


def infer_class(outcomes: list[Outcome]) -> str:
    """'device' if an unaligned access alignment-faulted, 'normal' if all completed,
    'unknown' where that proves nothing (x86, or no unaligned probe ran)."""
    if kernels.arch() != "arm64":
        return "unknown"
    names = {p.name for p in probes() if p.unaligned}
    seen = [o for o in outcomes if o.probe in names and o.result != "skip"]
    if any(o.result == "SIGBUS" and o.code == "BUS_ADRALN" for o in seen):
        return "device"
    return "normal" if seen and all(o.result == "ok" for o in seen) else "unknown"


def infer_mapping(mapping: Mapping) -> str:
    """Infer a mapping's class with the unaligned 8-byte load (no writes needed)."""
    probe = next(p for p in probes() if p.name == "load8-unaligned")
    return infer_class(probe_mapping(mapping, [probe], None))

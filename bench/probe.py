"""`python -m bench probe`: single accesses whose outcome depends on the memory type.

Each probe runs in a forked child that reports a fault as (signal, si_code) through a
pipe (c_kernels/probes.c), so a SIGBUS never takes the run down.  From the unaligned
probes we infer whether a mapping behaves as Device or Normal memory (arm64 only: x86
does not fault on unaligned UC accesses).
"""
from __future__ import annotations

import os
import select
import signal
import struct
import time

from bench import kernels, memtypes
from bench.outcomes import EXCL_TRIES, NOT_MODELLED, STXR_FAIL, Outcome, Probe, infer_class, probes
from bench.targets.base import Mapping

SI_CODES = {
    signal.SIGBUS: {1: "BUS_ADRALN", 2: "BUS_ADRERR", 3: "BUS_OBJERR"},
    signal.SIGSEGV: {1: "SEGV_MAPERR", 2: "SEGV_ACCERR"},
    signal.SIGILL: {1: "ILL_ILLOPC", 2: "ILL_ILLOPN", 3: "ILL_ILLADR", 4: "ILL_ILLTRP"},
}
HANG_SECONDS = 5.0
_EXIT_SKIP, _EXIT_STXR_FAIL = 4, 5


def run_one(probe: Probe, ptr: int) -> tuple[str, str]:
    """Fork, run the probe in the child, return (result, code)."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: only the probe, then _exit (no Python cleanup, no atexit)
        os.close(rfd)
        rc = kernels.lib().dmt_probe_child(probe.index, ptr, wfd)
        os._exit(0 if rc == 0 else _EXIT_STXR_FAIL if rc == STXR_FAIL else _EXIT_SKIP)
    os.close(wfd)
    try:
        status = _wait(pid)
        data = os.read(rfd, 8) if select.select([rfd], [], [], 0)[0] else b""
    finally:
        os.close(rfd)
    if status is None:
        return "hang", f"no completion in {HANG_SECONDS:.0f} s (child killed)"
    return decode(status, data)


def decode(status: int, data: bytes) -> tuple[str, str]:
    """(result, code) from a probe child's wait status and what its fault handler wrote."""
    if len(data) == 8:
        sig, code = struct.unpack("ii", data)
        return signal.Signals(sig).name, SI_CODES.get(sig, {}).get(code, str(code))
    if os.WIFSIGNALED(status):
        return signal.Signals(os.WTERMSIG(status)).name, ""
    code = os.WEXITSTATUS(status)
    if code == _EXIT_STXR_FAIL:
        return "stxr-fail", f"STXR status 1 in all {EXCL_TRIES} tries"
    return ("ok", "") if code == 0 else ("skip", "not on this CPU") if code == _EXIT_SKIP else (f"exit {code}", "")


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
    if probe.name in ("ldp", "stp") or effective in (None, "unknown"):
        return ""
    device = memtypes.get(effective).device
    if probe.name in ("exclusive", "atomic"):
        # Guaranteed only on Normal write-back; elsewhere they may fail, tear or fault.
        return "ok" if effective == "normal" else ""
    if probe.name == "dc-zva":
        return "SIGBUS" if device and kernels.arch() == "arm64" else "ok"
    if not probe.unaligned:
        return "ok"
    if kernels.arch() != "arm64":
        return "ok"  # x86 completes unaligned accesses to any memory type
    return "SIGBUS" if device else "ok"


def footnotes(outcomes: list[Outcome], emulated: bool) -> list[str]:
    """Why an outcome differs from the architecture where the emulator is the cause."""
    if not emulated:
        return []
    seen = {o.probe for o in outcomes if o.agrees is False}
    return [f"{name}: {text}" for name, text in NOT_MODELLED.items() if name in seen]


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


def infer_mapping(mapping: Mapping) -> str:
    """Infer a mapping's class with the unaligned 8-byte load (no writes needed)."""
    probe = next(p for p in probes() if p.name == "load8-unaligned")
    return infer_class(probe_mapping(mapping, [probe], None))

"""`python -m bench probe`: single accesses whose outcome depends on the memory type.

Each probe runs in a forked child that reports a fault as (signal, si_code) through a
pipe (c_kernels/probes.c), so a SIGBUS never takes the run down.  From the unaligned
probes we infer whether a mapping behaves as Device or Normal memory (arm64 only: x86
does not fault on unaligned UC accesses).

Outcome.result words (shared with the kvm target, whose payload reports the same probes):
  ok          the access completed
  SIGBUS, SIGSEGV, SIGILL   the child took that signal; Outcome.code is the si_code name
  stxr-fail   `exclusive` only: every store-exclusive (STXR) of EXCL_TRIES reported
              failure, which the architecture allows on Device and Normal-NC memory
  skip        not run (Outcome.code says why: no such instruction, writes not allowed)
  hang        no completion within HANG_SECONDS (child killed)
  exit N      the child exited oddly
(The kvm target adds `fault` (ESR in code) and `killed` (host log line in code).)
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
EXCL_TRIES = 100  # must match EXCL_TRIES in c_kernels/probes.c
STXR_FAIL = 1     # DMT_PROBE_STXR_FAIL in c_kernels/probes.c
_EXIT_SKIP, _EXIT_STXR_FAIL = 4, 5
# Architectural outcomes that QEMU's TCG does not model: a footnote wherever they show.
NOT_MODELLED = {
    "dc-zva": "DC ZVA to Device memory is an alignment fault (SIGBUS/BUS_ADRALN) on arm64 "
              "hardware; QEMU does not model it, so an emulated guest shows ok",
}


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
    result: str            # ok | SIGBUS | SIGSEGV | SIGILL | stxr-fail | skip | hang | exit N
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


def alignment_fault(o: Outcome) -> bool:
    """An alignment fault: SIGBUS/BUS_ADRALN in Linux userspace; in the kvm target's guest
    an EL1 data abort with DFSC 0x21 ('fault', code 'ESR 0x96000021'), or the VM killed
    by the stage-2 one ('killed': KVM cannot handle it)."""
    if o.result == "fault" and o.code.startswith("ESR "):
        return int(o.code.split()[1], 16) & 0x3F == 0x21
    return (o.result, o.code) == ("SIGBUS", "BUS_ADRALN") or o.result == "killed"


def infer_class(outcomes: list[Outcome]) -> str:
    """'device' if an unaligned access alignment-faulted, 'normal' if all completed,
    'unknown' where that proves nothing (x86, or no unaligned probe ran)."""
    if kernels.arch() != "arm64":
        return "unknown"
    names = {p.name for p in probes() if p.unaligned}
    seen = [o for o in outcomes if o.probe in names and o.result != "skip"]
    if any(alignment_fault(o) for o in seen):
        return "device"
    return "normal" if seen and all(o.result == "ok" for o in seen) else "unknown"


def infer_mapping(mapping: Mapping) -> str:
    """Infer a mapping's class with the unaligned 8-byte load (no writes needed)."""
    probe = next(p for p in probes() if p.name == "load8-unaligned")
    return infer_class(probe_mapping(mapping, [probe], None))

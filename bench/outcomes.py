"""The probe records both sides share: the declared probes, their outcomes, and the class
an outcome set shows (imported by bench.probe, which runs probes in forked children, and
by the kvm target, whose payload runs the same probes in a tiny VM).

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
from dataclasses import asdict, dataclass
from functools import cache

from bench import kernels

P_WRITES, P_UNALIGNED = 1, 2
EXCL_TRIES = 100  # must match EXCL_TRIES in c_kernels/probes.c
STXR_FAIL = 1     # DMT_PROBE_STXR_FAIL in c_kernels/probes.c
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

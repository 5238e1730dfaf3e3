"""The target interface: something that maps memory with a chosen attribute."""
from __future__ import annotations

import ctypes
import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field

from bench import memtypes
from bench.errors import UserError


@dataclass(frozen=True)
class Mapping:
    """A live mapping: `ptr` stays valid until close()."""

    ptr: int
    size: int
    attr: str          # the attribute asked for (stage 1)
    realised: str      # how it was obtained, in words (file, page size, PAT type)
    writable: bool
    target: str
    _close: Callable[[], None] = field(repr=False, compare=False)

    def close(self) -> None:
        self._close()


@dataclass(frozen=True)
class Availability:
    """Whether a target can give an attribute, and why not."""

    attr: str
    ok: bool
    reason: str = ""


class Target(ABC):
    """A source of memory.  Subclasses set `spec` and implement the two methods."""

    spec: str = ""

    @abstractmethod
    def availability(self) -> list[Availability]:
        """Every attribute with available / not available and the reason."""

    @abstractmethod
    def open(self, attr: str, size: int) -> Mapping:
        """Map `size` bytes with `attr`; UserError if it cannot."""

    def attrs(self) -> list[str]:
        """The attributes this target can give."""
        return [a.attr for a in self.availability() if a.ok]

    def require(self, attr: str) -> None:
        """UserError with the reason when `attr` is not available here."""
        name = memtypes.canonical(attr)
        for a in self.availability():
            if a.attr == name and not a.ok:
                raise UserError(f"target {self.spec} cannot give {name}: {a.reason}")

    def max_size(self) -> int | None:
        """The largest mapping this target can give (None: no fixed limit)."""
        return None

    def stage2_hint(self) -> str | None:
        """The stage-2 type a hypervisor gives this target, when the target knows it."""
        return None

    def check_access(self, attr: str, reads: bool, writes: bool) -> None:
        """UserError when a workload's reads or writes are not allowed on this target."""

    # Hooks for a target that runs kernels and probes somewhere else (kvm: inside a VM).
    # The defaults mean "here, in this process": the runner's CaseTimer and forked probes.
    def timer(self, case) -> Callable[[int], float] | None:
        """pyperf's time function for `case` (callable(loops) -> seconds) with attributes
        `mapping` and `metadata` (merged into the benchmark's), or None for CaseTimer."""
        return None

    def classify(self, mapping: Mapping) -> str | None:
        """'device' or 'normal' as this target's own probe sees mapping.attr (None: fork
        the unaligned-load probe here)."""
        return None

    def own_stage2(self) -> str | None:
        """The stage-2 attribute this target itself puts under its memory (a VMM it runs),
        which holds even on bare metal or under TCG; None for targets without one."""
        return None

    def stage2_facts(self) -> dict[str, str]:
        """Metadata about that stage 2 (predicted, observed, host kernel, FWB)."""
        return {}

    def run_probes(self, attrs: list[str], selected: list, stage2: str | None) -> dict[str, list] | None:
        """Probe outcomes per attribute when the target runs the probes itself, else None."""
        return None


_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
MAP_FAILED = ctypes.c_void_p(-1).value


def map_memory(size: int, prot: int, flags: int, fd: int = -1, offset: int = 0) -> tuple[int, Callable[[], None]]:
    """mmap(2) through libc (Python's mmap cannot give the address of a read-only map).
    Returns (address, unmap); OSError on failure."""
    ptr = _libc.mmap(None, size, prot, flags, fd, offset)
    if ptr in (None, MAP_FAILED):
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    state = {"mapped": True}

    def unmap() -> None:  # idempotent: a second munmap could hit a later mapping
        if state["mapped"]:
            state["mapped"] = False
            _libc.munmap(ptr, size)

    return ptr, unmap


def madvise(ptr: int, size: int, advice: int) -> None:
    _libc.madvise(ptr, size, advice)

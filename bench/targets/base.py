"""The target interface: something that maps memory with a chosen attribute."""
from __future__ import annotations

import ctypes
import mmap
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

    def stage2_hint(self) -> str | None:
        """The stage-2 type a hypervisor gives this target, when the target knows it."""
        return None

    def check_access(self, attr: str, reads: bool, writes: bool) -> None:
        """UserError when a workload's reads or writes are not allowed on this target."""


def map_address(m: mmap.mmap) -> int:
    """The address of an mmap object's memory (kept alive by the caller)."""
    return ctypes.addressof(ctypes.c_char.from_buffer(m))


def unmap(m: mmap.mmap) -> Callable[[], None]:
    """A close() for Mapping that drops the buffer export before unmapping."""

    def close() -> None:
        import gc

        gc.collect()  # the ctypes view from map_address must die before munmap
        try:
            m.close()
        except BufferError:
            pass  # still exported: the process is about to exit anyway

    return close

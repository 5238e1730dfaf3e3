"""`kmod` and `kmod:pci:<BDF>/<bar>`: any attribute through the guestkit dmattr module.

/dev/dmattr maps a physically contiguous kernel buffer (`kmod`) or a range of a PCI BAR
(`kmod:pci:...`) with the page protection of the attribute asked for.  The BAR form
keeps every safety rule of the pci target (it is built on it).
"""
from __future__ import annotations

import errno
import fcntl
import mmap
import os
import struct
from pathlib import Path

from bench import memtypes
from bench.errors import UserError
from bench.targets.base import Availability, Mapping, Target, map_memory
from bench.targets.pci import PciTarget

# enum dmattr_attr in guestkit/kmod/dmattr.h numbers the attributes in memtypes' order.
ATTR_CODES = {name: i for i, name in enumerate(memtypes.names())}
SRC_RAM, SRC_BAR = 0, 1
REQ = struct.Struct("<IIQIIIIQ")
IOC_SET = (1 << 30) | (REQ.size << 16) | (ord("D") << 8) | 1      # _IOW('D', 1, struct dmattr_req)
IOC_QUERY = (2 << 30) | (4 << 16) | (ord("D") << 8) | 2           # _IOR('D', 2, __u32)
RAM_MAX = 4 << 20  # the buddy allocator's largest contiguous block (MAX_ORDER - 1, 4 KiB pages)
LOAD_HINT = "load the module: python -m guestkit kmod build, then insmod dmattr.ko (or python -m guestkit run --kmod)"


def device_path() -> Path:
    return Path(os.environ.get("DMTBENCH_DMATTR", "/dev/dmattr"))


class KmodTarget(Target):
    """A dmattr-backed target: RAM buffer, or a BAR range when given a pci spec."""

    def __init__(self, spec: str, allow_reads: bool = False, allow_writes: bool = False) -> None:
        rest = spec.removeprefix("kmod").removeprefix(":")
        self.pci = PciTarget(rest, allow_reads, allow_writes) if rest else None
        self.spec = f"kmod:{self.pci.spec}" if self.pci else "kmod"
        self.dev = device_path()
        if not self.dev.exists():
            raise UserError(f"no {self.dev}: {LOAD_HINT}")
        self.mask = self._query()

    def _query(self) -> int:
        try:
            fd = os.open(self.dev, os.O_RDWR)
        except PermissionError:
            raise UserError(f"no permission to open {self.dev}: run as root") from None
        try:
            return struct.unpack("<I", fcntl.ioctl(fd, IOC_QUERY, bytes(4)))[0]
        finally:
            os.close(fd)

    def availability(self) -> list[Availability]:
        return [Availability(a, bool(self.mask >> code & 1),
                             "" if self.mask >> code & 1 else f"this kernel has no page protection for {a} (dmattr)")
                for a, code in ATTR_CODES.items()]

    def max_size(self) -> int | None:
        return self.pci.max_size() if self.pci else RAM_MAX

    def stage2_hint(self) -> str | None:
        return None if self.pci else "normal"  # hypervisors map guest RAM Normal WB

    def check_access(self, attr: str, reads: bool, writes: bool) -> None:
        if self.pci:
            self.pci.check_access(attr, reads, writes)

    def _request(self, attr: str, size: int) -> bytes:
        if not self.pci:
            return REQ.pack(SRC_RAM, ATTR_CODES[attr], size, 0, 0, 0, 0, 0)
        dom, bus, devfn = self.pci.bdf_numbers()
        return REQ.pack(SRC_BAR, ATTR_CODES[attr], size, dom, bus, devfn, self.pci.index, 0)

    def open(self, attr: str, size: int) -> Mapping:
        attr = memtypes.canonical(attr)
        self.require(attr)
        limit = self.max_size()
        if size > limit:
            raise UserError(f"{self.spec} gives at most {limit} bytes, {size} asked: pass a smaller --size")
        size = -(-size // mmap.PAGESIZE) * mmap.PAGESIZE
        writable = self.pci.allow_writes if self.pci else True
        fd = os.open(self.dev, os.O_RDWR)
        try:
            fcntl.ioctl(fd, IOC_SET, self._request(attr, size))
            prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
            ptr, close = map_memory(size, prot, mmap.MAP_SHARED, fd)
        except OSError as exc:
            why = "not supported by this kernel" if exc.errno == errno.EOPNOTSUPP else exc.strerror
            raise UserError(f"dmattr refused {attr} on {self.spec}: {why} (dmesg says why)") from None
        finally:
            os.close(fd)  # the mapping keeps the file, and so the buffer, alive
        source = f"{self.pci.spec} BAR" if self.pci else "contiguous kernel buffer"
        return Mapping(ptr, size, attr, f"/dev/dmattr {source}, {attr} page protection", writable, self.spec, close)

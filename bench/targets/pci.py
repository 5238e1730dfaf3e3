"""`pci:<BDF>/<bar>`: a PCI BAR mapped through sysfs.

resourceN maps it the way ioremap() does (Device-nGnRE on arm64, UC- on x86);
resourceN_wc, which the kernel offers only for prefetchable BARs, maps it Normal-NC (WC on
x86).  On x86 the type PAT recorded is read back from debugfs where it can be.
Safety: a BAR is touched only when named; reads need --allow-reads and writes
--allow-writes unless the device is known scratch memory (ivshmem).
"""
from __future__ import annotations

import mmap
import os
import platform
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench import memtypes
from bench.errors import UserError
from bench.units import format_size
from bench.targets.base import Availability, Mapping, Target, map_memory

IORESOURCE_MEM = 0x200
IORESOURCE_PREFETCH = 0x2000
# (vendor, device, BAR) that are plain scratch memory: safe to read and write.  ivshmem's
# BAR0 holds its registers (doorbell, interrupt mask), so only BAR2 is listed.
SCRATCH = {(0x1AF4, 0x1110, 2): "ivshmem shared memory (QEMU)"}
FILES = {"device-ngnre": "resource{n}", "normal-nc": "resource{n}_wc"}
# x86/pat_memtype_list names (cattr_name()) of the type each sysfs file asks for.
PAT_NAMES = {"device-ngnre": "uncached-minus", "normal-nc": "write-combining"}
_PAT_LINE = re.compile(r"^PAT: \[mem 0x([0-9a-f]+)-0x([0-9a-f]+)\] ([a-z-]+)", re.M)
_BDF = re.compile(r"^(?:([0-9a-f]{4}):)?([0-9a-f]{2}):([0-9a-f]{2})\.([0-7])$")


def sysfs_root() -> Path:
    """/sys/bus/pci/devices, or $DMTBENCH_SYSFS_PCI (tests point it at a fake tree)."""
    return Path(os.environ.get("DMTBENCH_SYSFS_PCI", "/sys/bus/pci/devices"))


def parse_spec(spec: str) -> tuple[str, int]:
    """'pci:0000:00:01.0/2' -> ('0000:00:01.0', 2); the domain may be left out."""
    body = spec.removeprefix("pci:")
    bdf, sep, bar = body.rpartition("/")
    m = _BDF.match(bdf.lower())
    if not sep or not m or not bar.isdigit():
        raise UserError(f"bad PCI target {spec!r}: use pci:<domain:bus:dev.fn>/<bar>, e.g. pci:0000:00:01.0/2")
    return f"{m.group(1) or '0000'}:{m.group(2)}:{m.group(3)}.{m.group(4)}", int(bar)


@dataclass(frozen=True)
class Bar:
    """One BAR as sysfs describes it."""

    start: int
    size: int
    flags: int

    @property
    def is_mem(self) -> bool:
        return bool(self.flags & IORESOURCE_MEM)

    @property
    def prefetchable(self) -> bool:
        return bool(self.flags & IORESOURCE_PREFETCH)


def read_bars(dev: Path) -> list[Bar]:
    """The six BARs from the device's `resource` file (start end flags per line)."""
    bars = []
    for line in (dev / "resource").read_text().splitlines()[:6]:
        start, end, flags = (int(x, 16) for x in line.split())
        bars.append(Bar(start, end - start + 1 if end else 0, flags))
    return bars


def map_file(path: Path, size: int | None, writable: bool) -> tuple[int, int, Callable[[], None]]:
    """mmap a sysfs resource file shared: (address, size, unmap).  size None: the whole
    file, sized with fstat (lseek on resourceN does not give the BAR's size)."""
    try:
        fd = os.open(path, os.O_RDWR if writable else os.O_RDONLY)
    except PermissionError:
        raise UserError(f"no permission to open {path}: run as root") from None
    except FileNotFoundError:
        raise UserError(f"{path} does not exist: the kernel offers no such mapping for this BAR") from None
    except OSError as exc:
        raise UserError(f"cannot open {path}: {exc.strerror}") from None
    try:
        size = os.fstat(fd).st_size if size is None else size
        ptr, close = map_memory(size, mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0), mmap.MAP_SHARED, fd)
    except OSError as exc:
        raise UserError(f"cannot mmap {path}: {exc.strerror}") from None
    finally:
        os.close(fd)
    return ptr, size, close


def scratch_bars() -> list[tuple[Path, int]]:
    """(device directory, BAR index) of every memory BAR of known scratch devices here."""
    found = []
    root = sysfs_root()
    for dev in sorted(root.iterdir()) if root.is_dir() else []:
        try:
            ids = (int((dev / "vendor").read_text(), 16), int((dev / "device").read_text(), 16))
            bars = read_bars(dev)
        except (OSError, ValueError):
            continue
        found += [(dev, i) for i, b in enumerate(bars) if b.size and b.is_mem and (*ids, i) in SCRATCH]
    return found


class PciTarget(Target):
    """One BAR of one PCI device."""

    def __init__(self, spec: str, allow_reads: bool = False, allow_writes: bool = False) -> None:
        self.bdf, self.index = parse_spec(spec)
        self.spec = f"pci:{self.bdf}/{self.index}"
        self.dev = sysfs_root() / self.bdf
        if not self.dev.is_dir():
            raise UserError(f"no PCI device {self.bdf}: see 'lspci -D' (or /sys/bus/pci/devices) for the BDFs here")
        bars = read_bars(self.dev)
        if self.index >= len(bars) or bars[self.index].size == 0:
            valid = [i for i, b in enumerate(bars) if b.size and b.is_mem]
            raise UserError(f"{self.bdf} has no memory BAR {self.index}: its memory BARs are {valid or 'none'}")
        self.bar = bars[self.index]
        if not self.bar.is_mem:
            raise UserError(f"{self.spec} is an I/O-port BAR, not memory: pick a memory BAR")
        ids = (int((self.dev / "vendor").read_text(), 16), int((self.dev / "device").read_text(), 16), self.index)
        self.scratch = SCRATCH.get(ids)
        self.allow_reads = allow_reads or bool(self.scratch)
        self.allow_writes = allow_writes or bool(self.scratch)

    def bdf_numbers(self) -> tuple[int, int, int]:
        """(domain, bus, devfn) as the kernel numbers them."""
        dom, bus, rest = self.bdf.split(":")
        dev, fn = rest.split(".")
        return int(dom, 16), int(bus, 16), int(dev, 16) << 3 | int(fn)

    def describe(self) -> str:
        kind = self.scratch or "device BAR (not known scratch memory)"
        pf = "prefetchable" if self.bar.prefetchable else "non-prefetchable"
        return f"{kind}, {format_size(self.bar.size)} {pf}"

    def availability(self) -> list[Availability]:
        out = []
        for name in memtypes.names():
            if name == "normal-nc" and not self.bar.prefetchable:
                out.append(Availability(name, False, f"BAR {self.index} is not prefetchable, so sysfs offers no resource{self.index}_wc; use device-ngnre or --target kmod:{self.spec}"))
            elif name in FILES:
                out.append(Availability(name, True))
            else:
                out.append(Availability(name, False, f"sysfs maps only device-ngnre and normal-nc; for {name} use --target kmod:{self.spec}"))
        return out

    def max_size(self) -> int | None:
        return self.bar.size

    def check_access(self, attr: str, reads: bool, writes: bool) -> None:
        if writes and not self.allow_writes:
            raise UserError(f"{self.spec} is not known scratch memory: writing it may disturb the device; pass --allow-writes if it is scratch")
        if reads and not self.allow_reads:
            raise UserError(f"{self.spec} is not known scratch memory: reads of device registers can have side effects; pass --allow-reads to read it")

    def _enable(self) -> None:
        # An unbound device may have memory decoding off; sysfs `enable` turns it on.
        enable = self.dev / "enable"
        try:
            if enable.read_text().strip() == "0":
                enable.write_text("1")
        except PermissionError:
            raise UserError(f"no permission to enable {self.bdf}: run as root") from None
        except OSError:
            pass

    def open(self, attr: str, size: int) -> Mapping:
        attr = memtypes.canonical(attr)
        self.require(attr)
        if size > self.bar.size:
            raise UserError(f"{self.spec} is {self.bar.size} bytes, smaller than the {size} asked: pass a smaller --size")
        path = self.dev / FILES[attr].format(n=self.index)
        self._enable()
        writable = self.allow_writes
        ptr, _, close = map_file(path, size, writable)
        try:
            realised = realised_type(attr, self.bar.start, -(-size // mmap.PAGESIZE) * mmap.PAGESIZE)
        except UserError:
            close()
            raise
        return Mapping(ptr, size, attr, f"sysfs {path.name} ({realised})", writable, self.spec, close)


def pat_list_path() -> Path:
    """debugfs' PAT reservations, or $DMTBENCH_PAT_MEMTYPE_LIST (tests point it at a file)."""
    return Path(os.environ.get("DMTBENCH_PAT_MEMTYPE_LIST", "/sys/kernel/debug/x86/pat_memtype_list"))


def pat_types(start: int, size: int) -> set[str] | None:
    """The PAT types reserved for exactly [start, start + size), or None when the list
    cannot be read (no debugfs, not root)."""
    try:
        text = pat_list_path().read_text()
    except OSError:
        return None
    found = set()
    for m in _PAT_LINE.finditer(text):
        if int(m.group(1), 16) == start and int(m.group(2), 16) == start + size:
            found.add(m.group(3))
    return found


def realised_type(attr: str, start: int, size: int, machine: str | None = None) -> str:
    """What the sysfs mapping of [start, start + size) really got, in words.  On x86 PAT
    may hand out another type than the file asks for (an existing UC- reservation turns
    a WC request into UC-), so the reservation is read back; UserError if it differs."""
    if (machine or platform.machine()) not in ("x86_64", "AMD64"):
        return "stage-1 " + attr
    asked = PAT_NAMES[attr]
    got = pat_types(start, size)
    if got is None:
        return f"PAT {asked} as requested; not read back: no {pat_list_path()} (mount debugfs, run as root)"
    if not got:
        return f"PAT {asked} as requested; no reservation for the range in {pat_list_path().name}"
    if got != {asked}:
        raise UserError(f"PAT gave {' and '.join(sorted(got))} to [mem {start:#x}+{size:#x}], not the {asked} that "
                        f"{attr} asks: another mapping of the BAR holds that type (see {pat_list_path()})")
    return f"PAT {asked}, read back from {pat_list_path().name}"

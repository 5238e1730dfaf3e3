"""`kmod` and `kmod:pci:<BDF>/<bar>`: any attribute through the guestkit dmattr module.

/dev/dmattr maps a physically contiguous kernel buffer (`kmod`) or a range of a PCI BAR
(`kmod:pci:...`) with the page protection of the attribute asked for.  The BAR form
keeps every safety rule of the pci target (it is built on it).  What each source can
take, and the largest buffer, come from the module (DMATTR_IOC_INFO): they depend on the
kernel (its top page order, PAT on x86).  The module checks the PTEs it installed, so a
mapping it returns has the memory type asked for.

The module maps a BAR only under the rules of sysfs resourceN (no lockdown, an assigned
memory BAR, no range a driver claimed exclusively) and only when no driver other than
vfio-pci owns the device; `kmod:pci:<BDF>/<bar>,allow-claimed` lifts the ownership rule
(DMATTR_ALLOW_CLAIMED) for a device the user knows is idle.  Each refusal is one line
that says what to do (REFUSALS, by errno).
"""
from __future__ import annotations

import errno
import fcntl
import mmap
import os
import platform
import struct
from dataclasses import dataclass
from pathlib import Path

from bench import memtypes, metadata
from bench.errors import UserError
from bench.targets.base import Availability, Mapping, Target, map_memory
from bench.targets.pci import PciTarget

# enum dmattr_attr in guestkit/kmod/dmattr.h numbers the attributes in memtypes' order.
ATTR_CODES = {name: i for i, name in enumerate(memtypes.names())}
SRC_RAM, SRC_BAR = 0, 1
REQ = struct.Struct("<IIQIIIIQII")   # struct dmattr_req
INFO = struct.Struct("<IIQ")         # struct dmattr_info
IOC_SET = (1 << 30) | (REQ.size << 16) | (ord("D") << 8) | 1      # _IOW('D', 1, struct dmattr_req)
IOC_INFO = (2 << 30) | (INFO.size << 16) | (ord("D") << 8) | 3    # _IOR('D', 3, struct dmattr_info)
ALLOW_CLAIMED = 1                    # DMATTR_ALLOW_CLAIMED
CLAIMED_OPTION = ",allow-claimed"
LOAD_HINT = "load the module: python -m guestkit kmod build, then insmod dmattr.ko (or python -m guestkit run --kmod)"
# x86 attributes the module offers a BAR but not RAM (see the comment atop dmattr.c).
X86_RAM_LIMITS = {
    "device-ngnrne": "x86 PAT gives RAM UC- at most, never strong UC",
    "normal-wt": "set_memory_wt() is not exported to modules, so RAM cannot be made WT",
}
# Why the module refused a SET or mmap, by errno, and what to do (dmesg has the details).
REFUSALS = {
    errno.EOPNOTSUPP: "not supported by this kernel for this source",
    errno.EBUSY: "the fd's source is still mapped",
    errno.EIO: "the kernel mapped another memory type than asked",
    errno.EPERM: "the kernel forbids userspace mappings of this range (lockdown, or a driver claimed it "
                 "exclusively), as it forbids sysfs resourceN: nothing to do but lift the lockdown or unload that driver",
    errno.ENXIO: "not a memory BAR (an I/O-port or empty BAR, or one the kernel found no room for): "
                 "pick an assigned memory BAR (lspci -v)",
    errno.EADDRNOTAVAIL: "the BAR has no address assigned (the kernel left it unassigned): nothing to map; "
                         "see lspci -vv and the kernel log for the BAR assignment",
    errno.EACCES: "a driver other than vfio-pci owns the device or requested the range: unbind it (or bind vfio-pci), "
                  f"or add {CLAIMED_OPTION} to the target if you know the device is idle",
    errno.ENODEV: "memory decoding is off on the device, or it was removed: write 1 to its sysfs enable, or rescan",
    errno.ENOTTY: "the loaded dmattr.ko is older than this checkout: reload the one python -m guestkit kmod build makes",
}


@dataclass(frozen=True)
class ModuleInfo:
    """What the loaded dmattr module can do on this kernel."""

    ram_attrs: int   # bit n: attribute code n can map the RAM buffer
    bar_attrs: int   # bit n: attribute code n can map a BAR range
    max_ram: int     # the largest RAM buffer, in bytes (the buddy allocator's top order)


def module_info(dev: Path) -> ModuleInfo:
    """DMATTR_IOC_INFO from the module behind `dev`."""
    try:
        fd = os.open(dev, os.O_RDWR)
    except PermissionError:
        raise UserError(f"no permission to open {dev}: run as root (dmattr needs CAP_SYS_RAWIO, as /dev/mem does)") from None
    try:
        raw = fcntl.ioctl(fd, IOC_INFO, bytes(INFO.size))
    except OSError as exc:
        raise UserError(f"{dev} does not answer DMATTR_IOC_INFO ({exc.strerror}): reload the module, "
                        "built from this checkout (python -m guestkit kmod build)") from None
    finally:
        os.close(fd)
    return ModuleInfo(*INFO.unpack(raw))


CACHEABLE = ("normal", "normal-wt")  # stage-1 types the CPU caches (reads at least)


def cacheable_bar_refusal(what: str, attr: str, scratch: bool, emulated: bool, allowed: bool) -> str | None:
    """Why `what` must not map a PCIe BAR with `attr`, or None.  A cacheable host mapping
    of device memory is safe only where that memory is coherent with the CPU caches
    (Grace Hopper's C2C); elsewhere a stale line is read or a dirty one written back late.
    Needless in an emulated host (QEMU models no caches), over known scratch memory
    (ivshmem: host RAM behind the BAR) or when the user vouches (--allow-cacheable-bar)."""
    if memtypes.canonical(attr) not in CACHEABLE or scratch or emulated or allowed:
        return None
    return (f"{what}: a cacheable ({attr}) mapping of a PCIe BAR is safe only where the device memory is coherent "
            "with the CPU caches (as Grace Hopper's C2C is); pass --allow-cacheable-bar if it is")


def device_path() -> Path:
    return Path(os.environ.get("DMTBENCH_DMATTR", "/dev/dmattr"))


class KmodTarget(Target):
    """A dmattr-backed target: RAM buffer, or a BAR range when given a pci spec."""

    def __init__(self, spec: str, allow_reads: bool = False, allow_writes: bool = False,
                 allow_cacheable_bar: bool = False) -> None:
        self.allow_cacheable_bar = allow_cacheable_bar
        rest = spec.removeprefix("kmod").removeprefix(":")
        self.allow_claimed = rest.endswith(CLAIMED_OPTION)
        rest = rest.removesuffix(CLAIMED_OPTION)
        self.pci = PciTarget(rest, allow_reads, allow_writes) if rest else None
        self.spec = f"kmod:{self.pci.spec}{CLAIMED_OPTION if self.allow_claimed else ''}" if self.pci else "kmod"
        self.dev = device_path()
        if not self.dev.exists():
            raise UserError(f"no {self.dev}: {LOAD_HINT}")
        self.info = module_info(self.dev)

    def availability(self) -> list[Availability]:
        mask = self.info.bar_attrs if self.pci else self.info.ram_attrs
        return [Availability(a, True) if mask >> code & 1 else Availability(a, False, self._why_not(a))
                for a, code in ATTR_CODES.items()]

    def _why_not(self, attr: str) -> str:
        if not self.pci and attr in X86_RAM_LIMITS and self.info.bar_attrs >> ATTR_CODES[attr] & 1:
            return f"{X86_RAM_LIMITS[attr]}; a BAR can: --target kmod:pci:<BDF>/<bar> (dmattr)"
        return f"this kernel has no page protection for {attr} on {'a BAR' if self.pci else 'a RAM buffer'} (dmattr)"

    def max_size(self) -> int | None:
        return self.pci.max_size() if self.pci else self.info.max_ram

    def stage2_hint(self) -> str | None:
        return None if self.pci else "normal"  # hypervisors map guest RAM Normal WB

    def check_access(self, attr: str, reads: bool, writes: bool) -> None:
        if self.pci:
            self.pci.check_access(attr, reads, writes)

    def _request(self, attr: str, size: int) -> bytes:
        if not self.pci:
            return REQ.pack(SRC_RAM, ATTR_CODES[attr], size, 0, 0, 0, 0, 0, 0, 0)
        dom, bus, devfn = self.pci.bdf_numbers()
        flags = ALLOW_CLAIMED if self.allow_claimed else 0
        return REQ.pack(SRC_BAR, ATTR_CODES[attr], size, dom, bus, devfn, self.pci.index, 0, flags, 0)

    def open(self, attr: str, size: int) -> Mapping:
        attr = memtypes.canonical(attr)
        self.require(attr)
        if self.pci and (why := cacheable_bar_refusal(f"{self.spec} {attr}", attr, bool(self.pci.scratch),
                                                      metadata.emulated(), self.allow_cacheable_bar)):
            raise UserError(why)
        limit = self.max_size()
        if size > limit:
            raise UserError(f"{self.spec} gives at most {limit} bytes, {size} asked: pass a smaller --size")
        size = -(-size // mmap.PAGESIZE) * mmap.PAGESIZE
        writable = self.pci.allow_writes if self.pci else True
        if self.pci:
            self.pci._enable()  # the module refuses a device with memory decoding off
        try:
            fd = os.open(self.dev, os.O_RDWR)
        except PermissionError:
            raise UserError(f"no permission to open {self.dev}: run as root (dmattr needs CAP_SYS_RAWIO)") from None
        try:
            fcntl.ioctl(fd, IOC_SET, self._request(attr, size))
            prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
            ptr, close = map_memory(size, prot, mmap.MAP_SHARED, fd)
        except OSError as exc:
            why = REFUSALS.get(exc.errno, exc.strerror)
            raise UserError(f"dmattr refused {attr} on {self.spec}: {why} (dmesg says why)") from None
        finally:
            os.close(fd)  # the mapping keeps the file, and so the buffer, alive
        source = f"{self.pci.spec} BAR" if self.pci else "contiguous kernel buffer"
        return Mapping(ptr, size, attr, f"/dev/dmattr {source}, {realised_type(attr)} checked in the page table",
                       writable, self.spec, close)


def realised_type(attr: str, machine: str | None = None) -> str:
    """The type the module's page protection gives: PAT's on x86, the stage-1 MAIR type on arm64."""
    if (machine or platform.machine()) in ("x86_64", "AMD64"):
        return "PAT " + memtypes.get(attr).x86.split()[0]
    return "stage-1 " + attr

"""Open one BAR of a PCI device bound to vfio-pci and mmap it (the `kvm:vfio:` backing).

The steps are those of Documentation/driver-api/vfio.rst: a container, the device's IOMMU
group attached to it with the type-1 IOMMU, the device fd, the region's offset and size,
mmap.  Each refusal becomes one line that says what to do.
"""
from __future__ import annotations

import errno
import fcntl
import mmap
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.errors import UserError
from bench.targets.base import map_memory

_T = ord(";") << 8  # VFIO_TYPE; requests are _IO(VFIO_TYPE, VFIO_BASE + n)
GET_API_VERSION, CHECK_EXTENSION, SET_IOMMU = _T | 100, _T | 101, _T | 102
GROUP_GET_STATUS, GROUP_SET_CONTAINER, GROUP_GET_DEVICE_FD = _T | 103, _T | 104, _T | 106
DEVICE_GET_REGION_INFO = _T | 108
TYPE1_IOMMU, TYPE1V2_IOMMU = 1, 3
GROUP_VIABLE = 1
REGION_MMAP = 4
_REGION = struct.Struct("=IIIIQQ")  # struct vfio_region_info


@dataclass(frozen=True)
class Region:
    """A mapped window of a vfio region: host address, bytes mapped, the region's offset in
    the device fd, and how to undo it."""

    ptr: int
    size: int
    offset: int
    flags: int
    close: Callable[[], None]


@dataclass(frozen=True)
class Device:
    """An open vfio-pci device (container, group and device fds) and one of its regions:
    windows of it are mapped with map(); close() closes the fds (after the windows)."""

    fd: int
    region_size: int
    offset: int
    flags: int
    writable: bool
    name: str
    close: Callable[[], None]

    def map(self, length: int, start: int = 0) -> Region:
        """mmap `length` bytes (rounded up to the host page) at `start` of the region: a case
        maps only what it uses, so a 128 GiB BAR costs a 4 KiB probe nothing more."""
        page = mmap.PAGESIZE
        length = -(-length // page) * page
        if start % page or start + length > self.region_size:
            raise UserError(f"{self.name}: window {start:#x}+{length:#x} is outside the {self.region_size:#x}-byte "
                            "region or not page aligned: pass a smaller --size")
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if self.writable else 0)
        try:
            ptr, unmap = map_memory(length, prot, mmap.MAP_SHARED, self.fd, self.offset + start)
        except OSError as exc:
            raise UserError(f"cannot mmap {self.name} through vfio: {exc.strerror}") from None
        return Region(ptr, length, self.offset + start, self.flags, unmap)


def bind_hint(bdf: str) -> str:
    return (f"modprobe vfio-pci; echo vfio-pci > /sys/bus/pci/devices/{bdf}/driver_override; "
            f"echo {bdf} > /sys/bus/pci/devices/{bdf}/driver/unbind; echo {bdf} > /sys/bus/pci/drivers_probe")


def check_bound(dev: Path) -> int:
    """The device's IOMMU group number; UserError unless it is bound to vfio-pci."""
    driver = dev / "driver"
    name = driver.resolve().name if driver.exists() else None
    if name != "vfio-pci":
        now = f"bound to {name}" if name else "not bound to any driver"
        raise UserError(f"{dev.name} is {now}, not vfio-pci: bind it with: {bind_hint(dev.name)}")
    group = dev / "iommu_group"
    if not group.exists():
        raise UserError(f"{dev.name} has no IOMMU group: vfio needs an IOMMU (on arm64 an SMMU; QEMU: -M virt,iommu=smmuv3)")
    return int(group.resolve().name)


def _ioctl(fd: int, req: int, arg, what: str) -> int:
    """ioctl(2); a buffer argument is passed mutable, so the call's return value (a new
    fd for VFIO_GROUP_GET_DEVICE_FD) comes back, not a copy of the buffer."""
    try:
        return fcntl.ioctl(fd, req, bytearray(arg) if isinstance(arg, bytes) else arg)
    except OSError as exc:
        raise _refused(what, exc) from None


def _refused(what: str, exc: OSError) -> UserError:
    if what == "VFIO_SET_IOMMU" and exc.errno == errno.EPERM:
        return UserError("VFIO refused the IOMMU (VFIO_SET_IOMMU: Operation not permitted): the platform has no "
                         "interrupt remapping (arm64: a GICv3 ITS, QEMU -M virt,gic-version=3); the kernel log says "
                         "'No interrupt remapping support'")
    return UserError(f"{what} failed: {exc.strerror}")


def open_device(dev: Path, bar: int, writable: bool) -> Device:
    """Open the vfio-pci device at sysfs path `dev` for BAR `bar` (nothing mapped yet)."""
    group_no = check_bound(dev)
    fds: list[int] = []

    def close_all() -> None:
        while fds:
            os.close(fds.pop())

    try:
        container = _open("/dev/vfio/vfio", fds)
        if _ioctl(container, GET_API_VERSION, 0, "VFIO_GET_API_VERSION") != 0:
            raise UserError("unexpected VFIO API version: this kernel's vfio is not supported")
        iommu = next((t for t in (TYPE1V2_IOMMU, TYPE1_IOMMU) if fcntl.ioctl(container, CHECK_EXTENSION, t) > 0), None)
        if iommu is None:
            raise UserError("VFIO offers no type-1 IOMMU: modprobe vfio_iommu_type1")
        group = _open(f"/dev/vfio/{group_no}", fds)
        status = bytearray(struct.pack("=II", 8, 0))
        _ioctl(group, GROUP_GET_STATUS, status, "VFIO_GROUP_GET_STATUS")
        if not struct.unpack("=II", status)[1] & GROUP_VIABLE:
            raise UserError(f"IOMMU group {group_no} is not viable: bind every device in "
                            f"/sys/kernel/iommu_groups/{group_no}/devices to vfio-pci")
        _ioctl(group, GROUP_SET_CONTAINER, struct.pack("=i", container), "VFIO_GROUP_SET_CONTAINER")
        _ioctl(container, SET_IOMMU, iommu, "VFIO_SET_IOMMU")
        device = _ioctl(group, GROUP_GET_DEVICE_FD, dev.name.encode() + b"\0", "VFIO_GROUP_GET_DEVICE_FD")
        fds.append(device)
        info = bytearray(_REGION.pack(_REGION.size, 0, bar, 0, 0, 0))
        _ioctl(device, DEVICE_GET_REGION_INFO, info, f"VFIO_DEVICE_GET_REGION_INFO (BAR {bar})")
        _, flags, _, _, size, offset = _REGION.unpack(info)
        if size == 0:
            raise UserError(f"{dev.name} BAR {bar} is empty (size 0 in vfio): pick a memory BAR")
        if not flags & REGION_MMAP:
            raise UserError(f"{dev.name} BAR {bar} cannot be mmapped through vfio (region flags {flags:#x})")
    except BaseException:
        close_all()
        raise
    return Device(device, size, offset, flags, writable, f"{dev.name} BAR {bar}", close_all)


def open_region(dev: Path, bar: int, writable: bool, length: int | None = None) -> Region:
    """mmap BAR `bar` of the vfio-pci device at sysfs path `dev`: its first `length` bytes
    (default: all of it); close() unmaps and closes the device."""
    device = open_device(dev, bar, writable)
    try:
        window = device.map(device.region_size if length is None else length)
    except BaseException:
        device.close()
        raise

    def close() -> None:
        window.close()
        device.close()

    return Region(window.ptr, window.size, window.offset, window.flags, close)


def _open(path: str, fds: list[int]) -> int:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        hint = "modprobe vfio-pci" if path.endswith("vfio") else "is the device bound to vfio-pci?"
        raise UserError(f"{path} does not exist: {hint}") from None
    except OSError as exc:
        reason = "another process holds the group" if exc.errno == errno.EBUSY else exc.strerror
        raise UserError(f"cannot open {path}: {reason}") from None
    fds.append(fd)
    return fd

"""L0: what an emulated arm64 KVM host's (L1) boot adds to a guest job: VFIO modules, the vfio-pci bind.

The Debian kernel boots at EL2 under TCG (see qemu.Arm64.machine_args) and so has
/dev/kvm.  For the `kvm` target it also needs VFIO: the modules (shipped as files in the
job and insmodded dependencies first, since the initramfs has no modprobe database) and
the ivshmem device at 0000:00:01.0 bound to vfio-pci, as a user binds a NIC or a GPU.
"""
from __future__ import annotations

from dataclasses import dataclass

from guestkit import kernels
from guestkit.qemu import IVSHMEM_ADDR

VFIO_MODULES = ["vfio_iommu_type1", "vfio_pci"]
IVSHMEM_BDF = f"0000:00:{IVSHMEM_ADDR:02x}.0"
# How a user binds a device to vfio-pci (the same lines the README gives for a real host).
BIND = (f"echo vfio-pci > /sys/bus/pci/devices/{IVSHMEM_BDF}/driver_override && "
        f"echo {IVSHMEM_BDF} > /sys/bus/pci/drivers_probe")
MEMORY_MB = 2048  # the host's own userspace plus one small VM at a time


@dataclass(frozen=True)
class HostJob:
    """Files to put in /dmtbench and commands to run before the user's command."""

    files: dict[str, bytes]
    setup: list[list[str]]


def host_job(kernel: kernels.Kernel, bind_ivshmem: bool) -> HostJob:
    """The VFIO modules of `kernel` and the commands that load them and bind the BAR."""
    files, setup = {}, []
    for path in kernels.module_order(kernel, VFIO_MODULES):
        name = f"modules/{path.name.split('.ko')[0]}.ko"
        files[name] = kernels.module_bytes(path)
        setup.append(["insmod", f"/dmtbench/{name}"])
    if bind_ivshmem:
        setup.append(["sh", "-c", BIND])
    return HostJob(files, setup)

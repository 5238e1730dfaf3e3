"""guestkit.lab.l0_hostboot (L0): the emulated KVM host's boot: VFIO modules from the real
Debian kernel, dependencies first, and the vfio-pci bind."""
import pytest

from bench.errors import UserError
from guestkit import kernels
from guestkit.lab import l0_hostboot as hostboot
from guestkit.qemu import get_arch

ARM64 = get_arch("arm64")


def test_vfio_modules_come_dependencies_first(guest_ready):
    kernel = kernels.get(ARM64, "current")
    assert kernel.image.is_file() and kernel.series == (6, 1)
    names = [p.name.split(".ko")[0].replace("-", "_") for p in kernels.module_order(kernel, hostboot.VFIO_MODULES)]
    assert names.index("vfio") < names.index("vfio_iommu_type1") < names.index("vfio_pci")
    assert names.index("vfio_pci_core") < names.index("vfio_pci")
    job = hostboot.host_job(kernel, bind_ivshmem=True)
    assert all(data[:4] == b"\x7fELF" for data in job.files.values())  # decompressed on the host
    assert job.setup[-1][0] == "sh" and "vfio-pci" in job.setup[-1][-1]


def test_missing_module_named(guest_ready):
    with pytest.raises(UserError, match="no module no_such_mod"):
        kernels.module_order(kernels.get(ARM64, "current"), ["no_such_mod"])

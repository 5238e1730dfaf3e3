"""guestkit.kernels: Debian kernel names resolved against the real archive lists, the
image and modules unpacked from the real .deb, module order from the modules' .modinfo."""
import pytest

from bench.errors import UserError
from conftest import assert_one_line_error, run_cli
from guestkit import kernels, kvmhost
from guestkit.qemu import get_arch

ARM64 = get_arch("arm64")


def test_version_key_orders_both_debian_schemes():
    assert kernels.version_key("6.1.0-56-arm64") == (6, 1, 0, 56)
    assert kernels.version_key("6.12.117+deb12-arm64") == (6, 12, 117, 0)
    assert kernels.version_key("6.12.9+deb12-arm64") < kernels.version_key("6.12.95+deb12-arm64")


def test_series_resolve_to_the_newest_offered(guest_ready):
    versions = kernels.available(ARM64)
    newest_612 = kernels.resolve(ARM64, "6.12")
    assert newest_612 in versions and kernels.version_key(newest_612)[:2] == (6, 12)
    assert all(kernels.version_key(v) <= kernels.version_key(newest_612) for v in versions
               if kernels.version_key(v)[:2] == (6, 12))
    assert kernels.resolve(ARM64, "current") in versions
    # sid, from the same mirror in lists of its own, has the newest kernel (Linux 7.x today).
    assert kernels.version_key(kernels.resolve(ARM64, "sid")) > kernels.version_key(newest_612)


def test_unknown_kernel_lists_what_the_archive_has(guest_ready, tmp_path):
    proc = run_cli("run", "--kernel", "5.99", "--results", str(tmp_path), "--", "true", module="guestkit")
    line = assert_one_line_error(proc, 2, "5.99", "6.1", "6.12")
    assert "Traceback" not in line


def test_vfio_modules_come_dependencies_first(guest_ready):
    kernel = kernels.get(ARM64, "current")
    assert kernel.image.is_file() and kernel.series == (6, 1)
    names = [p.name.split(".ko")[0].replace("-", "_") for p in kernels.module_order(kernel, kvmhost.VFIO_MODULES)]
    assert names.index("vfio") < names.index("vfio_iommu_type1") < names.index("vfio_pci")
    assert names.index("vfio_pci_core") < names.index("vfio_pci")
    job = kvmhost.host_job(kernel, bind_ivshmem=True)
    assert all(data[:4] == b"\x7fELF" for data in job.files.values())  # decompressed on the host
    assert job.setup[-1][0] == "sh" and "vfio-pci" in job.setup[-1][-1]


def test_missing_module_named(guest_ready):
    with pytest.raises(UserError, match="no module no_such_mod"):
        kernels.module_order(kernels.get(ARM64, "current"), ["no_such_mod"])

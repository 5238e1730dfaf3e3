"""guestkit.kernels: Debian kernel names resolved against the real archive lists, the
image and modules unpacked from the real .deb, module order from the modules' .modinfo."""

from conftest import assert_one_line_error, run_cli
from guestkit import kernels
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



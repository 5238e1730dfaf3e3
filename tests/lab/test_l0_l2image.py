"""guestkit.lab.l0_l2image (L0): the inner QEMU's library closure for `--guest linux`,
checked against readelf and the real Debian packages."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from guestkit.lab import l0_l2image as l2image
from guestkit.qemu import get_arch

ARM64 = get_arch("arm64")


def _readelf_needed(path: Path) -> list[str]:
    out = subprocess.run(["readelf", "-d", str(path)], capture_output=True, text=True, check=True).stdout
    return [line.split("[", 1)[1].rstrip("]") for line in out.splitlines() if "(NEEDED)" in line]


@pytest.mark.skipif(shutil.which("readelf") is None, reason="needs binutils' readelf")
def test_dt_needed_agrees_with_readelf():
    for path in (Path(sys.executable).resolve(), Path(subprocess.__file__).parent / "lib-dynload"):
        files = [path] if path.is_file() else sorted(path.glob("_ssl*.so"))[:1]
        for f in files:
            assert l2image.dt_needed(f.read_bytes()) == _readelf_needed(f)
    with pytest.raises(ValueError):
        l2image.dt_needed(b"#!/bin/sh\n")


def test_depends_closure_drops_virtual_packages():
    text = "qemu-system-arm\n  Depends: libc6\n  Depends: <libgl1>\nlibc6\n  Depends: libgcc-s1\n<virtual-pkg>\nlibgcc-s1\n"
    assert l2image.depends_closure(text) == ["libc6", "libgcc-s1", "qemu-system-arm"]


@pytest.mark.skipif(shutil.which("readelf") is None, reason="needs binutils' readelf")
def test_inner_qemu_ships_exactly_the_missing_libraries(guest_ready, tmp_path):
    qroot = l2image.inner_qemu(ARM64)
    binary = qroot / "bin" / "qemu-system-aarch64"
    shipped = {p.name for p in (qroot / "lib").iterdir()}
    assert l2image.dt_needed(binary.read_bytes()) == _readelf_needed(binary)
    # The base image's libraries (python's own) are never shipped twice ...
    assert not shipped & {"libc.so.6", "libm.so.6", "libz.so.1", "libssl.so.3", "libffi.so.8", "libgcc_s.so.1"}
    # ... and the closure is closed: everything anything shipped needs is shipped or in the base.
    debs = [d for d in (l2image.arch_cache("arm64") / "apt" / "debs").glob("*.deb")
            if d.name.split("_")[0] in l2image.image.GUEST_PKGS]
    l2image.image.extract(debs, tmp_path)
    for f in [binary, *(qroot / "lib").iterdir()]:
        for name in _readelf_needed(f):
            assert name in shipped or l2image.find_lib(name, [tmp_path]), (f.name, name)
    assert "libglib-2.0.so.0" in shipped and "libfdt.so.1" in shipped

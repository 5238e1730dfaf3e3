"""L0: `python -m guestkit deps`: everything the guest path needs, from Debian's packages.

Host: QEMU >= 9 (Debian 12 ships 7.2, which does not model Device alignment faults, so
it comes from bookworm-backports) and the cross compiler.  Guest: the Debian kernel and
python3 of the guest architecture, unpacked into a cached base initramfs.
`--lava` adds LAVA's dispatcher (Debian's lava-dispatcher, for `lava-run`) and TuxRun (PyPI).
"""
from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.errors import UserError
from guestkit import apt, image
from guestkit.paths import arch_cache
from guestkit.qemu import Arch

MIN_QEMU = (9, 0)
# bookworm's lava-dispatcher depends on libguestfs, which pulls bookworm's qemu-system-x86
# 7.2; that conflicts with the backports QEMU 10 unless the same apt command names the
# backports qemu-system-x86 too.
# tftpd-hpa and telnet: a worker's tftp directory (/etc/default/tftpd-hpa) and the serial
# console command (telnet to ser2net, as labs do), which lava-run checks to
# validate a server job (kind c: grub over tftp).
LAVA_PKGS = ("lava-dispatcher", "tftpd-hpa", "telnet")
TFTPD_CONFIG = Path("/etc/default/tftpd-hpa")
LAVA_QEMU_PKG = "qemu-system-x86"
TUXRUN = "tuxrun==1.11.0"  # the version checked with --runtime null (it brings tuxlava)


@dataclass(frozen=True)
class GuestParts:
    """What a guest boot needs, all on local disk."""

    kernel: Path
    base: Path
    kernel_version: str  # e.g. 6.1.0-56-arm64, for module builds


def qemu_version(binary: str) -> tuple[int, int] | None:
    if not shutil.which(binary):
        return None
    out = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
    m = re.search(r"version (\d+)\.(\d+)", out)
    return (int(m.group(1)), int(m.group(2))) if m else None


def ensure_host(arch: Arch) -> list[str]:
    """Install QEMU >= 9 and the cross compiler when missing; returns what was done."""
    done = []
    if (qemu_version(arch.qemu) or (0, 0)) < MIN_QEMU:
        suite = apt.ensure_backports()
        apt.install([arch.qemu_pkg], release=suite)
        done.append(f"{arch.qemu_pkg} from {suite}")
        if (qemu_version(arch.qemu) or (0, 0)) < MIN_QEMU:
            raise UserError(f"{arch.qemu} is still older than {MIN_QEMU[0]}.{MIN_QEMU[1]}: install QEMU >= 9 by hand")
    if not shutil.which("cpio"):  # to read an initramfs back by hand (and in the tests) with the real tool
        apt.update()
        apt.install(["cpio"])
        done.append("cpio")
    if not shutil.which("likwid-bench"):  # bench selfcheck's independent peer for the RAM bandwidth kernels
        apt.update()
        apt.install(["likwid"])
        done.append("likwid")
    if not arch.native() and not (shutil.which(arch.cross_cc) and Path(arch.cross_header).exists()):
        apt.update()
        apt.install(list(arch.cross_pkgs))
        done.append(" ".join(arch.cross_pkgs))
    return done


def guest_apt(arch: Arch) -> apt.ForeignApt:
    return apt.ForeignApt(arch.debian, arch_cache(arch.name) / "apt").ensure_lists()


def guest_kernel_version(arch: Arch) -> str:
    """The version of Debian's current kernel for arch, e.g. 6.1.0-56-arm64."""
    return guest_apt(arch).depends_on(arch.kernel_meta).removeprefix("linux-image-")


def ensure_guest(arch: Arch) -> GuestParts:
    """Download the guest's kernel and python3 and build the base initramfs (cached)."""
    version = guest_kernel_version(arch)
    debs = guest_apt(arch).download([*image.GUEST_PKGS, f"linux-image-{version}"])
    kernel, base = image.build_base(arch, debs[:-1], debs[-1], arch_cache(arch.name))
    return GuestParts(kernel, base, version)


def find_parts(arch: Arch) -> GuestParts:
    """The parts deps built, or a one-line error saying to run deps."""
    cache = arch_cache(arch.name)
    bases = sorted(cache.glob("base-*.cpio"), key=lambda p: p.stat().st_mtime)
    if not bases or qemu_version(arch.qemu) is None:
        raise UserError(f"the {arch.name} guest is not set up: run 'python -m guestkit deps --arch {arch.name}'")
    key = bases[-1].stem.removeprefix("base-")
    kdeb = next((cache / "apt" / "debs").glob("linux-image-*.deb"), None)
    version = kdeb.name.split("_")[0].removeprefix("linux-image-") if kdeb else "unknown"
    return GuestParts(cache / f"vmlinuz-{key}", bases[-1], version)


def tuxrun_installed() -> bool:
    """TuxRun importable from this Python (it is run as `python -m tuxrun`)."""
    return importlib.util.find_spec("tuxrun") is not None


def ensure_lava() -> list[str]:
    """Install LAVA's dispatcher (apt) and TuxRun (pip, into this Python) when missing;
    returns what was done."""
    done = []
    if not shutil.which("lava-run") or not TFTPD_CONFIG.exists() or not shutil.which("telnet"):
        suite = apt.ensure_backports()  # derived from the configured mirror: no host name of ours
        apt.update()
        apt.install([*LAVA_PKGS, f"{LAVA_QEMU_PKG}/{suite}"])
        done.append(f"{' '.join(LAVA_PKGS)} (with {LAVA_QEMU_PKG} from {suite})")
        if not shutil.which("lava-run"):
            raise UserError("lava-dispatcher is installed but lava-run is not on PATH: check the package")
    if not tuxrun_installed():
        proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", TUXRUN], capture_output=True, text=True,
                              check=False)
        if proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise UserError(f"pip install {TUXRUN} failed: {tail}")
        importlib.invalidate_caches()
        done.append(TUXRUN)
    return done


def main(arch: Arch, lava: bool = False) -> int:
    t0 = time.monotonic()
    done = ensure_host(arch) + (ensure_lava() if lava else [])
    parts = ensure_guest(arch)
    image.suite_library(arch, arch_cache(arch.name))
    print(f"host: {arch.qemu} {'.'.join(map(str, qemu_version(arch.qemu) or ()))}"
          f"{' (installed ' + ', '.join(done) + ')' if done else ''}")
    if lava:
        print(f"lava: {shutil.which('lava-run')}, tuxrun {'installed' if tuxrun_installed() else 'missing'}")
    print(f"guest: kernel {parts.kernel_version}, base initramfs {parts.base.stat().st_size >> 20} MiB at {parts.base}")
    print(f"guestkit deps took {time.monotonic() - t0:.1f} s")
    return 0

"""L0: Guest images: a cached base initramfs (busybox + Debian's python3, extracted from the
guest architecture's .debs) and a small per-run overlay with the suite and the job.

Why an initramfs and not a rootfs disk: the guest needs no virtio or filesystem modules
(Debian's arm64 kernel has them as modules), there is no debootstrap second stage under
qemu-user, and the whole image is in guest RAM before the kernel starts.  The two cpio
archives are concatenated, which the kernel unpacks in order.
"""
from __future__ import annotations

import compileall
import hashlib
import io
import json
import py_compile
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pyperf

from bench import kbuild, kvmbuild
from bench.errors import UserError
from guestkit.cpio import CpioWriter
from guestkit.qemu import Arch

PYVER = "3.11"  # Debian 12's python3
GUEST_PKGS = ["busybox-static", "libc6", "libgcc-s1", "zlib1g", "libexpat1", "libffi8", "libssl3", "libbz2-1.0",
              "liblzma5", "libuuid1", f"python{PYVER}-minimal", f"libpython{PYVER}-minimal",
              f"libpython{PYVER}-stdlib", "python3-psutil"]
# Parts of the root we never use in the guest: dropping them halves the image.
PRUNE = ["usr/share/doc", "usr/share/man", "usr/share/locale", "usr/share/info", "usr/share/lintian", "boot",
         "lib/modules", "usr/lib/modules", "etc/kernel", "usr/lib/linux", *[f"usr/lib/python{PYVER}/{d}" for d in
         ("test", "idlelib", "tkinter", "turtledemo", "lib2to3", "ensurepip", "pydoc_data", "distutils",
          f"config-{PYVER}-aarch64-linux-gnu", f"config-{PYVER}-x86_64-linux-gnu")]]
# The file systems every /init of ours mounts first (this one and guestkit.lava's).
MOUNTS = """/bin/busybox mkdir -p /proc /sys /dev /tmp /run /root
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
/bin/busybox mount -t tmpfs tmpfs /tmp
"""
INIT = "#!/bin/busybox sh\n" + MOUNTS + """/bin/busybox --install -s /bin
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
/usr/bin/python3 /dmtbench/guestkit/agent.py
/bin/busybox poweroff -f
"""
SUITE_DIRS = ("bench", "c_kernels", "guestkit")
REPO = Path(__file__).resolve().parent.parent


BASE_LAYOUT = 2  # bump when build_base() changes what it puts in the image


def base_key(debs: list[Path]) -> str:
    h = hashlib.sha256(f"{BASE_LAYOUT} {INIT} {' '.join(PRUNE)}".encode())
    for d in sorted(debs):
        h.update(d.name.encode())
    return h.hexdigest()[:12]


def extract(debs: list[Path], root: Path) -> None:
    for deb in debs:
        proc = subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise UserError(f"cannot unpack {deb.name}: {proc.stderr.strip()}")


def precompile(root: Path, prefix: str) -> None:
    """Byte-compile Python sources once here, so the emulated guest never compiles at
    start-up.  Only when this Python's bytecode matches the guest's (same minor version);
    unchecked-hash .pyc files ignore source mtimes, which cpio does not keep."""
    if f"{sys.version_info[0]}.{sys.version_info[1]}" != PYVER:
        return
    compileall.compile_dir(str(root), quiet=2, ddir=prefix, workers=0,
                           invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)


def build_base(arch: Arch, debs: list[Path], kernel_deb: Path, out_dir: Path) -> tuple[Path, Path]:
    """(vmlinuz, base.cpio) for arch, cached by the package versions."""
    key = base_key([*debs, kernel_deb])
    cpio_path, kernel_path = out_dir / f"base-{key}.cpio", out_dir / f"vmlinuz-{key}"
    if cpio_path.exists() and kernel_path.exists():
        return kernel_path, cpio_path
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        kroot = Path(tmp) / "kernel"
        extract([kernel_deb], kroot)
        vmlinuz = next(kroot.glob("boot/vmlinuz-*"), None)
        if vmlinuz is None:
            raise UserError(f"{kernel_deb.name} holds no /boot/vmlinuz")
        shutil.copyfile(vmlinuz, kernel_path)
        root = Path(tmp) / "root"
        extract(debs, root)
        for rel in PRUNE:
            shutil.rmtree(root / rel, ignore_errors=True)
        (root / "init").write_text(INIT)
        (root / "init").chmod(0o755)
        for name in ("python3", "python"):  # so a job can say `python -m bench ...`
            (root / "usr/bin" / name).symlink_to(f"python{PYVER}")
        precompile(root / f"usr/lib/python{PYVER}", f"/usr/lib/python{PYVER}")
        precompile(root / "usr/lib/python3/dist-packages", "/usr/lib/python3/dist-packages")
        tmp_cpio = cpio_path.with_suffix(".tmp")
        with tmp_cpio.open("wb") as f:
            w = CpioWriter(f)
            w.add_tree(root)
            w.close()
        tmp_cpio.replace(cpio_path)
    return kernel_path, cpio_path


def suite_library(arch: Arch, cache: Path) -> Path:
    """c_kernels cross-built for the guest, cached by source hash."""
    out = cache / f"libdmtkernels-{kbuild.source_hash()}.so"
    if not out.exists():
        cc = None if arch.native() else arch.cross_cc
        try:
            kbuild.build(out, cc=cc)
        except kbuild.BuildError as exc:
            raise UserError(f"{exc}".splitlines()[0] + f" (the guest library needs {cc or 'cc'}: python -m guestkit deps)") from None
    return out


def kvm_bundle(arch: Arch, cache: Path) -> dict[str, bytes]:
    """The kvm target's arm64 VMM and payload, cross-built like the kernels library."""
    try:
        return kvmbuild.bundle(cache, None if arch.native() else arch.cross_cc)
    except kbuild.BuildError as exc:
        raise UserError(f"{exc}".splitlines()[0] + " (python -m guestkit deps installs the arm64 compiler)") from None


def _add_sources(w: CpioWriter, src: Path, arc: str) -> None:
    """A package directory without caches or built libraries."""
    with tempfile.TemporaryDirectory() as tmp:
        dst = Path(tmp) / "t"
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.pyc"))
        precompile(dst, "/" + arc)
        w.add_tree(dst, arc)


def build_job(arch: Arch, cache: Path, job: dict, extra: dict[str, bytes] | None = None) -> bytes:
    """The per-run overlay: /dmtbench with the suite, pyperf, the kernels library and job.json."""
    buf = io.BytesIO()
    w = CpioWriter(buf)
    for d in ("dmtbench", "dmtbench/site", "dmtbench/results"):
        w.add_dir(d)
    for d in SUITE_DIRS:
        _add_sources(w, REPO / d, f"dmtbench/{d}")
    _add_sources(w, Path(pyperf.__file__).resolve().parent, "dmtbench/site/pyperf")
    w.add_file(f"dmtbench/bench/{kbuild.LIB_NAME}", suite_library(arch, cache).read_bytes(), 0o755)
    if arch.name == "arm64":  # the kvm target's VMM library and L2 payload (bench.kvmbuild)
        for name, data in kvm_bundle(arch, cache).items():
            w.add_file(f"dmtbench/bench/{name}", data, 0o755)
    w.add_file("dmtbench/job.json", json.dumps(job).encode())
    dirs = sorted({str(Path(name).parent) for name in extra or {}} - {"."})
    for d in dirs:  # the kernel's cpio unpacker makes no missing parents
        w.add_dir(f"dmtbench/{d}")
    for name, data in (extra or {}).items():
        w.add_file(f"dmtbench/{name}", data, 0o644)
    w.close()
    return buf.getvalue()

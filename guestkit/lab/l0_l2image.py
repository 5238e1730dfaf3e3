"""L0: the files the emulated KVM host (L1) needs to boot a full Debian guest (L2), `--guest linux`.

The stage-2 lab's `--guest linux` mode, host side: what the emulated KVM host (L1) needs
to boot a full Debian guest (L2) under QEMU/KVM with the ivshmem BAR passed through.

L1 gets, as extra files under /dmtbench/l2/: an arm64 `qemu-system-aarch64` (Debian
bookworm's 7.2, the version the prototype ran) with only the shared libraries it needs
that L1's own base image lacks (DT_NEEDED closure), the guest kernel Image, and the L2
initramfs: the same base image plus the same suite overlay a `guestkit run` guest gets,
whose job.json guestkit.lab.l1_l2driver rewrites before each L2 boot.  L1 then runs
`python3 -m guestkit.lab.l1_l2driver` (see host_argv), which boots the L2s and writes the results.

Run it with `python -m guestkit lab --guest linux [--host-kernel V]... [--probes-only]`.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bench.errors import UserError
from guestkit import image, kernels
from guestkit.deps import find_parts, guest_apt
from guestkit.paths import arch_cache
from guestkit.qemu import Arch, get_arch

QEMU_PKG = "qemu-system-arm"          # bookworm's 7.2 (the candidate; backports' 10.x has priority 100)
QEMU_BIN = "usr/bin/qemu-system-aarch64"
L2_DIR = "l2"                         # under /dmtbench in L1
MEMORY_MB = 2048                      # L1: its own userspace, the L2 files (~150 MB) and a 512 MiB L2
LIB_DIRS = ("lib/aarch64-linux-gnu", "usr/lib/aarch64-linux-gnu", "lib", "usr/lib")
# apt-cache depends --recurse, without what is never installed alongside.
DEPENDS_OPTS = ["--recurse", "--no-recommends", "--no-suggests", "--no-conflicts", "--no-breaks",
                "--no-replaces", "--no-enhances"]
INNER_LAYOUT = 1  # bump when inner_qemu() changes what it keeps


@dataclass(frozen=True)
class LinuxJob:
    """What the lab adds to L1's job for the linux guest mode."""

    files: dict[str, bytes]     # relative to /dmtbench
    setup: list[list[str]]
    memory_mb: int


# --- ELF: the libraries a binary asks for -------------------------------------------------

def dt_needed(data: bytes) -> list[str]:
    """The DT_NEEDED names of a 64-bit little-endian ELF (what `readelf -d` lists as NEEDED)."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ValueError("not a 64-bit little-endian ELF file")
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    loads, dynamic = [], None
    for i in range(phnum):
        p_type, _flags, offset, vaddr, _paddr, filesz, _memsz, _align = struct.unpack_from(
            "<IIQQQQQQ", data, phoff + i * phentsize)
        if p_type == 1:  # PT_LOAD: maps file offsets to addresses
            loads.append((vaddr, offset, filesz))
        elif p_type == 2:  # PT_DYNAMIC
            dynamic = (offset, filesz)
    if dynamic is None:
        return []  # static
    needed, strtab = [], None
    for pos in range(dynamic[0], dynamic[0] + dynamic[1], 16):
        tag, val = struct.unpack_from("<qQ", data, pos)
        if tag == 0:
            break
        if tag == 1:
            needed.append(val)
        elif tag == 5:  # DT_STRTAB is an address: find the file offset through PT_LOAD
            strtab = next((off + val - va for va, off, size in loads if va <= val < va + size), None)
    if strtab is None:
        raise ValueError("ELF has DT_NEEDED but no DT_STRTAB")
    return [data[strtab + n:data.index(b"\0", strtab + n)].decode() for n in needed]


def find_lib(name: str, roots: list[Path]) -> Path | None:
    """The first file called `name` in the library directories of the given roots."""
    for root in roots:
        for d in LIB_DIRS:
            if (root / d / name).exists():
                return root / d / name
    return None


def library_closure(binary: Path, provided: list[Path], extra: list[Path]) -> dict[str, Path]:
    """soname -> file of every library `binary` needs, directly or through other libraries,
    that the `provided` roots (L1's own image) do not have; found in the `extra` roots.
    A library found nowhere is a one-line error."""
    ship: dict[str, Path] = {}
    seen: set[str] = set()
    todo = dt_needed(binary.read_bytes())
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = find_lib(name, provided)
        if path is None:
            path = find_lib(name, extra)
            if path is None:
                raise UserError(f"{binary.name} needs {name}, which no downloaded package holds")
            ship[name] = path
        todo += dt_needed(path.resolve().read_bytes())
    return ship


# --- the inner QEMU -------------------------------------------------------------------------

def depends_closure(text: str) -> list[str]:
    """Package names from `apt-cache depends --recurse` output (virtual ones, in <>, dropped)."""
    names = {line.strip() for line in text.splitlines() if line and not line[0].isspace()}
    return sorted(n for n in names if not n.startswith("<"))


def inner_qemu(arch: Arch) -> Path:
    """A directory with bin/qemu-system-aarch64 and lib/ (the libraries L1 lacks), cached by
    the QEMU package version.  Downloads the dependency closure once (about 110 small debs)."""
    a = guest_apt(arch)
    base_pkgs = set(image.GUEST_PKGS)
    closure = depends_closure(a.query(["depends", *DEPENDS_OPTS, QEMU_PKG]))
    version = next((line.split()[1] for line in a.query(["policy", QEMU_PKG]).splitlines()
                    if line.strip().startswith("Candidate:")), "unknown")
    key = hashlib.sha256(f"{INNER_LAYOUT} {version}".encode()).hexdigest()[:12]
    out = arch_cache(arch.name) / f"l2qemu-{key}"
    if (out / ".complete").exists():
        return out
    debs = a.download([p for p in closure if p not in base_pkgs])
    base_debs = a.download(sorted(base_pkgs))
    shutil.rmtree(out, ignore_errors=True)
    with tempfile.TemporaryDirectory(dir=arch_cache(arch.name)) as tmp:
        provided, extra = Path(tmp) / "base", Path(tmp) / "extra"
        image.extract(base_debs, provided)
        image.extract(debs, extra)
        binary = extra / QEMU_BIN
        if not binary.is_file():
            raise UserError(f"{QEMU_PKG} holds no /{QEMU_BIN}")
        libs = library_closure(binary, [provided], [extra])
        (out / "bin").mkdir(parents=True)
        (out / "lib").mkdir()
        shutil.copyfile(binary, out / "bin" / binary.name)
        for name, path in libs.items():
            shutil.copyfile(path.resolve(), out / "lib" / name)
    (out / ".complete").write_text(f"{QEMU_PKG} {version}\n")
    return out


# --- L1's job -------------------------------------------------------------------------------

def l2_initrd(arch: Arch) -> bytes:
    """The L2 initramfs: base image + the suite overlay (job.json is rewritten in L1)."""
    parts = find_parts(arch)
    placeholder = {"argv": ["true"], "machine": "l2", "setup": [], "env": {}}
    return parts.base.read_bytes() + image.build_job(arch, arch_cache(arch.name), placeholder)


def linux_job(kernel: kernels.Kernel | None = None, l2_kernel: Path | None = None) -> LinuxJob:
    """The extra files for L1's job: /dmtbench/l2/{bin,lib,Image,initrd.cpio,manifest.json}.
    `kernel` (the L1 host kernel) does not change them; the L2 kernel is the default guest
    kernel (Debian's current 6.1) unless `l2_kernel` names an Image."""
    arch = get_arch("arm64")
    qroot = inner_qemu(arch)
    files = {f"{L2_DIR}/bin/{p.name}": p.read_bytes() for p in (qroot / "bin").iterdir()}
    files.update({f"{L2_DIR}/lib/{p.name}": p.read_bytes() for p in sorted((qroot / "lib").iterdir())})
    files[f"{L2_DIR}/Image"] = (l2_kernel or find_parts(arch).kernel).read_bytes()
    initrd = l2_initrd(arch)
    files[f"{L2_DIR}/initrd.cpio"] = initrd
    files[f"{L2_DIR}/manifest.json"] = json.dumps({"initrd_bytes": len(initrd),
                                                   "qemu": (qroot / ".complete").read_text().strip()}).encode()
    return LinuxJob(files, [], MEMORY_MB)


def host_argv(probes_only: bool, probes: tuple[str, ...] = (), each_kill: bool = False) -> list[str]:
    """The command L1 runs: guestkit.lab.l1_l2driver (see its docstring)."""
    return ["python3", "-m", "guestkit.lab.l1_l2driver", *(["--probes-only"] if probes_only else []),
            *(["--each-kill"] if each_kill else []), *[f"--probe={p}" for p in probes]]

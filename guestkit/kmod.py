"""L0: Build the dmattr module (guestkit/kmod/) against a Debian kernel's headers.

`python -m guestkit kmod build --kernel 6.1.0-56-arm64 [--arch arm64]` (or a series:
`--kernel 6.12`, the newest 6.12 in bookworm-backports) downloads that kernel's headers
(and the host's linux-kbuild tools) as .debs into our cache, unpacks
them, points the headers' absolute /usr/src include at the unpacked tree, and builds with
the cross compiler where the guest is another architecture.  --kernel may also name an
existing headers directory (e.g. /lib/modules/$(uname -r)/build inside a guest).
"""
from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from bench.errors import UserError
from guestkit import apt, image, kernels
from guestkit.deps import guest_apt
from guestkit.paths import arch_cache
from guestkit.qemu import Arch

SRC = Path(__file__).resolve().parent / "kmod"


def host_debian_arch() -> str:
    return subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True).stdout.strip() or "amd64"


def source_hash() -> str:
    h = hashlib.sha256()
    for p in sorted(SRC.iterdir()):
        if p.suffix in (".c", ".h") or p.name == "Kbuild":
            h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()[:12]


def header_packages(arch: Arch, version: str) -> tuple[list[str], str]:
    """(guest-arch packages, host kbuild package) for kernel `version`, from the headers
    package's own Depends: 6.1 names them ...-common and linux-kbuild-6.1, the 6.12
    backports ...+deb12-common and linux-kbuild-6.12.95+deb12."""
    pkg = f"linux-headers-{version}"
    try:
        out = guest_lists(arch, version).query(["depends", pkg])
    except UserError:
        raise UserError(f"--kernel {version}: no {pkg} in the configured archive (bookworm and bookworm-backports); "
                        f"give a Debian kernel version like 6.1.0-56-{arch.debian} or 6.12.95+deb12-{arch.debian}") from None
    deps = re.findall(r"Depends:\s*(\S+)", out)
    common = [d for d in deps if d.startswith("linux-headers-") and d.endswith("-common")]
    kbuild = [d for d in deps if d.startswith("linux-kbuild-")]
    if not common or not kbuild:
        raise UserError(f"{pkg} does not depend on a -common headers package and linux-kbuild: not a Debian kernel headers package")
    return [pkg, common[0]], kbuild[0]


def headers(arch: Arch, version: str) -> Path:
    """The unpacked, relocated headers tree for kernel `version` (e.g. 6.1.0-56-arm64)."""
    root = arch_cache(arch.name) / "headers" / version
    tree = root / "usr" / "src" / f"linux-headers-{version}"
    if (tree / "Makefile").exists():
        return tree
    guest_pkgs, kbuild = header_packages(arch, version)
    lists = guest_lists(arch, version)
    debs = lists.download(guest_pkgs)
    host = host_apt(sid=lists.sources is not None)
    debs += host.download([kbuild])
    root.mkdir(parents=True, exist_ok=True)
    image.extract(debs, root)
    if lists.sources is not None:
        run_with_own_libc(root, host)
    # The flavour Makefile includes the common tree by absolute path: point it at ours.
    makefile = tree / "Makefile"
    makefile.write_text(makefile.read_text().replace("/usr/src/", f"{root}/usr/src/"))
    return tree


def guest_lists(arch: Arch, version: str) -> apt.ForeignApt:
    """The guest-architecture apt that has kernel `version` (bookworm's, or sid's)."""
    try:
        return kernels.offered(arch).get(version) or guest_apt(arch)
    except UserError:
        return guest_apt(arch)


def host_apt(sid: bool = False) -> apt.ForeignApt:
    """apt for the build host's own architecture (linux-kbuild is a host tool)."""
    if sid:
        return apt.ForeignApt(host_debian_arch(), arch_cache("host") / "apt-sid", suite="sid").ensure_lists()
    return apt.ForeignApt(host_debian_arch(), arch_cache("host") / "apt").ensure_lists()


def run_with_own_libc(root: Path, host: apt.ForeignApt) -> None:
    """sid's kbuild tools (fixdep, modpost...) need a newer glibc than this Debian 12 host
    has: unpack sid's libc6 beside them and turn each tool into a small script that runs
    the real binary through sid's own dynamic loader (the binaries are not modified)."""
    libc_root = root / "host-libc"
    image.extract(host.download(["libc6"]), libc_root)
    loader = next(libc_root.glob("usr/lib*/x86_64-linux-gnu/ld-linux-x86-64.so.2"), None) or \
        next(libc_root.glob("**/ld-linux-*.so.*"), None)
    if loader is None:
        raise UserError("sid's libc6 holds no dynamic loader: cannot run sid's kbuild tools here")
    libdir = loader.parent
    for tool in (p for p in root.glob("usr/lib/linux-kbuild-*/**/*") if p.is_file() and not p.is_symlink()):
        if tool.read_bytes()[:4] != b"\x7fELF" or tool.suffix in (".so", ".o"):
            continue
        real = tool.with_name(tool.name + ".real")
        tool.rename(real)
        # --argv0: Debian's modpost finds its per-ELF-class helper from its own argv[0].
        tool.write_text(f'#!/bin/sh\nexec "{loader}" --library-path "{libdir}" --argv0 "$0" "{real}" "$@"\n')
        tool.chmod(0o755)


def compiler_override(tree: Path, prefix: str) -> list[str]:
    """make variables for a kernel built with a gcc this host lacks (sid's 7.x: gcc-16):
    build with the host's gcc and drop the one option older gccs do not have."""
    conf = tree / "include" / "config" / "auto.conf"
    m = re.search(r"^CONFIG_CC_VERSION_TEXT=\"?(\S+)", conf.read_text(), re.M) if conf.exists() else None
    if not m or shutil.which(m.group(1)):
        return []
    return [f"CC={prefix}gcc", "CONFIG_CC_HAS_MIN_FUNCTION_ALIGNMENT="]


def build(arch: Arch, kernel: str) -> Path:
    """dmattr.ko for `kernel` (a Debian version, a series such as 6.12 meaning the newest
    the archive has, 'current', or a headers directory); cached by sources."""
    if re.fullmatch(r"\d+\.\d+|current|sid", kernel):
        kernel = kernels.resolve(arch, kernel)
    tree = Path(kernel) if "/" in kernel else headers(arch, kernel)
    if not (tree / "Makefile").exists():
        raise UserError(f"{tree} is not a kernel headers tree (no Makefile)")
    name = kernel if "/" not in kernel else tree.name.removeprefix("linux-headers-")
    out = arch_cache(arch.name) / f"dmattr-{name}-{source_hash()}.ko"
    if out.exists():
        return out
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "dmattr"
        shutil.copytree(SRC, work)
        # No BTF for the module: 6.12 headers ship vmlinux and would run pahole, which a
        # module that exports no types does not need (it loads the same without .BTF).
        argv = ["make", "-C", str(tree), f"M={work}", f"ARCH={'arm64' if arch.name == 'arm64' else 'x86'}",
                "CONFIG_DEBUG_INFO_BTF_MODULES=", "modules"]
        prefix = "" if arch.native() else arch.cross_cc.removesuffix("gcc")
        if prefix:
            argv.insert(-1, f"CROSS_COMPILE={prefix}")
        argv[-1:-1] = compiler_override(tree, prefix)
        proc = subprocess.run(argv, capture_output=True, text=True)
        if proc.returncode != 0 or not (work / "dmattr.ko").exists():
            err = [line for line in proc.stdout.splitlines() + proc.stderr.splitlines() if "rror" in line]
            raise UserError(f"building dmattr.ko failed: {(err or ['see make output'])[0].strip()}")
        shutil.copyfile(work / "dmattr.ko", out)
    return out

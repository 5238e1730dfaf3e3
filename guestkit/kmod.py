"""Build the dmattr module (guestkit/kmod/) against a Debian kernel's headers.

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
from guestkit import apt, kernels
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
        out = guest_apt(arch).query(["depends", pkg])
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
    debs = guest_apt(arch).download(guest_pkgs)
    debs += host_apt().download([kbuild])
    root.mkdir(parents=True, exist_ok=True)
    for deb in debs:
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    # The flavour Makefile includes the common tree by absolute path: point it at ours.
    makefile = tree / "Makefile"
    makefile.write_text(makefile.read_text().replace("/usr/src/", f"{root}/usr/src/"))
    return tree


def host_apt() -> apt.ForeignApt:
    """apt for the build host's own architecture (linux-kbuild is a host tool)."""
    return apt.ForeignApt(host_debian_arch(), arch_cache("host") / "apt").ensure_lists()


def build(arch: Arch, kernel: str) -> Path:
    """dmattr.ko for `kernel` (a Debian version, a series such as 6.12 meaning the newest
    the archive has, 'current', or a headers directory); cached by sources."""
    if re.fullmatch(r"\d+\.\d+|current", kernel):
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
        if not arch.native():
            argv.insert(-1, f"CROSS_COMPILE={arch.cross_cc.removesuffix('gcc')}")
        proc = subprocess.run(argv, capture_output=True, text=True)
        if proc.returncode != 0 or not (work / "dmattr.ko").exists():
            err = [line for line in proc.stdout.splitlines() + proc.stderr.splitlines() if "rror" in line]
            raise UserError(f"building dmattr.ko failed: {(err or ['see make output'])[0].strip()}")
        shutil.copyfile(work / "dmattr.ko", out)
    return out

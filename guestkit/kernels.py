"""L0: Debian kernels for guests and emulated KVM hosts: name -> package -> cached Image + modules.

A kernel is named by a Debian version (`6.1.0-56-arm64`, `6.12.95+deb12-arm64`), by a
series (`6.1`, `6.12`: the newest version of that series the configured archive offers,
bookworm-backports included), by `current` (what linux-image-<arch> depends on today), or
by a local directory holding an `Image`/`vmlinuz` and a `lib/modules/<version>` tree.
Each kernel is unpacked once into the cache; the modules a boot needs are decompressed
here on the host (`.ko.xz`), since the guest's busybox insmod cannot read them.
"""
from __future__ import annotations

import lzma
import re
import shutil
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from bench.errors import UserError
from guestkit import apt, image
from guestkit.paths import arch_cache
from guestkit.qemu import Arch

_VERSION = re.compile(r"^(\d+)\.(\d+)\.(\d+)(?:-(\d+)|\+deb(\d+))?-([a-z0-9]+)$")


@dataclass(frozen=True)
class Kernel:
    """One unpacked kernel: what QEMU boots and where its modules are."""

    version: str          # e.g. 6.12.95+deb12-arm64 (the modules directory name)
    image: Path           # the kernel image QEMU's -kernel takes
    modules: Path         # .../lib/modules/<version>
    source: str           # the package it came from, or the local directory

    @property
    def series(self) -> tuple[int, int]:
        """(major, minor), e.g. (6, 12): what KVM policy depends on."""
        return version_key(self.version)[:2]


def version_key(version: str) -> tuple[int, ...]:
    """Sortable key: 6.1.0-56-arm64 -> (6, 1, 0, 56); 6.12.95+deb12-arm64 -> (6, 12, 95, 0)."""
    m = _VERSION.match(version)
    if not m:
        return (0,)
    major, minor, patch, abi, _deb, _flavour = m.groups()
    return int(major), int(minor), int(patch), int(abi or 0)


def _apt(arch: Arch) -> apt.ForeignApt:
    """The guest-architecture apt, with lists that include bookworm-backports."""
    apt.ensure_backports()
    lists = apt.ForeignApt(arch.debian, arch_cache(arch.name) / "apt")
    if not any((lists.cache / "lists").glob("*backports*Packages*")):
        lists.update()
    return lists


def _sid(arch: Arch) -> apt.ForeignApt:
    """sid (unstable) of the same mirror, in lists of its own: the newest Debian kernel."""
    lists = apt.ForeignApt(arch.debian, arch_cache(arch.name) / "apt-sid", suite="sid")
    return lists.ensure_lists()


@cache
def offered(arch: Arch) -> dict[str, apt.ForeignApt]:
    """Every `<version>-<flavour>` kernel of arch's default flavour the archive can give
    (bookworm with its security and backports suites, then sid), oldest first, with the
    apt that has it."""
    found: dict[str, apt.ForeignApt] = {}
    for a in (_apt(arch), _sid(arch)):
        names = [n for n in a.query(["pkgnames", "linux-image-"]).split()
                 if re.fullmatch(rf"linux-image-\d+\.\d+\.\d+(?:-\d+|\+deb\d+)-{arch.debian}", n)]
        policy = a.query(["policy", *names]) if names else ""
        for m in re.finditer(r"^linux-image-(\S+):\n\s+Installed: .*\n\s+Candidate: (?!\(none\))", policy, re.M):
            found.setdefault(m.group(1), a)
    return dict(sorted(found.items(), key=lambda kv: version_key(kv[0])))


def available(arch: Arch) -> tuple[str, ...]:
    """The kernel versions `offered`, oldest first."""
    return tuple(offered(arch))


def resolve(arch: Arch, name: str) -> str:
    """A kernel name (version, series, 'current' or 'sid') -> the exact Debian version."""
    if name == "current":
        return _apt(arch).depends_on(arch.kernel_meta).removeprefix("linux-image-")
    versions = available(arch)
    if name in versions:
        return name
    if name == "sid":
        sid = [v for v, a in offered(arch).items() if a.sources]
        if sid:
            return sid[-1]
    series = re.fullmatch(r"(\d+)\.(\d+)", name)
    matches = [v for v in versions if series and version_key(v)[:2] == (int(series[1]), int(series[2]))]
    if not matches:
        known = sorted({".".join(map(str, version_key(v)[:2])) for v in versions}, key=lambda s: tuple(map(int, s.split("."))))
        raise UserError(f"no Debian {arch.name} kernel {name!r} in the archive: name a series "
                        f"({', '.join(known)}), 'current', 'sid', a version such as {versions[-1] if versions else '?'}, "
                        "or a directory with an Image and lib/modules/")
    return matches[-1]


def get(arch: Arch, name: str) -> Kernel:
    """The kernel `name` (see the module docstring), downloaded and unpacked once."""
    path = Path(name)
    if "/" in name or path.is_dir():
        return local(path)
    version = resolve(arch, name)
    root = arch_cache(arch.name) / "kernels" / version
    done = root / ".complete"
    if not done.exists():
        a = offered(arch)[version]
        (deb,) = a.download([f"linux-image-{version}"])
        _unpack_image(a, deb, root, version)
        done.write_text(deb.name)
    return _found(root, version, f"linux-image-{version}")


def _unpack_image(a: apt.ForeignApt, deb: Path, root: Path, version: str) -> None:
    """Unpack the image package; newer Debian (sid) makes linux-image-<v> a metapackage
    whose Image and modules live in linux-binary-<v> and linux-modules-<v>: those too."""
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    image.extract([deb], root)
    if not _find_image(root, version):
        parts = [f"linux-binary-{version}", f"linux-modules-{version}"]
        image.extract(a.download([p for p in parts if p in a.query(["depends", f"linux-image-{version}"])]), root)
    if not _find_image(root, version):
        raise UserError(f"{deb.name} holds no kernel image (boot/vmlinuz-* or usr/lib/modules/*/vmlinuz)")


def _find_image(root: Path, version: str) -> Path | None:
    for rel in (f"boot/vmlinuz-{version}", f"usr/lib/modules/{version}/vmlinuz", f"lib/modules/{version}/vmlinuz",
                "Image", "vmlinuz", "boot/Image"):
        if (root / rel).is_file():
            return root / rel
    return None


def _found(root: Path, version: str, source: str) -> Kernel:
    image = _find_image(root, version)
    modules = next((root / d / version for d in ("lib/modules", "usr/lib/modules") if (root / d / version).is_dir()), None)
    if image is None or modules is None:
        raise UserError(f"{source}: no kernel image or no lib/modules/{version} found")
    return Kernel(version, image, modules, source)


def local(path: Path) -> Kernel:
    """A kernel built or unpacked by the user: DIR/Image (or vmlinuz) + DIR/lib/modules/<version>."""
    trees = sorted(p for d in ("lib/modules", "usr/lib/modules") for p in (path / d).glob("*") if p.is_dir())
    if not path.is_dir() or len(trees) != 1:
        raise UserError(f"{path}: expected a directory with an Image (or vmlinuz) and exactly one lib/modules/<version>")
    return _found(path, trees[0].name, str(path))


def module_order(kernel: Kernel, names: list[str]) -> list[Path]:
    """The module files to insmod for `names`, dependencies first; modules built into the
    kernel are skipped.  Debian ships no modules.dep (depmod makes it at install time), so
    dependencies come from each module's own .modinfo `depends=` field."""
    files = {_mod_name(p.name): p for p in kernel.modules.rglob("*.ko*")}
    builtin = kernel.modules / "modules.builtin"
    built = {_mod_name(Path(p).name) for p in builtin.read_text().split()} if builtin.exists() else set()
    order: list[Path] = []

    def visit(name: str, wanted_by: str) -> None:
        key = name.replace("-", "_")
        if key in built or files.get(key) in order:
            return
        if key not in files:
            raise UserError(f"kernel {kernel.version} has no module {name}{wanted_by} "
                            "(neither a .ko under lib/modules nor in modules.builtin)")
        for dep in _depends(files[key]):
            visit(dep, f" (needed by {key})")
        order.append(files[key])

    for name in names:
        visit(name, "")
    return order


def _depends(path: Path) -> list[str]:
    m = re.search(rb"\x00depends=([^\x00]*)\x00", b"\x00" + module_bytes(path))
    return [d for d in (m.group(1).decode().split(",") if m else []) if d]


def _mod_name(filename: str) -> str:
    return filename.split(".ko")[0].replace("-", "_")


def module_bytes(path: Path) -> bytes:
    """A module's ELF, decompressed here when it is shipped compressed (.ko.xz)."""
    data = path.read_bytes()
    return lzma.decompress(data) if path.name.endswith(".xz") else data

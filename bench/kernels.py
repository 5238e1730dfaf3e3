"""ctypes view of the c_kernels library: the kernel table, features and the timed call.

Python never lists kernel names: it reads the descriptor table the C files declare.
"""
from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from bench import kbuild
from bench.errors import UserError

ABI_VERSION = 2  # must match DMT_ABI_VERSION in c_kernels/include/dmt.h

PER_SIZE, PER_BURST, PER_ACCESS = 1, 2, 3
READS, WRITES, NEEDS_SRC, NEEDS_INIT, SIZED, NO_DEVICE = 1, 2, 4, 8, 16, 32
FEATURE_NAMES = {1: "sse2", 2: "avx2", 4: "avx512f", 8: "movdir64b", 256: "neon", 512: "dczva", 1024: "lse"}


class Args(ctypes.Structure):
    """struct dmt_args."""

    _fields_ = [
        ("buf", ctypes.c_void_p), ("ram", ctypes.c_void_p), ("size", ctypes.c_uint64),
        ("width", ctypes.c_uint32), ("burst", ctypes.c_uint32), ("mode", ctypes.c_uint32),
        ("stride", ctypes.c_uint32), ("seed", ctypes.c_uint64), ("sink", ctypes.c_uint64),
        ("cursor", ctypes.c_uint64),
    ]


class _Desc(ctypes.Structure):
    """struct dmt_kernel (function pointers kept opaque)."""

    _fields_ = [
        ("name", ctypes.c_char_p), ("kind", ctypes.c_char_p), ("unit", ctypes.c_char_p),
        ("params", ctypes.c_char_p), ("doc", ctypes.c_char_p), ("per_loop", ctypes.c_uint32),
        ("flags", ctypes.c_uint32), ("default_size", ctypes.c_uint64),
        ("supported", ctypes.c_void_p), ("init", ctypes.c_void_p), ("body", ctypes.c_void_p),
        ("overhead", ctypes.c_void_p),
    ]


@dataclass(frozen=True)
class Param:
    """One kernel parameter: its allowed values and the default."""

    name: str
    values: tuple[str, ...]
    default: str


@dataclass(frozen=True)
class Kernel:
    """One workload as its C file declares it."""

    index: int
    name: str
    kind: str
    unit: str
    params: tuple[Param, ...]
    doc: str
    per_loop: int
    flags: int
    default_size: int

    @property
    def reads(self) -> bool:
        return bool(self.flags & READS)

    @property
    def writes(self) -> bool:
        return bool(self.flags & WRITES)

    @property
    def sized(self) -> bool:
        return bool(self.flags & SIZED)

    @property
    def device_ok(self) -> bool:
        """False where its instruction faults on Device memory on this arch (arm64 DC ZVA)."""
        return not self.flags & NO_DEVICE

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)


def parse_params(spec: str) -> tuple[Param, ...]:
    """Parse "width=8|16|*64;mode=*plain|nt" (a '*' marks the default)."""
    out = []
    for item in filter(None, spec.split(";")):
        name, _, vals = item.partition("=")
        raw = vals.split("|")
        default = next((v[1:] for v in raw if v.startswith("*")), raw[0].lstrip("*"))
        out.append(Param(name, tuple(v.lstrip("*") for v in raw), default))
    return tuple(out)


def _packaged_lib() -> Path:
    return Path(__file__).resolve().parent / kbuild.LIB_NAME


def _cache_lib(digest: str) -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "dmtbench" / digest / kbuild.LIB_NAME


def library_path() -> Path:
    """The library to load: the packaged one if it matches the sources beside it, else a
    cached build of those sources (built now if needed)."""
    override = os.environ.get("DMTBENCH_LIB")
    if override:
        return Path(override)
    packaged = _packaged_lib()
    src = kbuild.source_dir()
    if not src.is_dir():
        if packaged.exists():
            return packaged
        raise UserError("the kernels library is missing and there are no c_kernels/ sources: reinstall dmtbench")
    digest = kbuild.source_hash(src)
    if packaged.exists() and _lib_hash(packaged) == digest:
        return packaged
    cached = _cache_lib(digest)
    if not cached.exists():
        try:
            kbuild.build(cached, src=src)
        except kbuild.BuildError as exc:
            raise UserError(str(exc).splitlines()[0] + " (needed to build c_kernels)") from exc
    return cached


def _lib_hash(path: Path) -> str | None:
    try:
        lib = ctypes.CDLL(str(path))
    except OSError:
        return None
    lib.dmt_src_hash.restype = ctypes.c_char_p
    return lib.dmt_src_hash().decode()


@cache
def lib() -> ctypes.CDLL:
    """The loaded library with its prototypes set."""
    path = library_path()
    try:
        so = ctypes.CDLL(str(path))
    except OSError as exc:
        raise UserError(f"cannot load {path}: {exc}; delete it and run again to rebuild") from exc
    so.dmt_abi_version.restype = ctypes.c_int
    if so.dmt_abi_version() != ABI_VERSION:
        raise UserError(f"{path} has kernel ABI {so.dmt_abi_version()}, expected {ABI_VERSION}: reinstall")
    so.dmt_kernel_at.restype = ctypes.POINTER(_Desc)
    so.dmt_kernel_at.argtypes = [ctypes.c_int]
    for fn in (so.dmt_arch, so.dmt_src_hash):
        fn.restype = ctypes.c_char_p
    so.dmt_get_features.restype = ctypes.c_uint32
    for fn in (so.dmt_init, so.dmt_supported):
        fn.argtypes = [ctypes.c_int, ctypes.POINTER(Args)]
        fn.restype = ctypes.c_int
    so.dmt_run.argtypes = [ctypes.c_int, ctypes.POINTER(Args), ctypes.c_uint64]
    so.dmt_run.restype = ctypes.c_int64
    so.dmt_timer_overhead.argtypes = [ctypes.c_uint64]
    so.dmt_timer_overhead.restype = ctypes.c_int64
    so.dmt_prefault.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int]
    so.dmt_prefault.restype = ctypes.c_uint64
    so.dmt_width_supported.argtypes = [ctypes.c_uint32]
    so.dmt_set_max_width.argtypes = [ctypes.c_uint32]
    so.dmt_set_max_width(max_width_cap())
    return so


MAX_WIDTH_ENV = "DMT_MAX_WIDTH"


def max_width_cap() -> int:
    """$DMT_MAX_WIDTH: the widest access width the library may use (default 64, i.e. what
    the CPU has); 32 makes an AVX-512 machine behave as an AVX2-only one, 16 as SSE2."""
    raw = os.environ.get(MAX_WIDTH_ENV, "64")
    if raw not in ("8", "16", "32", "64"):
        raise UserError(f"{MAX_WIDTH_ENV}={raw}: use 8, 16, 32 or 64 (bytes), or unset it")
    return int(raw)


@cache
def registry() -> dict[str, Kernel]:
    """Every kernel in the library, by name, in table order."""
    so = lib()
    out: dict[str, Kernel] = {}
    for i in range(so.dmt_kernel_count()):
        d = so.dmt_kernel_at(i).contents
        out[d.name.decode()] = Kernel(
            index=i, name=d.name.decode(), kind=d.kind.decode(), unit=d.unit.decode(),
            params=parse_params(d.params.decode()), doc=d.doc.decode(), per_loop=d.per_loop,
            flags=d.flags, default_size=d.default_size,
        )
    return out


def arch() -> str:
    """The library's architecture path: x86_64, arm64 or generic."""
    return lib().dmt_arch().decode()


def features() -> list[str]:
    """CPU features the library detected at load time."""
    bits = lib().dmt_get_features()
    return [name for bit, name in FEATURE_NAMES.items() if bits & bit]


def widest_width() -> int:
    """The widest access width this CPU supports (64 with AVX-512 or on arm64)."""
    return max(w for w in (8, 16, 32, 64) if width_supported(w))


def width_supported(width: int) -> bool:
    """Whether this CPU (under $DMT_MAX_WIDTH) can make accesses of `width` bytes."""
    return lib().dmt_width_supported(width) == 0


UNMEASURABLE_TRIES = 3


def timed(run: Callable[[], int]) -> int:
    """run() (one timed region: ns or -errno) again while it says -ERANGE, at most
    UNMEASURABLE_TRIES times.  A region of a few loops (pyperf's calibration starts at one)
    is dominated by its clock reads, and the subtraction of a kernel's calibrated overhead
    can go below zero on noise alone (seen under TCG at 2 loops); a kernel whose overhead
    really is at least its measurement keeps failing and the case fails."""
    rc = run()
    for _ in range(UNMEASURABLE_TRIES - 1):
        if rc != -errno.ERANGE:
            break
        rc = run()
    return rc


def failure(rc: int) -> str:
    """What a kernel's negative return code means, for the one-line error of that case."""
    if rc == -errno.ERANGE:  # dmt_run: the calibrated overhead is not below the measured time
        return ("its calibrated overhead is at least the measured time: the access is not measurable "
                "at this loop count (a longer run, e.g. a larger --min-time, or a quieter machine)")
    return f"it failed with {os.strerror(-rc)}"

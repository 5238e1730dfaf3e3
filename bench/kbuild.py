"""Compile c_kernels/ into the shared library that bench.kernels loads with ctypes.

One function serves the package build (setup.py), the loader's fallback (sources copied
without a built library) and guestkit's cross build (another CC), so all three produce
the same library from the same flags.  Imports nothing outside the standard library:
setup.py runs it before dependencies exist.
"""
from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

LIB_NAME = "libdmtkernels.so"
# -fno-strict-aliasing: kernels reinterpret mapped memory; -O2 keeps loops as written.
# -fno-tree-loop-distribute-patterns: GCC otherwise turns a store loop (wc-burst's 16-byte
# bursts) into a call to memset, whose accesses are not the ones the kernel accounts for.
CFLAGS = ("-O2", "-fPIC", "-shared", "-std=gnu11", "-Wall", "-Wextra", "-fno-strict-aliasing",
          "-fno-tree-loop-distribute-patterns")


class BuildError(RuntimeError):
    """The kernels library could not be built (no compiler, or a compile error)."""


def source_dir() -> Path:
    """The c_kernels/ directory next to the bench package (a source checkout)."""
    return Path(__file__).resolve().parent.parent / "c_kernels"


def sources(src: Path | None = None) -> list[Path]:
    """Every kernel source file, in a stable order."""
    return sorted((src or source_dir()).glob("*.c"))


def source_hash(src: Path | None = None) -> str:
    """A digest of every source, header and flag: equal digests mean equal libraries."""
    src = src or source_dir()
    h = hashlib.sha256(" ".join(CFLAGS).encode())
    for path in sorted(src.rglob("*")):
        if path.suffix in (".c", ".h", ".def"):
            h.update(path.relative_to(src).as_posix().encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


def find_cc(cc: str | None = None) -> list[str]:
    """The C compiler argv: an explicit one, $CC, or cc/gcc/clang on PATH."""
    for cand in (cc, os.environ.get("CC"), "cc", "gcc", "clang"):
        if cand and shutil.which(shlex.split(cand)[0]):
            return shlex.split(cand)
    raise BuildError("no C compiler found: install gcc (Debian: apt-get install gcc) or set CC")


def compile_objects(out_dir: Path, cc: str | None = None, src: Path | None = None) -> list[Path]:
    """Compile each kernel source alone into out_dir/<name>.o with the library's flags:
    the same code as in the library, attributable to its file (tests disassemble it)."""
    src = src or source_dir()
    argv = [*find_cc(cc), *(f for f in CFLAGS if f != "-shared"), "-c", f"-I{src / 'include'}"]
    out_dir.mkdir(parents=True, exist_ok=True)
    objs = []
    for path in sources(src):
        obj = out_dir / f"{path.stem}.o"
        proc = subprocess.run([*argv, str(path), "-o", str(obj)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise BuildError(f"compiling {path.name} failed:\n{proc.stderr.strip()}")
        objs.append(obj)
    return objs


def build(out: Path, cc: str | None = None, src: Path | None = None) -> Path:
    """Compile the kernels into `out` (written atomically) and return it."""
    src = src or source_dir()
    files = sources(src)
    if not files:
        raise BuildError(f"no kernel sources in {src}")
    argv = [*find_cc(cc), *CFLAGS, f"-I{src / 'include'}", f'-DDMT_SRC_HASH="{source_hash(src)}"']
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".build-", suffix=".so", dir=out.parent)
    os.close(fd)
    try:
        proc = subprocess.run([*argv, *map(str, files), "-o", tmp], capture_output=True, text=True)
        if proc.returncode != 0:
            raise BuildError(f"compiling c_kernels failed:\n{proc.stderr.strip()}")
        os.chmod(tmp, 0o755)  # mkstemp makes it 0600
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


if __name__ == "__main__":  # python -m bench.kbuild OUT [CC]: used by guestkit and by hand
    import sys

    print(build(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else None))

"""Build the `kvm` target's two arm64 artefacts from c_kernels/:

- libdmtkvm.so: the tiny VMM (c_kernels/kvm/vmm.c), loaded with ctypes on the KVM host;
- dmtkvm-payload.elf: the freestanding L2 payload, linked from the SAME kernel sources and
  probes.c as the userspace library, plus c_kernels/kvm/payload/ (start-up, vectors,
  request loop, CNTVCT clock).

Both need an arm64 compiler: the native cc on an arm64 host, aarch64-linux-gnu-gcc
elsewhere (guestkit cross-builds them into the emulated KVM host's image with build_kvm).
Standard library only, like bench.kbuild.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
from pathlib import Path

from bench import kbuild

VMM_LIB = "libdmtkvm.so"
PAYLOAD = "dmtkvm-payload.elf"
HASH_FILE = "dmtkvm.hash"  # source_hash() of the sources both were built from
VMM_SOURCES = ("vmm.c", "vmmcore.c")  # vmmcore.c: the layout and run loop (x86check.c links it too)
CROSS_CC = "aarch64-linux-gnu-gcc"
# The library's code-generation flags, minus what a shared object needs.  -ffreestanding
# and -nostdlib: the payload has no libc (c_kernels/kvm/payload/runtime.c supplies the
# five functions the kernels call); --gc-sections drops what only Linux userspace uses
# (probes.c's signal-based fork child) together with its libc references.
_SHARED_ONLY = ("-fPIC", "-shared")
PAYLOAD_FLAGS = ("-ffreestanding", "-nostdlib", "-static", "-fno-pic", "-no-pie", "-fno-stack-protector",
                 "-fno-asynchronous-unwind-tables", "-fno-unwind-tables", "-ffunction-sections",
                 "-fdata-sections", "-Wl,--gc-sections", "-Wl,--build-id=none", "-Wl,--no-warn-rwx-segments")


def kvm_dir(src: Path | None = None) -> Path:
    return (src or kbuild.source_dir()) / "kvm"


def source_hash(src: Path | None = None) -> str:
    """Digest of every c_kernels source (the payload links them all) and both flag sets."""
    h = hashlib.sha256(kbuild.source_hash(src).encode())
    h.update(" ".join(PAYLOAD_FLAGS).encode())
    return h.hexdigest()[:16]


def arm64_cc(cc: str | None = None) -> str | None:
    """The compiler to use: explicit, $CC on an arm64 host, cc on an arm64 host, else the
    aarch64 cross compiler.  None when the choice is the cross compiler and it is absent."""
    import platform
    import shutil

    if cc:
        return cc
    if platform.machine() in ("aarch64", "arm64"):
        return os.environ.get("CC") or "cc"
    return CROSS_CC if shutil.which(CROSS_CC) else None


def _compile(argv: list[str], what: str) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        raise kbuild.BuildError(f"compiling the {what} failed:\n{proc.stderr.strip()}")


def _atomic(out: Path, build_into) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".build-", dir=out.parent)
    os.close(fd)
    try:
        build_into(tmp)
        os.chmod(tmp, 0o755)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def build_vmm(out: Path, cc: str | None = None, src: Path | None = None) -> Path:
    """Compile the VMM library into `out` (atomically)."""
    src = src or kbuild.source_dir()
    argv = [*kbuild.find_cc(arm64_cc(cc)), *kbuild.CFLAGS, f"-I{src / 'include'}", f"-I{kvm_dir(src)}",
            *(str(kvm_dir(src) / f) for f in VMM_SOURCES)]
    return _atomic(out, lambda tmp: _compile([*argv, "-o", tmp], "KVM VMM"))


def build_x86check(out: Path, src: Path | None = None) -> Path:
    """Compile x86check (c_kernels/kvm/x86check.c + the VMM's run loop) with the host's cc:
    the run loop's deadline and EINTR handling driven by a real x86 KVM vCPU.  x86_64 only."""
    src = src or kbuild.source_dir()
    argv = [*kbuild.find_cc(None), "-O2", "-std=gnu11", "-Wall", "-Wextra", "-pthread", f"-I{src / 'include'}",
            f"-I{kvm_dir(src)}", str(kvm_dir(src) / "vmmcore.c"), str(kvm_dir(src) / "x86check.c")]
    return _atomic(out, lambda tmp: _compile([*argv, "-o", tmp, "-lrt"], "x86 KVM run-loop check"))


def build_payload(out: Path, cc: str | None = None, src: Path | None = None) -> Path:
    """Link the payload ELF into `out` (atomically): every kernel source + the runtime."""
    src = src or kbuild.source_dir()
    pay = kvm_dir(src) / "payload"
    flags = [f for f in kbuild.CFLAGS if f not in _SHARED_ONLY]
    argv = [*kbuild.find_cc(arm64_cc(cc)), *flags, *PAYLOAD_FLAGS, f"-Wl,-T,{pay / 'payload.ld'}",
            f"-I{src / 'include'}", f"-I{kvm_dir(src)}", f'-DDMT_SRC_HASH="{kbuild.source_hash(src)}"',
            *map(str, kbuild.sources(src)), str(pay / "runtime.c"), str(pay / "start.S"), "-lgcc"]
    return _atomic(out, lambda tmp: _compile([*argv, "-o", tmp], "KVM payload"))


def build_kvm(out_dir: Path, cc: str | None = None, src: Path | None = None) -> tuple[Path, Path]:
    """Both artefacts into out_dir: (VMM library, payload ELF).  BuildError without an
    arm64 compiler (install gcc-aarch64-linux-gnu, or run python -m guestkit deps)."""
    if arm64_cc(cc) is None:
        raise kbuild.BuildError(f"no arm64 compiler: install {CROSS_CC} (Debian: gcc-aarch64-linux-gnu libc6-dev-arm64-cross)")
    built = build_vmm(out_dir / VMM_LIB, cc, src), build_payload(out_dir / PAYLOAD, cc, src)
    (out_dir / HASH_FILE).write_text(source_hash(src) + "\n")
    return built


def bundle(cache: Path, cc: str | None = None) -> dict[str, bytes]:
    """The three files a KVM host image carries next to the bench package (name -> bytes),
    built once per source hash under `cache`.  guestkit adds them as dmtbench/bench/<name>."""
    out_dir = cache / f"kvm-{source_hash()}"
    if not (out_dir / HASH_FILE).exists():
        build_kvm(out_dir, cc)
    return {name: (out_dir / name).read_bytes() for name in (VMM_LIB, PAYLOAD, HASH_FILE)}


if __name__ == "__main__":  # python -m bench.kvmbuild OUT_DIR [CC]
    import sys

    print(*build_kvm(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else None))

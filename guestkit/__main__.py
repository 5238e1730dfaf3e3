"""`python -m guestkit <command>` (L0): deps, run, kmod, lab, lava."""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from bench.errors import UserError
from bench.units import parse_size
from guestkit.lab import l0_hostboot as hostboot
from guestkit.qemu import ARCHES, get_arch


def cmd_deps(argv: list[str]) -> int:
    from guestkit import deps

    p = argparse.ArgumentParser(prog="python -m guestkit deps", description=deps.__doc__.splitlines()[0])
    p.add_argument("--arch", default="arm64", choices=list(ARCHES))
    p.add_argument("--lava", action="store_true", help="also LAVA's dispatcher (lava-run) and TuxRun, for 'guestkit lava'")
    args = p.parse_args(argv)
    return deps.main(get_arch(args.arch), lava=args.lava)


def run_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m guestkit run",
                                usage="python -m guestkit run [options] -- <command in the guest>")
    p.add_argument("--arch", default="arm64", choices=list(ARCHES))
    p.add_argument("--accel", choices=["tcg", "kvm"], default=None, help="default: kvm on a native host with /dev/kvm, else tcg")
    p.add_argument("--ivshmem", metavar="SIZE", help="add an ivshmem-plain device (scratch BAR2 of SIZE) at 0000:00:01.0")
    p.add_argument("--ivshmem-file", type=Path, help="backing file of the ivshmem BAR (kept; default: a temporary file)")
    p.add_argument("--vfio", action="append", default=[], metavar="BDF", help="pass a host device bound to vfio-pci through")
    p.add_argument("--timeout", type=float, default=600, help="seconds before the guest is killed (exit 124)")
    p.add_argument("--memory", type=int, default=None, help="guest RAM in MiB (default 1024; 2048 with --kvm-host)")
    p.add_argument("--kernel", metavar="NAME", help="guest kernel: a Debian version (6.12.117+deb12-arm64), a series "
                                                  "(6.1, 6.12: the newest the archive has), 'current' (default), or a "
                                                  "directory with an Image and lib/modules/<version>")
    p.add_argument("--cpu", default="max", help="QEMU CPU model under TCG (default max; e.g. cortex-a57: no FWB, no VHE)")
    p.add_argument("--kvm-host", action="store_true", help="boot as an emulated arm64 KVM host at EL2 (arm64, TCG): "
                                                           "/dev/kvm, VFIO modules loaded, the ivshmem BAR bound to vfio-pci")
    p.add_argument("--results", type=Path, default=Path("results"), help="host results root (default ./results)")
    p.add_argument("--machine", help="guest machine name, i.e. results/<machine>/ (default qemu-<arch>-<accel>)")
    p.add_argument("--kmod", action="store_true", help="build the dmattr module for the guest kernel and insmod it")
    p.add_argument("--show-command", action="store_true", help="print the QEMU command line")
    p.add_argument("command", nargs=argparse.REMAINDER)
    return p


def cmd_run(argv: list[str]) -> int:
    from guestkit import launch

    args = run_parser().parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise UserError("no command to run in the guest: add it after --, e.g. -- python -m bench run --fast")
    arch = get_arch(args.arch)
    accel = args.accel or ("kvm" if arch.native() and os.path.exists("/dev/kvm") else "tcg")
    size = 0
    if args.ivshmem:
        try:
            size = parse_size(args.ivshmem)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        if size < 4096 or size & (size - 1):
            raise UserError(f"--ivshmem {args.ivshmem}: the BAR size must be a power of two >= 4KiB")
    shm_file, temp = args.ivshmem_file, None
    if size and shm_file is None:
        fd, name = tempfile.mkstemp(prefix="ivshmem-")
        os.close(fd)
        shm_file = temp = Path(name)
    if shm_file is not None:
        with open(shm_file, "ab") as f:
            f.truncate(size)
    kernel = _kernel(arch, args.kernel, args.kvm_host)
    extra, setup = {}, []
    if args.kvm_host:
        job = hostboot.host_job(kernel, bind_ivshmem=bool(size))
        extra.update(job.files)
        setup += job.setup
    if args.kmod:
        from guestkit import kmod

        extra["dmattr.ko"] = kmod.build(arch, kernel.version if kernel else guest_kernel(arch)).read_bytes()
        setup.append(["insmod", "/dmtbench/dmattr.ko"])
    memory = args.memory or (hostboot.MEMORY_MB if args.kvm_host else 1024)
    try:
        return launch.run(arch, command, accel=accel, timeout=args.timeout, results=args.results,
                          machine=args.machine or f"qemu-{arch.name}-{accel}", ivshmem_file=shm_file,
                          ivshmem_bytes=size, vfio=tuple(args.vfio), memory_mb=memory,
                          show_command=args.show_command, extra=extra, setup=setup,
                          kernel=kernel.image if kernel else None, kvm_host=args.kvm_host, cpu_model=args.cpu)
    finally:
        if temp:
            temp.unlink(missing_ok=True)


def _kernel(arch, name: str | None, kvm_host: bool):
    """The kernel to boot when it is not the default guest kernel (a KVM host needs its
    modules too, so it always goes through guestkit.kernels)."""
    if name is None and not kvm_host:
        return None
    from guestkit import kernels

    return kernels.get(arch, name or "current")


def cmd_kmod(argv: list[str]) -> int:
    from guestkit import kmod

    p = argparse.ArgumentParser(prog="python -m guestkit kmod", description=kmod.__doc__.splitlines()[0])
    p.add_argument("action", choices=["build"])
    p.add_argument("--kernel", help="Debian kernel version (e.g. 6.1.0-56-arm64) or a headers directory; "
                                    "default: the guest kernel from 'deps'")
    p.add_argument("--arch", default="arm64", choices=list(ARCHES))
    args = p.parse_args(argv)
    arch = get_arch(args.arch)
    print(kmod.build(arch, args.kernel or guest_kernel(arch)))
    return 0


def guest_kernel(arch) -> str:
    """The kernel version the guest boots (Debian's current one for arch)."""
    from guestkit import deps

    return deps.guest_kernel_version(arch)


def cmd_lab(argv: list[str]) -> int:
    from guestkit.lab import l0_command as lab

    return lab.main(argv)


def cmd_lava(argv: list[str]) -> int:
    from guestkit.lava import l0_command as lava

    return lava.main(argv)


HANDLERS = {"deps": cmd_deps, "run": cmd_run, "kmod": cmd_kmod, "lab": cmd_lab, "lava": cmd_lava}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in HANDLERS:
        print("usage: python -m guestkit {deps,run,kmod,lab,lava} ...  (-h on each for options)", file=sys.stderr)
        return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    try:
        return HANDLERS[argv[0]](argv[1:])
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print("error: interrupted; files already received are in results/", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

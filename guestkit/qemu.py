"""L0: QEMU command lines, built as argv lists (never a shell string), one class per arch."""
from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field
from pathlib import Path

from bench.errors import UserError

IVSHMEM_ADDR = 1  # ivshmem sits at 0000:00:01.0 in every guest, so tests can name it


@dataclass(frozen=True)
class GuestConfig:
    """Everything that decides a guest's QEMU command line."""

    kernel: Path
    initrd: Path
    accel: str = "tcg"                 # tcg | kvm
    memory_mb: int = 1024
    cpus: int = 2
    cpu_model: str = "max"             # the emulated CPU (TCG); e.g. cortex-a57: no FWB, no VHE
    ivshmem_file: Path | None = None
    ivshmem_bytes: int = 0
    vfio: tuple[str, ...] = ()
    kvm_host: bool = False             # boot at EL2 as an emulated KVM host (arm64, TCG)
    cmdline_extra: tuple[str, ...] = field(default_factory=tuple)


class Arch:
    """One guest architecture: its Debian name, QEMU binary, machine and console."""

    name = ""
    debian = ""
    qemu = ""
    qemu_pkg = ""
    cross_cc = ""
    # The cross gcc alone has no target libc headers (they are only its Recommends, and we
    # install without recommends): the libc dev package is named explicitly.
    cross_pkgs: tuple[str, ...] = ()
    cross_header = ""  # a file of the target libc's dev package: present = cross build works
    kernel_meta = ""
    console = ""
    pci_bus = "pcie.0"  # the root bus of both -M virt and -M q35
    host_machines: tuple[str, ...] = ()

    def machine_args(self, accel: str, kvm_host: bool = False, cpu: str = "max") -> list[str]:
        raise NotImplementedError

    def native(self) -> bool:
        """True when the host runs this architecture (KVM possible, no cross compiler)."""
        return platform.machine() in self.host_machines

    def cmdline(self, cfg: GuestConfig) -> str:
        words = [f"console={self.console}", "rdinit=/init", "quiet", "loglevel=3", "panic=-1"]
        if cfg.accel == "tcg":
            words.append("dmtbench.emulated=1")  # read back by bench.metadata.emulated()
        return " ".join([*words, *cfg.cmdline_extra])

    def argv(self, cfg: GuestConfig) -> list[str]:
        """The full QEMU argv for cfg."""
        if cfg.accel == "kvm" and not (self.native() and os.path.exists("/dev/kvm")):
            raise UserError(f"--accel kvm needs an {self.name} host with /dev/kvm; use --accel tcg here")
        argv = [self.qemu, *self.machine_args(cfg.accel, cfg.kvm_host, cfg.cpu_model), "-m", str(cfg.memory_mb), "-smp", str(cfg.cpus),
                "-nographic", "-no-reboot", "-nic", "none",
                "-kernel", str(cfg.kernel), "-initrd", str(cfg.initrd), "-append", self.cmdline(cfg)]
        if cfg.ivshmem_file:
            argv += ["-object", f"memory-backend-file,id=ivshmem0,size={cfg.ivshmem_bytes},"
                                f"mem-path={cfg.ivshmem_file},share=on",
                     "-device", f"ivshmem-plain,memdev=ivshmem0,bus={self.pci_bus},addr={IVSHMEM_ADDR:#x}"]
        # Passed-through devices take the next slots after ivshmem, so a guest can name
        # them (the stage-2 lab's L2 sees the host's ivshmem at 0000:00:01.0); rombar=0: a
        # -kernel boot runs no option ROM, and a device without one only makes QEMU warn.
        first = IVSHMEM_ADDR + (1 if cfg.ivshmem_file else 0)
        for slot, bdf in enumerate(cfg.vfio, first):
            argv += ["-device", f"vfio-pci,host={bdf},rombar=0,bus={self.pci_bus},addr={slot:#x}"]
        return argv


class Arm64(Arch):
    name, debian, qemu, qemu_pkg = "arm64", "arm64", "qemu-system-aarch64", "qemu-system-arm"
    cross_cc = "aarch64-linux-gnu-gcc"
    cross_pkgs = ("gcc-aarch64-linux-gnu", "libc6-dev-arm64-cross")
    cross_header = "/usr/aarch64-linux-gnu/include/bits/libc-header-start.h"
    kernel_meta, console = "linux-image-arm64", "ttyAMA0"
    host_machines = ("aarch64", "arm64")

    def machine_args(self, accel: str, kvm_host: bool = False, cpu: str = "max") -> list[str]:
        if kvm_host and accel != "tcg":
            raise UserError("--kvm-host emulates an arm64 KVM host under TCG (use --accel tcg); on an arm64 "
                            "server with /dev/kvm run the kvm target there directly")
        if accel == "kvm":
            return ["-M", "virt,gic-version=host", "-cpu", "host", "-accel", "kvm"]
        # -cpu max with multi-threaded TCG (-smp >= 2) models Device-memory alignment faults.
        # A KVM host starts at EL2 (virtualization=on); VFIO wants an SMMU and, to set up
        # its IOMMU, interrupt remapping, which GICv3's ITS gives (GICv2m does not).
        machine = "virt,virtualization=on,iommu=smmuv3,gic-version=3" if kvm_host else "virt"
        return ["-M", machine, "-cpu", cpu, "-accel", "tcg,thread=multi"]


class X86_64(Arch):
    name, debian, qemu, qemu_pkg = "x86_64", "amd64", "qemu-system-x86_64", "qemu-system-x86"
    cross_cc = "x86_64-linux-gnu-gcc"
    cross_pkgs = ("gcc-x86-64-linux-gnu", "libc6-dev-amd64-cross")
    cross_header = "/usr/x86_64-linux-gnu/include/bits/libc-header-start.h"
    kernel_meta, console = "linux-image-amd64", "ttyS0"
    host_machines = ("x86_64", "AMD64")

    def machine_args(self, accel: str, kvm_host: bool = False, cpu: str = "max") -> list[str]:
        if kvm_host:
            raise UserError("--kvm-host is arm64 only (the stage-2 lab); drop --arch x86_64")
        # -vga none: q35's default VGA would take 00:01.0, where ivshmem goes.
        if accel == "kvm":
            return ["-M", "q35", "-vga", "none", "-cpu", "host", "-accel", "kvm"]
        return ["-M", "q35", "-vga", "none", "-cpu", cpu, "-accel", "tcg,thread=multi"]


ARCHES: dict[str, Arch] = {a.name: a for a in (Arm64(), X86_64())}


def get_arch(name: str) -> Arch:
    try:
        return ARCHES[name]
    except KeyError:
        raise UserError(f"unknown guest arch {name!r}: use one of {', '.join(ARCHES)}") from None

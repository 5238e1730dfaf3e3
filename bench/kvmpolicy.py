"""What stage-2 attribute a Linux KVM host gives a memslot, by kernel version and backing
(the KVM-policy table), and the host facts it depends on.

- RAM (anonymous memory): Normal WB (with FEAT_S2FWB forced write-back, MemAttr 6).
- Before 6.9 every non-RAM PFNMAP memslot (sysfs resourceN, vfio-pci BARs) is Device-nGnRE.
- From 6.9 (commit "KVM: arm64: Set io memory s2 pte as normalnc for vfio pci device",
  VM_ALLOW_ANY_UNCACHED) vfio-pci BARs are Normal-NC; other PFNMAP stays Device-nGnRE.
- From 6.17 with FWB some device memory (nvgrace-gpu usemem) is cacheable: not modelled
  here (that driver is not a backing this target maps).
The probes observe the class (device or normal) and the target compares it with this.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from bench import memtypes

BACKINGS = ("vfio", "sysfs", "ram")
VFIO_NC_SINCE = (6, 9)
FWB_LINE = "Stage-2 Force Write-Back"  # arm64 cpufeature: "CPU features: detected: Stage-2 Force Write-Back"
BOOT_LINE = "Booting Linux on physical CPU"  # the log still holds the boot messages


@dataclass(frozen=True)
class Prediction:
    """The stage-2 attribute KVM is expected to choose, and why."""

    stage2: str
    reason: str

    @property
    def device(self) -> bool:
        return memtypes.get(self.stage2).device

    @property
    def cls(self) -> str:
        return "device" if self.device else "normal"


def version(release: str) -> tuple[int, int]:
    """'6.12.95+deb12-arm64' -> (6, 12); (0, 0) when unreadable."""
    m = re.match(r"(\d+)\.(\d+)", release)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def predict(release: str, backing: str) -> Prediction:
    """The KVM-policy prediction for a memslot of `backing` on a host running `release`."""
    if backing == "ram":
        return Prediction("normal", "guest RAM (anonymous memory) is Normal WB at stage 2")
    if backing == "vfio" and version(release) >= VFIO_NC_SINCE:
        return Prediction("normal-nc", "Linux >= 6.9 maps vfio-pci BARs Normal-NC at stage 2 (VM_ALLOW_ANY_UNCACHED)")
    if backing == "vfio":
        return Prediction("device-ngnre", "Linux < 6.9 maps every non-RAM PFNMAP, vfio-pci BARs too, Device-nGnRE at stage 2")
    return Prediction("device-ngnre", "a sysfs resourceN mmap is PFNMAP without VM_ALLOW_ANY_UNCACHED: Device-nGnRE at stage 2")


def fwb_from_log(log: str) -> bool | None:
    """FEAT_S2FWB in use, from the host kernel log: True when the boot announced it, False
    when the boot messages are there without it, None when they have scrolled away.
    (Userspace cannot read ID_AA64MMFR2_EL1.FWB: Linux hides that field from EL0.)"""
    if FWB_LINE in log:
        return True
    return False if BOOT_LINE in log else None


def observed_class(outcome: str) -> str:
    """Stage-2 class from a Normal stage-1 unaligned access: the VM killed by a stage-2
    alignment fault = Device; the access completing = Normal."""
    return {"killed": "device", "ok": "normal"}.get(outcome, "unknown")

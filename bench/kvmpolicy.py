"""What stage-2 attribute a Linux KVM host gives a memslot, by kernel version and backing
(the KVM-policy table), and the host facts it depends on.

- RAM (anonymous memory): Normal WB (with FEAT_S2FWB forced write-back, MemAttr 6).
- Before 6.9 every non-RAM PFNMAP memslot (sysfs resourceN, vfio-pci BARs) is Device-nGnRE.
- From 6.9 (commit "KVM: arm64: Set io memory s2 pte as normalnc for vfio pci device",
  VM_ALLOW_ANY_UNCACHED) vfio-pci BARs are Normal-NC; other PFNMAP stays Device-nGnRE.
- From 6.17 (commit "KVM: arm64: Allow cacheable stage 2 mapping using VMA flags", for
  nvgrace-gpu's GPU memory) a cacheable PFNMAP over non-RAM memory is Normal WB at stage 2
  when the CPU has FEAT_S2FWB and CTR_EL0.DIC (KVM_CAP_ARM_CACHEABLE_PFNMAP_SUPPORTED);
  without them KVM_SET_USER_MEMORY_REGION refuses the memslot (EINVAL).  Before 6.17 such
  a mapping is Device-nGnRE like any other PFNMAP.  A write-combine or device PFNMAP
  without VM_ALLOW_ANY_UNCACHED (dmattr's BAR mmaps) stays Device-nGnRE in every era.
The probes observe the class (device, normal, or refused) and the target compares it with this.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from bench import memtypes

# The kmod-* backings are a BAR mapped in the host by the dmattr module with that page
# protection: kmod-normal stands in for GPU memory (a cacheable VM_PFNMAP over non-RAM).
KMOD_BACKINGS = {"kmod-normal": "normal", "kmod-normal-nc": "normal-nc", "kmod-device-ngnre": "device-ngnre"}
BACKINGS = ("vfio", "sysfs", "ram", *KMOD_BACKINGS)
VFIO_NC_SINCE = (6, 9)
CACHEABLE_PFNMAP_SINCE = (6, 17)
FWB_LINE = "Stage-2 Force Write-Back"  # arm64 cpufeature: "CPU features: detected: Stage-2 Force Write-Back"
BOOT_LINE = "Booting Linux on physical CPU"  # the log still holds the boot messages


@dataclass(frozen=True)
class Prediction:
    """The stage-2 attribute KVM is expected to choose, and why; stage2 None: KVM is
    expected to refuse the memslot (KVM_SET_USER_MEMORY_REGION fails)."""

    stage2: str | None
    reason: str

    @property
    def refused(self) -> bool:
        return self.stage2 is None

    @property
    def device(self) -> bool:
        return not self.refused and memtypes.get(self.stage2).device

    @property
    def cls(self) -> str:
        """'device', 'normal' or 'refused': what the unaligned probe should observe."""
        return "refused" if self.refused else "device" if self.device else "normal"

    @property
    def shown(self) -> str:
        """stage2, or 'refused', for tables and metadata."""
        return self.stage2 or "refused"


def version(release: str) -> tuple[int, int]:
    """'6.12.95+deb12-arm64' -> (6, 12); (0, 0) when unreadable."""
    m = re.match(r"(\d+)\.(\d+)", release)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def predict(release: str, backing: str, fwb: bool | None = None, dic: bool | None = None) -> Prediction:
    """The KVM-policy prediction for a memslot of `backing` on a host running `release`.
    fwb / dic: the host CPU has FEAT_S2FWB / CTR_EL0.DIC (None: not known; assumed present,
    as on every Armv8.4+ server CPU, and the reason says so)."""
    if backing in KMOD_BACKINGS:
        return _predict_kmod(version(release), KMOD_BACKINGS[backing], fwb, dic)
    if backing == "ram":
        return Prediction("normal", "guest RAM (anonymous memory) is Normal WB at stage 2")
    if backing == "vfio" and version(release) >= VFIO_NC_SINCE:
        return Prediction("normal-nc", "Linux >= 6.9 maps vfio-pci BARs Normal-NC at stage 2 (VM_ALLOW_ANY_UNCACHED)")
    if backing == "vfio":
        return Prediction("device-ngnre", "Linux < 6.9 maps every non-RAM PFNMAP, vfio-pci BARs too, Device-nGnRE at stage 2")
    return Prediction("device-ngnre", "a sysfs resourceN mmap is PFNMAP without VM_ALLOW_ANY_UNCACHED: Device-nGnRE at stage 2")


def _predict_kmod(ver: tuple[int, int], host_attr: str, fwb: bool | None, dic: bool | None) -> Prediction:
    """A BAR that dmattr maps with `host_attr` (VM_PFNMAP, never VM_ALLOW_ANY_UNCACHED)."""
    if host_attr != "normal":
        return Prediction("device-ngnre", f"a {host_attr} PFNMAP without VM_ALLOW_ANY_UNCACHED is Device-nGnRE "
                                          "at stage 2 in every Linux version")
    if ver < CACHEABLE_PFNMAP_SINCE:
        return Prediction("device-ngnre", "Linux < 6.17 maps every non-RAM PFNMAP, cacheable ones too, "
                                          "Device-nGnRE at stage 2")
    missing = [name for name, has in (("FEAT_S2FWB", fwb), ("CTR_EL0.DIC", dic)) if has is False]
    if missing:
        return Prediction(None, f"Linux >= 6.17 refuses a cacheable PFNMAP memslot without {' and '.join(missing)} "
                                "(KVM_SET_USER_MEMORY_REGION: EINVAL)")
    assumed = [name for name, has in (("FEAT_S2FWB", fwb), ("CTR_EL0.DIC", dic)) if has is None]
    return Prediction("normal", "Linux >= 6.17 maps a cacheable PFNMAP Normal WB at stage 2 with FEAT_S2FWB and "
                                "CTR_EL0.DIC" + (f" ({' and '.join(assumed)} assumed: not known)" if assumed else ""))


def fwb_from_log(log: str) -> bool | None:
    """FEAT_S2FWB in use, from the host kernel log: True when the boot announced it, False
    when the boot messages are there without it, None when they have scrolled away.
    (Userspace cannot read ID_AA64MMFR2_EL1.FWB: Linux hides that field from EL0.)"""
    if FWB_LINE in log:
        return True
    return False if BOOT_LINE in log else None


def observed_class(outcome: str) -> str:
    """Stage-2 class from a Normal stage-1 unaligned access: the VM killed by a stage-2
    alignment fault = Device; the access completing = Normal; no memslot = refused."""
    return {"killed": "device", "ok": "normal", "refused": "refused"}.get(outcome, "unknown")

"""Target registry: parse a --target spec into a Target."""
from __future__ import annotations

from bench.errors import UserError
from bench.targets.base import Availability, Mapping, Target
from bench.targets.kmod import KmodTarget, device_path
from bench.targets.pci import PciTarget, scratch_bars
from bench.targets.ram import RamTarget

__all__ = ["Availability", "Mapping", "Target", "open_target", "discover", "describe", "SPECS"]

# Spec forms, for help texts and `python -m bench targets`.
SPECS = {
    "ram": "host RAM, anonymous and pre-faulted (default)",
    "ram:thp": "host RAM on transparent huge pages",
    "pci:<BDF>/<bar>": "a PCI BAR through sysfs resourceN / resourceN_wc",
    "kmod": "a contiguous kernel buffer with any attribute (guestkit dmattr module)",
    "kmod:pci:<BDF>/<bar>": "a PCI BAR with any attribute (guestkit dmattr module)",
    "kvm:vfio:<BDF>/<bar>": "a vfio-pci BAR inside a tiny KVM guest: all 7 stage-1 attributes, the host's stage 2",
    "kvm:sysfs:<BDF>/<bar>": "a sysfs resourceN mmap inside a tiny KVM guest",
    "kvm:kmod-normal|kmod-normal-nc|kmod-device-ngnre:<BDF>/<bar>":
        "a BAR mapped by the dmattr module with that attribute, inside a tiny KVM guest",
    "kvm:ram": "anonymous RAM inside a tiny KVM guest",
}


def open_target(spec: str, allow_reads: bool = False, allow_writes: bool = False,
                allow_cacheable_bar: bool = False) -> Target:
    """The Target for a --target spec; UserError names the valid forms.  allow_cacheable_bar:
    the user vouches that a BAR mapped cacheable is coherent (kmod normal, kvm:kmod-normal)."""
    if spec in ("ram", "ram:thp"):
        return RamTarget(thp=spec == "ram:thp")
    if spec.startswith("pci:"):
        return PciTarget(spec, allow_reads, allow_writes)
    if spec == "kmod" or spec.startswith("kmod:pci:"):
        return KmodTarget(spec, allow_reads, allow_writes, allow_cacheable_bar)
    if spec.startswith("kvm:"):
        from bench.targets.kvm import KvmTarget  # imports the probe table: only when asked

        return KvmTarget(spec, allow_reads, allow_writes, allow_cacheable_bar)
    raise UserError(f"unknown target {spec!r}: use one of {', '.join(SPECS)}")


def discover() -> list[str]:
    """Target specs worth listing here: RAM, and every memory BAR of known scratch devices
    (other BARs are listed only when named: --target pci:<BDF>/<bar>)."""
    specs = ["ram", "ram:thp"] + (["kmod"] if device_path().exists() else [])
    specs += [f"pci:{dev.name}/{i}" for dev, i in scratch_bars()]
    from bench.targets import kvm

    return specs + kvm.discover()


def describe(target: Target) -> str:
    if isinstance(target, PciTarget) or target.spec.startswith("kvm:"):
        return target.describe()
    if isinstance(target, KmodTarget) and target.pci:
        return "dmattr over " + target.pci.describe()
    return SPECS.get(target.spec, target.spec)

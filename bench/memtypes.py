"""The memory-attribute model: names, encodings and the stage-1 x stage-2 combine rules.

Source of truth: the Arm ARM (MAIR_ELx, stage-2 MemAttr with and without FEAT_S2FWB) and
its ASL: AArch64.S2ApplyFWBMemAttrs takes, for a stage-2 Device MemAttr (MemAttr[2] == 0)
over a stage-1 Device type, S2CombineS1Device(s1, s2): the more restrictive Device type.
QEMU target/arm/ptw.c (combined_attrs_nofwb / combined_attrs_fwb) agrees everywhere but
there: its `case 0 ... 3` returns the stage-2 subtype whatever stage 1 said.  Effective.qemu
records what QEMU gives, so the one difference can be named where it shows.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from bench.errors import UserError


@dataclass(frozen=True)
class MemAttr:
    """One memory type.  `rank`: higher is more restrictive (wins when combined)."""

    name: str
    mair: int | None        # stage-1 MAIR_ELx attribute byte (None: not a stage-1 type)
    s2: int | None          # stage-2 MemAttr[3:0] without FWB (None: not expressible)
    fwb: int | None         # stage-2 MemAttr[2:0] with FEAT_S2FWB (None: not expressible)
    x86: str                # how x86 realises it (PAT/MTRR type)
    rank: int
    device: bool
    aliases: tuple[str, ...] = ()


ATTRS: tuple[MemAttr, ...] = (
    MemAttr("device-ngnrne", 0x00, 0b0000, 0, "UC", 6, True),
    MemAttr("device-ngnre", 0x04, 0b0001, 1, "UC- (sysfs resourceN)", 5, True),
    MemAttr("device-ngre", 0x08, 0b0010, 2, "UC-", 4, True),
    MemAttr("device-gre", 0x0C, 0b0011, 3, "UC-", 3, True),
    MemAttr("normal-nc", 0x44, 0b0101, 5, "WC (sysfs resourceN_wc)", 2, False),
    MemAttr("normal-wt", 0xBB, 0b1010, None, "WT", 1, False),
    MemAttr("normal", 0xFF, 0b1111, 6, "WB", 0, False, ("normal-wb",)),
)
# Stage 2 only, with FWB: MemAttr 7 means "use the stage-1 attributes".
AS_S1 = MemAttr("as-s1", None, None, 7, "-", -1, False)

_BY_NAME = {n: a for a in (*ATTRS, AS_S1) for n in (a.name, *a.aliases)}


def names() -> list[str]:
    """Canonical attribute names, most restrictive first."""
    return [a.name for a in ATTRS]


def get(name: str) -> MemAttr:
    """Look an attribute up by name or alias; UserError lists the valid names."""
    try:
        return _BY_NAME[name.lower()]
    except KeyError:
        raise UserError(f"unknown memory attribute {name!r}: use one of {', '.join(names())} (alias normal-wb)") from None


def canonical(name: str) -> str:
    return get(name).name


@dataclass(frozen=True)
class Effective:
    """The result of combining a stage-1 and a stage-2 attribute, with the reason."""

    stage1: str
    stage2: str
    fwb: bool
    effective: str
    device: bool
    reason: str
    qemu: str = ""          # what QEMU's TCG gives when it differs from the architecture, else ""

    @property
    def qemu_note(self) -> str:
        """A footnote naming QEMU's difference, or '' where QEMU follows the architecture."""
        if not self.qemu:
            return ""
        return (f"QEMU's TCG gives {self.qemu} here (target/arm/ptw.c combined_attrs_fwb returns the stage-2 "
                f"Device subtype); the Arm ASL (S2ApplyFWBMemAttrs -> S2CombineS1Device) takes the more "
                f"restrictive of the two Device types, {self.effective}")

    def to_dict(self) -> dict:
        return asdict(self)


def combine(stage1: str, stage2: str, fwb: bool = False) -> Effective:
    """The memory type a guest access really gets for (stage-1, stage-2) attributes."""
    s1, s2 = get(stage1), get(stage2)
    if s1 is AS_S1:
        raise UserError("as-s1 is a stage-2 (FWB) encoding, not a stage-1 attribute")
    eff, reason = _combine_fwb(s1, s2) if fwb else _combine_nofwb(s1, s2)
    # QEMU's combined_attrs_fwb `case 0 ... 3`: the stage-2 Device subtype, always.
    qemu = s2.name if fwb and s2.device and eff is not s2 else ""
    return Effective(s1.name, s2.name, fwb, eff.name, eff.device, reason, qemu)


def _combine_nofwb(s1: MemAttr, s2: MemAttr) -> tuple[MemAttr, str]:
    if s2.s2 is None:
        raise UserError(f"stage-2 {s2.name} needs FEAT_S2FWB: add --fwb")
    winner = s1 if s1.rank >= s2.rank else s2
    side = "stage 1" if winner is s1 else "stage 2"
    if s1 is s2:
        return winner, f"both stages give {winner.name}"
    return winner, f"without FWB the more restrictive type wins: {side} ({winner.name})"


def _combine_fwb(s1: MemAttr, s2: MemAttr) -> tuple[MemAttr, str]:
    if s2.fwb is None:
        raise UserError(f"stage-2 {s2.name} cannot be encoded with FEAT_S2FWB (use normal-nc, normal or as-s1)")
    if s2.device and s1.device:
        # S2CombineS1Device: the more restrictive Device type of the two.
        winner = s1 if s1.rank > s2.rank else s2
        side = "stage 1" if winner is s1 and s1 is not s2 else "stage 2"
        return winner, (f"FWB MemAttr {s2.fwb} (Device) over a stage-1 Device type: the more restrictive "
                        f"Device type wins: {side} ({winner.name})")
    if s2.device:
        return s2, f"FWB MemAttr {s2.fwb}: stage 2 forces {s2.name}"
    if s2 is AS_S1:
        return s1, "FWB MemAttr 7: stage 1 decides"
    if s2.name == "normal":
        return s2, "FWB MemAttr 6: stage 2 forces Normal WB, even over a stage-1 Device type"
    # MemAttr 5: a stage-1 Device type is kept, anything Normal becomes Normal-NC.
    if s1.device:
        return s1, f"FWB MemAttr 5: stage-1 Device type {s1.name} is kept"
    return s2, "FWB MemAttr 5: stage-1 Normal becomes normal-nc"

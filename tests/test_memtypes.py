"""combine() against the full DESIGN.md tables (encodings, order, FWB rules)."""
import itertools

import pytest

from bench import memtypes
from bench.errors import UserError

# DESIGN.md "Memory attributes": name, MAIR, stage-2 (no FWB), FWB MemAttr.
DESIGN_TABLE = [
    ("device-ngnrne", 0x00, 0b0000, 0),
    ("device-ngnre", 0x04, 0b0001, 1),
    ("device-ngre", 0x08, 0b0010, 2),
    ("device-gre", 0x0C, 0b0011, 3),
    ("normal-nc", 0x44, 0b0101, 5),
    ("normal-wt", 0xBB, 0b1010, None),
    ("normal", 0xFF, 0b1111, 6),
]
ORDER = ["device-ngnrne", "device-ngnre", "device-ngre", "device-gre", "normal-nc", "normal-wt", "normal"]
DEVICE = set(ORDER[:4])


@pytest.mark.parametrize("name,mair,s2,fwb", DESIGN_TABLE)
def test_encodings(name, mair, s2, fwb):
    a = memtypes.get(name)
    assert (a.mair, a.s2, a.fwb) == (mair, s2, fwb)
    assert a.device == (name in DEVICE)


def test_alias_and_case():
    assert memtypes.canonical("normal-wb") == "normal"
    assert memtypes.canonical("Device-nGnRE") == "device-ngnre"
    assert memtypes.names() == ORDER


@pytest.mark.parametrize("s1,s2", list(itertools.product(ORDER, ORDER)))
def test_nofwb_more_restrictive_wins(s1, s2):
    eff = memtypes.combine(s1, s2)
    assert eff.effective == ORDER[min(ORDER.index(s1), ORDER.index(s2))]
    assert eff.device == (eff.effective in DEVICE)
    assert eff.reason


FWB_S2 = ["device-ngnrne", "device-ngnre", "device-ngre", "device-gre", "normal-nc", "normal", "as-s1"]


def fwb_expected(s1: str, s2: str) -> str:
    if s2 in DEVICE and s1 in DEVICE:
        return ORDER[min(ORDER.index(s1), ORDER.index(s2))]  # ASL S2CombineS1Device: more restrictive
    if s2 in DEVICE:
        return s2  # MemAttr 0..3 under a Normal stage 1: that Device type
    if s2 == "normal-nc":
        return s1 if s1 in DEVICE else "normal-nc"  # 5: keeps a stage-1 Device type
    if s2 == "normal":
        return "normal"  # 6: Normal WB even over stage-1 Device
    return s1  # 7: stage 1


@pytest.mark.parametrize("s1,s2", list(itertools.product(ORDER, FWB_S2)))
def test_fwb_rules(s1, s2):
    assert memtypes.combine(s1, s2, fwb=True).effective == fwb_expected(s1, s2)


@pytest.mark.parametrize("s1,s2,fwb", list(itertools.product(ORDER, FWB_S2, (False, True))))
def test_qemu_differs_only_for_device_over_device_with_fwb(s1, s2, fwb):
    if s2 == "as-s1" and not fwb:
        return  # not encodable without FWB (test_invalid_combinations)
    eff = memtypes.combine(s1, s2, fwb)
    # QEMU ptw.c combined_attrs_fwb `case 0 ... 3`: the stage-2 subtype whatever stage 1 is.
    qemu = s2 if fwb and s2 in DEVICE else eff.effective
    assert (eff.qemu or eff.effective) == qemu
    assert bool(eff.qemu_note) == (qemu != eff.effective)
    if eff.qemu:
        assert "combined_attrs_fwb" in eff.qemu_note and "S2CombineS1Device" in eff.qemu_note


def test_fwb_device_over_device_is_the_more_restrictive():
    # Stage 1 nGnRnE over a stage-2 nGnRE (KVM's PFNMAP default): nGnRnE, QEMU says nGnRE.
    eff = memtypes.combine("device-ngnrne", "device-ngnre", fwb=True)
    assert (eff.effective, eff.qemu) == ("device-ngnrne", "device-ngnre")
    assert "stage 1" in eff.reason
    eff = memtypes.combine("device-gre", "device-ngnre", fwb=True)
    assert (eff.effective, eff.qemu) == ("device-ngnre", "")
    assert memtypes.combine("device-gre", "device-ngnre", fwb=True).to_dict()["qemu"] == ""


def test_fwb_headline_cases():
    # The 6.17 nvgrace case: stage 2 forces cacheable even when the guest maps Device.
    assert memtypes.combine("device-ngnre", "normal", fwb=True).effective == "normal"
    # Pre-6.9 KVM: a guest's write-combining request is overridden by Device-nGnRE.
    assert memtypes.combine("normal-nc", "device-ngnre").effective == "device-ngnre"


@pytest.mark.parametrize("s1,s2,fwb", [
    ("bogus", "normal", False), ("normal", "as-s1", False), ("as-s1", "normal", True), ("normal", "normal-wt", True),
])
def test_invalid_combinations(s1, s2, fwb):
    with pytest.raises(UserError):
        memtypes.combine(s1, s2, fwb)


def test_combine_command_footnotes_qemu_only_where_it_differs():
    from conftest import run_cli

    out = run_cli("combine", "device-ngnrne", "device-ngnre", "--fwb")
    assert out.returncode == 0 and "-> device-ngnrne (Device)" in out.stdout
    note = out.stdout.splitlines()[-1]
    assert note.startswith("  note: QEMU") and "device-ngnre" in note and "S2CombineS1Device" in note
    out = run_cli("combine", "normal", "device-ngnre", "--fwb")
    assert "-> device-ngnre (Device)" in out.stdout and "note:" not in out.stdout

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
    if s2 in DEVICE:
        return s2  # MemAttr 0..3: that Device type
    if s2 == "normal-nc":
        return s1 if s1 in DEVICE else "normal-nc"  # 5: keeps a stage-1 Device type
    if s2 == "normal":
        return "normal"  # 6: Normal WB even over stage-1 Device
    return s1  # 7: stage 1


@pytest.mark.parametrize("s1,s2", list(itertools.product(ORDER, FWB_S2)))
def test_fwb_rules(s1, s2):
    assert memtypes.combine(s1, s2, fwb=True).effective == fwb_expected(s1, s2)


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

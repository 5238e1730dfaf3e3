"""bench.stage2: the stage-2 MemAttr decoder over every encoding (FWB and not), the ioctl's
layout against dmattr.h, the unavailable paths on this host (no module, an older module),
and (guest) the descriptor KVM wrote, read in an emulated arm64 KVM host."""
import errno
import json
import os
import re
from pathlib import Path

import pytest
from conftest import REPO, run_cli

from bench import kvmpolicy, memtypes, stage2
from bench.stage2 import Stage2Read, decode, read

R = "unavailable: reserved MemAttr"
# $DMT_STAGE2_RECORD=DIR keeps each host's answers (the figures in docs/kmod.md).
RECORD = Path(os.environ["DMT_STAGE2_RECORD"]) if os.environ.get("DMT_STAGE2_RECORD") else None
# The Arm ARM's stage-2 MemAttr[3:0] tables, written out here as the independent oracle.
# FEAT_S2FWB off: [3:2] 00 = Device ([1:0] subtype), else outer [3:2] / inner [1:0] with
# 01 NC, 10 WT, 11 WB (inner 00 reserved); mixed halves: the more restrictive.
NOFWB = {
    0b0000: "device-ngnrne", 0b0001: "device-ngnre", 0b0010: "device-ngre", 0b0011: "device-gre",
    0b0100: R, 0b0101: "normal-nc", 0b0110: "normal-nc", 0b0111: "normal-nc",
    0b1000: R, 0b1001: "normal-nc", 0b1010: "normal-wt", 0b1011: "normal-wt",
    0b1100: R, 0b1101: "normal-nc", 0b1110: "normal-wt", 0b1111: "normal",
}
# FEAT_S2FWB on: [2] 0 = Device ([1:0] subtype); 101 NC, 110 WB, 111 stage 1; 100 reserved;
# MemAttr[3] is not part of the encoding (reported reserved).
FWB = {
    0b0000: "device-ngnrne", 0b0001: "device-ngnre", 0b0010: "device-ngre", 0b0011: "device-gre",
    0b0100: R, 0b0101: "normal-nc", 0b0110: "normal", 0b0111: "as-s1",
    **{v: R for v in range(8, 16)},
}


@pytest.mark.parametrize("fwb,table", [(False, NOFWB), (True, FWB)], ids=["nofwb", "fwb"])
def test_decoder_every_memattr(fwb, table):
    assert set(table) == set(range(16))
    for memattr, want in table.items():
        got = decode(memattr, fwb)
        if want == R:
            assert got.startswith(f"{R} 0b{memattr:04b} ("), (memattr, got)
        else:
            assert got == want, (f"{memattr:04b}", fwb, got)
            memtypes.get(got)  # every name read is a memtypes name


def test_decoder_agrees_with_memtypes_columns():
    for a in memtypes.ATTRS:
        assert decode(a.s2, False) == a.name
        if a.fwb is not None:
            assert decode(a.fwb, True) == a.name
    assert decode(memtypes.AS_S1.fwb, True) == "as-s1"


def test_mixed_cacheability_is_the_more_restrictive_half():
    # Cross-check against memtypes.combine's own "more restrictive wins" (no FWB).
    half = {1: "normal-nc", 2: "normal-wt", 3: "normal"}
    for outer, outer_name in half.items():
        for inner, inner_name in half.items():
            want = memtypes.combine(outer_name, inner_name).effective
            assert decode(outer << 2 | inner, False) == want


def test_decoder_rejects_more_than_four_bits():
    for bad in (-1, 16):
        with pytest.raises(ValueError):
            decode(bad, False)


def test_descriptor_fields():
    # A 4 KiB page as KVM writes it for RAM under FWB: MemAttr 0b0110, S2AP RW, AF, XN.
    desc = 0x3 | 0b0110 << 2 | 0b11 << 6 | 1 << 10 | 0x4321000 | 1 << 54
    got = stage2.from_descriptor(desc, 3, 4096, True)
    assert got == Stage2Read("normal", 6, 4096, True, 3, True, 3, desc)
    assert got.metadata() == {"stage2_read": "normal", "stage2_memattr": 6, "stage2_leaf": 4096, "fwb": True}
    dev = stage2.from_descriptor(0x1 | 0b0001 << 2 | 0b01 << 6, 2, 2 << 20, False)
    assert (dev.read, dev.s2ap, dev.xn, dev.leaf) == ("device-ngnre", 1, False, 2 << 20)


def test_ioctl_layout_matches_the_header():
    header = (REPO / "guestkit" / "kmod" / "dmattr.h").read_text()
    assert "#define DMATTR_IOC_S2READ _IOWR('D', 4, struct dmattr_s2_read)" in header
    body = re.search(r"struct dmattr_s2_read \{(.*?)\};", header, re.DOTALL).group(1)
    fields = re.findall(r"__([su])(32|64) (\w+);", body)
    codes = {("s", "32"): "i", ("u", "32"): "I", ("u", "64"): "Q", ("s", "64"): "q"}
    assert "<" + "".join(codes[s, n] for s, n, _ in fields) == stage2.S2REQ.format
    assert stage2.S2REQ.size == 48 and stage2.IOC_S2READ == 0xC0304404
    assert re.search(r"DMATTR_S2_MAPPED 1u", header) and re.search(r"DMATTR_S2_FWB 2u", header)


def test_unavailable_without_module(tmp_path, monkeypatch):
    monkeypatch.setenv("DMTBENCH_DMATTR", str(tmp_path / "nodev"))
    got = read(0, 0x4000_0000)
    assert got.read.startswith(f"unavailable: no {tmp_path / 'nodev'}: load the module")
    assert got == stage2.unavailable(got.read.removeprefix("unavailable: "))
    assert not got.available and got.metadata()["stage2_memattr"] is None


def test_unavailable_with_an_older_module(tmp_path, monkeypatch):
    # Any file that does not know the ioctl answers ENOTTY, as a dmattr.ko from before it does.
    dev = tmp_path / "dmattr"
    dev.write_bytes(b"")
    monkeypatch.setenv("DMTBENCH_DMATTR", str(dev))
    assert read(0, 0).read == "unavailable: " + stage2.REASONS[errno.ENOTTY]


def test_unavailable_for_out_of_range_arguments(tmp_path, monkeypatch):
    monkeypatch.setenv("DMTBENCH_DMATTR", str(tmp_path / "nodev"))
    assert read(0, -1).read == "unavailable: vm fd 0 or IPA -0x1 out of range"
    assert read(1 << 40, 0).read.startswith("unavailable: vm fd")


# In the emulated KVM host: one tiny VM per backing over the kvm target's own host mapping,
# the payload touches the first page of the target (reads only), then the descriptor is read
# and set beside the KVM-policy prediction; plus the refusals of the ioctl itself.
HOST_SCRIPT = """
import json, os, sys
from dataclasses import asdict
from bench import kvmpolicy, stage2
from bench.targets import open_target
from bench.targets.kvm import MAIR
from bench.targets.kvmvm import OP_PREFAULT, RAM_IPA, Vm, host_dic
BAR = "0000:00:01.0/2"
out = {"release": os.uname().release, "dic": host_dic(), "cases": {}}
for backing in ("ram", "sysfs", "vfio", "kmod-normal", "kmod-normal-nc", "kmod-device-ngnre"):
    spec = "kvm:ram" if backing == "ram" else f"kvm:{backing}:{BAR}"
    case = out["cases"][backing] = {}
    mapping = open_target(spec).open("normal", 64 << 10)
    try:
        with Vm(mapping.ptr, mapping.size, MAIR, readonly=not mapping.writable, cacheable=backing == "kmod-normal") as vm:
            case["before"] = stage2.read(vm.fd, vm.where.target_ipa).read
            case["touch"] = vm.call(OP_PREFAULT, 0, 6, loops=0, offset=0, length=4096).status
            case["read"] = asdict(stage2.read(vm.fd, vm.where.target_ipa))
            case["payload_ram"] = stage2.read(vm.fd, RAM_IPA).read
            case["beyond"] = stage2.read(vm.fd, 1 << vm.where.ipa_bits).read
    except Exception as exc:  # a refused memslot (kmod-normal before 6.17 without FWB...)
        case["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        mapping.close()
kvm = os.open("/dev/kvm", os.O_RDWR)
out["not-a-vm"] = stage2.read(kvm, 0).read
out["bad-fd"] = stage2.read(999, 0).read
# Last: raise the kernel lockdown (it cannot be lowered again) and ask both ioctls.
os.system("mount -t securityfs securityfs /sys/kernel/security 2>/dev/null")
open("/sys/kernel/security/lockdown", "w").write("integrity")
out["lockdown"] = {"level": open("/sys/kernel/security/lockdown").read().strip()}
mapping = open_target("kvm:ram").open("normal", 64 << 10)
with Vm(mapping.ptr, mapping.size, MAIR) as vm:
    vm.call(OP_PREFAULT, 0, 6, loops=0, offset=0, length=4096)
    out["lockdown"]["s2"] = stage2.read(vm.fd, vm.where.target_ipa).read
mapping.close()
try:
    open_target(f"kmod:pci:{BAR}").open("device-ngnre", 4096)
    out["lockdown"]["bar"] = "ok"
except Exception as exc:
    out["lockdown"]["bar"] = str(exc)
json.dump(out, sys.stdout)
"""


@pytest.fixture(scope="module", params=["6.1", "6.12", "sid", "6.12/cortex-a57"])
def host(request, guest_ready, tmp_path_factory):
    """One boot of the emulated KVM host per Debian kernel (6.1: before VFIO's Normal-NC;
    6.12; sid 7.2: after the cacheable PFNMAP rule and the end of KVM_PGTABLE_S2_NOFWB), and
    6.12 on a Cortex-A57 (no FEAT_S2FWB, no VHE: the non-FWB encodings, an nVHE host)."""
    series, _, cpu = request.param.partition("/")
    res = tmp_path_factory.mktemp("s2") / "results"
    script = ("python3 - > results/stage2.json <<'PY'\n" + HOST_SCRIPT.lstrip() + "PY\n"
              "dmesg | grep -E 'dmattr|Stage-2 Force' > results/dmesg.txt\n")
    proc = run_cli("run", "--kvm-host", "--kmod", "--kernel", series, *(["--cpu", cpu] if cpu else []), "--ivshmem",
                   "1MiB", "--timeout", "500", "--results", str(res), "--", "sh", "-c", script, module="guestkit",
                   timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    name = f"stage2-{request.param.replace('/', '-')}.json"
    (res / "stage2.json").replace(RECORD / name) if RECORD else None
    got = json.loads((RECORD / name if RECORD else res / "stage2.json").read_text())
    return series, cpu, got, (res / "dmesg.txt").read_text()


@pytest.mark.guest
def test_descriptor_read_in_emulated_kvm_host_matches_the_kvm_policy(host):
    series, cpu, got, dmesg = host
    assert got["release"].startswith("7." if series == "sid" else f"{series}.")
    fwb = "Stage-2 Force Write-Back" in dmesg  # -cpu max has FEAT_S2FWB, a Cortex-A57 not
    assert fwb is (cpu != "cortex-a57")
    for backing, case in got["cases"].items():
        pred = kvmpolicy.predict(got["release"], backing, fwb=fwb, dic=got["dic"])
        assert "error" not in case, (backing, case)
        assert case["before"].startswith("unavailable: IPA 0x") and "not mapped at stage 2 yet" in case["before"]
        assert case["touch"] == "done", (backing, case)
        r = case["read"]
        assert r["fwb"] is fwb and r["read"] == pred.stage2, (backing, r, pred)
        assert r["read"] == decode(r["memattr"], fwb) and r["memattr"] == r["descriptor"] >> 2 & 0xF
        assert r["leaf"] in (4096, 2 << 20, 1 << 30) and r["level"] in (1, 2, 3)
        assert r["s2ap"] & 1  # readable (the payload read it)
        assert case["payload_ram"] == "normal"
        assert case["beyond"] == "unavailable: " + stage2.REASONS[errno.ERANGE]
    # RAM: with FWB MemAttr 0b0110 (forced write-back), without it 0b1111 (outer and inner WB)
    assert got["cases"]["ram"]["read"]["memattr"] == (6 if fwb else 0b1111)
    assert got["not-a-vm"] == "unavailable: " + stage2.REASONS[errno.EINVAL]
    assert got["bad-fd"] == "unavailable: " + stage2.REASONS[errno.EBADF]
    assert "is not a KVM VM fd" in dmesg
    # Lockdown (raised at run time to integrity): both the read and a BAR mapping refused.
    lock = got["lockdown"]
    assert "[integrity]" in lock["level"]
    assert lock["s2"] == "unavailable: " + stage2.REASONS[errno.EPERM]
    assert lock["bar"].startswith("dmattr refused device-ngnre on kmod:pci:0000:00:01.0/2: the kernel forbids")
    assert "dmattr: kernel lockdown forbids reading KVM's stage-2 tables" in dmesg
    assert "dmattr: kernel lockdown forbids userspace mappings of PCI BARs" in dmesg

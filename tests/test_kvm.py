"""The kvm target on this (x86) host: the arm64 VMM and payload cross-build, the payload
links the same kernels and probes and its hot loops make no calls; the KVM-policy table;
the bad-input paths reachable without an arm64 KVM host."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from bench import kvmbuild, kvmpolicy, memtypes, probe_cli
from bench.errors import UserError
from bench.outcomes import Outcome, Probe
from bench.targets import kvm, kvmvm, vfio
from conftest import assert_one_line_error, run_cli

OBJDUMP = "aarch64-linux-gnu-objdump"
needs_cross = pytest.mark.skipif(kvmbuild.arm64_cc() is None or not shutil.which(OBJDUMP),
                                 reason="needs aarch64-linux-gnu-gcc/objdump (python -m guestkit deps)")
KERNEL_IDENTS = re.findall(r"^K\((\w+)\)", (Path(kvmbuild.kbuild.source_dir()) / "kernels.def").read_text(), re.M)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, Path]:
    return kvmbuild.build_kvm(tmp_path_factory.mktemp("kvm"))


def functions(elf: Path) -> dict[str, list[str]]:
    """Function name -> its instruction lines (names seen twice get #2, #3...)."""
    out = subprocess.run([OBJDUMP, "-d", "--no-show-raw-insn", str(elf)], capture_output=True, text=True,
                         check=True).stdout
    funcs: dict[str, list[str]] = {}
    cur: list[str] = []
    for line in out.splitlines():
        m = re.match(r"^[0-9a-f]+ <(.+)>:$", line)
        if m:
            name, n = m.group(1), 2
            while name in funcs:
                name, n = f"{m.group(1)}#{n}", n + 1
            funcs[name] = cur = []
        elif re.match(r"^\s+[0-9a-f]+:\t", line):
            cur.append(line.split(":", 1)[1].strip())
    return funcs


def calls(insns: list[str]) -> list[str]:
    return [i for i in insns if re.match(r"^(bl|blr)\s", i)]


@needs_cross
def test_vmm_and_payload_cross_build(built):
    vmm, payload = built
    nm = subprocess.run(["aarch64-linux-gnu-nm", "-D", "--defined-only", str(vmm)], capture_output=True, text=True,
                        check=True).stdout
    for sym in ("dmtk_open", "dmtk_call", "dmtk_close", "dmtk_info", "dmtk_abi", "dmtk_check_extension", "dmtk_ctr_el0"):
        assert f" T {sym}" in nm
    image = kvmvm.payload_image(payload.read_bytes())
    assert 0 < len(image) <= kvmvm.IMAGE_MAX
    assert (payload.parent / kvmbuild.HASH_FILE).read_text().strip() == kvmbuild.source_hash()


@needs_cross
def test_payload_links_the_same_kernels_and_probes(built):
    _, payload = built
    syms = subprocess.run(["aarch64-linux-gnu-nm", str(payload)], capture_output=True, text=True, check=True).stdout
    assert KERNEL_IDENTS and all(f" dmt_kernel_{k}\n" in syms for k in KERNEL_IDENTS)
    for sym in ("dmt_run", "dmt_init", "dmt_probe_at", "dmt_prefault", "_start", "dmtk_vectors"):
        assert re.search(rf" {sym}$", syms, re.M), sym
    # probes.c's fork-and-signal child is Linux userspace only: dropped, with its libc calls.
    assert "sigaction" not in syms and "dmt_probe_child" not in syms


@needs_cross
def test_payload_hot_loops_make_no_calls(built):
    _, payload = built
    funcs = functions(payload)
    bodies = [n for n in funcs if n.split("#")[0] == "body"]
    assert len(bodies) >= len(KERNEL_IDENTS)  # one static body() per kernel file
    helpers = [n for n in funcs if re.match(r"dmt_(rd|wr|cp|bs)\d+", n)]
    for name in bodies + helpers:
        assert not calls(funcs[name]), (name, calls(funcs[name]))
    # The timed region calls the body and the clock, nothing else; the clock is the counter.
    targets = {re.sub(r".*<(.+)>", r"\1", c) for c in calls(funcs["dmt_run"])}
    assert targets <= {"dmt_now_ns", "clock_gettime"} | {c for c in targets if c.startswith("blr")}
    assert any("cntvct_el0" in i for i in funcs["clock_gettime"])


def test_vmm_statuses_and_abi_match_the_ctypes_side():
    src = (kvmbuild.kvm_dir() / "vmm.c").read_text()
    assert int(re.search(r"#define VMM_ABI (\d+)", src).group(1)) == kvmvm.VMM_ABI
    enum = re.search(r"enum \{ (ST_DONE.*?) \};", src).group(1)
    names = [m.group(1).lower() for m in re.finditer(r"ST_(\w+) = (\d+)", enum)]
    values = [int(m.group(2)) for m in re.finditer(r"ST_(\w+) = (\d+)", enum)]
    assert names == list(kvmvm.STATUS) and values == list(range(len(names)))
    assert re.search(r"KVM_CAP_ARM_CACHEABLE_PFNMAP_SUPPORTED (\d+)", src).group(1) == str(kvmvm.CAP_CACHEABLE_PFNMAP)


def test_mair_holds_all_seven_attributes_in_memtypes_order():
    for i, attr in enumerate(memtypes.ATTRS):
        assert (kvm.MAIR >> (8 * i)) & 0xFF == attr.mair
    assert kvm.MAIR == 0xFFFFBB440C080400


@pytest.mark.parametrize("release,backing,stage2", [
    ("6.1.0-56-arm64", "vfio", "device-ngnre"), ("6.8.12", "vfio", "device-ngnre"),
    ("6.9.0", "vfio", "normal-nc"), ("6.12.95+deb12-arm64", "vfio", "normal-nc"), ("7.2.13-arm64", "vfio", "normal-nc"),
    ("6.1.0-56-arm64", "sysfs", "device-ngnre"), ("6.12.95+deb12-arm64", "sysfs", "device-ngnre"),
    ("6.1.0-56-arm64", "ram", "normal"), ("7.2.13-arm64", "ram", "normal"),
])
def test_kvm_policy_table(release, backing, stage2):
    pred = kvmpolicy.predict(release, backing)
    assert pred.stage2 == stage2 and pred.cls == ("device" if stage2.startswith("device") else "normal")


@pytest.mark.parametrize("release,fwb,dic,stage2", [
    # Before 6.17 a cacheable PFNMAP is Device-nGnRE like any other, FWB or not.
    ("6.1.0-56-arm64", True, True, "device-ngnre"), ("6.12.95+deb12-arm64", True, True, "device-ngnre"),
    ("6.16.9", True, True, "device-ngnre"), ("6.12.95+deb12-arm64", False, False, "device-ngnre"),
    # From 6.17: Normal WB with FEAT_S2FWB and CTR_EL0.DIC, refused without either.
    ("6.17.0", True, True, "normal"), ("7.2.13+deb14-arm64", True, True, "normal"),
    ("7.2.13+deb14-arm64", False, False, None), ("7.2.13+deb14-arm64", True, False, None),
    ("7.2.13+deb14-arm64", False, True, None),
])
def test_kvm_policy_cacheable_pfnmap(release, fwb, dic, stage2):
    pred = kvmpolicy.predict(release, "kmod-normal", fwb, dic)
    assert pred.stage2 == stage2 and pred.refused == (stage2 is None)
    assert pred.cls == {None: "refused", "normal": "normal"}.get(stage2, "device")
    if pred.refused:
        assert pred.shown == "refused" and "EINVAL" in pred.reason
        assert ("FEAT_S2FWB" in pred.reason) == (not fwb) and ("CTR_EL0.DIC" in pred.reason) == (not dic)


def test_kvm_policy_unknown_host_features_are_assumed_and_said():
    pred = kvmpolicy.predict("7.2.13+deb14-arm64", "kmod-normal")
    assert pred.stage2 == "normal" and "assumed" in pred.reason
    assert "assumed" not in kvmpolicy.predict("7.2.13+deb14-arm64", "kmod-normal", True, True).reason


@pytest.mark.parametrize("release", ["6.1.0-56-arm64", "6.12.95+deb12-arm64", "7.2.13+deb14-arm64"])
@pytest.mark.parametrize("fwb", [True, False])
@pytest.mark.parametrize("backing", ["kmod-normal-nc", "kmod-device-ngnre"])
def test_kvm_policy_uncached_pfnmap_is_device_in_every_era(release, fwb, backing):
    # No VM_ALLOW_ANY_UNCACHED on a dmattr mapping: not the vfio-pci 6.9 rule.
    pred = kvmpolicy.predict(release, backing, fwb, fwb)
    assert pred.stage2 == "device-ngnre" and not pred.refused


def test_kmod_backings_follow_the_lab_backings():
    assert kvmpolicy.BACKINGS == ("vfio", "sysfs", "ram", "kmod-normal", "kmod-normal-nc", "kmod-device-ngnre")
    assert {memtypes.canonical(a) for a in kvmpolicy.KMOD_BACKINGS.values()} == {"normal", "normal-nc", "device-ngnre"}


def test_fwb_from_the_host_log():
    boot = "Booting Linux on physical CPU 0x0000000000 [0x000f0510]\n"
    assert kvmpolicy.fwb_from_log(boot + "CPU features: detected: Stage-2 Force Write-Back\n") is True
    assert kvmpolicy.fwb_from_log(boot + "CPU features: detected: Privileged Access Never\n") is False
    assert kvmpolicy.fwb_from_log("kvm [1]: Unsupported FSC\n") is None  # boot lines gone: unknown


def _probe(name: str, unaligned: bool) -> Probe:
    return Probe(0, name, "", False, unaligned)


@pytest.mark.parametrize("outcome,cls", [("killed", "device"), ("ok", "normal"), ("refused", "refused"),
                                         ("hang", "unknown")])
def test_observed_class(outcome, cls):
    assert kvmpolicy.observed_class(outcome) == cls


def test_expected_outcomes_follow_the_prediction():
    unaligned, aligned = _probe("load8-unaligned", True), _probe("load8", False)
    assert kvm.expected_outcome(unaligned, "device-ngnre", "normal-nc") == "fault"     # stage 1 first
    assert kvm.expected_outcome(unaligned, "normal", "device-ngnre") == "killed"       # stage-2 alignment fault
    assert kvm.expected_outcome(unaligned, "normal-nc", "normal-nc") == "ok"
    assert kvm.expected_outcome(aligned, "device-ngnrne", "device-ngnre") == "ok"
    assert kvm.expected_outcome(_probe("exclusive", False), "normal", "normal") == ""
    # A refused memslot: every probe, whatever it is and whatever stage 1.
    for probe in (unaligned, aligned, _probe("exclusive", False)):
        assert kvm.expected_outcome(probe, "device-ngnre", None) == "refused"


def test_answers_become_probe_results_and_classes():
    fault = kvmvm.Answer("fault", esr=0x96000021)
    killed = kvmvm.Answer("killed", detail="kvm [77]: Unsupported FSC: EC=0x24 xFSC=0x21 ESR_EL2=0x93c18021")
    assert kvm._probe_result(fault) == ("fault", "ESR 0x96000021")
    assert kvm._probe_result(killed) == ("killed", killed.detail)
    assert kvm._probe_result(kvmvm.Answer("done", ret=-95)) == ("skip", "not on this CPU")
    assert kvm._probe_result(kvmvm.Answer("done", ret=1))[0] == "stxr-fail"  # exclusive: STXR never succeeded
    assert kvm._class_of(fault) == "device" and kvm._class_of(killed) == "device"
    assert kvm._class_of(kvmvm.Answer("done")) == "normal"
    assert kvm._class_of(kvmvm.Answer("fault", esr=0x96000010)) == "unknown"  # not an alignment fault


def test_refused_memslot_is_an_answer_with_errno_and_capability():
    res = kvmvm.Result(status=kvmvm.STATUS.index("refused"), err=22, ret=0)
    answer = kvmvm.Vm._answer(None, res)  # no VM exists: the answer needs none
    assert answer.status == "refused" and answer.ret == 0
    assert answer.code == "KVM_SET_USER_MEMORY_REGION: EINVAL; KVM_CAP_ARM_CACHEABLE_PFNMAP_SUPPORTED=0"
    assert kvm._probe_result(answer) == ("refused", answer.code)
    # A capability check that failed itself shows its errno.
    assert kvmvm.refusal(22, -22).endswith("KVM_CAP_ARM_CACHEABLE_PFNMAP_SUPPORTED=EINVAL")
    assert kvmvm.cap_text(1) == "1" and kvmvm.cap_text(-25) == "ENOTTY"


def test_refused_outcome_in_probe_output():
    code = kvmvm.refusal(22, 0)
    ok = Outcome("normal", "load8-unaligned", "refused", code, "refused")
    bad = Outcome("normal", "load8-unaligned", "refused", code, "ok")  # the table predicted a memslot
    assert ok.agrees is True and bad.agrees is False
    text = probe_cli.ktap("kvm:kmod-normal:0000:00:01.0/2", [ok, bad])
    assert f"ok 1 normal.load8-unaligned # refused {code}" in text
    assert f"not ok 2 normal.load8-unaligned # expected ok, got refused {code}" in text
    assert probe_cli.cell(ok) == "refused/SUPPORTED=0" and probe_cli.cell(bad) == "refused/SUPPORTED=0!"
    assert json.loads(json.dumps(ok.to_dict()))["code"] == code


def test_kill_reason_prefers_kvm_lines():
    msgs = ["random driver line", "kvm [123]: Unsupported FSC: EC=0x24 xFSC=0x21 ESR_EL2=0x93c18021"]
    assert kvmvm.kill_reason(msgs, 14) == msgs[1]
    assert kvmvm.kill_reason(["other"], 14) == "KVM_RUN: Bad address (no KVM line in the host log)"


def test_payload_image_refuses_a_non_arm64_file():
    with pytest.raises(UserError, match="not an arm64 ELF"):
        kvmvm.payload_image(Path("/bin/sh").read_bytes())


@pytest.mark.parametrize("spec,want", [
    ("kvm:vfio:0000:00:01.0/2", ("vfio", "pci:0000:00:01.0/2")), ("kvm:ram", ("ram", "")),
    ("kvm:kmod-normal:0000:00:01.0/2", ("kmod-normal", "pci:0000:00:01.0/2")),
    ("kvm:kmod-normal-nc:0000:03:00.0/0", ("kmod-normal-nc", "pci:0000:03:00.0/0")),
    ("kvm:kmod-device-ngnre:0000:00:01.0/2", ("kmod-device-ngnre", "pci:0000:00:01.0/2")),
])
def test_spec_parsing(spec, want):
    assert kvm.parse_spec(spec) == want


@pytest.mark.parametrize("spec,needle", [
    ("kvm:gpu:0000:00:01.0/2", "unknown kvm backing 'gpu'"), ("kvm:vfio", "bad kvm target"),
    ("kvm:ram:x", "bad kvm target"), ("kvm:kmod-normal", "bad kvm target"),
    ("kvm:kmod-wt:0000:00:01.0/2", "unknown kvm backing 'kmod-wt'"),
])
def test_bad_specs(spec, needle):
    assert_one_line_error(run_cli("probe", "--target", spec), 2, needle)


@pytest.mark.skipif(kvm.platform.machine() in ("aarch64", "arm64"), reason="the x86 refusal")
@pytest.mark.parametrize("cmd", [("probe",), ("run", "--fast"), ("targets",)])
def test_not_arm64_is_one_line(cmd):
    assert_one_line_error(run_cli(*cmd, "--target", "kvm:ram"), 2, "needs an arm64 KVM host")


def _fake_device(root: Path, driver: str | None) -> Path:
    dev = root / "0000:00:01.0"
    dev.mkdir(parents=True)
    if driver:
        (root / "drivers" / driver).mkdir(parents=True)
        (dev / "driver").symlink_to(root / "drivers" / driver)
    return dev


@pytest.mark.parametrize("driver,needle", [(None, "not bound to any driver"), ("ivshmem", "bound to ivshmem")])
def test_not_bound_to_vfio_says_how_to_bind(tmp_path, driver, needle):
    dev = _fake_device(tmp_path, driver)
    with pytest.raises(UserError) as exc:
        vfio.check_bound(dev)
    msg = str(exc.value)
    assert needle in msg and "echo vfio-pci > /sys/bus/pci/devices/0000:00:01.0/driver_override" in msg
    assert "\n" not in msg


def test_iommu_refusal_names_interrupt_remapping():
    msg = str(vfio._refused("VFIO_SET_IOMMU", PermissionError(1, "Operation not permitted")))
    assert "interrupt remapping" in msg and "gic-version=3" in msg


def test_host_checks_are_one_line(tmp_path):
    with pytest.raises(UserError, match="needs an arm64 KVM host, this is x86_64"):
        kvm.check_host("x86_64")
    with pytest.raises(UserError, match=r"no .*kvm: this kernel offers no KVM") as exc:
        kvm.check_host("aarch64", str(tmp_path / "kvm"))
    assert "--kvm-host" in str(exc.value) and "\n" not in str(exc.value)



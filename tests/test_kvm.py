"""The kvm target on this (x86) host: the arm64 VMM and payload cross-build, the payload
links the same kernels and probes and its hot loops make no calls; the KVM-policy table;
the bad-input paths reachable without an arm64 KVM host."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from bench import kvmbuild, kvmpolicy, memtypes
from bench.errors import UserError
from bench.probe import Probe
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
    for sym in ("dmtk_open", "dmtk_call", "dmtk_close", "dmtk_info", "dmtk_abi"):
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


def test_fwb_from_the_host_log():
    boot = "Booting Linux on physical CPU 0x0000000000 [0x000f0510]\n"
    assert kvmpolicy.fwb_from_log(boot + "CPU features: detected: Stage-2 Force Write-Back\n") is True
    assert kvmpolicy.fwb_from_log(boot + "CPU features: detected: Privileged Access Never\n") is False
    assert kvmpolicy.fwb_from_log("kvm [1]: Unsupported FSC\n") is None  # boot lines gone: unknown


def _probe(name: str, unaligned: bool) -> Probe:
    return Probe(0, name, "", False, unaligned)


def test_expected_outcomes_follow_the_prediction():
    unaligned, aligned = _probe("load8-unaligned", True), _probe("load8", False)
    assert kvm.expected_outcome(unaligned, "device-ngnre", "normal-nc") == "fault"     # stage 1 first
    assert kvm.expected_outcome(unaligned, "normal", "device-ngnre") == "killed"       # stage-2 alignment fault
    assert kvm.expected_outcome(unaligned, "normal-nc", "normal-nc") == "ok"
    assert kvm.expected_outcome(aligned, "device-ngnrne", "device-ngnre") == "ok"
    assert kvm.expected_outcome(_probe("exclusive", False), "normal", "normal") == ""


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


def test_kill_reason_prefers_kvm_lines():
    msgs = ["random driver line", "kvm [123]: Unsupported FSC: EC=0x24 xFSC=0x21 ESR_EL2=0x93c18021"]
    assert kvmvm.kill_reason(msgs, 14) == msgs[1]
    assert kvmvm.kill_reason(["other"], 14) == "KVM_RUN: Bad address (no KVM line in the host log)"


def test_payload_image_refuses_a_non_arm64_file():
    with pytest.raises(UserError, match="not an arm64 ELF"):
        kvmvm.payload_image(Path("/bin/sh").read_bytes())


@pytest.mark.parametrize("spec,needle", [
    ("kvm:gpu:0000:00:01.0/2", "unknown kvm backing 'gpu'"), ("kvm:vfio", "bad kvm target"),
    ("kvm:ram:x", "bad kvm target"),
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

"""The kvm target on this (x86) host: the arm64 VMM and payload cross-build, the payload
links the same kernels and probes and its hot loops make no calls; the KVM-policy table;
the bad-input paths reachable without an arm64 KVM host; the VMM's IPA layout and its
KVM_RUN loop (timer before entry, EINTR retried), driven through x86check by a real x86
KVM vCPU where this host has /dev/kvm; answers (killed, serror) and the stage-2 fields."""
from __future__ import annotations

import ctypes
import errno
import json
import mmap
import os
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




# --- the VMM's layout and run loop on this host (x86check links the same vmmcore.c) ---------

X86 = kvm.platform.machine() == "x86_64"
needs_x86 = pytest.mark.skipif(not X86, reason="x86check is an x86_64 program")
needs_x86_kvm = pytest.mark.skipif(not X86 or not os.access("/dev/kvm", os.R_OK | os.W_OK),
                                   reason="needs a usable x86 /dev/kvm (the run loop is driven by a real vCPU)")
GIB = 1 << 30


@pytest.fixture(scope="module")
def x86check(tmp_path_factory) -> Path:
    return kvmbuild.build_x86check(tmp_path_factory.mktemp("x86check") / "x86check")


def _run_check(exe: Path, *argv: str) -> dict[str, str]:
    """x86check's one line as a dict; a run that hangs fails the test by its timeout."""
    out = subprocess.run([str(exe), *argv], capture_output=True, text=True, timeout=30, check=True).stdout
    head, _, why = out.strip().partition(" why=")
    return {**dict(kv.split("=", 1) for kv in head.split()), "why": why}


def _layout(exe: Path, target: int, ram: int = 0, heap: int = 1 << 20, page: int = 4096, max_bits: int = 0) -> dict:
    return _run_check(exe, "layout", str(target), str(ram), str(heap), str(page), str(max_bits))


@needs_x86
@pytest.mark.parametrize("ram", [0, 3 * GIB + GIB // 2, 16 * GIB])
@pytest.mark.parametrize("target", [4096, 64 * GIB, 128 * GIB])
def test_layout_keeps_payload_ram_and_target_apart(x86check, ram, target):
    # 3.5 GiB of RAM used to run into the target slot at 4 GiB (EEXIST read as "refused").
    lay = _layout(x86check, target, ram, max_bits=48)
    assert lay["rc"] == "0", lay
    ipa, ram_end = int(lay["target_ipa"], 16), int(lay["ram_end"], 16)
    assert ipa >= ram_end and ipa >= 4 * GIB and ipa % GIB == 0
    assert ram_end - 0x40000000 >= ram + (1 << 20)  # RAM buffer and heap inside payload RAM
    assert int(lay["stride"], 16) >= target  # each attribute's VA window holds the whole target


@needs_x86
def test_layout_raises_the_ipa_size_only_when_the_target_needs_it(x86check):
    small = _layout(x86check, 128 * GIB, max_bits=48)
    assert (small["ipa_bits"], small["vm_type"]) == ("40", "0")  # KVM's default VM type
    big = _layout(x86check, 2 << 40, max_bits=48)  # ends above 1 TiB: a 42-bit IPA
    assert (big["ipa_bits"], big["vm_type"]) == ("42", "42")
    refused = _layout(x86check, 2 << 40, max_bits=0)  # KVM without KVM_CAP_ARM_VM_IPA_SIZE
    assert refused["rc"] == str(-errno.E2BIG) and "KVM_CAP_ARM_VM_IPA_SIZE" in refused["why"]


@needs_x86
@pytest.mark.parametrize("page", [16384, 65536])
def test_layout_checks_sizes_against_the_host_page(x86check, page):
    assert _layout(x86check, 4096, page=page)["rc"] == str(-errno.EINVAL)
    assert _layout(x86check, page, page=page)["rc"] == "0"


@needs_x86_kvm
def test_run_loop_timer_before_entry_still_ends_the_case(x86check):
    # The deadline passes (and the timer's signal is handled) before KVM_RUN is entered; the
    # guest spins forever.  immediate_exit set by the handler makes KVM_RUN return at once.
    r = _run_check(x86check, "late-entry")
    assert r["result"] == "deadline" and r["entries"] == "1", r
    assert float(r["elapsed_ms"]) < 5000


@needs_x86_kvm
def test_run_loop_retries_eintr_from_other_signals(x86check):
    r = _run_check(x86check, "retry")
    assert r["result"] == "exit" and r["exit_reason"] == "5", r  # KVM_EXIT_HLT: the guest finished
    assert int(r["retried"]) >= 1 and int(r["entries"]) == int(r["retried"]) + 1


@needs_x86_kvm
def test_run_loop_deadline_holds_under_a_signal_storm(x86check):
    r = _run_check(x86check, "signals")
    assert r["result"] == "deadline" and int(r["retried"]) >= 1, r
    assert 300 <= float(r["elapsed_ms"]) < 5000


# --- answers, outcomes and the stage-2 fields ------------------------------------------------

FSC_LINE = "kvm [{tid}]: Unsupported FSC: EC=0x24 xFSC=0x21 ESR_EL2=0x93c18021"


def test_only_efault_with_this_vcpus_alignment_line_is_killed():
    mine = FSC_LINE.format(tid=4242)
    assert kvmvm.run_failure(["noise", mine], errno.EFAULT, 4242) == kvmvm.Answer("killed", detail=mine, err=errno.EFAULT)
    # Another VM's line, another errno, another fault status: errors, with the errno and the log line.
    other = kvmvm.run_failure([FSC_LINE.format(tid=7)], errno.EFAULT, 4242)
    assert other.status == "error" and "EFAULT" in other.detail
    enoexec = kvmvm.run_failure([mine], errno.ENOEXEC, 4242)
    assert enoexec.status == "error" and "ENOEXEC" in enoexec.detail and mine in enoexec.detail
    perm = "kvm [4242]: Unsupported FSC: EC=0x24 xFSC=0xc ESR_EL2=0x9200000c"
    assert kvmvm.run_failure([perm], errno.EFAULT, 4242).status == "error"
    assert "no KVM line" in kvmvm.run_failure([], errno.EFAULT, 4242).detail


def test_serror_is_its_own_outcome():
    taken = kvmvm.Answer("serror", esr=0xBE000000)
    pending = kvmvm.Answer("serror", isr=kvmvm.ISR_A)
    assert kvm._probe_result(taken) == ("serror", "ESR 0xbe000000")
    assert kvm._probe_result(pending)[1] == "pending at the closing barrier (ISR_EL1 0x100)"
    assert kvm._class_of(taken) == "unknown"  # an SError says nothing of the stage-2 class


def test_vmm_unmasks_serror_and_reports_it_apart():
    start = (kvmbuild.kvm_dir() / "payload" / "start.S").read_text()
    assert start.index("msr\tdaifclr, #4") < start.index("bl\tdmtk_main")
    runtime = (kvmbuild.kvm_dir() / "payload" / "runtime.c").read_text()
    assert "DMTK_EXIT_SERROR" in runtime and "isr_el1" in runtime


def test_stage2_fields_in_ktap_and_metadata():
    read = {"stage2_read": "normal-nc", "stage2_memattr": 5, "stage2_leaf": 4096, "fwb": True}
    o = Outcome("normal", "load8", "ok", "", "ok")
    text = probe_cli.ktap("kvm:vfio:0000:00:01.0/2", [o], stage2={"normal": read})
    assert "# stage2 normal: read=normal-nc memattr=5 leaf=4096 fwb=true\nok 1 normal.load8" in text
    meta = kvm.stage2_metadata(read, None)
    assert meta == {"stage2_read": "normal-nc", "stage2_memattr": "5", "stage2_leaf": "4096", "fwb": "true"}
    gone = kvm.stage2_metadata(kvm.unavailable(kvm.GONE["killed"]), False)
    assert gone == {"stage2_read": "unavailable: VM killed before the read", "stage2_memattr": "null",
                    "stage2_leaf": "null", "fwb": "false"}  # the host's FWB where the read has none
    assert all(isinstance(v, str) and v for v in {**meta, **gone}.values())  # pyperf metadata: strings


def test_vfio_window_maps_only_what_is_asked(tmp_path):
    # A regular file stands in for the device fd: the window arithmetic and the mmap are real.
    backing = tmp_path / "region"
    backing.write_bytes(b"")
    os.truncate(backing, 1 << 24)
    fd = os.open(backing, os.O_RDWR)
    try:
        dev = vfio.Device(fd, 1 << 24, 0, vfio.REGION_MMAP, True, "0000:00:01.0 BAR 2", lambda: None)
        w = dev.map(100)
        assert w.size == mmap.PAGESIZE and w.offset == 0
        ctypes.memmove(w.ptr, b"x", 1)
        w.close()
        with pytest.raises(UserError, match="outside the"):
            dev.map((1 << 24) + 1)
    finally:
        os.close(fd)
    assert os.stat(backing).st_blocks * 512 <= 64 << 10  # only the window was written


def test_sweeps_refuse_width_4_and_wc_burst_stays_in_its_burst():
    from bench import kernels

    lib = kernels.lib()
    assert not kernels.width_supported(4)  # no 4-byte sweep: 4 used to run the 64-byte path
    reg = kernels.registry()
    for name in ("read-bw", "write-bw", "wc-burst"):
        a = kernels.Args(buf=0x1000, size=4096, width=4, burst=8)
        assert lib.dmt_supported(reg[name].index, ctypes.byref(a)) == -errno.EINVAL, name
    # Word kernels keep their 4-byte access.
    assert lib.dmt_supported(reg["doorbell"].index, ctypes.byref(kernels.Args(buf=0x1000, size=4096, width=4))) == 0


def _tables(exe: Path, target: int, ram: int = 0) -> tuple[dict, dict[str, tuple[int, int] | None]]:
    """x86check tables: the head (target_ipa, tcr) and each named address -> (pa, attr) or None."""
    out = subprocess.run([str(exe), "tables", str(target), str(ram), str(1 << 20)], capture_output=True, text=True,
                         timeout=30, check=True).stdout.splitlines()
    head = dict(kv.split("=") for kv in out[0].split())
    walks: dict[str, tuple[int, int] | None] = {}
    for line in out[1:]:
        name, *fields = line.split()
        kv = dict(f.split("=") for f in fields if "=" in f)
        walks[name] = None if "unmapped" in fields else (int(kv["pa"], 16), int(kv["attr"]))
    return head, walks


@needs_x86
@pytest.mark.parametrize("target,ram", [(4096, 0), (128 * GIB, 3 * GIB)])
def test_stage1_tables_guard_the_stack_and_map_every_window(x86check, target, ram):
    head, w = _tables(x86check, target, ram)
    ipa = int(head["target_ipa"], 16)
    normal = memtypes.names().index("normal")
    # Mailbox mapped, the page under it unmapped (a stack overflow faults), the stack mapped.
    assert w["mailbox"] == (0x400C0000, normal) and w["stack_low"] == (0x400C2000, normal)
    assert w["guard"] is None and w["guard_end"] is None
    assert w["ram_end"] is not None and w["exit"] == (0x10000000, 0)
    for k in range(len(memtypes.ATTRS)):  # every stage-1 attribute onto the same target IPA
        assert w[f"window{k}"] == (ipa, k) and w[f"window{k}_last"] == (ipa + target - 8, k)
        assert w[f"window{k}_past"] is None or w[f"window{k}_past"][0] == ipa  # nothing past the window
    assert (int(head["tcr"], 16) >> 32) & 7 == 2  # IPS: 40 bits, the VM's default IPA size

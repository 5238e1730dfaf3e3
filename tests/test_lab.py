"""The stage-2 lab: predictions from the KVM-policy table, the cross-kernel table and its
mismatch marks (no boot), and the real lab over two emulated host kernels (guest)."""
import json

import pytest

from bench import memtypes
from conftest import assert_one_line_error, run_cli
from guestkit import labtable
from guestkit.labtable import HostReport

UNALIGNED = labtable.UNALIGNED


def _report(kernel: str, results: dict[tuple[str, str], str], fwb=True) -> HostReport:
    outcomes = tuple({"backing": b, "attr": a, "probe": p, "result": r, "code": ""}
                     for (b, a), r in results.items() for p in UNALIGNED)
    return HostReport(kernel, "payload", fwb, outcomes, {})


def test_predictions_follow_the_policy_eras():
    # Stage 1 Device faults in the guest on every kernel and backing.
    for kernel in ("6.1.0-56-arm64", "6.12.117+deb12-arm64"):
        for backing in ("vfio", "sysfs", "ram"):
            assert labtable.predicted(kernel, backing, "device-ngnre", "load8-unaligned", True) == "fault"
    # A Normal stage 1 over a vfio BAR: killed before 6.9 (stage-2 Device), ok after (Normal-NC).
    assert labtable.predicted("6.1.0-56-arm64", "vfio", "normal-nc", "store8-unaligned", True) == "killed"
    assert labtable.predicted("6.12.117+deb12-arm64", "vfio", "normal-nc", "store8-unaligned", True) == "ok"
    assert labtable.predicted("6.12.117+deb12-arm64", "sysfs", "normal", "load8-unaligned", False) == "killed"
    assert labtable.predicted("6.1.0-56-arm64", "ram", "normal-wt", "load8-unaligned", True) == "ok"
    assert labtable.predicted("6.1.0-56-arm64", "ram", "normal", "dc-zva", True) is None


def test_table_marks_a_kernel_that_disagrees():
    good = {("vfio", a): ("fault" if memtypes.get(a).device else "killed") for a in memtypes.names()}
    odd = {**good, ("vfio", "normal-nc"): "ok"}  # a 6.1 host that behaved like 6.9+
    reports = [_report("6.1.0-56-arm64", good), _report("6.1.0-57-arm64", odd)]
    text = labtable.table(reports)
    assert max(map(len, text.splitlines())) <= labtable.WIDTH
    row = next(line for line in text.splitlines() if line.startswith("vfio    normal-nc"))
    assert row.split()[2:] == ["killed", "normal!killed"]
    assert labtable.mismatches(reports) == [
        "6.1.0-57-arm64 payload vfio normal-nc: observed normal, KVM policy predicts killed"]


def test_json_outcomes_carry_kernel_guest_and_prediction():
    (o, _) = labtable.with_predictions(_report("6.12.117+deb12-arm64", {("sysfs", "normal"): "killed"}))
    assert {k: o[k] for k in ("host_kernel", "guest", "backing", "attr", "result", "predicted")} == {
        "host_kernel": "6.12.117+deb12-arm64", "guest": "payload", "backing": "sysfs", "attr": "normal",
        "result": "killed", "predicted": "killed"}


def test_unknown_host_kernel_is_one_line(guest_ready):
    proc = run_cli("lab", "--host-kernel", "4.19", module="guestkit")
    assert_one_line_error(proc, 2, "4.19", "6.12")


def _lab(tmp_path, *args: str) -> dict:
    proc = run_cli("lab", "--probes-only", "--json", "-o", str(tmp_path), *args, module="guestkit", timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return json.loads(proc.stdout)


def _results(data: dict, guest: str) -> dict:
    return {(o["host_kernel"].split(".")[0] + "." + o["host_kernel"].split(".")[1], o["backing"], o["attr"], o["probe"]):
            o for o in data["outcomes"] if o["guest"] == guest}


@pytest.mark.guest
def test_payload_lab_shows_the_three_eras(guest_ready, tmp_path):
    # The default hosts (6.1, newest 6.12, sid), one emulated KVM host boot each; the VM's
    # stage 2 is each host kernel's own choice.
    data = _lab(tmp_path)
    out = _results(data, "payload")
    sid = next(k for k in {k[0] for k in out} if k not in ("6.1", "6.12"))
    for probe in UNALIGNED:
        # 6.9: vfio-pci BARs Normal-NC at stage 2.
        assert out["6.1", "vfio", "normal-nc", probe]["result"] == "killed"
        assert out["6.12", "vfio", "normal-nc", probe]["result"] == "ok"
        # 6.17 (with FWB, as -cpu max has): a cacheable PFNMAP (the GPU-memory stand-in) cacheable.
        assert out["6.12", "kmod-normal", "normal", probe]["result"] == "killed"
        assert out[sid, "kmod-normal", "normal", probe]["result"] == "ok"
        for series in ("6.1", "6.12", sid):
            assert out[series, "sysfs", "normal-nc", probe]["result"] == "killed"
            assert out[series, "kmod-normal-nc", "normal-nc", probe]["result"] == "killed"
            assert out[series, "ram", "device-ngnre", probe]["result"] == "fault"
            assert out[series, "ram", "normal", probe]["result"] == "ok"
    killed = out["6.1", "vfio", "normal-nc", "load8-unaligned"]
    assert "Unsupported FSC" in killed["code"]  # the host kernel's own log line says why
    assert data["mismatches"] == [] and all(h["error"] == "" for h in data["hosts"])
    assert all(o["predicted"] in (None, o["result"]) for o in data["outcomes"] if o["probe"] in UNALIGNED)
    homes = list((tmp_path / "qemu-arm64-kvmhost").glob("*-payload-probes.json"))
    assert len(homes) == 3 and all(json.loads(p.read_text())["emulated"] for p in homes)


@pytest.mark.guest
def test_host_without_fwb_refuses_the_cacheable_memslot(guest_ready, tmp_path):
    # cortex-a57: no FEAT_S2FWB, no CTR_EL0.DIC; 6.17+ refuses a cacheable PFNMAP memslot.
    data = _lab(tmp_path, "--host-kernel", "sid", "--cpu", "cortex-a57")
    assert data["hosts"][0]["fwb"] is False and data["hosts"][0]["dic"] is False
    kmod = [o for o in data["outcomes"] if o["backing"] == "kmod-normal"]
    assert kmod and all(o["result"] == o["predicted"] == "refused" for o in kmod)
    assert "EINVAL" in kmod[0]["code"] and "SUPPORTED=0" in kmod[0]["code"]
    assert data["mismatches"] == []


def test_host_without_kvm_is_reported_not_hidden():
    from guestkit import lab

    assert "no /dev/kvm" in lab._host_problem({"kvm": False})
    assert lab._host_problem({"kvm": True, "backings": {"vfio": {"error": "not bound"}, "ram": {}}}) == "vfio: not bound"


@pytest.mark.guest
def test_hung_host_times_out_and_the_lab_still_reports(guest_ready, tmp_path):
    proc = run_cli("lab", "--host-kernel", "6.1", "--probes-only", "--json", "--timeout", "3", "-o", str(tmp_path),
                   module="guestkit", timeout=300)
    assert proc.returncode == 124, proc.stderr
    data = json.loads(proc.stdout)
    assert "timed out" in data["hosts"][0]["error"] and "Traceback" not in proc.stderr

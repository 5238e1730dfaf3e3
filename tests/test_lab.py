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

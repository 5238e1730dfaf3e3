"""guestkit.lab.l0_table (L0): predictions from the KVM-policy table, the verdict of each
observed outcome, the cross-kernel table and its width."""

from bench import memtypes
from bench.targets import kvmvm
from guestkit.lab import l0_table as table
from guestkit.lab.l0_table import HostReport


UNALIGNED = table.UNALIGNED


def _report(kernel: str, results: dict[tuple[str, str], str], fwb=True) -> HostReport:
    outcomes = tuple({"backing": b, "attr": a, "probe": p, "result": r, "code": ""}
                     for (b, a), r in results.items() for p in UNALIGNED)
    return HostReport(kernel, "payload", fwb, outcomes, {})


def test_predictions_follow_the_policy_eras():
    # Stage 1 Device faults in the guest on every kernel and backing.
    for kernel in ("6.1.0-56-arm64", "6.12.117+deb12-arm64"):
        for backing in ("vfio", "sysfs", "ram"):
            assert table.predicted(kernel, backing, "device-ngnre", "load8-unaligned", True) == "fault"
    # A Normal stage 1 over a vfio BAR: killed before 6.9 (stage-2 Device), ok after (Normal-NC).
    assert table.predicted("6.1.0-56-arm64", "vfio", "normal-nc", "store8-unaligned", True) == "killed"
    assert table.predicted("6.12.117+deb12-arm64", "vfio", "normal-nc", "store8-unaligned", True) == "ok"
    assert table.predicted("6.12.117+deb12-arm64", "sysfs", "normal", "load8-unaligned", False) == "killed"
    assert table.predicted("6.1.0-56-arm64", "ram", "normal-wt", "load8-unaligned", True) == "ok"
    assert table.predicted("6.1.0-56-arm64", "ram", "normal", "dc-zva", True) is None


def test_table_marks_a_kernel_that_disagrees():
    good = {("vfio", a): ("fault" if memtypes.get(a).device else "killed") for a in memtypes.names()}
    odd = {**good, ("vfio", "normal-nc"): "ok"}  # a 6.1 host that behaved like 6.9+
    reports = [_report("6.1.0-56-arm64", good), _report("6.1.0-57-arm64", odd)]
    text = table.table(reports)
    assert max(map(len, text.splitlines())) <= table.WIDTH
    row = next(line for line in text.splitlines() if line.startswith("vfio    normal-nc"))
    assert row.split()[2:] == ["killed", "normal!killed"]
    assert table.mismatches(reports) == [
        "6.1.0-57-arm64 payload vfio normal-nc: observed normal, KVM policy predicts killed"]


def test_json_outcomes_carry_kernel_guest_and_prediction():
    (o, _) = table.with_predictions(_report("6.12.117+deb12-arm64", {("sysfs", "normal"): "killed"}))
    assert {k: o[k] for k in ("host_kernel", "guest", "backing", "attr", "result", "predicted")} == {
        "host_kernel": "6.12.117+deb12-arm64", "guest": "payload", "backing": "sysfs", "attr": "normal",
        "result": "killed", "predicted": "killed"}


def test_lab_table_predicts_and_shows_a_refused_memslot():
    from guestkit.lab import l0_table as table

    sid = "7.2.13+deb14-arm64"
    for probe in ("load8", "load8-unaligned", "dc-zva"):
        assert table.predicted(sid, "kmod-normal", "normal", probe, False) == "refused"  # no FWB: no memslot
    assert table.predicted(sid, "kmod-normal", "normal", "store8-unaligned", True) == "ok"
    assert table.predicted(sid, "kmod-normal-nc", "normal", "store8-unaligned", True) == "killed"
    assert table.predicted("6.12.95+deb12-arm64", "kmod-normal", "normal-nc", "load8-unaligned", True) == "killed"

    def report(fwb: bool) -> table.HostReport:
        outcomes = tuple({"backing": "kmod-normal", "attr": "normal", "probe": p, "result": "refused",
                          "code": kvmvm.refusal(22, 0)} for p in table.UNALIGNED)
        return table.HostReport(sid, "payload", fwb, outcomes, {})

    assert table.cells(report(False)) == {("kmod-normal", "normal"): ("refused", "refused")}
    assert not table.mismatches([report(False)])
    assert table.mismatches([report(True)]) == [
        f"{sid} payload kmod-normal normal: observed refused, KVM policy predicts normal"]
    text = table.table([report(False)] * 3)
    assert "refused = KVM refused the memslot" in " ".join(text.splitlines())
    assert max(map(len, text.splitlines())) <= table.WIDTH
    head, row = text.splitlines()[:2]  # the widest backing name keeps the columns aligned
    assert row.split()[:2] == ["kmod-normal", "normal"] and head.index("stage-1 attr") == row.index(" normal") + 1

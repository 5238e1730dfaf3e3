"""guestkit.lab.l0_table (L0): predictions from the KVM-policy table, the three sources per
backing (prediction, stage-2 read, probe class) and their MISMATCH lines, the main table
(backing x host kernel), the --detail matrix and their width, on constructed HostReports."""
import dataclasses

from bench import kvmpolicy, memtypes
from bench.targets import kvmvm
from guestkit.lab import l0_table as table
from guestkit.lab.l0_table import HostReport

UNALIGNED = table.UNALIGNED
ERAS = ("6.1.0-57-arm64", "6.12.117+deb12-arm64", "7.2.13+deb14-arm64")


def _report(kernel: str, results: dict[tuple[str, str], str], fwb=True) -> HostReport:
    outcomes = tuple({"backing": b, "attr": a, "probe": p, "result": r, "code": ""}
                     for (b, a), r in results.items() for p in UNALIGNED)
    return HostReport(kernel, "payload", fwb, outcomes, {})


def _encoding(attr: str, fwb: bool) -> int:
    a = memtypes.get(attr)
    return a.fwb if fwb else a.s2


def as_policy_says(kernel: str, fwb: bool = True, dic: bool = True, reads: dict[str, str] | None = None) -> HostReport:
    """A host whose KVM did what bench.kvmpolicy predicts: every backing under all seven
    stage-1 attributes, each outcome with the descriptor read (or `reads` overriding it)."""
    outcomes = []
    for backing in kvmpolicy.BACKINGS:
        pred = kvmpolicy.predict(kernel, backing, fwb, dic)
        read = (reads or {}).get(backing, pred.stage2 or "unavailable: memslot refused")
        extra = {} if not table.available(read) else {
            "stage2_memattr": _encoding(read, fwb), "stage2_leaf": 2 << 20 if backing == "ram" else 4096}
        for attr in memtypes.names():
            for probe in UNALIGNED:
                outcomes.append({"backing": backing, "attr": attr, "probe": probe, "code": "",
                                 "result": table.predicted(kernel, backing, attr, probe, fwb, dic),
                                 "stage2_read": read, "fwb": fwb, **extra})
    return HostReport(kernel, "payload", fwb, tuple(outcomes), {}, "", dic)


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
    assert table.predicted("6.1.0-56-arm64", "ram", "normal", "load2-unaligned", True) == "ok"
    assert table.predicted("6.1.0-56-arm64", "ram", "normal", "dc-zva", True) is None


def test_hosts_that_behave_as_predicted_have_no_mismatch_and_read_cells():
    reports = [as_policy_says(k) for k in ERAS]
    assert table.mismatches(reports) == []
    text = table.table(reports)
    assert max(map(len, text.splitlines())) <= table.WIDTH
    rows = {line.split()[0]: line.split()[1:] for line in text.splitlines()[1:8]}
    # Each cell is the read, in short form, from the policy for that era.
    for backing in kvmpolicy.BACKINGS:
        assert rows[backing] == [table.short(kvmpolicy.predict(k, backing, True, True).stage2) for k in ERAS]
    assert rows["vfio"] == ["Dev-nGnRE", "NC", "NC"] and rows["kmod-normal"][2] == "WB"
    assert table.MARK not in "\n".join(text.splitlines()[1:8])


def test_read_that_differs_from_the_prediction_is_a_mismatch_and_marked():
    # 7.2's kmod-normal read as Normal-NC instead of WB: the same probe class (normal), a
    # different attribute: only the exact comparison with the prediction catches it.
    odd = as_policy_says(ERAS[2], reads={"kmod-normal": "normal-nc"})
    assert table.mismatches([odd]) == [f"{ERAS[2]} payload kmod-normal: stage-2 read normal-nc, "
                                       "KVM policy predicts normal"]
    row = next(line for line in table.table([odd]).splitlines() if line.startswith("kmod-normal "))
    assert row.split()[1] == "NC*"


def test_read_whose_class_the_probes_contradict_is_a_mismatch():
    # 6.1's vfio read as Normal-NC while the probes killed the VM (stage-2 Device).
    odd = as_policy_says(ERAS[0], reads={"vfio": "normal-nc"})
    bad = table.mismatches([odd])
    assert f"{ERAS[0]} payload vfio: stage-2 read normal-nc (normal), the unaligned probes see killed (device)" in bad
    assert f"{ERAS[0]} payload vfio: stage-2 read normal-nc, KVM policy predicts device-ngnre" in bad
    (v,) = [v for v in table.stage2_verdicts(odd) if v.backing == "vfio"]
    assert v.probe_class == "device" and v.read_class == "normal" and not v.to_dict()["agrees"]


def test_results_without_a_read_are_not_recorded_not_a_guess():
    old = _report(ERAS[1], {("vfio", "normal-nc"): "ok", ("vfio", "device-ngnre"): "fault"})
    (v,) = table.stage2_verdicts(old)
    assert (v.read, v.cell, v.memattr, v.leaf) == (table.NOT_RECORDED, "n/a", None, None)
    assert v.probe_class == "normal" and v.mismatches == ()
    assert table.mismatches([old]) == []
    text = table.table([old])
    assert "n/a: 6.12.117+deb12-arm64 vfio: stage2_read: unavailable: not recorded" in text
    (o, *_) = table.with_predictions(old)
    assert o["stage2_read"] == table.NOT_RECORDED and o["effective"] is None


def test_refused_memslot_reads_nothing_and_shows_refused():
    sid = ERAS[2]
    a57 = as_policy_says(sid, fwb=False, dic=False)
    (v,) = [v for v in table.stage2_verdicts(a57) if v.backing == "kmod-normal"]
    assert (v.cell, v.predicted, v.probe_class, v.mismatches) == ("refused", "refused", "refused", ())
    # Non-FWB encodings: RAM is MemAttr 0b1111, stage-2 Device-nGnRE 0b0001.
    ram = next(v for v in table.stage2_verdicts(a57) if v.backing == "ram")
    assert (ram.memattr, ram.fwb, ram.cell) == (0b1111, False, "WB")
    assert table.mismatches([a57]) == []


def test_descriptor_decoded_with_the_wrong_fwb_is_a_mismatch():
    host = as_policy_says(ERAS[1])
    flipped = dataclasses.replace(host, outcomes=tuple({**o, "fwb": "false"} if o["backing"] == "ram" else o
                                                       for o in host.outcomes))
    assert table.mismatches([flipped]) == [f"{ERAS[1]} payload ram: descriptor decoded with FWB False, "
                                           "the host reports FWB True"]


def test_detail_labels_stage1_faults_and_shows_the_combined_type():
    reports = [as_policy_says(k) for k in ERAS]
    text = table.detail(reports)
    assert max(map(len, text.splitlines())) <= table.WIDTH
    rows = {tuple(line.split()[:2]): line.split()[2:] for line in text.splitlines()[1:]}
    # RAM under FWB (MemAttr 6): a stage-1 Device access is Normal WB yet faults at stage 1.
    assert rows["ram", "device-ngnre"] == ["WB", "s1-fault"] * 3
    assert rows["vfio", "normal"] == ["Dev-nGnRE", "killed", "NC", "ok", "NC", "ok"]
    # ASL S2CombineS1Device: stage-1 nGnRnE over a stage-2 nGnRE stays nGnRnE.
    assert rows["sysfs", "device-ngnrne"][:2] == ["Dev-nGnRnE", "s1-fault"]
    rec = next(d for d in table.detail_rows(reports[0]) if (d["backing"], d["attr"]) == ("ram", "device-ngnre"))
    assert rec["stage1_fault"] and rec["effective"] == "normal" and "no stage-2 information" in rec["note"]


def test_old_probe_mismatch_still_reported_and_marked():
    good = {("vfio", a): ("fault" if memtypes.get(a).device else "killed") for a in memtypes.names()}
    odd = {**good, ("vfio", "normal-nc"): "ok"}  # a 6.1 host that behaved like 6.9+
    reports = [_report("6.1.0-56-arm64", good), _report("6.1.0-57-arm64", odd)]
    bad = table.mismatches(reports)
    assert "6.1.0-57-arm64 payload vfio normal-nc: observed normal, KVM policy predicts killed" in bad
    assert "6.1.0-57-arm64 payload vfio: stage-2 read" not in " ".join(bad)  # nothing was read
    row = next(line for line in table.table(reports).splitlines() if line.startswith("vfio "))
    assert row.split()[1:] == ["n/a", "n/a*"]
    detail = next(line for line in table.detail(reports).splitlines() if line.startswith("vfio    normal-nc"))
    assert detail.split()[2:] == ["n/a", "killed", "n/a", "ok!"]


def test_lab_table_predicts_and_shows_a_refused_memslot():
    sid = ERAS[2]
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
    assert text.splitlines()[1].split() == ["kmod-normal", "refused", "refused", "refused"]


def test_json_outcomes_carry_kernel_guest_prediction_and_read():
    (o, *_) = [o for o in table.with_predictions(as_policy_says(ERAS[1])) if (o["backing"], o["attr"]) ==
               ("vfio", "normal")]
    assert {k: o[k] for k in ("host_kernel", "guest", "backing", "attr", "result", "predicted", "stage2_read",
                              "stage2_memattr", "stage2_leaf", "fwb", "effective", "stage1_fault")} == {
        "host_kernel": ERAS[1], "guest": "payload", "backing": "vfio", "attr": "normal", "result": "ok",
        "predicted": "ok", "stage2_read": "normal-nc", "stage2_memattr": 5, "stage2_leaf": 4096, "fwb": True,
        "effective": "normal-nc", "stage1_fault": False}


def test_many_kernels_stay_within_the_width():
    reports = [as_policy_says(k) for k in (*ERAS, "6.17.13+deb14-arm64", "6.9.12-arm64", "7.1.0-1-arm64")]
    for text in (table.table(reports), table.detail(reports)):
        assert max(map(len, text.splitlines())) <= table.WIDTH

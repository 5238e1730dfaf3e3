"""guestkit.lab.l0_command (L0): the real lab over emulated host kernels (guest), a hung
host, a host without KVM, and bad input."""
import json

import pytest

from conftest import assert_one_line_error, run_cli
from bench import kvmpolicy, memtypes
from guestkit.lab import l0_table as table


def test_unknown_host_kernel_is_one_line(guest_ready):
    proc = run_cli("lab", "--host-kernel", "4.19", module="guestkit")
    assert_one_line_error(proc, 2, "4.19", "6.12")


def _lab(tmp_path, *args: str) -> dict:
    proc = run_cli("lab", "--probes-only", "--json", "-o", str(tmp_path), *args, module="guestkit", timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return json.loads(proc.stdout)


def _encoding(attr: str, fwb: bool) -> int:
    a = memtypes.get(attr)
    return a.fwb if fwb else a.s2


def assert_reads_as_policy_predicts(data: dict) -> None:
    """Every (host, backing) read the stage-2 attribute bench.kvmpolicy predicts for that
    kernel and the host's FWB / DIC, in that host's encoding (FWB MemAttr or not); a
    refused memslot reads nothing and shows `refused`."""
    hosts = {h["host_kernel"]: h for h in data["hosts"]}
    seen = set()
    for v in data["stage2"]:
        host = hosts[v["host_kernel"]]
        pred = kvmpolicy.predict(v["host_kernel"], v["backing"], host["fwb"], host["dic"])
        where = f"{v['host_kernel']} {v['backing']}: {v}"
        if pred.refused:
            assert v["cell"] == "refused" and v["stage2_read"].startswith("unavailable"), where
        else:
            assert v["stage2_read"] == pred.stage2, where
            assert v["stage2_memattr"] == _encoding(pred.stage2, host["fwb"]) and v["fwb"] is host["fwb"], where
            assert v["stage2_leaf"] and v["stage2_leaf"] % 4096 == 0, where
        assert v["agrees"], where
        seen.add(v["backing"])
    assert seen == set(kvmpolicy.BACKINGS)


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
    for probe in table.UNALIGNED:
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
    assert all(o["predicted"] in (None, o["result"]) for o in data["outcomes"] if o["probe"] in table.UNALIGNED)
    # The descriptor KVM wrote, per (host, backing): what the policy predicts, exactly. The
    # three eras tell Normal-NC from Normal WB, which the probes cannot.
    assert all(h["fwb"] is True for h in data["hosts"])  # -cpu max
    assert_reads_as_policy_predicts(data)
    by = {(kvmpolicy.version(v["host_kernel"]), v["backing"]): v for v in data["stage2"]}
    vfio, ram = by[(6, 12), "vfio"], by[(6, 12), "ram"]
    assert vfio["probe_class"] == ram["probe_class"] == "normal" and vfio["stage2_read"] != ram["stage2_read"]
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
    # Without FWB the descriptors use the plain stage-2 encoding: RAM is MemAttr 0b1111.
    assert_reads_as_policy_predicts(data)
    ram = next(v for v in data["stage2"] if v["backing"] == "ram")
    assert (ram["stage2_memattr"], ram["fwb"]) == (0b1111, False)


def _probe_file(tmp_path, kernel: str, outcomes: list[dict]):
    path = tmp_path / f"20261201-0000-lab-{kernel}-payload-probes.json"
    path.write_text(json.dumps({"host_kernel": kernel, "guest": "payload", "fwb": True, "dic": True, "kvm": True,
                                "backings": {"vfio": {"stage2_read": "normal-nc"}}, "outcomes": outcomes}))
    return path


def test_mismatch_lines_and_exit_from_the_files_a_host_sent(tmp_path, capsys):
    from argparse import Namespace

    from guestkit.lab import l0_command as lab

    kernel = "6.12.117+deb12-arm64"
    rows = [{"backing": "vfio", "attr": a, "probe": p, "result": r, "code": "", "stage2_read": read,
             "stage2_memattr": 5, "stage2_leaf": 4096, "fwb": True}
            for a, r in (("normal", "ok"), ("device-ngnre", "fault")) for p in table.UNALIGNED
            for read in ["normal-nc"]]
    good = lab.read_report(kernel, "payload", [_probe_file(tmp_path, kernel, rows)], "")
    assert good.backings["vfio"]["stage2_read"] == "normal-nc"
    args = Namespace(json=False, detail=True)
    assert lab.print_reports([good], args, 1.0) == []
    out = capsys.readouterr().out
    assert out.splitlines()[1].split() == ["vfio", "NC"] and "NC ok" in out and "s1-fault" in out
    # The same host whose descriptor said Device-nGnRE: read vs prediction and vs probe class.
    odd = lab.read_report(kernel, "payload", [_probe_file(tmp_path, kernel, [
        {**o, "stage2_read": "device-ngnre", "stage2_memattr": 1} for o in rows])], "")
    bad = lab.print_reports([odd], Namespace(json=True, detail=False), 1.0)
    captured = capsys.readouterr()
    data = json.loads(captured.out)  # stdout stays one JSON object, the MISMATCH lines go to stderr
    assert len(bad) == 2 and all(f"MISMATCH {line}" in captured.err for line in bad)
    (v,) = data["stage2"]
    assert (v["stage2_read"], v["predicted"], v["probe_class"], v["agrees"]) == (
        "device-ngnre", "normal-nc", "normal", False)
    assert {d["attr"] for d in data["detail"]} == {"normal", "device-ngnre"}


def test_exit_code_says_timeout_failure_mismatch_or_agreement():
    from guestkit.lab import l0_command as lab

    assert lab.exit_code([0, 0, 0], []) == 0
    assert lab.exit_code([0, 0], ["6.1.0-57-arm64 payload vfio: stage-2 read normal-nc, ..."]) == 1
    assert lab.exit_code([0, 3], ["x"]) == 3 and lab.exit_code([3, 124], []) == 124


def test_plot_needs_a_png_name():
    proc = run_cli("lab", "--plot", "table.svg", module="guestkit")
    assert_one_line_error(proc, 2, "--plot", "FILE.png")


def test_host_without_kvm_is_reported_not_hidden():
    from guestkit.lab import l0_command as lab

    assert "no /dev/kvm" in lab._host_problem({"kvm": False})
    assert lab._host_problem({"kvm": True, "backings": {"vfio": {"error": "not bound"}, "ram": {}}}) == "vfio: not bound"


@pytest.mark.guest
def test_hung_host_times_out_and_the_lab_still_reports(guest_ready, tmp_path):
    proc = run_cli("lab", "--host-kernel", "6.1", "--probes-only", "--json", "--timeout", "3", "-o", str(tmp_path),
                   module="guestkit", timeout=300)
    assert proc.returncode == 124, proc.stderr
    data = json.loads(proc.stdout)
    assert "timed out" in data["hosts"][0]["error"] and "Traceback" not in proc.stderr

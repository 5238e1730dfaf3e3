"""guestkit.lab.l1_l2driver (L1): bench probe's --progress lines as the driver reads them,
kill detection on a process that behaves like a paused QEMU, restarts on scripted L2s,
and one real nested boot."""
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import kvmpolicy, memtypes
from conftest import run_cli
from guestkit import frames, launch
from guestkit.lab import l1_l2driver as l2driver
from guestkit.cpio import CpioWriter
from guestkit.qemu import get_arch

ARM64 = get_arch("arm64")


def test_progress_lines_give_every_outcome_as_it_happens(tmp_path):
    # The real bench probe on host RAM: what --progress says matches the final JSON.
    proc = run_cli("probe", "--target", "ram", "--json", "--progress", "--probe", "load8", "--probe", "load8-unaligned")
    assert proc.returncode == 0, proc.stderr
    watch = l2driver.Watch(verbose=False)
    for line in proc.stderr.splitlines(keepends=True):
        watch(("err", line))
    # The driver greps this line out of the JSON file the L2 keeps.
    watch(("err", next(line for line in proc.stdout.splitlines() if '"emulated"' in line)))
    final = json.loads(proc.stdout)["outcomes"]
    assert watch.outcomes == final and watch.current is None and not watch.errors
    assert watch.emulated is False
    lines = proc.stderr.splitlines()
    # Whether the guest is emulated comes first: a probe that kills the VM cannot take it along.
    assert lines[0] == "# emulated false"
    assert lines[1] == "# probe normal load8" and lines[2].startswith("# outcome ")


def test_watch_knows_the_probe_that_was_running():
    watch = l2driver.Watch(verbose=False)
    for text in ["# probe normal-nc load8\n", '# outcome {"attr": "normal-nc", "probe": "load8", "result": "ok"}\n',
                 "# probe normal-nc load8-unaligned\n", '# outcome {"attr": "normal-nc", "pro\n']:
        watch(("err", text))
    assert watch.current == ("normal-nc", "load8-unaligned")
    assert len(watch.outcomes) == 1 and watch.errors[0].startswith("unreadable progress line")
    watch(("err", "# fast-start device-ngnre\n"))
    assert watch.in_fast == "device-ngnre"
    watch(("err", "# fast-exit device-ngnre 0\n"))
    assert watch.in_fast is None and watch.fast_done["device-ngnre"][0] == 0


def test_lab_words_and_kernel_log_line():
    assert l2driver.lab_result({"result": "SIGBUS", "code": "BUS_ADRALN"}) == ("fault", "SIGBUS/BUS_ADRALN")
    assert l2driver.lab_result({"result": "ok", "code": ""}) == ("ok", "")
    assert l2driver.lab_result({"result": "skip", "code": "writes not allowed"}) == ("skip", "writes not allowed")
    log = ["vfio-pci 0000:00:01.0: enabling device", "kvm [97]: Unsupported FSC: EC=0x24 xFSC=0x21 ESR_EL2=0x93c08021"]
    assert l2driver.kvm_log_line(log) == log[1]
    assert l2driver.kvm_log_line(["nothing here"]) == ""


def test_remaining_probes_become_the_fewest_commands():
    every = ["load8", "load8-unaligned", "store8"]
    remaining = [("normal-nc", "load8-unaligned"), ("normal-nc", "store8")]
    (cmd,) = l2driver.probe_commands(remaining, every)
    assert cmd[cmd.index("--target") + 1] == l2driver.TARGET and "--progress" in cmd
    assert [a for a in cmd if a.startswith("--")][-3:] == ["--attr=normal-nc", "--probe=load8-unaligned",
                                                          "--probe=store8"]
    full = l2driver.probe_commands([(a, n) for a in l2driver.ATTRS for n in every], every)
    assert len(full) == 1 and not any(a.startswith("--probe") for a in full[0])
    split = l2driver.probe_commands([("device-ngnre", "store8"), ("normal-nc", "load8")], every)
    assert len(split) == 2
    fast = {a: l2driver.fast_command("6.1.0-56-arm64", a) for a in l2driver.ATTRS}
    script = l2driver.l2_script(split, fast)
    assert script.count("2>/dev/console") == 2 and script.count(">/tmp/probe-1.json") == 1 and script.count("--label lab-6.1.0-56-arm64-linux-vfio") == 2
    assert script.index("# fast-start device-ngnre") < script.index("--attr=device-ngnre --workload=write-bw")


@pytest.mark.skipif(shutil.which("cpio") is None, reason="needs the cpio tool")
def test_job_overlay_is_rewritten_in_place(tmp_path):
    initrd = tmp_path / "initrd.cpio"
    with initrd.open("wb") as f:
        w = CpioWriter(f)
        w.add_dir("dmtbench")
        w.add_file("dmtbench/job.json", b'{"argv": ["true"]}')
        w.close()
    base = initrd.stat().st_size
    l2driver.write_job(initrd, base, {"argv": ["a-long-first-command"] * 20})
    l2driver.write_job(initrd, base, {"argv": ["second"]})
    out = tmp_path / "x"
    out.mkdir()
    # The kernel unpacks concatenated archives in order; cpio -i reads them the same way
    # when told to go on past the first trailer.
    data = initrd.read_bytes()
    subprocess.run(["cpio", "-id", "--quiet"], input=data[:base], cwd=out, check=True)
    subprocess.run(["cpio", "-idu", "--quiet"], input=data[base:], cwd=out, check=True)
    assert json.loads((out / "dmtbench/job.json").read_text()) == {"argv": ["second"]}
    assert initrd.stat().st_size % 512 == 0 and initrd.stat().st_size < base + 1024


def test_kvm_run_failed_ends_a_paused_vm(tmp_path):
    # A stand-in for QEMU after KVM_RUN failed: console lines, QEMU's message on stderr,
    # then it waits for ever (as QEMU does with the VM paused).
    script = (f"printf '%s' '{frames.encode('err', '', b'# probe normal-nc load8-unaligned' + bytes([10]))}'; "
              'echo "error: kvm run failed Bad address" >&2; echo " PC=0000ffff88cf2688" >&2; exec sleep 600')
    seen = []
    t0 = time.monotonic()
    with pytest.raises(launch.VmKilled) as exc:
        launch._boot(["sh", "-c", script], 60, launch.Receiver(tmp_path), seen.append)
    assert time.monotonic() - t0 < 10 and exc.value.code == launch.VM_KILLED_EXIT
    assert exc.value.line == "error: kvm run failed Bad address"
    assert ("err", "# probe normal-nc load8-unaligned\n") in seen
    # The guest's own output naming the message is not QEMU's: no kill.
    rx = launch.Receiver(tmp_path)
    quoted = frames.encode("err", "", b"error: kvm run failed (quoted)\n") + frames.encode("exit", "0", b"")
    assert launch._boot(["sh", "-c", f"printf '%s' '{quoted}'"],
                        30, rx, seen.append) == 0 and rx.killed is None


@pytest.mark.guest
def test_nested_linux_guest_killed_probe_and_the_rest(guest_ready, tmp_path):
    """One emulated 6.1 host: vfio + normal-nc + unaligned kills the L2 (the aligned probe ran
    before it in the same L2, the other unaligned one is not run and says why); the Device
    mapping faults in the L2 itself; L2 says it is emulated."""
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "guestkit", "lab", "--guest", "linux", "--host-kernel", "6.1",
                           "--probes-only", "--probe", "load8-unaligned", "--probe", "load8", "--probe",
                           "store8-unaligned", "-o", str(tmp_path),
                           "--timeout", "400", "--json"], capture_output=True, text=True, timeout=500,
                          cwd=Path(__file__).resolve().parent.parent)
    print(f"nested linux guest test: {time.monotonic() - t0:.1f} s wall")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (path,) = tmp_path.glob("*/*-lab-6.1*-linux-probes.json")
    data = json.loads(path.read_text())
    got = {(o["attr"], o["probe"]): o for o in data["outcomes"]}
    assert data["host_kernel"].startswith("6.1.") and data["kvm"] and data["guest"] == "linux"
    killed = got[("normal-nc", "load8-unaligned")]
    assert killed["backing"] == "vfio" and killed["result"] == "killed" and "Unsupported FSC" in killed["code"]
    assert got[("normal-nc", "load8")]["result"] == "ok"  # ran before the kill, in the same L2
    after = got[("normal-nc", "store8-unaligned")]
    assert after["result"] == "skip" and "load8-unaligned on this mapping killed the VM" in after["code"]
    assert got[("device-ngnre", "load8-unaligned")]["result"] == "fault"
    assert got[("device-ngnre", "load8-unaligned")]["code"] == "SIGBUS/BUS_ADRALN"
    assert data["l2_boots"] == 1 and data["l2_emulated"] is True
    # The L2's stage 2, read through the inner QEMU's VM fd: what the policy predicts.
    pred = kvmpolicy.predict(data["host_kernel"], "vfio", data["fwb"])
    assert {o["stage2_read"] for o in data["outcomes"]} == {pred.stage2}
    assert data["backings"]["vfio"]["stage2_memattr"] == memtypes.get(pred.stage2).fwb
    lab = json.loads(proc.stdout)  # the lab's own verdicts: every outcome as predicted
    assert lab["mismatches"] == [] and lab["hosts"][0]["error"] == ""


class _ScriptedLab(l2driver.Lab):
    """The restart logic against L2s that behave as scripted (what each boot ran and how
    it ended); a KVM that kills VMs exists only inside the emulated host."""

    def __init__(self, tmp_path, script, probes_only=False, names=("load8", "load8-unaligned"), each_kill=False):
        report = {"l2_boots": 0, "backings": {"vfio": {}}, "runs": [], "boots": [], "outcomes": []}
        super().__init__("6.1.0-56-arm64", list(names), probes_only, False, report,
                         tmp_path / "r.json", kmsg=l2driver.KernelLog("/nonexistent"), each_kill=each_kill)
        self.script, self.asked = list(script), []

    def boot(self, remaining, fast):
        self.asked.append((list(remaining), list(fast)))
        watch = l2driver.Watch(verbose=False)
        ran, ended = self.script.pop(0)
        for text in ran:
            watch(("err", text + "\n"))
        return watch, ended


def _ok(attr, name):
    return f'# outcome {{"attr": "{attr}", "probe": "{name}", "result": "ok", "code": ""}}'


def test_a_killed_probe_is_recorded_and_the_rest_run_in_a_fresh_l2(tmp_path):
    fsc = "killed: kvm [97]: Unsupported FSC: EC=0x24 xFSC=0x21 ESR_EL2=0x93c08021"
    lab = _ScriptedLab(tmp_path, [
        ([_ok("device-ngnre", "load8"), _ok("device-ngnre", "load8-unaligned"), _ok("normal-nc", "load8"),
          "# probe normal-nc load8-unaligned"], fsc),
        (["# fast-start device-ngnre", "# fast-exit device-ngnre 0"], "exit 0"),
        (["# fast-start normal-nc"], fsc)])
    assert lab.run() == 0
    assert lab.asked[1] == ([], ["device-ngnre"]) and lab.asked[2] == ([], ["normal-nc"])  # one run per L2
    killed = lab.report["outcomes"][-1]
    assert (killed["attr"], killed["probe"], killed["result"]) == ("normal-nc", "load8-unaligned", "killed")
    assert killed["code"].startswith("kvm [97]: Unsupported FSC")
    assert [(r["attr"], r["exit"]) for r in lab.report["runs"]] == [("device-ngnre", 0), ("normal-nc", None)]
    assert json.loads((tmp_path / "r.json").read_text())["outcomes"] == lab.report["outcomes"]


def test_an_l2_that_stops_without_a_probe_to_blame_is_an_error(tmp_path):
    lab = _ScriptedLab(tmp_path, [([_ok("device-ngnre", "load8"), "error: target cannot give normal-nc"], "exit 2")],
                       probes_only=True)
    assert lab.run() == 3
    assert lab.report["backings"]["vfio"]["error"] == "target cannot give normal-nc"
    assert len(lab.report["outcomes"]) == 1
    hung = _ScriptedLab(tmp_path, [([], "error: guest timed out after 300 s and was killed")], probes_only=True)
    assert hung.run() == 3 and "timed out" in hung.report["backings"]["vfio"]["error"]


FSC = "killed: kvm [97]: Unsupported FSC: EC=0x24 xFSC=0x21 ESR_EL2=0x93c08021"
NAMES = ("store8-unaligned", "load2-unaligned", "load8", "load8-unaligned", "store8")


def test_one_kill_per_mapping_and_the_other_unaligned_probes_say_why(tmp_path):
    # The unaligned probes run last per attribute; the first kill on normal-nc ends the only
    # L2 the probes need, and the other unaligned probes there are recorded as not run.
    first = [*(_ok("device-ngnre", n) for n in ("load8", "store8", "store8-unaligned", "load2-unaligned",
                                                 "load8-unaligned")),
             _ok("normal-nc", "load8"), _ok("normal-nc", "store8"), "# probe normal-nc store8-unaligned"]
    lab = _ScriptedLab(tmp_path, [(first, FSC)], probes_only=True, names=NAMES)
    assert lab.run() == 0 and len(lab.asked) == 1
    got = {(o["attr"], o["probe"]): o for o in lab.report["outcomes"]}
    assert len(got) == 2 * len(NAMES)  # every probe has an outcome
    assert got["normal-nc", "store8-unaligned"]["result"] == "killed"
    for name in ("load2-unaligned", "load8-unaligned"):
        skipped = got["normal-nc", name]
        assert skipped["result"] == "skip" and "store8-unaligned on this mapping killed the VM" in skipped["code"]
        assert "Unsupported FSC" in skipped["code"] and "--each-kill" in skipped["code"]
    assert [n for a, n in lab.asked[0][0]][:5] == ["load8", "store8", "store8-unaligned", "load2-unaligned",
                                                   "load8-unaligned"]


def test_each_kill_boots_an_l2_for_every_unaligned_probe(tmp_path):
    first = [*(_ok("device-ngnre", n) for n in ("load8", "store8", "store8-unaligned", "load2-unaligned",
                                                 "load8-unaligned")),
             _ok("normal-nc", "load8"), _ok("normal-nc", "store8"), "# probe normal-nc store8-unaligned"]
    lab = _ScriptedLab(tmp_path, [(first, FSC), (["# probe normal-nc load2-unaligned"], FSC),
                                  (["# probe normal-nc load8-unaligned"], FSC)],
                       probes_only=True, names=NAMES, each_kill=True)
    assert lab.run() == 0 and len(lab.asked) == 3
    results = {o["probe"]: o["result"] for o in lab.report["outcomes"] if o["attr"] == "normal-nc"}
    assert results == {"load8": "ok", "store8": "ok", "store8-unaligned": "killed", "load2-unaligned": "killed",
                       "load8-unaligned": "killed"}


def test_the_l2s_bar_is_read_at_stage_2_once_a_probe_touched_it(tmp_path):
    asked = []

    def reader(ipa):
        asked.append(ipa)
        return {"stage2_read": "device-ngnre", "stage2_memattr": 1, "stage2_leaf": 4096, "fwb": True}

    watch = l2driver.Watch(verbose=False, reader=reader)
    watch(("err", "# bar 0x0000008000000000 0x00000080003fffff 0x000000000014220c\n"))
    assert watch.bar_ipa == 0x8000000000 and watch.stage2 is None  # nothing touched the BAR yet
    for name in ("load8", "store8"):
        watch(("err", _ok("device-ngnre", name) + "\n"))
    assert asked == [0x8000000000] and watch.stage2["stage2_read"] == "device-ngnre"
    script = l2driver.l2_script(l2driver.probe_commands([("normal-nc", "load8")], ["load8"]), {})
    assert script.startswith(f'echo "# bar $(sed -n 3p /sys/bus/pci/devices/{l2driver.BDF}/resource)" >&2; ')


def test_every_outcome_of_an_l2_carries_its_read_and_the_backing_keeps_it(tmp_path):
    read = {"stage2_read": "device-ngnre", "stage2_memattr": 1, "stage2_leaf": 4096, "fwb": True}

    class Reading(_ScriptedLab):
        def boot(self, remaining, fast):
            watch, ended = super().boot(remaining, fast)
            watch.stage2 = read
            return watch, ended

    first = [_ok("device-ngnre", "load8"), _ok("device-ngnre", "load8-unaligned"), _ok("normal-nc", "load8"),
             "# probe normal-nc load8-unaligned"]
    lab = Reading(tmp_path, [(first, FSC)], probes_only=True)
    assert lab.report["backings"]["vfio"] == {}
    assert lab.run() == 0
    assert all({k: o[k] for k in read} == read for o in lab.report["outcomes"])
    assert lab.report["backings"]["vfio"]["stage2_read"] == "device-ngnre"

"""The kvm target for real: one boot of the emulated arm64 KVM host (Debian 6.1 at EL2,
ivshmem BAR2 bound to vfio-pci) runs the probe matrix through every backing, a --fast run
over kvm:vfio with two attributes, and the bad-input paths; the host checks what came back.
Expected probe outcomes are computed from the KVM-policy prediction for the host kernel
the guest reports, never copied from an earlier run."""
from __future__ import annotations

import json
import time

import pyperf
import pytest

from bench import kvmpolicy, memtypes
from bench.outcomes import Probe
from bench.targets.kvm import expected_outcome
from conftest import run_cli

pytestmark = pytest.mark.guest
BDF = "0000:00:01.0"
VFIO = f"kvm:vfio:{BDF}/2"
BACKINGS = {"vfio": VFIO, "sysfs": f"kvm:sysfs:{BDF}/2", "ram": "kvm:ram"}
# Each command's stdout and exit code land in results/; /proc/uptime times the probe runs.
SCRIPT = "\n".join([
    "t() { cut -d' ' -f1 /proc/uptime; }",
    *(f"a=$(t); python3 -m bench probe --target {spec} --json > results/probe-{b}.json; "
      f"echo {b} $a $(t) >> results/probe-times.txt" for b, spec in BACKINGS.items()),
    f"python3 -m bench probe --target {VFIO} --attr normal --probe load8-unaligned --ktap > results/probe-vfio.ktap",
    "python3 -m bench targets > results/targets.txt",
    f"python3 -m bench run --target {VFIO} --fast -p 2 --attr device-ngnre --attr normal-nc --workload write-bw "
    "--size 64KiB --label kvm-vfio > results/run.txt 2>&1",
    f"python3 -m bench run --target {VFIO} --size 8MiB --workload write-bw 2> results/too-big.err; echo $? > results/too-big.rc",
    f"echo {BDF} > /sys/bus/pci/devices/{BDF}/driver/unbind",
    f"python3 -m bench probe --target {VFIO} 2> results/unbound.err; echo $? > results/unbound.rc",
])


@pytest.fixture(scope="module")
def lab(guest_ready, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("kvm")
    t0 = time.monotonic()
    proc = run_cli("run", "--kvm-host", "--ivshmem", "4MiB", "--timeout", "500", "--results", str(tmp),
                   "--", "sh", "-c", SCRIPT, module="guestkit", timeout=600)
    print(f"kvm guest CI test: {time.monotonic() - t0:.1f} s wall")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return tmp


def _probes(data: dict) -> dict[str, Probe]:
    """Probe descriptions rebuilt from the outcomes (names say unaligned; flags don't matter)."""
    return {o["probe"]: Probe(0, o["probe"], "", False, o["probe"].endswith("-unaligned")) for o in data["outcomes"]}


@pytest.mark.parametrize("backing", list(BACKINGS))
def test_probe_matrix_follows_the_kvm_policy(lab, backing):
    data = json.loads((lab / f"probe-{backing}.json").read_text())
    pred = kvmpolicy.predict(data["host_kernel"], backing)
    assert data["host_kernel"].startswith("6.1.") and data["stage2_predicted"] == pred.stage2
    assert data["stage2_observed"] == pred.cls and data["stage2_agrees"] == "true"
    probes = _probes(data)
    attrs = {o["attr"] for o in data["outcomes"]}
    assert attrs == set(memtypes.names())  # every stage-1 attribute, whatever the backing
    for o in data["outcomes"]:
        want = expected_outcome(probes[o["probe"]], o["attr"], pred.stage2)
        if want:
            assert o["result"] == want, o
        if o["result"] == "fault":
            assert int(o["code"].split()[1], 16) & 0x3F == 0x21, o  # EL1 alignment fault (DFSC)
        if o["result"] == "killed":
            assert "Unsupported FSC" in o["code"] and "xFSC=0x21" in o["code"], o  # the host's own line
    killed = [o for o in data["outcomes"] if o["result"] == "killed"]
    assert bool(killed) == pred.device  # Normal stage 1 + unaligned dies only over stage-2 Device
    assert data["inferred"]["normal"] == pred.cls


def test_killed_case_in_ktap_carries_the_host_log_line(lab):
    text = (lab / "probe-vfio.ktap").read_text()
    assert "1..1" in text and "# killed kvm [" in text and "Unsupported FSC" in text


def test_targets_lists_the_kvm_backings(lab):
    text = (lab / "targets.txt").read_text()
    for spec in BACKINGS.values():
        assert f"{spec}: " in text


def test_fast_run_over_vfio_comes_home(lab):
    (path,) = lab.glob("*/*-kvm-vfio.json")
    suite = pyperf.BenchmarkSuite.load(str(path))
    seen = {}
    for bench in suite.get_benchmarks():
        meta = bench.get_metadata()
        pred = kvmpolicy.predict(meta["host_kernel"], "vfio")
        assert meta["target"] == VFIO and meta["backing"] == "vfio" and meta["emulated"] == "true"
        assert meta["stage2"] == meta["stage2_predicted"] == pred.stage2 and meta["stage2_observed"] == pred.cls
        assert meta["clock"].startswith("CNTVCT_EL0") and "vfio-pci region 2" in meta["realised"]
        assert bench.get_nvalue() > 0 and bench.median() > 0
        seen[meta["attr"]] = meta["effective_inferred"]
    # Stage 1 Device faults at EL1; normal-nc is Device too when stage 2 is (6.1), else Normal.
    assert seen == {"device-ngnre": "device", "normal-nc": pred.cls}


def test_bad_input_in_the_host_is_one_line(lab):
    for name, needle in (("too-big", "smaller than the 8388608 asked"), ("unbound", "not vfio-pci: bind it with")):
        assert (lab / f"{name}.rc").read_text().strip() == "2"
        lines = (lab / f"{name}.err").read_text().strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], lines


def test_probe_cost(lab):
    """Per-case cost is reported (printed); a matrix of 147 probes stays well under a minute."""
    for line in (lab / "probe-times.txt").read_text().splitlines():
        backing, start, end = line.split()
        took = float(end) - float(start)
        print(f"probe matrix {backing}: {took:.1f} s, {took / 147 * 1000:.0f} ms per case")
        assert took < 60

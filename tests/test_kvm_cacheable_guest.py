"""The third stage-2 era for real (Linux 6.17+: a cacheable PFNMAP over non-RAM memory is
Normal WB at stage 2 with FWB, refused without): the ivshmem BAR mapped in the emulated
KVM host by dmattr (kvm:kmod-*), one boot per host CPU/kernel, several commands per boot.

- sid (7.x), -cpu max (FWB, DIC): kmod-normal + Normal stage 1 + unaligned access is ok and
  the store lands in the BAR; kmod-normal-nc and kmod-device-ngnre are killed; a --fast run
  over kmod-normal comes home.
- sid, -cpu cortex-a57 (no FWB, no DIC): KVM refuses the kmod-normal memslot (EINVAL,
  capability 0): every probe says `refused`, KTAP too, and a timed case fails with the reason.
- 6.12: kmod-normal is killed (before 6.17 a cacheable PFNMAP is Device at stage 2).
Every expected outcome comes from the KVM-policy table for the kernel and CPU facts the
host reports, never from a copied table.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import pyperf
import pytest

from bench import kvmpolicy, memtypes
from bench.outcomes import Probe
from bench.targets.kvm import expected_outcome
from conftest import run_cli

pytestmark = pytest.mark.guest
BDF = "0000:00:01.0"
KMOD = tuple(kvmpolicy.KMOD_BACKINGS)
PROBES = ("load8", "store8", "load8-unaligned", "store8-unaligned")
RES2 = f"/sys/bus/pci/devices/{BDF}/resource2"


def spec(backing: str) -> str:
    return f"kvm:{backing}:{BDF}/2"


def probe_json(backing: str, name: str, attrs: tuple[str, ...] = ()) -> str:
    args = " ".join([*(f"--probe {p}" for p in PROBES), *(f"--attr {a}" for a in attrs)])
    return f"python3 -m bench probe --target {spec(backing)} {args} --json > results/{name}.json"


# The BAR's first 16 bytes through sysfs in the host: filled with 0xff, then read back after
# the guest's unaligned 8-byte store of zeros at offset 1 (a stage-2 Normal memslot).
BAR_FILL = f"python3 -c \"import mmap,os; m=mmap.mmap(os.open('{RES2}',os.O_RDWR),4096); m[:16]=b'\\xff'*16\""
BAR_READ = f"python3 -c \"import mmap,os; print(mmap.mmap(os.open('{RES2}',os.O_RDWR),4096)[:16].hex())\""
MAX_SCRIPT = "\n".join([
    BAR_FILL,
    f"python3 -m bench probe --target {spec('kmod-normal')} --attr normal --probe store8-unaligned --json "
    "> results/store.json",
    f"{BAR_READ} > results/bar.hex",
    *(probe_json(b, b) for b in KMOD),
    "python3 -m bench targets > results/targets.txt",
    f"python3 -m bench run --target {spec('kmod-normal')} --fast -p 1 --attr normal --workload write-bw "
    "--size 64KiB --label kvm-kmod-normal > results/run.txt 2>&1; echo $? > results/run.rc",
])
A57_SCRIPT = "\n".join([
    probe_json("kmod-normal", "kmod-normal"),
    probe_json("kmod-normal-nc", "kmod-normal-nc", ("normal",)),
    f"python3 -m bench probe --target {spec('kmod-normal')} --attr normal --probe load8-unaligned --ktap "
    "> results/refused.ktap",
    f"python3 -m bench run --target {spec('kmod-normal')} --fast -p 1 --attr normal --workload write-bw "
    "--size 64KiB > results/run.txt 2> results/run.err; echo $? > results/run.rc",
    f"DMTBENCH_DMATTR=/dev/no-dmattr python3 -m bench probe --target {spec('kmod-normal')} 2> results/nomod.err; "
    "echo $? > results/nomod.rc",
])
OLD_SCRIPT = "\n".join(probe_json(b, b, ("normal", "device-ngnre")) for b in ("kmod-normal", "kmod-normal-nc"))


def boot(tmp: Path, kernel: str, script: str, cpu: str | None = None) -> Path:
    """One emulated KVM host with dmattr loaded runs `script`; its results/ land in tmp."""
    t0 = time.monotonic()
    proc = run_cli("run", "--kvm-host", "--kmod", "--kernel", kernel, *(["--cpu", cpu] if cpu else []),
                   "--ivshmem", "4MiB", "--timeout", "400", "--results", str(tmp), "--", "sh", "-c", script,
                   module="guestkit", timeout=600)
    print(f"kvm kmod guest boot ({kernel}, {cpu or 'max'}): {time.monotonic() - t0:.1f} s wall")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return tmp


@pytest.fixture(scope="module")
def sid_max(guest_ready, tmp_path_factory) -> Path:
    return boot(tmp_path_factory.mktemp("sid-max"), "sid", MAX_SCRIPT)


@pytest.fixture(scope="module")
def sid_a57(guest_ready, tmp_path_factory) -> Path:
    return boot(tmp_path_factory.mktemp("sid-a57"), "sid", A57_SCRIPT, cpu="cortex-a57")


@pytest.fixture(scope="module")
def k612(guest_ready, tmp_path_factory) -> Path:
    return boot(tmp_path_factory.mktemp("k612"), "6.12", OLD_SCRIPT)


def load(lab: Path, name: str) -> tuple[dict, kvmpolicy.Prediction]:
    """A probe JSON and the KVM-policy prediction for its host (kernel, FWB, DIC)."""
    data = json.loads((lab / f"{name}.json").read_text())
    pred = kvmpolicy.predict(data["host_kernel"], data["backing"], data["fwb"] == "true", data["dic"] == "true")
    assert data["stage2_predicted"] == pred.shown and data["stage2_observed"] == pred.cls, data
    assert data["stage2_agrees"] == "true"
    return data, pred


def check_outcomes(data: dict, pred: kvmpolicy.Prediction) -> None:
    for o in data["outcomes"]:
        probe = Probe(0, o["probe"], "", False, o["probe"].endswith("-unaligned"))
        assert o["result"] == expected_outcome(probe, o["attr"], pred.stage2) and o["agrees"] is True, o
        if o["result"] == "killed":
            assert "Unsupported FSC" in o["code"] and "xFSC=0x21" in o["code"], o


def result_of(data: dict, attr: str, probe: str) -> str:
    return next(o["result"] for o in data["outcomes"] if o["attr"] == attr and o["probe"] == probe)


def test_sid_with_fwb_maps_a_cacheable_pfnmap_normal(sid_max):
    data, pred = load(sid_max, "kmod-normal")
    assert kvmpolicy.version(data["host_kernel"]) >= kvmpolicy.CACHEABLE_PFNMAP_SINCE
    assert (data["fwb"], data["dic"], data["cacheable_pfnmap_cap"]) == ("true", "true", "1")
    assert pred.stage2 == "normal"
    check_outcomes(data, pred)
    assert {o["attr"] for o in data["outcomes"]} == set(memtypes.names())
    assert result_of(data, "normal", "store8-unaligned") == result_of(data, "normal-nc", "load8-unaligned") == "ok"
    assert result_of(data, "device-ngnre", "load8-unaligned") == "fault"  # stage 1 Device: in the guest


def test_the_guest_store_lands_in_the_bar(sid_max):
    data = json.loads((sid_max / "store.json").read_text())
    assert [o["result"] for o in data["outcomes"]] == ["ok"]
    assert bytes.fromhex((sid_max / "bar.hex").read_text().strip()) == b"\xff" + bytes(8) + b"\xff" * 7


@pytest.mark.parametrize("backing", ["kmod-normal-nc", "kmod-device-ngnre"])
def test_sid_uncached_pfnmap_stays_device(sid_max, backing):
    data, pred = load(sid_max, backing)
    assert pred.stage2 == "device-ngnre"
    check_outcomes(data, pred)
    assert result_of(data, "normal", "load8-unaligned") == "killed"


def test_targets_list_the_kmod_backings(sid_max):
    text = (sid_max / "targets.txt").read_text()
    for backing in KMOD:
        assert f"{spec(backing)}: dmattr {kvmpolicy.KMOD_BACKINGS[backing]} mmap" in text


def test_fast_run_over_kmod_normal_comes_home(sid_max):
    assert (sid_max / "run.rc").read_text().strip() == "0", (sid_max / "run.txt").read_text()
    (path,) = sid_max.glob("*/*-kvm-kmod-normal.json")
    (bench,) = pyperf.BenchmarkSuite.load(str(path)).get_benchmarks()
    meta = bench.get_metadata()
    assert meta["backing"] == "kmod-normal" and meta["stage2"] == meta["stage2_predicted"] == "normal"
    assert meta["cacheable_pfnmap_cap"] == "1" and meta["effective_inferred"] == "normal"
    assert meta["realised"].startswith("dmattr normal mmap of BAR 2") and bench.median() > 0


def test_sid_without_fwb_refuses_the_memslot(sid_a57):
    data, pred = load(sid_a57, "kmod-normal")
    assert kvmpolicy.version(data["host_kernel"]) >= kvmpolicy.CACHEABLE_PFNMAP_SINCE
    assert (data["fwb"], data["dic"], data["cacheable_pfnmap_cap"]) == ("false", "false", "0")
    assert pred.refused and data["stage2"] == "unknown"
    check_outcomes(data, pred)
    codes = {o["code"] for o in data["outcomes"]}
    assert codes == {"KVM_SET_USER_MEMORY_REGION: EINVAL; KVM_CAP_ARM_CACHEABLE_PFNMAP_SUPPORTED=0"}
    assert data["memslot_refused"] in codes
    # Only the cacheable PFNMAP is refused: write-combine is mapped, Device at stage 2.
    nc, nc_pred = load(sid_a57, "kmod-normal-nc")
    check_outcomes(nc, nc_pred)
    assert result_of(nc, "normal", "load8-unaligned") == "killed"


def test_refused_in_ktap_and_a_timed_case_fails_with_the_reason(sid_a57):
    text = (sid_a57 / "refused.ktap").read_text()
    assert "ok 1 normal.load8-unaligned # refused KVM_SET_USER_MEMORY_REGION: EINVAL" in text
    assert (sid_a57 / "run.rc").read_text().strip() == "1"
    out = (sid_a57 / "run.txt").read_text() + (sid_a57 / "run.err").read_text()
    assert "refused the memslot (KVM_SET_USER_MEMORY_REGION: EINVAL" in out and "Traceback" not in out
    assert "1 case(s) failed" in out


def test_no_dmattr_module_is_one_line(sid_a57):
    assert (sid_a57 / "nomod.rc").read_text().strip() == "2"
    lines = (sid_a57 / "nomod.err").read_text().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no /dev/no-dmattr: load the module"), lines


def test_before_6_17_a_cacheable_pfnmap_is_device(k612):
    for backing in ("kmod-normal", "kmod-normal-nc"):
        data, pred = load(k612, backing)
        assert kvmpolicy.version(data["host_kernel"]) < kvmpolicy.CACHEABLE_PFNMAP_SINCE
        assert data["cacheable_pfnmap_cap"] == "0" and pred.stage2 == "device-ngnre"
        check_outcomes(data, pred)
        assert result_of(data, "normal", "load8-unaligned") == "killed"

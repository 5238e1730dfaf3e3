"""dmattr: builds for arm64 (cross) and x86_64 against Debian's headers, and in the arm64
guest maps every attribute the kernel has, with the probes and a short run."""
import json

import pyperf
import pytest

from bench.targets.kmod import IOC_QUERY, IOC_SET, REQ
from conftest import assert_one_line_error, run_cli

pytestmark = pytest.mark.guest
DEVICE = {"device-ngnrne", "device-ngnre"}
NORMAL = {"normal-nc", "normal"}
MISSING = {"device-ngre", "device-gre", "normal-wt"}  # no MAIR slot / protection in Linux 6.1 arm64
GUEST_SCRIPT = """
python -m bench targets --target kmod > results/targets-kmod.txt
python -m bench run --target kmod --attr device-gre 2> results/refused.txt
python -m bench probe --target kmod --json > results/probe-kmod.json
python -m bench run --target kmod --fast --workload write-bw --workload read-bw --size 64KiB --label kmod
"""


def elf_machine(path) -> int:
    data = path.read_bytes()
    assert data[:4] == b"\x7fELF" and data[16] == 1  # ELF relocatable (ET_REL): a module
    return int.from_bytes(data[18:20], "little")


@pytest.mark.parametrize("arch,machine", [("arm64", 183), ("x86_64", 62)])
def test_module_builds_against_debian_headers(guest_ready, arch, machine):
    proc = run_cli("kmod", "build", "--arch", arch, module="guestkit", timeout=600)
    assert proc.returncode == 0, proc.stderr
    from pathlib import Path

    ko = Path(proc.stdout.strip().splitlines()[-1])
    assert ko.name.startswith("dmattr-") and elf_machine(ko) == machine


def test_ioctl_numbers_match_the_header():
    assert REQ.size == 40
    assert IOC_SET == 0x40284401 and IOC_QUERY == 0x80044402  # _IOW('D',1,40), _IOR('D',2,4)


def test_kmod_target_without_module_is_one_line(tmp_path):
    proc = run_cli("run", "--target", "kmod", env={"DMTBENCH_DMATTR": str(tmp_path / "nodev")})
    assert_one_line_error(proc, 2, "insmod", "guestkit")


@pytest.fixture(scope="module")
def kmod_run(guest_ready, tmp_path_factory):
    res = tmp_path_factory.mktemp("kmod") / "results"
    proc = run_cli("run", "--kmod", "--timeout", "400", "--results", str(res), "--", "sh", "-c", GUEST_SCRIPT,
                   module="guestkit", timeout=500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    return res


def test_every_kernel_attribute_is_offered_or_refused_with_reason(kmod_run):
    text = (kmod_run / "targets-kmod.txt").read_text()
    for a in DEVICE | NORMAL:
        assert f"{a:<14} available" in text
    for a in MISSING:
        assert f"{a:<14} not available: this kernel has no page protection for {a}" in text
    refused = (kmod_run / "refused.txt").read_text().strip()
    assert refused.startswith("error: target kmod cannot give device-gre") and len(refused.splitlines()) == 1


def test_probe_matrix_through_the_module(kmod_run):
    data = json.loads((kmod_run / "probe-kmod.json").read_text())
    out = {(o["attr"], o["probe"]): o for o in data["outcomes"]}
    assert {o["attr"] for o in data["outcomes"]} == DEVICE | NORMAL
    for attr in DEVICE:
        for probe in ("load8-unaligned", "store8-unaligned", "load4-unaligned", "store16-unaligned"):
            assert (out[attr, probe]["result"], out[attr, probe]["code"]) == ("SIGBUS", "BUS_ADRALN")
        assert data["inferred"][attr] == "device"
    for attr in NORMAL:
        assert all(out[attr, p]["result"] == "ok" for p in ("load8-unaligned", "store8-unaligned"))
        assert data["inferred"][attr] == "normal"
    assert not [o for o in data["outcomes"] if o["agrees"] is False]


def test_run_over_all_attributes_comes_home(kmod_run):
    (path,) = (kmod_run / "qemu-arm64-tcg").glob("*-kmod.json")
    suite = pyperf.BenchmarkSuite.load(str(path))
    attrs = {b.get_metadata()["attr"]: b.get_metadata() for b in suite.get_benchmarks()}
    assert set(attrs) == DEVICE | NORMAL and len(suite) == 8
    for attr, meta in attrs.items():
        assert meta["emulated"] == "true" and meta["target"] == "kmod"
        assert meta["effective_inferred"] == ("device" if attr in DEVICE else "normal")
        assert meta["effective"] == attr  # TCG: no stage 2, so stage 1 is what you get

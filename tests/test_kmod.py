"""dmattr: builds for arm64 (cross) and x86_64 against Debian's headers, and in the arm64
guest maps every attribute the kernel has, with the probes and a short run."""
import errno
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
python -m bench probe --target kmod:pci:0000:00:01.0/2 --probe load8-unaligned --json > results/probe-kmod-bar.json
python - > results/ioctl.json <<'PY'
import errno, fcntl, json, mmap, os, sys
from bench.targets.kmod import IOC_SET, REQ
IVSHMEM = (0, 0, 1 << 3)  # domain, bus, devfn of 0000:00:01.0
bad = {
    "unknown-attr": (0, 99, 4096, 0, 0, 0, 0, 0),
    "size-zero": (0, 6, 0, 0, 0, 0, 0, 0),
    "size-unaligned": (0, 6, 100, 0, 0, 0, 0, 0),
    "ram-too-big": (0, 6, 1 << 30, 0, 0, 0, 0, 0),
    "ram-with-offset": (0, 6, 4096, 0, 0, 0, 0, 4096),
    "unknown-source": (7, 6, 4096, 0, 0, 0, 0, 0),
    "no-such-device": (1, 6, 4096, 0, 0, 0x50, 2, 0),
    "bar-index": (1, 6, 4096, *IVSHMEM, 9, 0),
    "bar-range": (1, 6, 4096, *IVSHMEM, 2, 1 << 20),
    "unsupported-attr": (0, 3, 4096, 0, 0, 0, 0, 0),
}
fd = os.open("/dev/dmattr", os.O_RDWR)
out = {}
for name, req in bad.items():
    try:
        fcntl.ioctl(fd, IOC_SET, REQ.pack(*req))
        out[name] = 0
    except OSError as exc:
        out[name] = errno.errorcode[exc.errno]
try:
    mmap.mmap(fd, 4096)
    out["mmap-before-set"] = 0
except OSError as exc:
    out["mmap-before-set"] = errno.errorcode[exc.errno]
fcntl.ioctl(fd, IOC_SET, REQ.pack(0, 6, 4096, 0, 0, 0, 0, 0))
try:
    mmap.mmap(fd, 8192)
    out["mmap-beyond-source"] = 0
except OSError as exc:
    out["mmap-beyond-source"] = errno.errorcode[exc.errno]
json.dump(out, sys.stdout)
PY
dmesg | grep dmattr: > results/dmesg.txt
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
    proc = run_cli("run", "--kmod", "--ivshmem", "1MiB", "--timeout", "400", "--results", str(res), "--", "sh", "-c", GUEST_SCRIPT,
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


def test_bar_range_through_the_module(kmod_run):
    data = json.loads((kmod_run / "probe-kmod-bar.json").read_text())
    assert data["target"] == "kmod:pci:0000:00:01.0/2"
    assert data["inferred"] == {"device-ngnrne": "device", "device-ngnre": "device", "normal-nc": "normal",
                                "normal": "normal"}


def test_module_rejects_every_bad_request_and_says_why(kmod_run):
    got = json.loads((kmod_run / "ioctl.json").read_text())
    unsupported = errno.errorcode[errno.EOPNOTSUPP]  # ENOTSUP: the same number on Linux
    assert got == {name: "EINVAL" for name in got if name != "unsupported-attr"} | {"unsupported-attr": unsupported}
    assert len(got) == 12
    dmesg = (kmod_run / "dmesg.txt").read_text()
    for why in ("unknown attribute 99", "must be non-zero page multiples", "above the", "takes no offset",
                "unknown source 7", "no PCI device", "bad BAR address", "is outside BAR 2", "device-gre is not expressible",
                "mmap before DMATTR_IOC_SET", "exceeds the 4096-byte source"):
        assert why in dmesg, why

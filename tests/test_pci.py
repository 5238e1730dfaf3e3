"""PCI target error paths on a fake sysfs tree (no mappable BAR exists on this host; the
real path runs in the arm64 guest, tests/test_guest.py)."""
import platform
from pathlib import Path

import pytest

from bench.errors import UserError
from bench.targets import open_target
from bench.targets.pci import parse_spec, realised_type
from conftest import assert_one_line_error, run_cli

MEM, PREF = 0x200, 0x2000


def make_dev(root: Path, bdf: str, vendor: int, device: int, bars: dict[int, tuple[int, int]]) -> Path:
    """A device directory: `resource` lines for six BARs, ids, enable, resourceN files."""
    dev = root / bdf
    dev.mkdir(parents=True)
    lines = []
    for i in range(6):
        size, flags = bars.get(i, (0, 0))
        start = 0x10000000 * (i + 1) if size else 0
        lines.append(f"0x{start:016x} 0x{start + size - 1 if size else 0:016x} 0x{flags:016x}")
        if size:
            (dev / f"resource{i}").write_bytes(bytes(size))
            if flags & PREF:
                (dev / f"resource{i}_wc").write_bytes(bytes(size))
    (dev / "resource").write_text("\n".join(lines) + "\n")
    (dev / "vendor").write_text(f"0x{vendor:04x}\n")
    (dev / "device").write_text(f"0x{device:04x}\n")
    (dev / "enable").write_text("0\n")
    return dev


@pytest.fixture
def sysfs(tmp_path, monkeypatch):
    root = tmp_path / "devices"
    make_dev(root, "0000:00:01.0", 0x1AF4, 0x1110, {2: (1 << 20, MEM | PREF)})            # ivshmem
    make_dev(root, "0000:00:02.0", 0x15B3, 0x101D, {0: (1 << 16, MEM), 2: (1 << 20, MEM | PREF)})  # a NIC
    monkeypatch.setenv("DMTBENCH_SYSFS_PCI", str(root))
    return root


def test_parse_spec():
    assert parse_spec("pci:00:01.0/2") == ("0000:00:01.0", 2)
    assert parse_spec("pci:0001:3A:00.1/0") == ("0001:3a:00.1", 0)
    with pytest.raises(UserError, match="bad PCI target"):
        parse_spec("pci:0000:00:01.0")


def test_scratch_device_gives_both_sysfs_types_and_enables(sysfs):
    t = open_target("pci:0000:00:01.0/2")
    assert t.attrs() == ["device-ngnre", "normal-nc"]
    m = t.open("normal-nc", 4096)
    assert m.writable and "resource2_wc" in m.realised
    m.close()
    assert (sysfs / "0000:00:01.0" / "enable").read_text().strip() == "1"


def test_register_bar_needs_explicit_flags(sysfs):
    t = open_target("pci:0000:00:02.0/0")
    with pytest.raises(UserError, match="--allow-writes"):
        t.check_access("device-ngnre", reads=False, writes=True)
    with pytest.raises(UserError, match="--allow-reads"):
        t.check_access("device-ngnre", reads=True, writes=False)
    open_target("pci:0000:00:02.0/0", allow_reads=True).check_access("device-ngnre", reads=True, writes=False)
    assert not open_target("pci:0000:00:02.0/0", allow_reads=True).open("device-ngnre", 4096).writable


def test_no_permission(sysfs, monkeypatch):
    import os

    def deny(*a, **k):
        raise PermissionError(13, "Permission denied")

    t = open_target("pci:0000:00:01.0/2")
    monkeypatch.setattr(os, "open", deny)
    with pytest.raises(UserError, match="no permission .* run as root"):
        t.open("device-ngnre", 4096)


@pytest.mark.parametrize("args,needles", [
    (["--target", "pci:0000:00:09.0/2"], ["no PCI device 0000:00:09.0"]),
    (["--target", "pci:0000:00:01.0/4"], ["no memory BAR 4", "[2]"]),
    (["--target", "pci:0000:00:01.0/7"], ["no memory BAR 7"]),
    (["--target", "pci:0000:00:02.0/0", "--attr", "normal-nc", "--allow-reads"], ["not prefetchable"]),
    (["--target", "pci:0000:00:02.0/0", "--attr", "device-gre", "--allow-reads"], ["kmod"]),
    (["--target", "pci:0000:00:01.0/2", "--workload", "read-bw", "--size", "2MiB"], ["smaller --size"]),
    (["--target", "pci:0000:00:02.0/2", "--workload", "write-bw", "--allow-reads"], ["--allow-writes"]),
    (["--target", "pci:0000:00:02.0/2", "--workload", "read-bw"], ["--allow-reads"]),
    (["--target", "pci:nonsense"], ["bad PCI target"]),
])
def test_bad_pci_input_is_one_line(sysfs, tmp_path, args, needles):
    proc = run_cli("run", *args, "--results-dir", str(tmp_path / "r"), env={"DMTBENCH_SYSFS_PCI": str(sysfs)})
    assert_one_line_error(proc, 2, *needles)


def test_probe_refuses_register_bar_without_flag(sysfs):
    proc = run_cli("probe", "--target", "pci:0000:00:02.0/0", env={"DMTBENCH_SYSFS_PCI": str(sysfs)})
    assert_one_line_error(proc, 2, "--allow-reads")


def test_targets_lists_scratch_bars_only(sysfs):
    proc = run_cli("targets", env={"DMTBENCH_SYSFS_PCI": str(sysfs)})
    assert "pci:0000:00:01.0/2: ivshmem shared memory" in proc.stdout and "0000:00:02.0" not in proc.stdout


BAR2 = 0x30000000  # where make_dev puts BAR 2


def pat_list(tmp_path, monkeypatch, *lines: str):
    path = tmp_path / "pat_memtype_list"
    path.write_text("".join(f"PAT: [mem 0x{s:016x}-0x{e:016x}] {t}\n" for s, e, t in lines))
    monkeypatch.setenv("DMTBENCH_PAT_MEMTYPE_LIST", str(path))


@pytest.mark.parametrize("attr,pat", [("normal-nc", "write-combining"), ("device-ngnre", "uncached-minus")])
def test_x86_type_is_read_back_from_pat(sysfs, tmp_path, monkeypatch, attr, pat):
    # A reservation of another range (here: one page further) is not ours and is ignored.
    pat_list(tmp_path, monkeypatch, (BAR2, BAR2 + 4096, pat), (BAR2 + 4096, BAR2 + 8192, "uncached-minus"))
    assert realised_type(attr, BAR2, 4096, machine="x86_64") == f"PAT {pat}, read back from pat_memtype_list"


def test_x86_downgraded_wc_is_refused_not_recorded_as_wc(sysfs, tmp_path, monkeypatch):
    # PAT turns a WC request into UC- when a UC- reservation of the range exists.
    pat_list(tmp_path, monkeypatch, (BAR2, BAR2 + 4096, "uncached-minus"))
    with pytest.raises(UserError, match="PAT gave uncached-minus .* not the write-combining that normal-nc asks"):
        realised_type("normal-nc", BAR2, 4096, machine="x86_64")
    proc = run_cli("run", "--target", "pci:0000:00:01.0/2", "--attr", "normal-nc", "--workload", "read-bw",
                   "--size", "4KiB", "--results-dir", str(tmp_path / "r"),
                   env={"DMTBENCH_SYSFS_PCI": str(sysfs), "DMTBENCH_PAT_MEMTYPE_LIST": str(tmp_path / "pat_memtype_list")})
    if platform.machine() == "x86_64":
        assert_one_line_error(proc, 2, "PAT gave uncached-minus")


def test_x86_type_is_recorded_as_requested_when_pat_cannot_be_read(tmp_path, monkeypatch):
    monkeypatch.setenv("DMTBENCH_PAT_MEMTYPE_LIST", str(tmp_path / "absent"))
    assert realised_type("normal-nc", BAR2, 4096, machine="x86_64").startswith("PAT write-combining as requested; not read back")
    pat_list(tmp_path, monkeypatch)
    assert "as requested; no reservation" in realised_type("normal-nc", BAR2, 4096, machine="x86_64")
    assert realised_type("normal-nc", BAR2, 4096, machine="aarch64") == "stage-1 normal-nc"

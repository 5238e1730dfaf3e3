"""guestkit pieces that need no boot: the QEMU argv, the cpio writer, the record parser,
the backports source derivation, and bad input."""
import io
import shutil
import subprocess
from pathlib import Path

import pytest

from bench.errors import UserError
from conftest import assert_one_line_error, run_cli
from guestkit import apt, frames
from guestkit.cpio import CpioWriter
from guestkit.launch import Receiver
from guestkit.qemu import GuestConfig, get_arch


def test_arm64_tcg_argv_models_alignment_faults(tmp_path):
    cfg = GuestConfig(Path("/k"), Path("/i"), ivshmem_file=tmp_path / "shm", ivshmem_bytes=1 << 20)
    argv = get_arch("arm64").argv(cfg)
    assert argv[0] == "qemu-system-aarch64"
    joined = " ".join(argv)
    assert "-cpu max" in joined and "-smp 2" in joined and "-nic none" in joined and "thread=multi" in joined
    assert "dmtbench.emulated=1" in argv[argv.index("-append") + 1]
    assert "ivshmem-plain,memdev=ivshmem0,bus=pcie.0,addr=0x1" in argv
    assert any(a.startswith("memory-backend-file") and "share=on" in a for a in argv)


def test_kvm_refused_on_foreign_host():
    with pytest.raises(UserError, match="--accel tcg"):
        get_arch("arm64").argv(GuestConfig(Path("/k"), Path("/i"), accel="kvm"))


def test_vfio_device_in_argv():
    argv = get_arch("x86_64").argv(GuestConfig(Path("/k"), Path("/i"), vfio=("0000:01:00.0",)))
    assert "vfio-pci,host=0000:01:00.0,rombar=0,bus=pcie.0,addr=0x1" in argv and "console=ttyS0" in " ".join(argv)


@pytest.mark.skipif(shutil.which("cpio") is None, reason="needs the cpio tool")
def test_cpio_is_readable_by_cpio_tool(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_bytes(b"hello")
    (tmp_path / "d" / "l").symlink_to("f")
    buf = io.BytesIO()
    w = CpioWriter(buf)
    w.add_tree(tmp_path / "d", "top")
    w.close()
    assert len(buf.getvalue()) % 512 == 0
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(["cpio", "-idm", "--quiet"], input=buf.getvalue(), cwd=out, check=True)
    assert (out / "top/f").read_bytes() == b"hello" and (out / "top/l").readlink() == Path("f")


def _record(rel: str, data: bytes) -> str:
    return frames.encode("file", rel, data)


def _feed(rx: Receiver, *texts: str) -> list:
    return [item for text in texts for item in rx.feed(text)] + rx.finish()


def test_receiver_writes_verified_files_and_settles_partials(tmp_path):
    rx = Receiver(tmp_path)
    shown = _feed(rx, "boot\n", _record("m/a.json", b"{1}"), _record("m/.b.json.partial", b"{2}"),
                  _record("../evil", b"x"), frames.encode("exit", "0", b""))
    assert shown[0] == ("err", "boot\n") and rx.exit_code == 0
    assert (tmp_path / "m/a.json").read_bytes() == b"{1}"
    assert not (tmp_path.parent / "evil").exists() and "outside results/" in rx.errors[0]
    kept = rx.settle()
    assert (tmp_path / "m/b-partial.json").read_bytes() == b"{2}" and len(kept) == 2


def test_receiver_gives_the_command_stdout_back_exactly(tmp_path):
    # The command's stdout (records of kind out) alone goes to stdout, with its own line
    # ends; its stderr and the kernel's lines go to stderr.
    rx = Receiver(tmp_path)
    items = _feed(rx, frames.encode("out", "", b'{"a": 1,\n'), "[   3.1] reboot: Power down\r\n",
                  frames.encode("err", "", b"warn\n"), frames.encode("out", "", b' "b": 2}'))
    assert "".join(t for s, t in items if s == "out") == '{"a": 1,\n "b": 2}'
    assert [t for s, t in items if s == "err"] == ["[   3.1] reboot: Power down\n", "warn\n"]


def test_receiver_ignores_firmware_escapes(tmp_path):
    rx = Receiver(tmp_path)
    assert _feed(rx, "\x1bc\x1b[?7l\x1b[2J" + frames.encode("ready", "", b"2.7")) == [] and rx.ready_at is not None
    assert _feed(rx, "\x1b[2J" + frames.encode("exit", "3", b"")) == [] and rx.exit_code == 3


def test_receiver_rejects_damaged_record(tmp_path):
    rx = Receiver(tmp_path)
    text = _record("x.json", b"payload")
    _feed(rx, text.replace("cGF5bG9hZA", "cGF5bG9hZQ"), frames.encode("exit", "0", b""))
    assert not (tmp_path / "x.json").exists() and rx.exit_code == 0
    assert rx.errors == ["record 0 (chunk 0): a record line failed its checksum"]


def test_backports_source_derived_from_configured_mirror(tmp_path, monkeypatch):
    d = tmp_path / "sources.list.d"
    d.mkdir()
    (d / "debian.sources").write_text("Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n"
                                      "Components: main\nSigned-By: /usr/share/keyrings/k.gpg\n\n"
                                      "Types: deb\nURIs: http://sec.example/debian-security\nSuites: bookworm-security\n")
    monkeypatch.setattr(apt, "SOURCES_DIR", d)
    monkeypatch.setattr(apt, "BACKPORTS_FILE", d / "dmtbench-backports.sources")
    monkeypatch.setattr(apt, "update", lambda: None)
    assert apt.ensure_backports() == "bookworm-backports"
    text = (d / "dmtbench-backports.sources").read_text()
    assert "URIs: http://mirror.example/debian\n" in text and "Signed-By: /usr/share/keyrings/k.gpg" in text


@pytest.mark.parametrize("args,needles", [
    (["run"], ["no command"]),
    (["run", "--ivshmem", "1000", "--", "true"], ["power of two"]),
    (["run", "--accel", "kvm", "--", "true"], ["--accel tcg"]),
    (["run", "--arch", "arm64", "--ivshmem", "big", "--", "true"], ["bad size"]),
])
def test_guestkit_bad_input(args, needles):
    assert_one_line_error(run_cli(*args, module="guestkit"), 2, *needles)


def test_kvm_host_argv_boots_at_el2_with_smmu_and_its():
    argv = get_arch("arm64").argv(GuestConfig(Path("/k"), Path("/i"), kvm_host=True))
    assert argv[argv.index("-M") + 1] == "virt,virtualization=on,iommu=smmuv3,gic-version=3"
    assert "-smp" in argv and argv[argv.index("-smp") + 1] == "2"  # alignment faults need MTTCG
    with pytest.raises(UserError, match="arm64 only"):
        get_arch("x86_64").argv(GuestConfig(Path("/k"), Path("/i"), kvm_host=True))


def test_kvm_host_on_x86_is_one_line_error(tmp_path):
    proc = run_cli("run", "--arch", "x86_64", "--kvm-host", "--results", str(tmp_path), "--", "true", module="guestkit")
    assert_one_line_error(proc, 2, "arm64 only")

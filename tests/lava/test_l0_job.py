"""guestkit.lava.l0_image / l0_device / l0_job / l0_run without a boot: the merged archive as
GNU cpio reads it, `lava-run --validate` of every job kind, and the bad-input lines."""
from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import assert_one_line_error, run_cli
from lavafix import lava_ready  # noqa: F401  (a fixture)

from guestkit.cpio import CpioWriter
from guestkit.lava import l0_device, l0_image, l0_job


def archive(entries: list[tuple[str, str, bytes]]) -> bytes:
    buf = io.BytesIO()
    w = CpioWriter(buf)
    for kind, name, data in entries:
        if kind == "dir":
            w.add_dir(name)
        elif kind == "link":
            w.add_symlink(name, data.decode())
        else:
            w.add_file(name, data, 0o755 if name == "init" else 0o644)
    w.close()
    return buf.getvalue()


def test_one_archive_that_gnu_cpio_reads_whole(tmp_path):
    base = tmp_path / "base.cpio"
    base.write_bytes(archive([("dir", "bin", b""), ("file", "bin/busybox", b"\x7fELF fake"),
                              ("link", "bin/sh", b"busybox"), ("file", "init", b"#!/bin/sh\nguestkit agent\n")]))
    overlay = archive([("dir", "dmtbench", b""), ("dir", "dmtbench/bench", b""),
                       ("file", "dmtbench/bench/__init__.py", b"x = 1\n")])
    merged = l0_image.merged(base, overlay, "qemu-arm64-tcg", [["insmod", "/dmtbench/a.ko"]], {"K": "v w"})
    listed = subprocess.run(["cpio", "-t"], input=merged, capture_output=True, check=True).stdout.decode().split()
    assert listed == ["bin", "bin/busybox", "bin/sh", "init", "dmtbench", "dmtbench/bench",
                      "dmtbench/bench/__init__.py", "dmtbench/machine", l0_image.SETUP]
    out = tmp_path / "x"
    out.mkdir()
    subprocess.run(["cpio", "-idm", "--quiet"], input=merged, cwd=out, check=True)
    init = (out / "init").read_text()
    assert "guestkit agent" not in init and l0_image.PROMPT in init and "export K='v w'" in init
    assert os.access(out / "init", os.X_OK) and os.readlink(out / "bin" / "sh") == "busybox"
    assert (out / "dmtbench/machine").read_text() == "qemu-arm64-tcg\n"
    assert (out / l0_image.SETUP).read_text() == "insmod /dmtbench/a.ko\n"


def test_concatenated_archives_lose_the_overlay_for_gnu_cpio():
    """Why the image is merged: GNU cpio stops at the first trailer."""
    two = archive([("file", "init", b"x")]) + archive([("dir", "dmtbench", b"")])
    listed = subprocess.run(["cpio", "-t"], input=two, capture_output=True, check=True).stdout.decode().split()
    assert listed == ["init"]


def test_a_truncated_base_is_one_error(tmp_path):
    bad = tmp_path / "base.cpio"
    bad.write_bytes(b"not a cpio archive at all" * 10)
    with pytest.raises(Exception, match="not a newc cpio archive"):
        l0_image.merged(bad, archive([]), "m", [], {})


def test_device_dictionary_puts_the_nic_at_slot_1():
    ctx = l0_job.context(l0_job.JobSpec("kvmhost"), "/dev/shm/x")
    dev = l0_device.qemu(ctx)
    params = dev["actions"]["boot"]["methods"]["qemu"]["parameters"]
    assert params["command"] == "qemu-system-aarch64"
    assert any(o.startswith("-net nic,model=virtio") for o in params["options"])
    assert "-machine virt,virtualization=on,iommu=smmuv3,gic-version=3" in params["options"]
    assert any("addr=0x2" in o for o in params["extra"]) and l0_job.IVSHMEM_BDF == "0000:00:02.0"
    assert ctx.as_job_context()["extra_options"] == params["extra"]


@pytest.fixture(scope="module")
def jobs(tmp_path_factory, lava_ready) -> dict[str, Path]:  # noqa: F811
    """One written job of each kind (kvmhost and server on the 6.12 host kernel)."""
    root = tmp_path_factory.mktemp("jobs")
    out = {}
    for kind, extra in (("emulated", ["--fast"]), ("kvmhost", ["--kernel", "6.12"]), ("server", ["--kernel", "6.12"])):
        proc = run_cli("lava", "job", "--kind", kind, *extra, "--probe", "load8", "-o", str(root / kind),
                       module="guestkit", timeout=900)
        assert proc.returncode == 0, proc.stderr
        out[kind] = root / kind
    return out


@pytest.mark.parametrize("kind", l0_job.KINDS)
def test_lava_run_validates_every_kind(jobs, kind):
    proc = run_cli("lava", "run", "--validate", str(jobs[kind]), module="guestkit", timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "is valid" in proc.stderr


def test_a_server_job_runs_only_in_a_lab(jobs):
    proc = run_cli("lava", "run", str(jobs["server"]), module="guestkit")
    assert_one_line_error(proc, 2, "server job")


def test_a_job_lava_rejects_is_its_message(jobs, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "device.yaml").write_text((jobs["emulated"] / "device.yaml").read_text())
    text = (jobs["emulated"] / "job.yaml").read_text()
    (bad / "job.yaml").write_text(text.replace("method: qemu", "method: no-such-boot"))
    proc = run_cli("lava", "run", str(bad), module="guestkit", timeout=120)
    line = assert_one_line_error(proc, 2, "LAVA rejected")
    assert "no-such-boot" in line or "boot" in line.lower()


def test_dispatcher_missing(jobs):
    proc = subprocess.run([sys.executable, "-m", "guestkit", "lava", "run", str(jobs["emulated"])],
                          env={**os.environ, "PATH": ""}, capture_output=True, text=True, timeout=60, check=False)
    assert_one_line_error(proc, 2, "guestkit deps --lava")


def test_not_a_job(tmp_path):
    proc = run_cli("lava", "run", str(tmp_path), module="guestkit")
    assert_one_line_error(proc, 2, "no LAVA job")

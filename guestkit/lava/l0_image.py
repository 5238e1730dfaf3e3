"""L0: the LAVA guest's initramfs: ONE newc archive (base + suite + job), with a shell on the console.

Why one archive: guestkit's own boots hand the kernel two concatenated cpio archives (the
cached base, then a per-run overlay), which the kernel unpacks in turn.  LAVA instead
unpacks the ramdisk with GNU cpio, adds its test overlay and packs it again, and GNU cpio
stops at the first archive's TRAILER!!!: none of the overlay's /dmtbench entries would
survive.  So the base's entries are copied into a new archive, the overlay's after them,
with a single trailer.

Why another /init: LAVA drives the guest through a shell on the console (it waits for a
prompt, then types the test runner's commands), where guestkit's /init runs its agent
and powers off.  This /init mounts the same file systems, runs the job's setup commands
(modules, the vfio-pci bind of kind b), names the host for results/<machine>/ and then
gives LAVA a root shell with the suite's environment.
"""
from __future__ import annotations

import io
import shlex
import shutil
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from bench.errors import UserError
from guestkit.cpio import CpioWriter
from guestkit.image import MOUNTS

PROMPT = "dmtbench-lava# "
# LAVA waits for the kernel's start message before the prompt; with `quiet` the kernel
# prints no banner, so /init announces itself and the job names this line instead.
START = "dmtbench-lava: /init on Linux"
PYTHONPATH = "/dmtbench:/dmtbench/site:/usr/lib/python3/dist-packages"
SETUP = "dmtbench/lava-setup.sh"
LAYOUT = 1  # bump when base_prefix() changes what it keeps of the base
INIT = """#!/bin/busybox sh
# dmtbench's /init for LAVA (guestkit.lava.l0_image): a root shell on the console.
""" + MOUNTS + """/bin/busybox echo "{start} $(/bin/busybox uname -r)"
/bin/busybox --install -s /bin
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root PYTHONPATH={pythonpath}
{env}
hostname "$(cat /dmtbench/machine)"
sh /{setup} > /tmp/lava-setup.log 2>&1 || echo "dmtbench: setup failed, see /tmp/lava-setup.log"
export PS1='{prompt}'
cd /root
exec setsid cttyhack sh
"""


@dataclass(frozen=True)
class Entry:
    """One newc entry: its name, mode (type and permissions), mtime and contents."""

    name: str
    mode: int
    mtime: int
    data: bytes


def entries(src: BinaryIO) -> Iterator[Entry]:
    """The entries of one newc archive up to its trailer (what GNU cpio reads too)."""
    while True:
        header = src.read(110)
        if len(header) < 110 or header[:6] not in (b"070701", b"070702"):
            raise UserError("the base initramfs is not a newc cpio archive: rebuild it with 'python -m guestkit deps'")
        fields = [int(header[6 + 8 * i:14 + 8 * i], 16) for i in range(13)]
        mode, mtime, size, namesize = fields[1], fields[5], fields[6], fields[11]
        name = src.read(namesize)[:-1].decode()
        src.read(-(110 + namesize) % 4)
        data = src.read(size)
        src.read(-size % 4)
        if name == "TRAILER!!!":
            return
        yield Entry(name, mode, mtime, data)


def copy_entry(w: CpioWriter, e: Entry) -> None:
    """Write one entry as CpioWriter writes its own (directories, files, symlinks)."""
    kind = stat.S_IFMT(e.mode)
    if kind == stat.S_IFDIR:
        w.add_dir(e.name, stat.S_IMODE(e.mode))
    elif kind == stat.S_IFLNK:
        w.add_symlink(e.name, e.data.decode())
    elif kind == stat.S_IFREG:
        w.add_file(e.name, e.data, stat.S_IMODE(e.mode))
    else:
        raise UserError(f"the base initramfs holds {e.name!r} of a type this image does not copy ({kind:o})")


def init_script(env: dict[str, str]) -> str:
    """The /init text with the job's environment exported."""
    lines = "\n".join(f"export {k}={shlex.quote(v)}" for k, v in sorted(env.items()))
    return INIT.format(pythonpath=PYTHONPATH, env=lines, setup=SETUP, prompt=PROMPT, start=START)


def setup_script(setup: list[list[str]]) -> str:
    """The job's setup commands (argv lists, as guestkit's agent takes them) as a shell script."""
    return "".join(f"{shlex.join(cmd)}\n" for cmd in setup) or "true\n"


def base_prefix(base: Path) -> tuple[Path, int]:
    """The base's entries without its /init and without a trailer, re-encoded once and
    cached beside the base (a job then copies it instead of parsing 60 MB); and how many
    entries it holds (the next inode number follows them)."""
    prefix = base.with_name(f"{base.name}.lava-{LAYOUT}")
    count_file = prefix.with_name(prefix.name + ".count")
    if prefix.exists() and count_file.exists() and prefix.stat().st_mtime >= base.stat().st_mtime:
        return prefix, int(count_file.read_text())
    tmp = prefix.with_name(prefix.name + ".tmp")
    count = 0
    with base.open("rb") as src, tmp.open("wb") as out:
        w = CpioWriter(out)
        for e in entries(src):
            if e.name != "init":
                copy_entry(w, e)
                count += 1
    count_file.write_text(str(count))
    tmp.replace(prefix)
    return prefix, count


def write_merged(dest: Path, base: Path, overlay: bytes, machine: str, setup: list[list[str]],
                 env: dict[str, str]) -> Path:
    """Write one newc archive to dest: base's entries (its /init replaced), then the
    overlay's, then /dmtbench/machine, the setup script and one trailer."""
    prefix, count = base_prefix(base)
    with dest.open("wb") as out:
        with prefix.open("rb") as src:
            shutil.copyfileobj(src, out, 1 << 22)
        w = CpioWriter(out)
        w.ino = count + 1  # inode numbers stay unique across the whole archive
        w.add_file("init", init_script(env).encode(), 0o755)
        for e in entries(io.BytesIO(overlay)):
            copy_entry(w, e)
        w.add_file("dmtbench/machine", f"{machine}\n".encode())
        w.add_file(SETUP, setup_script(setup).encode(), 0o755)
        w.close()
    return dest


def merged(base: Path, overlay: bytes, machine: str, setup: list[list[str]], env: dict[str, str]) -> bytes:
    """write_merged's archive as bytes (for tests and small images)."""
    with tempfile.TemporaryDirectory() as tmp:
        return write_merged(Path(tmp) / "m.cpio", base, overlay, machine, setup, env).read_bytes()


def names(archive: bytes) -> list[str]:
    """The entry names of a newc archive, in order (for tests and checks)."""
    return [e.name for e in entries(io.BytesIO(archive))]

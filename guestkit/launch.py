"""L0: `python -m guestkit run`: boot a guest, run one command, bring results/ back.

Reads the console as it comes and takes the agent's framed records (guestkit.frames) out of
it, whatever the kernel printed in between.  The command's stdout comes back on our stdout
exactly as the command printed it (so `guestkit run -- cmd --json > f.json` gives a JSON
file); its stderr, the guest kernel's lines and our own status lines go to stderr.  File
records from the agent (guestkit/agent.py) are verified and written under the host's
results/ at once, so a guest that hangs and is killed at --timeout still leaves what it had
sent.  A record that does not come back whole is one `guest console:` error of the run.
"""
from __future__ import annotations

import codecs
import os
import re
import selectors
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench import metadata
from bench import results as bench_results
from bench.errors import UserError
from guestkit import frames, image
from guestkit.deps import find_parts
from guestkit.paths import arch_cache
from guestkit.qemu import Arch, GuestConfig

TIMEOUT_EXIT = 124
# Firmware (SeaBIOS on x86) clears the screen with escape sequences that can prefix the
# agent's first line; they are dropped before a line is parsed.
_ESCAPES = re.compile(r"\x1b(?:\[[0-9;?]*[A-Za-z]|.)")
# QEMU's line when KVM_RUN fails (e.g. -EFAULT after a stage-2 fault the host's KVM cannot
# handle).  QEMU then pauses the VM instead of exiting, so the line itself ends the boot.
KVM_FAILED = re.compile(r"kvm run failed")
VM_KILLED_EXIT = 4


class VmKilled(UserError):
    """The host's KVM stopped the guest (QEMU said `kvm run failed`); `line` is what it said."""

    def __init__(self, line: str, kept: int) -> None:
        super().__init__(f"the host's KVM killed the VM ({line.strip()}); kept {kept} result file(s); "
                         "the host kernel log says why", code=VM_KILLED_EXIT)
        self.line = line.strip()


Shown = tuple[str, str]  # (stream: "out" | "err", text including its line end)


def show(item: Shown) -> None:
    """Write one console item where it belongs: the command's stdout to stdout, the rest to stderr."""
    stream = sys.stdout if item[0] == "out" else sys.stderr
    stream.write(item[1])
    stream.flush()


def status(text: str) -> None:
    """guestkit's own lines: never on stdout, which is the guest command's."""
    print(text, file=sys.stderr, flush=True)


class ProtocolError(UserError):
    """Records the guest sent did not all come back whole (guestkit.frames): an error of the
    run; `exit_code` is the command's, when it came back."""

    def __init__(self, errors: list[str], exit_code: int | None, kept: int) -> None:
        more = f" (and {len(errors) - 1} more above)" if len(errors) > 1 else ""
        super().__init__(f"guest console: {errors[0]}{more}; kept {kept} intact result file(s)", code=3)
        self.exit_code = exit_code


@dataclass
class Receiver:
    """Takes the agent's records out of the console stream (guestkit.frames) and writes the files."""

    results: Path
    received: list[Path] = field(default_factory=list)
    exit_code: int | None = None
    ready_at: float | None = None
    killed: str | None = None  # QEMU's `kvm run failed` line, once seen
    decoder: frames.Decoder = field(default_factory=frames.Decoder)
    problems: list[str] = field(default_factory=list)  # what went wrong with records, beyond the decoder's errors

    def feed(self, text: str) -> list[Shown]:
        """Consume a piece of the console stream; returns what is for the user to see:
        the command's stdout and stderr as it printed them, the kernel's lines on stderr."""
        return self._shown(self.decoder.feed_items(text))

    def finish(self) -> list[Shown]:
        """End of the console stream: what the decoder still held."""
        return self._shown(self.decoder.finish())

    @property
    def errors(self) -> list[str]:
        """Every record that did not come back whole, and every bad record."""
        return self.decoder.errors + self.problems

    def _shown(self, items: list[frames.Record | str]) -> list[Shown]:
        shown: list[Shown] = []
        for item in items:
            if isinstance(item, str):
                text = _ESCAPES.sub("", item)
                if text:
                    shown.append(("err", text + "\n"))
            elif (one := self._record(item)) is not None:
                shown.append(one)
        return shown

    def _record(self, rec: frames.Record) -> Shown | None:
        if rec.kind in ("out", "err"):
            return rec.kind, rec.data.decode(errors="replace")
        if rec.kind == "file":
            self._write(rec.name, rec.data)
        elif rec.kind == "exit":
            try:
                self.exit_code = int(rec.name)
            except ValueError:
                self.problems.append(f"exit record with code {rec.name!r}")
                return None
            return ("err", rec.data.decode(errors="replace") + "\n") if rec.data else None
        elif rec.kind == "ready":
            self.ready_at = time.monotonic()
        return None

    def qemu_says(self, line: str) -> Shown:
        """One line of QEMU's own stderr (never the guest's console): shown, and watched for
        the KVM failure that leaves the VM paused."""
        if self.killed is None and KVM_FAILED.search(line):
            self.killed = line
        return "err", line + "\n"

    def _write(self, rel: str, data: bytes) -> None:
        try:
            dest = frames.save(self.results, rel, data, "recv")
        except ValueError:
            self.problems.append(f"file record {rel!r} points outside results/; not written")
            return
        if dest not in self.received:
            self.received.append(dest)

    def settle(self) -> list[Path]:
        """Pair partial files with their finals: a finished run drops its partial, an
        unfinished one is kept as <name>-partial.json (bench.results' convention)."""
        kept = []
        for path in self.received:
            if not path.exists():
                continue
            if path.name.startswith(".") and path.name.endswith(".partial"):
                final = path.with_name(path.name[1:].removesuffix(".partial"))
                if final.exists():
                    path.unlink()
                    continue
                path = bench_results.finalise(path, final, complete=False)
            if path:  # None: the guest died before a worker had finished
                kept.append(path)
        return kept


def _job_initrd(arch: Arch, base: Path, job: dict, extra: dict[str, bytes] | None) -> Path:
    overlay = image.build_job(arch, arch_cache(arch.name), job, extra)
    fd, path = tempfile.mkstemp(prefix="initrd-", suffix=".cpio", dir=arch_cache(arch.name))
    with os.fdopen(fd, "wb") as out, base.open("rb") as src:
        while chunk := src.read(1 << 22):
            out.write(chunk)
        out.write(overlay)
    return Path(path)


def run(arch: Arch, argv: list[str], *, accel: str, timeout: float, results: Path, machine: str,
        ivshmem_file: Path | None = None, ivshmem_bytes: int = 0, vfio: tuple[str, ...] = (),
        memory_mb: int = 1024, show_command: bool = False, echo=show,
        extra: dict[str, bytes] | None = None, setup: list[list[str]] | None = None,
        kernel: Path | None = None, kvm_host: bool = False, rx: Receiver | None = None,
        cpu_model: str = "max") -> int:
    """Boot, run argv in the guest, stream results back; returns the command's exit code.
    `kernel` replaces the default guest kernel image (the initramfs is the same); pass
    `rx` to see afterwards which result files came back."""
    parts = find_parts(arch)
    job = {"argv": argv, "machine": machine, "setup": setup or [],
           "env": {"DMTBENCH_COMMIT": metadata.git_commit()}}
    initrd = _job_initrd(arch, parts.base, job, extra)
    try:
        cfg = GuestConfig(kernel or parts.kernel, initrd, accel=accel, memory_mb=memory_mb, ivshmem_file=ivshmem_file,
                          ivshmem_bytes=ivshmem_bytes, vfio=vfio, kvm_host=kvm_host,
                          cpu_model=cpu_model)
        qemu_argv = arch.argv(cfg)
        if show_command:
            status(" ".join(qemu_argv))
        return _boot(qemu_argv, timeout, rx or Receiver(results), echo)
    finally:
        initrd.unlink(missing_ok=True)


def _boot(qemu_argv: list[str], timeout: float, rx: Receiver, echo) -> int:
    t0 = time.monotonic()
    try:
        proc = subprocess.Popen(qemu_argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
    except FileNotFoundError:
        raise UserError(f"{qemu_argv[0]} not found: run 'python -m guestkit deps'") from None
    timed_out = _pump(proc, t0 + timeout, rx, echo)
    for item in rx.finish():
        echo(item)
    kept = rx.settle()
    wall = time.monotonic() - t0
    boot = f", booted in {rx.ready_at - t0:.1f} s" if rx.ready_at else ""
    status(f"guestkit: guest ran {wall:.1f} s{boot}; {len(kept)} result file(s) back: "
           + ", ".join(str(p) for p in kept))
    for error in rx.errors:
        status(f"guestkit: guest console: {error}")
    if rx.killed is not None:
        raise VmKilled(rx.killed, len(kept))
    if timed_out:
        raise UserError(f"guest timed out after {timeout:.0f} s and was killed; kept {len(kept)} result file(s) "
                        "(raise --timeout if it was just slow)", code=TIMEOUT_EXIT)
    if rx.exit_code is None:
        hint = "; if KVM is what failed, retry with --accel tcg" if "kvm" in qemu_argv else ""
        damaged = (f" ({len(rx.decoder.rejected)} damaged record line(s) on the console)"
                   if rx.decoder.rejected else "")
        raise UserError(f"guest stopped (QEMU exit {proc.returncode}) before the command finished{damaged}; "
                        f"see the console output above{hint}", code=3)
    if rx.errors:
        raise ProtocolError(rx.errors, rx.exit_code, len(kept))
    return rx.exit_code


def _pump(proc: subprocess.Popen, deadline: float, rx: Receiver, echo) -> bool:
    """Read the console (QEMU's stdout) and QEMU's own messages (its stderr) until QEMU
    exits or the deadline; True if it timed out.  After `kvm run failed` QEMU is killed and
    both pipes are read to their end, so no console line the guest had sent is lost.  The
    console goes to the record decoder as it comes, in pieces; QEMU's stderr line by line."""
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ, codecs.getincrementaldecoder("utf-8")(errors="replace"))
    sel.register(proc.stderr, selectors.EVENT_READ, None)
    pending = b""
    while sel.get_map():
        left = deadline - time.monotonic()
        if left <= 0:
            proc.kill()
            proc.wait()
            return True
        for key, _ in sel.select(timeout=min(left, 1.0)):
            chunk = os.read(key.fd, 1 << 16)
            if key.data is not None:  # the console
                for item in rx.feed(key.data.decode(chunk, final=not chunk)):
                    echo(item)
            else:
                *lines, pending = (pending + chunk).split(b"\n")
                if not chunk and pending:
                    lines, pending = [pending], b""
                for raw in lines:
                    echo(rx.qemu_says(raw.decode(errors="replace").rstrip("\r")))
            if not chunk:
                sel.unregister(key.fileobj)
        if rx.exit_code is not None and proc.poll() is not None:
            break
        if rx.killed is not None and proc.poll() is None:  # QEMU paused the VM and would wait forever
            proc.kill()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    return False

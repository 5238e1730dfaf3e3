"""L1: boot Debian L2 guests under QEMU/KVM with the BAR passed through, run `bench probe` there.

The stage-2 lab's linux guest, inside the emulated KVM host (L1): boot Debian L2 guests
under QEMU/KVM with the ivshmem BAR passed through (vfio-pci), run `bench probe` through
the pci target there, and survive the host's KVM killing the VM.

Runs as `python3 -m guestkit.lab.l1_l2driver [--probes-only] [--probe NAME]...` in L1, from the
files guestkit.lab.l0_l2image put under /dmtbench/l2 (standard library, bench and guestkit only).
`bench probe --progress` names each probe before it runs and reports it after, so when
QEMU says `kvm run failed` (KVM_RUN returned -EFAULT: a stage-2 fault KVM cannot handle;
QEMU then pauses the VM for ever) guestkit.launch kills QEMU, the running probe is
recorded `killed` with L1's kernel log line as its code, and a fresh L2 runs the probes
not yet recorded.  Each attribute's unaligned probes run after its other probes: once one
of them has killed the VM, the mapping is Device at stage 2 and every other unaligned
access to it would kill the VM the same way, so those are recorded `skip` with the killing
probe and the host's log line as the reason instead of costing one L2 boot each (about
18 s under TCG); --each-kill boots an L2 for every one of them.  Unless --probes-only, the last L2 also makes
a short timing run per attribute whose pyperf files come home like any result.  One run
per attribute, one per L2, each recorded and never retried when killed: `bench run`
infers each mapping's class with an unaligned load, which on a host before 6.9 kills the
L2 on normal-nc.  Everything is written to results/<machine>/<stamp>-lab-<release>-linux-probes.json
after every boot.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench import kvmpolicy, metadata
from bench import results as bench_results
from bench.errors import UserError
from bench.outcomes import probes
from guestkit import launch
from guestkit.cpio import CpioWriter
from guestkit.lab.l1_runner import FAST_SIZE, FAST_WORKLOADS, kernel_log
from guestkit.lab.l1_vmfd import read_foreign
from guestkit.qemu import GuestConfig, get_arch

ROOT = Path("/dmtbench")
L2 = ROOT / "l2"
BDF = "0000:00:01.0"  # ivshmem: bound to vfio-pci in L1 (guestkit.lab.l0_hostboot), the same address in L2
TARGET = f"pci:{BDF}/2"
ATTRS = ("device-ngnre", "normal-nc")  # what the pci target gives: resource2 and resource2_wc
BACKING = "vfio"
L2_MEMORY_MB = 512
# Before the L2 reads its BAR's guest-physical address (line 3 of sysfs `resource`: BAR 2),
# the record says why there is no stage-2 read.
NO_READ = "unavailable: the L2 never reported its BAR address"
L2_CPUS = 1  # one vCPU: L1 has two, and its QEMU threads and kernel need the other
BOOT_TIMEOUT = 300.0  # an L2 that only probes; one that also makes the fast run gets FAST_TIMEOUT
FAST_TIMEOUT = 900.0
_PROBE = re.compile(r"^# probe (\S+) (\S+)$")
_EMULATED = re.compile(r'^(?:\s*"emulated": |# emulated )(true|false),?$')  # bench probe's --progress / --json
_STEP = re.compile(r"^# step-exit (\d+)$")
_FAST = re.compile(r"^# fast-(start|exit) (\S+)(?: (\d+))?$")
_BAR = re.compile(r"^# bar (0x[0-9a-f]+) ")  # the L2's sysfs resource line of BAR 2: start end flags


def unaligned(name: str) -> bool:
    """An unaligned probe: the access a stage-2 Device mapping turns into a VM kill."""
    return name.endswith("-unaligned")


def lab_result(outcome: dict) -> tuple[str, str]:
    """bench probe's (result, code) in the lab's words: a signal in the L2's userspace is a
    `fault` coded like SIGBUS/BUS_ADRALN; ok, skip, hang, stxr-fail... stay as they are."""
    result, code = outcome["result"], outcome.get("code") or ""
    if result.startswith("SIG"):
        return "fault", f"{result}/{code}" if code else result
    return result, code


def kvm_log_line(messages: list[str]) -> str:
    """The host kernel's line about the killed VM (`kvm [pid]: Unsupported FSC: ...`)."""
    kvm = [m for m in messages if "kvm" in m.lower()]
    fsc = [m for m in kvm if "Unsupported FSC" in m]
    return (fsc or kvm or [""])[-1].strip()


class KernelLog:
    """New records of /dev/kmsg since the last mark (L1's own kernel log)."""

    def __init__(self, path: str = "/dev/kmsg") -> None:
        try:
            self.fd: int | None = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        except OSError:
            self.fd = None

    def mark(self) -> None:
        if self.fd is not None:
            os.lseek(self.fd, 0, os.SEEK_END)

    def new(self) -> list[str]:
        """Messages logged since mark() (each record is 'prio,seq,usec,flags;text')."""
        out = []
        while self.fd is not None:
            try:
                record = os.read(self.fd, 8192).decode(errors="replace")
            except BlockingIOError:
                break
            except BrokenPipeError:  # records overwritten while we read: go on with the next
                continue
            if not record:
                break
            out.append(record.split(";", 1)[-1].split("\n", 1)[0])
        return out


@dataclass
class Watch:
    """The echo of one L2 boot: follows the progress lines, forwards the console to stderr."""

    verbose: bool = True
    current: tuple[str, str] | None = None       # the probe announced and not yet reported
    outcomes: list[dict] = field(default_factory=list)
    in_fast: str | None = None                   # the attribute whose fast run is going on
    fast_done: dict[str, tuple[int, float]] = field(default_factory=dict)  # attr -> (exit, seconds)
    step_exits: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    emulated: bool | None = None                 # what the L2's bench probe --json said
    reader: Callable[[int], dict] | None = None  # IPA -> the four stage-2 fields (l1_vmfd.read_foreign)
    bar_ipa: int | None = None                   # where the L2 sees the BAR (its guest-physical address)
    stage2: dict | None = None                   # the read, made once the L2 has touched the BAR
    _fast_t0: float = 0.0

    def __call__(self, item: launch.Shown) -> None:
        stream, text = item
        line = text.rstrip("\n")
        if stream == "out":
            pass  # the fast run's table: its numbers come home in the pyperf files
        elif (m := _PROBE.match(line)) is not None:
            self.current = (m.group(1), m.group(2))
        elif line.startswith("# outcome "):
            self._outcome(line.removeprefix("# outcome "))
        elif (m := _STEP.match(line)) is not None:
            self.step_exits.append(int(m.group(1)))
        elif (m := _FAST.match(line)) is not None:
            self._fast(m.group(1), m.group(2), m.group(3))
        elif (m := _EMULATED.match(line)) is not None:
            self.emulated = m.group(1) == "true"
        elif (m := _BAR.match(line)) is not None:
            self.bar_ipa = int(m.group(1), 16)
        elif line.startswith("error: "):
            self.errors.append(line.removeprefix("error: "))
        if self.verbose and stream == "err":
            sys.stderr.write(f"L2| {text}")
            sys.stderr.flush()

    def _outcome(self, text: str) -> None:
        try:
            outcome = json.loads(text)
        except ValueError:  # another writer (the L2 kernel, QEMU) cut into the line
            self.errors.append(f"unreadable progress line {text!r}")
            return
        self.outcomes.append(outcome)
        self.current = None
        if self.stage2 is None and self.bar_ipa is not None and self.reader:
            # A probe has touched the BAR, so KVM's fault path mapped it at stage 2: read it
            # now, while the VM is alive (a later probe may kill it).
            self.stage2 = self.reader(self.bar_ipa)

    def _fast(self, when: str, attr: str, code: str | None) -> None:
        if when == "start":
            self.in_fast, self._fast_t0 = attr, time.monotonic()
        else:
            self.in_fast = None
            self.fast_done[attr] = (int(code or 0), time.monotonic() - self._fast_t0)


def probe_commands(remaining: list[tuple[str, str]], all_names: list[str]) -> list[list[str]]:
    """`bench probe` command lines that run exactly `remaining` (attr, probe) in order: one
    per attribute, merged where attributes share the same probe list (`all_names`, every
    probe there is, needs no --probe)."""
    by_attr: dict[str, list[str]] = {}
    for attr, name in remaining:
        by_attr.setdefault(attr, []).append(name)
    groups: list[tuple[list[str], list[str]]] = []
    for attr, names in by_attr.items():
        if groups and groups[-1][1] == names:
            groups[-1][0].append(attr)
        else:
            groups.append(([attr], names))
    cmds = []
    for attrs, names in groups:
        cmd = ["python3", "-m", "bench", "probe", "--target", TARGET, "--json", "--progress"]
        cmd += [f"--attr={a}" for a in attrs]
        cmd += [] if names == all_names else [f"--probe={n}" for n in names]
        cmds.append(cmd)
    return cmds


def fast_command(release: str, attr: str) -> list[str]:
    """The lab's `--fast` run of one attribute through the pci target; the file stem ends
    in -linux-vfio.
    Smaller than pyperf's --fast (which forces 3+ runs per case): one in-process run of a
    warmup and two 20 ms values.  Python runs some 50 times slower in the L2 than on the
    machine and each pyperf worker process is a Python start-up there: as plain `--fast`
    the 12 cases took over ten minutes, in-process `--fast` about 50 s a case."""
    cmd = ["python3", "-m", "bench", "run", "--target", TARGET, "--in-process", "-p", "1", "-n", "2", "-w", "1",
           "--min-time", "0.02", "--size", FAST_SIZE,
           "--label", f"lab-{release}-linux-{BACKING}", "--results-dir", "results"]
    return cmd + [f"--attr={attr}", *[f"--workload={w}" for w in FAST_WORKLOADS]]


def l2_script(probe_cmds: list[list[str]], fast: dict[str, list[str]]) -> str:
    """The L2 job as one shell line, with markers the Watch reads."""
    # The progress lines go straight to the console (bench probe drains it after each), so
    # the announcement of a probe that kills the VM is out before the probe runs.  The JSON
    # stays in the L2 but for its `emulated` line: the nested console is slow, and the agent
    # gives a command's last output only 5 s after it exits.
    parts = [f"echo \"# bar $(sed -n 3p /sys/bus/pci/devices/{BDF}/resource)\" >&2"] if probe_cmds else []
    parts += [f"{shlex.join(c)} >/tmp/probe-{i}.json 2>/dev/console; echo \"# step-exit $?\" >&2; "
              f"grep -m1 '\"emulated\"' /tmp/probe-{i}.json >&2" for i, c in enumerate(probe_cmds)]
    for attr, cmd in fast.items():
        parts.append(f"echo '# fast-start {attr}' >&2; {shlex.join(cmd)}; echo \"# fast-exit {attr} $?\" >&2")
    return "; ".join(parts) or "true"


def write_job(initrd: Path, offset: int, job: dict) -> None:
    """Replace the job overlay at the end of the L2 initramfs (the kernel unpacks the
    concatenated archives in order, so this job.json wins over the suite's placeholder)."""
    with initrd.open("r+b") as f:
        f.seek(offset)
        w = CpioWriter(f)
        w.add_file("dmtbench/job.json", json.dumps(job).encode())
        w.close()
        f.truncate()


@dataclass
class Lab:
    """One L1 boot's worth of L2 boots and what they found."""

    release: str
    names: list[str]
    probes_only: bool
    verbose: bool
    report: dict
    out: Path
    kmsg: KernelLog = field(default_factory=KernelLog)
    each_kill: bool = False                      # one L2 per killed unaligned probe, none inferred
    reader: Callable[[int], dict] | None = read_foreign  # the stage-2 read of the L2's BAR

    def run(self) -> int:
        # Per attribute, the unaligned probes last: the first to kill the VM ends the boot.
        plan = [(a, n) for a in ATTRS for n in sorted(self.names, key=unaligned)]
        recorded: dict[tuple[str, str], dict] = {}
        fast_pending = [] if self.probes_only else list(ATTRS)
        while fast_pending or any(k not in recorded for k in plan):
            remaining = [k for k in plan if k not in recorded]
            # One timing run per L2, last: its exit marker and result file go out through
            # the agent, after the fact, and a next run that killed the VM would lose them.
            scheduled = fast_pending[:1]
            watch, ended = self.boot(remaining, scheduled)
            read = self.keep_read(watch.stage2)
            for o in watch.outcomes:
                result, code = lab_result(o)
                recorded[(o["attr"], o["probe"])] = self.outcome(o["attr"], o["probe"], result, code, read)
            killed = ended.startswith("killed")
            for attr, (code, seconds) in watch.fast_done.items():
                self.report["runs"].append(self.run_entry(attr, code, f"exit {code}", seconds))
            if killed and watch.in_fast:  # recorded, not retried: the next try would die the same way
                self.report["runs"].append(self.run_entry(watch.in_fast, None, ended, None))
            fast_pending = [a for a in fast_pending if a not in watch.fast_done and a != watch.in_fast]
            if killed and watch.current is not None:
                recorded[watch.current] = self.outcome(*watch.current, "killed", ended.removeprefix("killed: "), read)
                if not self.each_kill and unaligned(watch.current[1]):
                    recorded.update(self.not_run_after_kill(plan, recorded, watch.current, ended, read))
            self.save(plan, recorded)
            if killed and (watch.current is not None or watch.in_fast):
                continue  # a fresh L2 for what is left
            if not ended.startswith("exit") or any(k not in recorded for k in remaining) or \
                    any(a in fast_pending for a in scheduled):
                return self.fail(plan, recorded, ended, watch)
        return 0

    def not_run_after_kill(self, plan: list[tuple[str, str]], recorded: dict, killer: tuple[str, str],
                           ended: str, read: dict | None = None) -> dict:
        """The outcomes of the unaligned probes on the mapping a killed one was on: not run,
        and why (the VM they would run in dies the same way: a stage-2 alignment fault)."""
        attr, name = killer
        why = (f"not run: {name} on this mapping killed the VM ({ended.removeprefix('killed: ')}): stage 2 is "
               "Device, so every unaligned access would (lab --each-kill boots an L2 for each)")
        return {(a, n): self.outcome(a, n, "skip", why, read) for a, n in plan
                if a == attr and unaligned(n) and (a, n) not in recorded}

    def keep_read(self, read: dict | None) -> dict | None:
        """One L2's stage-2 read; the backing's record keeps the first that was made."""
        facts = self.report["backings"][BACKING]
        if read and facts.get("stage2_read", NO_READ) == NO_READ:
            facts.update(read)
        return read

    @staticmethod
    def run_entry(attr: str, code: int | None, ended: str, seconds: float | None) -> dict:
        return {"backing": BACKING, "attr": attr, "exit": code, "ended": ended,
                "seconds": None if seconds is None else round(seconds, 1)}

    @staticmethod
    def outcome(attr: str, probe: str, result: str, code: str, read: dict | None = None) -> dict:
        """One probe's record, with the stage-2 read of the L2 it ran in (when one was made)."""
        return {"backing": BACKING, "attr": attr, "probe": probe, "result": result, "code": code, **(read or {})}

    def boot(self, remaining: list[tuple[str, str]], fast: list[str]) -> tuple[Watch, str]:
        """One L2: run `remaining` probes, then the fast runs of `fast`; (its watch, how it ended)."""
        script = l2_script(probe_commands(remaining, [p.name for p in probes()]),
                           {a: fast_command(self.release, a) for a in fast})
        job = {"argv": ["sh", "-c", script], "machine": metadata.machine_name(), "setup": [],
               "env": {"DMTBENCH_COMMIT": metadata.git_commit()}}
        manifest = json.loads((L2 / "manifest.json").read_text())
        write_job(L2 / "initrd.cpio", manifest["initrd_bytes"], job)
        # Nested in an emulated host, the L2's timings are emulated too (accel kvm alone
        # would not say so): the flag metadata.emulated() reads from the kernel cmdline.
        flag = (metadata.EMULATED_FLAG,) if metadata.emulated() else ()
        cfg = GuestConfig(L2 / "Image", L2 / "initrd.cpio", accel="kvm", memory_mb=L2_MEMORY_MB, cpus=L2_CPUS,
                          vfio=(BDF,), cmdline_extra=flag)
        watch = Watch(self.verbose, reader=self.reader)
        rx = launch.Receiver(Path(os.environ.get("DMTBENCH_RESULTS", "results")))
        self.kmsg.mark()
        t0 = time.monotonic()
        try:
            code = launch._boot(get_arch("arm64").argv(cfg), FAST_TIMEOUT if fast else BOOT_TIMEOUT, rx, watch)
            ended = f"exit {code}"
        except launch.VmKilled as exc:
            ended = "killed: " + (kvm_log_line(self.kmsg.new()) or kvm_log_line(kernel_log().splitlines()) or exc.line)
        except UserError as exc:
            ended = f"error: {exc}"
        self.report["l2_boots"] += 1
        self.report["boots"].append({"seconds": round(time.monotonic() - t0, 1), "ended": ended,
                                     "ready_s": round(rx.ready_at - t0, 1) if rx.ready_at else None,
                                     "probes": len(watch.outcomes) + (1 if watch.current else 0)})
        if self.report.get("l2_emulated") is None:
            self.report["l2_emulated"] = watch.emulated
        return watch, ended

    def save(self, plan: list[tuple[str, str]], recorded: dict) -> None:
        self.report["outcomes"] = [recorded[k] for k in plan if k in recorded]
        self.out.write_text(json.dumps(self.report, indent=1))

    def fail(self, plan: list[tuple[str, str]], recorded: dict, ended: str, watch: Watch) -> int:
        """An L2 that ended without finishing and without a probe to blame: say why, stop."""
        why = watch.errors[-1] if watch.errors else ended
        self.report["backings"][BACKING]["error"] = why
        self.save(plan, recorded)
        print(f"l2driver: {why}", file=sys.stderr)
        return 3


def prepare() -> None:
    """Make the inner QEMU runnable: executable, on PATH, its libraries found."""
    (L2 / "bin" / "qemu-system-aarch64").chmod(0o755)
    os.environ["PATH"] = f"{L2 / 'bin'}:{os.environ.get('PATH', '')}"
    os.environ["LD_LIBRARY_PATH"] = str(L2 / "lib")  # only libraries L1's own image lacks


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m guestkit.lab.l1_l2driver", description=__doc__.splitlines()[0])
    p.add_argument("--probes-only", action="store_true", help="no --fast run in the L2")
    p.add_argument("--probe", action="append", default=[], help="probe name (repeatable; default: all)")
    p.add_argument("-q", "--quiet", action="store_true", help="do not forward the L2 console to stderr")
    p.add_argument("--each-kill", action="store_true",
                   help="boot an L2 for every unaligned probe, also after one has killed the VM on that mapping")
    args = p.parse_args(argv)
    names = [pr.name for pr in probes()]
    bad = [n for n in args.probe if n not in names]
    if bad:
        print(f"error: unknown probe {bad[0]!r}: use one of {', '.join(names)}", file=sys.stderr)
        return 2
    release = platform.release()
    results = Path(os.environ.get("DMTBENCH_RESULTS", "results"))
    out = bench_results.default_path(results, metadata.machine_name(), f"lab-{release}-linux-probes")
    out.parent.mkdir(parents=True, exist_ok=True)
    log = kernel_log()
    report = {"host_kernel": release, "guest": "linux", "fwb": kvmpolicy.fwb_from_log(log),
              "kvm": os.path.exists("/dev/kvm"), "el2": "started at EL2" in log, "emulated": metadata.emulated(),
              "l2_emulated": None, "l2_boots": 0, "backings": {BACKING: {"target": TARGET, "stage2_read": NO_READ}},
              "outcomes": [], "runs": [], "boots": []}
    out.write_text(json.dumps(report, indent=1))
    if not report["kvm"]:
        return 0  # the lab reports a host without KVM from the kvm field
    prepare()
    t0 = time.monotonic()
    code = Lab(release, args.probe or names, args.probes_only, not args.quiet, report, out,
               each_kill=args.each_kill).run()
    report["backings"][BACKING]["seconds"] = round(time.monotonic() - t0, 1)
    out.write_text(json.dumps(report, indent=1))
    print(f"l2driver: {release}: {len(report['outcomes'])} outcomes in {report['l2_boots']} L2 boot(s), "
          f"{len(report['runs'])} run(s)")
    return code


if __name__ == "__main__":
    sys.exit(main())

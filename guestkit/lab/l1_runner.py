"""L1: the lab's runner inside one emulated KVM host: every case (probes, timings) of that boot.

Runs as `python3 -m guestkit.lab.l1_runner --mode payload [--probes-only]` in L1 (standard
library and bench only).  For each backing it runs `bench probe` through the `kvm` target
(all seven stage-1 attributes) and, unless --probes-only, one `--fast` run of the lab's
workloads over every timed backing, interleaved round-robin (guestkit.lab.l1_fast); it writes one JSON file of outcomes, tagged with this host's kernel, under
results/<machine>/, where guestkit's agent picks it up.  A backing that fails is recorded
with its reason and the others go on.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from bench import kvmpolicy, memtypes, metadata
from bench import results as bench_results
from bench.errors import UserError

BDF = "0000:00:01.0"  # the ivshmem device guestkit.lab.l0_hostboot binds to vfio-pci
BAR = 2
# Every backing the kvm target has: its BAR through vfio-pci, sysfs resourceN and the
# dmattr module (kmod-*: the GPU-memory stand-in), and plain RAM.
TARGETS = {b: "kvm:ram" if b == "ram" else f"kvm:{b}:{BDF}/{BAR}" for b in kvmpolicy.BACKINGS}
FAST_WORKLOADS = ("write-bw", "read-bw", "wc-burst", "doorbell", "mmio-read", "copy-to")
# kmod-normal is the one module backing timed (the others repeat sysfs's Device): the lab's
# workloads, each paired with the same case on sysfs and vfio in the interleaved run, plus
# the GPU-BAR read-back from cacheable device memory.
FAST_BY_BACKING = {"kmod-normal": ("copy-to", "copy-from")}
NEEDS_MODULE = "kmod-"  # backings that need guestkit's dmattr module in the host
FAST_ATTRS = ("device-ngnre", "normal-nc", "normal")
STAGE2_KEYS = ("stage2_read", "stage2_memattr", "stage2_leaf", "fwb")  # bench.stage2.Stage2Read.metadata()
FAST_SIZE = "64KiB"  # small enough for TCG, larger than any burst
FAST_LABEL = "fast"  # the interleaved timing file: lab-<release>-<mode>-fast.json


def kernel_log() -> str:
    """The kernel log as far as it goes (dmesg is in busybox)."""
    proc = subprocess.run(["dmesg"], capture_output=True, text=True)
    return proc.stdout


def probe_backing(backing: str, attrs: list[str], probes: list[str]) -> dict:
    """`bench probe --json` through the kvm target for one backing, in this process."""
    return probe_json(TARGETS[backing], attrs, probes)


def probe_json(target: str, attrs: list[str], probes: list[str]) -> dict:
    """`bench probe --json` on one target, in this process (a Python start costs seconds
    under TCG); {'error': ...} when the target cannot be had, so the others go on."""
    from bench import probe_cli  # the same code path as the command

    argv = ["--target", target, "--json", *(a for attr in attrs for a in ("--attr", attr)),
            *(a for name in probes for a in ("--probe", name))]
    out, t0 = io.StringIO(), time.monotonic()
    try:
        with contextlib.redirect_stdout(out):
            probe_cli.main(argv)
    except UserError as exc:
        return {"error": str(exc), "seconds": time.monotonic() - t0}
    data = json.loads(out.getvalue())
    data["seconds"] = time.monotonic() - t0
    return data


def fast_workloads(backing: str) -> list[str]:
    """The lab's workloads, plus the backing's own (kmod-normal: copy-from, the GPU read-back)."""
    return list(dict.fromkeys((*FAST_WORKLOADS, *FAST_BY_BACKING.get(backing, ()))))


def fast_run(backings: list[str], results: Path, label: str) -> dict:
    """The lab's `--fast` timings through every backing given, interleaved in this process
    (guestkit.lab.l1_fast says why): one pyperf file in results/, each case's name
    carrying its target and its metadata the backing and its stage-2 read."""
    from guestkit.lab import l1_fast as fast  # imports pyperf and the runner: only when timing

    t0 = time.monotonic()
    entry = {"backing": "+".join(backings), "backings": backings, "rounds": fast.ROUNDS,
             "schedule": "interleaved"}
    try:
        got = fast.run_backings({TARGETS[b]: fast_workloads(b) for b in backings}, list(FAST_ATTRS), FAST_SIZE,
                                label, results)
    except Exception as exc:  # a failure here must not lose the probes already saved
        return {**entry, "seconds": time.monotonic() - t0, "file": None, "failed": [f"{exc}"], "cases": 0}
    return {**entry, "seconds": time.monotonic() - t0, "file": got.file and got.file.name, "failed": got.failed,
            "cases": got.cases}


def module_ok(report: dict) -> bool:
    """Whether dmattr is loaded; if not, the kmod backings are recorded as unavailable
    with the reason guestkit left in /dmtbench (a build failure) or the missing device."""
    if os.path.exists("/dev/dmattr"):
        return True
    why = Path("/dmtbench/dmattr.unavailable")
    reason = why.read_text().strip() if why.exists() else "the dmattr module is not loaded (no /dev/dmattr)"
    for backing in (b for b in TARGETS if b.startswith(NEEDS_MODULE)):
        report["backings"][backing] = {"error": reason}
    return False


def outcomes_of(backing: str, data: dict) -> list[dict]:
    """The probe outcomes of one backing, tagged with it, with the stage-2 descriptor read
    of each probe's VM where the kvm target recorded one (older ones have none: the lab
    says `unavailable: not recorded`)."""
    return [{"backing": backing, **{k: o.get(k) for k in ("attr", "probe", "result", "code")},
             **{k: o[k] for k in STAGE2_KEYS if k in o}} for o in data.get("outcomes", [])]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m guestkit.lab.l1_runner")
    p.add_argument("--mode", default="payload", choices=["payload"])
    p.add_argument("--probes-only", action="store_true")
    p.add_argument("--backing", action="append", default=[], choices=list(TARGETS))
    p.add_argument("--probe", action="append", default=[])
    args = p.parse_args(argv)
    release = platform.release()
    results = Path(os.environ.get("DMTBENCH_RESULTS", "results"))
    out = bench_results.default_path(results, metadata.machine_name(), f"lab-{release}-{args.mode}-probes")
    out.parent.mkdir(parents=True, exist_ok=True)
    report: dict = {"host_kernel": release, "guest": args.mode, "fwb": None, "dic": None,
                    "kvm": os.path.exists("/dev/kvm"), "el2": "started at EL2" in kernel_log(),
                    "emulated": metadata.emulated(), "backings": {}, "outcomes": [], "runs": []}
    module = module_ok(report)  # once: records the kmod backings' reason when it is missing
    backings = [b for b in args.backing or list(TARGETS) if module or not b.startswith(NEEDS_MODULE)]
    save = lambda: out.write_text(json.dumps(report, indent=1))  # noqa: E731  what is done so far survives a hang
    if report["kvm"]:
        for backing in backings:
            data = probe_backing(backing, memtypes.names(), args.probe)
            report["backings"][backing] = {k: v for k, v in data.items() if k != "outcomes"}
            report["outcomes"] += outcomes_of(backing, data)
            for fact in ("fwb", "dic"):  # host CPU facts every kvm backing reports (true/false/unknown)
                if report[fact] is None and data.get(fact) in ("true", "false"):
                    report[fact] = data[fact] == "true"
            save()
        if not args.probes_only:
            timed = [b for b in backings if b in FAST_BY_BACKING or not b.startswith(NEEDS_MODULE)]
            if timed:
                report["runs"].append(fast_run(timed, results, f"lab-{release}-{args.mode}-{FAST_LABEL}"))
                save()
    save()
    print(f"labhost: {release}: {len(report['outcomes'])} outcomes, {len(report['runs'])} runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""L0: `python -m guestkit lab`: boot each host kernel, collect what its KVM gives a guest, print the table.

For each host kernel: one boot of the emulated arm64 KVM host (guestkit.lab.l0_hostboot) with the
ivshmem BAR bound to vfio-pci and guestkit's dmattr module loaded, where guestkit.lab.l1_runner
runs every case of that kernel (probes for every backing under all seven stage-1 attributes,
each VM's stage-2 descriptor read through dmattr, and the `--fast` runs).  Results come home
under results/<machine>/; then one table across kernels (guestkit.lab.l0_table: the stage-2
attribute read per backing, checked against the KVM-policy prediction and the probe class),
the --detail matrix, the --plot picture.  Any disagreement is a MISMATCH line and exit 1.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

import pyperf

from bench import kvmpolicy
from bench.errors import UserError
from guestkit import deps, kernels, launch
from guestkit.lab import l0_hostboot as hostboot, l0_table as table
from guestkit.qemu import get_arch

MACHINE = "qemu-arm64-kvmhost"
# Debian's 6.1, the newest 6.12 it offers for bookworm, and sid's newest: the three eras.
DEFAULT_KERNELS = ("current", "6.12", "sid")
HOST_TIMEOUT = 600.0
IVSHMEM_BYTES = 4 << 20


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m guestkit lab", description=__doc__.splitlines()[0])
    p.add_argument("--host-kernel", action="append", default=[], metavar="V",
                   help="host kernel: Debian version, series (6.1, 6.12, 7.2), 'current', 'sid', or a directory "
                        "with an Image and lib/modules/ (repeatable; default: current 6.1, newest 6.12, sid)")
    p.add_argument("--guest", choices=["payload", "linux"], default="payload",
                   help="payload: the kvm target's tiny VM (default); linux: a Debian L2 guest under QEMU/KVM")
    p.add_argument("--cpu", default="max", metavar="MODEL",
                   help="the emulated host's CPU (default max: FWB, VHE; e.g. cortex-a57: no FWB, nVHE)")
    p.add_argument("--probes-only", action="store_true", help="skip the --fast timing runs")
    p.add_argument("--probe", action="append", default=[], metavar="NAME",
                   help="run only this probe (repeatable; default: all; the table needs the unaligned ones)")
    p.add_argument("--each-kill", action="store_true",
                   help="--guest linux: one L2 boot per unaligned probe even after one killed the VM on that "
                        "mapping (default: the rest are recorded as not run, with the reason)")
    p.add_argument("--json", action="store_true", help="print the outcomes as one JSON object")
    p.add_argument("--detail", action="store_true",
                   help="also print the per-stage-1-attribute matrix (effective type and probe outcome)")
    p.add_argument("--plot", type=Path, metavar="FILE.png",
                   help="draw backings x host kernels, coloured by the stage-2 attribute read")
    p.add_argument("-o", "--results", type=Path, default=Path("results"), help="results root (default ./results)")
    p.add_argument("--timeout", type=float, default=HOST_TIMEOUT, help="seconds per host boot before it is killed")
    p.add_argument("-v", "--verbose", action="store_true", help="show the hosts' consoles")
    # Each host kernel as its own LAVA job (guestkit.lava.l0_lab): the same outcomes and table.
    p.add_argument("--lava", action="store_true", help="run each host kernel as a LAVA job with the local dispatcher")
    p.add_argument("--lava-server", metavar="URL", help="submit the jobs to this LAVA server with lavacli instead")
    p.add_argument("--lava-url-base", metavar="URL", default="", help="with --lava-server: where the lab's workers "
                                                                        "download each job's Image and ramdisk.cpio")
    p.add_argument("--dry-run", action="store_true", help="with --lava-server: write the jobs, submit nothing")
    return p


def check_qemu() -> None:
    arch = get_arch("arm64")
    if (deps.qemu_version(arch.qemu) or (0, 0)) < deps.MIN_QEMU:
        raise UserError(f"the lab needs {arch.qemu} >= {deps.MIN_QEMU[0]}.{deps.MIN_QEMU[1]}: run 'python -m guestkit deps'")
    deps.find_parts(arch)


class Console:
    """Keeps the last lines of a host's console; shows them live with --verbose."""

    def __init__(self, verbose: bool) -> None:
        self.verbose = verbose
        self.tail: deque[str] = deque(maxlen=15)

    def __call__(self, item: launch.Shown) -> None:
        self.tail.append(item[1].rstrip("\n"))
        if self.verbose:
            sys.stderr.write(item[1])


def host_argv(guest: str, probes_only: bool, probes: tuple[str, ...] = (),
              each_kill: bool = False) -> list[str]:
    """The command the emulated host runs (guestkit.lab.l1_runner for the payload mode)."""
    if guest == "linux":
        from guestkit.lab import l0_l2image as l2image

        return l2image.host_argv(probes_only, probes, each_kill)
    return ["python3", "-m", "guestkit.lab.l1_runner", "--mode", guest, *(["--probes-only"] if probes_only else []),
            *[f"--probe={p}" for p in probes]]


def run_host(kernel: kernels.Kernel, args) -> tuple[table.HostReport, int]:
    """Boot one host kernel, run its cases; (report, exit code: 0, 124 on timeout, 3 on failure)."""
    arch = get_arch("arm64")
    job = hostboot.host_job(kernel, bind_ivshmem=True)
    files, setup, memory = dict(job.files), list(job.setup), hostboot.MEMORY_MB
    module = module_files(kernel)
    files.update(module)
    if "dmattr.ko" in module:
        setup.append(["insmod", "/dmtbench/dmattr.ko"])
    if args.guest == "linux":
        from guestkit.lab import l0_l2image as l2image

        extra = l2image.linux_job(kernel)
        files.update(extra.files)
        setup += extra.setup
        memory = extra.memory_mb
    rx, console, code, error = launch.Receiver(args.results), Console(args.verbose), 0, ""
    with tempfile.NamedTemporaryFile(prefix="ivshmem-") as shm:
        shm.truncate(IVSHMEM_BYTES)
        argv = host_argv(args.guest, args.probes_only, tuple(args.probe), args.each_kill)
        try:
            launch.run(arch, argv, accel="tcg", timeout=args.timeout, results=args.results, machine=MACHINE,
                       ivshmem_file=Path(shm.name), ivshmem_bytes=IVSHMEM_BYTES, memory_mb=memory, echo=console,
                       extra=files, setup=setup, kernel=kernel.image, kvm_host=True, rx=rx, cpu_model=args.cpu)
        except UserError as exc:  # incl. launch.ProtocolError: records the console garbled
            code, error = exc.code, str(exc)
        except Exception as exc:  # noqa: BLE001 - one host's failure must not cost the other kernels
            code, error = 3, f"boot failed: {type(exc).__name__}: {exc}"
    report = read_report(kernel.version, args.guest, rx.settle(), error)
    if error or report.error:
        print(f"lab: {kernel.version}: {report.error or error}", file=sys.stderr)
        if console.tail and not args.verbose:
            print("  last console lines:\n    " + "\n    ".join(console.tail), file=sys.stderr)
        code = code or 3
    return report, code


def _host_runner(args):
    """run_host, or its LAVA twin for --lava / --lava-server."""
    if args.lava or args.lava_server:
        from guestkit.lava import l0_lab

        return l0_lab.run_host
    return run_host


def module_files(kernel: kernels.Kernel) -> dict[str, bytes]:
    """dmattr built for this host kernel (cached), or the reason it could not be: then
    only the kmod backings are unavailable and the rest of the lab goes on."""
    from guestkit import kmod

    try:
        return {"dmattr.ko": kmod.build(get_arch("arm64"), kernel.version).read_bytes()}
    except UserError as exc:
        print(f"lab: {kernel.version}: kmod backings unavailable: {exc}", file=sys.stderr)
        return {"dmattr.unavailable": f"dmattr could not be built for {kernel.version}: {exc}".encode()}


def read_report(version: str, guest: str, files: list[Path], error: str) -> table.HostReport:
    """The host's probe file and fast-run files, as a HostReport."""
    probes = [p for p in files if p.name.endswith("-probes.json")]
    if not probes:
        return table.HostReport(version, guest, None, (), {}, error or "the host sent no probe results")
    data = json.loads(probes[-1].read_text())
    medians = {}
    for path in files:
        backing = next((b for b in kvmpolicy.BACKINGS if path.stem.endswith(f"-{guest}-{b}")), None)
        fast = path.stem.removesuffix("-partial").endswith(f"-{guest}-fast")  # every backing, interleaved
        if (backing or fast) and not path.name.endswith("-probes.json"):
            medians.update(table.medians_of(pyperf.BenchmarkSuite.load(str(path)).get_benchmarks(), backing))
    why = error or _host_problem(data)
    return table.HostReport(data["host_kernel"], guest, data.get("fwb"), tuple(data["outcomes"]), medians, why,
                            data.get("dic"), dict(data.get("backings", {})))


def _host_problem(data: dict) -> str:
    if not data.get("kvm"):
        return "no /dev/kvm in the emulated host (a kernel without KVM, or not started at EL2)"
    failed = {b: v["error"] for b, v in data.get("backings", {}).items() if "error" in v}
    return "; ".join(f"{b}: {e}" for b, e in failed.items())


def main(argv: list[str]) -> int:
    t0 = time.monotonic()  # the wall time reported covers resolving, module builds and boots
    args = parser().parse_args(argv)
    if args.plot and args.plot.suffix.lower() != ".png":
        raise UserError(f"--plot {args.plot}: the picture is a PNG file: name it FILE.png")
    check_qemu()
    arch = get_arch("arm64")
    chosen = [kernels.get(arch, name) for name in args.host_kernel or DEFAULT_KERNELS]  # bad names fail before any boot
    reports, codes = [], []
    for kernel in chosen:
        print(f"lab: host {kernel.version} ({args.guest}{', probes only' if args.probes_only else ''}) ...",
              file=sys.stderr, flush=True)
        t1 = time.monotonic()
        report, code = _host_runner(args)(kernel, args)
        print(f"lab: host {kernel.version}: {len(report.outcomes)} outcomes in {time.monotonic() - t1:.1f} s",
              file=sys.stderr, flush=True)
        reports.append(report)
        codes.append(code)
    bad = print_reports(reports, args, time.monotonic() - t0)
    if args.plot and any(r.outcomes for r in reports):
        from guestkit.lab import l0_plot  # matplotlib: only when asked for

        print(f"lab: picture in {l0_plot.plot(reports, args.plot)}", file=sys.stderr)
    elif args.plot:
        print(f"lab: no picture in {args.plot}: no host gave a probe result", file=sys.stderr)
    return exit_code(codes, bad)


def exit_code(codes: list[int], mismatches: list[str]) -> int:
    """124 if a host timed out, else the worst host failure (3), else 1 for any MISMATCH, else 0."""
    code = 124 if 124 in codes else max(codes, default=0)
    return code or (1 if mismatches else 0)


def print_reports(reports: list[table.HostReport], args, wall: float) -> list[str]:
    """The table (or JSON) on stdout; the MISMATCH lines under the table, or on stderr with
    --json (stdout stays one JSON object).  Returns the mismatches."""
    bad = table.mismatches(reports)
    if args.json:
        for line in bad:
            print(f"MISMATCH {line}", file=sys.stderr)
        hosts = [{"host_kernel": r.kernel, "guest": r.guest, "fwb": r.fwb, "dic": r.dic, "error": r.error}
                 for r in reports]
        print(json.dumps({"hosts": hosts,
                          "stage2": [v.to_dict() for r in reports for v in table.stage2_verdicts(r)],
                          "outcomes": [o for r in reports for o in table.with_predictions(r)],
                          "detail": [d for r in reports for d in table.detail_rows(r)],
                          "mismatches": bad, "medians": {r.kernel: r.medians for r in reports},
                          "emulated": True, "seconds": round(wall, 1)}, indent=1))
        return bad
    print(table.table(reports))
    if args.detail:
        print()
        print(table.detail(reports))
    for line in bad:
        print(f"MISMATCH {line}")
    ratio = table.ratios(reports)
    if ratio:
        print()
        print(ratio)
    print(f"\n{len(reports)} host kernel(s) in {wall:.1f} s (emulated hosts: stage-2 attributes are real KVM "
          "decisions, timings are plumbing)")
    return bad

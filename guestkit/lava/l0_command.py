"""L0: `python -m guestkit lava {job,run,collect}`: argument parsing and the summaries printed."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.errors import UserError
from guestkit.lava import l0_collect, l0_device, l0_job, l0_run


def job_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kind", choices=l0_job.KINDS, default="emulated",
                   help="emulated: arm64 guest under TCG (a); kvmhost: one lab host kernel as an emulated KVM host "
                        "(b); server: a real arm64 server over tftp (c)")
    p.add_argument("--kernel", metavar="V", help="guest / host kernel (guestkit.kernels names: 6.1, 6.12, sid, a "
                                                 "version or a directory); default: the guest kernel of deps")
    p.add_argument("--probe", action="append", default=[], metavar="NAME", help="only this probe (repeatable)")
    p.add_argument("--fast", action="store_true", help="(a) also a `bench run --fast` (lava/dmtbench-run.yaml)")
    p.add_argument("--cases", choices=["probe", "attr"], default="probe",
                   help="LAVA test cases per probe (default) or per stage-1 attribute (the lab's cell)")
    p.add_argument("--upload", default="", metavar="URL",
                   help="the guest also PUTs each raw file to URL/<machine>/<file> (a lab's artifact store)")
    p.add_argument("--bdf", default=l0_job.IVSHMEM_BDF,
                   help=f"the device the probes use (default {l0_job.IVSHMEM_BDF}: ivshmem under LAVA's qemu type; "
                        "for a server, the device you bound to vfio-pci)")
    p.add_argument("--machine", default="", help="results/<machine>/ of the guest (default: the kind's)")
    p.add_argument("--timeout", type=int, default=30, metavar="MIN", help="job timeout in minutes")
    p.add_argument("--repository", default="", help="take lava/*.yaml from this git URL instead of inlining them")
    p.add_argument("--revision", default="")
    p.add_argument("--url-base", default="", help="(server) the URL the lab downloads Image and ramdisk.cpio from")
    p.add_argument("--hostname", default=l0_device.ServerConfig.hostname, help="(server) the device's name")
    p.add_argument("--connect", default=l0_device.ServerConfig.connection_command,
                   help="(server) the serial console command")
    p.add_argument("--power-on", default=l0_device.ServerConfig.power_on_command, help="(server) power on command")
    p.add_argument("--power-off", default=l0_device.ServerConfig.power_off_command, help="(server) power off command")
    p.add_argument("--hard-reset", default=l0_device.ServerConfig.hard_reset_command, help="(server) reset command")
    p.add_argument("-o", "--out", type=Path, default=Path("lava-job"), help="directory for the job (default ./lava-job)")


def spec_of(args: argparse.Namespace) -> l0_job.JobSpec:
    """The JobSpec `lava job` options describe."""
    server = l0_device.ServerConfig(args.hostname, args.connect, args.power_on, args.power_off, args.hard_reset)
    tests = l0_job.default_tests(args.kind, args.bdf, args.probe, args.fast, args.cases, args.upload)
    return l0_job.JobSpec(args.kind, args.kernel, tests, args.machine, args.bdf, args.timeout, args.repository,
                          args.revision, args.url_base, server)


def cmd_job(args: argparse.Namespace) -> int:
    written = l0_job.write(spec_of(args), args.out)
    print(written.job)
    print(f"lava job: {args.kind} on {written.kernel_version}, results/{written.machine}/; device dictionary "
          f"{written.device}, ramdisk {written.ramdisk.stat().st_size >> 20} MiB", file=sys.stderr)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    out = args.out or (args.job if args.job.is_dir() else args.job.parent)
    job, device = l0_run.job_files(args.job)
    if args.validate:
        l0_run.validate(job, device, out)
        print(f"lava run: {job} is valid for the dispatcher", file=sys.stderr)
        return 0
    if "device_type: arm64-server" in job.read_text():
        raise UserError(f"{job} is a server job (kind c): it runs in a LAVA lab (lavacli jobs submit); "
                        "here only --validate")
    res = l0_run.run(args.job, out, args.results, tuxrun=args.tuxrun, verbose=args.verbose)
    got = res.collected
    for path in got.written if got else ():
        print(path)
    cases = got.cases if got else {}
    engine = "TuxRun" if args.tuxrun else "lava-run"
    print(f"lava run ({engine}): job {'passed' if res.passed else 'failed'} in {res.seconds:.1f} s; test cases "
          + ", ".join(f"{n} {k}" for k, n in cases.items() if n) + f"; {len(got.written) if got else 0} file(s) "
          f"collected; log {res.log}", file=sys.stderr)
    if got and got.errors:
        raise UserError(f"{res.log}: {len(got.errors)} record(s) failed their checksum ({got.errors[0]})")
    if not res.passed:
        raise UserError(f"the LAVA job failed: {res.error}", code=3)
    return 0


def cmd_collect(args: argparse.Namespace) -> int:
    return l0_collect.main(args.log, args.results)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m guestkit lava", description="dmtbench as LAVA jobs")
    sub = p.add_subparsers(dest="action", required=True)
    job_parser(sub.add_parser("job", help="write a LAVA job, its device dictionary and merged image"))
    run = sub.add_parser("run", help="run a job of kind emulated or kvmhost with the local dispatcher")
    run.add_argument("job", type=Path, help="the job directory (or its job.yaml)")
    run.add_argument("--tuxrun", action="store_true", help="through TuxRun (--runtime null) instead of lava-run")
    run.add_argument("--validate", action="store_true", help="only lava-run --validate the job (any kind)")
    run.add_argument("--out", type=Path, default=None, help="where the log goes (default: the job directory)")
    run.add_argument("-r", "--results", type=Path, default=Path("results"), help="results root (default ./results)")
    run.add_argument("-v", "--verbose", action="store_true", help="show the job's log as it runs")
    col = sub.add_parser("collect", help="write the raw results a job log carries into results/<machine>/")
    col.add_argument("log", type=Path, help="a job log (lava-run, a LAVA server, TuxRun) or a directory with one")
    col.add_argument("-r", "--results", type=Path, default=Path("results"), help="results root (default ./results)")
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    return {"job": cmd_job, "run": cmd_run, "collect": cmd_collect}[args.action](args)

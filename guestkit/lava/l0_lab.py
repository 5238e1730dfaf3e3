"""L0: `python -m guestkit lab --lava`: each host kernel of the lab as its own LAVA job (kind kvmhost).

run_host() is the LAVA twin of guestkit.lab.l0_command.run_host: it writes the host's job
(guestkit.lava.l0_job), runs it with the local dispatcher (`--lava`) or submits it to a LAVA
server with lavacli (`--lava-server URL`), collects the probe file the job sent home and
reads it with the lab's own read_report, so the outcomes, the table and the verdicts
against bench.kvmpolicy are the lab's.  The jobs run the probes only (the lab's in-process
`--fast` timings are not a test definition).  `--dry-run` writes the jobs and prints the
lavacli commands without submitting (all that can be checked without a server).
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.errors import UserError
from guestkit import kernels
from guestkit.lab import l0_table as table
from guestkit.lava import l0_collect, l0_job, l0_run

LABEL = "lab-lava"


def spec_for(kernel: kernels.Kernel, args) -> l0_job.JobSpec:
    """The kvmhost job of one host kernel, with the lab's probe selection."""
    from guestkit.lab import l0_command

    if getattr(args, "guest", "payload") != "payload":
        raise UserError("lab --lava runs the payload guest (the kvm target); drop --guest linux")
    name = kernel.source if not kernel.source.startswith("linux-image-") else kernel.version
    # One LAVA case per (backing, stage-1 attribute), the lab table's cell: the verdicts are
    # made here from the raw probe file, and 882 lava-test-case calls cost 17 s under TCG.
    tests = l0_job.default_tests("kvmhost", l0_job.IVSHMEM_BDF, list(args.probe), False, cases="attr")
    tests = tuple(l0_job.Test(t.name, {**t.params, "LABEL": LABEL}) for t in tests)
    minutes = max(10, int(args.timeout // 60) + 5)
    return l0_job.JobSpec("kvmhost", name, tests, l0_command.MACHINE, timeout_minutes=minutes,
                          url_base=getattr(args, "lava_url_base", "") or "")


def run_host(kernel: kernels.Kernel, args) -> tuple[table.HostReport, int]:
    """One host kernel as a LAVA job; (report, exit code) as l0_command.run_host gives them."""
    from guestkit.lab import l0_command

    spec = spec_for(kernel, args)
    if not args.probes_only:
        print(f"lab: {kernel.version}: a LAVA job runs the probes only (no --fast timings)", file=sys.stderr)
    if getattr(args, "lava_server", None):
        return _server(kernel, spec, args)
    l0_run.lava_run()  # no dispatcher: one line for the whole lab, not one per host
    with tempfile.TemporaryDirectory(prefix="dmtbench-lava-") as tmp:
        written = l0_job.write(spec, Path(tmp))
        try:
            res = l0_run.run(written.directory, Path(tmp), args.results, verbose=args.verbose)
        except UserError as exc:
            return table.HostReport(kernel.version, "payload", None, (), {}, str(exc)), exc.code
        files = list(res.collected.written) if res.collected else []
        error = "" if res.passed else f"LAVA job failed: {res.error}"
    report = l0_command.read_report(kernel.version, "payload", files, error)
    code = 3 if (error or report.error) else 0
    if code:
        print(f"lab: {kernel.version}: {report.error or error}", file=sys.stderr)
    return report, code


def _server(kernel: kernels.Kernel, spec: l0_job.JobSpec, args) -> tuple[table.HostReport, int]:
    """Submit the job to a LAVA server with lavacli and collect its log; --dry-run: only
    write the job and say what would be run."""
    from guestkit.lab import l0_command

    out = args.results / "lava-jobs" / kernel.version
    written = l0_job.write(spec, out)
    submit = ["lavacli", "--uri", args.lava_server, "jobs", "submit", str(written.job)]
    if args.dry_run:
        print(f"lab: {kernel.version}: dry run: job in {written.job} (serve {written.kernel.name} and "
              f"{written.ramdisk.name} at --lava-url-base); would run: {' '.join(submit)}", file=sys.stderr)
        return table.HostReport(kernel.version, "payload", None, (), {}, ""), 0
    if not shutil.which("lavacli"):
        raise UserError("--lava-server needs lavacli: pip install lavacli (or use --dry-run)")
    job_id = _lavacli(submit).split()[-1]
    base = ["lavacli", "--uri", args.lava_server, "jobs"]
    _lavacli([*base, "wait", job_id])
    log = out / "job.log"
    log.write_text(_lavacli([*base, "logs", "--raw", job_id]))
    got = l0_collect.collect(log, args.results)
    report = l0_command.read_report(kernel.version, "payload", list(got.written), "")
    return report, 3 if report.error else 0


def _lavacli(argv: list[str]) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(f"{' '.join(argv[3:5])} failed: {tail}")
    return proc.stdout.strip()

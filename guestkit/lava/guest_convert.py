"""In the LAVA guest: KTAP and pyperf JSON -> `lava-test-case` calls, and raw files home (standard library only).

LAVA has no KTAP parser, and its `parse:` patterns cut names at console chunk boundaries,
so, as Linaro's test-definitions do for kselftest, the guest converts its own output and
calls `lava-test-case NAME --result R [--measurement X --units U]` once per case:

  KTAP `ok`            -> pass
  KTAP `not ok`        -> fail
  KTAP `ok ... # SKIP` -> skip
  KTAP `ok ... # XFAIL`-> pass: the probe behaved as dmtbench expects under emulation
                          (QEMU does not model that fault), so it is no failure; the reason
                          stays in the KTAP text of the job log.
  pyperf benchmark     -> NAME pass, measurement = median of the per-process medians in the
                          benchmark's report unit; NAME.rsd pass, the spread = relative
                          standard deviation of those medians in % (bench.results.value_of).

Names and units may not hold spaces, `=`, `>` or `/` (lava-test-case's signal is split on
them): they are sanitised, and `GB/s` is sent as `GB_per_s`.  The raw files (probe JSON,
pyperf JSON) go home whole as framed records (guestkit.frames) for
`python -m guestkit lava collect`.

Usage in the guest: python3 -m guestkit.lava.guest_convert {ktap,pyperf,send} FILE...
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import shlex
import shutil
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from bench.units import convert  # standard library only, like this module

LAVA_TEST_CASE = "lava-test-case"
MAX_NAME = 100  # LAVA's TestCase.name is at most 100 characters
_BAD = re.compile(r"[^A-Za-z0-9_.,:@+\[\]-]")
_KTAP = re.compile(r"^\s*(not ok|ok)\s+(\d+)\s+(.*?)\s*(?:#\s*(.*))?$")
UNIT_NAMES = {"GB/s": "GB_per_s", "M/s": "M_per_s", "ns": "ns", "%": "percent"}


@dataclass(frozen=True)
class Case:
    """One lava-test-case call."""

    name: str
    result: str                      # pass | fail | skip | unknown
    measurement: float | None = None
    units: str | None = None

    def argv(self) -> list[str]:
        """The lava-test-case command line for this case."""
        argv = [LAVA_TEST_CASE, self.name, "--result", self.result]
        if self.measurement is not None:
            argv += ["--measurement", f"{self.measurement:.6g}"]
            if self.units:
                argv += ["--units", self.units]
        return argv


def sanitise(name: str) -> str:
    """A name LAVA keeps whole: no spaces, `=`, `>` or `/` (any other odd character
    becomes `_`), at most 100 characters (a longer one keeps its tail, which differs)."""
    clean = _BAD.sub("_", name.strip()).strip("_") or "unnamed"
    return clean if len(clean) <= MAX_NAME else clean[-MAX_NAME:]


def unit_name(unit: str) -> str:
    """A report unit as LAVA can carry it (GB/s -> GB_per_s)."""
    return UNIT_NAMES.get(unit, sanitise(unit))


def ktap_cases(text: str, prefix: str = "", top_level: bool = False) -> list[Case]:
    """The test lines of a KTAP document as cases: the leaves (a nested group's summary
    line, which follows its subtests, is left out: its subtests are the cases), or with
    top_level only the unindented lines (one case per group)."""
    cases, last_indent = [], 0
    for line in text.splitlines():
        m = _KTAP.match(line)
        if not m:
            continue
        indent = len(line) - len(line.lstrip())
        parent, last_indent = indent < last_indent, indent
        if (top_level and indent) or (not top_level and parent):
            continue
        status, _number, name, directive = m.groups()
        word = (directive or "").split(" ", 1)[0].upper()
        if word == "SKIP":
            result = "skip"
        elif status == "not ok":
            result = "fail"
        else:
            result = "pass"  # ok, ok # XFAIL, ok # <comment>
        cases.append(Case(sanitise(f"{prefix}{name}"), result))
    return cases


# --- pyperf JSON, read without pyperf (the guest's rootfs may have none) -------------------

def benchmark_summaries(suite: dict) -> list[tuple[str, float, float, str]]:
    """(name, median, relative sd, unit) per benchmark of a pyperf suite, as
    bench.results.value_of computes them: one median per worker process, then their median."""
    common = suite.get("metadata", {})
    out = []
    for bench in suite.get("benchmarks", []):
        meta = {**common, **bench.get("metadata", {})}
        unit = meta.get("report_unit", "ns")
        meds = [statistics.median(convert(unit, v) for v in run["values"])
                for run in bench.get("runs", []) if run.get("values")]
        if not meds:
            continue
        mean = statistics.fmean(meds)
        sd = statistics.stdev(meds) if len(meds) > 1 else 0.0
        out.append((meta.get("name", "unnamed"), statistics.median(meds), sd / mean if mean else 0.0, unit))
    return out


def pyperf_cases(suite: dict, prefix: str = "") -> list[Case]:
    """Two cases per benchmark: its median in its unit, and its spread (run sd, %)."""
    cases = []
    for name, median, rsd, unit in benchmark_summaries(suite):
        base = sanitise(f"{prefix}{name}")
        ok = "pass" if math.isfinite(median) else "fail"
        cases.append(Case(base, ok, median, unit_name(unit)))
        cases.append(Case(sanitise(f"{base[:MAX_NAME - 4]}.rsd"), ok, rsd * 100, "percent"))
    return cases


def batch_script(tool: str, cases: list[Case]) -> str:
    """One shell script that runs LAVA's lava-test-case once per case, each in a subshell
    of one shell: the same script with the same arguments, without a fork and exec of a
    new shell per case (under TCG that cost 31 ms a case, 27 s for the lab's 882 probes)."""
    lines = [f"( set -- {shlex.join(case.argv()[1:])}; . {shlex.quote(tool)} )" for case in cases]
    return "\n".join(lines) + "\n"


def report(cases: list[Case]) -> int:
    """Call lava-test-case for every case; without it (not in a LAVA test shell) print
    the calls instead, so the same step runs by hand."""
    tool = shutil.which(LAVA_TEST_CASE)
    if not tool:
        for case in cases:
            print(" ".join(case.argv()))
    elif cases:
        sys.stdout.flush()
        subprocess.run(["sh"], input=batch_script(tool, cases), text=True, check=False)
    if not cases:
        print("dmtbench: no test cases in the input", file=sys.stderr)
    return 0


def upload(url: str, rel: str, data: bytes) -> str:
    """HTTP PUT of one file to <url>/<machine>/<file> (a lab's artifact store); '' or why not."""
    import urllib.error
    import urllib.request

    req = urllib.request.Request(f"{url.rstrip('/')}/{rel}", data=data, method="PUT",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return "" if 200 <= resp.status < 300 else f"HTTP {resp.status}"
    except (urllib.error.URLError, OSError) as exc:
        return str(getattr(exc, "reason", exc))


def send(paths: list[Path], upload_url: str = "") -> int:
    """Every file under the given results directories (or the files named) as framed
    records on stdout, named by their path below results/ (<machine>/<file>); with
    upload_url also PUT to the lab's artifact store (a failed upload is said, not fatal:
    the log still carries the file)."""
    from guestkit import (
        frames,  # the agent's framing: collect decodes it from the job log
    )

    # The Sender resends a batch of lines the kernel may have printed into (it watches
    # /dev/kmsg), as the agent does on guestkit's own consoles.
    sender = frames.Sender(sys.stdout, frames.KmsgWatch.open())
    count = 0
    for root in paths:
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        for path in files:
            if path.name.startswith("."):
                continue  # a run's partial file: its final arrives instead
            rel = path.relative_to(root).as_posix() if root.is_dir() else path.name
            data = path.read_bytes()
            sender.send("file", rel, data)
            # In plain text too, so what came home can be checked against the guest's file.
            print(f"dmtbench: sent {rel} {len(data)} bytes sha256 {hashlib.sha256(data).hexdigest()}", flush=True)
            if upload_url:
                why = upload(upload_url, rel, data)
                print(f"dmtbench: upload of {rel} {'failed: ' + why if why else 'done'}", flush=True)
            count += 1
    sys.stdout.flush()
    print(f"dmtbench: sent {count} file(s)")
    return 0  # the next steps run under `set -e`: a guest with nothing to send still converts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m guestkit.lava.guest_convert", description=__doc__.splitlines()[0])
    p.add_argument("kind", choices=["ktap", "pyperf", "send"])
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--prefix", default="", help="put before every case name (e.g. the backing: vfio.)")
    p.add_argument("--upload", default="", metavar="URL",
                   help="send: also HTTP PUT each file to URL/<machine>/<file> (empty: no upload)")
    p.add_argument("--cases", choices=["probe", "attr"], default="probe",
                   help="ktap: a case per test line (probe), or only the top-level tests (attr: one per subtest "
                        "group, i.e. per stage-1 attribute)")
    p.add_argument("--prefix-stem", action="store_true", help="put each file's stem before its cases' names "
                                                               "(vfio.ktap -> vfio.normal.load8)")
    args = p.parse_args(argv)
    missing = [f for f in args.files if not f.exists()]
    if missing:
        print(f"error: {missing[0]}: no such file", file=sys.stderr)
        return 2
    if args.kind == "send":
        return send(args.files, args.upload)
    cases: list[Case] = []
    for path in args.files:
        prefix = args.prefix + (f"{path.stem}." if args.prefix_stem else "")
        if args.kind == "ktap":
            cases += ktap_cases(path.read_text(), prefix, args.cases == "attr")
        else:
            try:
                cases += pyperf_cases(json.loads(path.read_text()), prefix)
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                print(f"error: {path}: not a pyperf suite ({exc})", file=sys.stderr)
                return 2
    return report(cases)


if __name__ == "__main__":
    sys.exit(main())

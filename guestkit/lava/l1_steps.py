"""L1 (the LAVA guest): the steps of lava/dmtbench-probe.yaml and lava/dmtbench-run.yaml.

`probe`: `bench probe --json` for each target, in this process (under TCG a Python start
costs seconds), written as ONE file in the lab's format (guestkit.lab.l1_runner: host
kernel, FWB/DIC, outcomes tagged with their backing) under results/<machine>/, so the lab's
L0 code reads a LAVA job's file as it reads its own; plus one KTAP file per target for
guestkit.lava.guest_convert.  `run`: `bench run` with the definition's parameters; its
pyperf file lands under results/<machine>/ as usual.

A kvm target names the ivshmem BDF it uses (kvm:vfio:0000:00:02.0/2): under LAVA's qemu
device type a virtio NIC takes slot 1, so the BDF is a parameter, never assumed.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

from bench import metadata
from bench import results as bench_results
from bench.errors import UserError
from bench.outcomes import Outcome

KTAP_DIR = Path("/tmp/dmtbench-ktap")


def backing_of(target: str) -> str:
    """The lab's backing name of a target: kvm:vfio:BDF/2 -> vfio, kvm:ram -> ram; any
    other target by its spec, made name-safe (pci:0000:00:02.0/2 -> pci-0000-00-02.0-2)."""
    parts = target.split(":")
    if parts[0] == "kvm" and len(parts) > 1:
        return parts[1]
    return re.sub(r"[^A-Za-z0-9.]+", "-", target).strip("-")


def probe_target(target: str, attrs: list[str], probes: list[str]) -> dict:
    """`bench probe --json` on one target in this process, as the lab's L1 runner does it;
    {'error': ...} when the target cannot be had (the other targets go on)."""
    from guestkit.lab.l1_runner import probe_json

    return probe_json(target, attrs, probes)


def ktap_of(target: str, data: dict) -> str:
    """The KTAP `bench probe --ktap` prints, from the JSON outcomes (no second probe run),
    nested by stage-1 attribute: one subtest per attribute holding its probes, the way
    kselftest nests a suite's cases.  `guest_convert ktap` reports every line, or with
    --top-level one case per attribute (the lab's cell: a KVM host's 882 probes as 42 cases)."""
    from bench.probe_cli import ktap

    if "error" in data:
        return f"KTAP version 1\n1..1\nnot ok 1 {target} # {data['error']}\n"
    outcomes = [Outcome(o["attr"], o["probe"], o["result"], o.get("code", ""), o.get("expected", ""))
                for o in data.get("outcomes", [])]
    attrs = list(dict.fromkeys(o.attr for o in outcomes))
    lines = ["KTAP version 1", f"# dmtbench probe on {target}", f"1..{len(attrs)}"]
    for n, attr in enumerate(attrs, 1):
        sub = ktap(target, [o for o in outcomes if o.attr == attr], bool(data.get("emulated"))).splitlines()
        tests = [line for line in sub if line.startswith(("ok ", "not ok "))]
        lines += [f"    # Subtest: {attr}", *(f"    {line}" for line in sub)]
        if any(line.startswith("not ok") for line in tests):
            lines.append(f"not ok {n} {attr}")
        elif tests and all("# SKIP" in line for line in tests):
            lines.append(f"ok {n} {attr} # SKIP every probe skipped")
        else:
            lines.append(f"ok {n} {attr}")
    return "\n".join(lines) + "\n"


def probe(targets: list[str], attrs: list[str], probes: list[str], label: str, results: Path,
          ktap_dir: Path) -> Path:
    """Every target's probes into one lab-format JSON file; returns its path."""
    from guestkit.lab import l1_runner  # the lab's report format and its module check

    release = platform.release()
    out = bench_results.default_path(results, metadata.machine_name(), f"{label}-probes")
    out.parent.mkdir(parents=True, exist_ok=True)
    ktap_dir.mkdir(parents=True, exist_ok=True)
    report: dict = {"host_kernel": release, "guest": "payload", "fwb": None, "dic": None,
                    "kvm": os.path.exists("/dev/kvm"), "el2": "started at EL2" in l1_runner.kernel_log(),
                    "emulated": metadata.emulated(), "backings": {}, "outcomes": [], "runs": [],
                    "targets": {}, "source": "lava"}
    if any(t.startswith("kvm:kmod-") for t in targets):
        l1_runner.module_ok(report)  # records the kmod backings' reason when dmattr is missing
    for target in targets:
        backing = backing_of(target)
        report["targets"][backing] = target
        if "error" in report["backings"].get(backing, {}):
            data = dict(report["backings"][backing])
        else:
            data = probe_target(target, attrs, probes)
        report["backings"][backing] = {k: v for k, v in data.items() if k != "outcomes"}
        report["outcomes"] += l1_runner.outcomes_of(backing, data)
        for fact in ("fwb", "dic"):  # host CPU facts a kvm target reports (true/false/unknown)
            if report[fact] is None and data.get(fact) in ("true", "false"):
                report[fact] = data[fact] == "true"
        (ktap_dir / f"{backing}.ktap").write_text(ktap_of(target, data))
        out.write_text(json.dumps(report, indent=1))  # what is done so far survives a hang
    print(f"dmtbench: {release}: {len(report['outcomes'])} outcomes from {len(targets)} target(s) in {out}")
    return out


def run(target: str, attrs: list[str], workloads: list[str], size: str, label: str, results: Path,
        extra: list[str]) -> int:
    """`python3 -m bench run --fast` with the definition's parameters (pyperf needs its
    own worker processes, so this one is a child process); its exit status becomes the
    case bench-run.<label>, and the step itself succeeds."""
    argv = [sys.executable, "-m", "bench", "run", "--fast", "--target", target, "--label", label,
            "--results-dir", str(results), *(a for x in attrs for a in ("--attr", x)),
            *(a for w in workloads for a in ("--workload", w)), *(["--size", size] if size else []), *extra]
    print("dmtbench: " + " ".join(argv[1:]), flush=True)
    code = subprocess.run(argv, check=False).returncode
    # LAVA runs a definition's steps under `set -e`: a run with a failed case must not stop
    # the steps that send home and convert what it did measure, so its verdict is a case.
    from guestkit.lava import guest_convert

    guest_convert.report([guest_convert.Case(guest_convert.sanitise(f"bench-run.{label}"),
                                             "pass" if code == 0 else "fail")])
    return 0


def words(text: str) -> list[str]:
    """A test-definition parameter: space- or comma-separated words ('' = none)."""
    return [w for w in re.split(r"[\s,]+", text or "") if w]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m guestkit.lava.l1_steps", description=__doc__.splitlines()[0])
    p.add_argument("step", choices=["probe", "run"])
    p.add_argument("--target", default="ram", help="one target, or several separated by spaces (probe)")
    p.add_argument("--attrs", default="", help="stage-1 attributes, space-separated (default: all)")
    p.add_argument("--probes", default="", help="probe names, space-separated (default: all)")
    p.add_argument("--workloads", default="", help="workloads, space-separated (run; default: bench's)")
    p.add_argument("--size", default="", help="buffer size (run)")
    p.add_argument("--label", default="lava")
    p.add_argument("--results", type=Path, default=Path(os.environ.get("DMTBENCH_RESULTS", "results")))
    p.add_argument("--ktap-dir", type=Path, default=KTAP_DIR)
    p.add_argument("extra", nargs="*", help="more `bench run` options (after --)")
    args = p.parse_args(argv)
    try:
        if args.step == "probe":
            probe(words(args.target), words(args.attrs), words(args.probes), args.label, args.results, args.ktap_dir)
            return 0
        return run(args.target, words(args.attrs), words(args.workloads), args.size, args.label, args.results,
                   args.extra)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.code


if __name__ == "__main__":
    sys.exit(main())

"""`python -m bench <command>`: run, list, targets, combine, selfcheck."""
from __future__ import annotations

import argparse
import json
import sys

from bench.errors import UserError

COMMANDS = {
    "run": "run the benchmark matrix under pyperf and write results/",
    "list": "list workloads and their parameters",
    "targets": "list targets and which attributes each can give",
    "combine": "effective memory type of a stage-1 and a stage-2 attribute",
    "probe": "semantic probes (alignment, DC ZVA, exclusives, atomics) per attribute",
    "compare": "compare runs (A... --vs B...): speedups, 95% CIs, Holm-adjusted verdicts (analysis)",
    "report": "one run across attributes (--ref) or targets (--ref-target), as speedups (analysis)",
    "plot": "PNG plots of one or more runs (analysis)",
    "track": "regression tracking over a machine's results; exit 1 on a regression (analysis)",
    "selfcheck": "compare our RAM kernels with likwid-bench and an independent chase",
}


def cmd_list(argv: list[str]) -> int:
    from bench import kernels, plan
    from bench.units import format_size

    argparse.ArgumentParser(prog="python -m bench list").parse_args(argv)
    for k in kernels.registry().values():
        # The default shown is the one a run uses here (the widest width this CPU has).
        params = "; ".join(f"{p.name}={'|'.join(p.values)} (default {plan.default_value(k, p.name)})"
                           for p in k.params) or "-"
        rw = "".join(c for c, on in (("R", k.reads), ("W", k.writes)) if on)
        size = f"size (default {format_size(k.default_size)})" if k.sized else "no size"
        print(f"{k.name:<10} {k.kind:<9} {k.unit:<4} {rw:<2} {params}; {size}\n{'':<10} {k.doc}")
    print(f"\nkernels: {kernels.arch()} ({', '.join(kernels.features()) or 'portable C'}), {kernels.library_path()}")
    return 0


def cmd_targets(argv: list[str]) -> int:
    from bench import targets

    p = argparse.ArgumentParser(prog="python -m bench targets")
    p.add_argument("--target", action="append", default=[], help="show only these target specs")
    args = p.parse_args(argv)
    for spec in args.target or targets.discover():
        t = targets.open_target(spec)
        print(f"{t.spec}: {targets.describe(t)}")
        for a in t.availability():
            print(f"  {a.attr:<14} {'available' if a.ok else 'not available: ' + a.reason}")
    return 0


def cmd_combine(argv: list[str]) -> int:
    from bench import memtypes

    p = argparse.ArgumentParser(prog="python -m bench combine", description="stage-1 x stage-2 -> effective type")
    p.add_argument("stage1", help=f"stage-1 attribute: {', '.join(memtypes.names())}")
    p.add_argument("stage2", help="stage-2 attribute (as-s1 too, with --fwb)")
    p.add_argument("--fwb", action="store_true", help="the host has FEAT_S2FWB")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    eff = memtypes.combine(args.stage1, args.stage2, args.fwb)
    if args.json:
        print(json.dumps(eff.to_dict()))
    else:
        kind = "Device" if eff.device else "Normal"
        print(f"{eff.stage1} (stage 1) + {eff.stage2} (stage 2{', FWB' if eff.fwb else ''}) -> {eff.effective} ({kind})")
        print(f"  because {eff.reason}")
        if eff.qemu_note:
            print(f"  note: {eff.qemu_note}")
    return 0


def cmd_run(argv: list[str]) -> int:
    from bench import runner

    return runner.main(argv)


def cmd_probe(argv: list[str]) -> int:
    from bench import probe_cli

    return probe_cli.main(argv)


def cmd_selfcheck(argv: list[str]) -> int:
    from bench import selfcheck

    return selfcheck.main(argv)


HANDLERS = {"run": cmd_run, "list": cmd_list, "targets": cmd_targets, "combine": cmd_combine,
            "probe": cmd_probe, "selfcheck": cmd_selfcheck}


def usage() -> str:
    lines = ["usage: python -m bench <command> [options]   (python -m bench <command> -h for each)", ""]
    lines += [f"  {name:<10} {text}" for name, text in COMMANDS.items()]
    return "\n".join(lines)


def analysis_handler(cmd: str):
    """The analysis command `cmd`.  Imported by name at call time: analysis sits above
    bench (it imports bench), so bench only dispatches to it and never imports it."""
    import importlib

    return importlib.import_module("analysis.cli").COMMANDS[cmd]


ANALYSIS = ("compare", "report", "plot", "track")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd in ANALYSIS:
        handler = analysis_handler(cmd)
    elif cmd in HANDLERS:
        handler = HANDLERS[cmd]
    else:
        print(f"error: unknown command {cmd!r}; commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    try:
        return handler(rest)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.code
    except BrokenPipeError:  # output piped into head & co.
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("error: interrupted; finished cases were kept in results/ (-partial.json)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""The analysis commands behind `python -m bench compare|report|plot|track`."""
from __future__ import annotations

import argparse
from pathlib import Path

from analysis import tables
from analysis.load import load_many
from bench.errors import UserError

FORMATS = list(tables.RENDERERS)


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are our one-line errors (exit 2, no usage dump)."""

    def error(self, message: str):
        raise UserError(f"{message} (see {self.prog} -h)")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allow-emulated", action="store_true", help="allow mixing emulated (TCG) and hardware results")


def cmd_compare(argv: list[str]) -> int:
    from analysis import compare

    p = _Parser(prog="python -m bench compare", description=compare.__doc__)
    p.add_argument("files", nargs="*", type=Path,
                   help="BASE.json NEW.json [NEW2.json ...] (each new file against the base); with --vs: the base side")
    p.add_argument("--vs", nargs="*", type=Path, default=None, metavar="NEW.json",
                   help="the new side: one or more files, each a separate 'bench run' (compared as one side)")
    p.add_argument("--format", choices=[*FORMATS, "lkp"], default="text",
                   help="text (72 columns), lkp (kernel test robot layout), markdown, csv, json")
    p.add_argument("--alpha", type=float, default=0.05, help="family-wise level, Holm-adjusted (default 0.05)")
    p.add_argument("--per-process", action="store_true",
                   help="one file a side: test its worker processes as the replicates (only on a quiet, dedicated "
                        "machine, where separate runs do not differ)")
    _common(p)
    args = p.parse_args(argv)
    if args.vs is None and len(args.files) < 2:
        raise UserError("compare needs at least two result files: BASE.json NEW.json (or BASE... --vs NEW...)")
    runs = load_many([*args.files, *(args.vs or [])], args.allow_emulated)
    if args.vs is None:
        comps = [compare.compare_runs([runs[0]], [new], args.alpha, per_process=args.per_process) for new in runs[1:]]
    else:
        comps = [compare.compare_runs(runs[:len(args.files)], runs[len(args.files):], args.alpha,
                                      per_process=args.per_process)]
    print(compare.lkp(comps) if args.format == "lkp" else tables.render(compare.table(comps), args.format))
    return 0


def cmd_report(argv: list[str]) -> int:
    from analysis import report

    p = _Parser(prog="python -m bench report", description=report.__doc__)
    p.add_argument("file", type=Path)
    p.add_argument("--ref", default="device-ngnre", help="reference attribute (default device-ngnre)")
    p.add_argument("--ref-target", default=None, metavar="T",
                   help="a run over several targets: each case over the same case on target T, by stage-2 setting")
    p.add_argument("--format", choices=FORMATS, default="text")
    args = p.parse_args(argv)
    (run,) = load_many([args.file])
    t = report.target_table(run, args.ref_target) if args.ref_target else report.table(run, args.ref)
    print(tables.render(t, args.format))
    return 0


def cmd_plot(argv: list[str]) -> int:
    from analysis import plot

    p = _Parser(prog="python -m bench plot", description=plot.__doc__)
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("-o", "--out", type=Path, required=True, help="directory for the PNGs")
    _common(p)
    args = p.parse_args(argv)
    for path in plot.plot_all(load_many(args.files, args.allow_emulated), args.out):
        print(path)
    return 0


def cmd_track(argv: list[str]) -> int:
    from analysis import track

    p = _Parser(prog="python -m bench track", description=track.__doc__)
    p.add_argument("dir", type=Path, help="results/<machine>/ (every *.json in it, by date)")
    p.add_argument("--window", type=int, default=track.WINDOW,
                   help=f"at most this many runs before the newest form the history (default {track.WINDOW}, "
                        f"at least {track.MIN_BASELINE})")
    p.add_argument("--threshold", type=float, default=track.THRESHOLD,
                   help=f"minimum change in percent to flag (default {track.THRESHOLD})")
    p.add_argument("--alpha", type=float, default=track.ALPHA,
                   help=f"family-wise level of the prediction-interval test, Holm-adjusted across the newest "
                        f"run's benchmarks (default {track.ALPHA})")
    p.add_argument("--plots", type=Path, default=None, help="where trend PNGs go (default DIR/trends)")
    p.add_argument("--format", choices=FORMATS, default="text")
    _common(p)
    args = p.parse_args(argv)
    try:
        result = track.track(args.dir, args.window, args.threshold, args.alpha, args.allow_emulated)
    except track.TooFewRuns as exc:  # a new machine: nothing to gate yet, not a failure
        print(exc)
        return 0
    print(tables.render(result.table, args.format))
    for path in track.plot_trends(result, args.plots or args.dir / "trends"):
        print(f"trend: {path}")
    return 1 if result.regressions else 0


COMMANDS = {"compare": cmd_compare, "report": cmd_report, "plot": cmd_plot, "track": cmd_track}

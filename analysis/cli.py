"""The analysis commands behind `python -m bench compare|report|plot|track`."""
from __future__ import annotations

import argparse
from pathlib import Path

from analysis import tables
from analysis.load import load_many
from bench.errors import UserError

FORMATS = list(tables.RENDERERS)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allow-emulated", action="store_true", help="allow mixing emulated (TCG) and hardware results")


def cmd_compare(argv: list[str]) -> int:
    from analysis import compare

    p = argparse.ArgumentParser(prog="python -m bench compare", description=compare.__doc__)
    p.add_argument("files", nargs="+", type=Path, help="base file first, then one or more new files")
    p.add_argument("--format", choices=FORMATS, default="text")
    p.add_argument("--alpha", type=float, default=0.05, help="significance level (default 0.05)")
    _common(p)
    args = p.parse_args(argv)
    if len(args.files) < 2:
        raise UserError("compare needs at least two result files: BASE.json NEW.json")
    runs = load_many(args.files, args.allow_emulated)
    print(tables.render(compare.table(runs, args.alpha), args.format))
    return 0


def cmd_report(argv: list[str]) -> int:
    from analysis import report

    p = argparse.ArgumentParser(prog="python -m bench report", description=report.__doc__)
    p.add_argument("file", type=Path)
    p.add_argument("--ref", default="device-ngnre", help="reference attribute (default device-ngnre)")
    p.add_argument("--format", choices=FORMATS, default="text")
    args = p.parse_args(argv)
    (run,) = load_many([args.file])
    print(tables.render(report.table(run, args.ref), args.format))
    return 0


def cmd_plot(argv: list[str]) -> int:
    from analysis import plot

    p = argparse.ArgumentParser(prog="python -m bench plot", description=plot.__doc__)
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("-o", "--out", type=Path, required=True, help="directory for the PNGs")
    _common(p)
    args = p.parse_args(argv)
    for path in plot.plot_all(load_many(args.files, args.allow_emulated), args.out):
        print(path)
    return 0


def cmd_track(argv: list[str]) -> int:
    from analysis import track

    p = argparse.ArgumentParser(prog="python -m bench track", description=track.__doc__)
    p.add_argument("dir", type=Path, help="results/<machine>/ (every *.json in it, by date)")
    p.add_argument("--window", type=int, default=track.WINDOW, help=f"baseline runs before the newest (default {track.WINDOW})")
    p.add_argument("--threshold", type=float, default=track.THRESHOLD,
                   help=f"minimum change in percent to flag (default {track.THRESHOLD})")
    p.add_argument("--alpha", type=float, default=track.ALPHA, help=f"Mann-Whitney U level (default {track.ALPHA})")
    p.add_argument("--plots", type=Path, default=None, help="where trend PNGs go (default DIR/trends)")
    p.add_argument("--format", choices=FORMATS, default="text")
    _common(p)
    args = p.parse_args(argv)
    result = track.track(args.dir, args.window, args.threshold, args.alpha, args.allow_emulated)
    print(tables.render(result.table, args.format))
    for path in track.plot_trends(result, args.plots or args.dir / "trends"):
        print(f"trend: {path}")
    return 1 if result.regressions else 0


COMMANDS = {"compare": cmd_compare, "report": cmd_report, "plot": cmd_plot, "track": cmd_track}

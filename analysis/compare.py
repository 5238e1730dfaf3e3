"""`compare BASE.json NEW.json` or `compare A1 A2 ... --vs B1 B2 ...`: what changed,
benchmark by benchmark, as speedups (> 1 = better) with verdicts a reviewer can trust
(the method: analysis/stats.py)."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from analysis import stats
from analysis.load import Run
from analysis.report import leaf_pair_note
from analysis.tables import Section, Table, fmt_value
from bench import units
from bench.errors import UserError

REPEAT_HINT = "3 files a side, one command each: python -m bench run --repeat 3 ..."
BACKSLASH = "\\"  # lkp's column markers (no backslash inside f-string braces before 3.12)


@dataclass(frozen=True)
class Row:
    name: str
    workload: str
    unit: str
    change: stats.Change
    short: str | None = None     # why there is no verdict (too few replicates)

    @property
    def verdict(self) -> str:
        return self.change.verdict


@dataclass(frozen=True)
class Comparison:
    """One base side against one new side (each one or more result files)."""

    base: list[Run]
    new: list[Run]
    rows: list[Row]
    alpha: float
    per_process: bool = False

    @property
    def by_files(self) -> bool:
        return len(self.base) > 1 or len(self.new) > 1

    @property
    def method(self) -> str:
        if self.by_files:
            return stats.METHOD_FILES
        return stats.METHOD_RUNS if self.per_process else stats.METHOD_ONE

    def names(self, side: list[Run]) -> set[str]:
        return {n for r in side for n in r.series}


def _side(runs: list[Run], name: str) -> stats.Side:
    return [list(r.series[name].runs) for r in runs if name in r.series]


def check_sides(base: list[Run], new: list[Run]) -> list[str]:
    """The benchmarks both sides have; one-line errors for sides that cannot be compared."""
    if not base or not new:
        raise UserError(f"the {'base' if not base else 'new'} side is empty: "
                        "use BASE.json NEW.json, or BASE1.json ... --vs NEW1.json ...")
    seen: dict[str, tuple[str, str, str]] = {}
    for run in [*base, *new]:
        for name, s in run.series.items():
            first = seen.setdefault(name, (s.unit, s.workload, run.path.name))
            if first[:2] != (s.unit, s.workload):
                raise UserError(f"{name}: {first[1]} in {first[0]} in {first[2]} but {s.workload} in {s.unit} "
                                f"in {run.path.name}: these files measure different things")
    common = [n for n in dict.fromkeys(n for r in base for n in r.series) if any(n in r.series for r in new)]
    if not common:
        raise UserError(f"no benchmark in common between {base[0].path.name} and {new[0].path.name}: "
                        "compare runs of the same workloads (see their names with 'pyperf stats')")
    return common


def compare_runs(base: list[Run], new: list[Run], alpha: float = 0.05, with_ci: bool = True,
                 per_process: bool = False) -> Comparison:
    """Every common benchmark, Holm-adjusted across the rows of this one comparison.
    per_process: with one file a side, test the processes as replicates (quiet machines)."""
    names = check_sides(base, new)
    pairs = [(_side(base, n), _side(new, n)) for n in names]
    series = [next(r.series[n] for r in base if n in r.series) for n in names]
    changes = [stats.compare_sides(b, w, s.higher_is_better, with_ci, per_process) for (b, w), s in zip(pairs, series)]
    short = [stats.enough(b, w, alpha, len(names), per_process) for b, w in pairs]
    decided = stats.decide(changes, alpha, short)
    rows = [Row(n, s.workload, s.unit, c, why) for n, s, c, why in zip(names, series, decided, short)]
    return Comparison(base, new, rows, alpha, per_process)


def _x(r: float) -> str:
    return f"{r:.3f}"


def _files(runs: list[Run]) -> str:
    return runs[0].path.name if len(runs) == 1 else f"{len(runs)} files"


def header(comps: list[Comparison]) -> str:
    """Two lines: what and where; then how (the method) and which way is better."""
    runs = [r for c in comps for r in (*c.base, *c.new)]
    machines = " vs ".join(dict.fromkeys(r.machine for r in runs))
    kernels = " vs ".join(dict.fromkeys(r.meta.get("kernel_release", "?") for r in runs))
    attrs = ",".join(dict.fromkeys(s.attr for r in runs for s in r.series.values()))
    emu = " (EMULATED)" if any(r.emulated for r in runs) else ""
    return f"{machines} | {kernels} | {attrs}{emu}\nspeedup > 1 = better | {comps[0].method}"


def notes_for(c: Comparison, many: bool) -> list[str]:
    """Geomean, missing verdicts, machine and coverage notes for one comparison."""
    out = []
    tag = f" ({_files(c.new)})" if many else ""
    if c.rows:
        gm = stats.geomean([r.change.speedup for r in c.rows])
        out.append(f"geomean speedup of all {len(c.rows)}{tag}: {_x(gm)} (> 1 = better)")
    short = next((r.short for r in c.rows if r.short), None)
    if short:
        out.append(f"too few runs for a verdict ({short})")
        out.append(REPEAT_HINT)
    machines = list(dict.fromkeys(r.machine for r in (*c.base, *c.new)))
    if len(machines) > 1:
        out.append(f"note: different machines ({', '.join(machines)}): the change includes the machine")
    out += leaf_pair_note(c.base, c.new, [r.name for r in c.rows])
    for label, mine, other in (("base", c.base, c.new), ("new", c.new, c.base)):
        only = sorted(c.names(mine) - c.names(other))
        if only:
            out.append(f"only in {label}: {', '.join(only)}")
    return out


def _strip(name: str, workload: str, attrs: set[str]) -> str:
    short = name.removeprefix(workload)
    return short.rsplit("@", 1)[0] if len(attrs) == 1 else short


def _no_nan(v):
    """JSON has no NaN: an untested p (one file a side) is null."""
    if isinstance(v, dict):
        return {k: _no_nan(x) for k, x in v.items()}
    return None if isinstance(v, float) and math.isnan(v) else v


def _row_json(r: Row) -> dict:
    return _no_nan({**asdict(r.change), "name": r.name, "unit": r.unit, "verdict": r.verdict,
                    "why_no_verdict": r.short})


def table(comps: list[Comparison]) -> Table:
    """Text/markdown/csv/json: one section per workload and comparison."""
    many = len(comps) > 1
    sections, notes, data = [], [], {"comparisons": []}
    for c in comps:
        attrs = {r.name.rsplit("@", 1)[-1] for r in c.rows}
        groups: dict[str, list[Row]] = {}
        for r in c.rows:
            groups.setdefault(r.workload, []).append(r)
        for workload, grp in groups.items():
            title = f"{workload} ({grp[0].unit}, {units.better(grp[0].unit)})" + (f" vs {_files(c.new)}" if many else "")
            body = [[_strip(r.name, workload, attrs), fmt_value(r.change.base.median), fmt_value(r.change.new.median),
                     _x(r.change.speedup), f"{r.change.lo:.3f}..{r.change.hi:.3f}", "-" if r.short else f"{r.change.p_adj:.3f}",
                     r.verdict] for r in grp]
            gm = stats.geomean([r.change.speedup for r in grp])
            summary = ["geomean", "", "", _x(gm), "", "", ""] if len(grp) > 1 else None
            sections.append(Section(title, body, summary))
        notes += notes_for(c, many)
        data["comparisons"].append({
            "base": [str(r.path) for r in c.base], "new": [str(r.path) for r in c.new], "method": c.method,
            "alpha": c.alpha, "geomean_speedup": stats.geomean([r.change.speedup for r in c.rows]),
            "rows": [_row_json(r) for r in c.rows]})
    return Table(header(comps), ["benchmark", "base", "new", "speedup", "95% CI", "p adj", "verdict"],
                 sections, notes, data)


def _sd(e: stats.Estimate) -> str:
    """lkp's %stddev cell: blank under 2%, as the kernel test robot prints it."""
    pct = min(round(e.rsd * 100), 999)
    return f"±{pct:>3d}%" if pct >= 2 else "     "


def lkp(comps: list[Comparison]) -> str:
    """The kernel test robot's comparison layout (base, %stddev, %change, new, %stddev,
    metric), at most 72 columns.  %change is the change of the value itself, as the
    robot prints it; verdicts follow the table."""
    out = [header(comps), ""]
    for c in comps:
        attrs = {r.name.rsplit("@", 1)[-1] for r in c.rows}
        out += [f"{_files(c.base)[:16]:>16} {_files(c.new)[:27]:>27}",
                f"{'-' * 16} {'-' * 27}",
                f"{'%stddev':>16} {'%change':>11} {'%stddev':>16}",
                f"{BACKSLASH:>13} {'|':>10} {BACKSLASH:>17}"]
        for r in c.rows:
            name = r.name if len(attrs) > 1 else r.name.rsplit("@", 1)[0]
            cells = (f"{fmt_value(r.change.base.median):>10} {_sd(r.change.base)} {r.change.percent:+10.1f}% "
                     f"{fmt_value(r.change.new.median):>10} {_sd(r.change.new)}  ")
            out.append(cells + (name if len(cells) + len(name) <= 72 else name[: 71 - len(cells)] + "~"))
        decided = [r for r in c.rows if r.verdict in ("better", "worse")]
        out.append("")
        out += [f"{r.verdict}: {r.name} (speedup {_x(r.change.speedup)}, p adj {r.change.p_adj:.3g})"[:72]
                for r in decided]
        if not decided and not any(r.short for r in c.rows):
            out.append(f"no verdict at Holm-adjusted p < {c.alpha:g}")
        out += [n[:72] for n in notes_for(c, len(comps) > 1)]
        out.append("")
    return "\n".join(out).rstrip()

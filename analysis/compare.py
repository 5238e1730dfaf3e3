"""`compare A.json B.json [...]`: what changed between runs, benchmark by benchmark."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from analysis import stats
from bench import units
from analysis.load import Run
from analysis.tables import Section, Table, fmt_value


@dataclass(frozen=True)
class Row:
    name: str
    workload: str
    unit: str
    change: stats.Change
    higher_is_better: bool

    @property
    def verdict(self) -> str:
        if not self.change.significant:
            return "same"
        return "better" if (self.change.ratio > 1) == self.higher_is_better else "worse"


def _pct(r: float) -> str:
    return f"{(r - 1) * 100:+.1f}%"


def header(runs: list[Run]) -> str:
    """One line: machine, kernels, attrs, method."""
    base, new = runs[0], runs[-1]
    machines = " -> ".join(dict.fromkeys(r.meta.get("machine", "?") for r in (base, new)))
    kernels = " -> ".join(dict.fromkeys(r.meta.get("kernel_release", "?") for r in (base, new)))
    attrs = ",".join(dict.fromkeys(s.attr for r in (base, new) for s in r.series.values()))
    emu = " (EMULATED)" if any(r.emulated for r in runs) else ""
    return f"{machines} | {kernels} | {attrs}{emu} | {stats.METHOD}"


def rows(base: Run, new: Run, alpha: float) -> list[Row]:
    out = []
    for name, a in base.series.items():
        b = new.series.get(name)
        if b is not None:
            out.append(Row(name, a.workload, a.unit, stats.compare(a.values, b.values, alpha), a.higher_is_better))
    return out


def table(runs: list[Run], alpha: float = 0.05) -> Table:
    """Compare the first run (base) with each later one."""
    base = runs[0]
    sections, data, notes = [], {"comparisons": []}, []
    for new in runs[1:]:
        rs = rows(base, new, alpha)
        groups: dict[str, list[Row]] = {}
        for r in rs:
            groups.setdefault(r.workload, []).append(r)
        for workload, grp in groups.items():
            title = f"{workload} ({grp[0].unit}, {units.better(grp[0].unit)})" + (f" vs {new.path.name}" if len(runs) > 2 else "")
            body = [[r.name.removeprefix(workload), fmt_value(r.change.base.median), fmt_value(r.change.new.median),
                     _pct(r.change.ratio), f"{(r.change.lo - 1) * 100:+.1f}..{(r.change.hi - 1) * 100:+.1f}", r.verdict] for r in grp]
            gm = stats.geomean([r.change.ratio for r in grp])
            summary = ["geomean", "", "", _pct(gm), "", ""] if len(grp) > 1 else None
            sections.append(Section(title, body, summary))
            data["comparisons"].append({"new": str(new.path), "workload": workload, "geomean_ratio": gm,
                                        "rows": [{**asdict(r.change), "name": r.name, "unit": r.unit,
                                                  "verdict": r.verdict} for r in grp]})
        if rs:
            notes.append(f"geomean of all {len(rs)} ratios new/base: {_pct(stats.geomean([r.change.ratio for r in rs]))}"
                         " (latency up = worse)")
        only_base = sorted(set(base.series) - set(new.series))
        only_new = sorted(set(new.series) - set(base.series))
        if only_base:
            notes.append(f"only in {base.path.name}: {', '.join(only_base)}")
        if only_new:
            notes.append(f"only in {new.path.name}: {', '.join(only_new)}")
        data.setdefault("only_base", {})[str(new.path)] = only_base
        data.setdefault("only_new", {})[str(new.path)] = only_new
    data["base"] = str(base.path)
    return Table(header(runs), ["benchmark", "base", "new", "change", "95% CI %", "verdict"], sections, notes, data)

"""`report RUN.json`: one run across attributes, relative to a reference attribute."""
from __future__ import annotations

from analysis import stats
from bench import units
from analysis.load import Run
from analysis.tables import Section, Table, fmt_value


def table(run: Run, ref: str = "device-ngnre") -> Table:
    """Rows: workload[params]; columns: attrs; the ref column absolute, others ref-relative."""
    attrs = list(dict.fromkeys(s.attr for s in run.series.values()))
    notes = []
    if ref not in attrs:
        notes.append(f"reference {ref} is not in this run; using {attrs[0]}")
        ref = attrs[0]
    order = [ref, *[a for a in attrs if a != ref]]
    labels = list(dict.fromkeys(s.label for s in run.series.values()))
    groups: dict[str, list[list[str]]] = {}
    data_rows = []
    for label in labels:
        by_attr = {a: run.series.get(f"{label}@{a}") for a in order}
        base = by_attr[ref]
        base_est = stats.estimate(base.values) if base is not None else None
        some = next(s for s in by_attr.values() if s is not None)
        cells, rec = [label.removeprefix(some.workload)], {"benchmark": label}
        for a in order:
            s = by_attr[a]
            if s is None:
                cells.append("-")
                continue
            est = stats.estimate(s.values)
            rec[a] = {"median": est.median, "lo": est.lo, "hi": est.hi, "unit": s.unit}
            if a == ref or base_est is None:
                cells.append(f"{fmt_value(est.median)} {s.unit}")
            else:
                rec[a]["ratio"] = est.median / base_est.median
                cells.append(f"{est.median / base_est.median:.2f}x")
        groups.setdefault(f"{some.workload} ({units.better(some.unit)})", []).append(cells)
        data_rows.append(rec)
    for a in order:
        meta = next(s.meta for s in run.series.values() if s.attr == a)
        notes.append(f"{a}: effective {meta.get('effective', '?')}, inferred {meta.get('effective_inferred', '-')}, "
                     f"stage2 {meta.get('stage2', '?')}{' (FWB)' if meta.get('fwb') == 'true' else ''}")
    emu = "[emulated] " if run.emulated else ""
    target = next(iter(run.series.values())).meta.get("target", "?")
    header = f"{emu}{run.describe()}, x = ratio to {ref}"
    notes.insert(0, f"target {target}" + (" (emulated: plumbing, not hardware)" if emu else ""))
    sections = [Section(title, rows) for title, rows in groups.items()]
    data = {"run": str(run.path), "ref": ref, "attrs": order, "rows": data_rows}
    return Table(header, ["benchmark", *order], sections, notes, data)

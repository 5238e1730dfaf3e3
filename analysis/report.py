"""`report RUN.json`: one run across attributes, as speedups over a reference attribute;
with --ref-target T (a run over several targets), across targets: each case over the
same case (workload, parameters, attribute) on target T, columns labelled with the
stage-2 attribute each target's cases were read to have (stage2_read), e.g. `vfio (normal-nc)`.

In an interleaved run (bench run's default) the processes of one round of every case ran
seconds apart, so each attribute's speedup is the median of its per-round ratios to the
reference (paired: drift of the machine cancels), with a bootstrap CI over rounds.  In a
sequential run it is the ratio of the medians of per-process medians, with a cluster
bootstrap CI.  Speedup > 1 = better: a/ref for rates, ref/a for latencies.
"""
from __future__ import annotations

import numpy as np

from analysis import stats
from analysis.load import Run, Series
from analysis.tables import Section, Table, fmt_value
from bench import plan, units
from bench.errors import UserError

METHOD_PAIRED = "paired per-round ratios, boot CI over rounds"
METHOD_UNPAIRED = "ratio of process medians, cluster-boot CI"
# Why a leaf-size difference matters: a large working set (read-lat at 64 MiB) misses the
# TLB, and each miss walks the stage-2 table too: 4 KiB leaves take more walks than 2 MiB ones.
LEAF_WHY = ["  large sizes (read-lat at 64 MiB) include stage-2 page walks:",
            "  part of the difference is the page size, not the memory type"]


def leaf_of(meta: dict) -> int | None:
    """The stage-2 leaf size (bytes) a case was mapped with, or None where not recorded."""
    try:
        return int(meta["stage2_leaf"])
    except (KeyError, TypeError, ValueError):
        return None


def _bytes(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} B"


def leaf_note(leaves: dict[str, int | None]) -> list[str]:
    """Note lines (each within 72 columns) when the compared cases (name -> stage-2 leaf
    bytes) were mapped at different stage-2 leaf sizes (THP-backed RAM at 2 MiB vs a 4 KiB
    PFNMAP); none when they were not, or where the sizes were not recorded."""
    known = {k: v for k, v in leaves.items() if v is not None}
    if len(set(known.values())) < 2:
        return []
    sizes = ", ".join(f"{k} {_bytes(v)}" for k, v in known.items())
    return [f"note: stage-2 leaf sizes differ: {sizes}", *LEAF_WHY]


def leaf_pair_note(base: list[Run], new: list[Run], names: list[str]) -> list[str]:
    """`compare`'s note: benchmarks whose base and new sides were mapped at different
    stage-2 leaf sizes (the first one named, with the count)."""
    def leaf(side: list[Run], name: str) -> int | None:
        return next((leaf_of(r.series[name].meta) for r in side if name in r.series), None)

    odd = [(n, leaf(base, n), leaf(new, n)) for n in names]
    odd = [o for o in odd if None not in o[1:] and o[1] != o[2]]
    if not odd:
        return []
    name, b, w = odd[0]
    return [f"note: stage-2 leaf sizes differ: base {_bytes(b)}, new {_bytes(w)}",
            f"  in {len(odd)} benchmark(s), e.g. {name}", *LEAF_WHY]


def _rounds(s: Series) -> dict[int, float]:
    return {k: float(np.median(r)) for k, r in zip(s.rounds, s.runs)}


def relative(s: Series, ref: Series, paired: bool) -> stats.Estimate:
    """Speedup of s over ref with its 95% CI."""
    hib = s.higher_is_better
    if paired:
        ratios = stats.paired_speedups(_rounds(ref), _rounds(s), hib)
        if len(ratios):
            return stats.paired_estimate(ratios)
    ch = stats.compare_sides([list(ref.runs)], [list(s.runs)], hib)
    return stats.Estimate(ch.speedup, ch.lo, ch.hi, len(s.runs))


def _row(first: str, name: str, by_col: dict, ref: str, paired: bool) -> tuple[list[str], dict]:
    """One table row: the reference column's median with its unit, the others' speedups
    over it (paired per round where the run interleaved), and the same as a JSON record."""
    base = by_col[ref]
    cells, rec = [first], {"benchmark": name}
    for col, s in by_col.items():
        if s is None:
            cells.append("-")
            continue
        est = stats.estimate(s.runs)
        rec[col] = {"median": est.median, "lo": est.lo, "hi": est.hi, "unit": s.unit, "processes": len(s.runs)}
        if col == ref or base is None:
            cells.append(f"{fmt_value(est.median)} {s.unit}")
        else:
            rel = relative(s, base, paired)
            rec[col].update(speedup=rel.median, speedup_lo=rel.lo, speedup_hi=rel.hi)
            cells.append(f"{rel.median:.2f}x")
    return cells, rec


def table(run: Run, ref: str = "device-ngnre") -> Table:
    """Rows: workload[params]; columns: attrs; the ref column absolute, others speedups."""
    attrs = list(dict.fromkeys(s.attr for s in run.series.values()))
    notes = []
    if ref not in attrs:
        notes.append(f"reference {ref} is not in this run; using {attrs[0]}")
        ref = attrs[0]
    order = [ref, *[a for a in attrs if a != ref]]
    labels = list(dict.fromkeys(s.label for s in run.series.values()))
    paired = run.interleaved
    groups: dict[str, list[list[str]]] = {}
    data_rows = []
    for label in labels:
        by_attr = {a: run.series.get(f"{label}@{a}") for a in order}
        some = next(s for s in by_attr.values() if s is not None)
        cells, rec = _row(label.removeprefix(some.workload), label, by_attr, ref, paired)
        groups.setdefault(f"{some.workload} ({units.better(some.unit)})", []).append(cells)
        data_rows.append(rec)
    for a in order:
        meta = next(s.meta for s in run.series.values() if s.attr == a)
        notes.append(f"{a}: effective {meta.get('effective', '?')}, inferred {meta.get('effective_inferred', '-')}, "
                     f"stage2 {meta.get('stage2', '?')}{' (FWB)' if meta.get('fwb') == 'true' else ''}")
    notes += leaf_note({a: leaf_of(next(s.meta for s in run.series.values() if s.attr == a)) for a in order})
    emu = "[emulated] " if run.emulated else ""
    target = " + ".join(dict.fromkeys(s.meta.get("target", "?") for s in run.series.values()))
    method = METHOD_PAIRED if paired else METHOD_UNPAIRED
    header = f"{emu}{run.describe()}, x = speedup over {ref}\nx > 1 = better | {method}"
    notes.insert(0, f"target {target}" + (" (emulated: plumbing, not hardware)" if emu else ""))
    sections = [Section(title, rows) for title, rows in groups.items()]
    data = {"run": str(run.path), "ref": ref, "attrs": order, "method": method, "rows": data_rows}
    return Table(header, ["benchmark", *order], sections, notes, data)


def targets_of(run: Run) -> list[str]:
    """The target specs of a run's benchmarks, in file order."""
    return list(dict.fromkeys(s.meta.get("target", "?") for s in run.series.values()))


def pick_target(targets: list[str], ref: str) -> str:
    """The target `ref` names: its exact spec, or the one spec it abbreviates (`ram`,
    `vfio` for kvm:vfio:<BDF>/<bar>); UserError (exit 2) naming the run's targets else."""
    if ref in targets:
        return ref
    hits = [t for t in targets if t.startswith((f"{ref}:", f"kvm:{ref}:")) or t == f"kvm:{ref}"]
    if len(hits) == 1:
        return hits[0]
    why = "names several" if hits else "is not one"
    raise UserError(f"--ref-target {ref} {why} of this run's targets: {', '.join(targets)}")


# Stage-2 names short enough for four columns in 72 (the lab's table uses the same words).
SHORT_S2 = {"device-ngnrne": "Dev-nGnRnE", "device-ngnre": "Dev-nGnRE", "device-ngre": "Dev-nGRE",
            "device-gre": "Dev-GRE", "normal-nc": "NC", "normal-wt": "WT", "normal": "WB", "as-s1": "as-s1"}
HEADINGS_WIDTH = 52  # the columns' share of the 72: the rest is for the row names


def stage2_label(run: Run, target: str, short: bool = False) -> str:
    """A column heading: the target's short name (a kvm target's backing) with the stage-2
    attribute its cases read, where recorded: 'vfio (normal-nc)', short: 'vfio (NC)'."""
    metas = [s.meta for s in run.series.values() if s.meta.get("target") == target]
    name = metas[0].get("backing") or target
    reads = [m["stage2_read"] for m in metas if "stage2_read" in m]
    known = list(dict.fromkeys(r for r in reads if not r.startswith("unavailable")))
    if known:
        return f"{name} ({'/'.join(SHORT_S2.get(r, r) if short else r for r in known)})"
    return f"{name} (stage 2 unread)" if reads else name


def stage2_labels(run: Run, targets: list[str]) -> list[str]:
    """Every column's heading, in the short form when the full ones would not fit."""
    full = [stage2_label(run, t) for t in targets]
    if sum(len(c) + 2 for c in full) <= HEADINGS_WIDTH:
        return full
    return [stage2_label(run, t, short=True) for t in targets]


def _by_case(run: Run) -> dict[tuple[str, str], dict[str, Series]]:
    """(label without target, attr) -> {target: series}, in file order."""
    out: dict[tuple[str, str], dict[str, Series]] = {}
    for s in run.series.values():
        label, _, attr = plan.split_name(s.name)
        out.setdefault((label, attr), {})[s.meta.get("target", "?")] = s
    return out


def target_table(run: Run, ref_target: str) -> Table:
    """Rows: workload[params]@attr; columns: targets by stage-2 setting, the reference
    target's column absolute and the others its per-round paired speedups (the interleaved
    rounds ran every target's case seconds apart, so drift cancels)."""
    targets = targets_of(run)
    if len(targets) < 2:
        raise UserError(f"{run.path.name} has one target ({targets[0]}): --ref-target compares the targets of a "
                        "run over several (bench run --target A --target B)")
    ref = pick_target(targets, ref_target)
    order = [ref, *[t for t in targets if t != ref]]
    paired = run.interleaved
    groups: dict[str, list[list[str]]] = {}
    data_rows = []
    for (label, attr), by_target in _by_case(run).items():
        some = next(iter(by_target.values()))
        cells, rec = _row(f"{label.removeprefix(some.workload)}@{attr}", f"{label}@{attr}",
                          {t: by_target.get(t) for t in order}, ref, paired)
        groups.setdefault(f"{some.workload} ({units.better(some.unit)})", []).append(cells)
        data_rows.append(rec)
    columns = stage2_labels(run, order)
    notes = [f"{col}: {t}" for col, t in zip(columns, order) if col != t]
    if next(iter(run.series.values())).meta.get("replication"):  # guestkit lab --fast's one process
        notes += ["note: every round is a value of one process (in-process timing):",
                  "  the CI is over rounds of one process, not over processes"]
    notes += leaf_note({col: leaf_of(next(s.meta for s in run.series.values() if s.meta.get("target") == t))
                        for col, t in zip(columns, order)})
    emu = "[emulated] " if run.emulated else ""
    method = METHOD_PAIRED if paired else METHOD_UNPAIRED
    ref_name = columns[0].split(" (")[0]
    header = f"{emu}{run.describe()}, x = speedup over {ref_name}\nx > 1 = better | {method}"
    data = {"run": str(run.path), "ref_target": ref, "targets": order, "columns": columns, "method": method,
            "rows": data_rows}
    return Table(header, ["benchmark", *columns], [Section(t, r) for t, r in groups.items()], notes, data)

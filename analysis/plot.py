"""`plot RUN.json [B.json ...] -o DIR`: PNGs a reviewer can read without the terminal.

bars.png: every benchmark's median of process medians with its 95% cluster-bootstrap CI,
one panel per workload, bars grouped by attribute (and file).  sweep-<workload>.png:
value against mapping size
(log x) where a run swept sizes.  latency-ecdf.png: the distribution of per-access
latency values of every latency benchmark.
"""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from analysis import stats  # noqa: E402
from analysis.load import Run, Series  # noqa: E402
from bench import units  # noqa: E402
from bench.errors import UserError  # noqa: E402


def _tag(run: Run, runs: list[Run]) -> str:
    """Tell runs apart in legends: by their --label (file names are <stamp>-<label>)
    where labels differ, else by the start stamp."""
    if len(runs) == 1:
        return ""
    labels = [r.path.stem.partition("-")[2] for r in runs]
    unique = len(set(labels)) == len(labels) and all(labels)
    return f"{run.path.stem.partition('-')[2] if unique else run.path.stem[:16]} "


def _title_suffix(runs: list[Run]) -> str:
    emu = " [EMULATED: plumbing, not hardware]" if any(r.emulated for r in runs) else ""
    return f"{' vs '.join(dict.fromkeys(r.describe() for r in runs))}{emu}"


def _group_colors(groups: list[str]) -> dict[str, str]:
    """One colour per group for the whole figure, so one legend serves every panel."""
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {g: cycle[i % len(cycle)] for i, g in enumerate(groups)}


def bars_figure(runs: list[Run]) -> plt.Figure:
    """The bars figure (not saved): one panel per workload and one legend for the whole
    figure, below the panels, so that it never covers a bar (issue 19)."""
    workloads = list(dict.fromkeys(s.workload for r in runs for s in r.series.values()))
    cols = min(3, len(workloads))
    rows = math.ceil(len(workloads) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 4.2 * rows + 0.8), squeeze=False,
                             layout="constrained")
    colors = _group_colors(list(dict.fromkeys(f"{_tag(r, runs)}{s.attr}" for r in runs for s in r.series.values())))
    for ax, workload in zip(axes.flat, workloads):
        series = [(r, s) for r in runs for s in r.series.values() if s.workload == workload]
        labels = list(dict.fromkeys(s.label.removeprefix(workload) for _, s in series))
        groups = list(dict.fromkeys(f"{_tag(r, runs)}{s.attr}" for r, s in series))
        width = 0.8 / len(groups)
        for gi, group in enumerate(groups):
            xs, meds, errs = [], [], [[], []]
            for li, label in enumerate(labels):
                hit = [s for r, s in series if f"{_tag(r, runs)}{s.attr}" == group and s.label.removeprefix(workload) == label]
                if hit:
                    e = stats.estimate(hit[0].runs)
                    xs.append(li + gi * width - 0.4 + width / 2)
                    meds.append(e.median)
                    errs[0].append(e.median - e.lo)
                    errs[1].append(e.hi - e.median)
            ax.bar(xs, meds, width, yerr=errs, capsize=3, label=group, color=colors[group])
        ax.set_title(f"{workload} ({units.better(series[0][1].unit)})")
        ax.set_ylabel(series[0][1].unit)
        ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right", fontsize=8)
    for ax in list(axes.flat)[len(workloads):]:
        ax.set_visible(False)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colors.values()]
    fig.suptitle(f"dmtbench: median of process medians, 95% cluster-bootstrap CI - {_title_suffix(runs)}")
    fig.legend(handles, list(colors), loc="outside lower center", ncol=min(len(colors), 4), fontsize=8,
               title="run attribute" if len(runs) > 1 else "attribute", title_fontsize=8)
    return fig


def bars(runs: list[Run], out: Path) -> Path:
    fig = bars_figure(runs)
    path = out / "bars.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _sweeps(runs: list[Run]) -> dict[str, dict[str, list[Series]]]:
    """workload -> line name -> series, for workloads measured at 2+ sizes."""
    out: dict[str, dict[str, list[Series]]] = {}
    for r in runs:
        for s in r.series.values():
            params = s.meta.get("params", "")
            out.setdefault(s.workload, {}).setdefault(f"{_tag(r, runs)}{s.attr} {params}".strip(), []).append(s)
    return {w: lines for w, lines in out.items() if any(len({s.size for s in ss}) > 1 for ss in lines.values())}


def sweep_figure(workload: str, lines: dict[str, list[Series]], runs: list[Run]) -> plt.Figure:
    """One workload's value against mapping size (not saved); legend outside the axes."""
    fig, ax = plt.subplots(figsize=(9, 4.5), layout="constrained")
    for name, ss in lines.items():
        ss = sorted(ss, key=lambda s: s.size)
        est = [stats.estimate(s.runs) for s in ss]
        x = [s.size for s in ss]
        ax.errorbar(x, [e.median for e in est], yerr=[[e.median - e.lo for e in est], [e.hi - e.median for e in est]],
                    marker="o", capsize=3, label=name)
    unit = next(iter(lines.values()))[0].unit
    ax.set_xscale("log", base=2)
    if unit == "ns":
        ax.set_yscale("log")  # latency spans L1 (~1 ns) to DRAM (~100 ns)
    ax.set_xlabel("mapping size (bytes, log scale)")
    ax.set_ylabel(unit)
    ax.set_title(f"{workload} vs size\n{_title_suffix(runs)}", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    fig.legend(fontsize=7, loc="outside right upper")
    return fig


def sweep(workload: str, lines: dict[str, list[Series]], runs: list[Run], out: Path) -> Path:
    fig = sweep_figure(workload, lines, runs)
    path = out / f"sweep-{workload}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def ecdf_figure(runs: list[Run]) -> plt.Figure | None:
    """The latency ECDF (not saved); legend outside the axes.  None without latencies."""
    series = [(r, s) for r in runs for s in r.series.values() if s.unit == "ns"]
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(9, 4.5), layout="constrained")
    for r, s in series:
        v = np.sort(s.values)
        ax.step(v, np.arange(1, len(v) + 1) / len(v), where="post", label=f"{_tag(r, runs)}{s.name}")
    ax.set_xscale("log")
    ax.set_xlabel("ns per access (each point: one pyperf value, a mean over its loops; log scale)")
    ax.set_ylabel("fraction of values <= x")
    ax.set_title(f"latency ECDF\n{_title_suffix(runs)}", fontsize=9)
    ax.grid(True, alpha=0.3)
    fig.legend(fontsize=7, loc="outside right upper")
    return fig


def latency_ecdf(runs: list[Run], out: Path) -> Path | None:
    fig = ecdf_figure(runs)
    if fig is None:
        return None
    path = out / "latency-ecdf.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_all(runs: list[Run], out: Path) -> list[Path]:
    """Every plot that the runs have data for; returns the PNG paths."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create {out}: {exc.strerror}") from None
    paths = [bars(runs, out)]
    paths += [sweep(w, lines, runs, out) for w, lines in _sweeps(runs).items()]
    ecdf = latency_ecdf(runs, out)
    return paths + ([ecdf] if ecdf else [])

"""`track DIR`: has the newest run regressed against the runs before it?

Method (docs/statistics.md): the file, one `bench run` invocation, is the unit of
replication, the worker process below it; values inside a process are never treated as
independent.  Each file is summarised by the median of its per-process medians.  For
each benchmark the newest file's log summary is tested against a prediction interval
from the WINDOW files before it: their between-file variance, pooled with a prior of
PRIOR_DF pseudo-files at PRIOR_RSD (so 2 or 3 near-identical files do not make a hair
trigger), floored by the spread between processes inside the files (a summary varies at
least that much), with the newest file's own process spread added on its side; Student
t with PRIOR_DF + H - 1 degrees of freedom.  A benchmark moved when its p, Holm-adjusted
across the newest file's benchmarks, is < ALPHA and the change is beyond THRESHOLD %.
Works from a history of 2 files (3 runs in DIR).  Exit status 1 when anything regressed
(for nightly gating); a directory with too few runs is not an error (nothing to gate).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from analysis import stats  # noqa: E402
from analysis.load import Run, load_many  # noqa: E402
from analysis.tables import Section, Table  # noqa: E402
from bench.errors import UserError  # noqa: E402

WINDOW = 10
THRESHOLD = 3.0
ALPHA = 0.01
MIN_BASELINE = 2
MIN_RUNS = MIN_BASELINE + 1


class TooFewRuns(Exception):
    """Not an error: a new machine's directory has nothing to gate yet."""


@dataclass(frozen=True)
class Movement:
    name: str
    unit: str
    center: float
    newest: float
    band: float          # percent: max(threshold, the prediction interval at alpha / family)
    p: float             # Holm-adjusted across the newest run's benchmarks
    verdict: str         # regressed | improved | steady
    history: tuple       # (date, median, lo, hi) per run, oldest first
    higher_is_better: bool = True
    files: int = 0       # history files behind the prediction
    between: float = 0.0  # the history's between-file relative sd, percent

    @property
    def percent(self) -> float:
        return (self.newest / self.center - 1) * 100


@dataclass(frozen=True)
class TrackResult:
    runs: list[Run]
    movements: list[Movement]
    table: Table

    @property
    def regressions(self) -> list[Movement]:
        return [m for m in self.movements if m.verdict == "regressed"]


def history(directory: Path, allow_emulated: bool) -> list[Run]:
    """Every complete result in DIR, oldest first; TooFewRuns below MIN_RUNS."""
    if not directory.is_dir():
        raise UserError(f"{directory} is not a directory: pass results/<machine>/")
    files = [p for p in sorted(directory.glob("*.json")) if not p.name.endswith("-partial.json")]
    if len(files) < MIN_RUNS:
        raise TooFewRuns(f"{directory} has {len(files)} complete run{'s' * (len(files) != 1)}; track needs "
                         f"{MIN_RUNS} (the newest and {MIN_BASELINE} before it): nothing to gate yet "
                         f"(python -m bench run --repeat {MIN_RUNS} makes them)")
    return sorted(load_many(files, allow_emulated), key=lambda r: r.date)


def _summary(s) -> float:
    return float(np.median(s.run_medians))


def _move(name: str, runs: list[Run], window: int, with_history: bool = True) -> tuple[Movement, stats.Prediction] | None:
    """The newest run's benchmark against its history, before the family adjustment."""
    newest = runs[-1].series[name]
    base = [r.series[name] for r in runs[-1 - window:-1] if name in r.series]
    if len(base) < MIN_BASELINE:
        return None
    pred = stats.predict([s.run_medians for s in base], newest.run_medians)
    hist = []
    for r in runs if with_history else []:  # CIs for the trend plot: a bootstrap per run
        if name in r.series:
            e = stats.estimate(r.series[name].runs)
            hist.append((r.date, e.median, e.lo, e.hi))
    move = Movement(name, newest.unit, float(np.exp(pred.center)), _summary(newest), 0.0, pred.p, "steady",
                    tuple(hist), newest.higher_is_better, len(base), float(np.expm1(pred.between) * 100))
    return move, pred


def _decide(moves: list[tuple[Movement, stats.Prediction]], threshold: float, alpha: float) -> list[Movement]:
    adj = stats.holm([m.p for m, _ in moves])
    out = []
    for (m, pred), p in zip(moves, adj):
        band = max(threshold, pred.half_width(alpha / len(moves)) * 100)
        worse = m.percent < 0 if m.higher_is_better else m.percent > 0
        verdict = ("regressed" if worse else "improved") if abs(m.percent) > threshold and p < alpha else "steady"
        out.append(dataclasses.replace(m, band=band, p=p, verdict=verdict))
    return out


def track(directory: Path, window: int = WINDOW, threshold: float = THRESHOLD, alpha: float = ALPHA,
          allow_emulated: bool = False) -> TrackResult:
    """Track the results in a directory (see the module docstring for the method)."""
    return track_runs(history(directory, allow_emulated), window, threshold, alpha)


def method_line(threshold: float, alpha: float) -> str:
    """The method in one line (the table's second header line, <= 72 columns)."""
    return (f"t-pred: file sd+prior {stats.PRIOR_RSD:.0%}/{stats.PRIOR_DF}df, floor proc sd; "
            f"Holm p<{alpha:g}, >{threshold:g}%")


def track_runs(runs: list[Run], window: int = WINDOW, threshold: float = THRESHOLD,
               alpha: float = ALPHA, with_history: bool = True) -> TrackResult:
    """The newest of `runs` (oldest first) against the `window` runs before it."""
    if window < MIN_BASELINE:
        raise UserError(f"--window {window}: the prediction needs at least {MIN_BASELINE} runs before the newest")
    found = [m for name in runs[-1].series if (m := _move(name, runs, window, with_history))]
    moves = _decide(found, threshold, alpha) if found else []
    rows = [[m.name, f"{m.center:.4g}", f"{m.newest:.4g}", f"{m.percent:+.1f}%", f"{m.band:.1f}%",
             f"{m.p:.3f}", m.verdict] for m in moves if m.verdict != "steady"]
    header = (f"{runs[-1].describe()} | {runs[-1].path.name} vs {min(window, len(runs) - 1)} runs before\n"
              + method_line(threshold, alpha))
    notes = [f"{sum(m.verdict == 'steady' for m in moves)} of {len(moves)} benchmarks steady"]
    new = len(runs[-1].series) - len(moves)
    if new:
        notes.append(f"{new} benchmark(s) with fewer than {MIN_BASELINE} runs before: not tracked yet")
    data = {"newest": str(runs[-1].path), "method": method_line(threshold, alpha), "movements": [
        {"name": m.name, "unit": m.unit, "baseline": m.center, "newest": m.newest, "percent": m.percent,
         "band": m.band, "p_adj": m.p, "verdict": m.verdict, "history_files": m.files,
         "between_file_rsd": m.between} for m in moves]}
    table = Table(header, ["benchmark", "baseline", "newest", "change", "band", "p adj", "verdict"],
                  [Section("moved:" if rows else "nothing moved", rows)], notes, data)
    return TrackResult(runs, moves, table)


def plot_trends(result: TrackResult, out: Path) -> list[Path]:
    """One PNG per regressed benchmark: per-run medians with CIs and the baseline band."""
    paths = []
    for m in result.regressions:
        out.mkdir(parents=True, exist_ok=True)
        fig, ax = plt.subplots(figsize=(9, 4))
        x = np.arange(len(m.history))
        med = np.array([h[1] for h in m.history])
        err = [med - [h[2] for h in m.history], [h[3] for h in m.history] - med]
        ax.errorbar(x, med, yerr=err, marker="o", capsize=3, label="run median, 95% CI")
        lo, hi = m.center * (1 - m.band / 100), m.center * (1 + m.band / 100)
        ax.axhspan(lo, hi, color="green", alpha=0.15, label=f"prediction +-{m.band:.1f}%")
        ax.plot([x[-1]], [med[-1]], "rs", markersize=10, label=f"newest: {m.percent:+.1f}% (p={m.p:.3g})")
        ax.set_xticks(x, [h[0][5:16].replace("T", " ") for h in m.history], rotation=30, ha="right", fontsize=7)
        ax.set_xlabel("run start (UTC)")
        ax.set_ylabel(m.unit)
        ax.set_title(f"regression: {m.name}", fontsize=10)
        # Outside the axes, to the right: a legend never covers a point (issue 19).
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
        fig.tight_layout()
        path = out / (m.name.replace("/", "_").replace("@", "_at_") + ".png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths
